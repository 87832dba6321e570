// int8 weights (one float scale per output row) against int8 activations in blocks of 32, for the decode step's
// tiles; included by decode_step.cpp after its shared reductions (kTile, finish, finish8), so this is not a
// standalone header.
//
// Activations (quantize_row8, once per input row and matvec group): blocks of 32 inputs; the row has a unit
// u = amax_row / (127 * 256) and block j an integer multiplier m_j in 1..256, x ~ q * m_j * u with q in [-127, 127].
// So a block's step is its own amax / 127 rounded up to a multiple of u, as fine as llama.cpp's q8_0 blocks for
// every block within 256x of the row's largest, and the block scale is an integer: the pair sums of the 8-bit
// products are multiplied by m_j in the int16 -> int32 multiply-add they need anyway, so a row's whole dot product
// is one exact int32 accumulation, with no conversion to float and no float scale per block.
//
// Products: `vpmaddubsw` (u8 x s8, 32 products per AVX2 instruction, 64 per AVX-512) takes one unsigned operand:
// |q|, with the weight given q's sign (`vpsignb`; AVX-512 has none: a masked negation). A pair sum is at most
// 2 * 127 * 127 < 2^15, so its saturating add never saturates. Then `vpmaddwd` with the multipliers (VNNI's
// `vpdpwssd` fuses the accumulate): an int32 lane gains at most 4 * 127^2 * 256 < 2^24 per block, so lanes stay
// exact for kLaneBlocks blocks, after which they are flushed into float (exact to float's 24 bits each time).
// The plain loops compute the same integers (in int64), so every ISA rounds the activations alike.
// Tiles: R weight rows x NB input rows per pass, so a batch reads each weight once.
#pragma once

constexpr int64_t kBlock8 = 32;
constexpr int64_t kLaneBlocks = 64;  // blocks a lane sums exactly in int32: 64 * 2^24 = 2^30

inline int64_t blocks8(int64_t n) { return (n + kBlock8 - 1) / kBlock8; }

// Row v[0, n) as int8 blocks: q[n], mult[blocks8(n)], *unit (x[k] ~ q[k] * mult[k / 32] * unit).
void quantize_row8(const float* __restrict v, int64_t n, int8_t* __restrict q, int16_t* __restrict mult,
                   float* unit_out) {
  float amax = 0.f;
  for (int64_t k = 0; k < n; ++k) amax = std::max(amax, std::fabs(v[k]));
  const float unit = amax > 0.f ? amax / (127.f * 256.f) : 1.f;
  int64_t b = 0, k0 = 0;
#if defined(__AVX2__)
  // Whole blocks 8 lanes at a time: the same float operations as the loop below (`vcvtps2dq` rounds to nearest
  // even, as nearbyint), so the integers do not depend on the ISA.
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (; k0 + kBlock8 <= n; ++b, k0 += kBlock8) {
    __m256 v4[4], mx = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v4[j] = _mm256_loadu_ps(v + k0 + 8 * j);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v4[j]));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float bmax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    const int m = std::clamp(int(std::ceil(bmax / (127.f * unit))), 1, 256);
    const __m256 inv = _mm256_set1_ps(1.f / (float(m) * unit));
    __m256i i4[4];
    for (int j = 0; j < 4; ++j) i4[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v4[j], inv));
    // packs work within 128-bit lanes: the bytes come out as 0 2 4 6 1 3 5 7 (in units of 4), put back in order
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i4[0], i4[1]), _mm256_packs_epi32(i4[2], i4[3]));
    _mm256_storeu_si256((__m256i*)(q + k0), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    mult[b] = int16_t(m);
  }
#endif
  for (; k0 < n; ++b, k0 += kBlock8) {
    const int64_t k1 = std::min(n, k0 + kBlock8);
    float bmax = 0.f;
    for (int64_t k = k0; k < k1; ++k) bmax = std::max(bmax, std::fabs(v[k]));
    const int m = std::clamp(int(std::ceil(bmax / (127.f * unit))), 1, 256);
    const float inv = 1.f / (float(m) * unit);
    for (int64_t k = k0; k < k1; ++k) q[k] = int8_t(std::clamp(std::nearbyint(v[k] * inv), -127.f, 127.f));
    mult[b] = int16_t(m);
  }
  *unit_out = unit;
}

