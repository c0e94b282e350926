//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"math"
	"math/rand/v2"
	"time"
	"unsafe"
)

// Sync implements model.StepSynchronizer: it waits for all work queued on the compute stream
// and returns the sticky error, if any. The runner calls it at the end of every step, so
// FreeAdapter may hand a slab back without waiting.
func (b *Backend) Sync() error {
	// Outside direct mode a step was abandoned between BeginStep and EndStep (a panic): its ops
	// were being recorded or staged, not run, and a capturing stream must not be synchronised.
	if b.failed() || b.mode != modeDirect {
		return b.Err()
	}
	b.ok("sync", C.s_stream_sync(b.work()))
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
		return cudaError("copy", C.lp_memcpy_dtod(C.P_void(C.uintptr_t(dst)), C.P_void(C.uintptr_t(src)), C.size_t(bytes), C.P_stream(b.work())))
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
	// Random operands, not zeros: tensor cores run faster on zeros (about 13% on an H200, 894
	// against 788 TFLOP/s), and the ceiling is the one a product of random weights can reach.
	if err := b.fillRandomBF16(x, 2*n*k); err != nil {
		return 0, err
	}
	if err := b.fillRandomBF16(w, 2*m*k); err != nil {
		return 0, err
	}
	run := func() error {
		return cudaError("gemm", C.s_gemm(b.mainQueue().blas, C.int(n), C.int(m), C.int(k), C.uintptr_t(x), C.uintptr_t(w), C.uintptr_t(c), 1, 0))
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

// fillRandomBF16 fills bytes of device memory at p with standard-normal bf16 values: one 1 MiB
// block drawn once and repeated (the products' speed depends on the bits toggling, not on the
// values being independent), copied synchronously.
func (b *Backend) fillRandomBF16(p uintptr, bytes int) error {
	host := make([]byte, bytes&^1)
	block := min(len(host), 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < block; i += 2 {
		bits := math.Float32bits(float32(rng.NormFloat64()))
		host[i], host[i+1] = byte(bits>>16), byte(bits>>24)
	}
	for off := block; off < len(host); {
		off += copy(host[off:], host[:block])
	}
	if len(host) == 0 {
		return nil
	}
	if err := cudaError("fill", C.s_htod(C.uintptr_t(p), unsafe.Pointer(&host[0]), C.size_t(len(host)), b.work())); err != nil {
		return err
	}
	return cudaError("fill sync", C.s_stream_sync(b.work()))
}
