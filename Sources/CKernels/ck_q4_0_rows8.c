// Q4_0 × Q8_0 (and packed Q8_0 × Q8_0) with eight weight rows in one register: lane r of every vector belongs
// to weight row r.
//
// The one-row kernel spends, per 32-value block and token, an integer dot, a conversion, a scale product, a
// broadcast and an FMA on one row. Here eight rows' blocks are transposed into four vectors (lane r = four
// bytes of row r), so each instruction after the integer dots serves eight rows: one conversion, one scale
// product and one FMA per block, token and eight rows. The transpose and nibble unpacking are done once per
// block for up to four tokens (prefill and batched experts), the integer dots take the activation bytes as
// 32-bit broadcasts. This is the layout ggml gets by repacking Q4_0 into 8-row interleaved blocks at load time;
// we transpose on the fly instead, so the weights stay in the mmapped file as llama.cpp wrote them.
//
// Every (row, token) result is the same sequence of operations — exact integer block sums, then
// acc += float(sum) · (dx · dy) and corr += dx · (dy · Σy) block after block — whatever its lane, its group of
// rows or its group of tokens, so a token's result does not depend on how it was batched (prefill and decode
// agree bit for bit, and so do workers that batch differently).
#include "ck_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define R8_AVX2 __attribute__((target("avx2,fma,f16c")))
#define R8_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

static inline R8_AVX2 __m256i r8_dot_avx2(__m256i acc, __m256i u, __m256i s) {
    // Nibbles are at most 15, so a pair of products stays far inside int16.
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
static inline R8_VNNI __m256i r8_dot_vnni(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }

static inline int32_t r8_load32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}


// Nibbles of v[0..3] into u[0..7]: u[k], lane r = values 4k..4k+3 of row r (low nibbles are values 0..15,
// high nibbles 16..31).
#define R8_UNPACK                                                                                         \
    __m256i u[8];                                                                                         \
    for (int k = 0; k < 4; k++) {                                                                         \
        u[k] = _mm256_and_si256(v[k], m4);                                                                \
        u[k + 4] = _mm256_and_si256(_mm256_srli_epi16(v[k], 4), m4);                                      \
    }

// Block b for T tokens, given u[0..7] (unsigned, lane r = values 4k..4k+3 of row r) and the eight rows' scales
// dx: exact integer sums, then one FMA per token; corr collects dx · dy · Σy for the offset removed at the end.
#define R8_TOKENS(T, DOT)                                                                                 \
    for (int j = 0; j < T; j++) {                                                                         \
        const blk_q8_0 *y = (const blk_q8_0 *)(a + j * a_stride) + b;                                    \
        __m256i s = _mm256_setzero_si256();                                                               \
        for (int k = 0; k < 8; k++) s = DOT(s, u[k], _mm256_set1_epi32(r8_load32(y->qs + 4 * k)));       \
        const float *yj = ya + j * ya_stride;                                                             \
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, _mm256_set1_ps(yj[2 * b])), acc[j]); \
        corr[j] = _mm256_fmadd_ps(dx, _mm256_set1_ps(yj[2 * b + 1]), corr[j]);                            \
    }

// The T results, with the unsigned offset of the stored quants (8 for Q4_0's nibbles, 128 for packed Q8_0) removed.
#define R8_FINISH(T, OFFSET)                                                                              \
    for (int j = 0; j < T; j++) res[j] = _mm256_sub_ps(acc[j], _mm256_mul_ps(_mm256_set1_ps(OFFSET), corr[j]));

