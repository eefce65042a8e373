// Attention over an f16 KV cache in one pass per (query row, KV head): the heads that share a KV head (grouped-
// query attention) read each cached key and value once between them, the keys are converted to f32 once per tile
// of eight positions, and the softmax runs on vectors (a polynomial exp) instead of a libm call per score.
//
// Measured on the 8-layer synthetic model at a 2k-token prompt, the per-head path it replaces (a row-dot kernel,
// a scalar softmax with a double sum, an axpy per position) spent 56% of prefill in attention, a third of it in
// the softmax alone.
#include <math.h>
#include "ck_common.h"

// Positions per key tile: one accumulator each while a head's dot products run.
enum { TILE = 8 };

#if defined(__x86_64__) || defined(__i386__)
#include "ck_avx2.h"
#define INLINE __attribute__((always_inline)) inline

// e^x for x ≤ 0 (scores less their maximum): Cephes' expf reduction and polynomial, within 2 ulp of libm's.
// Below −87.3 the result is the smallest normal float (an attention weight of 1e-38 is 0 for every purpose);
// NaN stays NaN (max takes its second operand when one is NaN).
static inline AVX2 __m256 exp_nonpositive(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// The eight totals of eight vectors, in order.
static inline AVX2 __m256 sum8x8(const __m256 a[8]) {
    const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

static inline AVX2 float hmax8(__m256 x) {
    __m128 m = _mm_max_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// scores[h·n + j] = scale · q_h · k_j for every head and position; q is f32 already rounded through f16.
static INLINE AVX2 void attend_scores_d(int g, const int d, int n, const float *q, const uint16_t *k, size_t k_stride, float scale,
                               float *tile, float *scores) {
    const __m256 vscale = _mm256_set1_ps(scale);
    for (int j0 = 0; j0 < n; j0 += TILE) {
        const int m = n - j0 < TILE ? n - j0 : TILE;
        for (int jj = 0; jj < TILE; jj++) {
            float *dst = tile + (size_t)jj * d;
            if (jj < m) {
                const uint16_t *src = k + (size_t)(j0 + jj) * k_stride;
                for (int c = 0; c < d; c += 8) _mm256_storeu_ps(dst + c, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + c))));
            } else {
                for (int c = 0; c < d; c += 8) _mm256_storeu_ps(dst + c, _mm256_setzero_ps());
            }
        }
        for (int h = 0; h < g; h++) {
            const float *qh = q + (size_t)h * d;
            __m256 acc[TILE];
            for (int jj = 0; jj < TILE; jj++) acc[jj] = _mm256_setzero_ps();
            for (int c = 0; c < d; c += 8) {
                const __m256 qc = _mm256_loadu_ps(qh + c);
                for (int jj = 0; jj < TILE; jj++) acc[jj] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(tile + (size_t)jj * d + c), acc[jj]);
            }
            const __m256 s = _mm256_mul_ps(sum8x8(acc), vscale);
            float *row = scores + (size_t)h * n + j0;
            if (m == TILE) {
                _mm256_storeu_ps(row, s);
            } else {
                float tmp[TILE];
                _mm256_storeu_ps(tmp, s);
                for (int jj = 0; jj < m; jj++) row[jj] = tmp[jj];
            }
        }
    }
}

static AVX2 void attend_scores(int g, int d, int n, const float *q, const uint16_t *k, size_t k_stride, float scale,
                               float *tile, float *scores) {
    if (d == 64) attend_scores_d(g, 64, n, q, k, k_stride, scale, tile, scores);
    else if (d == 128) attend_scores_d(g, 128, n, q, k, k_stride, scale, tile, scores);
    else attend_scores_d(g, d, n, q, k, k_stride, scale, tile, scores);
}

// row[j] ← e^(row[j] − max) over the row and the sink; returns 1 / (Σ row + e^(sink − max)).
static AVX2 float attend_softmax(int n, float *row, const float *sink) {
    __m256 vm = _mm256_set1_ps(sink ? *sink : -INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(row + j));
    float mx = hmax8(vm);
    for (; j < n; j++) mx = row[j] > mx ? row[j] : mx;
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vs = _mm256_setzero_ps();
    j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmx));
        _mm256_storeu_ps(row + j, e);
        vs = _mm256_add_ps(vs, e);
    }
    float tail[8] = { 0 }, sum = hsum8(vs);
    const int left = n - j;
    // The tail (and the sink, in lane 7) through the same exp; padding lanes are not summed.
    for (int i = 0; i < 8; i++) tail[i] = i < left ? row[j + i] - mx : -INFINITY;
    if (sink) tail[7] = *sink - mx;
    _mm256_storeu_ps(tail, exp_nonpositive(_mm256_loadu_ps(tail)));
    for (int i = 0; i < left; i++) { row[j + i] = tail[i]; sum += tail[i]; }
    if (sink) sum += tail[7];
    return 1.0f / sum;
}

