// The int8 matrix product for CPUs whose torch has no fast one, and on AMX's tiles: C (int32) = A
// (int8, rows x k) times W^T, W (int8, n x k) the weight of a Linear, packed once at load time; on
// AMX also C scaled into the layer's float output as each block is done, or (the feed-forward's
// first product) GELU'd and quantized for the second. Built by gemm.py.
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

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#if defined(__AMX_INT8__) && defined(__AVX512BF16__)
#define REVIEWS_AMX 1
#include "amx.h"
#include "vec512.h"
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


#ifdef REVIEWS_AMX
// AMX's int8 tiles (Xeons since Sapphire Rapids), where oneDNN's product ran at 2.9 TFLOP/s inside
// the forward against 4.5-5 alone (bench/RESULTS.md). One tile dot product (tdpbssd) adds 16 rows x
// 64 k of A times 64 k x 16 columns of B into 16 x 16 int32 sums: exact, as vpmaddwd's. B's tile
// is k in groups of four per column ("VNNI" layout), so W is packed once into 1 KiB tiles: panel
// of 16 columns j, group of 64 k g at (j * groups + g) * 1024 bytes, byte [r][4c + e] =
// W[16j + c][64g + 4r + e]. Blocks of 32 rows x 32 columns in four c tiles; each thread takes a
// contiguous share of the rows (those the step before wrote), column blocks of TN outside, so a
// block of W stays in L2 while the thread's rows pass under it.
constexpr int64_t TK = 64, TN = 256;

// Which of the 16 columns in each half of a 32-column block are real, for `cols` of them (1..32).
inline std::array<__mmask16, 2> column_masks(int cols) {
  return {cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1u),
          cols >= 32 ? __mmask16(0xffff) : __mmask16(cols > 16 ? (1u << (cols - 16)) - 1u : 0u)};
}

// What the sums become as each block is done, while it is in L1: int32 as they are (`out` int32),
// or acc * row_scale * col_scale (+ mid * weight_sum) + bias in float32 or bf16 (row_scale, bias and
// mid optional): the layer's output, or oneDNN's convention (column scales only), with no pass
// over the product after it (a separate one took 4-6% of an int8 forward).
struct Scaling {
  void* out;
  int kind = 0;  // 0 int32, 1 float32, 2 bf16
  const float *row_scale = nullptr, *col_scale = nullptr, *bias = nullptr, *mid = nullptr, *weight_sum = nullptr;
};

