// Package gocheck loads a tools/train output folder with loraplex's own loaders and recomputes
// the held-out perplexities of report.json with the CPU engine:
//
//	TRAIN_OUT=/path/to/out go test ./tools/train/gocheck -run TestTrainedOutput -v
package gocheck

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
	"github.com/loraplex/loraplex/tokenizer"
)

var domains = []string{"go", "python", "c", "english"}

func TestTrainedOutput(t *testing.T) {
	out := os.Getenv("TRAIN_OUT")
	if out == "" {
		t.Skip("TRAIN_OUT not set")
	}
	var rep struct {
		Args       struct{ Seq int } `json:"args"`
		Perplexity map[string]map[string]float64
	}
	raw, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	seq := rep.Args.Seq
	mdir := filepath.Join(out, "model")
	cfg, err := model.LoadConfig(mdir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(mdir)
	if err != nil {
		t.Fatal(err)
	}
	be := cpu.New(8)
	defer be.Close()
	w, err := model.LoadWeights(mdir, cfg, be)
	if err != nil {
		t.Fatal(err)
	}
	experts := make([]*model.Adapter, len(domains))
	for i, d := range domains {
		host, closer, err := adaptercache.LoadPEFT(filepath.Join(out, "adapters", d), d, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer closer.Close()
		if experts[i], err = model.UploadAdapter(be, cfg, host); err != nil {
			t.Fatal(err)
		}
	}
	b, err := router.Load(filepath.Join(out, "router"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Upload(be); err != nil {
		t.Fatal(err)
	}
	rt, err := b.Routing("router", cfg, experts)
	if err != nil {
		t.Fatal(err)
	}
	routed := &model.Adapter{Name: "router", Routing: rt}
	pageSize := 16
	pages := seq / pageSize
	r, err := model.NewRunner(cfg, be, w, model.RunnerOptions{MaxTokens: seq, MaxLogitRows: seq, MaxContext: seq,
		KV: model.KVSpec{Layers: cfg.NumLayers, Pages: pages, PageSize: pageSize, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim}})
	if err != nil {
		t.Fatal(err)
	}
	logits := make([]float32, seq*cfg.VocabSize)
	ppl := func(ids []int, a *model.Adapter) float64 {
		var nll float64
		var n int
		for s := 0; s+seq <= len(ids); s += seq {
			st := &model.Step{Seqs: []model.SeqRows{{Start: 0, N: seq, Len: seq, Pages: make([]int32, pages)}}}
			for p := range st.Seqs[0].Pages {
				st.Seqs[0].Pages[p] = int32(p)
			}
			for i := 0; i < seq; i++ {
				st.Tokens = append(st.Tokens, int32(ids[s+i]))
				st.Positions = append(st.Positions, int32(i))
				st.Slots = append(st.Slots, int32(i))
				st.LogitRows = append(st.LogitRows, int32(i))
			}
			if err := r.Forward(st, []*model.Adapter{a}, logits); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < seq-1; i++ {
				row := logits[i*cfg.VocabSize : (i+1)*cfg.VocabSize]
				mx := float64(row[0])
				for _, v := range row {
					mx = math.Max(mx, float64(v))
				}
				var z float64
				for _, v := range row {
					z += math.Exp(float64(v) - mx)
				}
				nll += mx + math.Log(z) - float64(row[ids[s+i+1]])
				n++
			}
		}
		return math.Exp(nll / float64(n))
	}
	check := func(name, dom string, got float64) {
		want := rep.Perplexity[name][dom]
		rel := math.Abs(got-want) / want
		t.Logf("%-16s %-8s engine %9.4f python %9.4f (rel %.2e)", name, dom, got, want, rel)
		if rel > 1e-2 {
			t.Errorf("%s on %s: engine ppl %v, report %v", name, dom, got, want)
		}
	}
	for _, d := range domains {
		text, err := os.ReadFile(filepath.Join(out, "eval", d+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		ids, err := tok.Encode(string(text), false)
		if err != nil {
			t.Fatal(err)
		}
		check("base", d, ppl(ids, nil))
		for i, a := range domains {
			check("adapter_"+a, d, ppl(ids, experts[i]))
		}
		check("router", d, ppl(ids, routed))
	}
}
