package cpu

import (
	"fmt"
	"math"
	"sync"

	"github.com/loraplex/loraplex/model"
)

// MatMul computes out = x · wᵀ.
func (b *Backend) MatMul(out, x, w model.Tensor) { b.gemm(out, x, w, 1, false) }

// gemm computes out = alpha * x · wᵀ (+ out when accumulate). Work is split over w's rows (output
// columns): a decode step streams each weight row from memory exactly once, which is what bounds
// its speed. Two paths:
//
//   - few rows (decode, small batches): within a worker's range the weight rows go in tiles of
//     about 32 KB; every group of four x rows runs over the tile (one weight load feeding four
//     rows, dotBF16x4) while it is in L1/L2. Memory-bound: the weights stream once.
//   - panelMinRows rows or more (prefill chunks, big batches): compute-bound, so the weights are
//     reshaped.
//     Each run of 16 weight rows is widened to float32 once and transposed into a panel
//     (panel[p*16+c] = w[j0+c][p], 16·k floats, in L1/L2), and a register-blocked micro-kernel
//     (gemm6x16) computes 6 x rows x 16 outputs from it: per step of p, two panel loads and six
//     broadcasts of x feed twelve FMAs, with no per-row weight conversion and no horizontal
//     sums. Every x row reuses the panel, so the conversion is paid once per 16·k weights per
//     call instead of once per four rows.
//
// Tolerance and determinism: the panel path sums each output as one float32 FMA chain in k
// order, the dot path in 8-32 lane partial sums; both are within float32 rounding of the exact
// dot product (matmul_test.go), and the HF fixture tolerance is unchanged. Which path runs
// depends only on the step's row count, and within the panel path an output does not depend on
// which row block (6 or 1) computed it.
func (b *Backend) gemm(out, x, w model.Tensor, alpha float32, accumulate bool) {
	if b.Err() != nil {
		return // the weights' mapping faulted: not touched again (fault.go)
	}
	g := gemmJobs.Get().(*gemmJob)
	if err := g.set(out, x, w, alpha, accumulate); err != nil {
		gemmJobs.Put(g)
		panic(err.Error())
	}
	// Deterministic mode (SetBatchInvariant) keeps every row on the one-row dot kernel: the
	// panel path and the 4-row kernel round differently, and which runs follows the row count.
	g.perRow = b.batchInvariant
	if full := g.m / 16; panelKernels && !g.perRow && g.n >= panelMinRows && full > 0 && g.k > 0 {
		g.panels = b.panels
		b.pool.run(full, 1, g.panelFn)
		if full*16 < g.m {
			g.run(0, full*16, g.m) // the last few columns, on the dot path
		}
	} else {
		grain := max(1, 16384/max(g.k, 1)) // about 32 KB of bf16 weights per chunk at least
		b.pool.run(g.m, grain, g.fn)
	}
	*g = gemmJob{fn: g.fn, panelFn: g.panelFn} // drop the references before pooling
	gemmJobs.Put(g)
}

// set loads the job with out = alpha * x · wᵀ (+ out), after checking the shapes and dtype.
func (g *gemmJob) set(out, x, w model.Tensor, alpha float32, accumulate bool) error {
	if x.Cols != w.Cols || out.Rows != x.Rows || out.Cols != w.Rows {
		return fmt.Errorf("cpu: MatMul out %s = x %s · wᵀ %s", out.Shape(), x.Shape(), w.Shape())
	}
	g.xs, g.os = f32(x), f32(out)
	g.n, g.k, g.m = x.Rows, x.Cols, w.Rows
	g.alpha, g.accumulate = alpha, accumulate
	switch w.DType {
	case model.F32:
		g.wf = f32(w)
	case model.BF16:
		g.wb = bf16(w)
	default:
		return fmt.Errorf("cpu: MatMul weight dtype %s", w.DType)
	}
	return nil
}

// MatMulShared computes outs[i] = x · ws[i]ᵀ for every i (model.SharedMatMuler; the CPU always
// takes them). At decode sizes the
// products share one parallel region, split over their concatenated output columns: a batch-1
// step spends as long handing a small matrix (a 393 KB k or v projection) to the workers and
// waiting for them as streaming it, and q/k/v then gate/up are 85 hand-offs a token on the
// 100M shape instead of 49. Each output is computed exactly as MatMul computes it. Prefill-sized
// inputs (panelMinRows rows and up) are compute-bound and run one MatMul after the other.
func (b *Backend) MatMulShared(outs []model.Tensor, x model.Tensor, ws []model.Tensor) bool {
	j := &b.multi
	if len(outs) != len(ws) || len(ws) > len(j.subs) {
		panic(fmt.Sprintf("cpu: MatMulShared of %d outputs with %d weights (at most %d)", len(outs), len(ws), len(j.subs)))
	}
	if b.Err() != nil {
		return true // nothing runs on faulted weights (fault.go), fused or not
	}
	if (panelKernels && x.Rows >= panelMinRows) || b.batchInvariant {
		for i := range ws {
			b.gemm(outs[i], x, ws[i], 1, false)
		}
		return true
	}
	total := 0
	for i := range ws {
		if err := j.subs[i].set(outs[i], x, ws[i], 1, false); err != nil {
			j.clear()
			panic(err.Error())
		}
		j.off[i] = total
		total += j.subs[i].m
	}
	j.n = len(ws)
	b.pool.run(total, max(1, 16384/max(x.Cols, 1)), j.fn)
	j.clear()
	return true
}

