// Half-precision conversions and the two vector operations attention runs over an f16 KV cache.
#include "ck_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include "ck_avx2.h"

AVX2 void ck_f32_to_f16_avx2(int n, const float *x, uint16_t *y) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}
AVX2 void ck_f16_to_f32_avx2(int n, const uint16_t *x, float *y) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}
AVX2 float ck_dot_f32_f16_avx2(int n, const float *x, const uint16_t *y) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(y + i))), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(y + i + 8))), a1);
    }
    a0 = _mm256_add_ps(a0, a1);
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(a0, 1), _mm256_castps256_ps128(a0));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    float s = _mm_cvtss_f32(r);
    for (; i < n; i++) s += x[i] * _cvtsh_ss(y[i]);
    return s;
}
AVX2 void ck_axpy_f16_avx2(int n, float a, const uint16_t *x, float *y) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * _cvtsh_ss(x[i]);
}
// y[i] += Σ_j w[j] · x[j·stride + i], rows in order: the same fused multiply-adds as one axpy per row (so the
// same bits), with y held in registers across the rows instead of reloaded for each.
AVX2 void ck_weighted_sum_f16_avx2(int rows, int n, const float *w, const uint16_t *x, size_t stride, float *y) {
    int c = 0;
    for (; c + 64 <= n; c += 64) {
        __m256 acc[8];
        for (int k = 0; k < 8; k++) acc[k] = _mm256_loadu_ps(y + c + 8 * k);
        for (int j = 0; j < rows; j++) {
            const __m256 wj = _mm256_set1_ps(w[j]);
            const uint16_t *r = x + (size_t)j * stride + c;
            for (int k = 0; k < 8; k++)
                acc[k] = _mm256_fmadd_ps(wj, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r + 8 * k))), acc[k]);
        }
        for (int k = 0; k < 8; k++) _mm256_storeu_ps(y + c + 8 * k, acc[k]);
    }
    for (; c + 8 <= n; c += 8) {
        __m256 acc = _mm256_loadu_ps(y + c);
        for (int j = 0; j < rows; j++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + (size_t)j * stride + c))), acc);
        _mm256_storeu_ps(y + c, acc);
    }
    for (; c < n; c++) {
        float a = y[c];
        for (int j = 0; j < rows; j++) a += w[j] * _cvtsh_ss(x[(size_t)j * stride + c]);
        y[c] = a;
    }
}
// y[i] += Σ_j w[j] · v_j[i] over Q8_0 / Q4_0 rows (`stride` bytes apart, n a multiple of 32), each value
// dequantized as ggml does (d · q) before the multiply-add: llama.cpp's flash attention over a quantized V cache.
AVX2 void ck_weighted_sum_q8_0_avx2(int rows, int n, const float *w, const uint8_t *x, size_t stride, float *y) {
    for (int b = 0; b < n / 32; b++) {
        __m256 acc[4];
        for (int k = 0; k < 4; k++) acc[k] = _mm256_loadu_ps(y + 32 * b + 8 * k);
        for (int j = 0; j < rows; j++) {
            const blk_q8_0 *blk = (const blk_q8_0 *)(x + (size_t)j * stride) + b;
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(blk->d)), wj = _mm256_set1_ps(w[j]);
            for (int k = 0; k < 4; k++) {
                const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk->qs + 8 * k))));
                acc[k] = _mm256_fmadd_ps(wj, _mm256_mul_ps(q, d), acc[k]);
            }
        }
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 32 * b + 8 * k, acc[k]);
    }
}
AVX2 void ck_weighted_sum_q4_0_avx2(int rows, int n, const float *w, const uint8_t *x, size_t stride, float *y) {
    const __m128i low = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int b = 0; b < n / 32; b++) {
        __m256 acc[4];
        for (int k = 0; k < 4; k++) acc[k] = _mm256_loadu_ps(y + 32 * b + 8 * k);
        for (int j = 0; j < rows; j++) {
            const blk_q4_0 *blk = (const blk_q4_0 *)(x + (size_t)j * stride) + b;
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(blk->d)), wj = _mm256_set1_ps(w[j]);
            const __m128i packed = _mm_loadu_si128((const __m128i *)blk->qs);
            // Values 0..15 are the low nibbles, 16..31 the high ones (ggml's Q4_0 layout), less 8.
            const __m128i lo = _mm_sub_epi8(_mm_and_si128(packed, low), eight);
            const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(packed, 4), low), eight);
            const __m128i parts[4] = { lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8) };
            for (int k = 0; k < 4; k++) {
                const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k]));
                acc[k] = _mm256_fmadd_ps(wj, _mm256_mul_ps(q, d), acc[k]);
            }
        }
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 32 * b + 8 * k, acc[k]);
    }
}
#define HAVE_X86 1
#endif

// Portable float → half, round to nearest even (matches F16C and Swift's Float16(x)).
static uint16_t f32_to_f16_scalar(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    uint32_t mag = x & 0x7FFFFFFF;
    if (mag > 0x7F800000) return (uint16_t)(sign | 0x7E00);           // NaN
    if (mag >= 0x477FF000) return (uint16_t)(sign | 0x7C00);          // overflow (rounds to inf)
    if (mag < 0x38800000) {                                           // subnormal half or zero
        if (mag < 0x33000000) return (uint16_t)sign;
        const uint32_t e = mag >> 23, m = (mag & 0x7FFFFF) | 0x800000;
        const uint32_t shift = 126 - e;                                // 14 + (112 - e)
        uint32_t h = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((mag - 0x38000000) >> 13);
    const uint32_t rem = mag & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

void ck_f32_to_f16_portable(int n, const float *x, uint16_t *y) {
    for (int i = 0; i < n; i++) y[i] = f32_to_f16_scalar(x[i]);
}

// The portable versions: the scalar row of the dispatch table (ck_dispatch.c), also for CPUs without F16C.
void ck_f16_to_f32_scalar(int n, const uint16_t *x, float *y) {
    for (int i = 0; i < n; i++) y[i] = ck_f16(x[i]);
}
float ck_dot_f32_f16_scalar(int n, const float *x, const uint16_t *y) {
    float s = 0; for (int i = 0; i < n; i++) s += x[i] * ck_f16(y[i]); return s;
}
void ck_axpy_f16_scalar(int n, float a, const uint16_t *x, float *y) {
    for (int i = 0; i < n; i++) y[i] += a * ck_f16(x[i]);
}
void ck_weighted_sum_f16_scalar(int rows, int n, const float *w, const uint16_t *x, size_t stride, float *y) {
    for (int j = 0; j < rows; j++) ck_axpy_f16_scalar(n, w[j], x + (size_t)j * stride, y);
}

// Q8_0 activation quantization as ggml's x86 path does it (127/amax scale, round half to even), with the
// per-block (d, d·Σq) pair the kernels take, in one pass. Bit-identical to Kernels.ActivationQuant (tested).
#ifdef HAVE_X86
AVX2 void ck_quantize_q8_0_avx2(int n, const float *x, void *vy, float *aux) {
    blk_q8_0 *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float d = amax / 127.f;
        const uint16_t dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        y[b].d = dh;
        const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
#define CK_RND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), CK_RND));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), CK_RND));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), CK_RND));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), CK_RND));
        const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
        i0 = _mm256_packs_epi32(i0, i1);
        i2 = _mm256_packs_epi32(i2, i3);
        i0 = _mm256_packs_epi16(i0, i2);
        i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].qs, i0);
        const float df = _cvtsh_ss(dh);
        aux[2 * b] = df;
        aux[2 * b + 1] = df * (float)_mm_cvtsi128_si32(s4);
    }
}
#endif

