// edgeclf.hpp — a header-only C++17 RAII wrapper over the C API (edgeclf.h).
//
// Errors become edgeclf::Error exceptions carrying the status code; the message is the
// status name and the C API's message ("EDGECLF_ERR_INTEGRITY: bundle file ..."). Objects
// free themselves, and everything returned is a copy the caller owns (std::string,
// std::vector), so nothing obtained here needs freeing or dangles.
//
// Thread safety is the C API's: a Model is immutable and its const methods may be called
// from any number of threads; a Session is scratch state for one thread at a time (create
// one per thread). Lifetimes: a Model is a shared handle (copies share one loaded model), and
// a Session holds a copy of the Model it came from, so the loaded model lives as long as the
// last Model or Session that refers to it. Options are copied by the load that reads them.
//
// Methods that fill caller memory (pointer + capacity) mirror the C functions one to one and
// are for callers that own the buffers (e.g. bindings writing into their own arrays); the
// others return std::vector.
#pragma once

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "edgeclf/edgeclf.h"
#include "edgeclf/edgeclf_experimental.h"

namespace edgeclf {

// A C API call returned `status()` (never EDGECLF_OK).
class Error : public std::runtime_error {
 public:
  Error(edgeclf_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  edgeclf_status status() const noexcept { return status_; }

 private:
  edgeclf_status status_;
};

// Throws Error for a status other than EDGECLF_OK, with the calling thread's last error message.
inline void check(edgeclf_status status) {
  if (status != EDGECLF_OK) throw Error(status, std::string(edgeclf_status_name(status)) + ": " + edgeclf_last_error());
}

// The library's API version (EDGECLF_API_VERSION of its build), version and built-in backends
// ("onnxruntime,openvino"), and the name of a decision rule ("argmax", "adjusted", ...).
inline int api_version() { return edgeclf_api_version(); }
inline std::string version() { return edgeclf_version(); }
inline std::string backends() { return edgeclf_backends(); }
inline std::string rule_name(edgeclf_rule rule) { return edgeclf_rule_name(rule); }

// One entry of a top-k result, with its label.
struct Score {
  int index;
  float probability;
  std::string label;
};

// The model's input tensor: channels x height x width float32 per image.
struct InputShape {
  int channels;
  int height;
  int width;
  size_t size() const noexcept { return static_cast<size_t>(channels) * height * width; }
};

// Load options (edgeclf_options); the setters chain: Options().threads(2).device("cuda").
// Move-only.
class Options {
 public:
  Options() {
    edgeclf_options* o = nullptr;
    check(edgeclf_options_create(&o));
    ptr_.reset(o);
  }
  Options& threads(int n) { check(edgeclf_options_set_threads(ptr_.get(), n)); return *this; }
  Options& backend(const std::string& b) { check(edgeclf_options_set_backend(ptr_.get(), b.c_str())); return *this; }
  Options& device(const std::string& d) { check(edgeclf_options_set_device(ptr_.get(), d.c_str())); return *this; }
  Options& precision(const std::string& p) { check(edgeclf_options_set_precision(ptr_.get(), p.c_str())); return *this; }
  Options& verify(bool v) { check(edgeclf_options_set_verify(ptr_.get(), v ? 1 : 0)); return *this; }
  Options& autotune(bool v) { check(edgeclf_options_set_autotune(ptr_.get(), v ? 1 : 0)); return *this; }
  Options& autotune_cache(const std::string& p) {
    check(edgeclf_options_set_autotune_cache(ptr_.get(), p.c_str()));
    return *this;
  }
  Options& onnxruntime_library(const std::string& p) {
    check(edgeclf_options_set_onnxruntime_library(ptr_.get(), p.c_str()));
    return *this;
  }
  // EXPERIMENTAL (may change without notice): a knob of edgeclf_experimental.h, e.g.
  // experimental("ort_spin", "0"). It wins over the knob's environment variable.
  Options& experimental(const std::string& key, const std::string& value) {
    check(edgeclf_options_set_experimental(ptr_.get(), key.c_str(), value.c_str()));
    return *this;
  }
  const edgeclf_options* get() const noexcept { return ptr_.get(); }

