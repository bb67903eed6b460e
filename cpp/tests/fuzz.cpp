// Fuzz target: manifest parsing, and classify with arbitrary sizes, strides and pixel
// formats. Built with libFuzzer under clang; elsewhere a standalone driver feeds it random
// inputs for a bounded time (both under AddressSanitizer + UndefinedBehaviorSanitizer when
// configured with EDGECLF_SANITIZE).
//
// Env: EDGECLF_FUZZ_BUNDLE  a (small) bundle for the classify half; without it, only manifests.
#include <edgeclf/edgeclf.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace {

edgeclf_model* g_model = nullptr;
edgeclf_session* g_session = nullptr;
size_t g_classes = 0;

void init_once() {
  static bool done = false;
  if (done) return;
  done = true;
  const char* dir = std::getenv("EDGECLF_FUZZ_BUNDLE");
  if (dir && *dir) {
    edgeclf_options* o = nullptr;
    edgeclf_options_create(&o);
    edgeclf_options_set_threads(o, 1);
    if (edgeclf_model_load(dir, o, &g_model) != EDGECLF_OK || edgeclf_session_create(g_model, &g_session) != EDGECLF_OK ||
        edgeclf_model_num_classes(g_model, &g_classes) != EDGECLF_OK) {
      std::fprintf(stderr, "fuzz: cannot load %s: %s\n", dir, edgeclf_last_error());
      std::abort();
    }
    edgeclf_options_free(o);
  }
}

void check_error_set(edgeclf_status st) {
  if (st != EDGECLF_OK && edgeclf_last_error()[0] == '\0') {
    std::fprintf(stderr, "fuzz: status %d without a message\n", st);
    std::abort();
  }
}

void fuzz_manifest(const uint8_t* data, size_t size) {
  edgeclf_model* m = nullptr;
  const edgeclf_status st =
      edgeclf_model_load_memory(reinterpret_cast<const char*>(data), size, nullptr, 0, nullptr, &m);
  check_error_set(st);
  if (st == EDGECLF_OK) std::abort();  // no artifact files were passed: loading cannot succeed
  if (m != nullptr) std::abort();
}

