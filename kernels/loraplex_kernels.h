// loraplex CUDA kernels: the C interface the Go cuda package calls through cgo.
//
// Every function returns a cudaError_t value as int (0 = success) and knows nothing about Go.
// Tensors are row-major. Activations are float32; weight matrices, the KV cache and LoRA
// A/B matrices are bfloat16 (uint16_t bits here); norm weights and biases are float32.
// Launchers check the shapes they support (declared in shapes.h) and return
// cudaErrorInvalidValue for anything else; the Go side checks shapes before calling too.
//
// This header (with the limits of shapes.h, which it includes) is the whole C ABI between Go and
// the kernels: every function, struct and limit the Go side uses is declared here, none in a cgo
// preamble, and Go reads the limits as C.LP_* rather than copying the numbers.
#ifndef LORAPLEX_KERNELS_H
#define LORAPLEX_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "shapes.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void* lp_stream;

// pdl: the launchers that take it (the norms, the biases, the row gather, RoPE + KV store,
// decode attention; every step's, though batch-1 decode is what it is for) launch with
// programmatic dependent launch when it
// is 1 (common.cuh has the mechanism and its rules), as before when it is 0. gemv.cu's batch-1
// products take LP_GEMV_* flags instead (opts, below). Programmatic dependent launch needs an
// sm_90+ device; the caller checks (cuda/fused.go).

// runtime.cu: devices, memory, streams (thin wrappers so Go links no CUDA headers' inlines).
// (Go discovers devices and reads their properties and free memory through the driver API,
// gorgonia.org/cu; lp_device_count, lp_device_props and lp_mem_info are what cudart reports, for
// the tests that check the two agree.)
int lp_device_count(int* n);
int lp_set_device(int dev);
int lp_mem_info(size_t* free_bytes, size_t* total_bytes);
int lp_malloc(void** p, size_t bytes);
int lp_free(void* p);
int lp_malloc_host(void** p, size_t bytes);
int lp_free_host(void* p);
int lp_memset(void* p, int value, size_t bytes, lp_stream s);
int lp_memcpy_htod(void* dst, const void* src, size_t bytes, lp_stream s);
int lp_memcpy_dtoh(void* dst, const void* src, size_t bytes, lp_stream s);
int lp_memcpy_dtod(void* dst, const void* src, size_t bytes, lp_stream s);
int lp_stream_create(lp_stream* s);
int lp_stream_destroy(lp_stream s);
int lp_stream_sync(lp_stream s);
// Events order one stream's work after another's (the forked products' lanes, cuda/fork.go):
// lp_event_record marks what s has queued so far; lp_stream_wait makes s wait for the work the
// event's latest record marked. Inside a capture both become graph edges, so a recorded step
// keeps the same fork and join. Events are made without timing (cudaEventDisableTiming).
typedef void* lp_event;
// The forked products' side streams (cuda/fork.go), and so the most events a launcher that
// waits on them takes (lp_route_group's joins).
#define LP_FORK_LANES 3
int lp_event_create(lp_event* e);
int lp_event_record(lp_event e, lp_stream s);
int lp_stream_wait(lp_stream s, lp_event e);
int lp_last_error(void);
const char* lp_error_string(int code);
// What cudart reports about a device (cudaGetDeviceProperties): its name (NUL-terminated,
// truncated to name_len), compute capability, SM count and memory.
int lp_device_props(int dev, char* name, int name_len, int* major, int* minor, int* sms, size_t* total_bytes);

// upload.cu: stream-ordered allocation for adapter slabs (cudaMallocAsync / cudaFreeAsync), where
// the device supports memory pools (*yes = 1).
int lp_mem_pools_supported(int dev, int* yes);
int lp_malloc_async(void** p, size_t bytes, lp_stream s);
int lp_free_async(void* p, lp_stream s);

// dequant.cu: decode lorapack q8 / q4 streams into bf16 on the device. lp_dequant decodes
// ntensors tensors described by descs (device memory); maxn is the largest n.
typedef struct lp_dequant_desc {
    uint64_t src;    // payload: ceil(n/group) bf16 maxima, then the codes
    uint64_t dst;    // n bf16 values
    uint64_t err;    // an int32 set to 1 when the payload is corrupt
    uint32_t n;
    uint32_t group;  // a power of two, 16..128
    uint32_t q4;     // 1: q4 (Q = 7, nibbles), 0: q8 (Q = 127, bytes)
    uint32_t pad;
} lp_dequant_desc;
int lp_dequant(const lp_dequant_desc* descs, int ntensors, unsigned int maxn, lp_stream s);

