// RMSNorm, alone and fused with the residual add that precedes it in every decoder layer
// (x += delta; out = norm(x)): the fused form reads x once instead of three times.
// One block per row; the mean of squares is accumulated in fp32 like HF's LlamaRMSNorm.
// Programmatic dependent launch (pdl, common.cuh): it reads x first, so it waits at once.
//
// lp_rmsnorm_bf16 is the same norm (and residual add) for steps whose next products run on
// cuBLAS (cuda/fused.go NormMatMulShared, LORAPLEX_NORM_BF16): it writes the normed rows rounded
// to bf16 (f32_to_bf16, lp_f32_to_bf16's rounding) straight into the GEMMs' input and never
// stores them in fp32, and the residual x + delta goes to next instead of over x (NormFuser's
// contract: the caller swaps the two buffers). The conversion pass it replaces read the fp32
// normed rows again (at a 2,048-row prefill step of the 8B shape, 32 MB read and 16 MB written,
// twice a layer). It is the same kernel with another output type and another place for the sum,
// so the bf16 values are bitwise what lp_add_rmsnorm followed by lp_f32_to_bf16 gives and next
// is the x it leaves. Where keep is not NULL it also stores the normed rows in fp32 there, the
// values lp_add_rmsnorm would have written to out, for the LoRA shrinks of an adapted step that
// read them (cuda/lorafold.go normKeptProducts): the products' conversion pass is saved there
// too, and the shrinks see the bits of the unfused path.
//
// With LP_NORM_VEC (LORAPLEX_NORM_VEC, on by default), rows of a width divisible by 4 whose
// buffers are 16-byte aligned (8 for bf16 out) take rmsnorm_vec_kernel: each thread issues
// RMS_VEC float4 loads of x (and of delta) before it stores a sum or adds a square, so a row's
// loads are in flight together. Nsight Compute timed the
// scalar loop at 15 us for a batch-64 decode step's 64 rows of 4,096 on an H100 (64 blocks, 0.06
// waves: one dependent load pair per iteration, 16 iterations at DRAM latency), twice a layer,
// about 12% of the step (bench/results/gpu-h100/goals-2026-12-07-s24a/ncu-adapters16-base.txt),
// where the rows' 2 MB stream in about a microsecond; with it, batch-64 decode ran 1.09x
// (bench/results/gpu-h200/goals-2026-12-07-s24d). It sums the squares in another order than
// the scalar loop (within fp32 rounding of it); the one-row-per-block layout keeps it a function
// of the row alone (deterministic mode's batch invariance), and both output types take the same
// path for the same row, so lp_rmsnorm_bf16 stays bitwise lp_add_rmsnorm then lp_f32_to_bf16.
#include "common.cuh"

#define RMS_VEC 4

__device__ __forceinline__ void rmsnorm_store(float* out, float v) { *out = v; }
__device__ __forceinline__ void rmsnorm_store(uint16_t* out, float v) { *out = f32_to_bf16(v); }

// rmsnorm_kernel normalises row blockIdx.x of x (plus delta with ADD, the sum written to sum:
// x itself for lp_add_rmsnorm, next for lp_rmsnorm_bf16) into out, in fp32 or bf16 (OUT).
// keep (bf16 OUT only; NULL: not stored) also takes the normed rows in fp32.
template <bool ADD, typename OUT>
__global__ void rmsnorm_kernel(const float* x, const float* delta, float* sum, OUT* out, float* keep, const float* w, int dim,
                               float eps) {
    __shared__ float red[32];
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* sr = ADD ? sum + (size_t)blockIdx.x * dim : nullptr;
    OUT* orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = xr[j];
        if (ADD) {
            v += delta[(size_t)blockIdx.x * dim + j];
            sr[j] = v;
        }
        ss += v * v;
    }
    float total = block_sum(ss, red);
    float inv = rsqrtf(total / dim + eps);
    // With ADD each thread reads back only the sums it wrote itself.
    const float* src = ADD ? sr : xr;
    float* krow = keep ? keep + (size_t)blockIdx.x * dim : nullptr;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        const float h = w[j] * (src[j] * inv);
        rmsnorm_store(orow + j, h);
        if (krow) krow[j] = h;
    }
}

__device__ __forceinline__ void rmsnorm_store4(float* out, float4 v) { *reinterpret_cast<float4*>(out) = v; }
__device__ __forceinline__ void rmsnorm_store4(uint16_t* out, float4 v) {
    *reinterpret_cast<uint2*>(out) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
}

// rmsnorm_keep4 stores four normed values to out and, where krow is set, in fp32 to krow[at].
template <typename OUT>
__device__ __forceinline__ void rmsnorm_keep4(OUT* out, float* krow, int at, float4 v) {
    rmsnorm_store4(out, v);
    if (krow) *reinterpret_cast<float4*>(krow + at) = v;
}

__device__ __forceinline__ float4 rmsnorm_scale4(float4 g, float4 a, float inv) {
    return make_float4(g.x * (a.x * inv), g.y * (a.y * inv), g.z * (a.z * inv), g.w * (a.w * inv));
}

