// The C API: every entry point catches everything and turns it into a status code plus a
// thread-local message. Nothing throws across this boundary.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <new>
#include <numeric>
#include <thread>

#include "edgeclf/edgeclf_experimental.h"
#include "internal.hpp"

using edgeclf::Error;
using edgeclf::fail;

namespace {

thread_local std::string g_last_error;

constexpr size_t kMaxBatch = 4096;
constexpr size_t kMaxTopK = 1u << 20;  // entries per image a top-k call may be asked to fill

// Every count is checked before anything is allocated from it (no product can overflow after this).
void check_count(size_t image_count) {
  if (image_count == 0 || image_count > kMaxBatch)
    fail(EDGECLF_ERR_INVALID_ARGUMENT, "image_count " + std::to_string(image_count) + " must be 1.." + std::to_string(kMaxBatch));
}
constexpr uint64_t kMaxManifestBytes = 64ull << 20;

template <class F>
edgeclf_status guarded(F&& body) noexcept {
  try {
    g_last_error.clear();
    body();
    return EDGECLF_OK;
  } catch (const Error& e) {
    g_last_error = e.what();
    return e.status();
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return EDGECLF_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = std::string("internal error: ") + e.what();
    return EDGECLF_ERR_INTERNAL;
  } catch (...) {
    g_last_error = "internal error (unknown exception)";
    return EDGECLF_ERR_INTERNAL;
  }
}

void need(const void* p, const char* what) {
  if (p == nullptr) fail(EDGECLF_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
}

// A bundle file: a regular file (or a link to one) that resolves inside the bundle folder `dir`.
std::shared_ptr<const std::vector<uint8_t>> read_file(const std::string& dir, const std::string& name, uint64_t limit,
                                                     edgeclf_status too_large = EDGECLF_ERR_BUNDLE) {
  namespace fs = std::filesystem;
  const std::string path = dir + "/" + name;
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(path, ec);
  if (ec || !fs::exists(st)) fail(EDGECLF_ERR_BUNDLE, "the bundle is incomplete: " + path + " is missing");
  if (fs::is_symlink(st)) {
    const fs::path target = fs::canonical(path, ec);
    const fs::path base = fs::canonical(dir.empty() ? "." : dir, ec);
    const auto rel = ec ? fs::path("..") : target.lexically_relative(base);
    if (ec || rel.empty() || *rel.begin() == "..")
      fail(EDGECLF_ERR_BUNDLE, path + " is a link that leaves the bundle (or a broken one); re-export the bundle");
  }
  if (!fs::is_regular_file(path, ec)) fail(EDGECLF_ERR_BUNDLE, path + " is not a regular file; the bundle is damaged");
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) fail(EDGECLF_ERR_IO, "cannot open " + path);
  const std::streamoff size = f.tellg();
  if (size < 0) fail(EDGECLF_ERR_IO, "cannot read " + path);
  if (static_cast<uint64_t>(size) > limit)
    fail(too_large, path + (name == "edgeclf.json" ? " is larger than a manifest may be (64 MiB)"
                                                  : " is larger than edgeclf.json says (tampered with?); re-export the bundle"));
  auto data = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(size));
  f.seekg(0);
  if (size > 0 && !f.read(reinterpret_cast<char*>(data->data()), size)) fail(EDGECLF_ERR_IO, "cannot read " + path);
  return data;
}

// The major version of a "MAJOR.MINOR.PATCH[-pre][+build]" string, or -1 when it is not one.
long semver_major(const std::string& v) {
  const std::string core = v.substr(0, v.find_first_of("-+"));
  long major = -1;
  int parts = 0;
  size_t start = 0;
  while (true) {
    const size_t dot = core.find('.', start);
    const std::string p = core.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (p.empty() || p.find_first_not_of("0123456789") != std::string::npos || p.size() > 9) return -1;
    if (parts++ == 0) major = std::stol(p);
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts == 3 ? major : -1;
}

// parity.json, when present, is checked as the Python loader checks the parts the runtime reads
// (edgeclf.export.parity_schema.parse_parity; tests/manifest_cases.py holds the cases both must agree
// on): a JSON object of a 1.x schema (or of schema 0, without a version) with a "table" list whose rows
// name their format and precision, a known status, and numbers (or null) for the figures; a versioned
// report records every figure of a row and its split, image count, temperature and artifacts.
constexpr long kParityMajor = 1;

nlohmann::json read_parity(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir + "/parity.json", ec))) return nlohmann::json();
  const auto text = read_file(dir, "parity.json", kMaxManifestBytes, EDGECLF_ERR_INTEGRITY);
  const auto j = nlohmann::json::parse(text->begin(), text->end(), nullptr, /*allow_exceptions=*/false);
  const std::string where = dir + "/parity.json is damaged (";
  auto damaged = [&](const std::string& what) { fail(EDGECLF_ERR_INTEGRITY, where + what + "); re-export the bundle"); };
  if (j.is_discarded()) damaged("not valid JSON");
  if (!j.is_object()) damaged("not a JSON object");
  const bool versioned = j.contains("schema_version");
  if (versioned) {
    const auto& v = j["schema_version"];
    const long major = v.is_string() ? semver_major(v.get<std::string>()) : -1;
    if (major < 0) damaged("schema_version: " + v.dump() + " is not a semantic version");
    if (major != kParityMajor)
      fail(EDGECLF_ERR_INTEGRITY, dir + "/parity.json: parity report schema_version " + v.dump() +
                                      " is not supported (this runtime reads " + std::to_string(kParityMajor) + ".x); " +
                                      (major > kParityMajor ? "upgrade edgeclf" : "re-export the bundle"));
    for (const char* key : {"split", "images", "temperature", "artifacts"})
      if (!j.contains(key)) damaged(std::string(key) + ": Field required");
    if (!j["artifacts"].is_array()) damaged("artifacts: Input should be a valid list");
  }
  if (!j.contains("table") || !j["table"].is_array()) damaged("no 'table' list of artifacts");
  static const char* const kStatuses[] = {"reference", "ok", "parity_failed", "insufficient_evidence", "export_failed", "skipped"};
  size_t i = 0;
  for (const auto& row : j["table"]) {
    const std::string at = "table." + std::to_string(i);
    if (!row.is_object() || !row.contains("format") || !row["format"].is_string() || !row.contains("precision") ||
        !row["precision"].is_string())
      damaged("table row " + std::to_string(i) + " has no format and precision");
    if (row.contains("status") && !row["status"].is_null()) {
      const auto& st = row["status"];
      const bool known = st.is_string() && std::any_of(std::begin(kStatuses), std::end(kStatuses),
                                                       [&](const char* k) { return st.get<std::string>() == k; });
      if (!known) damaged(at + ".status: " + st.dump() + " is not a status this runtime knows");
    } else if (versioned && !row.contains("status")) {
      damaged(at + ".status: Field required");
    }
    for (const char* key : {"size_mb", "macro_f1", "delta_macro_f1", "agreement", "ms_per_image"}) {
      if (!row.contains(key)) {
        if (versioned) damaged(at + "." + key + ": Field required");
        continue;
      }
      const auto& x = row[key];
      if (!x.is_null() && (!x.is_number() || x.is_boolean()))
        damaged(std::string(key) == "ms_per_image" ? "table row " + std::to_string(i) + ": ms_per_image is not a number"
                                                   : at + "." + key + ": is not a number");
    }
    ++i;
  }
  return j;
}

