//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// pdlConfig is a random Llama-shaped model wide enough that every batch-1 product's streams run
// their loads in chunks, also the deep ones (kernels/gemv.cu: at least 256 weight vectors a row,
// so hidden and intermediate 2,048 and up, the lm_head included), with GQA groups of 4 and
// head_dim 128 (the grouped decode kernel and the per-head one both take it).
const pdlConfig = `{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":1024,"hidden_size":2048,
"intermediate_size":4096,"num_hidden_layers":2,"num_attention_heads":16,"num_key_value_heads":4,"head_dim":128,
"max_position_embeddings":4096,"rope_theta":500000,"rms_norm_eps":1e-5,"tie_word_embeddings":false}`

// writePDLModel writes pdlConfig with random weights (bf16 matrices, f32 norm weights near 1)
// to a model folder and returns it.
func writePDLModel(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(pdlConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig([]byte(pdlConfig))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(41, 42))
	var ts []safetensors.Tensor
	matrix := func(name string, rows, cols int) {
		h := hostBF16(r, rows, cols, 0.03)
		ts = append(ts, safetensors.Tensor{Name: name, DType: "BF16", Shape: []int{rows, cols}, Data: h.Data})
	}
	norm := func(name string) {
		data := make([]byte, 4*cfg.HiddenSize)
		for i := 0; i < cfg.HiddenSize; i++ {
			bits := math.Float32bits(float32(1 + 0.1*r.NormFloat64()))
			data[4*i], data[4*i+1], data[4*i+2], data[4*i+3] = byte(bits), byte(bits>>8), byte(bits>>16), byte(bits>>24)
		}
		ts = append(ts, safetensors.Tensor{Name: name, DType: "F32", Shape: []int{cfg.HiddenSize}, Data: data})
	}
	matrix("model.embed_tokens.weight", cfg.VocabSize, cfg.HiddenSize)
	matrix("lm_head.weight", cfg.VocabSize, cfg.HiddenSize)
	norm("model.norm.weight")
	for l := 0; l < cfg.NumLayers; l++ {
		pre := fmt.Sprintf("model.layers.%d.", l)
		norm(pre + "input_layernorm.weight")
		norm(pre + "post_attention_layernorm.weight")
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := cfg.ProjShape(p)
			matrix(pre+p.Block()+"."+p.String()+".weight", out, in)
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pdlLaunches is how one run launches a step's kernels.
type pdlLaunches struct {
	pdl          cuda.PDL
	graphs, deep bool
}

// pdlDecode prefills a 37-token prompt and decodes 90 positions after it, one sequence over
// pages in reverse order, on a fresh backend set as given, and returns every step's logits.
func pdlDecode(t *testing.T, dir string, normGEMV, grouped bool, l pdlLaunches) [][]float32 {
	t.Helper()
	const prompt, decode = 37, 90
	b := newGPU(t)
	b.SetNormGEMV(normGEMV)
	b.SetGroupedDecode(grouped)
	b.SetGraphs(l.graphs)
	b.SetPDL(l.pdl)
	b.SetGEMVDeep(l.deep)
	ctx := prompt + decode
	_, _, run := oneSequence(t, b, dir, ctx, prompt)
	step := func(first, n int) []float32 {
		out := run(first, n)
		for j, v := range out {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("position %d: logit %d is %v", first+n-1, j, v) // bitwise-equal NaNs would prove nothing
			}
		}
		return out
	}
	logits := [][]float32{step(0, prompt)}
	for pos := prompt; pos < ctx; pos++ {
		logits = append(logits, step(pos, 1))
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
	if l.graphs != (b.GraphCount() > 0) {
		t.Fatalf("graphs %v, but %d decode steps recorded", l.graphs, b.GraphCount())
	}
	return logits
}

// Programmatic dependent launch changes when a step's kernels start, and the deep GEMV streams
// how many loads are in flight, never what they compute: a prompt and 90 batch-1 decode steps
// after it give bitwise the logits of plain launches with PDL (replayed from CUDA graphs and
// launched directly; with and without the GEMVs' L2 prefetch, which every product of this model
// is small enough for), with the deep streams, and with both. On the norm-fused GEMVs with the
// grouped decode kernel and on the unfused add+RMSNorm, parts GEMV and gate/up GEMV with the
// per-head one (the fill rule splits the per-head kernel's positions from the first decode step
// and the grouped kernel's past 64 positions, so the merge kernel runs in both).
func TestPDLBitwise(t *testing.T) {
	if info, err := cuda.DeviceProps(0); err != nil || info.Major < 9 {
		t.Skipf("programmatic dependent launch needs sm_90 or newer (%v, %v)", info, err)
	}
	dir := writePDLModel(t)
	for _, path := range []struct{ normGEMV, grouped bool }{{true, true}, {false, false}} {
		t.Run(fmt.Sprintf("normgemv=%v/grouped=%v", path.normGEMV, path.grouped), func(t *testing.T) {
			want := pdlDecode(t, dir, path.normGEMV, path.grouped, pdlLaunches{cuda.PDLOff, true, false})
			for _, l := range []pdlLaunches{{cuda.PDLOn, true, false}, {cuda.PDLOn, false, false}, {cuda.PDLPrefetch, true, false},
				{cuda.PDLOff, true, true}, {cuda.PDLPrefetch, true, true}} {
				got := pdlDecode(t, dir, path.normGEMV, path.grouped, l)
				for s := range want {
					for j, v := range want[s] {
						if math.Float32bits(v) != math.Float32bits(got[s][j]) {
							t.Fatalf("%+v: step %d logit %d is %v, %v with plain launches", l, s, j, got[s][j], v)
						}
					}
				}
			}
		})
	}
}

// The deep GEMV streams (SetGEMVDeep) change how many weight loads a lane has in flight, never
// its sums, and neither do the L1-bypassing weight loads (SetGEMVStream), programmatic dependent
// launch or the L2 prefetch, with the norm-fused launches staged (SetNormStage, with one or two
// columns a warp: SetNormStagePair) or not: at one row, over
// widths that end on and off the streams' chunks (k from 8 to 14,336), the plain, shared-input
// (q/k/v-like parts straddling blocks), gate/up + SwiGLU and norm-fused products (with the
// residual add, whose new residual is compared too) are bitwise those of the default streams
// launched plainly. Below sm_90 the PDL variants launch plainly and only the depth is tested.
func TestGEMVDeepBitwise(t *testing.T) {
	b := newGPU(t)
	r := rand.New(rand.NewPCG(51, 52))
	const m, mk = 72, 13 // nine blocks of 8 warps; a second part ending inside one
	for _, k := range []int{8, 248, 1016, 1024, 2056, 4096, 14336} {
		t.Run(fmt.Sprintf("k%d", k), func(t *testing.T) {
			upload := func(h model.HostTensor, rows int) model.Tensor {
				w, err := b.Upload(h, rows, k)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Free(w) })
				return w
			}
			scale := 1 / math.Sqrt(float64(k))
			wq, wk := upload(hostBF16(r, m, k, scale), m), upload(hostBF16(r, mk, k, scale), mk)
			wg, wu := upload(hostBF16(r, m, k, scale), m), upload(hostBF16(r, m, k, scale), m)
			nw := upload(normWeight(r, k), 1)
			x, delta := b.Alloc(1, k), b.Alloc(1, k)
			defer b.Free(x)
			defer b.Free(delta)
			if err := b.Write(x, randFloats(r, k)); err != nil {
				t.Fatal(err)
			}
			if err := b.Write(delta, randFloats(r, k)); err != nil {
				t.Fatal(err)
			}
			run := func() [][]float32 {
				outs := []model.Tensor{b.Alloc(1, m), b.Alloc(1, m), b.Alloc(1, mk), b.Alloc(1, m), b.Alloc(1, m), b.Alloc(1, mk),
					b.Alloc(1, k), b.Alloc(1, m), b.Alloc(1, k), b.Alloc(1, mk), b.Alloc(1, m), b.Alloc(1, k)}
				b.MatMul(outs[0], x, wq)
				in1 := model.NormedInput{X: x, Delta: delta, Next: outs[6], Weight: nw, Eps: 1e-5}
				in2 := model.NormedInput{X: x, Delta: delta, Next: outs[8], Weight: nw, Eps: 1e-5}
				// The odd first part puts a two-column warp of the paired staged kernel across parts.
				in3 := model.NormedInput{X: x, Delta: delta, Next: outs[11], Weight: nw, Eps: 1e-5}
				if !b.MatMulShared(outs[1:3], x, []model.Tensor{wq, wk}) || !b.GateUpSiLU(outs[3], x, wg, wu) ||
					!b.NormMatMulShared(outs[4:6], in1, []model.Tensor{wq, wk}) || !b.NormGateUpSiLU(outs[7], in2, wg, wu) ||
					!b.NormMatMulShared(outs[9:11], in3, []model.Tensor{wk, wq}) {
					t.Fatal("a batch-1 GEMV declined a one-row product")
				}
				got := make([][]float32, len(outs))
				for i, o := range outs {
					got[i] = read(t, b, o)
					b.Free(o)
				}
				return got
			}
			for _, stage := range []bool{false, true} {
				b.SetGEMVDeep(false)
				b.SetGEMVStream(false)
				b.SetPDL(cuda.PDLOff)
				b.SetNormStage(stage)
				want := run()
				for _, c := range []struct {
					deep, stream, pair bool
					pdl                cuda.PDL
				}{{true, false, false, cuda.PDLOff}, {true, false, false, cuda.PDLOn}, {true, false, false, cuda.PDLPrefetch}, {false, false, false, cuda.PDLPrefetch},
					{false, true, false, cuda.PDLOff}, {true, true, false, cuda.PDLOff}, {false, true, false, cuda.PDLPrefetch}, {false, true, false, cuda.PDLOn},
					{false, false, true, cuda.PDLOff}, {true, true, true, cuda.PDLOn}} {
					b.SetGEMVDeep(c.deep)
					b.SetGEMVStream(c.stream)
					b.SetPDL(c.pdl)
					b.SetNormStagePair(c.pair)
					for i, got := range run() {
						for j, v := range want[i] {
							if math.Float32bits(v) != math.Float32bits(got[j]) {
								t.Fatalf("staged %v (paired %v), deep %v, stream %v, pdl %v: output %d element %d is %v, %v with the default streams", stage, c.pair, c.deep, c.stream, c.pdl, i, j, got[j], v)
							}
						}
					}
				}
				b.SetNormStagePair(false)
				// The staged pass holds the staged kernels to account wherever they take the width
				// (their 1/rms from a block sum can equal the unstaged one bit for bit at one row,
				// so the outputs cannot tell; 12256 is gemv.cu's GEMV_STAGE_MAX_K).
				if staged := b.NormStaged(1, k); staged != (stage && k <= 12256) {
					t.Fatalf("staging %v at width %d: the staged kernels take it: %v", stage, k, staged)
				}
			}
			b.SetGEMVDeep(false)
			b.SetGEMVStream(false)
			b.SetPDL(cuda.PDLOff)
			b.SetNormStage(false)
			if err := b.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// oneSequence loads fixture model dir on b with a runner for one sequence of up to ctx
// positions, prompt chunks of up to maxTokens rows, its pages in reverse order through the cache;
// step(first, n) runs positions [first, first+n) of it (tokens pos·7 mod the vocabulary) and
// returns the last row's logits.
func oneSequence(t *testing.T, b *cuda.Backend, dir string, ctx, maxTokens int) (*model.Config, *model.Weights, func(first, n int) []float32) {
	t.Helper()
	const pageSize = 16
	cfg, w := fixture.LoadModel(t, dir, b)
	pages := (ctx + pageSize - 1) / pageSize
	r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: maxTokens, MaxLogitRows: 1, MaxContext: ctx,
		KV: model.KVSpec{Pages: pages, PageSize: pageSize}})
	if err != nil {
		t.Fatal(err)
	}
	table := make([]int32, pages)
	for p := range table {
		table[p] = int32(pages - 1 - p)
	}
	return cfg, w, func(first, n int) []float32 {
		s := model.Step{Seqs: []model.SeqRows{{Start: 0, N: n, Len: first + n, Pages: table}}, LogitRows: []int32{int32(n - 1)}}
		for pos := first; pos < first+n; pos++ {
			s.Tokens = append(s.Tokens, int32(pos*7%cfg.VocabSize))
			s.Positions = append(s.Positions, int32(pos))
			s.Slots = append(s.Slots, table[pos/pageSize]*pageSize+int32(pos%pageSize))
		}
		out := make([]float32, cfg.VocabSize)
		if err := r.Forward(&s, []*model.Adapter{nil}, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
}
