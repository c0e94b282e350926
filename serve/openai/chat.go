package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/toolcall"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// chatMessage is an OpenAI chat message as it arrives.
type chatMessage struct {
	Role             string            `json:"role"`
	Content          json.RawMessage   `json:"content"`
	Name             string            `json:"name"`
	ToolCallID       string            `json:"tool_call_id"`
	ReasoningContent string            `json:"reasoning_content"`
	ToolCalls        []json.RawMessage `json:"tool_calls"`
}

// chatFields are what chat rendering needs; /tokenize shares them.
type chatFields struct {
	Messages             []chatMessage     `json:"messages"`
	AddGenerationPrompt  *bool             `json:"add_generation_prompt"`
	ContinueFinalMessage bool              `json:"continue_final_message"`
	ChatTemplateKwargs   map[string]any    `json:"chat_template_kwargs"`
	Tools                []json.RawMessage `json:"tools"`
}

type chatRequest struct {
	samplingFields
	chatFields
	refusedChatFields
	toolFields
	MaxCompletionTokens *int `json:"max_completion_tokens"`
	Logprobs            bool `json:"logprobs"`
	TopLogprobs         *int `json:"top_logprobs"`
}

// chatResponseMessage is a choice's message; its content is null when the model only called
// tools, as OpenAI's.
type chatResponseMessage struct {
	Role      string         `json:"role"`
	Content   *string        `json:"content"`
	ToolCalls []chatToolCall `json:"tool_calls,omitempty"`
}

// chatDelta is a streamed choice's delta: only what this chunk adds.
type chatDelta struct {
	Role      string         `json:"role,omitempty"`
	Content   *string        `json:"content,omitempty"`
	ToolCalls []chatToolCall `json:"tool_calls,omitempty"`
}

type chatChoice struct {
	Index        int                  `json:"index"`
	Message      *chatResponseMessage `json:"message,omitempty"`
	Delta        *chatDelta           `json:"delta,omitempty"`
	Logprobs     *chatLogprobs        `json:"logprobs"`
	FinishReason *string              `json:"finish_reason"`
	StopReason   any                  `json:"stop_reason"`
	TokenIDs     any                  `json:"token_ids,omitempty"`
	// Extensions for routers (request field expert_trace).
	ExpertTrace   any `json:"expert_trace,omitempty"`
	ExpertSummary any `json:"expert_summary,omitempty"`
}

type chatResponse struct {
	ID             string       `json:"id"`
	Object         string       `json:"object"`
	Created        int64        `json:"created"`
	Model          string       `json:"model"`
	Choices        []chatChoice `json:"choices"`
	Usage          *usage       `json:"usage,omitempty"`
	PromptTokenIDs []int        `json:"prompt_token_ids,omitempty"`
	// PromptLogprobs is vLLM's (request field prompt_logprobs): the rendered prompt's.
	PromptLogprobs any `json:"prompt_logprobs,omitempty"`
}

