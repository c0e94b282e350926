package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// The benchmark model is Llama-shaped with about 100M parameters: hidden 768, 12 layers, 12 heads
// of 64, 4 KV heads, intermediate 2048, vocabulary 32000, embeddings TIED (the lm_head is the
// embedding table). Matrices are BF16 (random, |w| < 0.03), norm weights F32 ones.
// Parameters: 12 x 6,291,456 (layers) + 24,576,000 (embedding = lm_head) = 100,073,472.
const benchConfig = `{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
  "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 4,
  "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
  "tie_word_embeddings": true, "hidden_act": "silu", "torch_dtype": "bfloat16"
}`

const (
	benchPageSize = 16
	benchPages    = 320 // 5120 KV slots: 8 decode sequences of 256 + a 512-token prompt
	benchCtx      = 256 // decode steps attend over this many positions
	benchPrompt   = 512
)

// memSource is an in-memory model.TensorSource.
type memSource map[string]safetensors.Tensor

func (m memSource) Names() []string {
	var ns []string
	for n := range m {
		ns = append(ns, n)
	}
	return ns
}
func (m memSource) Tensor(name string) (safetensors.Tensor, bool) { t, ok := m[name]; return t, ok }
func (m memSource) Where(name string) string                      { return "memory" }

type benchModel struct {
	cfg       *model.Config
	b         *Backend
	r         *model.Runner
	wBytes    int64 // bytes of weight matrices one step streams: every layer matrix + lm_head
	flopsPerT float64
}

var (
	benchOnce sync.Once
	benchM    *benchModel
	benchErr  error
)

func getBenchModel(b *testing.B) *benchModel {
	benchOnce.Do(func() { benchM, benchErr = buildBenchModel() })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchM
}

func buildBenchModel() (*benchModel, error) {
	cfg, err := model.ParseConfig([]byte(benchConfig))
	if err != nil {
		return nil, err
	}
	rng := uint64(0x9e3779b97f4a7c15)
	bf16Mat := func(name string, rows, cols int) safetensors.Tensor {
		data := make([]byte, 2*rows*cols)
		for i := 0; i < len(data); i += 8 {
			rng ^= rng << 13
			rng ^= rng >> 7
			rng ^= rng << 17
			for j := 0; j < 4; j++ {
				u := uint32(rng >> (16 * j) & 0xffff)
				f := (float32(u)/65536 - 0.5) * 0.06
				binary.LittleEndian.PutUint16(data[i+2*j:], uint16(math.Float32bits(f)>>16))
			}
		}
		return safetensors.Tensor{Name: name, DType: "BF16", Shape: []int{rows, cols}, Data: data}
	}
	ones := func(name string, n int) safetensors.Tensor {
		data := make([]byte, 4*n)
		for i := 0; i < n; i++ {
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(1))
		}
		return safetensors.Tensor{Name: name, DType: "F32", Shape: []int{n}, Data: data}
	}
	src := memSource{}
	add := func(t safetensors.Tensor) { src[t.Name] = t }
	add(bf16Mat("model.embed_tokens.weight", cfg.VocabSize, cfg.HiddenSize))
	add(ones("model.norm.weight", cfg.HiddenSize))
	var wBytes int64 = int64(2 * cfg.VocabSize * cfg.HiddenSize) // lm_head (tied)
	for l := 0; l < cfg.NumLayers; l++ {
		pre := fmt.Sprintf("model.layers.%d.", l)
		add(ones(pre+"input_layernorm.weight", cfg.HiddenSize))
		add(ones(pre+"post_attention_layernorm.weight", cfg.HiddenSize))
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := cfg.ProjShape(p)
			add(bf16Mat(pre+p.Block()+"."+p.String()+".weight", out, in))
			wBytes += int64(2 * out * in)
		}
	}
	be := New(0)
	w, err := model.UploadWeights(src, cfg, be)
	if err != nil {
		return nil, err
	}
	r, err := model.NewRunner(cfg, be, w, model.RunnerOptions{MaxTokens: benchPrompt, MaxLogitRows: 8,
		MaxContext: 1024, KV: model.KVSpec{Pages: benchPages, PageSize: benchPageSize}})
	if err != nil {
		return nil, err
	}
	return &benchModel{cfg: cfg, b: be, r: r, wBytes: wBytes, flopsPerT: float64(wBytes)}, nil // 2 flops per bf16 weight = bytes
}

