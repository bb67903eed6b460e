// edgeclf._runtime — the pybind11 module over the C API, through its public C++ wrapper
// (edgeclf.hpp: the same RAII handles and errors a C++ device program uses), not over C++
// internals, so Python tests exercise the same ABI a device program uses. The public face is
// edgeclf.runtime.Classifier.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "edgeclf/edgeclf.hpp"

namespace py = pybind11;

namespace {

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

// Runs `f` with the GIL released (the C calls below only touch C++ data). An edgeclf::Error
// it throws reaches Python as RuntimeLibraryError, with the GIL held again.
template <class F>
auto without_gil(F&& f) -> decltype(f()) {
  py::gil_scoped_release nogil;
  return f();
}

// Decisions as Python rows: (index, rule, top_index, probability, score).
std::vector<py::tuple> decision_rows(const std::vector<edgeclf_decision>& d) {
  std::vector<py::tuple> rows;
  rows.reserve(d.size());
  for (const auto& x : d)
    rows.push_back(py::make_tuple(x.index, edgeclf::rule_name(x.rule), x.top_index, x.probability, x.score));
  return rows;
}

class Model {
 public:
  Model(const std::string& bundle, const std::string& backend, const std::string& device, const std::string& precision,
        int threads, bool verify, const std::string& ort_library, bool autotune, const std::string& autotune_cache)
      : model_(load(bundle, make_options(backend, device, precision, threads, verify, ort_library, autotune, autotune_cache))) {}
  Model(const py::bytes& manifest, const std::map<std::string, py::bytes>& files, const std::string& backend,
        const std::string& device, const std::string& precision, int threads, bool verify,
        const std::string& ort_library, bool autotune, const std::string& autotune_cache)
      : model_(load(manifest, files,
                    make_options(backend, device, precision, threads, verify, ort_library, autotune, autotune_cache))) {}

  size_t num_classes() const { return model_.num_classes(); }
  std::vector<std::string> labels() const { return model_.labels(); }
  std::string property(const std::string& name) const { return model_.property(name); }
  std::string manifest_value(const std::string& pointer) const { return model_.manifest_value(pointer); }
  std::tuple<int, int, int> input_shape() const {
    const edgeclf::InputShape s = model_.input_shape();
    return {s.channels, s.height, s.width};
  }
  const edgeclf::Model& model() const { return model_; }

  // The bundle's decision for each row of raw logits (n x classes).
  std::vector<py::tuple> decide(const py::array_t<float, py::array::c_style | py::array::forcecast>& logits) const {
    const size_t classes = num_classes();
    if (logits.ndim() != 2 || static_cast<size_t>(logits.shape(1)) != classes)
      throw py::value_error("logits must be N x " + std::to_string(classes));
    const size_t n = static_cast<size_t>(logits.shape(0));
    const float* z = logits.data();
    return decision_rows(without_gil([&] { return model_.decide(z, n); }));
  }

 private:
  static edgeclf::Options make_options(const std::string& backend, const std::string& device,
                                       const std::string& precision, int threads, bool verify,
                                       const std::string& ort_library, bool autotune, const std::string& autotune_cache) {
    edgeclf::Options o;
    o.backend(backend).device(device).precision(precision).threads(threads).verify(verify).autotune(autotune);
    if (!ort_library.empty()) o.onnxruntime_library(ort_library);
    if (!autotune_cache.empty()) o.autotune_cache(autotune_cache);
    return o;
  }
  static edgeclf::Model load(const std::string& bundle, const edgeclf::Options& opts) {
    return without_gil([&] { return edgeclf::Model(bundle, opts); });
  }
  // The bytes objects stay alive (in `files`) for the call; the C API copies what it keeps.
  static edgeclf::Model load(const py::bytes& manifest, const std::map<std::string, py::bytes>& files,
                             const edgeclf::Options& opts) {
    const std::string_view text = manifest;
    std::vector<edgeclf_file> f;
    f.reserve(files.size());
    for (const auto& [name, data] : files) {
      const std::string_view bytes = data;
      f.push_back({name.c_str(), bytes.data(), bytes.size()});
    }
    return without_gil([&] { return edgeclf::Model::from_memory(text, f, &opts); });
  }

