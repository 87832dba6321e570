// One decode step of a Llama-family model (Llama, Mistral, Qwen2) on CPU, every layer in one C++ call.
//
// Why: a decode step of a small model is a chain of ~300 skinny matmuls and ~400 tiny elementwise
// operators. Through torch each costs a dispatch (and a parallel region), which is as much time as the
// matmuls' memory traffic (docs/profiles). Here the whole step runs inside one OpenMP parallel region
// (torch's own runtime): the matrix-vector products split their output rows over the threads, the rest
// (norms, RoPE, cache writes, attention, SiLU) is a few microseconds of plain loops between barriers.
//
// Weights are read in place from the model's tensors (nothing is copied), row-major [out, in]:
//   float32, bfloat16, int8 with one float scale per output row (weight-only int8), or 4-bit blocks of 32
//   with one float scale per block (q4, tiles_q4.h; [out, in / 2] bytes).
// Activations stay float32 between layers. For int8 weights each input row is quantized once to int8 blocks
// of 32 with integer block multipliers (tiles_i8.h: as fine as llama.cpp's q8_0 activations), so the products
// are exact integer dot products, 32 or 64 per `vpmaddubsw`; q4 weights take the row quantized to int16 with one
// scale (13 bits).
// The KV cache is the engine's slot cache: [slots, kv_heads, capacity, head_dim], float32 or bfloat16;
// row b of the step is slot b (or slots[b]), and writes its new key and value at positions[b] before any
// row attends. So rows of one slot at successive positions are a causal prefill: a prompt's chunk goes
// through the same tiles as a decode batch, reading each weight once for all its tokens.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define TAILOR_AVX2 1  // the 8-lane kernels; AVX-512 builds take the 16-lane ones
#endif

namespace {

enum class Kind { F32, BF16, I8, Q4 };

// int8 and q4 weights read quantized input rows (int8 blocks and int16 rows), and may share a group's input:
// an int8 head after q4 layers
inline bool quantized(Kind k) { return k == Kind::I8 || k == Kind::Q4; }

constexpr float kQ16 = 8191.0f;  // q4's int16 activation range: a block's 32 products fit int32

inline float bf16_to_f32(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch's conversion
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// exp for x <= 0 (softmax after subtracting the maximum, SiLU of either sign through 1/(1+exp(-|g|))):
// 2^(x log2 e) split into integer and fraction, the fraction by a degree-6 polynomial (relative error
// about 2e-7). A plain loop of it vectorizes; a loop of std::exp calls does not.
inline float exp_neg(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.44269504f;
  const float fi = std::floor(t);
  const float f = t - fi;
  const float p = 1.0f + f * (0.693147182f + f * (0.240226507f + f * (0.0555041087f + f * (0.00961812911f +
                  f * (0.00133335581f + f * 0.000154035304f)))));
  const uint32_t bits = uint32_t(int32_t(fi) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// The instruction sets this build's kernels use (the build is made per CPU, or for a forced ISA).
std::string kernel_isa() {
#if defined(__AVX512F__)
  std::string isa = "avx512";
#if defined(__AVX512BF16__)
  isa += "+bf16";
#endif
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
  isa += "+vnni";
#endif
  return isa;
#elif defined(TAILOR_AVX2)
  return "avx2";
#else
  return "generic";
#endif
}

// In place: each of the G rows of scores [G, len] becomes its softmax.
inline void softmax_rows(float* scores, int64_t G, int64_t len) {
  for (int64_t h = 0; h < G; ++h) {
    float* s = scores + h * len;
    float top = -INFINITY;
    for (int64_t t = 0; t < len; ++t) top = std::max(top, s[t]);
    float sum = 0.f;
    for (int64_t t = 0; t < len; ++t) {
      s[t] = exp_neg(s[t] - top);
      sum += s[t];
    }
    const float inv = 1.f / sum;
    for (int64_t t = 0; t < len; ++t) s[t] *= inv;
  }
}

inline float widen(float v) { return v; }
inline float widen(uint16_t v) { return bf16_to_f32(v); }

struct Linear {
  Kind kind = Kind::F32;
  int64_t out = 0, in = 0;
  torch::Tensor weight, scale, bias;  // kept alive; scale (int8: [out], q4: [out, in / 32]) and bias float32
  const void* w = nullptr;
  const float* s = nullptr;
  const float* b = nullptr;
};

Kind kind_of(const torch::Tensor& w) {
  if (w.scalar_type() == torch::kFloat) return Kind::F32;
  if (w.scalar_type() == torch::kBFloat16) return Kind::BF16;
  if (w.scalar_type() == torch::kChar) return Kind::I8;
  if (w.scalar_type() == torch::kByte) return Kind::Q4;
  TORCH_CHECK(false, "decode step: unsupported weight dtype ", w.scalar_type());
}

Linear make_linear(const torch::Tensor& weight, const torch::Tensor& scale, const torch::Tensor& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "decode step: weights must be contiguous [out, in]");
  Linear l;
  l.kind = kind_of(weight);
  l.weight = weight;
  l.out = weight.size(0);
  l.in = weight.size(1);
  l.w = weight.data_ptr();
  if (l.kind == Kind::Q4) {  // two inputs per byte; one float32 scale per row and block of 32 inputs
    l.in = 2 * weight.size(1);
    TORCH_CHECK(l.in % 32 == 0, "decode step: q4 weights need in_features divisible by 32, got ", l.in);
    TORCH_CHECK(scale.defined() && scale.scalar_type() == torch::kFloat && scale.is_contiguous() && scale.dim() == 2 &&
                    scale.size(0) == l.out && scale.size(1) == l.in / 32,
                "decode step: q4 weights need a contiguous float32 scale [out, in / 32]");
    l.scale = scale;
    l.s = l.scale.data_ptr<float>();
  }
  if (l.kind == Kind::I8) {
    TORCH_CHECK(scale.defined() && scale.numel() == l.out, "decode step: int8 weights need one scale per row");
    l.scale = scale.to(torch::kFloat).contiguous();
    l.s = l.scale.data_ptr<float>();
  }
  if (bias.defined() && bias.numel()) {
    TORCH_CHECK(bias.numel() == l.out, "decode step: bias size");
    l.bias = bias.to(torch::kFloat).contiguous();
    l.b = l.bias.data_ptr<float>();
  }
  return l;
}

// ---- tiles: kTile weight rows (row stride n) against the input rows (row stride n) -------------------------
// out[b * kTile + i] = dot(weight row i, input row b). The vector kernels keep R weight rows x NB input rows of
// sums in 16 registers, so each weight vector is loaded (and widened) once for NB input rows and each input
// vector once for R weight rows, and fold the 16 sums with one transposing reduction (45 instructions, not
// 16 horizontal sums of 8). Float32 takes 8 x 2: its input rows do not fit L1 at 16 rows, so more weight
// rows share each one; int8 takes 4 x 4: its weights are widened per pass. Other shapes take plain loops.

constexpr int kTile = 8;

#if defined(__AVX512F__)
// lane j of the result = the sum of v[j]'s 16 lanes
inline __m512 hsum16(const __m512* v) {
  __m512 r[8], u[4];
  for (int i = 0; i < 8; ++i)
    r[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(r[2 * i]), b = _mm512_castps_pd(r[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xDD));
}

inline __m512 widen_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

// out[b * kTile + r0 + i] = the sum of a[b * R + i]: one transposing reduction for many sums, plain horizontal
// sums for a few (one input row: the memory-bound case, where 4 rows per pass stream best).
template <int R, int NB>
inline void finish(const __m512* a, int r0, float* out) {
  if constexpr (R * NB <= 4) {
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < R; ++i) out[b * kTile + r0 + i] = _mm512_reduce_add_ps(a[b * R + i]);
  } else {
    __m512 all[16];
    for (int j = 0; j < 16; ++j) all[j] = j < R * NB ? a[j] : _mm512_setzero_ps();
    alignas(64) float sums[16];
    _mm512_store_ps(sums, hsum16(all));
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < R; ++i) out[b * kTile + r0 + i] = sums[b * R + i];
  }
}

// Sums for R weight rows x NB input rows into out[b * kTile + r0 + i] (a float32 dot product per pair).
template <int R, int NB>
void block_f32(const float* w, int64_t n, const float* x, int r0, float* out) {
  __m512 a[R * NB];
  for (int j = 0; j < R * NB; ++j) a[j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; k += 16) {
    __m512 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = _mm512_loadu_ps(w + i * n + k);
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_loadu_ps(x + b * n + k);
      for (int i = 0; i < R; ++i) a[b * R + i] = _mm512_fmadd_ps(wv[i], xv, a[b * R + i]);
    }
  }
  finish<R, NB>(a, r0, out);
}

template <int R, int NB>
void block_bf16(const uint16_t* w, int64_t n, const float* x, const uint16_t* xh, int r0, float* out) {
  __m512 a[R * NB];
  for (int j = 0; j < R * NB; ++j) a[j] = _mm512_setzero_ps();
#if defined(__AVX512BF16__)
  (void)x;
  for (int64_t k = 0; k < n; k += 32) {
    __m512bh wv[R];
    for (int i = 0; i < R; ++i) wv[i] = (__m512bh)_mm512_loadu_si512(w + i * n + k);
    for (int b = 0; b < NB; ++b) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xh + b * n + k);
      for (int i = 0; i < R; ++i) a[b * R + i] = _mm512_dpbf16_ps(a[b * R + i], wv[i], xv);
    }
  }
