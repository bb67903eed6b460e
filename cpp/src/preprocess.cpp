// The preprocessing spec of edgeclf/preprocess.py, in one fused pass per image.
//
// Pixels -> RGB -> resize (shorter side = resize_size; bilinear or bicubic, half-pixel
// centres, no antialias; float32 arithmetic; rounded half-to-even to uint8) -> centre crop ->
// (x * scale - mean) / std -> planar NCHW float32.
//
// Only the output pixels inside the crop window are computed (every resized pixel depends on
// its source taps only, so that is exact). The resize is separable and evaluated in the same
// order as the reference: for each output pixel, out = sum_j wy_j * (sum_k wx_k * src[y_j][x_k]),
// each sum accumulated tap by tap from the first. The horizontal sums of every source row the
// crop needs are computed once, then combined vertically. This file is compiled with
// -ffp-contract=off: fused multiply-adds would change the roundings and so, rarely, a
// uint8 value of the resized image.
#include <algorithm>
#include <cmath>
#include <climits>
#include <cstring>
#include <exception>
#include <system_error>
#include <thread>

#include "internal.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace edgeclf {
namespace {

constexpr int kMaxSide = 1 << 15;  // 32768 pixels a side, far above any camera frame

int bytes_per_pixel(edgeclf_pixel_format f) {
  switch (f) {
    case EDGECLF_PIXEL_RGB8:
    case EDGECLF_PIXEL_BGR8: return 3;
    case EDGECLF_PIXEL_RGBA8:
    case EDGECLF_PIXEL_BGRA8: return 4;
    case EDGECLF_PIXEL_GRAY8:
    case EDGECLF_PIXEL_NV12: return 1;
    default: return 0;
  }
}

// Output size of the shorter-side resize, exactly as edgeclf.preprocess.resized_shape.
void resized_shape(int h, int w, int resize, int& oh, int& ow) {
  if (h <= w) {
    oh = resize;
    ow = std::max(1, static_cast<int>(std::floor(static_cast<double>(static_cast<int64_t>(w) * resize) / h + 0.5)));
  } else {
    oh = std::max(1, static_cast<int>(std::floor(static_cast<double>(static_cast<int64_t>(h) * resize) / w + 0.5)));
    ow = resize;
  }
}

float cubic1(float x, float a) { return ((a + 2) * x - (a + 3)) * x * x + 1; }
float cubic2(float x, float a) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; }

// Taps of output positions [first, first + count) of a resize from in_size to out_size:
// `taps` indices (clamped to the input) and weights per output position.
void compute_taps(int in_size, int out_size, int first, int count, Interpolation interp, std::vector<int32_t>& idx,
                  std::vector<float>& wts) {
  const int taps = interp == Interpolation::Bilinear ? 2 : 4;
  idx.resize(static_cast<size_t>(count) * taps);
  wts.resize(static_cast<size_t>(count) * taps);
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  for (int i = 0; i < count; ++i) {
    const int dst = first + i;
    float real = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
    int32_t* ix = &idx[static_cast<size_t>(i) * taps];
    float* w = &wts[static_cast<size_t>(i) * taps];
    if (interp == Interpolation::Bilinear) {
      if (real < 0.0f) real = 0.0f;
      const int64_t i0 = std::min(static_cast<int64_t>(std::floor(real)), static_cast<int64_t>(in_size) - 1);
      const float l1 = std::min(std::max(real - static_cast<float>(i0), 0.0f), 1.0f);
      ix[0] = static_cast<int32_t>(i0);
      ix[1] = static_cast<int32_t>(i0 < in_size - 1 ? i0 + 1 : i0);
      w[0] = 1.0f - l1;
      w[1] = l1;
    } else {
      const int64_t i0 = std::min(static_cast<int64_t>(std::floor(real)), static_cast<int64_t>(in_size) - 1);
      const float t = std::min(std::max(real - static_cast<float>(i0), 0.0f), 1.0f);
      const float a = -0.75f;
      const float x1 = t, x2 = 1.0f - t;
      w[0] = cubic2(x1 + 1.0f, a);
      w[1] = cubic1(x1, a);
      w[2] = cubic1(x2, a);
      w[3] = cubic2(x2 + 1.0f, a);
      for (int j = 0; j < 4; ++j) {
        const int64_t s = std::max<int64_t>(std::min<int64_t>(i0 - 1 + j, in_size - 1), 0);
        ix[j] = static_cast<int32_t>(s);
      }
    }
  }
}

