// The elementwise steps of the engine's CPU forward (fast.py, int8.py), in C++: quantize activations
// per row (token) for int8 products, bring the products back to floats, and the fused passes
// between products (residual add + LayerNorm, + quantize; bias + GELU + quantize), each one pass
// over a row where torch took several. Built once per host by native.py and called through ctypes
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
#ifdef __AVX512F__
#include <immintrin.h>
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
// The same GELU on 16 floats, written out because the compiler's version divides (a 16-wide divide
// is slow: GELU ran at half torch's speed) where this takes a reciprocal estimate and one Newton
// step (about 23 bits).
inline __m512 exp_nonpositive16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

inline __m512 gelu16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
  const __m512 a = _mm512_abs_ps(z);
  const __m512 d = _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), one);
  __m512 t = _mm512_rcp14_ps(d);
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
  __m512 poly = _mm512_fmadd_ps(_mm512_set1_ps(1.061405429f), t, _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  poly = _mm512_mul_ps(poly, t);
  const __m512 e = _mm512_fnmadd_ps(poly, exp_nonpositive16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a)), one);
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32(int32_t(0x80000000u)));
  const __m512 erf = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(e), sign));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, erf));
}
#endif

// GELU of n floats in place.
void gelu_row(float* __restrict__ x, int64_t n) {
  int64_t c = 0;
#ifdef __AVX512F__
  for (; c + 16 <= n; c += 16) _mm512_storeu_ps(x + c, gelu16(_mm512_loadu_ps(x + c)));
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
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) {
    y[c] += residual[c];
    sum += y[c];
  }
  const float mean = sum / float(n);
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t c = 0; c < n; ++c) {
    const float d = y[c] - mean;
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



}  // extern "C"
