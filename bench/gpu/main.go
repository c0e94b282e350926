//go:build cuda

// Command gpu measures the CUDA backend where the issue asks, every ratio against a baseline
// measured in the same run: batch-1 decode against the HBM roofline (device copy bandwidth),
// decode throughput over batch sizes, 64 requests on 64 distinct rank-16 adapters against the
// same batch without adapters, and a 2,048-token prefill against a bare cuBLAS GEMM. Weights
// are random bf16 in Llama-3-8B (or ~1B) shape. Run on the GPU machine:
//
//	make kernels && go run -tags cuda ./bench/gpu -shape 8b -out bench/results/gpu.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/loraplex/loraplex/bench/internal/benchenv"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/model"
)

var shapes = map[string]string{
	"8b": `{"architectures":["LlamaForCausalLM"],"vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":8192,"rope_theta":500000,"rms_norm_eps":1e-5,"tie_word_embeddings":false}`,
	"1b": `{"architectures":["LlamaForCausalLM"],"vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":8192,"rope_theta":500000,"rms_norm_eps":1e-5,"tie_word_embeddings":true}`,
}

var onlyDecode1, hostLogits bool

// Result is what the run writes.
type Result struct {
	Device        string             `json:"device"`
	Shape         string             `json:"shape"`
	CopyBandwidth float64            `json:"copy_bandwidth_bytes_per_s"`
	GEMMFlops     float64            `json:"cublas_gemm_flop_per_s"`
	Batch1        map[string]float64 `json:"batch1_decode"`
	Sweep         map[int]float64    `json:"decode_tokens_per_s_by_batch"`
	Adapters      map[string]float64 `json:"adapters_64_distinct_rank16"`
	Prefill       map[string]float64 `json:"prefill_2048"`
}