// decodeStep builds a step of batch single-token sequences, each at position ctx-1 (ctx <=
// benchCtx) of its own pages, so attention covers ctx positions. The KV cache contents do not matter for
// speed; the step rewrites the same slots every time.
func decodeStep(batch, ctx int) *model.Step {
	s := &model.Step{}
	per := benchCtx / benchPageSize
	for i := 0; i < batch; i++ {
		pages := make([]int32, per)
		for p := range pages {
			pages[p] = int32(i*per + p)
		}
		pos := ctx - 1
		s.Tokens = append(s.Tokens, int32(1000+37*i))
		s.Positions = append(s.Positions, int32(pos))
		s.Slots = append(s.Slots, pages[pos/benchPageSize]*benchPageSize+int32(pos%benchPageSize))
		s.Seqs = append(s.Seqs, model.SeqRows{Start: i, N: 1, Len: ctx, Pages: pages})
		s.LogitRows = append(s.LogitRows, int32(i))
	}
	return s
}

// prefillStep is one sequence's whole prompt in one step, logits for its last row only.
func prefillStep(n int) *model.Step {
	s := &model.Step{}
	first := 8 * benchCtx / benchPageSize // pages after the decode sequences'
	pages := make([]int32, (n+benchPageSize-1)/benchPageSize)
	for p := range pages {
		pages[p] = int32(first + p)
	}
	for i := 0; i < n; i++ {
		s.Tokens = append(s.Tokens, int32((i*7919)%32000))
		s.Positions = append(s.Positions, int32(i))
		s.Slots = append(s.Slots, pages[i/benchPageSize]*benchPageSize+int32(i%benchPageSize))
	}
	s.Seqs = []model.SeqRows{{Start: 0, N: n, Len: n, Pages: pages}}
	s.LogitRows = []int32{int32(n - 1)}
	return s
}

// Copy bandwidth, measured right before each benchmark (the machine may be shared, so the
// roofline is taken under the same conditions as the number it divides): GOMAXPROCS goroutines
// copy disjoint parts of a 256 MiB buffer into another with copy(); bandwidth = (bytes read +
// bytes written) / time, i.e. 2 x 256 MiB per pass, best of 5 passes. Go's memmove uses
// non-temporal stores for copies this large, so that count is the real DRAM traffic (no
// write-allocate reads). readBW is the read-only stream rate (the AVX2 dot kernel over the same
// 256 MiB), which is what a decode step actually does; it is reported, not used as roofline.
var (
	bwSrc, bwDst   []byte
	copyBW, readBW float64 // bytes/s, this measurement
	maxCopyBW      float64 // bytes/s, best measurement so far in this process
	maxReadBW      float64
	bwBytes        = 256 << 20
	bwSink         float32
	bwMu           sync.Mutex
)

