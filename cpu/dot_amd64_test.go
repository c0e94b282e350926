//go:build amd64 && !purego

package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// TestDotX4Kernels runs each 4-row BF16 kernel the machine supports directly (the dispatching
// dotBF16x4 only reaches the best one).
func TestDotX4Kernels(t *testing.T) {
	t.Logf("AVX2+FMA %v, AVX-512F %v", useAVX2, useAVX512)
	kernels := map[string]func(x *float32, stride int, w *uint16, n int, out *[4]float32){}
	if useAVX2 {
		kernels["avx2"] = dotBF16x4AVX2
	}
	if useAVX512 {
		kernels["avx512"] = dotBF16x4AVX512
	}
	r := rand.New(rand.NewPCG(9, 10))
	for name, kern := range kernels {
		for n := 8; n <= 4200; n = (n + 8 + n/4) &^ 7 { // multiples of 8, as the kernels need
			k := n + 5
			x := randF32(r, 4*k)
			w := randBF16(r, n)
			var got [4]float32
			kern(&x[0], k, &w[0], n, &got)
			for row := 0; row < 4; row++ {
				xr := x[row*k : row*k+n]
				var mag float64
				for i := range xr {
					mag += math.Abs(float64(xr[i]) * float64(model.BF16ToF32(w[i])))
				}
				checkClose(t, "dotBF16x4 "+name, n, row, got[row], dotBF16Generic(xr, w), mag)
			}
		}
	}
}

// TestDotBF16Kernels runs the single-row BF16 assembly kernel directly.
func TestDotBF16Kernels(t *testing.T) {
	kernels := map[string]func(x []float32, w []uint16) float32{}
	if useAVX2 {
		kernels["avx2"] = dotBF16AVX2
	}
	r := rand.New(rand.NewPCG(11, 12))
	for name, kern := range kernels {
		for _, n := range dotLengths() {
			x := randF32(r, n+1)[1:]
			w := randBF16(r, n)
			var mag float64
			for i := range x {
				mag += math.Abs(float64(x[i]) * float64(model.BF16ToF32(w[i])))
			}
			checkClose(t, "dotBF16 "+name, n, 0, kern(x, w), dotBF16Generic(x, w), mag)
		}
	}
}
