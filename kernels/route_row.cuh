// route_row: one row's top-k routing into its LoRA segments (model.Route's semantics), shared
// by the route kernel (route.cu, which says why it is computed this way) and the routed wide
// shrink that routes its own row (lora.cu, LORAPLEX_ROUTED_FUSED).
#pragma once
#include "common.cuh"

// route_args_ok checks the routing arguments of n rows that route_row is run on, for both
// launchers (lp_route_segs, lp_route_lora_wide): gate rows and k within the kernels' limits,
// k <= rows, nulls and passes within them, a positive temperature, the segment table's offsets
// within int range, the trace's layer within its columns.
static inline bool route_args_ok(int n, int rows, int k, float temperature, int nulls, int passes, int start, int seg_stride,
                                 const float* trace, int trace_cols, int layer) {
    return rows > 0 && rows <= LP_ROUTE_MAX_ROWS && k >= 1 && k <= LP_ROUTE_MAX_K && k <= rows && nulls >= 0 &&
           nulls <= rows && temperature > 0.f && passes >= 0 && passes <= k && start >= 0 && seg_stride >= 0 &&
           (long long)n * passes * seg_stride <= 0x7fffffffLL && (!trace || (layer >= 0 && layer < trace_cols));
}

// route_stage: a routing block's shared copy of its row's gate logits and of the expert table.
struct route_stage {
    float l[LP_ROUTE_MAX_ROWS];
    lp_route_expert experts[LP_ROUTE_MAX_ROWS];
};

// route_staged points l (a row's rows logits) and experts (rows - nulls entries) at the block's
// shared copies in st when staged, which every thread of the block helps fill (all must reach
// it); else it leaves them in global memory. route_row's scans read a logit up to k + 1 times,
// one after another (a top-2 of 28 makes ~60 dependent reads), then each choice's expert, and
// the rest of the block waits on them: from L2 each is a round trip of hundreds of cycles, from
// shared memory a few. The same values either way, so the same routing to the bit.
__device__ __forceinline__ void route_staged(const float*& l, const lp_route_expert*& experts, int rows, int nulls, bool staged,
                                             route_stage& st) {
    if (!staged) return;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        st.l[r] = l[r];
        if (r < rows - nulls) st.experts[r] = experts[r];
    }
    __syncthreads();
    l = st.l, experts = st.experts;
}

// better: does logit a rank above b? (the caller scans in index order, so ties keep the first).
__device__ __forceinline__ bool route_better(float a, float b) {
    if (isnan(b)) return !isnan(a);
    return a > b;
}

// route_row routes row i: l is its gate logits [rows], experts [rows - nulls], row_segs
// [passes] the row's segments (segs + i * passes in the row-major table; a block's shared copy
// in the routed shrink that routes its own row, lora.cu). trace may be NULL; chosen (may be
// NULL) gets each pass's expert index (lp_route_fold_expand finds its shrink by it).
__device__ inline void route_row(const float* l, int i, int rows, int k, float temperature, int nulls,
                                          const lp_route_expert* experts, lp_lora_seg* row_segs, int passes, int start,
                                          int t_stride, float* trace, int trace_cols, int layer, int* chosen = nullptr) {
    const int real = rows - nulls;

    // I = the k largest logits by repeated arg-max; rows <= 64, so a bit mask marks the taken.
    int idx[LP_ROUTE_MAX_K];
    unsigned long long taken = 0ull;
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = 0.f;
        for (int r = 0; r < rows; r++) {
            if ((taken >> r) & 1ull) continue;
            const float v = l[r];
            if (best < 0 || route_better(v, bv)) best = r, bv = v;
        }
        idx[j] = best;
        taken |= 1ull << best;
    }

    // w = softmax(l[I] / T) over all of I, nulls included; l[idx[0]] is the maximum. A NaN
    // exponent (NaN logits, inf - inf) counts as 0, as in Route.
    const double m = l[idx[0]];
    double e[LP_ROUTE_MAX_K];
    double sum_all = 0.0;
    for (int j = 0; j < k; j++) {
        double v = exp(((double)l[idx[j]] - m) / (double)temperature);
        if (isnan(v)) v = 0.0;
        e[j] = v;
        sum_all += v;
    }
    // Null experts are dropped and the real ones renormalised among themselves.
    double sum_real = 0.0;
    int n_real = 0;
    for (int j = 0; j < k; j++) {
        if (idx[j] < real) {
            sum_real += e[j] / sum_all;
            n_real++;
        }
    }

    // The p-th real choice (descending logit order) goes to pass p.
    int p = 0;
    for (int j = 0; j < k && p < passes; j++) {
        if (idx[j] >= real) continue;
        float w = sum_real > 0.0 ? (float)((e[j] / sum_all) / sum_real) : 0.f;  // NaN sums give 0, as in Route
        if (n_real == 1 && sum_real > 0.0) w = 1.f;                             // exactly 1: k = 1 or one real expert
        const lp_route_expert ex = experts[idx[j]];
        lp_lora_seg sg;
        sg.a = ex.a;
        sg.b = ex.b;
        sg.start = start + i;
        // An expert without a LoRA on this projection (rank 0) adds nothing, and its weight is
        // not given to the others; neither is a zero weight's row.
        sg.n = (ex.rank > 0 && w != 0.f) ? 1 : 0;
        sg.rank = ex.rank;
        sg.t_off = (i * passes + p) * t_stride;
        sg.scale = w * ex.scale;
        row_segs[p] = sg;
        if (chosen) chosen[p] = idx[j];
        p++;
    }
    for (; p < passes; p++) {  // fewer real choices than passes: empty segments
        lp_lora_seg sg = {};
        sg.start = start + i;  // lp_lora_routed takes a row's output row from its first segment
        row_segs[p] = sg;
    }

    if (trace) {
        float id = -1.f;  // top-1 real expert, -1 when every selected row is a null expert
        for (int j = 0; j < k; j++)
            if (idx[j] < real) {
                id = (float)experts[idx[j]].id;
                break;
            }
        trace[(size_t)(start + i) * trace_cols + layer] = id;
    }
}
