//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// A folded call (LORAPLEX_LORA_FOLD) gives what the products, the biases and the LoRA deltas
// give as separate ops: against the CPU within the LoRA sweep's 2e-3 of the largest output,
// against the unfused GPU ops within 1e-5 (the shrink sums in the GEMV's order); with the norm
// folded too (with and without the residual add, staged and not), the new residual bitwise
// the unfused x += delta. Cases: q/k/v-like triples with some projections unadapted, gate/up
// pairs, the down projection's wide input, ranks off multiples of 8 (the expand's scalar path)
// and a bias. It declines with the switch off, beyond the GEMV rows (the kept norm off: with it
// on, NormFoldedProducts takes such steps, TestNormKeptProducts) and in deterministic mode.
func TestLoRAFoldSweep(t *testing.T) {
	r := rand.New(rand.NewPCG(51, 52))
	const eps = 1e-5
	type shape struct {
		k      int
		widths []int
		ranks  []int // 0: the projection has no adapter
		bias   bool
	}
	for _, sh := range []shape{{4096, []int{4096, 1024, 1024}, []int{16, 8, 16}, false}, {4096, []int{4096, 1024, 1024}, []int{8, 0, 0}, true},
		{4096, []int{14336, 14336}, []int{16, 16}, false}, {14336, []int{4096}, []int{8}, false}, {160, []int{96, 13, 7}, []int{20, 1, 0}, true},
		{8, []int{5}, []int{3}, false}} {
		for _, c := range []struct{ norm, add, stage bool }{{false, false, false}, {true, false, false}, {true, true, false}, {true, true, true}} {
			t.Run(fmt.Sprintf("k%d_%v_ranks%v_bias%v_norm%v_add%v_stage%v", sh.k, sh.widths, sh.ranks, sh.bias, c.norm, c.add, c.stage), func(t *testing.T) {
				tr := newTrio(t)
				tr.fused.SetLoRAFold(true)
				tr.fused.SetNormKeep(false)
				tr.fused.SetNormStage(c.stage)
				if staged := tr.fused.NormStaged(1, sh.k); c.norm && staged != (c.stage && sh.k <= 12256) { // 12256: gemv.cu's GEMV_STAGE_MAX_K
					t.Fatalf("staging %v at width %d: the staged kernels take it: %v", c.stage, sh.k, staged)
				}
				tr.plain.SetLoRAFold(false)
				x, delta := tr.tensors(t, 1, sh.k, randFloats(r, sh.k)), tr.tensors(t, 1, sh.k, randFloats(r, sh.k))
				next, h := tr.tensors(t, 1, sh.k, nil), tr.tensors(t, 1, sh.k, nil)
				var nw [3]model.Tensor
				nwHost := normWeight(r, sh.k)
				for i, b := range []model.Backend{tr.c, tr.plain, tr.fused} {
					var err error
					if nw[i], err = b.Upload(nwHost, 1, sh.k); err != nil {
						t.Fatal(err)
					}
				}
				n := len(sh.widths)
				ws, outs, biases := make([][3]model.Tensor, n), make([][3]model.Tensor, n), make([][3]model.Tensor, n)
				segs := make([][3][]model.LoRASeg, n)
				for i, m := range sh.widths {
					ws[i] = tr.uploads(t, hostBF16(r, m, sh.k, 1/math.Sqrt(float64(sh.k))))
					outs[i] = tr.tensors(t, 1, m, nil)
					if sh.bias && i == 0 {
						biases[i] = tr.tensors(t, 1, m, randFloats(r, m))
					}
					if rk := sh.ranks[i]; rk > 0 {
						a := tr.uploads(t, hostBF16(r, rk, sh.k, 1/math.Sqrt(float64(sh.k))))
						bb := tr.uploads(t, hostBF16(r, m, rk, 1/math.Sqrt(float64(rk))))
						scale := float32(0.5 + r.Float64())
						for bi := range segs[i] {
							segs[i][bi] = []model.LoRASeg{{Start: 0, N: 1, A: a[bi], B: bb[bi], Scale: scale}}
						}
					}
				}
				pick := func(bi int) (o, w, bs []model.Tensor, sg [][]model.LoRASeg) {
					for i := range ws {
						o, w, bs, sg = append(o, outs[i][bi]), append(w, ws[i][bi]), append(bs, biases[i][bi]), append(sg, segs[i][bi])
					}
					return o, w, bs, sg
				}
				in := func(bi int) model.NormedInput {
					ni := model.NormedInput{X: x[bi], Next: next[bi], Weight: nw[bi], Eps: eps}
					if c.add {
						ni.Delta = delta[bi]
					}
					return ni
				}
				folded := func(b *cuda.Backend, bi int) bool {
					o, w, bs, sg := pick(bi)
					if c.norm {
						return b.NormFoldedProducts(o, in(bi), w, bs, sg)
					}
					return b.FoldedProducts(o, x[bi], w, bs, sg)
				}
				// The separate ops on the CPU and on the GPU with the switch off.
				for bi, b := range []model.Backend{tr.c, tr.plain} {
					src := x[bi]
					if c.norm {
						src = h[bi]
						if c.add {
							b.AddRMSNorm(x[bi], delta[bi], h[bi], nw[bi], eps)
						} else {
							b.RMSNorm(h[bi], x[bi], nw[bi], eps)
						}
					}
					o, w, bs, sg := pick(bi)
					for i := range o {
						b.MatMul(o[i], src, w[i])
						if bs[i].Rows > 0 {
							b.AddBias(o[i], bs[i])
						}
						if len(sg[i]) > 0 {
							b.LoRA(o[i], src, sg[i])
						}
					}
				}
				if folded(tr.plain, 1) {
					t.Fatal("a folded call ran with the switch off")
				}
				if !folded(tr.fused, 2) {
					t.Fatal("a folded call declined one row with the switch on")
				}
				for i := range outs {
					same, all := tr.check(t, fmt.Sprintf("part %d", i), outs[i], 2e-3, 1e-5)
					t.Logf("part %d: %d of %d elements bitwise equal to the separate ops", i, same, all)
				}
				if c.add {
					if same, all := tr.check(t, "residual", [3]model.Tensor{x[0], x[1], next[2]}, 0, 0); same != all {
						t.Fatalf("residual: %d of %d elements bitwise the unfused x += delta", same, all)
					}
				}
				if tr.fused.FoldCount() == 0 {
					t.Fatal("the fold counter did not move")
				}
				tr.fused.SetGEMVRows(0)
				if folded(tr.fused, 2) {
					t.Fatal("a folded call took one row with the GEMV limit at 0")
				}
				tr.fused.SetGEMVRows(1)
				tr.fused.SetBatchInvariant(true)
				if folded(tr.fused, 2) {
					t.Fatal("a folded call ran in deterministic mode")
				}
				tr.fused.SetBatchInvariant(false)
				if err := tr.fused.Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// A step recorded with folded shrinks replays for another adapter of the same ranks: the A
// factors are read through the segment table the replay rewrites, so the replay gives bitwise
// what a direct step gives for that adapter (and not the recorded adapter's deltas).
func TestLoRAFoldGraphReplay(t *testing.T) {
	b := newGPU(t)
	b.SetLoRAFold(true)
	if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: 8, PageSize: 8, KVHeads: 1, HeadDim: 8}); err != nil {
		t.Fatal(err)
	}
	_, dec := promptThenDecode([]int{0}, []int{3}, 8)
	if err := b.Prepare(&dec); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(53, 54))
	const k = 4096
	widths, ranks := []int{4096, 1024, 1024}, []int{16, 8, 16}
	upload := func(h model.HostTensor) model.Tensor {
		x, err := b.Upload(h, h.Shape[0], h.Shape[1])
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	var ws, outs, biases []model.Tensor
	for _, m := range widths {
		ws = append(ws, upload(hostBF16(r, m, k, 1/math.Sqrt(k))))
		outs = append(outs, b.Alloc(1, m))
		biases = append(biases, model.Tensor{})
	}
	adapter := func() [][]model.LoRASeg {
		var segs [][]model.LoRASeg
		for i, rk := range ranks {
			segs = append(segs, []model.LoRASeg{{Start: 0, N: 1, A: upload(hostBF16(r, rk, k, 1/math.Sqrt(k))),
				B: upload(hostBF16(r, widths[i], rk, 1/math.Sqrt(float64(rk)))), Scale: float32(0.5 + r.Float64())}})
		}
		return segs
	}
	recorded, replayed := adapter(), adapter()
	x := b.Alloc(1, k)
	if err := b.Write(x, randFloats(r, k)); err != nil {
		t.Fatal(err)
	}
	key := []byte("lora fold replay")
	run := func(segs [][]model.LoRASeg, key []byte, wantReplay bool) [][]float32 {
		if replay := b.BeginStep(key); replay != wantReplay {
			t.Fatalf("BeginStep replays %v, want %v", replay, wantReplay)
		}
		if !b.FoldedProducts(outs, x, ws, biases, segs) {
			t.Fatal("the folded call declined")
		}
		if err := b.EndStep(); err != nil {
			t.Fatal(err)
		}
		var got [][]float32
		for _, o := range outs {
			got = append(got, read(t, b, o))
		}
		return got
	}
	direct := run(replayed, nil, false)
	other := run(recorded, key, false)
	if b.GraphCount() != 1 {
		t.Fatalf("%d recordings, want 1", b.GraphCount())
	}
	checkReplayed(t, direct, other, run(replayed, key, true), func(int, int) bool { return false })
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// checkReplayed fails unless a replay's outputs are bitwise the direct step's for the same
// adapters and differ somewhere from the recorded step's (which had other adapters); elements
// fixed says carry no adapter's delta must equal the recorded step's.
func checkReplayed(t *testing.T, direct, recorded, replayed [][]float32, fixed func(i, j int) bool) {
	t.Helper()
	moved := 0
	for i := range direct {
		for j := range direct[i] {
			if math.Float32bits(replayed[i][j]) != math.Float32bits(direct[i][j]) {
				t.Fatalf("output %d element %d: %v replayed, %v direct", i, j, replayed[i][j], direct[i][j])
			}
			if replayed[i][j] != recorded[i][j] {
				if fixed(i, j) {
					t.Fatalf("output %d element %d carries no adapter's delta: %v replayed, %v recorded", i, j, replayed[i][j], recorded[i][j])
				}
				moved++
			}
		}
	}
	if moved == 0 {
		t.Fatal("the replay gave the recorded adapters' outputs")
	}
}

// With folded shrinks, staged norms or not, the engine-core fixture suite still matches the
// transformers/peft reference within the bf16 bound (every family, base + four adapters in one
// mixed batch, prefill whole and chunked, decode replayed from CUDA graphs), and its one-row
// steps with one adapter take the folded calls.
func TestLoRAFoldFixturesCUDA(t *testing.T) {
	b := newGPU(t)
	b.SetLoRAFold(true)
	eachFixture(t, b, func(t *testing.T, c fixtureCase) {
		for _, stage := range []bool{false, true} {
			b.SetNormStage(stage)
			runChunkings(t, c.h, c.fx.Cases, c.adapters, fmt.Sprintf("%s stage %v", c.name, stage))
			runChunkings(t, c.h, c.fx.Cases[len(c.fx.Cases)-1:], c.adapters, fmt.Sprintf("%s last case alone, stage %v", c.name, stage))
		}
	})
	if b.GraphCount() == 0 || b.FoldCount() == 0 {
		t.Fatalf("%d recordings, %d folded calls", b.GraphCount(), b.FoldCount())
	}
}

// With the kept norm (LORAPLEX_NORM_KEEP), NormFoldedProducts on a step of more rows than the
// GEMV takes gives bitwise what the unfused path gives: the (add +) RMSNorm, MatMulShared, the
// biases, then the LoRA deltas from the fp32 normed rows, and the same residual in Next, x left
// alone. Any segment layout: row runs of adapters of ranks 4, 8 and 16 with unadapted runs
// between them and a projection without any, or one segment over every row; q/k/v- and
// gate/up-shaped groups; a width the float4 norm and the vector shrink decline. It declines in
// deterministic mode and with the switch off.
func TestNormKeptProducts(t *testing.T) {
	g := newGPU(t)
	g.SetNormBF16(true)
	g.SetNormKeep(true)
	r := rand.New(rand.NewPCG(81, 82))
	const eps = 1e-5
	for _, sh := range []struct {
		n, k     int
		widths   []int
		one      bool // one segment over every row (else runs of several adapters)
		add, bia bool
	}{{64, 4096, []int{4096, 1024, 1024}, false, true, false}, {64, 512, []int{1024, 1024}, true, true, true},
		{300, 1024, []int{2048, 512, 512}, false, false, true}, {9, 258, []int{96, 13}, false, true, false}} {
		t.Run(fmt.Sprintf("n%d_k%d_%v_one%v_add%v_bias%v", sh.n, sh.k, sh.widths, sh.one, sh.add, sh.bia), func(t *testing.T) {
			c := newNormCase(t, g, r, sh.n, sh.k, sh.widths, sh.add)
			m := len(sh.widths)
			biases := make([]model.Tensor, m)
			if sh.bia {
				biases[0] = c.alloc(t, 1, sh.widths[0], randFloats(r, sh.widths[0]))
			}
			// Three adapters; each row run takes one of them or none, every projection but
			// the second of a mixed layout adapted alike (a sequence's adapter covers its
			// projections).
			ranks := []int{8, 16, 4}
			type factors struct {
				a, b  model.Tensor
				scale float32
			}
			ads := make([][]factors, len(ranks))
			for a, rk := range ranks {
				for _, w := range sh.widths {
					ads[a] = append(ads[a], factors{c.upload(t, hostBF16(r, rk, sh.k, 1/math.Sqrt(float64(sh.k)))),
						c.upload(t, hostBF16(r, w, rk, 1/math.Sqrt(float64(rk)))), float32(0.5 + r.Float64())})
				}
			}
			segs := make([][]model.LoRASeg, m)
			for start := 0; start < sh.n; {
				run, a := 1+r.IntN(8), r.IntN(len(ranks)+1)
				if sh.one {
					run, a = sh.n, 0
				}
				run = min(run, sh.n-start)
				for i := range segs {
					if a < len(ranks) && (sh.one || i != 1) {
						f := ads[a][i]
						segs[i] = append(segs[i], model.LoRASeg{Start: start, N: run, A: f.a, B: f.b, Scale: f.scale})
					}
				}
				start += run
			}
			// The unfused path.
			c.norm(eps)
			if !g.MatMulShared(c.want, c.h, c.ws) {
				t.Fatal("MatMulShared declined rows for cuBLAS")
			}
			for i, b := range biases {
				if b.Rows > 0 {
					g.AddBias(c.want[i], b)
				}
			}
			if !g.LoRAGroup(c.want, c.h, segs) {
				t.Fatal("LoRAGroup declined")
			}
			in, got := c.input(eps), c.got
			before := g.NormKeptCount()
			if !g.NormFoldedProducts(got, in, c.ws, biases, segs) || g.NormKeptCount() != before+1 {
				t.Fatalf("declined %d rows for cuBLAS (kept calls %d, was %d)", sh.n, g.NormKeptCount(), before)
			}
			c.checkBitwise(t, "kept")
			g.SetBatchInvariant(true)
			if g.NormFoldedProducts(got, in, c.ws, biases, segs) {
				t.Error("took a step in deterministic mode")
			}
			g.SetBatchInvariant(false)
			g.SetNormKeep(false)
			if g.NormFoldedProducts(got, in, c.ws, biases, segs) {
				t.Error("took a step of more rows than the GEMV's with LORAPLEX_NORM_KEEP off")
			}
			g.SetNormKeep(true)
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// fixturesAlike runs the engine-core fixture suite (eachFixture: prefill whole and in chunks of
// 3) with a switch off, then on, and fails unless both give the same results to the bit.
func fixturesAlike(t *testing.T, b *cuda.Backend, what string, set func(on bool)) {
	t.Helper()
	eachFixture(t, b, func(t *testing.T, c fixtureCase) {
		var results [2][]fixture.Result
		for i, on := range []bool{false, true} {
			set(on)
			for _, chunk := range []int{1 << 20, 3} {
				res, err := c.h.Run(c.fx.Cases, c.adapters, chunk, bf16Tolerance)
				if err != nil {
					t.Fatalf("%s %v, chunk %d: %v", what, on, chunk, err)
				}
				results[i] = append(results[i], res)
			}
		}
		for j := range results[0] {
			if results[0][j] != results[1][j] {
				t.Fatalf("run %d: with %s %+v, without %+v", j, what, results[1][j], results[0][j])
			}
		}
	})
}

// With the kept norm the engine-core fixture suite gives what it gives without, to the bit
// (the same worst difference from the transformers/peft reference in every run: every family,
// base + four adapters in one mixed batch, prefill whole and chunked, decode replayed from CUDA
// graphs), and its adapted steps of more than one row take the kept calls.
func TestNormKeepFixturesCUDA(t *testing.T) {
	b := newGPU(t)
	b.SetNormBF16(true)
	fixturesAlike(t, b, "kept norm", b.SetNormKeep)
	if b.NormKeptCount() == 0 || b.GraphCount() == 0 {
		t.Fatalf("%d kept calls, %d recordings", b.NormKeptCount(), b.GraphCount())
	}
}

// A step recorded with the kept norm replays for other adapters of the same ranks and layout:
// the shrinks read the kept rows and the factors through the segment tables the replay
// rewrites, so the replay gives bitwise what a direct step gives for those adapters (and not
// the recorded ones' deltas); a row without an adapter between adapted ones keeps the base
// product.
func TestNormKeptGraphReplay(t *testing.T) {
	b := newGPU(t)
	b.SetNormBF16(true)
	b.SetNormKeep(true)
	if err := b.AllocKV(model.KVSpec{Layers: 1, Pages: 16, PageSize: 8, KVHeads: 1, HeadDim: 8}); err != nil {
		t.Fatal(err)
	}
	_, dec := promptThenDecode([]int{0, 1, 2, 3}, []int{3, 3, 3, 3}, 8)
	if err := b.Prepare(&dec); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(83, 84))
	const n, k, eps = 4, 1024, 1e-5
	widths := []int{1024, 256, 256}
	c := newNormCase(t, b, r, n, k, widths, true)
	biases := make([]model.Tensor, len(widths))
	in := c.input(eps)
	checkReplayForOtherAdapters(t, b, c, r, k, widths, func(segs [][]model.LoRASeg) bool {
		kept := b.NormKeptCount()
		return b.NormFoldedProducts(c.got, in, c.ws, biases, segs) && b.NormKeptCount() == kept+1
	}, func() [][]float32 {
		var got [][]float32
		for _, o := range append(c.got, c.next) {
			got = append(got, read(t, b, o))
		}
		return got
	})
}

// A routed step's norm folded into its products (NormKeptMatMulShared, LORAPLEX_ROUTED_BF16)
// gives bitwise what the unfused path gives: the (add +) RMSNorm, then MatMulShared (gates of 28
// outputs beside the base products), the same residual in Next with x left alone, and the
// normed rows it returns bitwise the unfused h (the routing shrinks read them). It declines
// GEMV-sized steps, deterministic mode and the switch off.
func TestNormKeptMatMulShared(t *testing.T) {
	g := newGPU(t)
	defer g.SetRoutedBF16(false)
	g.SetRoutedBF16(true)
	r := rand.New(rand.NewPCG(83, 84))
	const eps = 1e-5
	for _, sh := range []struct {
		n, k   int
		widths []int
		add    bool
	}{{64, 4096, []int{4096, 1024, 1024, 28, 28, 28}, true}, {64, 1024, []int{2048, 2048, 28}, false}, {300, 512, []int{256, 28}, true},
		{9, 258, []int{96, 13}, true}} {
		t.Run(fmt.Sprintf("n%d_k%d_%v_add%v", sh.n, sh.k, sh.widths, sh.add), func(t *testing.T) {
			c := newNormCase(t, g, r, sh.n, sh.k, sh.widths, sh.add)
			c.norm(eps)
			if !g.MatMulShared(c.want, c.h, c.ws) {
				t.Fatal("MatMulShared declined rows for cuBLAS")
			}
			in := c.input(eps)
			h, ok := g.NormKeptMatMulShared(c.got, in, c.ws)
			if !ok {
				t.Fatalf("declined %d rows for cuBLAS", sh.n)
			}
			c.checkBitwise(t, "kept")
			want, got := read(t, g, c.h), read(t, g, h)
			for i := range want {
				if math.Float32bits(want[i]) != math.Float32bits(got[i]) {
					t.Fatalf("normed row element %d: %v kept, %v unfused", i, got[i], want[i])
				}
			}
			g.SetBatchInvariant(true)
			if _, ok := g.NormKeptMatMulShared(c.got, in, c.ws); ok {
				t.Error("took a step in deterministic mode")
			}
			g.SetBatchInvariant(false)
			g.SetRoutedBF16(false)
			if _, ok := g.NormKeptMatMulShared(c.got, in, c.ws); ok {
				t.Error("took a step with LORAPLEX_ROUTED_BF16 off")
			}
			g.SetRoutedBF16(true)
			g.SetGEMVRows(8)
			few, outs := in, make([]model.Tensor, len(c.got))
			few.X = in.X.Slice(0, 8)
			if sh.add {
				few.Delta, few.Next = in.Delta.Slice(0, 8), in.Next.Slice(0, 8)
			}
			for i, o := range c.got {
				outs[i] = o.Slice(0, 8)
			}
			if _, ok := g.NormKeptMatMulShared(outs, few, c.ws); ok {
				t.Error("took 8 rows, which the GEMV kernel reads")
			}
			g.SetGEMVRows(1)
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