// gemm.cu: C[n, m] (+)= alpha * X[n, k] · W[m, k]ᵀ with bf16 X and W, fp32 accumulate and C.
int lp_cublas_create(void** handle, lp_stream s);
int lp_cublas_destroy(void* handle);
int lp_gemm_bf16(void* handle, int n, int m, int k, const uint16_t* x, const uint16_t* w, float* c, float alpha, float beta);
// The products of one x by batch weights [m, k] w_stride elements apart into outputs [n, m]
// c_stride floats apart (alpha 1, beta 0), one strided-batched cuBLAS call: a routed layer's
// gates of one input (gemm.cu says why).
int lp_gemm_bf16_batched(void* handle, int n, int m, int k, const uint16_t* x, const uint16_t* w, long long w_stride, float* c,
                         long long c_stride, int batch);
// The batch-invariant product of deterministic mode on cuBLAS: y[n, m] = alpha · x · Wᵀ + beta ·
// y for 1 <= n <= LP_GEMM_PAD_ROWS, as one cublasGemmEx of exactly LP_GEMM_PAD_ROWS rows into
// scratch (LP_GEMM_PAD_ROWS · m floats) whose first n rows are then stored into y (straight
// into y for n = LP_GEMM_PAD_ROWS, alpha 1, beta 0 and y 256-byte aligned). x holds
// LP_GEMM_PAD_ROWS rows (rows past n are read, never stored); callers pass the same x and
// scratch buffers for every chunk (gemm.cu says why).
#define LP_GEMM_PAD_ROWS 64
int lp_gemm_padded_bf16(void* handle, int n, int m, int k, const uint16_t* x, const uint16_t* w, float* y, float* scratch,
                        float alpha, float beta, lp_stream s);

// graph.cu: record a stream's launches into a CUDA graph and replay it.
int lp_capture_begin(lp_stream s);
int lp_capture_end(lp_stream s, int keep, void** exec);
int lp_graph_launch(void* exec, lp_stream s);
int lp_graph_destroy(void* exec);
int lp_cublas_set_workspace(void* handle, void* ws, size_t bytes);

// gemv.cu: the same product for n <= LP_GEMV_MAX_ROWS rows with fp32 x (decode), streaming
// W at memory bandwidth. Needs k % 8 == 0 and 16-byte aligned x and W. opts (here and in the
// four launchers below; 0 launches as before) is a set of flags: LP_GEMV_PDL launches with
// programmatic dependent launch; LP_GEMV_PREFETCH, with LP_GEMV_PDL, also has every warp
// prefetch the rest of its weight rows into L2 before it waits (for weights the caller knows
// fit there); LP_GEMV_DEEP keeps twice the weight loads in flight per lane at one row, bitwise
// the same results; LP_GEMV_STREAM loads the weights without allocating them in L1, bitwise the
// same results; LP_GEMV_STAGE has the norm-fused launchers' one-row launches compute the normed
// input once a block into shared memory (gemv.cu: within TestNormGEMV's bound, not bitwise);
// LP_GEMV_STAGE_PAIR, with it, gives each warp of a staged parts launch two adjacent columns,
// bitwise the same results.
#define LP_GEMV_MAX_ROWS 8
#define LP_GEMV_PDL 1
#define LP_GEMV_PREFETCH 2
#define LP_GEMV_DEEP 4
#define LP_GEMV_STREAM 8
#define LP_GEMV_STAGE 16
#define LP_GEMV_STAGE_PAIR 32
int lp_gemv_bf16(int n, int m, int k, const float* x, const uint16_t* w, float* y, float alpha, float beta, int opts,
                 lp_stream s);
// The gate and up products and SwiGLU in one launch for the same rows: act[n, m] =
// silu(x · Wgᵀ) * (x · Wuᵀ), Wg and Wu [m, k]; the same alignment rules.
int lp_gemv_swiglu_bf16(int n, int m, int k, const float* x, const uint16_t* wg, const uint16_t* wu, float* act, int opts,
                        lp_stream s);
