//go:build cuda

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/batchinv"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
)

// In deterministic mode a product's row is bitwise the same in every batch: row i of an n-row
// MatMul equals the same row computed alone, for batch sizes around the kernel's 8-row tile
// and beyond, with k a multiple of 8 (vector loads) or not (scalar path); and the products
// agree with the CPU's fp32 ones (the mode keeps x in fp32, unlike cuBLAS's bf16 input).
func TestBatchInvariantMatMul(t *testing.T) {
	p := pair{cpu.New(0), newGPU(t)}
	defer p.c.Close()
	p.g.SetBatchInvariant(true)
	defer p.g.SetBatchInvariant(false)
	r := rand.New(rand.NewPCG(8, 9))
	for _, mk := range [][2]int{{300, 320}, {4096, 4096}, {96, 100}} {
		m, k := mk[0], mk[1]
		wc, wg := p.upload(t, hostBF16(r, m, k, 1/math.Sqrt(float64(k))))
		const rows = 100
		x := randFloats(r, rows*k)
		alone := make([][]float32, rows)
		for i := range alone {
			xg := p.g.Alloc(1, k)
			og := p.g.Alloc(1, m)
			if err := p.g.Write(xg, x[i*k:(i+1)*k]); err != nil {
				t.Fatal(err)
			}
			p.g.MatMul(og, xg, wg)
			alone[i] = make([]float32, m)
			if err := p.g.Read(og, alone[i]); err != nil {
				t.Fatal(err)
			}
			p.g.Free(xg)
			p.g.Free(og)
		}
		for _, n := range []int{2, 7, 8, 9, 17, 64, 100} {
			off := r.IntN(rows - n + 1) // the rows sit anywhere in the batch
			xc, xg := p.tensor(t, n, k, x[off*k:(off+n)*k])
			oc, og := p.tensor(t, n, m, nil)
			p.g.MatMul(og, xg, wg)
			p.c.MatMul(oc, xc, wc)
			p.compare(t, fmt.Sprintf("batch-invariant matmul n=%d m=%d k=%d", n, m, k), oc, og, 1e-4)
			got := make([]float32, n*m)
			if err := p.g.Read(og, got); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				for j := 0; j < m; j++ {
					if math.Float32bits(got[i*m+j]) != math.Float32bits(alone[off+i][j]) {
						t.Fatalf("m=%d k=%d: row %d of a %d-row product, column %d: %v, alone %v", m, k, i, n, j, got[i*m+j], alone[off+i][j])
					}
				}
			}
			p.g.Free(xg)
			p.g.Free(og)
		}
	}
	if err := p.g.Err(); err != nil {
		t.Fatal(err)
	}
}

// fixtureEngineCUDA serves fixture model name with its four adapters on b.
func fixtureEngineCUDA(t testing.TB, b *cuda.Backend, name string, opt serve.Options) (*serve.Engine, *model.Config) {
	t.Helper()
	cfg, w := fixture.LoadModel(t, fixture.Dir(name), b)
	e, err := serve.NewEngine(cfg, b, w, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	for _, a := range fixture.Adapters {
		if err := e.LoadAdapter(a, fixture.AdapterDir(name, a)); err != nil {
			t.Fatal(err)
		}
	}
	return e, cfg
}

// Deterministic mode on the GPU (issue 15 item 6): fixture requests (the base model and four
// adapters, greedy with top logprobs and seeded sampling, short and long prompts) get bitwise
// the tokens and logprobs they get alone when they run inside busy mixed batches (other
// adapters, other lengths, any place in the batch, prompts chunked differently, recorded
// graphs and direct steps). Without the mode the outputs move with the batch (logged: cuBLAS
// for batches, the fp32 GEMV alone, split counts by batch size).
func TestDeterministicModeIsBatchInvariantOnCUDA(t *testing.T) {
	models := append([]string{"llama"}, fixture.Adapters...)
	for _, name := range []string{"llama", "qwen3"} {
		for _, deterministic := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/deterministic=%v", name, deterministic), func(t *testing.T) {
				g := newGPU(t)
				opt := batchinv.Options(name)
				opt.Deterministic = deterministic
				e, cfg := fixtureEngineCUDA(t, g, name, opt)
				models[0] = name
				reqs := batchinv.Requests(t, name)
				diffs := batchinv.Differences(t, e, reqs, models, cfg.VocabSize, 3)
				if deterministic {
					for _, d := range diffs {
						t.Error(d)
					}
					t.Logf("%d requests x 3 busy rounds, all bitwise equal to their runs alone", len(reqs))
				} else {
					t.Logf("default mode: %d outputs differ from the runs alone", len(diffs))
				}
				if err := g.Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkDeterministicDecodeCUDA is end-to-end decode throughput of the demo model on the
// GPU with and without deterministic mode, at batch 1 and 64; it logs deterministic ÷
// default per batch.
func BenchmarkDeterministicDecodeCUDA(b *testing.B) {
	prompt := []int{1, 2, 3, 4, 5, 6, 7, 8}
	seed := uint64(0)
	tps := map[string]float64{}
	for _, deterministic := range []bool{false, true} {
		g := newGPU(b)
		e, _, tok := demoServer(b, g, serve.Options{MaxNumSeqs: 64, MaxBatchedTokens: 2048, MaxModelLen: 512, Deterministic: deterministic})
		if ids, err := tok.Encode("func main() {", false); err == nil {
			prompt = ids
		}
		for _, batch := range []int{1, 64} {
			key := fmt.Sprintf("deterministic=%v/batch=%d", deterministic, batch)
			b.Run(key, func(b *testing.B) {
				tps[key] = decodeTokensPerSecond(b, e, prompt, batch, nil, &seed)
				b.ReportMetric(tps[key], "tok/s")
			})
		}
	}
	for _, batch := range []int{1, 64} {
		d, f := tps[fmt.Sprintf("deterministic=true/batch=%d", batch)], tps[fmt.Sprintf("deterministic=false/batch=%d", batch)]
		if f > 0 {
			b.Logf("batch %d: deterministic %.0f tok/s, default %.0f tok/s, deterministic ÷ default = %.3f", batch, d, f, d/f)
		}
	}
}
