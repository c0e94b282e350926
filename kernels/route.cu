// Router top-k on the device: gate logits -> per-pass LoRA segment tables (mixture of LoRA
// experts, ARCHITECTURE.md "Router"; model.Route in Go is the reference this must equal).
//
// Why a kernel at all: a routed projection computes its gate logits l = W_g x on the GPU, and
// the expert choice decides which LoRA runs next. Deciding on the host costs a device-to-host
// read and a stream sync per routed projection (7 per layer), which stalls the pipeline far
// longer than the math takes. So the choice stays on the device: this kernel turns every row's
// logits into lp_lora_seg entries, and the unchanged SGMV/BGMV kernel (lora.cu) then runs
// them, reading its segment table from device memory that no host ever wrote.
//
// Why one table of k choices per row, and one LoRA launch: a row mixes up to k experts,
// y[r] += sum_j w_j s_j B_j (A_j x[r]). lora.cu's plain expand adds into its output rows
// without atomics, so within one lp_lora call a row may appear in one segment only; this used
// to mean k "passes" (pass p held every row's p-th choice) and k lp_lora calls, i.e. 2k
// launches per routed projection, which at batch-1 decode is pure launch latency (224 routed
// projections in an 8B model). Now the kernel writes row i's p-th real choice to
// segs[i * passes + p] (row-major, N = 0 where a row has fewer real choices), with its own
// scratch slice (i * passes + p) * t_stride, and lp_lora_routed runs them all in one shrink and
// one expand launch. Its expand gives each (row, column chunk) to one block that adds the row's
// choices in p order, so the sum is the same deterministic out + d0 + d1 + ... the k launches
// (and the host path, model.Route then one LoRA per pass) computed; lora.cu says why that beats
// atomicAdd. The segment count per call is still n * passes, so the segment ring advances
// exactly as before (record and replay bookkeeping unchanged).
//
// Why one thread per row: the work is tiny (k arg-max scans over at most LP_ROUTE_MAX_ROWS
// logits, k <= LP_ROUTE_MAX_K) and the launch is latency-bound whatever we do. A sequential
// scan keeps Route's exact tie rule for free (strict '>' while scanning in index order, so
// equal logits keep the lower index; NaN ranks below every number) where a parallel
// arg-max reduction would have to carry the index through every comparison to be exact.
//
// Why the softmax is in double, like Route: the weights are exp((l - max) / T), renormalised
// over the real experts. A real expert chosen beside a far larger null expert (or at a small T)
// can have (l - max) / T below -104, where float's exp is already 0 (double's only below -745):
// in float it would get weight 0, no delta, where the reference renormalises it to 1. k <= 8
// double exponentials per row cost nothing next to the LoRA launches.
#include "common.cuh"

// better: does logit a rank above b? (the caller scans in index order, so ties keep the first).
__host__ __device__ __forceinline__ bool route_better(float a, float b) {
    if (isnan(b)) return !isnan(a);
    return a > b;
}

// route_row routes row i (of n): l is its gate logits [rows], experts [rows - nulls], segs
// [n][passes] (row-major: a row's choices are adjacent). Host and device both compile it so
// that a host test can check it against Route.
__host__ __device__ inline void route_row(const float* l, int i, int n, int rows, int k, float temperature, int nulls,
                                          const lp_route_expert* experts, lp_lora_seg* segs, int passes, int start,
                                          int t_stride, float* trace, int trace_cols, int layer) {
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
        segs[(size_t)i * passes + p] = sg;
        p++;
    }
    for (; p < passes; p++) {  // fewer real choices than passes: empty segments
        lp_lora_seg sg = {};
        sg.start = start + i;  // lp_lora_routed takes a row's output row from its first segment
        segs[(size_t)i * passes + p] = sg;
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

// One thread per row.
__global__ void route_segs_kernel(const float* __restrict__ logits, int n, int rows, int k, float temperature, int nulls,
                                  const lp_route_expert* __restrict__ experts, lp_lora_seg* segs, int passes, int start,
                                  int t_stride, float* trace, int trace_cols, int layer) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    route_row(logits + (size_t)i * rows, i, n, rows, k, temperature, nulls, experts, segs, passes, start, t_stride, trace,
              trace_cols, layer);
}

extern "C" int lp_route_segs(const float* logits, int n, int rows, int k, float temperature, int nulls,
                             const lp_route_expert* experts, lp_lora_seg* segs, int passes, int start, int t_stride,
                             float* trace, int trace_cols, int layer, lp_stream s) {
    if (n <= 0) return 0;
    if (rows <= 0 || rows > LP_ROUTE_MAX_ROWS || k < 1 || k > LP_ROUTE_MAX_K || k > rows || nulls < 0 || nulls > rows ||
        !(temperature > 0.f) || passes < 0 || passes > k || start < 0 || t_stride < 0 ||
        (long long)n * passes * t_stride > 0x7fffffffLL ||
        (trace && (layer < 0 || layer >= trace_cols)))
        return (int)cudaErrorInvalidValue;
    const int threads = 128;
    route_segs_kernel<<<(n + threads - 1) / threads, threads, 0, as_stream(s)>>>(
        logits, n, rows, k, temperature, nulls, experts, segs, passes, start, t_stride, trace, trace_cols, layer);
    LP_CHECK_LAUNCH();
}