// The products of one x by up to LP_GEMV_PARTS matrices in one launch (q/k/v, and in routed
// steps their routers' gates beside them: model.MaxSharedProducts): part g computes
// y[g] [n, m_g] = x · w[g]ᵀ, its m_g = end[g] - end[g-1] (end[-1] = 0) columns being the
// launch's columns [end[g-1], end[g]); the same alignment rules. Where wsrc[g] is set (and
// w[g] is not), part g's weights are at the address stored at wsrc[g] in device memory, read by
// the kernel: a LoRA segment's A factor (wsrc[g] = &table[i].a of an lp_lora_seg table), so a
// batch-1 step's shrink rides its base products' launch and a recorded step, whose segment
// tables are rewritten before each replay, serves whichever adapter the step has (the caller
// guarantees the address is 16-byte aligned). Deterministic mode's parts take no wsrc.
// A router's expert table (route.cu, lora.cu; one entry per real gate row):
typedef struct {
    const uint16_t* a; // [rank, in] bf16
    const uint16_t* b; // [out, rank] bf16
    int rank;          // 0: this expert does not adapt the projection
    int id;            // the expert's index in the router's expert list (for the trace)
    float scale;       // the expert's PEFT scale; the gate weight multiplies it
} lp_route_expert;
// Where wtab[g] is set (w[g] and wsrc[g] not), part g is every expert's shrink of a router's
// table, t_rank[g] columns an expert: column e * t_rank[g] + r is x · A_e[r], 0 where r is past
// expert e's rank (a routed batch-1 step's shrinks ride its base products: lp_route_fold).
// LP_GEMV_PARTS covers q/k/v, their three gates and three such tables.
#define LP_GEMV_PARTS 9
typedef struct {
    const uint16_t* w[LP_GEMV_PARTS];
    const uint16_t* const* wsrc[LP_GEMV_PARTS];
    const lp_route_expert* wtab[LP_GEMV_PARTS];
    int t_rank[LP_GEMV_PARTS];
    float* y[LP_GEMV_PARTS];
    int end[LP_GEMV_PARTS];
    int parts;
} lp_gemv_parts;
int lp_gemv_parts_bf16(int n, int k, const float* x, lp_gemv_parts parts, int opts, lp_stream s);
// gemm_skinny.cu: y[n, m] = X[n, k] · W[m, k]ᵀ, one launch, for m <= LP_SKINNY_MAX_COLS and
// n <= LP_SKINNY_MAX_ROWS (a router gate at a decode batch), k % 8 == 0, X and W 16-byte aligned.
int lp_gemm_skinny_bf16(float* y, const uint16_t* x, const uint16_t* w, int n, int m, int k, lp_stream s);
// The same for the parts of p (w and y only, each of 1..LP_SKINNY_MAX_COLS columns) in one
// launch over X in bf16: the gates of projections that share an input.
int lp_gemm_skinny_parts_bf16(const uint16_t* x, lp_gemv_parts p, int n, int k, lp_stream s);
// The same products of h = rmsnorm(x + delta) · norm_w (x alone when delta is NULL) without h
// being stored: lp_add_rmsnorm (or lp_rmsnorm) followed by lp_gemv_parts_bf16 or
// lp_gemv_swiglu_bf16 of h, up to rounding (gemv.cu bounds it). With delta, x + delta is written
// to resid (NULL without delta), which must overlap neither x nor delta; x and delta are not
// written. The same row and alignment rules, also for delta, resid and norm_w.
int lp_norm_gemv_parts_bf16(int n, int k, const float* x, const float* delta, float* resid, const float* norm_w, float eps,
                            lp_gemv_parts parts, int opts, lp_stream s);
// Whether a norm-fused launch of n rows of width k under opts takes the staged kernels
// (LP_GEMV_STAGE; gemv.cu's rule, for tests that must know which kernels they hold to account).
int lp_norm_gemv_staged(int n, int k, int opts);
int lp_norm_gemv_swiglu_bf16(int n, int m, int k, const float* x, const float* delta, float* resid, const float* norm_w,
                             float eps, const uint16_t* wg, const uint16_t* wu, float* act, int opts, lp_stream s);
// The same product for any number of rows, batch-invariant (deterministic mode): tiles of
// LP_GEMV_MAX_ROWS rows, every row computed with the same instructions whatever the batch;
// any k (16-byte vector loads when k % 8 == 0 and x, W are aligned).
int lp_gemv_rows_bf16(int n, int m, int k, const float* x, const uint16_t* w, float* y, float alpha, float beta, lp_stream s);

// convert.cu
int lp_f32_to_bf16(uint16_t* dst, const float* src, size_t n, lp_stream s);
int lp_bf16_to_f32(float* dst, const uint16_t* src, size_t n, lp_stream s);

