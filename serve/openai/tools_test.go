package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/internal/schematest"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// toolServer serves the built demo model (byte-level tokens, its ChatML template with Hermes
// tools) with room for the tools' system prompt.
func toolServer(t *testing.T) string {
	t.Helper()
	e, ct := demoEngineWith(t, serve.Options{MaxNumSeqs: 4, MaxBatchedTokens: 512, MaxModelLen: 2048})
	return newServer(t, e, openai.Options{APIKey: testKey, ChatTemplate: ct}).URL
}

const weatherSchema = `{"type":"object","properties":{"city":{"type":"string","minLength":1,"maxLength":10},"unit":{"enum":["celsius","fahrenheit"]}},"required":["city","unit"],"additionalProperties":false}`
const timeSchema = `{"type":"object","properties":{"tz":{"type":"string","maxLength":6}},"required":["tz"],"additionalProperties":false}`

func tool(name, schema string) oai.ChatCompletionToolUnionParam {
	var params shared.FunctionParameters
	if err := json.Unmarshal([]byte(schema), &params); err != nil {
		panic(err)
	}
	return oai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: name, Parameters: params})
}

var weatherTools = []oai.ChatCompletionToolUnionParam{tool("get_weather", weatherSchema), tool("get_time", timeSchema)}

func named(name string) oai.ChatCompletionToolChoiceOptionUnionParam {
	return oai.ToolChoiceOptionFunctionToolChoice(oai.ChatCompletionNamedToolChoiceFunctionParam{Name: name})
}

func choice(s string) oai.ChatCompletionToolChoiceOptionUnionParam {
	return oai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: oai.String(s)}
}

// checkArgs validates a call's arguments (a JSON string, OpenAI's shape) against its schema.
func checkArgs(t *testing.T, call oai.ChatCompletionMessageToolCallUnion) {
	t.Helper()
	schema := map[string]string{"get_weather": weatherSchema, "get_time": timeSchema}[call.Function.Name]
	if schema == "" {
		t.Fatalf("call to %q, not an offered tool", call.Function.Name)
	}
	if err := schematest.Validate(schematest.Compile(t, schema), call.Function.Arguments); err != nil {
		t.Fatalf("%s arguments %q: %v", call.Function.Name, call.Function.Arguments, err)
	}
	if call.Type != "function" || !strings.HasPrefix(call.ID, "call_") || len(call.ID) < 16 {
		t.Fatalf("call envelope: type %q id %q", call.Type, call.ID)
	}
}

func weatherRequest(seed int64, tc oai.ChatCompletionToolChoiceOptionUnionParam) oai.ChatCompletionNewParams {
	return oai.ChatCompletionNewParams{
		Model:       demo.Name,
		Messages:    []oai.ChatCompletionMessageParamUnion{oai.UserMessage("What is the weather in Paris?")},
		Tools:       weatherTools,
		ToolChoice:  tc,
		Temperature: oai.Float(1.2),
		Seed:        oai.Int(seed),
		MaxTokens:   oai.Int(160),
	}
}

// A named function forces exactly one call to it, on every seed of a near-random model: the
// arguments are a JSON string that its schema validates, content is empty, and the finish
// reason is "stop" as OpenAI gives for a named function.
func TestForcedNamedCall(t *testing.T) {
	url := toolServer(t)
	client := newClient(url)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for seed := range int64(4) {
		resp, err := client.Chat.Completions.New(ctx, weatherRequest(seed, named("get_weather")))
		if err != nil {
			t.Fatal(err)
		}
		ch := resp.Choices[0]
		if len(ch.Message.ToolCalls) != 1 || ch.Message.ToolCalls[0].Function.Name != "get_weather" {
			t.Fatalf("seed %d: calls %+v (content %q)", seed, ch.Message.ToolCalls, ch.Message.Content)
		}
		checkArgs(t, ch.Message.ToolCalls[0])
		if ch.Message.Content != "" || ch.Message.JSON.Content.Raw() != "null" || ch.FinishReason != "stop" {
			t.Errorf("seed %d: content %s finish %q", seed, ch.Message.JSON.Content.Raw(), ch.FinishReason)
		}
	}
}

