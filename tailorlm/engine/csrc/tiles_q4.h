// 4-bit weights (q4_0-style blocks) for the decode step's tiles; included by decode_step.cpp after its
// int8 kernels (it uses kTile, finish and finish8 from there), so this is not a standalone header.
//
// Layout, read in place from Q4Linear's tensors: weights uint8 [out, in / 2], blocks of 32 inputs along `in`
// (16 bytes each); byte j of a block holds element j in its low nibble and element j + 16 in its high one;
// element value = (nibble - 8) * scale[row, block], scale float32 [out, in / 32].
// Why this nibble order: one block's 16 bytes give elements 0..15 with `and 0x0F` and 16..31 with a shift,
// so unpacking needs no shuffle, and a block is exactly one 32-lane int16 vector (AVX-512) or two (AVX2).
//
// Products: the int16 activations (the int8 path's per-row quantization, kQ16) times the unpacked int8
// nibbles, summed exactly in int32 per block (32 * 8 * 8191 < 2^31), then float-accumulated as
// sum_block * scale. The block sum lands in 16 (AVX-512) or 8 (AVX2) int32 lanes; each lane is converted and
// multiplied by the block's scale into a float accumulator, reduced once per tile at the end. VNNI's
// `vpdpwssd` would fuse a multiply-add into an int32 accumulator, but the accumulator here restarts every
// block (each block has its own scale), so `vpmaddwd` (AVX512BW) is the same single instruction.
// Tiles: R weight rows x NB input rows per pass, as the int8 tiles, so a batch reads each weight once.
#pragma once

constexpr int64_t kQ4Block = 32;

#if defined(__AVX512BW__)
// One block's 32 weights as int16 (nibble - 8), in element order.
inline __m512i unpack_q4(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128((const __m128i*)p);
  const __m128i m = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, m), eight);
  const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), eight);
  return _mm512_cvtepi8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}

// Float sums for R weight rows x NB input rows into out[b * kTile + r0 + i] (scaled by the weights' block
// scales, not yet by the inputs' row scales).
template <int R, int NB>
void block_q4(const uint8_t* w, const float* s, int64_t n, const int16_t* x, int r0, float* out) {
  const int64_t row_bytes = n / 2, row_blocks = n / kQ4Block;
  __m512 a[R * NB];
  for (int j = 0; j < R * NB; ++j) a[j] = _mm512_setzero_ps();
  for (int64_t blk = 0; blk < row_blocks; ++blk) {
    if ((blk & 3) == 0)  // the next pass's rows, a line ahead (rows of n / 2 bytes are short streams)
      for (int i = 0; i < R; ++i) _mm_prefetch((const char*)(w + (i + R) * row_bytes + blk * 16), _MM_HINT_T0);
    for (int i = 0; i < R; ++i) {  // one weight row's block at a time: few registers, each widened once
      const __m512i wv = unpack_q4(w + i * row_bytes + blk * 16);
      const __m512 sv = _mm512_set1_ps(s[i * row_blocks + blk]);
      for (int b = 0; b < NB; ++b) {
        const __m512i xv = _mm512_loadu_si512(x + b * n + blk * kQ4Block);
        a[b * R + i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(wv, xv)), sv, a[b * R + i]);
      }
    }
  }
  finish<R, NB>(a, r0, out);
}