// multiJob is MatMulShared's work: its products' gemmJobs and where each one's columns start in
// the concatenation. fn is its run method, bound once (New).
type multiJob struct {
	subs [model.MaxSharedProducts]gemmJob
	off  [model.MaxSharedProducts]int
	n    int
	fn   func(worker, lo, hi int)
}

func (j *multiJob) run(w, lo, hi int) {
	for i := range j.n {
		if a, e := max(lo, j.off[i]), min(hi, j.off[i]+j.subs[i].m); a < e {
			j.subs[i].run(w, a-j.off[i], e-j.off[i])
		}
	}
}

// clear drops the references to the step's tensors.
func (j *multiJob) clear() {
	for i := range j.subs {
		j.subs[i] = gemmJob{}
	}
	j.n = 0
}

// panelMinRows is the row count from which gemm packs weight panels: below it the packing is not
// repaid. BenchmarkPrefillGemm (k=768, m=2048, one core): the panel path runs at 0.74-0.76x the
// dot path at 16 rows, 1.04-1.06x at 32, 1.17-1.22x at 64 and 1.5x at 512.
const panelMinRows = 32

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
	perRow     bool        // batch-invariant: every row on the one-row kernel (see SetBatchInvariant)
	panels     [][]float32 // per worker: the panel being used (Backend.panels)
	fn         func(worker, lo, hi int)
	panelFn    func(worker, lo, hi int)
}

var gemmJobs = sync.Pool{New: func() any {
	g := new(gemmJob)
	g.fn, g.panelFn = g.run, g.runPanels
	return g
}}

// runPanels computes the output columns of panels [lo, hi) (16 columns each) for every row.
func (g *gemmJob) runPanels(w, lo, hi int) {
	n, k, m := g.n, g.k, g.m
	if cap(g.panels[w]) < 16*k {
		g.panels[w] = make([]float32, 16*k)
	}
	panel := g.panels[w][:16*k]
	for pi := lo; pi < hi; pi++ {
		j0 := pi * 16
		if g.wb != nil {
			packPanelBF16(panel, g.wb[j0*k:(j0+16)*k], k)
		} else {
			packPanelF32(panel, g.wf[j0*k:(j0+16)*k], k)
		}
		i := 0
		for ; i+6 <= n; i += 6 {
			gemm6x16(g.xs[i*k:(i+6)*k], k, panel, g.os[i*m+j0:], m, g.alpha, g.accumulate)
		}
		for ; i < n; i++ {
			gemm1x16(g.xs[i*k:(i+1)*k], panel, g.os[i*m+j0:], g.alpha, g.accumulate)
		}
	}
}

// packPanelBF16Generic is packPanelBF16 for the columns p >= from.
func packPanelBF16Generic(dst []float32, w []uint16, k, from int) {
	dst = dst[:16*k]
	for c := range 16 {
		row := w[c*k : c*k+k]
		for p := from; p < k; p++ {
			dst[p*16+c] = math.Float32frombits(uint32(row[p]) << 16)
		}
	}
}

// packPanelF32 is packPanelBF16 for float32 weights.
func packPanelF32(dst []float32, w []float32, k int) {
	dst = dst[:16*k]
	for c := range 16 {
		row := w[c*k : c*k+k]
		for p, v := range row {
			dst[p*16+c] = v
		}
	}
}

// gemmPanelGeneric is the portable gemm6x16 / gemm1x16 (rows of them): the reference the
// micro-kernels are tested against, with the same FMA chain per output.
func gemmPanelGeneric(x []float32, ldx, rows int, panel, out []float32, ldo int, alpha float32, accumulate bool) {
	k := len(panel) / 16
	for i := range rows {
		for c := range 16 {
			var s float32
			for p := range k {
				s = fma32(x[i*ldx+p], panel[p*16+c], s)
			}
			s *= alpha
			if accumulate {
				s += out[i*ldo+c]
			}
			out[i*ldo+c] = s
		}
	}
}

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