// The fastest artifact of the bundle's parity run (parity.json "table" rows), by (format, precision).
std::map<std::pair<std::string, std::string>, double> parity_speeds(const std::string& dir) {
  std::map<std::pair<std::string, std::string>, double> out;
  const auto j = read_parity(dir);
  if (j.is_null()) return out;
  for (const auto& row : j["table"])
    if (row.contains("ms_per_image") && row["ms_per_image"].is_number())
      out[{row["format"].get<std::string>(), row["precision"].get<std::string>()}] = row["ms_per_image"].get<double>();
  return out;
}

}  // namespace

struct edgeclf_options {
  edgeclf::LoadOptions o;
};

struct ModelImpl {
  edgeclf::Manifest manifest;
  edgeclf::Artifact artifact;
  std::string backend, device;
  int threads = 0;  // the options' thread count (0: the backend's default)
  int preprocess_bands = -1, preprocess_wide = -1;  // experimental options (-1: not set)
  edgeclf::FileMap files;
  std::unique_ptr<edgeclf::BackendModel> backend_model;
  std::map<std::string, std::string> properties;
};

struct edgeclf_model {
  std::shared_ptr<ModelImpl> impl;
};

struct edgeclf_session {
  std::shared_ptr<ModelImpl> model;
  std::unique_ptr<edgeclf::BackendSession> backend;
  edgeclf::PreprocessScratch scratch;
  std::vector<float> input, logits;
};

namespace {

const char* backend_of(const edgeclf::Artifact& a) {
  if (a.format == "onnx" && a.runtime == "onnxruntime") return "onnxruntime";
  if (a.format == "openvino" && a.runtime == "openvino") return "openvino";
  return nullptr;
}

// The artifacts the options allow and this build can run, in the manifest's order.
std::vector<const edgeclf::Artifact*> candidates(const edgeclf::Manifest& m, const edgeclf::LoadOptions& o) {
  std::vector<const edgeclf::Artifact*> c;
  for (const auto& a : m.artifacts) {
    const char* b = backend_of(a);
    if (a.status != "ok" || b == nullptr) continue;
    if (o.backend != "auto" && o.backend != b) continue;
    if (o.precision != "auto" && o.precision != a.precision) continue;
    if (o.backend == "auto" && !(std::string(b) == "onnxruntime" ? edgeclf::onnxruntime_available_in_build()
                                                                  : edgeclf::openvino_available_in_build()))
      continue;
    c.push_back(&a);
  }
  if (c.empty()) {
    std::string have;
    for (const auto& a : m.artifacts) have += (have.empty() ? "" : ", ") + a.runtime + "/" + a.precision;
    fail(EDGECLF_ERR_BACKEND_UNAVAILABLE, "no artifact in the bundle matches backend " + o.backend + " and precision " +
                                              o.precision + " in this build (backends: " + edgeclf_backends() +
                                              "; bundle has: " + (have.empty() ? "none" : have) + ")");
  }
  return c;
}

// Without timings of this host: the fastest artifact of the bundle's parity run (precision "auto",
// the same rule as edgeclf.predict), else fp32 before other precisions, then the manifest's order.
const edgeclf::Artifact& choose_static(const std::vector<const edgeclf::Artifact*>& c, const edgeclf::LoadOptions& o,
                                       const std::string& dir) {
  if (o.precision == "auto" && !dir.empty()) {
    const auto speed = parity_speeds(dir);
    auto ms = [&](const edgeclf::Artifact* a) {
      auto it = speed.find({a->format, a->precision});
      return it == speed.end() ? 1e300 : it->second;
    };
    return **std::min_element(c.begin(), c.end(), [&](auto* x, auto* y) { return ms(x) < ms(y); });
  }
  // Otherwise: fp32 before other precisions, then the manifest's order.
  auto rank = [](const edgeclf::Artifact* a) { return a->precision == "fp32" ? 0 : 1; };
  return **std::min_element(c.begin(), c.end(), [&](auto* x, auto* y) { return rank(x) < rank(y); });
}

void verify(const std::string& name, const std::string& sha, uint64_t size, const std::vector<uint8_t>& data) {
  if (data.size() != size || edgeclf::sha256_hex(data.data(), data.size()) != sha)
    fail(EDGECLF_ERR_INTEGRITY, "bundle file " + name + " does not match its SHA-256 in edgeclf.json (truncated or "
                                "tampered with); re-export the bundle");
}

// ---- autotune: the fastest candidate artifact as measured on this host -----------------------------------

//: Timed runs per candidate (after two warm-up runs): at most kTuneRuns, stopping once the
//: candidate's share of kTuneBudgetSeconds has passed, but never before kTuneMinRounds (a very slow
//: model still gets a median of three).
constexpr int kTuneRuns = 50;
constexpr int kTuneMinRounds = 3;
constexpr double kTuneBudgetSeconds = 1.0;
//: Entries a cache file keeps (the most recent; one per host, thread setting and bundle).
constexpr size_t kTuneMaxEntries = 32;

struct Tuning {
  const edgeclf::Artifact* chosen = nullptr;
  std::unique_ptr<edgeclf::BackendModel> model;  // the chosen artifact, loaded (when measured here)
  std::string state, timings, cache;
};

// What the host is, for the cache key: the CPU's model name, the number of hardware threads.
std::string host_description() {
  std::string cpu = "unknown cpu";
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    if (key == "model name" || key == "Model" || key == "Hardware" || key == "cpu model") {
      cpu = line.substr(line.find_first_not_of(" \t", colon + 1));
      if (key == "model name") break;
    }
  }
  return cpu + "; " + std::to_string(std::thread::hardware_concurrency()) + " hardware threads";
}