// embed.cu: out[i, :] = table[ids[i], :]
int lp_embed(float* out, const uint16_t* table, const int32_t* ids, int n, int dim, int vocab, lp_stream s);
// gather.cu: out[i, :] = x[rows[i], :]
int lp_gather_rows(float* out, const float* x, const int32_t* rows, int n, int dim, int pdl, lp_stream s);
// rmsnorm.cu: out = x * rsqrt(mean(x²) + eps) * w per row; the fused form adds delta to x first.
// opts: LP_NORM_PDL launches with programmatic dependent launch; LP_NORM_VEC lets rows whose
// width and buffers allow it take the float4 kernel (rmsnorm.cu says when; the same values
// within fp32 rounding, another order of the squares' sum).
#define LP_NORM_PDL 1
#define LP_NORM_VEC 2
int lp_rmsnorm(float* out, const float* x, const float* w, int rows, int dim, float eps, int opts, lp_stream s);
int lp_add_rmsnorm(float* x, const float* delta, float* out, const float* w, int rows, int dim, float eps, int opts, lp_stream s);
// The norm of x (+ delta when delta is not NULL, the sum written to next, x left as it is) rounded
// to bf16 into out [rows, dim]: bitwise lp_add_rmsnorm (lp_rmsnorm) then lp_f32_to_bf16 with the
// same LP_NORM_VEC on 16-byte-aligned buffers, the input of the cuBLAS products that read it; delta and next are both NULL or
// both not. Where keep is not NULL the normed rows also go there in fp32, bitwise lp_add_rmsnorm's
// out (the input of LoRA shrinks beside those products). It launches without PDL whatever opts says.
int lp_rmsnorm_bf16(const float* x, const float* delta, float* next, uint16_t* out, float* keep, const float* w, int rows, int dim,
                    float eps, int opts, lp_stream s);
// bias.cu: x[i, :] += b
int lp_add_bias(float* x, const float* b, int rows, int dim, int pdl, lp_stream s);
// swiglu.cu: out = silu(gate) * up; the _bf16 form also writes out rounded to bf16 into
// out_bf16 (lp_f32_to_bf16's rounding), the input of the GEMM that reads out next.
int lp_silu_mul(float* out, const float* gate, const float* up, size_t n, lp_stream s);
int lp_silu_mul_bf16(float* out, uint16_t* out_bf16, const float* gate, const float* up, size_t n, lp_stream s);
// rope.cu: rotate-half RoPE on x [n*heads, dim]; table [max_pos, dim] = cos | sin.
int lp_rope(float* x, const int32_t* positions, const float* table, int rows, int heads, int dim, lp_stream s);
// kvcache.cu: write k, v [n, width] (fp32) into bf16 caches at slots.
int lp_store_kv(uint16_t* kcache, uint16_t* vcache, const float* k, const float* v, const int32_t* slots, int n, int width, lp_stream s);
// decode_fused.cu: lp_rope(q [n, heads*head_dim]), lp_rope(k [n, kv_heads*head_dim]) and
// lp_store_kv(k, v) in one launch, leaving q, k and the caches as those three leave them.
int lp_rope_store_kv(float* q, float* k, const float* v, uint16_t* kcache, uint16_t* vcache,
                     const int32_t* positions, const int32_t* slots, const float* table, int n, int heads,
                     int kv_heads, int head_dim, int pdl, lp_stream s);
// attention.cu: causal attention over the paged cache for the rows listed in rows[0..n) (decode
// rows). Row r belongs to sequence row_seq[r]; that sequence's block table starts at
// page_table[seq_pages[row_seq[r]]]. Split-K: a row attending to V positions splits them into
// min(splits, ceil(V / split_chunk)) chunks (1 <= splits <= LP_DECODE_MAX_SPLITS). kernel is
// LP_ATTN_GROUPED for the kernel that computes a GQA group's heads in one block (one read of K/V
// per row; shapes that lp_attention_grouped_ok in shapes.h accepts), with LP_ATTN_PREFETCH_V
// asking L2 for each tile's values while its keys are scored (attention.cu says why); 0 the
// one-block-per-head kernel.
#define LP_ATTN_GROUPED 1
#define LP_ATTN_PREFETCH_V 2
int lp_attention(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                 const int32_t* positions, const int32_t* rows, const int32_t* row_seq, const int32_t* seq_pages,
                 const int32_t* page_table, int n, int heads, int kv_heads, int head_dim, int page_size, int window,
                 float scale, int splits, int split_chunk, int kernel, float* scratch, int pdl, lp_stream s);
