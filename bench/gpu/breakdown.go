//go:build cuda

package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
)

// breakdown times the ops of one batch-1 decode step one kind at a time (each op repeated and
// synchronised once at the end), so the step time can be attributed. Launch overhead is
// included: these are upper bounds on what the same op costs inside a CUDA graph. Then the
// LoRA kernels at batch 64 on 64 distinct adapters, inside CUDA graphs (loraBreakdown).
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
	if err := loraBreakdown(b, cfg, buf); err != nil {
		return err
	}
	return b.Err()
}

// prefillPlanBreakdown times one layer's prefill attention at 2,048 and 8,192 tokens in both tile
// plans of the tensor-core kernel (64-row tiles, and LORAPLEX_PREFILL_WIDE's 128-row tiles), so one
// breakdown shows the switch's effect whatever the environment chose for the lines above. It
// leaves the backend on the 128-row plan, its KV cache and a prepared step of 8,192 rows, which
// what runs after it (loraBreakdown) replaces with its own. The row labels are the plans'; a
// head dim the wide plan does not take (lp_prefill_wide_ok) would run 64-row tiles under both.
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

// loraBreakdown times the LoRA kernels of a decode step of 64 rows on 64 distinct rank-16
// adapters (issue 15, item 3), per projection shape of the model: shrink and expand apart, on
// the plain and on the wide kernels (LORAPLEX_LORA_WIDE), beside the base product of the same
// projection at batch 64; then q/k/v and gate/up grouped (LORAPLEX_LORA_GROUP). Each adapter's
// factors are in their own device buffers, as uploaded adapters are: one A reused 64 times
// would be read from the 50 MB L2, not from memory. The ops are timed inside CUDA graphs, as a
// decode step runs them: a direct LoRA call also pays its launch and the copy of its segment
// table, which a recorded step does once for all. GB/s are over the factor bytes a launch must
// read (A for the shrink, B for the expand) and over those plus its activations (x read by the
// shrink; the output's read-modify-write by the expand); "floor" is the factor bytes' time at
// the run's copy bandwidth. The summary sets a layer's LoRA time against its seven products,
// with the byte-bound ceiling W / (W + A) of those bytes beside it.
func loraBreakdown(b *cuda.Backend, cfg *model.Config, buf []byte) error {
	const batch, rank = 64, 16
	bw, err := b.MeasureCopyBandwidth(1<<30, 10)
	if err != nil {
		return err
	}
	if err := prepareDecodeRow(b, cfg); err != nil {
		return err
	}
	var owned []model.Tensor
	defer func() {
		b.SetLoRAWide(false)
		b.SetLoRAGroup(false)
		for _, t := range owned {
			b.Free(t)
		}
	}()
	seed := 0
	upload := func(rows, cols int) (model.Tensor, error) {
		n := 2 * rows * cols // at most len(buf): the largest projection
		seed++
		off := (seed * 4099 * 16) % (len(buf) - n + 1) &^ 1
		t, err := b.Upload(model.HostTensor{Name: "w", DType: model.BF16, Shape: []int{rows, cols}, Data: buf[off : off+n]}, rows, cols)
		if err == nil {
			owned = append(owned, t)
		}
		return t, err
	}
	// Per projection: its base weight, its input and output at batch 64, and 64 adapters' factors.
	var w, x, y [model.NumProj]model.Tensor
	var segs [model.NumProj][]model.LoRASeg
	for p := model.Proj(0); p < model.NumProj; p++ {
		o, in := cfg.ProjShape(p)
		if w[p], err = upload(o, in); err != nil {
			return err
		}
		x[p], y[p] = b.Alloc(batch, in), b.Alloc(batch, o)
		owned = append(owned, x[p], y[p])
		for i := 0; i < batch; i++ {
			a, err := upload(rank, in)
			if err != nil {
				return err
			}
			bb, err := upload(o, rank)
			if err != nil {
				return err
			}
			segs[p] = append(segs[p], model.LoRASeg{Start: i, N: 1, A: a, B: bb, Scale: 1})
		}
	}
	fmt.Printf("LoRA at batch %d, %d distinct rank-%d adapters, per op inside a CUDA graph; copy bandwidth %.0f GB/s (read + write)\n", batch, batch, rank, bw/1e9)
	fmt.Printf("  %-36s %8s %8s %10s %8s\n", "", "us", "GB/s", "GB/s+act", "floor us")
	line := func(name string, us, bytes, withAct float64) {
		fmt.Printf("    %-34s %8.1f %8.0f %10.0f %8.1f\n", name, us, bytes/us/1e3, withAct/us/1e3, bytes/bw*1e6)
	}
	factorBytes := func(p model.Proj) (a, bb float64) {
		o, in := cfg.ProjShape(p)
		return float64(batch * rank * in * 2), float64(batch * o * rank * 2)
	}
	// Timed once per shape (q and o, k and v, gate and up share theirs); the layer sums count each projection.
	type shape struct{ out, in int }
	timed := map[shape]model.Proj{}
	var baseUS [model.NumProj]float64
	var loraUS [2][model.NumProj]float64 // plain, wide
	var weightBytes, adapterBytes float64
	for p := model.Proj(0); p < model.NumProj; p++ {
		o, in := cfg.ProjShape(p)
		aBytes, bBytes := factorBytes(p)
		weightBytes += float64(2 * o * in)
		adapterBytes += aBytes + bBytes
		if q, ok := timed[shape{o, in}]; ok {
			baseUS[p], loraUS[0][p], loraUS[1][p] = baseUS[q], loraUS[0][q], loraUS[1][q]
			continue
		}
		timed[shape{o, in}] = p
		xBytes, rmwBytes := float64(batch*in*4), float64(batch*o*8)
		fmt.Printf("  %s, %d -> %d: W %.1f MB, 64 adapters' A %.1f MB + B %.1f MB\n", p, in, o, float64(2*o*in)/1e6, aBytes/1e6, bBytes/1e6)
		key := "lora breakdown " + p.String()
		if baseUS[p], err = inGraph(b, key+" gemm", func() { b.MatMul(y[p], x[p], w[p]) }); err != nil {
			return err
		}
		line("base product (cuBLAS)", baseUS[p], float64(2*o*in), float64(2*o*in)+xBytes+float64(batch*o*4))
		for k, kind := range []string{"plain", "wide"} {
			b.SetLoRAWide(k == 1)
			for _, op := range []struct {
				name           string
				phases         cuda.LoRAPhase
				bytes, withAct float64
			}{
				{"shrink", cuda.LoRAShrink, aBytes, aBytes + xBytes},
				{"expand", cuda.LoRAExpand, bBytes, bBytes + rmwBytes},
				{"shrink + expand", cuda.LoRAShrink | cuda.LoRAExpand, aBytes + bBytes, aBytes + bBytes + xBytes + rmwBytes},
			} {
				us, err := inGraph(b, key+" "+kind+" "+op.name, func() { b.LoRAPhases(y[p], x[p], segs[p], op.phases) })
				if err != nil {
					return err
				}
				line(kind+" "+op.name, us, op.bytes, op.withAct)
				loraUS[k][p] = us // the last op is the whole LoRA
			}
		}
	}
	// Grouped: q/k/v from one x, gate/up from another; o and down stay single launches.
	groups := [][]model.Proj{{model.ProjQ, model.ProjK, model.ProjV}, {model.ProjGate, model.ProjUp}}
	var groupedUS [2]float64
	b.SetLoRAGroup(true)
	for k, kind := range []string{"plain", "wide"} {
		b.SetLoRAWide(k == 1)
		groupedUS[k] = loraUS[k][model.ProjO] + loraUS[k][model.ProjDown]
		for _, g := range groups {
			outs, gsegs, names := make([]model.Tensor, len(g)), make([][]model.LoRASeg, len(g)), ""
			var bytes float64
			for i, p := range g {
				outs[i], gsegs[i] = y[p], segs[p]
				names += "/" + p.String()
				a, bb := factorBytes(p)
				bytes += a + bb
			}
			declined := false
			us, err := inGraph(b, "lora breakdown group "+kind+names, func() { declined = !b.LoRAGroup(outs, x[g[0]], gsegs) || declined })
			if err != nil {
				return err
			}
			if declined {
				return fmt.Errorf("breakdown: LoRAGroup declined %s", names[1:])
			}
			line(kind+" grouped "+names[1:], us, bytes, bytes)
			groupedUS[k] += us
		}
	}
	var base float64
	for _, us := range baseUS {
		base += us
	}
	ceiling := weightBytes / (weightBytes + adapterBytes)
	fmt.Printf("  a layer's seven products: base %.1f us for %.1f MB of weights; 64 adapters' factors %.1f MB (floor %.1f us): byte-bound ceiling of base ÷ (base + LoRA) %.3f\n",
		base, weightBytes/1e6, adapterBytes/1e6, adapterBytes/bw*1e6, ceiling)
	for k, kind := range []string{"plain", "wide"} {
		var lora float64
		for _, us := range loraUS[k] {
			lora += us
		}
		for _, v := range []struct {
			name string
			us   float64
		}{{kind, lora}, {kind + " grouped", groupedUS[k]}} {
			r := base / (base + v.us)
			fmt.Printf("    %-13s LoRA %7.1f us a layer: base ÷ (base + LoRA) %.3f, %.2f of the ceiling\n", v.name, v.us, r, r/ceiling)
		}
	}
	return b.Err()
}

