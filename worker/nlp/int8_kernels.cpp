// The elementwise steps around torch._int_mm for int8.py: quantize activations per row (token),
// dequantize the int32 products. Built once per host by native.py and called through ctypes on
// tensors' memory: plain C entry points, no torch headers, so that the build takes about a second.
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

namespace {

using bf16_bits = uint16_t;  // bfloat16 travels as its raw bits

inline float to_float(float x) { return x; }
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

}  // extern "C"
