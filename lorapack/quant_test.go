package lorapack

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/model"
)

var quantCodecs = []Codec{Q8, Q4}

// groupMax is the bf16 maximum the encoder stores for vals[lo:hi].
func groupMax(vals []float32) float64 {
	var m float32
	for _, v := range vals {
		m = max(m, float32(math.Abs(float64(v))))
	}
	return float64(model.BF16ToF32(bf16Ceil(m)))
}

// decodeBoth decodes to float32 and bf16 and checks that the bf16 values are the float32 ones
// rounded.
func decodeBoth(t *testing.T, st []byte, n int) []float32 {
	t.Helper()
	got := make([]float32, n)
	for i := range got {
		got[i] = 42 // decoders must overwrite everything
	}
	if err := DecodeF32(st, got); err != nil {
		t.Fatal(err)
	}
	bf := make([]uint16, n)
	for i := range bf {
		bf[i] = 0x4228
	}
	if err := DecodeBF16(st, bf); err != nil {
		t.Fatal(err)
	}
	for i := range bf {
		if bf[i] != model.F32ToBF16(got[i]) {
			t.Fatalf("value %d: bf16 %#04x, float32 %v", i, bf[i], got[i])
		}
	}
	return got
}

// q8 / q4 round trips: every value within half a step (M / 2Q) of the original, the group
// maximum exact when it is a bfloat16, zeros exact, at shapes with odd lengths and group tails.
func TestQuantRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for _, shape := range [][2]int{{1, 1}, {1, 3}, {3, 5}, {8, 33}, {7, 64}, {320, 8}, {16, 129}} {
		n := shape[0] * shape[1]
		for _, kind := range []string{"gauss", "bf16", "zeros", "heavy"} {
			vals := randTensor(r, n, 0.01)
			switch kind {
			case "bf16":
				for i, v := range vals {
					vals[i] = model.BF16ToF32(model.F32ToBF16(v))
				}
			case "zeros":
				clear(vals)
				if n > 2 {
					vals[n-1] = -3 // one group with a value, the others all zeros
				}
			case "heavy":
				for i := range vals {
					if i%17 == 0 {
						vals[i] *= 1000
					}
					if i%5 == 0 {
						vals[i] = 0
					}
				}
			}
			for _, c := range quantCodecs {
				for _, g := range []int{16, 32, 64, 128} {
					st, err := EncodeQuant(c, vals, shape[0], shape[1], g)
					if err != nil {
						t.Fatal(err)
					}
					if len(st) != QuantSize(c, n, g) {
						t.Fatalf("QuantSize %d, stream %d", QuantSize(c, n, g), len(st))
					}
					got := decodeBoth(t, st, n)
					q := float64(quantMax(c))
					for lo := 0; lo < n; lo += g {
						hi := min(n, lo+g)
						M := groupMax(vals[lo:hi])
						half := M / (2 * q)
						for i := lo; i < hi; i++ {
							err := math.Abs(float64(got[i]) - float64(vals[i]))
							// half a step, plus the float32 rounding of the decoded value
							if err > half*(1+1e-9)+math.Abs(float64(got[i]))*0x1p-24 {
								t.Fatalf("%v g%d %v %s: value %d = %v decodes to %v, error %g > half step %g", c, g, shape, kind, i, vals[i], got[i], err, half)
							}
							if vals[i] == 0 && got[i] != 0 {
								t.Fatalf("%v: zero %d decodes to %v", c, i, got[i])
							}
							if kind != "gauss" && math.Abs(float64(vals[i])) == M && got[i] != vals[i] {
								t.Fatalf("%v g%d %s: group maximum %v decodes to %v", c, g, kind, vals[i], got[i])
							}
						}
					}
				}
			}
		}
	}
}

func TestQuantBitsPerValue(t *testing.T) {
	for _, c := range []struct {
		c    Codec
		g    int
		bits float64
	}{{Q4, 32, 4.5}, {Q4, 64, 4.25}, {Q8, 32, 8.5}, {Q8, 64, 8.25}} {
		if b := BitsPerValue(c.c, c.g); b != c.bits {
			t.Errorf("%v g%d: %v bits, want %v", c.c, c.g, b, c.bits)
		}
		n := 4096 * 16
		if got := float64(8*(QuantSize(c.c, n, c.g)-HeaderSize)) / float64(n); got != c.bits {
			t.Errorf("%v g%d: stream has %v bits a value, want %v", c.c, c.g, got, c.bits)
		}
	}
}

