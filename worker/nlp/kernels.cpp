// The steps of the engine's CPU forward (fast.py, int8.py) besides its Linear products, in C++:
// quantize activations per row (token) for int8 products, bring the products back to floats, the
// fused passes between products (residual add + LayerNorm, + quantize; bias + GELU + quantize),
// each one pass over a row where torch took several, and attention (AVX-512 BF16). Built once per host by native.py and called through ctypes
// on tensors' memory: plain C entry points, no torch headers, so that the build takes about a second.
//
// Written as plain loops over contiguous rows for the compiler to vectorize (-O3 -march=native).
// Float max/min reductions only vectorize under -ffast-math, which would also change the rounding,
// so they run on the floats' bit patterns as integers: for |x| the bits order like the values, and
// for signed values `ordered` maps them to integers that do. Rounding is nearbyint's (round half to
// even, the default mode), the same as torch.round. Rows are shared among `threads` OpenMP threads
// (the runtime torch itself uses: one libgomp per process).

#include <cmath>
#include <cstdint>
#include <cstring>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include "amx.h"
#endif
#ifdef __AVX512F__
#include "vec512.h"
#endif

namespace {

using bf16_bits = uint16_t;  // bfloat16 travels as its raw bits

inline float to_float(float x) { return x; }
inline float to_float(int32_t x) { return float(x); }
inline float to_float(bf16_bits x) {
  uint32_t bits = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline void store(float* out, float v) { *out = v; }
inline void store(bf16_bits* out, float v) {  // round to nearest even, as torch's .to(bfloat16)
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  *out = uint16_t(v != v ? 0x7fc0u : rounded);
}

inline uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
inline float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
// A float's bits as an int32 that orders like the float (negative floats: magnitude bits flipped).
inline int32_t ordered(float x) {
  int32_t b = int32_t(bits_of(x));
  return b ^ ((b >> 31) & 0x7fffffff);
}
inline float unordered(int32_t o) { return float_of(uint32_t(o ^ ((o >> 31) & 0x7fffffff))); }

constexpr float kMinScale = 1e-8f;

// One row each. Plain functions, so that k and the pointers are locals: int8 stores may alias
// anything (char types), and through a lambda's captures the compiler reloaded k on every element
// and did not vectorize.
template <typename In>
float quantize_row(const In* __restrict__ x, int64_t k, int8_t* __restrict__ q) {
  uint32_t top = 0;
  for (int64_t i = 0; i < k; ++i) {
    uint32_t m = bits_of(to_float(x[i])) & 0x7fffffffu;
    top = m > top ? m : top;
  }
  const float s = std::fmax(float_of(top), kMinScale) / 127.0f;
  const float inv = 1.0f / s;
  for (int64_t i = 0; i < k; ++i) q[i] = int8_t(int32_t(std::nearbyint(to_float(x[i]) * inv)));
  return s;
}

template <typename In>
float quantize_row_centered(const In* __restrict__ x, int64_t k, int8_t* __restrict__ q, float* mid) {
  int32_t hi = INT32_MIN, lo = INT32_MAX;
  for (int64_t i = 0; i < k; ++i) {
    int32_t o = ordered(to_float(x[i]));
    hi = o > hi ? o : hi;
    lo = o < lo ? o : lo;
  }
  const float h = unordered(hi), l = unordered(lo);
  const float m = (h + l) / 2.0f;
  const float s = std::fmax((h - l) / 2.0f, kMinScale) / 127.0f;
  const float inv = 1.0f / s;
  for (int64_t i = 0; i < k; ++i) q[i] = int8_t(int32_t(std::nearbyint((to_float(x[i]) - m) * inv)));
  *mid = m;
  return s;
}

template <typename In>
void quantize_rows(const In* x, int64_t rows, int64_t k, int8_t* q, float* scale, float* mid, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    scale[r] = mid == nullptr ? quantize_row(x + r * k, k, q + r * k)
                              : quantize_row_centered(x + r * k, k, q + r * k, mid + r);
  }
}

// out = acc * row_scale * col_scale (+ mid * weight_sum) + bias, in the output's dtype.
template <typename Out>
void dequantize_row(const int32_t* __restrict__ acc, int64_t n, float rs, const float* __restrict__ col_scale,
                    const float* __restrict__ bias, const float* mid, const float* __restrict__ weight_sum,
                    Out* __restrict__ out) {
  if (mid == nullptr) {
    for (int64_t c = 0; c < n; ++c) store(out + c, float(acc[c]) * rs * col_scale[c] + bias[c]);
  } else {
    const float m = *mid;
    for (int64_t c = 0; c < n; ++c) store(out + c, float(acc[c]) * rs * col_scale[c] + m * weight_sum[c] + bias[c]);
  }
}

template <typename Out>
void dequantize_rows(const int32_t* acc, int64_t rows, int64_t n, const float* row_scale, const float* col_scale,
                     const float* bias, const float* mid, const float* weight_sum, Out* out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(acc + r * n, n, row_scale[r], col_scale, bias, mid == nullptr ? nullptr : mid + r, weight_sum,
                   out + r * n);
  }
}