 private:
  struct Free { void operator()(edgeclf_options* o) const noexcept { edgeclf_options_free(o); } };
  std::unique_ptr<edgeclf_options, Free> ptr_;
};

// A loaded bundle (edgeclf_model). Copies share the one loaded model; every method is const
// and thread-safe.
class Model {
 public:
  // Load the bundle in `bundle_dir`; `options` may be null (defaults).
  explicit Model(const std::string& bundle_dir, const Options* options = nullptr) {
    edgeclf_model* m = nullptr;
    check(edgeclf_model_load(bundle_dir.c_str(), options ? options->get() : nullptr, &m));
    ptr_.reset(m, Free());
  }
  Model(const std::string& bundle_dir, const Options& options) : Model(bundle_dir, &options) {}

  // Load a bundle held in memory: the manifest text and the files it names. The buffers are
  // borrowed for the call only (edgeclf_model_load_memory copies what it keeps).
  static Model from_memory(std::string_view manifest_json, const std::vector<edgeclf_file>& files,
                           const Options* options = nullptr) {
    edgeclf_model* m = nullptr;
    check(edgeclf_model_load_memory(manifest_json.data(), manifest_json.size(), files.data(), files.size(),
                                    options ? options->get() : nullptr, &m));
    return Model(m);
  }

  size_t num_classes() const { size_t n = 0; check(edgeclf_model_num_classes(ptr_.get(), &n)); return n; }
  std::string label(int index) const {
    const char* s = nullptr;
    check(edgeclf_model_label(ptr_.get(), index, &s));
    return s;
  }
  // Every label, by class index.
  std::vector<std::string> labels() const {
    std::vector<std::string> out;
    const size_t n = num_classes();
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) out.push_back(label(static_cast<int>(i)));
    return out;
  }
  InputShape input_shape() const {
    int32_t c = 0, h = 0, w = 0;
    check(edgeclf_model_input_shape(ptr_.get(), &c, &h, &w));
    return {c, h, w};
  }
  // "backend", "device", "artifact", "format", "precision", "name", "schema_version", "decision".
  std::string property(const std::string& name) const {
    const char* s = nullptr;
    check(edgeclf_model_property(ptr_.get(), name.c_str(), &s));
    return s;
  }
  // A manifest value by JSON pointer: strings bare, anything else as compact JSON.
  std::string manifest_value(const std::string& pointer) const {
    size_t len = 0;
    const edgeclf_status st = edgeclf_model_manifest_value(ptr_.get(), pointer.c_str(), nullptr, 0, &len);
    if (st != EDGECLF_ERR_BUFFER_TOO_SMALL) check(st);
    std::string out(len + 1, '\0');
    check(edgeclf_model_manifest_value(ptr_.get(), pointer.c_str(), &out[0], out.size(), &len));
    out.resize(len);
    return out;
  }
  // The bundle's decision for each of `count` rows of raw logits (count x num_classes(), row-major).
  std::vector<edgeclf_decision> decide(const float* logits, size_t count) const {
    std::vector<edgeclf_decision> out(std::max<size_t>(count, 1));
    check(edgeclf_decide(ptr_.get(), logits, count, out.data()));
    out.resize(count);
    return out;
  }
  std::vector<edgeclf_decision> decide(const std::vector<float>& logits) const {
    const size_t classes = num_classes();
    if (logits.size() % classes != 0)
      throw Error(EDGECLF_ERR_INVALID_ARGUMENT, "EDGECLF_ERR_INVALID_ARGUMENT: logits hold " + std::to_string(logits.size()) +
                                                    " values, not a multiple of " + std::to_string(classes) + " classes");
    return decide(logits.data(), logits.size() / classes);
  }
  // The C handle, valid while this Model (or a copy, or a Session made from it) lives; do not free it.
  const edgeclf_model* get() const noexcept { return ptr_.get(); }

 private:
  struct Free { void operator()(edgeclf_model* m) const noexcept { edgeclf_model_free(m); } };
  explicit Model(edgeclf_model* adopt) : ptr_(adopt, Free()) {}
  std::shared_ptr<edgeclf_model> ptr_;
};

// One thread's inference state on a model (edgeclf_session). Move-only; one call at a time.
class Session {
 public:
  explicit Session(const Model& model) : model_(model) {
    edgeclf_session* s = nullptr;
    check(edgeclf_session_create(model.get(), &s));
    ptr_.reset(s);
  }
  const Model& model() const noexcept { return model_; }

