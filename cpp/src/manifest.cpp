// edgeclf.json: parse and validate with nlohmann/json; hashes with OpenSSL's EVP digests.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include <openssl/evp.h>

#include "internal.hpp"

namespace edgeclf {
namespace {

constexpr int kSchemaMajor = 1;  // edgeclf.export.bundle.SCHEMA_VERSION "1.x.y"

using json = nlohmann::json;

const json& require(const json& obj, const char* key, json::value_t type, const char* where) {
  auto it = obj.find(key);
  if (it == obj.end()) fail(EDGECLF_ERR_BUNDLE, std::string("manifest: ") + where + "." + key + " is missing");
  const bool ok = type == json::value_t::number_float ? it->is_number()
                  : type == json::value_t::number_integer ? it->is_number_integer()
                                                          : it->type() == type;
  if (!ok) fail(EDGECLF_ERR_BUNDLE, std::string("manifest: ") + where + "." + key + " has the wrong type");
  return *it;
}

std::string require_string(const json& obj, const char* key, const char* where) {
  return require(obj, key, json::value_t::string, where).get<std::string>();
}

// The spec's fixed choices: when present they must name what this runtime implements.
void expect_value(const json& pp, const char* key, const json& expected) {
  auto it = pp.find(key);
  if (it != pp.end() && *it != expected)
    fail(EDGECLF_ERR_UNSUPPORTED, std::string("manifest: preprocess.") + key + " = " + it->dump() +
                                      " is not supported (this runtime implements " + expected.dump() + ")");
}

// Keys outside `known` are refused, as the Python loader's pydantic models (extra="forbid") do.
void only_keys(const json& obj, std::initializer_list<const char*> known, const std::string& where) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool ok = false;
    for (const char* k : known) ok = ok || it.key() == k;
    if (!ok) fail(EDGECLF_ERR_BUNDLE, "manifest: " + where + (where.empty() ? "" : ".") + it.key() + " is not a known key");
  }
}

bool safe_file_name(const std::string& name) {
  if (name.empty() || name.size() > 255 || name == "." || name == "..") return false;
  for (char c : name)
    if (c == '/' || c == '\\' || c == '\0') return false;
  return true;
}

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

FileRef parse_file_ref(const json& j, const char* where, bool artifact = false) {
  if (!j.is_object()) fail(EDGECLF_ERR_BUNDLE, std::string("manifest: ") + where + " must be an object");
  if (artifact)
    only_keys(j, {"file", "sha256", "size_bytes", "format", "runtime", "precision", "extra_files", "status", "details"}, where);
  else
    only_keys(j, {"file", "sha256", "size_bytes"}, where);
  FileRef f;
  f.file = require_string(j, "file", where);
  f.sha256 = require_string(j, "sha256", where);
  const json& size = require(j, "size_bytes", json::value_t::number_integer, where);
  if (!safe_file_name(f.file))
    fail(EDGECLF_ERR_BUNDLE, std::string("manifest: ") + where + ".file " + json(f.file).dump() +
                                 " is not a plain file name inside the bundle");
  if (!is_hex64(f.sha256)) fail(EDGECLF_ERR_BUNDLE, std::string("manifest: ") + where + ".sha256 is not a SHA-256 hex digest");
  if (size.get<int64_t>() < 0) fail(EDGECLF_ERR_BUNDLE, std::string("manifest: ") + where + ".size_bytes is negative");
  f.size_bytes = size.get<uint64_t>();
  return f;
}

constexpr int kDecisionVersion = 1;  // edgeclf.evaluate.decision.POLICY_VERSION

bool present(const json& obj, const char* key) { return obj.contains(key) && !obj[key].is_null(); }

std::vector<double> finite_numbers(const json& arr, size_t count, const char* what) {
  if (!arr.is_array() || arr.size() != count)
    fail(EDGECLF_ERR_BUNDLE, std::string("manifest: decision.") + what + " must be an array of " + std::to_string(count) + " numbers");
  std::vector<double> out;
  for (const auto& v : arr) {
    if (!v.is_number() || !std::isfinite(v.get<double>()))
      fail(EDGECLF_ERR_BUNDLE, std::string("manifest: decision.") + what + " must hold finite numbers");
    out.push_back(v.get<double>());
  }
  return out;
}

