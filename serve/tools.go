package serve

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/loraplex/loraplex/serve/toolcall"
)

// Tool calling, as both gateways plan it: a request's tools and tool_choice decide whether a
// response's output is parsed into calls (auto), forced to be calls through constrained
// decoding (required, a named function), or left alone (none). The gateways only decode their
// wire shapes into a ToolRequest; the checks, the plan and the finish reason are here, so the
// OpenAI API and gRPC answer a request the same way. The wire formats themselves, their
// parsing and forcing, are serve/toolcall's.

// ToolChoice is what a request's tool_choice asks for.
type ToolChoice uint8

const (
	// ToolChoiceDefault is an absent tool_choice: auto with tools, none without (OpenAI's).
	ToolChoiceDefault ToolChoice = iota
	ToolChoiceNone
	ToolChoiceAuto
	ToolChoiceRequired
	ToolChoiceFunction // the function ToolRequest.Function names
)

// String is the choice's OpenAI name, for errors.
func (c ToolChoice) String() string {
	return [...]string{"default", "none", "auto", "required", "function"}[min(int(c), int(ToolChoiceFunction))]
}

// ToolRequest is a request's tool-calling fields, as a gateway decoded them.
type ToolRequest struct {
	// Tools are the offered functions, not yet checked (CheckTools). Their count was bounded
	// before (Counts.Tools).
	Tools    []toolcall.Tool
	Choice   ToolChoice
	Function string // the function ToolChoiceFunction names
	// SingleCall is parallel_tool_calls false: at most one call per response.
	SingleCall bool
	// SkipSpecialTokensSet says the client chose skip_special_tokens itself; otherwise a
	// format whose markers are special tokens keeps them, for the parser to see.
	SkipSpecialTokensSet bool
}

// ToolPlan is what a request's tool fields ask of its responses.
type ToolPlan struct {
	// Format parses the output into calls; nil: the output is not parsed (no tools, or
	// tool_choice none).
	Format   *toolcall.Format
	Choice   ToolChoice
	MaxCalls int // 0: any number
}

// CheckTools checks each tool (name, parameters' size, depth and shape: toolcall.Tool.Check)
// and that no two share a name, which would make a named tool_choice and the calls' names
// ambiguous. Errors name the field "tools" and the tool's index.
func CheckTools(tools []toolcall.Tool) error {
	seen := make(map[string]int, len(tools))
	for i := range tools {
		if err := tools[i].Check(); err != nil {
			return errorf(KindInvalid, "tools", "tools[%d]: %v", i, err)
		}
		if j, dup := seen[tools[i].Name]; dup {
			return errorf(KindInvalid, "tools", "tools[%d] and tools[%d] are both named %q; function names must be unique", j, i, tools[i].Name)
		}
		seen[tools[i].Name] = i
	}
	return nil
}

// PlanTools checks r's tools and choice and adds to p what they need: a forced call's
// constraint, special tokens kept for a format whose markers are special. format is the
// model's tool-call format (--tool-call-parser, or the one its chat template teaches); nil
// when unknown, which fails a request that wants calls.
func PlanTools(format *toolcall.Format, r *ToolRequest, p *SamplingParams) (ToolPlan, error) {
	if err := CheckTools(r.Tools); err != nil {
		return ToolPlan{}, err
	}
	choice := r.Choice
	if choice == ToolChoiceDefault {
		choice = ToolChoiceNone
		if len(r.Tools) > 0 {
			choice = ToolChoiceAuto
		}
	}
	if choice == ToolChoiceNone || choice == ToolChoiceAuto && len(r.Tools) == 0 {
		return ToolPlan{Choice: ToolChoiceNone}, nil // auto without tools can only answer in text
	}
	if len(r.Tools) == 0 {
		return ToolPlan{}, errorf(KindInvalid, "tool_choice", "tool_choice %q needs tools", choice)
	}
	if format == nil {
		return ToolPlan{}, errorf(KindInvalid, "tools", "tool calls need to know this model's tool-call format and its chat template does not say: "+
			"start the server with --tool-call-parser (one of %s), or send tool_choice \"none\"", strings.Join(toolcall.Names(), ", "))
	}
	plan := ToolPlan{Format: format, Choice: choice}
	if r.SingleCall {
		plan.MaxCalls = 1
	}
	if format.KeepsSpecialTokens() && !r.SkipSpecialTokensSet {
		p.SkipSpecialTokens = false // the format's markers are special tokens
	}
	if choice == ToolChoiceAuto {
		return plan, nil
	}
	forced := r.Tools
	if choice == ToolChoiceFunction {
		forced = nil
		for _, t := range r.Tools {
			if t.Name == r.Function {
				forced = []toolcall.Tool{t}
				break
			}
		}
		if forced == nil {
			return ToolPlan{}, errorf(KindInvalid, "tool_choice", "tool_choice names function %q, which is not in tools", r.Function)
		}
		plan.MaxCalls = 1
	}
	if p.Constraint != nil {
		return ToolPlan{}, errorf(KindInvalid, "tool_choice", "tool_choice %q forces a tool call and cannot be combined with %s", choice, p.Constraint.Param)
	}
	p.Constraint = &Constraint{Spec: format.Force(forced, plan.MaxCalls == 1), Param: "tools"}
	return plan, nil
}

// FinishWithCalls is the finish reason of a response that made calls: "tool_calls" when the
// model stopped after them, except for a named function, where OpenAI (and vLLM) say "stop";
// a call cut short by the length limit keeps "length".
func (t *ToolPlan) FinishWithCalls(reason string, calls int) string {
	if reason != "stop" || calls == 0 || t.Choice == ToolChoiceFunction {
		return reason
	}
	return "tool_calls"
}

// ToolCallArguments is what a chat template gets for the arguments of a tool call in an
// incoming assistant message, which clients send as OpenAI writes them: a string of JSON.
// Templates are written for the parsed value (Llama 3.1's `arguments | tojson` would put a
// quoted string of JSON inside the call, and Qwen's and Hermes' render an object with tojson's
// spacing), so the string is parsed, as vLLM and transformers' own examples do, and the model
// sees its earlier calls as it was trained to. An empty string is no arguments ({}); a string
// that is not JSON is the client's error.
func ToolCallArguments(s string) (json.RawMessage, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return json.RawMessage("{}"), nil
	}
	var v any
	if err := json.Unmarshal([]byte(t), &v); err != nil {
		return nil, fmt.Errorf("arguments are not JSON: %v", err)
	}
	return json.RawMessage(t), nil
}
