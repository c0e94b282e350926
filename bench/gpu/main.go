//go:build cuda

// Command gpu measures the CUDA backend where issue 15 asks, every ratio against a baseline
// measured in the same run: batch-1 decode against the HBM roofline (device copy bandwidth) at
// a context of 128 and at long contexts (roofline with the context's K/V bytes), decode
// throughput over batch sizes, 64 requests on 64 distinct adapters (rank 16 on all seven
// projections; rank 8 on q/v) against the same batch without adapters with the byte-bound
// ceiling beside each, routed decode (28 experts, top-2) against one adapter, the deterministic
// mode against the default, and prefill of 2,048 to 32,768 tokens against a bare cuBLAS GEMM.
// Weights are random bf16 in Llama-3-8B (or ~1B) shape. Each measured point gets a runner and
// KV cache sized for what it needs (a 32k context is one sequence, not 256 rows at full length).
//
// Stages run in order and each prints its elapsed time; -stages picks some. The JSON (-out) is
// rewritten after every stage, so a run cut short keeps what it measured. bench/gpu/run.sh runs
// this beside the other benchmarks and bench/gpu/report turns the outputs into one results file.
//
//	make kernels && go run -tags cuda ./bench/gpu -shape 8b -out gpu-8b.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/bench/internal/gpuresults"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
)

var shapes = map[string]string{
	"8b": `{"architectures":["LlamaForCausalLM"],"vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":8192,"rope_theta":500000,"rms_norm_eps":1e-5,"tie_word_embeddings":false}`,
	"1b": `{"architectures":["LlamaForCausalLM"],"vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":8192,"rope_theta":500000,"rms_norm_eps":1e-5,"tie_word_embeddings":true}`,
}

// allStages is the order a full run takes. Prefill comes last: it needs the largest workspaces
// and runs the newest kernel (tensor-core attention), so a fault there costs nothing measured before.
var allStages = []string{"decode", "longctx", "adapters16", "adapters8qv", "router", "deterministic", "prefill"}

// Result is what the run writes: gpuresults holds the schema, which bench/gpu/report reads.
type Result = gpuresults.Loraplex

func main() {
	shape := flag.String("shape", "8b", "8b or 1b")
	out := flag.String("out", "", "write JSON results here (rewritten after every stage)")
	steps := flag.Int("steps", 20, "timed decode steps per point")
	ctx := flag.Int("ctx", 128, "context length of decode sequences")
	stages := flag.String("stages", "all", "comma-separated stages to run, in this order: "+strings.Join(allStages, ","))
	sweep := flag.String("sweep", "1,2,4,8,16,32,64,128,256", "decode stage: batch sizes")
	contexts := flag.String("contexts", "4096,32768", "longctx stage: batch-1 decode contexts")
	prefillTokens := flag.String("prefill-tokens", "2048,8192,32768", "prefill stage: prompt lengths, each one step, on the tensor-core kernel")
	prefillSIMT := flag.String("prefill-cuda-cores", "2048", "prefill stage: lengths also measured on the CUDA-core kernel (slow: 8,192 takes seconds a pass, 32,768 about a minute)")
	flag.BoolVar(&hostLogits, "host-logits", false, "decode copies every logits row to the host (the CPU-sampling path) instead of sampling greedily on the device")
	routerBatches := flag.String("router-batches", "1,64", "router stage: batch sizes")
	routerSides := flag.String("router-sides", "base,single,routed", "router stage: which of base, single (one adapter) and routed to run (a profiler's view of one; the ratio needs single and routed)")
	cpuProfile := flag.String("cpuprofile", "", "write a Go CPU profile of the whole run here (the host's part of replayed steps: go tool pprof)")
	only := flag.String("only", "", "decode1: only batch-1 decode (for profilers); breakdown: per-op decode timings; router: routed decode (8 and 28 experts, top-2, the variants); gates: a routed layer's gate products, each way; products: a layer's products of one input, serial and forked; prefill: the prefill stage alone")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		exitOn(err)
		exitOn(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}

	var err error
	switch *only {
	case "breakdown", "router", "gates", "products":
		cfg, _ := model.ParseConfig([]byte(shapes[*shape]))
		b, err := cuda.New(0)
		switch {
		case err != nil:
		case *only == "router":
			err = routerBench(b, cfg, *steps, *ctx)
		case *only == "gates":
			err = gatesBreakdown(b, cfg)
		case *only == "products":
			err = productsBreakdown(b, cfg)
		default:
			err = breakdown(b, cfg)
		}
		exitOn(err)
		return
	case "decode1":
		onlyDecode1 = true
		*stages = "decode"
	case "prefill":
		*stages = "prefill"
	case "":
	default:
		exitOn(fmt.Errorf("-only %q: want decode1, breakdown, router, gates, products or prefill", *only))
	}
	o := options{shape: *shape, out: *out, steps: *steps, ctx: *ctx, routerSides: map[string]bool{}}
	for _, side := range strings.Split(*routerSides, ",") {
		if side != "base" && side != "single" && side != "routed" {
			exitOn(fmt.Errorf("-router-sides: %q is not one of base, single, routed", side))
		}
		o.routerSides[side] = true
	}
	if o.stages, err = parseStages(*stages); err == nil {
		o.routerBatches, err = parseInts("-router-batches", *routerBatches, 1)
	}
	if err == nil {
		if o.sweep, err = parseInts("-sweep", *sweep, 1); err == nil {
			if o.contexts, err = parseInts("-contexts", *contexts, 2); err == nil {
				if o.prefill, err = parseInts("-prefill-tokens", *prefillTokens, 2); err == nil {
					o.prefillSIMT, err = parseInts("-prefill-cuda-cores", *prefillSIMT, 2)
				}
			}
		}
	}
	exitOn(err)
	exitOn(run(o))
}