func main() {
	shape := flag.String("shape", "8b", "8b or 1b")
	out := flag.String("out", "", "write JSON results here")
	steps := flag.Int("steps", 20, "timed decode steps per point")
	ctx := flag.Int("ctx", 128, "context length of decode sequences")
	flag.BoolVar(&hostLogits, "host-logits", false, "decode copies every logits row to the host (the CPU-sampling path) instead of sampling greedily on the device")
	only := flag.String("only", "", "decode1: only batch-1 decode (for profilers); breakdown: per-op decode timings; router: routed decode (8 and 28 experts, top-2); prefill: prefill at -prefill-tokens on both attention kernels")
	prefillTokens := flag.String("prefill-tokens", "2048,8192", "with -only prefill: prompt lengths, each one step")
	flag.Parse()
	if *only == "prefill" {
		if err := prefillBench(*shape, *prefillTokens); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	onlyDecode1 = *only == "decode1"
	if *only == "breakdown" || *only == "router" {
		cfg, _ := model.ParseConfig([]byte(shapes[*shape]))
		b, err := cuda.New(0)
		if err == nil && *only == "router" {
			err = routerBench(b, cfg, *steps, *ctx)
		} else if err == nil {
			err = breakdown(b, cfg)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*shape, *out, *steps, *ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(shape, out string, steps, ctx int) error {
	cfg, err := model.ParseConfig([]byte(shapes[shape]))
	if err != nil {
		return err
	}
	b, err := cuda.New(0)
	if err != nil {
		return err
	}
	res := Result{Device: b.Name(), Shape: shape, Batch1: map[string]float64{}, Sweep: map[int]float64{}, Adapters: map[string]float64{}, Prefill: map[string]float64{}}
	if res.CopyBandwidth, err = b.MeasureCopyBandwidth(1<<30, 20); err != nil {
		return err
	}
	if res.GEMMFlops, err = b.MeasureGEMM(2048, cfg.IntermediateSize, cfg.HiddenSize, 20); err != nil {
		return err
	}
	fmt.Printf("device %s: copy %.0f GB/s (read+write), cuBLAS bf16 GEMM %.0f TFLOP/s\n", res.Device, res.CopyBandwidth/1e9, res.GEMMFlops/1e12)

	t0 := time.Now()
	src := benchenv.NewRandomSource(cfg)
	w, err := model.UploadWeights(src, cfg, b)
	if err != nil {
		return err
	}
	src.Release()
	fmt.Printf("weights uploaded in %.1fs\n", time.Since(t0).Seconds())
	const maxBatch = 256
	pageSize := 16
	pagesPerSeq := (max(ctx+steps+8, 2048+8) + pageSize - 1) / pageSize
	r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: 2048, MaxLogitRows: maxBatch, MaxContext: 4096,
		KV: model.KVSpec{Pages: max(maxBatch*((ctx+steps+pageSize)/pageSize+1), pagesPerSeq), PageSize: pageSize}})
	if err != nil {
		return err
	}

	// Bytes one decode step must read at batch 1: every weight matrix once (the embedding only
	// one row) plus the keys and values of the context.
	var weightBytes float64
	for p := model.Proj(0); p < model.NumProj; p++ {
		o, i := cfg.ProjShape(p)
		weightBytes += float64(2 * o * i * cfg.NumLayers)
	}
	weightBytes += float64(2 * cfg.VocabSize * cfg.HiddenSize) // lm_head
	kvBytes := float64(2 * 2 * cfg.NumLayers * ctx * cfg.NumKVHeads * cfg.HeadDim)

	decode := func(batch int, adapters []*model.Adapter) (float64, error) {
		s := decodeStep(batch, ctx, pageSize)
		ads := make([]*model.Adapter, batch)
		if adapters != nil {
			for i := range ads {
				ads[i] = adapters[i%len(adapters)]
			}
		}
		// The engine's path on this backend: greedy rows sampled on the device, only the
		// chosen tokens come back (with -host-logits, all logits are copied to the host instead).
		logits := make([]float32, batch*cfg.VocabSize)
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
		start := time.Now()
		for i := 0; i < steps; i++ {
			if err := step(); err != nil {
				return 0, err
			}
		}
		return float64(batch*steps) / time.Since(start).Seconds(), nil
	}

	b.SetGraphs(false)
	direct, err := decode(1, nil)
	if err != nil {
		return err
	}
	b.SetGraphs(true)
	tps, err := decode(1, nil)
	if err != nil {
		return err
	}
	roof := res.CopyBandwidth / (weightBytes + kvBytes)
	res.Batch1 = map[string]float64{"tokens_per_s": tps, "tokens_per_s_without_graphs": direct, "roofline_tokens_per_s": roof, "ratio": tps / roof,
		"weight_bytes": weightBytes, "kv_bytes": kvBytes, "context": float64(ctx)}
	fmt.Printf("batch 1 decode: %.1f tok/s with CUDA graphs (%.1f without), roofline %.1f tok/s (%.3g B per token), ratio %.2f\n", tps, direct, roof, weightBytes+kvBytes, tps/roof)
	if onlyDecode1 {
		return b.Err()
	}
	for _, bs := range []int{1, 2, 4, 8, 16, 32, 64, 128, 256} {
		tps, err := decode(bs, nil)
		if err != nil {
			return err
		}
		res.Sweep[bs] = tps
		fmt.Printf("batch %3d decode: %8.1f tok/s\n", bs, tps)
	}

	t0 = time.Now()
	adapters, err := randomAdapters(b, cfg, 64, 16)
	if err != nil {
		return err
	}
	fmt.Printf("64 rank-16 adapters uploaded in %.1fs\n", time.Since(t0).Seconds())
	base64, err := decode(64, nil)
	if err != nil {
		return err
	}
	mixed, err := decode(64, adapters)
	if err != nil {
		return err
	}
	res.Adapters = map[string]float64{"base_tokens_per_s": base64, "mixed_tokens_per_s": mixed, "ratio": mixed / base64}
	fmt.Printf("batch 64: base %.1f tok/s, 64 distinct adapters %.1f tok/s, ratio %.3f\n", base64, mixed, mixed/base64)

	// Prefill: one 2,048-token sequence in one step.
	const n = 2048
	sec, flops, err := measurePrefill(r, cfg, n, pageSize)
	if err != nil {
		return err
	}
	res.Prefill = map[string]float64{"seconds": sec, "tokens_per_s": n / sec, "flop_per_s": flops / sec, "ratio_to_gemm": flops / sec / res.GEMMFlops}
	fmt.Printf("prefill %d tokens: %.1f ms, %.0f tok/s, %.0f TFLOP/s = %.2f of cuBLAS GEMM\n", n, sec*1e3, n/sec, flops/sec/1e12, flops/sec/res.GEMMFlops)
	if err := b.Err(); err != nil {
		return err
	}
	if out != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		return os.WriteFile(out, data, 0o644)
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

// randomAdapters makes n adapters of the given rank on all seven projections of every layer.
func randomAdapters(b model.Backend, cfg *model.Config, n, rank int) ([]*model.Adapter, error) {
	maxIn := max(cfg.HiddenSize, cfg.IntermediateSize)
	buf := benchenv.RandomBF16(rank*maxIn*2, 0.02, 7)
	var out []*model.Adapter
	for a := 0; a < n; a++ {
		h := &model.HostAdapter{Name: fmt.Sprintf("adapter%d", a), Modules: make([][model.NumProj]*model.HostLoRA, cfg.NumLayers)}
		for l := range h.Modules {
			for p := model.Proj(0); p < model.NumProj; p++ {
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

// measurePrefill times one n-token prompt as one step (two warm-up passes, the mean of five)
// and returns seconds per prefill and the FLOPs it does: every projection over n rows, one
// row of logits, and causal attention (QKᵀ and PV over n(n+1)/2 visible pairs per head).
func measurePrefill(r *model.Runner, cfg *model.Config, n, pageSize int) (sec, flops float64, err error) {
	s := prefillStep(n, pageSize)
	logits := make([]float32, cfg.VocabSize)
	ads := []*model.Adapter{nil}
	for i := 0; i < 2; i++ {
		if err := r.Forward(s, ads, logits); err != nil {
			return 0, 0, err
		}
	}
	const iters = 5
	start := time.Now()
	for i := 0; i < iters; i++ {
		if err := r.Forward(s, ads, logits); err != nil {
			return 0, 0, err
		}
	}
	sec = time.Since(start).Seconds() / iters
	var matFlops float64
	for p := model.Proj(0); p < model.NumProj; p++ {
		o, i := cfg.ProjShape(p)
		matFlops += float64(2 * o * i * cfg.NumLayers * n)
	}
	matFlops += float64(2 * cfg.VocabSize * cfg.HiddenSize) // one row of logits
	attnFlops := float64(cfg.NumLayers) * 4 * float64(cfg.NumHeads*cfg.HeadDim) * float64(n) * float64(n+1) / 2
	return sec, matFlops + attnFlops, nil
}

// prefillBench measures prefill at each prompt length on both prefill attention kernels (CUDA
// cores, then tensor cores) in one process, against the cuBLAS GEMM ceiling measured first.
// The runner and KV cache are sized for the longest prompt alone (item 7 of issue 15: no
// decode batch shares the cache here). Each point also times one layer's attention launch.
func prefillBench(shape, lengths string) error {
	cfg, err := model.ParseConfig([]byte(shapes[shape]))
	if err != nil {
		return err
	}
	var ns []int
	longest := 0
	for _, f := range strings.Split(lengths, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			return fmt.Errorf("-prefill-tokens: %q is not a prompt length of at least 2", f)
		}
		ns, longest = append(ns, n), max(longest, n)
	}
	b, err := cuda.New(0)
	if err != nil {
		return err
	}
	gemm, err := b.MeasureGEMM(2048, cfg.IntermediateSize, cfg.HiddenSize, 20)
	if err != nil {
		return err
	}
	fmt.Printf("device %s: cuBLAS bf16 GEMM %.0f TFLOP/s\n", b.Name(), gemm/1e12)
	src := benchenv.NewRandomSource(cfg)
	w, err := model.UploadWeights(src, cfg, b)
	if err != nil {
		return err
	}
	src.Release()
	const pageSize = 16
	r, err := model.NewRunner(cfg, b, w, model.RunnerOptions{MaxTokens: longest, MaxLogitRows: 1, MaxContext: longest,
		KV: model.KVSpec{Pages: (longest + pageSize - 1) / pageSize, PageSize: pageSize}})
	if err != nil {
		return err
	}
	qd := cfg.NumHeads * cfg.HeadDim
	q, out := b.Alloc(longest, qd), b.Alloc(longest, qd)
	rng := rand.New(rand.NewPCG(9, 10))
	vals := make([]float32, longest*qd)
	for i := range vals {
		vals[i] = float32(rng.NormFloat64())
	}
	if err := b.Write(q, vals); err != nil {
		return err
	}
	ap := model.AttnParams{Heads: cfg.NumHeads, KVHeads: cfg.NumKVHeads, HeadDim: cfg.HeadDim, Scale: float32(1 / math.Sqrt(float64(cfg.HeadDim)))}
	type row struct {
		n           int
		kernel      string
		sec, flops  float64
		attnLayerMS float64
	}
	var rows []row
	for _, n := range ns {
		for _, tc := range []bool{false, true} {
			b.SetPrefillAttention(tc)
			sec, flops, err := measurePrefill(r, cfg, n, pageSize)
			if err != nil {
				return err
			}
			// One layer's attention alone over the cache the prefill just wrote.
			s := prefillStep(n, pageSize)
			if err := b.Prepare(s); err != nil {
				return err
			}
			qn, on := q.Slice(0, n), out.Slice(0, n)
			b.Attention(on, qn, 0, ap)
			if err := b.Sync(); err != nil {
				return err
			}
			const reps = 20
			t0 := time.Now()
			for i := 0; i < reps; i++ {
				b.Attention(on, qn, 0, ap)
			}
			if err := b.Sync(); err != nil {
				return err
			}
			kernel := "cuda-cores"
			if tc {
				kernel = "tensor-cores"
			}
			x := row{n, kernel, sec, flops, time.Since(t0).Seconds() / reps * 1e3}
			fmt.Printf("prefill %d tokens, %s attention: %.1f ms, %.3f of cuBLAS GEMM, attention %.3f ms/layer\n", n, kernel, sec*1e3, flops/sec/gemm, x.attnLayerMS)
			rows = append(rows, x)
		}
	}
	fmt.Printf("\n| prompt | attention kernel | prefill ms | tok/s | TFLOP/s | ÷ cuBLAS GEMM | attention ms/layer | attention TFLOP/s |\n|---|---|---|---|---|---|---|---|\n")
	for _, x := range rows {
		attn := 4 * float64(qd) * float64(x.n) * float64(x.n+1) / 2
		fmt.Printf("| %d | %s | %.1f | %.0f | %.0f | %.3f | %.3f | %.0f |\n", x.n, x.kernel, x.sec*1e3, float64(x.n)/x.sec, x.flops/x.sec/1e12,
			x.flops/x.sec/gemm, x.attnLayerMS, attn/(x.attnLayerMS/1e3)/1e12)
	}
	return b.Err()
}
