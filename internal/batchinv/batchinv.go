// Package batchinv checks deterministic mode (serve.Options.Deterministic) end to end, for the
// tests of every backend: fixture requests run alone, then inside busy mixed batches, and each
// must get bitwise the tokens and logprobs it got alone.
package batchinv

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/serve"
)

// Options are the engine options the check needs: a small token budget, so that prompts are
// prefilled in chunks that depend on what else is running and steps mix prefill chunks with
// decode rows, and no prefix cache, so that every run computes its prompt again.
func Options(modelName string) serve.Options {
	return serve.Options{ModelName: modelName, MaxNumSeqs: 12, MaxBatchedTokens: 24, MaxModelLen: 128, DisablePrefixCaching: true}
}

// Requests are fixture model name's cases (the base model and its four adapters, prompts of 1,
// 5 and 13 tokens) plus longer prompts, each greedy with top logprobs and again sampled with
// a seed: the requests whose outputs must not depend on their batch.
func Requests(t testing.TB, name string) []serve.Request {
	t.Helper()
	var reqs []serve.Request
	for i, c := range fixture.Cases(t, name) {
		model := c.Adapter
		if model == "" {
			model = name
		}
		prompt := c.Prompt
		if i%3 == 2 { // a longer prompt, chunked differently in different batches
			prompt = slices.Repeat(c.Prompt, 4)
		}
		seed := uint64(100 + i)
		reqs = append(reqs,
			serve.Request{Model: model, Prompt: prompt, Params: serve.SamplingParams{MaxTokens: 10, IgnoreEOS: true, Logprobs: 3}},
			serve.Request{Model: model, Prompt: prompt, Params: serve.SamplingParams{MaxTokens: 10, IgnoreEOS: true, Logprobs: -1,
				Temperature: 0.9, TopP: 0.95, Seed: &seed}})
	}
	return reqs
}

// noise is a request that shares the batch: another model or adapter, another length.
func noise(r *rand.Rand, models []string, vocab int) serve.Request {
	prompt := make([]int, 1+r.IntN(60))
	for i := range prompt {
		prompt[i] = r.IntN(vocab)
	}
	seed := r.Uint64()
	return serve.Request{Model: models[r.IntN(len(models))], Prompt: prompt,
		Params: serve.SamplingParams{MaxTokens: 1 + r.IntN(30), IgnoreEOS: true, Temperature: 1, Seed: &seed}}
}

// output is what must not change: the tokens, their logprobs and the top alternatives.
type output struct {
	tokens   []int
	logprobs []float32
	top      [][]serve.TokenLogprob
}

func run(ctx context.Context, e *serve.Engine, req serve.Request) (output, error) {
	st, err := e.Generate(ctx, req)
	if err != nil {
		return output{}, err
	}
	ev, err := st.Collect(ctx)
	if err == nil {
		err = ev.Err
	}
	o := output{tokens: ev.Tokens, top: ev.Top}
	for _, lp := range ev.Logprobs {
		o.logprobs = append(o.logprobs, lp.Logprob)
	}
	return o, err
}

// diff describes how b differs from a, bit for bit ("" when identical).
func diff(a, b output) string {
	if !slices.Equal(a.tokens, b.tokens) {
		return fmt.Sprintf("tokens %v, alone %v", b.tokens, a.tokens)
	}
	if !slices.EqualFunc(a.logprobs, b.logprobs, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) }) {
		return fmt.Sprintf("logprobs %v, alone %v", b.logprobs, a.logprobs)
	}
	if !slices.EqualFunc(a.top, b.top, func(x, y []serve.TokenLogprob) bool {
		return slices.EqualFunc(x, y, func(p, q serve.TokenLogprob) bool {
			return p.Token == q.Token && math.Float32bits(p.Logprob) == math.Float32bits(q.Logprob)
		})
	}) {
		return fmt.Sprintf("top logprobs %v, alone %v", b.top, a.top)
	}
	return ""
}

// Differences runs every request of reqs alone on e (nothing else in flight), then, rounds
// times, all of them at once in a shuffled order among noise requests for models (other
// adapters, other prompt lengths and output lengths; vocab bounds their token ids), and
// returns how each request's output differed from its output alone, one line per difference
// (none when the engine is batch-invariant).
func Differences(t testing.TB, e *serve.Engine, reqs []serve.Request, models []string, vocab, rounds int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	alone := make([]output, len(reqs))
	for i, req := range reqs {
		var err error
		if alone[i], err = run(ctx, e, req); err != nil {
			t.Fatalf("request %d alone: %v", i, err)
		}
	}
	var diffs []string
	r := rand.New(rand.NewPCG(7, uint64(len(reqs))))
	for round := range rounds {
		got := make([]output, len(reqs))
		errs := make([]error, len(reqs))
		var wg sync.WaitGroup
		for _, i := range r.Perm(len(reqs)) {
			// One or two noise requests ahead of each request, so the requests sit at
			// different places in different batches.
			for range 1 + r.IntN(2) {
				nr := noise(r, models, vocab)
				wg.Go(func() {
					if _, err := run(ctx, e, nr); err != nil {
						t.Errorf("noise request: %v", err)
					}
				})
			}
			wg.Go(func() { got[i], errs[i] = run(ctx, e, reqs[i]) })
		}
		wg.Wait()
		for i := range reqs {
			if errs[i] != nil {
				t.Fatalf("round %d request %d: %v", round, i, errs[i])
			}
			if d := diff(alone[i], got[i]); d != "" {
				diffs = append(diffs, fmt.Sprintf("round %d request %d (%s, %d-token prompt): %s", round, i, reqs[i].Model, len(reqs[i].Prompt), d))
			}
		}
	}
	return diffs
}
