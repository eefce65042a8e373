// x86 SIMD kernels: AVX2 (vpmaddubsw) and AVX-512 VNNI (vpdpbusd, 256-bit), chosen at run time.
//
// Every kernel computes the same integer sums as the scalar version in ck_scalar.c and applies the block scales
// in float; they differ from it only in the order of float additions. Each is checked against the Swift
// reference by the tests.
#include "ck_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include "ck_avx2.h"

#define VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

int ck_cpu_isa(void) {
    // Computed once; concurrent first calls race to store the same value.
    static volatile int cached = -1;
    if (cached >= 0) return cached;
    __builtin_cpu_init();
    int isa = CK_ISA_SCALAR;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        isa = CK_ISA_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            isa = CK_ISA_VNNI;
    }
    cached = isa;
    return isa;
}

static inline AVX2 float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Bytes ahead of the current weight block to prefetch: far enough to cover memory latency at full bandwidth.
#ifndef CK_PREFETCH
#define CK_PREFETCH 1024
#endif

// Σ of unsigned × signed byte products, four per int32 lane.
static inline AVX2 __m256i dot_us_avx2(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
static inline VNNI __m256i dot_us_vnni(__m256i acc, __m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(acc, u, s);
}

// ---- F32 × F32, F16 × F16

static inline AVX2 float dot_f32_avx2(int n, const float *x, const float *y) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

static inline AVX2 __m256 load_f16x8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static inline AVX2 float dot_f16_avx2(int n, const uint16_t *x, const uint16_t *y) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm_prefetch((const char *)(x + i) + CK_PREFETCH, _MM_HINT_NTA);
        a0 = _mm256_fmadd_ps(load_f16x8(x + i), load_f16x8(y + i), a0);
        a1 = _mm256_fmadd_ps(load_f16x8(x + i + 8), load_f16x8(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_f16x8(x + i + 16), load_f16x8(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_f16x8(x + i + 24), load_f16x8(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_f16x8(x + i), load_f16x8(y + i), a0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += h2f(x[i]) * h2f(y[i]);
    return s;
}

// ---- Q8_0 × Q8_0: |x| × sign(y, x) keeps the unsigned operand within 127, so neither path saturates.
// The activation's scales come pre-converted in `ya` (d, d·Σy per block).

#define DEF_Q8_0(NAME, ATTR, DOT)                                                                         \
    static inline ATTR float NAME(int n, const blk_q8_0 *x, const blk_q8_0 *y, const float *ya) {         \
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                    \
        const int nb = n / 32;                                                                            \
        int b = 0;                                                                                        \
        for (; b + 2 <= nb; b += 2) {                                                                     \
            _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);                               \
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);                              \
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)y[b].qs);                              \
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)x[b + 1].qs);                          \
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)y[b + 1].qs);                          \
            const __m256i p0 = DOT(_mm256_setzero_si256(), _mm256_sign_epi8(x0, x0), _mm256_sign_epi8(y0, x0)); \
            const __m256i p1 = DOT(_mm256_setzero_si256(), _mm256_sign_epi8(x1, x1), _mm256_sign_epi8(y1, x1)); \
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[b].d) * ya[2 * b]), _mm256_cvtepi32_ps(p0), acc0); \
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[b + 1].d) * ya[2 * b + 2]), _mm256_cvtepi32_ps(p1), acc1); \
        }                                                                                                 \
        for (; b < nb; b++) {                                                                             \
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);                              \
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)y[b].qs);                              \
            const __m256i p0 = DOT(_mm256_setzero_si256(), _mm256_sign_epi8(x0, x0), _mm256_sign_epi8(y0, x0)); \
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[b].d) * ya[2 * b]), _mm256_cvtepi32_ps(p0), acc0); \
        }                                                                                                 \
        return hsum8(_mm256_add_ps(acc0, acc1));                                                          \
    }
DEF_Q8_0(dot_q8_0_avx2, AVX2, dot_us_avx2)
DEF_Q8_0(dot_q8_0_vnni, VNNI, dot_us_vnni)

// ---- Q4_0 × Q8_0: see ck_q4_0_rows8.c (eight weight rows per register).