// acc: a block of 32 x 32 sums (32 apart), `live` rows from m0 and `cols` columns from col. The
// columns' factors are loaded once per block, not per row.
void scale_block(const int32_t* acc, int live, int64_t m0, int64_t col, int cols, int64_t n, const Scaling& s) {
  const std::array<__mmask16, 2> keep = column_masks(cols);
  __m512 cs[2], bias[2], ws[2];
  for (int h = 0; h < 2; ++h) {
    cs[h] = _mm512_maskz_loadu_ps(keep[h], s.col_scale + col + 16 * h);
    bias[h] = s.bias != nullptr ? _mm512_maskz_loadu_ps(keep[h], s.bias + col + 16 * h) : _mm512_setzero_ps();
    ws[h] = s.mid != nullptr ? _mm512_maskz_loadu_ps(keep[h], s.weight_sum + col + 16 * h) : _mm512_setzero_ps();
  }
  const int halves = cols > 16 ? 2 : 1;
  for (int r = 0; r < live; ++r) {
    const int64_t row = m0 + r;
    const __m512 rs = _mm512_set1_ps(s.row_scale != nullptr ? s.row_scale[row] : 1.0f);
    const __m512 md = _mm512_set1_ps(s.mid != nullptr ? s.mid[row] : 0.0f);
    for (int h = 0; h < halves; ++h) {
      __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(acc + r * 32 + 16 * h)), rs), cs[h]);
      v = _mm512_add_ps(_mm512_fmadd_ps(md, ws[h], v), bias[h]);
      const int64_t at = row * n + col + 16 * h;
      if (s.kind == 1)
        _mm512_mask_storeu_ps(static_cast<float*>(s.out) + at, keep[h], v);
      else
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(s.out) + at, keep[h], (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

int64_t amx_packed_size(int64_t n, int64_t k) { return (n + 15) / 16 * ((k + TK - 1) / TK) * 1024; }

void amx_pack(const int8_t* w, int64_t n, int64_t k, int8_t* out) {
  const int64_t groups = (k + TK - 1) / TK, panels = (n + 15) / 16;
  for (int64_t j = 0; j < panels; ++j)
    for (int64_t g = 0; g < groups; ++g) {
      int8_t* tile = out + (j * groups + g) * 1024;
      for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
          for (int e = 0; e < 4; ++e) {
            const int64_t col = 16 * j + c, kk = TK * g + 4 * r + e;
            tile[r * 64 + 4 * c + e] = (col < n && kk < k) ? w[col * k + kk] : 0;
          }
    }
}

// Tiles 0-3 = the sums of 32 rows from m0 of a (`live` real, the rest zeros) times panel j (0, 2)
// and j + 1 (1, 3; when `two`), b0 the packed panel j. between(g) runs after group g's tile
// instructions are issued: vector work there overlaps the tile unit's.
struct Nothing {
  void operator()(int64_t) const {}
};

template <typename Between = Nothing>
inline void block_sums(const int8_t* a, int64_t lda, int64_t m0, int live, const int8_t* b0, int64_t groups, bool two,
                       int8_t* rows_buf, Between between = {}) {
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* ablock = a + m0 * lda + g * TK;
    int64_t stride = lda;
    if (live < 32) {  // the last rows: a zeroed copy of 32
      std::memset(rows_buf, 0, 32 * 64);
      for (int r = 0; r < live; ++r) std::memcpy(rows_buf + r * 64, ablock + r * lda, 64);
      ablock = rows_buf;
      stride = 64;
    }
    _tile_loadd(4, ablock, stride);
    _tile_loadd(5, ablock + 16 * stride, stride);
    _tile_loadd(6, b0 + g * 1024, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(2, 5, 6);
    if (two) {
      _tile_loadd(7, b0 + (groups + g) * 1024, 64);
      _tile_dpbssd(1, 4, 7);
      _tile_dpbssd(3, 5, 7);
    }
    between(g);
  }
}

inline void store_sums(int32_t* out_buf) {  // tiles 0-3 as 32 x 32 int32, rows 32 apart
  _tile_stored(0, out_buf, 128);
  _tile_stored(1, out_buf + 16, 128);
  _tile_stored(2, out_buf + 16 * 32, 128);
  _tile_stored(3, out_buf + 16 * 32 + 16, 128);
}

// Calls block(m0, live, j, two, col, cols) for each block of 32 rows of [r0, r1) (`live` of them
// real) and each pair of panels j, j + 1 (`two`: the second exists) of n columns, `cols` of them
// real from col: column blocks of TN outside, rows inside, so a block of W stays in L2 while the
// rows pass under it.
template <typename Block>
inline void for_each_block(int64_t r0, int64_t r1, int64_t n, Block block) {
  const int64_t panels = (n + 15) / 16;
  for (int64_t n0 = 0; n0 < panels; n0 += TN / 16) {
    const int64_t n1 = std::min(panels, n0 + TN / 16);
    for (int64_t m0 = r0; m0 < r1; m0 += 32) {
      const int live = int(std::min<int64_t>(32, r1 - m0));
      for (int64_t j = n0; j < n1; j += 2) {
        const bool two = j + 1 < n1;
        const int64_t col = 16 * j;
        block(m0, live, j, two, col, int(std::min<int64_t>(two ? 32 : 16, n - col)));
      }
    }
  }
}

// Rows [r0, r1) of c = a times the packed W's transpose. a's rows are lda bytes apart and readable
// to a multiple of 64 (the caller copies them where k is not); a block of fewer than 32 rows, or
// columns past n, goes through zeroed copies.
void amx_rows(const int8_t* a, int64_t lda, int64_t r0, int64_t r1, int64_t groups, const int8_t* packed, int64_t n,
              const Scaling& s) {
  int32_t* c = static_cast<int32_t*>(s.out);
  alignas(64) int8_t rows_buf[32 * 64];
  alignas(64) int32_t out_buf[32 * 32];
  for_each_block(r0, r1, n, [&](int64_t m0, int live, int64_t j, bool two, int64_t col, int cols) {
    block_sums(a, lda, m0, live, packed + j * groups * 1024, groups, two, rows_buf);
    if (s.kind == 0 && live == 32 && cols == 32) {
      _tile_stored(0, c + m0 * n + col, n * 4);
      _tile_stored(1, c + m0 * n + col + 16, n * 4);
      _tile_stored(2, c + (m0 + 16) * n + col, n * 4);
      _tile_stored(3, c + (m0 + 16) * n + col + 16, n * 4);
      return;
    }
    store_sums(out_buf);
    if (s.kind == 0) {
      for (int r = 0; r < live; ++r) std::memcpy(c + (m0 + r) * n + col, out_buf + r * 32, cols * 4);
    } else {
      scale_block(out_buf, live, m0, col, cols, n, s);
    }
  });
}

// Runs rows(a, lda, r0, r1, groups) on each thread's share of the blocks of 32 rows, with the
// tiles configured; a's rows copied with zeros after where k is not a multiple of 64.
template <typename Rows>
void amx_threads(const int8_t* a, int64_t m, int64_t k, int threads, Rows rows) {
  const int64_t groups = (k + TK - 1) / TK, kpad = groups * TK;
  int8_t* padded = nullptr;
  if (kpad != k) {
    padded = new int8_t[m * kpad]();
    for (int64_t r = 0; r < m; ++r) std::memcpy(padded + r * kpad, a + r * k, k);
  }
  const int8_t* in = padded != nullptr ? padded : a;
  const int64_t blocks = (m + 31) / 32;
#pragma omp parallel num_threads(threads)
  {
    amx::configure_tiles();
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    if (b0 < b1) rows(in, kpad, 32 * b0, std::min(m, 32 * b1), groups);
    _tile_release();
  }
  delete[] padded;
}

void amx_product(const int8_t* a, int64_t m, int64_t k, const int8_t* packed, int64_t n, const Scaling& s,
                 int threads) {
  amx_threads(a, m, k, threads, [&](const int8_t* in, int64_t lda, int64_t r0, int64_t r1, int64_t groups) {
    amx_rows(in, lda, r0, r1, groups, packed, n, s);
  });
}

// The feed-forward's first product whole: x = GELU(acc * row_scale * col_scale + bias), each row
// then quantized around its midrange for the second, as kernels.cpp's quantize_row_centered does.
// x stays in a thread's buffer of a few hundred rows (bf16, in L2) with each row's running max and
// min, where a separate pass read the whole product back from L3 after it had been written out;
// and each block's GELU runs between the tile instructions of the next block's product. 1.11-1.18x
// the product then kernels.cpp's pass at 1,792 x 768 -> 3,072 (bench/RESULTS.md).
struct GeluQuantize {
  const float *row_scale, *col_scale, *bias;
  int8_t* q;
  float *scale, *mid;
};
constexpr int64_t kBufferBytes = 1536 * 1024, kMaxChunk = 256;  // rows: 256 of 3,072 values

// Rows [ra, rb) of a 32 x 32 block of sums (32 apart) from row row0, `cols` columns from col:
// scaled, GELU'd, stored in buf as bf16 (rows n apart), and folded into the rows' running max and
// min (of the bf16 values: a row of equal values quantizes to zeros, as kernels.cpp's would).
void gelu_block(const int32_t* acc, int ra, int rb, int64_t row0, int64_t col, int cols, int64_t n,
                const GeluQuantize& g, uint16_t* buf, __m512* hi, __m512* lo) {
  const std::array<__mmask16, 2> keep = column_masks(cols);
  const int halves = cols > 16 ? 2 : 1;
  for (int h = 0; h < halves; ++h) {
    const __m512 cs = _mm512_maskz_loadu_ps(keep[h], g.col_scale + col + 16 * h);
    const __m512 bias = _mm512_maskz_loadu_ps(keep[h], g.bias + col + 16 * h);
    for (int r = ra; r < rb; ++r) {
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(acc + r * 32 + 16 * h)),
                               _mm512_set1_ps(g.row_scale[row0 + r]));
      const __m256i x = (__m256i)_mm512_cvtneps_pbh(gelu16(_mm512_fmadd_ps(v, cs, bias)));
      _mm256_mask_storeu_epi16(buf + r * n + col + 16 * h, keep[h], x);
      v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
      hi[r] = _mm512_mask_max_ps(hi[r], keep[h], hi[r], v);
      lo[r] = _mm512_mask_min_ps(lo[r], keep[h], lo[r], v);
    }
  }
}

