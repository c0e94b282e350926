//go:build cuda

package cuda_test

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
	"github.com/loraplex/loraplex/tokenizer"
)

// demoPerplexities loads the embedded trained demo on b and returns held-out perplexities over
// the first 2 x 256 tokens of each domain for the base, the matching adapter and the router.
func demoPerplexities(t *testing.T, b model.Backend) map[string]float64 {
	t.Helper()
	root, err := demo.Extract()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "model")
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	const n = 256
	r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: n, MaxLogitRows: n, MaxContext: n, KV: model.KVSpec{Pages: n / 16, PageSize: 16}})
	if err != nil {
		t.Fatal(err)
	}
	adapters := map[string]*model.Adapter{}
	for _, d := range demo.Domains {
		h, c, err := adaptercache.LoadPEFT(filepath.Join(root, "adapters", d), d, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if adapters[d], err = model.UploadAdapter(b, cfg, h); err != nil {
			t.Fatal(err)
		}
	}
	bundle, err := router.Load(filepath.Join(root, "router"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := bundle.Upload(b); err != nil {
		t.Fatal(err)
	}
	experts := make([]*model.Adapter, len(bundle.Experts()))
	for i, x := range bundle.Experts() {
		experts[i] = adapters[x]
	}
	rt, err := bundle.Routing(demo.RouterName, cfg, experts)
	if err != nil {
		t.Fatal(err)
	}
	routed := &model.Adapter{Name: demo.RouterName, Routing: rt}
	V := cfg.VocabSize
	logits := make([]float32, n*V)
	pages := make([]int32, n/16)
	for i := range pages {
		pages[i] = int32(i)
	}
	out := map[string]float64{}
	for _, d := range demo.Domains {
		raw, err := os.ReadFile(filepath.Join(root, "eval", d+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		ids, err := tok.Encode(string(raw), false)
		if err != nil || len(ids) < 2*n {
			t.Fatalf("%s: %d tokens, %v", d, len(ids), err)
		}
		for name, ad := range map[string]*model.Adapter{"base": nil, "adapter": adapters[d], "router": routed} {
			var nll float64
			for win := 0; win < 2; win++ {
				w := ids[win*n : (win+1)*n]
				s := &model.Step{Seqs: []model.SeqRows{{N: n, Len: n, Pages: pages}}}
				for i, id := range w {
					s.Tokens, s.Positions, s.Slots = append(s.Tokens, int32(id)), append(s.Positions, int32(i)), append(s.Slots, int32(i))
					s.LogitRows = append(s.LogitRows, int32(i))
				}
				if err := r.Forward(s, []*model.Adapter{ad}, logits); err != nil {
					t.Fatal(err)
				}
				for i := 0; i+1 < n; i++ {
					row := logits[i*V : (i+1)*V]
					m := math.Inf(-1)
					for _, v := range row {
						m = math.Max(m, float64(v))
					}
					var z float64
					for _, v := range row {
						z += math.Exp(float64(v) - m)
					}
					nll += m + math.Log(z) - float64(row[w[i+1]])
				}
			}
			out[d+"/"+name] = math.Exp(nll / float64(2*(n-1)))
		}
	}
	return out
}

// TestTrainedDemoCUDA runs the trained demo (head_dim 40, tied embeddings, four adapters, the
// router on trained gates) on the GPU and on the CPU: held-out perplexities must agree within 3%
// (the GPU rounds GEMM inputs to bf16; a wrong kernel is off by far more).
func TestTrainedDemoCUDA(t *testing.T) {
	g := newGPU(t)
	c := cpu.New(0)
	defer c.Close()
	want := demoPerplexities(t, c)
	got := demoPerplexities(t, g)
	for k, w := range want {
		rel := math.Abs(got[k]-w) / w
		t.Logf("%-16s cpu %9.3f cuda %9.3f (%.2f%%)", k, w, got[k], 100*rel)
		if !(rel < 0.03) {
			t.Errorf("%s: cuda perplexity %.3f, cpu %.3f", k, got[k], w)
		}
	}
}
