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
// With LORAPLEX_ROUTED_FUSED, lora.cu's routing shrink runs route_row itself and this kernel
// serves only projections no expert adapts (their trace) and the unfused routed kernels.
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
#include "route_row.cuh"

// One thread per row.
__global__ void route_segs_kernel(const float* __restrict__ logits, int n, int rows, int k, float temperature, int nulls,
                                  const lp_route_expert* __restrict__ experts, lp_lora_seg* segs, int passes, int start,
                                  int t_stride, float* trace, int trace_cols, int layer) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    route_row(logits + (size_t)i * rows, i, rows, k, temperature, nulls, experts, segs + (size_t)i * passes, passes, start,
              t_stride, trace, trace_cols, layer);
}

extern "C" int lp_route_segs(const float* logits, int n, int rows, int k, float temperature, int nulls,
                             const lp_route_expert* experts, lp_lora_seg* segs, int passes, int start, int t_stride,
                             float* trace, int trace_cols, int layer, lp_stream s) {
    if (n <= 0) return 0;
    if (!route_args_ok(n, rows, k, temperature, nulls, passes, start, t_stride, trace, trace_cols, layer))
        return (int)cudaErrorInvalidValue;
    const int threads = 128;
    route_segs_kernel<<<(n + threads - 1) / threads, threads, 0, as_stream(s)>>>(
        logits, n, rows, k, temperature, nulls, experts, segs, passes, start, t_stride, trace, trace_cols, layer);
    LP_CHECK_LAUNCH();
}
