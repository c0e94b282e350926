// Runtime helpers for adapter uploads (cuda/slabpool.go): stream-ordered allocation, so that
// taking and releasing adapter slabs never waits for the steps running on the compute stream
// (cudaFree does: it synchronises the whole device).
#include "common.cuh"

extern "C" {

int lp_mem_pools_supported(int dev, int* yes) {
    *yes = 0;
    return (int)cudaDeviceGetAttribute(yes, cudaDevAttrMemoryPoolsSupported, dev);
}
int lp_malloc_async(void** p, size_t bytes, lp_stream s) { return (int)cudaMallocAsync(p, bytes, as_stream(s)); }
int lp_free_async(void* p, lp_stream s) { return (int)cudaFreeAsync(p, as_stream(s)); }

}  // extern "C"