double median_ms(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string fmt_ms(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", ms);
  return buf;
}

// The cache file (JSON): {"format": "edgeclf-autotune", "version": 1, "entries": {key: entry}}; an
// entry names the host, the chosen artifact and every candidate's median milliseconds. A file that
// does not parse, or another format, is ignored (and replaced on the next write), never an error.
nlohmann::json read_tune_cache(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return nlohmann::json();
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (text.size() > kMaxManifestBytes) return nlohmann::json();
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != "edgeclf-autotune" || !j.contains("entries") ||
      !j["entries"].is_object())
    return nlohmann::json();
  return j;
}

// Write atomically (a temporary file beside it, then a rename); "" or why it could not be written.
std::string write_tune_cache(const std::string& path, nlohmann::json doc) {
  namespace fs = std::filesystem;
  auto& entries = doc["entries"];
  while (entries.size() > kTuneMaxEntries) {  // the oldest first (ISO times sort as text)
    auto oldest = entries.begin();
    for (auto it = entries.begin(); it != entries.end(); ++it)
      if (it.value().value("measured_at", "") < oldest.value().value("measured_at", "")) oldest = it;
    entries.erase(oldest);
  }
  const std::string tmp = path + ".tmp." + std::to_string(static_cast<unsigned long>(std::hash<std::thread::id>{}(std::this_thread::get_id())));
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return "cannot write " + tmp;
    f << doc.dump(1) << "\n";
    if (!f.flush()) return "cannot write " + tmp;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return "cannot rename into " + path;
  }
  return "";
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

