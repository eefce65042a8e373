// AVX2 kernels for the less common formats: Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS, MXFP4, BF16.
//
// The same scheme as ck_x86.c: unsigned quant values times signed int8 activations with vpmaddubsw (the
// formats' offsets and mins are taken out through precomputed activation sums), or, for the codebook formats
// (IQ4, MXFP4), a vpshufb table lookup to signed values and the |x|·sign(y, x) trick.
#include "ck_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include "ck_avx2.h"
#ifndef CK_PREFETCH
#define CK_PREFETCH 1024
#endif

static inline AVX2 int hsum_i32(__m256i a) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}
static inline AVX2 float f16(uint16_t h) { return _cvtsh_ss(h); }
static inline AVX2 __m256i madd_us(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
/// 32 nibbles of 16 bytes, low nibbles first (values 0..15 in bytes 0..15, high nibbles in 16..31).
static inline AVX2 __m256i nibbles(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}
/// Byte i is 0x10 when bit i of the 32-bit word is set (Q5's fifth bits).
static inline AVX2 __m256i fifth_bits(const uint8_t *qh) {
    uint32_t v;
    memcpy(&v, qh, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), shuf);
    const __m256i mask = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask), _mm256_set1_epi8(0x10));
}
/// Signed dot of two int8 vectors, as eight int32 lanes.
static inline AVX2 __m256i dot_ss(__m256i x, __m256i y) {
    return madd_us(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

// ---- Q5_0 × Q8_0 (aux: d, d·Σy): q in 0..31 unsigned, minus 16·d·Σy.
static inline AVX2 float dot_q5_0(int n, const blk_q5_0 *x, const blk_q8_0 *y, const float *ya) {
    __m256 acc = _mm256_setzero_ps();
    float corr = 0;
    for (int b = 0; b < n / 32; b++) {
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);
        const __m256i q = _mm256_or_si256(nibbles(x[b].qs), fifth_bits(x[b].qh));
        const __m256i p = madd_us(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        const float dx = f16(x[b].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * ya[2 * b]), _mm256_cvtepi32_ps(p), acc);
        corr += dx * ya[2 * b + 1];
    }
    return hsum8(acc) - 16 * corr;
}

// ---- Q4_1 / Q5_1 × Q8_1: value d·q + m; Σ = dx·dy·Σq·y + m·s where s = dy·Σy is stored in the Q8_1 block.
static inline AVX2 float dot_q4_1(int n, const blk_q4_1 *x, const blk_q8_1 *y) {
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int b = 0; b < n / 32; b++) {
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);
        const __m256i p = madd_us(nibbles(x[b].qs), _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * f16(y[b].d)), _mm256_cvtepi32_ps(p), acc);
        mins += f16(x[b].m) * f16(y[b].s);
    }
    return hsum8(acc) + mins;
}
static inline AVX2 float dot_q5_1(int n, const blk_q5_1 *x, const blk_q8_1 *y) {
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int b = 0; b < n / 32; b++) {
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);
        const __m256i q = _mm256_or_si256(nibbles(x[b].qs), fifth_bits(x[b].qh));
        const __m256i p = madd_us(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * f16(y[b].d)), _mm256_cvtepi32_ps(p), acc);
        mins += f16(x[b].m) * f16(y[b].s);
    }
    return hsum8(acc) + mins;
}

// ---- IQ4_NL and MXFP4 × Q8_0: codebook lookup with vpshufb, then a signed dot.
static inline AVX2 __m256i lookup16(const int8_t table[16], __m256i idx) {
    const __m128i t = _mm_loadu_si128((const __m128i *)table);
    return _mm256_shuffle_epi8(_mm256_set_m128i(t, t), idx);
}
static inline AVX2 float dot_iq4_nl(int n, const blk_iq4_nl *x, const blk_q8_0 *y, const float *ya) {
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / 32; b++) {
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);
        const __m256i v = lookup16(ck_iq4_values, nibbles(x[b].qs));
        const __m256i p = dot_ss(v, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * ya[2 * b]), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum8(acc);
}
static inline AVX2 float dot_mxfp4(int n, const blk_mxfp4 *x, const blk_q8_0 *y, const float *ya) {
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / 32; b++) {
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);
        const __m256i v = lookup16(ck_mxfp4_values, nibbles(x[b].qs));
        const __m256i p = dot_ss(v, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ck_e8m0_half(x[b].e) * ya[2 * b]), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum8(acc);
}