// y = y * row_scale (+ mid * weight_sum) + bias, in place: for products that arrive as floats with
// the column scales applied (oneDNN's int8 product, int8.py), in the activations' dtype. In place,
// so that no second buffer of the layer's output is allocated and written.
template <typename T>
void rescale_row(T* __restrict__ y, int64_t n, float rs, const float* __restrict__ bias, const float* mid,
                 const float* __restrict__ weight_sum) {
  if (mid == nullptr) {
    for (int64_t c = 0; c < n; ++c) store(y + c, to_float(y[c]) * rs + bias[c]);
  } else {
    const float m = *mid;
    for (int64_t c = 0; c < n; ++c) store(y + c, to_float(y[c]) * rs + m * weight_sum[c] + bias[c]);
  }
}

template <typename T>
void rescale_rows(T* y, int64_t rows, int64_t n, const float* row_scale, const float* bias, const float* mid,
                  const float* weight_sum, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    rescale_row(y + r * n, n, row_scale[r], bias, mid == nullptr ? nullptr : mid + r, weight_sum);
  }
}

// -- fused passes ----------------------------------------------------------------------------

// exp(x) for x <= 0 (GELU's exp(-x*x)), in plain arithmetic the compiler vectorizes: Cody-Waite
// reduction to r in [-ln2/2, ln2/2], Cephes' polynomial for e^r, then the exponent by bits. Under
// 2 ulp; below -87 it returns exp(-87) (about 1.6e-38), which erf's use multiplies by under 1.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * float_of(uint32_t(int32_t(n) + 127) << 23);
}

// GELU, erf form (DistilBERT's "gelu"), with erf by Abramowitz and Stegun 7.1.26 (absolute error
// under 1.5e-7): the approximation torch's own vectorized CPU GELU uses.
inline float gelu(float x) {
  const float z = x * 0.70710678118654752f;
  const float a = z < 0.0f ? -z : z;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  const float e = 1.0f - poly * exp_nonpositive(-a * a);  // erf(|z|)
  return 0.5f * x * (1.0f + (z < 0.0f ? -e : e));
}

#ifdef __AVX512F__
// exp2_nonpositive16 and gelu16: vec512.h (gemm.cpp's int8 product applies GELU too)
#elif defined(__AVX2__)
// The same on 8 floats for CPUs without AVX-512, where the compiler left GELU scalar: the int8
// engine's step after lin1 took 6x torch's GELU on an AVX2-only EPYC. rcp_ps has 12 bits, so the
// Newton step leaves about 23, as above.
inline __m256 exp_nonpositive8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 gelu8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 a = _mm256_andnot_ps(sign_bit, z);
  const __m256 d = _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), one);
  __m256 t = _mm256_rcp_ps(d);
  t = _mm256_mul_ps(t, _mm256_fnmadd_ps(d, t, _mm256_set1_ps(2.0f)));
  __m256 poly = _mm256_fmadd_ps(_mm256_set1_ps(1.061405429f), t, _mm256_set1_ps(-1.453152027f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
  poly = _mm256_mul_ps(poly, t);
  const __m256 e = _mm256_fnmadd_ps(poly, exp_nonpositive8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), a), a)), one);
  const __m256 erf = _mm256_xor_ps(e, _mm256_and_ps(z, sign_bit));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(one, erf));
}
#endif

// GELU of n floats in place.
void gelu_row(float* __restrict__ x, int64_t n) {
  int64_t c = 0;
#ifdef __AVX512F__
  for (; c + 16 <= n; c += 16) _mm512_storeu_ps(x + c, gelu16(_mm512_loadu_ps(x + c)));
#elif defined(__AVX2__)
  for (; c + 8 <= n; c += 8) _mm256_storeu_ps(x + c, gelu8(_mm256_loadu_ps(x + c)));
#endif
  for (; c < n; ++c) x[c] = gelu(x[c]);
}

// One row of a product as floats: int32 sums scaled per column (torch._int_mm: col_scale given),
// or floats with the column scales applied (oneDNN's int8 Linear: col_scale null; bf16 or f32).
// Then the row scale, the centering term and the bias: the layer's output before what follows it.
template <typename P>
void product_row(const P* __restrict__ prod, int64_t n, float rs, const float* __restrict__ col_scale,
                 const float* __restrict__ bias, const float* mid, const float* __restrict__ weight_sum,
                 float* __restrict__ out) {
  if (col_scale != nullptr) {
    for (int64_t c = 0; c < n; ++c) out[c] = to_float(prod[c]) * rs * col_scale[c] + bias[c];
  } else {
    for (int64_t c = 0; c < n; ++c) out[c] = to_float(prod[c]) * rs + bias[c];
  }
  if (mid != nullptr) {
    const float m = *mid;
    for (int64_t c = 0; c < n; ++c) out[c] += m * weight_sum[c];
  }
}

