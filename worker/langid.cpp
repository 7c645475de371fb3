// py3langid's scoring, in C++: language.py calls it on a batch of texts.
//
// py3langid walks each text's bytes through its automaton in a Python loop, counts the features the
// walk emits, and sums log1p(count) times each feature's row of per-language weights (float16). On
// IMDb reviews that cost about 300 us a review, most of a GPU worker's CPU besides the models. This
// file does the walk and the sum; language.py normalizes the scores exactly as py3langid does.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

// acc[c] += w * row[c], in double: a review's scores reach a thousand in magnitude, where a float
// sum of its hundreds of rows is off by about 1e-4 of a probability (numpy's float32 sum in
// py3langid by about half that); in double the error is the final rounding's. GCC does not vectorize
// _Float16 loads (GCC 12: "no vectype"), and converted one at a time the rows cost more than
// py3langid's whole loop; F16C converts eight at once.
static inline void add_row(double* acc, const _Float16* row, double w, int64_t classes) {
    int64_t c = 0;
#if defined(__F16C__) && defined(__AVX__)
    const __m256d vw = _mm256_set1_pd(w);
    for (; c + 8 <= classes; c += 8) {
        const __m256 r = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(r)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1));
        _mm256_storeu_pd(acc + c, _mm256_add_pd(_mm256_loadu_pd(acc + c), _mm256_mul_pd(vw, lo)));
        _mm256_storeu_pd(acc + c + 4, _mm256_add_pd(_mm256_loadu_pd(acc + c + 4), _mm256_mul_pd(vw, hi)));
    }
#endif
    for (; c < classes; ++c) acc[c] += w * static_cast<double>(static_cast<float>(row[c]));
}

extern "C" {

// For text i, the bytes data[offsets[i] .. offsets[i + 1]): scores[i * classes + c] is the sum over
// its features f, in the order the walk first meets them, of log1p(count of f) * ptc[f][c], plus
// pc[c]; a text that emits no feature gets zeros (py3langid's "no features").
void reviews_langid_scores(const uint8_t* data, const int64_t* offsets, int64_t n, const uint32_t* nextmove,
                           const int64_t* rowbase, const int32_t* output, int64_t n_features,
                           const _Float16* ptc, const float* pc, int64_t classes, float* scores) {
    std::vector<int32_t> counts(n_features, 0);
    std::vector<int32_t> order;
    std::vector<double> sum(classes);
    for (int64_t i = 0; i < n; ++i) {
        order.clear();
        uint32_t state = 0;
        for (int64_t p = offsets[i]; p < offsets[i + 1]; ++p) {
            state = nextmove[rowbase[state] + data[p]];
            const int32_t f = output[state];
            if (f >= 0 && counts[f]++ == 0) order.push_back(f);
        }
        std::fill(sum.begin(), sum.end(), 0.0);
        for (const int32_t f : order) {
            const double w = std::log1p(static_cast<double>(counts[f]));
            counts[f] = 0;
            add_row(sum.data(), ptc + static_cast<int64_t>(f) * classes, w, classes);
        }
        float* out = scores + i * classes;
        for (int64_t c = 0; c < classes; ++c) out[c] = order.empty() ? 0.0f : static_cast<float>(sum[c] + pc[c]);
    }
}

}  // extern "C"
