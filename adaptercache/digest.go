package adaptercache

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"math"

	"github.com/loraplex/loraplex/model"
)

// Digest is the SHA-256 of everything about h that changes what it computes: per layer and
// projection the rank, the scale and both tensors (dtype, shape, bytes; for a tensor left in its
// codec stream for the device, the stream), and nothing else: not the name, not the path. Two
// adapters with equal digests compute the same deltas, so the engine's prefix cache may share
// their KV pages; an adapter reloaded under the same name with other weights gets another digest.
func Digest(h *model.HostAdapter) [32]byte {
	d := sha256.New()
	d.Write([]byte("loraplex adapter v1\x00"))
	var buf [8]byte
	putInt := func(w hash.Hash, v int) {
		binary.LittleEndian.PutUint64(buf[:], uint64(v))
		w.Write(buf[:])
	}
	// Every variable-length field is length-prefixed, so no two adapters hash the same bytes.
	putString := func(w hash.Hash, s string) {
		putInt(w, len(s))
		w.Write([]byte(s))
	}
	putInt(d, len(h.Modules))
	for l := range h.Modules {
		for p, m := range h.Modules[l] {
			if m == nil {
				continue
			}
			putInt(d, l)
			putInt(d, p)
			putInt(d, m.Rank)
			putInt(d, int(math.Float32bits(m.Scale)))
			for _, t := range []*model.HostTensor{&m.A, &m.B} {
				putString(d, t.DType.String())
				putInt(d, len(t.Shape))
				for _, n := range t.Shape {
					putInt(d, n)
				}
				if enc := t.Encoded; enc != nil {
					putString(d, "encoded")
					putString(d, enc.Codec)
					putInt(d, enc.Group)
					putInt(d, len(enc.Stream))
					d.Write(enc.Stream)
					continue
				}
				putString(d, "data")
				putInt(d, len(t.Data))
				d.Write(t.Data)
			}
		}
	}
	var out [32]byte
	d.Sum(out[:0])
	return out
}
