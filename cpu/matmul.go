package cpu

import (
	"fmt"

	"github.com/loraplex/loraplex/model"
)

// MatMul computes out = x · wᵀ.
func (b *Backend) MatMul(out, x, w model.Tensor) { b.gemm(out, x, w, 1, false) }

// gemm computes out = alpha * x · wᵀ (+ out when accumulate). Work is split over w's rows (output
// columns): each weight row is read from memory once and used for every row of x while it is in
// L1, so a decode step streams the weights exactly once, which is what bounds its speed.
func (b *Backend) gemm(out, x, w model.Tensor, alpha float32, accumulate bool) {
	if x.Cols != w.Cols || out.Rows != x.Rows || out.Cols != w.Rows {
		panic(fmt.Sprintf("cpu: MatMul out %s = x %s · wᵀ %s", out.Shape(), x.Shape(), w.Shape()))
	}
	xs, os := f32(x), f32(out)
	n, k, m := x.Rows, x.Cols, w.Rows
	grain := max(1, 16384/max(k, 1)) // about 32 KB of bf16 weights per chunk at least
	switch w.DType {
	case model.F32:
		ws := f32(w)
		b.pool.run(m, grain, func(_, lo, hi int) {
			for j := lo; j < hi; j++ {
				wr := ws[j*k : j*k+k]
				for i := 0; i < n; i++ {
					v := alpha * dotF32(xs[i*k:i*k+k], wr)
					if accumulate {
						v += os[i*m+j]
					}
					os[i*m+j] = v
				}
			}
		})
	case model.BF16:
		ws := bf16(w)
		b.pool.run(m, grain, func(_, lo, hi int) {
			for j := lo; j < hi; j++ {
				wr := ws[j*k : j*k+k]
				for i := 0; i < n; i++ {
					v := alpha * dotBF16(xs[i*k:i*k+k], wr)
					if accumulate {
						v += os[i*m+j]
					}
					os[i*m+j] = v
				}
			}
		})
	default:
		panic(fmt.Sprintf("cpu: MatMul weight dtype %s", w.DType))
	}
}
