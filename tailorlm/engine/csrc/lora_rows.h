// LoRA deltas for the decode step's rows; included by decode_step.cpp after its 8-lane helpers (load8), so this is
// not a standalone header.
//
// The adapters on one linear layer come concatenated along the rank: A [in, R], B [R, out], adapter id i owning
// columns [lo, hi) of A and rows [lo, hi) of B (spans[i]; the adapter's scale folded into B). Row b with adapter i
// adds (x_b A[:, lo:hi]) B[lo:hi] to its output.
//
// Why this layout and order: at 16 rows a rank-16 adapter on the 7 layers of every block is ~5 M weights per
// adapter, 20 MB in float32, read once per row that uses it: for 16 rows of 8 adapters that is more bytes than the
// int8 base step itself reads. So (1) the rows of one adapter are taken together, up to kLoraTaskRows per task, and
// each adapter's weights are read from memory once per task, not once per row; (2) each adapter's A columns are stored contiguously
// ([in, r] at offset lo * in) so a task streams them instead of striding over every adapter's columns; (3) over a
// base already rounded (int8, q4, bf16 weights) the adapters are held in bf16 (half the bytes, widened by a shift,
// float32 arithmetic), while a float32 base keeps float32 adapters and its exact results.
#pragma once

constexpr int kLoraRows = 4;       // rows the kernels take at once: the shrink keeps kLoraRows x r sums in registers
constexpr int kLoraTaskRows = 16;  // rows of one adapter per task (a prompt's rows share its adapter), in passes of
                                   // kLoraRows over the same weights, by then in cache

struct Lora {
  torch::Tensor spans;  // int64 [ids, 2], -1 where absent
  int64_t rank = 0;     // R (0: no adapter on this layer)
  int64_t in = 0, out = 0;
  bool bf16 = false;
  std::vector<float> af, bf;      // float32 storage: A per span [in, r] at lo * in, B [R, out]
  std::vector<uint16_t> ah, bh;   // bf16 storage, the same layout
};

// A [in, R] and B [R, out] (float32, contiguous) in `l`'s layout and precision.
inline void store_lora(Lora& l, const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& spans, bool bf16) {
  l.spans = spans;
  l.rank = a.size(1);
  l.in = a.size(0);
  l.out = b.size(1);
  l.bf16 = bf16;
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  std::vector<float> blocked(l.in * l.rank);
  const int64_t* sp = spans.data_ptr<int64_t>();
  for (int64_t i = 0; i < spans.size(0); ++i) {
    const int64_t lo = sp[2 * i], r = sp[2 * i + 1] - lo;
    if (lo < 0 || r <= 0) continue;
    for (int64_t k = 0; k < l.in; ++k)
      for (int64_t j = 0; j < r; ++j) blocked[lo * l.in + k * r + j] = pa[k * l.rank + lo + j];
  }
  if (bf16) {
    l.ah.resize(blocked.size());
    l.bh.resize(l.rank * l.out);
    for (size_t k = 0; k < blocked.size(); ++k) l.ah[k] = f32_to_bf16(blocked[k]);
    for (int64_t k = 0; k < l.rank * l.out; ++k) l.bh[k] = f32_to_bf16(pb[k]);
  } else {
    l.af = std::move(blocked);
    l.bf.assign(pb, pb + l.rank * l.out);
  }
}

// h[row * r + j] = x_row . a[:, j] for `rows` rows (x[row]: in floats); a: [in, r] contiguous.
template <typename T>
void lora_shrink(const T* a, int64_t in, int64_t r, const float* const* x, int rows, float* h) {
#if defined(__AVX2__) && defined(__FMA__)
  if (r == 8 || r == 16) {  // the common ranks: every sum in a register
    const int C = int(r / 8);
    __m256 acc[kLoraRows * 2];
    for (int j = 0; j < kLoraRows * 2; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < in; ++k) {
      const __m256 a0 = load8(a + k * r), a1 = C == 2 ? load8(a + k * r + 8) : a0;
      for (int row = 0; row < rows; ++row) {
        const __m256 xv = _mm256_set1_ps(x[row][k]);
        acc[row * 2] = _mm256_fmadd_ps(xv, a0, acc[row * 2]);
        if (C == 2) acc[row * 2 + 1] = _mm256_fmadd_ps(xv, a1, acc[row * 2 + 1]);
      }
    }
    for (int row = 0; row < rows; ++row)
      for (int c = 0; c < C; ++c) _mm256_storeu_ps(h + row * r + c * 8, acc[row * 2 + c]);
    return;
  }
#endif
  for (int row = 0; row < rows; ++row)
    for (int64_t j = 0; j < r; ++j) h[row * r + j] = 0.f;
  for (int64_t k = 0; k < in; ++k)
    for (int row = 0; row < rows; ++row) {
      const float xk = x[row][k];
      float* hr = h + row * r;
      for (int64_t j = 0; j < r; ++j) hr[j] += xk * widen(a[k * r + j]);
    }
}