// Scratch floats lp_attention needs for n rows split up to splits ways: partial outputs and
// softmax states.
size_t lp_attention_scratch_floats(int n, int heads, int head_dim, int splits);

// attention_prefill.cu: the same for prefill chunks, one block per tile of up to 32
// consecutive rows of one sequence; tiles[3*i..] = {first row, rows, sequence}.
int lp_attention_prefill(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                         const int32_t* positions, const int32_t* tiles, int num_tiles,
                         const int32_t* seq_pages, const int32_t* page_table, int heads, int kv_heads,
                         int head_dim, int page_size, int window, float scale, lp_stream s);
#define LP_PREFILL_TILE 32
// attention_prefill_mma.cu: the same on the tensor cores (mma.sync bf16, sm_80+) for the head
// dims lp_prefill_mma_ok accepts, in tiles of up to tile_rows rows: LP_PREFILL_MMA_TILE, or
// LP_PREFILL_WIDE_TILE for the head dims lp_prefill_wide_ok accepts (the wide plan,
// LORAPLEX_PREFILL_WIDE); q and the caches 16-byte aligned. Split-K: splits
// (1 .. LP_PREFILL_MAX_SPLITS) cuts each tile's key range into that many runs merged by a second
// launch; splits > 1 needs scratch of lp_attention_scratch_floats(num_tiles * tile_rows, heads,
// head_dim, splits) floats (null is fine with splits = 1).
int lp_attention_prefill_mma(float* out, const float* q, const uint16_t* kcache, const uint16_t* vcache,
                             const int32_t* positions, const int32_t* tiles, int num_tiles, int tile_rows,
                             const int32_t* seq_pages, const int32_t* page_table, int heads, int kv_heads,
                             int head_dim, int page_size, int window, float scale, int splits, float* scratch,
                             lp_stream s);
#define LP_PREFILL_MMA_TILE 64
#define LP_PREFILL_WIDE_TILE 128
static inline int lp_prefill_mma_ok(int head_dim) {
    return head_dim == 64 || head_dim == 80 || head_dim == 128 || head_dim == 256;
}
// The wide plan's warps own 32 rows each; at head dim 256 their accumulators would not fit in registers.
static inline int lp_prefill_wide_ok(int head_dim) { return head_dim == 64 || head_dim == 80 || head_dim == 128; }

// lora.cu: segment-wise LoRA at each adapter's own rank (SGMV; a decode segment is one row, BGMV).
typedef struct {
    const uint16_t* a; // [rank, in] bf16
    const uint16_t* b; // [out, rank] bf16
    int start, n, rank;
    int t_off;        // offset of this segment's [n, rank] intermediate in the scratch buffer
    float scale;
} lp_lora_seg;
// phases: which launches run, LP_LORA_SHRINK | LP_LORA_EXPAND for a whole LoRA (a benchmark
// times them apart: the expand reads the t the last shrink of the same segments wrote).
#define LP_LORA_SHRINK 1
#define LP_LORA_EXPAND 2
int lp_lora(float* out, const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows, int max_rank,
            float* scratch, int in_dim, int out_dim, int phases, lp_stream s);

// lora.cu, grouped: the segments of up to LP_LORA_GROUP projections that read the same x
// (q/k/v, gate/up) in one shrink and one expand launch. segs_device holds group 0's segments,
// then group 1's, ... (group g's end at index end[g], exclusive), their scratch offsets
// disjoint; group g adds into out[g] [rows, out_dim[g]]. Per output element the same arithmetic
// as lp_lora of that group alone. groups > LP_LORA_GROUP is cudaErrorInvalidValue.
#define LP_LORA_GROUP 3
typedef struct {
    float* out[LP_LORA_GROUP];
    int out_dim[LP_LORA_GROUP];
    int end[LP_LORA_GROUP];
    int groups;
} lp_lora_outs;
int lp_lora_group(lp_lora_outs outs, const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows,
                  int max_rank, float* scratch, int in_dim, lp_stream s);