var onlyDecode1, hostLogits bool

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	shape, out           string
	steps, ctx           int
	stages               map[string]bool
	sweep, contexts      []int
	prefill, prefillSIMT []int
	routerBatches        []int
	routerSides          map[string]bool
}

func parseStages(s string) (map[string]bool, error) {
	m := map[string]bool{}
	if s == "all" {
		for _, st := range allStages {
			m[st] = true
		}
		return m, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(allStages, f) {
			return nil, fmt.Errorf("-stages: %q is not one of %s", f, strings.Join(allStages, ","))
		}
		m[f] = true
	}
	return m, nil
}

func parseInts(flagName, s string, least int) ([]int, error) {
	var out []int
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < least {
			return nil, fmt.Errorf("%s: %q is not a whole number of at least %d", flagName, f, least)
		}
		out = append(out, n)
	}
	return out, nil
}

// bench holds what every stage shares: one backend, one upload of the weights.
type bench struct {
	o        options
	cfg      *model.Config
	b        *cuda.Backend
	w        *model.Weights
	res      Result
	start    time.Time
	pageSize int
	// weightBytes: what one decode step reads of the weights at any batch (every matrix once,
	// the lm_head included, the embedding only a row per token).
	weightBytes float64
}

func run(o options) error {
	cfg, err := model.ParseConfig([]byte(shapes[o.shape]))
	if err != nil {
		return err
	}
	b, err := cuda.New(0)
	if err != nil {
		return err
	}
	x := &bench{o: o, cfg: cfg, b: b, start: time.Now(), pageSize: 16,
		res: Result{Device: b.Name(), Shape: o.shape, StageSeconds: map[string]float64{}, GEMMFlopsByRows: map[int]float64{}, Env: map[string]string{}}}
	for _, kv := range os.Environ() {
		if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "LORAPLEX_") {
			x.res.Env[k] = v
		}
	}
	for p := model.Proj(0); p < model.NumProj; p++ {
		o, i := cfg.ProjShape(p)
		x.weightBytes += float64(2 * o * i * cfg.NumLayers)
	}
	x.weightBytes += float64(2 * cfg.VocabSize * cfg.HiddenSize) // lm_head

	if err := x.stage("ceilings", x.ceilings); err != nil {
		return err
	}
	if err := x.stage("weights", x.uploadWeights); err != nil {
		return err
	}
	stages := []struct {
		name string
		f    func() error
	}{
		{"decode", x.decodeStage}, {"longctx", x.longContextStage}, {"adapters16", x.adapters16Stage},
		{"adapters8qv", x.adaptersQVStage}, {"router", x.routerStage}, {"deterministic", x.deterministicStage},
		{"prefill", x.prefillStage},
	}
	for _, s := range stages {
		if !o.stages[s.name] {
			continue
		}
		if err := x.stage(s.name, s.f); err != nil {
			// A stage that fails is recorded and the run goes on, unless the backend itself
			// has failed (a kernel fault is sticky: nothing after it would measure anything).
			fmt.Printf("stage %s FAILED: %v\n", s.name, err)
			if x.res.Errors == nil {
				x.res.Errors = map[string]string{}
			}
			x.res.Errors[s.name] = err.Error()
			x.write()
			if b.Err() != nil {
				return err
			}
		}
		if onlyDecode1 {
			break
		}
	}
	x.write()
	return b.Err()
}