// h = LayerNorm(residual + y) in place of y (float32), two passes for the moments (mean, then the
// mean of squared deviations: no cancellation). The sums are OpenMP SIMD reductions: in vector
// lanes, summed at the end, which plain loops may not do (it reorders float additions).
void add_norm_row(const float* __restrict__ residual, float* __restrict__ y, int64_t n,
                  const float* __restrict__ gamma, const float* __restrict__ beta, float eps) {
  float sum = 0.0f, sq = 0.0f, mean;
  int64_t c = 0;
#ifdef __AVX512F__
  // Four vector sums each: one sum's chain of dependent adds bound both loops (perf: the add +
  // LayerNorm + quantize step after out_lin and lin2, a Xeon with AMX).
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (; c + 64 <= n; c += 64) {
    __m512 v[4];
    for (int u = 0; u < 4; ++u) {
      v[u] = _mm512_add_ps(_mm512_loadu_ps(y + c + 16 * u), _mm512_loadu_ps(residual + c + 16 * u));
      _mm512_storeu_ps(y + c + 16 * u, v[u]);
    }
    s0 = _mm512_add_ps(s0, v[0]), s1 = _mm512_add_ps(s1, v[1]), s2 = _mm512_add_ps(s2, v[2]), s3 = _mm512_add_ps(s3, v[3]);
  }
  sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#endif
  for (int64_t t = c; t < n; ++t) {
    y[t] += residual[t];
    sum += y[t];
  }
  mean = sum / float(n);
  c = 0;
#ifdef __AVX512F__
  const __m512 m = _mm512_set1_ps(mean);
  s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (; c + 64 <= n; c += 64) {
    const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(y + c), m), d1 = _mm512_sub_ps(_mm512_loadu_ps(y + c + 16), m);
    const __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(y + c + 32), m), d3 = _mm512_sub_ps(_mm512_loadu_ps(y + c + 48), m);
    s0 = _mm512_fmadd_ps(d0, d0, s0), s1 = _mm512_fmadd_ps(d1, d1, s1);
    s2 = _mm512_fmadd_ps(d2, d2, s2), s3 = _mm512_fmadd_ps(d3, d3, s3);
  }
  sq = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#endif
  for (int64_t t = c; t < n; ++t) {
    const float d = y[t] - mean;
    sq += d * d;
  }
  const float rstd = 1.0f / std::sqrt(sq / float(n) + eps);
  for (int64_t c = 0; c < n; ++c) y[c] = (y[c] - mean) * rstd * gamma[c] + beta[c];
}

// The float engine: h = LayerNorm(residual + y), written as float32 (the residual stream) and in
// the products' dtype (the next product's input), one pass where torch took an add, a LayerNorm
// and a cast.
template <typename T>
void add_norm_rows(const float* residual, const T* y, int64_t rows, int64_t n, const float* gamma, const float* beta,
                   float eps, float* h, T* x, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * n;
    float* hr = h + r * n;
    for (int64_t c = 0; c < n; ++c) hr[c] = to_float(yr[c]);
    add_norm_row(residual + r * n, hr, n, gamma, beta, eps);
    T* xr = x + r * n;
    for (int64_t c = 0; c < n; ++c) store(xr + c, hr[c]);
  }
}

// The int8 engine after out_lin and lin2: the product back to floats, + residual, LayerNorm into h
// (float32), then h quantized per row for the next products (q null: the last layer, no next).
template <typename P>
void product_add_norm_quantize_rows(const P* prod, int64_t rows, int64_t n, const float* row_scale,
                                    const float* col_scale, const float* bias, const float* mid,
                                    const float* weight_sum, const float* residual, const float* gamma,
                                    const float* beta, float eps, float* h, int8_t* q, float* scale, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    float* hr = h + r * n;
    product_row(prod + r * n, n, row_scale[r], col_scale, bias, mid == nullptr ? nullptr : mid + r, weight_sum, hr);
    add_norm_row(residual + r * n, hr, n, gamma, beta, eps);
    if (q != nullptr) scale[r] = quantize_row(static_cast<const float*>(hr), n, q + r * n);
  }
}

// The int8 engine after lin1: the product back to floats, GELU, and quantized around its midrange
// for lin2 (its input is one-sided), without writing the activations anywhere: one row at a time
// in a buffer of each thread's own.
template <typename P>
void product_gelu_quantize_rows(const P* prod, int64_t rows, int64_t n, const float* row_scale, const float* col_scale,
                                const float* bias, int8_t* q, float* scale, float* mid, int threads) {
#pragma omp parallel num_threads(threads) if (rows > 1)
  {
    float* buf = new float[n];
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      product_row(prod + r * n, n, row_scale[r], col_scale, bias, nullptr, nullptr, buf);
      gelu_row(buf, n);
      scale[r] = quantize_row_centered(static_cast<const float*>(buf), n, q + r * n, mid + r);
    }
    delete[] buf;
  }
}


