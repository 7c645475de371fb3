// Vector functions on 16 floats shared by kernels.cpp (GELU, softmax) and gemm.cpp (GELU in the
// int8 product's epilogue). Include only where __AVX512F__ is defined; cbuild hashes this file
// with the sources that include it.
#pragma once

#include <cstdint>
#include <immintrin.h>

namespace {

// 2^y for y <= 0 on 16 floats: n = floor(y), 2^(y - n) by a polynomial, scaled by 2^n in one
// instruction (vscalefps: no exponent bits to build, no overflow). Degree 5 (relative error under
// 1e-7; least-squares fits in relative terms), or 4 (under 3e-6) for values rounded to bf16 next
// (attention's probabilities: degree 5 there ran 4-9% slower). Half the instructions of the
// Cody-Waite reduction and Cephes' degree-6 polynomial that softmax (perf: most of attention's
// time) and GELU's erf used before: GELU + quantize 1.16-1.18x at 1,792 x 3,072.
template <bool ForBf16 = false>
inline __m512 exp2_nonpositive16(__m512 y) {
  y = _mm512_max_ps(y, _mm512_set1_ps(-150.0f));  // 2^-150 is 0 in float; -inf would give NaN below
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, n);
  __m512 p;
  if constexpr (ForBf16) {
    p = _mm512_fmadd_ps(_mm512_set1_ps(0.01342605f), f, _mm512_set1_ps(0.05224351f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2412797f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6930449f));
  } else {
    p = _mm512_fmadd_ps(_mm512_set1_ps(1.867072e-3f), f, _mm512_set1_ps(9.0171556e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5799823e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24016447f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931513f));
  }
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// The same GELU on 16 floats, written out because the compiler's version divides (a 16-wide divide
// is slow: GELU ran at half torch's speed) where this takes a reciprocal estimate and one Newton
// step (about 23 bits).
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
  // exp(-a^2) = 2^(-a^2 log2(e))
  const __m512 e = _mm512_fnmadd_ps(poly, exp2_nonpositive16(_mm512_mul_ps(_mm512_mul_ps(a, _mm512_set1_ps(-1.44269504088896341f)), a)), one);
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32(int32_t(0x80000000u)));
  const __m512 erf = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(e), sign));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, erf));
}

}  // namespace