#if defined(__AVX512BW__)
// The multipliers of blocks blk and blk + 1 as 32 int16 lanes (16 each), the layout of one 64-byte step's pair sums.
inline __m512i mult2(const int16_t* m) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(m[0])), _mm256_set1_epi16(m[1]), 1);
}

// Float sums (in units of the inputs' unit) for R weight rows x NB input rows into out[b * kTile + r0 + i].
template <int R, int NB>
void block_i8(const int8_t* w, int64_t n, const int8_t* x, const int16_t* m, int64_t mstride, int r0, float* out) {
  const __m512i zero = _mm512_setzero_si512();
  __m512 f[R * NB];
  for (int j = 0; j < R * NB; ++j) f[j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += kLaneBlocks * 2 * kBlock8) {
    const int64_t end = std::min(n, c + kLaneBlocks * 2 * kBlock8);
    __m512i a[R * NB];
    for (int j = 0; j < R * NB; ++j) a[j] = zero;
    for (int64_t k = c; k < end; k += 2 * kBlock8) {
      __m512i wv[R];
      for (int i = 0; i < R; ++i) wv[i] = _mm512_loadu_si512(w + i * n + k);
      for (int i = 0; i < R; ++i) _mm_prefetch((const char*)(w + (i + R) * n + k), _MM_HINT_T0);
      for (int b = 0; b < NB; ++b) {
        const __m512i xv = _mm512_loadu_si512(x + b * n + k);
        const __m512i ax = _mm512_abs_epi8(xv);
        const __mmask64 neg = _mm512_movepi8_mask(xv);
        const __m512i mv = mult2(m + b * mstride + k / kBlock8);
        for (int i = 0; i < R; ++i) {
          const __m512i p = _mm512_maddubs_epi16(ax, _mm512_mask_sub_epi8(wv[i], neg, zero, wv[i]));
#if defined(__AVX512VNNI__)
          a[b * R + i] = _mm512_dpwssd_epi32(a[b * R + i], p, mv);
#else
          a[b * R + i] = _mm512_add_epi32(a[b * R + i], _mm512_madd_epi16(p, mv));
#endif
        }
      }
    }
    for (int j = 0; j < R * NB; ++j) f[j] = _mm512_add_ps(f[j], _mm512_cvtepi32_ps(a[j]));
  }
  finish<R, NB>(f, r0, out);
}

void dot_i8_512(const int8_t* w, int64_t n, const int8_t* x, const int16_t* m, int64_t mstride, int nb,
                float* out) {
  if (nb == 1) {  // one input row, bound by memory: the weight rows one after the other, a single forward stream
    // (4 or 8 rows interleaved measured 1.6x slower here: rows of 576 bytes are streams too short to prefetch)
    for (int r0 = 0; r0 < kTile; ++r0) block_i8<1, 1>(w + r0 * n, n, x, m, mstride, r0, out);
    return;
  }
  for (int b = 0; b < nb; b += 4) {
    const int left = nb - b;
    const int8_t* xb = x + b * n;
    const int16_t* mb = m + b * mstride;
    float* ob = out + b * kTile;
    for (int r0 = 0; r0 < kTile; r0 += 4) {
      const int8_t* wr = w + r0 * n;
      if (left >= 4) block_i8<4, 4>(wr, n, xb, mb, mstride, r0, ob);
      else if (left == 3) block_i8<4, 3>(wr, n, xb, mb, mstride, r0, ob);
      else if (left == 2) block_i8<4, 2>(wr, n, xb, mb, mstride, r0, ob);
      else block_i8<4, 1>(wr, n, xb, mb, mstride, r0, ob);
    }
  }
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// The same on 256-bit vectors: one block per step (AVX2 machines, and AVX-512 ones for rows of 64k + 32).
template <int R, int NB>
void block8_i8(const int8_t* w, int64_t n, const int8_t* x, const int16_t* m, int64_t mstride, int r0, float* out) {
  static_assert(R * NB <= 8, "one transposing reduction folds 8 sums");
  __m256 f[8];
  for (int j = 0; j < 8; ++j) f[j] = _mm256_setzero_ps();
  for (int64_t c = 0; c < n; c += kLaneBlocks * kBlock8) {
    const int64_t end = std::min(n, c + kLaneBlocks * kBlock8);
    __m256i a[R * NB];
    for (int j = 0; j < R * NB; ++j) a[j] = _mm256_setzero_si256();
    for (int64_t k = c; k < end; k += kBlock8) {
      __m256i wv[R];
      for (int i = 0; i < R; ++i) wv[i] = _mm256_loadu_si256((const __m256i*)(w + i * n + k));
      if ((k & 63) == 0)  // the next pass's rows (short rows are streams too short for the hardware prefetcher)
        for (int i = 0; i < R; ++i) _mm_prefetch((const char*)(w + (i + R) * n + k), _MM_HINT_T0);
      for (int b = 0; b < NB; ++b) {
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(x + b * n + k));
        const __m256i ax = _mm256_sign_epi8(xv, xv);
        const __m256i mv = _mm256_set1_epi16(m[b * mstride + k / kBlock8]);
        for (int i = 0; i < R; ++i) {
          const __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv[i], xv));
          a[b * R + i] = _mm256_add_epi32(a[b * R + i], _mm256_madd_epi16(p, mv));
        }
      }
    }
    for (int j = 0; j < R * NB; ++j) f[j] = _mm256_add_ps(f[j], _mm256_cvtepi32_ps(a[j]));
  }
  finish8<R, NB>(f, r0, out);
}

