// Stand-ins for the backends this build was configured without: a clear error, not a crash.
#include "../internal.hpp"

namespace edgeclf {

#ifndef EDGECLF_HAVE_ONNXRUNTIME
bool onnxruntime_available_in_build() { return false; }
std::string onnxruntime_library_version(const LoadOptions&) { return ""; }
std::unique_ptr<BackendModel> load_onnxruntime(const Artifact&, const FileMap&, const LoadOptions&, int, size_t) {
  fail(EDGECLF_ERR_BACKEND_UNAVAILABLE,
       "this edgeclf library was built without the ONNX Runtime backend (rebuild with ONNX Runtime's headers)");
}
#endif

#ifndef EDGECLF_HAVE_OPENVINO
bool openvino_available_in_build() { return false; }
std::string openvino_library_version() { return ""; }
std::unique_ptr<BackendModel> load_openvino(const Artifact&, const FileMap&, const LoadOptions&, int, size_t) {
  fail(EDGECLF_ERR_BACKEND_UNAVAILABLE,
       "this edgeclf library was built without the OpenVINO backend (rebuild where OpenVINO's CMake package is found)");
}
#endif

}  // namespace edgeclf
