// edgeclf._runtime — the pybind11 module over the C API itself (not over C++ internals), so
// Python tests exercise the same ABI a device program uses. The public face is
// edgeclf.runtime.Classifier.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "edgeclf/edgeclf.h"

namespace py = pybind11;

namespace {

// Raised for any non-OK status; the message starts with the status name.
py::object g_error;

[[noreturn]] void raise(edgeclf_status st) {
  const std::string msg = std::string(edgeclf_status_name(st)) + ": " + edgeclf_last_error();
  PyErr_SetString(g_error.ptr(), msg.c_str());
  throw py::error_already_set();
}

inline void check(edgeclf_status st) {
  if (st != EDGECLF_OK) raise(st);
}

struct OptionsDeleter { void operator()(edgeclf_options* o) const { edgeclf_options_free(o); } };
struct ModelDeleter { void operator()(edgeclf_model* m) const { edgeclf_model_free(m); } };
struct SessionDeleter { void operator()(edgeclf_session* s) const { edgeclf_session_free(s); } };

std::unique_ptr<edgeclf_options, OptionsDeleter> make_options(const std::string& backend, const std::string& device,
                                                              const std::string& precision, int threads, bool verify,
                                                              const std::string& ort_library) {
  edgeclf_options* o = nullptr;
  check(edgeclf_options_create(&o));
  std::unique_ptr<edgeclf_options, OptionsDeleter> opts(o);
  check(edgeclf_options_set_backend(o, backend.c_str()));
  check(edgeclf_options_set_device(o, device.c_str()));
  check(edgeclf_options_set_precision(o, precision.c_str()));
  check(edgeclf_options_set_threads(o, threads));
  check(edgeclf_options_set_verify(o, verify ? 1 : 0));
  if (!ort_library.empty()) check(edgeclf_options_set_onnxruntime_library(o, ort_library.c_str()));
  return opts;
}

const std::map<std::string, int> kFormats = {{"RGB8", EDGECLF_PIXEL_RGB8},   {"BGR8", EDGECLF_PIXEL_BGR8},
                                             {"RGBA8", EDGECLF_PIXEL_RGBA8}, {"BGRA8", EDGECLF_PIXEL_BGRA8},
                                             {"GRAY8", EDGECLF_PIXEL_GRAY8}, {"NV12", EDGECLF_PIXEL_NV12}};

int channels_of(int f) {
  switch (f) {
    case EDGECLF_PIXEL_RGB8: case EDGECLF_PIXEL_BGR8: return 3;
    case EDGECLF_PIXEL_RGBA8: case EDGECLF_PIXEL_BGRA8: return 4;
    default: return 1;
  }
}

// A numpy uint8 array viewed as an edgeclf_image without copying when its layout allows
// (rows may be padded: any row stride, pixels and channels packed). `keep` holds the array
// (or a compact copy) alive for the call.
edgeclf_image as_image(const py::handle& obj, const std::string& format, std::vector<py::array>& keep) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error("images must be numpy uint8 arrays");
  if (!arr.dtype().is(py::dtype::of<uint8_t>()))
    throw py::type_error("image arrays must be uint8, got " + std::string(py::str(arr.dtype())));
  const auto nd = arr.ndim();
  if (nd != 2 && nd != 3) throw py::value_error("image arrays must be HxW or HxWxC");
  int f = 0;
  if (format.empty()) {
    const auto c = nd == 2 ? 1 : arr.shape(2);
    f = c == 1 ? EDGECLF_PIXEL_GRAY8 : c == 3 ? EDGECLF_PIXEL_RGB8 : c == 4 ? EDGECLF_PIXEL_RGBA8 : 0;
    if (f == 0) throw py::value_error("cannot infer the pixel format of an array with " + std::to_string(c) + " channels");
  } else {
    auto it = kFormats.find(format);
    if (it == kFormats.end()) throw py::value_error("unknown pixel format " + format + " (RGB8 BGR8 RGBA8 BGRA8 GRAY8 NV12)");
    f = it->second;
  }
  const int ch = channels_of(f);
  const py::ssize_t c = nd == 2 ? 1 : arr.shape(2);
  if (c != ch) throw py::value_error(format + " needs " + std::to_string(ch) + " channel(s), the array has " + std::to_string(c));
  const bool packed = arr.strides(nd - 1) == (nd == 3 ? 1 : 1) && (nd == 2 || arr.strides(1) == ch) &&
                      arr.strides(0) >= arr.shape(1) * ch && arr.strides(0) > 0;
  if (!packed) arr = py::array::ensure(arr, py::array::c_style);
  keep.push_back(arr);
  edgeclf_image im{};
  im.data = static_cast<const uint8_t*>(arr.data());
  im.width = static_cast<int32_t>(arr.shape(1));
  im.stride_bytes = static_cast<int32_t>(arr.strides(0));
  im.pixel_format = f;
  if (f == EDGECLF_PIXEL_NV12) {
    if (arr.shape(0) % 3 != 0) throw py::value_error("an NV12 array has height * 3 / 2 rows (Y then UV)");
    im.height = static_cast<int32_t>(arr.shape(0) / 3 * 2);
  } else {
    im.height = static_cast<int32_t>(arr.shape(0));
  }
  return im;
}