// res[j] (lane r) = row r · token j for T tokens; `x[r]` is row r's first block. The eight rows are one
// contiguous stretch read in eight interleaved streams; each block prefetches the same place `pf` bytes ahead
// (the next group of eight rows), so a group never starts on cold lines.
#define DEF_R8(NAME, ATTR, DOT, T)                                                                        \
    static inline ATTR void NAME(int nb, const blk_q4_0 *const *x, size_t pf, const uint8_t *a, size_t a_stride, \
                                 const float *ya, size_t ya_stride, __m256 *res) {                        \
        const __m256i m4 = _mm256_set1_epi8(0x0F);                                                        \
        __m256 acc[T], corr[T];                                                                           \
        for (int j = 0; j < T; j++) acc[j] = corr[j] = _mm256_setzero_ps();                               \
        for (int b = 0; b < nb; b++) {                                                                    \
            if ((b & 3) == 0)                                                                             \
                for (int r = 0; r < 8; r++) _mm_prefetch((const char *)(x[r] + b) + pf, _MM_HINT_T1);   \
            const __m256i r0 = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)x[4][b].qs), _mm_loadu_si128((const __m128i *)x[0][b].qs)); \
            const __m256i r1 = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)x[5][b].qs), _mm_loadu_si128((const __m128i *)x[1][b].qs)); \
            const __m256i r2 = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)x[6][b].qs), _mm_loadu_si128((const __m128i *)x[2][b].qs)); \
            const __m256i r3 = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)x[7][b].qs), _mm_loadu_si128((const __m128i *)x[3][b].qs)); \
            const __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpacklo_epi32(r2, r3);        \
            const __m256i t2 = _mm256_unpackhi_epi32(r0, r1), t3 = _mm256_unpackhi_epi32(r2, r3);        \
            /* v[k], lane r: bytes 4k..4k+3 of row r (low nibbles: values 4k.., high: values 16+4k..) */   \
            const __m256i v[4] = {_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1),           \
                                  _mm256_unpacklo_epi64(t2, t3), _mm256_unpackhi_epi64(t2, t3)};          \
            R8_UNPACK                                                                                     \
            const __m256 dx = _mm256_cvtph_ps(_mm_setr_epi16((short)x[0][b].d, (short)x[1][b].d, (short)x[2][b].d, \
                (short)x[3][b].d, (short)x[4][b].d, (short)x[5][b].d, (short)x[6][b].d, (short)x[7][b].d)); \
            R8_TOKENS(T, DOT)                                                                             \
        }                                                                                                 \
        R8_FINISH(T, 8)                                                                                   \
    }

// The tokens in groups of up to four through K4..K1, called as K(nb, SRC, PF, tokens, …, res); the first `nr`
// lanes of each result are stored at rows r0… of the token's output.
#define R8_TOKEN_GROUPS(K1, K2, K3, K4, SRC, PF, nr)                                                      \
    for (int t = 0; t < batch;) {                                                                         \
        __m256 res[4];                                                                                    \
        const int m = batch - t < 4 ? batch - t : 4;                                                      \
        const uint8_t *at = (const uint8_t *)a + (size_t)t * a_stride;                                    \
        const float *yt = aux + (size_t)t * aux_stride;                                                   \
        switch (m) {                                                                                      \
        case 4: K4(nb, SRC, PF, at, a_stride, yt, aux_stride, res); break;                                \
        case 3: K3(nb, SRC, PF, at, a_stride, yt, aux_stride, res); break;                                \
        case 2: K2(nb, SRC, PF, at, a_stride, yt, aux_stride, res); break;                                \
        default: K1(nb, SRC, PF, at, a_stride, yt, aux_stride, res); break;                               \
        }                                                                                                 \
        for (int j = 0; j < m; j++) {                                                                     \
            float *dst = y + (size_t)(t + j) * y_stride + r0;                                             \
            if ((nr) == 8) {                                                                              \
                _mm256_storeu_ps(dst, res[j]);                                                            \
            } else {                                                                                      \
                float tmp[8];                                                                             \
                _mm256_storeu_ps(tmp, res[j]);                                                            \
                memcpy(dst, tmp, (size_t)(nr) * sizeof(float));                                           \
            }                                                                                             \
        }                                                                                                 \
        t += m;                                                                                           \
    }

