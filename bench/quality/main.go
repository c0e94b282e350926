// Command quality measures held-out perplexity with loraplex's own engine (CPU backend): the base
// model, each adapter on every domain, the router, and each adapter after lorapack compression
// at several densities and modes (issue 7's quality table). Input is the layout that
// tools/train/train.py writes (and demo/assets holds):
//
//	DIR/model/                 base model + tokenizer
//	DIR/adapters/<domain>/     PEFT adapters, one per domain
//	DIR/router/                router bundle over them
//	DIR/eval/<domain>.txt      held-out text per domain
//
// Run:  go run ./bench/quality -dir demo/assets > bench/results/demo-quality.md
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/router"
	"github.com/loraplex/loraplex/tokenizer"
)

const window = 256

type evaluator struct {
	cfg   *model.Config
	b     model.Backend
	r     *model.Runner
	evals map[string][]int // domain -> tokens
	logit []float32
}

// perplexity runs non-overlapping windows of the domain's tokens through the model with ad
// (nil: base) and returns exp(mean NLL) over every predicted position.
func (e *evaluator) perplexity(domain string, ad *model.Adapter) (float64, error) {
	toks := e.evals[domain]
	var nll float64
	var n int
	V := e.cfg.VocabSize
	for start := 0; start+2 <= len(toks); start += window {
		w := toks[start:min(start+window, len(toks))]
		s := &model.Step{}
		for i, t := range w {
			s.Tokens = append(s.Tokens, int32(t))
			s.Positions = append(s.Positions, int32(i))
			s.Slots = append(s.Slots, int32(i))
			s.LogitRows = append(s.LogitRows, int32(i))
		}
		pages := make([]int32, (len(w)+15)/16)
		for i := range pages {
			pages[i] = int32(i)
		}
		s.Seqs = []model.SeqRows{{Start: 0, N: len(w), Len: len(w), Pages: pages}}
		logits := e.logit[:len(w)*V]
		if err := e.r.Forward(s, []*model.Adapter{ad}, logits); err != nil {
			return 0, err
		}
		for i := 0; i+1 < len(w); i++ {
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
			n++
		}
	}
	return math.Exp(nll / float64(n)), nil
}

func main() {
	dir := flag.String("dir", "demo/assets", "trained demo folder (model/, adapters/, router/, eval/)")
	maxTokens := flag.Int("eval-tokens", 4096, "held-out tokens per domain (whole windows of 256)")
	flag.Parse()
	if err := run(*dir, *maxTokens); err != nil {
		fmt.Fprintln(os.Stderr, "quality:", err)
		os.Exit(1)
	}
}

