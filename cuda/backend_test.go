//go:build cuda

package cuda_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

func newGPU(t testing.TB) *cuda.Backend {
	t.Helper()
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device: %v", err)
	}
	b, err := cuda.New(0)
	if err != nil {
		t.Fatal(err)
	}
	// Replays that keep their segment tables (the default) make no op call, so the tests that
	// count what a replay's calls did would count nothing: the kept tables' own tests
	// (segkeep_test.go) turn keeping on, the fixture suites among them.
	b.SetSegmentKeep(false)
	return b
}

// bf16Tolerance: the GPU rounds weights (given in f32 by most fixtures), GEMM inputs and the
// KV cache to bf16 (8 significant bits), so logits drift from the float32 reference by a few
// percent of the row's largest logit in these tiny random models (measured worst: see the
// test log and bench/results/cuda-fixtures.txt). Tokens are compared where the reference
// margin exceeds twice the bound.
var bf16Tolerance = fixture.Tolerance{Abs: 0.02, RowRel: 0.05}

// runChunkings runs cases on h against the reference within bf16Tolerance twice, prompts whole
// and in chunks of 3 rows, and logs each run's worst difference under label.
func runChunkings(t *testing.T, h *fixture.Harness, cases []fixture.Case, adapters map[string]*model.Adapter, label string) {
	t.Helper()
	for _, chunk := range []int{1 << 20, 3} {
		res, err := h.Run(cases, adapters, chunk, bf16Tolerance)
		if err != nil {
			t.Fatalf("%s chunk %d: %v", label, chunk, err)
		}
		t.Logf("%s chunk %d: %d cases, %d steps, worst logit diff %.3g (%.3g of the row's max), %d token checks skipped for margins within tolerance",
			label, chunk, len(cases), res.Steps, res.WorstDiff, res.WorstRowRel, res.TokenSkips)
	}
}

// fixtureCase is one fixture model open on a backend, with its four adapters uploaded.
type fixtureCase struct {
	name     string
	fx       *fixture.Fixture
	cfg      *model.Config
	h        *fixture.Harness
	adapters map[string]*model.Adapter
}

