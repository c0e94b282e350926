package serve

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
)

// checkCase compares a greedy generation with the reference: identical tokens, and each chosen
// token's logprob within the fixture suites' tolerance (1e-3).
func checkCase(c fixtureCase, ev Event) error {
	if fmt.Sprint(ev.Tokens) != fmt.Sprint(c.Tokens()) {
		return fmt.Errorf("%q prompt %v: tokens %v, want %v", c.Adapter, c.Prompt, ev.Tokens, c.Tokens())
	}
	for i, lp := range ev.Logprobs {
		if want := float32(fixture.LogSoftmaxAt(c.Steps[i].Logits, c.Steps[i].Token)); math.Abs(float64(lp.Logprob-want)) > 1e-3 {
			return fmt.Errorf("%q prompt %v step %d: logprob %v, want %v", c.Adapter, c.Prompt, i, lp.Logprob, want)
		}
	}
	return nil
}

func greedyLogprobs(n int) SamplingParams {
	return SamplingParams{MaxTokens: n, IgnoreEOS: true, Logprobs: -1}
}

// Caching changes nothing but speed: on every fixture model, every case (base model and four
// adapters on the same three prompts, one after another, so adapter B always runs on a prompt
// that adapter A just left in the cache) gives the reference's greedy tokens and logprobs with
// the cache off, cold and warm; warm requests report their cached prompt tokens, and a request
// never reports pages another model computed as cached.
func TestPrefixCacheChangesNothingButSpeed(t *testing.T) {
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			cases := loadCases(t, name)
			for _, off := range []bool{true, false} {
				e := newTestEngine(t, name, nil, Options{PageSize: 2, DisablePrefixCaching: off})
				for pass, label := range []string{"cold", "warm"} {
					for _, c := range cases {
						ev := generate(t, e, Request{Model: c.Adapter, Prompt: c.Prompt, Params: greedyLogprobs(len(c.Steps))})
						if err := checkCase(c, ev); err != nil {
							t.Fatalf("off=%v %s: %v", off, label, err)
						}
						// The last prompt token is always computed; full pages before it may be cached.
						cacheable := (len(c.Prompt) - 1) / 2 * 2
						want := 0
						if !off && pass == 1 {
							want = cacheable
						}
						if got := ev.Usage.CachedTokens; got != want {
							t.Fatalf("off=%v %s %q prompt %v: %d cached tokens, want %d", off, label, c.Adapter, c.Prompt, got, want)
						}
					}
				}
				waitIdle(t, e)
			}
		})
	}
}

// Pages belong to what computed them, by content: an adapter reloaded under the same name with
// other weights never reuses the old weights' pages and gives the new weights' reference tokens,
// and the same weights loaded under a second name share the first name's pages.
func TestPrefixCacheFollowsAdapterContentNotName(t *testing.T) {
	cases := loadCases(t, "llama")
	byAdapter := map[string]fixtureCase{}
	for _, c := range cases {
		if len(c.Prompt) == 13 {
			byAdapter[c.Adapter] = c
		}
	}
	a, b := byAdapter["a_qv"], byAdapter["b_all_rslora"]
	e := newTestEngine(t, "llama", nil, Options{PageSize: 4})
	run := func(model string, want fixtureCase, wantCached int) {
		t.Helper()
		ev := generate(t, e, Request{Model: model, Prompt: want.Prompt, Params: greedyLogprobs(len(want.Steps))})
		if err := checkCase(want, ev); err != nil {
			t.Fatalf("as %q: %v", model, err)
		}
		if ev.Usage.CachedTokens != wantCached {
			t.Fatalf("as %q (%s's weights): %d cached tokens, want %d", model, want.Adapter, ev.Usage.CachedTokens, wantCached)
		}
	}
	if err := e.LoadAdapter("x", fixture.AdapterDir("llama", "a_qv")); err != nil {
		t.Fatal(err)
	}
	run("a_qv", a, 0)
	run("x", a, 12) // a_qv's weights under another name: a_qv's pages
	if err := e.UnloadAdapter("x"); err != nil {
		t.Fatal(err)
	}
	if err := e.LoadAdapter("x", fixture.AdapterDir("llama", "b_all_rslora")); err != nil {
		t.Fatal(err)
	}
	run("x", b, 0) // same name, other weights: nothing of a_qv's
	run("b_all_rslora", b, 12)
	run("a_qv", a, 12)
	waitIdle(t, e)
}