// stage runs f, prints and records its wall time, and rewrites the JSON.
func (x *bench) stage(name string, f func() error) error {
	t0 := time.Now()
	err := f()
	if err == nil {
		err = x.b.Err()
	}
	x.res.StageSeconds[name] = time.Since(t0).Seconds()
	fmt.Printf("== stage %s: %.1f s (total %.1f s)\n", name, time.Since(t0).Seconds(), time.Since(x.start).Seconds())
	x.write()
	return err
}

func (x *bench) write() {
	if x.o.out == "" {
		return
	}
	// Written aside and renamed, so that a run killed mid-write (run.sh's stage timeout) leaves
	// the previous stage's whole file, never half of this one.
	data, err := json.MarshalIndent(x.res, "", "  ")
	if err == nil {
		err = os.WriteFile(x.o.out+".tmp", data, 0o644)
	}
	if err == nil {
		err = os.Rename(x.o.out+".tmp", x.o.out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: writing results:", err)
	}
}

func (x *bench) ceilings() (err error) {
	if x.res.CopyBandwidth, err = x.b.MeasureCopyBandwidth(1<<30, 20); err != nil {
		return err
	}
	rows := []int{2048}
	if x.o.stages["prefill"] {
		for _, n := range x.o.prefill {
			rows = append(rows, min(n, 8192))
		}
	}
	for _, m := range rows {
		if _, done := x.res.GEMMFlopsByRows[m]; done {
			continue
		}
		if x.res.GEMMFlopsByRows[m], err = x.b.MeasureGEMM(m, x.cfg.IntermediateSize, x.cfg.HiddenSize, 20); err != nil {
			return err
		}
	}
	x.res.GEMMFlops = x.res.GEMMFlopsByRows[2048]
	fmt.Printf("device %s: copy %.0f GB/s (read+write), cuBLAS bf16 GEMM %.0f TFLOP/s (2,048 x %d x %d)\n", x.res.Device,
		x.res.CopyBandwidth/1e9, x.res.GEMMFlops/1e12, x.cfg.IntermediateSize, x.cfg.HiddenSize)
	return nil
}

func (x *bench) uploadWeights() (err error) {
	src := benchenv.NewRandomSource(x.cfg)
	defer src.Release()
	x.w, err = model.UploadWeights(src, x.cfg, x.b)
	return err
}

// decodeRunner makes a runner and KV cache sized for batch rows decoding at context ctx (each
// row its own pages; every step rewrites position ctx-1, so the context stays ctx). It replaces
// the backend's KV cache: runners made before it must not run again.
func (x *bench) decodeRunner(batch, ctx int) (*model.Runner, error) {
	per := (ctx + x.pageSize) / x.pageSize
	return model.NewRunner(x.cfg, x.b, x.w, model.RunnerOptions{MaxTokens: batch, MaxLogitRows: batch, MaxContext: ctx + x.pageSize,
		KV: model.KVSpec{Pages: batch * per, PageSize: x.pageSize}})
}

// kvBytes is what one row at context ctx reads of the KV cache in a decode step.
func (x *bench) kvBytes(ctx int) float64 {
	return float64(2 * 2 * x.cfg.NumLayers * ctx * x.cfg.NumKVHeads * x.cfg.HeadDim)
}

// decode times steps of batch rows at context ctx (rows i uses adapters[i % len], none if
// nil) after three warm-up steps, and returns tokens per second. Greedy rows are sampled on
// the device, only the chosen tokens come back (the engine's path on this backend); with
// -host-logits every logits row is copied to the host instead.
func (x *bench) decode(r *model.Runner, batch, ctx int, adapters []*model.Adapter) (float64, error) {
	s := decodeStep(batch, ctx, x.pageSize)
	ads := make([]*model.Adapter, batch)
	if adapters != nil {
		for i := range ads {
			ads[i] = adapters[i%len(adapters)]
		}
	}
	logits := make([]float32, 0)
	if hostLogits {
		logits = make([]float32, batch*x.cfg.VocabSize)
	}
	rows, results := make([]model.SampleRow, batch), make([]model.SampleResult, batch)
	for i := range rows {
		rows[i].Logprobs = -1
	}
	step := func() error {
		if hostLogits {
			return r.Forward(s, ads, logits)
		}
		return r.ForwardSample(s, ads, rows, results)
	}
	for i := 0; i < 3; i++ {
		if err := step(); err != nil {
			return 0, err
		}
	}
	replays0, host0 := x.b.ReplayHostTime()
	kept0 := x.b.KeptSegmentReplays()
	start := time.Now()
	for i := 0; i < x.o.steps; i++ {
		if err := step(); err != nil {
			return 0, err
		}
	}
	took := time.Since(start)
	// The host's share of a replayed step (cuda.Backend.ReplayHostTime), which the device waits
	// for: what a faster kernel cannot win back.
	if replays, host := x.b.ReplayHostTime(); replays > replays0 {
		per := (host - host0) / time.Duration(replays-replays0)
		fmt.Printf("  decode batch %d, ctx %d, %d adapters: %.1f us of host work a replayed step (%d of %d steps replayed, %d without the forward pass's walk), %.3f of the timed steps' time\n",
			batch, ctx, len(adapters), float64(per.Nanoseconds())/1e3, replays-replays0, x.o.steps, x.b.KeptSegmentReplays()-kept0, (host-host0).Seconds()/took.Seconds())
	}
	return float64(batch*x.o.steps) / took.Seconds(), nil
}

func (x *bench) decodeStage() error {
	maxBatch := 1
	if !onlyDecode1 {
		maxBatch = slices.Max(append(slices.Clone(x.o.sweep), 1))
	}
	r, err := x.decodeRunner(maxBatch, x.o.ctx)
	if err != nil {
		return err
	}
	x.b.SetGraphs(false)
	direct, err := x.decode(r, 1, x.o.ctx, nil)
	x.b.SetGraphs(true)
	if err != nil {
		return err
	}
	tps, err := x.decode(r, 1, x.o.ctx, nil)
	if err != nil {
		return err
	}
	kv := x.kvBytes(x.o.ctx)
	roof := x.res.CopyBandwidth / (x.weightBytes + kv)
	x.res.Batch1 = map[string]float64{"tokens_per_s": tps, "tokens_per_s_without_graphs": direct, "roofline_tokens_per_s": roof, "ratio": tps / roof,
		"weight_bytes": x.weightBytes, "kv_bytes": kv, "context": float64(x.o.ctx)}
	fmt.Printf("batch 1 decode: %.1f tok/s with CUDA graphs (%.1f without), roofline %.1f tok/s (%.3g B per token), ratio %.2f\n",
		tps, direct, roof, x.weightBytes+kv, tps/roof)
	if onlyDecode1 {
		return nil
	}
	x.res.Sweep = map[int]float64{}
	for _, bs := range x.o.sweep {
		tps, err := x.decode(r, bs, x.o.ctx, nil)
		if err != nil {
			return err
		}
		x.res.Sweep[bs] = tps
		fmt.Printf("batch %3d decode: %8.1f tok/s\n", bs, tps)
	}
	return nil
}

// longContextStage: batch-1 decode at each of -contexts, one sequence, its KV cache sized for
// that context alone; the roofline counts the weights and the context's K/V bytes.
func (x *bench) longContextStage() error {
	for _, ctx := range x.o.contexts {
		r, err := x.decodeRunner(1, ctx)
		if err != nil {
			return fmt.Errorf("context %d: %w", ctx, err)
		}
		tps, err := x.decode(r, 1, ctx, nil)
		if err != nil {
			return fmt.Errorf("context %d: %w", ctx, err)
		}
		kv := x.kvBytes(ctx)
		roof := x.res.CopyBandwidth / (x.weightBytes + kv)
		x.res.LongContext = append(x.res.LongContext, gpuresults.LongContextPoint{Context: ctx, Tokens: tps, Roofline: roof, Ratio: tps / roof, KVBytes: kv})
		fmt.Printf("batch 1 decode at context %d: %.1f tok/s, roofline %.1f tok/s (weights %.3g B + KV %.3g B), ratio %.2f\n",
			ctx, tps, roof, x.weightBytes, kv, tps/roof)
		x.write()
	}
	return nil
}

// adapterRatio times batch rows on n distinct adapters against the same batch on none.
func (x *bench) adapterRatio(batch, rank int, targets []model.Proj) (*gpuresults.AdapterRatio, error) {
	t0 := time.Now()
	adapters, err := randomAdapters(x.b, x.cfg, batch, rank, targets)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(targets))
	var perAdapter float64
	for i, p := range targets {
		names[i] = p.String()
		o, in := x.cfg.ProjShape(p)
		perAdapter += float64(2 * rank * (o + in) * x.cfg.NumLayers)
	}
	fmt.Printf("%d rank-%d adapters on %s uploaded in %.1fs\n", batch, rank, strings.Join(names, ","), time.Since(t0).Seconds())
	r, err := x.decodeRunner(batch, x.o.ctx)
	if err != nil {
		return nil, err
	}
	base, err := x.decode(r, batch, x.o.ctx, nil)
	if err != nil {
		return nil, err
	}
	mixed, err := x.decode(r, batch, x.o.ctx, adapters)
	if err != nil {
		return nil, err
	}
	baseBytes := x.weightBytes + float64(batch)*x.kvBytes(x.o.ctx)
	adBytes := float64(batch) * perAdapter
	a := &gpuresults.AdapterRatio{Batch: batch, Rank: rank, Targets: strings.Join(names, ","), Base: base, Mixed: mixed, Ratio: mixed / base,
		AdapterBytes: adBytes, BaseBytes: baseBytes, Ceiling: baseBytes / (baseBytes + adBytes)}
	a.RatioOfCeiling = a.Ratio / a.Ceiling
	fmt.Printf("batch %d: base %.1f tok/s, %d distinct rank-%d adapters (%s) %.1f tok/s, ratio %.3f; byte-bound ceiling %.3f (%.3g B of adapters beside %.3g B), %.2f of it\n",
		batch, base, batch, rank, a.Targets, mixed, a.Ratio, a.Ceiling, adBytes, baseBytes, a.RatioOfCeiling)
	return a, nil
}

