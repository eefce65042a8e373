// The one dispatch table: for every ggml type and instruction-set level, the kernels that run it.
//
// A cell names what was written for that level; a lookup at level L takes, field by field, the kernel of the
// highest level ≤ L that has one (so a type with only scalar and AVX2 kernels runs AVX2 on a VNNI CPU). Every
// public entry point goes through `ck_active_isa()`, which `CONCLAVE_ISA` lowers, so forcing a level holds for
// matrix products, attention's f16 and quantized-cache sums, activation quantization and the bandwidth probe
// alike. A new type or a new kernel is one cell here and its declaration in ck_common.h.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ck_common.h"

#if defined(__x86_64__) || defined(__i386__)
#define X86(f) f
#else
#define X86(f) 0
#endif

// Adapters from the kernels' natural signatures to the table's uniform ones.
static void f32_to_f16_scalar_q(int n, const float *x, void *y, float *aux) { (void)aux; ck_f32_to_f16_portable(n, x, y); }
static void f16_to_f32_scalar_v(int n, const void *x, float *y) { ck_f16_to_f32_scalar(n, x, y); }
static float dot_f32_f16_scalar_v(int n, const float *x, const void *y) { return ck_dot_f32_f16_scalar(n, x, y); }
static void axpy_f16_scalar_v(int n, float a, const void *x, float *y) { ck_axpy_f16_scalar(n, a, x, y); }
static void wsum_f16_scalar_v(int rows, int n, const float *w, const void *x, size_t stride, float *y) {
    ck_weighted_sum_f16_scalar(rows, n, w, x, stride / 2, y);
}
#if defined(__x86_64__) || defined(__i386__)
static void f32_to_f16_avx2_q(int n, const float *x, void *y, float *aux) { (void)aux; ck_f32_to_f16_avx2(n, x, y); }
static void f16_to_f32_avx2_v(int n, const void *x, float *y) { ck_f16_to_f32_avx2(n, x, y); }
static float dot_f32_f16_avx2_v(int n, const float *x, const void *y) { return ck_dot_f32_f16_avx2(n, x, y); }
static void axpy_f16_avx2_v(int n, float a, const void *x, float *y) { ck_axpy_f16_avx2(n, a, x, y); }
static void wsum_f16_avx2_v(int rows, int n, const float *w, const void *x, size_t stride, float *y) {
    ck_weighted_sum_f16_avx2(rows, n, w, x, stride / 2, y);
}
static void wsum_q8_0_avx2_v(int rows, int n, const float *w, const void *x, size_t stride, float *y) {
    ck_weighted_sum_q8_0_avx2(rows, n, w, x, stride, y);
}
static void wsum_q4_0_avx2_v(int rows, int n, const float *w, const void *x, size_t stride, float *y) {
    ck_weighted_sum_q4_0_avx2(rows, n, w, x, stride, y);
}
#endif

enum { SCALAR = CK_ISA_SCALAR, AVX2 = CK_ISA_AVX2, VNNI = CK_ISA_VNNI, TYPE_SLOTS = 40 };