func measureBandwidth() {
	workers := runtime.GOMAXPROCS(0)
	if bwSrc == nil {
		bwSrc, bwDst = make([]byte, bwBytes), make([]byte, bwBytes)
		for i := 0; i < 4096; i += 4 {
			binary.LittleEndian.PutUint32(bwSrc[i:], math.Float32bits(1+float32(i)/4096))
		}
		for n := 4096; n < bwBytes; n *= 2 { // fill (and fault in) by doubling
			copy(bwSrc[n:], bwSrc[:n])
		}
		copy(bwDst, bwSrc)
	}
	src, dst := bwSrc, bwDst
	best := time.Duration(math.MaxInt64)
	for rep := 0; rep < 5; rep++ {
		t0 := time.Now()
		parallel(workers, bwBytes, func(lo, hi int) { copy(dst[lo:hi], src[lo:hi]) })
		best = min(best, time.Since(t0))
	}
	copyBW = 2 * float64(bwBytes) / best.Seconds()
	maxCopyBW = max(maxCopyBW, copyBW)

	f := unsafe.Slice((*float32)(unsafe.Pointer(&src[0])), bwBytes/4)
	x := make([]float32, 4096)
	best = time.Duration(math.MaxInt64)
	for rep := 0; rep < 5; rep++ {
		t0 := time.Now()
		parallel(workers, len(f)/4096, func(lo, hi int) {
			var s float32
			for j := lo; j < hi; j++ {
				s += dotF32(x, f[j*4096:(j+1)*4096])
			}
			bwMu.Lock()
			bwSink += s
			bwMu.Unlock()
		})
		best = min(best, time.Since(t0))
	}
	readBW = float64(bwBytes) / best.Seconds()
	maxReadBW = max(maxReadBW, readBW)
}

func parallel(workers, total int, fn func(lo, hi int)) {
	var wg sync.WaitGroup
	per := (total + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := min(total, w*per), min(total, (w+1)*per)
		wg.Add(1)
		go func() { defer wg.Done(); fn(lo, hi) }()
	}
	wg.Wait()
}

// BenchmarkBandwidth reports the two memory bandwidths the roofline uses (copy) or could use
// (read-only streaming, which is what a decode step does).
func BenchmarkBandwidth(b *testing.B) {
	for i := 0; i < b.N; i++ {
		measureBandwidth()
	}
	b.ReportMetric(copyBW/1e9, "copyGB/s")
	b.ReportMetric(readBW/1e9, "readGB/s")
}

// BenchmarkDecode runs decode steps of batch sequences (one token each, each attending over
// benchCtx = 256 positions) through Runner.Forward.
// roofline_ratio = (weight bytes per step / step time) / copy bandwidth: the fraction of the
// memory roofline reached if each step had to stream every weight matrix once.
// cpu_util = process CPU time / wall time (2 = both workers busy all the time; less means the
// step waited, or the machine was shared and the benchmark was descheduled).
func BenchmarkDecode(b *testing.B) {
	for _, batch := range []int{1, 8} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchDecode(b, batch, benchCtx) })
	}
}

// BenchmarkDecodeShortCtx is BenchmarkDecode with 16 positions of context: attention is then
// negligible and the step is the weight stream plus per-op overhead.
func BenchmarkDecodeShortCtx(b *testing.B) {
	for _, batch := range []int{1, 8} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchDecode(b, batch, 16) })
	}
}

func benchDecode(b *testing.B, batch, ctx int) {
	m := getBenchModel(b)
	measureBandwidth()
	s := decodeStep(batch, ctx)
	adapters := make([]*model.Adapter, batch)
	logits := make([]float32, batch*m.cfg.VocabSize)
	if err := m.r.Forward(s, adapters, logits); err != nil { // warm up
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	bestStep := time.Duration(math.MaxInt64)
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := m.r.Forward(s, adapters, logits); err != nil {
			b.Fatal(err)
		}
		bestStep = min(bestStep, time.Since(t0))
	}
	cpu := cpuTime() - cpu0
	sec := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(batch)/sec, "tokens/s")
	b.ReportMetric(float64(m.wBytes)/sec/1e9, "weightGB/s")
	b.ReportMetric(float64(m.wBytes)/sec/copyBW, "roofline_ratio")
	b.ReportMetric(float64(m.wBytes)/sec/readBW, "read_roofline_ratio")
	b.ReportMetric(cpu.Seconds()/b.Elapsed().Seconds(), "cpu_util")
	reportBest(b, bestStep, batch, m.wBytes)
}