// rmsnorm_vec_kernel is rmsnorm_kernel on float4s (the header says when and why). A row of at
// most RMS_VEC float4s a thread (4,096 wide at 256 threads) stays in registers between the two
// passes; wider rows are read back, each thread reading only what it wrote.
template <bool ADD, typename OUT>
__global__ void rmsnorm_vec_kernel(const float* x, const float* delta, float* sum, OUT* out, float* keep, const float* w, int dim,
                                   float eps) {
    __shared__ float red[32];
    lp_pdl_launch_dependents();
    lp_pdl_wait();
    const int n4 = dim >> 2, stride = blockDim.x;
    const size_t row = (size_t)blockIdx.x * dim;
    const float4* x4 = reinterpret_cast<const float4*>(x + row);
    const float4* d4 = reinterpret_cast<const float4*>(ADD ? delta + row : x + row);
    float4* s4 = reinterpret_cast<float4*>(ADD ? sum + row : nullptr);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    float4 v[RMS_VEC];
    float ss = 0.f;
    for (int base = threadIdx.x; base < n4; base += RMS_VEC * stride) {
        load_sum4<ADD>(v, x4, d4, base, stride, n4);
#pragma unroll
        for (int u = 0; u < RMS_VEC; u++) {
            const int j = base + u * stride;
            if (j < n4) {
                if (ADD) s4[j] = v[u];
                ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
            }
        }
    }
    const float inv = rsqrtf(block_sum(ss, red) / dim + eps);
    OUT* orow = out + row;
    float* krow = keep ? keep + row : nullptr;
    if (n4 <= RMS_VEC * stride) {
#pragma unroll
        for (int u = 0; u < RMS_VEC; u++) {
            const int j = threadIdx.x + u * stride;
            if (j < n4) rmsnorm_keep4(orow + 4 * j, krow, 4 * j, rmsnorm_scale4(w4[j], v[u], inv));
        }
        return;
    }
    const float4* src4 = ADD ? s4 : x4;
    for (int base = threadIdx.x; base < n4; base += RMS_VEC * stride) {
        float4 g[RMS_VEC];
#pragma unroll
        for (int u = 0; u < RMS_VEC; u++) {
            const int j = base + u * stride;
            if (j < n4) {
                v[u] = src4[j];
                g[u] = w4[j];
            }
        }
#pragma unroll
        for (int u = 0; u < RMS_VEC; u++) {
            const int j = base + u * stride;
            if (j < n4) rmsnorm_keep4(orow + 4 * j, krow, 4 * j, rmsnorm_scale4(g[u], v[u], inv));
        }
    }
}

// rmsnorm_vec_ok says whether rows of dim with these buffers take rmsnorm_vec_kernel.
static bool rmsnorm_vec_ok(int dim, const void* x, const void* delta, const void* sum, const void* out, size_t out_align,
                           const void* w) {
    auto al = [](const void* p, size_t a) { return p == nullptr || (uintptr_t)p % a == 0; };
    return dim % 4 == 0 && al(x, 16) && al(delta, 16) && al(sum, 16) && al(w, 16) && al(out, out_align);
}

extern "C" int lp_rmsnorm(float* out, const float* x, const float* w, int rows, int dim, float eps, int opts, lp_stream s) {
    if (rows <= 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    const int pdl = opts & LP_NORM_PDL;
    if ((opts & LP_NORM_VEC) && rmsnorm_vec_ok(dim, x, nullptr, nullptr, out, 16, w))
        lp_launch(rmsnorm_vec_kernel<false, float>, rows, 256, 0, as_stream(s), pdl, x, (const float*)nullptr, (float*)nullptr, out,
                  (float*)nullptr, w, dim, eps);
    else
        lp_launch(rmsnorm_kernel<false, float>, rows, 256, 0, as_stream(s), pdl, x, (const float*)nullptr, (float*)nullptr, out,
                  (float*)nullptr, w, dim, eps);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_add_rmsnorm(float* x, const float* delta, float* out, const float* w, int rows, int dim, float eps, int opts,
                              lp_stream s) {
    if (rows <= 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    const int pdl = opts & LP_NORM_PDL;
    if ((opts & LP_NORM_VEC) && rmsnorm_vec_ok(dim, x, delta, x, out, 16, w))
        lp_launch(rmsnorm_vec_kernel<true, float>, rows, 256, 0, as_stream(s), pdl, (const float*)x, delta, x, out, (float*)nullptr, w,
                  dim, eps);
    else
        lp_launch(rmsnorm_kernel<true, float>, rows, 256, 0, as_stream(s), pdl, (const float*)x, delta, x, out, (float*)nullptr, w, dim,
                  eps);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_rmsnorm_bf16(const float* x, const float* delta, float* next, uint16_t* out, float* keep, const float* w, int rows,
                               int dim, float eps, int opts, lp_stream s) {
    if (rows <= 0 || dim <= 0 || (delta != nullptr) != (next != nullptr)) return (int)cudaErrorInvalidValue;
    // The vector path under lp_add_rmsnorm's conditions (out, half as wide, 8-byte aligned; keep,
    // which is where lp_add_rmsnorm's out would have been, 16), so the two stay bitwise alike for
    // the same rows.
    const bool vec = (opts & LP_NORM_VEC) && rmsnorm_vec_ok(dim, x, delta, next, out, 8, w) && ((uintptr_t)keep % 16) == 0;
    if (delta && vec)
        rmsnorm_vec_kernel<true, uint16_t><<<rows, 256, 0, as_stream(s)>>>(x, delta, next, out, keep, w, dim, eps);
    else if (delta)
        rmsnorm_kernel<true, uint16_t><<<rows, 256, 0, as_stream(s)>>>(x, delta, next, out, keep, w, dim, eps);
    else if (vec)
        rmsnorm_vec_kernel<false, uint16_t><<<rows, 256, 0, as_stream(s)>>>(x, nullptr, nullptr, out, keep, w, dim, eps);
    else
        rmsnorm_kernel<false, uint16_t><<<rows, 256, 0, as_stream(s)>>>(x, nullptr, nullptr, out, keep, w, dim, eps);
    LP_CHECK_LAUNCH();
}