// tool_choice "required" forces one or more calls to the offered tools, each valid for its
// own schema; with parallel_tool_calls false it is exactly one, and finish_reason is
// "tool_calls".
func TestRequiredCalls(t *testing.T) {
	url := toolServer(t)
	client := newClient(url)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for seed := range int64(4) {
		req := weatherRequest(seed, choice("required"))
		resp, err := client.Chat.Completions.New(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		ch := resp.Choices[0]
		if len(ch.Message.ToolCalls) == 0 {
			t.Fatalf("seed %d: no calls (content %q)", seed, ch.Message.Content)
		}
		for _, call := range ch.Message.ToolCalls {
			if ch.FinishReason == "length" && call.ID == ch.Message.ToolCalls[len(ch.Message.ToolCalls)-1].ID {
				continue // the last call may be cut short
			}
			checkArgs(t, call)
		}
		req.ParallelToolCalls = oai.Bool(false)
		resp, err = client.Chat.Completions.New(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		ch = resp.Choices[0]
		if len(ch.Message.ToolCalls) != 1 || ch.FinishReason != "tool_calls" {
			t.Fatalf("seed %d, parallel_tool_calls false: %d calls, finish %q", seed, len(ch.Message.ToolCalls), ch.FinishReason)
		}
		checkArgs(t, ch.Message.ToolCalls[0])
	}
}

// hermesOutput is what a model trained on the Hermes format writes: text, then two calls. A
// guided_regex makes the near-random demo write it exactly, so that auto parsing is tested on
// a real generation, token by token.
const hermesOutput = "Checking both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>\n" +
	"<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call>"

func scripted(tc string) []option.RequestOption {
	return []option.RequestOption{option.WithJSONSet("guided_regex", regexp.QuoteMeta(hermesOutput)), option.WithJSONSet("tool_choice", tc)}
}

// With tool_choice auto (the default with tools) the model's Hermes calls are parsed into
// tool_calls and the text around them is content; with parallel_tool_calls false only the
// first call is kept; with tool_choice none nothing is parsed.
func TestAutoParsesNoneDoesNot(t *testing.T) {
	url := toolServer(t)
	client := newClient(url)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	req := weatherRequest(0, oai.ChatCompletionToolChoiceOptionUnionParam{})
	req.MaxTokens = oai.Int(300)
	resp, err := client.Chat.Completions.New(ctx, req, scripted("auto")...)
	if err != nil {
		t.Fatal(err)
	}
	ch := resp.Choices[0]
	calls := ch.Message.ToolCalls
	if ch.Message.Content != "Checking both." || len(calls) != 2 || ch.FinishReason != "tool_calls" ||
		calls[0].Function.Name != "get_weather" || calls[0].Function.Arguments != `{"city": "Paris", "unit": "celsius"}` ||
		calls[1].Function.Name != "get_time" || calls[1].Function.Arguments != `{"tz": "CET"}` || calls[0].ID == calls[1].ID {
		t.Fatalf("auto: content %q calls %+v finish %q", ch.Message.Content, calls, ch.FinishReason)
	}
	checkArgs(t, calls[0])
	checkArgs(t, calls[1])

	req.ParallelToolCalls = oai.Bool(false)
	resp, err = client.Chat.Completions.New(ctx, req, scripted("auto")...)
	if err != nil {
		t.Fatal(err)
	}
	if calls := resp.Choices[0].Message.ToolCalls; len(calls) != 1 || calls[0].Function.Name != "get_weather" {
		t.Fatalf("parallel_tool_calls false: %+v", calls)
	}

	resp, err = client.Chat.Completions.New(ctx, req, scripted("none")...)
	if err != nil {
		t.Fatal(err)
	}
	if ch := resp.Choices[0]; len(ch.Message.ToolCalls) != 0 || ch.Message.Content != hermesOutput || ch.FinishReason != "stop" {
		t.Fatalf("none: content %q calls %+v finish %q", ch.Message.Content, ch.Message.ToolCalls, ch.FinishReason)
	}
}

// Streamed, tool calls arrive as OpenAI streams them (a call's first delta has its index, id,
// type, name and empty arguments; then argument fragments; no markup in content deltas; the
// finish reason on an empty delta), and
// the official client's accumulator rebuilds exactly the non-streamed message.
func TestStreamedToolCalls(t *testing.T) {
	url := toolServer(t)
	client := newClient(url)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	type variant struct {
		name string
		req  oai.ChatCompletionNewParams
		opts []option.RequestOption
	}
	scriptedReq := weatherRequest(0, oai.ChatCompletionToolChoiceOptionUnionParam{})
	scriptedReq.MaxTokens = oai.Int(300)
	for _, v := range []variant{
		{"auto, scripted", scriptedReq, scripted("auto")},
		{"required, seed 3", weatherRequest(3, choice("required")), nil},
		{"named, seed 5", weatherRequest(5, named("get_time")), nil},
	} {
		whole, err := client.Chat.Completions.New(ctx, v.req, v.opts...)
		if err != nil {
			t.Fatal(err)
		}
		stream := client.Chat.Completions.NewStreaming(ctx, v.req, v.opts...)
		var acc oai.ChatCompletionAccumulator
		started := map[int64]bool{}
		for stream.Next() {
			chunk := stream.Current()
			acc.AddChunk(chunk)
			for _, c := range chunk.Choices {
				if c.FinishReason != "" && (c.Delta.Content != "" || len(c.Delta.ToolCalls) > 0) {
					t.Errorf("%s: the finish reason comes with a delta: %s", v.name, c.RawJSON())
				}
				if strings.Contains(c.Delta.Content, "<tool_call") || strings.Contains(c.Delta.Content, "</tool_call") {
					t.Errorf("%s: markup in a content delta: %q", v.name, c.Delta.Content)
				}
				for _, tc := range c.Delta.ToolCalls {
					first := !started[tc.Index]
					started[tc.Index] = true
					hasStart := tc.ID != "" && tc.Type == "function" && tc.Function.Name != ""
					if first != hasStart || first && (tc.Function.Arguments != "" || !tc.Function.JSON.Arguments.Valid()) {
						t.Errorf("%s: delta %s (first of its call: %v)", v.name, tc.RawJSON(), first)
					}
				}
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		stream.Close()
		got, want := acc.Choices[0], whole.Choices[0]
		if got.Message.Content != want.Message.Content || got.FinishReason != want.FinishReason || len(got.Message.ToolCalls) != len(want.Message.ToolCalls) {
			t.Fatalf("%s: streamed content %q finish %q %d calls; whole %q %q %d calls", v.name, got.Message.Content, got.FinishReason,
				len(got.Message.ToolCalls), want.Message.Content, want.FinishReason, len(want.Message.ToolCalls))
		}
		for i := range got.Message.ToolCalls {
			g, w := got.Message.ToolCalls[i], want.Message.ToolCalls[i]
			if g.Function.Name != w.Function.Name || g.Function.Arguments != w.Function.Arguments || !strings.HasPrefix(g.ID, "call_") {
				t.Errorf("%s: call %d streamed %+v, whole %+v", v.name, i, g.Function, w.Function)
			}
		}
		if len(got.Message.ToolCalls) == 0 {
			t.Errorf("%s: no calls", v.name)
		}
	}
}

// A tool round trip: the model calls a tool, the client sends the call and the tool's result
// back (the assistant message as the client returns it, then a tool message), and the model
// answers; the template renders the call and the result in the Hermes format.
func TestToolRoundTrip(t *testing.T) {
	url := toolServer(t)
	client := newClient(url)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	req := weatherRequest(1, named("get_weather"))
	resp, err := client.Chat.Completions.New(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	call := resp.Choices[0].Message.ToolCalls
	if len(call) != 1 {
		t.Fatalf("calls %+v", call)
	}
	req.Messages = append(req.Messages, resp.Choices[0].Message.ToParam(), oai.ToolMessage(`{"temperature": 21}`, call[0].ID))
	req.ToolChoice = choice("auto")
	req.MaxTokens = oai.Int(8)
	answer, err := client.Chat.Completions.New(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if answer.Usage.PromptTokens <= resp.Usage.PromptTokens+int64(len(call[0].Function.Arguments)) {
		t.Errorf("the answer's prompt (%d tokens) does not hold the call and its result (first prompt %d)", answer.Usage.PromptTokens, resp.Usage.PromptTokens)
	}
	// What the model saw: /tokenize renders the same messages; the demo's tokens are bytes.
	body, _ := json.Marshal(map[string]any{"model": demo.Name, "messages": req.Messages, "tools": req.Tools})
	status, out := post(t, url, "/tokenize", string(body), "Authorization", "Bearer "+testKey)
	var tok struct {
		Tokens []int `json:"tokens"`
	}
	if status != 200 || json.Unmarshal(out, &tok) != nil {
		t.Fatalf("/tokenize: %d %s", status, out)
	}
	body, _ = json.Marshal(map[string]any{"model": demo.Name, "tokens": tok.Tokens})
	status, out = post(t, url, "/detokenize", string(body), "Authorization", "Bearer "+testKey)
	var detok struct {
		Prompt string `json:"prompt"`
	}
	if status != 200 || json.Unmarshal(out, &detok) != nil {
		t.Fatalf("/detokenize: %d %s", status, out)
	}
	schematest.RenderedCall(t, detok.Prompt, "get_weather", call[0].Function.Arguments)
	wantResult := "<|im_start|>user\n<tool_response>\n{\"temperature\": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
	if !strings.HasSuffix(detok.Prompt, wantResult) {
		t.Errorf("the prompt lacks the call's result:\n%s", detok.Prompt)
	}
}

// Bad and hostile tools fail fast with a 400 naming the field: bad names, non-function
// tools, parameters that are not a schema object, huge or deeply nested parameters, a named
// function not offered, schema keywords a forced call cannot enforce (named), a forcing
// tool_choice without tools or beside another constraint, two tools of one name, and tool calls on a model whose tool-call format
// is unknown (the message names --tool-call-parser).
func TestBadToolsAre400(t *testing.T) {
	url := toolServer(t)
	fn := func(name, params string) string {
		return `{"type":"function","function":{"name":"` + name + `","parameters":` + params + `}}`
	}
	obj := `{"type":"object"}`
	deep := strings.Repeat(`{"type":"object","properties":{"a":`, 40) + `{"type":"string"}` + strings.Repeat(`}}`, 40)
	huge := `{"type":"object","description":"` + strings.Repeat("x", 70_000) + `"}`
	cases := []struct{ tools, extra, param, want string }{
		{`[` + fn("has space", obj) + `]`, ``, "tools", "must match"},
		{`[` + fn(strings.Repeat("a", 65), obj) + `]`, ``, "tools", "must match"},
		{`[` + fn("", obj) + `]`, ``, "tools", "must match"},
		{`[{"type":"custom","custom":{"name":"x"}}]`, ``, "tools", "only function tools"},
		{`[{"type":"function","function":{"name":"f"},"extra":1}]`, ``, "tools", "tools[0] must be"},
		{`[{"type":"function","function":{"name":"f","paramters":{}}}]`, ``, "tools", "tools[0] must be"},
		{`[{"type":"code_interpreter"}]`, ``, "tools", "only function tools"},
		{`[` + fn("f", `[1,2]`) + `]`, ``, "tools", "JSON schema object"},
		{`[` + fn("f", `"schema"`) + `]`, ``, "tools", "JSON schema object"},
		{`[` + fn("f", deep) + `]`, ``, "tools", "nest deeper"},
		{`[` + fn("f", huge) + `]`, ``, "tools", "bytes"},
		{`[` + fn("f", obj) + `]`, `,"tool_choice":{"type":"function","function":{"name":"g"}}`, "tool_choice", `"g"`},
		{`[` + fn("f", obj) + `]`, `,"tool_choice":"sometimes"`, "tool_choice", "sometimes"},
		{`[` + fn("f", `{"type":"object","properties":{"e":{"type":"string","format":"email"}}}`) + `]`, `,"tool_choice":{"type":"function","function":{"name":"f"}}`, "tools", `function f: schema keyword "format"`},
		{`[` + fn("f", obj) + `]`, `,"tool_choice":"required","response_format":{"type":"json_object"}`, "tool_choice", "response_format"},
		{`[]`, `,"tool_choice":"required"`, "tool_choice", "needs tools"},
		{`[` + fn("f", obj) + `,` + fn("g", obj) + `,` + fn("f", obj) + `]`, ``, "tools", `tools[0] and tools[2] are both named "f"`},
	}
	for _, tc := range cases {
		body := `{"model":"` + demo.Name + `","max_tokens":4,"messages":[{"role":"user","content":"x"}],"tools":` + tc.tools + tc.extra + `}`
		start := time.Now()
		status, resp := post(t, url, "/v1/chat/completions", body, "Authorization", "Bearer "+testKey)
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%.80s: refused after %v", body, took)
		}
		env := checkError(t, status, resp, 400, tc.param)
		if !strings.Contains(env.Error.Message, tc.want) {
			t.Errorf("%.80s: message %q lacks %q", tc.tools+tc.extra, env.Error.Message, tc.want)
		}
	}

	// tool_choice auto without tools asks for nothing a text answer cannot give.
	status, resp := post(t, url, "/v1/chat/completions", `{"max_tokens":1,"messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}`, "Authorization", "Bearer "+testKey)
	if status != 200 {
		t.Errorf("tool_choice auto without tools: %d %s", status, resp)
	}

	// A template that teaches no tool-call format: tools are still rendered with tool_choice
	// none, but a request that wants calls is told which flag to set.
	e, _ := demoEngineWith(t, serve.Options{MaxModelLen: 256, MaxNumSeqs: 2, MaxBatchedTokens: 64})
	plain, err := chat.Parse("{% for m in messages %}{{ m['content'] }}{% endfor %}")
	if err != nil {
		t.Fatal(err)
	}
	client := newClient(newServer(t, e, openai.Options{APIKey: testKey, ChatTemplate: plain}).URL)
	req := oai.ChatCompletionNewParams{Model: demo.Name, Messages: []oai.ChatCompletionMessageParamUnion{oai.UserMessage("x")},
		Tools: weatherTools, MaxTokens: oai.Int(2)}
	_, err = client.Chat.Completions.New(context.Background(), req)
	var apiErr *oai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "tools" || !strings.Contains(apiErr.Message, "--tool-call-parser") {
		t.Errorf("tools on a model without a tool-call format: %v", err)
	}
	req.ToolChoice = choice("none")
	if _, err := client.Chat.Completions.New(context.Background(), req); err != nil {
		t.Errorf("tool_choice none on a model without a tool-call format: %v", err)
	}
}

// A forced call to a tool whose parameters are recursive (the expression tree of treeSchema,
// through mutually recursive $defs) compiles, and every call that ends has arguments the schema
// validates: tool parameters get the recursive grammar as response formats do.
func TestForcedCallWithRecursiveParameters(t *testing.T) {
	client := newClient(toolServer(t))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	val := schematest.Compile(t, treeSchema)
	ended := 0
	for seed := range int64(8) {
		resp, err := client.Chat.Completions.New(ctx, oai.ChatCompletionNewParams{
			Model:       demo.Name,
			Messages:    []oai.ChatCompletionMessageParamUnion{oai.UserMessage("Compute 2+3*4.")},
			Tools:       []oai.ChatCompletionToolUnionParam{tool("evaluate", treeSchema)},
			ToolChoice:  named("evaluate"),
			Temperature: oai.Float(1.2),
			Seed:        oai.Int(seed),
			MaxTokens:   oai.Int(300),
		})
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		ch := resp.Choices[0]
		if ch.FinishReason != "stop" {
			continue // a tree may outgrow max_tokens
		}
		ended++
		if len(ch.Message.ToolCalls) != 1 || ch.Message.ToolCalls[0].Function.Name != "evaluate" {
			t.Fatalf("seed %d: calls %+v (content %q)", seed, ch.Message.ToolCalls, ch.Message.Content)
		}
		if args := ch.Message.ToolCalls[0].Function.Arguments; schematest.Validate(val, args) != nil {
			t.Fatalf("seed %d: arguments %q: %v", seed, args, schematest.Validate(val, args))
		}
	}
	t.Logf("%d of 8 forced calls ended", ended)
	if ended < 5 {
		t.Errorf("%d of 8 forced calls ended within 300 tokens, want at least 5", ended)
	}
}

// An assistant message's tool-call arguments reach the template parsed, as vLLM gives them:
// compact JSON the client sends (OpenAI's string) is shown in the template's own spacing
// (tojson), and arguments that are not JSON are a 400 naming the call.
func TestToolCallArgumentsReachTheTemplateParsed(t *testing.T) {
	url := toolServer(t)
	render := func(args string) (int, string) {
		msgs := []map[string]any{
			{"role": "user", "content": "Weather?"},
			{"role": "assistant", "tool_calls": []map[string]any{{"id": "call_1", "type": "function",
				"function": map[string]any{"name": "get_weather", "arguments": args}}}},
		}
		body, _ := json.Marshal(map[string]any{"model": demo.Name, "messages": msgs})
		status, out := post(t, url, "/tokenize", string(body), "Authorization", "Bearer "+testKey)
		if status != 200 {
			return status, string(out)
		}
		var tok struct {
			Tokens []int `json:"tokens"`
		}
		if err := json.Unmarshal(out, &tok); err != nil {
			t.Fatal(err)
		}
		body, _ = json.Marshal(map[string]any{"model": demo.Name, "tokens": tok.Tokens})
		status, out = post(t, url, "/detokenize", string(body), "Authorization", "Bearer "+testKey)
		var detok struct {
			Prompt string `json:"prompt"`
		}
		if status != 200 || json.Unmarshal(out, &detok) != nil {
			t.Fatalf("/detokenize: %d %s", status, out)
		}
		return status, detok.Prompt
	}
	status, prompt := render(`{"city":"Paris","unit":"celsius"}`)
	if want := `"arguments": {"city": "Paris", "unit": "celsius"}}`; status != 200 || !strings.Contains(prompt, want) {
		t.Errorf("%d: the prompt does not show %s:\n%s", status, want, prompt)
	}
	status, out := render(`{"city":`)
	if status != 400 || !strings.Contains(out, "messages[1].tool_calls[0]") || !strings.Contains(out, "invalid_request_error") {
		t.Fatalf("arguments that are not JSON: %d %s, want a 400 naming messages[1].tool_calls[0]", status, out)
	}
}
