package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// dotLengths covers every tail length around the 8- and 32-wide blocks plus long rows.
func dotLengths() []int {
	var ns []int
	for n := 0; n <= 67; n++ {
		ns = append(ns, n)
	}
	return append(ns, 127, 128, 129, 768, 1000, 2048, 4096+3)
}

func randF32(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

func randBF16(r *rand.Rand, n int) []uint16 {
	v := make([]uint16, n)
	for i := range v {
		v[i] = uint16(math.Float32bits(float32(r.NormFloat64())) >> 16)
	}
	return v
}

// checkClose compares a kernel result with the reference; the tolerance is relative to the sum
// of |x_i w_i| (the scale of the rounding error of any summation order), not to the result,
// which may cancel to near zero.
func checkClose(t *testing.T, what string, n, off int, got, want float32, mag float64) {
	t.Helper()
	if d := math.Abs(float64(got) - float64(want)); d > 1e-5*mag+1e-30 {
		t.Errorf("%s n=%d off=%d: got %g, want %g (diff %g, scale %g)", what, n, off, got, want, d, mag)
	}
}

func TestDotF32(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range dotLengths() {
		for off := 0; off < 3; off++ { // off shifts both slices off 32-byte alignment
			x := randF32(r, n+off+1)[off : off+n]
			w := randF32(r, n+off+5)[off+1:] // longer than x, as a weight row view can be
			var mag float64
			for i := range x {
				mag += math.Abs(float64(x[i]) * float64(w[i]))
			}
			checkClose(t, "dotF32", n, off, dotF32(x, w), dotF32Generic(x, w), mag)
		}
	}
}

func TestDotBF16(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range dotLengths() {
		for off := 0; off < 3; off++ {
			x := randF32(r, n+off+1)[off : off+n]
			w := randBF16(r, n+off+5)[off+1:]
			var mag float64
			for i := range x {
				mag += math.Abs(float64(x[i]) * float64(model.BF16ToF32(w[i])))
			}
			checkClose(t, "dotBF16", n, off, dotBF16(x, w), dotBF16Generic(x, w), mag)
		}
	}
}

// TestDotSpecial checks that widening is exact for the awkward bfloat16 values (signed zeros,
// subnormals, the largest finite) and that infinities and NaN propagate as in the reference.
func TestDotSpecial(t *testing.T) {
	vals := []uint16{0x0000, 0x8000, 0x0001, 0x807f, 0x7f7f, 0xff7f, 0x3f80, 0xbf80}
	for n := 1; n <= 40; n++ {
		x := make([]float32, n)
		w := make([]uint16, n)
		for i := range x {
			x[i] = 1
			w[i] = vals[i%len(vals)]
		}
		// The largest finite pair cancels in an order-dependent way, so compare on the scale
		// of the terms, as the other tests do.
		var mag float64
		for i := range x {
			mag += math.Abs(float64(model.BF16ToF32(w[i])))
		}
		checkClose(t, "dotBF16 special", n, 0, dotBF16(x, w), dotBF16Generic(x, w), mag)
		w[n-1] = 0x7f80 // +Inf
		if got := dotBF16(x, w); !math.IsInf(float64(got), 1) && !math.IsNaN(float64(got)) {
			t.Errorf("n=%d with +Inf: got %g", n, got)
		}
		w[n-1] = 0x7fc0 // NaN
		if got := dotBF16(x, w); !math.IsNaN(float64(got)) {
			t.Errorf("n=%d with NaN: got %g", n, got)
		}
	}
}

func TestDotX4(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range dotLengths() {
		for _, pad := range []int{0, 3} { // row stride k = n + pad
			k := n + pad
			x := randF32(r, 4*k+1)[1:]
			wf := randF32(r, n)
			wb := randBF16(r, n)
			var got [4]float32
			dotF32x4(x, k, wf, &got)
			for row := 0; row < 4; row++ {
				xr := x[row*k : row*k+n]
				var mag float64
				for i := range xr {
					mag += math.Abs(float64(xr[i]) * float64(wf[i]))
				}
				checkClose(t, "dotF32x4", n, row, got[row], dotF32Generic(xr, wf), mag)
			}
			dotBF16x4(x, k, wb, &got)
			for row := 0; row < 4; row++ {
				xr := x[row*k : row*k+n]
				var mag float64
				for i := range xr {
					mag += math.Abs(float64(xr[i]) * float64(model.BF16ToF32(wb[i])))
				}
				checkClose(t, "dotBF16x4", n, row, got[row], dotBF16Generic(xr, wb), mag)
			}
		}
	}
}
