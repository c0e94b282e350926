package serve

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// referenceChecker is the CPU backend with every Sample call checked against
// model.SampleReference: it copies the logits and rows the engine hands the backend, lets the
// CPU backend sample, and compares each result with the reference's on the copies.
type referenceChecker struct {
	*cpu.Backend
	mu     sync.Mutex
	draws  int // rows sampled
	random int // rows with a stochastic draw
	bad    []string
}

func (c *referenceChecker) Sample(logits model.Tensor, rows []model.SampleRow, out []model.SampleResult) error {
	raw := make([]float32, logits.Rows*logits.Cols)
	if err := c.Read(logits, raw); err != nil {
		return err
	}
	if err := c.Backend.Sample(logits, rows, out); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	V := logits.Cols
	for i := range rows {
		var want model.SampleResult
		model.SampleReference(raw[i*V:(i+1)*V], &rows[i], &want)
		got := out[i]
		if got.Token != want.Token || math.Float32bits(got.Logprob) != math.Float32bits(want.Logprob) || !slices.Equal(got.Top, want.Top) {
			c.bad = append(c.bad, fmt.Sprintf("row %+v: engine %+v, reference %+v", rows[i], got, want))
		}
		c.draws++
		if rows[i].Temperature >= 1e-5 {
			c.random++
		}
	}
	return nil
}

func newCheckedEngine(t *testing.T, name string, opt Options) (*Engine, *referenceChecker) {
	c := &referenceChecker{Backend: cpu.New(2)}
	t.Cleanup(c.Close)
	return fixtureEngine(t, name, c, nil, opt, fixture.Adapters), c
}