func (x *bench) adapters16Stage() (err error) {
	x.res.Adapters, err = x.adapterRatio(64, 16, benchenv.AllProj())
	return err
}

// adaptersQVStage is S-LoRA's setting: rank 8 on q_proj and v_proj only.
func (x *bench) adaptersQVStage() (err error) {
	x.res.AdaptersQV, err = x.adapterRatio(64, 8, []model.Proj{model.ProjQ, model.ProjV})
	return err
}

// routerStage: a router over 28 rank-8 experts (all seven projections), top-2, every row
// routed on the device, against the same batch on one rank-8 adapter, at batch 1 and 64.
// bench/gpu -only router shows where the time goes (gates only, host top-k, 8 experts).
func (x *bench) routerStage() error {
	const experts, topK = 28, 2
	maxBatch := slices.Max(x.o.routerBatches)
	ads, err := randomAdapters(x.b, x.cfg, experts, 8, benchenv.AllProj())
	if err != nil {
		return err
	}
	routed, err := benchRouting(x.b, x.cfg, "router28", ads, topK, rand.New(rand.NewPCG(5, 6)), false)
	if err != nil {
		return err
	}
	r, err := x.decodeRunner(maxBatch, x.o.ctx)
	if err != nil {
		return err
	}
	one := func(ad *model.Adapter) []*model.Adapter {
		if ad == nil {
			return nil
		}
		return []*model.Adapter{ad}
	}
	for _, batch := range x.o.routerBatches {
		p := gpuresults.RouterPoint{Experts: experts, TopK: topK, Batch: batch}
		for _, m := range []struct {
			side string
			dst  *float64
			ad   *model.Adapter
		}{{"base", &p.Base, nil}, {"single", &p.Single, ads[0]}, {"routed", &p.Routed, routed}} {
			if !x.o.routerSides[m.side] {
				continue
			}
			if *m.dst, err = x.decode(r, batch, x.o.ctx, one(m.ad)); err != nil {
				return err
			}
		}
		if p.Single > 0 {
			p.Ratio = p.Routed / p.Single
		}
		p.SingleBytes, p.RoutedBytes = x.routedStepBytes(batch, experts, topK, 8)
		p.Ceiling = p.SingleBytes / p.RoutedBytes
		x.res.Router = append(x.res.Router, p)
		fmt.Printf("router %d experts top-%d, batch %d: base %.1f tok/s, single rank-8 adapter %.1f, routed %.1f = %.2f of single; byte-bound ceiling %.3f (%.3g B beside %.3g B)\n",
			experts, topK, batch, p.Base, p.Single, p.Routed, p.Ratio, p.Ceiling, p.RoutedBytes, p.SingleBytes)
	}
	return nil
}