// One row of n bf16 values quantized around the midrange of [l, h] (kMinScale as kernels.cpp's).
void quantize_centered(const uint16_t* x, int64_t n, float h, float l, int8_t* q, float* scale, float* mid) {
  const float m = (h + l) / 2.0f;
  const float s = std::max((h - l) / 2.0f, 1e-8f) / 127.0f;
  const float inv = 1.0f / s;
  const __m512 mv = _mm512_set1_ps(m), iv = _mm512_set1_ps(inv);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 keep = n - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1u);
    const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(keep, x + c)), 16));
    // cvtps rounds half to even, as nearbyint
    _mm_mask_storeu_epi8(q + c, keep, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(v, mv), iv))));
  }
  *scale = s;
  *mid = m;
}

void amx_rows_gelu(const int8_t* a, int64_t lda, int64_t r0, int64_t r1, int64_t groups, const int8_t* packed,
                   int64_t n, const GeluQuantize& g) {
  alignas(64) int8_t rows_buf[32 * 64];
  alignas(64) int32_t out_buf[2][32 * 32];
  __m512 hi[kMaxChunk], lo[kMaxChunk];
  const int64_t chunk = std::clamp<int64_t>(kBufferBytes / (2 * n) / 32 * 32, 32, kMaxChunk);
  uint16_t* buf = new uint16_t[chunk * n];
  // The block before, whose sums wait in out_buf[1 - cur]: its rows are done a few at a time
  // between the tile instructions of the next block's product.
  struct Pending {
    int live = 0;
    int64_t m0 = 0, col = 0;
    int cols = 0;
  } pending;
  int cur = 0;
  const int per_group = int((32 + groups - 1) / groups);
  for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
    const int64_t c1 = std::min(r1, c0 + chunk);
    for (int64_t r = 0; r < c1 - c0; ++r) {
      hi[r] = _mm512_set1_ps(-INFINITY);
      lo[r] = _mm512_set1_ps(INFINITY);
    }
    auto finish = [&](int ra, int rb) {
      const int64_t at = pending.m0 - c0;
      gelu_block(out_buf[1 - cur], ra, std::min(rb, pending.live), pending.m0, pending.col, pending.cols, n, g,
                 buf + at * n, hi + at, lo + at);
    };
    for_each_block(c0, c1, n, [&](int64_t m0, int live, int64_t j, bool two, int64_t col, int cols) {
      block_sums(a, lda, m0, live, packed + j * groups * 1024, groups, two, rows_buf,
                 [&](int64_t grp) { finish(int(grp) * per_group, int(grp + 1) * per_group); });
      store_sums(out_buf[cur]);
      pending = {live, m0, col, cols};
      cur = 1 - cur;
    });
    finish(0, 32);  // the chunk's last block
    pending.live = 0;
    for (int64_t r = c0; r < c1; ++r)
      quantize_centered(buf + (r - c0) * n, n, _mm512_reduce_max_ps(hi[r - c0]), _mm512_reduce_min_ps(lo[r - c0]),
                        g.q + r * n, g.scale + r, g.mid + r);
  }
  delete[] buf;
}

