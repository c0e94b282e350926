package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// TestGemm checks MatMul and the accumulating, scaled gemm LoRA uses against a float64
// reference, for row counts around the 4-row groups and widths around the 8-wide blocks.
func TestGemm(t *testing.T) {
	b := New(2)
	defer b.Close()
	r := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{1, 3, 4, 5, 8, 13} {
		for _, k := range []int{1, 7, 16, 37, 768} {
			for _, m := range []int{1, 5, 64, 301} {
				for _, dt := range []model.DType{model.F32, model.BF16} {
					x := model.Tensor{Rows: n, Cols: k, DType: model.F32, Buf: randF32(r, n*k)}
					w := model.Tensor{Rows: m, Cols: k, DType: dt}
					wv := make([]float64, m*k)
					if dt == model.F32 {
						f := randF32(r, m*k)
						for i, v := range f {
							wv[i] = float64(v)
						}
						w.Buf = f
					} else {
						u := randBF16(r, m*k)
						for i, v := range u {
							wv[i] = float64(model.BF16ToF32(v))
						}
						w.Buf = u
					}
					init := randF32(r, n*m)
					out := model.Tensor{Rows: n, Cols: m, DType: model.F32, Buf: append([]float32(nil), init...)}
					const alpha = 0.5
					b.gemm(out, x, w, alpha, true)
					xs, os := f32(x), f32(out)
					for i := 0; i < n; i++ {
						for j := 0; j < m; j++ {
							var want, mag float64
							for c := 0; c < k; c++ {
								want += float64(xs[i*k+c]) * wv[j*k+c]
								mag += math.Abs(float64(xs[i*k+c]) * wv[j*k+c])
							}
							want = alpha*want + float64(init[i*m+j])
							if d := math.Abs(float64(os[i*m+j]) - want); d > 1e-5*(mag+math.Abs(want)) {
								t.Fatalf("%s n=%d k=%d m=%d: out[%d,%d] = %g, want %g", dt, n, k, m, i, j, os[i*m+j], want)
							}
						}
					}
				}
			}
		}
	}
}
