//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
)

// The LoRA SwiGLU (LORAPLEX_LORA_SWIGLU) gives what the unfused path gives: the (add +) RMSNorm,
// the gate and up products, their LoRA deltas (LoRAGroup), then SwiGLU with the down product
// (SiLUMulMatMul): the activation and the down product within 1e-5 and 1e-3 of their largest
// values (the same arithmetic, unless the compiler contracts value + scale · delta into an FMA
// in one kernel and not the other; the test logs how many are bitwise), the residual in Next
// bitwise and x left alone. Layouts: row runs of adapters of ranks 8, 16 and 4 (the expand's
// scalar path) with unadapted runs between them, adapters on gate alone and on up alone, one
// segment over every row; the Llama-3-8B widths, and widths off multiples of 8 and 4 (the
// shrink's and SwiGLU's scalar paths). It declines in deterministic mode, with the switch off,
// with the wide LoRA kernels, SwiGLU's bf16 copy or the bf16 norm off, and for rows the GEMV
// takes.
func TestLoRASwiGLU(t *testing.T) {
	g := newGPU(t)
	g.SetNormBF16(true)
	g.SetLoRASwiGLU(true)
	g.SetLoRAWide(true) // what the unfused side's grouped launch and the fused shrink share
	g.SetLoRAGroup(true)
	g.SetSwiGLUBF16(true)
	r := rand.New(rand.NewPCG(91, 92))
	const eps = 1e-5
	for _, sh := range []struct {
		n, k, inter int
		layout      string // "runs", "gate" or "up" (that projection's segments only), "one" (one segment over every row)
		add         bool
	}{{64, 4096, 14336, "runs", true}, {3, 512, 1024, "gate", true}, {5, 512, 1024, "up", false}, {300, 1024, 2048, "one", false},
		{9, 258, 345, "runs", true}} {
		t.Run(fmt.Sprintf("n%d_k%d_i%d_%s_add%v", sh.n, sh.k, sh.inter, sh.layout, sh.add), func(t *testing.T) {
			c := newNormCase(t, g, r, sh.n, sh.k, nil, sh.add)
			wGate := c.upload(t, hostBF16(r, sh.inter, sh.k, 1/math.Sqrt(float64(sh.k))))
			wUp := c.upload(t, hostBF16(r, sh.inter, sh.k, 1/math.Sqrt(float64(sh.k))))
			wDown := c.upload(t, hostBF16(r, sh.k, sh.inter, 1/math.Sqrt(float64(sh.inter))))
			var gate, up, act, out [2]model.Tensor // unfused, fused
			for i := range gate {
				gate[i], up[i], act[i] = c.alloc(t, sh.n, sh.inter, nil), c.alloc(t, sh.n, sh.inter, nil), c.alloc(t, sh.n, sh.inter, nil)
				out[i] = c.alloc(t, sh.n, sh.k, nil)
			}
			ranks := []int{8, 16, 4}
			var segs [2][]model.LoRASeg
			for start := 0; start < sh.n; {
				run, a := 1+r.IntN(8), r.IntN(len(ranks)+1)
				if sh.layout == "one" {
					run, a = sh.n, 1
				}
				run = min(run, sh.n-start)
				for p := range segs {
					if a < len(ranks) && !(p == 1 && sh.layout == "gate") && !(p == 0 && sh.layout == "up") {
						rk := ranks[a]
						segs[p] = append(segs[p], model.LoRASeg{Start: start, N: run, A: c.upload(t, hostBF16(r, rk, sh.k, 1/math.Sqrt(float64(sh.k)))),
							B: c.upload(t, hostBF16(r, sh.inter, rk, 1/math.Sqrt(float64(rk)))), Scale: float32(0.5 + r.Float64())})
					}
				}
				start += run
			}
			p := 0 // the adapted projection
			if sh.layout == "up" {
				p = 1
			}
			if len(segs[p]) == 0 { // every run drew "no adapter": give the first row one
				segs[p] = append(segs[p], model.LoRASeg{Start: 0, N: 1, A: c.upload(t, hostBF16(r, 8, sh.k, 0.05)),
					B: c.upload(t, hostBF16(r, sh.inter, 8, 0.3)), Scale: 1})
			}
			// The unfused path.
			c.norm(eps)
			if !g.MatMulShared([]model.Tensor{gate[0], up[0]}, c.h, []model.Tensor{wGate, wUp}) {
				t.Fatal("MatMulShared declined rows for cuBLAS")
			}
			if !g.LoRAGroup([]model.Tensor{gate[0], up[0]}, c.h, segs[:]) {
				t.Fatal("LoRAGroup declined")
			}
			if !g.SiLUMulMatMul(out[:1], act[0], gate[0], up[0], []model.Tensor{wDown}) {
				t.Fatal("SiLUMulMatMul declined")
			}
			in := c.input(eps)
			before := g.LoRASwiGLUCount()
			if !g.NormGateUpLoRASwiGLU(out[1], act[1], gate[1], up[1], in, wGate, wUp, wDown, segs) || g.LoRASwiGLUCount() != before+1 {
				t.Fatalf("declined %d rows (calls %d, was %d)", sh.n, g.LoRASwiGLUCount(), before)
			}
			closeTo(t, g, "activation", act[0], act[1], 1e-5)
			closeTo(t, g, "down product", out[0], out[1], 1e-3)
			c.checkBitwise(t, "fused") // the residual and x
			checkDeclines(t, sh.n, func() bool {
				return g.NormGateUpLoRASwiGLU(out[1], act[1], gate[1], up[1], in, wGate, wUp, wDown, segs)
			}, []decline{
				{"deterministic mode", func() { g.SetBatchInvariant(true) }, func() { g.SetBatchInvariant(false) }},
				{"the switch off", func() { g.SetLoRASwiGLU(false) }, func() { g.SetLoRASwiGLU(true) }},
				{"the wide LoRA kernels off", func() { g.SetLoRAWide(false) }, func() { g.SetLoRAWide(true) }},
				{"SwiGLU's bf16 copy off", func() { g.SetSwiGLUBF16(false) }, func() { g.SetSwiGLUBF16(true) }},
				{"the bf16 norm off", func() { g.SetNormBF16(false) }, func() { g.SetNormBF16(true) }},
				gemvRowsDecline(g, sh.n),
			})
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A step recorded with the LoRA SwiGLU replays for other adapters of the same ranks and layout:
// the replay gives bitwise what a direct step gives for those adapters (and not the recorded
// ones' deltas); the row without an adapter and the residual are the same in both.
func TestLoRASwiGLUGraphReplay(t *testing.T) {
	b := newGPU(t)
	b.SetNormBF16(true)
	b.SetLoRASwiGLU(true)
	b.SetLoRAWide(true)
	b.SetSwiGLUBF16(true)
	if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: 16, PageSize: 8, KVHeads: 1, HeadDim: 8}); err != nil {
		t.Fatal(err)
	}
	_, dec := promptThenDecode([]int{0, 1, 2, 3}, []int{3, 3, 3, 3}, 8)
	if err := b.Prepare(&dec); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(93, 94))
	const n, k, inter, eps = 4, 512, 1024, 1e-5
	c := newNormCase(t, b, r, n, k, nil, true)
	wGate, wUp := c.upload(t, hostBF16(r, inter, k, 1/math.Sqrt(k))), c.upload(t, hostBF16(r, inter, k, 1/math.Sqrt(k)))
	wDown := c.upload(t, hostBF16(r, k, inter, 1/math.Sqrt(inter)))
	gate, up, act, out := c.alloc(t, n, inter, nil), c.alloc(t, n, inter, nil), c.alloc(t, n, inter, nil), c.alloc(t, n, k, nil)
	in := c.input(eps)
	checkReplayForOtherAdapters(t, b, c, r, k, []int{inter, inter}, func(segs [][]model.LoRASeg) bool {
		calls := b.LoRASwiGLUCount()
		return b.NormGateUpLoRASwiGLU(out, act, gate, up, in, wGate, wUp, wDown, [2][]model.LoRASeg{segs[0], segs[1]}) &&
			b.LoRASwiGLUCount() == calls+1
	}, func() [][]float32 { return [][]float32{read(t, b, act), read(t, b, out), read(t, b, c.next)} })
}

// The LoRA RoPE (LORAPLEX_LORA_ROPE) gives what the unfused path gives: the (add +) RMSNorm, the
// q, k and v products, their LoRA deltas (LoRAGroup), then RoPE + KV store (RoPEStoreKV): q, k
// and v within 1e-5 of their largest values (bitwise but for the compiler's FMA contractions;
// the test logs how many), attention over the stored cache within 1e-3, the residual bitwise.
// Steps are prefill chunks (several rows a sequence at positions 0.., on scrambled pages), so
// attention reads several stored keys and values and every row its own rotation. Shapes: the
// Llama-3-8B heads over 64 rows, head dims 64 and 80, a width off multiples of 8; layouts as
// TestLoRASwiGLU's (row runs that cross sequences), with k alone adapted in one. It declines in
// deterministic mode, with the switch, the fused decode, the wide LoRA kernels or the bf16 norm
// off, and for rows the GEMV takes.
func TestLoRARoPE(t *testing.T) {
	r := rand.New(rand.NewPCG(95, 96))
	const eps = 1e-5
	for _, sh := range []struct {
		lens                   []int // the step's sequences' rows
		hidden, heads, kv, dim int
		layout                 string // "runs", "k" (k's segments only), "one" (one segment over every row)
		add                    bool
	}{{[]int{20, 1, 30, 13}, 4096, 32, 8, 128, "runs", true}, {[]int{3}, 512, 8, 2, 64, "k", true}, {[]int{5, 4}, 258, 6, 3, 80, "runs", false},
		{[]int{2, 3}, 256, 4, 4, 64, "one", true}} {
		n := 0 // the step's rows
		for _, l := range sh.lens {
			n += l
		}
		t.Run(fmt.Sprintf("n%d_h%d_heads%d_kv%d_d%d_%s_add%v", n, sh.hidden, sh.heads, sh.kv, sh.dim, sh.layout, sh.add), func(t *testing.T) {
			g := newGPU(t)
			g.SetNormBF16(true)
			g.SetLoRARoPE(true)
			g.SetLoRAWide(true)
			g.SetLoRAGroup(true)
			g.SetFusedDecode(true)
			const pageSize, pages = 8, 32
			if err := g.AllocKV(model.KVSpec{Layers: 2, Pages: pages, PageSize: pageSize, KVHeads: sh.kv, HeadDim: sh.dim}); err != nil {
				t.Fatal(err)
			}
			if err := g.Prepare(prefillStep(r, sh.lens, pageSize, pages)); err != nil {
				t.Fatal(err)
			}
			c := newNormCase(t, g, r, n, sh.hidden, nil, sh.add)
			widths := [3]int{sh.heads * sh.dim, sh.kv * sh.dim, sh.kv * sh.dim}
			var ws [3]model.Tensor
			var outs [2][3]model.Tensor // unfused, fused: q, k, v
			for p, w := range widths {
				ws[p] = c.upload(t, hostBF16(r, w, sh.hidden, 1/math.Sqrt(float64(sh.hidden))))
				outs[0][p], outs[1][p] = c.alloc(t, n, w, nil), c.alloc(t, n, w, nil)
			}
			table := c.alloc(t, 32, sh.dim, randFloats(r, 32*sh.dim))
			ranks := []int{8, 16, 4}
			var segs [3][]model.LoRASeg
			for start := 0; start < n; {
				run, a := 1+r.IntN(8), r.IntN(len(ranks)+1)
				if sh.layout == "one" {
					run, a = n, 1
				}
				run = min(run, n-start)
				for p := range segs {
					if a < len(ranks) && (sh.layout != "k" || p == 1) {
						rk := ranks[a]
						segs[p] = append(segs[p], model.LoRASeg{Start: start, N: run, A: c.upload(t, hostBF16(r, rk, sh.hidden, 1/math.Sqrt(float64(sh.hidden)))),
							B: c.upload(t, hostBF16(r, widths[p], rk, 1/math.Sqrt(float64(rk)))), Scale: float32(0.5 + r.Float64())})
					}
				}
				start += run
			}
			p := 0 // an adapted projection
			if sh.layout == "k" {
				p = 1
			}
			if len(segs[p]) == 0 { // every run drew "no adapter": give the first row one
				segs[p] = append(segs[p], model.LoRASeg{Start: 0, N: 1, A: c.upload(t, hostBF16(r, 8, sh.hidden, 0.05)),
					B: c.upload(t, hostBF16(r, widths[p], 8, 0.3)), Scale: 1})
			}
			// The unfused path into layer 0's cache, the fused one into layer 1's.
			c.norm(eps)
			if !g.MatMulShared(outs[0][:], c.h, ws[:]) {
				t.Fatal("MatMulShared declined rows for cuBLAS")
			}
			if !g.LoRAGroup(outs[0][:], c.h, segs[:]) {
				t.Fatal("LoRAGroup declined")
			}
			if !g.RoPEStoreKV(0, outs[0][0], outs[0][1], outs[0][2], sh.heads, sh.kv, table) {
				t.Fatal("RoPEStoreKV declined")
			}
			in := c.input(eps)
			before := g.LoRARoPECount()
			if !g.NormQKVLoRARoPE(outs[1][0], outs[1][1], outs[1][2], in, ws, segs, 1, sh.heads, sh.kv, table) || g.LoRARoPECount() != before+1 {
				t.Fatalf("declined %d rows (calls %d, was %d)", n, g.LoRARoPECount(), before)
			}
			ap := model.AttnParams{Heads: sh.heads, KVHeads: sh.kv, HeadDim: sh.dim, Scale: float32(1 / math.Sqrt(float64(sh.dim)))}
			att := [2]model.Tensor{c.alloc(t, n, widths[0], nil), c.alloc(t, n, widths[0], nil)}
			for i := range att {
				g.Attention(att[i], outs[i][0], i, ap)
			}
			for p, name := range []string{"q", "k", "v"} {
				closeTo(t, g, name, outs[0][p], outs[1][p], 1e-5)
			}
			closeTo(t, g, "attention over the cache", att[0], att[1], 1e-3)
			c.checkBitwise(t, "fused") // the residual and x
			checkDeclines(t, n, func() bool {
				return g.NormQKVLoRARoPE(outs[1][0], outs[1][1], outs[1][2], in, ws, segs, 1, sh.heads, sh.kv, table)
			}, []decline{
				{"deterministic mode", func() { g.SetBatchInvariant(true) }, func() { g.SetBatchInvariant(false) }},
				{"the switch off", func() { g.SetLoRARoPE(false) }, func() { g.SetLoRARoPE(true) }},
				{"the fused decode off", func() { g.SetFusedDecode(false) }, func() { g.SetFusedDecode(true) }},
				{"the wide LoRA kernels off", func() { g.SetLoRAWide(false) }, func() { g.SetLoRAWide(true) }},
				{"the bf16 norm off", func() { g.SetNormBF16(false) }, func() { g.SetNormBF16(true) }},
				gemvRowsDecline(g, n),
			})
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// With the LoRA SwiGLU and the LoRA RoPE on, the engine-core fixture suite still matches the
// transformers/peft reference within the bf16 bound (every family, base + four adapters in one
// mixed batch, prefill whole and chunked, decode replayed from CUDA graphs): its adapted steps
// of more than one row take the SwiGLU one, and Llama's and Mistral's the RoPE one (Qwen2's q/k/v
// biases and Qwen3's Q/K norms keep the separate launches).
func TestLoRAExpandFusionsFixturesCUDA(t *testing.T) {
	b := newGPU(t)
	b.SetNormBF16(true)
	b.SetLoRASwiGLU(true)
	b.SetLoRARoPE(true)
	b.SetFusedDecode(true) // what the two take: set, whatever the environment says
	b.SetLoRAWide(true)
	b.SetSwiGLUBF16(true)
	eachFixture(t, b, func(t *testing.T, c fixtureCase) {
		swiglu, rope := b.LoRASwiGLUCount(), b.LoRARoPECount()
		runChunkings(t, c.h, c.fx.Cases, c.adapters, c.name)
		// Gate/up biases keep SwiGLU apart, q/k/v biases and Q/K norms RoPE.
		if !c.cfg.MLPBias != (b.LoRASwiGLUCount() > swiglu) || (!c.cfg.QKNorm && !c.cfg.QKVBias) != (b.LoRARoPECount() > rope) {
			t.Fatalf("%d LoRA SwiGLU and %d LoRA RoPE calls", b.LoRASwiGLUCount()-swiglu, b.LoRARoPECount()-rope)
		}
	})
	if b.GraphCount() == 0 {
		t.Fatal("no step was recorded")
	}
}

// A step recorded with the LoRA RoPE replays for other adapters of the same ranks and layout:
// the replay gives bitwise what a direct step gives for those adapters (and not the recorded
// ones' deltas); the row without an adapter and the residual are the same in both.
func TestLoRARoPEGraphReplay(t *testing.T) {
	b := newGPU(t)
	b.SetNormBF16(true)
	b.SetLoRARoPE(true)
	b.SetLoRAWide(true)
	b.SetFusedDecode(true)
	const n, hidden, heads, kv, dim, eps = 4, 256, 4, 2, 64, 1e-5
	if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: n, PageSize: 8, KVHeads: kv, HeadDim: dim}); err != nil {
		t.Fatal(err)
	}
	_, dec := promptThenDecode([]int{2, 0, 3, 1}, make([]int, n), 8)
	if err := b.Prepare(&dec); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(97, 98))
	c := newNormCase(t, b, r, n, hidden, nil, true)
	widths := [3]int{heads * dim, kv * dim, kv * dim}
	var ws, outs [3]model.Tensor
	for p, w := range widths {
		ws[p], outs[p] = c.upload(t, hostBF16(r, w, hidden, 1/math.Sqrt(hidden))), c.alloc(t, n, w, nil)
	}
	table := c.alloc(t, 8, dim, randFloats(r, 8*dim))
	in := c.input(eps)
	checkReplayForOtherAdapters(t, b, c, r, hidden, widths[:], func(segs [][]model.LoRASeg) bool {
		calls := b.LoRARoPECount()
		return b.NormQKVLoRARoPE(outs[0], outs[1], outs[2], in, ws, [3][]model.LoRASeg{segs[0], segs[1], segs[2]}, 0, heads, kv, table) &&
			b.LoRARoPECount() == calls+1
	}, func() [][]float32 {
		return [][]float32{read(t, b, outs[0]), read(t, b, outs[1]), read(t, b, outs[2]), read(t, b, c.next)}
	})
}

// checkReplayForOtherAdapters records a fused call of a 4-row step and replays it for other
// adapters of the same ranks and layout: rows 0 and 1 on a rank-16 adapter, row 2 on none, row 3
// on a rank-8 one, on each projection of the given widths over inputs of width k. call makes the
// fused call (false: it declined, or did not count itself), outputs reads what it wrote, the
// residual last. The replay must be bitwise a direct step for its adapters (checkReplayed), and
// the residual and row 2 those of the recorded step.
func checkReplayForOtherAdapters(t *testing.T, b *cuda.Backend, c *normCase, r *rand.Rand, k int, widths []int,
	call func(segs [][]model.LoRASeg) bool, outputs func() [][]float32) {
	t.Helper()
	const n = 4
	layout, ranks := []int{0, 0, -1, 1}, []int{16, 8}
	adapters := func() [][]model.LoRASeg {
		segs := make([][]model.LoRASeg, len(widths))
		for p, w := range widths {
			var as, bs []model.Tensor
			for _, rk := range ranks {
				as = append(as, c.upload(t, hostBF16(r, rk, k, 1/math.Sqrt(float64(k)))))
				bs = append(bs, c.upload(t, hostBF16(r, w, rk, 1/math.Sqrt(float64(rk)))))
			}
			for row, a := range layout {
				if a >= 0 {
					segs[p] = append(segs[p], model.LoRASeg{Start: row, N: 1, A: as[a], B: bs[a], Scale: float32(0.5 + r.Float64())})
				}
			}
		}
		return segs
	}
	recorded, replayed := adapters(), adapters()
	key := []byte(t.Name())
	run := func(segs [][]model.LoRASeg, key []byte, wantReplay bool) [][]float32 {
		if replay := b.BeginStep(key); replay != wantReplay {
			t.Fatalf("BeginStep replays %v, want %v", replay, wantReplay)
		}
		if !call(segs) {
			t.Fatal("the fused call declined")
		}
		if err := b.EndStep(); err != nil {
			t.Fatal(err)
		}
		return outputs()
	}
	direct := run(replayed, nil, false)
	other := run(recorded, key, false)
	if b.GraphCount() != 1 {
		t.Fatalf("%d recordings, want 1", b.GraphCount())
	}
	checkReplayed(t, direct, other, run(replayed, key, true), func(i, j int) bool {
		return i == len(direct)-1 || layout[j/(len(direct[i])/n)] < 0
	})
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// closeTo fails unless got is within bound of want's largest magnitude everywhere and neither
// holds a NaN (an unwritten element: outputs start as NaN), logging how many elements are
// bitwise equal.
func closeTo(t *testing.T, b model.Backend, what string, want, got model.Tensor, bound float64) {
	t.Helper()
	w, g := read(t, b, want), read(t, b, got)
	top, worst, same := 0.0, 0.0, 0
	for i := range w {
		if math.IsNaN(float64(g[i])) || math.IsNaN(float64(w[i])) {
			t.Fatalf("%s: element %d is %v fused, %v unfused", what, i, g[i], w[i])
		}
		top = max(top, math.Abs(float64(w[i])))
		worst = max(worst, math.Abs(float64(g[i]-w[i])))
		if math.Float32bits(g[i]) == math.Float32bits(w[i]) {
			same++
		}
	}
	t.Logf("%s: %d of %d elements bitwise the unfused path's, worst difference %.3g of the largest %.3g", what, same, len(w), worst, top)
	if worst > bound*top {
		t.Fatalf("%s: worst difference %.3g beyond %.0e of the largest value %.3g", what, worst, bound, top)
	}
}

// decline is a setting under which a fused call must decline: set before the call, reset after.
type decline struct {
	what       string
	set, reset func()
}

// checkDeclines fails for each case under which took (the fused call) takes the step of n rows.
// A case without set applies to no step of this size.
func checkDeclines(t *testing.T, n int, took func() bool, cases []decline) {
	t.Helper()
	for _, c := range cases {
		if c.set == nil {
			continue
		}
		c.set()
		if took() {
			t.Errorf("took %d rows with %s", n, c.what)
		}
		c.reset()
	}
}

// gemvRowsDecline raises the GEMV's rows to n, which then declines cuBLAS-sized fusions; none for
// steps beyond LP_GEMV_MAX_ROWS (8), which the GEMV never takes.
func gemvRowsDecline(g *cuda.Backend, n int) decline {
	if n > 8 {
		return decline{what: "rows the GEMV takes"}
	}
	return decline{"rows the GEMV takes", func() { g.SetGEMVRows(n) }, func() { g.SetGEMVRows(1) }}
}