// y[row][o] += sum_j h[row * r + j] * b[j, o] for `rows` rows; b: [r, out] contiguous.
template <typename T>
void lora_expand(const T* b, int64_t r, int64_t out, const float* h, float* const* y, int rows) {
  int64_t o = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; o + 16 <= out; o += 16) {  // 16 outputs x up to 4 rows of sums in registers, each b vector widened once
    __m256 acc[2 * kLoraRows];
    for (int row = 0; row < rows; ++row) {
      acc[2 * row] = _mm256_loadu_ps(y[row] + o);
      acc[2 * row + 1] = _mm256_loadu_ps(y[row] + o + 8);
    }
    for (int64_t j = 0; j < r; ++j) {
      const __m256 b0 = load8(b + j * out + o), b1 = load8(b + j * out + o + 8);
      for (int row = 0; row < rows; ++row) {
        const __m256 hv = _mm256_set1_ps(h[row * r + j]);
        acc[2 * row] = _mm256_fmadd_ps(hv, b0, acc[2 * row]);
        acc[2 * row + 1] = _mm256_fmadd_ps(hv, b1, acc[2 * row + 1]);
      }
    }
    for (int row = 0; row < rows; ++row) {
      _mm256_storeu_ps(y[row] + o, acc[2 * row]);
      _mm256_storeu_ps(y[row] + o + 8, acc[2 * row + 1]);
    }
  }
  for (; o + 8 <= out; o += 8) {
    __m256 acc[kLoraRows];
    for (int row = 0; row < rows; ++row) acc[row] = _mm256_loadu_ps(y[row] + o);
    for (int64_t j = 0; j < r; ++j) {
      const __m256 bv = load8(b + j * out + o);
      for (int row = 0; row < rows; ++row) acc[row] = _mm256_fmadd_ps(_mm256_set1_ps(h[row * r + j]), bv, acc[row]);
    }
    for (int row = 0; row < rows; ++row) _mm256_storeu_ps(y[row] + o, acc[row]);
  }
#endif
  for (; o < out; ++o)
    for (int row = 0; row < rows; ++row) {
      float sum = y[row][o];
      for (int64_t j = 0; j < r; ++j) sum += h[row * r + j] * widen(b[j * out + o]);
      y[row][o] = sum;
    }
}

// The rows of one adapter in one task: its id and up to kLoraTaskRows row indices.
struct LoraChunk {
  int64_t id = -1;
  int rows = 0;
  int64_t row[kLoraTaskRows];
};

// The step's rows grouped by adapter id (rows without one left out), kLoraTaskRows at most per chunk.
inline std::vector<LoraChunk> lora_chunks(const int64_t* ids, int64_t B) {
  std::vector<LoraChunk> chunks;
  std::vector<bool> taken(B, false);
  for (int64_t b = 0; b < B; ++b) {
    if (taken[b] || ids[b] < 0) continue;
    LoraChunk c;
    c.id = ids[b];
    for (int64_t e = b; e < B; ++e) {
      if (taken[e] || ids[e] != c.id) continue;
      if (c.rows == kLoraTaskRows) {
        chunks.push_back(c);
        c.rows = 0;
      }
      c.row[c.rows++] = e;
      taken[e] = true;
    }
    chunks.push_back(c);
  }
  return chunks;
}

// One chunk's delta on one layer: x rows of n = l.in floats, y rows of l.out floats; h: kLoraRows * rank scratch.
inline void lora_apply(const Lora& l, const LoraChunk& c, const float* x, float* y, float* h) {
  if (l.rank == 0 || c.id >= l.spans.size(0)) return;
  const int64_t* span = l.spans.data_ptr<int64_t>() + 2 * c.id;
  const int64_t lo = span[0], r = span[1] - span[0];
  if (lo < 0 || r <= 0) return;
  for (int first = 0; first < c.rows; first += kLoraRows) {
    const int rows = std::min(kLoraRows, c.rows - first);
    const float* xs[kLoraRows];
    float* ys[kLoraRows];
    for (int i = 0; i < rows; ++i) {
      xs[i] = x + c.row[first + i] * l.in;
      ys[i] = y + c.row[first + i] * l.out;
    }
    if (l.bf16) {
      lora_shrink(l.ah.data() + lo * l.in, l.in, r, xs, rows, h);
      lora_expand(l.bh.data() + lo * l.out, r, l.out, h, ys, rows);
    } else {
      lora_shrink(l.af.data() + lo * l.in, l.in, r, xs, rows, h);
      lora_expand(l.bf.data() + lo * l.out, r, l.out, h, ys, rows);
    }
  }
}
