// bf16 GEMM with fp32 accumulation through cuBLAS.
//
// Row-major C[n, m] = X[n, k] · W[m, k]ᵀ is, read column-major, Cᵀ[m, n] = Wᵀ... cuBLAS sees
// the row-major W buffer as a column-major [k, m] matrix, so op(A) = T gives the [m, k] W, and
// the row-major X buffer as column-major [k, n], used as is. C comes out column-major [m, n],
// which is exactly row-major [n, m]. No copies, no transposes in memory.
#include <cublas_v2.h>
#include "common.cuh"

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

}  // extern "C"
