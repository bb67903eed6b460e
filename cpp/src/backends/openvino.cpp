// OpenVINO backend, through its C++ API (headers and libraries from the openvino wheel or
// an OpenVINO install, found by CMake's OpenVINOConfig).
#include <openvino/openvino.hpp>

#include "../internal.hpp"

namespace edgeclf {
namespace {

ov::Core& core() {
  static ov::Core instance;  // ov::Core is thread-safe; created once per process
  return instance;
}

class OvSession : public BackendSession {
 public:
  OvSession(ov::InferRequest req, int crop, size_t classes) : req_(std::move(req)), crop_(crop), classes_(classes) {}
  void run(const float* input, size_t n, float* logits) override {
    try {
      ov::Tensor x(ov::element::f32, ov::Shape{n, 3, static_cast<size_t>(crop_), static_cast<size_t>(crop_)},
                   const_cast<float*>(input));
      req_.set_input_tensor(x);
      req_.infer();
      const ov::Tensor y = req_.get_output_tensor();
      if (y.get_size() != n * classes_ || y.get_element_type() != ov::element::f32)
        fail(EDGECLF_ERR_BACKEND, "OpenVINO returned an output of unexpected size or type");
      std::copy_n(y.data<const float>(), n * classes_, logits);
    } catch (const ov::Exception& e) {
      fail(EDGECLF_ERR_BACKEND, std::string("OpenVINO inference failed: ") + e.what());
    }
  }

 private:
  ov::InferRequest req_;
  int crop_;
  size_t classes_;
};

class OvModel : public BackendModel {
 public:
  OvModel(const Artifact& artifact, const FileMap& files, const LoadOptions& o, int crop, size_t classes)
      : crop_(crop), classes_(classes) {
    if (artifact.extra_files.size() != 1) fail(EDGECLF_ERR_BUNDLE, artifact.file + ": an OpenVINO artifact needs its .bin weights");
    try {
      const auto& xml = files.at(artifact.file);
      weights_ = files.at(artifact.extra_files[0].file);
      ov::Tensor w(ov::element::u8, ov::Shape{weights_->size()}, const_cast<uint8_t*>(weights_->data()));
      std::shared_ptr<ov::Model> model = core().read_model(std::string(xml->begin(), xml->end()), w);
      if (model->inputs().size() != 1 || model->outputs().empty()) fail(EDGECLF_ERR_BUNDLE, artifact.file + ": expected one input");
      // the labels must match the model's outputs at load, as the ONNX Runtime backend checks them
      const ov::PartialShape out = model->outputs()[0].get_partial_shape();
      if (out.rank().is_static() && (out.rank().get_length() != 2 ||
                                     (out[1].is_static() && static_cast<size_t>(out[1].get_length()) != classes)))
        fail(EDGECLF_ERR_BUNDLE, artifact.file + ": output shape " + out.to_string() + " does not match the manifest's " +
                                     std::to_string(classes) + " labels");
      device_ = o.device.empty() || o.device == "cpu" ? "CPU" : o.device;
      ov::AnyMap config;
      config[ov::hint::performance_mode.name()] = ov::hint::PerformanceMode::LATENCY;
      // Parity: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.
      if (device_ == "CPU") config[ov::hint::inference_precision.name()] = ov::element::f32;
      if (o.threads > 0) config[ov::inference_num_threads.name()] = o.threads;
      compiled_ = core().compile_model(model, device_, config);
    } catch (const ov::Exception& e) {
      fail(EDGECLF_ERR_BACKEND, "OpenVINO could not load " + artifact.file + " on " + device_ + ": " + e.what());
    }
  }
  std::unique_ptr<BackendSession> create_session() const override {
    try {
      return std::make_unique<OvSession>(const_cast<ov::CompiledModel&>(compiled_).create_infer_request(), crop_, classes_);
    } catch (const ov::Exception& e) {
      fail(EDGECLF_ERR_BACKEND, std::string("OpenVINO could not create an inference request: ") + e.what());
    }
  }
  std::string device() const override { return device_; }

 private:
  std::shared_ptr<const std::vector<uint8_t>> weights_;
  ov::CompiledModel compiled_;
  std::string device_;
  int crop_;
  size_t classes_;
};

}  // namespace

bool openvino_available_in_build() { return true; }

std::string openvino_library_version() { return ov::get_openvino_version().buildNumber; }

std::unique_ptr<BackendModel> load_openvino(const Artifact& artifact, const FileMap& files, const LoadOptions& options,
                                            int crop, size_t classes) {
  return std::make_unique<OvModel>(artifact, files, options, crop, classes);
}

}  // namespace edgeclf