// [type][isa]. Rows kernels take the type's activation format (Swift's QuantFormat table says which).
static const ck_type_kernels table[TYPE_SLOTS][CK_ISA_LEVELS] = {
    [T_F32] = { [SCALAR] = { .rows = ck_rows_f32_scalar }, [AVX2] = { .rows = X86(ck_rows_f32_avx2) } },
    [T_F16] = {
        [SCALAR] = { .rows = ck_rows_f16_scalar, .quantize = f32_to_f16_scalar_q, .to_f32 = f16_to_f32_scalar_v,
                     .dot_f32 = dot_f32_f16_scalar_v, .axpy = axpy_f16_scalar_v, .weighted_sum = wsum_f16_scalar_v },
        [AVX2] = { .rows = X86(ck_rows_f16_avx2), .quantize = X86(f32_to_f16_avx2_q), .to_f32 = X86(f16_to_f32_avx2_v),
                   .dot_f32 = X86(dot_f32_f16_avx2_v), .axpy = X86(axpy_f16_avx2_v), .weighted_sum = X86(wsum_f16_avx2_v) },
    },
    [T_BF16] = { [AVX2] = { .rows = X86(ck_rows_bf16_avx2) } },
    [T_Q8_0] = {
        [SCALAR] = { .rows = ck_rows_q8_0_scalar },
        [AVX2] = { .rows = X86(ck_rows_q8_0_avx2), .weighted_sum = X86(wsum_q8_0_avx2_v), .quantize = X86(ck_quantize_q8_0_avx2) },
        // vpmaddubsw would saturate on the packed form's 255 × 127 pairs: packed Q8_0 is VNNI only.
        [VNNI] = { .rows = X86(ck_rows_q8_0_vnni), .rows_x8 = X86(ck_rows_q8_0_x8_vnni), .pack_x8 = ck_q8_0_x8_pack },
    },
    [T_Q4_0] = {
        [SCALAR] = { .rows = ck_rows_q4_0_scalar },
        [AVX2] = { .rows = X86(ck_rows_q4_0_r8_avx2), .rows_x8 = X86(ck_rows_q4_0_x8_avx2), .pack_x8 = ck_q4_0_x8_pack,
                   .weighted_sum = X86(wsum_q4_0_avx2_v) },
        [VNNI] = { .rows = X86(ck_rows_q4_0_r8_vnni), .rows_x8 = X86(ck_rows_q4_0_x8_vnni), .pack_x8 = ck_q4_0_x8_pack },
    },
    [T_Q4_1] = { [AVX2] = { .rows = X86(ck_rows_q4_1_avx2) } },
    [T_Q5_0] = { [AVX2] = { .rows = X86(ck_rows_q5_0_avx2) } },
    [T_Q5_1] = { [AVX2] = { .rows = X86(ck_rows_q5_1_avx2) } },
    [T_Q2_K] = { [AVX2] = { .rows = X86(ck_rows_q2_K_avx2) } },
    [T_Q3_K] = { [AVX2] = { .rows = X86(ck_rows_q3_K_avx2) } },
    [T_Q4_K] = { [SCALAR] = { .rows = ck_rows_q4_K_scalar }, [AVX2] = { .rows = X86(ck_rows_q4_K_avx2) } },
    [T_Q5_K] = { [AVX2] = { .rows = X86(ck_rows_q5_K_avx2) } },
    [T_Q6_K] = { [SCALAR] = { .rows = ck_rows_q6_K_scalar }, [AVX2] = { .rows = X86(ck_rows_q6_K_avx2) } },
    [T_IQ4_NL] = { [AVX2] = { .rows = X86(ck_rows_iq4_nl_avx2) } },
    [T_IQ4_XS] = { [AVX2] = { .rows = X86(ck_rows_iq4_xs_avx2) } },
    [T_MXFP4] = { [AVX2] = { .rows = X86(ck_rows_mxfp4_avx2) } },
};

// Each cell resolved once (field by field, the highest level ≤ the cell's that has a kernel), and the level
// in use. Racing first calls compute and store the same values.
static ck_type_kernels resolved[TYPE_SLOTS][CK_ISA_LEVELS];
static int active = -1;