// render turns messages into prompt text with the chat template.
func (h *Handler) render(f *chatFields) (string, error) {
	if h.opt.ChatTemplate == nil {
		return "", invalid("messages", "this model has no chat template; use /v1/completions")
	}
	if len(f.Messages) == 0 {
		return "", invalid("messages", "messages must not be empty")
	}
	msgs := make([]chat.Message, len(f.Messages))
	for i, m := range f.Messages {
		if m.Role == "" {
			return "", invalid("messages", "messages[%d].role is required", i)
		}
		content, err := messageContent(m.Content, i)
		if err != nil {
			return "", err
		}
		msgs[i] = chat.Message{Role: m.Role, Content: content, Name: m.Name, ToolCallID: m.ToolCallID, ReasoningContent: m.ReasoningContent}
		for j, tc := range m.ToolCalls {
			var call struct {
				ID       string `json:"id"`
				Type     string `json:"type"`
				Function struct {
					Name      string          `json:"name"`
					Arguments json.RawMessage `json:"arguments"`
				} `json:"function"`
			}
			if err := json.Unmarshal(tc, &call); err != nil {
				return "", invalid("messages", "messages[%d].tool_calls: %v", i, err)
			}
			c := chat.ToolCall{ID: call.ID, Type: call.Type}
			c.Function.Name = call.Function.Name
			c.Function.Arguments = call.Function.Arguments
			if s := ""; json.Unmarshal(call.Function.Arguments, &s) == nil {
				args, err := serve.ToolCallArguments(s)
				if err != nil {
					return "", invalid("messages", "messages[%d].tool_calls[%d].function.%v", i, j, err)
				}
				c.Function.Arguments = args
			}
			msgs[i].ToolCalls = append(msgs[i].ToolCalls, c)
		}
	}
	addGen := f.AddGenerationPrompt == nil || *f.AddGenerationPrompt
	if f.ContinueFinalMessage {
		addGen = false
	}
	opts := chat.Options{AddGenerationPrompt: addGen, Tokens: h.opt.ChatTokens, Extra: f.ChatTemplateKwargs}
	if len(f.Tools) > 0 {
		opts.RawTools = f.Tools
	}
	text, err := h.opt.ChatTemplate.Render(msgs, opts)
	if err != nil {
		return "", invalid("messages", "rendering the chat template: %v", err)
	}
	if f.ContinueFinalMessage {
		// Cut the rendering right after the last message's content, as vLLM does, so the model
		// continues that message instead of closing it.
		last := msgs[len(msgs)-1].Content
		if i := strings.LastIndex(text, last); i >= 0 && last != "" {
			text = text[:i+len(last)]
		}
	}
	return text, nil
}

// messageContent accepts a string, null, or an array of text parts.
func messageContent(raw json.RawMessage, i int) (string, error) {
	raw = bytes.TrimSpace(raw)
	if isNull(raw) {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", invalid("messages", "messages[%d].content must be a string or an array of content parts", i)
	}
	texts := make([]string, 0, len(parts))
	for _, p := range parts {
		if p.Type != "text" {
			return "", invalid("messages", "messages[%d].content: part type %q is not supported (text only)", i, p.Type)
		}
		texts = append(texts, p.Text)
	}
	return strings.Join(texts, "\n"), nil
}

func (h *Handler) chatCompletions(w http.ResponseWriter, r *http.Request) error {
	var req chatRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	if req.MaxTokens == nil {
		req.MaxTokens = req.MaxCompletionTokens
	}
	if err := req.refusedChatFields.check(); err != nil {
		return err
	}
	run, err := h.startChat(r.Context(), &req, nil)
	if err != nil {
		return err
	}
	defer run.cancel()
	c := &chatState{h: h, req: &req, prompt: run.prompt, id: newID("chatcmpl-"), created: time.Now().Unix(),
		model: h.modelName(req.Model), choices: newChoiceSet(run.n, run.n), tools: run.tools}
	if req.Stream {
		return c.stream(w, r.Context(), run.events)
	}
	return c.collect(w, r.Context(), run.events)
}

// chatRun is a chat request checked, rendered, tokenized and running in the engine.
type chatRun struct {
	prompt []int
	n      int
	tools  serve.ToolPlan
	events <-chan choiceEvent
	cancel context.CancelFunc // ends the run; the caller calls it when done
}