// -- attention ------------------------------------------------------------------------------------

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// Attention for bf16 q, k, v in the products' own layout (rows of heads * head_dim: no transposes),
// on AVX-512 BF16's pair dot products, for batches padded on the right: keys past a row's length
// are not read, and neither are queries (their outputs are zeros: nothing downstream reads them).
// Per (row, head): k and v repacked into pairs along the dot products' axis, then blocks of
// kQueries queries: scores in fp32, softmax in fp32 with exp2_nonpositive16, the unnormalized
// probabilities rounded to bf16 for the product with v (as torch's flash attention does), the
// output divided by the sum at the end.
constexpr int kQueries = 4;

inline uint32_t pair_at(const bf16_bits* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline __mmask16 live_keys(int64_t j, int64_t keys) {  // which of the 16 keys from j exist
  return j + 16 <= keys ? __mmask16(0xffff) : __mmask16((1u << (keys > j ? keys - j : 0)) - 1u);
}

inline __m512 dot_pairs(__m512 acc, uint32_t a_pair, const uint32_t* b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(int32_t(a_pair)), (__m512bh)_mm512_loadu_si512(b));
}

struct AttentionBuffers {
  uint32_t* kp;  // [head_dim / 2][keys rounded up to 64]: k's pairs, key-major within a pair index
  uint32_t* vp;  // [keys rounded up to 2, / 2][head_dim]: v's pairs along keys
  float* scores;  // [kQueries][keys rounded up to 64]
  uint32_t* pp;  // [kQueries][keys rounded up to 2, / 2]: probabilities as bf16 pairs
};

// Scores of kQueries queries against 64 keys (four 16-key vectors) from kr: a register block whose
// bounds the compiler knows, so the 16 sums stay in registers. Queries past the last are copies
// of it (qi), their scores never read.
inline void score_block(const bf16_bits* const* qi, const uint32_t* kr, int64_t half, int64_t kstride, float* out,
                        int64_t ostride) {
  __m512 acc[kQueries][4];
  for (int i = 0; i < kQueries; ++i)
    for (int t = 0; t < 4; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int64_t p = 0; p < half; ++p, kr += kstride) {
    for (int i = 0; i < kQueries; ++i) {
      const uint32_t qp = pair_at(qi[i] + 2 * p);
      for (int t = 0; t < 4; ++t) acc[i][t] = dot_pairs(acc[i][t], qp, kr + 16 * t);
    }
  }
  for (int i = 0; i < kQueries; ++i)
    for (int t = 0; t < 4; ++t) _mm512_storeu_ps(out + i * ostride + 16 * t, acc[i][t]);
}

// out rows = (p v) / sum for kQueries queries and a head of DV 16-float vectors.
template <int DV>
void value_block(const uint32_t* pp, int64_t pstride, const uint32_t* vp, int64_t vpairs, const float* sums, int nb,
                 bf16_bits* out, int64_t dim) {
  __m512 acc[kQueries][DV];
  for (int i = 0; i < kQueries; ++i)
    for (int t = 0; t < DV; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int64_t m = 0; m < vpairs; ++m, vp += 16 * DV) {
    for (int i = 0; i < kQueries; ++i) {
      const uint32_t pair = pp[i * pstride + m];
      for (int t = 0; t < DV; ++t) acc[i][t] = dot_pairs(acc[i][t], pair, vp + 16 * t);
    }
  }
  for (int i = 0; i < nb; ++i) {
    const __m512 inv = _mm512_set1_ps(1.0f / sums[i]);
    for (int t = 0; t < DV; ++t) {
      const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[i][t], inv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * dim + 16 * t), rounded);
    }
  }
}

// A 16 x 16 block of 32-bit values transposed in registers (r[i] row i in, column i out): unpacks
// within 128-bit lanes, then lane shuffles.
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// k's pairs, key-major within a pair index: kp[p * kpad + j] = (k[j][2p], k[j][2p + 1]), zeros for
// the keys from `keys` to kpad (a multiple of 16). k's rows lie `dim` apart (all heads side by
// side): blocks of 16 keys x 16 pairs are read row by row and transposed in registers (one pair
// at a time, as first written, took an eighth of the tile attention's time). `tiled` (half a
// multiple of 16): each block stored whole, 1 KiB in a row, as the AMX kernel's b tiles read it:
// block (j / 16, p / 16) at ((j / 16) * (half / 16) + p / 16) * 256 (a strided tile load of the flat
// layout stalled on every row).
inline void repack_keys(const bf16_bits* k, int64_t keys, int64_t dim, int64_t half, int64_t kpad, uint32_t* kp,
                        bool tiled = false) {
  for (int64_t j0 = 0; j0 < kpad; j0 += 16)
    for (int64_t p0 = 0; p0 < half; p0 += 16) {
      const int cols = int(half - p0 < 16 ? half - p0 : 16);
      const __mmask16 m = __mmask16((1u << cols) - 1u);
      __m512i r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = j0 + i < keys ? _mm512_maskz_loadu_epi32(m, k + (j0 + i) * dim + 2 * p0) : _mm512_setzero_si512();
      transpose16(r);
      uint32_t* block = tiled ? kp + ((j0 / 16) * (half / 16) + p0 / 16) * 256 : kp + p0 * kpad + j0;
      const int64_t step = tiled ? 16 : kpad;
      for (int c = 0; c < cols; ++c) _mm512_storeu_si512(block + c * step, r[c]);
    }
}

