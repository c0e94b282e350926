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
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
)

const window = 256

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
	b := cpu.New(0)
	defer b.Close()
	l, err := demo.LoadDir(dir, b)
	if err != nil {
		return err
	}
	defer l.Close()
	cfg := l.Cfg
	r, err := l.NewRunner(window)
	if err != nil {
		return err
	}
	domains := l.EvalDomains()
	if len(domains) == 0 {
		return fmt.Errorf("no eval/*.txt in %s", dir)
	}
	evals := map[string][]int{}
	for _, d := range domains {
		if evals[d], err = l.EvalTokens(d, maxTokens); err != nil {
			return err
		}
	}
	adapters, routed := l.Adapters, l.Router
	perplexity := func(d string, ad *model.Adapter) (float64, error) { return demo.Perplexity(r, evals[d], ad) }

	var out bytes.Buffer
	fmt.Fprintf(&out, "## Held-out perplexity per domain (loraplex CPU engine)\n\n")
	fmt.Fprintf(&out, "%d held-out tokens per domain (windows of %d, each predicted position counted). Lower is better; the\n", maxTokens, window)
	fmt.Fprintf(&out, "router column is the MeteoRA claim: within 5%% of the matching adapter on every domain.\n\n")
	fmt.Fprintf(&out, "| model | %s |\n|---|%s\n", strings.Join(domains, " | "), strings.Repeat("---|", len(domains)))
	row := func(name string, ad *model.Adapter) (map[string]float64, error) {
		res := map[string]float64{}
		cells := []string{}
		for _, d := range domains {
			p, err := perplexity(d, ad)
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
			a, err := loadCompressed(path, d, cfg, b)
			if err != nil {
				return err
			}
			p, err := perplexity(d, a)
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

// loadCompressed loads a lorapack file onto b. The decoded host copy stays referenced by the
// adapter on the CPU backend, which reads it in place, so its closer is not closed.
func loadCompressed(path, name string, cfg *model.Config, b model.Backend) (*model.Adapter, error) {
	h, _, err := adaptercache.LoadCompressed(path, name, cfg)
	if err != nil {
		return nil, err
	}
	return model.UploadAdapter(b, cfg, h)
}