#else
  (void)xh;
  for (int64_t k = 0; k < n; k += 16) {
    __m512 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = widen_bf16(w + i * n + k);
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_loadu_ps(x + b * n + k);
      for (int i = 0; i < R; ++i) a[b * R + i] = _mm512_fmadd_ps(wv[i], xv, a[b * R + i]);
    }
  }
#endif
  finish<R, NB>(a, r0, out);
}
#endif

#if defined(__AVX512F__)
// One input row, float weights: 4 weight rows per pass (W: float or bf16 widened to float; x float32).
template <typename W>
void row_float(const W* w, int64_t n, const float* x, int r0, float* out) {
  auto load = [](const W* p) {
    if constexpr (std::is_same_v<W, float>) return _mm512_loadu_ps(p);
    else return widen_bf16(p);
  };
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t k = 0; k < n; k += 16) {
    const __m512 xv = _mm512_loadu_ps(x + k);
    a0 = _mm512_fmadd_ps(load(w + k), xv, a0);
    a1 = _mm512_fmadd_ps(load(w + n + k), xv, a1);
    a2 = _mm512_fmadd_ps(load(w + 2 * n + k), xv, a2);
    a3 = _mm512_fmadd_ps(load(w + 3 * n + k), xv, a3);
  }
  out[r0] = _mm512_reduce_add_ps(a0);
  out[r0 + 1] = _mm512_reduce_add_ps(a1);
  out[r0 + 2] = _mm512_reduce_add_ps(a2);
  out[r0 + 3] = _mm512_reduce_add_ps(a3);
}
#endif

#if defined(__AVX512BF16__)
// One input row, bf16 weights and input: 4 weight rows per pass.
void row_bf16(const uint16_t* w, int64_t n, const uint16_t* xh, int r0, float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t k = 0; k < n; k += 32) {
    const __m512bh xv = (__m512bh)_mm512_loadu_si512(xh + k);
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + k), xv);
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(w + n + k), xv);
    a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(w + 2 * n + k), xv);
    a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(w + 3 * n + k), xv);
  }
  out[r0] = _mm512_reduce_add_ps(a0);
  out[r0 + 1] = _mm512_reduce_add_ps(a1);
  out[r0 + 2] = _mm512_reduce_add_ps(a2);
  out[r0 + 3] = _mm512_reduce_add_ps(a3);
}
#endif

// ---- AVX2 + FMA kernels (no AVX-512: e.g. AMD Zen 2/3, Intel Haswell to Alder Lake) -------------------------
// The same tiles as above on 8-lane vectors: R weight rows x NB input rows of sums in registers (16 ymm
// registers hold 8 sums, R weight vectors and an input vector at 4 x 2), folded by one transposing
// reduction. bfloat16 weights widen by a 16-bit shift (no bf16 instructions). The 8-lane reductions are built on
// AVX-512 machines too: tiles_i8.h's 256-bit kernel takes rows of 64k + 32 inputs there.
#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// lane j of the result = the sum of v[j]'s 8 lanes
inline __m256 hsum8(const __m256* v) {
  const __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {  // 8 bfloat16 -> float32
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

// out[b * kTile + r0 + i] = the sum of a[b * R + i]'s 8 lanes (a: 8 accumulators, R * NB of them in use).
template <int R, int NB>
inline void finish8(const __m256* a, int r0, float* out) {
  if constexpr (R * NB <= 4) {
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < R; ++i) out[b * kTile + r0 + i] = hsum(a[b * R + i]);
  } else {
    alignas(32) float sums[8];
    _mm256_store_ps(sums, hsum8(a));
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < R; ++i) out[b * kTile + r0 + i] = sums[b * R + i];
  }
}