// eachFixture runs fn as a subtest on every fixture model open on b, and fails the subtest when
// b has failed by its end.
func eachFixture(t *testing.T, b *cuda.Backend, fn func(t *testing.T, c fixtureCase)) {
	t.Helper()
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			fx, cfg, h := fixture.Open(t, name, b)
			fn(t, fixtureCase{name, fx, cfg, h, fixtureadapters.Upload(t, name, cfg, b)})
			if err := b.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFixturesCUDA runs the engine-core fixture suite (every family, base + 4 adapters in one
// mixed batch, prefill whole and chunked) on the GPU against the transformers/peft reference.
func TestFixturesCUDA(t *testing.T) {
	b := newGPU(t)
	eachFixture(t, b, func(t *testing.T, c fixtureCase) { runChunkings(t, c.h, c.fx.Cases, c.adapters, c.name) })
	// Decode steps of the same shape replayed recorded graphs (each model's first decode step
	// recorded one; the rest of the suite above compared the replays against the reference).
	if b.GraphCount() == 0 {
		t.Fatal("no decode step was recorded as a CUDA graph")
	}
	t.Logf("%d step graphs recorded", b.GraphCount())
}

// TestGraphsMatchDirect runs the same decode steps with and without CUDA graphs, and recorded
// with programmatic dependent launch (both modes; sm_90+): the recording must replay exactly what
// direct launches compute.
func TestGraphsMatchDirect(t *testing.T) {
	name := "qwen2"
	fx, err := fixture.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	runs := []struct {
		graphs bool
		pdl    cuda.PDL
	}{{false, cuda.PDLOff}, {true, cuda.PDLOff}, {true, cuda.PDLOn}, {true, cuda.PDLPrefetch}}
	results := make([][]float64, len(runs))
	for i, run := range runs {
		graphs := run.graphs
		b := newGPU(t)
		b.SetGraphs(graphs)
		b.SetPDL(run.pdl)
		cfg, _ := model.LoadConfig(fixture.Dir(name))
		w, err := model.LoadWeights(fixture.Dir(name), cfg, b)
		if err != nil {
			t.Fatal(err)
		}
		h, err := fixture.NewHarness(cfg, b, w, 4, 256)
		if err != nil {
			t.Fatal(err)
		}
		res, err := h.Run(fx.Cases[:3], nil, 1<<20, bf16Tolerance)
		if err != nil {
			t.Fatal(err)
		}
		results[i] = []float64{res.WorstDiff}
		if graphs != (b.GraphCount() > 0) {
			t.Fatalf("graphs=%v but %d recorded", graphs, b.GraphCount())
		}
		w.Close()
	}
	for i, run := range runs[1:] {
		if results[i+1][0] != results[0][0] {
			t.Fatalf("worst logit diff without graphs %g, with graphs and PDL %v %g: replays differ from direct launches",
				results[0][0], run.pdl, results[i+1][0])
		}
	}
}

// hostBF16 makes a bf16 host tensor of random values scaled by s.
func hostBF16(r *rand.Rand, rows, cols int, s float64) model.HostTensor {
	data := make([]byte, 2*rows*cols)
	for i := 0; i < rows*cols; i++ {
		f := float32(r.NormFloat64() * s)
		binary.LittleEndian.PutUint16(data[2*i:], uint16(math.Float32bits(f)>>16))
	}
	return model.HostTensor{Name: "rand", DType: model.BF16, Shape: []int{rows, cols}, Data: data}
}

func randFloats(r *rand.Rand, n int) []float32 {
	f := make([]float32, n)
	for i := range f {
		f[i] = float32(r.NormFloat64())
	}
	return f
}

// nanFloats is n NaNs: written over an output first, it shows any element a kernel leaves unwritten.
func nanFloats(n int) []float32 {
	f := make([]float32, n)
	for i := range f {
		f[i] = float32(math.NaN())
	}
	return f
}

// pair runs the same ops on the CPU backend and the GPU backend.
type pair struct {
	c *cpu.Backend
	g *cuda.Backend
}

func (p pair) upload(t *testing.T, h model.HostTensor) (model.Tensor, model.Tensor) {
	t.Helper()
	a, err := p.c.Upload(h, h.Shape[0], h.Shape[len(h.Shape)-1])
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.g.Upload(h, h.Shape[0], h.Shape[len(h.Shape)-1])
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func (p pair) tensor(t *testing.T, rows, cols int, vals []float32) (model.Tensor, model.Tensor) {
	t.Helper()
	a, b := p.c.Alloc(rows, cols), p.g.Alloc(rows, cols)
	if vals != nil {
		if err := p.c.Write(a, vals); err != nil {
			t.Fatal(err)
		}
		if err := p.g.Write(b, vals); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// compare reads both tensors and checks max|gpu - cpu| <= tol * max|cpu|.
// compare fails the test when the GPU's b differs from the CPU's a by more than tol of the
// largest |a|, and returns the worst difference over that largest value.
func (p pair) compare(t *testing.T, what string, a, b model.Tensor, tol float64) float64 {
	t.Helper()
	x, y := make([]float32, a.Rows*a.Cols), make([]float32, b.Rows*b.Cols)
	if err := p.c.Read(a, x); err != nil {
		t.Fatal(err)
	}
	if err := p.g.Read(b, y); err != nil {
		t.Fatal(err)
	}
	var worst, scale float64
	for i := range x {
		worst = max(worst, math.Abs(float64(x[i]-y[i])))
		scale = max(scale, math.Abs(float64(x[i])))
		if math.IsNaN(float64(y[i])) {
			t.Fatalf("%s: NaN at %d", what, i)
		}
	}
	if worst > tol*scale {
		t.Fatalf("%s: max diff %.3g exceeds %.3g x max %.3g", what, worst, tol, scale)
	}
	return worst / scale
}

// TestLoRASweep compares the SGMV/BGMV kernels with the CPU over adapter-popularity patterns
// and mixed ranks, for decode (one row per segment) and prefill (long segments), on the plain
// and on the wide kernels (LORAPLEX_LORA_WIDE).
func TestLoRASweep(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	r := rand.New(rand.NewPCG(1, 2))
	const in, out, nAdapters = 512, 384, 16
	ranks := []int{1, 4, 8, 16, 32, 64, 128, 7}
	type ad struct{ ac, ag, bc, bg model.Tensor }
	ads := make([]ad, nAdapters)
	for i := range ads {
		rk := ranks[i%len(ranks)]
		ads[i].ac, ads[i].ag = p.upload(t, hostBF16(r, rk, in, 1/math.Sqrt(in)))
		ads[i].bc, ads[i].bg = p.upload(t, hostBF16(r, out, rk, 1/math.Sqrt(float64(rk))))
	}
	zipf := rand.NewZipf(rand.New(rand.NewPCG(3, 4)), 1.2, 1, nAdapters-1)
	patterns := map[string]func(i int) int{
		"distinct":  func(i int) int { return i % nAdapters },
		"uniform":   func(int) int { return r.IntN(nAdapters) },
		"zipf":      func(int) int { return int(zipf.Uint64()) },
		"identical": func(int) int { return 3 },
		"skewed":    func(i int) int { return map[bool]int{true: 0, false: 1 + i%5}[i%4 != 0] },
	}
	for name, pick := range patterns {
		for _, c := range []struct {
			segLen int
			wide   bool
		}{{1, false}, {37, false}, {1, true}, {37, true}} {
			segLen := c.segLen
			t.Run(fmt.Sprintf("%s/rows=%d/wide=%v", name, segLen, c.wide), func(t *testing.T) {
				p.g.SetLoRAWide(c.wide)
				nseg := 64 // decode: 64 rows, one per request
				if segLen > 1 {
					nseg = 5 // prefill: a few long segments
				}
				rows := nseg * segLen
				xc, xg := p.tensor(t, rows, in, randFloats(r, rows*in))
				base := randFloats(r, rows*out)
				oc, og := p.tensor(t, rows, out, base)
				var sc, sg []model.LoRASeg
				for s := 0; s < nseg; s++ {
					a := ads[pick(s)]
					scale := float32(0.5 + r.Float64())
					sc = append(sc, model.LoRASeg{Start: s * segLen, N: segLen, A: a.ac, B: a.bc, Scale: scale})
					sg = append(sg, model.LoRASeg{Start: s * segLen, N: segLen, A: a.ag, B: a.bg, Scale: scale})
				}
				p.c.LoRA(oc, xc, sc)
				p.g.LoRA(og, xg, sg)
				p.compare(t, "lora", oc, og, 2e-3)
			})
		}
	}
}

// TestMatMulSweep: cuBLAS bf16 (inputs rounded to bf16) against the CPU's fp32 x bf16.
func TestMatMulSweep(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	r := rand.New(rand.NewPCG(5, 6))
	for _, sh := range [][3]int{{1, 64, 64}, {3, 96, 160}, {8, 512, 4096}, {64, 1024, 768}, {257, 320, 64}} {
		n, m, k := sh[0], sh[1], sh[2]
		wc, wg := p.upload(t, hostBF16(r, m, k, 1/math.Sqrt(float64(k))))
		xc, xg := p.tensor(t, n, k, randFloats(r, n*k))
		oc, og := p.tensor(t, n, m, nil)
		p.c.MatMul(oc, xc, wc)
		p.g.MatMul(og, xg, wg)
		p.compare(t, fmt.Sprintf("matmul %v", sh), oc, og, 2e-2)
	}
}

// RMSNorm and the residual add + RMSNorm match the CPU within 1e-5 of the largest output (the
// sum of squares reduced in another order, TestNormGEMV's bound; 1e-6 failed at 4,096 wide) at widths on both of kernels/rmsnorm.cu's paths, with
// LORAPLEX_NORM_VEC on and off: not a multiple of 4 (the scalar loop either way), rows held in
// registers (up to 4,096) and rows read back (wider), 1 to 64 rows; the new residual x + delta is
// bitwise the CPU's, and the output buffer is poisoned with NaN first so that an element left
// unwritten shows. The float4 kernel must have run: somewhere in the sweep its output differs
// in the last bits from the scalar loop's on the same rows.
func TestRMSNormSweep(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	r := rand.New(rand.NewPCG(13, 14))
	differs := 0
	for _, c := range []struct {
		vec       bool
		dim, rows int
	}{{true, 6, 3}, {true, 64, 1}, {true, 1028, 3}, {true, 4096, 1}, {true, 4096, 64}, {true, 4100, 3}, {true, 5120, 64},
		{true, 8192, 3}, {false, 4096, 64}, {false, 5120, 3}} {
		p.g.SetNormVec(c.vec)
		dim, rows := c.dim, c.rows
		h := normWeight(r, dim)
		wc, err := p.c.Upload(h, 1, dim)
		if err != nil {
			t.Fatal(err)
		}
		wg, err := p.g.Upload(h, 1, dim)
		if err != nil {
			t.Fatal(err)
		}
		xc, xg := p.tensor(t, rows, dim, randFloats(r, rows*dim))
		dc, dg := p.tensor(t, rows, dim, randFloats(r, rows*dim))
		oc, og := p.tensor(t, rows, dim, nanFloats(rows*dim))
		what := fmt.Sprintf("%d rows of %d, float4 kernel %v", rows, dim, c.vec)
		p.c.RMSNorm(oc, xc, wc, 1e-5)
		p.g.RMSNorm(og, xg, wg, 1e-5)
		p.compare(t, "rmsnorm, "+what, oc, og, 1e-5)
		if c.vec {
			vec := read(t, p.g, og)
			p.g.SetNormVec(false)
			p.g.RMSNorm(og, xg, wg, 1e-5)
			p.g.SetNormVec(true)
			for i, v := range read(t, p.g, og) {
				if math.Float32bits(v) != math.Float32bits(vec[i]) {
					differs++
				}
			}
		}
		if err := p.g.Write(og, nanFloats(rows*dim)); err != nil {
			t.Fatal(err)
		}
		p.c.AddRMSNorm(xc, dc, oc, wc, 1e-5)
		p.g.AddRMSNorm(xg, dg, og, wg, 1e-5)
		p.compare(t, "add + rmsnorm, "+what, oc, og, 1e-5)
		sc, sg := make([]float32, rows*dim), make([]float32, rows*dim)
		if err := p.c.Read(xc, sc); err != nil {
			t.Fatal(err)
		}
		if err := p.g.Read(xg, sg); err != nil {
			t.Fatal(err)
		}
		for i := range sc {
			if math.Float32bits(sc[i]) != math.Float32bits(sg[i]) {
				t.Fatalf("add + rmsnorm, %s: x + delta at %d is %v, the CPU's %v", what, i, sg[i], sc[i])
			}
		}
		for _, x := range []model.Tensor{wg, xg, dg, og} {
			p.g.Free(x)
		}
	}
	p.g.SetNormVec(true)
	if err := p.g.Err(); err != nil {
		t.Fatal(err)
	}
	if differs == 0 {
		t.Fatal("every float4-kernel output is bitwise the scalar loop's: the float4 kernel never ran")
	}
}

// TestAttentionSweep fills a paged cache for several sequences through a real Step (scrambled
// pages, prefill rows) and compares attention outputs, for MHA/GQA/MQA, head sizes and windows.
func TestAttentionSweep(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, sh := range []struct{ heads, kv, dim, window int }{{4, 4, 16, 0}, {8, 2, 64, 0}, {8, 1, 128, 0}, {4, 2, 256, 0}, {4, 2, 32, 5}, {32, 8, 128, 0}} {
		t.Run(fmt.Sprintf("h%d_kv%d_d%d_w%d", sh.heads, sh.kv, sh.dim, sh.window), func(t *testing.T) {
			p := pair{cpu.New(0), newGPU(t)}
			defer p.c.Close()
			const pageSize, pages = 8, 128
			spec := model.KVSpec{Layers: 1, Pages: pages, PageSize: pageSize, KVHeads: sh.kv, HeadDim: sh.dim}
			if err := p.c.AllocKV(spec); err != nil {
				t.Fatal(err)
			}
			if err := p.g.AllocKV(spec); err != nil {
				t.Fatal(err)
			}
			s, d := promptThenDecode(r.Perm(pages), []int{1, 9, 70, 300}, pageSize)
			n := len(s.Tokens)
			if err := p.c.Prepare(&s); err != nil {
				t.Fatal(err)
			}
			if err := p.g.Prepare(&s); err != nil {
				t.Fatal(err)
			}
			width := sh.kv * sh.dim
			kc, kg := p.tensor(t, n, width, randFloats(r, n*width))
			vc, vg := p.tensor(t, n, width, randFloats(r, n*width))
			p.c.StoreKV(0, kc, vc)
			p.g.StoreKV(0, kg, vg)
			qc, qg := p.tensor(t, n, sh.heads*sh.dim, randFloats(r, n*sh.heads*sh.dim))
			oc, og := p.tensor(t, n, sh.heads*sh.dim, nil)
			ap := model.AttnParams{Heads: sh.heads, KVHeads: sh.kv, HeadDim: sh.dim, Scale: float32(1 / math.Sqrt(float64(sh.dim))), Window: sh.window}
			p.c.Attention(oc, qc, 0, ap)
			p.g.Attention(og, qg, 0, ap)
			p.compare(t, "attention", oc, og, 2e-2)

			// Then one decode row per sequence at the next position: the split-K decode kernel
			// over contexts of 2 to 301 positions.
			m := len(d.Tokens)
			if err := p.c.Prepare(&d); err != nil {
				t.Fatal(err)
			}
			if err := p.g.Prepare(&d); err != nil {
				t.Fatal(err)
			}
			kc2, kg2 := p.tensor(t, m, width, randFloats(r, m*width))
			vc2, vg2 := p.tensor(t, m, width, randFloats(r, m*width))
			p.c.StoreKV(0, kc2, vc2)
			p.g.StoreKV(0, kg2, vg2)
			qc2, qg2 := p.tensor(t, m, sh.heads*sh.dim, randFloats(r, m*sh.heads*sh.dim))
			oc2, og2 := p.tensor(t, m, sh.heads*sh.dim, nil)
			p.c.Attention(oc2, qc2, 0, ap)
			p.g.Attention(og2, qg2, 0, ap)
			p.compare(t, "decode attention", oc2, og2, 2e-2)
		})
	}
}

// Prefill attention matches the CPU on both kernels (tensor cores where the head dim has one, in
// 64-row tiles and in the wide plan's 128-row tiles where the head dim has those, CUDA cores for
// all) over head dims, MHA/GQA/MQA, sliding windows and page sizes, for a prompt's first chunk
// and for a second chunk that attends to the cached pages of the first, with chunks that leave
// ragged tiles of either height; and repeating a launch gives bitwise the same output.
// The bound 1e-2 of the largest reference value is the bf16 rounding of Q and P argued in
// kernels/attention_prefill_mma.cu.
func TestPrefillAttentionSweep(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	type shape struct{ heads, kv, dim, window, pageSize int }
	var shapes []shape
	for _, dim := range []int{64, 80, 128, 256} {
		shapes = append(shapes, shape{8, 8, dim, 0, 16}, shape{8, 2, dim, 0, 8}, shape{4, 1, dim, 0, 32}, shape{8, 2, dim, 7, 16}, shape{4, 4, dim, 100, 8})
	}
	shapes = append(shapes, shape{4, 2, 48, 0, 16}, shape{32, 8, 128, 0, 16}, shape{8, 2, 128, 0, 1})
	// Each sequence: rows of the first chunk, then rows of the second (0: none).
	chunks := [][2]int{{37, 70}, {64, 64}, {130, 5}, {3, 129}, {200, 0}, {250, 300}}
	for _, kernel := range []string{"wide", "mma", "simt"} {
		for _, sh := range shapes {
			name := fmt.Sprintf("%s/h%d_kv%d_d%d_w%d_p%d", kernel, sh.heads, sh.kv, sh.dim, sh.window, sh.pageSize)
			t.Run(name, func(t *testing.T) {
				p := pair{cpu.New(0), newGPU(t)}
				defer p.c.Close()
				p.g.SetPrefillAttention(kernel != "simt")
				p.g.SetPrefillWide(kernel == "wide")
				pageSize := sh.pageSize
				maxLen := 0
				for _, c := range chunks {
					maxLen = max(maxLen, c[0]+c[1])
				}
				perSeq := (maxLen + pageSize - 1) / pageSize
				pages := perSeq * len(chunks)
				spec := model.KVSpec{Layers: 1, Pages: pages, PageSize: pageSize, KVHeads: sh.kv, HeadDim: sh.dim}
				if err := p.c.AllocKV(spec); err != nil {
					t.Fatal(err)
				}
				if err := p.g.AllocKV(spec); err != nil {
					t.Fatal(err)
				}
				table := scrambledTables(r, len(chunks), perSeq)
				ap := model.AttnParams{Heads: sh.heads, KVHeads: sh.kv, HeadDim: sh.dim, Scale: float32(1 / math.Sqrt(float64(sh.dim))), Window: sh.window}
				width, qw := sh.kv*sh.dim, sh.heads*sh.dim
				for step := 0; step < 2; step++ {
					s := chunkStep(chunks, step, table, pageSize)
					n := len(s.Tokens)
					if err := p.c.Prepare(s); err != nil {
						t.Fatal(err)
					}
					if err := p.g.Prepare(s); err != nil {
						t.Fatal(err)
					}
					kc, kg := p.tensor(t, n, width, randFloats(r, n*width))
					vc, vg := p.tensor(t, n, width, randFloats(r, n*width))
					p.c.StoreKV(0, kc, vc)
					p.g.StoreKV(0, kg, vg)
					qc, qg := p.tensor(t, n, qw, randFloats(r, n*qw))
					oc, og := p.tensor(t, n, qw, nil)
					// Poison the output: every element must be written.
					poison := nanFloats(n * qw)
					if err := p.g.Write(og, poison); err != nil {
						t.Fatal(err)
					}
					p.c.Attention(oc, qc, 0, ap)
					p.g.Attention(og, qg, 0, ap)
					rel := p.compare(t, fmt.Sprintf("prefill attention, chunk %d", step+1), oc, og, 1e-2)
					t.Logf("chunk %d: worst difference %.2e of the largest output", step+1, rel)
					first := make([]float32, n*qw)
					if err := p.g.Read(og, first); err != nil {
						t.Fatal(err)
					}
					p.g.Attention(og, qg, 0, ap)
					again := make([]float32, n*qw)
					if err := p.g.Read(og, again); err != nil {
						t.Fatal(err)
					}
					for i := range first {
						if math.Float32bits(first[i]) != math.Float32bits(again[i]) {
							t.Fatalf("chunk %d: element %d differs between two identical launches: %v then %v", step+1, i, first[i], again[i])
						}
					}
				}
				if err := p.g.Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// The wide plan changes only which rows share a block: without a sliding window and unsplit,
// each row meets the same key tiles in the same order through the same mma and softmax
// arithmetic as in the 64-row plan (a key tile its warp computes but the row does not see is
// wholly masked, which leaves the row's state as it was), so a prompt's first chunk and chunks
// after cached pages, ragged in both plans, give bitwise the 64-row plan's outputs over head
// dims 64, 80 and 128 and GQA ratios 1, 4 and 8. With a window a tile's key tiles start at its
// first row's window edge, clamped at 0: where the taller tile's edge clamps and the shorter's
// does not (a chunk from position 50 under a window of 100: the 64-row tile at 114 starts its
// keys at 15, the 128-row tile at 50 at 0) rows group their keys otherwise, so there some bit
// must differ (else the wide plan did not run).
func TestPrefillWideMatchesNarrow(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	type shape struct{ heads, kv, dim, window int }
	shapes := []shape{{8, 8, 128, 0}, {16, 4, 128, 0}, {32, 4, 128, 0}, {8, 2, 64, 0}, {8, 1, 80, 0}, {16, 4, 128, 100}}
	const pageSize = 16
	// Each sequence: rows of the first chunk, then rows of the second (0: none).
	chunks := [][2]int{{300, 0}, {1, 255}, {130, 77}, {513, 2}, {50, 200}}
	for _, sh := range shapes {
		t.Run(fmt.Sprintf("h%d_kv%d_d%d_w%d", sh.heads, sh.kv, sh.dim, sh.window), func(t *testing.T) {
			g := newGPU(t)
			g.SetPrefillSplit(false) // the split count follows the tile count, and with it the sums' order
			perSeq := 0
			for _, c := range chunks {
				perSeq = max(perSeq, (c[0]+c[1]+pageSize-1)/pageSize)
			}
			pages := perSeq * len(chunks)
			if err := g.AllocKV(model.KVSpec{Layers: 1, Pages: pages, PageSize: pageSize, KVHeads: sh.kv, HeadDim: sh.dim}); err != nil {
				t.Fatal(err)
			}
			table := scrambledTables(r, len(chunks), perSeq)
			ap := model.AttnParams{Heads: sh.heads, KVHeads: sh.kv, HeadDim: sh.dim, Scale: float32(1 / math.Sqrt(float64(sh.dim))), Window: sh.window}
			width, qw := sh.kv*sh.dim, sh.heads*sh.dim
			differ := false
			for step := 0; step < 2; step++ {
				s := chunkStep(chunks, step, table, pageSize)
				n := len(s.Tokens)
				write := func(x model.Tensor, vals []float32) {
					if err := g.Write(x, vals); err != nil {
						t.Fatal(err)
					}
				}
				k, v, q, out := g.Alloc(n, width), g.Alloc(n, width), g.Alloc(n, qw), g.Alloc(n, qw)
				write(k, randFloats(r, n*width))
				write(v, randFloats(r, n*width))
				write(q, randFloats(r, n*qw))
				var got [2][]float32
				for i, wide := range []bool{false, true} {
					g.SetPrefillWide(wide)
					if err := g.Prepare(s); err != nil {
						t.Fatal(err)
					}
					if i == 0 {
						g.StoreKV(0, k, v)
					}
					write(out, nanFloats(n*qw)) // every element must be written
					g.Attention(out, q, 0, ap)
					got[i] = make([]float32, n*qw)
					if err := g.Read(out, got[i]); err != nil {
						t.Fatal(err)
					}
				}
				for i := range got[0] {
					a, b := got[0][i], got[1][i]
					if math.IsNaN(float64(a)) || math.IsNaN(float64(b)) {
						t.Fatalf("chunk %d: element %d not written (64-row tiles %v, 128-row tiles %v)", step+1, i, a, b)
					}
					if math.Float32bits(a) != math.Float32bits(b) {
						if sh.window == 0 {
							t.Fatalf("chunk %d: element %d is %v in 64-row tiles but %v in 128-row tiles", step+1, i, a, b)
						}
						differ = true
					}
				}
				for _, x := range []model.Tensor{k, v, q, out} {
					g.Free(x)
				}
			}
			if sh.window > 0 && !differ {
				t.Fatal("with a window the wide plan changed no bit: it did not run")
			}
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Split-K of the tensor-core prefill kernel changes nothing but speed: chunks of 1 to 200 rows
// over cached prefixes of 100 to 5,000 positions (each sequence alone, the short-chunk case the
// split is for, and all in one step with a decode row beside the tiles) give the CPU's attention
// within the sweep's bound with LORAPLEX_PREFILL_SPLIT off and on, over head dims 64 to 256, GQA
// and sliding windows, with LORAPLEX_PREFILL_WIDE off and on (128-row tiles for the steps with a
// chunk of 128 rows or more: a 200-row chunk alone, all chunks in one step); every output
// element is written, two identical launches agree bitwise, and a 40-row chunk over 2,000
// positions alone does take the split path (its result differs from the unsplit kernel's in the
// last bits).
func TestPrefillSplitSweep(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	type shape struct{ heads, kv, dim, window, pageSize int }
	shapes := []shape{{8, 8, 64, 0, 16}, {8, 2, 80, 0, 16}, {32, 8, 128, 0, 16}, {8, 2, 128, 300, 16}, {4, 1, 256, 0, 8}, {8, 2, 64, 1000, 32}}
	type chunk struct{ prefix, rows int }
	chunks := []chunk{{100, 64}, {777, 1}, {2000, 40}, {4999, 17}, {3001, 64}, {5000, 3}, {1500, 200}}
	const splitProbe = 2 // chunks[splitProbe] alone must take the split path
	for _, wide := range []bool{false, true} {
		for _, sh := range shapes {
			t.Run(fmt.Sprintf("wide%v/h%d_kv%d_d%d_w%d_p%d", wide, sh.heads, sh.kv, sh.dim, sh.window, sh.pageSize), func(t *testing.T) {
				p := pair{cpu.New(0), newGPU(t)}
				defer p.c.Close()
				p.g.SetPrefillWide(wide)
				table := make([][]int32, len(chunks))
				pages := 0
				for i, c := range chunks {
					for range (c.prefix + c.rows + sh.pageSize - 1) / sh.pageSize {
						table[i] = append(table[i], int32(pages))
						pages++
					}
				}
				perm := r.Perm(pages) // scrambled block tables
				for i := range table {
					for j := range table[i] {
						table[i][j] = int32(perm[table[i][j]])
					}
				}
				spec := model.KVSpec{Layers: 1, Pages: pages, PageSize: sh.pageSize, KVHeads: sh.kv, HeadDim: sh.dim}
				if err := p.c.AllocKV(spec); err != nil {
					t.Fatal(err)
				}
				if err := p.g.AllocKV(spec); err != nil {
					t.Fatal(err)
				}
				width, qw := sh.kv*sh.dim, sh.heads*sh.dim
				// step builds a step of positions [from(i), to(i)) of each listed sequence.
				step := func(seqs []int, from, to func(int) int) *model.Step {
					s := &model.Step{}
					for _, i := range seqs {
						start := len(s.Tokens)
						for pos := from(i); pos < to(i); pos++ {
							s.Tokens = append(s.Tokens, 0)
							s.Positions = append(s.Positions, int32(pos))
							s.Slots = append(s.Slots, table[i][pos/sh.pageSize]*int32(sh.pageSize)+int32(pos%sh.pageSize))
						}
						s.Seqs = append(s.Seqs, model.SeqRows{Start: start, N: to(i) - from(i), Len: to(i), Pages: table[i]})
					}
					return s
				}
				prepare := func(s *model.Step) {
					if err := p.c.Prepare(s); err != nil {
						t.Fatal(err)
					}
					if err := p.g.Prepare(s); err != nil {
						t.Fatal(err)
					}
				}
				store := func(n int) {
					kc, kg := p.tensor(t, n, width, randFloats(r, n*width))
					vc, vg := p.tensor(t, n, width, randFloats(r, n*width))
					p.c.StoreKV(0, kc, vc)
					p.g.StoreKV(0, kg, vg)
				}
				all := make([]int, len(chunks))
				for i := range all {
					all[i] = i
				}
				// The cached prefixes, all in one step (only their keys and values matter).
				pre := step(all, func(int) int { return 0 }, func(i int) int { return chunks[i].prefix })
				prepare(pre)
				store(len(pre.Tokens))
				ap := model.AttnParams{Heads: sh.heads, KVHeads: sh.kv, HeadDim: sh.dim, Scale: float32(1 / math.Sqrt(float64(sh.dim))), Window: sh.window}
				// run computes the chunk rows' attention with the split off and on, checks both against
				// the CPU and returns the two GPU results.
				run := func(what string, s *model.Step) (off, on []float32) {
					prepare(s)
					n := len(s.Tokens)
					qc, qg := p.tensor(t, n, qw, randFloats(r, n*qw))
					oc, og := p.tensor(t, n, qw, nil)
					p.c.Attention(oc, qc, 0, ap)
					poison := nanFloats(n * qw)
					var got [2][]float32
					for k, split := range []bool{false, true} {
						p.g.SetPrefillSplit(split)
						if err := p.g.Write(og, poison); err != nil {
							t.Fatal(err)
						}
						p.g.Attention(og, qg, 0, ap)
						rel := p.compare(t, fmt.Sprintf("%s, split %v", what, split), oc, og, 1e-2)
						t.Logf("%s, split %v: worst difference %.2e of the largest output", what, split, rel)
						got[k] = make([]float32, n*qw)
						if err := p.g.Read(og, got[k]); err != nil {
							t.Fatal(err)
						}
						p.g.Attention(og, qg, 0, ap)
						again := make([]float32, n*qw)
						if err := p.g.Read(og, again); err != nil {
							t.Fatal(err)
						}
						for i := range again {
							if math.Float32bits(got[k][i]) != math.Float32bits(again[i]) {
								t.Fatalf("%s, split %v: element %d differs between two identical launches: %v then %v", what, split, i, got[k][i], again[i])
							}
						}
					}
					return got[0], got[1]
				}
				// The chunks' own rows go into the cache once; each run below attends over them.
				rows := step(all, func(i int) int { return chunks[i].prefix }, func(i int) int { return chunks[i].prefix + chunks[i].rows })
				prepare(rows)
				store(len(rows.Tokens))
				for i, c := range chunks {
					off, on := run(fmt.Sprintf("%d rows after %d cached alone", c.rows, c.prefix), step([]int{i},
						func(int) int { return c.prefix }, func(int) int { return c.prefix + c.rows }))
					if i == splitProbe {
						same := true
						for j := range off {
							same = same && math.Float32bits(off[j]) == math.Float32bits(on[j])
						}
						if same {
							t.Fatalf("%d rows after %d cached: the split switch changed no bit (the split path did not run)", c.rows, c.prefix)
						}
					}
				}
				run("all chunks in one step", rows)
				if err := p.g.Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// scrambledTables gives seqs sequences perSeq pages each of a cache of seqs·perSeq pages, in a
// random order: block tables as a long-running server leaves them, not in address order.
func scrambledTables(r *rand.Rand, seqs, perSeq int) [][]int32 {
	perm := r.Perm(seqs * perSeq)
	table := make([][]int32, seqs)
	for i := range table {
		for j := 0; j < perSeq; j++ {
			table[i] = append(table[i], int32(perm[i*perSeq+j]))
		}
	}
	return table
}

// chunkStep is step 0 or 1 of the chunked prefills chunks describe: sequence i's first chunk[i][0]
// positions in step 0, its next chunk[i][1] in step 1 (the first chunk then cached in its pages),
// sequences with no rows in the step left out.
func chunkStep(chunks [][2]int, step int, table [][]int32, pageSize int) *model.Step {
	s := &model.Step{}
	for i, c := range chunks {
		from, n := 0, c[0]
		if step == 1 {
			from, n = c[0], c[1]
		}
		if n == 0 {
			continue
		}
		start := len(s.Tokens)
		for pos := from; pos < from+n; pos++ {
			s.Tokens = append(s.Tokens, 0)
			s.Positions = append(s.Positions, int32(pos))
			s.Slots = append(s.Slots, table[i][pos/pageSize]*int32(pageSize)+int32(pos%pageSize))
		}
		s.Seqs = append(s.Seqs, model.SeqRows{Start: start, N: n, Len: from + n, Pages: table[i]})
	}
	return s
}
