package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/internal/schematest"
)

// Function tools on /v1/responses run on chat's tool calling (the same parser and forcing);
// these tests check the Responses shapes: function_call output items, their stream events,
// function_call and function_call_output input items.

func responsesTool(name, schema string) responses.ToolUnionParam {
	var params map[string]any
	if err := json.Unmarshal([]byte(schema), &params); err != nil {
		panic(err)
	}
	return responses.ToolParamOfFunction(name, params, true)
}

var responsesWeatherTools = []responses.ToolUnionParam{responsesTool("get_weather", weatherSchema), responsesTool("get_time", timeSchema)}

func responsesNamed(name string) responses.ResponseNewParamsToolChoiceUnion {
	return responses.ResponseNewParamsToolChoiceUnion{OfFunctionTool: &responses.ToolChoiceFunctionParam{Name: name}}
}

func responsesMode(mode responses.ToolChoiceOptions) responses.ResponseNewParamsToolChoiceUnion {
	return responses.ResponseNewParamsToolChoiceUnion{OfToolChoiceMode: oai.Opt(mode)}
}

// responsesWeather asks about the weather, sampling hot (near-random text) with seed.
func responsesWeather(tc responses.ResponseNewParamsToolChoiceUnion) responses.ResponseNewParams {
	return responses.ResponseNewParams{Model: demo.Name, Tools: responsesWeatherTools, ToolChoice: tc, Temperature: oai.Float(1.2), MaxOutputTokens: oai.Int(160),
		Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("What is the weather in Paris?")}}
}

func seed(s int64) option.RequestOption { return option.WithJSONSet("seed", s) }

// functionCalls are a response's function_call items, each checked: ids fc_… and call_…,
// status completed, arguments a JSON string that the tool's schema validates; only the last
// item of an incomplete response (cut by max_output_tokens) may be incomplete, and cut short.
func functionCalls(t *testing.T, resp *responses.Response) []responses.ResponseOutputItemUnion {
	t.Helper()
	var calls []responses.ResponseOutputItemUnion
	for i, item := range resp.Output {
		if item.Type != "function_call" {
			continue
		}
		calls = append(calls, item)
		if item.Status == "incomplete" && i == len(resp.Output)-1 && resp.Status == responses.ResponseStatusIncomplete {
			continue
		}
		schema := map[string]string{"get_weather": weatherSchema, "get_time": timeSchema}[item.Name]
		if schema == "" {
			t.Fatalf("call to %q, not an offered tool", item.Name)
		}
		if err := schematest.Validate(schematest.Compile(t, schema), item.Arguments.OfString); err != nil {
			t.Fatalf("%s arguments %q: %v", item.Name, item.Arguments.OfString, err)
		}
		if !strings.HasPrefix(item.ID, "fc_") || !strings.HasPrefix(item.CallID, "call_") || len(item.CallID) < 16 || item.Status != "completed" {
			t.Fatalf("function_call envelope: %s", item.RawJSON())
		}
	}
	return calls
}

// A named function forces exactly one call to it on every seed of a near-random model: the
// output is one function_call item whose arguments the tool's schema validates, and the
// response echoes the tools and tool_choice.
func TestResponsesForcedNamedCall(t *testing.T) {
	client := newClient(toolServer(t))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for s := range int64(4) {
		resp, err := client.Responses.New(ctx, responsesWeather(responsesNamed("get_weather")), seed(s))
		if err != nil {
			t.Fatal(err)
		}
		calls := functionCalls(t, resp)
		if len(resp.Output) != 1 || len(calls) != 1 || calls[0].Name != "get_weather" || resp.Status != responses.ResponseStatusCompleted {
			t.Fatalf("seed %d: %s", s, resp.RawJSON())
		}
		if len(resp.Tools) != 2 || resp.Tools[0].Name != "get_weather" || resp.ToolChoice.Name != "get_weather" {
			t.Errorf("seed %d: tools %s tool_choice %s", s, resp.JSON.Tools.Raw(), resp.JSON.ToolChoice.Raw())
		}
	}
}