#endif

#if defined(TAILOR_AVX2)
// Sums for R weight rows (W: float or bf16) x NB float input rows into out[b * kTile + r0 + i].
template <int R, int NB, typename W>
void block8(const W* w, int64_t n, const float* x, int r0, float* out) {
  static_assert(R * NB <= 8, "one transposing reduction folds 8 sums");
  __m256 a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; k += 8) {
    __m256 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = load8(w + i * n + k);
    for (int b = 0; b < NB; ++b) {
      const __m256 xv = _mm256_loadu_ps(x + b * n + k);
      for (int i = 0; i < R; ++i) a[b * R + i] = _mm256_fmadd_ps(wv[i], xv, a[b * R + i]);
    }
  }
  finish8<R, NB>(a, r0, out);
}

// A tile's kTile weight rows against nb input rows: 4 weight rows x 2 input rows per pass.
template <typename W>
void dot8(const W* w, int64_t n, const float* x, int nb, float* out) {
  for (int b = 0; b < nb; b += 2)
    for (int r0 = 0; r0 < kTile; r0 += 4) {
      if (nb - b >= 2) block8<4, 2>(w + r0 * n, n, x + b * n, r0, out + b * kTile);
      else block8<4, 1>(w + r0 * n, n, x + b * n, r0, out + b * kTile);
    }
}

// Attention of G query heads over one key head (see attend), head_dim = DC * 8.
template <int DC, typename T>
void attend8(const float* q, int64_t G, const T* keys, const T* values, int64_t len, float scaling,
             float* scores, float* out) {
  constexpr int64_t D = DC * 8;
  for (int64_t t = 0; t < len; ++t) {
    __m256 kv[DC];
    for (int c = 0; c < DC; ++c) kv[c] = load8(keys + t * D + c * 8);
    for (int64_t h = 0; h < G; ++h) {
      __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(q + h * D), kv[0]);
      for (int c = 1; c < DC; ++c) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * D + c * 8), kv[c], acc);
      scores[h * len + t] = hsum(acc) * scaling;
    }
  }
  softmax_rows(scores, G, len);
  for (int64_t h = 0; h < G; ++h)
    for (int c = 0; c < DC; ++c) _mm256_storeu_ps(out + h * D + c * 8, _mm256_setzero_ps());
  for (int64_t t = 0; t < len; ++t) {
    __m256 vv[DC];
    for (int c = 0; c < DC; ++c) vv[c] = load8(values + t * D + c * 8);
    for (int64_t h = 0; h < G; ++h) {
      const __m256 p = _mm256_set1_ps(scores[h * len + t]);
      for (int c = 0; c < DC; ++c) {
        float* o = out + h * D + c * 8;
        _mm256_storeu_ps(o, _mm256_fmadd_ps(p, vv[c], _mm256_loadu_ps(o)));
      }
    }
  }
}
#endif

#include "tiles_q4.h"
#include "tiles_i8.h"

// The rows a group of linear layers reads, in the form their kernel wants.
// The forms of an input row the model's weights read (a bit set: a model's layers and head may differ).
enum Form : unsigned { kFormI8 = 1, kFormQ16 = 2, kFormBF16 = 4 };

inline unsigned form_of(Kind k) {
  if (k == Kind::I8) return kFormI8;
  if (k == Kind::Q4) return kFormQ16;
#if defined(__AVX512BF16__)
  if (k == Kind::BF16) return kFormBF16;
#endif
  return 0;
}

struct Input {
  int64_t rows = 0, n = 0;
  unsigned forms = 0;
  const float* f32 = nullptr;  // [rows, n]
  std::vector<int8_t> q8;      // int8 weights: [rows, n] in blocks of 32 (tiles_i8.h)
  std::vector<int16_t> mult;   // int8 weights: [rows, blocks8(n)] block multipliers
  std::vector<float> unit;     // int8 weights: [rows]
  std::vector<int16_t> q16;    // q4 weights: [rows, n] quantized
  std::vector<float> qscale;   // q4 weights: one scale per row
  std::vector<uint16_t> h16;   // bfloat16 weights with AVX512-BF16: [rows, n]
};

void prepare_shape(Input& x, const float* src, int64_t rows, int64_t n, unsigned forms) {
  x.rows = rows;
  x.n = n;
  x.f32 = src;
  x.forms = forms;
  if (forms & kFormI8) {
    x.q8.resize(rows * n);
    x.mult.resize(rows * blocks8(n));
    x.unit.resize(rows);
  }
  if (forms & kFormQ16) {
    x.q16.resize(rows * n);
    x.qscale.resize(rows);
  }
  if (forms & kFormBF16) x.h16.resize(rows * n);
}

// Row r of the input in its kernel's form (local restrict pointers: the loops must vectorize).
void quantize_row(const float* __restrict v, int64_t n, int16_t* __restrict q, float* scale_out) {
  float amax = 0.f;
  for (int64_t k = 0; k < n; ++k) amax = std::max(amax, std::fabs(v[k]));
  const float scale = amax > 0.f ? amax / kQ16 : 1.f;
  const float inv = 1.f / scale;
  for (int64_t k = 0; k < n; ++k) q[k] = int16_t(std::nearbyint(v[k] * inv));
  *scale_out = scale;
}

void prepare_row(Input& x, int64_t r) {
  const int64_t n = x.n;
  if (x.forms & kFormI8)
    quantize_row8(x.f32 + r * n, n, x.q8.data() + r * n, x.mult.data() + r * blocks8(n), x.unit.data() + r);
  if (x.forms & kFormQ16) quantize_row(x.f32 + r * n, n, x.q16.data() + r * n, x.qscale.data() + r);
#if defined(__AVX512BF16__)
  if (x.forms & kFormBF16) {
    const float* v = x.f32 + r * n;
    uint16_t* h = x.h16.data() + r * n;
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)  // round to nearest even, as f32_to_bf16
      _mm256_storeu_si256((__m256i*)(h + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(v + k)));
    for (; k < n; ++k) h[k] = f32_to_bf16(v[k]);
  }
