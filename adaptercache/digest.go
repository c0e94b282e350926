package adaptercache

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/loraplex/loraplex/model"
)

// Digest is the SHA-256 of everything about h that changes what it computes: per layer and
// projection the rank, the scale and both tensors (dtype, shape, bytes; for a tensor left in its
// codec stream for the device, the stream), and nothing else: not the name, not the path. Two
// adapters with equal digests compute the same deltas, so the engine's prefix cache may share
// their KV pages; an adapter reloaded under the same name with other weights gets another digest.
//
// The cache computes it once per load, on the load's first upload beside the copy to the
// device (Cache.upload), before the device copy can be leased; it is still on the cold-load
// path where it outlasts the copy: one goroutine hashing a rank-16 Llama-3-8B adapter's 24 MB
// of q4 streams took about as long as reading and checking the file
// (bench/results/coldload-host-cpu.md). So the bytes are hashed per tensor, by up to
// GOMAXPROCS goroutines (hashTensors), and the digest is the SHA-256 of the ordered list of
// per-tensor records: layer, projection, rank, scale, and per tensor its
// dtype, shape, form (codec and group for a stream), byte length and the SHA-256 of its bytes.
// That is construction v2 (the domain string says so); v1 hashed the bytes themselves in one
// stream. The records are fixed-size or length-prefixed, so no two adapters hash the same
// bytes, and the order is the modules' whatever the goroutines' schedule.
func Digest(h *model.HostAdapter) [32]byte { return digestOn(h, runtime.GOMAXPROCS(0)) }

// digestOn is Digest hashing the tensors on at most workers goroutines (the caller's included).
func digestOn(h *model.HostAdapter, workers int) [32]byte {
	var tensors []*model.HostTensor
	for l := range h.Modules {
		for _, m := range h.Modules[l] {
			if m != nil {
				tensors = append(tensors, &m.A, &m.B)
			}
		}
	}
	sums := hashTensors(tensors, workers)

	d := sha256.New()
	d.Write([]byte("loraplex adapter v2\x00"))
	var buf [8]byte
	putInt := func(v int) {
		binary.LittleEndian.PutUint64(buf[:], uint64(v))
		d.Write(buf[:])
	}
	// Every variable-length field is length-prefixed, so no two adapters hash the same bytes.
	putString := func(s string) {
		putInt(len(s))
		d.Write([]byte(s))
	}
	putInt(len(h.Modules))
	i := 0
	for l := range h.Modules {
		for p, m := range h.Modules[l] {
			if m == nil {
				continue
			}
			putInt(l)
			putInt(p)
			putInt(m.Rank)
			putInt(int(math.Float32bits(m.Scale)))
			for _, t := range []*model.HostTensor{&m.A, &m.B} {
				putString(t.DType.String())
				putInt(len(t.Shape))
				for _, n := range t.Shape {
					putInt(n)
				}
				if enc := t.Encoded; enc != nil {
					putString("encoded")
					putString(enc.Codec)
					putInt(enc.Group)
				} else {
					putString("data")
				}
				putInt(len(tensorBytes(t)))
				d.Write(sums[i][:])
				i++
			}
		}
	}
	var out [32]byte
	d.Sum(out[:0])
	return out
}

// tensorBytes is what Digest hashes of t: its codec stream if it is left encoded, else its data.
func tensorBytes(t *model.HostTensor) []byte {
	if t.Encoded != nil {
		return t.Encoded.Stream
	}
	return t.Data
}

// hashTensors returns the SHA-256 of each tensor's bytes, in tensors' order, computed by
// min(workers, len(tensors)) goroutines (at least the caller) that take the next tensor as they
// finish one (an adapter's tensors differ in size by the projections' shapes), all ended when
// it returns.
func hashTensors(tensors []*model.HostTensor, workers int) [][32]byte {
	sums := make([][32]byte, len(tensors))
	var next atomic.Int64
	work := func() {
		for i := int(next.Add(1) - 1); i < len(tensors); i = int(next.Add(1) - 1) {
			sums[i] = sha256.Sum256(tensorBytes(tensors[i]))
		}
	}
	var wg sync.WaitGroup
	for range min(workers, len(tensors)) - 1 {
		wg.Go(work)
	}
	work() // the caller is one of the workers
	wg.Wait()
	return sums
}