// v's pairs along keys: vp[m * hd + d] = (v[2m][d], v[2m + 1][d]) for the first `pairs` pairs, zeros
// for keys from `keys` on (pairs may run past them: the tiles read whole blocks of 16 pairs).
inline void repack_values(const bf16_bits* v, int64_t keys, int64_t dim, int64_t hd, int64_t pairs, uint32_t* vp) {
  for (int64_t m = 0; m < pairs; ++m) {
    uint32_t* row = vp + m * hd;
    const bf16_bits* v0 = 2 * m < keys ? v + 2 * m * dim : nullptr;
    const bf16_bits* v1 = 2 * m + 1 < keys ? v + (2 * m + 1) * dim : nullptr;
    for (int64_t d = 0; d < hd; ++d)
      row[d] = (v0 != nullptr ? uint32_t(v0[d]) : 0u) | (v1 != nullptr ? uint32_t(v1[d]) << 16 : 0u);
  }
}

// softmax numerators of one row of scores (keys of them live), rounded to bf16 into pr[0, plen),
// zeros past the keys (plen >= keys); returns the sum of the rounded values (summed as bf16 pair dot
// products with ones), which the output is divided by at the end. 32 keys a step: two exp2s, one
// conversion of both to bf16, one store.
inline float softmax_row(const float* sr, int64_t keys, int64_t plen, float scale, bf16_bits* pr) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < keys; j += 16) top = _mm512_mask_max_ps(top, live_keys(j, keys), top, _mm512_loadu_ps(sr + j));
  constexpr float kLog2e = 1.44269504088896341f;
  const __m512 sc = _mm512_set1_ps(scale * kLog2e), shift = _mm512_set1_ps(_mm512_reduce_max_ps(top) * scale * kLog2e);
  const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3f80);  // bf16 1.0
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < plen; j += 32) {
    const __mmask16 lo = live_keys(j, keys), hi = live_keys(j + 16, keys);
    const __m512 e0 = _mm512_maskz_mov_ps(lo, exp2_nonpositive16<true>(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(lo, sr + j), sc, shift)));
    const __m512 e1 = _mm512_maskz_mov_ps(hi, exp2_nonpositive16<true>(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(hi, sr + j + 16), sc, shift)));
    const __m512bh rounded = _mm512_cvtne2ps_pbh(e1, e0);
    total = _mm512_dpbf16_ps(total, rounded, ones);
    const __mmask32 room = j + 32 <= plen ? ~__mmask32(0) : __mmask32((1u << (plen - j)) - 1u);
    _mm512_mask_storeu_epi16(pr + j, room, (__m512i)rounded);
  }
  return _mm512_reduce_add_ps(total);
}

void attention_head(const bf16_bits* q, int64_t nq, const bf16_bits* k, const bf16_bits* v, int64_t dim,
                    int64_t keys, int64_t hd, float scale, bf16_bits* out, const AttentionBuffers& b) {
  // Keys rounded up to 64 for the score blocks (the extra ones zeros), to 2 for the value pairs.
  const int64_t kpad = (keys + 63) / 64 * 64, half = hd / 2, vpairs = (keys + 1) / 2;
  repack_keys(k, keys, dim, half, kpad, b.kp);
  repack_values(v, keys, dim, hd, vpairs, b.vp);
  for (int64_t i0 = 0; i0 < nq; i0 += kQueries) {
    const int nb = int(nq - i0 < kQueries ? nq - i0 : kQueries);
    const bf16_bits* qi[kQueries];
    for (int i = 0; i < kQueries; ++i) qi[i] = q + (i0 + (i < nb ? i : nb - 1)) * dim;
    for (int64_t c = 0; c < kpad; c += 64) score_block(qi, b.kp + c, half, kpad, b.scores + c, kpad);
    // softmax numerators, rounded to bf16 (its pairs are what the product with v reads); the sums
    // of the rounded values kept for the end. Rows past nb: zeros, so their products are finite.
    float sums[kQueries];
    for (int i = 0; i < kQueries; ++i) {
      bf16_bits* pr = reinterpret_cast<bf16_bits*>(b.pp + i * vpairs);
      if (i >= nb) {
        std::memset(pr, 0, vpairs * 4);
        continue;
      }
      sums[i] = softmax_row(b.scores + i * kpad, keys, 2 * vpairs, scale, pr);
    }
    bf16_bits* o = out + i0 * dim;
    switch (hd / 16) {
      case 1: value_block<1>(b.pp, vpairs, b.vp, vpairs, sums, nb, o, dim); break;
      case 2: value_block<2>(b.pp, vpairs, b.vp, vpairs, sums, nb, o, dim); break;
      case 3: value_block<3>(b.pp, vpairs, b.vp, vpairs, sums, nb, o, dim); break;
      case 4: value_block<4>(b.pp, vpairs, b.vp, vpairs, sums, nb, o, dim); break;
      case 5: value_block<5>(b.pp, vpairs, b.vp, vpairs, sums, nb, o, dim); break;
      case 6: value_block<6>(b.pp, vpairs, b.vp, vpairs, sums, nb, o, dim); break;
      case 7: value_block<7>(b.pp, vpairs, b.vp, vpairs, sums, nb, o, dim); break;
      default: value_block<8>(b.pp, vpairs, b.vp, vpairs, sums, nb, o, dim); break;
    }
  }
}

