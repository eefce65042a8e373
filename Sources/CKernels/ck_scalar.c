// Portable kernels: the fallback on CPUs without AVX2, and a second reference for the SIMD ones.
#include "ck_common.h"

static float dot_f32(int n, const float *x, const float *y) {
    float s = 0; for (int i = 0; i < n; i++) s += x[i] * y[i]; return s;
}
static float dot_f16(int n, const uint16_t *x, const uint16_t *y) {
    float s = 0; for (int i = 0; i < n; i++) s += ck_f16(x[i]) * ck_f16(y[i]); return s;
}
static float dot_q8_0(int n, const blk_q8_0 *x, const blk_q8_0 *y) {
    float s = 0;
    for (int b = 0; b < n / 32; b++) {
        int acc = 0; for (int j = 0; j < 32; j++) acc += x[b].qs[j] * y[b].qs[j];
        s += ck_f16(x[b].d) * ck_f16(y[b].d) * (float)acc;
    }
    return s;
}
static float dot_q4_0(int n, const blk_q4_0 *x, const blk_q8_0 *y) {
    float s = 0;
    for (int b = 0; b < n / 32; b++) {
        int acc = 0;
        for (int j = 0; j < 16; j++) {
            acc += ((x[b].qs[j] & 0xF) - 8) * y[b].qs[j];
            acc += ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + 16];
        }
        s += ck_f16(x[b].d) * ck_f16(y[b].d) * (float)acc;
    }
    return s;
}
static float dot_q4_K(int n, const blk_q4_K *x, const blk_q8_K *y) {
    float s = 0;
    for (int b = 0; b < n / 256; b++) {
        uint8_t sc[8], mn[8];
        ck_q4k_scales(x[b].scales, sc, mn);
        int sumq = 0, summ = 0;
        for (int g = 0; g < 4; g++) {
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                lo += (x[b].qs[32 * g + l] & 0xF) * y[b].qs[64 * g + l];
                hi += (x[b].qs[32 * g + l] >> 4) * y[b].qs[64 * g + 32 + l];
            }
            sumq += lo * sc[2 * g] + hi * sc[2 * g + 1];
        }
        for (int j = 0; j < 8; j++) summ += mn[j] * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        s += y[b].d * (ck_f16(x[b].d) * (float)sumq - ck_f16(x[b].dmin) * (float)summ);
    }
    return s;
}
static float dot_q6_K(int n, const blk_q6_K *x, const blk_q8_K *y) {
    float s = 0;
    for (int b = 0; b < n / 256; b++) {
        int sum = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[b].ql + 64 * h, *qh = x[b].qh + 32 * h;
            const int8_t *q8 = y[b].qs + 128 * h;
            for (int l = 0; l < 32; l++) {
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                const int8_t *sc = x[b].scales + 8 * h + l / 16;
                sum += sc[0] * q1 * q8[l] + sc[2] * q2 * q8[l + 32] + sc[4] * q3 * q8[l + 64] + sc[6] * q4 * q8[l + 96];
            }
        }
        s += ck_f16(x[b].d) * y[b].d * (float)sum;
    }
    return s;
}

void ck_rows_f32_scalar(CK_ROWS_SIGNATURE) { CK_ROWS_LOOP(dot_f32(n, (const float *)wr, (const float *)ar)) }
void ck_rows_f16_scalar(CK_ROWS_SIGNATURE) { CK_ROWS_LOOP(dot_f16(n, (const uint16_t *)wr, (const uint16_t *)ar)) }
void ck_rows_q8_0_scalar(CK_ROWS_SIGNATURE) { CK_ROWS_LOOP(dot_q8_0(n, (const blk_q8_0 *)wr, (const blk_q8_0 *)ar)) }
void ck_rows_q4_0_scalar(CK_ROWS_SIGNATURE) { CK_ROWS_LOOP(dot_q4_0(n, (const blk_q4_0 *)wr, (const blk_q8_0 *)ar)) }
void ck_rows_q4_K_scalar(CK_ROWS_SIGNATURE) { CK_ROWS_LOOP(dot_q4_K(n, (const blk_q4_K *)wr, (const blk_q8_K *)ar)) }
void ck_rows_q6_K_scalar(CK_ROWS_SIGNATURE) { CK_ROWS_LOOP(dot_q6_K(n, (const blk_q6_K *)wr, (const blk_q8_K *)ar)) }

void ck_q8_0_aux(int n, const void *a, float *out) {
    const blk_q8_0 *y = a;
    for (int b = 0; b < n / 32; b++) {
        int s = 0; for (int j = 0; j < 32; j++) s += y[b].qs[j];
        const float d = ck_f16(y[b].d);
        out[2 * b] = d;
        out[2 * b + 1] = d * (float)s;
    }
}
