//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
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

// Device decoding (model.EncodedUploader): q8 / q4 tensors reach UploadAdapter as their codec
// streams. Their payloads (4.5 bits a value for q4 at group 32, not 16) go through the pinned
// staging buffer into a device scratch buffer of the stager's in one copy, and one kernel
// launch (kernels/dequant.cu) decodes all of them into their views in the slab, on the upload
// stream, while the host converts the other tensors. Headers, shapes and lengths are checked
// here before anything is copied; the kernel checks the codes and maxima as the CPU decoder
// does and sets a per-tensor error word, read back with the stream sync: a corrupt stream fails
// that adapter (its slab goes back to the pool), never the device.
//
// The scratch layout: an int32 error word per encoded tensor, the descriptors (dequantDesc
// bytes each, lp_dequant_desc of kernels/loraplex_kernels.h), then the payloads, each at an aligned offset.
const dequantDesc = int(C.sizeof_lp_dequant_desc)

// putDequantDescs writes one lp_dequant_desc per encoded tensor at the start of d (staging
// memory, 8-byte aligned): the payload at its offset in the device scratch, the error word at the
// scratch's start, the output at its offset in the slab.
func putDequantDescs(d []byte, encs []part, scratch, slab uintptr) {
	descs := unsafe.Slice((*C.lp_dequant_desc)(unsafe.Pointer(&d[0])), len(encs))
	for i, e := range encs {
		q4 := 0
		if e.hdr.Codec == lorapack.Q4 {
			q4 = 1
		}
		descs[i] = C.lp_dequant_desc{
			src:   C.uint64_t(uint64(scratch) + uint64(e.scr)),
			dst:   C.uint64_t(uint64(slab) + uint64(e.off)),
			err:   C.uint64_t(uint64(scratch) + uint64(4*i)),
			n:     C.uint32_t(e.n),
			group: C.uint32_t(e.hdr.Param),
			q4:    C.uint32_t(q4),
		}
	}
}

// DecodesOnDevice implements model.EncodedUploader: q8 and q4 streams are decoded on the GPU.
func (b *Backend) DecodesOnDevice(c string) bool { return c == "q4" || c == "q8" }

// encodedLayout checks an encoded tensor against the shape the model wants and returns its
// header and payload.
func encodedLayout(t model.HostTensor, rows, cols int) (lorapack.Header, []byte, error) {
	e := t.Encoded
	h, p, err := lorapack.ParseHeader(e.Stream)
	if err != nil {
		return h, nil, fmt.Errorf("cuda: %s: %w", t.Name, err)
	}
	if (h.Codec != lorapack.Q4 && h.Codec != lorapack.Q8) || h.Codec.String() != e.Codec || int(h.Param) != e.Group {
		return h, nil, fmt.Errorf("cuda: %s: %w: stream is %v group %d, the tensor says %s group %d", t.Name, lorapack.ErrCorrupt, h.Codec, h.Param, e.Codec, e.Group)
	}
	if h.Rows != rows || h.Cols != cols || uint64(rows)*uint64(cols) > math.MaxUint32 {
		return h, nil, fmt.Errorf("cuda: %s: %w: stream is [%d, %d], want [%d, %d]", t.Name, lorapack.ErrCorrupt, h.Rows, h.Cols, rows, cols)
	}
	return h, p, nil
}

// growScratch makes the stager's device scratch hold at least n bytes (it keeps the largest size
// seen). The old one is released stream-ordered where supported; without, cudaFree waits for the
// device, once per growth.
func (s *stager) growScratch(u *uploader, n int) error {
	if n <= s.devCap {
		return nil
	}
	c := max(4<<20, 1<<bits.Len(uint(n-1)))
	if s.dev != 0 {
		// The last upload that used it synced this stream.
		u.release([]slab{{ptr: s.dev, size: s.devCap}})
		s.dev, s.devCap = 0, 0
	}
	var p C.uintptr_t
	var code C.int
	if u.async {
		code = C.s_malloc_async(&p, C.size_t(c), s.stream)
	} else {
		code = C.s_malloc(&p, C.size_t(c))
	}
	if code != 0 {
		C.lp_last_error()
		return cudaError("device decode scratch", code)
	}
	s.dev, s.devCap = uintptr(p), c
	return nil
}

// copyPayloads copies the encoded tensors' payloads (the loader's private, checked copies of
// the streams) to their scratch offsets in dst, the pinned staging buffer, spread over the CPUs.
func copyPayloads(dst []byte, encs []part) {
	workers := min(runtime.GOMAXPROCS(0), len(encs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(encs) {
					return
				}
				e := encs[i]
				copy(dst[e.scr:e.scr+len(e.payload)], e.payload)
			}
		})
	}
	wg.Wait()
}
