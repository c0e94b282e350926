package serve

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loraplex/loraplex/internal/fixture"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/tokenizer"
)

type fixtureCase = fixture.Case

func fixtureDir(name string) string { return fixture.Dir(name) }

func loadCases(t testing.TB, name string) []fixtureCase { return fixture.Cases(t, name) }

// newTestEngine serves a fixture model with its four adapters on the CPU backend.
func newTestEngine(t testing.TB, name string, tok *tokenizer.Tokenizer, opt Options) *Engine {
	t.Helper()
	b := cpu.New(2)
	t.Cleanup(b.Close)
	return fixtureEngine(t, name, b, tok, opt, fixture.Adapters)
}

// fixtureEngine serves a fixture model on b with the named fixture adapters loaded.
func fixtureEngine(t testing.TB, name string, b model.Backend, tok *tokenizer.Tokenizer, opt Options, adapters []string) *Engine {
	t.Helper()
	cfg, w := fixture.LoadModel(t, fixtureDir(name), b)
	opt.ModelName = name
	e, err := NewEngine(cfg, b, w, tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	for _, a := range adapters {
		if err := e.LoadAdapter(a, fixture.AdapterDir(name, a)); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func greedyParams(n int) SamplingParams {
	return SamplingParams{MaxTokens: n, IgnoreEOS: true}
}

// TestConcurrentRequestsMatchReference submits every fixture case at once, so base and adapter
// requests share batches, and checks each gets exactly the tokens transformers + peft produced.
// Small budgets force chunked prefill, and a tiny KV cache forces preemption and recompute,
// with prefix caching on (the default: the second round of every case finds pages cached) and off.
func TestConcurrentRequestsMatchReference(t *testing.T) {
	cases := loadCases(t, "llama")
	for _, opt := range []Options{
		{},
		{MaxNumSeqs: 4, MaxBatchedTokens: 5},
		{MaxNumSeqs: 8, MaxBatchedTokens: 16, PageSize: 2, MaxModelLen: 32, KVCacheTokens: 40},
		{MaxNumSeqs: 8, MaxBatchedTokens: 16, PageSize: 2, MaxModelLen: 32, KVCacheTokens: 40, DisablePrefixCaching: true},
	} {
		t.Run(fmt.Sprintf("seqs=%d,tokens=%d,kv=%d,nocache=%v", opt.MaxNumSeqs, opt.MaxBatchedTokens, opt.KVCacheTokens, opt.DisablePrefixCaching), func(t *testing.T) {
			e := newTestEngine(t, "llama", nil, opt)
			var wg sync.WaitGroup
			errs := make(chan error, len(cases)*2)
			for rep := 0; rep < 2; rep++ {
				for _, c := range cases {
					wg.Add(1)
					go func() {
						defer wg.Done()
						s, err := e.Generate(context.Background(), Request{Model: c.Adapter, Prompt: c.Prompt, Params: greedyParams(len(c.Steps))})
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
							if i >= len(ev.Tokens) || ev.Tokens[i] != st.Token {
								errs <- fmt.Errorf("adapter %q prompt %v: tokens %v, want step %d = %d", c.Adapter, c.Prompt, ev.Tokens, i, st.Token)
								return
							}
						}
						if ev.Finish != "length" || ev.Usage.CompletionTokens != len(c.Steps) || ev.Usage.PromptTokens != len(c.Prompt) {
							errs <- fmt.Errorf("finish %q usage %+v", ev.Finish, ev.Usage)
						}
					}()
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			waitIdle(t, e)
			if used := e.Stats().KVPagesUsed.Load(); used != 0 {
				t.Errorf("%d KV pages still used after all requests finished", used)
			}
			if opt.KVCacheTokens > 0 && e.Stats().Preemptions.Load() == 0 {
				t.Errorf("expected the tiny KV cache to force preemptions")
			}
		})
	}
}

func waitIdle(t testing.TB, e *Engine) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for e.Stats().Running.Load()+e.Stats().Waiting.Load() > 0 || e.Stats().KVPagesUsed.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("engine not idle: running %d waiting %d pages %d", e.Stats().Running.Load(), e.Stats().Waiting.Load(), e.Stats().KVPagesUsed.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func generate(t *testing.T, e *Engine, req Request) Event {
	t.Helper()
	s, err := e.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestSeededSamplingIsReproducible(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{})
	seed := func(v uint64) *uint64 { return &v }
	p := SamplingParams{MaxTokens: 12, Temperature: 1.5, TopP: 0.95, TopK: 50, MinP: 0.01, IgnoreEOS: true, Seed: seed(7)}
	a := generate(t, e, Request{Prompt: []int{5, 6, 7}, Params: p})
	b := generate(t, e, Request{Prompt: []int{5, 6, 7}, Params: p})
	if fmt.Sprint(a.Tokens) != fmt.Sprint(b.Tokens) {
		t.Fatalf("same seed gave %v and %v", a.Tokens, b.Tokens)
	}
	differ := false
	for s := uint64(8); s < 14 && !differ; s++ {
		p.Seed = seed(s)
		c := generate(t, e, Request{Prompt: []int{5, 6, 7}, Params: p})
		differ = fmt.Sprint(c.Tokens) != fmt.Sprint(a.Tokens)
	}
	if !differ {
		t.Fatal("six other seeds all reproduced the same 12 sampled tokens: sampling ignores the seed")
	}
}

// A request's parameters become the sampling row vLLM's filters describe: top-k, top-p, min-p,
// greedy and the repetition penalty (prompt tokens count) keep exactly the allowed tokens and
// each of them is drawn; frequency and presence penalties count generated tokens; banned ids
// are never drawn.
func TestSamplerFilters(t *testing.T) {
	logits := func() []float32 { return []float32{0, 5, 4, 3, -1, 2} }
	seed := uint64(1)
	var ms model.Sampler
	var row model.SampleRow
	var out model.SampleResult
	sample := func(s *sampler, banned []int) int {
		s.row(banned, 0, &row)
		ms.Sample(logits(), &row, &out)
		return int(out.Token)
	}
	for _, tc := range []struct {
		name    string
		p       SamplingParams
		allowed map[int]bool
	}{
		{"top_k=2", SamplingParams{Temperature: 1, TopK: 2}, map[int]bool{1: true, 2: true}},
		{"top_p small", SamplingParams{Temperature: 1, TopP: 0.5}, map[int]bool{1: true}},
		{"min_p", SamplingParams{Temperature: 1, MinP: 0.3}, map[int]bool{1: true, 2: true}},
		{"greedy", SamplingParams{}, map[int]bool{1: true}},
		{"repetition penalty moves argmax", SamplingParams{RepetitionPenalty: 2}, map[int]bool{2: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Seed = &seed
			s := newSampler(&tc.p, []int{1})
			seen := map[int]bool{}
			for i := 0; i < 300; i++ {
				tok := sample(s, nil)
				if !tc.allowed[tok] {
					t.Fatalf("sampled %d, allowed %v", tok, tc.allowed)
				}
				seen[tok] = true
			}
			if len(seen) != len(tc.allowed) {
				t.Fatalf("sampled only %v of %v", seen, tc.allowed)
			}
		})
	}
	// Frequency and presence penalties push a generated token below the next one.
	p := SamplingParams{FrequencyPenalty: 0.6, PresencePenalty: 0.5}
	s := newSampler(&p, nil)
	s.observe(1)
	if tok := sample(s, nil); tok != 2 {
		t.Fatalf("after penalties got %d, want 2", tok)
	}
	if tok := sample(s, []int{1, 2}); tok != 3 {
		t.Fatalf("banned tokens sampled: %d", tok)
	}
}

func TestStopTokensMinTokensAndLogprobs(t *testing.T) {
	cases := loadCases(t, "qwen3")
	c := cases[1] // base model, 5-token prompt
	e := newTestEngine(t, "qwen3", nil, Options{})
	stopAt := c.Steps[2].Token
	ev := generate(t, e, Request{Prompt: c.Prompt, Params: SamplingParams{MaxTokens: 6, StopTokenIDs: []int{stopAt}, Logprobs: 3}})
	first := 0
	for i, st := range c.Steps {
		if st.Token == stopAt {
			first = i
			break
		}
	}
	if ev.Finish != "stop" || ev.StopReason != stopAt || len(ev.Tokens) != first+1 {
		t.Fatalf("stop token %d: finish %q reason %v tokens %v", stopAt, ev.Finish, ev.StopReason, ev.Tokens)
	}
	for i, lp := range ev.Logprobs {
		want := float32(fixture.LogSoftmaxAt(c.Steps[i].Logits, c.Steps[i].Token))
		if math.Abs(float64(lp.Logprob-want)) > 1e-3 || lp.Token != c.Steps[i].Token {
			t.Fatalf("step %d logprob %+v, want token %d logprob %v", i, lp, c.Steps[i].Token, want)
		}
		if len(ev.Top[i]) != 3 || ev.Top[i][0].Token != c.Steps[i].Token || ev.Top[i][0].Logprob < ev.Top[i][1].Logprob {
			t.Fatalf("step %d top logprobs %+v", i, ev.Top[i])
		}
	}
	// min_tokens keeps the stop token from ending the request early.
	ev = generate(t, e, Request{Prompt: c.Prompt, Params: SamplingParams{MaxTokens: 6, MinTokens: 6, StopTokenIDs: []int{stopAt}}})
	if ev.Finish != "length" || len(ev.Tokens) != 6 {
		t.Fatalf("min_tokens: finish %q tokens %v", ev.Finish, ev.Tokens)
	}
	for _, tok := range ev.Tokens {
		if tok == stopAt {
			t.Fatalf("banned stop token %d sampled before min_tokens: %v", stopAt, ev.Tokens)
		}
	}
}

// TestStopStrings uses a byte-level tokenizer over the fixture vocabulary so generated ids
// become text, then stops on a string taken from the greedy output.
func TestStopStrings(t *testing.T) {
	var specials []string
	for i := 256; i < 320; i++ {
		specials = append(specials, fmt.Sprintf("<|extra_%d|>", i))
	}
	tok := tokenizer.NewByteLevelDemo(specials)
	e := newTestEngine(t, "llama", tok, Options{})
	free := generate(t, e, Request{Prompt: []int{40, 41, 42}, Params: SamplingParams{MaxTokens: 24, IgnoreEOS: true, SkipSpecialTokens: true}})
	full, err := tok.Decode(free.Tokens, true)
	if err != nil || full != free.Text {
		t.Fatalf("streamed text %q, decode %q (%v)", free.Text, full, err)
	}
	if len(full) < 6 { // greedy and deterministic: this would be a change in the model or tokenizer
		t.Fatalf("greedy output %q too short to pick a stop string", full)
	}
	stop := full[3:5]
	ev := generate(t, e, Request{Prompt: []int{40, 41, 42}, Params: SamplingParams{MaxTokens: 24, IgnoreEOS: true, SkipSpecialTokens: true, Stop: []string{"never-there", stop}}})
	idx := indexFrom(full, stop, 0)
	if ev.Finish != "stop" || ev.StopReason != stop || ev.Text != full[:idx] {
		t.Fatalf("stop %q: finish %q reason %v text %q, want %q", stop, ev.Finish, ev.StopReason, ev.Text, full[:idx])
	}
}

// TestPaddedVocabulary: a model whose vocabulary is larger than its tokenizer's may sample a
// padding id; it streams no text instead of failing the request.
func TestPaddedVocabulary(t *testing.T) {
	tok := tokenizer.NewByteLevelDemo(nil) // 256 tokens against the model's 320
	e := newTestEngine(t, "llama", tok, Options{})
	for seed := uint64(0); seed < 20; seed++ {
		s := seed
		ev := generate(t, e, Request{Prompt: []int{1, 2, 3}, Params: SamplingParams{MaxTokens: 16, IgnoreEOS: true, Temperature: 1, Seed: &s}})
		if ev.Finish != "length" || ev.Err != nil {
			t.Fatalf("seed %d: finish %q err %v", seed, ev.Finish, ev.Err)
		}
		for _, id := range ev.Tokens {
			if id >= 256 {
				return // a padding id was sampled and the request still finished normally
			}
		}
	}
	t.Fatal("no padding id sampled in 20 fixed seeds: the test no longer exercises padding ids")
}

func TestCancelFreesPages(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{MaxModelLen: 128})
	ctx, cancel := context.WithCancel(context.Background())
	s, err := e.Generate(ctx, Request{Prompt: []int{1, 2, 3}, Params: SamplingParams{MaxTokens: 120, IgnoreEOS: true}})
	if err != nil {
		t.Fatal(err)
	}
	// Cancel at once: waiting for a first event would race a fast machine generating all
	// 120 tokens into that (merged) event.
	cancel()
	for {
		ev, ok := s.Next(context.Background())
		if !ok {
			t.Fatal("stream ended without a final event")
		}
		if ev.Finish != "" {
			if ev.Finish != "abort" || KindOf(ev.Err) != KindCanceled {
				t.Fatalf("finish %q err %v", ev.Finish, ev.Err)
			}
			break
		}
	}
	waitIdle(t, e)
}

func TestOverloadAndValidation(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{MaxNumSeqs: 1, MaxQueued: 2, MaxModelLen: 64})
	var streams []*Stream
	overloaded := 0
	for i := 0; i < 10; i++ {
		s, err := e.Generate(context.Background(), Request{Prompt: []int{1, 2}, Params: SamplingParams{MaxTokens: 60, IgnoreEOS: true}})
		if KindOf(err) == KindOverloaded {
			overloaded++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	if overloaded == 0 {
		t.Fatal("10 requests into a queue of 2 behind one running: none was refused")
	}
	for _, s := range streams {
		s.Cancel()
	}
	waitIdle(t, e)

	for _, tc := range []struct {
		req   Request
		kind  Kind
		param string
	}{
		{Request{Model: "nope", Prompt: []int{1}}, KindNotFound, "model"},
		{Request{Prompt: nil}, KindInvalid, "prompt"},
		{Request{Prompt: []int{320}}, KindInvalid, "prompt"},
		{Request{Prompt: []int{-1}}, KindInvalid, "prompt"},
		{Request{Prompt: make([]int, 64)}, KindInvalid, "prompt"},
		{Request{Prompt: []int{1}, Params: SamplingParams{MaxTokens: 64}}, KindInvalid, "max_tokens"},
		{Request{Prompt: []int{1}, Params: SamplingParams{Temperature: -1}}, KindInvalid, "temperature"},
		{Request{Prompt: []int{1}, Params: SamplingParams{Temperature: math.NaN()}}, KindInvalid, "temperature"},
		{Request{Prompt: []int{1}, Params: SamplingParams{TopP: 1.5}}, KindInvalid, "top_p"},
		{Request{Prompt: []int{1}, Params: SamplingParams{TopK: -2}}, KindInvalid, "top_k"},
		{Request{Prompt: []int{1}, Params: SamplingParams{MinTokens: 5, MaxTokens: 2}}, KindInvalid, "min_tokens"},
		{Request{Prompt: []int{1}, Params: SamplingParams{Logprobs: 21}}, KindInvalid, "logprobs"},
		{Request{Prompt: []int{1}, Params: SamplingParams{Stop: []string{"x"}}}, KindInvalid, "stop"},
		{Request{Prompt: []int{1}, Params: SamplingParams{StopTokenIDs: []int{9999}}}, KindInvalid, "stop_token_ids"},
	} {
		_, err := e.Generate(context.Background(), tc.req)
		if KindOf(err) != tc.kind || ParamOf(err) != tc.param {
			t.Errorf("%+v: got %v (kind %d param %q), want kind %d param %q", tc.req.Params, err, KindOf(err), ParamOf(err), tc.kind, tc.param)
		}
	}
}

// TestUnloadWhileRunning: a request keeps the adapter weights it started with; new requests
// for the removed name get NotFound; reloading under the same name works.
func TestUnloadWhileRunning(t *testing.T) {
	cases := loadCases(t, "llama")
	var c fixtureCase
	for _, x := range cases {
		if x.Adapter == "b_all_rslora" {
			c = x
			break
		}
	}
	e := newTestEngine(t, "llama", nil, Options{MaxBatchedTokens: 16})
	s, err := e.Generate(context.Background(), Request{Model: c.Adapter, Prompt: c.Prompt, Params: greedyParams(len(c.Steps))})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.UnloadAdapter(c.Adapter); err != nil {
		t.Fatal(err)
	}
	ev, err := s.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range c.Steps {
		if ev.Tokens[i] != st.Token {
			t.Fatalf("tokens %v diverge from reference at %d", ev.Tokens, i)
		}
	}
	if _, err := e.Generate(context.Background(), Request{Model: c.Adapter, Prompt: c.Prompt}); KindOf(err) != KindNotFound {
		t.Fatalf("after unload: %v", err)
	}
	if err := e.UnloadAdapter(c.Adapter); KindOf(err) != KindNotFound {
		t.Fatalf("double unload: %v", err)
	}
	if err := e.LoadAdapter(c.Adapter, filepath.Join(fixtureDir("llama"), "adapters", c.Adapter)); err != nil {
		t.Fatal(err)
	}
	if err := e.LoadAdapter("broken", filepath.Join(fixtureDir("qwen3"), "adapters", "a_qv")); KindOf(err) != KindUnprocessable {
		t.Fatalf("qwen3 adapter on llama (different shapes): %v", err)
	}
	if err := e.LoadAdapter("missing", filepath.Join(t.TempDir(), "nothing")); KindOf(err) != KindNotFound {
		t.Fatalf("missing folder: %v", err)
	}
	var se *Error
	if err := e.LoadAdapter("", "x"); !errors.As(err, &se) || se.Kind != KindInvalid {
		t.Fatalf("empty name: %v", err)
	}
}

func TestDrainFinishesInFlight(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{})
	s, err := e.Generate(context.Background(), Request{Prompt: []int{1, 2, 3}, Params: greedyParams(20)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	ev, err := s.Collect(context.Background())
	if err != nil || ev.Finish != "length" || len(ev.Tokens) != 20 {
		t.Fatalf("in-flight request during drain: %v %q %d tokens", err, ev.Finish, len(ev.Tokens))
	}
	if e.Ready() {
		t.Fatal("engine ready after drain")
	}
	if _, err := e.Generate(context.Background(), Request{Prompt: []int{1}}); KindOf(err) != KindUnavailable {
		t.Fatalf("after drain: %v", err)
	}
}

// Requests raced against Drain are each either refused as unavailable or answered to the end
// (finished or aborted), never left without a final event, and Drain returns once they are.
func TestDrainRacingGenerate(t *testing.T) {
	for round := 0; round < 20; round++ {
		e := newTestEngine(t, "llama", nil, Options{})
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := e.Generate(context.Background(), Request{Prompt: []int{1, 2, 3}, Params: greedyParams(2)})
				if err != nil {
					if KindOf(err) != KindUnavailable {
						errs <- fmt.Errorf("refused with %v", err)
					}
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if ev, err := s.Collect(ctx); err != nil || ev.Finish == "" {
					errs <- fmt.Errorf("accepted request ended with %v, finish %q", err, ev.Finish)
				}
			}()
		}
		time.Sleep(time.Duration(round*20) * time.Microsecond) // Drain lands at another point of the Generates each round
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := e.Drain(ctx)
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatalf("round %d: drain: %v", round, err)
		}
	}
}

// panicky is the CPU backend with a fuse: while armed, Embed panics (standing in for a bug).
type panicky struct {
	*cpu.Backend
	armed atomic.Bool
}

func (p *panicky) Embed(out, table model.Tensor) {
	if p.armed.Load() {
		panic("injected fault")
	}
	p.Backend.Embed(out, table)
}

// TestStepPanicFailsOnlyItsRequests: a panic inside a step fails that step's requests with an
// internal error; the engine keeps serving and later requests get the reference tokens.
func TestStepPanicFailsOnlyItsRequests(t *testing.T) {
	b := &panicky{Backend: cpu.New(2)}
	t.Cleanup(b.Close)
	e := fixtureEngine(t, "llama", b, nil, Options{}, nil)
	c := loadCases(t, "llama")[1]
	b.armed.Store(true)
	s, err := e.Generate(context.Background(), Request{Prompt: c.Prompt, Params: greedyParams(4)})
	if err != nil {
		t.Fatal(err)
	}
	ev, _ := s.Collect(context.Background())
	if ev.Finish != "error" || KindOf(ev.Err) != KindInternal || !strings.Contains(ev.Err.Error(), "injected fault") {
		t.Fatalf("finish %q err %v", ev.Finish, ev.Err)
	}
	if e.Stats().Panics.Load() != 1 {
		t.Fatalf("panics counted: %d", e.Stats().Panics.Load())
	}
	b.armed.Store(false)
	ev = generate(t, e, Request{Prompt: c.Prompt, Params: greedyParams(len(c.Steps))})
	if fmt.Sprint(ev.Tokens) != fmt.Sprint(c.Tokens()) {
		t.Fatalf("after the panic: tokens %v, want %v", ev.Tokens, c.Tokens())
	}
	waitIdle(t, e)
}

// segmentsBackend is the CPU backend recording, for each step, its sequences' row counts and the
// most LoRA segments one call of the step passed. Its first step waits for hold to close.
type segmentsBackend struct {
	*cpu.Backend
	hold  chan struct{}
	mu    sync.Mutex
	steps []stepSegments
}

type stepSegments struct {
	rows    []int
	maxSegs int
}

func (b *segmentsBackend) Prepare(s *model.Step) error {
	if b.hold != nil {
		<-b.hold
		b.hold = nil // the engine's loop is the only caller
	}
	st := stepSegments{}
	for _, sq := range s.Seqs {
		st.rows = append(st.rows, sq.N)
	}
	b.mu.Lock()
	b.steps = append(b.steps, st)
	b.mu.Unlock()
	return b.Backend.Prepare(s)
}

func (b *segmentsBackend) LoRA(out, x model.Tensor, segs []model.LoRASeg) {
	b.mu.Lock()
	st := &b.steps[len(b.steps)-1]
	st.maxSegs = max(st.maxSegs, len(segs))
	b.mu.Unlock()
	b.Backend.LoRA(out, x, segs)
}

// A step's rows are grouped by adapter whatever order the requests came in, so requests on one
// adapter make one LoRA segment (model.SegmentMerger): four requests alternating between two
// adapters decode in steps whose LoRA calls pass two segments, not four. (The first step waits
// until all four are queued: the first request prefills alone, the others join it in the next
// step, and the four decode together from the one after.)
func TestStepGroupsRowsByAdapter(t *testing.T) {
	b := &segmentsBackend{Backend: cpu.New(2), hold: make(chan struct{})}
	t.Cleanup(b.Close)
	x, y := "a_qv", "b_all_rslora" // both adapt q_proj
	e := fixtureEngine(t, "llama", b, nil, Options{MaxNumSeqs: 8}, []string{x, y})
	var streams []*Stream
	for i, name := range []string{x, y, x, y} {
		s, err := e.Generate(context.Background(), Request{Model: name, Prompt: []int{3 + i, 17, 5 + 2*i, 9}, Params: greedyParams(8)})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	close(b.hold)
	finishAll(t, e, streams...)
	b.mu.Lock()
	defer b.mu.Unlock()
	decodes := 0
	for k, st := range b.steps {
		if !slices.Equal(st.rows, []int{1, 1, 1, 1}) {
			continue
		}
		decodes++
		if st.maxSegs != 2 {
			t.Errorf("step %d: four decode rows on two adapters made a LoRA call of %d segments, want 2", k, st.maxSegs)
		}
	}
	if decodes == 0 {
		t.Fatalf("no step decoded the four requests together: %+v", b.steps)
	}
}