// q: (rows * nq, dim), k and v: (rows * width, dim), out: (rows * nq, dim), all bf16, heads side by
// side in each row. nq is width (every position) or 1 (the [CLS] query alone).
void attention_rows(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, const int64_t* lengths, int64_t rows,
                    int64_t nq, int64_t width, int64_t heads, int64_t hd, float scale, bf16_bits* out, int threads) {
  const int64_t dim = heads * hd, kpad = (width + 63) / 64 * 64, vpairs = (width + 1) / 2;
#pragma omp parallel num_threads(threads) if (rows * heads > 1)
  {
    AttentionBuffers b{new uint32_t[(hd / 2) * kpad], new uint32_t[vpairs * hd], new float[kQueries * kpad],
                       new uint32_t[kQueries * vpairs]};
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < rows * heads; ++task) {
      const int64_t r = task / heads, h = task % heads, keys = lengths[r];
      const int64_t live = nq == 1 ? 1 : keys;  // queries past the length: zeros
      bf16_bits* o = out + r * nq * dim + h * hd;
      attention_head(q + r * nq * dim + h * hd, live, k + r * width * dim + h * hd, v + r * width * dim + h * hd,
                     dim, keys, hd, scale, o, b);
      for (int64_t i = live; i < nq; ++i) std::memset(o + i * dim, 0, hd * sizeof(bf16_bits));
    }
    delete[] b.kp;
    delete[] b.vp;
    delete[] b.scores;
    delete[] b.pp;
  }
}
#endif  // AVX-512 BF16

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
// The same attention on AMX's tiles, for heads of 32 to 128 in steps of 32: on a Xeon with AMX,
// torch's flash attention (whose products run on the tiles) was 2x the AVX-512 kernel above. Every
// tile is 16 rows of 64 bytes: 16 queries x 32 bf16 of q (a), 16 pairs x 16 keys or dims (b: the
// pair layout the kernel above repacks k and v into), 16 x 16 fp32 (c). Per (row, head), blocks of
// 32 queries: their scores, the same softmax, then (p v); partial blocks go through a zeroed copy.
struct TileBuffers {
  uint32_t* kp;  // k's pairs in 16 x 16 blocks (repack_keys, tiled), zeros past the keys
  uint32_t* vp;  // [keys rounded up to 32, / 2][head_dim]: v's pairs along keys (zeros past them)
  float* scores;  // [32][keys rounded up to 32]
  bf16_bits* pp;  // [32][keys rounded up to 32]: probabilities, zeros past the keys
  float* acc;  // [32][head_dim]
  bf16_bits* qb;  // [32][head_dim]: a partial block of queries, zero-filled
};

