/*
 * edgeclf — the C API of the edgeclf runtime.
 *
 * Load a bundle written by `edgeclf export`, hand it raw camera pixels, get calibrated
 * class probabilities. The bundle's manifest drives everything between the two: colour
 * conversion, resize, centre crop, normalisation, layout, the inference backend, and the
 * softmax temperature. The caller never passes mean/std.
 *
 * Thread safety: an edgeclf_model is immutable once loaded and may be shared by any number
 * of threads, while an edgeclf_session is scratch state for one thread at a time — create
 * one session per thread.
 *
 * Conventions
 *  - Every function that can fail returns an edgeclf_status: EDGECLF_OK (0) or a negative
 *    code. edgeclf_last_error() then returns a message for the calling thread.
 *  - Nothing throws or aborts across this boundary: bad input is an error code.
 *  - Inputs are borrowed for the duration of the call. Outputs are written into
 *    caller-provided memory, or are objects the caller owns and releases with the matching
 *    _free function. Every _free function accepts NULL (a no-op).
 *  - Strings returned as `const char*` are owned by the object they came from and stay valid
 *    until it is freed.
 *  - The ABI is append-only: functions and status codes are added, never changed.
 *    edgeclf_experimental.h is outside that promise (see there).
 *  - Each function's comment ends with who owns what it returns and what the caller must
 *    free ("Ownership:"), and which threads may call it when ("Threads:").
 *
 * Example
 *   edgeclf_model* model = NULL; edgeclf_session* session = NULL;
 *   if (edgeclf_model_load("bundle", NULL, &model) != EDGECLF_OK) { puts(edgeclf_last_error()); return 1; }
 *   edgeclf_session_create(model, &session);
 *   edgeclf_image img = {pixels, 640, 480, 640 * 3, EDGECLF_PIXEL_RGB8, NULL, 0};
 *   edgeclf_class_score top[5]; size_t n = 0;
 *   edgeclf_classify(session, &img, top, 5, &n);
 *   const char* label = NULL; edgeclf_model_label(model, top[0].index, &label);
 *   edgeclf_session_free(session); edgeclf_model_free(model);
 */
#ifndef EDGECLF_EDGECLF_H
#define EDGECLF_EDGECLF_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(EDGECLF_BUILDING)
#    define EDGECLF_API __declspec(dllexport)
#  elif defined(EDGECLF_STATIC)
#    define EDGECLF_API
#  else
#    define EDGECLF_API __declspec(dllimport)
#  endif
#else
#  define EDGECLF_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** Version of this header's API; compare with edgeclf_api_version() at run time. */
#define EDGECLF_API_VERSION 3 /* 2: decisions (edgeclf_decide, edgeclf_classify_decision); 3: autotune */

/* ---- status codes (new codes may be added) ------------------------------------------ */
typedef int32_t edgeclf_status;
#define EDGECLF_OK 0
#define EDGECLF_ERR_INVALID_ARGUMENT (-1)    /* NULL pointer, bad size, stride, capacity, name */
#define EDGECLF_ERR_IO (-2)                  /* a file could not be read */
#define EDGECLF_ERR_BUNDLE (-3)              /* malformed manifest or missing artifact */
#define EDGECLF_ERR_INTEGRITY (-4)           /* an artifact does not match its SHA-256 / size */
#define EDGECLF_ERR_UNSUPPORTED (-5)         /* schema version, pixel format, precision, ... */
#define EDGECLF_ERR_BACKEND_UNAVAILABLE (-6) /* backend not built in, or its library missing */
#define EDGECLF_ERR_BACKEND (-7)             /* the inference library reported an error */
#define EDGECLF_ERR_OUT_OF_MEMORY (-8)
#define EDGECLF_ERR_BUFFER_TOO_SMALL (-9)    /* the output buffer cannot hold the result */
#define EDGECLF_ERR_NOT_FOUND (-10)          /* no such label index, manifest key, ... */
#define EDGECLF_ERR_INTERNAL (-100)