func TestQuantEncodeRefuses(t *testing.T) {
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), math.MaxFloat32} {
		vals := []float32{1, 2, bad, 4}
		for _, c := range quantCodecs {
			if _, err := EncodeQuant(c, vals, 2, 2, 32); err == nil {
				t.Errorf("%v: %v accepted", c, bad)
			}
		}
	}
	vals := []float32{1, 2, 3, 4}
	for _, g := range []int{0, 8, 24, 256} {
		if _, err := EncodeQuant(Q8, vals, 2, 2, g); err == nil {
			t.Errorf("group %d accepted", g)
		}
	}
	if _, err := EncodeQuant(Rice, vals, 2, 2, 32); err == nil {
		t.Error("EncodeQuant(Rice) accepted")
	}
	if _, err := EncodeQuant(Q4, vals, 3, 2, 32); err == nil {
		t.Error("wrong shape accepted")
	}
}

// Corrupt q8 / q4 / rice-q8 streams are refused with ErrCorrupt: bad header fields, lengths,
// group maxima, codes and padding.
func TestQuantDecodeRejects(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	vals := randTensor(r, 5*13, 1) // 65 values: an odd count and a tail group
	set := func(st []byte, off int, b ...byte) []byte {
		s := slices.Clone(st)
		copy(s[off:], b)
		return s
	}
	for _, c := range quantCodecs {
		st, err := EncodeQuant(c, vals, 5, 13, 32)
		if err != nil {
			t.Fatal(err)
		}
		ng := 3
		codes := HeaderSize + 2*ng
		bads := map[string][]byte{
			"short":          st[:len(st)-1],
			"long":           append(slices.Clone(st), 0),
			"group 0":        set(st, 3, 0),
			"group 24":       set(st, 3, 24),
			"group 255":      set(st, 3, 255),
			"kept":           set(st, 12, 1),
			"scale":          set(st, 16, 0, 0, 0x80, 0x3f),
			"negative max":   set(st, HeaderSize+1, st[HeaderSize+1]|0x80),
			"inf max":        set(st, HeaderSize, 0x80, 0x7f),
			"nan max":        set(st, HeaderSize, 0xc0, 0x7f),
			"zero max codes": set(set(st, HeaderSize, 0, 0), codes, 1),
			"huge shape":     set(st, 4, 0xff, 0xff, 0xff, 0xff),
		}
		if c == Q8 {
			bads["code -128"] = set(st, codes+7, 0x80)
		} else {
			bads["code -8"] = set(st, codes+7, 0x81)
			bads["padding"] = set(st, len(st)-1, st[len(st)-1]|0x10)
		}
		for name, b := range bads {
			dst := make([]float32, len(vals))
			if err := DecodeF32(b, dst); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%v %s: %v", c, name, err)
			}
			if err := DecodeBF16(b, make([]uint16, len(vals))); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%v %s (bf16): %v", c, name, err)
			}
		}
		if err := DecodeF32(st, make([]float32, len(vals)-1)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%v: wrong destination size: %v", c, err)
		}
	}
	sp, _ := PerTensor(vals, 5, 13, 0.3)
	st, err := EncodeRiceQ8(sp, vals)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"short":          st[:len(st)-1],
		"long":           append(slices.Clone(st), 0),
		"zero magnitude": set(st, len(st)-1, 0),
		"zero scale":     set(st, 16, 0, 0, 0, 0),
		"negative scale": set(st, 19, st[19]|0x80),
		"nan scale":      set(st, 16, 0, 0, 0xc0, 0x7f),
		"rice k":         set(st, 3, 31),
	} {
		if err := DecodeF32(b, make([]float32, len(vals))); !errors.Is(err, ErrCorrupt) {
			t.Errorf("rice-q8 %s: %v", name, err)
		}
		if err := DecodeBF16(b, make([]uint16, len(vals))); !errors.Is(err, ErrCorrupt) {
			t.Errorf("rice-q8 %s (bf16): %v", name, err)
		}
	}
}

