//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
)

// Adapter uploads (model.AdapterUploader).
//
// Backend.Upload, once per tensor, costs a cudaMalloc, a pageable copy on the legacy stream and a
// sync per tensor, and Free a cudaFree per tensor, which waits for the whole device, i.e. for the
// step the engine is running. Here an adapter is one device allocation (a slab) holding all of
// its A and B tensors as bf16 views at aligned offsets; slabs come from a pool and go back to it
// instead of being freed. The host data is converted into a pinned staging buffer and copied with
// cudaMemcpyAsync on an upload stream of its own (non-blocking: it does not serialise with the
// compute stream), in chunks issued as the conversion goes so that the copy overlaps the
// conversion, and only that stream is synchronised. Slabs are allocated and (when the pool is
// over its cap) released stream-ordered on the upload streams (cudaMallocAsync/cudaFreeAsync),
// so nothing here waits for the compute stream.

const (
	// numStagers bounds concurrent uploads: each has its own pinned buffer and stream.
	numStagers = 2
	// issueChunk: converted bytes are handed to the copy engine in pieces of at least this much.
	issueChunk = 4 << 20
	// parallelConvert: tensors with at least this many elements to convert are split over CPUs.
	parallelConvert = 1 << 18
)

// part is one tensor of an upload: its host data and where it goes in the slab.
type part struct {
	src    model.HostTensor
	off, n int // byte offset in the slab (and in the staging buffer), elements
	view   *model.Tensor
	// Device-decoded tensors (src.Encoded): the stream's header and payload, and where the
	// payload goes in the stager's device scratch.
	hdr     lorapack.Header
	payload []byte
	scr     int
}

// stager is a pinned staging buffer with its upload stream; one upload holds it at a time.
type stager struct {
	host   unsafe.Pointer // pinned host memory (cudaMallocHost), not Go memory
	cap    int
	stream C.uintptr_t
	dev    uintptr // device scratch for encoded payloads (growScratch)
	devCap int
}

// uploader is the Backend's adapter upload state. Set up on the first upload (initOnce).
type uploader struct {
	initOnce sync.Once
	initErr  error
	async    bool // the device supports stream-ordered allocation
	stagers  chan *stager
	stream   C.uintptr_t // releases trimmed slabs

	mu        sync.Mutex
	idle      map[int][]uintptr // idle slabs by size class
	idleBytes int64
	capBytes  int64
	stats     AdapterPoolStats
}

// onDevice locks the goroutine to its thread and makes b's device current there: the CUDA
// runtime's current device is per thread, and uploads come from goroutines of their own.
func (b *Backend) onDevice() (unlock func()) {
	runtime.LockOSThread()
	C.lp_set_device(C.int(b.device))
	return runtime.UnlockOSThread
}

// uploads sets up the upload streams and the pool once. Called on a thread made by onDevice.
func (b *Backend) uploads() (*uploader, error) {
	u := &b.up
	u.initOnce.Do(func() {
		var yes C.int
		if C.lp_mem_pools_supported(C.int(b.device), &yes) == 0 && yes != 0 {
			u.async = true
		}
		C.lp_last_error()
		u.mu.Lock()
		u.idle = map[int][]uintptr{}
		u.mu.Unlock()
		if err := cudaError("upload stream", C.s_stream_create(&u.stream)); err != nil {
			u.initErr = err
			return
		}
		u.stagers = make(chan *stager, numStagers)
		for i := 0; i < numStagers; i++ {
			s := &stager{}
			if err := cudaError("upload stream", C.s_stream_create(&s.stream)); err != nil {
				u.initErr = err
				return
			}
			u.stagers <- s
		}
	})
	return u, u.initErr
}

// fail records a failed CUDA call as the backend's sticky error (as ok does, for callers off the
// engine loop: no recording can be in progress on their side) and returns it.
func (b *Backend) fail(op string, code C.int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = cudaError(op, code)
	}
	return b.err
}

func alignUp(n int) int { return (n + slabAlign - 1) / slabAlign * slabAlign }

