// Half-precision conversions and the two vector operations attention runs over an f16 KV cache.
#include "ck_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma,f16c")))

static AVX2 void f32_to_f16_avx2(int n, const float *x, uint16_t *y) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}
static AVX2 void f16_to_f32_avx2(int n, const uint16_t *x, float *y) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}
static AVX2 float dot_f32_f16_avx2(int n, const float *x, const uint16_t *y) {
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
static AVX2 void axpy_f16_avx2(int n, float a, const uint16_t *x, float *y) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * _cvtsh_ss(x[i]);
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

void ck_f32_to_f16(int n, const float *x, uint16_t *y) {
#ifdef HAVE_X86
    if (ck_cpu_isa() & CK_ISA_AVX2) { f32_to_f16_avx2(n, x, y); return; }
#endif
    for (int i = 0; i < n; i++) y[i] = f32_to_f16_scalar(x[i]);
}
void ck_f16_to_f32(int n, const uint16_t *x, float *y) {
#ifdef HAVE_X86
    if (ck_cpu_isa() & CK_ISA_AVX2) { f16_to_f32_avx2(n, x, y); return; }
#endif
    for (int i = 0; i < n; i++) y[i] = ck_f16(x[i]);
}
float ck_dot_f32_f16(int n, const float *x, const uint16_t *y) {
#ifdef HAVE_X86
    if (ck_cpu_isa() & CK_ISA_AVX2) return dot_f32_f16_avx2(n, x, y);
#endif
    float s = 0; for (int i = 0; i < n; i++) s += x[i] * ck_f16(y[i]); return s;
}
void ck_axpy_f16(int n, float a, const uint16_t *x, float *y) {
#ifdef HAVE_X86
    if (ck_cpu_isa() & CK_ISA_AVX2) { axpy_f16_avx2(n, a, x, y); return; }
#endif
    for (int i = 0; i < n; i++) y[i] += a * ck_f16(x[i]);
}
