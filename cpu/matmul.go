package cpu

import (
	"fmt"
	"sync"

	"github.com/loraplex/loraplex/model"
)

// MatMul computes out = x · wᵀ.
func (b *Backend) MatMul(out, x, w model.Tensor) { b.gemm(out, x, w, 1, false) }

// gemm computes out = alpha * x · wᵀ (+ out when accumulate). Work is split over w's rows (output
// columns): a decode step streams each weight row from memory exactly once, which is what bounds
// its speed. Within a worker's range the weight rows go in tiles of about 32 KB; every group of
// four x rows runs over the tile (one weight load feeding four rows, dotBF16x4) while it is in
// L1/L2, so a batch or a prompt does not re-read the weights from memory per row.
func (b *Backend) gemm(out, x, w model.Tensor, alpha float32, accumulate bool) {
	if b.Err() != nil {
		return // the weights' mapping faulted: not touched again (fault.go)
	}
	if x.Cols != w.Cols || out.Rows != x.Rows || out.Cols != w.Rows {
		panic(fmt.Sprintf("cpu: MatMul out %s = x %s · wᵀ %s", out.Shape(), x.Shape(), w.Shape()))
	}
	g := gemmJobs.Get().(*gemmJob)
	g.xs, g.os = f32(x), f32(out)
	g.n, g.k, g.m = x.Rows, x.Cols, w.Rows
	g.alpha, g.accumulate = alpha, accumulate
	g.perRow = b.batchInvariant
	switch w.DType {
	case model.F32:
		g.wf = f32(w)
	case model.BF16:
		g.wb = bf16(w)
	default:
		gemmJobs.Put(g)
		panic(fmt.Sprintf("cpu: MatMul weight dtype %s", w.DType))
	}
	grain := max(1, 16384/max(g.k, 1)) // about 32 KB of bf16 weights per chunk at least
	b.pool.run(g.m, grain, g.fn)
	*g = gemmJob{fn: g.fn} // drop the references before pooling
	gemmJobs.Put(g)
}

// gemmJob carries one gemm's operands to the workers. Its fn is the method value g.run, made
// once per job, so handing work to the pool allocates nothing (a closure over the operands
// would escape to the heap on every call).
type gemmJob struct {
	xs, os     []float32
	wf         []float32 // F32 weights, or
	wb         []uint16  // BF16 weights
	n, k, m    int
	alpha      float32
	accumulate bool
	perRow     bool // batch-invariant: every row on the one-row kernel (see SetBatchInvariant)
	fn         func(worker, lo, hi int)
}

var gemmJobs = sync.Pool{New: func() any {
	g := new(gemmJob)
	g.fn = g.run
	return g
}}

func (g *gemmJob) run(_, lo, hi int) {
	n, k := g.n, g.k
	tile := max(1, 16384/max(k, 1))
	var s [4]float32
	for t0 := lo; t0 < hi; t0 += tile {
		t1 := min(hi, t0+tile)
		i := 0
		for ; i+4 <= n && !g.perRow; i += 4 {
			xs := g.xs[i*k : (i+4)*k]
			for j := t0; j < t1; j++ {
				if g.wb != nil {
					dotBF16x4(xs, k, g.wb[j*k:j*k+k], &s)
				} else {
					dotF32x4(xs, k, g.wf[j*k:j*k+k], &s)
				}
				for r := range s {
					g.store(i+r, j, s[r])
				}
			}
		}
		for ; i < n; i++ {
			xr := g.xs[i*k : i*k+k]
			for j := t0; j < t1; j++ {
				if g.wb != nil {
					g.store(i, j, dotBF16(xr, g.wb[j*k:j*k+k]))
				} else {
					g.store(i, j, dotF32(xr, g.wf[j*k:j*k+k]))
				}
			}
		}
	}
}

func (g *gemmJob) store(i, j int, v float32) {
	v *= g.alpha
	if g.accumulate {
		v += g.os[i*g.m+j]
	}
	g.os[i*g.m+j] = v
}