// One kernel per token count 1…4.
#define R8_EACH_T(DEF, P, ATTR, DOT) DEF(P##_1, ATTR, DOT, 1) DEF(P##_2, ATTR, DOT, 2) DEF(P##_3, ATTR, DOT, 3) DEF(P##_4, ATTR, DOT, 4)

#define DEF_R8_ROWS(NAME, ATTR, K1, K2, K3, K4)                                                           \
    ATTR void NAME(CK_ROWS_SIGNATURE) {                                                                   \
        const int nb = n / 32;                                                                            \
        const size_t pf = 8 * w_stride + 1024;                                                                   \
        for (int r0 = 0; r0 < rows; r0 += 8) {                                                            \
            const int nr = rows - r0 < 8 ? rows - r0 : 8;                                                 \
            /* A last group of fewer than eight rows repeats its last row; those lanes are not stored. */ \
            const blk_q4_0 *x[8];                                                                         \
            for (int i = 0; i < 8; i++)                                                                   \
                x[i] = (const blk_q4_0 *)((const uint8_t *)w + (size_t)(r0 + (i < nr ? i : nr - 1)) * w_stride); \
            R8_TOKEN_GROUPS(K1, K2, K3, K4, x, pf, nr)                                                    \
        }                                                                                                 \
    }

R8_EACH_T(DEF_R8, r8_avx2, R8_AVX2, r8_dot_avx2)
R8_EACH_T(DEF_R8, r8_vnni, R8_VNNI, r8_dot_vnni)

DEF_R8_ROWS(ck_rows_q4_0_r8_avx2, R8_AVX2, r8_avx2_1, r8_avx2_2, r8_avx2_3, r8_avx2_4)
DEF_R8_ROWS(ck_rows_q4_0_r8_vnni, R8_VNNI, r8_vnni_1, r8_vnni_2, r8_vnni_3, r8_vnni_4)

// ---- The same products over weights repacked once into groups of eight rows (`ck_q4_0_x8_pack`): per block,
// the eight f16 scales (16 bytes), then v[0..3] as stored vectors (4 × 32 bytes): 144 bytes, eight blocks' worth.
// No transpose and no scale gathering at run time; the operations per (row, token) are the ones above, so the
// results are bit-identical to the unpacked kernel's.

// One packed kernel for both types: BYTES per block of eight rows, LOAD sets u[0..7] from the block at p.
#define DEF_X8(NAME, ATTR, DOT, T, BYTES, LOAD, OFFSET)                                                   \
    static inline ATTR void NAME(int nb, const uint8_t *g, size_t pf, const uint8_t *a, size_t a_stride,  \
                                 const float *ya, size_t ya_stride, __m256 *res) {                        \
        __m256 acc[T], corr[T];                                                                           \
        for (int j = 0; j < T; j++) acc[j] = corr[j] = _mm256_setzero_ps();                               \
        for (int b = 0; b < nb; b++) {                                                                    \
            const uint8_t *p = g + (size_t)b * BYTES;                                                     \
            for (int l = 0; l < (BYTES + 63) / 64; l++) _mm_prefetch((const char *)p + pf + 64 * l, _MM_HINT_T0); \
            const __m256 dx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                       \
            LOAD                                                                                          \
            R8_TOKENS(T, DOT)                                                                             \
        }                                                                                                 \
        R8_FINISH(T, OFFSET)                                                                              \
    }

// Q4_0: four stored vectors of nibbles.
#define X8_LOAD_Q4_0                                                                                      \
    const __m256i m4 = _mm256_set1_epi8(0x0F);                                                            \
    __m256i v[4];                                                                                         \
    for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * k));            \
    R8_UNPACK
#define DEF_X8_Q4_0(NAME, ATTR, DOT, T) DEF_X8(NAME, ATTR, DOT, T, 144, X8_LOAD_Q4_0, 8)

