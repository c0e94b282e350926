// bf16 GEMM with fp32 accumulation through cuBLAS.
//
// Row-major C[n, m] = X[n, k] · W[m, k]ᵀ is, read column-major, Cᵀ[m, n] = Wᵀ... cuBLAS sees
// the row-major W buffer as a column-major [k, m] matrix, so op(A) = T gives the [m, k] W, and
// the row-major X buffer as column-major [k, n], used as is. C comes out column-major [m, n],
// which is exactly row-major [n, m]. No copies, no transposes in memory.
#include <cublas_v2.h>
#include "common.cuh"

// lp_gemm_padded_bf16 is deterministic mode's product on cuBLAS (cuda/deterministic.go's
// DeterministicGEMMPadded). cuBLAS is deterministic run to run for one shape (no atomics unless
// asked for), but its heuristic picks the kernel, tile and split-K per shape, so a row's bits
// follow the batch's row count; that is the whole of its batch dependence. Fixing the shape
// removes it: every product runs as chunks of at most LP_GEMM_PAD_ROWS rows (cuda/deterministic.go
// cuts them), each chunk rounded to bf16 into the same buffer and run as the same cublasGemmEx
// call of exactly LP_GEMM_PAD_ROWS rows (same m, k, leading dimensions, pointers: W's, that
// buffer, scratch as output; alpha 1, beta 0), so the same kernel computes row r whether the
// batch holds 1 row or 64, alignments included (the one other output address, below, is
// aligned as the scratch is); and a GEMM kernel
// computes an output from its own row of x, its column of W and a reduction order fixed by the
// kernel (any split-K included), never from the other rows of its tile. Rows past n are
// whatever the buffer holds; their outputs stay in scratch, and the chunk's n rows are copied
// to y (with alpha and beta applied by one expression whatever the chunk, where a caller asks
// for them). A whole chunk (n = LP_GEMM_PAD_ROWS) of a plain product (alpha 1, beta 0: the
// values the scratch would hold, bitwise) is written to y directly when y is 256-byte aligned
// like the scratch, so the call differs only in an output address of the same alignment: batch
// 64, the mode's common step, then costs what the default path's cuBLAS call costs, with no
// copy. (cuBLAS's heuristic looks at alignments, up to the 256 bytes cudaMalloc gives, not at
// addresses; TestBatchInvariantMatMul compares whole chunks written directly with rows written
// through the scratch, bitwise, at 64, 65, 100 and 130 rows.)
//
// Why cuBLAS and not lp_gemm_invariant_bf16 (gemm_invariant.cu): decode products are a weight
// stream, and at 64 rows cuBLAS streams weights at the default path's rate, being the default
// path's own call at batch 64. On an H100 (bench/results/gpu-h100/goals-2026-12-07-final3)
// deterministic batch-64 decode ran at 0.977 of the default mode with it and 0.40 with the
// tensor-core kernel, in the same run; the price moved to batch 1, which pays for a 64-row
// product: 0.81 of the default there (0.64 with the tensor-core kernel).
//
// Graph replay: the chunk loop is fixed by n and the calls' arguments, so a recorded step replays
// the same launches. Tolerance: the default path's (x rounded to bf16, fp32 accumulate).
__global__ void gemm_store_kernel(float* __restrict__ y, const float* __restrict__ scratch, size_t count, float alpha,
                                  float beta) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        y[i] = beta != 0.f ? alpha * scratch[i] + beta * y[i] : alpha * scratch[i];
}

