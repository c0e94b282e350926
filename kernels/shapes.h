// The shapes the kernels support, in one place. Launchers reject anything else with
// cudaErrorInvalidValue; the Go backend checks the same limits before a model is loaded.
#ifndef LORAPLEX_SHAPES_H
#define LORAPLEX_SHAPES_H

#define LP_MAX_HEAD_DIM 256   // attention keeps a head's slice in registers: 8 floats per lane
#define LP_MAX_LORA_RANK 256  // shrink writes one scratch row of at most this many values
#define LP_ATTN_WARPS 4       // warps of a prefill attention block (query rows per warp = 32 / this)
#define LP_DECODE_SPLITS 8    // decode split-K, fill rule: most chunks per (row, head) (attention.cu)
#define LP_DECODE_MAX_SPLITS 64     // decode split-K: most chunks per (row, head) any rule may ask for
#define LP_DECODE_DEPTH 32          // decode split-K, context and grouped fill rules: most chunks with LORAPLEX_DECODE_DEEP=off
#define LP_DECODE_SPLIT_CHUNK 128   // decode split-K, context rule: fewest positions per chunk
#define LP_GQ_MAX_GROUP 8     // grouped decode attention: most query heads per kv head (G x 8 accumulators a thread)
#define LP_GQ_FILL_CHUNK 128  // grouped decode attention, fill rule: fewest positions per chunk (cuda/attention.go: decodeDeepDefault says why)
#define LP_PREFILL_MAX_SPLITS 16   // tensor-core prefill split-K: most key chunks per (tile, head) (attention_prefill_mma.cu)
#define LP_PREFILL_SPLIT_KEYS 128  // tensor-core prefill split-K: fewest keys per chunk
#define LP_ROUTE_MAX_ROWS 64  // router gate rows (experts + nulls): a 64-bit mask marks the chosen
#define LP_ROUTE_MAX_K 8      // router top-k: a thread keeps the selection and its weights in arrays this long;
                              // the routed expand keeps a row's k segments and intermediates in shared memory
#define LP_SKINNY_MAX_COLS 64   // skinny product (gemm_skinny.cu): most outputs, a router gate's rows (LP_ROUTE_MAX_ROWS)
#define LP_SKINNY_MAX_ROWS 256  // and most rows: a decode batch (cuBLAS keeps prefill chunks)
#define LP_ROUTE_EM_ROWS 4            // choices of one (pass, expert) a block of the expert-major launches takes at most
#define LP_ROUTE_EM_MAX_LOGITS 4096   // gate logits (rows x gate rows) the expert-major plan stages in shared memory (more: read in place)
#define LP_ROUTE_EM_MAX_CHOICES 1024  // rows x passes of one expert-major routed call (lp_route_lora_group_em: its plan's choices in
                                      // shared memory; decode batches: a prefill chunk's choices would queue on few blocks)
#define LP_LORA_ROUTED_MAX_ROWS 65535  // rows of one lp_lora_routed call (rows * k * rank stays an int offset)

static inline int lp_head_dim_ok(int d) { return d > 0 && d % 2 == 0 && d <= LP_MAX_HEAD_DIM; }
// The grouped decode kernel reads a head's slice in 16-byte vectors and keeps G x 8 accumulators.
static inline int lp_attention_grouped_ok(int heads, int kv_heads, int d) {
    return kv_heads > 0 && heads % kv_heads == 0 && heads / kv_heads <= LP_GQ_MAX_GROUP && d > 0 && d % 16 == 0 &&
           d <= LP_MAX_HEAD_DIM;
}

#endif
