/*
 * classify — print the top-5 classes of an image with an edgeclf bundle.
 *
 *   classify BUNDLE_DIR IMAGE.jpg|IMAGE.png|IMAGE.ppm|IMAGE.pgm
 *   classify BUNDLE_DIR FRAME.raw WIDTH HEIGHT FORMAT  raw frame, FORMAT one of
 *                                                      RGB8 BGR8 RGBA8 BGRA8 GRAY8 NV12
 *
 * Image files are decoded as `edgeclf predict` decodes them: JPEG (baseline and progressive)
 * and PNG through stb_image (third_party/stb, public domain or MIT), binary PPM (P6) and
 * PGM (P5) here; the EXIF orientation is applied, alpha is dropped, 16-bit PNG is scaled to
 * 8 bits. JPEG decoders round differently, so a JPEG's pixels may differ from Python's by
 * a few levels (of 255). libedgeclf itself takes decoded pixels and links no decoder.
 *
 * EDGECLF_BACKEND (auto, onnxruntime, openvino) and EDGECLF_PRECISION (auto, fp32, fp16,
 * int8) choose the artifact; unset, the runtime takes the fastest it can run.
 *
 * A plain C99 program against the installed package, stb_image.h on the include path:
 *   find_package(edgeclf REQUIRED)  target_link_libraries(classify PRIVATE edgeclf::edgeclf)
 */
#include <edgeclf/edgeclf.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_NO_STDIO        /* the file is read here, decoded from memory */
#define STBI_NO_LINEAR       /* 8-bit only: no float API (and no libm) */
#define STBI_FAILURE_USERMSG
#include "stb_image.h"

/* The largest image decoded, in pixels: as `edgeclf predict`, a small file claiming a huge
 * size is refused before any pixel is decoded. */
#define MAX_PIXELS 100000000LL

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

static unsigned get16(const unsigned char* p, int le) { return le ? p[0] | p[1] << 8 : p[0] << 8 | p[1]; }
static unsigned long get32(const unsigned char* p, int le) {
  return le ? get16(p, 1) | (unsigned long)get16(p + 2, 1) << 16 : (unsigned long)get16(p, 0) << 16 | get16(p + 2, 0);
}

/* The orientation tag (1-8) of a TIFF-structured EXIF block, 1 when absent or malformed. */
static int tiff_orientation(const unsigned char* t, size_t n) {
  int le;
  if (n < 8 || (memcmp(t, "II", 2) != 0 && memcmp(t, "MM", 2) != 0)) return 1;
  le = t[0] == 'I';
  if (get16(t + 2, le) != 42) return 1;
  unsigned long ifd = get32(t + 4, le);
  if (ifd > n - 2) return 1;
  unsigned entries = get16(t + ifd, le);
  for (unsigned k = 0; k < entries && ifd + 2 + 12 * (unsigned long)(k + 1) <= n; ++k) {
    const unsigned char* e = t + ifd + 2 + 12 * (size_t)k;
    if (get16(e, le) == 0x0112) {
      unsigned v = get16(e + 8, le);
      return get16(e + 2, le) == 3 && v >= 1 && v <= 8 ? (int)v : 1;
    }
  }
  return 1;
}

/* EXIF orientation of a JPEG (APP1 "Exif") or PNG (eXIf chunk) file; 1 when it has none. */
static int exif_orientation(const unsigned char* b, size_t size) {
  size_t i;
  if (size >= 4 && b[0] == 0xFF && b[1] == 0xD8) {
    for (i = 2; i + 4 <= size && b[i] == 0xFF;) {
      size_t len = (size_t)b[i + 2] << 8 | b[i + 3];
      if (b[i + 1] == 0xFF) { ++i; continue; }                  /* fill byte */
      if (b[i + 1] == 0xDA || b[i + 1] == 0xD9 || len < 2 || len > size - i - 2) break;  /* scan data */
      if (b[i + 1] == 0xE1 && len >= 8 && memcmp(b + i + 4, "Exif\0\0", 6) == 0)
        return tiff_orientation(b + i + 10, len - 8);
      i += 2 + len;
    }
  } else if (size >= 8 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) {
    for (i = 8; i + 12 <= size;) {
      size_t len = get32(b + i, 0);
      if (len > size - i - 12) break;
      if (memcmp(b + i + 4, "eXIf", 4) == 0) return tiff_orientation(b + i + 8, len);
      if (memcmp(b + i + 4, "IEND", 4) == 0) break;
      i += 12 + len;
    }
  }
  return 1;
}

/* Turn `src` (w x h, c bytes a pixel) upright for EXIF `orientation`, as PIL's
 * ImageOps.exif_transpose does; returns a new buffer for stbi_image_free (w and h swapped
 * for 5-8), or NULL. */