/* ---- pixel formats -------------------------------------------------------------------- */
typedef int32_t edgeclf_pixel_format;
#define EDGECLF_PIXEL_RGB8 1  /* 3 bytes per pixel, R G B */
#define EDGECLF_PIXEL_BGR8 2  /* 3 bytes per pixel, B G R */
#define EDGECLF_PIXEL_RGBA8 3 /* 4 bytes per pixel, alpha ignored */
#define EDGECLF_PIXEL_BGRA8 4 /* 4 bytes per pixel, alpha ignored */
#define EDGECLF_PIXEL_GRAY8 5 /* 1 byte per pixel, replicated to R = G = B */
#define EDGECLF_PIXEL_NV12 6  /* Y plane, then interleaved U V at half resolution;
                                 BT.601 limited range ("video range"), as camera ISPs emit */

/**
 * An image borrowed for one call. `stride_bytes` is the distance between the starts of two
 * rows and must be at least width * bytes-per-pixel (padding is allowed).
 * For NV12, width and height must be even; `data` is the Y plane; the UV plane is at
 * `uv_data` with `uv_stride_bytes`, or, when `uv_data` is NULL, directly after the Y plane
 * (data + stride_bytes * height) with the same stride. Other formats ignore the uv fields.
 */
typedef struct edgeclf_image {
  const uint8_t* data;
  int32_t width;
  int32_t height;
  int32_t stride_bytes;
  edgeclf_pixel_format pixel_format;
  const uint8_t* uv_data;
  int32_t uv_stride_bytes;
} edgeclf_image;

/** One entry of a top-k result: class index (see edgeclf_model_label) and its probability. */
typedef struct edgeclf_class_score {
  int32_t index;
  float probability;
} edgeclf_class_score;

/* ---- decisions ------------------------------------------------------------------------ */
/** The decided index of an image the bundle's reject rule turned away ("unknown"). */
#define EDGECLF_DECISION_UNKNOWN (-1)
/** Which rule of the bundle's decision policy decided (see edgeclf_rule_name). */
typedef int32_t edgeclf_rule;
#define EDGECLF_RULE_ARGMAX 0   /* the most probable class (the policy did not change the outcome) */
#define EDGECLF_RULE_ADJUSTED 1 /* per-class biases (prior correction, recall targets) chose another class */
#define EDGECLF_RULE_COSTS 2    /* the cost matrix's Bayes-optimal decision chose another class */
#define EDGECLF_RULE_REJECT 3   /* the reject score fell below the policy's threshold: unknown */

/**
 * One image's decision under the bundle's decision policy (manifest section "decision",
 * fitted on validation by `edgeclf evaluate` / `edgeclf build`; a bundle without one
 * decides by argmax). With p = softmax(logits / T), a = log(p) + bias and q = softmax(a):
 *   score = max(q) or, for an "energy" policy, T * logsumexp(logits / T + bias);
 *   score < threshold (reject policies)       -> index = EDGECLF_DECISION_UNKNOWN;
 *   with a cost matrix C (C[i][j]: cost of deciding j when the truth is i)
 *   index = argmin_j sum_i q_i * C[i][j], otherwise argmax_j a_j (ties: lower index).
 */
typedef struct edgeclf_decision {
  int32_t index;       /* the decided class, or EDGECLF_DECISION_UNKNOWN */
  edgeclf_rule rule;   /* the rule that decided */
  int32_t top_index;   /* the most probable class, whatever was decided */
  float probability;   /* calibrated probability of `index` (of `top_index` when unknown) */
  float score;         /* the reject score (max adjusted probability, or energy for an energy policy) */
} edgeclf_decision;

/** A named file in memory, for edgeclf_model_load_memory. */
typedef struct edgeclf_file {
  const char* name; /* the file name as written in the manifest, e.g. "model.onnx" */
  const void* data;
  size_t size;
} edgeclf_file;