// ---- IQ4_XS × Q8_K: eight 32-groups with 6-bit scales (ls − 32).
static inline AVX2 float dot_iq4_xs(int n, const blk_iq4_xs *x, const blk_q8_K *y) {
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / 256; b++) {
        const char *pf = (const char *)(x + b) + CK_PREFETCH;
        _mm_prefetch(pf, _MM_HINT_NTA);
        _mm_prefetch(pf + 64, _MM_HINT_NTA);
        _mm_prefetch(pf + 128, _MM_HINT_NTA);
        __m256i sumi = _mm256_setzero_si256();
        for (int ib = 0; ib < 8; ib++) {
            const int ls = (((x[b].scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((x[b].scales_h >> (2 * ib)) & 3) << 4)) - 32;
            const __m256i v = lookup16(ck_iq4_values, nibbles(x[b].qs + 16 * ib));
            const __m256i yv = _mm256_loadu_si256((const __m256i *)(y[b].qs + 32 * ib));
            const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(yv, v));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, _mm256_set1_epi16((short)ls)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * y[b].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

// ---- Q5_K × Q8_K: Q4_K plus a fifth bit from qh (bit 2g for the low half of group g, 2g+1 for the high).
static inline AVX2 float dot_q5_K(int n, const blk_q5_K *x, const blk_q8_K *y) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m1 = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int b = 0; b < n / 256; b++) {
        const char *pf = (const char *)(x + b) + CK_PREFETCH;
        _mm_prefetch(pf, _MM_HINT_NTA);
        _mm_prefetch(pf + 64, _MM_HINT_NTA);
        _mm_prefetch(pf + 128, _MM_HINT_NTA);
        uint32_t u[4];
        ck_q4k_unpack(x[b].scales, u);
        const uint8_t *sc = (const uint8_t *)u, *mn = sc + 8;
        const __m256i hb = _mm256_loadu_si256((const __m256i *)x[b].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * g));
            const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * g)), m1), 4);
            const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * g + 1)), m1), 4);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), h0);
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h1);
            const __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y[b].qs + 64 * g)));
            const __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y[b].qs + 64 * g + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * g])));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * g + 1])));
        }
        int summ = 0;
        for (int j = 0; j < 8; j++) summ += mn[j] * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * y[b].d), _mm256_cvtepi32_ps(sumi), acc);
        mins += f16(x[b].dmin) * y[b].d * (float)summ;
    }
    return hsum8(acc) - mins;
}

// ---- Q2_K × Q8_K: 2-bit values, sixteen 16-groups with 4-bit scale and 4-bit min.
#define Q2K_RUN(H, K)                                                                                          \
    {                                                                                                          \
        const __m256i v = _mm256_and_si256(_mm256_srli_epi16(q##H, 2 * (K)), m3);                             \
        const __m256i p = _mm256_maddubs_epi16(v, _mm256_loadu_si256((const __m256i *)(y[b].qs + 128 * (H) + 32 * (K)))); \
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, pair_scales(sc[H], 2 * (K))));                      \
    }
static inline AVX2 float dot_q2_K(int n, const blk_q2_K *x, const blk_q8_K *y) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int b = 0; b < n / 256; b++) {
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH + 64, _MM_HINT_NTA);
        const __m128i raw = _mm_loadu_si128((const __m128i *)x[b].scales);
        __m256i sc[2];
        widen_scales(_mm_and_si128(raw, m4), 0, sc);
        const __m256i m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
        const int summ = hsum_i32(_mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i *)y[b].bsums)));
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i q1 = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32));
        __m256i sumi = _mm256_setzero_si256();
        Q2K_RUN(0, 0) Q2K_RUN(0, 1) Q2K_RUN(0, 2) Q2K_RUN(0, 3)
        Q2K_RUN(1, 0) Q2K_RUN(1, 1) Q2K_RUN(1, 2) Q2K_RUN(1, 3)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * y[b].d), _mm256_cvtepi32_ps(sumi), acc);
        mins += f16(x[b].dmin) * y[b].d * (float)summ;
    }
    return hsum8(acc) - mins;
}