// out_h[c] = inv_h · Σ_j p_hj · v_j[c] for `hn` (≤ 4) heads from h0, sixteen columns per pass over the values.
// Inlined with a constant `hn` (and `d` where it is common), so the loops over heads unroll into registers.
static INLINE AVX2 void attend_values_block(const int hn, const int d, int h0, int n, const float *p, const uint16_t *v,
                                            size_t v_stride, const float *inv, float *out, size_t out_stride) {
    for (int c = 0; c < d; c += 16) {
        const int two = c + 16 <= d;
        __m256 acc[4][2];
        for (int h = 0; h < hn; h++) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
        for (int j = 0; j < n; j++) {
            const uint16_t *vr = v + (size_t)j * v_stride + c;
            const __m256 v0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)vr));
            const __m256 v1 = two ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vr + 8))) : _mm256_setzero_ps();
            for (int h = 0; h < hn; h++) {
                const __m256 w = _mm256_broadcast_ss(p + (size_t)(h0 + h) * n + j);
                acc[h][0] = _mm256_fmadd_ps(w, v0, acc[h][0]);
                acc[h][1] = _mm256_fmadd_ps(w, v1, acc[h][1]);
            }
        }
        for (int h = 0; h < hn; h++) {
            float *o = out + (size_t)(h0 + h) * out_stride + c;
            const __m256 s = _mm256_set1_ps(inv[h0 + h]);
            _mm256_storeu_ps(o, _mm256_mul_ps(acc[h][0], s));
            if (two) _mm256_storeu_ps(o + 8, _mm256_mul_ps(acc[h][1], s));
        }
    }
}

static AVX2 void attend_values(int g, int d, int n, const float *p, const uint16_t *v, size_t v_stride, const float *inv,
                               float *out, size_t out_stride) {
    for (int h0 = 0; h0 < g; h0 += 4) {
        const int hn = g - h0 < 4 ? g - h0 : 4;
#define VALUES(HN) \
        if (d == 64) attend_values_block(HN, 64, h0, n, p, v, v_stride, inv, out, out_stride); \
        else if (d == 128) attend_values_block(HN, 128, h0, n, p, v, v_stride, inv, out, out_stride); \
        else attend_values_block(HN, d, h0, n, p, v, v_stride, inv, out, out_stride);
        switch (hn) {
        case 4: VALUES(4) break;
        case 3: VALUES(3) break;
        case 2: VALUES(2) break;
        default: VALUES(1) break;
        }
#undef VALUES
    }
}

AVX2 static void attend_f16_avx2(int g, int d, int n, const float *q, size_t q_stride, const uint16_t *k, size_t k_stride,
                                 const uint16_t *v, size_t v_stride, float scale, const float *sinks, int round_weights,
                                 float *work, float *out, size_t out_stride) {
    float *scores = work, *qf = scores + (size_t)g * n, *tile = qf + (size_t)g * d, inv[64];
    // The query as ggml's K·Q takes it: rounded to f16.
    for (int h = 0; h < g; h++)
        for (int c = 0; c < d; c += 8)
            _mm256_storeu_ps(qf + (size_t)h * d + c,
                             _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(q + (size_t)h * q_stride + c), _MM_FROUND_TO_NEAREST_INT)));
    attend_scores(g, d, n, qf, k, k_stride, scale, tile, scores);
    for (int h = 0; h < g; h++) inv[h] = attend_softmax(n, scores + (size_t)h * n, sinks ? sinks + h : 0);
    if (round_weights) {
        // ggml's K·Q·V without flash attention: the normalised weights meet the f16 values as f16.
        for (int h = 0; h < g; h++) {
            float *row = scores + (size_t)h * n;
            const __m256 s = _mm256_set1_ps(inv[h]);
            int j = 0;
            for (; j + 8 <= n; j += 8)
                _mm256_storeu_ps(row + j, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(row + j), s), _MM_FROUND_TO_NEAREST_INT)));
            for (; j < n; j++) row[j] = _cvtsh_ss(_cvtss_sh(row[j] * inv[h], _MM_FROUND_TO_NEAREST_INT));
            inv[h] = 1.0f;
        }
    }
    attend_values(g, d, n, scores, v, v_stride, inv, out, out_stride);
}
#define HAVE_X86 1
#endif

size_t ck_attend_f16_work(int g, int d, int n) { return (size_t)g * n + (size_t)(g + TILE) * d; }

int ck_attend_f16(int g, int d, int n, const float *q, size_t q_stride, const uint16_t *k, size_t k_stride,
                  const uint16_t *v, size_t v_stride, float scale, const float *sinks, int round_weights, float *work, float *out,
                  size_t out_stride) {
#ifdef HAVE_X86
    if (ck_active_isa() >= CK_ISA_AVX2 && d % 8 == 0 && g >= 1 && g <= 64 && n >= 1) {
        attend_f16_avx2(g, d, n, q, q_stride, k, k_stride, v, v_stride, scale, sinks, round_weights, work, out, out_stride);
        return 1;
    }
#endif
    (void)g; (void)d; (void)n; (void)q; (void)q_stride; (void)k; (void)k_stride; (void)v; (void)v_stride;
    (void)scale; (void)sinks; (void)round_weights; (void)work; (void)out; (void)out_stride;
    return 0;
}