// BT.601 limited range YUV -> RGB in 20-bit fixed point (the integer conversion OpenCV's
// COLOR_YUV2RGB_NV12 uses; edgeclf.preprocess.nv12_to_rgb is the reference).
inline uint8_t sat8(int v) { return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v)); }

void nv12_row_to_rgb(const uint8_t* yrow, const uint8_t* uvrow, int x0, int x1, uint8_t* rgb) {
  constexpr int CY = 1220542, CUB = 2116026, CUG = -409993, CVG = -852492, CVR = 1673527, SHIFT = 20;
  constexpr int HALF = 1 << (SHIFT - 1);
  for (int x = x0; x <= x1; ++x) {
    const int yy = std::max(0, static_cast<int>(yrow[x]) - 16) * CY;
    const int u = static_cast<int>(uvrow[(x & ~1)]) - 128;
    const int v = static_cast<int>(uvrow[(x & ~1) + 1]) - 128;
    uint8_t* p = rgb + 3 * (x - x0);
    p[0] = sat8((yy + HALF + CVR * v) >> SHIFT);
    p[1] = sat8((yy + HALF + CVG * v + CUG * u) >> SHIFT);
    p[2] = sat8((yy + HALF + CUB * u) >> SHIFT);
  }
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define EDGECLF_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EDGECLF_SIMD_CLONES
#endif

// Columns [0, n) of a packed row to three float planes (R, G, B order after the swap).
template <int BPP, int R, int G, int B>
EDGECLF_SIMD_CLONES void to_planes(const uint8_t* __restrict src, int n, float* __restrict pr, float* __restrict pg,
                                   float* __restrict pb) {
  for (int x = 0; x < n; ++x) {
    pr[x] = static_cast<float>(src[x * BPP + R]);
    pg[x] = static_cast<float>(src[x * BPP + G]);
    pb[x] = static_cast<float>(src[x * BPP + B]);
  }
}

// One channel's horizontal pass with tap-major indices and weights (idx[k * crop + j]):
// out[j] = p[idx0[j]] * w0[j] + p[idx1[j]] * w1[j] + ..., accumulated from the first tap —
// the spec's order — with j contiguous across lanes, which vectorises (as gathers). Outputs
// [j0, j1) (j1 < 0: to crop; the SIMD paths leave it their remainder and border groups).
template <int TAPS>
EDGECLF_SIMD_CLONES void horizontal_planar(const float* __restrict p, const int32_t* __restrict idx,
                                           const float* __restrict w, int crop, float* __restrict out, int j0 = 0,
                                           int j1 = -1) {
  for (int j = j0; j < (j1 < 0 ? crop : j1); ++j) {
    float v = p[idx[j]] * w[j];
    for (int k = 1; k < TAPS; ++k) v += p[idx[k * crop + j]] * w[k * crop + j];
    out[j] = v;
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EDGECLF_WIDE_PATH 1
// AVX-512 horizontal pass for groups of 16 outputs whose taps all read inside a window of
// kWideWindow source columns: the window is loaded as three registers and each tap's values
// are picked with two in-register permutes and a blend, instead of a memory gather. The same
// multiplications and additions in the same order as horizontal_planar, so the same floats.
template <int TAPS>
__attribute__((target("avx512f"))) void horizontal_wide(const float* __restrict p, const int32_t* __restrict start,
                                                        const int32_t* __restrict rel, const int32_t* __restrict idx,
                                                        const float* __restrict w, int crop, float* __restrict out) {
  const int groups = crop / 16;
  const __m512i sixteen = _mm512_set1_epi32(16), thirty_two = _mm512_set1_epi32(32);
  for (int g = 0; g < groups; ++g) {
    const float* base = p + start[g];
    const __m512 a = _mm512_loadu_ps(base), b = _mm512_loadu_ps(base + 16), c = _mm512_loadu_ps(base + 32);
    const int j = g * 16;
    __m512 v = _mm512_setzero_ps();
    for (int k = 0; k < TAPS; ++k) {
      const __m512i ik = _mm512_loadu_si512(rel + (static_cast<size_t>(g) * TAPS + k) * 16);
      const __m512 lo = _mm512_permutex2var_ps(a, ik, b);                               // columns 0..31
      const __m512 hi = _mm512_permutex2var_ps(b, _mm512_sub_epi32(ik, sixteen), c);    // columns 16..47
      const __m512 x = _mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(ik, thirty_two), lo, hi);
      const __m512 prod = _mm512_mul_ps(x, _mm512_loadu_ps(w + static_cast<size_t>(k) * crop + j));
      v = k == 0 ? prod : _mm512_add_ps(v, prod);
    }
    _mm512_storeu_ps(out + j, v);
  }
  horizontal_planar<TAPS>(p, idx, w, crop, out, groups * 16);  // the last crop % 16 outputs
}

bool cpu_has_avx512f() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

// AVX2 horizontal pass for groups of 8 outputs whose taps read consecutive columns (every
// output j reads first[j], first[j] + 1, ...: true away from the image borders, which is where
// a centre crop reads): each output's taps are one unaligned load, and a 4x8 (or 2x8)
// transpose turns them into one register per tap, instead of a gather per tap. The same
// multiplications and additions in the same order as horizontal_planar, so the same floats.
// `consec[g]` says whether group g qualifies; the others (and the last crop % 8) take the
// gather loop.
template <int TAPS>
__attribute__((target("avx2"))) void horizontal_consecutive(const float* __restrict p, const uint8_t* __restrict consec,
                                                            const int32_t* __restrict idx, const float* __restrict w,
                                                            int crop, float* __restrict out) {
  static_assert(TAPS == 2 || TAPS == 4, "consecutive taps: bilinear or bicubic");
  const int groups = crop / 8;
  for (int g = 0; g < groups; ++g) {
    const int j = g * 8;
    if (!consec[g]) {
      horizontal_planar<TAPS>(p, idx, w, crop, out, j, j + 8);
      continue;
    }
    const int32_t* f = idx + j;  // tap 0 of outputs j..j+7
    __m256 t[TAPS];
    if constexpr (TAPS == 4) {
      const __m256 a0 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + f[0])), _mm_loadu_ps(p + f[4]), 1);
      const __m256 a1 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + f[1])), _mm_loadu_ps(p + f[5]), 1);
      const __m256 a2 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + f[2])), _mm_loadu_ps(p + f[6]), 1);
      const __m256 a3 = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + f[3])), _mm_loadu_ps(p + f[7]), 1);
      const __m256 u0 = _mm256_unpacklo_ps(a0, a1), u1 = _mm256_unpackhi_ps(a0, a1);
      const __m256 u2 = _mm256_unpacklo_ps(a2, a3), u3 = _mm256_unpackhi_ps(a2, a3);
      t[0] = _mm256_shuffle_ps(u0, u2, _MM_SHUFFLE(1, 0, 1, 0));
      t[1] = _mm256_shuffle_ps(u0, u2, _MM_SHUFFLE(3, 2, 3, 2));
      t[2] = _mm256_shuffle_ps(u1, u3, _MM_SHUFFLE(1, 0, 1, 0));
      t[3] = _mm256_shuffle_ps(u1, u3, _MM_SHUFFLE(3, 2, 3, 2));
    } else {
      auto pair = [&](int a, int b) {  // [p[f[a]], p[f[a] + 1], p[f[b]], p[f[b] + 1]]
        const __m128 lo = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p + f[a])));
        return _mm_loadh_pi(lo, reinterpret_cast<const __m64*>(p + f[b]));
      };
      const __m256 a01 = _mm256_insertf128_ps(_mm256_castps128_ps256(pair(0, 1)), pair(4, 5), 1);
      const __m256 a23 = _mm256_insertf128_ps(_mm256_castps128_ps256(pair(2, 3)), pair(6, 7), 1);
      t[0] = _mm256_shuffle_ps(a01, a23, _MM_SHUFFLE(2, 0, 2, 0));
      t[1] = _mm256_shuffle_ps(a01, a23, _MM_SHUFFLE(3, 1, 3, 1));
    }
    __m256 v = _mm256_mul_ps(t[0], _mm256_loadu_ps(w + j));
    for (int k = 1; k < TAPS; ++k)
      v = _mm256_add_ps(v, _mm256_mul_ps(t[k], _mm256_loadu_ps(w + static_cast<size_t>(k) * crop + j)));
    _mm256_storeu_ps(out + j, v);
  }
  horizontal_planar<TAPS>(p, idx, w, crop, out, groups * 8);  // the last crop % 8 outputs
}

