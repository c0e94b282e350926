package demo_test

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

// TestTrainedDemoQuality loads the embedded trained demo the way the server does (extracted,
// memory-mapped, PEFT adapters, the router bundle) and checks, on one held-out window per domain,
// what the demo exists to show: each code adapter is far better than the base on its own domain
// (bench/results/demo-quality.md: 17-35 against 760-4,900 perplexity), and the router is close
// to the matching adapter. A broken forward pass, adapter loader, tokenizer or router fails it.
func TestTrainedDemoQuality(t *testing.T) {
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
	b := cpu.New(0)
	defer b.Close()
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
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
		defer c.Close()
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
	logits := make([]float32, n*cfg.VocabSize)
	ppl := func(ids []int, ad *model.Adapter) float64 {
		s := &model.Step{Seqs: []model.SeqRows{{N: n, Len: n, Pages: []int32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}}}}
		for i, id := range ids[:n] {
			s.Tokens, s.Positions, s.Slots = append(s.Tokens, int32(id)), append(s.Positions, int32(i)), append(s.Slots, int32(i))
			s.LogitRows = append(s.LogitRows, int32(i))
		}
		if err := r.Forward(s, []*model.Adapter{ad}, logits); err != nil {
			t.Fatal(err)
		}
		var nll float64
		V := cfg.VocabSize
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
			nll += m + math.Log(z) - float64(row[ids[i+1]])
		}
		return math.Exp(nll / (n - 1))
	}
	for _, d := range []string{"c", "go", "python"} {
		raw, err := os.ReadFile(filepath.Join(root, "eval", d+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		ids, err := tok.Encode(string(raw), false)
		if err != nil || len(ids) < n {
			t.Fatalf("%s: %d tokens, %v", d, len(ids), err)
		}
		base, own, rtd := ppl(ids, nil), ppl(ids, adapters[d]), ppl(ids, routed)
		t.Logf("%s, first %d held-out tokens: base %.1f, adapter %.2f, router %.2f", d, n, base, own, rtd)
		if own*3 > base {
			t.Errorf("%s: adapter perplexity %.2f is not far below the base's %.1f", d, own, base)
		}
		if rtd > 1.5*own {
			t.Errorf("%s: router perplexity %.2f is far above the adapter's %.2f", d, rtd, own)
		}
	}
}
