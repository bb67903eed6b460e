// ONNX Runtime backend, through its C API function table.
//
// The library is opened at run time (dlopen) rather than linked: one symbol,
// OrtGetApiBase, gives the whole API, so libedgeclf loads on a device without ONNX Runtime
// and reports a clear error only when an ONNX artifact is asked for. The headers may be
// older than the library: the runtime asks for the API version of its headers, which every
// later ONNX Runtime serves.
#include <dirent.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include "../internal.hpp"

namespace edgeclf {
namespace {

struct OrtRuntime {
  void* handle = nullptr;
  const OrtApi* api = nullptr;
  std::string path;
  std::string version;
  std::unique_ptr<Ort::Env> env;
};

std::mutex g_mutex;
OrtRuntime* g_runtime = nullptr;  // process-wide, never unloaded (ONNX Runtime is not unload-safe)

std::string self_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&edgeclf_version), &info) == 0 || info.dli_fname == nullptr) return "";
  std::string p = info.dli_fname;
  const auto slash = p.rfind('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

// libonnxruntime.so* files in `dir`, newest name first.
std::vector<std::string> libs_in(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n.rfind("libonnxruntime.so", 0) == 0) out.push_back(dir + "/" + n);
    }
    closedir(d);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

std::vector<std::string> candidates(const std::string& requested) {
  if (!requested.empty()) return {requested};
  std::vector<std::string> c;
  if (const char* env = std::getenv("EDGECLF_ONNXRUNTIME_LIBRARY"); env && *env) return {env};
  const std::string dir = self_dir();
  if (!dir.empty()) {
    for (const auto& p : libs_in(dir)) c.push_back(p);
    // A wheel install: site-packages/edgeclf/lib -> site-packages/onnxruntime/capi
    for (const auto& p : libs_in(dir + "/../../onnxruntime/capi")) c.push_back(p);
  }
#ifdef EDGECLF_ORT_DEFAULT_LIBRARY
  c.push_back(EDGECLF_ORT_DEFAULT_LIBRARY);
#endif
  c.push_back("libonnxruntime.so.1");
  c.push_back("libonnxruntime.so");
  return c;
}

OrtRuntime& runtime(const std::string& requested) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_runtime != nullptr) return *g_runtime;
  std::string tried;
  for (const auto& path : candidates(requested)) {
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      tried += "\n  " + path + ": " + dlerror();
      continue;
    }
    using GetApiBase = const OrtApiBase* (*)();
    auto get = reinterpret_cast<GetApiBase>(dlsym(h, "OrtGetApiBase"));
    if (get == nullptr) {
      tried += "\n  " + path + ": no OrtGetApiBase symbol";
      continue;
    }
    const OrtApiBase* base = get();
    const OrtApi* api = base->GetApi(ORT_API_VERSION);
    if (api == nullptr) {
      tried += "\n  " + path + ": ONNX Runtime " + base->GetVersionString() + " is older than API version " +
               std::to_string(ORT_API_VERSION);
      continue;
    }
    auto* rt = new OrtRuntime();
    rt->handle = h;
    rt->api = api;
    rt->path = path;
    rt->version = base->GetVersionString();
    Ort::InitApi(api);
    rt->env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "edgeclf");
    g_runtime = rt;
    return *g_runtime;
  }
  fail(EDGECLF_ERR_BACKEND_UNAVAILABLE,
       "the ONNX Runtime library could not be loaded; install onnxruntime or point "
       "EDGECLF_ONNXRUNTIME_LIBRARY (or edgeclf_options_set_onnxruntime_library) at libonnxruntime.so. Tried:" + tried);
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

class OrtSessionState : public BackendSession {
 public:
  OrtSessionState(Ort::Session* session, const std::string& in, const std::string& out, int crop, size_t classes,
                  bool dynamic_batch)
      : session_(session), in_(in), out_(out), crop_(crop), classes_(classes), dynamic_batch_(dynamic_batch),
        mem_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {}

  void run(const float* input, size_t n, float* logits) override {
    try {
      const size_t step = dynamic_batch_ ? n : 1;
      const size_t per_image = static_cast<size_t>(3) * crop_ * crop_;
      for (size_t i = 0; i < n; i += step) {
        const int64_t in_shape[4] = {static_cast<int64_t>(step), 3, crop_, crop_};
        const int64_t out_shape[2] = {static_cast<int64_t>(step), static_cast<int64_t>(classes_)};
        Ort::Value x = Ort::Value::CreateTensor<float>(mem_, const_cast<float*>(input + i * per_image), step * per_image,
                                                       in_shape, 4);
        Ort::Value y = Ort::Value::CreateTensor<float>(mem_, logits + i * classes_, step * classes_, out_shape, 2);
        const char* in_names[] = {in_.c_str()};
        const char* out_names[] = {out_.c_str()};
        session_->Run(Ort::RunOptions{nullptr}, in_names, &x, 1, out_names, &y, 1);
      }
    } catch (const Ort::Exception& e) {
      fail(EDGECLF_ERR_BACKEND, std::string("ONNX Runtime inference failed: ") + e.what());
    }
  }

 private:
  Ort::Session* session_;
  std::string in_, out_;
  int crop_;
  size_t classes_;
  bool dynamic_batch_;
  Ort::MemoryInfo mem_;
};