// inGraph returns the time of one f inside a CUDA graph that holds 20 of them, as a decode
// step's graph holds its launches, replayed 20 times: no launch overhead or per-call segment
// table copy, only the gaps between a graph's kernels. A direct step runs first, which grows
// the buffers f needs (a recording may not).
func inGraph(b *cuda.Backend, key string, f func()) (float64, error) {
	const perGraph, replays = 20, 20
	step := func(key []byte) error {
		b.BeginStep(key)
		for i := 0; i < perGraph; i++ {
			f()
		}
		return b.EndStep()
	}
	if err := step(nil); err != nil {
		return 0, err
	}
	graphs := b.GraphCount() // after the direct step: a buffer's growth drops the recordings
	if err := step([]byte(key)); err != nil {
		return 0, err
	}
	if err := b.Sync(); err != nil {
		return 0, err
	}
	if b.GraphCount() != graphs+1 {
		return 0, fmt.Errorf("breakdown: %s was not recorded as a CUDA graph", key)
	}
	start := time.Now()
	for i := 0; i < replays; i++ {
		if err := step([]byte(key)); err != nil {
			return 0, err
		}
	}
	if err := b.Sync(); err != nil {
		return 0, err
	}
	return time.Since(start).Seconds() / (perGraph * replays) * 1e6, nil
}

// prepareDecodeRow gives b a one-row decode step over a one-layer KV cache: BeginStep records
// only steps Prepare has seen, so the benches that time calls inside CUDA graphs (inGraph)
// prepare one first.
func prepareDecodeRow(b *cuda.Backend, cfg *model.Config) error {
	if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: 64, PageSize: 16, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim}); err != nil {
		return err
	}
	return b.Prepare(decodeStep(1, 128, 16))
}

// randomRows allocates rows x cols on b and fills it with standard normal values from r: the
// input of the graph-timed product benches.
func randomRows(b *cuda.Backend, r *rand.Rand, rows, cols int) (model.Tensor, error) {
	x := b.Alloc(rows, cols)
	xs := make([]float32, rows*cols)
	for i := range xs {
		xs[i] = float32(r.NormFloat64())
	}
	return x, b.Write(x, xs)
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
