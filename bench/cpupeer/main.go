// Command cpupeer puts loraplex's CPU backend side by side with llama.cpp on the same bf16
// weights and the same threads: prompt processing (prefill) of 512, 1,024 and 2,047 tokens and
// batch-1 decode, as tokens per second, and the ratio loraplex ÷ llama.cpp of each (issue 14
// item 6: goal ≥ 1.0).
//
// Both engines measure the same thing the way llama-bench defines it:
//
//   - pp N: one N-token prompt from an empty cache, in micro-batches of -chunk rows (llama-bench
//     -ub, loraplex's default --max-num-batched-tokens: 512), logits for the last row only;
//   - tg N: N tokens decoded one at a time from an empty cache (batch 1), logits every step.
//
// Runs are interleaved (loraplex, then llama.cpp, -reps times) so that a shared machine's load
// hits both alike; every sample is printed, then the medians with their spread and the ratios of
// the medians. llama.cpp stays outside the repository: its llama-bench binary and the GGUF of the
// same HF folder come from flags or the environment.
//
//	LLAMA_BENCH=/path/llama-bench go run ./bench/cpupeer -gguf demo-bf16.gguf       # the trained demo
//	go run ./bench/cpupeer -model DIR -gguf DIR-bf16.gguf                            # any HF Llama folder
//
// -decode-only runs the tg test alone (both engines), for iterating on the decode path.
// -no-mmap has both engines copy the weights out of the file mapping at load (loraplex's
// --no-mmap, into huge pages; llama-bench -mmp 0).
//
// -starve measures something else: how long a long prompt delays a short request that arrives
// right after it on the real engine (issue 14: "a 2,047-token prompt delays a concurrent short
// request by 7.5 s").
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
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
)

type options struct {
	modelDir, gguf, llamaBench string
	threads, chunk, decode     int
	reps                       int
	prompts                    []int
	profile                    string
	starve, decodeOnly, noMmap bool
}

func main() {
	var o options
	var prompts string
	flag.StringVar(&o.modelDir, "model", os.Getenv("CPUPEER_MODEL"), "HF model folder (default: the trained demo's model/; env CPUPEER_MODEL)")
	flag.StringVar(&o.gguf, "gguf", os.Getenv("CPUPEER_GGUF"), "bf16 GGUF of the same folder for llama.cpp (env CPUPEER_GGUF; empty: loraplex only)")
	flag.StringVar(&o.llamaBench, "llama-bench", os.Getenv("LLAMA_BENCH"), "llama.cpp's llama-bench binary (env LLAMA_BENCH)")
	flag.IntVar(&o.threads, "threads", 2, "threads for both engines")
	flag.IntVar(&o.chunk, "chunk", 512, "prefill micro-batch rows (llama-bench -ub; loraplex's max batched tokens)")
	flag.IntVar(&o.decode, "decode", 128, "tokens decoded at batch 1 (llama-bench -n)")
	flag.IntVar(&o.reps, "reps", 3, "interleaved repetitions")
	flag.StringVar(&prompts, "prompts", "512,1024,2047", "prompt lengths")
	flag.StringVar(&o.profile, "cpuprofile", "", "write a CPU profile of loraplex's runs here")
	flag.BoolVar(&o.starve, "starve", false, "measure how long a long prompt delays a short request instead")
	flag.BoolVar(&o.decodeOnly, "decode-only", false, "run only the batch-1 decode test (tgN), no prompt processing")
	flag.BoolVar(&o.noMmap, "no-mmap", false, "both engines copy the weights out of the file mapping (loraplex: --no-mmap, into huge pages; llama-bench -mmp 0)")
	flag.Parse()
	if o.decodeOnly {
		prompts = ""
	}
	for _, f := range strings.Split(prompts, ",") {
		if o.decodeOnly {
			break
		}
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "cpupeer: bad prompt length %q\n", f)
			os.Exit(2)
		}
		o.prompts = append(o.prompts, n)
	}
	if o.starve && o.decodeOnly {
		fmt.Fprintln(os.Stderr, "cpupeer: -starve needs a prompt length, -decode-only has none")
		os.Exit(2)
	}
	var err error
	if o.starve {
		err = starve(o)
	} else {
		err = run(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpupeer:", err)
		os.Exit(1)
	}
}

// loraplex is one model loaded on the CPU backend with a runner sized for the longest test.
type loraplex struct {
	cfg    *model.Config
	w      *model.Weights
	r      *model.Runner
	pages  []int32
	logits []float32
	step   model.Step
	ids    []int32
}