bool cpu_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

// pshufb masks that pick byte `ch` of each of 16 packed 3-byte pixels out of the k-th of the
// three 16-byte registers holding them (0x80: none from this register).
struct Deinterleave3 {
  alignas(16) uint8_t m[3][3][16];
  Deinterleave3() {
    for (int ch = 0; ch < 3; ++ch)
      for (int k = 0; k < 3; ++k)
        for (int i = 0; i < 16; ++i) {
          const int at = 3 * i + ch - 16 * k;
          m[ch][k][i] = (at >= 0 && at < 16) ? static_cast<uint8_t>(at) : 0x80;
        }
  }
};

// to_planes for 3-byte pixels with AVX2: 16 pixels per step as three loads, nine byte shuffles
// and widening conversions (uint8 -> float is exact, so the same floats as the scalar loop).
template <int R, int G, int B>
__attribute__((target("avx2"))) void to_planes3_avx2(const uint8_t* __restrict src, int n, float* __restrict pr,
                                                      float* __restrict pg, float* __restrict pb) {
  static const Deinterleave3 d;
  const __m128i* mk = reinterpret_cast<const __m128i*>(d.m);
  float* planes[3] = {pr, pg, pb};
  const int chan[3] = {R, G, B};
  int x = 0;
  for (; x + 16 <= n; x += 16) {
    const uint8_t* s3 = src + static_cast<ptrdiff_t>(x) * 3;
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s3));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s3 + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s3 + 32));
    for (int q = 0; q < 3; ++q) {
      const __m128i* m = mk + chan[q] * 3;
      const __m128i v = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, _mm_load_si128(m)), _mm_shuffle_epi8(b, _mm_load_si128(m + 1))),
                                     _mm_shuffle_epi8(c, _mm_load_si128(m + 2)));
      _mm256_storeu_ps(planes[q] + x, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)));
      _mm256_storeu_ps(planes[q] + x + 8, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))));
    }
  }
  for (; x < n; ++x) {
    pr[x] = static_cast<float>(src[x * 3 + R]);
    pg[x] = static_cast<float>(src[x * 3 + G]);
    pb[x] = static_cast<float>(src[x * 3 + B]);
  }
}
#endif