template <class Open>
Tuning autotune(const std::vector<const edgeclf::Artifact*>& cands, const edgeclf::LoadOptions& o, const std::string& dir,
                const std::string& manifest_text, int crop, size_t classes, Open&& open_artifact) {
  Tuning t;
  t.cache = !o.autotune_cache.empty() ? o.autotune_cache : dir.empty() ? "" : dir + "/autotune.json";
  const std::string host = host_description();
  // the backend libraries the candidates would run on: a new ONNX Runtime or OpenVINO is timed anew
  std::string libraries;
  bool ort = false, ov = false;
  for (const auto* a : cands) (std::string(backend_of(*a)) == "onnxruntime" ? ort : ov) = true;
  if (ort) libraries += "onnxruntime " + edgeclf::onnxruntime_library_version(o) + "; ";
  if (ov) libraries += "openvino " + edgeclf::openvino_library_version() + "; ";
  const std::string key_text = manifest_text + "\n" + host + "\nthreads " + std::to_string(o.threads) + "\ndevice " +
                               o.device + "\nbackend " + o.backend + "\nedgeclf " + EDGECLF_VERSION_STRING + "\n" +
                               libraries;
  const std::string key = edgeclf::sha256_hex(key_text.data(), key_text.size());
  auto describe = [](const nlohmann::json& ms) {
    std::string out;
    for (auto it = ms.begin(); it != ms.end(); ++it)
      if (it.value().is_number()) out += (out.empty() ? "" : ";") + it.key() + "=" + fmt_ms(it.value().get<double>());
    return out;
  };
  nlohmann::json cache = t.cache.empty() ? nlohmann::json() : read_tune_cache(t.cache);
  if (!cache.is_null() && cache["entries"].contains(key)) {
    const auto& e = cache["entries"][key];
    if (e.is_object() && e.contains("chosen") && e["chosen"].is_string() && e.contains("ms") && e["ms"].is_object()) {
      for (const auto* a : cands)
        if (a->file == e["chosen"].get<std::string>()) {
          t.chosen = a;
          t.state = "cached";
          t.timings = describe(e["ms"]);
          return t;
        }
    }
  }
  // measure: one candidate after the other (timing them in turns measured worse: on a small host one
  // runtime's thread pool, still spinning after its run, slows the other's), each loaded, run twice
  // untimed, then timed up to kTuneRuns times within its share of kTuneBudgetSeconds (at least
  // kTuneMinRounds runs); the median per candidate; a candidate slower than the best so far is freed
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const double per = kTuneBudgetSeconds / static_cast<double>(cands.size());
  std::vector<float> input(static_cast<size_t>(3) * crop * crop, 0.0f), logits(classes);
  nlohmann::json ms = nlohmann::json::object();
  double best = 1e300;
  std::unique_ptr<edgeclf::Error> first_error;
  for (const auto* a : cands) {
    std::unique_ptr<edgeclf::BackendModel> model;
    std::vector<double> runs;
    try {  // an artifact this host cannot run is left out of the choice, not a failed load
      model = open_artifact(*a);
      auto session = model->create_session();
      session->run(input.data(), 1, logits.data());  // warm-up: first-run allocations, lazy compilation
      session->run(input.data(), 1, logits.data());
      const auto start = clock::now();
      for (int i = 0; i < kTuneRuns; ++i) {
        const auto r0 = clock::now();
        session->run(input.data(), 1, logits.data());
        runs.push_back(std::chrono::duration<double, std::milli>(clock::now() - r0).count());
        if (i + 1 >= kTuneMinRounds && std::chrono::duration<double>(clock::now() - start).count() > per) break;
      }
    } catch (const edgeclf::Error& e) {
      if (e.status() == EDGECLF_ERR_INTEGRITY) throw;  // a damaged file refuses the bundle, as without tuning
      if (!first_error) first_error = std::make_unique<edgeclf::Error>(e);
      ms[a->file] = std::string("failed: ") + e.what();
      continue;
    }
    const double m = median_ms(runs);
    ms[a->file] = m;
    if (m < best) {
      best = m;
      t.chosen = a;
      t.model = std::move(model);
    }
  }
  if (t.chosen == nullptr) throw *first_error;  // no candidate runs here: the first one's error
  t.timings = describe(ms);
  const double took = std::chrono::duration<double>(clock::now() - t0).count();
  t.state = "measured";
  if (t.cache.empty()) {
    t.state += " (not cached: a bundle loaded from memory names no cache file)";
    return t;
  }
  if (cache.is_null()) cache = {{"format", "edgeclf-autotune"}, {"version", 1}, {"entries", nlohmann::json::object()}};
  cache["entries"][key] = {{"host", host},
                           {"threads", o.threads},
                           {"device", o.device},
                           {"edgeclf", EDGECLF_VERSION_STRING},
                           {"libraries", libraries},
                           {"chosen", t.chosen->file},
                           {"ms", ms},
                           {"seconds", took},
                           {"measured_at", utc_now()}};
  const std::string why = write_tune_cache(t.cache, cache);
  if (!why.empty()) t.state += " (not cached: " + why + ")";
  return t;
}

std::shared_ptr<ModelImpl> load(const char* text, size_t size, const edgeclf::LoadOptions& o, const std::string& dir,
                                const edgeclf_file* files, size_t file_count) {
  auto impl = std::make_shared<ModelImpl>();
  impl->manifest = edgeclf::parse_manifest(text, size);
  if (!dir.empty()) {
    read_parity(dir);  // a damaged parity report refuses the bundle, whatever precision is asked for
    if (o.verify)      // every artifact the manifest lists, as the Python loader checks them
      for (const auto& art : impl->manifest.artifacts) {
        std::vector<edgeclf::FileRef> refs{{art.file, art.sha256, art.size_bytes}};
        refs.insert(refs.end(), art.extra_files.begin(), art.extra_files.end());
        for (const auto& f : refs) verify(f.file, f.sha256, f.size_bytes, *read_file(dir, f.file, f.size_bytes, EDGECLF_ERR_INTEGRITY));
      }
  }
  const auto cands = candidates(impl->manifest, o);
  const int crop = impl->manifest.spec.crop_size;
  const size_t classes = impl->manifest.labels.size();
  auto open_artifact = [&](const edgeclf::Artifact& a) {
    edgeclf::FileMap held;
    std::vector<edgeclf::FileRef> needed{{a.file, a.sha256, a.size_bytes}};
    needed.insert(needed.end(), a.extra_files.begin(), a.extra_files.end());
    for (const auto& f : needed) {
      std::shared_ptr<const std::vector<uint8_t>> data;
      if (!dir.empty()) {
        data = read_file(dir, f.file, f.size_bytes, EDGECLF_ERR_INTEGRITY);
      } else {
        for (size_t i = 0; i < file_count; ++i) {
          need(files[i].name, "file name");
          if (files[i].data == nullptr && files[i].size > 0) fail(EDGECLF_ERR_INVALID_ARGUMENT, "file data is NULL");
          if (f.file == files[i].name) {
            const auto* p = static_cast<const uint8_t*>(files[i].data);
            data = std::make_shared<std::vector<uint8_t>>(p, p + files[i].size);
            break;
          }
        }
        if (!data) fail(EDGECLF_ERR_BUNDLE, "bundle file " + f.file + " was not passed to edgeclf_model_load_memory");
      }
      if (o.verify) verify(f.file, f.sha256, f.size_bytes, *data);
      held[f.file] = std::move(data);
    }
    // the backend holds what it still needs of the files
    return std::string(backend_of(a)) == "onnxruntime" ? edgeclf::load_onnxruntime(a, held, o, crop, classes)
                                                       : edgeclf::load_openvino(a, held, o, crop, classes);
  };
  Tuning tuning;
  if (o.precision == "auto" && o.autotune && cands.size() > 1) {
    tuning = autotune(cands, o, dir, std::string(text, size), crop, classes, open_artifact);
    impl->artifact = *tuning.chosen;
    impl->backend_model = std::move(tuning.model);
  } else {
    tuning.state = o.precision != "auto" ? "off (precision " + o.precision + " asked for)"
                   : !o.autotune         ? "off (disabled by the options)"
                                         : "off (one candidate artifact)";
    impl->artifact = choose_static(cands, o, dir);
  }
  const edgeclf::Artifact& a = impl->artifact;
  impl->backend = backend_of(a);
  impl->threads = o.threads;
  impl->preprocess_bands = o.preprocess_bands;
  impl->preprocess_wide = o.preprocess_wide;
  if (!impl->backend_model) impl->backend_model = open_artifact(a);
  impl->device = impl->backend_model->device();
  impl->properties = {{"backend", impl->backend},
                      {"device", impl->device},
                      {"artifact", a.file},
                      {"format", a.format},
                      {"precision", a.precision},
                      {"name", impl->manifest.name},
                      {"schema_version", impl->manifest.schema_version},
                      {"decision", impl->manifest.decision.describe},
                      {"autotune", tuning.state},
                      {"autotune_ms", tuning.timings},
                      {"autotune_cache", tuning.cache}};
  return impl;
}

