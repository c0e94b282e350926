// Command adaptercache is the GPU form of the issue-5 benchmark (c): many adapters with zipf
// popularity served through few device slots, against the same load with every adapter
// resident, in one invocation. It builds a random-weight model (Llama-3-8B shape by default) on
// the chosen backend once, writes N random PEFT adapters to disk once, and then runs the same
// plan (identical Poisson arrivals, adapters, prompts and lengths) against two engines on those
// weights: -max-loras N (all resident), then -max-loras -slots. Requests go through
// serve.Engine.Generate directly (no HTTP gateway; bench/loadgen is the HTTP form, CPU only).
//
//	go run ./bench/adaptercache -shape small -adapters 200 -rate 8 -duration 10s        # CPU
//	make kernels && go run -tags cuda ./bench/adaptercache -device cuda                 # GPU
package main

import (
	"context"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
)

type options struct {
	device, shape, targets, dir string
	adapters, slots, rank       int
	rate, zipfS                 float64
	duration                    time.Duration
	promptLen, outputLen        int
	maxSeqs, maxModelLen        int
	threads, warmup             int
	seed                        uint64
	slotsFirst                  bool
}

func main() {
	var o options
	flag.StringVar(&o.device, "device", "cpu", "cpu or cuda (build with -tags cuda)")
	flag.StringVar(&o.shape, "shape", "8b", "8b (Llama-3-8B) or small")
	flag.IntVar(&o.adapters, "adapters", 1000, "number of adapters")
	flag.IntVar(&o.slots, "slots", 32, "device slots of the second run (the first has one per adapter)")
	flag.IntVar(&o.rank, "rank", 8, "adapter rank")
	flag.StringVar(&o.targets, "targets", "q_proj,k_proj,v_proj,o_proj", "adapter target modules (S-LoRA's setting), comma-separated or all")
	flag.Float64Var(&o.rate, "rate", 16, "mean arrival rate, requests per second (Poisson)")
	flag.DurationVar(&o.duration, "duration", 40*time.Second, "arrival window of each run")
	flag.Float64Var(&o.zipfS, "zipf-s", 1, "zipf exponent of adapter popularity")
	flag.IntVar(&o.promptLen, "prompt-len", 128, "prompt tokens (random ids)")
	flag.IntVar(&o.outputLen, "output-len", 64, "output tokens per request (ignore_eos)")
	flag.IntVar(&o.maxSeqs, "max-num-seqs", 64, "engine batch size")
	flag.IntVar(&o.maxModelLen, "max-model-len", 1024, "engine max model length (sizes the KV cache)")
	flag.IntVar(&o.threads, "threads", 0, "CPU backend threads (0 = GOMAXPROCS)")
	flag.IntVar(&o.warmup, "warmup", 8, "unmeasured requests before each run (on the most popular adapters)")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the plan and the adapters")
	flag.StringVar(&o.dir, "dir", "", "where to write the adapters (default a temp dir)")
	flag.BoolVar(&o.slotsFirst, "slots-first", false, "run the few-slots configuration first (to check for an order effect)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "adaptercache:", err)
		os.Exit(1)
	}
}

// planned is one request, decided before the runs.
type planned struct {
	at      time.Duration
	adapter int
	prompt  []int
}

func plan(o options, vocab int) []planned {
	rng := rand.New(rand.NewPCG(o.seed, 0x9e3779b97f4a7c15))
	cdf := make([]float64, o.adapters)
	sum := 0.0
	for k := range cdf {
		sum += 1 / math.Pow(float64(k+1), o.zipfS)
		cdf[k] = sum
	}
	var out []planned
	for t := time.Duration(0); ; {
		t += time.Duration(rng.ExpFloat64() / o.rate * 1e9)
		if t >= o.duration {
			break
		}
		p := planned{at: t, adapter: min(sort.SearchFloat64s(cdf, rng.Float64()*sum), o.adapters-1), prompt: make([]int, o.promptLen)}
		for i := range p.prompt {
			p.prompt[i] = rng.IntN(vocab)
		}
		out = append(out, p)
	}
	return out
}

type result struct {
	ttft, e2e time.Duration
	done      time.Time
	tokens    int
	err       string
	resident  bool // the adapter was on the device when the request was sent
}

type summary struct {
	name                   string
	slots                  int
	requests, completed    int
	errors                 map[string]int
	reqRate, tokRate       float64
	ttft50, ttft90, ttft99 float64
	e2e50, e2e99           float64
	hitN, missN            int
	hit50, hit99           float64
	miss50, miss99         float64
	wall                   time.Duration
	preload                time.Duration
	stats                  adaptercache.Stats
}

