//go:build cuda

package cuda

// #include "shims.h"
import "C"

import "time"

// Sync implements model.StepSynchronizer: it waits for all work queued on the compute stream
// and returns the sticky error, if any. The runner calls it at the end of every step, so
// FreeAdapter may hand a slab back without waiting.
func (b *Backend) Sync() error {
	// Outside direct mode a step was abandoned between BeginStep and EndStep (a panic): its ops
	// were being recorded or staged, not run, and a capturing stream must not be synchronised.
	if b.failed() || b.mode != modeDirect {
		return b.Err()
	}
	b.ok("sync", C.s_stream_sync(b.stream))
	return b.Err()
}

// MeasureCopyBandwidth times device-to-device copies of bytes and returns bytes moved per
// second, counting each byte read and written (so it is comparable with a kernel that reads
// weights once and writes little: divide by two for the one-way rate). This is the bandwidth
// the decode roofline is measured against, in the same run.
func (b *Backend) MeasureCopyBandwidth(bytes, iters int) (float64, error) {
	src, err := b.malloc(bytes)
	if err != nil {
		return 0, err
	}
	defer C.s_free(C.uintptr_t(src))
	dst, err := b.malloc(bytes)
	if err != nil {
		return 0, err
	}
	defer C.s_free(C.uintptr_t(dst))
	copyOnce := func() error {
		return cudaError("copy", C.lp_memcpy_dtod(C.P_void(C.uintptr_t(dst)), C.P_void(C.uintptr_t(src)), C.size_t(bytes), C.P_stream(b.stream)))
	}
	if err := copyOnce(); err != nil {
		return 0, err
	}
	if err := b.Sync(); err != nil {
		return 0, err
	}
	start := time.Now()
	for i := 0; i < iters; i++ {
		if err := copyOnce(); err != nil {
			return 0, err
		}
	}
	if err := b.Sync(); err != nil {
		return 0, err
	}
	return 2 * float64(bytes) * float64(iters) / time.Since(start).Seconds(), nil
}

// MeasureGEMM times cuBLAS bf16 GEMMs C[n,m] = X[n,k]·W[m,k]ᵀ alone and returns FLOP/s: the
// ceiling a prefill is compared with.
func (b *Backend) MeasureGEMM(n, m, k, iters int) (float64, error) {
	x, err := b.malloc(2 * n * k)
	if err != nil {
		return 0, err
	}
	defer C.s_free(C.uintptr_t(x))
	w, err := b.malloc(2 * m * k)
	if err != nil {
		return 0, err
	}
	defer C.s_free(C.uintptr_t(w))
	c, err := b.malloc(4 * n * m)
	if err != nil {
		return 0, err
	}
	defer C.s_free(C.uintptr_t(c))
	C.s_memset(C.uintptr_t(x), C.size_t(2*n*k), b.stream)
	C.s_memset(C.uintptr_t(w), C.size_t(2*m*k), b.stream)
	run := func() error {
		return cudaError("gemm", C.s_gemm(b.blas, C.int(n), C.int(m), C.int(k), C.uintptr_t(x), C.uintptr_t(w), C.uintptr_t(c), 1, 0))
	}
	for i := 0; i < 3; i++ {
		if err := run(); err != nil {
			return 0, err
		}
	}
	if err := b.Sync(); err != nil {
		return 0, err
	}
	start := time.Now()
	for i := 0; i < iters; i++ {
		if err := run(); err != nil {
			return 0, err
		}
	}
	if err := b.Sync(); err != nil {
		return 0, err
	}
	return 2 * float64(n) * float64(m) * float64(k) * float64(iters) / time.Since(start).Seconds(), nil
}
