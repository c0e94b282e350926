package openai

import (
	"context"
	"sync"

	"github.com/loraplex/loraplex/serve"
)

// choiceEvent is one engine event of choice Index.
type choiceEvent struct {
	Index int
	serve.Event
}

// run starts one engine request per (prompt, sample) pair, choice index = prompt*n + sample as
// in OpenAI and vLLM, and merges their events into one channel. Every request is started before
// run returns, so a bad model or parameter is an HTTP error rather than a broken stream. With a
// seed, sample j uses seed+j so that n > 1 does not return n identical samples.
//
// The channel closes when every stream has ended or ctx is done; the caller must cancel ctx
// when it stops reading, which aborts the engine requests and ends the goroutines.
func (h *Handler) run(ctx context.Context, model string, prompts [][]int, n int, p serve.SamplingParams, trace bool) (<-chan choiceEvent, error) {
	streams := make([]*serve.Stream, 0, len(prompts)*n)
	for _, prompt := range prompts {
		for j := 0; j < n; j++ {
			pj := p
			if p.Seed != nil && j > 0 {
				s := *p.Seed + uint64(j)
				pj.Seed = &s
			}
			s, err := h.e.Generate(ctx, serve.Request{Model: model, Prompt: prompt, Params: pj, TraceExperts: trace})
			if err != nil {
				for _, s := range streams {
					s.Cancel()
				}
				return nil, err
			}
			streams = append(streams, s)
		}
	}
	out := make(chan choiceEvent, len(streams))
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.Cancel()
			for {
				ev, ok := s.Next(ctx)
				if !ok {
					return
				}
				select {
				case out <- choiceEvent{Index: i, Event: ev}:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out, nil
}

// promptUsage counts prompt tokens once per prompt (not once per sample), as OpenAI does.
func promptUsage(prompts [][]int) int {
	n := 0
	for _, p := range prompts {
		n += len(p)
	}
	return n
}

type usage struct {
	PromptTokens        int                  `json:"prompt_tokens"`
	CompletionTokens    int                  `json:"completion_tokens"`
	TotalTokens         int                  `json:"total_tokens"`
	PromptTokensDetails *promptTokensDetails `json:"prompt_tokens_details"`
}

// promptTokensDetails is OpenAI's usage.prompt_tokens_details: CachedTokens are the prompt
// tokens whose keys and values came from the prefix cache.
type promptTokensDetails struct {
	CachedTokens int `json:"cached_tokens"`
}

func newUsage(prompt, completion, cached int) *usage {
	return &usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion,
		PromptTokensDetails: &promptTokensDetails{CachedTokens: cached}}
}

// cachedOf is the cached prompt tokens a finished choice adds to its response's usage: prompt
// tokens are counted once per prompt, so only its first sample's (choice prompt*n) count.
func cachedOf(ev *choiceEvent, n int) int {
	if ev.Usage == nil || ev.Index%n != 0 {
		return 0
	}
	return ev.Usage.CachedTokens
}

// finishReason maps the engine's reasons to OpenAI's; "abort" and "error" never reach a client
// as a reason (they become errors).
func finishReason(ev *serve.Event) *string {
	if ev.Finish == "" {
		return nil
	}
	r := ev.Finish
	return &r
}

// failure is the error a finished event carries, if it did not end normally.
func failure(ev *serve.Event) error {
	if ev.Finish != "abort" && ev.Finish != "error" {
		return nil
	}
	if ev.Err != nil {
		return ev.Err
	}
	return &serve.Error{Kind: serve.KindInternal, Msg: "generation " + ev.Finish}
}