  edgeclf::Model model_;
};

class Session {
 public:
  explicit Session(const Model& model) : session_(model.model()), classes_(model.num_classes()) {
    const edgeclf::InputShape s = model.model().input_shape();
    input_size_ = s.size();
    shape_ = {s.channels, s.height, s.width};
  }

  // Calibrated probabilities (n x classes) for a list of images (arrays) with their formats.
  py::array_t<float> probabilities(const py::list& images, const std::vector<std::string>& formats) {
    std::vector<py::array> keep;
    std::vector<edgeclf_image> ims = to_images(images, formats, keep);
    py::array_t<float> out({static_cast<py::ssize_t>(ims.size()), static_cast<py::ssize_t>(classes_)});
    float* p = out.mutable_data();
    without_gil([&] { session_.probabilities(ims.data(), ims.size(), p, ims.size() * classes_); });
    return out;
  }

  // Top-k (index, probability) per image.
  std::vector<std::vector<std::pair<int, float>>> classify(const py::list& images, const std::vector<std::string>& formats,
                                                           size_t k) {
    std::vector<py::array> keep;
    std::vector<edgeclf_image> ims = to_images(images, formats, keep);
    const auto rows = without_gil([&] { return session_.classify_batch(ims, k); });
    std::vector<std::vector<std::pair<int, float>>> out(rows.size());
    for (size_t i = 0; i < rows.size(); ++i)
      for (const auto& s : rows[i]) out[i].emplace_back(s.index, s.probability);
    return out;
  }

  // (index, rule, top_index, probability, score) per image, under the bundle's decision policy.
  std::vector<py::tuple> classify_decision(const py::list& images, const std::vector<std::string>& formats) {
    std::vector<py::array> keep;
    std::vector<edgeclf_image> ims = to_images(images, formats, keep);
    return decision_rows(without_gil([&] { return session_.classify_decision(ims); }));
  }

  py::array_t<float> preprocess(const py::handle& image, const std::string& format) {
    std::vector<py::array> keep;
    edgeclf_image im = as_image(image, format, keep);
    py::array_t<float> out({std::get<0>(shape_), std::get<1>(shape_), std::get<2>(shape_)});
    float* p = out.mutable_data();
    without_gil([&] { session_.preprocess(im, p, input_size_); });
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
    without_gil([&] { session_.run_tensor(x, n, p, n * classes_); });
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

  edgeclf::Session session_;
  size_t classes_;
  size_t input_size_ = 0;
  std::tuple<py::ssize_t, py::ssize_t, py::ssize_t> shape_;
};

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "edgeclf C runtime bindings (private; use edgeclf.runtime)";
  // Raised for any non-OK status (an edgeclf::Error); the message starts with the status name.
  py::register_exception<edgeclf::Error>(m, "RuntimeLibraryError", PyExc_RuntimeError);
  m.def("api_version", &edgeclf::api_version);
  m.def("version", &edgeclf::version);
  m.def("backends", &edgeclf::backends);
  m.attr("API_VERSION") = EDGECLF_API_VERSION;
  m.attr("DECISION_UNKNOWN") = EDGECLF_DECISION_UNKNOWN;

  py::class_<Model>(m, "Model")
      .def(py::init<const std::string&, const std::string&, const std::string&, const std::string&, int, bool,
                    const std::string&, bool, const std::string&>(),
           py::arg("bundle"), py::arg("backend") = "auto", py::arg("device") = "cpu", py::arg("precision") = "auto",
           py::arg("threads") = 0, py::arg("verify") = true, py::arg("onnxruntime_library") = "",
           py::arg("autotune") = true, py::arg("autotune_cache") = "")
      .def(py::init<const py::bytes&, const std::map<std::string, py::bytes>&, const std::string&, const std::string&,
                    const std::string&, int, bool, const std::string&, bool, const std::string&>(),
           py::arg("manifest"), py::arg("files"), py::arg("backend") = "auto", py::arg("device") = "cpu",
           py::arg("precision") = "auto", py::arg("threads") = 0, py::arg("verify") = true,
           py::arg("onnxruntime_library") = "", py::arg("autotune") = true, py::arg("autotune_cache") = "")
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