// reportBest reports the fastest single step against the best bandwidth measured so far in the
// process: on a shared machine the mean mixes in time spent descheduled, and the best step and
// the best copy are the two numbers least disturbed by other load.
func reportBest(b *testing.B, step time.Duration, tokens int, wBytes int64) {
	b.ReportMetric(float64(tokens)/step.Seconds(), "best_tokens/s")
	b.ReportMetric(float64(wBytes)/step.Seconds()/maxCopyBW, "best_roofline_ratio")
	b.ReportMetric(maxCopyBW/1e9, "max_copyGB/s")
}

// BenchmarkDecodeMatmuls runs only the step's matrix products (every layer projection and the
// lm_head, on batch rows of x): the weight-streaming part of a decode step, without attention,
// norms or the runner.
func BenchmarkDecodeMatmuls(b *testing.B) {
	for _, batch := range []int{1, 8} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			m := getBenchModel(b)
			measureBandwidth()
			be, w := m.b, m.r.W
			type op struct{ out, x, w model.Tensor }
			var ops []op
			add := func(wt model.Tensor) {
				ops = append(ops, op{be.Alloc(batch, wt.Rows), be.Alloc(batch, wt.Cols), wt})
			}
			for l := range w.Layers {
				for _, wt := range w.Layers[l].W {
					add(wt)
				}
			}
			add(w.LMHead)
			mm := func() {
				for _, o := range ops {
					be.MatMul(o.out, o.x, o.w)
				}
			}
			mm()
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			bestStep := time.Duration(math.MaxInt64)
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				mm()
				bestStep = min(bestStep, time.Since(t0))
			}
			cpu := cpuTime() - cpu0
			sec := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(float64(m.wBytes)/sec/1e9, "weightGB/s")
			b.ReportMetric(float64(m.wBytes)/sec/copyBW, "roofline_ratio")
			b.ReportMetric(float64(m.wBytes)/sec/readBW, "read_roofline_ratio")
			b.ReportMetric(cpu.Seconds()/b.Elapsed().Seconds(), "cpu_util")
			reportBest(b, bestStep, batch, m.wBytes)
		})
	}
}

// cpuTime is the process's user + system time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPrefill runs one 512-token prompt as a single step. It is compute-bound, so besides
// the memory roofline ratio (small by nature) it reports achieved GFLOP/s in the matrices.
func BenchmarkPrefill(b *testing.B) {
	m := getBenchModel(b)
	measureBandwidth()
	s := prefillStep(benchPrompt)
	adapters := make([]*model.Adapter, 1)
	logits := make([]float32, m.cfg.VocabSize)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	bestStep := time.Duration(math.MaxInt64)
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := m.r.Forward(s, adapters, logits); err != nil {
			b.Fatal(err)
		}
		bestStep = min(bestStep, time.Since(t0))
	}
	cpu := cpuTime() - cpu0
	sec := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(cpu.Seconds()/b.Elapsed().Seconds(), "cpu_util")
	// Layer matrices run on all rows, the lm_head on the one logit row.
	lm := float64(2 * m.cfg.VocabSize * m.cfg.HiddenSize)
	flops := (m.flopsPerT-lm)*benchPrompt + lm
	b.ReportMetric(benchPrompt/sec, "tokens/s")
	b.ReportMetric(flops/sec/1e9, "matGFLOP/s")
	b.ReportMetric(float64(m.wBytes)/sec/copyBW, "roofline_ratio")
	b.ReportMetric(flops/bestStep.Seconds()/1e9, "best_matGFLOP/s")
	reportBest(b, bestStep, benchPrompt, m.wBytes)
}