void dot_q4_vec(const uint8_t* w, const float* s, int64_t n, const int16_t* x, int nb, float* out) {
  const int64_t row_bytes = n / 2, row_blocks = n / kQ4Block;
  if (nb == 1) {  // one input row: weight rows one after the other, a single forward stream (as tiles_i8.h)
    for (int r0 = 0; r0 < kTile; ++r0) block_q4<1, 1>(w + r0 * row_bytes, s + r0 * row_blocks, n, x, r0, out);
    return;
  }
  for (int b = 0; b < nb; b += 4) {
    const int left = nb - b;
    for (int r0 = 0; r0 < kTile; r0 += 4) {
      const uint8_t* wr = w + r0 * row_bytes;
      const float* sr = s + r0 * row_blocks;
      const int16_t* xb = x + b * n;
      float* ob = out + b * kTile;
      if (left >= 4) block_q4<4, 4>(wr, sr, n, xb, r0, ob);
      else if (left == 3) block_q4<4, 3>(wr, sr, n, xb, r0, ob);
      else if (left == 2) block_q4<4, 2>(wr, sr, n, xb, r0, ob);
      else block_q4<4, 1>(wr, sr, n, xb, r0, ob);
    }
  }
}
#elif defined(TAILOR_AVX2)
template <int R, int NB>
void block8_q4(const uint8_t* w, const float* s, int64_t n, const int16_t* x, int r0, float* out) {
  static_assert(R * NB <= 8, "one transposing reduction folds 8 sums");
  const int64_t row_bytes = n / 2, row_blocks = n / kQ4Block;
  const __m128i m = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m256 a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
  for (int64_t blk = 0; blk < row_blocks; ++blk) {
    if ((blk & 3) == 0)
      for (int i = 0; i < R; ++i) _mm_prefetch((const char*)(w + (i + R) * row_bytes + blk * 16), _MM_HINT_T0);
    for (int i = 0; i < R; ++i) {
      const __m128i bytes = _mm_loadu_si128((const __m128i*)(w + i * row_bytes + blk * 16));
      const __m256i lo = _mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_and_si128(bytes, m), eight));  // elements 0..15
      const __m256i hi = _mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), m), eight));
      const __m256 sv = _mm256_set1_ps(s[i * row_blocks + blk]);
      for (int b = 0; b < NB; ++b) {
        const int16_t* xb = x + b * n + blk * kQ4Block;
        const __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i*)xb)),
                                             _mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i*)(xb + 16))));
        a[b * R + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sv, a[b * R + i]);
      }
    }
  }
  finish8<R, NB>(a, r0, out);
}

void dot_q4_vec(const uint8_t* w, const float* s, int64_t n, const int16_t* x, int nb, float* out) {
  const int64_t row_bytes = n / 2, row_blocks = n / kQ4Block;
  if (nb == 1) {  // one input row: weight rows one after the other, a single forward stream (as tiles_i8.h)
    for (int r0 = 0; r0 < kTile; ++r0) block8_q4<1, 1>(w + r0 * row_bytes, s + r0 * row_blocks, n, x, r0, out);
    return;
  }
  for (int b = 0; b < nb; b += 2)
    for (int r0 = 0; r0 < kTile; r0 += 4) {
      const uint8_t* wr = w + r0 * row_bytes;
      const float* sr = s + r0 * row_blocks;
      if (nb - b >= 2) block8_q4<4, 2>(wr, sr, n, x + b * n, r0, out + b * kTile);
      else block8_q4<4, 1>(wr, sr, n, x + b * n, r0, out + b * kTile);
    }
}
#endif

// Plain loops (the correctness reference, and partial tiles): rows [0, nr) against input rows [0, nb).
void dot_q4_loops(const uint8_t* w, const float* s, int64_t n, const int16_t* x, int nr, int nb, float* out) {
  const int64_t row_bytes = n / 2, row_blocks = n / kQ4Block;
  for (int b = 0; b < nb; ++b)
    for (int i = 0; i < nr; ++i) {
      const uint8_t* wr = w + i * row_bytes;
      const int16_t* xb = x + b * n;
      float total = 0.f;
      for (int64_t blk = 0; blk < row_blocks; ++blk) {
        const uint8_t* p = wr + blk * 16;
        const int16_t* xk = xb + blk * kQ4Block;
        int32_t sum = 0;
        for (int j = 0; j < 16; ++j)
          sum += (int32_t(p[j] & 0x0F) - 8) * xk[j] + (int32_t(p[j] >> 4) - 8) * xk[j + 16];
        total += float(sum) * s[i * row_blocks + blk];
      }
      out[b * kTile + i] = total;
    }
}

// out[b * kTile + i]: weight rows [0, nr) of the tile (w, s at its first row) against nb input rows.
void dot_q4(const uint8_t* w, const float* s, int64_t n, const int16_t* x, int nr, int nb, float* out) {
#if defined(__AVX512BW__) || defined(TAILOR_AVX2)
  if (nr == kTile) return dot_q4_vec(w, s, n, x, nb, out);
#endif
  dot_q4_loops(w, s, n, x, nr, nb, out);
}