// ---- Q4_K × Q8_K: scales and mins unpacked with ggml's mask shuffle (no per-value branches); the per-group
// 6-bit scale is applied by vpmaddwd on the 16-bit pair sums; Σ min·bsum is one vpmaddwd too.

static inline AVX2 float dot_q4_K_avx2(int n, const blk_q4_K *x, const blk_q8_K *y) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int b = 0; b < n / 256; b++) {
        const char *pf = (const char *)(x + b) + CK_PREFETCH;
        _mm_prefetch(pf, _MM_HINT_NTA);
        _mm_prefetch(pf + 64, _MM_HINT_NTA);
        _mm_prefetch(pf + 128, _MM_HINT_NTA);
        uint32_t u[4];
        ck_q4k_unpack(x[b].scales, u);
        // u[0..1]: the eight scales, u[2..3]: the eight mins, one byte each.
        const __m256i sm = _mm256_cvtepu8_epi16(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]));
        const __m128i bs = _mm_loadu_si128((const __m128i *)y[b].bsums);
        const __m128i bs2 = _mm_loadu_si128((const __m128i *)(y[b].bsums + 8));
        const __m128i pairs = _mm_hadd_epi16(bs, bs2);
        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), pairs);
        const float dmin = h2f(x[b].dmin) * y[b].d;
        accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), accm);

        __m256i sumi = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            const __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * g));
            const __m256i lo = _mm256_and_si256(q4, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            const __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y[b].qs + 64 * g)));
            const __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y[b].qs + 64 * g + 32)));
            const short a0 = ((const uint8_t *)u)[2 * g], a1 = ((const uint8_t *)u)[2 * g + 1];
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, _mm256_set1_epi16(a0)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, _mm256_set1_epi16(a1)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[b].d) * y[b].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    __m128 m = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return hsum8(acc) - _mm_cvtss_f32(m);
}

// ---- Q6_K × Q8_K: 6-bit unsigned values (q + 32) times y, then 32·Σ sc·bsum removed (one vpmaddwd).

/// A block a prefetch distance ahead, as every kernel here prefetches its weights.
static inline AVX2 void prefetch_q6_K(const blk_q6_K *x) {
    const char *pf = (const char *)x + CK_PREFETCH;
    _mm_prefetch(pf, _MM_HINT_NTA);
    _mm_prefetch(pf + 64, _MM_HINT_NTA);
    _mm_prefetch(pf + 128, _MM_HINT_NTA);
    _mm_prefetch(pf + 192, _MM_HINT_NTA);
}

/// Half h of a Q6_K block: its 128 six-bit values (q + 32, so 0..63) as bytes, in four vectors of 32 in the order
/// of the Q8_K values they multiply.
static inline AVX2 void unpack_q6_K_half(const blk_q6_K *x, int h, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(0x03);
    const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
    const __m256i hb = _mm256_loadu_si256((const __m256i *)qh);
    q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4));
}

static inline AVX2 float dot_q6_K_avx2(int n, const blk_q6_K *x, const blk_q8_K *y) {
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / 256; b++) {
        prefetch_q6_K(x + b);
        __m256i sumi = _mm256_setzero_si256();
        __m256i scw[2];
        widen_scales(_mm_loadu_si128((const __m128i *)x[b].scales), 1, scw);
        for (int h = 0; h < 2; h++) {
            const int8_t *q8 = y[b].qs + 128 * h;
            __m256i q[4];
            unpack_q6_K_half(x + b, h, q);
            for (int k = 0; k < 4; k++) {
                const __m256i p = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)(q8 + 32 * k)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, pair_scales(scw[h], 2 * k)));
            }
        }
        // Subtract 32·Σ sc·bsum as a vector, before the conversion to float.
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[b].scales));
        const __m256i bsum = _mm256_loadu_si256((const __m256i *)y[b].bsums);
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsum), 5));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[b].d) * y[b].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

// ---- Row loops.

#define DEF_ROWS(NAME, ATTR, DOT)                                   \
    ATTR void NAME(CK_ROWS_SIGNATURE) { CK_ROWS_LOOP(DOT) }