func run(o options) error {
	cfg, err := benchenv.Config(o.shape)
	if err != nil {
		return err
	}
	tg, err := benchenv.ParseTargets(o.targets)
	if err != nil {
		return err
	}
	be, closeBE, err := benchenv.NewBackend(o.device, o.threads)
	if err != nil {
		return err
	}
	defer closeBE()
	t0 := time.Now()
	w, err := benchenv.RandomWeights(cfg, be)
	if err != nil {
		return err
	}
	runtime.GC()
	tWeights := time.Since(t0)
	fmt.Fprintf(os.Stderr, "adaptercache: weights on %s in %.1fs, writing %d adapters\n", be.Name(), tWeights.Seconds(), o.adapters)
	if o.dir == "" {
		if o.dir, err = os.MkdirTemp("", "adaptercache-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(o.dir)
	}
	spec := benchenv.AdapterSpec{Rank: o.rank, Targets: tg}
	t0 = time.Now()
	names, err := writeAdapters(o.dir, cfg, spec, o.adapters, o.seed)
	if err != nil {
		return err
	}
	tWrite := time.Since(t0)
	fmt.Fprintf(os.Stderr, "adaptercache: adapters written in %.1fs\n", tWrite.Seconds())
	pl := plan(o, min(cfg.VocabSize, 32000))
	fmt.Printf("# Adapter cache under load: %d adapters, %d device slots vs all resident (%s) — %s\n\n", o.adapters, o.slots, be.Name(), time.Now().UTC().Format("2006-01-02 15:04Z"))
	fmt.Printf("Model: random weights, shape %s (%d layers, hidden %d), uploaded in %.1fs. Adapters: %d random PEFT folders, rank %d on %s, bf16, "+
		"%s bytes each (%.2f GB in all), written to %s in %.1fs (page cache warm). Popularity zipf s=%g over the adapters; "+
		"%d requests per run (Poisson, %g req/s over %s), prompt %d random token ids, %d output tokens (ignore_eos, greedy); "+
		"engine max-num-seqs %d, max-model-len %d; requests through serve.Engine.Generate (no HTTP). Both runs replay the same plan on the same weights, "+
		"each after %d unmeasured warm-up requests. Host tier unbounded; adapters registered and read into host memory before each run.\n\n",
		o.shape, cfg.NumLayers, cfg.HiddenSize, tWeights.Seconds(), o.adapters, o.rank, o.targets, comma(spec.Bytes(cfg)),
		float64(spec.Bytes(cfg))*float64(o.adapters)/1e9, o.dir, tWrite.Seconds(), o.zipfS, len(pl), o.rate, o.duration, o.promptLen, o.outputLen,
		o.maxSeqs, o.maxModelLen, o.warmup)
	order := []int{0, 1}
	if o.slotsFirst {
		order = []int{1, 0}
	}
	sums := make([]summary, 2)
	for _, i := range order {
		s, err := runOnce(o, cfg, be, w, names, pl, []int{o.adapters, o.slots}[i])
		if err != nil {
			return err
		}
		sums[i] = s
		runtime.GC()
	}
	report(os.Stdout, sums)
	return nil
}

// writeAdapters writes n bf16 PEFT adapters named adapter-0000... Each factor is a slice of a
// shared random pool at an offset drawn from the adapter and tensor, so every adapter differs
// without generating gigabytes of random numbers.
func writeAdapters(dir string, cfg *model.Config, spec benchenv.AdapterSpec, n int, seed uint64) ([]string, error) {
	const pool = 1 << 24
	poolA := benchenv.RandomBF16(pool, 1/math.Sqrt(float64(cfg.HiddenSize)), seed)
	poolB := benchenv.RandomBF16(pool, 0.02, seed+1)
	names := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(runtime.NumCPU(), 16) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range next {
				names[a] = fmt.Sprintf("adapter-%04d", a)
				errs[a] = spec.WritePEFT(filepath.Join(dir, names[a]), cfg, func(name string, rows, cols int, isB bool) []byte {
					h := fnv.New64a()
					fmt.Fprintf(h, "%d/%s", a, name)
					p := poolA
					if isB {
						p = poolB
					}
					off := int(h.Sum64()%uint64(pool-rows*cols)) &^ 1
					return p[2*off : 2*(off+rows*cols)]
				})
			}
		}()
	}
	for a := range n {
		next <- a
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return names, nil
}