typedef struct edgeclf_options edgeclf_options; /* load options; owned by the caller */
typedef struct edgeclf_model edgeclf_model;     /* immutable, shareable across threads */
typedef struct edgeclf_session edgeclf_session; /* per-thread scratch; keeps its model alive */

/* ---- versions and errors -------------------------------------------------------------- */
/** The API version of the library in hand (EDGECLF_API_VERSION of its build).
 *  Ownership: a plain value. Threads: any thread, any time. */
EDGECLF_API int32_t edgeclf_api_version(void);
/** The library's semantic version, e.g. "0.1.0".
 *  Ownership: a static string of the library; never free it; valid as long as the library is
 *  loaded. Threads: any thread, any time. */
EDGECLF_API const char* edgeclf_version(void);
/** The backends built into this library, comma-separated, e.g. "onnxruntime,openvino".
 *  Ownership: a static string of the library; never free it; valid as long as the library is
 *  loaded. Threads: any thread, any time. */
EDGECLF_API const char* edgeclf_backends(void);
/** The last error message of the calling thread ("" if none).
 *  Ownership: owned by the library (per thread); never free it; valid until the next call into
 *  edgeclf from the same thread (copy it to keep it). Threads: each thread sees its own
 *  message; an error on one thread never changes another's. */
EDGECLF_API const char* edgeclf_last_error(void);
/** A name for a status code, e.g. "EDGECLF_ERR_INTEGRITY" ("EDGECLF_ERR_UNKNOWN" otherwise).
 *  Ownership: a static string of the library; never free it. Threads: any thread, any time. */
EDGECLF_API const char* edgeclf_status_name(edgeclf_status status);

/* ---- options -------------------------------------------------------------------------- */
/* Load options are plain data read by edgeclf_model_load / edgeclf_model_load_memory, which
 * copy what they need: an options object may be changed, reused for another load or freed as
 * soon as a load returns. Setters copy their string arguments. An options object is not
 * synchronised: set it from one thread at a time, and do not change it while a load that
 * reads it is running (any number of concurrent loads may read one unchanged object). Every
 * setter returns EDGECLF_ERR_INVALID_ARGUMENT for a NULL options or value and for a value
 * outside the documented ones, and leaves the options unchanged then.
 * Experimental knobs (latency and CPU trade-offs, comparisons) are not here but in
 * edgeclf_experimental.h. */

/** Create load options holding the defaults.
 *  Ownership: on success *out is a new object the caller owns and frees with
 *  edgeclf_options_free; on failure *out is NULL. Threads: any thread. */
EDGECLF_API edgeclf_status edgeclf_options_create(edgeclf_options** out);
/** Free options from edgeclf_options_create (NULL: no-op). Models loaded with them are not
 *  affected. Threads: not while another thread uses the same options. */
EDGECLF_API void edgeclf_options_free(edgeclf_options* options);
/** Intra-op threads of the backend: 0 (default) lets the backend decide, else 1..1024. The
 *  preprocessing runs on the calling thread; with a GPU backend (and threads != 1) it may
 *  split an image into two bands, the second on a helper thread (the output is identical
 *  either way; see edgeclf_experimental.h to choose). Ownership: a plain value.
 *  Threads: see the options section. */
EDGECLF_API edgeclf_status edgeclf_options_set_threads(edgeclf_options* options, int32_t threads);
/** "auto" (default), "onnxruntime" or "openvino". Ownership: `backend` is copied; the
 *  caller keeps it. Threads: see the options section. */
EDGECLF_API edgeclf_status edgeclf_options_set_backend(edgeclf_options* options, const char* backend);
/** "cpu" (default), "cuda" or "tensorrt" (ONNX Runtime execution providers), or an OpenVINO
 *  device name ("CPU", "GPU", "NPU", "AUTO"). Ownership: `device` is copied; the caller
 *  keeps it. Threads: see the options section. */