static unsigned char* upright(const unsigned char* src, int* w, int* h, int c, int orientation) {
  const int sw = *w, sh = *h, swap = orientation >= 5;
  const int ow = swap ? sh : sw, oh = swap ? sw : sh;
  unsigned char* out = STBI_MALLOC((size_t)ow * (size_t)oh * (size_t)c);  /* freed as stb's own pixels */
  if (!out) return NULL;
  for (int y = 0; y < oh; ++y)
    for (int x = 0; x < ow; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = sw - 1 - x; break;                        /* mirrored */
        case 3: sx = sw - 1 - x; sy = sh - 1 - y; break;       /* rotated 180 */
        case 4: sy = sh - 1 - y; break;                        /* flipped */
        case 5: sx = y; sy = x; break;                         /* transposed */
        case 6: sx = y; sy = sh - 1 - x; break;                /* turned 90 clockwise */
        case 7: sx = sw - 1 - y; sy = sh - 1 - x; break;       /* transversed */
        case 8: sx = sw - 1 - y; sy = x; break;                /* turned 90 counter-clockwise */
        default: break;
      }
      memcpy(out + ((size_t)y * ow + x) * c, src + ((size_t)sy * sw + sx) * c, (size_t)c);
    }
  *w = ow;
  *h = oh;
  return out;
}

/* Decode a JPEG or PNG to upright RGB8 (GRAY8 for grey files); NULL with a message on failure. */
static unsigned char* decode(const unsigned char* file, size_t size, edgeclf_image* image, const char* path) {
  int w = 0, h = 0, c = 0;
  if (size > 0x7fffffff || !stbi_info_from_memory(file, (int)size, &w, &h, &c)) {
    fprintf(stderr, "%s: not a readable JPEG, PNG, binary PPM (P6) or PGM (P5) with maxval 255 (%s)\n", path,
            size > 0x7fffffff ? "file too large" : stbi_failure_reason());
    return NULL;
  }
  if ((long long)w * h > MAX_PIXELS) {
    fprintf(stderr, "%s: refused: %dx%d pixels would exceed the %lld-pixel decode limit\n", path, w, h, MAX_PIXELS);
    return NULL;
  }
  const int want = c <= 2 ? 1 : 3;  /* grey (+ alpha) -> GRAY8; RGB, RGBA, palette -> RGB8 */
  unsigned char* pixels = stbi_load_from_memory(file, (int)size, &w, &h, &c, want);
  if (!pixels) {
    fprintf(stderr, "%s: cannot decode: %s\n", path, stbi_failure_reason());
    return NULL;
  }
  const int orientation = exif_orientation(file, size);
  if (orientation != 1) {
    unsigned char* turned = upright(pixels, &w, &h, want, orientation);
    stbi_image_free(pixels);
    if (!turned) { fprintf(stderr, "%s: out of memory\n", path); return NULL; }
    pixels = turned;
  }
  image->data = pixels;
  image->width = w;
  image->height = h;
  image->stride_bytes = w * want;
  image->pixel_format = want == 3 ? EDGECLF_PIXEL_RGB8 : EDGECLF_PIXEL_GRAY8;
  return pixels;
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
    fprintf(stderr, "usage: %s BUNDLE_DIR IMAGE.jpg|IMAGE.png|IMAGE.ppm|IMAGE.pgm\n"
                    "       %s BUNDLE_DIR FRAME.raw WIDTH HEIGHT FORMAT\n", argv[0], argv[0]);
    return 2;
  }
  size_t size = 0;
  unsigned char* file = read_all(argv[2], &size);
  if (!file) { fprintf(stderr, "cannot read %s\n", argv[2]); return 1; }

  edgeclf_image image = {0};
  unsigned char* decoded = NULL; /* JPEG/PNG pixels (image.data points into `file` otherwise) */
  size_t needed = 0;
  if (argc == 3) {
    int channels = 0;
    size_t offset = pnm_header(file, size, &image.width, &image.height, &channels);
    if (offset) {
      image.data = file + offset;
      image.stride_bytes = image.width * channels;
      image.pixel_format = channels == 3 ? EDGECLF_PIXEL_RGB8 : EDGECLF_PIXEL_GRAY8;
      needed = offset + (size_t)image.stride_bytes * (size_t)image.height;
    } else if (!(decoded = decode(file, size, &image, argv[2]))) {
      free(file);
      return 1;
    }
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
    stbi_image_free(decoded);
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
    stbi_image_free(decoded);
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
    /* the bundle's decision policy (argmax when it has none): a class, or unknown, and which rule decided */
    edgeclf_decision decision;
    if (edgeclf_classify_decision(session, &image, 1, &decision) == EDGECLF_OK) {
      const char* label = "unknown";
      if (decision.index != EDGECLF_DECISION_UNKNOWN) edgeclf_model_label(model, decision.index, &label);
      printf("# decision: %s (%s, score %.4f)\n", label, edgeclf_rule_name(decision.rule), decision.score);
    }
    rc = 0;
  }
  edgeclf_session_free(session);
  edgeclf_model_free(model);
  edgeclf_options_free(options);
  stbi_image_free(decoded);
  free(file);
  return rc;
}