// UploadAdapter implements model.AdapterUploader: one slab, one staged asynchronous copy on an
// upload stream, a sync of that stream only. Safe from several goroutines and while steps run;
// the adapter is on the device (visible to the compute stream's next step) when it returns.
func (b *Backend) UploadAdapter(cfg *model.Config, h *model.HostAdapter) (*model.Adapter, error) {
	if len(h.Modules) != cfg.NumLayers {
		return nil, fmt.Errorf("adapter %q: has %d layers, the model %d", h.Name, len(h.Modules), cfg.NumLayers)
	}
	// Lay the tensors out, checking every shape and dtype before any C call.
	var parts, encs []part
	// place checks t and records it as a part whose view is *v (its offset set once all are placed).
	place := func(t model.HostTensor, rows, cols int, v *model.Tensor) error {
		if rows < 0 || cols < 0 {
			return fmt.Errorf("cuda: %s: bad shape %dx%d", t.Name, rows, cols)
		}
		*v = model.Tensor{Rows: rows, Cols: cols, DType: model.BF16}
		if t.Encoded != nil {
			if !b.DecodesOnDevice(t.Encoded.Codec) {
				return fmt.Errorf("cuda: %s: codec %q is not decoded on the device", t.Name, t.Encoded.Codec)
			}
			h, p, err := encodedLayout(t, rows, cols)
			if err != nil {
				return err
			}
			encs = append(encs, part{src: t, n: rows * cols, hdr: h, payload: p, view: v})
			return nil
		}
		switch {
		case len(t.Shape) == 1: // Backend.Upload keeps vectors in F32: leave them to it
			return fmt.Errorf("cuda: %s: a vector in an adapter: %w", t.Name, model.ErrUnsupported)
		case t.DType != model.F32 && t.DType != model.BF16 && t.DType != model.F16:
			return fmt.Errorf("cuda: %s: dtype %s: %w", t.Name, t.DType, model.ErrUnsupported)
		}
		n := rows * cols
		if len(t.Data) != n*t.DType.Size() {
			return fmt.Errorf("cuda: %s holds %d bytes, want %d for %dx%d %s", t.Name, len(t.Data), n*t.DType.Size(), rows, cols, t.DType)
		}
		parts = append(parts, part{src: t, n: n, view: v})
		return nil
	}
	a := &model.Adapter{Name: h.Name, Modules: make([][model.NumProj]*model.LoRAWeights, cfg.NumLayers), Bytes: h.Bytes}
	for l := range h.Modules {
		for p := model.Proj(0); p < model.NumProj; p++ {
			m := h.Modules[l][p]
			if m == nil {
				continue
			}
			out, in := cfg.ProjShape(p)
			w := &model.LoRAWeights{Rank: m.Rank, Scale: m.Scale}
			if err := place(m.A, m.Rank, in, &w.A); err != nil {
				return nil, fmt.Errorf("adapter %q: %w", h.Name, err)
			}
			if err := place(m.B, out, m.Rank, &w.B); err != nil {
				return nil, fmt.Errorf("adapter %q: %w", h.Name, err)
			}
			a.Modules[l][p] = w
			a.MaxRank = max(a.MaxRank, m.Rank)
		}
	}
	// The host-converted tensors first (one contiguous range to copy), then the device-decoded ones.
	size := slabAlign
	for _, list := range [][]part{parts, encs} {
		for i := range list {
			list[i].off = size
			list[i].view.Off = size / 2
			size += alignUp(2 * list[i].n)
		}
	}
	hostEnd := slabAlign
	if len(parts) > 0 {
		hostEnd = parts[len(parts)-1].off + 2*parts[len(parts)-1].n
	}
	// The encoded payloads' place in the device scratch, and in the staging buffer after the slab's range.
	scrSize, maxN := 0, 0
	if len(encs) > 0 {
		scrSize = alignUp(4*len(encs)) + alignUp(dequantDesc*len(encs))
		for i := range encs {
			encs[i].scr = scrSize
			scrSize += alignUp(len(encs[i].payload))
			maxN = max(maxN, encs[i].n)
		}
	}
	stageScr := alignUp(hostEnd)
	if err := b.Err(); err != nil {
		return nil, err
	}

	unlock := b.onDevice()
	defer unlock()
	u, err := b.uploads()
	if err != nil {
		return nil, err
	}
	st := <-u.stagers
	defer func() { u.stagers <- st }()
	if err := st.grow(stageScr + scrSize); err != nil {
		return nil, fmt.Errorf("adapter %q: %w", h.Name, err)
	}
	if err := st.growScratch(u, scrSize); err != nil {
		return nil, fmt.Errorf("adapter %q: %w", h.Name, err)
	}
	s, err := u.take(size, st.stream)
	if err != nil {
		return nil, fmt.Errorf("adapter %q: %w", h.Name, err)
	}

	buf := unsafe.Slice((*byte)(st.host), st.cap)
	// Device-decoded tensors first: stage their payloads and descriptors, copy them to the
	// scratch, and launch the decoder, which runs while the host converts the rest.
	if len(encs) > 0 {
		scr := buf[stageScr : stageScr+scrSize]
		clear(scr[:4*len(encs)])
		putDequantDescs(scr[alignUp(4*len(encs)):], encs, st.dev, s.ptr)
		copyPayloads(scr, encs)
		if code := C.s_htod_pinned(C.uintptr_t(st.dev), C.uintptr_t(uintptr(st.host)+uintptr(stageScr)), C.size_t(scrSize), st.stream); code != 0 {
			return nil, b.fail("adapter upload", code)
		}
		if code := C.s_dequant(C.uintptr_t(st.dev+uintptr(alignUp(4*len(encs)))), C.int(len(encs)), C.uint(maxN), st.stream); code != 0 {
			return nil, b.fail("adapter dequant", code)
		}
		// The error words come back into the staging buffer (its payloads have been copied by now:
		// stream order).
		if code := C.s_dtoh(unsafe.Pointer(&scr[0]), C.uintptr_t(st.dev), C.size_t(4*len(encs)), st.stream); code != 0 {
			return nil, b.fail("adapter dequant", code)
		}
	}

	// Convert into the pinned buffer in batches of about issueChunk bytes (parts in parallel),
	// handing each batch to the copy engine before converting the next: the copies overlap the
	// conversion.
	issued := 0
	issue := func(end int) error {
		if end <= issued {
			return nil
		}
		code := C.s_htod_pinned(C.uintptr_t(s.ptr+uintptr(issued)), C.uintptr_t(uintptr(st.host)+uintptr(issued)), C.size_t(end-issued), st.stream)
		if code != 0 {
			return b.fail("adapter upload", code)
		}
		issued = end
		return nil
	}
	for first := 0; first < len(parts); {
		last := first + 1
		for last < len(parts) && parts[last-1].off+2*parts[last-1].n-parts[first].off < issueChunk {
			last++
		}
		convertParts(buf, parts[first:last])
		if err := issue(parts[last-1].off + 2*parts[last-1].n); err != nil {
			return nil, err // the slab is not reused: a copy may be under way, and the backend is unusable anyway
		}
		first = last
	}
	if code := C.s_stream_sync(st.stream); code != 0 {
		return nil, b.fail("adapter upload sync", code)
	}
	for i, e := range encs {
		if binary.LittleEndian.Uint32(buf[stageScr+4*i:]) == 0 {
			continue
		}
		b.FreeAdapter(&model.Adapter{Mem: &s}) // nothing reads it: back to the pool
		// The CPU decoder names what is wrong.
		err := lorapack.DecodeBF16(e.src.Encoded.Stream, make([]uint16, e.n))
		if err == nil {
			err = fmt.Errorf("%w: %v stream rejected by the device decoder", lorapack.ErrCorrupt, e.hdr.Codec)
		}
		return nil, fmt.Errorf("adapter %q: cuda: %s: %w", h.Name, e.src.Name, err)
	}
	for l := range a.Modules {
		for _, m := range a.Modules[l] {
			if m != nil {
				m.A.Buf, m.B.Buf = dev{s.ptr}, dev{s.ptr}
			}
		}
	}
	a.Mem, a.Owner = &s, b
	return a, nil
}