EDGECLF_API edgeclf_status edgeclf_options_set_device(edgeclf_options* options, const char* device);
/** "auto" (default: the fastest artifact as timed on this host at load, see
 *  edgeclf_options_set_autotune), "fp32", "fp16" or "int8". Ownership: `precision` is copied;
 *  the caller keeps it. Threads: see the options section. */
EDGECLF_API edgeclf_status edgeclf_options_set_precision(edgeclf_options* options, const char* precision);
/** Verify every artifact's SHA-256 at load (default 1; any non-zero value is 1). Disable only
 *  for trusted storage. Ownership: a plain value. Threads: see the options section. */
EDGECLF_API edgeclf_status edgeclf_options_set_verify(edgeclf_options* options, int32_t verify);
/** Autotune (default 1; any non-zero value is 1). With precision "auto" and more than one
 *  artifact the options allow, the load times each candidate on this host, one after the other
 *  (two warm-up runs, then up to 50 single-image runs at the options' thread count within its
 *  share of about 1 s of timing in all, at least 3; besides loading each artifact once) and keeps
 *  the fastest by median. The result is cached per host
 *  (CPU model, hardware threads), thread count, device, backend filter, library versions and
 *  bundle (its manifest's SHA-256) in the cache file (edgeclf_options_set_autotune_cache), so
 *  later loads on the same host time nothing; `edgeclf bench BUNDLE --tune` fills it ahead of
 *  time, and a bundle shipped with its autotune.json loads without timing on the devices it
 *  was tuned on. A candidate this host cannot load is left out of the choice. 0: no timing; the
 *  fastest artifact of the bundle's parity run (timed on the export host) is loaded, as in API
 *  version 2. The model's properties "autotune" ("measured", "cached" or "off (why)"),
 *  "autotune_ms" ("file=ms;..." per candidate) and "autotune_cache" say what happened.
 *  Ownership: a plain value. Threads: see the options section. */
EDGECLF_API edgeclf_status edgeclf_options_set_autotune(edgeclf_options* options, int32_t enabled);
/** The autotune cache file (default: autotune.json in the bundle directory; none for a bundle
 *  loaded from memory). A file that cannot be written (a read-only bundle) only means the
 *  timing is not kept; a damaged or foreign one is ignored and replaced. Written atomically.
 *  Ownership: `path` is copied; the caller keeps it. Threads: see the options section. */
EDGECLF_API edgeclf_status edgeclf_options_set_autotune_cache(edgeclf_options* options, const char* path);
/** Path of the ONNX Runtime shared library to use. It wins over the environment variable
 *  EDGECLF_ONNXRUNTIME_LIBRARY; without either, the library looks next to itself, in the
 *  onnxruntime Python package beside it, then for the system's libonnxruntime.so.1 (the full
 *  order is in DEVELOPERS.md). The first library opened stays in use for the life of the
 *  process. Ownership: `path` is copied; the caller
 *  keeps it. Threads: see the options section. */
EDGECLF_API edgeclf_status edgeclf_options_set_onnxruntime_library(edgeclf_options* options, const char* path);

/* ---- models --------------------------------------------------------------------------- */
/* A model is immutable once loaded: every function below that takes a `const edgeclf_model*`
 * may be called from any number of threads at once on one shared model. Strings a model
 * returns (labels, properties) are owned by it: never free them; they stay valid until the
 * model is freed. */

/** Load the bundle in directory `bundle_dir`. `options` may be NULL (defaults).
 *  Ownership: `bundle_dir` and `options` are borrowed for the call (the model keeps a copy
 *  of the options it needs). On success *out is a new model the caller owns and frees with
 *  edgeclf_model_free; on failure *out is NULL. Threads: any thread; concurrent loads are
 *  independent. */
EDGECLF_API edgeclf_status edgeclf_model_load(const char* bundle_dir, const edgeclf_options* options,
                                              edgeclf_model** out);