func openLoraplex(b *cpu.Backend, dir string, chunk, maxLen int, noMmap bool) (*loraplex, error) {
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	if maxLen > cfg.MaxPositions {
		return nil, fmt.Errorf("%s: the longest test needs %d positions, the model has %d", dir, maxLen, cfg.MaxPositions)
	}
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		return nil, err
	}
	if noMmap {
		if _, err := b.CopyWeights(w); err != nil {
			w.Close()
			return nil, err
		}
	}
	const page = 16
	np := (maxLen + page - 1) / page
	r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: chunk, MaxLogitRows: 1, MaxContext: maxLen,
		KV: model.KVSpec{Pages: np, PageSize: page}})
	if err != nil {
		w.Close()
		return nil, err
	}
	l := &loraplex{cfg: cfg, w: w, r: r, pages: make([]int32, np), logits: make([]float32, cfg.VocabSize)}
	for i := range l.pages {
		l.pages[i] = int32(i)
	}
	rng := rand.New(rand.NewPCG(14, 6))
	l.ids = make([]int32, maxLen)
	for i := range l.ids {
		l.ids[i] = int32(rng.IntN(cfg.VocabSize))
	}
	return l, nil
}

// forward runs rows [from, to) of the one sequence, logits for the last row when want.
func (l *loraplex) forward(from, to int, want bool) error {
	s := &l.step
	s.Tokens, s.Positions, s.Slots, s.LogitRows = s.Tokens[:0], s.Positions[:0], s.Slots[:0], s.LogitRows[:0]
	for p := from; p < to; p++ {
		s.Tokens, s.Positions, s.Slots = append(s.Tokens, l.ids[p]), append(s.Positions, int32(p)), append(s.Slots, int32(p))
	}
	out := l.logits[:0]
	if want {
		s.LogitRows, out = append(s.LogitRows, int32(to-from-1)), l.logits
	}
	s.Seqs = append(s.Seqs[:0], model.SeqRows{Start: 0, N: to - from, Len: to, Pages: l.pages[:(to+15)/16]})
	return l.r.Forward(s, []*model.Adapter{nil}, out)
}

