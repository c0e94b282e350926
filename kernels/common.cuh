// Helpers shared by the kernels.
#pragma once
#include <math.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include "loraplex_kernels.h"
#include "shapes.h"

#define LP_CHECK_LAUNCH() return (int)cudaGetLastError()

__device__ __forceinline__ float bf16_to_f32(uint16_t v) {
    return __uint_as_float(((uint32_t)v) << 16);
}

// Round to nearest even, as torch does when casting float32 to bfloat16.
__device__ __forceinline__ uint16_t f32_to_bf16(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// bf16x8_unpack widens one 16-byte vector of 8 bf16 values to fp32 (a bf16 is the top half of
// an fp32, so each is a shift or a mask): the weight streams of gemv.cu and the K/V reads of the
// grouped decode attention.
__device__ __forceinline__ void bf16x8_unpack(const uint4 v, float (&f)[8]) {
    f[0] = __uint_as_float(v.x << 16);
    f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16);
    f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16);
    f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16);
    f[7] = __uint_as_float(v.w & 0xffff0000u);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// merge_split_states writes one (row, head)'s attention output from the partial softmax states
// of its key splits (split-K, flash-decoding), slots slot0 .. slot0 + splits - 1 of part_o
// ([slot][D]: the split's unnormalised output) and part_ml ([slot][2]: its max in natural-log
// units of the scaled scores, and its normaliser; L = 0 marks an empty split, which is skipped):
//     orow = sum_z O_z e^(M_z - M) / sum_z L_z e^(M_z - M),  M the largest max of a non-empty split.
// The block's threads share the columns. The one home of the merge arithmetic: decode
// attention's merge (attention.cu) and the tensor-core prefill's (attention_prefill_mma.cu).
__device__ __forceinline__ void merge_split_states(float* orow, const float* part_o, const float* part_ml, size_t slot0,
                                                   int splits, int D) {
    float M = -INFINITY;
    for (int z = 0; z < splits; z++)
        if (part_ml[2 * (slot0 + z) + 1] > 0.f) M = fmaxf(M, part_ml[2 * (slot0 + z)]);
    float L = 0.f;
    for (int z = 0; z < splits; z++) {
        const float lz = part_ml[2 * (slot0 + z) + 1];
        if (lz > 0.f) L += lz * __expf(part_ml[2 * (slot0 + z)] - M);
    }
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float o = 0.f;
        for (int z = 0; z < splits; z++)
            if (part_ml[2 * (slot0 + z) + 1] > 0.f) o += part_o[(slot0 + z) * D + j] * __expf(part_ml[2 * (slot0 + z)] - M);
        orow[j] = o / L;
    }
}

// load_sum4 loads the float4s base, base + stride, ... base + (V - 1)·stride (those below n4) of a
// row of x into v, each plus delta's with ADD, every load issued before any value is used so
// that a thread's V loads are in flight together (the row-wide prologues of rmsnorm.cu and of
// gemv.cu's staged kernels, whose one-load-at-a-time loops waited on DRAM latency each step).
template <bool ADD, int V>
__device__ __forceinline__ void load_sum4(float4 (&v)[V], const float4* x4, const float4* d4, int base, int stride, int n4) {
#pragma unroll
    for (int q = 0; q < V; q++) {
        const int i = base + q * stride;
        if (i < n4) {
            v[q] = x4[i];
            if (ADD) {
                const float4 d = d4[i];
                v[q] = make_float4(v[q].x + d.x, v[q].y + d.y, v[q].z + d.z, v[q].w + d.w);
            }
        }
    }
}

// block_sum reduces over a block of up to 1024 threads; every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    float t = lane < warps ? shared32[lane] : 0.f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