func runOnce(o options, cfg *model.Config, be benchenv.Backend, w *model.Weights, names []string, pl []planned, slots int) (summary, error) {
	s := summary{name: fmt.Sprintf("%d slots", slots), slots: slots, requests: len(pl), errors: map[string]int{}}
	if slots >= len(names) {
		s.name = fmt.Sprintf("all resident (%d slots)", slots)
	}
	e, err := serve.NewEngine(cfg, be, w, nil, serve.Options{ModelName: "base", MaxNumSeqs: o.maxSeqs, MaxModelLen: o.maxModelLen,
		MaxLoRAs: slots, AdapterDirs: []string{o.dir}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return s, err
	}
	defer func() {
		t0 := time.Now()
		e.Close()
		fmt.Fprintf(os.Stderr, "adaptercache: %s: engine closed (device copies freed) in %.1fs\n", s.name, time.Since(t0).Seconds())
	}()
	c := e.AdapterCache()
	t0 := time.Now()
	// Register every adapter and read it into host memory; then put on the device as many as
	// fit, least popular first, so the most popular are the most recently used.
	for _, n := range names {
		if err := c.Register(n, filepath.Join(o.dir, n)); err != nil {
			return s, err
		}
		if err := c.Prefetch(n); err != nil {
			return s, err
		}
	}
	for {
		ready := 0
		for _, in := range c.List() {
			if in.InHost || in.State >= adaptercache.StateHost {
				ready++
			}
			if in.State == adaptercache.StateFailed {
				return s, fmt.Errorf("adapter %s: %v", in.Name, in.Err)
			}
		}
		if ready == len(names) {
			break
		}
		<-c.Changed()
	}
	for i := min(slots, len(names)) - 1; i >= 0; i-- {
		if err := e.LoadAdapter(names[i], filepath.Join(o.dir, names[i])); err != nil {
			return s, err
		}
	}
	s.preload = time.Since(t0)
	fmt.Fprintf(os.Stderr, "adaptercache: %s: preloaded in %.1fs, warming up\n", s.name, s.preload.Seconds())
	ctx := context.Background()
	for i := range o.warmup {
		p := pl[i%len(pl)]
		one(ctx, e, names[i%min(4, len(names))], p.prompt, o.outputLen)
	}
	before := c.Stats()
	fmt.Fprintf(os.Stderr, "adaptercache: %s: running %d requests\n", s.name, len(pl))
	rs := make([]result, len(pl))
	var wg sync.WaitGroup
	start := time.Now()
	for i := range pl {
		p := &pl[i]
		if d := time.Until(start.Add(p.at)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, _ := c.State(names[p.adapter])
			rs[i] = one(ctx, e, names[p.adapter], p.prompt, o.outputLen)
			rs[i].resident = in.State == adaptercache.StateDevice
		}()
	}
	wg.Wait()
	after := c.Stats()
	s.stats = after
	s.stats.DeviceHits -= before.DeviceHits
	s.stats.HostHits -= before.HostHits
	s.stats.Misses -= before.Misses
	s.stats.DeviceEvictions -= before.DeviceEvictions
	s.stats.Uploads -= before.Uploads
	s.stats.UploadSeconds -= before.UploadSeconds
	s.stats.Loads -= before.Loads
	s.stats.LoadSeconds -= before.LoadSeconds
	var last time.Time
	var ttft, e2e, hit, miss []float64
	tokens := 0
	for _, r := range rs {
		if r.err != "" {
			s.errors[r.err]++
			continue
		}
		s.completed++
		tokens += r.tokens
		ttft = append(ttft, float64(r.ttft)/1e6)
		if r.resident {
			hit = append(hit, float64(r.ttft)/1e6)
		} else {
			miss = append(miss, float64(r.ttft)/1e6)
		}
		e2e = append(e2e, float64(r.e2e)/1e6)
		if r.done.After(last) {
			last = r.done
		}
	}
	s.wall = last.Sub(start)
	s.reqRate = float64(s.completed) / s.wall.Seconds()
	s.tokRate = float64(tokens) / s.wall.Seconds()
	s.ttft50, s.ttft90, s.ttft99 = benchenv.Percentile(ttft, 50), benchenv.Percentile(ttft, 90), benchenv.Percentile(ttft, 99)
	s.e2e50, s.e2e99 = benchenv.Percentile(e2e, 50), benchenv.Percentile(e2e, 99)
	s.hitN, s.missN = len(hit), len(miss)
	s.hit50, s.hit99 = benchenv.Percentile(hit, 50), benchenv.Percentile(hit, 99)
	s.miss50, s.miss99 = benchenv.Percentile(miss, 50), benchenv.Percentile(miss, 99)
	fmt.Fprintf(os.Stderr, "adaptercache: %s: %d/%d completed, %.2f req/s, TTFT p99 %.1f ms\n", s.name, s.completed, s.requests, s.reqRate, s.ttft99)
	return s, nil
}

// one sends a request and reads its stream: TTFT is the first event carrying a token.
func one(ctx context.Context, e *serve.Engine, name string, prompt []int, out int) result {
	sent := time.Now()
	st, err := e.Generate(ctx, serve.Request{Model: name, Prompt: prompt, Params: serve.SamplingParams{MaxTokens: out, IgnoreEOS: true}})
	if err != nil {
		return result{err: errKey(err)}
	}
	var r result
	for {
		ev, ok := st.Next(ctx)
		if !ok {
			r.err = "stream ended without finish"
			return r
		}
		if len(ev.Tokens) > 0 && r.tokens == 0 {
			r.ttft = time.Since(sent)
		}
		r.tokens += len(ev.Tokens)
		if ev.Finish != "" {
			r.done = time.Now()
			r.e2e = r.done.Sub(sent)
			if ev.Err != nil {
				r.err = errKey(ev.Err)
			} else if r.tokens < out {
				r.err = "short output (" + ev.Finish + ")"
			}
			return r
		}
	}
}

func errKey(err error) string {
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

func report(w io.Writer, s []summary) {
	a, b := s[0], s[1]
	ratio := func(x, y float64) string { return fmt.Sprintf("%.3f", y/x) }
	fmt.Fprintf(w, "| | %s | %s | ratio | goal |\n|---|---|---|---|---|\n", a.name, b.name)
	errs := func(x summary) string {
		n := 0
		for _, v := range x.errors {
			n += v
		}
		return fmt.Sprint(n)
	}
	thr := b.reqRate / a.reqRate
	p99 := b.ttft99 / a.ttft99
	fmt.Fprintf(w, "| completed / errors | %d / %s | %d / %s | | |\n", a.completed, errs(a), b.completed, errs(b))
	fmt.Fprintf(w, "| request throughput (req/s) | %.2f | %.2f | **%.3f** | >= 0.8 — %s |\n", a.reqRate, b.reqRate, thr, met(thr >= 0.8))
	fmt.Fprintf(w, "| output throughput (tok/s) | %.1f | %.1f | %s | |\n", a.tokRate, b.tokRate, ratio(a.tokRate, b.tokRate))
	fmt.Fprintf(w, "| TTFT p50 (ms) | %.2f | %.2f | %s | |\n", a.ttft50, b.ttft50, ratio(a.ttft50, b.ttft50))
	fmt.Fprintf(w, "| TTFT p90 (ms) | %.2f | %.2f | %s | |\n", a.ttft90, b.ttft90, ratio(a.ttft90, b.ttft90))
	fmt.Fprintf(w, "| TTFT p99 (ms) | %.2f | %.2f | **%.3f** | <= 2x — %s |\n", a.ttft99, b.ttft99, p99, met(p99 <= 2))
	fmt.Fprintf(w, "| E2E p50 / p99 (ms) | %.1f / %.1f | %.1f / %.1f | %s / %s | |\n", a.e2e50, a.e2e99, b.e2e50, b.e2e99, ratio(a.e2e50, b.e2e50), ratio(a.e2e99, b.e2e99))
	fmt.Fprintf(w, "| wall, first send to last finish (s) | %.1f | %.1f | | |\n", a.wall.Seconds(), b.wall.Seconds())
	fmt.Fprintf(w, "| preload before the run (s) | %.1f | %.1f | | |\n", a.preload.Seconds(), b.preload.Seconds())
	for _, x := range s {
		st := x.stats
		up := 0.0
		if st.Uploads > 0 {
			up = st.UploadSeconds / float64(st.Uploads) * 1e3
		}
		fmt.Fprintf(w, "\n%s: TTFT of the %d requests whose adapter was on the device when sent p50 %.2f / p99 %.2f ms; of the %d others p50 %.2f / p99 %.2f ms.",
			x.name, x.hitN, x.hit50, x.hit99, x.missN, x.miss50, x.miss99)
		fmt.Fprintf(w, " During the run: device hits %d, host hits %d, misses %d, device evictions %d, uploads %d (mean %.2f ms each), disk loads %d",
			st.DeviceHits, st.HostHits, st.Misses, st.DeviceEvictions, st.Uploads, up, st.Loads)
		if len(x.errors) > 0 {
			var parts []string
			for k, v := range x.errors {
				parts = append(parts, fmt.Sprintf("%s x%d", k, v))
			}
			sort.Strings(parts)
			fmt.Fprintf(w, "; errors: %s", strings.Join(parts, ", "))
		}
		fmt.Fprintln(w, ".")
	}
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

func comma(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
