// Shared helpers of the C kernels: block layouts (ggml-common.h shapes) and scalar conversions.
#ifndef CK_COMMON_H
#define CK_COMMON_H
#include <stdint.h>
#include <string.h>
#include "ckernels.h"

enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q2_K = 10, T_Q3_K = 11,
    T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_IQ4_NL = 20, T_IQ4_XS = 23, T_BF16 = 30, T_MXFP4 = 39
};

typedef struct { uint16_t d; uint8_t qs[16]; } blk_q4_0;
typedef struct { uint16_t d; int8_t qs[32]; } blk_q8_0;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_K;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } blk_q8_K;
typedef struct { uint16_t d, m; uint8_t qs[16]; } blk_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_1;
typedef struct { uint16_t d, s; int8_t qs[32]; } blk_q8_1;
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } blk_q2_K;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } blk_q3_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } blk_q5_K;
typedef struct { uint16_t d; uint8_t qs[16]; } blk_iq4_nl;
typedef struct { uint16_t d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; } blk_iq4_xs;
typedef struct { uint8_t e; uint8_t qs[16]; } blk_mxfp4;

_Static_assert(sizeof(blk_q4_0) == 18, "q4_0");
_Static_assert(sizeof(blk_q8_0) == 34, "q8_0");
_Static_assert(sizeof(blk_q4_K) == 144, "q4_K");
_Static_assert(sizeof(blk_q6_K) == 210, "q6_K");
_Static_assert(sizeof(blk_q8_K) == 292, "q8_K");
_Static_assert(sizeof(blk_q4_1) == 20, "q4_1");
_Static_assert(sizeof(blk_q5_0) == 22, "q5_0");
_Static_assert(sizeof(blk_q5_1) == 24, "q5_1");
_Static_assert(sizeof(blk_q8_1) == 36, "q8_1");
_Static_assert(sizeof(blk_q2_K) == 84, "q2_K");
_Static_assert(sizeof(blk_q3_K) == 110, "q3_K");
_Static_assert(sizeof(blk_q5_K) == 176, "q5_K");
_Static_assert(sizeof(blk_iq4_nl) == 18, "iq4_nl");
_Static_assert(sizeof(blk_iq4_xs) == 136, "iq4_xs");
_Static_assert(sizeof(blk_mxfp4) == 17, "mxfp4");

static const int8_t ck_iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
static const int8_t ck_mxfp4_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

static inline float ck_e8m0_half(uint8_t e) {
    uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f; memcpy(&f, &bits, 4); return f;
}