#endif
}

// Plain loops: rows [0, nr) of the tile against input rows [0, nb).
template <typename W, typename X, typename Acc>
void dot_loops(const W* w, int64_t n, const X* x, int nr, int nb, Acc* out) {
  for (int b = 0; b < nb; ++b) {
    for (int i = 0; i < nr; ++i) {
      const W* wr = w + i * n;
      const X* xb = x + b * n;
      Acc total = 0;
      for (int64_t k = 0; k < n; ++k) total += widen(wr[k]) * widen(xb[k]);
      out[b * kTile + i] = total;
    }
  }
}

void dot_f32(const float* w, int64_t n, const float* x, int nr, int nb, float* out) {
#if defined(__AVX512F__)
  if (nr == kTile && n % 16 == 0) {
    if (nb == 1) {
      for (int r0 = 0; r0 < kTile; r0 += 4) row_float(w + r0 * n, n, x, r0, out);
      return;
    }
    for (int b = 0; b < nb; b += 2) {
      if (nb - b >= 2) block_f32<8, 2>(w, n, x + b * n, 0, out + b * kTile);
      else block_f32<8, 1>(w, n, x + b * n, 0, out + b * kTile);
    }
    return;
  }
#elif defined(TAILOR_AVX2)
  if (nr == kTile && n % 8 == 0) return dot8(w, n, x, nb, out);
#endif
  dot_loops(w, n, x, nr, nb, out);
}

void dot_bf16(const uint16_t* w, int64_t n, const float* x, const uint16_t* xh, int nr, int nb, float* out) {
#if defined(__AVX512F__)
  if (nr == kTile && n % 32 == 0) {
    if (nb == 1) {
#if defined(__AVX512BF16__)
      for (int r0 = 0; r0 < kTile; r0 += 4) row_bf16(w + r0 * n, n, xh, r0, out);
#else
      for (int r0 = 0; r0 < kTile; r0 += 4) row_float(w + r0 * n, n, x, r0, out);
#endif
      return;
    }
    for (int b = 0; b < nb; b += 4) {
      const uint16_t* xhb = xh ? xh + b * n : nullptr;
      for (int r0 = 0; r0 < kTile; r0 += 4) {
        const uint16_t* wr = w + r0 * n;
        float* ob = out + b * kTile;
        const int left = nb - b;
        if (left >= 4) block_bf16<4, 4>(wr, n, x + b * n, xhb, r0, ob);
        else if (left == 3) block_bf16<4, 3>(wr, n, x + b * n, xhb, r0, ob);
        else if (left == 2) block_bf16<4, 2>(wr, n, x + b * n, xhb, r0, ob);
        else block_bf16<4, 1>(wr, n, x + b * n, xhb, r0, ob);
      }
    }
    return;
  }
#elif defined(TAILOR_AVX2)
  if (nr == kTile && n % 8 == 0) return dot8(w, n, x, nb, out);
#endif
  (void)xh;
  dot_loops(w, n, x, nr, nb, out);
}

// y[b, r0:r0+nr] = rows r0.. of `l` applied to every input row b, kTile input rows at a time.
void tile(const Linear& l, int64_t r0, int nr, const Input& x, float* y) {
  const int64_t n = l.in;
  for (int64_t b0 = 0; b0 < x.rows; b0 += kTile) {
    const int nb = int(std::min<int64_t>(kTile, x.rows - b0));
    float out[kTile * kTile];
    if (l.kind == Kind::I8) {
      const int64_t mstride = blocks8(n);
      dot_i8(static_cast<const int8_t*>(l.w) + r0 * n, n, x.q8.data() + b0 * n, x.mult.data() + b0 * mstride, mstride,
             nr, nb, out);
      for (int b = 0; b < nb; ++b)
        for (int i = 0; i < nr; ++i) out[b * kTile + i] *= x.unit[b0 + b] * l.s[r0 + i];
    } else if (l.kind == Kind::Q4) {
      dot_q4(static_cast<const uint8_t*>(l.w) + r0 * (n / 2), l.s + r0 * (n / kQ4Block), n, x.q16.data() + b0 * n, nr,
             nb, out);
      for (int b = 0; b < nb; ++b)
        for (int i = 0; i < nr; ++i) out[b * kTile + i] *= x.qscale[b0 + b];
    } else if (l.kind == Kind::BF16) {
      const uint16_t* xh = x.h16.empty() ? nullptr : x.h16.data() + b0 * n;
      dot_bf16(static_cast<const uint16_t*>(l.w) + r0 * n, n, x.f32 + b0 * n, xh, nr, nb, out);
    } else {
      dot_f32(static_cast<const float*>(l.w) + r0 * n, n, x.f32 + b0 * n, nr, nb, out);
    }
    for (int b = 0; b < nb; ++b) {
      float* yb = y + (b0 + b) * l.out + r0;
      for (int i = 0; i < nr; ++i) yb[i] = out[b * kTile + i] + (l.b ? l.b[r0 + i] : 0.f);
    }
  }
}

// One layer of a group that reads the same input: where its output goes, and its LoRA slot (-1: none).
struct Target {
  const Linear* linear;
  float* out;
  int64_t lora;
};

// Every output row of a group of layers that read the same input, split over the team (call inside a
// parallel region; ends with the worksharing loop's barrier). Guided, not static: on a machine with as many
// threads as cores, any other thread (the server's event loop, a tokenizer) preempts one of the team, and with a
// static split the whole team then waits at the barrier for that thread's fixed share. Guided chunks start at
// tiles / threads and shrink, so the threads still running take over what a preempted one has not begun, at
// the cost of a few more claims of work per loop (tiles are independent: the result does not depend on who
// computes which).
void matvec(std::initializer_list<Target> group, const Input& x) {
  int64_t tiles = 0;
  for (auto& g : group) tiles += (g.linear->out + kTile - 1) / kTile;
#pragma omp for schedule(guided)
  for (int64_t t = 0; t < tiles; ++t) {
    int64_t local = t;
    for (auto& g : group) {
      const int64_t n = (g.linear->out + kTile - 1) / kTile;
      if (local < n) {
        const int64_t r0 = local * kTile;
        tile(*g.linear, r0, int(std::min<int64_t>(kTile, g.linear->out - r0)), x, g.out);
        break;
      }
      local -= n;
    }
  }
}