// tool_choice "required" forces one or more valid calls, exactly one with parallel_tool_calls
// false; "auto" parses the model's calls into function_call items after a message with the
// text before them; "none" leaves the output as text, markup and all.
func TestResponsesToolChoices(t *testing.T) {
	client := newClient(toolServer(t))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for s := range int64(3) {
		req := responsesWeather(responsesMode(responses.ToolChoiceOptionsRequired))
		resp, err := client.Responses.New(ctx, req, seed(s))
		if err != nil {
			t.Fatal(err)
		}
		if calls := functionCalls(t, resp); len(calls) == 0 || resp.Status == responses.ResponseStatusCompleted && len(calls) != len(resp.Output) {
			t.Fatalf("required, seed %d: %s", s, resp.RawJSON())
		}
		req.ParallelToolCalls = oai.Bool(false)
		resp, err = client.Responses.New(ctx, req, seed(s))
		if err != nil {
			t.Fatal(err)
		}
		if calls := functionCalls(t, resp); len(calls) != 1 || resp.ParallelToolCalls {
			t.Fatalf("required, one call, seed %d: %s", s, resp.RawJSON())
		}
	}

	req := responsesWeather(responsesMode(responses.ToolChoiceOptionsAuto))
	req.MaxOutputTokens = oai.Int(300)
	resp, err := client.Responses.New(ctx, req, scripted("auto")...)
	if err != nil {
		t.Fatal(err)
	}
	calls := functionCalls(t, resp)
	if len(resp.Output) != 3 || resp.Output[0].Type != "message" || resp.OutputText() != "Checking both." || len(calls) != 2 ||
		calls[0].Name != "get_weather" || calls[0].Arguments.OfString != `{"city": "Paris", "unit": "celsius"}` ||
		calls[1].Name != "get_time" || calls[1].Arguments.OfString != `{"tz": "CET"}` || calls[0].CallID == calls[1].CallID {
		t.Fatalf("auto: %s", resp.RawJSON())
	}

	resp, err = client.Responses.New(ctx, req, scripted("none")...)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Output) != 1 || resp.OutputText() != hermesOutput {
		t.Fatalf("none: %s", resp.RawJSON())
	}
}

// A round trip: the model calls a tool; the client sends the call back as a function_call
// input item and the tool's result as a function_call_output; the template renders them as
// chat renders an assistant message with tool_calls and a tool message, so the prompt and the
// greedy answer are chat's for that conversation.
func TestResponsesToolRoundTrip(t *testing.T) {
	client := newClient(toolServer(t))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	first, err := client.Responses.New(ctx, responsesWeather(responsesNamed("get_weather")), seed(1))
	if err != nil {
		t.Fatal(err)
	}
	calls := functionCalls(t, first)
	if len(calls) != 1 {
		t.Fatalf("calls %s", first.RawJSON())
	}
	call := calls[0]
	const result = `{"temperature": 21}`
	output := responses.ResponseInputItemParamOfFunctionCallOutput(result)
	output.OfFunctionCallOutput.CallID = oai.String(call.CallID)
	answer, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: demo.Name, Tools: responsesWeatherTools,
		Temperature: oai.Float(0), MaxOutputTokens: oai.Int(8), Input: responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{
			responses.ResponseInputItemParamOfMessage("What is the weather in Paris?", responses.EasyInputMessageRoleUser),
			responses.ResponseInputItemParamOfFunctionCall(call.Arguments.OfString, call.CallID, call.Name),
			output,
		}}})
	if err != nil {
		t.Fatal(err)
	}
	chatCall := oai.ChatCompletionMessageToolCallUnionParam{OfFunction: &oai.ChatCompletionMessageFunctionToolCallParam{ID: call.CallID,
		Function: oai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: call.Name, Arguments: call.Arguments.OfString}}}
	// The same tools in chat's form, written as the Responses tools are handed to chat.
	type function struct {
		Name       string         `json:"name"`
		Parameters map[string]any `json:"parameters"`
		Strict     bool           `json:"strict"`
	}
	var chatTools []map[string]any
	for _, tool := range responsesWeatherTools {
		f := tool.OfFunction
		chatTools = append(chatTools, map[string]any{"type": "function", "function": function{f.Name, f.Parameters, true}})
	}
	want, err := client.Chat.Completions.New(ctx, oai.ChatCompletionNewParams{Model: demo.Name, Temperature: oai.Float(0), MaxTokens: oai.Int(8),
		Messages: []oai.ChatCompletionMessageParamUnion{
			oai.UserMessage("What is the weather in Paris?"),
			{OfAssistant: &oai.ChatCompletionAssistantMessageParam{ToolCalls: []oai.ChatCompletionMessageToolCallUnionParam{chatCall}}},
			oai.ToolMessage(result, call.CallID),
		}}, option.WithJSONSet("tools", chatTools))
	if err != nil {
		t.Fatal(err)
	}
	if answer.Usage.InputTokens != want.Usage.PromptTokens || answer.OutputText() != want.Choices[0].Message.Content {
		t.Errorf("response: %d input tokens, %q; chat: %d prompt tokens, %q", answer.Usage.InputTokens, answer.OutputText(), want.Usage.PromptTokens, want.Choices[0].Message.Content)
	}
	if answer.Usage.InputTokens <= first.Usage.InputTokens+int64(len(call.Arguments.OfString)+len(result)) {
		t.Errorf("the answer's prompt (%d tokens) does not hold the call and its result (first prompt %d)", answer.Usage.InputTokens, first.Usage.InputTokens)
	}
}

