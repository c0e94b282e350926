package lorapack

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/model"
)

func randTensor(r *rand.Rand, n int, std float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * std)
	}
	return v
}

var sparseCodecs = []Codec{Ternary, Bitmap, Rice}

func TestDenseRoundTripIsBF16(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	vals := randTensor(r, 16*37, 0.02)
	vals[3] = 0
	s, err := EncodeDense(vals, 16, 37)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(vals))
	if err := DecodeF32(s, got); err != nil {
		t.Fatal(err)
	}
	gotBF := make([]uint16, len(vals))
	if err := DecodeBF16(s, gotBF); err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		want := model.BF16ToF32(model.F32ToBF16(v))
		if got[i] != want || model.BF16ToF32(gotBF[i]) != want {
			t.Fatalf("value %d: %v / %v, want %v", i, got[i], model.BF16ToF32(gotBF[i]), want)
		}
	}
}

// Every sparse codec reproduces exactly the kept set, the signs and the scale, at densities from
// almost nothing to everything and at sizes that exercise partial bytes and words.
func TestSparseRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, shape := range [][2]int{{1, 1}, {3, 5}, {16, 129}, {64, 300}} {
		vals := randTensor(r, shape[0]*shape[1], 1)
		for _, d := range []float64{0.0001, 0.01, 0.1, 0.5, 1} {
			sp, err := PerTensor(vals, shape[0], shape[1], d)
			if err != nil {
				t.Fatal(err)
			}
			want := sp.Values()
			if k := KeepCount(len(vals), d); len(sp.Idx) != k {
				t.Fatalf("%v d=%v: kept %d, want %d", shape, d, len(sp.Idx), k)
			}
			for _, c := range sparseCodecs {
				st, err := EncodeSparse(c, sp)
				if err != nil {
					t.Fatal(err)
				}
				if len(st) != SparseSize(c, sp) {
					t.Errorf("%v: SparseSize %d, stream %d", c, SparseSize(c, sp), len(st))
				}
				got := make([]float32, len(vals))
				for i := range got {
					got[i] = 42 // decoders must overwrite everything
				}
				if err := DecodeF32(st, got); err != nil {
					t.Fatalf("%v %v d=%v: %v", c, shape, d, err)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("%v %v d=%v: decoded values differ", c, shape, d)
				}
				bf := make([]uint16, len(vals))
				if err := DecodeBF16(st, bf); err != nil {
					t.Fatal(err)
				}
				for i := range bf {
					if model.BF16ToF32(bf[i]) != model.BF16ToF32(model.F32ToBF16(want[i])) {
						t.Fatalf("%v bf16 value %d", c, i)
					}
				}
			}
		}
	}
}

// The kept set is the top-K by magnitude and the scale the mean kept magnitude.
func TestPerTensorSelection(t *testing.T) {
	vals := []float32{0.1, -5, 0, 3, -0.2, 4, 0, 0.3, -1, 2}
	sp, err := PerTensor(vals, 2, 5, 0.3) // int(10*0.3)+1 = 4 kept: -5, 4, 3, 2
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sp.Idx, []uint32{1, 3, 5, 9}) || sp.Scale != 3.5 {
		t.Fatalf("kept %v scale %v", sp.Idx, sp.Scale)
	}
	if got := sp.Values(); !slices.Equal(got, []float32{0, -3.5, 0, 3.5, 0, 3.5, 0, 0, 0, 3.5}) {
		t.Fatalf("values %v", got)
	}
	// Zeros are never kept, even at density 1.
	sp, _ = PerTensor(vals, 2, 5, 1)
	if len(sp.Idx) != 8 {
		t.Fatalf("density 1 kept %d, want the 8 non-zeros", len(sp.Idx))
	}
}