/// Q3_K's sixteen 6-bit scales (each minus 32 gives the signed scale), from twelve bytes.
static inline void ck_q3k_scales(const uint8_t *s12, int8_t out[16]) {
    uint32_t a[4];
    memcpy(a, s12, 12);
    const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f, tmp = a[2];
    a[2] = ((a[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
    a[3] = ((a[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
    a[0] = (a[0] & k2) | (((tmp >> 0) & k1) << 4);
    a[1] = (a[1] & k2) | (((tmp >> 2) & k1) << 4);
    memcpy(out, a, 16);
}

static inline float ck_f16(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) bits = sign | 0x7F800000 | (man << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else { // subnormal: normalise
        int e = -1; uint32_t m = man;
        do { e++; m <<= 1; } while ((m & 0x400) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3FF) << 13);
    }
    float f; memcpy(&f, &bits, 4); return f;
}

static inline float ck_bf16(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }

/// Q4_K's eight 6-bit scales and mins from twelve bytes.
static inline void ck_q4k_scales(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) { sc[j] = q[j] & 63; mn[j] = q[j + 4] & 63; }
        else {
            sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
}

/// Q4_K/Q5_K's twelve scale bytes as eight scales (bytes 0..7 of u) and eight mins (bytes 8..15): ggml's
/// branch-free mask shuffle.
static inline void ck_q4k_unpack(const uint8_t *scales, uint32_t u[4]) {
    const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
    memcpy(u, scales, 12);
    u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
    const uint32_t t = u[1] & k1;
    u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
    u[2] = t;
    u[0] &= k1;
}

// Every kernel of every ISA, by name; ck_dispatch.c puts each in its cell of the [type][isa] table. The x86 ones
// exist only on x86 (the table leaves their cells empty elsewhere).
#define CK_ROWS_DECL(NAME) void NAME(int, const void *, size_t, int, const void *, size_t, const float *, size_t, int, float *, size_t);
CK_ROWS_DECL(ck_rows_f32_scalar) CK_ROWS_DECL(ck_rows_f16_scalar) CK_ROWS_DECL(ck_rows_q8_0_scalar)
CK_ROWS_DECL(ck_rows_q4_0_scalar) CK_ROWS_DECL(ck_rows_q4_K_scalar) CK_ROWS_DECL(ck_rows_q6_K_scalar)
CK_ROWS_DECL(ck_rows_f32_avx2) CK_ROWS_DECL(ck_rows_f16_avx2) CK_ROWS_DECL(ck_rows_bf16_avx2)
CK_ROWS_DECL(ck_rows_q8_0_avx2) CK_ROWS_DECL(ck_rows_q8_0_vnni) CK_ROWS_DECL(ck_rows_q4_K_avx2) CK_ROWS_DECL(ck_rows_q6_K_avx2)
CK_ROWS_DECL(ck_rows_q4_1_avx2) CK_ROWS_DECL(ck_rows_q5_0_avx2) CK_ROWS_DECL(ck_rows_q5_1_avx2)
CK_ROWS_DECL(ck_rows_q2_K_avx2) CK_ROWS_DECL(ck_rows_q3_K_avx2) CK_ROWS_DECL(ck_rows_q5_K_avx2)
CK_ROWS_DECL(ck_rows_iq4_nl_avx2) CK_ROWS_DECL(ck_rows_iq4_xs_avx2) CK_ROWS_DECL(ck_rows_mxfp4_avx2)
// Q4_0 with eight weight rows per register, and over rows packed in eights (ck_q4_0_rows8.c).
CK_ROWS_DECL(ck_rows_q4_0_r8_avx2) CK_ROWS_DECL(ck_rows_q4_0_r8_vnni)
CK_ROWS_DECL(ck_rows_q4_0_x8_avx2) CK_ROWS_DECL(ck_rows_q4_0_x8_vnni) CK_ROWS_DECL(ck_rows_q8_0_x8_vnni)
// Half-precision and weighted sums (ck_f16.c), activation quantization, the bandwidth probe (ck_x86.c).
void ck_f16_to_f32_scalar(int n, const uint16_t *x, float *y);
float ck_dot_f32_f16_scalar(int n, const float *x, const uint16_t *y);
void ck_axpy_f16_scalar(int n, float a, const uint16_t *x, float *y);
void ck_weighted_sum_f16_scalar(int rows, int n, const float *w, const uint16_t *x, size_t stride, float *y);
void ck_f32_to_f16_avx2(int n, const float *x, uint16_t *y);
void ck_f16_to_f32_avx2(int n, const uint16_t *x, float *y);
float ck_dot_f32_f16_avx2(int n, const float *x, const uint16_t *y);
void ck_axpy_f16_avx2(int n, float a, const uint16_t *x, float *y);
void ck_weighted_sum_f16_avx2(int rows, int n, const float *w, const uint16_t *x, size_t stride, float *y);
void ck_weighted_sum_q8_0_avx2(int rows, int n, const float *w, const uint8_t *x, size_t stride, float *y);
void ck_weighted_sum_q4_0_avx2(int rows, int n, const float *w, const uint8_t *x, size_t stride, float *y);
void ck_quantize_q8_0_avx2(int n, const float *x, void *y, float *aux);
uint64_t ck_stream_read_avx2(const void *p, size_t bytes);

/// The row × token loop shared by every kernel: `DOT(w_row, a_row, asum_row)` gives one float.
#define CK_ROWS_LOOP(DOT) \
    for (int r = 0; r < rows; r++) { \
        const uint8_t *wr = (const uint8_t *)w + (size_t)r * w_stride; \
        for (int t = 0; t < batch; t++) { \
            const uint8_t *ar = (const uint8_t *)a + (size_t)t * a_stride; \
            const float *sr = aux ? aux + (size_t)t * aux_stride : 0; \
            (void)sr; \
            y[(size_t)t * y_stride + r] = DOT; \
        } \
    }

#define CK_ROWS_SIGNATURE int n, const void *w, size_t w_stride, int rows, const void *a, size_t a_stride, \
    const float *aux, size_t aux_stride, int batch, float *y, size_t y_stride

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CK_AVX2_ATTR __attribute__((target("avx2,fma,f16c")))
#define AVX2 CK_AVX2_ATTR

/// Sixteen 8-bit scales widened to 16 bits and laid out for `pair_scales`: [0] holds scales 0..7 in both
/// 128-bit lanes, [1] scales 8..15.
static inline AVX2 void widen_scales(__m128i s8, int sign, __m256i out[2]) {
    const __m256i all = sign ? _mm256_cvtepi8_epi16(s8) : _mm256_cvtepu8_epi16(s8);
    const __m128i lo = _mm256_castsi256_si128(all), hi = _mm256_extracti128_si256(all, 1);
    out[0] = _mm256_set_m128i(lo, lo);
    out[1] = _mm256_set_m128i(hi, hi);
}
/// Scale i (of the lane-local eight) in every 16-bit slot of the low lane, scale i+1 in the high lane: the
/// multipliers of a 32-value run whose halves have their own scales. One vpshufb, no scalar work.
static inline AVX2 __m256i pair_scales(__m256i widened, int i) {
    const short lo = (short)((2 * i) | ((2 * i + 1) << 8)), hi = (short)((2 * i + 2) | ((2 * i + 3) << 8));
    return _mm256_shuffle_epi8(widened, _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo)));
}

#undef AVX2
#endif

#endif