// lora.cu, wide (LORAPLEX_LORA_WIDE): lp_lora and lp_lora_group over kernels that give each
// block all the rank indices of one row's k-slice. The input splits into splits (1 to
// LP_LORA_WIDE_MAX_SPLITS) k-slices; slice s writes its partial [n, rank] intermediates at
// scratch + s * t_stride + t_off, so scratch holds splits * t_stride floats and t_stride is at
// least every segment's t_off + n * rank. The expand adds the partials in order s = 0, 1, ...
// Deterministic (no atomics, fixed order), within rounding of lp_lora (another summation order).
#define LP_LORA_WIDE_MAX_SPLITS 16
int lp_lora_wide(float* out, const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows, int max_rank,
                 float* scratch, int in_dim, int out_dim, int splits, int t_stride, int phases, lp_stream s);
// The gate and up projections' deltas added inside the SwiGLU that reads them
// (LORAPLEX_LORA_SWIGLU, cuda.NormGateUpLoRASwiGLU): the wide shrink of segs_device's
// num_segs segments (gate's [0, gate_end), up's [gate_end, num_segs), each group's rows
// disjoint) over x, then for every row of gate and up [rows, cols] act = silu(gate + Δgate) ·
// (up + Δup), in fp32 and rounded to bf16 into act_bf16 (lp_silu_mul_bf16's outputs); gate
// and up are not written. Per element the expand's arithmetic of lp_lora_group_wide, then
// lp_silu_mul_bf16's.
int lp_lora_swiglu(float* act, uint16_t* act_bf16, const float* gate, const float* up, int rows, int cols, const float* x,
                   const lp_lora_seg* segs_device, int gate_end, int num_segs, int max_rows, int max_rank, float* scratch,
                   int in_dim, int splits, int t_stride, lp_stream s);
// The q, k and v projections' LoRA deltas added inside decode_fused.cu's RoPE + KV store
// (LORAPLEX_LORA_ROPE, cuda.NormQKVLoRARoPE): the wide shrink of segs_device's num_segs segments
// over x (q's [0, q_end), k's [q_end, k_end), v's [k_end, num_segs), each group's rows
// disjoint), then lp_rope_store_kv's work on q + Δq, k + Δk and v + Δv, v written back with its
// deltas. Per element the expand's arithmetic of lp_lora_group_wide, then lp_rope_store_kv's.
int lp_lora_rope_store_kv(float* q, float* k, float* v, uint16_t* kcache, uint16_t* vcache, const int32_t* positions,
                          const int32_t* slots, const float* table, int n, int heads, int kv_heads, int head_dim, const float* x,
                          const lp_lora_seg* segs_device, int q_end, int k_end, int num_segs, int max_rows, int max_rank,
                          float* scratch, int in_dim, int splits, int t_stride, lp_stream s);
int lp_lora_group_wide(lp_lora_outs outs, const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows,
                       int max_rank, float* scratch, int in_dim, int splits, int t_stride, lp_stream s);
// lp_lora_group_wide's expand alone, for intermediates another launch wrote (one split): a
// batch-1 step's shrinks ride its base products' GEMV launch (lp_gemv_parts' wsrc), which
// writes each segment's t at scratch + t_off, and this adds the deltas.
int lp_lora_group_expand(lp_lora_outs outs, const lp_lora_seg* segs_device, int num_segs, int max_rows, float* scratch,
                         lp_stream s);

// lora.cu, routed: rows row-major groups of k one-row segments (segs[i*k + p]: row i's p-th
// choice, all k naming the same output row, N = 0 when absent, disjoint scratch offsets).
// One launch adds each row's k deltas in order p = 0..k-1, deterministically (no atomics).
int lp_lora_routed(float* out, const float* x, const lp_lora_seg* segs_device, int rows, int k, int max_rank,
                   float* scratch, int in_dim, int out_dim, lp_stream s);
// lora.cu, routed wide (LORAPLEX_ROUTED_WIDE): lp_lora_routed with the wide shrink's split-K
// (splits and t_stride as in lp_lora_wide: choice segment sg's partial of slice s at scratch +
// s * t_stride + sg.t_off); the expand adds each choice's partials in split order, then the
// row's choices in order p. Deterministic, within rounding of lp_lora_routed.
int lp_lora_routed_wide(float* out, const float* x, const lp_lora_seg* segs_device, int rows, int k, int max_rank,
                        float* scratch, int in_dim, int out_dim, int splits, int t_stride, lp_stream s);