class Model {
 public:
  Model(const std::string& bundle, const std::string& backend, const std::string& device, const std::string& precision,
        int threads, bool verify, const std::string& ort_library) {
    auto opts = make_options(backend, device, precision, threads, verify, ort_library);
    edgeclf_model* m = nullptr;
    edgeclf_status st;
    {
      py::gil_scoped_release nogil;
      st = edgeclf_model_load(bundle.c_str(), opts.get(), &m);
    }
    check(st);
    ptr_.reset(m);
  }
  Model(const py::bytes& manifest, const std::map<std::string, py::bytes>& files, const std::string& backend,
        const std::string& device, const std::string& precision, int threads, bool verify,
        const std::string& ort_library) {
    auto opts = make_options(backend, device, precision, threads, verify, ort_library);
    std::string text = manifest;
    std::vector<std::string> datas;
    std::vector<std::string> names;
    for (const auto& [name, data] : files) { names.push_back(name); datas.push_back(std::string(data)); }
    std::vector<edgeclf_file> f;
    for (size_t i = 0; i < names.size(); ++i) f.push_back({names[i].c_str(), datas[i].data(), datas[i].size()});
    edgeclf_model* m = nullptr;
    edgeclf_status st;
    {
      py::gil_scoped_release nogil;
      st = edgeclf_model_load_memory(text.data(), text.size(), f.data(), f.size(), opts.get(), &m);
    }
    check(st);
    ptr_.reset(m);
  }
  size_t num_classes() const { size_t n = 0; check(edgeclf_model_num_classes(ptr_.get(), &n)); return n; }
  std::vector<std::string> labels() const {
    std::vector<std::string> out;
    for (size_t i = 0; i < num_classes(); ++i) {
      const char* s = nullptr;
      check(edgeclf_model_label(ptr_.get(), static_cast<int32_t>(i), &s));
      out.emplace_back(s);
    }
    return out;
  }
  std::string property(const std::string& name) const {
    const char* s = nullptr;
    check(edgeclf_model_property(ptr_.get(), name.c_str(), &s));
    return s;
  }
  std::string manifest_value(const std::string& pointer) const {
    size_t len = 0;
    const edgeclf_status st = edgeclf_model_manifest_value(ptr_.get(), pointer.c_str(), nullptr, 0, &len);
    if (st != EDGECLF_ERR_BUFFER_TOO_SMALL) check(st);
    std::string out(len + 1, '\0');
    check(edgeclf_model_manifest_value(ptr_.get(), pointer.c_str(), &out[0], out.size(), &len));
    out.resize(len);
    return out;
  }
  std::tuple<int, int, int> input_shape() const {
    int32_t c = 0, h = 0, w = 0;
    check(edgeclf_model_input_shape(ptr_.get(), &c, &h, &w));
    return {c, h, w};
  }
  const edgeclf_model* get() const { return ptr_.get(); }