// Streamed, each output item comes as OpenAI streams it (added; text or argument deltas;
// done, its arguments whole), with consecutive sequence numbers and output indexes, and the
// events rebuild exactly the final response's output, which is the non-streamed output.
func TestResponsesStreamedFunctionCalls(t *testing.T) {
	client := newClient(toolServer(t))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	scriptedReq := responsesWeather(responsesMode(responses.ToolChoiceOptionsAuto))
	scriptedReq.MaxOutputTokens = oai.Int(300)
	for _, v := range []struct {
		name string
		req  responses.ResponseNewParams
		opts []option.RequestOption
	}{
		{"auto, scripted", scriptedReq, scripted("auto")},
		{"required, seed 3", responsesWeather(responsesMode(responses.ToolChoiceOptionsRequired)), []option.RequestOption{seed(3)}},
		{"named, seed 5", responsesWeather(responsesNamed("get_time")), []option.RequestOption{seed(5)}},
	} {
		whole, err := client.Responses.New(ctx, v.req, v.opts...)
		if err != nil {
			t.Fatal(err)
		}
		stream := client.Responses.NewStreaming(ctx, v.req, v.opts...)
		type built struct {
			typ, id, name, text string
			done                bool
		}
		var items []built
		var final responses.Response
		n := int64(0)
		for stream.Next() {
			ev := stream.Current()
			if ev.SequenceNumber != n {
				t.Errorf("%s: event %d (%s) has sequence_number %d", v.name, n, ev.Type, ev.SequenceNumber)
			}
			n++
			open := len(items) - 1
			switch ev.Type {
			case "response.output_item.added":
				if int(ev.OutputIndex) != len(items) || (open >= 0 && !items[open].done) || ev.Item.Status != "in_progress" {
					t.Fatalf("%s: %s added while item %d is open", v.name, ev.RawJSON(), open)
				}
				if ev.Item.Type == "function_call" && (ev.Item.Name == "" || !ev.Item.Arguments.JSON.OfString.Valid() || ev.Item.Arguments.OfString != "") {
					t.Errorf("%s: a call's first event %s", v.name, ev.RawJSON())
				}
				items = append(items, built{typ: ev.Item.Type, id: ev.Item.ID, name: ev.Item.Name})
				continue
			case "response.completed", "response.incomplete":
				final = ev.Response
				continue
			case "response.created", "response.in_progress":
				continue
			case "response.output_item.done":
				if open < 0 || int(ev.OutputIndex) != open || ev.Item.ID != items[open].id || items[open].done ||
					ev.Item.Arguments.OfString+textOf(ev.Item) != items[open].text {
					t.Errorf("%s: item done %s, built %+v", v.name, ev.RawJSON(), items)
				}
				items[open].done = true
				continue
			}
			if open < 0 || ev.ItemID != items[open].id || int(ev.OutputIndex) != open || items[open].done {
				t.Fatalf("%s: %s for item %d %+v", v.name, ev.RawJSON(), open, items)
			}
			it := &items[open]
			switch ev.Type {
			case "response.output_text.delta", "response.function_call_arguments.delta":
				it.text += ev.Delta
				if strings.Contains(ev.Delta, "tool_call>") && it.typ == "message" {
					t.Errorf("%s: markup in a text delta %q", v.name, ev.Delta)
				}
			case "response.output_text.done":
				if ev.Text != it.text {
					t.Errorf("%s: text done %q, deltas %q", v.name, ev.Text, it.text)
				}
			case "response.function_call_arguments.done":
				if ev.Arguments != it.text {
					t.Errorf("%s: arguments done %q, deltas %q", v.name, ev.Arguments, it.text)
				}
			default:
				if !strings.HasPrefix(ev.Type, "response.content_part.") {
					t.Errorf("%s: unexpected event %s", v.name, ev.RawJSON())
				}
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		stream.Close()
		if len(items) == 0 || len(final.Output) != len(items) || len(whole.Output) != len(items) || final.Status != whole.Status {
			t.Fatalf("%s: %d items streamed, final %s; whole %s", v.name, len(items), final.RawJSON(), whole.RawJSON())
		}
		for i, it := range items {
			f, w := final.Output[i], whole.Output[i]
			if !it.done || f.ID != it.id || f.Type != it.typ || f.Name != it.name || f.Arguments.OfString+textOf(f) != it.text ||
				w.Type != it.typ || w.Name != it.name || w.Arguments.OfString+textOf(w) != it.text || w.Status != f.Status {
				t.Errorf("%s: item %d streamed %+v, final %s, whole %s", v.name, i, it, f.RawJSON(), w.RawJSON())
			}
		}
		if calls := functionCalls(t, &final); len(calls) == 0 {
			t.Errorf("%s: no calls", v.name)
		}
	}
}

// textOf is a message item's text ("" for a function call).
func textOf(item responses.ResponseOutputItemUnion) string {
	var s strings.Builder
	for _, c := range item.Content {
		s.WriteString(c.Text)
	}
	return s.String()
}

// Bad tools and tool items fail fast with a 400 naming the field: bad names, built-in tools,
// parameters that are not a schema, a named function not offered, a forced call beside
// text.format, logprobs beside tools, function_call items without their call's fields.
func TestResponsesBadToolsAre400(t *testing.T) {
	url := toolServer(t)
	fn := func(name, params string) string {
		return `{"type":"function","name":"` + name + `","parameters":` + params + `}`
	}
	obj := `{"type":"object"}`
	huge := `{"type":"object","description":"` + strings.Repeat("x", 70_000) + `"}`
	user := `"input":"x"`
	cases := []struct{ tools, extra, param, want string }{
		{`[` + fn("has space", obj) + `]`, user, "tools", "must match"},
		{`[` + fn("f", `[1,2]`) + `]`, user, "tools", "JSON schema object"},
		{`[` + fn("f", huge) + `]`, user, "tools", "bytes"},
		{`[{"type":"function"}]`, user, "tools", "name is required"},
		{`[{"type":"file_search","vector_store_ids":["v"]}]`, user, "tools", `"file_search"`},
		{`[` + fn("f", obj) + `]`, user + `,"tool_choice":{"type":"function","name":"g"}`, "tool_choice", `"g"`},
		{`[` + fn("f", obj) + `]`, user + `,"tool_choice":{"type":"allowed_tools","mode":"auto","tools":[]}`, "tool_choice", "tool_choice must be"},
		{`[` + fn("f", `{"type":"object","properties":{"e":{"type":"string","format":"email"}}}`) + `]`, user + `,"tool_choice":"required"`, "tools", `"format"`},
		{`[` + fn("f", obj) + `]`, user + `,"tool_choice":"required","text":{"format":{"type":"json_object"}}`, "tool_choice", "text.format"},
		{`[` + fn("f", obj) + `]`, user + `,"include":["message.output_text.logprobs"]`, "include", "function tools"},
		{`[]`, `"input":[{"type":"function_call","call_id":"call_1","arguments":"{}"}]`, "input", "call_id, name and arguments"},
		{`[]`, `"input":[{"type":"function_call","call_id":"call_1","name":"f"}]`, "input", "call_id, name and arguments"},
		{`[]`, `"input":[{"type":"function_call","call_id":"call_1","name":"f","arguments":{"a":1}}]`, "input", "input[0].arguments must be a string"},
		{`[]`, `"input":[{"type":"function_call_output","call_id":"call_1"}]`, "input", "output is required"},
		{`[]`, `"input":[{"type":"function_call_output","call_id":"call_1","output":[{"type":"input_image"}]}]`, "input", "input_image"},
		{`[]`, `"input":[{"type":"function_call_output","call_id":"call_1","output":5}]`, "input", "must be a string"},
	}
	for _, tc := range cases {
		body := `{"model":"` + demo.Name + `","max_output_tokens":4,"tools":` + tc.tools + `,` + tc.extra + `}`
		start := time.Now()
		status, resp := post(t, url, "/v1/responses", body, "Authorization", "Bearer "+testKey)
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%.80s: refused after %v", body, took)
		}
		env := checkError(t, status, resp, http.StatusBadRequest, tc.param)
		if !strings.Contains(env.Error.Message, tc.want) {
			t.Errorf("%.100s: message %q lacks %q", tc.tools+tc.extra, env.Error.Message, tc.want)
		}
	}

	// The same through the official client: a 400 it reports as an API error.
	client := newClient(url)
	req := responsesWeather(responsesNamed("get_weather"))
	req.Tools = append(req.Tools, responses.ToolUnionParam{OfWebSearch: &responses.WebSearchToolParam{Type: responses.WebSearchToolTypeWebSearch}})
	_, err := client.Responses.New(context.Background(), req)
	var apiErr *oai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "tools" || !strings.Contains(apiErr.Message, "web_search") {
		t.Errorf("a built-in tool beside function tools: %v", err)
	}
}
