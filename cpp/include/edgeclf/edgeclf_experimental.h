/*
 * edgeclf_experimental.h — experimental knobs of the edgeclf runtime.
 *
 * EXPERIMENTAL (may change without notice). Everything in this header is outside the
 * promises of edgeclf.h: it is not covered by EDGECLF_API_VERSION nor by the append-only
 * ABI, and a key may be renamed, change meaning or disappear in any release (an unknown key
 * is then an error code, never a crash). Use it for measurements and comparisons, and set
 * the knobs from configuration rather than compiling them into a product.
 *
 * No knob changes any output: they trade latency against CPU use and power, or select a
 * code path so that the paths can be compared (the tests hold their results identical).
 * What each one measured is in the README and DEVELOPERS.md.
 *
 * Each knob also has an environment variable, read as before. Precedence, highest first:
 *   1. the value set on the options with edgeclf_options_set_experimental;
 *   2. the environment variable (when it holds a valid value; others are ignored);
 *   3. the built-in choice.
 * Setting a key to "auto" removes an explicit value (back to 2 and 3).
 *
 *   key                value   environment                  read at
 *   "ort_spin"         0 | 1   EDGECLF_ORT_SPIN=0|1         load (edgeclf_model_load*)
 *       ONNX Runtime's intra-op worker threads spin for a while after each run (1, ONNX
 *       Runtime's default: lowest latency, more CPU and power) or sleep (0). OpenVINO
 *       ignores it.
 *   "preprocess_bands" 1 | 2   EDGECLF_PREPROCESS_BANDS=1|2 session creation
 *       Row bands per image in the preprocessing; with 2 the second band runs on a helper
 *       thread (images of at least 64 x 64 x 3 output values). Built in: 2 when the model
 *       runs off the CPU, threads != 1 and the machine has two cores or more, else 1.
 *   "preprocess_wide"  0 | 1   EDGECLF_PREPROCESS_WIDE=0    session creation
 *       1: the horizontal resize takes the AVX-512 window path where the CPU and the scale
 *       allow (built in); 0: never.
 *
 * The options object is the one of edgeclf.h and follows its rules (one thread at a time;
 * loads copy it). "preprocess_*" are kept by the model and apply to every session created
 * from it.
 */
#ifndef EDGECLF_EDGECLF_EXPERIMENTAL_H
#define EDGECLF_EDGECLF_EXPERIMENTAL_H

#include "edgeclf/edgeclf.h"

#ifdef __cplusplus
extern "C" {
#endif

/** EXPERIMENTAL. Set knob `key` to `value` (both NUL-terminated strings, see the table
 *  above). An unknown key is EDGECLF_ERR_NOT_FOUND; a NULL argument or a value the key does
 *  not take is EDGECLF_ERR_INVALID_ARGUMENT; the options are unchanged then.
 *  Ownership: `key` and `value` are borrowed for the call (copied as needed).
 *  Threads: one thread at a time per options object. */
EDGECLF_API edgeclf_status edgeclf_options_set_experimental(edgeclf_options* options, const char* key,
                                                            const char* value);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EDGECLF_EDGECLF_EXPERIMENTAL_H */