  // The bundle's decision for each row of raw logits (n x classes).
  std::vector<py::tuple> decide(const py::array_t<float, py::array::c_style | py::array::forcecast>& logits) const {
    const size_t classes = num_classes();
    if (logits.ndim() != 2 || static_cast<size_t>(logits.shape(1)) != classes)
      throw py::value_error("logits must be N x " + std::to_string(classes));
    const size_t n = static_cast<size_t>(logits.shape(0));
    std::vector<edgeclf_decision> out(std::max<size_t>(n, 1));
    const float* z = logits.data();
    edgeclf_status st;
    {
      py::gil_scoped_release nogil;
      st = edgeclf_decide(ptr_.get(), z, n, out.data());
    }
    check(st);
    return decisions(out, n);
  }

  static std::vector<py::tuple> decisions(const std::vector<edgeclf_decision>& d, size_t n) {
    std::vector<py::tuple> rows;
    for (size_t i = 0; i < n; ++i)
      rows.push_back(py::make_tuple(d[i].index, std::string(edgeclf_rule_name(d[i].rule)), d[i].top_index,
                                    d[i].probability, d[i].score));
    return rows;
  }

 private:
  std::unique_ptr<edgeclf_model, ModelDeleter> ptr_;
};

class Session {
 public:
  explicit Session(const Model& model) : classes_(model.num_classes()) {
    edgeclf_session* s = nullptr;
    check(edgeclf_session_create(model.get(), &s));
    ptr_.reset(s);
    const auto [c, h, w] = model.input_shape();
    input_size_ = static_cast<size_t>(c) * h * w;
    shape_ = {c, h, w};
  }

  // Calibrated probabilities (n x classes) for a list of images (arrays) with their formats.
  py::array_t<float> probabilities(const py::list& images, const std::vector<std::string>& formats) {
    std::vector<py::array> keep;
    std::vector<edgeclf_image> ims = to_images(images, formats, keep);
    py::array_t<float> out({static_cast<py::ssize_t>(ims.size()), static_cast<py::ssize_t>(classes_)});
    float* p = out.mutable_data();
    edgeclf_status st;
    {
      py::gil_scoped_release nogil;
      st = edgeclf_probabilities(ptr_.get(), ims.data(), ims.size(), p, ims.size() * classes_);
    }
    check(st);
    return out;
  }

  // Top-k (index, probability) per image.
  std::vector<std::vector<std::pair<int, float>>> classify(const py::list& images, const std::vector<std::string>& formats,
                                                           size_t k) {
    std::vector<py::array> keep;
    std::vector<edgeclf_image> ims = to_images(images, formats, keep);
    std::vector<edgeclf_class_score> top(ims.size() * (k ? k : 1));
    size_t n = 0;
    edgeclf_status st;
    {
      py::gil_scoped_release nogil;
      st = edgeclf_classify_batch(ptr_.get(), ims.data(), ims.size(), top.data(), k, &n);
    }
    check(st);
    std::vector<std::vector<std::pair<int, float>>> out(ims.size());
    for (size_t i = 0; i < ims.size(); ++i)
      for (size_t j = 0; j < n; ++j) out[i].emplace_back(top[i * k + j].index, top[i * k + j].probability);
    return out;
  }

  // (index, rule, top_index, probability, score) per image, under the bundle's decision policy.
  std::vector<py::tuple> classify_decision(const py::list& images, const std::vector<std::string>& formats) {
    std::vector<py::array> keep;
    std::vector<edgeclf_image> ims = to_images(images, formats, keep);
    std::vector<edgeclf_decision> out(std::max<size_t>(ims.size(), 1));
    edgeclf_status st;
    {
      py::gil_scoped_release nogil;
      st = edgeclf_classify_decision(ptr_.get(), ims.data(), ims.size(), out.data());
    }
    check(st);
    return Model::decisions(out, ims.size());
  }

  py::array_t<float> preprocess(const py::handle& image, const std::string& format) {
    std::vector<py::array> keep;
    edgeclf_image im = as_image(image, format, keep);
    py::array_t<float> out({std::get<0>(shape_), std::get<1>(shape_), std::get<2>(shape_)});
    float* p = out.mutable_data();
    edgeclf_status st;
    {
      py::gil_scoped_release nogil;
      st = edgeclf_preprocess(ptr_.get(), &im, p, input_size_);
    }
    check(st);
    return out;
  }

