#ifndef CONCLAVE_CKERNELS_H
#define CONCLAVE_CKERNELS_H

// The hot dot products of Conclave, one C function per weight format × instruction set.
//
// Swift owns the block formats, the reference kernels and the threading (Sources/Kernels); this target holds
// only what Swift cannot make fast: integer SIMD (vpmaddubsw, vpdpbusd) and F16C. Each function is compiled
// for its ISA with a target attribute and chosen at run time, so the binary runs on any x86-64 (and any CPU,
// through the scalar versions).

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Instruction-set levels, each including the ones below it.
enum {
    CK_ISA_SCALAR = 0,
    CK_ISA_AVX2 = 1,   // AVX2 + FMA + F16C
    CK_ISA_VNNI = 2,   // and AVX-512 F/BW/VL + VNNI (256-bit vpdpbusd)
    CK_ISA_LEVELS = 3
};

/// The highest level this CPU runs.
int ck_cpu_isa(void);
/// The level every entry point below uses: ck_cpu_isa(), lowered by CONCLAVE_ISA=scalar|avx2|vnni (an unknown
/// name or a level the CPU lacks is reported on stderr once and ignored).
int ck_active_isa(void);
/// "scalar", "avx2", "vnni".
const char *ck_isa_name(int isa);

/// Computes, for every row r < rows and token t < batch:
///   y[t * y_stride + r] = dot(weight row r, activation row t)
/// w: first weight row; rows are w_stride bytes apart. a: first activation row (quantized to the weight
/// type's activation format), a_stride bytes apart. aux: for Q8_0 activations, two floats per 32-block,
/// its scale d and d·Σqs (from ck_q8_0_aux; aux_stride floats between tokens), so kernels neither convert
/// the activation's f16 scale per row nor sum its values; ignored by other formats. n: values per row.
typedef void (*ck_rows_fn)(int n, const void *w, size_t w_stride, int rows,
                           const void *a, size_t a_stride, const float *aux, size_t aux_stride,
                           int batch, float *y, size_t y_stride);

/// y[i] += Σ_{j<rows} w[j] · row_j[i], rows `stride` bytes apart, each value dequantized first.
typedef void (*ck_wsum_fn)(int rows, int n, const float *w, const void *x, size_t stride, float *y);
/// n floats to the type's blocks at y; for Q8_0 also aux as ck_q8_0_aux fills it (NULL for other types).
typedef void (*ck_quantize_fn)(int n, const float *x, void *y, float *aux);
typedef void (*ck_to_f32_fn)(int n, const void *x, float *y);
typedef float (*ck_dot_f32_fn)(int n, const float *x, const void *y);
typedef void (*ck_axpy_fn)(int n, float a, const void *x, float *y);
/// Packs eight rows (`row_stride` bytes apart, `nb` blocks each) into `dst` (the same number of bytes).
typedef void (*ck_pack_fn)(const void *src, size_t row_stride, int nb, void *dst);

/// What runs one ggml type at one level (NULL: nothing at or below that level). `rows` takes the type's
/// activation format; `rows_x8` takes weights packed in groups of eight rows by `pack_x8` (always a pair);
/// `weighted_sum` is attention's sum over cached values of the type; `quantize`/`to_f32`/`dot_f32`/`axpy` are
/// the conversions and vector operations of an activation or cache format.
typedef struct {
    ck_rows_fn rows;
    ck_rows_fn rows_x8;
    ck_pack_fn pack_x8;
    ck_wsum_fn weighted_sum;
    ck_quantize_fn quantize;
    ck_to_f32_fn to_f32;
    ck_dot_f32_fn dot_f32;
    ck_axpy_fn axpy;
} ck_type_kernels;

/// The kernels of ggml type id `type` at level `isa` (CK_ISA_*), each the best written at or below that level.
ck_type_kernels ck_kernels(int type, int isa);
/// Shorthand for ck_kernels(type, isa).rows.
ck_rows_fn ck_rows_kernel(int type, int isa);
void ck_q4_0_x8_pack(const void *src, size_t row_stride, int nb, void *dst);
void ck_q8_0_x8_pack(const void *src, size_t row_stride, int nb, void *dst);

/// For each 32-block of a Q8_0 row of n values: out[2b] = d, out[2b+1] = d·Σqs (2·n/32 floats).
void ck_q8_0_aux(int n, const void *a, float *out);

/// The entry points below run at ck_active_isa().
///
/// Quantizes n floats to Q8_0 blocks at y and fills aux as ck_q8_0_aux does, in one pass. Returns 0 (and does
/// nothing) below AVX2, where the caller uses the Swift reference.
int ck_quantize_q8_0(int n, const float *x, void *y, float *aux);

/// Half-precision conversions (round to nearest even) and the f16 vector operations of attention.
void ck_f32_to_f16(int n, const float *x, uint16_t *y);
/// The portable conversion used on CPUs without F16C (exposed so tests can check it on any CPU).
void ck_f32_to_f16_portable(int n, const float *x, uint16_t *y);
void ck_f16_to_f32(int n, const uint16_t *x, float *y);
float ck_dot_f32_f16(int n, const float *x, const uint16_t *y);
void ck_axpy_f16(int n, float a, const uint16_t *x, float *y);
/// y[i] += Σ_{j<rows} w[j] · x[j·stride + i] for i < n: attention's weighted sum of cached f16 values, bit for bit
/// the axpy of each row in order.
void ck_weighted_sum_f16(int rows, int n, const float *w, const uint16_t *x, size_t stride, float *y);
/// The same over Q8_0 (ggml type 8) or Q4_0 (2) rows `stride` bytes apart, each value dequantized (d·q) first.
/// Returns 0 (and does nothing) where there is no such kernel; the caller then dequantizes row by row.
int ck_weighted_sum_quant(int type, int rows, int n, const float *w, const void *x, size_t stride, float *y);

/// Attention of one query row's `g` heads that share a KV head (g ≤ 64, head width d a multiple of 8) over `n`
/// cached f16 positions, in one pass: s_hj = scale · (q_h rounded to f16) · k_j, p_h = softmax(s_h with the
/// head's sink, if `sinks`), out_h = Σ_j p_hj · v_j. q_h is at q + h·q_stride, k_j at k + j·k_stride (and v_j
/// likewise, in elements), out_h at out + h·out_stride. `work` holds ck_attend_f16_work(g, d, n) floats.
/// With `round_weights`, the normalised weights are rounded to f16 before they meet the values (ggml's K·Q·V
/// without flash attention); without, the values are summed with the unnormalised weights and scaled once (its
/// flash attention).
/// Returns 0 (and does nothing) below AVX2 or for a shape it does not take; the caller then runs the
/// per-head path.
int ck_attend_f16(int g, int d, int n, const float *q, size_t q_stride, const uint16_t *k, size_t k_stride,
                  const uint16_t *v, size_t v_stride, float scale, const float *sinks, int round_weights, float *work, float *out,
                  size_t out_stride);
size_t ck_attend_f16_work(int g, int d, int n);

/// Reads `bytes` bytes from `p` with 32-byte aligned loads, returning a checksum so the loads
/// are not optimised away (memory bandwidth measurement).
uint64_t ck_stream_read(const void *p, size_t bytes);

// Raises glibc's mmap and trim thresholds to `bytes` (ScratchMemory.keepFreedScratch).
void ck_keep_freed_scratch(int bytes);

#ifdef __cplusplus
}
#endif

#endif