// Blocks of 32 queries (two a tiles) against 32 keys or dims (two b tiles) into four c tiles: each
// b tile loaded serves both halves of the queries, as each a tile serves both b tiles. A block of
// 16 queries or fewer (the [CLS] query alone) skips the second half.
void attention_head_tiles(const bf16_bits* q, int64_t nq, const bf16_bits* k, const bf16_bits* v, int64_t dim,
                          int64_t keys, int64_t hd, float scale, bf16_bits* out, const TileBuffers& b) {
  const int64_t pad = (keys + 31) / 32 * 32, half = hd / 2;
  repack_keys(k, keys, dim, half, pad, b.kp, true);
  repack_values(v, keys, dim, hd, pad / 2, b.vp);
  for (int64_t i0 = 0; i0 < nq; i0 += 32) {
    const int nb = int(nq - i0 < 32 ? nq - i0 : 32);
    const bool two = nb > 16;
    const bf16_bits* qa = q + i0 * dim;
    int64_t qrow = dim;  // elements between queries
    if (nb < 32) {
      std::memset(b.qb, 0, 32 * hd * sizeof(bf16_bits));
      for (int i = 0; i < nb; ++i) std::memcpy(b.qb + i * hd, qa + i * dim, hd * sizeof(bf16_bits));
      qa = b.qb;
      qrow = hd;
    }
    for (int64_t c = 0; c < pad; c += 32) {
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      for (int64_t p0 = 0; p0 < half; p0 += 16) {
        _tile_loadd(4, qa + 2 * p0, qrow * 2);
        _tile_loadd(6, b.kp + ((c / 16) * (half / 16) + p0 / 16) * 256, 64);
        _tile_loadd(7, b.kp + ((c / 16 + 1) * (half / 16) + p0 / 16) * 256, 64);
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, qa + 16 * qrow + 2 * p0, qrow * 2);
          _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, b.scores + c, pad * 4); _tile_stored(1, b.scores + c + 16, pad * 4);
      if (two) { _tile_stored(2, b.scores + 16 * pad + c, pad * 4); _tile_stored(3, b.scores + 16 * pad + c + 16, pad * 4); }
    }
    float sums[32];
    for (int i = 0; i < (two ? 32 : 16); ++i) {
      bf16_bits* pr = b.pp + i * pad;
      if (i >= nb) {
        std::memset(pr, 0, pad * sizeof(bf16_bits));
        continue;
      }
      sums[i] = softmax_row(b.scores + i * pad, keys, pad, scale, pr);
    }
    for (int64_t g = 0; g < hd; g += 32) {
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      for (int64_t m0 = 0; m0 < pad / 2; m0 += 16) {
        _tile_loadd(4, b.pp + 2 * m0, pad * 2);
        _tile_loadd(6, b.vp + m0 * hd + g, hd * 4);
        _tile_loadd(7, b.vp + m0 * hd + g + 16, hd * 4);
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, b.pp + 16 * pad + 2 * m0, pad * 2);
          _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, b.acc + g, hd * 4); _tile_stored(1, b.acc + g + 16, hd * 4);
      if (two) { _tile_stored(2, b.acc + 16 * hd + g, hd * 4); _tile_stored(3, b.acc + 16 * hd + g + 16, hd * 4); }
    }
    for (int i = 0; i < nb; ++i) {
      const __m512 inv = _mm512_set1_ps(1.0f / sums[i]);
      for (int64_t d = 0; d < hd; d += 16) {
        const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(b.acc + i * hd + d), inv));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (i0 + i) * dim + d), rounded);
      }
    }
  }
}

void attention_rows_tiles(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, const int64_t* lengths,
                          int64_t rows, int64_t nq, int64_t width, int64_t heads, int64_t hd, float scale,
                          bf16_bits* out, int threads) {
  const int64_t dim = heads * hd, pad = (width + 31) / 32 * 32;
#pragma omp parallel num_threads(threads) if (rows * heads > 1)
  {
    amx::configure_tiles();  // per thread: the tile configuration is thread state
    TileBuffers b{new uint32_t[(hd / 2) * pad], new uint32_t[(pad / 2) * hd], new float[32 * pad],
                  new bf16_bits[32 * pad], new float[32 * hd], new bf16_bits[32 * hd]};
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < rows * heads; ++task) {
      const int64_t r = task / heads, h = task % heads, keys = lengths[r];
      const int64_t live = nq == 1 ? 1 : keys;  // queries past the length: zeros
      bf16_bits* o = out + r * nq * dim + h * hd;
      attention_head_tiles(q + r * nq * dim + h * hd, live, k + r * width * dim + h * hd,
                           v + r * width * dim + h * hd, dim, keys, hd, scale, o, b);
      for (int64_t i = live; i < nq; ++i) std::memset(o + i * dim, 0, hd * sizeof(bf16_bits));
    }
    delete[] b.kp;
    delete[] b.vp;
    delete[] b.scores;
    delete[] b.pp;
    delete[] b.acc;
    delete[] b.qb;
    _tile_release();
  }
}
#endif  // AMX


}  // namespace

