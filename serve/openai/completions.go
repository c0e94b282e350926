package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"time"
)

type completionRequest struct {
	samplingFields
	Prompt   json.RawMessage `json:"prompt"`
	Logprobs *int            `json:"logprobs"`
	Echo     bool            `json:"echo"`
	Suffix   *string         `json:"suffix"`
	BestOf   *int            `json:"best_of"`
}

type completionChoice struct {
	Index          int                 `json:"index"`
	Text           string              `json:"text"`
	Logprobs       *completionLogprobs `json:"logprobs"`
	FinishReason   *string             `json:"finish_reason"`
	StopReason     any                 `json:"stop_reason"`
	TokenIDs       any                 `json:"token_ids,omitempty"`
	PromptTokenIDs any                 `json:"prompt_token_ids,omitempty"`
	ExpertTrace    any                 `json:"expert_trace,omitempty"`
	ExpertSummary  any                 `json:"expert_summary,omitempty"`
	PromptLogprobs any                 `json:"prompt_logprobs,omitempty"`
}

type completionResponse struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []completionChoice `json:"choices"`
	Usage   *usage             `json:"usage,omitempty"`
}

func (h *Handler) completions(w http.ResponseWriter, r *http.Request) error {
	var req completionRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	switch {
	case req.Suffix != nil && *req.Suffix != "":
		return invalid("suffix", "suffix is not supported")
	case req.BestOf != nil && *req.BestOf > 1:
		return invalid("best_of", "best_of is not supported")
	}
	// max_tokens 0 with echo scores the prompt and generates nothing (OpenAI's and vLLM's
	// loglikelihood request); without echo there would be nothing to return.
	promptOnly := req.MaxTokens != nil && *req.MaxTokens == 0
	if promptOnly {
		if !req.Echo {
			return invalid("max_tokens", "max_tokens must be at least 1 (0 only with echo), got 0")
		}
		req.MaxTokens = nil
	}
	p, err := req.params(16)
	if err != nil {
		return err
	}
	p.PromptOnly = promptOnly
	if req.Logprobs != nil {
		// OpenAI's logprobs=0 still returns the chosen token's logprob; the engine says -1 for that.
		if lp := *req.Logprobs; lp < 0 || lp > 20 {
			return invalid("logprobs", "logprobs must be between 0 and 20, got %d", lp)
		}
		p.Logprobs = engineLogprobs(*req.Logprobs)
		if req.Echo {
			// The echoed prompt's tokens carry logprobs too: the prompt's own.
			p.PromptLogprobs = wantPrompt(p.PromptLogprobs, p.Logprobs)
		}
	}
	n, err := req.choices(h.opt.MaxN)
	if err != nil {
		return err
	}
	if err := h.checkTrace(req.Model, req.ExpertTrace); err != nil {
		return err
	}
	texts, prompts, err := parsePrompt(req.Prompt)
	if err != nil {
		return err
	}
	if err := h.check(&req.samplingFields, &p, len(texts)+len(prompts), n, 0, 0); err != nil {
		return err
	}
	if texts != nil {
		addSpecial := req.AddSpecialTokens == nil || *req.AddSpecialTokens
		if prompts, err = h.encodeAll(texts, addSpecial); err != nil {
			return err
		}
	}
	var echo []string
	if req.Echo {
		if echo, err = h.echoTexts(prompts, p.SkipSpecialTokens); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel() // aborts whatever is still running if we stop early (client gone, write error)
	events, err := h.run(ctx, req.Model, prompts, n, p, req.ExpertTrace)
	if err != nil {
		return err
	}
	c := &completionState{h: h, req: &req, n: n, prompts: prompts, id: newID("cmpl-"), created: time.Now().Unix(),
		model: h.modelName(req.Model), choices: newChoiceSet(len(prompts)*n, n), echo: echo}
	if req.Stream {
		return c.stream(w, r.Context(), events)
	}
	return c.collect(w, r.Context(), events)
}

// parsePrompt decodes `prompt`: a string, an array of token ids, or an array of either (a
// batch). Texts come back untokenized, so that the request's counts are checked first.
func parsePrompt(raw json.RawMessage) (texts []string, ids [][]int, err error) {
	raw = bytes.TrimSpace(raw)
	if isNull(raw) {
		return nil, nil, invalid("prompt", "prompt is required")
	}
	var text string
	if json.Unmarshal(raw, &text) == nil {
		return []string{text}, nil, nil
	}
	var one []int
	if json.Unmarshal(raw, &one) == nil {
		if len(one) == 0 {
			return nil, nil, invalid("prompt", "prompt is empty")
		}
		return nil, [][]int{one}, nil
	}
	if json.Unmarshal(raw, &texts) == nil && len(texts) > 0 {
		return texts, nil, nil
	}
	var batch [][]int
	if json.Unmarshal(raw, &batch) == nil && len(batch) > 0 {
		for _, b := range batch {
			if len(b) == 0 {
				return nil, nil, invalid("prompt", "prompt is empty")
			}
		}
		return nil, batch, nil
	}
	return nil, nil, invalid("prompt", "prompt must be a string, an array of token ids (non-negative integers), or an array of those")
}

// encodeAll tokenizes a batch of prompt texts, refusing any too long to fit before
// tokenizing the first.
func (h *Handler) encodeAll(texts []string, addSpecial bool) ([][]int, error) {
	for _, t := range texts {
		if err := h.e.CheckPromptText("prompt", t); err != nil {
			return nil, err
		}
	}
	out := make([][]int, len(texts))
	for i, t := range texts {
		var err error
		if out[i], err = h.encode(t, addSpecial, "prompt"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// encode tokenizes text for a request field.
func (h *Handler) encode(text string, addSpecial bool, param string) ([]int, error) {
	tok := h.e.Tokenizer()
	if tok == nil {
		return nil, invalid(param, "this model has no tokenizer; send the prompt as token ids")
	}
	if err := h.e.CheckPromptText(param, text); err != nil {
		return nil, err
	}
	ids, err := tok.Encode(text, addSpecial)
	if err != nil {
		return nil, invalid(param, "cannot tokenize %s: %v", param, err)
	}
	if len(ids) == 0 {
		return nil, invalid(param, "%s is empty", param)
	}
	return ids, nil
}

type completionState struct {
	h       *Handler
	req     *completionRequest
	n       int
	prompts [][]int
	id      string
	created int64
	model   string
	choices choiceSet
	echo    []string // per prompt, when echo is on
}

// echoTexts decodes the prompts for echo (empty without a tokenizer: token-id models return
// no text at all).
func (h *Handler) echoTexts(prompts [][]int, skipSpecial bool) ([]string, error) {
	out := make([]string, len(prompts))
	tok := h.e.Tokenizer()
	if tok == nil {
		return out, nil
	}
	for i, p := range prompts {
		s, err := tok.Decode(p, skipSpecial)
		if err != nil {
			return nil, invalid("prompt", "%v", err)
		}
		out[i] = s
	}
	return out, nil
}

// echoed is the prompt text choice i starts with, if echo is on.
func (c *completionState) echoed(i int) string {
	if c.echo == nil {
		return ""
	}
	return c.echo[i/c.n]
}

func (c *completionState) promptOf(i int) []int { return c.prompts[i/c.n] }

func (c *completionState) collect(w http.ResponseWriter, ctx context.Context, events <-chan choiceEvent) error {
	for ev := range events {
		st, _, err := c.choices.take(&ev, true)
		if err != nil {
			return err
		}
		// The first event with a token or the end comes after every prompt logprob.
		first := !st.started && (len(ev.Tokens) > 0 || ev.Finish != "")
		st.started = st.started || first
		if c.req.Logprobs != nil {
			if st.lp == nil {
				st.lp = &completionLogprobs{}
			}
			if first {
				c.echoLogprobs(st.lp, ev.Index, st)
			}
			c.h.appendCompletion(st.lp, &ev.Event, c.req.ReturnTokensAsTokenIDs, &st.offset)
		}
	}
	if err := c.choices.complete(ctx); err != nil {
		return err
	}
	resp := completionResponse{ID: c.id, Object: "text_completion", Created: c.created, Model: c.model,
		Choices: make([]completionChoice, len(c.choices.st))}
	for i := range c.choices.st {
		st := &c.choices.st[i]
		ch := completionChoice{Index: i, Text: c.echoed(i) + string(st.text), Logprobs: st.lp, FinishReason: finishReason(&st.final), StopReason: st.final.StopReason}
		if c.req.ReturnTokenIDs {
			ch.TokenIDs, ch.PromptTokenIDs = nonNil(st.tokens), c.promptOf(i)
		}
		if c.req.ExpertTrace {
			st.counts.add(st.experts)
			ch.ExpertTrace, ch.ExpertSummary = traceOf(st.experts), st.counts.summary()
		}
		if c.req.PromptLogprobs != nil {
			ch.PromptLogprobs = c.h.promptLogprobs(st.prompt, *c.req.PromptLogprobs, c.req.ReturnTokensAsTokenIDs)
		}
		resp.Choices[i] = ch
	}
	resp.Usage = c.choices.usage(promptUsage(c.prompts))
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (c *completionState) stream(w http.ResponseWriter, ctx context.Context, events <-chan choiceEvent) error {
	s := startSSE(w)
	for ev := range events {
		st, send, err := c.choices.take(&ev, false)
		if err != nil {
			return s.fail(err)
		}
		if !send {
			continue
		}
		text := ev.Text
		if !st.started {
			text = c.echoed(ev.Index) + text
		}
		ch := completionChoice{Index: ev.Index, Text: text, FinishReason: finishReason(&ev.Event), StopReason: ev.StopReason}
		if c.req.Logprobs != nil {
			ch.Logprobs = &completionLogprobs{}
			if !st.started {
				c.echoLogprobs(ch.Logprobs, ev.Index, st)
			}
			c.h.appendCompletion(ch.Logprobs, &ev.Event, c.req.ReturnTokensAsTokenIDs, &st.offset)
		}
		if c.req.ReturnTokenIDs {
			ch.TokenIDs = nonNil(ev.Tokens)
			if !st.started {
				ch.PromptTokenIDs = c.promptOf(ev.Index)
			}
		}
		if c.req.ExpertTrace {
			st.counts.add(ev.Experts)
			ch.ExpertTrace = traceOf(ev.Experts)
			if ev.Finish != "" {
				ch.ExpertSummary = st.counts.summary()
			}
		}
		st.started = true
		if err := s.send(completionResponse{ID: c.id, Object: "text_completion", Created: c.created, Model: c.model, Choices: []completionChoice{ch}}); err != nil {
			return err // the client is gone; the deferred cancel aborts the requests
		}
	}
	if err := c.choices.complete(ctx); err != nil {
		return err
	}
	if c.req.includeUsage() {
		if err := s.send(completionResponse{ID: c.id, Object: "text_completion", Created: c.created, Model: c.model,
			Choices: []completionChoice{}, Usage: c.choices.usage(promptUsage(c.prompts))}); err != nil {
			return err
		}
	}
	return s.done()
}

// echoLogprobs starts choice i's logprobs with its echoed prompt's, once every prompt logprob
// has arrived (they all precede the first token and the final event).
func (c *completionState) echoLogprobs(lp *completionLogprobs, i int, st *choiceState) {
	if c.req.Echo {
		c.h.appendEcho(lp, c.promptOf(i), st.prompt, *c.req.Logprobs, c.req.ReturnTokensAsTokenIDs, &st.offset)
	}
}

// nonNil keeps an empty token list as [] rather than null in JSON.
func nonNil(v []int) []int {
	if v == nil {
		return []int{}
	}
	return v
}
