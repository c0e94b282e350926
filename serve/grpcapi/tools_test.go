package grpcapi_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/internal/schematest"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
	"github.com/loraplex/loraplex/serve/toolcall"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// toolEngine serves the demo model (byte-level tokens, its ChatML template with Hermes tools)
// with room for the tools' system prompt.
func toolEngine(t *testing.T) (*serve.Engine, *chat.Template) { return demoEngineSized(t, 512, 2048) }

const (
	weatherSchema = `{"type":"object","properties":{"city":{"type":"string","minLength":1,"maxLength":10},"unit":{"enum":["celsius","fahrenheit"]}},"required":["city","unit"],"additionalProperties":false}`
	timeSchema    = `{"type":"object","properties":{"tz":{"type":"string","maxLength":6}},"required":["tz"],"additionalProperties":false}`
)

func weatherTools() []*loraplexv1.Tool {
	return []*loraplexv1.Tool{
		{Name: "get_weather", Description: "The weather in a city", Parameters: weatherSchema},
		{Name: "get_time", Parameters: timeSchema},
	}
}

func toolMode(m loraplexv1.ToolChoiceMode) *loraplexv1.ToolChoice {
	return &loraplexv1.ToolChoice{Choice: &loraplexv1.ToolChoice_Mode{Mode: m}}
}

func toolFunction(name string) *loraplexv1.ToolChoice {
	return &loraplexv1.ToolChoice{Choice: &loraplexv1.ToolChoice_Function{Function: name}}
}

// weatherRequest asks the near-random demo model about the weather with the weather tools.
func weatherRequest(seed uint64, choice *loraplexv1.ToolChoice) *loraplexv1.GenerateRequest {
	return &loraplexv1.GenerateRequest{
		Model: demo.Name,
		Prompt: &loraplexv1.GenerateRequest_Messages{Messages: &loraplexv1.ChatPrompt{
			Messages:   []*loraplexv1.ChatMessage{{Role: "user", Content: "What is the weather in Paris?"}},
			Tools:      weatherTools(),
			ToolChoice: choice,
		}},
		Params: &loraplexv1.SamplingParams{Temperature: 1.2, Seed: &seed, MaxTokens: 160},
	}
}

// toolAnswer is a Generate stream reassembled: content, calls by index, and the raw tokens.
type toolAnswer struct {
	content string
	calls   []*loraplexv1.ToolCall
	tokens  []int32
	last    *loraplexv1.GenerateResponse
	pieces  int // responses that carried call pieces
}

// generateTools runs req and reassembles its stream, checking the pieces' shape as it goes:
// a call starts (id, name) before any fragment of it, in index order.
func generateTools(t *testing.T, c loraplexv1.LoraplexClient, req *loraplexv1.GenerateRequest) toolAnswer {
	t.Helper()
	st, err := c.Generate(ctxTimeout(t, 60*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	var a toolAnswer
	for {
		r, err := st.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("stream: %v", err)
			}
			break
		}
		a.content += r.GetText()
		a.tokens = append(a.tokens, r.GetTokenIds()...)
		a.last = r
		if len(r.GetToolCalls()) > 0 {
			a.pieces++
		}
		for _, p := range r.GetToolCalls() {
			switch i := int(p.GetIndex()); {
			case i == len(a.calls) && p.GetId() != "":
				if !strings.HasPrefix(p.GetId(), "call_") || len(p.GetId()) != 29 || p.GetName() == "" {
					t.Fatalf("call %d starts with id %q, name %q", i, p.GetId(), p.GetName())
				}
				a.calls = append(a.calls, &loraplexv1.ToolCall{Index: p.GetIndex(), Id: p.GetId(), Name: p.GetName(), Arguments: p.GetArguments()})
			case i == len(a.calls)-1 && p.GetId() == "" && p.GetName() == "":
				a.calls[i].Arguments += p.GetArguments()
			default:
				t.Fatalf("piece %v out of order after %d calls", p, len(a.calls))
			}
		}
	}
	if a.last == nil || a.last.GetFinishReason() == "" {
		t.Fatalf("the stream ended without a finish reason: %v", a.last)
	}
	return a
}

func checkArgs(t *testing.T, call *loraplexv1.ToolCall) {
	t.Helper()
	schema := map[string]string{"get_weather": weatherSchema, "get_time": timeSchema}[call.GetName()]
	if schema == "" {
		t.Fatalf("call to %q, not an offered tool", call.GetName())
	}
	if err := schematest.Validate(schematest.Compile(t, schema), call.GetArguments()); err != nil {
		t.Fatalf("%s arguments %q: %v", call.GetName(), call.GetArguments(), err)
	}
}