// rice-q8 keeps exactly the kept set and signs of the sparse codecs, and each kept magnitude to
// within Scale/510 (Scale the largest kept |value|, decoded exactly).
func TestRiceQ8RoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(25, 26))
	for _, shape := range [][2]int{{1, 1}, {3, 5}, {16, 129}, {64, 300}} {
		vals := randTensor(r, shape[0]*shape[1], 0.01)
		for _, d := range []float64{0.0001, 0.01, 0.25, 0.5, 1} {
			sp, err := PerTensor(vals, shape[0], shape[1], d)
			if err != nil {
				t.Fatal(err)
			}
			st, err := EncodeRiceQ8(sp, vals)
			if err != nil {
				t.Fatal(err)
			}
			if len(st) != SparseSize(RiceQ8, sp) {
				t.Fatalf("SparseSize %d, stream %d", SparseSize(RiceQ8, sp), len(st))
			}
			got := decodeBoth(t, st, len(vals))
			signs := sp.Values()
			var scale float64
			for _, i := range sp.Idx {
				scale = max(scale, math.Abs(float64(vals[i])))
			}
			for i, v := range vals {
				g := got[i]
				if signs[i] == 0 {
					if g != 0 {
						t.Fatalf("%v d=%v: dropped value %d decodes to %v", shape, d, i, g)
					}
					continue
				}
				if g == 0 || (g < 0) != (v < 0) {
					t.Fatalf("%v d=%v: kept %v decodes to %v", shape, d, v, g)
				}
				tol := scale / 510 * (1 + 1e-6)
				if math.Abs(float64(v)) < scale/510 {
					tol = scale / 255
				}
				if e := math.Abs(float64(g) - float64(v)); e > tol {
					t.Fatalf("%v d=%v: %v decodes to %v (error %g > %g)", shape, d, v, g, e, tol)
				}
				if math.Abs(float64(v)) == scale && g != v {
					t.Fatalf("largest kept %v decodes to %v", v, g)
				}
			}
		}
	}
	// Kept values too small for one magnitude step stay non-zero.
	vals := []float32{1, -1e-6, 0, 2e-6}
	sp, _ := PerTensor(vals, 1, 4, 1)
	st, err := EncodeRiceQ8(sp, vals)
	if err != nil {
		t.Fatal(err)
	}
	got := decodeBoth(t, st, 4)
	if got[0] != 1 || got[1] >= 0 || got[2] != 0 || got[3] <= 0 {
		t.Fatalf("decoded %v", got)
	}
	// A zero or sign-flipped kept value is refused.
	sp.Neg[0] ^= 1
	if _, err := EncodeRiceQ8(sp, vals); err == nil {
		t.Error("inconsistent signs accepted")
	}
}

// Streams written before q8 / q4 / rice-q8 existed decode as they did: the codec ids and header
// checks of the old codecs are unchanged (a ternary header with a parameter is still refused).
func TestOldCodecIDs(t *testing.T) {
	for c, name := range map[Codec]string{Dense: "dense-bf16", Ternary: "ternary2", Bitmap: "bitmap", Rice: "rice", Q8: "q8", Q4: "q4", RiceQ8: "rice-q8"} {
		if c.String() != name {
			t.Errorf("codec %d is %q, want %q", c, c, name)
		}
		if p, ok := ParseCodec(name); !ok || p != c {
			t.Errorf("ParseCodec(%q) = %v %v", name, p, ok)
		}
	}
	st, _ := EncodeDense([]float32{1, 2}, 1, 2)
	st[3] = 32
	if _, _, err := ParseHeader(st); !errors.Is(err, ErrCorrupt) {
		t.Errorf("dense with a parameter: %v", err)
	}
	if Codec(8).String() != "codec(8)" {
		t.Error(Codec(8).String())
	}
}

// hasNibble8 against a nibble-by-nibble check: every position of the word loop and the tail,
// every nibble value, and a second non-8 nibble set alongside.
func TestHasNibble8(t *testing.T) {
	for n := range 20 {
		for pos := range 2 * n {
			for v := range byte(16) {
				p := make([]byte, n)
				for i := range p {
					p[i] = 0x77 // 7, 7: no borrow into a neighbour
				}
				if pos > 0 {
					p[0] ^= 0x0f // a 0 nibble
				}
				p[pos/2] = p[pos/2]&^(15<<(4*(pos%2))) | v<<(4*(pos%2))
				want := false
				for i := range 2 * n {
					if p[i/2]>>(4*(i%2))&15 == 8 {
						want = true
					}
				}
				if got := hasNibble8(p); got != want {
					t.Fatalf("%x: %v, want %v", p, got, want)
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(27, 28))
	for range 20000 {
		p := make([]byte, r.IntN(40))
		want := false
		for i := range p {
			for p[i] = byte(r.Uint32()); p[i]&15 == 8 || p[i]>>4 == 8; p[i] = byte(r.Uint32()) {
			}
		}
		if len(p) > 0 && r.IntN(2) == 0 {
			i := r.IntN(len(p))
			p[i] = p[i]&0xf0 | 8
			if r.IntN(2) == 0 {
				p[i] = p[i]<<4 | p[i]>>4
			}
			want = true
		}
		if got := hasNibble8(p); got != want {
			t.Fatalf("%x: %v, want %v", p, got, want)
		}
	}
}