/** Load a bundle held in memory: the manifest (edgeclf.json) text and the files it names.
 *  Ownership: the manifest, the file array and the files' names and data are borrowed for the
 *  call and copied as needed; the caller may free them when this returns. On success *out is
 *  a new model the caller owns and frees with edgeclf_model_free; on failure *out is NULL.
 *  Threads: any thread; concurrent loads are independent. */
EDGECLF_API edgeclf_status edgeclf_model_load_memory(const char* manifest_json, size_t manifest_size,
                                                     const edgeclf_file* files, size_t file_count,
                                                     const edgeclf_options* options, edgeclf_model** out);
/** Free a model (NULL: no-op). Strings it returned become invalid. Sessions created from it
 *  hold their own reference to the loaded model and keep working until they are freed.
 *  Threads: not while another thread still uses this model handle. */
EDGECLF_API void edgeclf_model_free(edgeclf_model* model);
/** The number of classes (labels) into *out. Ownership: writes caller memory.
 *  Threads: thread-safe on a shared model. */
EDGECLF_API edgeclf_status edgeclf_model_num_classes(const edgeclf_model* model, size_t* out);
/** The label of class `index` (0 .. classes - 1; else EDGECLF_ERR_NOT_FOUND) into *out.
 *  Ownership: *out is owned by the model; never free it; valid until the model is freed.
 *  Threads: thread-safe on a shared model. */
EDGECLF_API edgeclf_status edgeclf_model_label(const edgeclf_model* model, int32_t index, const char** out);
/** The model's input tensor size: channels (3), height and width (the crop size).
 *  Ownership: writes caller memory. Threads: thread-safe on a shared model. */
EDGECLF_API edgeclf_status edgeclf_model_input_shape(const edgeclf_model* model, int32_t* channels,
                                                     int32_t* height, int32_t* width);
/** A property of the loaded model: "backend", "device", "artifact" (file name), "format",
 *  "precision", "name", "schema_version", "decision" (the policy in words: "argmax", or its
 *  parts, e.g. "adjusted+reject"), "autotune", "autotune_ms", "autotune_cache" (see
 *  edgeclf_options_set_autotune); another name is EDGECLF_ERR_NOT_FOUND.
 *  Ownership: `name` is borrowed for the call; *out is owned by the model; never free it;
 *  valid until the model is freed. Threads: thread-safe on a shared model. */
EDGECLF_API edgeclf_status edgeclf_model_property(const edgeclf_model* model, const char* name, const char** out);
/** A manifest value by JSON pointer (RFC 6901), e.g. "/preprocess/crop_size" or
 *  "/metrics/test/macro_f1". Strings are written without quotes, anything else as compact
 *  JSON, NUL-terminated. *length (may be NULL) receives the length without the NUL; with
 *  EDGECLF_ERR_BUFFER_TOO_SMALL (also for a NULL buffer: ask for the length first) it
 *  receives the length needed. Ownership: the value is copied into the caller's `buffer`
 *  (`capacity` bytes); nothing to free. Threads: thread-safe on a shared model. */
EDGECLF_API edgeclf_status edgeclf_model_manifest_value(const edgeclf_model* model, const char* json_pointer,
                                                        char* buffer, size_t capacity, size_t* length);

/* ---- sessions ------------------------------------------------------------------------- */
/* A session is one thread's scratch state: the calls below that take an `edgeclf_session*`
 * must not run on one session from two threads at once (a session may move between threads
 * between calls). Images are borrowed for the duration of a call; every result is written
 * into caller-provided memory, so nothing a session call returns needs freeing. After an
 * error the session stays usable. */

/** Create a session on `model`. Ownership: on success *out is a new session the caller owns
 *  and frees with edgeclf_session_free; on failure *out is NULL. The session holds its own
 *  reference to the loaded model: the model may be freed first. Threads: thread-safe on a
 *  shared model (one session per thread). */
EDGECLF_API edgeclf_status edgeclf_session_create(const edgeclf_model* model, edgeclf_session** out);
/** Free a session (NULL: no-op); releases its reference to the model. Threads: not while a
 *  call on this session is running. */