// The elementwise loops between matvecs, on restrict pointers so that they vectorize.
void add_into(float* __restrict h, const float* __restrict o, int64_t n) {
  for (int64_t k = 0; k < n; ++k) h[k] += o[k];
}

// Rows of an elementwise phase (inside a parallel region; ends with a barrier): a few rows on one thread,
// many rows (a prefill) split over the team.
constexpr int64_t kParallelRows = 4;

template <typename F>
void for_rows(int64_t rows, F&& f) {
  if (rows >= kParallelRows) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) f(r);
  } else {
#pragma omp single
    for (int64_t r = 0; r < rows; ++r) f(r);
  }
}

void silu_mul(float* __restrict gate, const float* __restrict up, int64_t n) {  // gate = silu(gate) * up
  for (int64_t k = 0; k < n; ++k) {
    const float g = gate[k];
    const float e = exp_neg(-std::fabs(g));  // sigmoid(g) without overflow for either sign
    gate[k] = g * (g >= 0.f ? 1.f / (1.f + e) : e / (1.f + e)) * up[k];
  }
}

void rms_norm(const float* __restrict x, const float* __restrict w, float* __restrict y, int64_t rows, int64_t n,
              float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float ss = 0.f;
    for (int64_t k = 0; k < n; ++k) ss += xr[k] * xr[k];
    const float inv = 1.f / std::sqrt(ss / float(n) + eps);
    for (int64_t k = 0; k < n; ++k) y[r * n + k] = w[k] * (xr[k] * inv);
  }
}

// ---- attention of one row's G query heads that share a key head ------------------------------------------
// scores[h][t] = q_h . k_t * scaling for t < len, softmax over t, out_h = sum_t p_ht v_t (float32 throughout).
// Each key and value vector is read (and widened from bfloat16) once for all G heads.


#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) { return widen_bf16(p); }

template <int DC, typename T>  // DC: head_dim / 16
void attend_vec(const float* q, int64_t G, const T* keys, const T* values, int64_t len, float scaling,
                float* scores, float* out) {
  constexpr int64_t D = DC * 16;
  for (int64_t t = 0; t < len; ++t) {
    __m512 kv[DC];
    for (int c = 0; c < DC; ++c) kv[c] = load16(keys + t * D + c * 16);
    for (int64_t h = 0; h < G; ++h) {
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q + h * D), kv[0]);
      for (int c = 1; c < DC; ++c) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * D + c * 16), kv[c], acc);
      scores[h * len + t] = _mm512_reduce_add_ps(acc) * scaling;
    }
  }
  softmax_rows(scores, G, len);
  for (int64_t h = 0; h < G; ++h)
    for (int c = 0; c < DC; ++c) _mm512_storeu_ps(out + h * D + c * 16, _mm512_setzero_ps());
  for (int64_t t = 0; t < len; ++t) {
    __m512 vv[DC];
    for (int c = 0; c < DC; ++c) vv[c] = load16(values + t * D + c * 16);
    for (int64_t h = 0; h < G; ++h) {
      const __m512 p = _mm512_set1_ps(scores[h * len + t]);
      for (int c = 0; c < DC; ++c) {
        float* o = out + h * D + c * 16;
        _mm512_storeu_ps(o, _mm512_fmadd_ps(p, vv[c], _mm512_loadu_ps(o)));
      }
    }
  }
}
#endif

template <typename T>
void attend(const float* q, int64_t G, int64_t D, const T* keys, const T* values, int64_t len, float scaling,
            float* scores, float* out) {
#if defined(__AVX512F__)
  if (D == 64) return attend_vec<4>(q, G, keys, values, len, scaling, scores, out);
  if (D == 128) return attend_vec<8>(q, G, keys, values, len, scaling, scores, out);
#elif defined(TAILOR_AVX2)
  if (D == 64) return attend8<8>(q, G, keys, values, len, scaling, scores, out);
  if (D == 128) return attend8<16>(q, G, keys, values, len, scaling, scores, out);
#endif
  for (int64_t h = 0; h < G; ++h) {
    const float* qh = q + h * D;
    float* s = scores + h * len;
    float top = -INFINITY;
    for (int64_t t = 0; t < len; ++t) {
      float dot = 0.f;
      for (int64_t d = 0; d < D; ++d) dot += qh[d] * widen(keys[t * D + d]);
      s[t] = dot * scaling;
      top = std::max(top, s[t]);
    }
    float sum = 0.f;
    for (int64_t t = 0; t < len; ++t) {
      s[t] = exp_neg(s[t] - top);
      sum += s[t];
    }
    const float inv = 1.f / sum;
    float* o = out + h * D;
    for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
    for (int64_t t = 0; t < len; ++t) {
      const float p = s[t] * inv;
      for (int64_t d = 0; d < D; ++d) o[d] += p * widen(values[t * D + d]);
    }
  }
}

#include "lora_rows.h"

struct Layer {
  torch::Tensor ln1, ln2;  // float32
  Linear q, k, v, o, gate, up, down;
};

