package codec

import (
	"math/rand/v2"
	"testing"
)

// FuzzDecode feeds arbitrary streams to the decoders: they must return an error or decode, never
// panic, and a stream that decodes must decode the same way to float32 and to bfloat16.
func FuzzDecode(f *testing.F) {
	r := rand.New(rand.NewPCG(11, 12))
	vals := randTensor(r, 5*13, 1)
	d, _ := EncodeDense(vals, 5, 13)
	f.Add(d)
	for _, density := range []float64{0.02, 0.3, 1} {
		sp, _ := PerTensor(vals, 5, 13, density)
		for _, c := range sparseCodecs {
			s, _ := EncodeSparse(c, sp)
			f.Add(s)
		}
	}
	f.Add([]byte("LX\x04\x1e\x00\x00\x00\x10\x00\x00\x00\x10\x01\x00\x00\x00\x00\x00\x80\x3f\x00\x00"))
	f.Fuzz(func(t *testing.T, s []byte) {
		h, _, err := ParseHeader(s)
		if err != nil || h.N() > 1<<16 {
			return
		}
		a := make([]float32, h.N())
		b := make([]uint16, h.N())
		ea, eb := DecodeF32(s, a), DecodeBF16(s, b)
		if (ea == nil) != (eb == nil) {
			t.Fatalf("float32 error %v, bf16 error %v", ea, eb)
		}
	})
}