// The global mode against a direct, sort-based computation of the reference's arithmetic.
func TestGlobalMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	a, b := randTensor(r, 8*50, 0.1), randTensor(r, 40*8, 0.01)
	const density, alpha = 0.1, 2.5
	g, err := NewGlobal([][]float32{a, b}, density, alpha)
	if err != nil {
		t.Fatal(err)
	}
	// Direct: tau = concat, sigma = unbiased std, kth = (d - int(d*K))-th smallest |tau|, keep |tau| >= kth.
	tau := append(slices.Clone(a), b...)
	d := len(tau)
	var mean, ss float64
	for _, v := range tau {
		mean += float64(v)
	}
	mean /= float64(d)
	for _, v := range tau {
		ss += (float64(v) - mean) * (float64(v) - mean)
	}
	sigma := math.Sqrt(ss / float64(d-1))
	abs := make([]float32, d)
	for i, v := range tau {
		abs[i] = float32(math.Abs(float64(v)))
	}
	sorted := slices.Clone(abs)
	slices.Sort(sorted)
	kth := sorted[d-int(float64(d)*density)-1]
	if math.Abs(g.Sigma-sigma) > 1e-12*sigma || g.Threshold != kth {
		t.Fatalf("sigma %v threshold %v, want %v %v", g.Sigma, g.Threshold, sigma, kth)
	}
	want := make([]float32, d)
	for i, v := range tau {
		if abs[i] >= kth {
			want[i] = float32(alpha*sigma) * float32(math.Copysign(1, float64(v)))
		}
	}
	var got []float32
	for _, x := range []struct {
		v    []float32
		r, c int
	}{{a, 8, 50}, {b, 40, 8}} {
		sp, err := g.Sparsify(x.v, x.r, x.c)
		if err != nil {
			t.Fatal(err)
		}
		st, err := EncodeSparse(Rice, sp)
		if err != nil {
			t.Fatal(err)
		}
		_, dec, err := Decode(st, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, dec...)
	}
	if !slices.Equal(got, want) {
		t.Fatal("global mode differs from the direct computation")
	}
}

func TestRiceParam(t *testing.T) {
	for _, c := range []struct {
		kept, n int
		k       uint8
	}{{10, 100, 3}, {5, 100, 4}, {1, 100, 6}, {50, 100, 0}, {0, 100, 0}, {100, 100, 0}} {
		if k := riceParam(c.kept, c.n); k != c.k {
			t.Errorf("riceParam(%d, %d) = %d, want %d", c.kept, c.n, k, c.k)
		}
	}
}

// Rice with k = 0 is the bitmap without its trailing zeros, so it is never much larger; Smallest
// must still pick the true minimum.
func TestSmallestCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	vals := randTensor(r, 16*4096, 1)
	for _, d := range []float64{0.01, 0.05, 0.3, 0.7, 1} {
		sp, _ := PerTensor(vals, 16, 4096, d)
		best := Smallest(sp)
		for _, c := range sparseCodecs {
			if SparseSize(c, sp) < SparseSize(best, sp) {
				t.Errorf("density %v: %v (%d bytes) is smaller than the chosen %v (%d)", d, c, SparseSize(c, sp), best, SparseSize(best, sp))
			}
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	vals := randTensor(r, 8*33, 1)
	sp, _ := PerTensor(vals, 8, 33, 0.1)
	for _, c := range append(sparseCodecs, Dense) {
		var st []byte
		if c == Dense {
			st, _ = EncodeDense(vals, 8, 33)
		} else {
			st, _ = EncodeSparse(c, sp)
		}
		dst := make([]float32, len(vals))
		for _, bad := range [][]byte{st[:len(st)-1], st[:HeaderSize-1], append(slices.Clone(st), 0)} {
			if err := DecodeF32(bad, dst); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%v: truncated/extended stream: %v", c, err)
			}
		}
		if err := DecodeF32(st, dst[:len(dst)-1]); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%v: wrong destination size: %v", c, err)
		}
	}
}

// Clustered kept sets: long gaps whose unary part does not fit the rice decoder's 64-bit
// buffer, between runs of adjacent indices, and a gap right before the stream's last bytes.
func TestRiceLongGaps(t *testing.T) {
	const n = 200000
	var idx []uint32
	for i := range 1000 {
		idx = append(idx, uint32(i))
	}
	for i := range 1000 {
		idx = append(idx, uint32(90000+i))
	}
	idx = append(idx, 150000, n-1)
	sp := &Sparse{Rows: 1, Cols: n, Idx: idx, Neg: make([]uint64, (len(idx)+63)/64), Scale: 0.5}
	for j := range idx {
		if j%3 == 0 {
			sp.Neg[j/64] |= 1 << (j % 64)
		}
	}
	st, err := EncodeSparse(Rice, sp)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, n)
	if err := DecodeF32(st, got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, sp.Values()) {
		t.Fatal("decoded values differ")
	}
}
