// Internal types of the edgeclf runtime. Nothing here crosses the C API boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgeclf/edgeclf.h"

namespace edgeclf {

// Every internal failure is an Error carrying the status the C API returns.
class Error : public std::runtime_error {
 public:
  Error(edgeclf_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  edgeclf_status status() const noexcept { return status_; }

 private:
  edgeclf_status status_;
};

[[noreturn]] inline void fail(edgeclf_status status, const std::string& message) { throw Error(status, message); }

// ---- manifest --------------------------------------------------------------------------
enum class Interpolation { Bilinear, Bicubic };

struct PreprocessSpec {
  int resize_size = 0;
  int crop_size = 0;
  Interpolation interpolation = Interpolation::Bilinear;
  float mean[3] = {0, 0, 0};
  float stdev[3] = {1, 1, 1};
  float scale = 1.0f / 255.0f;
};

struct FileRef {
  std::string file;
  std::string sha256;
  uint64_t size_bytes = 0;
};

struct Artifact {
  std::string file, format, runtime, precision, status;
  std::string sha256;
  uint64_t size_bytes = 0;
  std::vector<FileRef> extra_files;
};

// The manifest's "decision" section (edgeclf.evaluate.decision); absent or null: argmax.
struct DecisionPolicy {
  std::vector<double> bias;   // per class; empty: all zero
  std::vector<double> costs;  // classes x classes row-major (truth, decided); empty: none
  bool reject = false;
  bool energy = false;        // reject score: false = max probability, true = T * logsumexp(z / T)
  double threshold = 0.0;
  std::string describe = "argmax";
};

struct Manifest {
  nlohmann::json raw;
  std::string schema_version, name;
  std::vector<std::string> labels;
  PreprocessSpec spec;
  double temperature = 1.0;
  DecisionPolicy decision;
  std::vector<Artifact> artifacts;
};

// Decide one row of `classes` logits under the manifest's policy (the reference is
// edgeclf.evaluate.decision.decide; the two are held equal by the export's parity rows).
void decide_row(const Manifest& m, const float* logits, edgeclf_decision* out);

// Parse and validate manifest text (throws Error with EDGECLF_ERR_BUNDLE / _UNSUPPORTED).
Manifest parse_manifest(const char* text, size_t size);
// "1.2.3" -> {1,2,3}; throws on anything else.
std::vector<int> parse_semver(const std::string& version, const char* what);

std::string sha256_hex(const void* data, size_t size);

// ---- preprocessing ---------------------------------------------------------------------
// Per-band buffers (a band: a range of output rows, see preprocess.cpp).
struct PreprocessBand {
  std::vector<uint8_t> rgb_row;   // one converted source row (RGB8)
  std::vector<float> hrows;       // horizontally resized source rows, crop columns only
  std::vector<float> planes;      // one source row as three float planes
};

// Images at least this large (output values) are preprocessed in `parts` bands, the second
// on a helper thread; smaller ones are not worth a thread start.
constexpr int kMaxParts = 2;
constexpr size_t kParallelMinValues = 64 * 64 * 3;

// Source columns one AVX-512 window holds (three registers); planes are padded by as much.
constexpr int kWideWindow = 48;

// What the horizontal pass of one image needs (read-only, shared by its bands).
struct HorizontalPlan {
  const int32_t* idxT;  // column taps, tap-major, relative to the first column read
  const float* wT;
  const int32_t* start;  // wide path: each group's first column
  const int32_t* rel;    // wide path: taps relative to it, [group][tap][16]
  const uint8_t* consec; // AVX2 path: whether each group of 8 outputs reads consecutive columns (null: off)
  int taps, crop;
  bool wide;
  bool simd;             // AVX2 conversion of packed 3-byte rows to float planes
};

// Scratch reused across calls of one session.
struct PreprocessScratch {
  int parts = 1;                   // bands per image: 1, or 2 when the session may use two threads
  bool wide = false;               // this image takes the AVX-512 window path
  bool wide_disabled = false;      // never, nor the AVX2 path (preprocess_wide 0 / EDGECLF_PREPROCESS_WIDE=0: for comparisons)
  std::vector<int32_t> wstart, wrel;
  std::vector<uint8_t> consec;     // AVX2 path: per group of 8 outputs, consecutive taps (empty: off)
  int plan_w = -1, plan_h = -1;    // the image size the taps below were computed for
  int plan_x0 = 0, plan_x1 = 0;    // first and last source column any tap reads
  std::vector<int32_t> xidx, yidx; // tap indices
  std::vector<float> xw, yw;      // tap weights
  std::vector<int32_t> xidxT;     // column taps, tap-major, relative to the first column read
  std::vector<float> xwT;
  PreprocessBand band[kMaxParts];
};

// Validate `image` and write the 3 x crop x crop float32 tensor the spec defines to `out`.
void preprocess_image(const PreprocessSpec& spec, const edgeclf_image& image, float* out, PreprocessScratch& scratch);
void validate_image(const edgeclf_image* image, size_t position);

// ---- backends --------------------------------------------------------------------------
struct LoadOptions {
  int threads = 0;
  std::string backend = "auto";
  std::string device = "cpu";
  std::string precision = "auto";
  bool verify = true;
  std::string onnxruntime_library;
  // precision "auto": time the candidate artifacts on this host at load (cached per host)
  bool autotune = true;
  std::string autotune_cache;  // "" : <bundle>/autotune.json for a directory bundle, none in memory
  // Experimental knobs (edgeclf_experimental.h); -1: not set, the environment or the built-in
  // choice decides.
  int ort_spin = -1;          // 0 | 1
  int preprocess_bands = -1;  // 1 | 2
  int preprocess_wide = -1;   // 0 | 1
};

// Per-session inference state (not thread-safe; one per session).
class BackendSession {
 public:
  virtual ~BackendSession() = default;
  // input: n x 3 x H x W float32; logits: n x classes float32.
  virtual void run(const float* input, size_t n, float* logits) = 0;
};

// A loaded artifact (immutable after load; shared by sessions on many threads).
class BackendModel {
 public:
  virtual ~BackendModel() = default;
  virtual std::unique_ptr<BackendSession> create_session() const = 0;
  virtual std::string device() const = 0;
};

using FileMap = std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>>;

bool onnxruntime_available_in_build();
bool openvino_available_in_build();
// The backend library in use, for the autotune cache key ("" when the build lacks the backend;
// "unavailable" when ONNX Runtime's library cannot be loaded).
std::string onnxruntime_library_version(const LoadOptions& options);
std::string openvino_library_version();
std::unique_ptr<BackendModel> load_onnxruntime(const Artifact& artifact, const FileMap& files, const LoadOptions& options,
                                               int crop, size_t classes);
std::unique_ptr<BackendModel> load_openvino(const Artifact& artifact, const FileMap& files, const LoadOptions& options,
                                            int crop, size_t classes);

}  // namespace edgeclf