edgeclf_status set_choice(edgeclf_options* options, const char* value, const char* what,
                          std::initializer_list<const char*> allowed, std::string edgeclf::LoadOptions::*field) {
  return guarded([&] {
    need(options, "options");
    need(value, what);
    std::string list;
    for (const char* a : allowed) {
      if (std::strcmp(a, value) == 0) {
        options->o.*field = value;
        return;
      }
      list += (list.empty() ? "" : ", ") + std::string(a);
    }
    fail(EDGECLF_ERR_INVALID_ARGUMENT, std::string(what) + " " + value + " is not one of " + list);
  });
}

void softmax_row(const float* logits, size_t n, double temperature, float* out) {
  double mx = -INFINITY;
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(logits[i]) / temperature);
  double sum = 0;
  std::vector<double> e(n);
  for (size_t i = 0; i < n; ++i) sum += e[i] = std::exp(static_cast<double>(logits[i]) / temperature - mx);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(e[i] / sum);
}

// Preprocess `count` images into the session's input buffer and run the backend;
// probabilities (count x classes) into `probs`.
void infer(edgeclf_session* s, const edgeclf_image* images, size_t count, float* probs) {
  need(s, "session");
  need(images, "images");
  if (count == 0) fail(EDGECLF_ERR_INVALID_ARGUMENT, "image_count is 0");
  if (count > kMaxBatch) fail(EDGECLF_ERR_INVALID_ARGUMENT, "image_count " + std::to_string(count) + " exceeds " + std::to_string(kMaxBatch));
  for (size_t i = 0; i < count; ++i) edgeclf::validate_image(&images[i], count == 1 ? static_cast<size_t>(-1) : i);
  const auto& m = s->model->manifest;
  const size_t crop = static_cast<size_t>(m.spec.crop_size), per = 3 * crop * crop, classes = m.labels.size();
  s->input.resize(count * per);
  s->logits.resize(count * classes);
  for (size_t i = 0; i < count; ++i) edgeclf::preprocess_image(m.spec, images[i], s->input.data() + i * per, s->scratch);
  s->backend->run(s->input.data(), count, s->logits.data());
  for (size_t i = 0; i < count; ++i) {
    for (size_t k = 0; k < classes; ++k)
      if (!std::isfinite(s->logits[i * classes + k])) fail(EDGECLF_ERR_BACKEND, "the model produced a non-finite logit");
    softmax_row(s->logits.data() + i * classes, classes, m.temperature, probs + i * classes);
  }
}

void top_k(const float* probs, size_t classes, edgeclf_class_score* out, size_t k) {
  std::vector<int32_t> order(classes);
  std::iota(order.begin(), order.end(), 0);
  const size_t n = std::min(k, classes);
  std::partial_sort(order.begin(), order.begin() + static_cast<ptrdiff_t>(n), order.end(), [&](int32_t a, int32_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  });
  for (size_t i = 0; i < k; ++i) out[i] = i < n ? edgeclf_class_score{order[i], probs[order[i]]} : edgeclf_class_score{-1, 0.0f};
}

}  // namespace