#endif  // AMX

bool use_amx() {
#ifdef REVIEWS_AMX
  return amx::permitted();
#else
  return false;
#endif
}

}  // namespace

extern "C" {

// Which product serves here: 2 AMX's tiles, 1 AVX2, 0 none. The packed layout follows it, so a
// process packs and multiplies with the same one.
int reviews_gemm_supported() {
  if (use_amx()) return 2;
#ifdef __AVX2__
  return 1;
#else
  return 0;
#endif
}

// Bytes of W's packed form. AVX2: int16 values, whole panels of NR columns, k rounded up to pairs.
int64_t reviews_gemm_packed_size(int64_t n, int64_t k) {
#ifdef REVIEWS_AMX
  if (use_amx()) return amx_packed_size(n, k);
#endif
  return (n + NR - 1) / NR * ((k + 1) / 2) * NR * 2 * 2;
}

// w: (n, k) int8, a Linear's weight (rows are output columns). Padding columns and k are zeros.
void reviews_gemm_pack(const int8_t* w, int64_t n, int64_t k, void* packed) {
#ifdef REVIEWS_AMX
  if (use_amx()) return amx_pack(w, n, k, static_cast<int8_t*>(packed));
#endif
  int16_t* out = static_cast<int16_t*>(packed);
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
void reviews_gemm_s8(const int8_t* a, int64_t m, int64_t k, const void* packed_w, int64_t n, int32_t* c,
                     int threads) {
#ifdef REVIEWS_AMX
  if (use_amx()) return amx_product(a, m, k, static_cast<const int8_t*>(packed_w), n, Scaling{c}, threads);
#endif
#ifdef __AVX2__
  const int16_t* packed = static_cast<const int16_t*>(packed_w);
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
  (void)a, (void)m, (void)k, (void)packed_w, (void)n, (void)c, (void)threads;
#endif
}

// out (m, n) = (a times the packed weight's transpose) scaled as Scaling says (kind 1 float32, 2
// bf16); AMX only (reviews_gemm_supported() == 2), else nothing is written and -1 returned.
int reviews_gemm_s8_scaled(const int8_t* a, int64_t m, int64_t k, const void* packed_w, int64_t n, void* out,
                           int kind, const float* row_scale, const float* col_scale, const float* bias,
                           const float* mid, const float* weight_sum, int threads) {
#ifdef REVIEWS_AMX
  if (use_amx() && (kind == 1 || kind == 2)) {
    amx_product(a, m, k, static_cast<const int8_t*>(packed_w), n,
                Scaling{out, kind, row_scale, col_scale, bias, mid, weight_sum}, threads);
    return 0;
  }
#endif
  (void)a, (void)m, (void)k, (void)packed_w, (void)n, (void)out, (void)kind, (void)row_scale, (void)col_scale;
  (void)bias, (void)mid, (void)weight_sum, (void)threads;
  return -1;
}

// q (m, n) int8, scale and mid (m) = lin1's output GELU'd and quantized around each row's midrange,
// from a's rows quantized per token (row_scale) and the packed W (col_scale, bias: n floats): the
// int8 engine's step from lin1 to lin2 in one call. AMX only, else nothing is written and -1
// returned.
int reviews_gemm_s8_gelu_quantize(const int8_t* a, int64_t m, int64_t k, const void* packed_w, int64_t n,
                                  const float* row_scale, const float* col_scale, const float* bias, int8_t* q,
                                  float* scale, float* mid, int threads) {
#ifdef REVIEWS_AMX
  if (use_amx()) {
    const GeluQuantize g{row_scale, col_scale, bias, q, scale, mid};
    const int8_t* packed = static_cast<const int8_t*>(packed_w);
    amx_threads(a, m, k, threads, [&](const int8_t* in, int64_t lda, int64_t r0, int64_t r1, int64_t groups) {
      amx_rows_gelu(in, lda, r0, r1, groups, packed, n, g);
    });
    return 0;
  }
#endif
  (void)a, (void)m, (void)k, (void)packed_w, (void)n, (void)row_scale, (void)col_scale, (void)bias, (void)q;
  (void)scale, (void)mid, (void)threads;
  return -1;
}

}  // extern "C"