// routedStepBytes is what a decode step of batch rows at the bench's context reads on one
// rank-rank adapter on all seven projections (single) and routed top-k of n such experts
// (routed): the weights and KV cache, plus the adapter, or the gates of every projection (bf16 on
// the device, as every uploaded weight) and the experts the rows pick. Rows pick uniformly at random (the bench's gates are random), so
// n·(1 - (1 - k/n)^batch) experts are expected per projection: 2 at batch 1, 27.8 of 28 at 64.
func (x *bench) routedStepBytes(batch, n, k, rank int) (single, routed float64) {
	var adapter, gates float64
	for p := model.Proj(0); p < model.NumProj; p++ {
		o, in := x.cfg.ProjShape(p)
		adapter += float64(2 * rank * (o + in) * x.cfg.NumLayers)
		gates += float64(2 * n * in * x.cfg.NumLayers)
	}
	base := x.weightBytes + float64(batch)*x.kvBytes(x.o.ctx)
	picked := float64(n) * (1 - math.Pow(1-float64(k)/float64(n), float64(batch)))
	return base + adapter, base + gates + picked*adapter
}

// deterministicStage measures the deterministic mode (issue 15 item 6, model.BatchInvariant)
// against the default at batch 1 and 64, on the same runner, in this process: the switch drops
// the recorded graphs (cuda.Backend.SetBatchInvariant), so each side runs its own kernels and
// no second process (another 16 GB of weights) is needed for it.
func (x *bench) deterministicStage() error {
	d := &gpuresults.Deterministic{}
	x.res.Deterministic = d
	var bi model.BatchInvariant = x.b
	r, err := x.decodeRunner(64, x.o.ctx)
	if err != nil {
		return err
	}
	d.Available, d.Note = true, "SetBatchInvariant(true) against the default, same runner"
	d.Default, d.On, d.Ratio = map[int]float64{}, map[int]float64{}, map[int]float64{}
	for _, batch := range []int{1, 64} {
		if d.Default[batch], err = x.decode(r, batch, x.o.ctx, nil); err != nil {
			return err
		}
		bi.SetBatchInvariant(true)
		d.On[batch], err = x.decode(r, batch, x.o.ctx, nil)
		bi.SetBatchInvariant(false)
		if err != nil {
			return err
		}
		d.Ratio[batch] = d.On[batch] / d.Default[batch]
		fmt.Printf("deterministic mode, batch %d: %.1f tok/s against %.1f default = %.3f\n", batch, d.On[batch], d.Default[batch], d.Ratio[batch])
	}
	return nil
}

