//go:build cuda

package main

import (
	"fmt"
	"math"
	"time"

	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
)

// breakdown times the ops of one batch-1 decode step one kind at a time (each op repeated and
// synchronised once at the end), so the step time can be attributed. Launch overhead is
// included: these are upper bounds on what the same op costs inside a CUDA graph.
func breakdown(b *cuda.Backend, cfg *model.Config) error {
	const reps = 200
	timeIt := func(name string, bytes float64, f func()) error {
		f()
		if err := b.Sync(); err != nil {
			return err
		}
		start := time.Now()
		for i := 0; i < reps; i++ {
			f()
		}
		if err := b.Sync(); err != nil {
			return err
		}
		us := time.Since(start).Seconds() / reps * 1e6
		if bytes > 0 {
			fmt.Printf("  %-28s %8.1f us  %6.0f GB/s\n", name, us, bytes/us/1e3)
		} else {
			fmt.Printf("  %-28s %8.1f us\n", name, us)
		}
		return nil
	}
	buf := benchenv.RandomBF16(cfg.IntermediateSize*cfg.HiddenSize, 0.02, 7)
	for p := model.Proj(0); p < model.NumProj; p++ {
		o, i := cfg.ProjShape(p)
		w, err := b.Upload(model.HostTensor{Name: "w", DType: model.BF16, Shape: []int{o, i}, Data: buf[:2*o*i]}, o, i)
		if err != nil {
			return err
		}
		x, y := b.Alloc(1, i), b.Alloc(1, o)
		if err := timeIt("gemv "+p.String(), float64(2*o*i), func() { b.MatMul(y, x, w) }); err != nil {
			return err
		}
		for _, rows := range []int{2, 4, 8} {
			xr, yr := b.Alloc(rows, i), b.Alloc(rows, o)
			b.SetGEMVRows(1)
			if err := timeIt(fmt.Sprintf("cublas%d %s", rows, p), float64(2*o*i), func() { b.MatMul(yr, xr, w) }); err != nil {
				return err
			}
			b.SetGEMVRows(8)
			if err := timeIt(fmt.Sprintf("gemv%d %s", rows, p), float64(2*o*i), func() { b.MatMul(yr, xr, w) }); err != nil {
				return err
			}
			b.SetGEMVRows(1)
		}
		b.Free(w)
	}
	H := cfg.HiddenSize
	x, out, nw := b.Alloc(1, H), b.Alloc(1, H), b.Alloc(1, H)
	if err := timeIt("rmsnorm", 0, func() { b.RMSNorm(out, x, nw, 1e-5) }); err != nil {
		return err
	}
	if err := timeIt("add_rmsnorm", 0, func() { b.AddRMSNorm(x, out, out, nw, 1e-5) }); err != nil {
		return err
	}
	g, u, a := b.Alloc(1, cfg.IntermediateSize), b.Alloc(1, cfg.IntermediateSize), b.Alloc(1, cfg.IntermediateSize)
	if err := timeIt("silu_mul", 0, func() { b.SiluMul(a, g, u) }); err != nil {
		return err
	}
	if err := normGEMVBreakdown(b, cfg, buf, timeIt); err != nil {
		return err
	}
	if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: 64, PageSize: 16, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim}); err != nil {
		return err
	}
	s := decodeStep(1, 128, 16)
	if err := b.Prepare(s); err != nil {
		return err
	}
	q, att := b.Alloc(1, cfg.NumHeads*cfg.HeadDim), b.Alloc(1, cfg.NumHeads*cfg.HeadDim)
	k, v := b.Alloc(1, cfg.NumKVHeads*cfg.HeadDim), b.Alloc(1, cfg.NumKVHeads*cfg.HeadDim)
	table := b.Alloc(4096, cfg.HeadDim)
	ap := model.AttnParams{Heads: cfg.NumHeads, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim, Scale: float32(1 / math.Sqrt(float64(cfg.HeadDim)))}
	for _, op := range []struct {
		name string
		f    func()
	}{
		{"rope q", func() { b.RoPE(q.Reshape(cfg.NumHeads, cfg.HeadDim), cfg.NumHeads, table) }},
		{"store_kv", func() { b.StoreKV(0, k, v) }},
		{"attention ctx 128", func() { b.Attention(att, q, 0, ap) }},
	} {
		if err := timeIt(op.name, 0, op.f); err != nil {
			return err
		}
	}
	// Prefill of 2,048 tokens: attention over the tiled kernel, and the largest GEMM.
	const n = 2048
	if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: n / 16, PageSize: 16, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim}); err != nil {
		return err
	}
	if err := b.Prepare(prefillStep(n, 16)); err != nil {
		return err
	}
	qp, ap2 := b.Alloc(n, cfg.NumHeads*cfg.HeadDim), b.Alloc(n, cfg.NumHeads*cfg.HeadDim)
	attnFlops := 4 * float64(cfg.NumHeads*cfg.HeadDim) * n * (n + 1) / 2
	if err := timeIt("prefill attention 2048", 0, func() { b.Attention(ap2, qp, 0, ap) }); err != nil {
		return err
	}
	fmt.Printf("    (%.1f GFLOP per layer)\n", attnFlops/1e9)
	o, i := cfg.ProjShape(model.ProjGate)
	w, err := b.Upload(model.HostTensor{Name: "w", DType: model.BF16, Shape: []int{o, i}, Data: buf[:2*o*i]}, o, i)
	if err != nil {
		return err
	}
	xp, yp := b.Alloc(n, i), b.Alloc(n, o)
	if err := timeIt("prefill gate_proj 2048", 0, func() { b.MatMul(yp, xp, w) }); err != nil {
		return err
	}
	hp, op := b.Alloc(n, H), b.Alloc(n, H)
	if err := timeIt("prefill rmsnorm 2048", 0, func() { b.RMSNorm(op, hp, nw, 1e-5) }); err != nil {
		return err
	}
	if err := timeIt("prefill rope q 2048", 0, func() { b.RoPE(qp.Reshape(n*cfg.NumHeads, cfg.HeadDim), cfg.NumHeads, table) }); err != nil {
		return err
	}
	if err := prefillPlanBreakdown(b, cfg, ap, timeIt); err != nil {
		return err
	}
	return b.Err()
}