// prefill processes an n-token prompt from position 0 in chunks; tokens per second.
func (l *loraplex) prefill(n, chunk int) (float64, error) {
	start := time.Now()
	for p := 0; p < n; p += chunk {
		end := min(n, p+chunk)
		if err := l.forward(p, end, end == n); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// decode generates n tokens one step at a time from position 0; tokens per second.
func (l *loraplex) decode(n int) (float64, error) {
	start := time.Now()
	for p := range n {
		if err := l.forward(p, p+1, true); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// sample is one measurement of one test: "pp512", "tg128".
type samples map[string][]float64

func testNames(o options) []string {
	var names []string
	for _, p := range o.prompts {
		names = append(names, fmt.Sprintf("pp%d", p))
	}
	return append(names, fmt.Sprintf("tg%d", o.decode))
}

func run(o options) error {
	dir := o.modelDir
	if dir == "" {
		root, err := demo.Extract()
		if err != nil {
			return err
		}
		dir = filepath.Join(root, "model")
	}
	maxLen := max(maxPrompt(o), o.decode)
	b := cpu.New(o.threads)
	defer b.Close()
	l, err := openLoraplex(b, dir, o.chunk, maxLen, o.noMmap)
	if err != nil {
		return err
	}
	defer l.w.Close()
	cfg := l.cfg
	fmt.Printf("# cpupeer %s: %s\n", time.Now().UTC().Format(time.RFC3339), dir)
	fmt.Printf("# model: %d layers, hidden %d, heads %d/%d x %d, intermediate %d, vocab %d, %s parameters\n",
		cfg.NumLayers, cfg.HiddenSize, cfg.NumHeads, cfg.NumKVHeads, cfg.HeadDim, cfg.IntermediateSize, cfg.VocabSize, params(cfg))
	fmt.Printf("# loraplex: %s, %s %s/%s, GOMAXPROCS %d; chunk %d; no-mmap %v (%s); load %s\n", b.Name(), runtime.Version(), runtime.GOOS, runtime.GOARCH,
		runtime.GOMAXPROCS(0), o.chunk, o.noMmap, anonHugePages(), loadavg())
	if o.gguf != "" {
		fmt.Printf("# llama.cpp: %s %s (each rep)\n", o.llamaBench, strings.Join(llamaBenchArgs(o), " "))
	}
	// One warm-up pass of each so that page faults of the mapped weights and first-touch
	// allocations are not timed.
	if _, err := l.prefill(min(o.chunk, maxLen), o.chunk); err != nil {
		return err
	}
	if o.profile != "" {
		f, err := os.Create(o.profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	lp, lc := samples{}, samples{}
	for rep := range o.reps {
		for _, p := range o.prompts {
			ts, err := l.prefill(p, o.chunk)
			if err != nil {
				return err
			}
			lp[fmt.Sprintf("pp%d", p)] = append(lp[fmt.Sprintf("pp%d", p)], ts)
			fmt.Printf("rep %d loraplex  pp%-5d %9.1f tok/s\n", rep, p, ts)
		}
		ts, err := l.decode(o.decode)
		if err != nil {
			return err
		}
		lp[fmt.Sprintf("tg%d", o.decode)] = append(lp[fmt.Sprintf("tg%d", o.decode)], ts)
		fmt.Printf("rep %d loraplex  tg%-5d %9.1f tok/s\n", rep, o.decode, ts)
		if o.gguf == "" {
			continue
		}
		res, raw, err := llamaBench(o)
		if err != nil {
			return err
		}
		for name, ts := range res {
			lc[name] = append(lc[name], ts)
			fmt.Printf("rep %d llama.cpp %-7s %9.1f tok/s\n", rep, name, ts)
		}
		fmt.Printf("# llama-bench raw (rep %d): %s\n", rep, strings.Join(strings.Fields(raw), " "))
	}
	fmt.Printf("# load %s\n", loadavg())
	fmt.Println()
	// The medians and the best reps: on a shared machine the best rep of each engine is the
	// one least disturbed by other load.
	fmt.Println("| test | loraplex tok/s, median (min-max) | llama.cpp tok/s, median (min-max) | loraplex ÷ llama.cpp (medians) | best ÷ best |")
	fmt.Println("|---|---|---|---|---|")
	for _, name := range testNames(o) {
		a, c := lp[name], lc[name]
		ratio, best := "–", "–"
		if len(c) > 0 {
			ratio = fmt.Sprintf("**%.2f**", median(a)/median(c))
			best = fmt.Sprintf("%.2f", slices.Max(a)/slices.Max(c))
		}
		fmt.Printf("| %s | %s | %s | %s | %s |\n", name, spread(a), spread(c), ratio, best)
	}
	return nil
}

// llamaBench runs llama-bench once over every test and returns tokens per second by test name.
func llamaBench(o options) (map[string]float64, string, error) {
	if o.llamaBench == "" {
		return nil, "", fmt.Errorf("-gguf needs -llama-bench or LLAMA_BENCH")
	}
	cmd := exec.Command(o.llamaBench, llamaBenchArgs(o)...)
	cmd.Stderr = io.Discard
	out, err := cmd.Output()
	if err != nil {
		return nil, "", fmt.Errorf("llama-bench: %w", err)
	}
	var rows []struct {
		NPrompt int     `json:"n_prompt"`
		NGen    int     `json:"n_gen"`
		AvgTS   float64 `json:"avg_ts"`
	}
	if err := json.Unmarshal(out, &rows); err != nil {
		return nil, "", fmt.Errorf("llama-bench output: %w", err)
	}
	res := map[string]float64{}
	for _, r := range rows {
		switch {
		case r.NPrompt > 0 && r.NGen == 0:
			res[fmt.Sprintf("pp%d", r.NPrompt)] = r.AvgTS
		case r.NGen > 0 && r.NPrompt == 0:
			res[fmt.Sprintf("tg%d", r.NGen)] = r.AvgTS
		}
	}
	return res, string(out), nil
}

// starve serves the model on the real engine and times a short request (16-token prompt, 16
// tokens out) alone and then submitted right after a long prompt's request (-prompts' longest,
// one token out): the difference is the delay the long prefill causes. It runs two schedulers
// side by side, alternating: a long prefill given the whole step budget (the rule before
// Options.LongPrefillTokenThreshold: threshold = -chunk) and the default threshold.
func starve(o options) error {
	dir := o.modelDir
	if dir == "" {
		root, err := demo.Extract()
		if err != nil {
			return err
		}
		dir = filepath.Join(root, "model")
	}
	b := cpu.New(o.threads)
	defer b.Close()
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return err
	}
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		return err
	}
	defer w.Close()
	long := slices.Max(o.prompts)
	rng := rand.New(rand.NewPCG(14, 7))
	prompt := func(n int) []int {
		p := make([]int, n)
		for i := range p {
			p[i] = rng.IntN(cfg.VocabSize)
		}
		return p
	}
	fmt.Printf("# cpupeer -starve %s: %s, %s; chunk %d; a %d-token prompt, then a short request (16 in, 16 out); load %s\n",
		time.Now().UTC().Format(time.RFC3339), dir, b.Name(), o.chunk, long, loadavg())
	schedulers := []struct {
		name      string
		threshold int // 0: the engine's default
	}{{"whole budget", o.chunk}, {"default threshold", 0}}
	type result struct{ alone, with, ttft, longT []float64 }
	results := make([]result, len(schedulers))
	for rep := range o.reps {
		for k, sch := range schedulers {
			e, err := serve.NewEngine(cfg, b, w, nil, serve.Options{ModelName: "m", MaxModelLen: cfg.MaxPositions, MaxBatchedTokens: o.chunk,
				LongPrefillTokenThreshold: sch.threshold, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				return err
			}
			t0, t1, ttft, tl, err := starveOnce(e, prompt(16), prompt(long), prompt(16))
			threshold := e.Options().LongPrefillTokenThreshold
			e.Close()
			if err != nil {
				return err
			}
			r := &results[k]
			r.alone, r.with, r.ttft, r.longT = append(r.alone, t0.Seconds()), append(r.with, t1.Seconds()), append(r.ttft, ttft.Seconds()), append(r.longT, tl.Seconds())
			fmt.Printf("rep %d, %s (%d): short alone %.3f s, behind the long prompt %.3f s (delay %.3f s, first token %.3f s); long prompt %.3f s\n",
				rep, sch.name, threshold, t0.Seconds(), t1.Seconds(), t1.Seconds()-t0.Seconds(), ttft.Seconds(), tl.Seconds())
		}
	}
	for k, sch := range schedulers {
		r := results[k]
		fmt.Printf("median, %s: short alone %.3f s, behind a %d-token prompt %.3f s: delay %.3f s, first token %.3f s (long prompt %.3f s); load %s\n",
			sch.name, median(r.alone), long, median(r.with), median(r.with)-median(r.alone), median(r.ttft), median(r.longT), loadavg())
	}
	return nil
}

// starveOnce times the short prompt alone, then the long prompt's request and the second short
// one submitted 1 ms after it (its latency and its time to first token).
func starveOnce(e *serve.Engine, short, long, shortBehind []int) (alone, behind, ttft, longT time.Duration, err error) {
	if alone, _, err = complete(e, short, 16); err != nil {
		return
	}
	done := make(chan error, 1)
	go func() {
		var err error
		longT, _, err = complete(e, long, 1)
		done <- err
	}()
	time.Sleep(time.Millisecond) // the long request is queued first
	behind, ttft, err = complete(e, shortBehind, 16)
	if lerr := <-done; err == nil {
		err = lerr
	}
	return
}

// complete runs one greedy request to its end and returns its latency and time to first token.
func complete(e *serve.Engine, prompt []int, out int) (latency, ttft time.Duration, err error) {
	start := time.Now()
	s, err := e.Generate(context.Background(), serve.Request{Model: "m", Prompt: prompt, Params: serve.SamplingParams{MaxTokens: out, IgnoreEOS: true}})
	if err != nil {
		return 0, 0, err
	}
	for {
		ev, ok := s.Next(context.Background())
		if !ok {
			return 0, 0, fmt.Errorf("stream ended without a final event")
		}
		if ev.Err != nil {
			return 0, 0, ev.Err
		}
		if ttft == 0 && len(ev.Tokens) > 0 {
			ttft = time.Since(start)
		}
		if ev.Finish != "" {
			return time.Since(start), ttft, nil
		}
	}
}

func params(c *model.Config) string {
	qd, kvd := c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	layer := c.HiddenSize*(qd+2*kvd) + qd*c.HiddenSize + 3*c.HiddenSize*c.IntermediateSize
	n := c.NumLayers*layer + c.VocabSize*c.HiddenSize
	if !c.TieEmbeddings {
		n += c.VocabSize * c.HiddenSize
	}
	return fmt.Sprintf("%.1fM", float64(n)/1e6)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

func spread(v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f (%.1f-%.1f)", median(v), slices.Min(v), slices.Max(v))
}

// llamaBenchArgs are llama-bench's arguments for one rep of every test.
func llamaBenchArgs(o options) []string {
	args := []string{"-m", o.gguf, "-t", strconv.Itoa(o.threads), "-ub", strconv.Itoa(o.chunk),
		"-b", strconv.Itoa(max(2048, maxPrompt(o))), "-p", joinInts(o.prompts), "-n", strconv.Itoa(o.decode),
		"-r", "1", "-o", "json"}
	if o.noMmap {
		args = append(args, "-mmp", "0")
	}
	return args
}

// maxPrompt is the longest prompt test, 0 with -decode-only.
func maxPrompt(o options) int {
	if len(o.prompts) == 0 {
		return 0
	}
	return slices.Max(o.prompts)
}

// joinInts lists v for llama-bench; an empty list is "0", which llama-bench takes as no test.
func joinInts(v []int) string {
	if len(v) == 0 {
		return "0"
	}
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// anonHugePages is the process's memory in anonymous huge pages (where -no-mmap's copy should be).
func anonHugePages() string {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return "AnonHugePages ?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "AnonHugePages:") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "AnonHugePages ?"
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
