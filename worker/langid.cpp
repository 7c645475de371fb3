// py3langid's scoring, in C++: language.py calls it on a batch of texts.
//
// py3langid walks each text's bytes through its automaton in a Python loop, counts the features the
// walk emits, and sums log1p(count) times each feature's row of per-language weights (float16). On
// IMDb reviews that cost about 300 us a review, most of a GPU worker's CPU besides the models. This
// file does the walk and the sum; language.py normalizes the scores exactly as py3langid does.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__F16C__)
#include <immintrin.h>
#endif

// acc[c] += w * row[c]. GCC does not vectorize _Float16 loads (GCC 12: "no vectype"), and converted one
// at a time the rows cost more than py3langid's whole loop; F16C converts eight at once.
static inline void add_row(float* acc, const _Float16* row, float w, int64_t classes) {
    int64_t c = 0;
#if defined(__F16C__)
    const __m256 vw = _mm256_set1_ps(w);
    for (; c + 8 <= classes; c += 8) {
        const __m256 r = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
        _mm256_storeu_ps(acc + c, _mm256_add_ps(_mm256_loadu_ps(acc + c), _mm256_mul_ps(vw, r)));
    }
#endif
    for (; c < classes; ++c) acc[c] += w * static_cast<float>(row[c]);
}

extern "C" {

// For text i, the bytes data[offsets[i] .. offsets[i + 1]): scores[i * classes + c] is the sum over
// its features f, in the order the walk first meets them, of log1p(count of f) * ptc[f][c], plus
// pc[c]; a text that emits no feature gets zeros and features[i] = 0 (py3langid's "no features").
void reviews_langid_scores(const uint8_t* data, const int64_t* offsets, int64_t n, const uint32_t* nextmove,
                           const int64_t* rowbase, const int32_t* output, int64_t n_features,
                           const _Float16* ptc, const float* pc, int64_t classes, float* scores,
                           int64_t* features) {
    std::vector<int32_t> counts(n_features, 0);
    std::vector<int32_t> order;
    for (int64_t i = 0; i < n; ++i) {
        order.clear();
        uint32_t state = 0;
        for (int64_t p = offsets[i]; p < offsets[i + 1]; ++p) {
            state = nextmove[rowbase[state] + data[p]];
            const int32_t f = output[state];
            if (f >= 0 && counts[f]++ == 0) order.push_back(f);
        }
        float* acc = scores + i * classes;
        std::memset(acc, 0, sizeof(float) * classes);
        for (const int32_t f : order) {
            const float w = std::log1p(static_cast<float>(counts[f]));
            counts[f] = 0;
            add_row(acc, ptc + static_cast<int64_t>(f) * classes, w, classes);
        }
        if (!order.empty())
            for (int64_t c = 0; c < classes; ++c) acc[c] += pc[c];
        features[i] = static_cast<int64_t>(order.size());
    }
}

}  // extern "C"