EDGECLF_API void edgeclf_session_free(edgeclf_session* session);

/** Classify one image: the `capacity` most probable classes, best first, into `top`
 *  (ties: lower class index first). *count (may be NULL) receives min(capacity, classes).
 *  Ownership: `image` borrowed for the call; `top` is caller memory of `capacity` entries.
 *  Threads: one call per session at a time. */
EDGECLF_API edgeclf_status edgeclf_classify(edgeclf_session* session, const edgeclf_image* image,
                                            edgeclf_class_score* top, size_t capacity, size_t* count);
/** Classify `image_count` images in one backend call. `top` holds image_count * k entries:
 *  image i's best k at top[i * k]. *count (may be NULL) receives min(k, classes); when k
 *  exceeds the number of classes, the remaining entries of each row are index -1, p 0.
 *  Ownership: `images` borrowed for the call; `top` is caller memory.
 *  Threads: one call per session at a time. */
EDGECLF_API edgeclf_status edgeclf_classify_batch(edgeclf_session* session, const edgeclf_image* images,
                                                  size_t image_count, edgeclf_class_score* top, size_t k,
                                                  size_t* count);
/** Calibrated probabilities of every class for `image_count` images, row-major into
 *  `probabilities` (capacity in floats, at least image_count * classes).
 *  Ownership: `images` borrowed for the call; `probabilities` is caller memory.
 *  Threads: one call per session at a time. */
EDGECLF_API edgeclf_status edgeclf_probabilities(edgeclf_session* session, const edgeclf_image* images,
                                                 size_t image_count, float* probabilities, size_t capacity);
/** Decide `image_count` images under the bundle's decision policy: one edgeclf_decision per
 *  image into `out` (capacity: image_count entries). The same preprocessing and inference as
 *  edgeclf_classify_batch. Ownership: `images` borrowed for the call; `out` is caller memory.
 *  Threads: one call per session at a time. */
EDGECLF_API edgeclf_status edgeclf_classify_decision(edgeclf_session* session, const edgeclf_image* images,
                                                     size_t image_count, edgeclf_decision* out);
/** Apply the bundle's decision policy to raw logits computed elsewhere (image_count x classes,
 *  row-major, e.g. from edgeclf_run_tensor): one edgeclf_decision per row into `out`. Needs no
 *  session. Non-finite logits are EDGECLF_ERR_INVALID_ARGUMENT. Ownership: `logits` borrowed
 *  for the call; `out` is caller memory of image_count entries. Threads: thread-safe on a
 *  shared model. */
EDGECLF_API edgeclf_status edgeclf_decide(const edgeclf_model* model, const float* logits, size_t image_count,
                                          edgeclf_decision* out);
/** A name for a rule: "argmax", "adjusted", "costs", "reject" ("unknown" otherwise).
 *  Ownership: a static string of the library; never free it. Threads: any thread, any time. */
EDGECLF_API const char* edgeclf_rule_name(edgeclf_rule rule);

/** The preprocessed input tensor (channels x height x width float32, see
 *  edgeclf_model_input_shape) exactly as inference sees it. For checking and debugging.
 *  Ownership: `image` borrowed for the call; `tensor` is caller memory of `capacity` floats.
 *  Threads: one call per session at a time. */
EDGECLF_API edgeclf_status edgeclf_preprocess(edgeclf_session* session, const edgeclf_image* image,
                                              float* tensor, size_t capacity);
/** Run inference on a tensor already preprocessed (image_count x C x H x W float32) and write
 *  the raw logits (image_count x classes). For measuring the backend alone.
 *  Ownership: `tensor` borrowed for the call; `logits` is caller memory of `capacity` floats.
 *  Threads: one call per session at a time. */
EDGECLF_API edgeclf_status edgeclf_run_tensor(edgeclf_session* session, const float* tensor, size_t image_count,
                                              float* logits, size_t capacity);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EDGECLF_EDGECLF_H */