func decodeStep(batch, ctx, pageSize int) *model.Step {
	s := &model.Step{}
	per := (ctx + pageSize) / pageSize
	for i := 0; i < batch; i++ {
		pages := make([]int32, per)
		for j := range pages {
			pages[j] = int32(i*per + j)
		}
		pos := ctx - 1
		s.Tokens = append(s.Tokens, int32(1000+i))
		s.Positions = append(s.Positions, int32(pos))
		s.Slots = append(s.Slots, pages[pos/pageSize]*int32(pageSize)+int32(pos%pageSize))
		s.Seqs = append(s.Seqs, model.SeqRows{Start: i, N: 1, Len: ctx, Pages: pages})
		s.LogitRows = append(s.LogitRows, int32(i))
	}
	return s
}

func prefillStep(n, pageSize int) *model.Step {
	s := &model.Step{}
	pages := make([]int32, (n+pageSize-1)/pageSize)
	for j := range pages {
		pages[j] = int32(j)
	}
	for p := 0; p < n; p++ {
		s.Tokens = append(s.Tokens, int32(p%1000))
		s.Positions = append(s.Positions, int32(p))
		s.Slots = append(s.Slots, int32(p))
	}
	s.Seqs = []model.SeqRows{{Start: 0, N: n, Len: n, Pages: pages}}
	s.LogitRows = []int32{int32(n - 1)}
	return s
}