class DecodeStep {
 public:
  DecodeStep(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, double scaling, torch::Tensor inv_freq,
             double rope_scale, torch::Tensor embed, torch::Tensor embed_scale, std::vector<torch::Tensor> norms,
             std::vector<std::vector<torch::Tensor>> linears, torch::Tensor final_norm)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(float(eps)), scaling_(float(scaling)),
        rope_scale_(float(rope_scale)) {
    TORCH_CHECK(heads % kv_heads == 0, "decode step: heads must be a multiple of kv heads");
    TORCH_CHECK(head_dim % 2 == 0, "decode step: head_dim must be even");
    inv_freq_ = inv_freq.to(torch::kFloat).contiguous();
    TORCH_CHECK(inv_freq_.numel() == head_dim / 2, "decode step: inv_freq size");
    embed_ = make_linear(embed, embed_scale, torch::Tensor());
    hidden_ = embed_.in;
    const int64_t n_layers = int64_t(norms.size()) / 2;
    TORCH_CHECK(int64_t(linears.size()) == 7 * n_layers + 1, "decode step: 7 linear layers per layer and a head");
    auto lin = [&](size_t i) {
      auto& t = linears[i];
      TORCH_CHECK(t.size() == 3, "decode step: a linear layer is (weight, scale, bias)");
      return make_linear(t[0], t[1], t[2]);
    };
    for (int64_t l = 0; l < n_layers; ++l) {
      Layer layer;
      layer.ln1 = norms[2 * l].to(torch::kFloat).contiguous();
      layer.ln2 = norms[2 * l + 1].to(torch::kFloat).contiguous();
      const size_t i = size_t(7 * l);
      layer.q = lin(i), layer.k = lin(i + 1), layer.v = lin(i + 2), layer.o = lin(i + 3);
      layer.gate = lin(i + 4), layer.up = lin(i + 5), layer.down = lin(i + 6);
      TORCH_CHECK(layer.q.out == heads * head_dim && layer.k.out == kv_heads * head_dim &&
                      layer.v.out == kv_heads * head_dim && layer.q.in == hidden_ && layer.o.out == hidden_ &&
                      layer.down.out == hidden_ && layer.gate.out == layer.up.out && layer.down.in == layer.gate.out,
                  "decode step: layer ", l, " has unexpected shapes");
      layers_.push_back(std::move(layer));
    }
    head_ = lin(linears.size() - 1);
    TORCH_CHECK(head_.in == hidden_, "decode step: head shape");
    TORCH_CHECK(embed_.kind != Kind::Q4, "decode step: a q4 embedding is not supported (use the int8 head's)");
    // Every layer reads the same input forms (float, bf16, int8 blocks and int16 rows for int8 and q4).
    forms_ = 0;
    for (const Layer& layer : layers_)
      for (const Linear* l : {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down}) {
        TORCH_CHECK(l->kind == head_.kind || (quantized(l->kind) && quantized(head_.kind)),
                    "decode step: mixed weight dtypes (int8 and q4 may mix; float kinds may not)");
        forms_ |= form_of(l->kind);
      }
    final_norm_ = final_norm.to(torch::kFloat).contiguous();
    inter_ = layers_.empty() ? 0 : layers_[0].gate.out;
    lora_.resize(7 * n_layers);
  }

  // Adapters on linear layer `index` (7 per layer, in the order q, k, v, o, gate, up, down).
  void set_lora(int64_t index, const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& spans) {
    TORCH_CHECK(index >= 0 && index < int64_t(lora_.size()), "decode step: no linear layer ", index);
    const Linear& l = linear_at(index);
    TORCH_CHECK(a.scalar_type() == torch::kFloat && b.scalar_type() == torch::kFloat && a.is_contiguous() &&
                    b.is_contiguous() && a.dim() == 2 && b.dim() == 2 && a.size(0) == l.in && b.size(1) == l.out &&
                    a.size(1) == b.size(0),
                "decode step: LoRA weights must be float32 A [in, R] and B [R, out]");
    TORCH_CHECK(spans.scalar_type() == torch::kLong && spans.dim() == 2 && spans.size(1) == 2 && spans.is_contiguous(),
                "decode step: LoRA spans are int64 [ids, 2]");
    const int64_t* sp = spans.data_ptr<int64_t>();
    for (int64_t i = 0; i < spans.size(0); ++i)
      TORCH_CHECK(sp[2 * i] < 0 || (sp[2 * i] <= sp[2 * i + 1] && sp[2 * i + 1] <= a.size(1)), "decode step: LoRA span");
    store_lora(lora_[index], a, b, spans, l.kind != Kind::F32);  // bf16 adapters over a rounded base (lora_rows.h)
    refresh_max_rank();
  }

  void clear_lora(int64_t index) {
    TORCH_CHECK(index >= 0 && index < int64_t(lora_.size()), "decode step: no linear layer ", index);
    lora_[index] = Lora{};
    refresh_max_rank();
  }

  // Seconds spent per phase since the last call (while profiling is on): where a step's time goes.
  void set_profile(bool on) { profile_ = on; }
  std::map<std::string, double> take_profile() {
    static const char* names[kPhases] = {"matrix-vector products (layers)", "output head",
                                         "RoPE, cache writes and attention", "norms, SiLU, residuals, input quantization",
                                         "LoRA"};
    std::map<std::string, double> out;
    for (int i = 0; i < kPhases; ++i) {
      out[names[i]] = times_[i];
      times_[i] = 0;
    }
    return out;
  }