extern "C" {

int lp_cublas_create(void** handle, lp_stream s) {
    cublasHandle_t h;
    cublasStatus_t st = cublasCreate(&h);
    if (st != CUBLAS_STATUS_SUCCESS) return 1000 + (int)st;
    st = cublasSetStream(h, as_stream(s));
    if (st != CUBLAS_STATUS_SUCCESS) return 1000 + (int)st;
    // Tensor cores with fp32 accumulation; no reduced-precision reductions.
    cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    *handle = h;
    return 0;
}

int lp_cublas_destroy(void* handle) { return (int)cublasDestroy((cublasHandle_t)handle); }

int lp_gemm_bf16(void* handle, int n, int m, int k, const uint16_t* x, const uint16_t* w, float* c, float alpha, float beta) {
    if (n <= 0 || m <= 0 || k <= 0) return (int)cudaErrorInvalidValue;
    cublasStatus_t st = cublasGemmEx((cublasHandle_t)handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha,
                                     w, CUDA_R_16BF, k, x, CUDA_R_16BF, k, &beta, c, CUDA_R_32F, m,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : 1000 + (int)st;
}

// lp_gemm_bf16_batched: the products of one x by `batch` weights of one shape lying w_stride
// elements apart (a router layer's gates, router.UploadGates), into outputs c_stride floats
// apart, as one strided-batched cublasGemmEx (x's stride 0: every product reads the same rows).
// At a decode batch a gate of 28 outputs is a latency-bound launch pair (cuBLAS's split-K tile
// kernel and its reduce, ~5 us each in goals-2026-12-07-s27a call 2's Nsight view, seven a routed
// layer); q/k/v's three gates then cost one pair, gate/up's two one. Each product is cuBLAS's for
// its shape, so the logits agree with lp_gemm_bf16's within its fp32 accumulation order, not to
// the bit (the batched heuristic may pick another tile or split).
int lp_gemm_bf16_batched(void* handle, int n, int m, int k, const uint16_t* x, const uint16_t* w, long long w_stride, float* c,
                         long long c_stride, int batch) {
    if (n <= 0 || m <= 0 || k <= 0 || batch < 1 || w_stride < (long long)m * k || c_stride < (long long)m * n)
        return (int)cudaErrorInvalidValue;
    const float one = 1.f, zero = 0.f;
    cublasStatus_t st = cublasGemmStridedBatchedEx((cublasHandle_t)handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, w, CUDA_R_16BF, k,
                                                   w_stride, x, CUDA_R_16BF, k, 0, &zero, c, CUDA_R_32F, m, c_stride, batch,
                                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : 1000 + (int)st;
}

int lp_gemm_padded_bf16(void* handle, int n, int m, int k, const uint16_t* x, const uint16_t* w, float* y, float* scratch,
                        float alpha, float beta, lp_stream s) {
    if (n <= 0 || n > LP_GEMM_PAD_ROWS || m <= 0 || k <= 0) return (int)cudaErrorInvalidValue;
    // A whole chunk of a plain product goes straight into y when y is aligned as the scratch is
    // (256 bytes: cuBLAS's heuristic sees the same call), else into scratch and is copied.
    const bool plain = alpha == 1.f && beta == 0.f;
    const bool direct = plain && n == LP_GEMM_PAD_ROWS && (uintptr_t)y % 256 == 0;
    const float one = 1.f, zero = 0.f;
    cublasStatus_t st = cublasGemmEx((cublasHandle_t)handle, CUBLAS_OP_T, CUBLAS_OP_N, m, LP_GEMM_PAD_ROWS, k, &one, w,
                                     CUDA_R_16BF, k, x, CUDA_R_16BF, k, &zero, direct ? y : scratch, CUDA_R_32F, m,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) return 1000 + (int)st;
    if (direct) return 0;
    size_t count = (size_t)n * m;
    if (plain) return (int)cudaMemcpyAsync(y, scratch, count * sizeof(float), cudaMemcpyDeviceToDevice, as_stream(s));
    unsigned blocks = (unsigned)((count + 1023) / 1024);
    gemm_store_kernel<<<blocks < 1024 ? blocks : 1024, 256, 0, as_stream(s)>>>(y, scratch, count, alpha, beta);
    return (int)cudaGetLastError();
}

}  // extern "C"