// randomAdapters makes n adapters of the given rank on targets in every layer.
func randomAdapters(b model.Backend, cfg *model.Config, n, rank int, targets []model.Proj) ([]*model.Adapter, error) {
	maxIn := max(cfg.HiddenSize, cfg.IntermediateSize)
	buf := benchenv.RandomBF16(rank*maxIn*2, 0.02, 7)
	var out []*model.Adapter
	for a := 0; a < n; a++ {
		h := &model.HostAdapter{Name: fmt.Sprintf("adapter%d", a), Modules: make([][model.NumProj]*model.HostLoRA, cfg.NumLayers)}
		for l := range h.Modules {
			for _, p := range targets {
				o, i := cfg.ProjShape(p)
				h.Modules[l][p] = &model.HostLoRA{
					A:    model.HostTensor{Name: "A", DType: model.BF16, Shape: []int{rank, i}, Data: buf[:2*rank*i]},
					B:    model.HostTensor{Name: "B", DType: model.BF16, Shape: []int{o, rank}, Data: buf[:2*rank*o]},
					Rank: rank, Scale: 2,
				}
			}
		}
		ad, err := model.UploadAdapter(b, cfg, h)
		if err != nil {
			return nil, err
		}
		out = append(out, ad)
	}
	return out, nil
}

// measurePrefill times one n-token prompt as one step (warm passes, then the mean of iters)
// and returns seconds per prefill and the FLOPs it does: every projection over n rows, one
// row of logits, and causal attention (QKᵀ and PV over n(n+1)/2 visible pairs per head).
func measurePrefill(r *model.Runner, cfg *model.Config, n, pageSize, warm, iters int, ad *model.Adapter) (sec, flops float64, err error) {
	s := prefillStep(n, pageSize)
	logits := make([]float32, cfg.VocabSize)
	ads := []*model.Adapter{ad}
	for i := 0; i < warm; i++ {
		if err := r.Forward(s, ads, logits); err != nil {
			return 0, 0, err
		}
	}
	start := time.Now()
	for i := 0; i < iters; i++ {
		if err := r.Forward(s, ads, logits); err != nil {
			return 0, 0, err
		}
	}
	sec = time.Since(start).Seconds() / float64(iters)
	var matFlops float64
	for p := model.Proj(0); p < model.NumProj; p++ {
		o, i := cfg.ProjShape(p)
		matFlops += float64(2 * o * i * cfg.NumLayers * n)
	}
	matFlops += float64(2 * cfg.VocabSize * cfg.HiddenSize) // one row of logits
	attnFlops := float64(cfg.NumLayers) * 4 * float64(cfg.NumHeads*cfg.HeadDim) * float64(n) * float64(n+1) / 2
	return sec, matFlops + attnFlops, nil
}

// adapterPrefill is one adapter's cost at time to first token: an n-token prompt on one adapter of
// rank on all seven projections against the same prompt on none, on the tensor-core attention,
// one right after the other on runner r.
func (x *bench) adapterPrefill(r *model.Runner, n, rank int) error {
	x.b.SetPrefillAttention(true)
	ads, err := randomAdapters(x.b, x.cfg, 1, rank, benchenv.AllProj())
	if err != nil {
		return err
	}
	defer ads[0].Free(x.b)
	base, _, err := measurePrefill(r, x.cfg, n, x.pageSize, 2, 5, nil)
	if err != nil {
		return err
	}
	with, _, err := measurePrefill(r, x.cfg, n, x.pageSize, 2, 5, ads[0])
	if err != nil {
		return err
	}
	x.res.AdapterPrefill = &gpuresults.AdapterPrefill{Tokens: n, Rank: rank, Base: float64(n) / base, Adapter: float64(n) / with, Ratio: base / with}
	fmt.Printf("prefill %d tokens on one rank-%d adapter (all seven projections): %.1f ms against %.1f ms on none = %.3f\n",
		n, rank, with*1e3, base*1e3, base/with)
	x.write()
	return nil
}