// BenchmarkDot times one kernel call on L1-resident rows of the model's widths.
func BenchmarkDot(b *testing.B) {
	for _, k := range []int{768, 2048} {
		x := make([]float32, k)
		wf := make([]float32, k)
		wb := make([]uint16, k)
		for i := range x {
			x[i], wf[i], wb[i] = float32(i%7)*0.1, float32(i%5)*0.1, 0x3f80
		}
		var sink float32
		for _, c := range []struct {
			name string
			fn   func()
		}{
			{"bf16/generic", func() { sink += dotBF16Generic(x, wb) }},
			{"bf16/dispatch", func() { sink += dotBF16(x, wb) }},
			{"f32/generic", func() { sink += dotF32Generic(x, wf) }},
			{"f32/dispatch", func() { sink += dotF32(x, wf) }},
		} {
			b.Run(fmt.Sprintf("k=%d/%s", k, c.name), func(b *testing.B) {
				b.SetBytes(int64(k * 2))
				for i := 0; i < b.N; i++ {
					c.fn()
				}
			})
		}
		_ = sink
	}
}

// BenchmarkDecodeOneAdapter is decode at batch 8 with every sequence on one rank-16 adapter on
// all seven projections, with the sequences' LoRA segments merged into one (model.SegmentMerger,
// the default) and apart (a segment a sequence: two gemm calls per sequence and projection,
// each handed to every worker), and the same batch without the adapter. Each iteration runs each
// side in turn, so a shared machine's load falls on all three alike: an untimed step that
// rebuilds the side's segment lists (the layout changed), then a timed one that reuses them, as
// consecutive decode steps do. merged_vs_apart is the apart side's time ÷ the merged side's,
// *_vs_base the base's time ÷ the side's (tokens/s against the batch without adapters).
func BenchmarkDecodeOneAdapter(b *testing.B) {
	const batch, rank = 8, 16
	m := getBenchModel(b)
	h := &model.HostAdapter{Name: "one", Modules: make([][model.NumProj]*model.HostLoRA, m.cfg.NumLayers)}
	rng := uint32(12345)
	bf16 := func(n int) []byte {
		data := make([]byte, 2*n)
		for i := 0; i < n; i++ {
			rng = rng*1664525 + 1013904223
			f := (float32(rng>>8)/(1<<24) - 0.5) * 0.04
			binary.LittleEndian.PutUint16(data[2*i:], uint16(math.Float32bits(f)>>16))
		}
		return data
	}
	for l := range h.Modules {
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := m.cfg.ProjShape(p)
			h.Modules[l][p] = &model.HostLoRA{Rank: rank, Scale: 2,
				A: model.HostTensor{Name: "A", DType: model.BF16, Shape: []int{rank, in}, Data: bf16(rank * in)},
				B: model.HostTensor{Name: "B", DType: model.BF16, Shape: []int{out, rank}, Data: bf16(out * rank)}}
		}
	}
	ad, err := model.UploadAdapter(m.b, m.cfg, h)
	if err != nil {
		b.Fatal(err)
	}
	defer m.b.SetSegmentMerge(true)
	s := decodeStep(batch, benchCtx)
	logits := make([]float32, batch*m.cfg.VocabSize)
	none, one := make([]*model.Adapter, batch), make([]*model.Adapter, batch)
	for i := range one {
		one[i] = ad
	}
	sides := []struct {
		ads   []*model.Adapter
		merge bool
	}{{none, true}, {one, false}, {one, true}} // base, apart, merged
	var took [3]time.Duration
	step := func(i int) {
		m.b.SetSegmentMerge(sides[i].merge)
		if err := m.r.Forward(s, sides[i].ads, logits); err != nil { // rebuilds the segment lists
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := m.r.Forward(s, sides[i].ads, logits); err != nil {
			b.Fatal(err)
		}
		took[i] += time.Since(t0)
	}
	for i := range sides {
		step(i) // warm up
	}
	took = [3]time.Duration{}
	b.ResetTimer()
	for range b.N {
		for i := range sides {
			step(i)
		}
	}
	b.ReportMetric(float64(batch*b.N)/took[2].Seconds(), "merged_tokens/s")
	b.ReportMetric(took[1].Seconds()/took[2].Seconds(), "merged_vs_apart")
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "apart_vs_base")
	b.ReportMetric(took[0].Seconds()/took[2].Seconds(), "merged_vs_base")
}
