package model

import (
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestConversions(t *testing.T) {
	for _, tc := range []struct {
		h    uint16
		want float32
	}{
		{0x0000, 0}, {0x3c00, 1}, {0xc000, -2}, {0x7bff, 65504}, {0x0001, float32(math.Ldexp(1, -24))},
		{0x03ff, float32(math.Ldexp(1023, -24))}, {0x7c00, float32(math.Inf(1))}, {0xfc00, float32(math.Inf(-1))},
	} {
		if got := F16ToF32(tc.h); got != tc.want {
			t.Errorf("F16ToF32(%#04x) = %g, want %g", tc.h, got, tc.want)
		}
	}
	if v := F16ToF32(0x7e00); !math.IsNaN(float64(v)) {
		t.Errorf("F16 NaN -> %g", v)
	}
	for _, tc := range []struct {
		f    float32
		want uint16
	}{
		{1, 0x3f80}, {-2, 0xc000},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie, even stays
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, odd rounds up
		{math.Float32frombits(0x3f808001), 0x3f81}, // above the tie
		{float32(math.Inf(1)), 0x7f80},
	} {
		if got := F32ToBF16(tc.f); got != tc.want {
			t.Errorf("F32ToBF16(%#08x) = %#04x, want %#04x", math.Float32bits(tc.f), got, tc.want)
		}
	}
	if got := F32ToBF16(float32(math.NaN())); BF16ToF32(got) == BF16ToF32(got) {
		t.Errorf("NaN rounded to a number: %#04x", got)
	}
	h := HostTensor{DType: BF16, Data: []byte{0x80, 0x3f, 0x00, 0xc0}}
	if h.At(0) != 1 || h.At(1) != -2 {
		t.Errorf("At: %g %g", h.At(0), h.At(1))
	}
}

func TestCheckStep(t *testing.T) {
	kv := KVSpec{Pages: 4, PageSize: 2}
	ok := func() *Step {
		return &Step{Tokens: []int32{1, 2}, Positions: []int32{0, 1}, Slots: []int32{6, 7},
			Seqs: []SeqRows{{Start: 0, N: 2, Len: 2, Pages: []int32{3}}}, LogitRows: []int32{1}}
	}
	if err := CheckStep(ok(), kv); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		edit func(*Step)
		want string
	}{
		"lengths":   {func(s *Step) { s.Slots = s.Slots[:1] }, "slots"},
		"slot":      {func(s *Step) { s.Slots[1] = 8 }, "slot 8"},
		"page":      {func(s *Step) { s.Seqs[0].Pages[0] = 4 }, "page 4"},
		"rows":      {func(s *Step) { s.Seqs[0].N = 3 }, "do not fit"},
		"len":       {func(s *Step) { s.Seqs[0].Len = 3 }, "do not fit"},
		"logit row": {func(s *Step) { s.LogitRows[0] = 2 }, "logit row 2"},
	} {
		s := ok()
		tc.edit(s)
		if err := CheckStep(s, kv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want mention of %q", name, err, tc.want)
		}
	}
}

// FirstNonFinite finds the first NaN or infinity of every dtype at every position (in the
// eight-byte blocks and in the tail), and nothing in finite data, extremes included.
func TestFirstNonFinite(t *testing.T) {
	type bad struct {
		dt   DType
		bits uint32
	}
	for _, b := range []bad{
		{F32, 0x7fc00000}, {F32, 0x7f800000}, {F32, 0xff800000}, {F32, 0x7f800001},
		{BF16, 0x7fc0}, {BF16, 0x7f80}, {BF16, 0xff80}, {BF16, 0xff81},
		{F16, 0x7e00}, {F16, 0x7c00}, {F16, 0xfc00}, {F16, 0x7c01},
	} {
		size := b.dt.Size()
		for n := 1; n <= 40; n++ { // the four-word rounds, the word loop and the tail
			finite := make([]byte, n*size)
			for i := 0; i < n; i++ { // the largest finite magnitude, alternating signs
				switch b.dt {
				case F32:
					binary.LittleEndian.PutUint32(finite[4*i:], 0x7f7fffff|uint32(i&1)<<31)
				case BF16:
					binary.LittleEndian.PutUint16(finite[2*i:], 0x7f7f|uint16(i&1)<<15)
				case F16:
					binary.LittleEndian.PutUint16(finite[2*i:], 0x7bff|uint16(i&1)<<15)
				}
			}
			if got := (HostTensor{DType: b.dt, Data: finite}).FirstNonFinite(); got != -1 {
				t.Fatalf("%v finite x%d: got %d", b.dt, n, got)
			}
			for at := 0; at < n; at++ {
				d := slices.Clone(finite)
				if size == 4 {
					binary.LittleEndian.PutUint32(d[4*at:], b.bits)
				} else {
					binary.LittleEndian.PutUint16(d[2*at:], uint16(b.bits))
				}
				if got := (HostTensor{DType: b.dt, Data: d}).FirstNonFinite(); got != at {
					t.Fatalf("%v %#x at %d of %d: got %d", b.dt, b.bits, at, n, got)
				}
			}
		}
	}
}

// BenchmarkFirstNonFinite scans a Llama-3-8B rank-16 adapter's worth of BF16 values (84 MB).
func BenchmarkFirstNonFinite(b *testing.B) {
	h := HostTensor{DType: BF16, Data: make([]byte, 83886080)}
	b.SetBytes(int64(len(h.Data)))
	for b.Loop() {
		if h.FirstNonFinite() != -1 {
			b.Fatal("found one")
		}
	}
}
