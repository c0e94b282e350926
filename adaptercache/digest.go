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
// GOMAXPROCS goroutines (hashJob), and the digest is the SHA-256 of the ordered list of
// per-tensor records: layer, projection, rank, scale, and per tensor its
// dtype, shape, form (codec and group for a stream), byte length and the SHA-256 of its bytes.
// That is construction v2 (the domain string says so); v1 hashed the bytes themselves in one
// stream. The records are fixed-size or length-prefixed, so no two adapters hash the same
// bytes, and the order is the modules' whatever the goroutines' schedule.
func Digest(h *model.HostAdapter) [32]byte {
	j := newHashJob(h)
	j.run(runtime.GOMAXPROCS(0))
	return j.digest()
}

// hashJob is the hashing of one adapter's tensors, shared by any number of goroutines: each
// takes the next tensor as it finishes one (an adapter's tensors differ in size by the
// projections' shapes) until none is left, and done is closed when the last sum is written.
// So a goroutine with other work first (the cache's upload) can join the workers late.
type hashJob struct {
	h        *model.HostAdapter
	tensors  []*model.HostTensor // the modules' order, A before B
	sums     [][32]byte          // sums[i]: SHA-256 of tensorBytes(tensors[i])
	next     atomic.Int64        // the next tensor to take
	finished atomic.Int64        // sums written
	done     chan struct{}
}

func newHashJob(h *model.HostAdapter) *hashJob {
	j := &hashJob{h: h, done: make(chan struct{})}
	for l := range h.Modules {
		for _, m := range h.Modules[l] {
			if m != nil {
				j.tensors = append(j.tensors, &m.A, &m.B)
			}
		}
	}
	j.sums = make([][32]byte, len(j.tensors))
	if len(j.tensors) == 0 {
		close(j.done)
	}
	return j
}

// work hashes tensors until none is left to take.
func (j *hashJob) work() {
	for i := int(j.next.Add(1) - 1); i < len(j.tensors); i = int(j.next.Add(1) - 1) {
		j.sums[i] = sha256.Sum256(tensorBytes(j.tensors[i]))
		if int(j.finished.Add(1)) == len(j.tensors) {
			close(j.done)
		}
	}
}

// run hashes on min(workers, tensors) goroutines, the caller's included, and returns when
// every sum is written (by them or by any goroutine that joined with work) and the goroutines
// it started have ended.
func (j *hashJob) run(workers int) {
	var wg sync.WaitGroup
	for range min(workers, len(j.tensors)) - 1 {
		wg.Go(j.work)
	}
	j.work()
	<-j.done
	wg.Wait()
}

// digest is the adapter's digest from the sums: call it after run returned.
func (j *hashJob) digest() [32]byte {
	h, sums := j.h, j.sums
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
