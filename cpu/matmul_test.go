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
					checkGemm(t, b, r, n, k, m, dt, 0.5, true)
				}
			}
		}
	}
}

// checkGemm runs gemm on random operands of the given shape (out = alpha * x · wᵀ, + out when
// acc) and holds every output to the float64 product within float32 rounding of its terms.
func checkGemm(t *testing.T, b *Backend, r *rand.Rand, n, k, m int, dt model.DType, alpha float32, acc bool) {
	t.Helper()
	x := model.Tensor{Rows: n, Cols: k, DType: model.F32, Buf: randF32(r, n*k)}
	w, wv := randWeights(r, m, k, dt)
	init := randF32(r, n*m)
	out := model.Tensor{Rows: n, Cols: m, DType: model.F32, Buf: append([]float32(nil), init...)}
	b.gemm(out, x, w, alpha, acc)
	xs, os := f32(x), f32(out)
	for i := 0; i < n; i++ {
		for j := 0; j < m; j++ {
			var want, mag float64
			for c := 0; c < k; c++ {
				want += float64(xs[i*k+c]) * wv[j*k+c]
				mag += math.Abs(float64(xs[i*k+c]) * wv[j*k+c])
			}
			want *= float64(alpha)
			if acc {
				want += float64(init[i*m+j])
			}
			if d := math.Abs(float64(os[i*m+j]) - want); d > 1e-5*(mag+math.Abs(want)) {
				t.Fatalf("%s n=%d k=%d m=%d acc=%v: out[%d,%d] = %g, want %g", dt, n, k, m, acc, i, j, os[i*m+j], want)
			}
		}
	}
}

// randWeights makes an [m, k] weight tensor of dtype dt and its values in float64.
func randWeights(r *rand.Rand, m, k int, dt model.DType) (model.Tensor, []float64) {
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
	return w, wv
}

// The packed-panel path (prefill-sized row counts) equals the float64 product to float32
// rounding, with and without accumulation, for row counts around the 6-row blocks and column
// counts around the 16-wide panels (a partial last panel goes to the dot path).
func TestGemmPanelPath(t *testing.T) {
	b := New(2)
	defer b.Close()
	r := rand.New(rand.NewPCG(7, 9))
	for _, n := range []int{panelMinRows, panelMinRows + 1, panelMinRows + 4, 40, 71} {
		for _, k := range []int{1, 7, 37, 768} {
			for _, m := range []int{16, 17, 31, 64, 301} {
				for _, dt := range []model.DType{model.F32, model.BF16} {
					for _, acc := range []bool{false, true} {
						checkGemm(t, b, r, n, k, m, dt, 0.75, acc)
					}
				}
			}
		}
	}
}

// The micro-kernels compute what their portable reference computes, and a row's outputs are
// bit-for-bit the same whether a block of six or the one-row kernel takes it.
func TestGemmMicroKernels(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 10))
	for _, k := range []int{1, 2, 7, 64, 320, 2048} {
		x, panel := randF32(r, 6*k), randF32(r, 16*k)
		for _, acc := range []bool{false, true} {
			init := randF32(r, 6*20)
			got, want := append([]float32(nil), init...), append([]float32(nil), init...)
			gemm6x16(x, k, panel, got, 20, 0.5, acc)
			gemmPanelGeneric(x, k, 6, panel, want, 20, 0.5, acc)
			one := append([]float32(nil), init...)
			for i := range 6 {
				gemm1x16(x[i*k:(i+1)*k], panel, one[i*20:], 0.5, acc)
			}
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(one[i]) {
					t.Fatalf("k=%d acc=%v: [%d] six-row kernel %g, one-row kernel %g", k, acc, i, got[i], one[i])
				}
				if d := math.Abs(float64(got[i]) - float64(want[i])); d > 1e-6*(1+math.Abs(float64(want[i])))*math.Sqrt(float64(k)) {
					t.Fatalf("k=%d acc=%v: [%d] = %g, reference %g", k, acc, i, got[i], want[i])
				}
				if i%20 >= 16 && got[i] != init[i] {
					t.Fatalf("k=%d: column %d outside the panel was written", k, i%20)
				}
			}
		}
	}
}

// Packing a panel widens and transposes exactly, for every k around the 8x8 blocks.
func TestPackPanelBF16(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for k := 1; k <= 41; k++ {
		w := randBF16(r, 16*k)
		got := make([]float32, 16*k)
		packPanelBF16(got, w, k)
		for c := range 16 {
			for p := range k {
				if want := model.BF16ToF32(w[c*k+p]); math.Float32bits(got[p*16+c]) != math.Float32bits(want) {
					t.Fatalf("k=%d: panel[%d*16+%d] = %g, want w[%d][%d] = %g", k, p, c, got[p*16+c], c, p, want)
				}
			}
		}
	}
}

// MatMulShared (q/k/v or gate/up in one parallel region) gives bit-for-bit what one MatMul per
// matrix gives, at decode and at prefill row counts, for F32 and BF16 weights of any widths.
func TestMatMulSharedEqualsMatMul(t *testing.T) {
	b := New(2)
	defer b.Close()
	r := rand.New(rand.NewPCG(7, 12))
	for _, n := range []int{1, 3, 8, panelMinRows + 5} {
		for _, k := range []int{7, 320, 768} {
			x := model.Tensor{Rows: n, Cols: k, DType: model.F32, Buf: randF32(r, n*k)}
			var ws, outs, want []model.Tensor
			for i, m := range []int{k, 37, 160} {
				dt := []model.DType{model.BF16, model.F32, model.BF16}[i]
				w, _ := randWeights(r, m, k, dt)
				ws = append(ws, w)
				outs, want = append(outs, b.Alloc(n, m)), append(want, b.Alloc(n, m))
			}
			if !b.MatMulShared(outs, x, ws) {
				t.Fatal("the CPU declined MatMulShared")
			}
			for i := range ws {
				b.MatMul(want[i], x, ws[i])
				for j, v := range f32(outs[i]) {
					if math.Float32bits(v) != math.Float32bits(f32(want[i])[j]) {
						t.Fatalf("n=%d k=%d matrix %d: [%d] = %g, MatMul gives %g", n, k, i, j, v, f32(want[i])[j])
					}
				}
			}
		}
	}
}
