// Command prefixcache measures what automatic prefix caching buys a request whose long prefix
// (a system prompt, a document, a conversation so far) the server computed before: its time to
// first token with the prefix cached, divided by the same request's with nothing cached.
//
// It serves a model in process through the real engine (serve.NewEngine, default scheduling:
// 512-token prefill chunks, 16-token pages): the trained demo model (demo.Extract) on the CPU
// backend by default, or with -shape 8b random bf16 weights in Llama-3-8B shape, on -device cpu
// or cuda (build with -tags cuda; bench/gpu/run.sh runs it so). For each run it makes a fresh
// random prefix (so the uncached request really finds nothing), then times two greedy one-token
// requests one after the other:
//
//	uncached: prefix + suffix A   (computes every prompt token)
//	cached:   prefix + suffix B   (finds the prefix's full pages cached, computes the rest)
//
// TTFT is from Generate to the first token's event. It prints every run, the medians, and the
// ratio of the medians against the goal (issue 14: <= 0.15).
//
//	go run ./bench/prefixcache -runs 5 -prefix 2000 -suffix 40
//	make kernels && go run -tags cuda ./bench/prefixcache -device cuda -shape 8b -json prefixcache.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
)

func main() {
	runs := flag.Int("runs", 5, "runs (each a fresh prefix); medians are reported")
	prefix := flag.Int("prefix", 2000, "tokens of the shared prefix")
	suffix := flag.Int("suffix", 40, "tokens after the prefix, different in the two requests")
	threads := flag.Int("threads", 0, "CPU backend threads (0: GOMAXPROCS)")
	adapter := flag.String("adapter", "", "run the requests on this demo adapter (go, python, c, english; empty: the base model)")
	goal := flag.Float64("goal", 0.15, "goal for cached TTFT / uncached TTFT")
	device := flag.String("device", "cpu", "cpu or cuda (build with -tags cuda)")
	shape := flag.String("shape", "demo", "demo (the trained demo model) or a random-weight shape of bench/internal/benchenv (8b, small)")
	jsonOut := flag.String("json", "", "also write the medians here as JSON (bench/gpu/run.sh's results file reads it)")
	flag.Parse()
	if err := run(*runs, *prefix, *suffix, *threads, *adapter, *goal, *device, *shape, *jsonOut); err != nil {
		fmt.Fprintln(os.Stderr, "prefixcache:", err)
		os.Exit(1)
	}
}

// summary is what -json writes.
type summary struct {
	Device     string  `json:"device"`
	Model      string  `json:"model"`
	Prefix     int     `json:"prefix_tokens"`
	Suffix     int     `json:"suffix_tokens"`
	Runs       int     `json:"runs"`
	UncachedMS float64 `json:"uncached_ttft_ms_median"`
	CachedMS   float64 `json:"cached_ttft_ms_median"`
	Ratio      float64 `json:"ratio"`
	Goal       float64 `json:"goal"`
}