// A named tool_choice forces exactly one call to that function on every seed of a near-random
// model: its arguments are valid against the function's schema, there is no content, and the
// response finishes with "stop" (OpenAI's finish reason for a named function).
func TestForcedNamedCall(t *testing.T) {
	e, ct := toolEngine(t)
	c := startServer(t, e, grpcapi.Options{ChatTemplate: ct}).client
	for seed := uint64(1); seed <= 4; seed++ {
		a := generateTools(t, c, weatherRequest(seed, toolFunction("get_weather")))
		if len(a.calls) != 1 || a.calls[0].GetName() != "get_weather" || a.content != "" {
			t.Fatalf("seed %d: calls %v, content %q", seed, a.calls, a.content)
		}
		checkArgs(t, a.calls[0])
		if f := a.last.GetFinishReason(); f != "stop" {
			t.Errorf("seed %d: finish %q, want stop", seed, f)
		}
	}
}

// A streamed answer reassembles to what its whole output parses to: for forced and free
// (auto) answers, the content and calls the stream's pieces add up to are the format's parse
// of the generated tokens' text, and a response that made calls and stopped finishes with
// "tool_calls".
func TestStreamedToolCallsAreTheWholeParse(t *testing.T) {
	e, ct := toolEngine(t)
	c := startServer(t, e, grpcapi.Options{ChatTemplate: ct}).client
	hermes, err := toolcall.Lookup("hermes")
	if err != nil {
		t.Fatal(err)
	}
	sawCalls := false
	for _, choice := range []loraplexv1.ToolChoiceMode{loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_REQUIRED, loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_AUTO} {
		for seed := uint64(1); seed <= 3; seed++ {
			a := generateTools(t, c, weatherRequest(seed, toolMode(choice)))
			dt, err := c.Detokenize(ctxTimeout(t, 10*time.Second), &loraplexv1.DetokenizeRequest{TokenIds: a.tokens, SkipSpecialTokens: true})
			if err != nil {
				t.Fatal(err)
			}
			content, calls := hermes.Parse(dt.GetText(), 0)
			if a.content != content || len(a.calls) != len(calls) {
				t.Fatalf("%v seed %d: streamed content %q and %d calls; whole %q and %d calls", choice, seed, a.content, len(a.calls), content, len(calls))
			}
			for i := range calls {
				if a.calls[i].GetName() != calls[i].Name || a.calls[i].GetArguments() != calls[i].Arguments {
					t.Fatalf("%v seed %d: call %d streamed %v, whole %+v", choice, seed, i, a.calls[i], calls[i])
				}
			}
			if choice == loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_REQUIRED {
				if len(calls) == 0 {
					t.Fatalf("seed %d: required made no call: %q", seed, dt.GetText())
				}
				for i, call := range a.calls {
					if i < len(a.calls)-1 || a.last.GetFinishReason() != "length" { // the last may be cut short
						checkArgs(t, call)
					}
				}
			}
			want := "stop"
			if len(calls) > 0 {
				sawCalls, want = true, "tool_calls"
			}
			if f := a.last.GetFinishReason(); f != want && f != "length" {
				t.Errorf("%v seed %d: finish %q, want %q", choice, seed, f, want)
			}
			if len(calls) > 0 && a.pieces < 2 {
				t.Errorf("%v seed %d: the calls came in %d responses, not streamed", choice, seed, a.pieces)
			}
		}
	}
	if !sawCalls {
		t.Fatal("no answer made a call")
	}
}

// parallel_tool_calls false keeps at most one call of a forced (required) answer.
func TestSingleToolCall(t *testing.T) {
	e, ct := toolEngine(t)
	c := startServer(t, e, grpcapi.Options{ChatTemplate: ct}).client
	single := false
	for seed := uint64(1); seed <= 3; seed++ {
		req := weatherRequest(seed, toolMode(loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_REQUIRED))
		req.GetMessages().ParallelToolCalls = &single
		a := generateTools(t, c, req)
		if len(a.calls) != 1 {
			t.Fatalf("seed %d: %d calls with parallel_tool_calls false", seed, len(a.calls))
		}
		checkArgs(t, a.calls[0])
	}
}

