package serve

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// refSampler is the CPU backend plus device-style sampling through model.SampleReference, so
// the engine's device-sampling path (ForwardSample, SampleRow building, fromDevice) runs in CI.
type refSampler struct {
	*cpu.Backend
	calls atomic.Int64
}

func (r *refSampler) Sample(logits model.Tensor, rows []model.SampleRow, out []model.SampleResult) error {
	r.calls.Add(1)
	V := logits.Cols
	buf := make([]float32, logits.Rows*V)
	if err := r.Read(logits, buf); err != nil {
		return err
	}
	for i := range rows {
		model.SampleReference(buf[i*V:(i+1)*V], &rows[i], &out[i])
	}
	return nil
}

// newEngineOn serves a fixture model with its adapters on b (a CPU backend or a wrapper).
func newEngineOn(t *testing.T, name string, b model.Backend, opt Options) *Engine {
	t.Helper()
	return fixtureEngine(t, name, b, nil, opt, fixture.Adapters)
}

func newRefEngine(t *testing.T, name string, opt Options) (*Engine, *refSampler) {
	rs := &refSampler{Backend: cpu.New(2)}
	t.Cleanup(rs.Close)
	return newEngineOn(t, name, rs, opt), rs
}

// TestDeviceSamplingMatchesReference: with a device sampler, concurrent greedy requests (base
// and adapters, chunked prefill) still produce exactly the transformers + peft tokens, with
// logprobs of the reference logits.
func TestDeviceSamplingMatchesReference(t *testing.T) {
	cases := loadCases(t, "llama")
	e, rs := newRefEngine(t, "llama", Options{MaxNumSeqs: 4, MaxBatchedTokens: 8})
	var wg sync.WaitGroup
	errs := make(chan error, len(cases))
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := greedyParams(len(c.Steps))
			p.Logprobs = 2
			s, err := e.Generate(context.Background(), Request{Model: c.Adapter, Prompt: c.Prompt, Params: p})
			if err != nil {
				errs <- err
				return
			}
			ev, err := s.Collect(context.Background())
			if err != nil {
				errs <- err
				return
			}
			for i, st := range c.Steps {
				if ev.Tokens[i] != st.Token {
					errs <- fmt.Errorf("adapter %q step %d: token %d, reference %d", c.Adapter, i, ev.Tokens[i], st.Token)
					return
				}
				want := logSoftmax(st.Logits, st.Token)
				if ev.Logprobs[i].Token != st.Token || math.Abs(float64(ev.Logprobs[i].Logprob-want)) > 1e-3 {
					errs <- fmt.Errorf("adapter %q step %d: logprob %+v, reference %v", c.Adapter, i, ev.Logprobs[i], want)
					return
				}
				if len(ev.Top[i]) != 2 || ev.Top[i][0].Token != st.Token {
					errs <- fmt.Errorf("adapter %q step %d: top %+v", c.Adapter, i, ev.Top[i])
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
	if rs.calls.Load() == 0 {
		t.Fatal("the engine never used the device sampler")
	}
}

// TestDeviceSamplingPenaltiesAndStops: greedy requests with penalties, min_tokens and stop ids
// give the same tokens, finish and logprobs on the host and device paths; seeded stochastic
// requests are reproducible on the device path and respect banned ids.
func TestDeviceSamplingPenaltiesAndStops(t *testing.T) {
	host := newEngineOn(t, "qwen3", cpu.New(2), Options{})
	dev, _ := newRefEngine(t, "qwen3", Options{})
	cases := loadCases(t, "qwen3")
	c := cases[1]
	stopAt := c.Steps[2].Token
	for i, p := range []SamplingParams{
		{MaxTokens: 10, RepetitionPenalty: 1.5, FrequencyPenalty: 0.4, PresencePenalty: 0.3, Logprobs: 3},
		{MaxTokens: 8, StopTokenIDs: []int{stopAt}, Logprobs: -1},
		{MaxTokens: 6, MinTokens: 6, StopTokenIDs: []int{stopAt}, FrequencyPenalty: 1},
	} {
		a := generate(t, host, Request{Prompt: c.Prompt, Params: p})
		b := generate(t, dev, Request{Prompt: c.Prompt, Params: p})
		if fmt.Sprint(a.Tokens) != fmt.Sprint(b.Tokens) || a.Finish != b.Finish || fmt.Sprint(a.StopReason) != fmt.Sprint(b.StopReason) {
			t.Fatalf("params %d: host %v (%s %v), device %v (%s %v)", i, a.Tokens, a.Finish, a.StopReason, b.Tokens, b.Finish, b.StopReason)
		}
		if len(a.Logprobs) != len(b.Logprobs) || len(a.Top) != len(b.Top) {
			t.Fatalf("params %d: host %d logprobs %d tops, device %d and %d", i, len(a.Logprobs), len(a.Top), len(b.Logprobs), len(b.Top))
		}
		for j := range a.Logprobs {
			if a.Logprobs[j].Token != b.Logprobs[j].Token || math.Abs(float64(a.Logprobs[j].Logprob-b.Logprobs[j].Logprob)) > 1e-4 {
				t.Fatalf("params %d step %d: host logprob %+v, device %+v", i, j, a.Logprobs[j], b.Logprobs[j])
			}
		}
		for j := range a.Top {
			if fmt.Sprint(a.Top[j]) != fmt.Sprint(b.Top[j]) && len(a.Top[j]) > 0 {
				for k := range a.Top[j] {
					if a.Top[j][k].Token != b.Top[j][k].Token || math.Abs(float64(a.Top[j][k].Logprob-b.Top[j][k].Logprob)) > 1e-4 {
						t.Fatalf("params %d step %d: host top %+v, device %+v", i, j, a.Top[j], b.Top[j])
					}
				}
			}
		}
	}
	seed := uint64(42)
	p := SamplingParams{MaxTokens: 12, Temperature: 1.2, TopK: 20, TopP: 0.9, MinP: 0.01, RepetitionPenalty: 1.1,
		MinTokens: 12, StopTokenIDs: []int{stopAt}, Seed: &seed}
	x := generate(t, dev, Request{Prompt: c.Prompt, Params: p})
	y := generate(t, dev, Request{Prompt: c.Prompt, Params: p})
	if fmt.Sprint(x.Tokens) != fmt.Sprint(y.Tokens) || len(x.Tokens) != 12 {
		t.Fatalf("seeded device sampling: %v then %v", x.Tokens, y.Tokens)
	}
	for _, tok := range x.Tokens {
		if tok == stopAt {
			t.Fatalf("banned stop token %d sampled before min_tokens: %v", stopAt, x.Tokens)
		}
	}
}

// BenchmarkHostSample is the host sampler's cost per 128k-vocabulary row (what the device
// sampler replaces, on top of copying the row to the host).
func BenchmarkHostSample(b *testing.B) {
	const vocab = 128256
	r := rand.New(rand.NewPCG(1, 2))
	raw := make([]float32, vocab)
	for i := range raw {
		raw[i] = float32(r.NormFloat64() * 3)
	}
	seed := uint64(1)
	for _, c := range []struct {
		name string
		p    SamplingParams
	}{
		{"greedy", SamplingParams{}},
		{"top-k=50,top-p=0.9", SamplingParams{Temperature: 0.7, TopK: 50, TopP: 0.9}},
		{"top-p=0.95", SamplingParams{Temperature: 1, TopP: 0.95}},
	} {
		b.Run(c.name, func(b *testing.B) {
			c.p.Seed = &seed
			s := newSampler(&c.p, nil)
			l := make([]float32, vocab)
			for b.Loop() {
				copy(l, raw)
				s.sample(l, nil)
			}
		})
	}
}