// uploadsReady sets the upload state up if needed (on a device thread).
func (b *Backend) uploadsReady() (*uploader, error) {
	unlock := b.onDevice()
	defer unlock()
	return b.uploads()
}

// grow makes the pinned buffer hold at least n bytes (rare: it keeps the largest size seen).
func (s *stager) grow(n int) error {
	if n <= s.cap {
		return nil
	}
	c := max(4<<20, 1<<bits.Len(uint(n-1)))
	if s.host != nil {
		// Our copies from it are done (each upload syncs its stream before giving it back).
		C.lp_free_host(s.host)
		s.host, s.cap = nil, 0
	}
	var hp unsafe.Pointer
	if code := C.lp_malloc_host(&hp, C.size_t(c)); code != 0 {
		C.lp_last_error()
		return cudaError("pinned staging buffer", code)
	}
	s.host, s.cap = hp, c
	return nil
}

// convertParts converts parts into buf (at their offsets), spread over the CPUs when there is
// enough work.
func convertParts(buf []byte, parts []part) {
	total := 0
	for _, pt := range parts {
		total += pt.n
	}
	workers := min(runtime.GOMAXPROCS(0), total/(parallelConvert/4))
	if len(parts) == 1 || workers < 2 {
		for _, pt := range parts {
			toBF16(buf[pt.off:pt.off+2*pt.n], pt.src, true)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(parts) {
					return
				}
				pt := parts[i]
				toBF16(buf[pt.off:pt.off+2*pt.n], pt.src, false)
			}
		}()
	}
	wg.Wait()
}