#define TAKE(field) if (!out->field) out->field = table[type][l].field
static void resolve(void) {
    for (int type = 0; type < TYPE_SLOTS; type++)
        for (int isa = 0; isa < CK_ISA_LEVELS; isa++) {
            ck_type_kernels *out = &resolved[type][isa];
            memset(out, 0, sizeof *out);
            for (int l = isa; l >= 0; l--) {
                TAKE(rows); TAKE(weighted_sum); TAKE(quantize); TAKE(to_f32); TAKE(dot_f32); TAKE(axpy);
                // A packed kernel and its packing come as a pair: never one level's packing with another's kernel.
                if (!out->rows_x8 && table[type][l].rows_x8) { out->rows_x8 = table[type][l].rows_x8; out->pack_x8 = table[type][l].pack_x8; }
            }
        }
    const int cpu = ck_cpu_isa();
    int level = cpu;
    const char *env = getenv("CONCLAVE_ISA");
    if (env && *env) {
        int asked = -1;
        for (int l = 0; l < CK_ISA_LEVELS; l++) if (strcmp(env, ck_isa_name(l)) == 0) asked = l;
        if (asked < 0)
            fprintf(stderr, "conclave: CONCLAVE_ISA=%s is not one of scalar, avx2, vnni; using %s, what this CPU has\n", env, ck_isa_name(cpu));
        else if (asked > cpu)
            fprintf(stderr, "conclave: CONCLAVE_ISA=%s but this CPU runs at most %s; using %s\n", env, ck_isa_name(cpu), ck_isa_name(cpu));
        else level = asked;
    }
    __atomic_store_n(&active, level, __ATOMIC_RELEASE);
}

static inline int active_isa(void) {
    int a = __atomic_load_n(&active, __ATOMIC_ACQUIRE);
    if (__builtin_expect(a < 0, 0)) { resolve(); a = __atomic_load_n(&active, __ATOMIC_ACQUIRE); }
    return a;
}

int ck_active_isa(void) { return active_isa(); }

const char *ck_isa_name(int isa) {
    static const char *names[CK_ISA_LEVELS] = { "scalar", "avx2", "vnni" };
    return isa >= 0 && isa < CK_ISA_LEVELS ? names[isa] : "unknown";
}

ck_type_kernels ck_kernels(int type, int isa) {
    active_isa();  // resolves the table
    ck_type_kernels none;
    memset(&none, 0, sizeof none);
    if (type < 0 || type >= TYPE_SLOTS || isa < 0 || isa >= CK_ISA_LEVELS) return none;
    return resolved[type][isa];
}

ck_rows_fn ck_rows_kernel(int type, int isa) { return ck_kernels(type, isa).rows; }

// The entry points Swift calls in its loops: the active level's kernels.
#define ACTIVE(type) (&resolved[type][active_isa()])

void ck_f32_to_f16(int n, const float *x, uint16_t *y) { ACTIVE(T_F16)->quantize(n, x, y, 0); }
void ck_f16_to_f32(int n, const uint16_t *x, float *y) { ACTIVE(T_F16)->to_f32(n, x, y); }
float ck_dot_f32_f16(int n, const float *x, const uint16_t *y) { return ACTIVE(T_F16)->dot_f32(n, x, y); }
void ck_axpy_f16(int n, float a, const uint16_t *x, float *y) { ACTIVE(T_F16)->axpy(n, a, x, y); }
void ck_weighted_sum_f16(int rows, int n, const float *w, const uint16_t *x, size_t stride, float *y) {
    ACTIVE(T_F16)->weighted_sum(rows, n, w, x, stride * 2, y);
}
int ck_weighted_sum_quant(int type, int rows, int n, const float *w, const void *x, size_t stride, float *y) {
    if (type < 0 || type >= TYPE_SLOTS || n % 32 != 0) return 0;
    const ck_wsum_fn f = ACTIVE(type)->weighted_sum;
    if (!f) return 0;
    f(rows, n, w, x, stride, y);
    return 1;
}
int ck_quantize_q8_0(int n, const float *x, void *y, float *aux) {
    const ck_quantize_fn f = ACTIVE(T_Q8_0)->quantize;
    if (!f) return 0;
    f(n, x, y, aux);
    return 1;
}

uint64_t ck_stream_read(const void *p, size_t bytes) {
#if defined(__x86_64__) || defined(__i386__)
    if (active_isa() >= CK_ISA_AVX2) return ck_stream_read_avx2(p, bytes);
#endif
    const uint64_t *q = p;
    uint64_t s = 0;
    for (size_t i = 0; i < bytes / 8; i++) s ^= q[i];
    return s;
}