// Routed requests pass the router reference suite twice, cold then warm, next to their own
// experts served directly on the same prompts: a router's pages are keyed by its bundle and its
// experts' contents, never confused with an expert's own pages or another router's.
func TestPrefixCacheRoutersMatchReference(t *testing.T) {
	rfx, err := fixture.LoadRouters("llama")
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEngine(t, "llama", nil, Options{PageSize: 2, MaxNumSeqs: 8, MaxBatchedTokens: 12, MaxLoRAs: 4})
	loaded := map[string]bool{}
	for _, c := range rfx.Cases {
		if !loaded[c.Adapter] {
			loaded[c.Adapter] = true
			if err := e.LoadRouter(c.Adapter, filepath.Join(fixture.RoutersRoot(), c.Router)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := append(loadCases(t, "llama"), rfx.Cases...)
	for pass := range 2 {
		for _, c := range cases {
			ev := generate(t, e, Request{Model: c.Adapter, Prompt: c.Prompt, Params: greedyLogprobs(len(c.Steps))})
			if err := checkCase(c, ev); err != nil {
				t.Fatalf("pass %d: %v", pass, err)
			}
			if want := pass * (len(c.Prompt) - 1) / 2 * 2; ev.Usage.CachedTokens != want {
				t.Fatalf("pass %d %q prompt %v: %d cached tokens, want %d", pass, c.Adapter, c.Prompt, ev.Usage.CachedTokens, want)
			}
		}
	}
	waitIdle(t, e)
}

// Randomized: requests on the base model, the four adapters and the same weights under a
// second name, over prompts that share prefixes of random lengths, several at once (n > 1
// style siblings included), some cancelled, on an engine whose KV cache holds only a few
// sequences (eviction and preemption) and whose steps are a few tokens (chunked prefill): every
// request that finishes gives exactly the greedy tokens of an engine with caching off, logprobs
// within 1e-4, and the cache reports hits.
func TestPrefixCacheRandomizedInterleaving(t *testing.T) {
	models := append([]string{""}, fixture.Adapters...)
	models = append(models, "a_qv_again")
	rng := rand.New(rand.NewPCG(14, 1))
	stems := make([][]int, 3)
	for i := range stems {
		for range 24 {
			stems[i] = append(stems[i], 1+rng.IntN(200))
		}
	}
	type job struct {
		model  string
		prompt []int
		cancel bool
	}
	var jobs []job
	for range 90 {
		stem := stems[rng.IntN(len(stems))]
		p := append([]int(nil), stem[:1+rng.IntN(len(stem))]...)
		for range rng.IntN(6) {
			p = append(p, 1+rng.IntN(200))
		}
		jobs = append(jobs, job{models[rng.IntN(len(models))], p, rng.IntN(10) == 0})
		if rng.IntN(4) == 0 { // a sibling: the same request again, at once
			jobs = append(jobs, jobs[len(jobs)-1])
		}
	}
	const steps = 10
	ref := newTestEngine(t, "llama", nil, Options{DisablePrefixCaching: true})
	if err := ref.LoadAdapter("a_qv_again", fixture.AdapterDir("llama", "a_qv")); err != nil {
		t.Fatal(err)
	}
	want := make([]Event, len(jobs))
	for i, j := range jobs {
		want[i] = generate(t, ref, Request{Model: j.model, Prompt: j.prompt, Params: greedyLogprobs(steps)})
	}
	e := newTestEngine(t, "llama", nil, Options{PageSize: 2, MaxNumSeqs: 6, MaxBatchedTokens: 8, MaxModelLen: 48, KVCacheTokens: 56})
	if err := e.LoadAdapter("a_qv_again", fixture.AdapterDir("llama", "a_qv")); err != nil {
		t.Fatal(err)
	}
	// Waves of a few requests at once, so sequences share steps, pages and the cache's LRU.
	for start := 0; start < len(jobs); start += 6 {
		var wg sync.WaitGroup
		errs := make(chan error, 6)
		for i := start; i < min(start+6, len(jobs)); i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				j := jobs[i]
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				s, err := e.Generate(ctx, Request{Model: j.model, Prompt: j.prompt, Params: greedyLogprobs(steps)})
				if err != nil {
					errs <- err
					return
				}
				if j.cancel {
					cancel()
				}
				ev, err := s.Collect(context.Background())
				if ev.Finish == "abort" && j.cancel {
					return
				}
				if err != nil {
					errs <- fmt.Errorf("job %d: %v", i, err)
					return
				}
				if fmt.Sprint(ev.Tokens) != fmt.Sprint(want[i].Tokens) {
					errs <- fmt.Errorf("job %d %q prompt %v: tokens %v, want %v (cached %d)", i, j.model, j.prompt, ev.Tokens, want[i].Tokens, ev.Usage.CachedTokens)
					return
				}
				for k, lp := range ev.Logprobs {
					if math.Abs(float64(lp.Logprob-want[i].Logprobs[k].Logprob)) > 1e-4 {
						errs <- fmt.Errorf("job %d step %d: logprob %v, want %v", i, k, lp.Logprob, want[i].Logprobs[k].Logprob)
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
		if t.Failed() {
			t.FailNow()
		}
	}
	waitIdle(t, e)
	st := e.Stats()
	if st.PrefixCacheHits.Load() == 0 || st.Preemptions.Load() == 0 || st.PrefixCacheEvictions.Load() == 0 {
		t.Errorf("hits %d of %d queried tokens, %d preemptions, %d evictions: the test did not exercise the cache under pressure",
			st.PrefixCacheHits.Load(), st.PrefixCacheQueries.Load(), st.Preemptions.Load(), st.PrefixCacheEvictions.Load())
	}
	t.Logf("hits %d of %d queried tokens, %d preemptions, %d evictions",
		st.PrefixCacheHits.Load(), st.PrefixCacheQueries.Load(), st.Preemptions.Load(), st.PrefixCacheEvictions.Load())
}

// A step that fails leaves nothing in the cache: pages indexed while building it were never
// written, so the same prompt afterwards is computed in full and gives the reference tokens.
func TestPrefixCacheForgetsAFailedStep(t *testing.T) {
	b := &panicky{Backend: cpu.New(2)}
	t.Cleanup(b.Close)
	e := fixtureEngine(t, "llama", b, nil, Options{PageSize: 2}, nil)
	c := loadCases(t, "llama")[2] // base model, 13-token prompt
	b.armed.Store(true)
	s, err := e.Generate(context.Background(), Request{Prompt: c.Prompt, Params: greedyParams(4)})
	if err != nil {
		t.Fatal(err)
	}
	if ev, _ := s.Collect(context.Background()); ev.Finish != "error" {
		t.Fatalf("finish %q with the fault armed", ev.Finish)
	}
	b.armed.Store(false)
	ev := generate(t, e, Request{Prompt: c.Prompt, Params: greedyLogprobs(len(c.Steps))})
	if err := checkCase(c, ev); err != nil {
		t.Fatal(err)
	}
	if ev.Usage.CachedTokens != 0 {
		t.Fatalf("%d tokens reused from a failed step", ev.Usage.CachedTokens)
	}
	waitIdle(t, e)
}

// Siblings (n > 1: the same prompt submitted together) share the prompt's pages: queued behind
// a long prefill, they are admitted together, the first computes the prompt and the others find
// its full pages (indexed as the step is built: every layer stores the step's keys and values
// before its attention reads them), and all of them give the reference tokens.
func TestPrefixCacheSiblingsShareThePrompt(t *testing.T) {
	var c fixtureCase
	for _, k := range loadCases(t, "llama") {
		if k.Adapter == "c_patterns" && len(k.Prompt) == 13 {
			c = k
		}
	}
	e := newTestEngine(t, "llama", nil, Options{PageSize: 2, MaxNumSeqs: 8, MaxBatchedTokens: 48, MaxModelLen: 256})
	long := make([]int, 200)
	for i := range long {
		long[i] = 1 + (7*i)%250
	}
	first, err := e.Generate(context.Background(), Request{Prompt: long, Params: greedyParams(2)})
	if err != nil {
		t.Fatal(err)
	}
	var streams []*Stream
	for range 3 {
		s, err := e.Generate(context.Background(), Request{Model: c.Adapter, Prompt: c.Prompt, Params: greedyLogprobs(len(c.Steps))})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	if _, err := first.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	cached := 0
	for _, s := range streams {
		ev, err := s.Collect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := checkCase(c, ev); err != nil {
			t.Fatal(err)
		}
		cached += ev.Usage.CachedTokens
	}
	if cached != 2*12 {
		t.Fatalf("siblings found %d tokens cached in all, want 24 (two of three finding 12)", cached)
	}
	waitIdle(t, e)
}
