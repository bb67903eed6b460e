// Tests of the C++ wrapper (edgeclf.hpp): every class and method against a bundle, errors as
// edgeclf::Error with the C status, lifetimes (a Session outlives the Model object it came
// from; Model copies share one loaded model), the experimental options (identical outputs),
// and four threads sharing one Model with a Session each. Run under AddressSanitizer +
// UndefinedBehaviorSanitizer by the test suite, like the C tests.
//
// Env: EDGECLF_TEST_BUNDLE  a valid bundle directory (without it: exit 77 after the tests
//                           that need none)
#include <edgeclf/edgeclf.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

int failures = 0;

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                               \
    }                                                                           \
  } while (0)

// `expr` throws edgeclf::Error with `code` and a message that starts with the code's name.
#define EXPECT_ERROR(expr, code)                                                                            \
  do {                                                                                                      \
    bool thrown_ = false;                                                                                   \
    try {                                                                                                   \
      (void)(expr);                                                                                         \
    } catch (const edgeclf::Error& e_) {                                                                    \
      thrown_ = true;                                                                                       \
      if (e_.status() != (code) || std::string(e_.what()).rfind(edgeclf_status_name(code), 0) != 0) {      \
        std::fprintf(stderr, "%s:%d: %s threw %s, expected %s\n", __FILE__, __LINE__, #expr, e_.what(), #code); \
        ++failures;                                                                                         \
      }                                                                                                     \
    }                                                                                                       \
    if (!thrown_) {                                                                                         \
      std::fprintf(stderr, "%s:%d: %s did not throw %s\n", __FILE__, __LINE__, #expr, #code);              \
      ++failures;                                                                                           \
    }                                                                                                       \
  } while (0)

constexpr int W = 97, H = 75, PAD = 13;

// Pseudo-random pixels, with padded rows; NV12 has its UV plane after the Y plane. Not
// copyable (the image points into the bytes; a move keeps the buffer).
struct Picture {
  std::vector<uint8_t> bytes;
  edgeclf_image image{};
  Picture(edgeclf_pixel_format format, int bpp, uint32_t seed) {
    const bool nv12 = format == EDGECLF_PIXEL_NV12;
    const int w = nv12 ? W - 1 : W, h = nv12 ? H - 1 : H, stride = w * bpp + PAD;
    bytes.resize(static_cast<size_t>(stride) * h * 2);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(((i + seed) * 2654435761u) >> 13);
    image = edgeclf_image{bytes.data(), w, h, stride, format, nullptr, 0};
  }
  Picture(const Picture&) = delete;
  Picture& operator=(const Picture&) = delete;
  Picture(Picture&&) = default;
  Picture& operator=(Picture&&) = default;
};

std::vector<uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void test_without_bundle() {
  CHECK(edgeclf::api_version() == EDGECLF_API_VERSION);
  CHECK(edgeclf::version() == edgeclf_version() && edgeclf::version().size() >= 5);
  CHECK(edgeclf::backends() == edgeclf_backends());
  CHECK(edgeclf::rule_name(EDGECLF_RULE_COSTS) == "costs");
  CHECK(edgeclf::rule_name(77) == "unknown");

  edgeclf::check(EDGECLF_OK);  // no throw
  EXPECT_ERROR(edgeclf::check(EDGECLF_ERR_INTEGRITY), EDGECLF_ERR_INTEGRITY);
  {
    const edgeclf::Error e(EDGECLF_ERR_IO, "EDGECLF_ERR_IO: cannot read");
    CHECK(e.status() == EDGECLF_ERR_IO && std::string(e.what()) == "EDGECLF_ERR_IO: cannot read");
  }

  edgeclf::Options o;
  CHECK(o.get() != nullptr);
  o.threads(1).backend("auto").device("cpu").precision("auto").verify(true).onnxruntime_library("").autotune(true);
  o.autotune_cache("autotune.json").autotune(false);
  EXPECT_ERROR(o.threads(-1), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(o.backend("tflite"), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(o.device("tpu"), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(o.precision("fp64"), EDGECLF_ERR_INVALID_ARGUMENT);
  for (const char* key : {"ort_spin", "preprocess_bands", "preprocess_wide"}) o.experimental(key, "auto");
  o.experimental("ort_spin", "0").experimental("ort_spin", "1");
  o.experimental("preprocess_bands", "1").experimental("preprocess_bands", "2");
  o.experimental("preprocess_wide", "0").experimental("preprocess_wide", "1");
  EXPECT_ERROR(o.experimental("no_such_knob", "1"), EDGECLF_ERR_NOT_FOUND);
  EXPECT_ERROR(o.experimental("ort_spin", "2"), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(o.experimental("preprocess_bands", "0"), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(o.experimental("preprocess_bands", "12"), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(o.experimental("preprocess_wide", ""), EDGECLF_ERR_INVALID_ARGUMENT);
  // the C function refuses NULLs (the wrapper never passes one)
  CHECK(edgeclf_options_set_experimental(nullptr, "ort_spin", "0") == EDGECLF_ERR_INVALID_ARGUMENT);
  CHECK(edgeclf_options_set_experimental(const_cast<edgeclf_options*>(o.get()), nullptr, "0") == EDGECLF_ERR_INVALID_ARGUMENT);
  CHECK(edgeclf_options_set_experimental(const_cast<edgeclf_options*>(o.get()), "ort_spin", nullptr) ==
        EDGECLF_ERR_INVALID_ARGUMENT);

  edgeclf::Options moved = std::move(o);
  CHECK(moved.get() != nullptr);

  EXPECT_ERROR(edgeclf::Model("/nonexistent/bundle"), EDGECLF_ERR_IO);
  EXPECT_ERROR(edgeclf::Model("", moved), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(edgeclf::Model::from_memory("{", {}), EDGECLF_ERR_BUNDLE);
  EXPECT_ERROR(edgeclf::Model::from_memory("", {}, &moved), EDGECLF_ERR_INVALID_ARGUMENT);
}

bool same(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void test_bundle(const std::string& dir) {
  std::vector<Picture> pictures;
  pictures.emplace_back(EDGECLF_PIXEL_RGB8, 3, 1);
  pictures.emplace_back(EDGECLF_PIXEL_BGRA8, 4, 2);
  pictures.emplace_back(EDGECLF_PIXEL_NV12, 1, 3);
  std::vector<edgeclf_image> images;
  for (const auto& p : pictures) images.push_back(p.image);

  edgeclf::Options opts;
  opts.threads(1);
  const edgeclf::Model model(dir, &opts);
  const size_t classes = model.num_classes();
  CHECK(classes >= 2);
  CHECK(model.get() != nullptr);

  // labels, shape, properties, manifest values
  const std::vector<std::string> labels = model.labels();
  CHECK(labels.size() == classes);
  for (size_t i = 0; i < classes; ++i) CHECK(!labels[i].empty() && labels[i] == model.label(static_cast<int>(i)));
  EXPECT_ERROR(model.label(static_cast<int>(classes)), EDGECLF_ERR_NOT_FOUND);
  EXPECT_ERROR(model.label(-1), EDGECLF_ERR_NOT_FOUND);
  const edgeclf::InputShape shape = model.input_shape();
  CHECK(shape.channels == 3 && shape.height > 0 && shape.width == shape.height);
  CHECK(shape.size() == static_cast<size_t>(3 * shape.height * shape.width));
  CHECK(model.property("backend") == "onnxruntime" || model.property("backend") == "openvino");
  CHECK(!model.property("artifact").empty() && !model.property("decision").empty());
  EXPECT_ERROR(model.property("colour"), EDGECLF_ERR_NOT_FOUND);
  CHECK(model.manifest_value("/schema_version")[0] == '1');
  CHECK(model.manifest_value("/labels/0") == labels[0]);
  CHECK(std::stoi(model.manifest_value("/preprocess/crop_size")) == shape.height);
  CHECK(model.manifest_value("/labels").front() == '[');
  EXPECT_ERROR(model.manifest_value("/no/such/key"), EDGECLF_ERR_NOT_FOUND);
  EXPECT_ERROR(model.manifest_value("not-a-pointer"), EDGECLF_ERR_INVALID_ARGUMENT);
  const double temperature = std::stod(model.manifest_value("/temperature"));

  // a copy shares the loaded model
  const edgeclf::Model copy = model;
  CHECK(copy.get() == model.get() && copy.labels() == labels);

  edgeclf::Session session(model);
  CHECK(session.get() != nullptr && session.model().get() == model.get());

  // probabilities: vector and caller-memory forms agree; the batch equals one by one
  const std::vector<float> probs = session.probabilities(images);
  CHECK(probs.size() == images.size() * classes);
  {
    std::vector<float> into(images.size() * classes);
    session.probabilities(images.data(), images.size(), into.data(), into.size());
    CHECK(same(into, probs));
    EXPECT_ERROR(session.probabilities(images.data(), images.size(), into.data(), into.size() - 1),
                 EDGECLF_ERR_BUFFER_TOO_SMALL);
  }
  for (size_t i = 0; i < images.size(); ++i) {
    const std::vector<float> one = session.probabilities({images[i]});
    double sum = 0;
    for (size_t c = 0; c < classes; ++c) {
      CHECK(std::fabs(one[c] - probs[i * classes + c]) < 1e-4f);
      sum += one[c];
    }
    CHECK(std::fabs(sum - 1.0) < 1e-4);
  }
  EXPECT_ERROR(session.probabilities(std::vector<edgeclf_image>{}), EDGECLF_ERR_INVALID_ARGUMENT);

  // classify and classify_batch: best first, labelled, the top-1 is the most probable class
  const std::vector<edgeclf::Score> top = session.classify(images[0], 2);
  CHECK(top.size() == 2 && top[0].probability >= top[1].probability);
  CHECK(top[0].label == labels[static_cast<size_t>(top[0].index)]);
  CHECK(std::fabs(top[0].probability - probs[static_cast<size_t>(top[0].index)]) < 1e-4f);
  CHECK(session.classify(images[0]).size() == std::min<size_t>(5, classes));
  EXPECT_ERROR(session.classify(images[0], 0), EDGECLF_ERR_INVALID_ARGUMENT);
  {
    const auto rows = session.classify_batch(images, classes + 2);  // k beyond the classes
    CHECK(rows.size() == images.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      CHECK(rows[i].size() == classes);
      for (size_t j = 0; j < rows[i].size(); ++j) {
        CHECK(rows[i][j].index >= 0 && rows[i][j].label == labels[static_cast<size_t>(rows[i][j].index)]);
        CHECK(std::fabs(rows[i][j].probability - probs[i * classes + static_cast<size_t>(rows[i][j].index)]) < 1e-4f);
        if (j > 0) CHECK(rows[i][j - 1].probability >= rows[i][j].probability);
      }
    }
    CHECK(session.classify_batch(images).front().size() == std::min<size_t>(5, classes));
    EXPECT_ERROR(session.classify_batch(std::vector<edgeclf_image>{}, 3), EDGECLF_ERR_INVALID_ARGUMENT);
  }
  {
    edgeclf_image bad = images[0];
    bad.stride_bytes = 1;
    EXPECT_ERROR(session.classify(bad), EDGECLF_ERR_INVALID_ARGUMENT);
    bad = images[0];
    bad.pixel_format = 99;
    EXPECT_ERROR(session.classify_batch({images[1], bad}), EDGECLF_ERR_UNSUPPORTED);
    CHECK(session.classify(images[0], 2).front().index == top[0].index);  // still usable after errors
  }

  // preprocess -> run_tensor -> softmax(logits / T) is the probability; decide(logits) is classify_decision
  std::vector<float> tensors;
  for (const auto& im : images) {
    const std::vector<float> t = session.preprocess(im);
    CHECK(t.size() == shape.size());
    std::vector<float> into(shape.size());
    session.preprocess(im, into.data(), into.size());
    CHECK(same(into, t));
    tensors.insert(tensors.end(), t.begin(), t.end());
  }
  {
    std::vector<float> small(4);
    EXPECT_ERROR(session.preprocess(images[0], small.data(), small.size()), EDGECLF_ERR_BUFFER_TOO_SMALL);
  }
  const std::vector<float> logits = session.run_tensor(tensors);
  CHECK(logits.size() == images.size() * classes);
  {
    std::vector<float> into(logits.size());
    session.run_tensor(tensors.data(), images.size(), into.data(), into.size());
    CHECK(same(into, logits));
    EXPECT_ERROR(session.run_tensor(std::vector<float>(tensors.begin(), tensors.end() - 1)), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_ERROR(session.run_tensor(tensors.data(), images.size(), into.data(), 1), EDGECLF_ERR_BUFFER_TOO_SMALL);
  }
  for (size_t i = 0; i < images.size(); ++i) {
    double mx = -INFINITY, sum = 0;
    for (size_t c = 0; c < classes; ++c) mx = std::max(mx, logits[i * classes + c] / temperature);
    for (size_t c = 0; c < classes; ++c) sum += std::exp(logits[i * classes + c] / temperature - mx);
    for (size_t c = 0; c < classes; ++c)
      CHECK(std::fabs(std::exp(logits[i * classes + c] / temperature - mx) / sum - probs[i * classes + c]) < 1e-5);
  }
  const std::vector<edgeclf_decision> decided = session.classify_decision(images);
  const std::vector<edgeclf_decision> from_logits = model.decide(logits);
  const std::vector<edgeclf_decision> from_pointer = model.decide(logits.data(), images.size());
  CHECK(decided.size() == images.size() && from_logits.size() == images.size() && from_pointer.size() == images.size());
  for (size_t i = 0; i < decided.size(); ++i) {
    CHECK(decided[i].index == from_logits[i].index && decided[i].rule == from_logits[i].rule);
    CHECK(decided[i].top_index == from_logits[i].top_index && from_pointer[i].index == from_logits[i].index);
    CHECK(std::fabs(decided[i].probability - from_logits[i].probability) < 1e-5f);
    CHECK(decided[i].index == EDGECLF_DECISION_UNKNOWN || decided[i].index < static_cast<int>(classes));
    CHECK(edgeclf::rule_name(decided[i].rule) != "unknown");
  }
  EXPECT_ERROR(session.classify_decision(std::vector<edgeclf_image>{}), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(model.decide(std::vector<float>(classes + 1)), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(model.decide(std::vector<float>(classes, NAN)), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERROR(model.decide(logits.data(), 0), EDGECLF_ERR_INVALID_ARGUMENT);

  // a moved Session keeps working; a Session outlives the Model object it was made from
  edgeclf::Session moved = std::move(session);
  CHECK(same(moved.probabilities(images), probs));
  {
    edgeclf::Session* survivor = nullptr;
    {
      const edgeclf::Model scoped(dir);
      survivor = new edgeclf::Session(scoped);
    }
    const auto rows = survivor->classify(images[0], 2);
    CHECK(rows.size() == 2 && rows[0].index == top[0].index && rows[0].label == top[0].label);
    CHECK(survivor->model().labels() == labels);
    delete survivor;
  }

  // in memory: every file of the bundle folder, the same outputs
  {
    namespace fs = std::filesystem;
    std::vector<std::pair<std::string, std::vector<uint8_t>>> contents;
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.is_regular_file()) contents.emplace_back(entry.path().filename().string(), read_file(entry.path()));
    std::string manifest;
    std::vector<edgeclf_file> files;
    for (const auto& [name, data] : contents) {
      if (name == "edgeclf.json") manifest.assign(data.begin(), data.end());
      files.push_back({name.c_str(), data.data(), data.size()});
    }
    CHECK(!manifest.empty());
    edgeclf::Options o;
    o.threads(1);
    const edgeclf::Model mem = edgeclf::Model::from_memory(manifest, files, &o);
    CHECK(mem.labels() == labels && mem.property("artifact") == model.property("artifact"));
    edgeclf::Session s(mem);
    // the in-memory load may pick another artifact when the bundle has several (no parity
    // speeds without a folder); only compare outputs when it picked the same one
    if (mem.property("precision") == model.property("precision")) CHECK(same(s.probabilities(images), probs));
    EXPECT_ERROR(edgeclf::Model::from_memory(manifest, {}, &o), EDGECLF_ERR_BUNDLE);
  }

  // experimental options: every setting gives the same bits (explicit values win over the
  // environment, which the test suite sets to either band count)
  for (const auto& [key, value] : std::vector<std::pair<const char*, const char*>>{
           {"ort_spin", "0"}, {"ort_spin", "1"}, {"preprocess_bands", "1"}, {"preprocess_bands", "2"},
           {"preprocess_wide", "0"}, {"preprocess_wide", "1"}, {"preprocess_bands", "auto"}}) {
    edgeclf::Options o;
    o.threads(1).experimental(key, value);
    const edgeclf::Model m(dir, o);
    edgeclf::Session s(m);
    if (!same(s.probabilities(images), probs)) {
      std::fprintf(stderr, "experimental %s=%s changed the probabilities\n", key, value);
      ++failures;
    }
    const std::vector<float> t = s.preprocess(images[0]);
    CHECK(same(t, std::vector<float>(tensors.begin(), tensors.begin() + static_cast<std::ptrdiff_t>(shape.size()))));
  }

  // four threads share one Model, one Session each: identical to the serial result
  {
    constexpr int kThreads = 4, kRounds = 3;
    std::vector<std::vector<float>> got(kThreads);
    std::vector<int> ok(kThreads, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        try {
          edgeclf::Session s(model);
          for (int r = 0; r < kRounds; ++r) got[t] = s.probabilities(images);
          ok[t] = 1;
        } catch (const edgeclf::Error& e) {
          std::fprintf(stderr, "thread %d: %s\n", t, e.what());
        }
      });
    for (auto& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) CHECK(ok[t] && same(got[t], probs));
  }
}

}  // namespace

int main() {
  const char* bundle = std::getenv("EDGECLF_TEST_BUNDLE");
  try {
    test_without_bundle();
    if (bundle && *bundle) test_bundle(bundle);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    ++failures;
  }
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  if (!bundle || !*bundle) {
    std::fprintf(stderr, "EDGECLF_TEST_BUNDLE not set: bundle tests skipped\n");
    return 77;
  }
  std::printf("edgeclf C++ wrapper tests passed\n");
  return 0;
}