func run(dir string, maxTokens int) error {
	t0 := time.Now()
	mdir := filepath.Join(dir, "model")
	cfg, err := model.LoadConfig(mdir)
	if err != nil {
		return err
	}
	tok, err := tokenizer.Load(mdir)
	if err != nil {
		return err
	}
	b := cpu.New(0)
	defer b.Close()
	w, err := model.LoadWeights(mdir, cfg, b)
	if err != nil {
		return err
	}
	defer w.Close()
	r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: window, MaxLogitRows: window, MaxContext: window,
		KV: model.KVSpec{Pages: window / 16, PageSize: 16}})
	if err != nil {
		return err
	}
	e := &evaluator{cfg: cfg, b: b, r: r, evals: map[string][]int{}, logit: make([]float32, window*cfg.VocabSize)}
	files, _ := filepath.Glob(filepath.Join(dir, "eval", "*.txt"))
	var domains []string
	for _, f := range files {
		d := strings.TrimSuffix(filepath.Base(f), ".txt")
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		ids, err := tok.Encode(string(raw), false)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		e.evals[d] = ids[:min(len(ids), maxTokens)]
		domains = append(domains, d)
	}
	sort.Strings(domains)
	if len(domains) == 0 {
		return fmt.Errorf("no eval/*.txt in %s", dir)
	}
	adapters := map[string]*model.Adapter{}
	for _, d := range domains {
		a, err := loadAdapter(filepath.Join(dir, "adapters", d), d, cfg, b, nil)
		if err != nil {
			return err
		}
		adapters[d] = a
	}
	bundle, err := router.Load(filepath.Join(dir, "router"), cfg)
	if err != nil {
		return err
	}
	if err := bundle.Upload(b); err != nil {
		return err
	}
	experts := make([]*model.Adapter, len(bundle.Experts()))
	for i, x := range bundle.Experts() {
		if experts[i] = adapters[x]; experts[i] == nil {
			return fmt.Errorf("router expert %q has no adapter folder", x)
		}
	}
	rt, err := bundle.Routing("router", cfg, experts)
	if err != nil {
		return err
	}
	routed := &model.Adapter{Name: "router", Routing: rt}

	var out bytes.Buffer
	fmt.Fprintf(&out, "## Held-out perplexity per domain (loraplex CPU engine)\n\n")
	fmt.Fprintf(&out, "%d held-out tokens per domain (windows of %d, each predicted position counted). Lower is better; the\n", maxTokens, window)
	fmt.Fprintf(&out, "router column is the MeteoRA claim: within 5%% of the matching adapter on every domain.\n\n")
	fmt.Fprintf(&out, "| model | %s |\n|---|%s\n", strings.Join(domains, " | "), strings.Repeat("---|", len(domains)))
	row := func(name string, ad *model.Adapter) (map[string]float64, error) {
		res := map[string]float64{}
		cells := []string{}
		for _, d := range domains {
			p, err := e.perplexity(d, ad)
			if err != nil {
				return nil, err
			}
			res[d] = p
			cells = append(cells, fmt.Sprintf("%.3f", p))
		}
		fmt.Fprintf(&out, "| %s | %s |\n", name, strings.Join(cells, " | "))
		return res, nil
	}
	base, err := row("base", nil)
	if err != nil {
		return err
	}
	own := map[string]float64{}
	for _, d := range domains {
		res, err := row("adapter "+d, adapters[d])
		if err != nil {
			return err
		}
		own[d] = res[d]
	}
	rres, err := row("router (top-2 of all)", routed)
	if err != nil {
		return err
	}
	fmt.Fprintf(&out, "\nRouter vs the matching adapter (goal <= +5%%); adapter vs base:\n\n| domain | base | adapter | router | router / adapter | adapter / base |\n|---|---|---|---|---|---|\n")
	worst := 0.0
	for _, d := range domains {
		ratio := rres[d] / own[d]
		worst = max(worst, ratio)
		fmt.Fprintf(&out, "| %s | %.3f | %.3f | %.3f | %.3f | %.3f |\n", d, base[d], own[d], rres[d], ratio, own[d]/base[d])
	}
	fmt.Fprintf(&out, "\nWorst router / adapter ratio: **%.3f** (goal <= 1.050).\n", worst)

	// Compression: each adapter on its own domain after lorapack, against itself uncompressed.
	settings := []struct {
		name string
		opt  adaptercache.CompressOptions
	}{
		{"dense-bf16", adaptercache.CompressOptions{Codec: "dense-bf16", AlphaC: 1}},
		{"per-tensor 50%", adaptercache.CompressOptions{Codec: "auto", Density: 0.5, AlphaC: 1}},
		{"per-tensor 25%", adaptercache.CompressOptions{Codec: "auto", Density: 0.25, AlphaC: 1}},
		{"per-tensor 10% (auto codec; the default before q4)", adaptercache.CompressOptions{Codec: "auto", Density: 0.1, AlphaC: 1}},
		{"per-tensor 5%", adaptercache.CompressOptions{Codec: "auto", Density: 0.05, AlphaC: 1}},
		{"per-tensor 1%", adaptercache.CompressOptions{Codec: "auto", Density: 0.01, AlphaC: 1}},
		{"global (ComPEFT) 10%, alpha_c 1", adaptercache.CompressOptions{Codec: "auto", Density: 0.1, Global: true, AlphaC: 1}},
		{"ternary2 10%", adaptercache.CompressOptions{Codec: "ternary2", Density: 0.1, AlphaC: 1}},
		{"dense A, B per-tensor 50%", adaptercache.CompressOptions{Codec: "auto", Density: 0.5, AlphaC: 1, DenseA: true}},
		{"dense A, B per-tensor 25%", adaptercache.CompressOptions{Codec: "auto", Density: 0.25, AlphaC: 1, DenseA: true}},
		{"dense A, B per-tensor 10%", adaptercache.CompressOptions{Codec: "auto", Density: 0.1, AlphaC: 1, DenseA: true}},
		{"dense A, B global 10%", adaptercache.CompressOptions{Codec: "auto", Density: 0.1, Global: true, AlphaC: 1, DenseA: true}},
		{"q8 (g32, 8.5 bits/value)", adaptercache.CompressOptions{Codec: "q8", Group: 32}},
		{"q4 (g32, 4.5 bits/value)", adaptercache.CompressOptions{Codec: "q4", Group: 32}},
		{"q4 (g64, 4.25 bits/value)", adaptercache.CompressOptions{Codec: "q4", Group: 64}},
		{"rice-q8 50%", adaptercache.CompressOptions{Codec: "rice-q8", Density: 0.5}},
		{"rice-q8 25%", adaptercache.CompressOptions{Codec: "rice-q8", Density: 0.25}},
		{"rice-q8 10%", adaptercache.CompressOptions{Codec: "rice-q8", Density: 0.1}},
	}
	fmt.Fprintf(&out, "\n## Compressed adapters (lorapack), each on its own domain\n\nSize: the .lorapack file against the PEFT adapter_model.safetensors. Perplexity change against the uncompressed adapter; the base model's is the floor of what an adapter adds.\n\n")
	fmt.Fprintf(&out, "| setting | %s |\n|---|%s\n", strings.Join(domains, " | "), strings.Repeat("---|", len(domains)))
	tmp, err := os.MkdirTemp("", "quality")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, st := range settings {
		cells := []string{}
		for _, d := range domains {
			adir := filepath.Join(dir, "adapters", d)
			path := filepath.Join(tmp, d+".lorapack")
			var buf bytes.Buffer
			if _, err := adaptercache.CompressPEFT(adir, &buf, st.opt); err != nil {
				return fmt.Errorf("%s %s: %w", st.name, d, err)
			}
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				return err
			}
			fi, err := os.Stat(filepath.Join(adir, adaptercache.PEFTWeightsFile))
			if err != nil {
				return err
			}
			a, err := loadAdapter(path, d, cfg, b, adaptercache.LoadCompressed)
			if err != nil {
				return err
			}
			p, err := e.perplexity(d, a)
			a.Free(b)
			if err != nil {
				return err
			}
			cells = append(cells, fmt.Sprintf("%.3f (%+.2f%%, %.1fx smaller)", p, 100*(p/own[d]-1), float64(fi.Size())/float64(buf.Len())))
		}
		fmt.Fprintf(&out, "| %s | %s |\n", st.name, strings.Join(cells, " | "))
	}
	fmt.Fprintf(&out, "\nComputed in %.0f s by `go run ./bench/quality -dir %s -eval-tokens %d`.\n", time.Since(t0).Seconds(), dir, maxTokens)
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

func loadAdapter(path, name string, cfg *model.Config, b model.Backend, compressed func(string, string, *model.Config) (*model.HostAdapter, io.Closer, error)) (*model.Adapter, error) {
	var h *model.HostAdapter
	var c io.Closer
	var err error
	if compressed != nil {
		h, c, err = compressed(path, name, cfg)
	} else {
		h, c, err = adaptercache.LoadPEFT(path, name, cfg)
	}
	if err != nil {
		return nil, err
	}
	// The CPU backend may keep referencing host data, so the closer is kept open for the run.
	_ = c
	return model.UploadAdapter(b, cfg, h)
}