  // Logits [len(logit_rows) or B, vocab] of rows `logit_rows` (empty: every row). Row b is slot slots[b]
  // (empty: slot b) at positions[b], through adapter adapter_ids[b] (empty: none, -1: none for that row).
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                        const std::vector<torch::Tensor>& keys, const std::vector<torch::Tensor>& values,
                        const torch::Tensor& adapter_ids, const torch::Tensor& slots,
                        const torch::Tensor& logit_rows) {
    TORCH_CHECK(tokens.scalar_type() == torch::kLong && positions.scalar_type() == torch::kLong &&
                    tokens.dim() == 1 && positions.sizes() == tokens.sizes(),
                "decode step: tokens and positions are int64 [B]");
    TORCH_CHECK(keys.size() == layers_.size() && values.size() == layers_.size(), "decode step: one cache per layer");
    const int64_t B = tokens.size(0);
    auto tok = tokens.contiguous();
    auto pos = positions.contiguous();
    const int64_t* tk = tok.data_ptr<int64_t>();
    const int64_t* ps = pos.data_ptr<int64_t>();
    std::vector<int64_t> slot_of(B);  // each row's cache slot
    int64_t slot_count = 0;
    const bool mapped = slots.defined() && slots.numel();
    TORCH_CHECK(!mapped || (slots.scalar_type() == torch::kLong && slots.numel() == B && slots.is_contiguous()),
                "decode step: slots are int64 [B]");
    for (int64_t b = 0; b < B; ++b) {
      slot_of[b] = mapped ? slots.data_ptr<int64_t>()[b] : b;
      TORCH_CHECK(slot_of[b] >= 0, "decode step: negative slot");
      slot_count = std::max(slot_count, slot_of[b] + 1);
    }
    std::vector<int64_t> picked;  // the rows whose logits are returned
    if (logit_rows.defined() && logit_rows.numel()) {
      TORCH_CHECK(logit_rows.scalar_type() == torch::kLong && logit_rows.dim() == 1 && logit_rows.is_contiguous(),
                  "decode step: logit rows are int64 [L]");
      const int64_t* lr = logit_rows.data_ptr<int64_t>();
      picked.assign(lr, lr + logit_rows.numel());
      for (int64_t r : picked) TORCH_CHECK(r >= 0 && r < B, "decode step: logit row ", r, " outside the batch");
    } else {
      for (int64_t b = 0; b < B; ++b) picked.push_back(b);
    }
    const int64_t P = int64_t(picked.size());
    const auto cache_type = keys.empty() ? torch::kFloat : keys[0].scalar_type();
    TORCH_CHECK(cache_type == torch::kFloat || cache_type == torch::kBFloat16, "decode step: cache dtype");
    const int64_t cap = keys.empty() ? std::numeric_limits<int64_t>::max() : keys[0].size(2);
    for (size_t l = 0; l < keys.size(); ++l) {
      for (const auto* t : {&keys[l], &values[l]}) {
        TORCH_CHECK(t->is_contiguous() && t->scalar_type() == cache_type && t->dim() == 4 && t->size(0) >= slot_count &&
                        t->size(1) == kv_heads_ && t->size(2) == cap && t->size(3) == head_dim_,
                    "decode step: cache tensors must be contiguous [slots, kv_heads, capacity, head_dim]");
      }
    }
    int64_t t_max = 0;
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(ps[b] >= 0 && ps[b] < cap, "decode step: position ", ps[b], " outside the cache");
      TORCH_CHECK(tk[b] >= 0 && tk[b] < embed_.out, "decode step: token id ", tk[b], " outside the vocabulary");
      t_max = std::max(t_max, ps[b] + 1);
    }
    const int64_t* ids = nullptr;  // each row's adapter id (-1: none); null when no row has one
    if (adapter_ids.defined() && adapter_ids.numel()) {
      TORCH_CHECK(adapter_ids.scalar_type() == torch::kLong && adapter_ids.numel() == B && adapter_ids.is_contiguous(),
                  "decode step: adapter ids are int64 [B]");
      ids = adapter_ids.data_ptr<int64_t>();
      lora_chunks_ = lora_chunks(ids, B);
      lora_h_.resize(at::get_num_threads() * kLoraRows * std::max<int64_t>(max_rank_, 1));
    }
    const int64_t D = head_dim_, H = heads_, KV = kv_heads_, group = H / KV, dim = hidden_, I = inter_;
    h_.assign(B * dim, 0.f);
    xn_.resize(B * dim);
    q_.resize(B * H * D);
    k_.resize(B * KV * D);
    v_.resize(B * KV * D);
    att_.resize(B * H * D);
    o_.resize(B * dim);
    gate_.resize(B * I);
    up_.resize(B * I);
    const int64_t threads = at::get_num_threads();
    scores_.resize(threads * group * t_max);  // one row's group of heads at a time per thread
    cos_.resize(B * D / 2);
    sin_.resize(B * D / 2);
    xf_.resize(P * dim);
    auto logits = torch::empty({P, head_.out}, torch::kFloat);
    float* out = logits.data_ptr<float>();
    const float* inv_freq = inv_freq_.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {  // embedding rows and RoPE angles, as transformers computes them
      embed_row(tk[b], h_.data() + b * dim);
      for (int64_t i = 0; i < D / 2; ++i) {
        const float f = float(ps[b]) * inv_freq[i];
        cos_[b * D / 2 + i] = std::cos(f) * rope_scale_;
        sin_[b * D / 2 + i] = std::sin(f) * rope_scale_;
      }
    }
    const bool bf16_cache = cache_type == torch::kBFloat16;
    prepare_shape(in_dim_, xn_.data(), B, dim, forms_);  // the inputs' shapes; their rows are filled per layer
    prepare_shape(in_att_, att_.data(), B, H * D, forms_);
    prepare_shape(in_inter_, gate_.data(), B, I, forms_);
    prepare_shape(in_head_, xf_.data(), P, dim, form_of(head_.kind));
    double last = omp_get_wtime();  // phase timing (profile_): thread 0 after each barrier
    auto mark = [&](int phase) {
      if (profile_ && omp_get_thread_num() == 0) {
        const double now = omp_get_wtime();
        times_[phase] += now - last;
        last = now;
      }
    };