// prefillPlanBreakdown times one layer's prefill attention at 2,048 and 8,192 tokens in both tile
// plans of the tensor-core kernel (64-row tiles, and LORAPLEX_PREFILL_WIDE's 128-row tiles), so one
// breakdown shows the switch's effect whatever the environment chose for the lines above. It runs
// last: it leaves the backend on the 128-row plan and on a step of 8,192 rows.
func prefillPlanBreakdown(b *cuda.Backend, cfg *model.Config, ap model.AttnParams, timeIt func(string, float64, func()) error) error {
	for _, n := range []int{2048, 8192} {
		if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: n / 16, PageSize: 16, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim}); err != nil {
			return err
		}
		q, out := b.Alloc(n, cfg.NumHeads*cfg.HeadDim), b.Alloc(n, cfg.NumHeads*cfg.HeadDim)
		for _, wide := range []bool{false, true} {
			b.SetPrefillWide(wide)
			if err := b.Prepare(prefillStep(n, 16)); err != nil {
				return err
			}
			rows := 64
			if wide {
				rows = 128
			}
			if err := timeIt(fmt.Sprintf("prefill attn %d, %d-row", n, rows), 0, func() { b.Attention(out, q, 0, ap) }); err != nil {
				return err
			}
		}
		b.Free(q)
		b.Free(out)
	}
	return nil
}

// normGEMVBreakdown times a decode layer's two add+RMSNorms apart and folded into the GEMVs that
// read them (LORAPLEX_NORM_GEMV, model.NormFuser): each pair of lines does the same work, so the
// difference is what folding one norm saves (or costs) per layer; the GB/s are the weights'.
func normGEMVBreakdown(b *cuda.Backend, cfg *model.Config, buf []byte, timeIt func(string, float64, func()) error) error {
	upload := func(p model.Proj) (model.Tensor, error) {
		o, i := cfg.ProjShape(p)
		return b.Upload(model.HostTensor{Name: "w", DType: model.BF16, Shape: []int{o, i}, Data: buf[:2*o*i]}, o, i)
	}
	var ws [5]model.Tensor // q, k, v, gate, up
	for i, p := range []model.Proj{model.ProjQ, model.ProjK, model.ProjV, model.ProjGate, model.ProjUp} {
		var err error
		if ws[i], err = upload(p); err != nil {
			return err
		}
		defer b.Free(ws[i])
	}
	H := cfg.HiddenSize
	x, delta, h, next, nw := b.Alloc(1, H), b.Alloc(1, H), b.Alloc(1, H), b.Alloc(1, H), b.Alloc(1, H)
	outs := []model.Tensor{b.Alloc(1, ws[0].Rows), b.Alloc(1, ws[1].Rows), b.Alloc(1, ws[2].Rows)}
	act := b.Alloc(1, cfg.IntermediateSize)
	in := model.NormedInput{X: x, Delta: delta, Next: next, Weight: nw, Eps: 1e-5}
	b.SetGEMVRows(1)
	b.SetFusedDecode(true)
	b.SetNormGEMV(true)
	if !b.MatMulShared(outs, h, ws[:3]) || !b.GateUpSiLU(act, h, ws[3], ws[4]) || !b.NormMatMulShared(outs, in, ws[:3]) ||
		!b.NormGateUpSiLU(act, in, ws[3], ws[4]) {
		return fmt.Errorf("breakdown: a fused decode kernel declined batch-1 products of the %d-wide hidden state", H)
	}
	qkvBytes := 2 * float64(H*(ws[0].Rows+ws[1].Rows+ws[2].Rows))
	gateUpBytes := 2 * 2 * float64(H*ws[3].Rows)
	for _, op := range []struct {
		name  string
		bytes float64
		f     func()
	}{
		{"add_rmsnorm + q/k/v parts", qkvBytes, func() { b.AddRMSNorm(x, delta, h, nw, 1e-5); b.MatMulShared(outs, h, ws[:3]) }},
		{"norm q/k/v parts", qkvBytes, func() { b.NormMatMulShared(outs, in, ws[:3]) }},
		{"add_rmsnorm + gate/up swiglu", gateUpBytes, func() { b.AddRMSNorm(x, delta, h, nw, 1e-5); b.GateUpSiLU(act, h, ws[3], ws[4]) }},
		{"norm gate/up swiglu", gateUpBytes, func() { b.NormGateUpSiLU(act, in, ws[3], ws[4]) }},
	} {
		if err := timeIt(op.name, op.bytes, op.f); err != nil {
			return err
		}
	}
	return b.Err()
}
