/*
 * classify — print the top-5 classes of an image with an edgeclf bundle.
 *
 *   classify BUNDLE_DIR IMAGE.ppm|IMAGE.pgm           binary PPM (P6, RGB) or PGM (P5, grey)
 *   classify BUNDLE_DIR FRAME.raw WIDTH HEIGHT FORMAT  raw frame, FORMAT one of
 *                                                      RGB8 BGR8 RGBA8 BGRA8 GRAY8 NV12
 *
 * EDGECLF_BACKEND (auto, onnxruntime, openvino) and EDGECLF_PRECISION (auto, fp32, fp16,
 * int8) choose the artifact; unset, the runtime takes the fastest it can run.
 *
 * A plain C99 program against the installed package:
 *   find_package(edgeclf REQUIRED)  target_link_libraries(classify PRIVATE edgeclf::edgeclf)
 */
#include <edgeclf/edgeclf.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char* read_all(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char* buf = NULL;
  size_t cap = 0, n = 0;
  for (;;) {
    if (n == cap) {
      cap = cap ? cap * 2 : 1 << 20;
      unsigned char* grown = realloc(buf, cap);
      if (!grown) { free(buf); fclose(f); return NULL; }
      buf = grown;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  fclose(f);
  *size = n;
  return buf;
}

/* Parse a binary PPM/PGM header; returns the pixel data offset or 0. */
static size_t pnm_header(const unsigned char* b, size_t size, int* w, int* h, int* channels) {
  size_t i = 2;
  long v[3];
  if (size < 3 || b[0] != 'P' || (b[1] != '6' && b[1] != '5')) return 0;
  *channels = b[1] == '6' ? 3 : 1;
  for (int k = 0; k < 3; ++k) {
    while (i < size && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t' || b[i] == '#')) {
      if (b[i] == '#') while (i < size && b[i] != '\n') ++i;
      else ++i;
    }
    v[k] = 0;
    if (i >= size || b[i] < '0' || b[i] > '9') return 0;
    while (i < size && b[i] >= '0' && b[i] <= '9' && v[k] < 100000) v[k] = v[k] * 10 + (b[i++] - '0');
  }
  if (v[2] != 255 || i >= size) return 0;
  *w = (int)v[0];
  *h = (int)v[1];
  return i + 1;
}

static int format_of(const char* name, int* bpp) {
  static const struct { const char* name; int format, bpp; } formats[] = {
    {"RGB8", EDGECLF_PIXEL_RGB8, 3}, {"BGR8", EDGECLF_PIXEL_BGR8, 3}, {"RGBA8", EDGECLF_PIXEL_RGBA8, 4},
    {"BGRA8", EDGECLF_PIXEL_BGRA8, 4}, {"GRAY8", EDGECLF_PIXEL_GRAY8, 1}, {"NV12", EDGECLF_PIXEL_NV12, 1}};
  for (size_t i = 0; i < sizeof formats / sizeof formats[0]; ++i)
    if (strcmp(name, formats[i].name) == 0) { *bpp = formats[i].bpp; return formats[i].format; }
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 3 && argc != 6) {
    fprintf(stderr, "usage: %s BUNDLE_DIR IMAGE.ppm|IMAGE.pgm\n       %s BUNDLE_DIR FRAME.raw WIDTH HEIGHT FORMAT\n",
            argv[0], argv[0]);
    return 2;
  }
  size_t size = 0;
  unsigned char* file = read_all(argv[2], &size);
  if (!file) { fprintf(stderr, "cannot read %s\n", argv[2]); return 1; }

  edgeclf_image image = {0};
  size_t needed = 0;
  if (argc == 3) {
    int channels = 0;
    size_t offset = pnm_header(file, size, &image.width, &image.height, &channels);
    if (!offset) { fprintf(stderr, "%s: not a binary PPM (P6) or PGM (P5) with maxval 255\n", argv[2]); free(file); return 1; }
    image.data = file + offset;
    image.stride_bytes = image.width * channels;
    image.pixel_format = channels == 3 ? EDGECLF_PIXEL_RGB8 : EDGECLF_PIXEL_GRAY8;
    needed = offset + (size_t)image.stride_bytes * (size_t)image.height;
  } else {
    int bpp = 0;
    image.width = atoi(argv[3]);
    image.height = atoi(argv[4]);
    image.pixel_format = format_of(argv[5], &bpp);
    if (!image.pixel_format) { fprintf(stderr, "unknown FORMAT %s\n", argv[5]); free(file); return 2; }
    image.data = file;
    image.stride_bytes = image.width * bpp;
    needed = (size_t)image.stride_bytes * (size_t)(image.height > 0 ? image.height : 0);
    if (image.pixel_format == EDGECLF_PIXEL_NV12) needed += needed / 2;
  }
  if (image.width <= 0 || image.height <= 0 || size < needed) {
    fprintf(stderr, "%s: %zu bytes, %zu needed for %dx%d\n", argv[2], size, needed, image.width, image.height);
    free(file);
    return 1;
  }

  edgeclf_model* model = NULL;
  edgeclf_session* session = NULL;
  edgeclf_class_score top[5];
  size_t count = 0;
  int rc = 1;
  edgeclf_options* options = NULL;
  const char* want_backend = getenv("EDGECLF_BACKEND");
  const char* want_precision = getenv("EDGECLF_PRECISION");
  if (edgeclf_options_create(&options) != EDGECLF_OK ||
      (want_backend && *want_backend && edgeclf_options_set_backend(options, want_backend) != EDGECLF_OK) ||
      (want_precision && *want_precision && edgeclf_options_set_precision(options, want_precision) != EDGECLF_OK)) {
    fprintf(stderr, "edgeclf: %s\n", edgeclf_last_error());
    edgeclf_options_free(options);
    free(file);
    return 1;
  }
  if (edgeclf_model_load(argv[1], options, &model) != EDGECLF_OK ||
      edgeclf_session_create(model, &session) != EDGECLF_OK ||
      edgeclf_classify(session, &image, top, 5, &count) != EDGECLF_OK) {
    fprintf(stderr, "edgeclf: %s\n", edgeclf_last_error());
  } else {
    const char* backend = NULL;
    const char* precision = NULL;
    edgeclf_model_property(model, "backend", &backend);
    edgeclf_model_property(model, "precision", &precision);
    printf("# edgeclf %s, %s %s\n", edgeclf_version(), backend, precision);
    for (size_t i = 0; i < count; ++i) {
      const char* label = NULL;
      edgeclf_model_label(model, top[i].index, &label);
      printf("%zu\t%s\t%.6f\n", i + 1, label, top[i].probability);
    }
    rc = 0;
  }
  edgeclf_session_free(session);
  edgeclf_model_free(model);
  edgeclf_options_free(options);
  free(file);
  return rc;
}