extern "C" {

int32_t edgeclf_api_version(void) { return EDGECLF_API_VERSION; }
const char* edgeclf_version(void) { return EDGECLF_VERSION_STRING; }

const char* edgeclf_backends(void) {
  static const std::string b = [] {
    std::string s;
    if (edgeclf::onnxruntime_available_in_build()) s += "onnxruntime";
    if (edgeclf::openvino_available_in_build()) s += std::string(s.empty() ? "" : ",") + "openvino";
    return s;
  }();
  return b.c_str();
}

const char* edgeclf_last_error(void) { return g_last_error.c_str(); }

const char* edgeclf_status_name(edgeclf_status status) {
  switch (status) {
    case EDGECLF_OK: return "EDGECLF_OK";
    case EDGECLF_ERR_INVALID_ARGUMENT: return "EDGECLF_ERR_INVALID_ARGUMENT";
    case EDGECLF_ERR_IO: return "EDGECLF_ERR_IO";
    case EDGECLF_ERR_BUNDLE: return "EDGECLF_ERR_BUNDLE";
    case EDGECLF_ERR_INTEGRITY: return "EDGECLF_ERR_INTEGRITY";
    case EDGECLF_ERR_UNSUPPORTED: return "EDGECLF_ERR_UNSUPPORTED";
    case EDGECLF_ERR_BACKEND_UNAVAILABLE: return "EDGECLF_ERR_BACKEND_UNAVAILABLE";
    case EDGECLF_ERR_BACKEND: return "EDGECLF_ERR_BACKEND";
    case EDGECLF_ERR_OUT_OF_MEMORY: return "EDGECLF_ERR_OUT_OF_MEMORY";
    case EDGECLF_ERR_BUFFER_TOO_SMALL: return "EDGECLF_ERR_BUFFER_TOO_SMALL";
    case EDGECLF_ERR_NOT_FOUND: return "EDGECLF_ERR_NOT_FOUND";
    case EDGECLF_ERR_INTERNAL: return "EDGECLF_ERR_INTERNAL";
    default: return "EDGECLF_ERR_UNKNOWN";
  }
}

edgeclf_status edgeclf_options_create(edgeclf_options** out) {
  return guarded([&] {
    need(out, "out");
    *out = nullptr;
    *out = new edgeclf_options();
  });
}

void edgeclf_options_free(edgeclf_options* options) { delete options; }

edgeclf_status edgeclf_options_set_threads(edgeclf_options* options, int32_t threads) {
  return guarded([&] {
    need(options, "options");
    if (threads < 0 || threads > 1024) fail(EDGECLF_ERR_INVALID_ARGUMENT, "threads must be 0 (backend default) .. 1024");
    options->o.threads = threads;
  });
}

edgeclf_status edgeclf_options_set_backend(edgeclf_options* options, const char* backend) {
  return set_choice(options, backend, "backend", {"auto", "onnxruntime", "openvino"}, &edgeclf::LoadOptions::backend);
}

edgeclf_status edgeclf_options_set_device(edgeclf_options* options, const char* device) {
  return set_choice(options, device, "device", {"cpu", "cuda", "tensorrt", "CPU", "GPU", "NPU", "AUTO"},
                    &edgeclf::LoadOptions::device);
}

edgeclf_status edgeclf_options_set_precision(edgeclf_options* options, const char* precision) {
  return set_choice(options, precision, "precision", {"auto", "fp32", "fp16", "int8"}, &edgeclf::LoadOptions::precision);
}

edgeclf_status edgeclf_options_set_verify(edgeclf_options* options, int32_t verify) {
  return guarded([&] {
    need(options, "options");
    options->o.verify = verify != 0;
  });
}

edgeclf_status edgeclf_options_set_autotune(edgeclf_options* options, int32_t enabled) {
  return guarded([&] {
    need(options, "options");
    options->o.autotune = enabled != 0;
  });
}

edgeclf_status edgeclf_options_set_autotune_cache(edgeclf_options* options, const char* path) {
  return guarded([&] {
    need(options, "options");
    need(path, "path");
    options->o.autotune_cache = path;
  });
}

edgeclf_status edgeclf_options_set_onnxruntime_library(edgeclf_options* options, const char* path) {
  return guarded([&] {
    need(options, "options");
    need(path, "path");
    options->o.onnxruntime_library = path;
  });
}

edgeclf_status edgeclf_options_set_experimental(edgeclf_options* options, const char* key, const char* value) {
  return guarded([&] {
    need(options, "options");
    need(key, "key");
    need(value, "value");
    struct Knob {
      const char* key;
      int edgeclf::LoadOptions::*field;
      int lo, hi;
    };
    static const Knob knobs[] = {{"ort_spin", &edgeclf::LoadOptions::ort_spin, 0, 1},
                                 {"preprocess_bands", &edgeclf::LoadOptions::preprocess_bands, 1, 2},
                                 {"preprocess_wide", &edgeclf::LoadOptions::preprocess_wide, 0, 1}};
    for (const Knob& k : knobs) {
      if (std::strcmp(k.key, key) != 0) continue;
      if (std::strcmp(value, "auto") == 0) {
        options->o.*k.field = -1;
        return;
      }
      if (value[0] >= '0' + k.lo && value[0] <= '0' + k.hi && value[1] == '\0') {
        options->o.*k.field = value[0] - '0';
        return;
      }
      fail(EDGECLF_ERR_INVALID_ARGUMENT, std::string("experimental option ") + key + " takes " + std::to_string(k.lo) +
                                             ", " + std::to_string(k.hi) + " or auto, not " + value);
    }
    fail(EDGECLF_ERR_NOT_FOUND, std::string("no experimental option ") + key +
                                    " in this build (ort_spin, preprocess_bands, preprocess_wide)");
  });
}

edgeclf_status edgeclf_model_load(const char* bundle_dir, const edgeclf_options* options, edgeclf_model** out) {
  return guarded([&] {
    need(out, "out");
    *out = nullptr;
    need(bundle_dir, "bundle_dir");
    const edgeclf::LoadOptions o = options ? options->o : edgeclf::LoadOptions{};
    std::string dir = bundle_dir;
    if (dir.empty()) fail(EDGECLF_ERR_INVALID_ARGUMENT, "bundle_dir is empty");
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    std::error_code ec;
    if (!std::filesystem::exists(std::filesystem::symlink_status(dir + "/edgeclf.json", ec)))
      fail(EDGECLF_ERR_IO, dir + " is not an edgeclf bundle (no edgeclf.json); create one with `edgeclf export`");
    const auto text = read_file(dir, "edgeclf.json", kMaxManifestBytes);
    auto impl = load(reinterpret_cast<const char*>(text->data()), text->size(), o, dir, nullptr, 0);
    *out = new edgeclf_model{std::move(impl)};
  });
}

edgeclf_status edgeclf_model_load_memory(const char* manifest_json, size_t manifest_size, const edgeclf_file* files,
                                         size_t file_count, const edgeclf_options* options, edgeclf_model** out) {
  return guarded([&] {
    need(out, "out");
    *out = nullptr;
    need(manifest_json, "manifest_json");
    if (manifest_size == 0 || manifest_size > kMaxManifestBytes) fail(EDGECLF_ERR_INVALID_ARGUMENT, "manifest_size is 0 or too large");
    if (file_count > 0) need(files, "files");
    const edgeclf::LoadOptions o = options ? options->o : edgeclf::LoadOptions{};
    auto impl = load(manifest_json, manifest_size, o, "", files, file_count);
    *out = new edgeclf_model{std::move(impl)};
  });
}

void edgeclf_model_free(edgeclf_model* model) { delete model; }

edgeclf_status edgeclf_model_num_classes(const edgeclf_model* model, size_t* out) {
  return guarded([&] {
    need(model, "model");
    need(out, "out");
    *out = model->impl->manifest.labels.size();
  });
}

edgeclf_status edgeclf_model_label(const edgeclf_model* model, int32_t index, const char** out) {
  return guarded([&] {
    need(model, "model");
    need(out, "out");
    *out = nullptr;
    const auto& labels = model->impl->manifest.labels;
    if (index < 0 || static_cast<size_t>(index) >= labels.size())
      fail(EDGECLF_ERR_NOT_FOUND, "label index " + std::to_string(index) + " is not in 0.." + std::to_string(labels.size() - 1));
    *out = labels[static_cast<size_t>(index)].c_str();
  });
}

edgeclf_status edgeclf_model_input_shape(const edgeclf_model* model, int32_t* channels, int32_t* height, int32_t* width) {
  return guarded([&] {
    need(model, "model");
    need(channels, "channels");
    need(height, "height");
    need(width, "width");
    *channels = 3;
    *height = *width = model->impl->manifest.spec.crop_size;
  });
}

edgeclf_status edgeclf_model_property(const edgeclf_model* model, const char* name, const char** out) {
  return guarded([&] {
    need(model, "model");
    need(name, "name");
    need(out, "out");
    *out = nullptr;
    auto it = model->impl->properties.find(name);
    if (it == model->impl->properties.end()) fail(EDGECLF_ERR_NOT_FOUND, std::string("no model property ") + name);
    *out = it->second.c_str();
  });
}

edgeclf_status edgeclf_model_manifest_value(const edgeclf_model* model, const char* json_pointer, char* buffer,
                                            size_t capacity, size_t* length) {
  return guarded([&] {
    need(model, "model");
    need(json_pointer, "json_pointer");
    nlohmann::json::json_pointer ptr;
    try {
      ptr = nlohmann::json::json_pointer(json_pointer);
    } catch (const nlohmann::json::exception& e) {
      fail(EDGECLF_ERR_INVALID_ARGUMENT, std::string("invalid JSON pointer ") + json_pointer + ": " + e.what());
    }
    const auto& raw = model->impl->manifest.raw;
    const nlohmann::json* found = nullptr;
    try {  // an index past the end, or too large for any array, is not there
      if (raw.contains(ptr)) found = &raw.at(ptr);
    } catch (const nlohmann::json::exception&) {
      found = nullptr;
    }
    if (found == nullptr) fail(EDGECLF_ERR_NOT_FOUND, std::string("the manifest has no value at ") + json_pointer);
    const auto& v = *found;
    const std::string text = v.is_string() ? v.get<std::string>() : v.dump();
    if (length) *length = text.size();
    if (buffer == nullptr || capacity < text.size() + 1)
      fail(EDGECLF_ERR_BUFFER_TOO_SMALL, "the value needs " + std::to_string(text.size() + 1) + " bytes with its NUL");
    std::memcpy(buffer, text.c_str(), text.size() + 1);
  });
}

edgeclf_status edgeclf_session_create(const edgeclf_model* model, edgeclf_session** out) {
  return guarded([&] {
    need(out, "out");
    *out = nullptr;
    need(model, "model");
    auto s = std::make_unique<edgeclf_session>();
    s->model = model->impl;
    s->backend = model->impl->backend_model->create_session();
    // Preprocessing in two bands on two threads (identical results either way) only when the
    // model runs off the CPU: with a CPU backend its own worker threads hold the cores and a
    // second band measured no faster end to end. The experimental "preprocess_bands" option
    // overrides that, else EDGECLF_PREPROCESS_BANDS=1|2; "preprocess_wide", else
    // EDGECLF_PREPROCESS_WIDE=0, turns the AVX-512 path off (edgeclf_experimental.h).
    const ModelImpl& mi = *model->impl;
    const unsigned cores = std::thread::hardware_concurrency();
    s->scratch.parts = (mi.threads != 1 && cores >= 2 && mi.device != "cpu") ? 2 : 1;
    if (mi.preprocess_bands > 0)
      s->scratch.parts = mi.preprocess_bands;
    else if (const char* bands = std::getenv("EDGECLF_PREPROCESS_BANDS"); bands && (bands[0] == '1' || bands[0] == '2') && !bands[1])
      s->scratch.parts = bands[0] - '0';
    if (mi.preprocess_wide >= 0)
      s->scratch.wide_disabled = mi.preprocess_wide == 0;
    else if (const char* wide = std::getenv("EDGECLF_PREPROCESS_WIDE"); wide && wide[0] == '0' && !wide[1])
      s->scratch.wide_disabled = true;
    *out = s.release();
  });
}

void edgeclf_session_free(edgeclf_session* session) { delete session; }

edgeclf_status edgeclf_classify(edgeclf_session* session, const edgeclf_image* image, edgeclf_class_score* top,
                                size_t capacity, size_t* count) {
  return edgeclf_classify_batch(session, image, 1, top, capacity, count);
}

edgeclf_status edgeclf_classify_batch(edgeclf_session* session, const edgeclf_image* images, size_t image_count,
                                      edgeclf_class_score* top, size_t k, size_t* count) {
  return guarded([&] {
    need(session, "session");
    need(top, "top");
    if (k == 0 || k > kMaxTopK) fail(EDGECLF_ERR_INVALID_ARGUMENT, "capacity (k) must be 1.." + std::to_string(kMaxTopK));
    check_count(image_count);
    const size_t classes = session->model->manifest.labels.size();
    std::vector<float> probs(std::max<size_t>(image_count, 1) * classes);
    infer(session, images, image_count, probs.data());
    for (size_t i = 0; i < image_count; ++i) top_k(probs.data() + i * classes, classes, top + i * k, k);
    if (count) *count = std::min(k, classes);
  });
}

edgeclf_status edgeclf_classify_decision(edgeclf_session* session, const edgeclf_image* images, size_t image_count,
                                         edgeclf_decision* out) {
  return guarded([&] {
    need(session, "session");
    need(out, "out");
    check_count(image_count);
    const size_t classes = session->model->manifest.labels.size();
    std::vector<float> probs(image_count * classes);
    infer(session, images, image_count, probs.data());  // leaves the raw logits in session->logits
    for (size_t i = 0; i < image_count; ++i)
      edgeclf::decide_row(session->model->manifest, session->logits.data() + i * classes, &out[i]);
  });
}

edgeclf_status edgeclf_decide(const edgeclf_model* model, const float* logits, size_t image_count, edgeclf_decision* out) {
  return guarded([&] {
    need(model, "model");
    need(logits, "logits");
    need(out, "out");
    if (image_count == 0 || image_count > kMaxBatch)
      fail(EDGECLF_ERR_INVALID_ARGUMENT, "image_count must be 1.." + std::to_string(kMaxBatch));
    const auto& m = model->impl->manifest;
    const size_t classes = m.labels.size();
    for (size_t i = 0; i < image_count * classes; ++i)
      if (!std::isfinite(logits[i])) fail(EDGECLF_ERR_INVALID_ARGUMENT, "logits hold a non-finite value at " + std::to_string(i));
    for (size_t i = 0; i < image_count; ++i) edgeclf::decide_row(m, logits + i * classes, &out[i]);
  });
}

const char* edgeclf_rule_name(edgeclf_rule rule) {
  switch (rule) {
    case EDGECLF_RULE_ARGMAX: return "argmax";
    case EDGECLF_RULE_ADJUSTED: return "adjusted";
    case EDGECLF_RULE_COSTS: return "costs";
    case EDGECLF_RULE_REJECT: return "reject";
    default: return "unknown";
  }
}

edgeclf_status edgeclf_probabilities(edgeclf_session* session, const edgeclf_image* images, size_t image_count,
                                     float* probabilities, size_t capacity) {
  return guarded([&] {
    need(session, "session");
    need(probabilities, "probabilities");
    check_count(image_count);
    const size_t classes = session->model->manifest.labels.size();
    if (capacity < image_count * classes)
      fail(EDGECLF_ERR_BUFFER_TOO_SMALL, "probabilities needs " + std::to_string(image_count * classes) + " floats");
    infer(session, images, image_count, probabilities);
  });
}

edgeclf_status edgeclf_preprocess(edgeclf_session* session, const edgeclf_image* image, float* tensor, size_t capacity) {
  return guarded([&] {
    need(session, "session");
    need(tensor, "tensor");
    edgeclf::validate_image(image, static_cast<size_t>(-1));
    const auto& spec = session->model->manifest.spec;
    const size_t n = 3 * static_cast<size_t>(spec.crop_size) * spec.crop_size;
    if (capacity < n) fail(EDGECLF_ERR_BUFFER_TOO_SMALL, "tensor needs " + std::to_string(n) + " floats");
    edgeclf::preprocess_image(spec, *image, tensor, session->scratch);
  });
}

edgeclf_status edgeclf_run_tensor(edgeclf_session* session, const float* tensor, size_t image_count, float* logits,
                                  size_t capacity) {
  return guarded([&] {
    need(session, "session");
    need(tensor, "tensor");
    need(logits, "logits");
    if (image_count == 0 || image_count > kMaxBatch) fail(EDGECLF_ERR_INVALID_ARGUMENT, "image_count must be 1.." + std::to_string(kMaxBatch));
    const size_t classes = session->model->manifest.labels.size();
    if (capacity < image_count * classes)
      fail(EDGECLF_ERR_BUFFER_TOO_SMALL, "logits needs " + std::to_string(image_count * classes) + " floats");
    session->backend->run(tensor, image_count, logits);
  });
}

}  // extern "C"