// startChat is the one request path of /v1/chat/completions and /v1/responses (which converts
// its request into the chat request it means): the parameter checks and limits, the tools,
// the template, the tokenizer and the engine, in this order, so that every cost is bounded
// before work starts. format is an output constraint given outside the chat fields (the
// Responses API's text.format); nil when none.
func (h *Handler) startChat(ctx context.Context, req *chatRequest, format *serve.Constraint) (*chatRun, error) {
	p, err := req.params(0)
	if err != nil {
		return nil, err
	}
	if format != nil {
		if p.Constraint != nil {
			return nil, invalid(p.Constraint.Param, "only one structured output constraint may be given, got %s and %s", format.Param, p.Constraint.Param)
		}
		p.Constraint = format
	}
	if req.TopLogprobs != nil && (*req.TopLogprobs < 0 || *req.TopLogprobs > 20) {
		return nil, invalid("top_logprobs", "top_logprobs must be between 0 and 20, got %d", *req.TopLogprobs)
	}
	if req.Logprobs {
		p.Logprobs = -1
		if req.TopLogprobs != nil && *req.TopLogprobs > 0 {
			p.Logprobs = *req.TopLogprobs
		}
	}
	n, err := req.choices(h.opt.MaxN)
	if err != nil {
		return nil, err
	}
	if err := h.check(&req.samplingFields, &p, 1, n, len(req.Messages), len(req.Tools)); err != nil {
		return nil, err
	}
	if err := h.checkTrace(req.Model, req.ExpertTrace); err != nil {
		return nil, err
	}
	plan, err := h.planTools(req, &p)
	if err != nil {
		return nil, err
	}
	text, err := h.render(&req.chatFields)
	if err != nil {
		return nil, err
	}
	// Templates write the BOS token themselves; adding it again would double it (vLLM's default).
	addSpecial := req.AddSpecialTokens != nil && *req.AddSpecialTokens
	prompt, err := h.encode(text, addSpecial, "messages")
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	events, err := h.run(runCtx, req.Model, [][]int{prompt}, n, p, req.ExpertTrace)
	if err != nil {
		cancel()
		return nil, err
	}
	return &chatRun{prompt: prompt, n: n, tools: plan, events: events, cancel: cancel}, nil
}

type chatState struct {
	h       *Handler
	req     *chatRequest
	prompt  []int
	id      string
	created int64
	model   string
	choices choiceSet
	tools   serve.ToolPlan
}