DecisionPolicy parse_decision(const json& d, size_t classes) {
  DecisionPolicy p;
  if (!d.is_object()) fail(EDGECLF_ERR_BUNDLE, "manifest: decision must be an object");
  only_keys(d, {"version", "objectives", "bias", "costs", "reject", "fitted_on", "details"}, "decision");
  const int64_t version = d.contains("version") ? require(d, "version", json::value_t::number_integer, "decision").get<int64_t>() : 1;
  if (d.contains("objectives")) {
    const json& o = require(d, "objectives", json::value_t::array, "decision");
    for (const auto& v : o)
      if (!v.is_string()) fail(EDGECLF_ERR_BUNDLE, "manifest: decision.objectives must be strings");
  }
  if (d.contains("fitted_on")) require_string(d, "fitted_on", "decision");
  if (d.contains("details")) require(d, "details", json::value_t::object, "decision");
  if (version != kDecisionVersion)
    fail(EDGECLF_ERR_UNSUPPORTED, "manifest: decision policy version " + std::to_string(version) +
                                      " is not supported (this runtime reads " + std::to_string(kDecisionVersion) + ")");
  std::string parts;
  auto add = [&](const char* part) { parts += (parts.empty() ? "" : "+") + std::string(part); };
  if (present(d, "bias")) {
    p.bias = finite_numbers(d["bias"], classes, "bias");
    bool any = false;
    for (double b : p.bias) any = any || b != 0.0;
    if (any) add("adjusted");
    else p.bias.clear();
  }
  if (present(d, "costs")) {
    const json& c = d["costs"];
    if (!c.is_array() || c.size() != classes)
      fail(EDGECLF_ERR_BUNDLE, "manifest: decision.costs must be a " + std::to_string(classes) + "x" + std::to_string(classes) + " matrix");
    for (const auto& row : c) {
      const auto r = finite_numbers(row, classes, "costs rows");
      for (double v : r)
        if (v < 0) fail(EDGECLF_ERR_BUNDLE, "manifest: decision.costs has a negative entry");
      p.costs.insert(p.costs.end(), r.begin(), r.end());
    }
    add("costs");
  }
  if (present(d, "reject")) {
    const json& r = d["reject"];
    if (!r.is_object()) fail(EDGECLF_ERR_BUNDLE, "manifest: decision.reject must be an object");
    only_keys(r, {"score", "threshold", "target"}, "decision.reject");
    if (r.contains("target")) require_string(r, "target", "decision.reject");
    const std::string score = require_string(r, "score", "decision.reject");
    if (score == "energy") p.energy = true;
    else if (score != "max_probability")
      fail(EDGECLF_ERR_UNSUPPORTED, "manifest: decision.reject.score " + json(score).dump() + " is not supported");
    p.threshold = require(r, "threshold", json::value_t::number_float, "decision.reject").get<double>();
    if (!std::isfinite(p.threshold)) fail(EDGECLF_ERR_BUNDLE, "manifest: decision.reject.threshold must be finite");
    p.reject = true;
    add("reject");
  }
  p.describe = parts.empty() ? "argmax" : parts;
  return p;
}

}  // namespace

void decide_row(const Manifest& m, const float* logits, edgeclf_decision* out) {
  const size_t n = m.labels.size();
  const double t = m.temperature;
  const DecisionPolicy& p = m.decision;
  std::vector<double> lp(n), a(n);
  double mx = -INFINITY;
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(logits[i]) / t);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) / t - mx);
  const double lse = mx + std::log(sum);
  size_t top = 0;
  for (size_t i = 0; i < n; ++i) {
    lp[i] = static_cast<double>(logits[i]) / t - lse;
    if (lp[i] > lp[top]) top = i;
    a[i] = lp[i] + (p.bias.empty() ? 0.0 : p.bias[i]);
  }
  // the adjusted posterior q = softmax(a): the reject score and the cost rule read it
  double amx = -INFINITY, za = 0;
  for (size_t i = 0; i < n; ++i) amx = std::max(amx, a[i]);
  std::vector<double> q(n);
  for (size_t i = 0; i < n; ++i) za += q[i] = std::exp(a[i] - amx);
  const double lse_a = amx + std::log(za);
  size_t decided = 0;
  if (!p.costs.empty()) {
    double best = INFINITY;
    for (size_t j = 0; j < n; ++j) {
      double risk = 0;
      for (size_t i = 0; i < n; ++i) risk += q[i] / za * p.costs[i * n + j];
      if (risk < best) best = risk, decided = j;
    }
  } else {
    for (size_t i = 1; i < n; ++i)
      if (a[i] > a[decided]) decided = i;
  }
  // max(q) = exp(max a - lse(a)); energy T * logsumexp(z / T + bias) = T * (lse + lse(a))
  const double score = p.energy ? t * (lse + lse_a) : std::exp(amx - lse_a);
  out->top_index = static_cast<int32_t>(top);
  out->score = static_cast<float>(score);
  if (p.reject && score < p.threshold) {
    out->index = EDGECLF_DECISION_UNKNOWN;
    out->rule = EDGECLF_RULE_REJECT;
    out->probability = static_cast<float>(std::exp(lp[top]));
    return;
  }
  out->index = static_cast<int32_t>(decided);
  out->rule = decided == top ? EDGECLF_RULE_ARGMAX : (p.costs.empty() ? EDGECLF_RULE_ADJUSTED : EDGECLF_RULE_COSTS);
  out->probability = static_cast<float>(std::exp(lp[decided]));
}