// Columns [0, n) of a packed row to float planes: with byte shuffles for 3-byte pixels where
// `simd` says the CPU has AVX2, else the compiler-vectorised loop.
template <int BPP, int R, int G, int B>
void row_to_planes(bool simd, const uint8_t* src, int n, float* pr, float* pg, float* pb) {
#ifdef EDGECLF_WIDE_PATH
  if constexpr (BPP == 3) {
    if (simd) {
      to_planes3_avx2<R, G, B>(src, n, pr, pg, pb);
      return;
    }
  }
#else
  (void)simd;
#endif
  to_planes<BPP, R, G, B>(src, n, pr, pg, pb);
}

template <int BPP, int R, int G, int B>
void horizontal_rows(const HorizontalPlan& h, const uint8_t* row, int x0, int n, float* planes, float* dst) {
  const int stride = n + kWideWindow;  // each plane padded so a window load never leaves it
  float* pr = planes;
  float* pg = planes + stride;
  float* pb = planes + 2 * stride;
  row_to_planes<BPP, R, G, B>(h.simd, row + static_cast<ptrdiff_t>(x0) * BPP, n, pr, pg, pb);
  const float* ps[3] = {pr, pg, pb};
  const int crop = h.crop;
  for (int c = 0; c < 3; ++c) {
#ifdef EDGECLF_WIDE_PATH
    if (h.wide) {
      switch (h.taps) {
        case 1: horizontal_wide<1>(ps[c], h.start, h.rel, h.idxT, h.wT, crop, dst + c * crop); break;
        case 2: horizontal_wide<2>(ps[c], h.start, h.rel, h.idxT, h.wT, crop, dst + c * crop); break;
        default: horizontal_wide<4>(ps[c], h.start, h.rel, h.idxT, h.wT, crop, dst + c * crop); break;
      }
      continue;
    }
    if (h.consec != nullptr) {
      if (h.taps == 4) horizontal_consecutive<4>(ps[c], h.consec, h.idxT, h.wT, crop, dst + c * crop);
      else horizontal_consecutive<2>(ps[c], h.consec, h.idxT, h.wT, crop, dst + c * crop);
      continue;
    }
#endif
    switch (h.taps) {
      case 1: horizontal_planar<1>(ps[c], h.idxT, h.wT, crop, dst + c * crop); break;
      case 2: horizontal_planar<2>(ps[c], h.idxT, h.wT, crop, dst + c * crop); break;
      default: horizontal_planar<4>(ps[c], h.idxT, h.wT, crop, dst + c * crop); break;
    }
  }
}

