package openai

import (
	"bytes"
	"encoding/json"
	"strings"

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

// functionTools checks the request's tools (OpenAI's {"type":"function","function":{name,
// description, parameters, strict}}) and returns them; the count was bounded before. strict
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
		if err := tools[i].Check(); err != nil {
			return nil, invalid("tools", "tools[%d]: %v", i, err)
		}
	}
	return tools, nil
}

// Tool choices.
const (
	choiceNone     = "none"
	choiceAuto     = "auto"
	choiceRequired = "required"
	choiceFunction = "function" // a named function
)

// toolPlan is what a chat request's tool fields ask of one response.
type toolPlan struct {
	format   *toolcall.Format // nil: the output is not parsed (no tools, or tool_choice none)
	choice   string
	maxCalls int // 0: any number
}

// planTools reads tools, tool_choice and parallel_tool_calls, and adds to p what they need: a
// forced call's constraint, special tokens kept for a format whose markers are special.
func (h *Handler) planTools(req *chatRequest, p *serve.SamplingParams) (toolPlan, error) {
	tools, err := functionTools(req.Tools)
	if err != nil {
		return toolPlan{}, err
	}
	choice, name, err := toolChoice(req.ToolChoice, len(tools) > 0)
	if err != nil {
		return toolPlan{}, err
	}
	if choice == choiceNone || choice == choiceAuto && len(tools) == 0 {
		return toolPlan{choice: choiceNone}, nil // auto without tools can only answer in text
	}
	if len(tools) == 0 {
		return toolPlan{}, invalid("tool_choice", "tool_choice %q needs tools", choice)
	}
	if h.toolFormat == nil {
		return toolPlan{}, invalid("tools", "tool calls need to know this model's tool-call format and its chat template does not say: "+
			"start the server with --tool-call-parser (one of %s), or send tool_choice \"none\"", strings.Join(toolcall.Names(), ", "))
	}
	plan := toolPlan{format: h.toolFormat, choice: choice}
	if req.ParallelToolCalls != nil && !*req.ParallelToolCalls {
		plan.maxCalls = 1
	}
	if h.toolFormat.KeepsSpecialTokens() && req.SkipSpecialTokens == nil {
		p.SkipSpecialTokens = false // the format's markers are special tokens
	}
	if choice == choiceAuto {
		return plan, nil
	}
	forced := tools
	if choice == choiceFunction {
		forced = nil
		for _, t := range tools {
			if t.Name == name {
				forced = []toolcall.Tool{t}
				break
			}
		}
		if forced == nil {
			return toolPlan{}, invalid("tool_choice", "tool_choice names function %q, which is not in tools", name)
		}
		plan.maxCalls = 1
	}
	if p.Constraint != nil {
		return toolPlan{}, invalid("tool_choice", "tool_choice %q forces a tool call and cannot be combined with %s", choice, p.Constraint.Param)
	}
	p.Constraint = &serve.Constraint{Spec: h.toolFormat.Force(forced, plan.maxCalls == 1), Param: "tools"}
	return plan, nil
}

// toolChoice reads tool_choice: "none", "auto", "required" or {"type": "function",
// "function": {"name": ...}}; absent, it is auto with tools and none without (OpenAI's).
func toolChoice(raw json.RawMessage, haveTools bool) (choice, name string, err error) {
	if isNull(raw) {
		if haveTools {
			return choiceAuto, "", nil
		}
		return choiceNone, "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		switch s {
		case choiceNone, choiceAuto, choiceRequired:
			return s, "", nil
		}
		return "", "", invalid("tool_choice", "tool_choice must be none, auto, required or a named function, got %q", s)
	}
	var named struct {
		Type     string          `json:"type"`
		Function json.RawMessage `json:"function"`
	}
	if err := strictObject(raw, "tool_choice", &named, "type", "function"); err != nil || named.Type != "function" {
		return "", "", invalid("tool_choice", `tool_choice must be none, auto, required or {"type": "function", "function": {"name": ...}}`)
	}
	var f struct {
		Name string `json:"name"`
	}
	if isNull(named.Function) || strictObject(named.Function, "tool_choice", &f, "name") != nil || f.Name == "" {
		return "", "", invalid("tool_choice", "tool_choice.function must be an object with a name")
	}
	return choiceFunction, f.Name, nil
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

// finishWithCalls is OpenAI's finish reason for a choice that made calls: "tool_calls" when
// the model stopped after them, except for a named function, where OpenAI (and vLLM) say
// "stop"; a call cut short by the length limit keeps "length".
func (t *toolPlan) finishWithCalls(reason *string, calls int) *string {
	if reason == nil || *reason != "stop" || calls == 0 || t.choice == choiceFunction {
		return reason
	}
	r := "tool_calls"
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
			t.ids = append(t.ids, newID("call_"))
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