  // The `k` most probable classes of one image, best first (min(k, classes) entries).
  std::vector<Score> classify(const edgeclf_image& image, size_t k = 5) {
    std::vector<edgeclf_class_score> top(std::max<size_t>(k, 1));
    size_t n = 0;
    check(edgeclf_classify(ptr_.get(), &image, top.data(), k, &n));
    return scores(top.data(), n);
  }
  // The `k` most probable classes of each image, in one backend call.
  std::vector<std::vector<Score>> classify_batch(const std::vector<edgeclf_image>& images, size_t k = 5) {
    std::vector<edgeclf_class_score> top(std::max<size_t>(images.size() * k, 1));
    size_t n = 0;
    check(edgeclf_classify_batch(ptr_.get(), images.data(), images.size(), top.data(), k, &n));
    std::vector<std::vector<Score>> out;
    out.reserve(images.size());
    for (size_t i = 0; i < images.size(); ++i) out.push_back(scores(top.data() + i * k, n));
    return out;
  }
  // Calibrated probabilities, images.size() x num_classes() row-major.
  std::vector<float> probabilities(const std::vector<edgeclf_image>& images) {
    std::vector<float> p(std::max<size_t>(images.size() * model_.num_classes(), 1));
    probabilities(images.data(), images.size(), p.data(), p.size());
    p.resize(images.size() * model_.num_classes());
    return p;
  }
  // The same into caller memory (`capacity` floats, at least count x num_classes()).
  void probabilities(const edgeclf_image* images, size_t count, float* out, size_t capacity) {
    check(edgeclf_probabilities(ptr_.get(), images, count, out, capacity));
  }
  // The bundle's decision for each image.
  std::vector<edgeclf_decision> classify_decision(const std::vector<edgeclf_image>& images) {
    std::vector<edgeclf_decision> out(std::max<size_t>(images.size(), 1));
    check(edgeclf_classify_decision(ptr_.get(), images.data(), images.size(), out.data()));
    out.resize(images.size());
    return out;
  }
  // The input tensor (model().input_shape()) inference sees for `image`.
  std::vector<float> preprocess(const edgeclf_image& image) {
    std::vector<float> t(model_.input_shape().size());
    preprocess(image, t.data(), t.size());
    return t;
  }
  // The same into caller memory (`capacity` floats).
  void preprocess(const edgeclf_image& image, float* tensor, size_t capacity) {
    check(edgeclf_preprocess(ptr_.get(), &image, tensor, capacity));
  }
  // Raw logits (count x num_classes()) of the backend on preprocessed tensors
  // (count x input_shape().size() floats; the count is tensor.size() / input_shape().size()).
  std::vector<float> run_tensor(const std::vector<float>& tensor) {
    const size_t per = model_.input_shape().size(), count = tensor.size() / per;
    if (tensor.size() % per != 0)
      throw Error(EDGECLF_ERR_INVALID_ARGUMENT, "EDGECLF_ERR_INVALID_ARGUMENT: the tensor holds " +
                                                    std::to_string(tensor.size()) + " floats, not a multiple of " +
                                                    std::to_string(per) + " per image");
    std::vector<float> logits(std::max<size_t>(count * model_.num_classes(), 1));
    run_tensor(tensor.data(), count, logits.data(), logits.size());
    logits.resize(count * model_.num_classes());
    return logits;
  }
  // The same into caller memory (`capacity` floats).
  void run_tensor(const float* tensor, size_t count, float* logits, size_t capacity) {
    check(edgeclf_run_tensor(ptr_.get(), tensor, count, logits, capacity));
  }
  // The C handle, valid while this Session lives; do not free it.
  edgeclf_session* get() const noexcept { return ptr_.get(); }

 private:
  std::vector<Score> scores(const edgeclf_class_score* top, size_t n) const {
    std::vector<Score> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) out.push_back({top[i].index, top[i].probability, model_.label(top[i].index)});
    return out;
  }
  struct Free { void operator()(edgeclf_session* s) const noexcept { edgeclf_session_free(s); } };
  Model model_;
  std::unique_ptr<edgeclf_session, Free> ptr_;
};

}  // namespace edgeclf