// Tensor-core helpers (sm_80+), shared by the mma.sync kernels (attention_prefill_mma.cu,
// gemm_invariant.cu): shared-memory addresses, ldmatrix, the m16n8k16 bf16 mma with fp32
// accumulate, cp.async and bf16 packing. Fragment layouts are the PTX ISA's for m16n8k16.
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldsm_x4(uint32_t* r, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// d += a · b for one 16x8 fp32 tile (a: 16x16 bf16 row-major fragment, b: 16x8 column fragment).
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared without staging in registers; size 0 writes zeros (rows past the end).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Rotate-half RoPE of one pair (x[j], x[j + dim/2]) by the angle whose cosine and sine are c and
// s: decode_fused.cu's RoPE + KV store and the LoRA RoPE (lora.cu) rotate with it.
__device__ __forceinline__ void rope_rotate(float a, float b, float c, float s, float& ra, float& rb) {
    ra = a * c - b * s;
    rb = b * c + a * s;
}

// SwiGLU of one element, silu(g) · u with silu(g) = g / (1 + e^-g): swiglu.cu's kernels and the
// LoRA SwiGLU (lora.cu) compute every activation with it.
__device__ __forceinline__ float silu_value(float g, float u) { return g / (1.f + __expf(-g)) * u; }

// Two floats to a bf16 pair (round to nearest even), lo in the low half as mma expects.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    return (uint32_t)f32_to_bf16(lo) | ((uint32_t)f32_to_bf16(hi) << 16);
}

static inline cudaStream_t as_stream(lp_stream s) { return (cudaStream_t)s; }

// Programmatic dependent launch (PDL, sm_90+; LORAPLEX_PDL, cuda/fused.go). A batch-1 decode
// step is a chain of short launches (about 7 a layer), and between two of them the GPU idles:
// the last blocks of one kernel drain while most SMs wait, the next kernel is launched only once
// it has ended, and its warps then wait a memory latency for their first loads. Launched with
// cudaLaunchAttributeProgrammaticStreamSerialization, a kernel's blocks may start as soon as
// every block of the kernel before it has executed lp_pdl_launch_dependents (or exited), run
// what does not depend on that kernel (the GEMVs issue their first weight loads: weights are
// never written by a kernel), and then block in lp_pdl_wait until the previous kernel has
// completed and its memory operations are visible.
//
// What is safe, the rules every converted kernel keeps:
//   - every thread executes lp_pdl_wait before its first read of anything an earlier kernel of
//     the stream wrote and before its first global write (the forward pass reuses buffers: a
//     later kernel may write what an earlier one still reads), and before it exits, so a
//     kernel completes only after the kernel before it has: the chain is transitive, and a
//     kernel that only waits on its direct predecessor still sees everything before it;
//   - lp_pdl_launch_dependents comes first: it only lets the next kernel's blocks be scheduled
//     into the SM space this kernel leaves (all of this kernel's blocks are resident by then,
//     so none of them is starved), and that kernel's own lp_pdl_wait still waits for this
//     kernel's completion. Before its wait, a kernel reads only its parameters and weights
//     (uploaded before any step, never written by a kernel).
//   - a kernel launched with the attribute that does not wait is a data race: lp_launch sets it
//     only when the launcher's caller passes pdl = 1, and only the launchers of kernels that
//     keep these rules take pdl. Kernels launched without it are launched as before; their
//     griddepcontrol instructions are then no-ops (and compiled out below sm_90).
// The Go side passes pdl = 1 only on sm_90+ devices (griddepcontrol needs it; the PTX the
// library embeds is compute_90, so a newer GPU JITs code that has the instructions).
// Graph replay: stream capture (CUDA 12.3+) records the attribute as a programmatic edge
// between the two kernel nodes, so replays overlap the same way; a predecessor that is not a
// kernel (a copy) keeps a full dependency. Determinism: PDL moves when blocks start and wait,
// never what they compute or in which order they sum: results are bitwise those of plain
// launches (TestPDLBitwise).
__device__ __forceinline__ void lp_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void lp_pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// lp_launch launches kernel<<<grid, block, smem, s>>>(args...), with programmatic stream
// serialization when pdl is set (see above). The one launch path of every PDL-converted
// launcher; it returns nothing: launchers read the launch's status with LP_CHECK_LAUNCH.
template <typename... Params, typename... Args>
static inline void lp_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, int pdl,
                             Args&&... args) {
    if (!pdl) {
        kernel<<<grid, block, smem, s>>>(static_cast<Params>(args)...);
        return;
    }
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}
