package openai

import (
	"bytes"
	"encoding/json"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/toolcall"
)

// Tool calling on chat: the request's tools are checked here and rendered by the chat
// template; tool_choice decides whether the output is parsed into calls (auto), forced to be
// calls through constrained decoding (required, a named function), or left alone (none). The
// wire formats, their parsing and forcing are serve/toolcall's. /v1/responses converts its
// function tools to chat's (responsesTools) and runs on this same plan.

// toolFields are chat's tool-calling request fields besides tools (chatFields has those: the
// template renders them, /tokenize too).
type toolFields struct {
	ToolChoice        json.RawMessage `json:"tool_choice"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls"`
}

// functionTools reads the request's tools (OpenAI's {"type":"function","function":{name,
// description, parameters, strict}}); the count was bounded before, and serve.PlanTools checks
// each one. strict
// is accepted: forced calls always follow the schema, and auto calls are the model's (as vLLM).
// A good tool's JSON is decoded once (a request may carry megabytes of schemas).
func functionTools(raw []json.RawMessage) ([]toolcall.Tool, error) {
	tools := make([]toolcall.Tool, len(raw))
	for i, r := range raw {
		var t struct {
			Type     string `json:"type"`
			Function *struct {
				Name        string          `json:"name"`
				Description json.RawMessage `json:"description"`
				Parameters  json.RawMessage `json:"parameters"`
				Strict      json.RawMessage `json:"strict"`
			} `json:"function"`
		}
		dec := json.NewDecoder(bytes.NewReader(r))
		dec.DisallowUnknownFields()
		err := dec.Decode(&t)
		if err != nil || t.Type != "function" {
			var typ struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(r, &typ) == nil && typ.Type != "function" {
				return nil, invalid("tools", "tools[%d]: only function tools are supported (type \"function\"), got type %q", i, typ.Type)
			}
		}
		if err != nil || t.Function == nil {
			return nil, invalid("tools", "tools[%d] must be {\"type\": \"function\", \"function\": {name, and optionally description, parameters and strict}}", i)
		}
		tools[i] = toolcall.Tool{Name: t.Function.Name, Parameters: t.Function.Parameters}
	}
	return tools, nil
}

// planTools reads tools, tool_choice and parallel_tool_calls into serve's plan, which adds to
// p what they need.
func (h *Handler) planTools(req *chatRequest, p *serve.SamplingParams) (serve.ToolPlan, error) {
	tools, err := functionTools(req.Tools)
	if err != nil {
		return serve.ToolPlan{}, err
	}
	choice, name, err := toolChoice(req.ToolChoice)
	if err != nil {
		return serve.ToolPlan{}, err
	}
	return serve.PlanTools(h.toolFormat, &serve.ToolRequest{Tools: tools, Choice: choice, Function: name,
		SingleCall: req.ParallelToolCalls != nil && !*req.ParallelToolCalls, SkipSpecialTokensSet: req.SkipSpecialTokens != nil}, p)
}

// toolChoices are tool_choice's string values.
var toolChoices = map[string]serve.ToolChoice{"none": serve.ToolChoiceNone, "auto": serve.ToolChoiceAuto, "required": serve.ToolChoiceRequired}

// toolChoice reads tool_choice: "none", "auto", "required" or {"type": "function",
// "function": {"name": ...}}; absent, the default (serve.PlanTools decides).
func toolChoice(raw json.RawMessage) (choice serve.ToolChoice, name string, err error) {
	if isNull(raw) {
		return serve.ToolChoiceDefault, "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if c, ok := toolChoices[s]; ok {
			return c, "", nil
		}
		return 0, "", invalid("tool_choice", "tool_choice must be none, auto, required or a named function, got %q", s)
	}
	var named struct {
		Type     string          `json:"type"`
		Function json.RawMessage `json:"function"`
	}
	if err := strictObject(raw, "tool_choice", &named, "type", "function"); err != nil || named.Type != "function" {
		return 0, "", invalid("tool_choice", `tool_choice must be none, auto, required or {"type": "function", "function": {"name": ...}}`)
	}
	var f struct {
		Name string `json:"name"`
	}
	if isNull(named.Function) || strictObject(named.Function, "tool_choice", &f, "name") != nil || f.Name == "" {
		return 0, "", invalid("tool_choice", "tool_choice.function must be an object with a name")
	}
	return serve.ToolChoiceFunction, f.Name, nil
}

// chatToolCall is a tool call in a response message or a stream delta (Index: streams only).
type chatToolCall struct {
	Index    *int             `json:"index,omitempty"`
	ID       string           `json:"id,omitempty"`
	Type     string           `json:"type,omitempty"`
	Function chatFunctionCall `json:"function"`
}

type chatFunctionCall struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// finishWithCalls is serve.ToolPlan.FinishWithCalls on OpenAI's nullable finish reason.
func finishWithCalls(t *serve.ToolPlan, reason *string, calls int) *string {
	if reason == nil {
		return nil
	}
	r := t.FinishWithCalls(*reason, calls)
	return &r
}

// toolStream parses one streamed choice into OpenAI's deltas.
type toolStream struct {
	s     *toolcall.Stream
	ids   []string
	calls int
}

// feed parses text (and ends the output when last) into deltas as OpenAI streams them: text
// outside calls as content; a call's first delta with its index, id, type, name and arguments
// ""; then fragments of its arguments, consecutive ones merged.
func (t *toolStream) feed(text string, last bool) []*chatDelta {
	parsed := t.s.Feed(text)
	if last {
		parsed = append(parsed, t.s.Finish()...)
	}
	var out []*chatDelta
	for _, d := range parsed {
		switch {
		case !d.Call:
			content := d.Content
			out = append(out, &chatDelta{Content: &content})
		case d.Start:
			t.ids = append(t.ids, toolcall.NewCallID())
			t.calls++
			index := d.Index
			out = append(out, &chatDelta{ToolCalls: []chatToolCall{{Index: &index, ID: t.ids[d.Index], Type: "function",
				Function: chatFunctionCall{Name: d.Name, Arguments: ""}}}})
		default:
			if n := len(out); n > 0 && len(out[n-1].ToolCalls) == 1 && out[n-1].ToolCalls[0].ID == "" && *out[n-1].ToolCalls[0].Index == d.Index {
				out[n-1].ToolCalls[0].Function.Arguments += d.Arguments
				continue
			}
			index := d.Index
			out = append(out, &chatDelta{ToolCalls: []chatToolCall{{Index: &index, Function: chatFunctionCall{Arguments: d.Arguments}}}})
		}
	}
	return out
}