void fuzz_classify(const uint8_t* data, size_t size) {
  if (g_session == nullptr || size < 8) return;
  static const int bpp[] = {0, 3, 3, 4, 4, 1, 1};
  const int format = static_cast<int>(data[0] % 8);  // 0 and 7: invalid formats on purpose
  const int width = static_cast<int>(data[1] | (data[2] & 3) << 8) - 4;      // -4 .. 1019
  const int height = static_cast<int>(data[3] | (data[4] & 3) << 8) - 4;
  const int pad = static_cast<int>(data[5] % 64) - 8;                        // stride may be too small
  const int bp = format >= 1 && format <= 6 ? bpp[format] : 3;
  const int64_t stride = static_cast<int64_t>(width > 0 ? width : 1) * bp + pad;
  const int64_t rows = (height > 0 ? height : 1) * (format == EDGECLF_PIXEL_NV12 ? 2 : 1);
  // Exactly the bytes the declared image covers (when the declaration is valid), so that
  // AddressSanitizer flags any read past them.
  const int64_t bytes = stride > 0 ? stride * rows : 1;
  std::vector<uint8_t> pixels(static_cast<size_t>(bytes > 0 ? bytes : 1));
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = data[8 + i % (size - 8 > 0 ? size - 8 : 1)] ^ static_cast<uint8_t>(i);
  edgeclf_image im{};
  im.data = data[6] == 0 ? nullptr : pixels.data();
  im.width = width;
  im.height = height;
  im.stride_bytes = static_cast<int32_t>(stride);
  im.pixel_format = format;
  edgeclf_class_score top[8];
  size_t n = 0;
  const size_t k = data[7] % 9;  // 0 is invalid
  const edgeclf_status st = edgeclf_classify(g_session, &im, top, k, &n);
  check_error_set(st);
  if (st == EDGECLF_OK) {
    float sum = 0;
    for (size_t i = 0; i < n; ++i) {
      if (top[i].index < 0 || static_cast<size_t>(top[i].index) >= g_classes || !(top[i].probability >= 0)) std::abort();
      if (i > 0 && top[i].probability > top[i - 1].probability) std::abort();
      sum += top[i].probability;
    }
    if (sum > 1.0001f) std::abort();
  }
  // the same image through the decision path: a class, or unknown; never out of range
  edgeclf_decision d{};
  const edgeclf_status sd = edgeclf_classify_decision(g_session, &im, 1, &d);
  check_error_set(sd);
  if (k != 0 && (sd == EDGECLF_OK) != (st == EDGECLF_OK)) std::abort();  // the same image checks
  if (sd == EDGECLF_OK && (d.index < EDGECLF_DECISION_UNKNOWN || d.index >= static_cast<int32_t>(g_classes) ||
                           d.top_index < 0 || d.top_index >= static_cast<int32_t>(g_classes)))
    std::abort();
  // arbitrary bytes as logits (NaN and infinities included): refused or decided, never a crash
  if (size >= 8 + 4 * g_classes) {
    std::vector<float> z(g_classes);
    std::memcpy(z.data(), data + 8, 4 * g_classes);
    const edgeclf_status sz = edgeclf_decide(g_model, z.data(), 1, &d);
    check_error_set(sz);
    if (sz == EDGECLF_OK && (d.index < EDGECLF_DECISION_UNKNOWN || d.index >= static_cast<int32_t>(g_classes))) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  init_once();
  if (size == 0) return 0;
  if (data[0] & 1) fuzz_manifest(data + 1, size - 1);
  else fuzz_classify(data + 1, size - 1);
  return 0;
}

#ifdef EDGECLF_FUZZ_STANDALONE
// A small stand-in for libFuzzer: random inputs plus mutations of JSON-like seeds, for
// EDGECLF_FUZZ_SECONDS (default 10) seconds. Prints the number of executions.
int main(int argc, char** argv) {
  double seconds = 10;
  if (const char* s = std::getenv("EDGECLF_FUZZ_SECONDS")) seconds = std::atof(s);
  unsigned seed = argc > 1 ? static_cast<unsigned>(std::strtoul(argv[1], nullptr, 10)) : 1u;
  std::mt19937 rng(seed);
  std::vector<std::string> seeds = {
      R"({"schema_version":"1.0.0","labels":["a","b"],"temperature":1.5,"preprocess":{"resize_size":8,"crop_size":8,)"
      R"("interpolation":"bicubic","mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5]},"artifacts":[{"file":"m.onnx","format":"onnx",)"
      R"("runtime":"onnxruntime","precision":"fp32","sha256":"00","size_bytes":3}]})",
      R"({"schema_version":"1.2.3-rc1+x","min_runtime_version":"0.0.1","labels":[],"preprocess":{}})",
  };
  // EDGECLF_FUZZ_SEEDS: a folder of seed manifests (the shared good/bad manifest cases)
  if (const char* dir = std::getenv("EDGECLF_FUZZ_SEEDS"); dir && *dir) {
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      std::ifstream f(e.path(), std::ios::binary);
      seeds.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
  }
  // EDGECLF_FUZZ_RUNS: stop after this many executions (else after EDGECLF_FUZZ_SECONDS)
  size_t max_runs = 0;
  if (const char* r = std::getenv("EDGECLF_FUZZ_RUNS")) max_runs = static_cast<size_t>(std::strtoull(r, nullptr, 10));
  if (max_runs > 0) seconds = 1e9;
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  size_t runs = 0;
  std::vector<uint8_t> buf;
  while ((max_runs > 0 && runs < max_runs) || (max_runs == 0 && std::chrono::steady_clock::now() < end)) {
    const int kind = static_cast<int>(rng() % 3);
    if (kind == 0) {  // a mutated manifest
      const std::string& s = seeds[rng() % seeds.size()];
      buf.assign(1, 1);
      buf.insert(buf.end(), s.begin(), s.end());
      const int edits = 1 + static_cast<int>(rng() % 6);
      for (int e = 0; e < edits && buf.size() > 1; ++e) {
        const size_t at = 1 + rng() % (buf.size() - 1);
        switch (rng() % 4) {
          case 0: buf[at] = static_cast<uint8_t>(rng()); break;
          case 1: buf.erase(buf.begin() + static_cast<long>(at)); break;
          case 2: buf.insert(buf.begin() + static_cast<long>(at), static_cast<uint8_t>("{}[]\":,0-9.e"[rng() % 12])); break;
          default: buf.resize(at); break;
        }
      }
    } else {  // random bytes: classify inputs (even first byte) or raw manifests (odd)
      buf.resize(1 + rng() % 64);
      for (auto& b : buf) b = static_cast<uint8_t>(rng());
      if (kind == 1) buf[0] &= 0xFE;
      // Keep most classify images small so that many run per second.
      if (!(buf[0] & 1) && buf.size() > 5 && rng() % 4 != 0) { buf[3] &= 0; buf[5] &= 0; buf[2] = 4 + rng() % 60; buf[4] = 4 + rng() % 60; }
    }
    LLVMFuzzerTestOneInput(buf.data(), buf.size());
    ++runs;
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("fuzz: %zu executions in %.0f s (%zu seeds), no failure\n", runs, took, seeds.size());
  return 0;
}
#endif