DEF_ROWS(ck_rows_f32_avx2, AVX2, dot_f32_avx2(n, (const float *)wr, (const float *)ar))
DEF_ROWS(ck_rows_f16_avx2, AVX2, dot_f16_avx2(n, (const uint16_t *)wr, (const uint16_t *)ar))


// ---- Batched products (prefill, experts with several rows): four tokens per pass over a weight row, so each
// weight block is loaded, unpacked and its scale converted once for four activation rows. Each token keeps the
// one-token kernel's accumulators (even blocks, odd blocks) and summation order, so a token's result is
// bit-identical however it was batched — prefill and decode agree exactly, and so do workers that batch
// differently.

#define Q8_0_T4_BLOCK(DOT, B, ACC)                                                                             \
    {                                                                                                     \
        const __m256i w = _mm256_loadu_si256((const __m256i *)x[B].qs);                                   \
        const __m256i aw = _mm256_sign_epi8(w, w);                                                        \
        const float dx = h2f(x[B].d);                                                                     \
        for (int j = 0; j < 4; j++) {                                                                     \
            const blk_q8_0 *y = (const blk_q8_0 *)(a + j * a_stride);                                     \
            const __m256i yv = _mm256_loadu_si256((const __m256i *)y[B].qs);                              \
            const __m256i p = DOT(_mm256_setzero_si256(), aw, _mm256_sign_epi8(yv, w));                   \
            ACC[j] = _mm256_fmadd_ps(_mm256_set1_ps(dx * ya[j * ya_stride + 2 * (B)]), _mm256_cvtepi32_ps(p), ACC[j]); \
        }                                                                                                 \
    }
#define DEF_Q8_0_T4(NAME, ATTR, DOT)                                                                      \
    static inline ATTR void NAME(int n, const blk_q8_0 *x, const uint8_t *a, size_t a_stride,             \
                                 const float *ya, size_t ya_stride, float *out, size_t out_stride) {      \
        __m256 acc0[4], acc1[4];                                                                          \
        for (int j = 0; j < 4; j++) acc0[j] = acc1[j] = _mm256_setzero_ps();                              \
        const int nb = n / 32;                                                                            \
        int b = 0;                                                                                        \
        for (; b + 2 <= nb; b += 2) {                                                                     \
            if ((b & 3) == 0) _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);            \
            Q8_0_T4_BLOCK(DOT, b, acc0)                                                                        \
            Q8_0_T4_BLOCK(DOT, b + 1, acc1)                                                                    \
        }                                                                                                 \
        for (; b < nb; b++) Q8_0_T4_BLOCK(DOT, b, acc0)                                                        \
        for (int j = 0; j < 4; j++) out[j * out_stride] = hsum8(_mm256_add_ps(acc0[j], acc1[j]));         \
    }
DEF_Q8_0_T4(dot4t_q8_0_avx2, AVX2, dot_us_avx2)
DEF_Q8_0_T4(dot4t_q8_0_vnni, VNNI, dot_us_vnni)

/// Tokens in groups of four through the batched kernel, the rest one at a time.
#define DEF_ROWS_T4(NAME, ATTR, WT, AT, DOT1, DOT4)                                                           \
    ATTR void NAME(CK_ROWS_SIGNATURE) {                                                            \
        for (int r = 0; r < rows; r++) {                                                                  \
            const WT *wr = (const WT *)((const uint8_t *)w + (size_t)r * w_stride);                       \
            int t = 0;                                                                                    \
            for (; t + 4 <= batch; t += 4)                                                                \
                DOT4(n, wr, (const uint8_t *)a + (size_t)t * a_stride, a_stride, aux + (size_t)t * aux_stride, \
                     aux_stride, y + (size_t)t * y_stride + r, y_stride);                                 \
            for (; t < batch; t++)                                                                        \
                y[(size_t)t * y_stride + r] = DOT1(n, wr, (const AT *)((const uint8_t *)a + (size_t)t * a_stride), \
                                                    aux + (size_t)t * aux_stride);                        \
        }                                                                                                 \
    }
