//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"math/bits"

	"github.com/loraplex/loraplex/model"
)

// The adapter slab pool: each adapter is one device allocation (a slab) of a size class; freed
// slabs wait in the pool for the next upload of their class instead of going back to the device.

const (
	// slabAlign aligns every tensor inside a slab (and the first one is placed at slabAlign, not 0,
	// so that no view has Off 0: Backend.Free ignores views, and must never cudaFree a slab).
	slabAlign = 256
	// DefaultAdapterPoolCap is how many bytes of idle slabs the pool keeps by default.
	DefaultAdapterPoolCap     = 1 << 30
	cudaErrorMemoryAllocation = 2
)

// AdapterPoolStats counts the adapter slab pool's work (for tests and metrics).
type AdapterPoolStats struct {
	Allocs               int // slabs allocated from the device
	Reuses               int // uploads that took an idle slab instead
	Releases             int // idle slabs given back to the device (over the cap, or TrimAdapterPool)
	Live                 int // slabs holding an adapter
	Idle                 int // slabs waiting in the pool
	LiveBytes, IdleBytes int64
	CapBytes             int64
	StreamOrdered        bool // cudaMallocAsync/cudaFreeAsync in use (else cudaMalloc, and cudaFree only in TrimAdapterPool)
}

// slab is one adapter's device allocation; Adapter.Mem holds it.
type slab struct {
	ptr  uintptr
	size int // its size class
}

// sizeClass rounds n up to a slab size: a multiple of 64 KiB below 512 KiB, above that to one
// eighth of its power of two (at most 12.5% waste). Adapters of one shape share a class.
func sizeClass(n int) int {
	const small = 64 << 10
	if n <= 8*small {
		return max(small, (n+small-1)/small*small)
	}
	step := 1 << (bits.Len(uint(n-1)) - 4)
	return (n + step - 1) / step * step
}

// FreeAdapter implements model.AdapterUploader: the adapter's slab goes back to the pool, for
// the next upload to overwrite. That is safe without waiting for the device because the engine
// frees only adapters that no running sequence references, and every step ends complete (the
// runner calls Sync at the end of every step, prefill-only steps included: the step contract of
// model.StepSynchronizer): by the time an adapter is freed, the last step that read it has
// completed on the compute stream. The next upload into the slab runs on an upload stream after
// this call, so it cannot overtake any read of the old contents. Callers outside the runner
// (tests, tools) must likewise free only after a Sync or a synchronising read.
func (b *Backend) FreeAdapter(a *model.Adapter) {
	s, ok := a.Mem.(*slab)
	if !ok || s == nil {
		return
	}
	a.Mem = nil
	u := &b.up
	u.mu.Lock()
	u.stats.Live--
	u.stats.LiveBytes -= int64(s.size)
	u.idle[s.size] = append(u.idle[s.size], s.ptr)
	u.idleBytes += int64(s.size)
	limit := u.capBytes
	over := u.async && u.idleBytes > limit
	u.mu.Unlock()
	if over {
		unlock := b.onDevice()
		defer unlock()
		b.trim(limit, false)
	}
}

