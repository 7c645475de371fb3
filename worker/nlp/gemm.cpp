// The int8 matrix product for CPUs whose torch has no fast one: C (int32) = A (int8, rows x k) times
// W^T, W (int8, n x k) the weight of a Linear, packed once at load time. Built by gemm.py.
//
// Why: without VNNI (AVX2-only CPUs), torch._int_mm ran 30-70x slower than the float product and
// oneDNN ran its reference kernel, so int8 was out of reach there (bench/RESULTS.md). AVX2's fast
// 8-bit dot product, vpmaddubsw, saturates at int16 for full-range products; vpmaddwd on int8
// values widened to int16 does not: exact sums, 16 multiply-adds per instruction, and on a Zen 3
// core it ran 2.8x the float FMA's rate in a register-only loop. The weight is widened once when
// packed; the activations per block of rows as they are read.
//
// Layout: W packed in panels of NR output columns; within a panel, for each pair of k, the NR
// columns' two values side by side (int16), so that one vpmaddwd of a broadcast pair of A's values
// against one 32-byte load adds two k steps into 8 columns. The micro-kernel keeps MR x NR int32
// sums in 12 registers. Blocks: KC values of k (A's rows in L1, W's block of KC x NC in L2), NC
// columns, MC rows; OpenMP shares the (MC, NC) blocks among torch's threads.

#include <algorithm>
#include <cstdint>
#include <cstring>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

constexpr int NR = 16, MR = 6;
constexpr int64_t KC = 1024, NC = 128, MC = 48;

#ifdef __AVX2__
#define ROW(r)                                                     \
  if constexpr (R > r) {                                           \
    int32_t pair;                                                  \
    std::memcpy(&pair, a + r * lda + 2 * p, 4);                    \
    __m256i av = _mm256_set1_epi32(pair);                          \
    c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(av, b0)); \
    c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(av, b1)); \
  }

// R rows (1..MR) of A, widened (lda int16 apart) against one panel, `pairs` pairs of k; sums added
// to C's when `accumulate`, else stored; `cols` of the panel's NR columns are real.
// Named accumulators, not an array: GCC kept an array of 12 on the stack (1.5x slower).
template <int R>
void micro(const int16_t* a, int64_t lda, const int16_t* b, int64_t pairs, int32_t* c, int64_t ldc, bool accumulate,
           int cols) {
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
          c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t p = 0; p < pairs; ++p) {
    __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + p * 2 * NR));
    __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + p * 2 * NR + NR));
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
  }
  const __m256i sums[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < R; ++r) {
    alignas(32) int32_t tmp[NR];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), sums[r][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8), sums[r][1]);
    int32_t* row = c + r * ldc;
    for (int j = 0; j < cols; ++j) row[j] = accumulate ? row[j] + tmp[j] : tmp[j];
  }
}
#undef ROW

using Micro = void (*)(const int16_t*, int64_t, const int16_t*, int64_t, int32_t*, int64_t, bool, int);
constexpr Micro kMicro[MR + 1] = {nullptr, micro<1>, micro<2>, micro<3>, micro<4>, micro<5>, micro<6>};

void widen(const int8_t* src, int64_t n, int16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = src[i];
}
#endif  // __AVX2__

}  // namespace

extern "C" {

int reviews_gemm_supported() {
#ifdef __AVX2__
  return 1;
#else
  return 0;
#endif
}

// int16 values in W's packed form: whole panels of NR columns, k rounded up to pairs.
int64_t reviews_gemm_packed_size(int64_t n, int64_t k) { return (n + NR - 1) / NR * ((k + 1) / 2) * NR * 2; }

// w: (n, k) int8, a Linear's weight (rows are output columns). Padding columns and k are zeros.
void reviews_gemm_pack(const int8_t* w, int64_t n, int64_t k, int16_t* out) {
  int64_t pairs = (k + 1) / 2, panels = (n + NR - 1) / NR;
  for (int64_t j = 0; j < panels; ++j)
    for (int64_t p = 0; p < pairs; ++p)
      for (int c = 0; c < NR; ++c)
        for (int e = 0; e < 2; ++e) {
          int64_t col = j * NR + c, kk = 2 * p + e;
          out[((j * pairs + p) * NR + c) * 2 + e] = (col < n && kk < k) ? w[col * k + kk] : 0;
        }
}

// c (m, n) int32 = a (m, k) int8 times the packed weight's transpose.
void reviews_gemm_s8(const int8_t* a, int64_t m, int64_t k, const int16_t* packed, int64_t n, int32_t* c,
                     int threads) {
#ifdef __AVX2__
  int64_t pairs = (k + 1) / 2, kpad = 2 * pairs;
  int64_t mblocks = (m + MC - 1) / MC, nblocks = (n + NC - 1) / NC;
  if (k == 0) {
    std::fill(c, c + m * n, 0);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    alignas(64) int16_t rows_buf[MR * KC];
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t mb = 0; mb < mblocks; ++mb)
      for (int64_t nb = 0; nb < nblocks; ++nb) {
        int64_t m0 = mb * MC, m1 = std::min(m, m0 + MC), n0 = nb * NC, n1 = std::min(n, n0 + NC);
        for (int64_t k0 = 0; k0 < kpad; k0 += KC) {
          int64_t kc = std::min(KC, kpad - k0), real = std::min(kc, k - k0);
          for (int64_t r0 = m0; r0 < m1; r0 += MR) {
            int rows = int(std::min<int64_t>(MR, m1 - r0));
            for (int r = 0; r < rows; ++r) {
              widen(a + (r0 + r) * k + k0, real, rows_buf + r * KC);
              if (real < kc) rows_buf[r * KC + real] = 0;  // k odd: the last pair's second value
            }
            for (int64_t col = n0; col < n1; col += NR) {
              const int16_t* b = packed + ((col / NR) * pairs + k0 / 2) * NR * 2;
              kMicro[rows](rows_buf, KC, b, kc / 2, c + r0 * n + col, n, k0 > 0, int(std::min<int64_t>(NR, n1 - col)));
            }
          }
        }
      }
  }
#else
  (void)a, (void)m, (void)k, (void)packed, (void)n, (void)c, (void)threads;
#endif
}

}  // extern "C"