func run(runs, prefix, suffix, threads int, adapter string, goal float64, device, shape, jsonOut string) error {
	b, closeB, err := benchenv.NewBackend(device, threads)
	if err != nil {
		return err
	}
	defer closeB()
	var (
		cfg   *model.Config
		w     *model.Weights
		root  string
		name  = demo.Name
		about string
	)
	if shape == "demo" {
		if root, err = demo.Extract(); err != nil {
			return err
		}
		dir := filepath.Join(root, "model")
		if cfg, err = model.LoadConfig(dir); err != nil {
			return err
		}
		if w, err = model.LoadWeights(dir, cfg, b); err != nil {
			return err
		}
		about = "demo model"
	} else {
		if adapter != "" {
			return fmt.Errorf("-adapter names a demo adapter: it needs -shape demo")
		}
		if cfg, err = benchenv.Config(shape); err != nil {
			return err
		}
		if w, err = benchenv.RandomWeights(cfg, b); err != nil {
			return err
		}
		name, about = "random-"+shape, "random bf16 weights, "+shape+" shape"
	}
	defer w.Close()
	if prefix+suffix >= cfg.MaxPositions {
		return fmt.Errorf("prefix + suffix = %d tokens: the model's context is %d", prefix+suffix, cfg.MaxPositions)
	}
	e, err := serve.NewEngine(cfg, b, w, nil, serve.Options{ModelName: name, MaxModelLen: min(cfg.MaxPositions, max(4096, prefix+suffix+16)),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer e.Close()
	if adapter != "" {
		if err := e.LoadAdapter(adapter, filepath.Join(root, "adapters", adapter)); err != nil {
			return err
		}
	}
	o := e.Options()
	fmt.Printf("# prefix caching: TTFT of a %d-token prompt whose first %d tokens are cached / the same uncached\n", prefix+suffix, prefix)
	fmt.Printf("# %s (%d layers, hidden %d), backend %s, %d threads, GOMAXPROCS %d, %s/%s, %s\n",
		about, cfg.NumLayers, cfg.HiddenSize, b.Name(), threadsOf(threads), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Printf("# engine: max_num_batched_tokens %d, page size %d, model %q\n", o.MaxBatchedTokens, o.PageSize, cmpOr(adapter, name))
	fmt.Println("run  uncached_ms  cached_ms  cached_tokens  ratio")
	rng := rand.New(rand.NewPCG(14, 2000))
	var unc, cached, ratios []float64
	// Run -1 is a warm-up, not recorded: the first steps of a shape pay one-off costs (on CUDA,
	// recording graphs and growing scratch buffers) that neither request should carry.
	for r := -1; r < runs; r++ {
		p := make([]int, prefix)
		for i := range p {
			p[i] = rng.IntN(cfg.VocabSize)
		}
		tail := func() []int {
			s := make([]int, suffix)
			for i := range s {
				s[i] = rng.IntN(cfg.VocabSize)
			}
			return append(slices.Clone(p), s...)
		}
		tu, cu, err := ttft(e, adapter, tail())
		if err != nil {
			return err
		}
		if cu != 0 {
			return fmt.Errorf("run %d: the uncached request found %d tokens cached", r, cu)
		}
		tc, cc, err := ttft(e, adapter, tail())
		if err != nil {
			return err
		}
		if cc < prefix-o.PageSize {
			return fmt.Errorf("run %d: the cached request found only %d of %d prefix tokens cached", r, cc, prefix)
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		if r < 0 {
			fmt.Printf("warm-up: uncached %.1f ms, cached %.1f ms (not counted)\n", ms(tu), ms(tc))
			continue
		}
		unc, cached, ratios = append(unc, ms(tu)), append(cached, ms(tc)), append(ratios, ms(tc)/ms(tu))
		fmt.Printf("%3d  %11.1f  %9.1f  %13d  %.4f\n", r, ms(tu), ms(tc), cc, ms(tc)/ms(tu))
	}
	mu, mc := median(unc), median(cached)
	verdict := "meets"
	if mc/mu > goal {
		verdict = "MISSES"
	}
	fmt.Printf("median uncached TTFT %.1f ms, cached %.1f ms: ratio %.4f (median of per-run ratios %.4f); goal <= %.2f: %s\n",
		mu, mc, mc/mu, median(ratios), goal, verdict)
	if jsonOut == "" {
		return nil
	}
	data, err := json.MarshalIndent(summary{Device: b.Name(), Model: cmpOr(adapter, name), Prefix: prefix, Suffix: suffix, Runs: runs,
		UncachedMS: mu, CachedMS: mc, Ratio: mc / mu, Goal: goal}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(jsonOut, append(data, '\n'), 0o644)
}

// ttft runs one greedy one-token request and returns its time to first token and the prompt
// tokens it found cached.
func ttft(e *serve.Engine, model string, prompt []int) (time.Duration, int, error) {
	start := time.Now()
	s, err := e.Generate(context.Background(), serve.Request{Model: model, Prompt: prompt, Params: serve.SamplingParams{MaxTokens: 1, IgnoreEOS: true}})
	if err != nil {
		return 0, 0, err
	}
	var first time.Duration
	for {
		ev, ok := s.Next(context.Background())
		if !ok {
			return 0, 0, fmt.Errorf("stream ended without a final event")
		}
		if first == 0 && len(ev.Tokens) > 0 {
			first = time.Since(start)
		}
		if ev.Err != nil {
			return 0, 0, ev.Err
		}
		if ev.Finish != "" {
			return first, ev.Usage.CachedTokens, nil
		}
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

func threadsOf(n int) int {
	if n > 0 {
		return n
	}
	return runtime.GOMAXPROCS(0)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
