package router

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
)

// Digest is the SHA-256 of what the bundle computes: per layer its expert slots (as positions in
// Experts(), whose adapters the caller identifies by their own content digests), top-k,
// temperature, null experts and every gate's values; not the bundle's folder or name. The engine
// combines it with the experts' digests to key a routed request's KV pages in its prefix cache.
func (b *Bundle) Digest() [32]byte {
	d := sha256.New()
	d.Write([]byte("loraplex router bundle v1\x00"))
	var buf [8]byte
	var chunk [4096]byte
	put := func(v uint64) {
		binary.LittleEndian.PutUint64(buf[:], v)
		d.Write(buf[:])
	}
	put(uint64(len(b.experts)))
	put(uint64(len(b.layers)))
	for l := range b.layers {
		ly := &b.layers[l]
		put(uint64(len(ly.Index)))
		for _, i := range ly.Index {
			put(uint64(i))
		}
		put(uint64(ly.TopK))
		put(uint64(math.Float32bits(ly.Temperature)))
		put(uint64(ly.Nulls))
		for p, g := range ly.Gates {
			if g == nil {
				continue
			}
			put(uint64(p))
			put(uint64(g.Rows))
			put(uint64(g.Cols))
			put(uint64(len(g.W)))
			for i := 0; i < len(g.W); i += len(chunk) / 4 {
				n := min(len(g.W)-i, len(chunk)/4)
				for j, v := range g.W[i : i+n] {
					binary.LittleEndian.PutUint32(chunk[4*j:], math.Float32bits(v))
				}
				d.Write(chunk[:4*n])
			}
		}
	}
	var out [32]byte
	d.Sum(out[:0])
	return out
}
