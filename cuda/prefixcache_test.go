//go:build cuda

package cuda_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/serve"
)

// Prefix caching changes nothing but speed on the GPU: requests on the base model and the four
// fixture adapters over prompts sharing prefixes (adapter B right after adapter A on the same
// prompt), run one by one and then in concurrent waves on an engine with a tiny KV cache
// (eviction, preemption) and 2-token pages, give the greedy tokens of an engine with caching
// off on the same GPU, logprobs within 1e-3, and the warm requests report cached tokens.
func TestPrefixCacheMatchesUncachedOnGPU(t *testing.T) {
	const name = "llama"
	g := newGPU(t)
	g.SetGEMVRows(8) // per-row products for small batches, so a row's numbers do not depend on its batch
	cfg, w := fixture.LoadModel(t, fixture.Dir(name), g)
	engine := func(opt serve.Options) *serve.Engine {
		opt.ModelName = name
		e, err := serve.NewEngine(cfg, g, w, nil, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		for _, a := range fixture.Adapters {
			if err := e.LoadAdapter(a, fixture.AdapterDir(name, a)); err != nil {
				t.Fatal(err)
			}
		}
		return e
	}
	models := append([]string{""}, fixture.Adapters...)
	rng := rand.New(rand.NewPCG(14, 3))
	stem := make([]int, 20)
	for i := range stem {
		stem[i] = 1 + rng.IntN(200)
	}
	type job struct {
		model  string
		prompt []int
	}
	var jobs []job
	for range 8 {
		p := append([]int(nil), stem[:4+rng.IntN(len(stem)-4)]...)
		for range rng.IntN(5) {
			p = append(p, 1+rng.IntN(200))
		}
		for _, m := range models { // every model on the same prompt, one after another
			jobs = append(jobs, job{m, p})
		}
	}
	const steps = 8
	params := serve.SamplingParams{MaxTokens: steps, IgnoreEOS: true, Logprobs: -1}
	gen := func(e *serve.Engine, j job) (serve.Event, error) {
		s, err := e.Generate(context.Background(), serve.Request{Model: j.model, Prompt: j.prompt, Params: params})
		if err != nil {
			return serve.Event{}, err
		}
		ev, err := s.Collect(context.Background())
		if err == nil {
			err = ev.Err
		}
		return ev, err
	}
	off := engine(serve.Options{DisablePrefixCaching: true, MaxNumSeqs: 4, MaxBatchedTokens: 8})
	want := make([]serve.Event, len(jobs))
	for i, j := range jobs {
		ev, err := gen(off, j)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = ev
	}
	on := engine(serve.Options{PageSize: 2, MaxNumSeqs: 4, MaxBatchedTokens: 8, MaxModelLen: 40, KVCacheTokens: 64})
	check := func(i int, ev serve.Event) error {
		if fmt.Sprint(ev.Tokens) != fmt.Sprint(want[i].Tokens) {
			return fmt.Errorf("job %d %q prompt %v: tokens %v, want %v (cached %d)", i, jobs[i].model, jobs[i].prompt, ev.Tokens, want[i].Tokens, ev.Usage.CachedTokens)
		}
		for k, lp := range ev.Logprobs {
			if math.Abs(float64(lp.Logprob-want[i].Logprobs[k].Logprob)) > 1e-3 {
				return fmt.Errorf("job %d step %d: logprob %v, want %v", i, k, lp.Logprob, want[i].Logprobs[k].Logprob)
			}
		}
		return nil
	}
	// One by one: adapter B always follows adapter A on the same prompt.
	for i, j := range jobs {
		ev, err := gen(on, j)
		if err != nil {
			t.Fatal(err)
		}
		if err := check(i, ev); err != nil {
			t.Fatal(err)
		}
	}
	// Concurrent waves, twice: shared steps, shared pages, eviction and preemption.
	for pass := range 2 {
		for start := 0; start < len(jobs); start += 6 {
			var wg sync.WaitGroup
			for i := start; i < min(start+6, len(jobs)); i++ {
				wg.Go(func() {
					ev, err := gen(on, jobs[i])
					if err == nil {
						err = check(i, ev)
					}
					if err != nil {
						t.Errorf("pass %d: %v", pass, err)
					}
				})
			}
			wg.Wait()
		}
	}
	st := on.Stats()
	if st.PrefixCacheHits.Load() == 0 || st.Preemptions.Load() == 0 {
		t.Errorf("hits %d of %d queried tokens, %d preemptions: the cache was not exercised under pressure",
			st.PrefixCacheHits.Load(), st.PrefixCacheQueries.Load(), st.Preemptions.Load())
	}
	t.Logf("hits %d of %d queried tokens, %d preemptions", st.PrefixCacheHits.Load(), st.PrefixCacheQueries.Load(), st.Preemptions.Load())
}