// toBF16 writes h's elements as bf16 into dst (2 bytes each), exactly as Backend.Upload
// converts matrices: BF16 copied as is, F32 and F16 rounded to nearest even. With parallel, a
// large tensor is split over the CPUs.
func toBF16(dst []byte, h model.HostTensor, parallel bool) {
	n := len(dst) / 2
	conv := func(lo, hi int) {
		switch h.DType {
		case model.BF16:
			copy(dst[2*lo:2*hi], h.Data[2*lo:2*hi])
		case model.F32:
			for i := lo; i < hi; i++ {
				f := math.Float32frombits(binary.LittleEndian.Uint32(h.Data[4*i:]))
				binary.LittleEndian.PutUint16(dst[2*i:], model.F32ToBF16(f))
			}
		default: // F16
			for i := lo; i < hi; i++ {
				f := model.F16ToF32(binary.LittleEndian.Uint16(h.Data[2*i:]))
				binary.LittleEndian.PutUint16(dst[2*i:], model.F32ToBF16(f))
			}
		}
	}
	workers := min(runtime.GOMAXPROCS(0), n/(parallelConvert/4))
	if !parallel || n < parallelConvert || workers < 2 {
		conv(0, n)
		return
	}
	var wg sync.WaitGroup
	per := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += per {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			conv(lo, hi)
		}(lo, min(lo+per, n))
	}
	wg.Wait()
}

// ReadBytes copies a tensor's raw elements back to the host (bf16 tensors as 2 bytes each, F32
// as 4), on the legacy stream: for tests and tools, which may call it from any goroutine.
func (b *Backend) ReadBytes(t model.Tensor) ([]byte, error) {
	size := 4
	if t.DType == model.BF16 {
		size = 2
	}
	out := make([]byte, size*t.Rows*t.Cols)
	if err := b.Err(); err != nil || len(out) == 0 {
		return out, err
	}
	unlock := b.onDevice()
	defer unlock()
	if code := C.s_dtoh(unsafe.Pointer(&out[0]), ptr(t), C.size_t(len(out)), 0); code != 0 {
		return nil, b.fail("read bytes", code)
	}
	if code := C.s_stream_sync(0); code != 0 {
		return nil, b.fail("read bytes sync", code)
	}
	return out, nil
}