// Vertical pass for one output row and channel: combine TAPS horizontally resized rows,
// round half to even, clamp to uint8, normalise ((q * scale - mean) / std, the reference's
// float32 operations). No table lookups, so the loop vectorises.
template <int TAPS>
EDGECLF_SIMD_CLONES void vertical(const float* const* rows, const float* w, int crop, float scale, float mean, float stdev,
              float* __restrict out) {
  for (int j = 0; j < crop; ++j) {
    float v = rows[0][j] * w[0];
    for (int k = 1; k < TAPS; ++k) v += rows[k][j] * w[k];
    v = std::nearbyint(v);
    v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
    out[j] = (v * scale - mean) / stdev;
  }
}

}  // namespace

void validate_image(const edgeclf_image* image, size_t position) {
  const std::string where = position == static_cast<size_t>(-1) ? "image" : "image " + std::to_string(position);
  if (image == nullptr) fail(EDGECLF_ERR_INVALID_ARGUMENT, where + " is NULL");
  if (image->data == nullptr) fail(EDGECLF_ERR_INVALID_ARGUMENT, where + ": data is NULL");
  const int bpp = bytes_per_pixel(image->pixel_format);
  if (bpp == 0)
    fail(EDGECLF_ERR_UNSUPPORTED, where + ": unknown pixel_format " + std::to_string(image->pixel_format) +
                                      " (use one of the EDGECLF_PIXEL_* values)");
  if (image->width <= 0 || image->height <= 0 || image->width > kMaxSide || image->height > kMaxSide)
    fail(EDGECLF_ERR_INVALID_ARGUMENT, where + ": size " + std::to_string(image->width) + "x" +
                                           std::to_string(image->height) + " is not in 1.." + std::to_string(kMaxSide));
  const int64_t row = static_cast<int64_t>(image->width) * bpp;
  if (image->stride_bytes < row)
    fail(EDGECLF_ERR_INVALID_ARGUMENT, where + ": stride_bytes " + std::to_string(image->stride_bytes) +
                                           " is smaller than a row (" + std::to_string(row) + " bytes)");
  if (image->pixel_format == EDGECLF_PIXEL_NV12) {
    if (image->width % 2 != 0 || image->height % 2 != 0)
      fail(EDGECLF_ERR_INVALID_ARGUMENT, where + ": NV12 needs an even width and height, got " +
                                             std::to_string(image->width) + "x" + std::to_string(image->height));
    if (image->uv_data != nullptr && image->uv_stride_bytes < image->width)
      fail(EDGECLF_ERR_INVALID_ARGUMENT, where + ": uv_stride_bytes " + std::to_string(image->uv_stride_bytes) +
                                             " is smaller than a UV row (" + std::to_string(image->width) + " bytes)");
  }
}