// take returns an idle slab of size's class, or allocates one on stream (stream-ordered where
// supported). Out of device memory, it releases the idle slabs and tries once more; still out
// of memory is an error for this adapter, not a sticky one.
func (u *uploader) take(size int, stream C.uintptr_t) (slab, error) {
	class := sizeClass(size)
	u.mu.Lock()
	if l := u.idle[class]; len(l) > 0 {
		p := l[len(l)-1]
		u.idle[class] = l[:len(l)-1]
		u.idleBytes -= int64(class)
		u.stats.Reuses++
		u.stats.Live++
		u.stats.LiveBytes += int64(class)
		u.mu.Unlock()
		return slab{ptr: p, size: class}, nil
	}
	u.mu.Unlock()
	alloc := func() (uintptr, C.int) {
		var p C.uintptr_t
		var code C.int
		if u.async {
			code = C.s_malloc_async(&p, C.size_t(class), stream)
		} else {
			code = C.s_malloc(&p, C.size_t(class))
		}
		if code != 0 {
			C.lp_last_error() // allocation failures are not sticky: clear it
		}
		return uintptr(p), code
	}
	p, code := alloc()
	if code == cudaErrorMemoryAllocation && u.async {
		u.release(u.trimList(0))
		C.s_stream_sync(u.stream) // the released memory goes back to the device's pool
		p, code = alloc()
	}
	if code != 0 {
		return slab{}, fmt.Errorf("slab of %d bytes: %w", class, cudaError("adapter malloc", code))
	}
	if p%slabAlign != 0 { // cudaMalloc and the stream-ordered allocator align to 256; never seen
		u.release([]slab{{ptr: p, size: class}})
		return slab{}, fmt.Errorf("slab at %#x is not %d-byte aligned: %w", p, slabAlign, model.ErrUnsupported)
	}
	u.mu.Lock()
	u.stats.Allocs++
	u.stats.Live++
	u.stats.LiveBytes += int64(class)
	u.mu.Unlock()
	return slab{ptr: p, size: class}, nil
}

// trimList takes idle slabs out of the pool, largest classes first, until at most limit bytes
// stay idle, and returns them for release.
func (u *uploader) trimList(limit int64) []slab {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []slab
	for u.idleBytes > limit {
		class := 0
		for c, l := range u.idle {
			if len(l) > 0 && c > class {
				class = c
			}
		}
		if class == 0 {
			break
		}
		l := u.idle[class]
		out = append(out, slab{ptr: l[len(l)-1], size: class})
		u.idle[class] = l[:len(l)-1]
		u.idleBytes -= int64(class)
		u.stats.Releases++
	}
	return out
}

// release gives slabs back to the device: stream-ordered on the upload stream where supported
// (nothing waits for the compute stream), else with cudaFree (which waits for the device).
func (u *uploader) release(slabs []slab) {
	for _, s := range slabs {
		var code C.int
		if u.async {
			code = C.s_free_async(C.uintptr_t(s.ptr), u.stream)
		} else {
			code = C.s_free(C.uintptr_t(s.ptr))
		}
		if code != 0 {
			C.lp_last_error()
		}
	}
}

// trim releases idle slabs beyond limit bytes. Without stream-ordered allocation that takes
// cudaFree, which waits for the device: only done when force (TrimAdapterPool). Called on a
// thread made by onDevice.
func (b *Backend) trim(limit int64, force bool) {
	u := &b.up
	if u.idle == nil || (!u.async && !force) {
		return
	}
	u.release(u.trimList(limit))
	if u.async && force {
		C.s_stream_sync(u.stream) // the memory is back with the device when TrimAdapterPool returns
	}
}

// TrimAdapterPool gives every idle adapter slab back to the device. With stream-ordered
// allocation it never waits for running steps; without (old drivers) it uses cudaFree, which
// does: call it then only while no steps run.
func (b *Backend) TrimAdapterPool() {
	if _, err := b.uploadsReady(); err != nil {
		return
	}
	unlock := b.onDevice()
	defer unlock()
	b.trim(0, true)
}

// SetAdapterPoolCap sets how many bytes of idle slabs the pool keeps (DefaultAdapterPoolCap
// unless set); slabs freed beyond it are released (stream-ordered; without stream-ordered
// allocation, only TrimAdapterPool releases slabs).
func (b *Backend) SetAdapterPoolCap(bytes int64) {
	u := &b.up
	limit := max(bytes, 0)
	u.mu.Lock()
	u.capBytes = limit
	u.mu.Unlock()
	if _, err := b.uploadsReady(); err == nil && u.async {
		unlock := b.onDevice()
		defer unlock()
		b.trim(limit, false)
	}
}

// AdapterPoolStats reports the slab pool's counters.
func (b *Backend) AdapterPoolStats() AdapterPoolStats {
	u := &b.up
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.stats
	for _, l := range u.idle {
		s.Idle += len(l)
	}
	s.IdleBytes, s.CapBytes, s.StreamOrdered = u.idleBytes, u.capBytes, u.async
	return s
}