func (c *chatState) collect(w http.ResponseWriter, ctx context.Context, events <-chan choiceEvent) error {
	for ev := range events {
		st, _, err := c.choices.take(&ev, true)
		if err != nil {
			return err
		}
		if c.req.Logprobs {
			if st.chatLP == nil {
				st.chatLP = &chatLogprobs{Content: []chatLogprob{}}
			}
			c.h.appendChat(st.chatLP, &ev.Event, c.req.ReturnTokensAsTokenIDs)
		}
	}
	if err := c.choices.complete(ctx); err != nil {
		return err
	}
	resp := chatResponse{ID: c.id, Object: "chat.completion", Created: c.created, Model: c.model, Choices: make([]chatChoice, len(c.choices.st))}
	for i := range c.choices.st {
		st := &c.choices.st[i]
		text := string(st.text)
		msg := &chatResponseMessage{Role: "assistant", Content: &text}
		finish := finishReason(&st.final)
		if f := c.tools.Format; f != nil {
			content, calls := f.Parse(text, c.tools.MaxCalls)
			msg.Content = nil
			if content != "" {
				msg.Content = &content
			}
			for _, call := range calls {
				msg.ToolCalls = append(msg.ToolCalls, chatToolCall{ID: toolcall.NewCallID(), Type: "function",
					Function: chatFunctionCall{Name: call.Name, Arguments: call.Arguments}})
			}
			finish = finishWithCalls(&c.tools, finish, len(calls))
		}
		ch := chatChoice{Index: i, Message: msg, Logprobs: st.chatLP, FinishReason: finish, StopReason: st.final.StopReason}
		if c.req.ReturnTokenIDs {
			ch.TokenIDs = nonNil(st.tokens)
		}
		if c.req.ExpertTrace {
			st.counts.add(st.experts)
			ch.ExpertTrace, ch.ExpertSummary = traceOf(st.experts), st.counts.summary()
		}
		resp.Choices[i] = ch
	}
	if c.req.ReturnTokenIDs {
		resp.PromptTokenIDs = c.prompt
	}
	if c.req.PromptLogprobs != nil {
		resp.PromptLogprobs = c.h.promptLogprobs(c.choices.st[0].prompt, *c.req.PromptLogprobs, c.req.ReturnTokensAsTokenIDs)
	}
	resp.Usage = c.choices.usage(len(c.prompt))
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (c *chatState) chunk(choices ...chatChoice) chatResponse {
	return chatResponse{ID: c.id, Object: "chat.completion.chunk", Created: c.created, Model: c.model, Choices: choices}
}

func (c *chatState) stream(w http.ResponseWriter, ctx context.Context, events <-chan choiceEvent) error {
	s := startSSE(w)
	// OpenAI sends the role first, in a chunk of its own, for every choice.
	empty := ""
	for i := range c.choices.st {
		first := c.chunk(chatChoice{Index: i, Delta: &chatDelta{Role: "assistant", Content: &empty}})
		if c.req.ReturnTokenIDs && i == 0 {
			first.PromptTokenIDs = c.prompt
		}
		if err := s.send(first); err != nil {
			return err
		}
	}
	var parsers []*toolStream
	if c.tools.Format != nil {
		parsers = make([]*toolStream, len(c.choices.st))
		for i := range parsers {
			parsers[i] = &toolStream{s: c.tools.Format.NewStream(c.tools.MaxCalls)}
		}
	}
	for ev := range events {
		st, send, err := c.choices.take(&ev, false)
		if err != nil {
			return s.fail(err)
		}
		if !send {
			continue
		}
		text := ev.Text
		ch := chatChoice{Index: ev.Index, Delta: &chatDelta{Content: &text}, FinishReason: finishReason(&ev.Event), StopReason: ev.StopReason}
		if parsers != nil {
			// Each parsed piece is a chunk of its own; this event's other fields (logprobs,
			// token ids, expert trace) ride on the last one, and the finish reason, as OpenAI
			// sends it, on a chunk with an empty delta after them.
			p := parsers[ev.Index]
			deltas := p.feed(ev.Text, ev.Finish != "")
			last := len(deltas) - 1
			if ev.Finish != "" {
				last = len(deltas)
			}
			for _, d := range deltas[:max(last, 0)] {
				if err := s.send(c.chunk(chatChoice{Index: ev.Index, Delta: d})); err != nil {
					return err
				}
			}
			ch.Delta = &chatDelta{}
			if last >= 0 && last < len(deltas) {
				ch.Delta = deltas[last]
			}
			ch.FinishReason = finishWithCalls(&c.tools, ch.FinishReason, p.calls)
			if len(deltas) == 0 && ch.FinishReason == nil && !c.req.Logprobs && !c.req.ReturnTokenIDs && !c.req.ExpertTrace {
				continue // held back: nothing to say yet
			}
		}
		if c.req.Logprobs {
			ch.Logprobs = &chatLogprobs{Content: []chatLogprob{}}
			c.h.appendChat(ch.Logprobs, &ev.Event, c.req.ReturnTokensAsTokenIDs)
		}
		if c.req.ReturnTokenIDs {
			ch.TokenIDs = nonNil(ev.Tokens)
		}
		if c.req.ExpertTrace {
			st.counts.add(ev.Experts)
			ch.ExpertTrace = traceOf(ev.Experts)
			if ev.Finish != "" {
				ch.ExpertSummary = st.counts.summary()
			}
		}
		if err := s.send(c.chunk(ch)); err != nil {
			return err
		}
	}
	if err := c.choices.complete(ctx); err != nil {
		return err
	}
	if c.req.includeUsage() {
		u := c.chunk()
		u.Choices = []chatChoice{}
		u.Usage = c.choices.usage(len(c.prompt))
		if err := s.send(u); err != nil {
			return err
		}
	}
	return s.done()
}
