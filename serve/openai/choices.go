package openai

import (
	"context"

	"github.com/loraplex/loraplex/serve"
)

// choiceState accumulates one choice.
type choiceState struct {
	text     []byte
	tokens   []int
	lp       *completionLogprobs
	chatLP   *chatLogprobs
	offset   int
	started  bool
	finished bool
	final    serve.Event
	experts  [][]string // the expert trace, when asked for
	counts   expertCounts
	// prompt are the prompt logprobs (kept collected or streamed: a stream sends them with the
	// choice's first chunk).
	prompt []serve.PromptLogprob
}

// choiceSet is the one accumulator of a response's choices for both endpoints, collected or
// streamed: each choice's state, whether every choice finished, and the usage summed over them
// (the prompt's cached tokens counted once per prompt, not once per sample).
type choiceSet struct {
	st         []choiceState
	perPrompt  int // choices per prompt (n)
	completion int
	cached     int
}

func newChoiceSet(choices, perPrompt int) choiceSet {
	return choiceSet{st: make([]choiceState, choices), perPrompt: perPrompt}
}

// take records ev and returns its choice's state. keep appends the event's text, tokens and
// expert trace to the choice (a collected response); a stream sends them instead. send is
// false for an event with nothing to send (no tokens, no text, not the last).
func (c *choiceSet) take(ev *choiceEvent, keep bool) (st *choiceState, send bool, err error) {
	if err := failure(&ev.Event); err != nil {
		return nil, false, err
	}
	st = &c.st[ev.Index]
	st.prompt = append(st.prompt, ev.PromptLogprobs...)
	if keep {
		st.text = append(st.text, ev.Text...)
		st.tokens = append(st.tokens, ev.Tokens...)
		st.experts = append(st.experts, ev.Experts...)
	}
	if ev.Finish != "" {
		st.finished, st.final = true, ev.Event
		if ev.Usage != nil {
			c.completion += ev.Usage.CompletionTokens
			c.cached += cachedOf(ev, c.perPrompt)
		}
	}
	return st, len(ev.Tokens) > 0 || ev.Text != "" || ev.Finish != "", nil
}

// complete is nil once every choice has finished, else the cancellation that cut them short.
func (c *choiceSet) complete(ctx context.Context) error {
	for i := range c.st {
		if !c.st[i].finished {
			return &serve.Error{Kind: serve.KindCanceled, Msg: "request cancelled", Err: ctx.Err()}
		}
	}
	return nil
}

// usage is the response's usage for prompt tokens of prompt.
func (c *choiceSet) usage(prompt int) *usage { return newUsage(prompt, c.completion, c.cached) }