// ---- Q3_K × Q8_K: value (2 low bits) − (high bit clear ? 4 : 0), i.e. u − 4 with u = low + 4·high in 0..7;
// sixteen signed 6-bit scales.
#define Q3K_RUN(H, K)                                                                                          \
    {                                                                                                          \
        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q##H, 2 * (K)), m3);                            \
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * (H) + (K)), m1);                        \
        const __m256i u = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2));                                       \
        const __m256i p = _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)(y[b].qs + 128 * (H) + 32 * (K)))); \
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, pair_scales(sc[H], 2 * (K))));                      \
    }
static inline AVX2 float dot_q3_K(int n, const blk_q3_K *x, const blk_q8_K *y) {
    const __m256i m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / 256; b++) {
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH, _MM_HINT_NTA);
        _mm_prefetch((const char *)(x + b) + CK_PREFETCH + 64, _MM_HINT_NTA);
        int8_t s8[16];
        ck_q3k_scales(x[b].scales, s8);
        const __m128i sv = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)s8), _mm_set1_epi8(32));
        __m256i sc[2];
        widen_scales(sv, 1, sc);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[b].hmask);
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i q1 = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32));
        __m256i sumi = _mm256_setzero_si256();
        Q3K_RUN(0, 0) Q3K_RUN(0, 1) Q3K_RUN(0, 2) Q3K_RUN(0, 3)
        Q3K_RUN(1, 0) Q3K_RUN(1, 1) Q3K_RUN(1, 2) Q3K_RUN(1, 3)
        const __m256i sc16 = _mm256_cvtepi8_epi16(sv);
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)y[b].bsums)), 2));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(x[b].d) * y[b].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

// ---- BF16 × BF16: widen by shifting into the top half of a float.
static inline AVX2 __m256 load_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline AVX2 float dot_bf16(int n, const uint16_t *x, const uint16_t *y) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm_prefetch((const char *)(x + i) + CK_PREFETCH, _MM_HINT_NTA);
        a0 = _mm256_fmadd_ps(load_bf16x8(x + i), load_bf16x8(y + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16x8(x + i + 8), load_bf16x8(y + i + 8), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += ck_bf16(x[i]) * ck_bf16(y[i]);
    return s;
}

#define DEF_ROWS(NAME, DOT) AVX2 void NAME(CK_ROWS_SIGNATURE) { CK_ROWS_LOOP(DOT) }
DEF_ROWS(ck_rows_q5_0_avx2, dot_q5_0(n, (const blk_q5_0 *)wr, (const blk_q8_0 *)ar, sr))
DEF_ROWS(ck_rows_q4_1_avx2, dot_q4_1(n, (const blk_q4_1 *)wr, (const blk_q8_1 *)ar))
DEF_ROWS(ck_rows_q5_1_avx2, dot_q5_1(n, (const blk_q5_1 *)wr, (const blk_q8_1 *)ar))
DEF_ROWS(ck_rows_iq4_nl_avx2, dot_iq4_nl(n, (const blk_iq4_nl *)wr, (const blk_q8_0 *)ar, sr))
DEF_ROWS(ck_rows_mxfp4_avx2, dot_mxfp4(n, (const blk_mxfp4 *)wr, (const blk_q8_0 *)ar, sr))
DEF_ROWS(ck_rows_iq4_xs_avx2, dot_iq4_xs(n, (const blk_iq4_xs *)wr, (const blk_q8_K *)ar))
DEF_ROWS(ck_rows_q5_K_avx2, dot_q5_K(n, (const blk_q5_K *)wr, (const blk_q8_K *)ar))
DEF_ROWS(ck_rows_q2_K_avx2, dot_q2_K(n, (const blk_q2_K *)wr, (const blk_q8_K *)ar))
DEF_ROWS(ck_rows_q3_K_avx2, dot_q3_K(n, (const blk_q3_K *)wr, (const blk_q8_K *)ar))
DEF_ROWS(ck_rows_bf16_avx2, dot_bf16(n, (const uint16_t *)wr, (const uint16_t *)ar))

#endif
