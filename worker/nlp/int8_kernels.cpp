// The elementwise steps around torch._int_mm for int8.py: quantize activations per row (token),
// dequantize the int32 products. Built once per host by int8_build.py and loaded as torch ops
// (torch.ops.reviews_int8.*), so that a worker's start does not pay torch.compile for them.
//
// Written as plain loops over contiguous rows for the compiler to vectorize (-O3 -march=native).
// Float max/min reductions only vectorize under -ffast-math, which would also change the rounding,
// so they run on the floats' bit patterns as integers: for |x| the bits order like the values, and
// for signed values `ordered` maps them to integers that do. Rounding is nearbyint's (round half to
// even, the default mode), the same as torch.round.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

using at::Tensor;

inline float to_float(float x) { return x; }
// bfloat16 travels as its raw bits: GCC does not vectorize loads of c10::BFloat16 (a struct).
using bf16_bits = uint16_t;

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
constexpr int64_t kRowsPerTask = 16;

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
  for (int64_t i = 0; i < k; ++i) q[i] = int8_t(int32_t(std::nearbyint(to_float(x[i]) / s)));
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
  for (int64_t i = 0; i < k; ++i) q[i] = int8_t(int32_t(std::nearbyint((to_float(x[i]) - m) / s)));
  *mid = m;
  return s;
}

template <typename In>
void quantize_rows(const In* x, int64_t rows, int64_t k, int8_t* q, float* scale, float* mid) {
  at::parallel_for(0, rows, kRowsPerTask, [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scale[r] = mid == nullptr ? quantize_row(x + r * k, k, q + r * k)
                                : quantize_row_centered(x + r * k, k, q + r * k, mid + r);
    }
  });
}

// out = acc * row_scale * col_scale (+ mid * weight_sum) + bias, in the output's dtype.
template <typename Out>
void dequantize_rows(const int32_t* __restrict__ acc, int64_t rows, int64_t n, const float* __restrict__ row_scale,
                     const float* __restrict__ col_scale, const float* __restrict__ bias, const float* __restrict__ mid,
                     const float* __restrict__ weight_sum, Out* __restrict__ out) {
  at::parallel_for(0, rows, kRowsPerTask, [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int32_t* __restrict__ ar = acc + r * n;
      Out* __restrict__ outr = out + r * n;
      const float rs = row_scale[r];
      if (mid == nullptr) {
        for (int64_t c = 0; c < n; ++c) store(outr + c, float(ar[c]) * rs * col_scale[c] + bias[c]);
      } else {
        const float m = mid[r];
        for (int64_t c = 0; c < n; ++c) store(outr + c, float(ar[c]) * rs * col_scale[c] + m * weight_sum[c] + bias[c]);
      }
    }
  });
}

void check_rows(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), name, ": a contiguous 2-d CPU tensor");
}

std::tuple<Tensor, Tensor> quantize(const Tensor& x) {
  check_rows(x, "quantize");
  auto q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  auto scale = at::empty({x.size(0), 1}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kBFloat16) {
    quantize_rows(reinterpret_cast<const bf16_bits*>(x.const_data_ptr<c10::BFloat16>()), x.size(0), x.size(1),
                  q.mutable_data_ptr<int8_t>(), scale.mutable_data_ptr<float>(), nullptr);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "quantize: float32 or bfloat16 input");
    quantize_rows(x.const_data_ptr<float>(), x.size(0), x.size(1), q.mutable_data_ptr<int8_t>(),
                  scale.mutable_data_ptr<float>(), nullptr);
  }
  return {q, scale};
}