// A call and its result go round: an assistant message's tool_calls and a tool message's
// tool_call_id render in the model's format (Hermes' <tool_call> and <tool_response>), and
// the conversation generates.
func TestToolRoundTrip(t *testing.T) {
	e, ct := toolEngine(t)
	c := startServer(t, e, grpcapi.Options{ChatTemplate: ct}).client
	a := generateTools(t, c, weatherRequest(7, toolFunction("get_weather")))
	call := a.calls[0]
	prompt := &loraplexv1.ChatPrompt{
		Messages: []*loraplexv1.ChatMessage{
			{Role: "user", Content: "What is the weather in Paris?"},
			{Role: "assistant", ToolCalls: []*loraplexv1.ToolCall{{Id: call.GetId(), Name: call.GetName(), Arguments: call.GetArguments()}}},
			{Role: "tool", ToolCallId: call.GetId(), Content: `{"temperature": 21}`},
		},
		Tools: weatherTools(),
	}
	ctx := ctxTimeout(t, 30*time.Second)
	tok, err := c.Tokenize(ctx, &loraplexv1.TokenizeRequest{Input: &loraplexv1.TokenizeRequest_Messages{Messages: prompt}})
	if err != nil {
		t.Fatal(err)
	}
	dt, err := c.Detokenize(ctx, &loraplexv1.DetokenizeRequest{TokenIds: tok.GetTokenIds()})
	if err != nil {
		t.Fatal(err)
	}
	schematest.RenderedCall(t, dt.GetText(), "get_weather", call.GetArguments())
	wantResult := "<|im_start|>user\n<tool_response>\n{\"temperature\": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
	if !strings.HasSuffix(dt.GetText(), wantResult) || !strings.Contains(dt.GetText(), "The weather in a city") {
		t.Fatalf("the prompt lacks the tools or the call's result:\n%s", dt.GetText())
	}
	seed := uint64(1)
	next := generateTools(t, c, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Messages{Messages: prompt},
		Params: &loraplexv1.SamplingParams{MaxTokens: 8, Seed: &seed}})
	if next.last.GetUsage().GetPromptTokens() != int32(len(tok.GetTokenIds())) {
		t.Errorf("the conversation's prompt has %d tokens, Tokenize said %d", next.last.GetUsage().GetPromptTokens(), len(tok.GetTokenIds()))
	}
}

// Bad tools fail fast with InvalidArgument naming the field, with the HTTP API's bounds and
// messages: bad names, parameters that are not a schema object, too large or too deep, two
// tools of one name, more than serve.MaxTools, a named function not offered, an unknown
// mode, a schema keyword a forced call cannot enforce, a forced call beside another
// constraint, a forcing choice without tools, and calls on a server that knows no tool-call
// format (the message names --tool-call-parser); Tokenize checks tools the same.
func TestBadToolsAreInvalidArgument(t *testing.T) {
	e, ct := toolEngine(t)
	c := startServer(t, e, grpcapi.Options{ChatTemplate: ct}).client
	obj := `{"type":"object"}`
	fn := func(name, params string) *loraplexv1.Tool { return &loraplexv1.Tool{Name: name, Parameters: params} }
	deep := strings.Repeat(`{"type":"object","properties":{"a":`, 40) + `{"type":"string"}` + strings.Repeat(`}}`, 40)
	huge := `{"type":"object","description":"` + strings.Repeat("x", 70_000) + `"}`
	many := make([]*loraplexv1.Tool, serve.MaxTools+1)
	for i := range many {
		many[i] = fn(fmt.Sprintf("f%d", i), obj)
	}
	cases := []struct {
		name   string
		tools  []*loraplexv1.Tool
		choice *loraplexv1.ToolChoice
		params *loraplexv1.SamplingParams
		field  string
		want   string
	}{
		{"space in name", []*loraplexv1.Tool{fn("has space", obj)}, nil, nil, "tools", "must match"},
		{"empty name", []*loraplexv1.Tool{fn("", obj)}, nil, nil, "tools", "must match"},
		{"array parameters", []*loraplexv1.Tool{fn("f", `[1,2]`)}, nil, nil, "tools", "JSON schema object"},
		{"not JSON", []*loraplexv1.Tool{fn("f", `{"type":`)}, nil, nil, "tools", "JSON schema object"},
		{"deep", []*loraplexv1.Tool{fn("f", deep)}, nil, nil, "tools", "nest deeper"},
		{"huge", []*loraplexv1.Tool{fn("f", huge)}, nil, nil, "tools", "bytes"},
		{"duplicate", []*loraplexv1.Tool{fn("f", obj), fn("f", obj)}, nil, nil, "tools", `tools[0] and tools[1] are both named "f"`},
		{"too many", many, nil, nil, "tools", fmt.Sprintf("at most %d tools", serve.MaxTools)},
		{"named not offered", []*loraplexv1.Tool{fn("f", obj)}, toolFunction("g"), nil, "tool_choice", `"g"`},
		{"named empty", []*loraplexv1.Tool{fn("f", obj)}, toolFunction(""), nil, "tool_choice", "must name"},
		{"unknown mode", []*loraplexv1.Tool{fn("f", obj)}, toolMode(42), nil, "tool_choice", "42"},
		{"unenforceable", []*loraplexv1.Tool{fn("f", `{"type":"object","properties":{"e":{"type":"string","format":"email"}}}`)}, toolFunction("f"), nil, "tools", `schema keyword "format"`},
		{"beside structured output", []*loraplexv1.Tool{fn("f", obj)}, toolMode(loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_REQUIRED),
			&loraplexv1.SamplingParams{StructuredOutput: &loraplexv1.StructuredOutput{Kind: &loraplexv1.StructuredOutput_JsonObject{JsonObject: true}}}, "tool_choice", "structured_output"},
		{"required without tools", nil, toolMode(loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_REQUIRED), nil, "tool_choice", "needs tools"},
	}
	ctx := ctxTimeout(t, 30*time.Second)
	check := func(what string, err error, field, want string) {
		t.Helper()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), want) {
			t.Errorf("%s: got %v, want InvalidArgument with %q", what, err, want)
			return
		}
		var got string
		for _, d := range status.Convert(err).Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 {
				got = br.GetFieldViolations()[0].GetField()
			}
		}
		if got != field {
			t.Errorf("%s: field violation %q, want %q", what, got, field)
		}
	}
	for _, tc := range cases {
		prompt := &loraplexv1.ChatPrompt{Messages: []*loraplexv1.ChatMessage{{Role: "user", Content: "x"}}, Tools: tc.tools, ToolChoice: tc.choice}
		params := tc.params
		if params == nil {
			params = &loraplexv1.SamplingParams{}
		}
		params.MaxTokens = 4
		start := time.Now()
		err := generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Messages{Messages: prompt}, Params: params})
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%s: refused after %v", tc.name, took)
		}
		check(tc.name, err, tc.field, tc.want)
		if tc.choice == nil {
			_, err := c.Tokenize(ctx, &loraplexv1.TokenizeRequest{Input: &loraplexv1.TokenizeRequest_Messages{Messages: prompt}})
			check("Tokenize: "+tc.name, err, tc.field, tc.want)
		}
	}

	// A template that teaches no tool-call format, and no --tool-call-parser: calls cannot be
	// parsed, so a request that wants them is refused; tool_choice none still answers.
	plain, err := chat.Parse(`{% for m in messages %}{{ m.content }}{% endfor %}`)
	if err != nil {
		t.Fatal(err)
	}
	pc := startServer(t, e, grpcapi.Options{ChatTemplate: plain}).client
	prompt := &loraplexv1.ChatPrompt{Messages: []*loraplexv1.ChatMessage{{Role: "user", Content: "x"}}, Tools: []*loraplexv1.Tool{fn("f", obj)}}
	err = generateErr(ctx, pc, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Messages{Messages: prompt}, Params: &loraplexv1.SamplingParams{MaxTokens: 4}})
	check("no tool-call format", err, "tools", "--tool-call-parser")
	prompt.ToolChoice = toolMode(loraplexv1.ToolChoiceMode_TOOL_CHOICE_MODE_NONE)
	generateTools(t, pc, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Messages{Messages: prompt}, Params: &loraplexv1.SamplingParams{MaxTokens: 4}})

	// The server still serves after all that.
	generateTools(t, c, weatherRequest(1, toolFunction("get_time")))
}