  py::array_t<float> run_tensor(const py::array_t<float, py::array::c_style | py::array::forcecast>& tensor) {
    if (tensor.ndim() != 4 || tensor.shape(1) != std::get<0>(shape_) || tensor.shape(2) != std::get<1>(shape_) ||
        tensor.shape(3) != std::get<2>(shape_))
      throw py::value_error("tensor must be N x C x H x W with the model's input shape");
    const size_t n = static_cast<size_t>(tensor.shape(0));
    py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(classes_)});
    float* p = out.mutable_data();
    const float* x = tensor.data();
    edgeclf_status st;
    {
      py::gil_scoped_release nogil;
      st = edgeclf_run_tensor(ptr_.get(), x, n, p, n * classes_);
    }
    check(st);
    return out;
  }

 private:
  std::vector<edgeclf_image> to_images(const py::list& images, const std::vector<std::string>& formats,
                                       std::vector<py::array>& keep) {
    if (!formats.empty() && formats.size() != images.size())
      throw py::value_error("formats must be empty or have one entry per image");
    std::vector<edgeclf_image> ims;
    keep.reserve(images.size());
    for (size_t i = 0; i < images.size(); ++i) ims.push_back(as_image(images[i], formats.empty() ? "" : formats[i], keep));
    return ims;
  }

  std::unique_ptr<edgeclf_session, SessionDeleter> ptr_;
  size_t classes_;
  size_t input_size_ = 0;
  std::tuple<py::ssize_t, py::ssize_t, py::ssize_t> shape_;
};

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "edgeclf C runtime bindings (private; use edgeclf.runtime)";
  g_error = py::reinterpret_borrow<py::object>(PyErr_NewException("edgeclf._runtime.RuntimeLibraryError", PyExc_RuntimeError, nullptr));
  m.attr("RuntimeLibraryError") = g_error;
  m.def("api_version", &edgeclf_api_version);
  m.def("version", [] { return std::string(edgeclf_version()); });
  m.def("backends", [] { return std::string(edgeclf_backends()); });
  m.attr("API_VERSION") = EDGECLF_API_VERSION;
  m.attr("DECISION_UNKNOWN") = EDGECLF_DECISION_UNKNOWN;

  py::class_<Model>(m, "Model")
      .def(py::init<const std::string&, const std::string&, const std::string&, const std::string&, int, bool,
                    const std::string&>(),
           py::arg("bundle"), py::arg("backend") = "auto", py::arg("device") = "cpu", py::arg("precision") = "auto",
           py::arg("threads") = 0, py::arg("verify") = true, py::arg("onnxruntime_library") = "")
      .def(py::init<const py::bytes&, const std::map<std::string, py::bytes>&, const std::string&, const std::string&,
                    const std::string&, int, bool, const std::string&>(),
           py::arg("manifest"), py::arg("files"), py::arg("backend") = "auto", py::arg("device") = "cpu",
           py::arg("precision") = "auto", py::arg("threads") = 0, py::arg("verify") = true,
           py::arg("onnxruntime_library") = "")
      .def_property_readonly("num_classes", &Model::num_classes)
      .def_property_readonly("labels", &Model::labels)
      .def_property_readonly("input_shape", &Model::input_shape)
      .def("property", &Model::property)
      .def("manifest_value", &Model::manifest_value)
      .def("decide", &Model::decide, py::arg("logits"));

  py::class_<Session>(m, "Session")
      .def(py::init<const Model&>(), py::arg("model"), py::keep_alive<1, 2>())
      .def("probabilities", &Session::probabilities, py::arg("images"), py::arg("formats") = std::vector<std::string>{})
      .def("classify", &Session::classify, py::arg("images"), py::arg("formats") = std::vector<std::string>{},
           py::arg("k") = 5)
      .def("classify_decision", &Session::classify_decision, py::arg("images"),
           py::arg("formats") = std::vector<std::string>{})
      .def("preprocess", &Session::preprocess, py::arg("image"), py::arg("format") = "")
      .def("run_tensor", &Session::run_tensor, py::arg("tensor"));
}