// route.cu: router top-k on the device (model.Route's semantics). Row i of logits [n, rows]
// picks its experts and writes its p-th real choice as a one-row segment (row start + i, N = 0
// when absent, scratch offset (i * passes + p) * t_stride) to segs[i * passes + p] for
// p < passes; one lp_lora_routed(k = passes) then adds the deltas. experts [rows - nulls] is
// the projection's table (rank 0: no LoRA there). trace (may be NULL) gets the top-1 id at
// [(start + i), layer].
// (lp_route_expert: a projection's expert table, declared with the GEMV parts that read it.)
int lp_route_segs(const float* logits, int n, int rows, int k, float temperature, int nulls,
                  const lp_route_expert* experts, lp_lora_seg* segs, int passes, int start, int t_stride,
                  float* trace, int trace_cols, int layer, lp_stream s);
// lora.cu, routing wide (LORAPLEX_ROUTED_FUSED): lp_route_segs (its arguments in ra; seg_stride
// is its t_stride, at least max_rank) then lp_lora_routed_wide(k = ra.passes) over its n rows,
// in two launches: each shrink block routes its own row, and one block a row writes the row's
// segments (for the expand) and the trace. The same segments, trace and sums as the two calls.
typedef struct {
    const float* logits;  // [n, rows]
    int rows, k, nulls, passes, start, seg_stride;
    float temperature;
    const lp_route_expert* experts;
    float* trace;  // may be NULL
    int trace_cols, layer;
    int staged;  // 1: a routing block copies its row's logits to shared memory first (LORAPLEX_ROUTE_STAGED)
} lp_route_args;
int lp_route_lora_wide(lp_route_args ra, float* out, const float* x, lp_lora_seg* segs_device, int n, int max_rank,
                       float* scratch, int in_dim, int out_dim, int splits, int t_stride, lp_stream s);
// lora.cu, routing wide over a group (LORAPLEX_ROUTED_GROUP): lp_route_lora_wide for up to
// LP_LORA_GROUP routed projections that read one x [.., in_dim] (q/k/v, gate/up), each with its
// own routing ra[m] (over the same n rows), segment table segs[m] (n * ra[m].passes entries),
// scratch[m] (splits * t_stride floats, at least n * passes * seg_stride) and output out[m]
// [.., out_dim[m]], in one shrink and one expand launch. The same segments and trace as one
// lp_route_lora_wide per member. rows
// (LORAPLEX_ROUTED_ROWS; splits must be 1): one shrink block a row and member, which routes its
// row once and shrinks every choice over the whole input (lora.cu says why). The routing shrinks
// read only x and the logits; the expands, which add into out[m], first make the stream wait on
// joins[0..njoins): the events of the forked products still writing the outputs (cuda/fork.go),
// so the shrinks run beside them.
typedef struct {
    lp_route_args ra[LP_LORA_GROUP];
    lp_lora_seg* segs[LP_LORA_GROUP];
    float* scratch[LP_LORA_GROUP];
    float* out[LP_LORA_GROUP];
    int out_dim[LP_LORA_GROUP];
    int max_rank[LP_LORA_GROUP];
    int members, n;
    lp_event joins[LP_FORK_LANES];
    int njoins;
} lp_route_group;
int lp_route_lora_group_wide(lp_route_group g, const float* x, int in_dim, int splits, int t_stride, int rows, lp_stream s);
// The same routing and deltas expert-major (LORAPLEX_ROUTED_EXPERT_MAJOR: lora.cu says how),
// for n x passes <= LP_ROUTE_EM_MAX_CHOICES, in 2 + passes launches: the members may number 1.
// plan holds members x plan_len ints of device scratch, plan_len at least
// lp_route_em_plan_ints(n, passes, real experts) of every member.
// The same segments and trace; the deltas of the same intermediates bit for bit.
int lp_route_lora_group_em(lp_route_group g, const float* x, int in_dim, int splits, int t_stride, int* plan, int plan_len,
                           lp_stream s);
int lp_route_em_plan_ints(int n, int passes, int experts);
// lora.cu, routed fold (LORAPLEX_ROUTED_FOLD): the routed deltas of up to LP_LORA_GROUP
// projections whose gate logits ([n, rows] at ra[m].logits) and every expert's shrink ([n,
// experts * t_rank[m]] at t[m], lp_gemv_parts' wtab) the base products' launch computed: each
// row routes as route_row does (ra[m]: passes = the real choices, seg_stride and start unused
// but for the trace row start + i) and out[m] [n, out_dim[m]] gets Σ_p w_p s_p B_p t_p.
typedef struct {
    lp_route_args ra[LP_LORA_GROUP];
    const float* t[LP_LORA_GROUP];
    int t_rank[LP_LORA_GROUP];
    float* out[LP_LORA_GROUP];
    int out_dim[LP_LORA_GROUP];
    int members, n;
} lp_route_fold;
int lp_route_fold_expand(lp_route_fold f, lp_stream s);