// An assistant message's tool-call arguments reach the template parsed, as vLLM gives them:
// compact JSON the client sends is shown in the template's own spacing (tojson), an empty
// string is no arguments, and arguments that are not JSON are InvalidArgument naming the call.
func TestToolCallArgumentsReachTheTemplateParsed(t *testing.T) {
	e, ct := toolEngine(t)
	c := startServer(t, e, grpcapi.Options{ChatTemplate: ct}).client
	ctx := ctxTimeout(t, 30*time.Second)
	render := func(args string) (string, error) {
		prompt := &loraplexv1.ChatPrompt{Messages: []*loraplexv1.ChatMessage{
			{Role: "user", Content: "Weather?"},
			{Role: "assistant", ToolCalls: []*loraplexv1.ToolCall{{Id: "call_1", Name: "get_weather", Arguments: args}}},
		}}
		tok, err := c.Tokenize(ctx, &loraplexv1.TokenizeRequest{Input: &loraplexv1.TokenizeRequest_Messages{Messages: prompt}})
		if err != nil {
			return "", err
		}
		dt, err := c.Detokenize(ctx, &loraplexv1.DetokenizeRequest{TokenIds: tok.GetTokenIds()})
		return dt.GetText(), err
	}
	for args, want := range map[string]string{
		`{"city":"Paris","unit":"celsius"}`: `"arguments": {"city": "Paris", "unit": "celsius"}}`,
		"":                                  `"arguments": {}}`,
	} {
		text, err := render(args)
		if err != nil {
			t.Fatalf("arguments %q: %v", args, err)
		}
		if !strings.Contains(text, want) {
			t.Errorf("arguments %q: the prompt does not show %s:\n%s", args, want, text)
		}
	}
	_, err := render(`{"city":`)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "messages[1].tool_calls[0]") {
		t.Fatalf("arguments that are not JSON: %v, want InvalidArgument naming messages[1].tool_calls[0]", err)
	}
}
