// Thin C wrappers over the CUDA runtime so the Go side links plain C symbols.
#include <stdio.h>
#include "common.cuh"

extern "C" {

int lp_device_count(int* n) { return (int)cudaGetDeviceCount(n); }
int lp_set_device(int dev) { return (int)cudaSetDevice(dev); }

int lp_device_props(int dev, char* name, int name_len, int* major, int* minor, int* sms, size_t* total_bytes) {
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, dev);
    if (e != cudaSuccess) return (int)e;
    snprintf(name, name_len, "%s", p.name);
    *major = p.major;
    *minor = p.minor;
    *sms = p.multiProcessorCount;
    *total_bytes = p.totalGlobalMem;
    return 0;
}

int lp_mem_info(size_t* free_bytes, size_t* total_bytes) { return (int)cudaMemGetInfo(free_bytes, total_bytes); }
int lp_malloc(void** p, size_t bytes) { return (int)cudaMalloc(p, bytes); }
int lp_free(void* p) { return (int)cudaFree(p); }
int lp_malloc_host(void** p, size_t bytes) { return (int)cudaMallocHost(p, bytes); }
int lp_free_host(void* p) { return (int)cudaFreeHost(p); }
int lp_memset(void* p, int value, size_t bytes, lp_stream s) { return (int)cudaMemsetAsync(p, value, bytes, as_stream(s)); }
int lp_memcpy_htod(void* dst, const void* src, size_t bytes, lp_stream s) {
    return (int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(s));
}
int lp_memcpy_dtoh(void* dst, const void* src, size_t bytes, lp_stream s) {
    return (int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(s));
}
int lp_memcpy_dtod(void* dst, const void* src, size_t bytes, lp_stream s) {
    return (int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(s));
}
int lp_stream_create(lp_stream* s) {
    cudaStream_t st;
    cudaError_t e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    *s = (lp_stream)st;
    return (int)e;
}
int lp_stream_destroy(lp_stream s) { return (int)cudaStreamDestroy(as_stream(s)); }
int lp_stream_sync(lp_stream s) { return (int)cudaStreamSynchronize(as_stream(s)); }
int lp_event_create(lp_event* e) {
    cudaEvent_t ev;
    cudaError_t err = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    *e = (lp_event)ev;
    return (int)err;
}
int lp_event_record(lp_event e, lp_stream s) { return (int)cudaEventRecord((cudaEvent_t)e, as_stream(s)); }
int lp_stream_wait(lp_stream s, lp_event e) { return (int)cudaStreamWaitEvent(as_stream(s), (cudaEvent_t)e, 0); }
int lp_last_error(void) { return (int)cudaGetLastError(); }
const char* lp_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

}  // extern "C"