// prefillStage measures prefill at each -prefill-tokens length on the tensor-core attention
// kernel, and at each -prefill-cuda-cores length on the CUDA-core kernel too (first, so that a
// fault in the newer kernel leaves them measured), against the cuBLAS GEMM ceiling at the same
// row count (at most 8,192). The runner and KV cache are sized for the longest prompt alone
// (item 7 of issue 15: no decode batch shares the cache here). Each point also times one
// layer's attention launch over the cache the prefill just wrote. Long prompts get fewer
// passes: a 32k prefill is seconds.
func (x *bench) prefillStage() error {
	cfg, b := x.cfg, x.b
	type point struct {
		n  int
		tc bool
	}
	var points []point
	longest := 0
	for _, n := range x.o.prefillSIMT {
		points, longest = append(points, point{n, false}), max(longest, n)
	}
	for _, n := range x.o.prefill {
		points, longest = append(points, point{n, true}), max(longest, n)
	}
	if len(points) == 0 {
		return nil
	}
	r, err := model.NewRunner(cfg, b, x.w, model.RunnerOptions{MaxTokens: longest, MaxLogitRows: 1, MaxContext: longest,
		KV: model.KVSpec{Pages: (longest + x.pageSize - 1) / x.pageSize, PageSize: x.pageSize}})
	if err != nil {
		return err
	}
	qd := cfg.NumHeads * cfg.HeadDim
	q, out := b.Alloc(longest, qd), b.Alloc(longest, qd)
	defer b.Free(q)
	defer b.Free(out)
	rng := rand.New(rand.NewPCG(9, 10))
	vals := make([]float32, longest*qd)
	for i := range vals {
		vals[i] = float32(rng.NormFloat64())
	}
	if err := b.Write(q, vals); err != nil {
		return err
	}
	ap := model.AttnParams{Heads: cfg.NumHeads, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim, Scale: float32(1 / math.Sqrt(float64(cfg.HeadDim)))}
	for _, pt := range points {
		b.SetPrefillAttention(pt.tc)
		warm, iters := 2, 5
		switch {
		case pt.n > 8192:
			warm, iters = 1, 1
		case pt.n > 2048:
			warm, iters = 1, 3
		}
		sec, flops, err := measurePrefill(r, cfg, pt.n, x.pageSize, warm, iters, nil)
		if err != nil {
			return fmt.Errorf("prefill %d: %w", pt.n, err)
		}
		// One layer's attention alone over the cache the prefill just wrote.
		if err := b.Prepare(prefillStep(pt.n, x.pageSize)); err != nil {
			return err
		}
		qn, on := q.Slice(0, pt.n), out.Slice(0, pt.n)
		b.Attention(on, qn, 0, ap)
		if err := b.Sync(); err != nil {
			return err
		}
		reps := max(1, min(20, 20*2048*2048/(pt.n*pt.n)))
		t0 := time.Now()
		for i := 0; i < reps; i++ {
			b.Attention(on, qn, 0, ap)
		}
		if err := b.Sync(); err != nil {
			return err
		}
		kernel := "cuda-cores"
		if pt.tc {
			kernel = "tensor-cores"
		}
		gemm := x.res.GEMMFlopsByRows[min(pt.n, 8192)]
		if gemm == 0 {
			gemm = x.res.GEMMFlops
		}
		p := gpuresults.PrefillPoint{Tokens: pt.n, Kernel: kernel, Seconds: sec, TokensPerS: float64(pt.n) / sec, FLOPs: flops / sec, RatioToGEMM: flops / sec / gemm,
			AttnLayerMS: time.Since(t0).Seconds() / float64(reps) * 1e3}
		x.res.Prefill = append(x.res.Prefill, p)
		if pt.n == 2048 && (x.res.Prefill2048 == nil || p.RatioToGEMM > x.res.Prefill2048["ratio_to_gemm"]) {
			x.res.Prefill2048 = map[string]float64{"seconds": sec, "tokens_per_s": p.TokensPerS, "flop_per_s": p.FLOPs, "ratio_to_gemm": p.RatioToGEMM}
		}
		fmt.Printf("prefill %d tokens, %s attention: %.1f ms, %.0f tok/s, %.0f TFLOP/s = %.3f of cuBLAS GEMM, attention %.3f ms/layer\n",
			pt.n, kernel, sec*1e3, p.TokensPerS, p.FLOPs/1e12, p.RatioToGEMM, p.AttnLayerMS)
		x.write()
	}
	if slices.Contains(x.o.prefill, 2048) {
		if err := x.adapterPrefill(r, 2048, 16); err != nil {
			return fmt.Errorf("prefill on an adapter: %w", err)
		}
	}
	fmt.Printf("\n| prompt | attention kernel | prefill ms | tok/s | TFLOP/s | ÷ cuBLAS GEMM | attention ms/layer | attention TFLOP/s |\n|---|---|---|---|---|---|---|---|\n")
	sorted := slices.Clone(x.res.Prefill)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Tokens < sorted[j].Tokens })
	for _, p := range sorted {
		attn := 4 * float64(qd) * float64(p.Tokens) * float64(p.Tokens+1) / 2
		fmt.Printf("| %d | %s | %.1f | %.0f | %.0f | %.3f | %.3f | %.0f |\n", p.Tokens, p.Kernel, p.Seconds*1e3, p.TokensPerS, p.FLOPs/1e12,
			p.RatioToGEMM, p.AttnLayerMS, attn/(p.AttnLayerMS/1e3)/1e12)
	}
	return nil
}
