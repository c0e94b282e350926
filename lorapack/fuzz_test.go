package lorapack

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
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
	for _, c := range quantCodecs {
		for _, g := range []int{16, 32, 64} {
			q, _ := EncodeQuant(c, vals, 5, 13, g)
			f.Add(q)
		}
	}
	for _, density := range []float64{0.02, 0.5} {
		sp, _ := PerTensor(vals, 5, 13, density)
		q, _ := EncodeRiceQ8(sp, vals)
		f.Add(q)
	}
	// q4 of one value (a padding nibble), q8 with a zero group maximum, rice-q8 with nothing kept.
	f.Add([]byte("LX\x06\x20\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x3f\x07"))
	f.Add([]byte("LX\x05\x10\x01\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte("LX\x07\x00\x02\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
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
		if ea != nil && !errors.Is(ea, ErrCorrupt) {
			t.Fatalf("error %v does not wrap ErrCorrupt", ea)
		}
		if ea == nil && (h.Codec == Q8 || h.Codec == Q4 || h.Codec == RiceQ8) {
			for i := range a {
				if b[i] != model.F32ToBF16(a[i]) || math.IsNaN(float64(a[i])) || math.IsInf(float64(a[i]), 0) {
					t.Fatalf("%v value %d: float32 %v, bf16 %#04x", h.Codec, i, a[i], b[i])
				}
			}
		}
	})
}

// FuzzQuantRoundTrip encodes arbitrary float32 bit patterns with q8 and q4: non-finite inputs are
// refused, everything else decodes to within half a step of each group's maximum.
func FuzzQuantRoundTrip(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 1, 0, 0, 0}, uint8(1))
	f.Add([]byte{0xff, 0xff, 0x7f, 0x7f, 0, 0, 0x80, 0x7f}, uint8(0))
	f.Add([]byte{1, 0, 0, 0, 0x01, 0x80, 0, 0, 0x55, 0x55, 0x55, 0x55, 0xaa, 0xaa, 0xaa, 0x0a}, uint8(2))
	f.Fuzz(func(t *testing.T, raw []byte, gsel uint8) {
		n := len(raw) / 4
		if n == 0 {
			return
		}
		vals := make([]float32, n)
		finite := true
		for i := range vals {
			vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			if math.IsNaN(float64(vals[i])) || math.IsInf(float64(vals[i]), 0) {
				finite = false
			}
		}
		g := 16 << (gsel % 4)
		for _, c := range quantCodecs {
			st, err := EncodeQuant(c, vals, 1, n, g)
			if !finite {
				if err == nil {
					t.Fatalf("%v: non-finite input accepted", c)
				}
				continue
			}
			if err != nil {
				continue // beyond the bfloat16 range
			}
			got := make([]float32, n)
			if err := DecodeF32(st, got); err != nil {
				t.Fatalf("%v: %v", c, err)
			}
			q := float64(quantMax(c))
			for lo := 0; lo < n; lo += g {
				hi := min(n, lo+g)
				half := groupMax(vals[lo:hi]) / (2 * q)
				for i := lo; i < hi; i++ {
					if e := math.Abs(float64(got[i]) - float64(vals[i])); e > half*(1+1e-9)+math.Abs(float64(got[i]))*0x1p-24+0x1p-149 {
						t.Fatalf("%v g%d: %v decodes to %v (error %g, half step %g)", c, g, vals[i], got[i], e, half)
					}
				}
			}
		}
	})
}