namespace {

// Whether every group of 16 outputs reads inside one window of kWideWindow columns (and the
// CPU has AVX-512); if so, each group's first column and its taps relative to it.
void plan_wide(PreprocessScratch& s, int taps, int crop) {
  s.wide = false;
#ifdef EDGECLF_WIDE_PATH
  if (!cpu_has_avx512f() || s.wide_disabled) return;
  const int groups = crop / 16;
  if (groups == 0) return;
  s.wstart.assign(static_cast<size_t>(groups), 0);
  s.wrel.assign(static_cast<size_t>(groups) * taps * 16, 0);
  for (int g = 0; g < groups; ++g) {
    int lo = INT32_MAX, hi = INT32_MIN;
    for (int k = 0; k < taps; ++k)
      for (int l = 0; l < 16; ++l) {
        const int v = s.xidxT[static_cast<size_t>(k) * crop + g * 16 + l];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    if (hi - lo + 1 > kWideWindow) return;
    s.wstart[static_cast<size_t>(g)] = lo;
    for (int k = 0; k < taps; ++k)
      for (int l = 0; l < 16; ++l)
        s.wrel[(static_cast<size_t>(g) * taps + k) * 16 + l] = s.xidxT[static_cast<size_t>(k) * crop + g * 16 + l] - lo;
  }
  s.wide = true;
#else
  (void)taps;
  (void)crop;
#endif
}

// Whether the AVX2 row conversion may run (the CPU has it; the SIMD paths are not turned off).
bool simd_rows(const PreprocessScratch& s) {
#ifdef EDGECLF_WIDE_PATH
  return !s.wide_disabled && cpu_has_avx2();
#else
  (void)s;
  return false;
#endif
}

// Which groups of 8 outputs read consecutive columns (the AVX2 path, where the CPU has it and
// the AVX-512 window path is not taken).
void plan_consecutive(PreprocessScratch& s, int taps, int crop) {
  s.consec.clear();
#ifdef EDGECLF_WIDE_PATH
  if (s.wide || s.wide_disabled || (taps != 2 && taps != 4) || crop < 8 || !cpu_has_avx2()) return;
  const int groups = crop / 8;
  s.consec.assign(static_cast<size_t>(groups), 0);
  int any = 0;
  for (int g = 0; g < groups; ++g) {
    bool ok = true;
    for (int l = g * 8; l < g * 8 + 8 && ok; ++l)
      for (int k = 1; k < taps && ok; ++k)
        ok = s.xidxT[static_cast<size_t>(k) * crop + l] == s.xidxT[static_cast<size_t>(l)] + k;
    s.consec[static_cast<size_t>(g)] = ok ? 1 : 0;
    any += ok;
  }
  if (any == 0) s.consec.clear();
#else
  (void)taps;
  (void)crop;
#endif
}

}  // namespace

namespace {

struct RowGeometry {
  const edgeclf_image* image;
  const PreprocessSpec* spec;
  int taps, crop, x0, x1, ncols;
};

// Output rows [i0, i1) of the crop: horizontal sums of the source rows they read, then the
// vertical pass, rounding and normalisation straight into the planar output.
void band(const RowGeometry& g, const PreprocessScratch& s, PreprocessBand& b, int i0, int i1, float* out) {
  const edgeclf_image& image = *g.image;
  const int taps = g.taps, crop = g.crop, x0 = g.x0, x1 = g.x1, ncols = g.ncols;
  const auto first = s.yidx.begin() + static_cast<ptrdiff_t>(i0) * taps;
  const auto last = s.yidx.begin() + static_cast<ptrdiff_t>(i1) * taps;
  const auto [ymin_it, ymax_it] = std::minmax_element(first, last);
  const int y0 = *ymin_it, y1 = *ymax_it;
  const int nrows = y1 - y0 + 1;
  b.hrows.resize(static_cast<size_t>(nrows) * 3 * crop);
  b.planes.resize(static_cast<size_t>(ncols + kWideWindow) * 3);
  const bool nv12 = image.pixel_format == EDGECLF_PIXEL_NV12;
  const int h = image.height;
  const uint8_t* uv_plane = image.uv_data ? image.uv_data : image.data + static_cast<ptrdiff_t>(image.stride_bytes) * h;
  const int uv_stride = image.uv_data ? image.uv_stride_bytes : image.stride_bytes;
  if (nv12) b.rgb_row.resize(static_cast<size_t>(x1 - x0 + 1) * 3);
  const HorizontalPlan hp{s.xidxT.data(), s.xwT.data(), s.wstart.data(), s.wrel.data(),
                          s.consec.empty() ? nullptr : s.consec.data(), taps, crop, s.wide, simd_rows(s)};
  float* planes = b.planes.data();
  for (int r = 0; r < nrows; ++r) {
    const int y = y0 + r;
    const uint8_t* row = image.data + static_cast<ptrdiff_t>(image.stride_bytes) * y;
    float* dst = &b.hrows[static_cast<size_t>(r) * 3 * crop];
    switch (image.pixel_format) {
      case EDGECLF_PIXEL_RGB8: horizontal_rows<3, 0, 1, 2>(hp, row, x0, ncols, planes, dst); break;
      case EDGECLF_PIXEL_BGR8: horizontal_rows<3, 2, 1, 0>(hp, row, x0, ncols, planes, dst); break;
      case EDGECLF_PIXEL_RGBA8: horizontal_rows<4, 0, 1, 2>(hp, row, x0, ncols, planes, dst); break;
      case EDGECLF_PIXEL_BGRA8: horizontal_rows<4, 2, 1, 0>(hp, row, x0, ncols, planes, dst); break;
      case EDGECLF_PIXEL_GRAY8: horizontal_rows<1, 0, 0, 0>(hp, row, x0, ncols, planes, dst); break;
      default:  // NV12: convert the needed columns to RGB8 first
        nv12_row_to_rgb(row, uv_plane + static_cast<ptrdiff_t>(uv_stride) * (y / 2), x0, x1, b.rgb_row.data());
        horizontal_rows<3, 0, 1, 2>(hp, b.rgb_row.data(), 0, ncols, planes, dst);
        break;
    }
  }
  const PreprocessSpec& spec = *g.spec;
  const size_t plane = static_cast<size_t>(crop) * crop;
  for (int i = i0; i < i1; ++i) {
    for (int c = 0; c < 3; ++c) {
      const float* rows[4];
      for (int k = 0; k < taps; ++k)
        rows[k] = &b.hrows[(static_cast<size_t>(s.yidx[static_cast<size_t>(i) * taps + k] - y0) * 3 + c) * crop];
      const float* wy = &s.yw[static_cast<size_t>(i) * taps];
      float* o = out + c * plane + static_cast<size_t>(i) * crop;
      switch (taps) {
        case 1: vertical<1>(rows, wy, crop, spec.scale, spec.mean[c], spec.stdev[c], o); break;
        case 2: vertical<2>(rows, wy, crop, spec.scale, spec.mean[c], spec.stdev[c], o); break;
        default: vertical<4>(rows, wy, crop, spec.scale, spec.mean[c], spec.stdev[c], o); break;
      }
    }
  }
}

// Output rows [i0, i1) in chunks of kChunkRows: each chunk's horizontally resized source rows
// (3 x crop floats each) stay in the core's cache between the two passes instead of a whole
// image's worth (1 MB for 640x480 -> 160) going out to memory and back. A chunk repeats at
// most `taps` source rows of the one before; the values do not depend on the chunking.
constexpr int kChunkRows = 32;

void rows(const RowGeometry& g, const PreprocessScratch& s, PreprocessBand& b, int i0, int i1, float* out) {
  for (int i = i0; i < i1; i += kChunkRows) band(g, s, b, i, std::min(i + kChunkRows, i1), out);
}

}  // namespace

void preprocess_image(const PreprocessSpec& spec, const edgeclf_image& image, float* out, PreprocessScratch& s) {
  const int h = image.height, w = image.width, crop = spec.crop_size;
  int oh = 0, ow = 0;
  resized_shape(h, w, spec.resize_size, oh, ow);
  if (oh < crop || ow < crop)
    fail(EDGECLF_ERR_INVALID_ARGUMENT, "cannot crop " + std::to_string(crop) + "x" + std::to_string(crop) +
                                           " from the resized " + std::to_string(ow) + "x" + std::to_string(oh));
  const int top = (oh - crop) / 2, left = (ow - crop) / 2;
  const bool identity = (oh == h && ow == w);  // the reference skips the resize then
  const Interpolation interp = identity ? Interpolation::Bilinear : spec.interpolation;
  const int taps = identity ? 1 : (interp == Interpolation::Bilinear ? 2 : 4);

  // The taps depend on the image size only: a stream of frames of one size computes them once.
  if (w != s.plan_w || h != s.plan_h) {
    s.plan_w = -1;  // invalid until complete (compute_taps may throw)
    if (identity) {
      s.xidx.resize(crop); s.xw.assign(crop, 1.0f); s.yidx.resize(crop); s.yw.assign(crop, 1.0f);
      for (int i = 0; i < crop; ++i) { s.xidx[i] = left + i; s.yidx[i] = top + i; }
    } else {
      compute_taps(w, ow, left, crop, interp, s.xidx, s.xw);
      compute_taps(h, oh, top, crop, interp, s.yidx, s.yw);
    }
    const auto [xmin_it, xmax_it] = std::minmax_element(s.xidx.begin(), s.xidx.end());
    s.plan_x0 = *xmin_it;
    s.plan_x1 = *xmax_it;
    // Tap-major copies of the column taps, relative to x0 (the first column any tap reads).
    s.xidxT.resize(s.xidx.size());
    s.xwT.resize(s.xw.size());
    for (int j = 0; j < crop; ++j)
      for (int k = 0; k < taps; ++k) {
        s.xidxT[static_cast<size_t>(k) * crop + j] = s.xidx[static_cast<size_t>(j) * taps + k] - s.plan_x0;
        s.xwT[static_cast<size_t>(k) * crop + j] = s.xw[static_cast<size_t>(j) * taps + k];
      }
    plan_wide(s, taps, crop);
    plan_consecutive(s, taps, crop);
    s.plan_w = w;
    s.plan_h = h;
  }
  const int x0 = s.plan_x0, x1 = s.plan_x1, ncols = x1 - x0 + 1;

  // The output rows in `parts` bands; each band computes the horizontal sums of the source
  // rows it needs (a band boundary repeats at most `taps` rows) and then its output rows, so
  // bands are independent and give the same values whichever thread computes them.
  const RowGeometry g{&image, &spec, taps, crop, x0, x1, ncols};
  const int parts = std::max(1, std::min(s.parts, kMaxParts));
  const size_t total = static_cast<size_t>(crop) * crop * 3;
  if (parts == 1 || total < kParallelMinValues) {
    rows(g, s, s.band[0], 0, crop, out);
    return;
  }
  std::exception_ptr error;
  std::thread helper;
  try {
    helper = std::thread([&] {
      try {
        rows(g, s, s.band[1], crop / 2, crop, out);
      } catch (...) {
        error = std::current_exception();
      }
    });
  } catch (const std::system_error&) {  // no thread to be had: the same bands, one after the other
    rows(g, s, s.band[0], 0, crop, out);
    return;
  }
  try {
    rows(g, s, s.band[0], 0, crop / 2, out);
  } catch (...) {
    helper.join();
    throw;
  }
  helper.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace edgeclf