void dot_i8_256(const int8_t* w, int64_t n, const int8_t* x, const int16_t* m, int64_t mstride, int nb,
                float* out) {
  if (nb == 1) {  // one input row, bound by memory: weight rows one after the other (see dot_i8_512)
    for (int r0 = 0; r0 < kTile; ++r0) block8_i8<1, 1>(w + r0 * n, n, x, m, mstride, r0, out);
    return;
  }
  for (int b = 0; b < nb; b += 2) {  // 2 x 4 and 4 x 2 measure alike
    const int8_t* xb = x + b * n;
    const int16_t* mb = m + b * mstride;
    float* ob = out + b * kTile;
    for (int r0 = 0; r0 < kTile; r0 += 4) {
      if (nb - b >= 2) block8_i8<4, 2>(w + r0 * n, n, xb, mb, mstride, r0, ob);
      else block8_i8<4, 1>(w + r0 * n, n, xb, mb, mstride, r0, ob);
    }
  }
}
#endif

// Plain loops (the correctness reference, partial tiles, rows not a whole number of blocks): the same integers.
void dot_i8_loops(const int8_t* w, int64_t n, const int8_t* x, const int16_t* m, int64_t mstride, int nr, int nb,
                  float* out) {
  for (int b = 0; b < nb; ++b)
    for (int i = 0; i < nr; ++i) {
      const int8_t* wr = w + i * n;
      const int8_t* xb = x + b * n;
      int64_t total = 0;
      for (int64_t blk = 0, k0 = 0; k0 < n; ++blk, k0 += kBlock8) {
        int32_t sum = 0;
        for (int64_t k = k0; k < std::min(n, k0 + kBlock8); ++k) sum += int32_t(wr[k]) * int32_t(xb[k]);
        total += int64_t(sum) * m[b * mstride + blk];
      }
      out[b * kTile + i] = float(total);
    }
}

// out[b * kTile + i] = sum over blocks of (weight row i . input row b's block) * the block's multiplier, for the
// tile's nr weight rows (w at its first row) and nb input rows (x, m at the first; m's row stride mstride).
void dot_i8(const int8_t* w, int64_t n, const int8_t* x, const int16_t* m, int64_t mstride, int nr, int nb,
            float* out) {
  if (nr == kTile) {
#if defined(__AVX512BW__)
    if (n % (2 * kBlock8) == 0) return dot_i8_512(w, n, x, m, mstride, nb, out);
#endif
#if defined(__AVX2__) && defined(__FMA__)
    if (n % kBlock8 == 0) return dot_i8_256(w, n, x, m, mstride, nb, out);
#endif
  }
  dot_i8_loops(w, n, x, m, mstride, nr, nb, out);
}