// The entry points (native.py checks shapes and dtypes before calling). mid: nullptr for the
// symmetric kind, else one float per row (written by quantize, read by dequantize).
extern "C" {

void reviews_quantize_f32(const float* x, int64_t rows, int64_t k, int8_t* q, float* scale, float* mid, int threads) {
  quantize_rows(x, rows, k, q, scale, mid, threads);
}

void reviews_quantize_bf16(const bf16_bits* x, int64_t rows, int64_t k, int8_t* q, float* scale, float* mid,
                           int threads) {
  quantize_rows(x, rows, k, q, scale, mid, threads);
}

void reviews_dequantize_f32(const int32_t* acc, int64_t rows, int64_t n, const float* row_scale,
                            const float* col_scale, const float* bias, const float* mid, const float* weight_sum,
                            float* out, int threads) {
  dequantize_rows(acc, rows, n, row_scale, col_scale, bias, mid, weight_sum, out, threads);
}

void reviews_dequantize_bf16(const int32_t* acc, int64_t rows, int64_t n, const float* row_scale,
                             const float* col_scale, const float* bias, const float* mid, const float* weight_sum,
                             bf16_bits* out, int threads) {
  dequantize_rows(acc, rows, n, row_scale, col_scale, bias, mid, weight_sum, out, threads);
}

void reviews_rescale_f32(float* y, int64_t rows, int64_t n, const float* row_scale, const float* bias,
                         const float* mid, const float* weight_sum, int threads) {
  rescale_rows(y, rows, n, row_scale, bias, mid, weight_sum, threads);
}

void reviews_rescale_bf16(bf16_bits* y, int64_t rows, int64_t n, const float* row_scale, const float* bias,
                          const float* mid, const float* weight_sum, int threads) {
  rescale_rows(y, rows, n, row_scale, bias, mid, weight_sum, threads);
}

// prod_kind: 0 int32 sums (col_scale given), 1 float32, 2 bfloat16 (both with the column scales applied).
void reviews_add_norm_f32(const float* residual, const float* y, int64_t rows, int64_t n, const float* gamma,
                          const float* beta, float eps, float* h, float* x, int threads) {
  add_norm_rows(residual, y, rows, n, gamma, beta, eps, h, x, threads);
}

void reviews_add_norm_bf16(const float* residual, const bf16_bits* y, int64_t rows, int64_t n, const float* gamma,
                           const float* beta, float eps, float* h, bf16_bits* x, int threads) {
  add_norm_rows(residual, y, rows, n, gamma, beta, eps, h, x, threads);
}

void reviews_product_add_norm_quantize(int prod_kind, const void* prod, int64_t rows, int64_t n,
                                       const float* row_scale, const float* col_scale, const float* bias,
                                       const float* mid, const float* weight_sum, const float* residual,
                                       const float* gamma, const float* beta, float eps, float* h, int8_t* q,
                                       float* scale, int threads) {
  if (prod_kind == 0) {
    product_add_norm_quantize_rows(static_cast<const int32_t*>(prod), rows, n, row_scale, col_scale, bias, mid,
                                   weight_sum, residual, gamma, beta, eps, h, q, scale, threads);
  } else if (prod_kind == 1) {
    product_add_norm_quantize_rows(static_cast<const float*>(prod), rows, n, row_scale, col_scale, bias, mid,
                                   weight_sum, residual, gamma, beta, eps, h, q, scale, threads);
  } else {
    product_add_norm_quantize_rows(static_cast<const bf16_bits*>(prod), rows, n, row_scale, col_scale, bias, mid,
                                   weight_sum, residual, gamma, beta, eps, h, q, scale, threads);
  }
}

void reviews_product_gelu_quantize(int prod_kind, const void* prod, int64_t rows, int64_t n, const float* row_scale,
                                   const float* col_scale, const float* bias, int8_t* q, float* scale, float* mid,
                                   int threads) {
  if (prod_kind == 0) {
    product_gelu_quantize_rows(static_cast<const int32_t*>(prod), rows, n, row_scale, col_scale, bias, q, scale, mid,
                               threads);
  } else if (prod_kind == 1) {
    product_gelu_quantize_rows(static_cast<const float*>(prod), rows, n, row_scale, col_scale, bias, q, scale, mid,
                               threads);
  } else {
    product_gelu_quantize_rows(static_cast<const bf16_bits*>(prod), rows, n, row_scale, col_scale, bias, q, scale,
                               mid, threads);
  }
}

// 1 where attention_bf16 has a kernel here (AVX-512 BF16), else 0 (it must not be called).
int reviews_attention_supported() {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  return 1;
#else
  return 0;
#endif
}

// 1 where attention_tiles_bf16 has a kernel here (AMX, and Linux lets this process use the tiles).
int reviews_attention_tiles_supported() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
  return amx::permitted() ? 1 : 0;
#else
  return 0;
#endif
}

// attention_bf16 on AMX's tiles; head_dim 32, 64, 96 or 128.
void reviews_attention_tiles_bf16(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, const int64_t* lengths,
                                  int64_t rows, int64_t nq, int64_t width, int64_t heads, int64_t head_dim,
                                  float scale, bf16_bits* out, int threads) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
  if (amx::permitted())  // without the permission a tile instruction is an illegal instruction
    attention_rows_tiles(q, k, v, lengths, rows, nq, width, heads, head_dim, scale, out, threads);
#endif
}

void reviews_attention_bf16(const bf16_bits* q, const bf16_bits* k, const bf16_bits* v, const int64_t* lengths,
                            int64_t rows, int64_t nq, int64_t width, int64_t heads, int64_t head_dim, float scale,
                            bf16_bits* out, int threads) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  attention_rows(q, k, v, lengths, rows, nq, width, heads, head_dim, scale, out, threads);
#endif
}

}  // extern "C"
