//go:build cuda

package benchenv

/*
#cgo CFLAGS: -I${SRCDIR}/../../../kernels
#cgo LDFLAGS: -L${SRCDIR}/../../../kernels/build -lloraplex_kernels -L/usr/local/cuda/lib64 -lcudart -lstdc++
#include <stdlib.h>
#include <string.h>
#include "loraplex_kernels.h"
// A synchronous copy: cudaMemcpyAsync on the legacy default stream, then its sync.
static inline int h2d(void* dst, const void* src, size_t n) { int e = lp_memcpy_htod(dst, src, n, 0); return e ? e : lp_stream_sync(0); }
*/
import "C"

import (
	"fmt"
	"runtime"
	"sort"
	"time"
	"unsafe"

	"github.com/loraplex/loraplex/cuda"
)

func newCUDA() (Backend, func(), error) {
	b, err := cuda.New(0)
	if err != nil {
		return nil, nil, err
	}
	return b, func() {}, nil
}

// Sync waits for the device's queued work.
func Sync(b Backend) error {
	if cb, ok := b.(*cuda.Backend); ok {
		return cb.Sync()
	}
	return nil
}

// H2D is the host-to-device copy bandwidth of one cudaMemcpy of the whole buffer: from pinned
// (cudaMallocHost) memory, the PCIe roofline of an upload, and from ordinary pageable Go memory.
type H2D struct{ PinnedBytesPerS, PageableBytesPerS float64 }

// MeasureH2D times iters copies of bytes each way and returns the median rates.
func MeasureH2D(bytes, iters int) (H2D, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if e := C.lp_set_device(0); e != 0 {
		return H2D{}, fmt.Errorf("cudaSetDevice: error %d", int(e))
	}
	var dst, pinned unsafe.Pointer
	if e := C.lp_malloc(&dst, C.size_t(bytes)); e != 0 {
		return H2D{}, fmt.Errorf("cudaMalloc: error %d", int(e))
	}
	defer C.lp_free(dst)
	if e := C.lp_malloc_host(&pinned, C.size_t(bytes)); e != 0 {
		return H2D{}, fmt.Errorf("cudaMallocHost: error %d", int(e))
	}
	defer C.lp_free_host(pinned)
	pageable := C.malloc(C.size_t(bytes)) // ordinary (pageable) memory
	defer C.free(pageable)
	C.memset(pageable, 1, C.size_t(bytes))
	C.memset(pinned, 1, C.size_t(bytes))
	rate := func(src unsafe.Pointer) (float64, error) {
		var ts []float64
		for i := 0; i < iters+1; i++ {
			t0 := time.Now()
			if e := C.h2d(dst, src, C.size_t(bytes)); e != 0 {
				return 0, fmt.Errorf("cudaMemcpy: error %d", int(e))
			}
			if i > 0 {
				ts = append(ts, time.Since(t0).Seconds())
			}
		}
		sort.Float64s(ts)
		return float64(bytes) / ts[len(ts)/2], nil
	}
	var r H2D
	var err error
	if r.PinnedBytesPerS, err = rate(pinned); err != nil {
		return r, err
	}
	r.PageableBytesPerS, err = rate(pageable)
	return r, err
}