class OrtModel : public BackendModel {
 public:
  OrtModel(const Artifact& artifact, const FileMap& files, const LoadOptions& o, int crop, size_t classes)
      : crop_(crop), classes_(classes) {
    OrtRuntime& rt = runtime(o.onnxruntime_library);
    try {
      Ort::SessionOptions so;
      so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      // The experimental "ort_spin" option, else EDGECLF_ORT_SPIN=0|1, else ONNX Runtime's default.
      if (o.ort_spin >= 0)
        so.AddConfigEntry("session.intra_op.allow_spinning", o.ort_spin ? "1" : "0");
      else if (const char* spin = std::getenv("EDGECLF_ORT_SPIN"); spin && (spin[0] == '0' || spin[0] == '1') && !spin[1])
        so.AddConfigEntry("session.intra_op.allow_spinning", spin);
      if (o.threads > 0) {
        so.SetIntraOpNumThreads(o.threads);
        so.SetInterOpNumThreads(1);
      }
      const std::string dev = lower(o.device);
      if (dev == "cuda" || dev == "gpu") {
        append_cuda(so);
        device_ = "cuda";
      } else if (dev == "tensorrt" || dev == "trt") {
        append_tensorrt(so);
        append_cuda(so);  // layers TensorRT declines run on CUDA, not the CPU
        device_ = "tensorrt";
      } else if (dev != "cpu" && !dev.empty()) {
        fail(EDGECLF_ERR_INVALID_ARGUMENT, "device " + o.device + " is not one of cpu, cuda, tensorrt for ONNX Runtime");
      }
      const auto& bytes = files.at(artifact.file);
      session_ = std::make_unique<Ort::Session>(*rt.env, bytes->data(), bytes->size(), so);
      if (session_->GetInputCount() != 1 || session_->GetOutputCount() < 1)
        fail(EDGECLF_ERR_BUNDLE, artifact.file + ": expected one input and an output");
      Ort::AllocatorWithDefaultOptions alloc;
      in_ = session_->GetInputNameAllocated(0, alloc).get();
      out_ = session_->GetOutputNameAllocated(0, alloc).get();
      const auto shape = session_->GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
      if (shape.size() != 4 || shape[1] != 3 || (shape[2] > 0 && shape[2] != crop) || (shape[3] > 0 && shape[3] != crop))
        fail(EDGECLF_ERR_BUNDLE, artifact.file + ": input shape does not match the manifest's 3x" + std::to_string(crop) +
                                     "x" + std::to_string(crop) + " preprocessing");
      dynamic_batch_ = shape[0] <= 0;
      const auto oshape = session_->GetOutputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
      if (oshape.size() != 2 || (oshape[1] > 0 && static_cast<size_t>(oshape[1]) != classes))
        fail(EDGECLF_ERR_BUNDLE, artifact.file + ": output shape does not match the manifest's " + std::to_string(classes) +
                                     " labels");
    } catch (const Ort::Exception& e) {
      fail(EDGECLF_ERR_BACKEND, "ONNX Runtime " + rt.version + " could not load " + artifact.file + ": " + e.what());
    }
  }

  std::unique_ptr<BackendSession> create_session() const override {
    return std::make_unique<OrtSessionState>(session_.get(), in_, out_, crop_, classes_, dynamic_batch_);
  }
  std::string device() const override { return device_; }

 private:
  static void append_cuda(Ort::SessionOptions& so) {
    const OrtApi& api = Ort::GetApi();
    OrtCUDAProviderOptionsV2* cuda = nullptr;
    Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
    OrtStatus* st = api.SessionOptionsAppendExecutionProvider_CUDA_V2(so, cuda);
    api.ReleaseCUDAProviderOptions(cuda);
    unavailable_unless_ok(st, "CUDA");
  }
  static void append_tensorrt(Ort::SessionOptions& so) {
    const OrtApi& api = Ort::GetApi();
    OrtTensorRTProviderOptionsV2* trt = nullptr;
    Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
    OrtStatus* st = api.SessionOptionsAppendExecutionProvider_TensorRT_V2(so, trt);
    api.ReleaseTensorRTProviderOptions(trt);
    unavailable_unless_ok(st, "TensorRT");
  }
  static void unavailable_unless_ok(OrtStatus* st, const char* what) {
    if (st == nullptr) return;
    const std::string msg = Ort::GetApi().GetErrorMessage(st);
    Ort::GetApi().ReleaseStatus(st);
    fail(EDGECLF_ERR_BACKEND_UNAVAILABLE, std::string("the ") + what +
                                              " execution provider is not available in this ONNX Runtime (" + msg +
                                              "); install a GPU build of ONNX Runtime or use device cpu");
  }

  std::unique_ptr<Ort::Session> session_;
  std::string in_, out_, device_ = "cpu";
  int crop_;
  size_t classes_;
  bool dynamic_batch_ = false;
};

}  // namespace

bool onnxruntime_available_in_build() { return true; }

std::string onnxruntime_library_version(const LoadOptions& options) {
  try {
    const OrtRuntime& rt = runtime(options.onnxruntime_library);
    return rt.version + " (" + rt.path + ")";
  } catch (const Error&) {
    return "unavailable";
  }
}

std::unique_ptr<BackendModel> load_onnxruntime(const Artifact& artifact, const FileMap& files, const LoadOptions& options,
                                               int crop, size_t classes) {
  return std::make_unique<OrtModel>(artifact, files, options, crop, classes);
}

}  // namespace edgeclf