#pragma omp parallel num_threads(threads)
    {
      for (size_t l = 0; l < layers_.size(); ++l) {
        const Layer& L = layers_[l];
        for_rows(B, [&](int64_t b) {
          if (l > 0) add_into(h_.data() + b * dim, o_.data() + b * dim, dim);  // the last layer's MLP
          rms_norm(h_.data() + b * dim, L.ln1.data_ptr<float>(), xn_.data() + b * dim, 1, dim, eps_);
          prepare_row(in_dim_, b);
        });
        mark(kElementwise);
        const int64_t slot = int64_t(7 * l);  // the layer's first LoRA slot
        project({{&L.q, q_.data(), slot}, {&L.k, k_.data(), slot + 1}, {&L.v, v_.data(), slot + 2}}, in_dim_,
                ids, kMatvec, mark);
        for_rows(B, [&](int64_t b) {  // RoPE, then every row's key and value into the cache before any attends
          for (int64_t hh = 0; hh < H; ++hh) rope(q_.data() + (b * H + hh) * D, b);
          for (int64_t g = 0; g < KV; ++g) {
            float* kr = k_.data() + (b * KV + g) * D;
            rope(kr, b);
            const int64_t at = ((slot_of[b] * KV + g) * cap + ps[b]) * D;
            store(keys[l], at, kr, bf16_cache);
            store(values[l], at, v_.data() + (b * KV + g) * D, bf16_cache);
          }
        });
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < B * KV; ++task) {  // one row's query heads sharing key head g
          const int64_t b = task / KV, g = task % KV;
          const int64_t base = ((slot_of[b] * KV + g) * cap) * D, len = ps[b] + 1, first = b * H + g * group;
          float* scores = scores_.data() + omp_get_thread_num() * group * t_max;
          auto run = [&](auto* kp, auto* vp) {  // typed by the cache: float or bf16 bits
            attend(q_.data() + first * D, group, D, kp + base, vp + base, len, scaling_, scores,
                   att_.data() + first * D);
          };
          if (bf16_cache)
            run(static_cast<const uint16_t*>(keys[l].data_ptr()), static_cast<const uint16_t*>(values[l].data_ptr()));
          else
            run(static_cast<const float*>(keys[l].data_ptr()), static_cast<const float*>(values[l].data_ptr()));
        }
        mark(kAttention);  // RoPE, cache writes and attention
        for_rows(B, [&](int64_t b) { prepare_row(in_att_, b); });
        mark(kElementwise);
        project({{&L.o, o_.data(), slot + 3}}, in_att_, ids, kMatvec, mark);
        for_rows(B, [&](int64_t b) {
          add_into(h_.data() + b * dim, o_.data() + b * dim, dim);
          rms_norm(h_.data() + b * dim, L.ln2.data_ptr<float>(), xn_.data() + b * dim, 1, dim, eps_);
          prepare_row(in_dim_, b);
        });
        mark(kElementwise);
        project({{&L.gate, gate_.data(), slot + 4}, {&L.up, up_.data(), slot + 5}}, in_dim_, ids, kMatvec, mark);
        for_rows(B, [&](int64_t b) {
          silu_mul(gate_.data() + b * I, up_.data() + b * I, I);
          prepare_row(in_inter_, b);
        });
        mark(kElementwise);
        project({{&L.down, o_.data(), slot + 6}}, in_inter_, ids, kMatvec, mark);
      }
      for_rows(P, [&](int64_t j) {  // the picked rows: the last MLP, the final norm
        const int64_t b = picked[j];
        if (!layers_.empty()) add_into(h_.data() + b * dim, o_.data() + b * dim, dim);
        rms_norm(h_.data() + b * dim, final_norm_.data_ptr<float>(), xf_.data() + j * dim, 1, dim, eps_);
        prepare_row(in_head_, j);
      });
      mark(kElementwise);
      project({{&head_, out, -1}}, in_head_, nullptr, kHead, mark);  // the head has no adapter
    }
    return logits;
  }

 private:
  const Linear& linear_at(int64_t index) const {
    const Layer& L = layers_[index / 7];
    const Linear* ls[7] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
    return *ls[index % 7];
  }

  void refresh_max_rank() {
    max_rank_ = 0;
    for (const auto& x : lora_) max_rank_ = std::max(max_rank_, x.rank);
  }

  // The worksharing part of a group of layers that read input `x` (prepared by the caller's rows): the
  // matrix-vector products (timed as `phase`), then the LoRA deltas of the rows with an adapter.
  template <typename Mark>
  void project(std::initializer_list<Target> group, const Input& x, const int64_t* ids, int phase, Mark& mark) {
    matvec(group, x);
    mark(phase);
    if (ids) apply_lora(group, x);
    mark(kLora);
  }

  // After a group's matvec: the rows with an adapter add its low-rank delta, one (layer, chunk of one adapter's
  // rows) per task (lora_rows.h).
  void apply_lora(std::initializer_list<Target> group, const Input& x) {
    const int64_t G = int64_t(group.size()), chunks = int64_t(lora_chunks_.size());
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < chunks * G; ++task) {
      const Target& target = *(group.begin() + task % G);
      if (target.lora < 0) continue;
      float* h = lora_h_.data() + omp_get_thread_num() * kLoraRows * max_rank_;
      lora_apply(lora_[target.lora], lora_chunks_[task / G], x.f32, target.out, h);
    }
  }

  void embed_row(int64_t id, float* dst) const {
    const int64_t n = embed_.in;
    if (embed_.kind == Kind::I8) {
      const int8_t* w = static_cast<const int8_t*>(embed_.w) + id * n;
      for (int64_t k = 0; k < n; ++k) dst[k] = float(w[k]) * embed_.s[id];
    } else if (embed_.kind == Kind::BF16) {
      const uint16_t* w = static_cast<const uint16_t*>(embed_.w) + id * n;
      for (int64_t k = 0; k < n; ++k) dst[k] = bf16_to_f32(w[k]);
    } else {
      std::memcpy(dst, static_cast<const float*>(embed_.w) + id * n, n * sizeof(float));
    }
  }

  void rope(float* x, int64_t b) const {  // transformers' rotate_half convention
    const int64_t half = head_dim_ / 2;
    const float* c = cos_.data() + b * half;
    const float* s = sin_.data() + b * half;
    for (int64_t i = 0; i < half; ++i) {
      const float lo = x[i], hi = x[i + half];
      x[i] = lo * c[i] - hi * s[i];
      x[i + half] = hi * c[i] + lo * s[i];
    }
  }

  void store(const torch::Tensor& cache, int64_t at, const float* src, bool bf16) const {
    if (bf16) {
      uint16_t* dst = static_cast<uint16_t*>(cache.data_ptr()) + at;
      for (int64_t k = 0; k < head_dim_; ++k) dst[k] = f32_to_bf16(src[k]);
    } else {
      std::memcpy(static_cast<float*>(cache.data_ptr()) + at, src, head_dim_ * sizeof(float));
    }
  }

  int64_t heads_, kv_heads_, head_dim_, hidden_ = 0, inter_ = 0;
  float eps_, scaling_, rope_scale_;
  torch::Tensor inv_freq_, final_norm_;
  Linear embed_, head_;
  std::vector<Layer> layers_;
  enum { kMatvec, kHead, kAttention, kElementwise, kLora, kPhases };
  bool profile_ = false;
  double times_[kPhases] = {};
  std::vector<Lora> lora_;
  int64_t max_rank_ = 0;
  std::vector<float> h_, xn_, q_, k_, v_, att_, o_, gate_, up_, scores_, cos_, sin_, lora_h_;
  std::vector<LoraChunk> lora_chunks_;  // this step's rows by adapter
  std::vector<float> xf_;  // the picked rows after the final norm
  Input in_dim_, in_att_, in_inter_, in_head_;
  unsigned forms_ = 0;  // the input forms the layers read (Form bits)
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<DecodeStep>(m, "DecodeStep")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, double, torch::Tensor, double, torch::Tensor,
                          torch::Tensor, std::vector<torch::Tensor>, std::vector<std::vector<torch::Tensor>>,
                          torch::Tensor>())
      .def("set_lora", &DecodeStep::set_lora)
      .def("set_profile", &DecodeStep::set_profile)
      .def("take_profile", &DecodeStep::take_profile)
      .def("clear_lora", &DecodeStep::clear_lora)
      .def("forward", &DecodeStep::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("kernel_isa", &kernel_isa, "The instruction sets this build's kernels use.");
}
