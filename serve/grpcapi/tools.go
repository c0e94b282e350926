package grpcapi

import (
	"encoding/json"
	"fmt"
	"strings"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/toolcall"
)

// Tool calling on ChatPrompt: the proto's tools, tool_choice and parallel_tool_calls are
// decoded into serve's ToolRequest and planned by serve.PlanTools, as the HTTP API's are, so a
// request means the same on both; the output is parsed by the format's toolcall.Stream into
// GenerateResponse.tool_calls.

// chatTools bounds a ChatPrompt's messages and tools (before any of them is read) and returns
// its tools as serve checks them.
func (s *Service) chatTools(p *loraplexv1.ChatPrompt) ([]toolcall.Tool, error) {
	if err := s.e.CheckCounts(serve.Counts{Messages: len(p.GetMessages()), Tools: len(p.GetTools())}); err != nil {
		return nil, err
	}
	tools := make([]toolcall.Tool, len(p.GetTools()))
	for i, t := range p.GetTools() {
		tools[i] = toolcall.Tool{Name: t.GetName(), Parameters: json.RawMessage(t.GetParameters())}
	}
	return tools, nil
}

// toolModes are ToolChoiceMode's meanings.
var toolModes = map[loraplexv1.ToolChoiceMode]serve.ToolChoice{
	loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_UNSPECIFIED: serve.ToolChoiceDefault,
	loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_NONE:        serve.ToolChoiceNone,
	loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_AUTO:        serve.ToolChoiceAuto,
	loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_REQUIRED:    serve.ToolChoiceRequired,
}

// planTools plans a ChatPrompt's tool calling into p (serve.PlanTools: the tools' checks, a
// forced call's constraint). skipSet says the client chose skip_special_tokens itself.
func (s *Service) planTools(cp *loraplexv1.ChatPrompt, tools []toolcall.Tool, skipSet bool, p *serve.SamplingParams) (serve.ToolPlan, error) {
	r := serve.ToolRequest{Tools: tools, SingleCall: cp.ParallelToolCalls != nil && !*cp.ParallelToolCalls, SkipSpecialTokensSet: skipSet}
	switch c := cp.GetToolChoice().GetChoice().(type) {
	case nil:
	case *loraplexv1.ToolChoice_Mode:
		choice, ok := toolModes[c.Mode]
		if !ok {
			return serve.ToolPlan{}, invalid("tool_choice", fmt.Sprintf("tool_choice.mode %d is not a ToolChoiceMode", c.Mode))
		}
		r.Choice = choice
	case *loraplexv1.ToolChoice_Function:
		if c.Function == "" {
			return serve.ToolPlan{}, invalid("tool_choice", "tool_choice.function must name a function")
		}
		r.Choice, r.Function = serve.ToolChoiceFunction, c.Function
	}
	return serve.PlanTools(s.toolFormat, &r, p)
}

// templateTools are a ChatPrompt's (checked) tools as the chat template sees them: OpenAI's
// {"type": "function", "function": {name, description, parameters}}, the parameters' key order
// kept (tojson output depends on it).
func templateTools(tools []*loraplexv1.Tool) ([]json.RawMessage, error) {
	type function struct {
		Name        string          `json:"name"`
		Description string          `json:"description,omitempty"`
		Parameters  json.RawMessage `json:"parameters,omitempty"`
	}
	out := make([]json.RawMessage, len(tools))
	for i, t := range tools {
		var params json.RawMessage
		if p := strings.TrimSpace(t.GetParameters()); p != "" {
			params = json.RawMessage(p)
		}
		b, err := json.Marshal(struct {
			Type     string   `json:"type"`
			Function function `json:"function"`
		}{"function", function{t.GetName(), t.GetDescription(), params}})
		if err != nil {
			return nil, invalid("tools", fmt.Sprintf("tools[%d]: %v", i, err))
		}
		out[i] = b
	}
	return out, nil
}

// toolStream turns one output's text, event by event, into GenerateResponse's text (the
// content outside calls) and tool_calls (a call's first piece with its id and name, then
// fragments of its arguments, consecutive ones merged).
type toolStream struct {
	s     *toolcall.Stream
	calls int
}

// feed parses text (and ends the output when last) into r's text and tool calls.
func (t *toolStream) feed(r *loraplexv1.GenerateResponse, text string, last bool) {
	parsed := t.s.Feed(text)
	if last {
		parsed = append(parsed, t.s.Finish()...)
	}
	var content strings.Builder
	for _, d := range parsed {
		switch {
		case !d.Call:
			content.WriteString(d.Content)
		case d.Start:
			t.calls++
			r.ToolCalls = append(r.ToolCalls, &loraplexv1.ToolCall{Index: int32(d.Index), Id: toolcall.NewCallID(), Name: validUTF8(d.Name)})
		default:
			if n := len(r.ToolCalls); n > 0 && r.ToolCalls[n-1].Index == int32(d.Index) {
				r.ToolCalls[n-1].Arguments += validUTF8(d.Arguments)
				continue
			}
			r.ToolCalls = append(r.ToolCalls, &loraplexv1.ToolCall{Index: int32(d.Index), Arguments: validUTF8(d.Arguments)})
		}
	}
	r.Text = validUTF8(content.String())
}

// validUTF8 guards the wire, as response does for text: the engine emits whole characters,
// but proto3 refuses to marshal a string that is not UTF-8, which would fail the whole call.
func validUTF8(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