// sampling.cu: one block per logits row [rows, vocab] (overwritten) chooses the row's token
// with params[row]; model.SampleReference (Go) defines the semantics. words holds every row's
// history entries {token, output count, raw logit (written)} at words[hist], banned entries
// {token, raw logit (written)} at words[banned] and logit_bias entries {token, bias (float
// bits), raw logit (written)} at words[bias]. allowed holds the allowed-token bitmaps of the
// constrained rows (bit i%32 of word i/32 set: token i may be produced; (vocab+31)/32 words
// each): a row's starts at allowed[row.allowed], -1 for an unconstrained row (allowed may then
// be NULL). Logprobs are of the raw logits.
#define LP_SAMPLE_MAX_TOP 20
typedef struct {
    float temperature, top_p, min_p, repetition, presence, frequency, u;
    int top_k;
    int logprobs; // -1 none, 0 chosen token, N <= LP_SAMPLE_MAX_TOP also the top N
    int hist, num_hist, banned, num_banned, bias, num_bias;
    int allowed;  // offset of the row's bitmap in allowed (32-bit words), -1 none
} lp_sample_row;
typedef struct {
    int32_t token;
    float logprob;
} lp_token_logprob;
typedef struct {
    int32_t token;
    float logprob;
    int32_t num_top, pad;
    lp_token_logprob top[LP_SAMPLE_MAX_TOP];
} lp_sample_result;
int lp_sample(float* logits, int rows, int vocab, const lp_sample_row* params, int32_t* words,
              const uint32_t* allowed, lp_sample_result* results, lp_stream s);

// gemm_invariant.cu: the batch-invariant product of deterministic mode on the tensor cores
// (mma.sync bf16, sm_80+): y[n, m] = alpha · x[n, k] · W[m, k]ᵀ + beta · y for any n >= 1, W
// bf16, fp32 accumulate, each output computed by the same mma sequence whatever n is. x is fp32
// (x_bf16 = 0: rounded to bf16 in the kernel) or bf16 (x_bf16 = 1: lp_f32_to_bf16's rounding,
// the same, so both give bitwise the same y). Blocks own LP_GEMM_INVARIANT_COLS output columns;
// shapes lp_gemm_invariant_ok rejects, and x or W not 16-byte aligned, return
// cudaErrorInvalidValue (lp_gemv_rows_bf16 takes those). variants is a set of the flags below,
// each choosing by n alone and each bitwise the same y: LP_GEMM_INVARIANT_SMALL sends n <=
// LP_GEMM_INVARIANT_SMALL_ROWS to the small-n variant (more weight bytes in flight per SM for
// decode at small batches); LP_GEMM_INVARIANT_WIDE sends n > LP_GEMM_INVARIANT_SMALL_ROWS to the
// wide variant (64-column strips, a deeper pipeline: half the L2 reads of x per weight byte), or
// else LP_GEMM_INVARIANT_DEEP to the deep one (the big variant's blocks, a deeper pipeline); a
// GPU without the shared memory they take runs the big variant; 0 runs it for every n.
#define LP_GEMM_INVARIANT_COLS 32
#define LP_GEMM_INVARIANT_SMALL_ROWS 8
#define LP_GEMM_INVARIANT_SMALL 1
#define LP_GEMM_INVARIANT_WIDE 2
#define LP_GEMM_INVARIANT_DEEP 4
static inline int lp_gemm_invariant_ok(int m, int k) {
    return m > 0 && m <= 65535 * LP_GEMM_INVARIANT_COLS && k > 0 && k % 16 == 0;
}
int lp_gemm_invariant_bf16(int n, int m, int k, const void* x, int x_bf16, const uint16_t* w, float* y, float alpha,
                           float beta, int variants, lp_stream s);
// The same for the products of one x by up to LP_GEMV_PARTS matrices in one launch (parts as
// lp_gemv_parts_bf16 takes them; alpha 1, beta 0), each part bitwise what
// lp_gemm_invariant_bf16 gives it; every part's shape must pass lp_gemm_invariant_ok and the
// parts' strips of LP_GEMM_INVARIANT_COLS columns together be at most 65,535.
int lp_gemm_invariant_parts_bf16(int n, int k, const void* x, int x_bf16, lp_gemv_parts parts, int variants,
                                 lp_stream s);

#ifdef __cplusplus
}
#endif
#endif