// `w` is the first of `rows` rows (both multiples of eight), packed; group g starts 8 · w_stride bytes after g − 1.
#define DEF_X8_ROWS(NAME, ATTR, K1, K2, K3, K4)                                                           \
    ATTR void NAME(CK_ROWS_SIGNATURE) {                                                                   \
        const int nb = n / 32;                                                                            \
        for (int r0 = 0; r0 + 8 <= rows; r0 += 8) {                                                       \
            const uint8_t *g = (const uint8_t *)w + (size_t)r0 * w_stride;                                \
            R8_TOKEN_GROUPS(K1, K2, K3, K4, g, (size_t)1024, 8)                                           \
        }                                                                                                 \
    }

R8_EACH_T(DEF_X8_Q4_0, x8_avx2, R8_AVX2, r8_dot_avx2)
R8_EACH_T(DEF_X8_Q4_0, x8_vnni, R8_VNNI, r8_dot_vnni)

DEF_X8_ROWS(ck_rows_q4_0_x8_avx2, R8_AVX2, x8_avx2_1, x8_avx2_2, x8_avx2_3, x8_avx2_4)
DEF_X8_ROWS(ck_rows_q4_0_x8_vnni, R8_VNNI, x8_vnni_1, x8_vnni_2, x8_vnni_3, x8_vnni_4)

// ---- Q8_0 × Q8_0 packed the same way (`ck_q8_0_x8_pack`): per block the eight scales, then v[0..7] with lane r
// = bytes 4k..4k+3 of row r, each stored as q + 128 so that vpdpbusd (unsigned × signed) takes them directly;
// 128 · dx · dy · Σy (the activation's Σy is precomputed) is removed at the end, as Q4_0 removes 8 · … . 272
// bytes per block of eight rows. VNNI only: vpmaddubsw would saturate on 255 × 127 pairs.
#define X8_LOAD_Q8_0                                                                                      \
    __m256i u[8];                                                                                         \
    for (int k = 0; k < 8; k++) u[k] = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * k));
#define DEF_X8_Q8_0(NAME, ATTR, DOT, T) DEF_X8(NAME, ATTR, DOT, T, 272, X8_LOAD_Q8_0, 128)

R8_EACH_T(DEF_X8_Q8_0, x8q8_vnni, R8_VNNI, r8_dot_vnni)
DEF_X8_ROWS(ck_rows_q8_0_x8_vnni, R8_VNNI, x8q8_vnni_1, x8q8_vnni_2, x8q8_vnni_3, x8q8_vnni_4)

#endif

// Plain C: packing needs no ISA (it runs once, at load).
void ck_q4_0_x8_pack(const void *src, size_t row_stride, int nb, void *dst) {
    uint8_t *out = dst;
    for (int b = 0; b < nb; b++) {
        uint8_t *o = out + (size_t)b * 144;
        for (int r = 0; r < 8; r++) {
            const blk_q4_0 *x = (const blk_q4_0 *)((const uint8_t *)src + (size_t)r * row_stride) + b;
            memcpy(o + 2 * r, &x->d, 2);
            for (int k = 0; k < 4; k++) memcpy(o + 16 + 32 * k + 4 * r, x->qs + 4 * k, 4);
        }
    }
}

void ck_q8_0_x8_pack(const void *src, size_t row_stride, int nb, void *dst) {
    uint8_t *out = dst;
    for (int b = 0; b < nb; b++) {
        uint8_t *o = out + (size_t)b * 272;
        for (int r = 0; r < 8; r++) {
            const blk_q8_0 *x = (const blk_q8_0 *)((const uint8_t *)src + (size_t)r * row_stride) + b;
            memcpy(o + 2 * r, &x->d, 2);
            for (int k = 0; k < 8; k++)
                for (int i = 0; i < 4; i++) o[16 + 32 * k + 4 * r + i] = (uint8_t)((uint8_t)x->qs[4 * k + i] ^ 0x80);
        }
    }
}
