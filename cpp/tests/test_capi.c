/*
 * C tests of the edgeclf C API: every bad input is an error code with a message, never a
 * crash or a leak (run under AddressSanitizer + UndefinedBehaviorSanitizer by the test
 * suite), and eight threads sharing one model give results identical to a serial run.
 *
 * Env: EDGECLF_TEST_BUNDLE      a valid bundle directory (without it: exit 77, skipped)
 *      EDGECLF_TEST_BAD_BUNDLES colon-separated bundle directories that must be refused
 */
#include <edgeclf/edgeclf.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                           \
    }                                                                       \
  } while (0)
#define EXPECT_ERR(call, code)                                                                \
  do {                                                                                        \
    edgeclf_status st_ = (call);                                                              \
    if (st_ != (code) || edgeclf_last_error()[0] == '\0') {                                   \
      fprintf(stderr, "%s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, #call, \
              edgeclf_status_name(st_), edgeclf_last_error(), #code);                         \
      ++failures;                                                                             \
    }                                                                                         \
  } while (0)
#define EXPECT_OK(call)                                                                  \
  do {                                                                                   \
    edgeclf_status st_ = (call);                                                         \
    if (st_ != EDGECLF_OK) {                                                             \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, edgeclf_last_error()); \
      ++failures;                                                                        \
    }                                                                                    \
  } while (0)

enum { W = 97, H = 75, PAD = 13, THREADS = 8, ROUNDS = 6 };

static unsigned char pixels[(W * 4 + PAD) * H * 2];

static edgeclf_image make_image(int format, int bpp) {
  edgeclf_image im;
  memset(&im, 0, sizeof im);
  im.data = pixels;
  im.width = format == EDGECLF_PIXEL_NV12 ? W - 1 : W;
  im.height = format == EDGECLF_PIXEL_NV12 ? H - 1 : H;
  im.stride_bytes = im.width * bpp + PAD;
  im.pixel_format = format;
  return im;
}

static void test_no_bundle(void) {
  edgeclf_options* o = NULL;
  edgeclf_model* m = NULL;
  edgeclf_session* s = NULL;
  CHECK(edgeclf_api_version() == EDGECLF_API_VERSION);
  CHECK(strlen(edgeclf_version()) >= 5);
  CHECK(strcmp(edgeclf_status_name(EDGECLF_ERR_INTEGRITY), "EDGECLF_ERR_INTEGRITY") == 0);
  CHECK(strcmp(edgeclf_status_name(-12345), "EDGECLF_ERR_UNKNOWN") == 0);

  /* free(NULL) is a no-op */
  edgeclf_options_free(NULL);
  edgeclf_model_free(NULL);
  edgeclf_session_free(NULL);

  EXPECT_ERR(edgeclf_options_create(NULL), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_OK(edgeclf_options_create(&o));
  EXPECT_ERR(edgeclf_options_set_threads(o, -1), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_options_set_threads(NULL, 1), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_options_set_backend(o, "tflite"), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_options_set_backend(o, NULL), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_options_set_precision(o, "fp64"), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_options_set_device(o, "tpu"), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_options_set_onnxruntime_library(o, NULL), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_OK(edgeclf_options_set_threads(o, 1));

  m = (edgeclf_model*)0x1; /* must be reset to NULL on failure */
  EXPECT_ERR(edgeclf_model_load(NULL, o, &m), EDGECLF_ERR_INVALID_ARGUMENT);
  CHECK(m == NULL);
  EXPECT_ERR(edgeclf_model_load("/nonexistent/bundle", o, &m), EDGECLF_ERR_IO);
  EXPECT_ERR(edgeclf_model_load("", o, &m), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_model_load("/nonexistent", o, NULL), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_model_load_memory(NULL, 10, NULL, 0, o, &m), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_model_load_memory("{", 1, NULL, 0, o, &m), EDGECLF_ERR_BUNDLE);
  EXPECT_ERR(edgeclf_model_load_memory("[1,2]", 5, NULL, 0, o, &m), EDGECLF_ERR_BUNDLE);
  {
    const char* future = "{\"schema_version\": \"9.0.0\", \"labels\": [\"a\"]}";
    EXPECT_ERR(edgeclf_model_load_memory(future, strlen(future), NULL, 0, o, &m), EDGECLF_ERR_UNSUPPORTED);
    const char* traversal =
        "{\"schema_version\":\"1.0.0\",\"labels\":[\"a\"],\"temperature\":1.0,"
        "\"preprocess\":{\"resize_size\":8,\"crop_size\":8,\"interpolation\":\"bilinear\",\"mean\":[0,0,0],\"std\":[1,1,1]},"
        "\"artifacts\":[{\"file\":\"../../etc/passwd\",\"format\":\"onnx\",\"runtime\":\"onnxruntime\",\"precision\":\"fp32\","
        "\"sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"size_bytes\":1}]}";
    EXPECT_ERR(edgeclf_model_load_memory(traversal, strlen(traversal), NULL, 0, o, &m), EDGECLF_ERR_BUNDLE);
  }
  CHECK(m == NULL);

  EXPECT_ERR(edgeclf_session_create(NULL, &s), EDGECLF_ERR_INVALID_ARGUMENT);
  CHECK(s == NULL);
  {
    edgeclf_class_score top[3];
    size_t n = 0;
    edgeclf_image im = make_image(EDGECLF_PIXEL_RGB8, 3);
    EXPECT_ERR(edgeclf_classify(NULL, &im, top, 3, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  }
  size_t n = 0;
  const char* label = NULL;
  EXPECT_ERR(edgeclf_model_num_classes(NULL, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_model_label(NULL, 0, &label), EDGECLF_ERR_INVALID_ARGUMENT);
  {
    float logits[3] = {0, 1, 2};
    edgeclf_decision d;
    EXPECT_ERR(edgeclf_decide(NULL, logits, 1, &d), EDGECLF_ERR_INVALID_ARGUMENT);
    CHECK(strcmp(edgeclf_rule_name(EDGECLF_RULE_REJECT), "reject") == 0);
    CHECK(strcmp(edgeclf_rule_name(EDGECLF_RULE_ARGMAX), "argmax") == 0);
    CHECK(strcmp(edgeclf_rule_name(77), "unknown") == 0);
  }
  edgeclf_options_free(o);
}

static void test_bad_bundles(void) {
  const char* env = getenv("EDGECLF_TEST_BAD_BUNDLES");
  if (!env || !*env) return;
  char* list = strdup(env);
  for (char* dir = strtok(list, ":"); dir; dir = strtok(NULL, ":")) {
    edgeclf_model* m = NULL;
    edgeclf_status st = edgeclf_model_load(dir, NULL, &m);
    if (st == EDGECLF_OK || m != NULL || edgeclf_last_error()[0] == '\0') {
      fprintf(stderr, "bad bundle %s was not refused\n", dir);
      ++failures;
    }
    edgeclf_model_free(m);
  }
  free(list);
}

static void test_bad_images(edgeclf_session* s) {
  edgeclf_class_score top[4];
  size_t n = 0;
  float tensor[4];
  edgeclf_image im = make_image(EDGECLF_PIXEL_RGB8, 3);
  edgeclf_image bad;

  EXPECT_ERR(edgeclf_classify(s, NULL, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_classify(s, &im, NULL, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_classify(s, &im, top, 0, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  bad = im; bad.data = NULL;
  EXPECT_ERR(edgeclf_classify(s, &bad, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  bad = im; bad.width = 0;
  EXPECT_ERR(edgeclf_classify(s, &bad, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  bad = im; bad.height = -5;
  EXPECT_ERR(edgeclf_classify(s, &bad, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  bad = im; bad.width = 1 << 30;
  EXPECT_ERR(edgeclf_classify(s, &bad, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  bad = im; bad.stride_bytes = W * 3 - 1;
  EXPECT_ERR(edgeclf_classify(s, &bad, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  bad = im; bad.stride_bytes = -1;
  EXPECT_ERR(edgeclf_classify(s, &bad, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  bad = im; bad.pixel_format = 99;
  EXPECT_ERR(edgeclf_classify(s, &bad, top, 4, &n), EDGECLF_ERR_UNSUPPORTED);
  bad = make_image(EDGECLF_PIXEL_NV12, 1); bad.width = 33;
  EXPECT_ERR(edgeclf_classify(s, &bad, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_classify_batch(s, &im, 0, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  /* counts are checked before anything is allocated from them */
  EXPECT_ERR(edgeclf_classify_batch(s, &im, 300000000u, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_classify_batch(s, &im, (size_t)1000000000000ull, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_classify_batch(s, &im, SIZE_MAX, top, 4, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_classify_batch(s, &im, 1, top, SIZE_MAX, &n), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_probabilities(s, &im, SIZE_MAX, tensor, 4), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_probabilities(s, &im, SIZE_MAX / 2 + 1, tensor, 4), EDGECLF_ERR_INVALID_ARGUMENT);
  EXPECT_ERR(edgeclf_probabilities(s, &im, 1, tensor, 0), EDGECLF_ERR_BUFFER_TOO_SMALL);
  EXPECT_ERR(edgeclf_preprocess(s, &im, tensor, 4), EDGECLF_ERR_BUFFER_TOO_SMALL);
  EXPECT_ERR(edgeclf_run_tensor(s, NULL, 1, tensor, 4), EDGECLF_ERR_INVALID_ARGUMENT);
  {
    edgeclf_decision d[2];
    EXPECT_ERR(edgeclf_classify_decision(NULL, &im, 1, d), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(edgeclf_classify_decision(s, NULL, 1, d), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(edgeclf_classify_decision(s, &im, 1, NULL), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(edgeclf_classify_decision(s, &im, 0, d), EDGECLF_ERR_INVALID_ARGUMENT);
    bad = im; bad.data = NULL;
    EXPECT_ERR(edgeclf_classify_decision(s, &bad, 1, d), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_OK(edgeclf_classify_decision(s, &im, 1, d));
    CHECK(d[0].index == EDGECLF_DECISION_UNKNOWN || d[0].index >= 0);
    CHECK(strcmp(edgeclf_rule_name(d[0].rule), "unknown") != 0);
    CHECK(d[0].probability > 0.0f && d[0].probability <= 1.0f);
  }
  /* a session still works after errors */
  EXPECT_OK(edgeclf_classify(s, &im, top, 4, &n));
}

typedef struct {
  const edgeclf_model* model;
  float* out; /* ROUNDS x formats x classes */
  int ok;
} worker_arg;

static const int formats[][2] = {{EDGECLF_PIXEL_RGB8, 3}, {EDGECLF_PIXEL_BGR8, 3}, {EDGECLF_PIXEL_RGBA8, 4},
                                 {EDGECLF_PIXEL_BGRA8, 4}, {EDGECLF_PIXEL_GRAY8, 1}, {EDGECLF_PIXEL_NV12, 1}};
enum { NFORMATS = sizeof formats / sizeof formats[0] };

static void* worker(void* p) {
  worker_arg* a = (worker_arg*)p;
  edgeclf_session* s = NULL;
  size_t classes = 0;
  a->ok = edgeclf_session_create(a->model, &s) == EDGECLF_OK && edgeclf_model_num_classes(a->model, &classes) == EDGECLF_OK;
  for (int r = 0; r < ROUNDS && a->ok; ++r)
    for (int f = 0; f < NFORMATS && a->ok; ++f) {
      edgeclf_image im = make_image(formats[f][0], formats[f][1]);
      a->ok = edgeclf_probabilities(s, &im, 1, a->out + (r * NFORMATS + f) * classes, classes) == EDGECLF_OK;
    }
  edgeclf_session_free(s);
  return NULL;
}

static void test_bundle(const char* dir) {
  edgeclf_model* m = NULL;
  edgeclf_session* s = NULL;
  size_t classes = 0;

  /* load / free cycles */
  for (int i = 0; i < 3; ++i) {
    EXPECT_OK(edgeclf_model_load(dir, NULL, &m));
    EXPECT_OK(edgeclf_session_create(m, &s));
    edgeclf_session_free(s);
    edgeclf_model_free(m);
    s = NULL; m = NULL;
  }
  EXPECT_OK(edgeclf_model_load(dir, NULL, &m));
  if (!m) return;
  EXPECT_OK(edgeclf_model_num_classes(m, &classes));
  CHECK(classes >= 2);
  {
    const char* label = NULL;
    char buf[8];
    size_t len = 0;
    EXPECT_OK(edgeclf_model_label(m, 0, &label));
    CHECK(label && *label);
    EXPECT_ERR(edgeclf_model_label(m, (int32_t)classes, &label), EDGECLF_ERR_NOT_FOUND);
    EXPECT_ERR(edgeclf_model_label(m, -1, &label), EDGECLF_ERR_NOT_FOUND);
    EXPECT_ERR(edgeclf_model_property(m, "colour", &label), EDGECLF_ERR_NOT_FOUND);
    EXPECT_OK(edgeclf_model_property(m, "backend", &label));
    EXPECT_ERR(edgeclf_model_manifest_value(m, "/labels", buf, 2, &len), EDGECLF_ERR_BUFFER_TOO_SMALL);
    CHECK(len > 2);
    EXPECT_ERR(edgeclf_model_manifest_value(m, "/no/such/key", buf, sizeof buf, &len), EDGECLF_ERR_NOT_FOUND);
    EXPECT_ERR(edgeclf_model_manifest_value(m, "/labels/99999999999999999999", buf, sizeof buf, &len), EDGECLF_ERR_NOT_FOUND);
    EXPECT_ERR(edgeclf_model_manifest_value(m, "/labels/999", buf, sizeof buf, &len), EDGECLF_ERR_NOT_FOUND);
    EXPECT_ERR(edgeclf_model_manifest_value(m, "not-a-pointer", buf, sizeof buf, &len), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_OK(edgeclf_model_manifest_value(m, "/schema_version", buf, sizeof buf, &len));
    CHECK(buf[0] == '1' && len == strlen(buf));
  }
  for (size_t i = 0; i < sizeof pixels; ++i) pixels[i] = (unsigned char)((i * 2654435761u) >> 13);

  EXPECT_OK(edgeclf_session_create(m, &s));
  test_bad_images(s);
  {
    /* edgeclf_decide on raw logits: ties go to the lower index; a NaN is refused; NULLs too */
    float* z = (float*)calloc(classes * 2, sizeof(float));
    edgeclf_decision d[2];
    EXPECT_OK(edgeclf_decide(m, z, 2, d));
    CHECK(d[0].top_index == 0 && (d[0].index == 0 || d[0].index == EDGECLF_DECISION_UNKNOWN || d[0].rule != EDGECLF_RULE_ARGMAX));
    z[1] = NAN;
    EXPECT_ERR(edgeclf_decide(m, z, 2, d), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(edgeclf_decide(m, NULL, 1, d), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(edgeclf_decide(m, z, 1, NULL), EDGECLF_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(edgeclf_decide(m, z, 0, d), EDGECLF_ERR_INVALID_ARGUMENT);
    free(z);
  }

  /* the session keeps its model alive: free the model first, then use the session */
  {
    edgeclf_model* m2 = NULL;
    edgeclf_session* s2 = NULL;
    edgeclf_class_score top[2];
    size_t n = 0;
    edgeclf_image im = make_image(EDGECLF_PIXEL_RGB8, 3);
    EXPECT_OK(edgeclf_model_load(dir, NULL, &m2));
    EXPECT_OK(edgeclf_session_create(m2, &s2));
    edgeclf_model_free(m2);
    EXPECT_OK(edgeclf_classify(s2, &im, top, 2, &n));
    CHECK(n == 2 && top[0].probability >= top[1].probability);
    edgeclf_session_free(s2);
  }

  /* batch == one by one; top-k rows padded with -1 beyond the class count */
  {
    edgeclf_image ims[NFORMATS];
    float batch[NFORMATS * 64], single[64];
    edgeclf_class_score top[NFORMATS * 70];
    size_t n = 0;
    CHECK(classes <= 64);
    for (int f = 0; f < NFORMATS; ++f) ims[f] = make_image(formats[f][0], formats[f][1]);
    EXPECT_OK(edgeclf_probabilities(s, ims, NFORMATS, batch, sizeof batch / sizeof batch[0]));
    for (int f = 0; f < NFORMATS; ++f) {
      double sum = 0;
      EXPECT_OK(edgeclf_probabilities(s, &ims[f], 1, single, 64));
      for (size_t c = 0; c < classes; ++c) {
        CHECK(fabsf(single[c] - batch[f * classes + c]) < 1e-4f);
        sum += single[c];
      }
      CHECK(fabs(sum - 1.0) < 1e-4);
    }
    EXPECT_OK(edgeclf_classify_batch(s, ims, NFORMATS, top, classes + 2, &n));
    CHECK(n == classes);
    CHECK(top[classes].index == -1 && top[classes + 1].index == -1);
  }

  /* eight threads, one model, one session each: identical to serial */
  {
    const size_t per = (size_t)ROUNDS * NFORMATS * classes;
    float* serial = calloc(per, sizeof(float));
    float* threaded = calloc(per * THREADS, sizeof(float));
    worker_arg args[THREADS];
    pthread_t tids[THREADS];
    worker_arg one = {m, serial, 0};
    worker(&one);
    CHECK(one.ok);
    for (int t = 0; t < THREADS; ++t) {
      args[t].model = m;
      args[t].out = threaded + per * t;
      args[t].ok = 0;
      CHECK(pthread_create(&tids[t], NULL, worker, &args[t]) == 0);
    }
    for (int t = 0; t < THREADS; ++t) {
      pthread_join(tids[t], NULL);
      CHECK(args[t].ok);
      CHECK(memcmp(serial, threaded + per * t, per * sizeof(float)) == 0);
    }
    free(serial);
    free(threaded);
  }
  edgeclf_session_free(s);
  edgeclf_model_free(m);
}

int main(void) {
  const char* bundle = getenv("EDGECLF_TEST_BUNDLE");
  test_no_bundle();
  test_bad_bundles();
  if (bundle && *bundle) test_bundle(bundle);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  if (!bundle || !*bundle) {
    fprintf(stderr, "EDGECLF_TEST_BUNDLE not set: bundle tests skipped\n");
    return 77;
  }
  printf("edgeclf C API tests passed\n");
  return 0;
}