// The engine samples exactly model.SampleReference, draw for draw: seeded requests with every
// kind of parameter (T=1 top-p 0.9, top-k, min-p, penalties, min_tokens with stop ids,
// logprobs), running concurrently in shared batches with adapters, each get the reference's
// token and logprobs at every step, and the same seed gives the same tokens again.
func TestEngineSamplesReference(t *testing.T) {
	e, c := newCheckedEngine(t, "qwen3", Options{MaxNumSeqs: 8, MaxBatchedTokens: 16})
	cases := loadCases(t, "qwen3")
	stopAt := cases[1].Steps[2].Token
	params := []SamplingParams{
		{Temperature: 1, TopP: 0.9},
		{Temperature: 1, TopK: 20},
		{Temperature: 0.8, MinP: 0.05, Logprobs: 3},
		{Temperature: 1.2, TopK: 20, TopP: 0.9, MinP: 0.01, RepetitionPenalty: 1.1, FrequencyPenalty: 0.4, PresencePenalty: 0.3, Logprobs: -1},
		{Temperature: 1, MinTokens: 24, StopTokenIDs: []int{stopAt}},
		{RepetitionPenalty: 1.5, FrequencyPenalty: 0.4, PresencePenalty: 0.3, Logprobs: 5},
	}
	run := func() [][]int {
		out := make([][]int, len(params)*len(cases))
		var wg sync.WaitGroup
		for i := range params {
			for j, fc := range cases {
				seed := uint64(1000*i + j)
				p := params[i]
				p.Seed, p.MaxTokens, p.IgnoreEOS = &seed, 24, true
				wg.Add(1)
				go func() {
					defer wg.Done()
					s, err := e.Generate(context.Background(), Request{Model: fc.Adapter, Prompt: fc.Prompt, Params: p})
					if err != nil {
						t.Error(err)
						return
					}
					ev, err := s.Collect(context.Background())
					if err != nil {
						t.Error(err)
						return
					}
					out[i*len(cases)+j] = ev.Tokens
					if p.MinTokens > 0 && slices.Contains(ev.Tokens[:len(ev.Tokens)-1], stopAt) {
						t.Errorf("stop id %d sampled before min_tokens: %v", stopAt, ev.Tokens)
					}
				}()
			}
		}
		wg.Wait()
		return out
	}
	a := run()
	b := run()
	for i := range a {
		if !slices.Equal(a[i], b[i]) {
			t.Errorf("request %d: the same seed gave %v, then %v", i, a[i], b[i])
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.bad[:min(len(c.bad), 5)] {
		t.Error(s)
	}
	if len(c.bad) > 0 || c.random < 1000 {
		t.Fatalf("%d of %d draws (%d stochastic) differ from the reference", len(c.bad), c.draws, c.random)
	}
	t.Logf("%d draws (%d stochastic) equal to model.SampleReference", c.draws, c.random)
}

// TestGreedyMatchesTransformers: concurrent greedy requests (base and adapters, chunked
// prefill) produce exactly the transformers + peft tokens, with logprobs of the reference
// logits, through the one sampling path.
func TestGreedyMatchesTransformers(t *testing.T) {
	cases := loadCases(t, "llama")
	e, c := newCheckedEngine(t, "llama", Options{MaxNumSeqs: 4, MaxBatchedTokens: 8})
	var wg sync.WaitGroup
	errs := make(chan error, len(cases))
	for _, fc := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := greedyParams(len(fc.Steps))
			p.Logprobs = 2
			s, err := e.Generate(context.Background(), Request{Model: fc.Adapter, Prompt: fc.Prompt, Params: p})
			if err != nil {
				errs <- err
				return
			}
			ev, err := s.Collect(context.Background())
			if err != nil {
				errs <- err
				return
			}
			for i, st := range fc.Steps {
				if ev.Tokens[i] != st.Token {
					errs <- fmt.Errorf("adapter %q step %d: token %d, reference %d", fc.Adapter, i, ev.Tokens[i], st.Token)
					return
				}
				want := float32(fixture.LogSoftmaxAt(st.Logits, st.Token))
				if ev.Logprobs[i].Token != st.Token || math.Abs(float64(ev.Logprobs[i].Logprob-want)) > 1e-3 {
					errs <- fmt.Errorf("adapter %q step %d: logprob %+v, reference %v", fc.Adapter, i, ev.Logprobs[i], want)
					return
				}
				if len(ev.Top[i]) != 2 || ev.Top[i][0].Token != st.Token {
					errs <- fmt.Errorf("adapter %q step %d: top %+v", fc.Adapter, i, ev.Top[i])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(c.bad) > 0 || c.draws == 0 {
		t.Fatalf("%d of %d draws differ from the reference: %v", len(c.bad), c.draws, c.bad[:min(len(c.bad), 3)])
	}
}

// stepSequences makes n sequences mid-generation with varied parameters (penalties with a
// history, min_tokens with banned ids, logprobs, a logit_bias), as the loop holds them.
func stepSequences(n, vocab int) []*sequence {
	r := rand.New(rand.NewPCG(3, 4))
	var out []*sequence
	for i := 0; i < n; i++ {
		seed := uint64(i)
		p := SamplingParams{Temperature: float64(i % 3), TopP: 0.9, TopK: 40 * (i % 2), RepetitionPenalty: 1.2,
			FrequencyPenalty: 0.5, MinTokens: 8 * (i % 2), StopTokenIDs: []int{3, 4}, Logprobs: i%4 - 1, Seed: &seed}
		prompt := []int{1, 2, 3, 4, 5}
		if i%3 == 1 {
			p.LogitBias = map[int]float64{5: 3, 9: -100, int(r.IntN(vocab)): 1.5}
		}
		sq := &sequence{params: p, tokens: prompt, promptLen: len(prompt)}
		sq.sampler = newSampler(&sq.params, prompt)
		for j := 0; j < 4; j++ {
			tok := r.IntN(vocab)
			sq.tokens = append(sq.tokens, tok)
			sq.sampler.observe(tok)
		}
		out = append(out, sq)
	}
	return out
}

// The sampling path of a decode step (building the rows, the backend's Sample) allocates
// nothing once warm.
func TestSamplingPathAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates (and sync.Pool drops entries)")
	}
	b := cpu.New(1)
	defer b.Close()
	const vocab, n = 4096, 8
	e := &Engine{eos: map[int]bool{0: true, 7: true}}
	e.stepSeq = stepSequences(n, vocab)
	r := rand.New(rand.NewPCG(1, 2))
	flat := make([]float32, n*vocab)
	for i := range flat {
		flat[i] = float32(r.NormFloat64() * 2)
	}
	lt := b.Alloc(n, vocab)
	step := func() {
		if err := b.Write(lt, flat); err != nil {
			t.Fatal(err)
		}
		rows := e.sampleRows()
		if err := b.Sample(lt, rows, e.sampleOut[:n]); err != nil {
			t.Fatal(err)
		}
	}
	step()
	if a := testing.AllocsPerRun(50, step); a > 0 {
		t.Fatalf("%v allocations per step", a)
	}
}

// BenchmarkSamplingPath is the sampling cost of a decode step of 16 sequences on a
// 128k-vocabulary row (Llama 3's): building the rows and the CPU backend's Sample.
func BenchmarkSamplingPath(b *testing.B) {
	be := cpu.New(1)
	defer be.Close()
	const vocab, n = 128256, 16
	e := &Engine{eos: map[int]bool{0: true}}
	e.stepSeq = stepSequences(n, vocab)
	benchSampleStep(b, be, e, n, vocab)
}

// benchSampleStep times one step's sampling of e.stepSeq's n rows on be: rows built by the
// engine, logits drawn once (normal, sd 3) and written back before every draw.
func benchSampleStep(b *testing.B, be *cpu.Backend, e *Engine, n, vocab int) {
	r := rand.New(rand.NewPCG(1, 2))
	flat := make([]float32, n*vocab)
	for i := range flat {
		flat[i] = float32(r.NormFloat64() * 3)
	}
	lt := be.Alloc(n, vocab)
	b.ReportAllocs()
	for b.Loop() {
		if err := be.Write(lt, flat); err != nil {
			b.Fatal(err)
		}
		if err := be.Sample(lt, e.sampleRows(), e.sampleOut[:n]); err != nil {
			b.Fatal(err)
		}
	}
}