std::vector<int> parse_semver(const std::string& version, const char* what) {
  std::vector<int> parts;
  size_t i = 0;
  while (parts.size() < 3) {
    size_t j = i;
    while (j < version.size() && version[j] >= '0' && version[j] <= '9') ++j;
    if (j == i || j - i > 6) break;
    parts.push_back(std::stoi(version.substr(i, j - i)));
    if (parts.size() < 3) {
      if (j >= version.size() || version[j] != '.') break;
      i = j + 1;
    } else {
      i = j;
    }
  }
  if (parts.size() != 3 || (i < version.size() && version[i] != '-' && version[i] != '+'))
    fail(EDGECLF_ERR_BUNDLE, std::string("manifest: ") + what + " " + json(version).dump() + " is not a semantic version");
  return parts;
}

Manifest parse_manifest(const char* text, size_t size) {
  Manifest m;
  try {
    m.raw = json::parse(text, text + size);
  } catch (const json::exception& e) {
    fail(EDGECLF_ERR_BUNDLE, std::string("manifest is not valid JSON (") + e.what() + "); the bundle is damaged");
  }
  if (size >= 3 && static_cast<unsigned char>(text[0]) == 0xEF && static_cast<unsigned char>(text[1]) == 0xBB &&
      static_cast<unsigned char>(text[2]) == 0xBF)
    fail(EDGECLF_ERR_BUNDLE, "manifest starts with a UTF-8 byte-order mark; manifests are canonical JSON without one");
  const json& j = m.raw;
  if (!j.is_object()) fail(EDGECLF_ERR_BUNDLE, "manifest: expected a JSON object");
  // the same document the Python loader (edgeclf.export.bundle.BundleManifest) accepts
  only_keys(j, {"schema_version", "min_runtime_version", "name", "created", "creator", "labels", "preprocess",
                "temperature", "source_run", "dataset_fingerprint", "calibration_data", "metrics", "target_profile",
                "decision", "artifacts", "parity"}, "");

  m.schema_version = require_string(j, "schema_version", "");
  const auto schema = parse_semver(m.schema_version, "schema_version");
  if (schema[0] != kSchemaMajor)
    fail(EDGECLF_ERR_UNSUPPORTED, "manifest: schema_version " + m.schema_version + " is not supported (this runtime reads " +
                                      std::to_string(kSchemaMajor) + ".x); use a matching edgeclf runtime");
  {
    const std::string need = require_string(j, "min_runtime_version", "");
    const auto n = parse_semver(need, "min_runtime_version");
    const auto have = parse_semver(EDGECLF_VERSION_STRING, "runtime version");
    if (n > have)
      fail(EDGECLF_ERR_UNSUPPORTED, "this bundle needs edgeclf runtime >= " + need + ", this is " + EDGECLF_VERSION_STRING);
  }
  m.name = require_string(j, "name", "");
  require_string(j, "created", "");
  require_string(j, "dataset_fingerprint", "");
  for (const char* key : {"source_run", "calibration_data", "metrics"}) require(j, key, json::value_t::object, "");
  for (const auto& [k, v] : require(j, "creator", json::value_t::object, "").items())
    if (!v.is_string()) fail(EDGECLF_ERR_BUNDLE, "manifest: creator." + k + " must be a string");
  if (present(j, "target_profile")) require_string(j, "target_profile", "");
  if (j.contains("parity")) require(j, "parity", json::value_t::object, "");

  const json& labels = require(j, "labels", json::value_t::array, "");
  if (labels.empty()) fail(EDGECLF_ERR_BUNDLE, "manifest: labels is empty");
  for (const auto& l : labels) {
    if (!l.is_string()) fail(EDGECLF_ERR_BUNDLE, "manifest: labels must be strings");
    m.labels.push_back(l.get<std::string>());
  }
  {
    std::set<std::string> seen;
    for (const auto& l : m.labels)
      if (!seen.insert(l).second) fail(EDGECLF_ERR_BUNDLE, "manifest: labels names " + json(l).dump() + " more than once");
  }

  const json& pp = require(j, "preprocess", json::value_t::object, "");
  only_keys(pp, {"resize_size", "crop_size", "interpolation", "mean", "std", "scale", "color_order", "resize_mode",
                 "antialias", "rounding", "crop_offset", "layout", "dtype", "version"}, "preprocess");
  if (pp.contains("version") && pp["version"] != 1)
    fail(EDGECLF_ERR_UNSUPPORTED, "manifest: preprocessing spec version " + pp["version"].dump() + " is not supported (expected 1)");
  const int64_t resize = require(pp, "resize_size", json::value_t::number_integer, "preprocess").get<int64_t>();
  const int64_t crop = require(pp, "crop_size", json::value_t::number_integer, "preprocess").get<int64_t>();
  if (crop <= 0 || resize < crop || resize > 8192)
    fail(EDGECLF_ERR_BUNDLE, "manifest: preprocessing needs 0 < crop_size <= resize_size <= 8192, got crop " +
                                 std::to_string(crop) + ", resize " + std::to_string(resize));
  m.spec.resize_size = static_cast<int>(resize);
  m.spec.crop_size = static_cast<int>(crop);
  const std::string interp = require_string(pp, "interpolation", "preprocess");
  if (interp == "bilinear") m.spec.interpolation = Interpolation::Bilinear;
  else if (interp == "bicubic") m.spec.interpolation = Interpolation::Bicubic;
  else fail(EDGECLF_ERR_UNSUPPORTED, "manifest: interpolation " + json(interp).dump() + " is not supported");
  const json& mean = require(pp, "mean", json::value_t::array, "preprocess");
  const json& stdev = require(pp, "std", json::value_t::array, "preprocess");
  if (mean.size() != 3 || stdev.size() != 3) fail(EDGECLF_ERR_BUNDLE, "manifest: preprocess mean and std need 3 values each");
  for (int c = 0; c < 3; ++c) {
    if (!mean[c].is_number() || !stdev[c].is_number()) fail(EDGECLF_ERR_BUNDLE, "manifest: preprocess mean/std must be numbers");
    m.spec.mean[c] = static_cast<float>(mean[c].get<double>());
    m.spec.stdev[c] = static_cast<float>(stdev[c].get<double>());
    if (!(m.spec.stdev[c] > 0.0f) || !std::isfinite(m.spec.stdev[c]) || !std::isfinite(m.spec.mean[c]))
      fail(EDGECLF_ERR_BUNDLE, "manifest: preprocess std must be finite and > 0, mean finite");
  }
  if (pp.contains("scale")) {
    if (!pp["scale"].is_number()) fail(EDGECLF_ERR_BUNDLE, "manifest: preprocess.scale must be a number");
    m.spec.scale = static_cast<float>(pp["scale"].get<double>());
    if (!(m.spec.scale > 0.0f) || !std::isfinite(m.spec.scale)) fail(EDGECLF_ERR_BUNDLE, "manifest: preprocess.scale must be > 0");
  }
  expect_value(pp, "color_order", "RGB");
  expect_value(pp, "resize_mode", "shorter_side");
  expect_value(pp, "antialias", false);
  expect_value(pp, "rounding", "half_to_even");
  expect_value(pp, "crop_offset", "floor");
  expect_value(pp, "layout", "NCHW");
  expect_value(pp, "dtype", "float32");

  const json& t = require(j, "temperature", json::value_t::number_float, "");
  m.temperature = t.get<double>();
  if (!(m.temperature > 0.0) || !std::isfinite(m.temperature))
    fail(EDGECLF_ERR_BUNDLE, "manifest: temperature must be finite and > 0, got " + t.dump());

  if (present(j, "decision")) m.decision = parse_decision(j["decision"], m.labels.size());

  if (j.contains("artifacts")) {
    const json& arts = require(j, "artifacts", json::value_t::array, "");
    for (size_t i = 0; i < arts.size(); ++i) {
      const std::string where = "artifacts[" + std::to_string(i) + "]";
      const FileRef main = parse_file_ref(arts[i], where.c_str(), true);
      Artifact a;
      a.file = main.file;
      a.sha256 = main.sha256;
      a.size_bytes = main.size_bytes;
      a.format = require_string(arts[i], "format", where.c_str());
      a.runtime = require_string(arts[i], "runtime", where.c_str());
      a.precision = require_string(arts[i], "precision", where.c_str());
      a.status = require_string(arts[i], "status", where.c_str());
      if (arts[i].contains("details")) require(arts[i], "details", json::value_t::object, where.c_str());
      if (arts[i].contains("extra_files")) {
        const json& extra = require(arts[i], "extra_files", json::value_t::array, where.c_str());
        for (const auto& e : extra) a.extra_files.push_back(parse_file_ref(e, (where + ".extra_files").c_str()));
      }
      m.artifacts.push_back(std::move(a));
    }
  }
  return m;
}

std::string sha256_hex(const void* data, size_t size) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data, size, digest, &len, EVP_sha256(), nullptr) != 1 || len != 32)
    fail(EDGECLF_ERR_INTERNAL, "SHA-256 computation failed");
  static const char* hex = "0123456789abcdef";
  std::string out(64, '0');
  for (unsigned i = 0; i < 32; ++i) {
    out[2 * i] = hex[digest[i] >> 4];
    out[2 * i + 1] = hex[digest[i] & 15];
  }
  return out;
}

}  // namespace edgeclf