DEF_ROWS_T4(ck_rows_q8_0_avx2, AVX2, blk_q8_0, blk_q8_0, dot_q8_0_avx2, dot4t_q8_0_avx2)
DEF_ROWS_T4(ck_rows_q8_0_vnni, VNNI, blk_q8_0, blk_q8_0, dot_q8_0_vnni, dot4t_q8_0_vnni)
DEF_ROWS(ck_rows_q4_K_avx2, AVX2, dot_q4_K_avx2(n, (const blk_q4_K *)wr, (const blk_q8_K *)ar))

/// Q6_K for four tokens per pass: each block's 6-bit values are unpacked and its scales widened once, then
/// multiplied with each token's Q8_K. The integer sums are exact, and each token's float accumulation runs
/// block by block as in `dot_q6_K_avx2`, so every token gets the one-token kernel's bits. (The output head of
/// llama.cpp's quantizations is Q6_K: with several sequences decoding, unpacking once per weight row instead of
/// once per token is most of a decode step's work.)
static AVX2 void dot4t_q6_K_avx2(int n, const blk_q6_K *x, const uint8_t *a, size_t a_stride, const float *aux,
                                 size_t aux_stride, float *out, size_t out_stride) {
    (void)aux;
    (void)aux_stride;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < n / 256; b++) {
        prefetch_q6_K(x + b);
        __m256i sumi[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        __m256i scw[2];
        widen_scales(_mm_loadu_si128((const __m128i *)x[b].scales), 1, scw);
        for (int h = 0; h < 2; h++) {
            __m256i q[4], sc[4];
            unpack_q6_K_half(x + b, h, q);
            for (int k = 0; k < 4; k++) sc[k] = pair_scales(scw[h], 2 * k);
            for (int j = 0; j < 4; j++) {
                const int8_t *q8 = ((const blk_q8_K *)(a + (size_t)j * a_stride))[b].qs + 128 * h;
                for (int k = 0; k < 4; k++) {
                    const __m256i p = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)(q8 + 32 * k)));
                    sumi[j] = _mm256_add_epi32(sumi[j], _mm256_madd_epi16(p, sc[k]));
                }
            }
        }
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[b].scales));
        const float dx = h2f(x[b].d);
        for (int j = 0; j < 4; j++) {
            const blk_q8_K *y = (const blk_q8_K *)(a + (size_t)j * a_stride);
            const __m256i bsum = _mm256_loadu_si256((const __m256i *)y[b].bsums);
            const __m256i s = _mm256_sub_epi32(sumi[j], _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsum), 5));
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dx * y[b].d), _mm256_cvtepi32_ps(s), acc[j]);
        }
    }
    for (int j = 0; j < 4; j++) out[j * out_stride] = hsum8(acc[j]);
}
static inline AVX2 float dot1_q6_K_avx2(int n, const blk_q6_K *x, const blk_q8_K *y, const float *aux) {
    (void)aux;
    return dot_q6_K_avx2(n, x, y);
}
DEF_ROWS_T4(ck_rows_q6_K_avx2, AVX2, blk_q6_K, blk_q8_K, dot1_q6_K_avx2, dot4t_q6_K_avx2)

AVX2 uint64_t ck_stream_read_avx2(const void *p, size_t bytes) {
    const __m256i *v = p;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t n = bytes / 128;
    for (size_t i = 0; i < n; i++) {
        // The same prefetch the kernels issue, so the figure is what a kernel could at best reach.
        _mm_prefetch((const char *)(v + 4 * i) + CK_PREFETCH, _MM_HINT_NTA);
        _mm_prefetch((const char *)(v + 4 * i) + CK_PREFETCH + 64, _MM_HINT_NTA);
        a0 = _mm256_xor_si256(a0, _mm256_load_si256(v + 4 * i));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256(v + 4 * i + 1));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256(v + 4 * i + 2));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256(v + 4 * i + 3));
    }
    __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    return (uint64_t)_mm256_extract_epi64(a, 0) ^ (uint64_t)_mm256_extract_epi64(a, 3);
}

#else
int ck_cpu_isa(void) { return CK_ISA_SCALAR; }
#endif