std::tuple<Tensor, Tensor, Tensor> quantize_centered(const Tensor& x) {
  check_rows(x, "quantize_centered");
  auto q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  auto scale = at::empty({x.size(0), 1}, x.options().dtype(at::kFloat));
  auto mid = at::empty({x.size(0), 1}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kBFloat16) {
    quantize_rows(reinterpret_cast<const bf16_bits*>(x.const_data_ptr<c10::BFloat16>()), x.size(0), x.size(1), q.mutable_data_ptr<int8_t>(),
                           scale.mutable_data_ptr<float>(), mid.mutable_data_ptr<float>());
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "quantize_centered: float32 or bfloat16 input");
    quantize_rows(x.const_data_ptr<float>(), x.size(0), x.size(1), q.mutable_data_ptr<int8_t>(),
                           scale.mutable_data_ptr<float>(), mid.mutable_data_ptr<float>());
  }
  return {q, scale, mid};
}

Tensor dequantize_any(const Tensor& acc, const Tensor& row_scale, const Tensor& col_scale, const Tensor& bias,
                      const float* mid, const float* weight_sum, at::ScalarType dtype) {
  check_rows(acc, "dequantize");
  const int64_t rows = acc.size(0), n = acc.size(1);
  TORCH_CHECK(acc.scalar_type() == at::kInt, "dequantize: int32 products");
  for (const Tensor* t : {&row_scale, &col_scale, &bias}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "dequantize: contiguous float32 scales and bias");
  }
  TORCH_CHECK(row_scale.numel() == rows && col_scale.numel() == n && bias.numel() == n, "dequantize: shapes differ");
  auto out = at::empty({rows, n}, acc.options().dtype(dtype));
  const float *rs = row_scale.const_data_ptr<float>(), *cs = col_scale.const_data_ptr<float>(),
              *b = bias.const_data_ptr<float>();
  if (dtype == at::kBFloat16) {
    dequantize_rows(acc.const_data_ptr<int32_t>(), rows, n, rs, cs, b, mid, weight_sum,
                    reinterpret_cast<bf16_bits*>(out.mutable_data_ptr<c10::BFloat16>()));
  } else {
    TORCH_CHECK(dtype == at::kFloat, "dequantize: float32 or bfloat16 output");
    dequantize_rows(acc.const_data_ptr<int32_t>(), rows, n, rs, cs, b, mid, weight_sum, out.mutable_data_ptr<float>());
  }
  return out;
}

Tensor dequantize(const Tensor& acc, const Tensor& row_scale, const Tensor& col_scale, const Tensor& bias,
                  at::ScalarType dtype) {
  return dequantize_any(acc, row_scale, col_scale, bias, nullptr, nullptr, dtype);
}

Tensor dequantize_centered(const Tensor& acc, const Tensor& row_scale, const Tensor& col_scale, const Tensor& bias,
                           const Tensor& mid, const Tensor& weight_sum, at::ScalarType dtype) {
  TORCH_CHECK(mid.scalar_type() == at::kFloat && mid.is_contiguous() && mid.numel() == acc.size(0),
              "dequantize_centered: one float32 midpoint per row");
  TORCH_CHECK(weight_sum.scalar_type() == at::kFloat && weight_sum.is_contiguous() && weight_sum.numel() == acc.size(1),
              "dequantize_centered: one float32 weight sum per column");
  return dequantize_any(acc, row_scale, col_scale, bias, mid.const_data_ptr<float>(),
                        weight_sum.const_data_ptr<float>(), dtype);
}

}  // namespace

TORCH_LIBRARY(reviews_int8, m) {
  m.def("quantize(Tensor x) -> (Tensor, Tensor)", &quantize);
  m.def("quantize_centered(Tensor x) -> (Tensor, Tensor, Tensor)", &quantize_centered);
  m.def("dequantize(Tensor acc, Tensor row_scale, Tensor col_scale, Tensor bias, ScalarType dtype) -> Tensor",
        &dequantize);
  m.def("dequantize_centered(Tensor acc, Tensor row_scale, Tensor col_scale, Tensor bias, Tensor mid, "
        "Tensor weight_sum, ScalarType dtype) -> Tensor",
        &dequantize_centered);
}
