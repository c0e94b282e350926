package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/internal/schematest"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// responsesServer serves the demo model (tokenizer and chat template) with the official client.
func responsesServer(t *testing.T) (oai.Client, string, context.Context) {
	t.Helper()
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{APIKey: testKey, ChatTemplate: ct})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	t.Cleanup(cancel)
	return newClient(srv.URL), srv.URL, ctx
}

// greedyChat is the chat completion the same conversation gets at temperature 0.
func greedyChat(t *testing.T, ctx context.Context, client oai.Client, maxTokens int64, msgs ...oai.ChatCompletionMessageParamUnion) *oai.ChatCompletion {
	t.Helper()
	resp, err := client.Chat.Completions.New(ctx, oai.ChatCompletionNewParams{Model: demo.Name, Messages: msgs,
		MaxTokens: oai.Int(maxTokens), Temperature: oai.Float(0)})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// checkSameAsChat checks a response against the chat completion of the same conversation: the
// same text, token counts and end (completed for "stop", incomplete for "length").
func checkSameAsChat(t *testing.T, got *responses.Response, want *oai.ChatCompletion) {
	t.Helper()
	wantStatus := responses.ResponseStatusCompleted
	if want.Choices[0].FinishReason == "length" {
		wantStatus = responses.ResponseStatusIncomplete
	}
	if got.OutputText() != want.Choices[0].Message.Content || got.Status != wantStatus {
		t.Errorf("response %q (%s), chat %q (%s)", got.OutputText(), got.Status, want.Choices[0].Message.Content, want.Choices[0].FinishReason)
	}
	u := got.Usage
	if u.InputTokens != want.Usage.PromptTokens || u.OutputTokens != want.Usage.CompletionTokens || u.TotalTokens != want.Usage.TotalTokens {
		t.Errorf("usage %+v, chat's %+v", u, want.Usage)
	}
	if len(got.Output) != 1 || got.Output[0].Type != "message" || got.Output[0].Role != "assistant" || !strings.HasPrefix(got.Output[0].ID, "msg_") {
		t.Errorf("output %s, want one assistant message", got.RawJSON())
	}
	if got.Object != "response" || !strings.HasPrefix(got.ID, "resp_") || got.Model != demo.Name {
		t.Errorf("object %q id %q model %q", got.Object, got.ID, got.Model)
	}
}

// A string input is one user message: the response's text, usage and end equal the chat
// completion's for that message, through the official client's responses package, for the
// base model and for an adapter named in model (which changes the answer).
func TestResponsesTextInput(t *testing.T) {
	// The trained demo (what the server serves), with its go adapter.
	b := cpu.New(2)
	l, err := demo.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	e, err := serve.NewEngine(l.Cfg, b, l.Weights, l.Tok, serve.Options{ModelName: demo.Name, MaxNumSeqs: 4, MaxBatchedTokens: 128, MaxModelLen: 256, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); l.Close(); b.Close() })
	if err := e.LoadAdapter("go", filepath.Join(l.Dir, "adapters", "go")); err != nil {
		t.Fatal(err)
	}
	ct, err := chat.Parse(demo.ChatTemplate)
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, e, openai.Options{APIKey: testKey, ChatTemplate: ct})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	texts := map[string]string{}
	for _, model := range []string{demo.Name, "go"} {
		got, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: model, MaxOutputTokens: oai.Int(24), Temperature: oai.Float(0),
			Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("Write a Go function.")}})
		if err != nil {
			t.Fatal(err)
		}
		want, err := client.Chat.Completions.New(ctx, oai.ChatCompletionNewParams{Model: model, MaxTokens: oai.Int(24), Temperature: oai.Float(0),
			Messages: []oai.ChatCompletionMessageParamUnion{oai.UserMessage("Write a Go function.")}})
		if err != nil {
			t.Fatal(err)
		}
		want.Model = demo.Name // checkSameAsChat checks the model against the base's name
		if got.Model == model {
			got.Model = demo.Name
		}
		checkSameAsChat(t, got, want)
		texts[model] = got.OutputText()
	}
	if texts[demo.Name] == "" || texts[demo.Name] == texts["go"] {
		t.Errorf("base %q, adapter %q: want a non-empty answer that the adapter changes", texts[demo.Name], texts["go"])
	}
}

// include message.output_text.logprobs with top_logprobs gives the output part chat's
// logprobs for the same conversation (token, logprob, bytes and alternatives, one per output
// token), and the streamed deltas carry the same ones in order.
func TestResponsesLogprobsMatchChat(t *testing.T) {
	client, _, ctx := responsesServer(t)
	params := responses.ResponseNewParams{Model: demo.Name, MaxOutputTokens: oai.Int(6), Temperature: oai.Float(0), TopLogprobs: oai.Int(2),
		Include: []responses.ResponseIncludable{responses.ResponseIncludableMessageOutputTextLogprobs},
		Input:   responses.ResponseNewParamsInputUnion{OfString: oai.String("hello")}}
	got, err := client.Responses.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	want, err := client.Chat.Completions.New(ctx, oai.ChatCompletionNewParams{Model: demo.Name, MaxTokens: oai.Int(6), Temperature: oai.Float(0),
		Logprobs: oai.Bool(true), TopLogprobs: oai.Int(2), Messages: []oai.ChatCompletionMessageParamUnion{oai.UserMessage("hello")}})
	if err != nil {
		t.Fatal(err)
	}
	logprobsOf := func(raw string) string {
		var v []map[string]any
		if err := json.Unmarshal([]byte(raw), &v); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	part := got.Output[0].Content[0]
	if len(part.Logprobs) != 6 || len(part.Logprobs[0].TopLogprobs) != 2 {
		t.Fatalf("logprobs %s, want 6 tokens with 2 alternatives each", part.JSON.Logprobs.Raw())
	}
	if g, w := logprobsOf(part.JSON.Logprobs.Raw()), logprobsOf(want.Choices[0].Logprobs.JSON.Content.Raw()); g != w {
		t.Errorf("responses logprobs %s\nchat logprobs %s", g, w)
	}
	stream := client.Responses.NewStreaming(ctx, params)
	var streamed []json.RawMessage
	for stream.Next() {
		if ev := stream.Current(); ev.Type == "response.output_text.delta" {
			var lps []json.RawMessage
			if err := json.Unmarshal([]byte(ev.JSON.Logprobs.Raw()), &lps); err != nil {
				t.Fatal(err)
			}
			streamed = append(streamed, lps...)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	all, _ := json.Marshal(streamed)
	if logprobsOf(string(all)) != logprobsOf(part.JSON.Logprobs.Raw()) {
		t.Errorf("streamed logprobs %s, collected %s", all, part.JSON.Logprobs.Raw())
	}
}

// instructions come first as a system message, and input items (a plain message, a message
// of input_text parts, an earlier assistant output of output_text parts, a developer message,
// read as system) are the conversation, in order: the same answer as chat's for those messages.
func TestResponsesMessagesAndInstructions(t *testing.T) {
	client, _, ctx := responsesServer(t)
	parts := responses.ResponseInputMessageContentListParam{
		responses.ResponseInputContentParamOfInputText("Name a file"), responses.ResponseInputContentParamOfInputText("in the Go tree."),
	}
	input := responses.ResponseInputParam{
		responses.ResponseInputItemParamOfMessage("What is os.Open?", responses.EasyInputMessageRoleUser),
		{OfOutputMessage: &responses.ResponseOutputMessageParam{ID: "msg_1", Status: responses.ResponseOutputMessageStatusCompleted,
			Content: []responses.ResponseOutputMessageContentUnionParam{{OfOutputText: &responses.ResponseOutputTextParam{Text: "It opens a file.", Annotations: []responses.ResponseOutputTextAnnotationUnionParam{}}}}}},
		responses.ResponseInputItemParamOfMessage("Answer in one line.", responses.EasyInputMessageRoleDeveloper),
		responses.ResponseInputItemParamOfInputMessage(parts, "user"),
	}
	got, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: demo.Name, MaxOutputTokens: oai.Int(20), Temperature: oai.Float(0),
		Instructions: oai.String("You are terse."), Input: responses.ResponseNewParamsInputUnion{OfInputItemList: input}})
	if err != nil {
		t.Fatal(err)
	}
	want := greedyChat(t, ctx, client, 20, oai.SystemMessage("You are terse."), oai.UserMessage("What is os.Open?"),
		oai.AssistantMessage("It opens a file."), oai.SystemMessage("Answer in one line."), oai.UserMessage("Name a file\nin the Go tree."))
	checkSameAsChat(t, got, want)
	if got.Instructions.OfString != "You are terse." {
		t.Errorf("instructions %s", got.Instructions.RawJSON())
	}
	// Without the instructions, the conversation (and so the prompt) is shorter.
	plain, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: demo.Name, MaxOutputTokens: oai.Int(1), Temperature: oai.Float(0),
		Input: responses.ResponseNewParamsInputUnion{OfInputItemList: input}})
	if err != nil {
		t.Fatal(err)
	}
	if plain.Usage.InputTokens >= got.Usage.InputTokens {
		t.Errorf("input tokens %d without instructions, %d with", plain.Usage.InputTokens, got.Usage.InputTokens)
	}
}

// A streamed response is OpenAI's event sequence (created, in_progress, the item and its part
// added, text deltas, the text, part and item done, completed or incomplete), numbered from 0
// without gaps, all naming one item; the deltas, the done text and the final response equal
// the response the same request gets unstreamed.
func TestResponsesStreamEqualsCollected(t *testing.T) {
	client, _, ctx := responsesServer(t)
	// The demo is no chat model: it ends (EOS) only when a constraint makes it.
	choice := option.WithJSONSet("guided_choice", []string{"yes, with os.ReadFile", "no"})
	for _, tc := range []struct {
		maxTokens int64
		opts      []option.RequestOption
		status    responses.ResponseStatus
	}{{40, nil, responses.ResponseStatusIncomplete}, {5, nil, responses.ResponseStatusIncomplete}, {40, []option.RequestOption{choice}, responses.ResponseStatusCompleted}} {
		maxTokens := tc.maxTokens
		params := responses.ResponseNewParams{Model: demo.Name, MaxOutputTokens: oai.Int(maxTokens), Temperature: oai.Float(0),
			Instructions: oai.String("Answer in Python."), Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("Read a config file.")}}
		want, err := client.Responses.New(ctx, params, tc.opts...)
		if err != nil {
			t.Fatal(err)
		}
		if want.Status != tc.status {
			t.Errorf("max %d: status %s, want %s", maxTokens, want.Status, tc.status)
		}
		stream := client.Responses.NewStreaming(ctx, params, tc.opts...)
		var types []string
		var deltas strings.Builder
		var doneText string
		var final responses.Response
		var itemID string
		for stream.Next() {
			ev := stream.Current()
			if ev.SequenceNumber != int64(len(types)) {
				t.Errorf("event %d (%s) has sequence_number %d", len(types), ev.Type, ev.SequenceNumber)
			}
			types = append(types, ev.Type)
			switch ev.Type {
			case "response.output_text.delta":
				deltas.WriteString(ev.Delta)
			case "response.output_text.done":
				doneText = ev.Text
			case "response.completed", "response.incomplete":
				final = ev.Response
			case "response.output_item.added":
				itemID = ev.Item.ID
			}
			if strings.HasPrefix(ev.Type, "response.output_text") || strings.HasPrefix(ev.Type, "response.content_part") {
				if ev.ItemID != itemID || itemID == "" || ev.OutputIndex != 0 || ev.ContentIndex != 0 {
					t.Errorf("%s: item %q output %d content %d", ev.Type, ev.ItemID, ev.OutputIndex, ev.ContentIndex)
				}
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		end := "response.completed"
		if want.Status == responses.ResponseStatusIncomplete {
			end = "response.incomplete"
		}
		if len(types) < 9 || strings.Join(types[:4], ",") != "response.created,response.in_progress,response.output_item.added,response.content_part.added" ||
			strings.Join(types[len(types)-4:], ",") != "response.output_text.done,response.content_part.done,response.output_item.done,"+end {
			t.Fatalf("max %d: events %v", maxTokens, types)
		}
		for _, typ := range types[4 : len(types)-4] {
			if typ != "response.output_text.delta" {
				t.Errorf("max %d: %s among the deltas", maxTokens, typ)
			}
		}
		if deltas.String() != want.OutputText() || doneText != want.OutputText() || final.OutputText() != want.OutputText() {
			t.Errorf("max %d: deltas %q, done %q, final %q; unstreamed %q", maxTokens, deltas.String(), doneText, final.OutputText(), want.OutputText())
		}
		if final.Output[0].ID != itemID || final.Status != want.Status || final.Usage.InputTokens != want.Usage.InputTokens || final.Usage.OutputTokens != want.Usage.OutputTokens ||
			final.IncompleteDetails.Reason != want.IncompleteDetails.Reason {
			t.Errorf("max %d: final %s %+v %q, unstreamed %s %+v %q", maxTokens, final.Status, final.Usage, final.IncompleteDetails.Reason,
				want.Status, want.Usage, want.IncompleteDetails.Reason)
		}
	}
}

// text.format json_schema (strict) on the demo model sampling hot (near-random text) always
// gives JSON that parses into the Go struct and that the schema validates, on every seed; the
// response echoes the format.
func TestResponsesJSONSchemaParsesIntoStruct(t *testing.T) {
	client, _, ctx := responsesServer(t)
	var schema map[string]any
	if err := json.Unmarshal([]byte(schematest.Person), &schema); err != nil {
		t.Fatal(err)
	}
	val := schematest.Compile(t, schematest.Person)
	for seed := range 4 {
		resp, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: demo.Name, Temperature: oai.Float(1.5), MaxOutputTokens: oai.Int(200),
			Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("Describe a user as JSON.")},
			Text: responses.ResponseTextConfigParam{Format: responses.ResponseFormatTextConfigUnionParam{OfJSONSchema: &responses.ResponseFormatTextJSONSchemaConfigParam{
				Name: "person", Schema: schema, Strict: oai.Bool(true)}}}},
			option.WithJSONSet("seed", seed))
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		text := resp.OutputText()
		if resp.Status != responses.ResponseStatusCompleted {
			t.Fatalf("seed %d: status %s after %q", seed, resp.Status, text)
		}
		var p person
		if err := json.Unmarshal([]byte(text), &p); err != nil {
			t.Fatalf("seed %d: %q does not parse: %v", seed, text, err)
		}
		if err := schematest.Validate(val, text); err != nil {
			t.Fatalf("seed %d: %q does not validate: %v", seed, text, err)
		}
		if resp.Text.Format.Type != "json_schema" || resp.Text.Format.Name != "person" {
			t.Errorf("text.format echoed as %s", resp.Text.Format.RawJSON())
		}
	}
	// json_object gives a JSON object.
	resp, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: demo.Name, Temperature: oai.Float(1.5), MaxOutputTokens: oai.Int(200),
		Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("JSON please.")},
		Text:  responses.ResponseTextConfigParam{Format: responses.ResponseFormatTextConfigUnionParam{OfJSONObject: &responses.ResponseFormatJSONObjectParam{}}}},
		option.WithJSONSet("seed", 7))
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(resp.OutputText()), &obj); err != nil {
		t.Errorf("json_object output %q: %v", resp.OutputText(), err)
	}
}

// max_output_tokens that cut the answer short make the response incomplete, with
// incomplete_details.reason max_output_tokens and the item incomplete; usage counts exactly
// that many output tokens.
func TestResponsesMaxOutputTokensIncomplete(t *testing.T) {
	client, _, ctx := responsesServer(t)
	resp, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: demo.Name, MaxOutputTokens: oai.Int(3), Temperature: oai.Float(0),
		Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("Tell me about Go.")}}, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != responses.ResponseStatusIncomplete || resp.IncompleteDetails.Reason != "max_output_tokens" || resp.MaxOutputTokens != 3 {
		t.Errorf("status %s details %s max %d", resp.Status, resp.IncompleteDetails.RawJSON(), resp.MaxOutputTokens)
	}
	if resp.Usage.OutputTokens != 3 || resp.Output[0].Status != "incomplete" {
		t.Errorf("usage %+v item status %q", resp.Usage, resp.Output[0].Status)
	}
}

// usage.input_tokens_details.cached_tokens counts the prompt tokens the prefix cache served:
// none the first time, the full pages before the last prompt token the second.
func TestResponsesCachedTokens(t *testing.T) {
	client, _, ctx := responsesServer(t)
	params := responses.ResponseNewParams{Model: demo.Name, MaxOutputTokens: oai.Int(2), Temperature: oai.Float(0),
		Instructions: oai.String(strings.Repeat("You answer questions about Go source files briefly. ", 4)),
		Input:        responses.ResponseNewParamsInputUnion{OfString: oai.String("hello")}}
	first, err := client.Responses.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	second, err := client.Responses.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	full := (first.Usage.InputTokens - 1) / 16 * 16
	if first.Usage.InputTokensDetails.CachedTokens != 0 || full == 0 || second.Usage.InputTokensDetails.CachedTokens != full {
		t.Errorf("cached tokens %d then %d, want 0 then %d", first.Usage.InputTokensDetails.CachedTokens, second.Usage.InputTokensDetails.CachedTokens, full)
	}
}

// What this server cannot do is a 400 naming the field, never ignored: stored state
// (store, previous_response_id, conversation, background, stored prompts), built-in tools,
// a forcing tool_choice without tools, chat's names for Responses fields, unsupported or
// incomplete input items and parts; the shared checks name the Responses field (max_output_tokens,
// input, text.format), and a request over the limits is refused before any work.
func TestResponsesRefusedFields(t *testing.T) {
	client, url, ctx := responsesServer(t)
	base := responses.ResponseNewParams{Model: demo.Name, MaxOutputTokens: oai.Int(4), Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("x")}}
	webSearch := base
	webSearch.Tools = []responses.ToolUnionParam{{OfWebSearch: &responses.WebSearchToolParam{Type: responses.WebSearchToolTypeWebSearch}}}
	choice := base
	choice.ToolChoice = responses.ResponseNewParamsToolChoiceUnion{OfToolChoiceMode: oai.Opt(responses.ToolChoiceOptionsRequired)}
	store, prev, background := base, base, base
	store.Store, prev.PreviousResponseID, background.Background = oai.Bool(true), oai.String("resp_1"), oai.Bool(true)
	tooLong := base
	tooLong.MaxOutputTokens = oai.Int(100000)
	badSchema := base
	badSchema.Text.Format.OfJSONSchema = &responses.ResponseFormatTextJSONSchemaConfigParam{Name: "x", Schema: map[string]any{"type": "string", "format": "email"}}
	cases := []struct {
		name   string
		params responses.ResponseNewParams
		opts   []option.RequestOption
		param  string
		want   string
	}{
		{"store", store, nil, "store", "keeps no responses"},
		{"previous_response_id", prev, nil, "previous_response_id", "keeps no responses"},
		{"background", background, nil, "background", "background"},
		{"conversation", base, []option.RequestOption{option.WithJSONSet("conversation", "conv_1")}, "conversation", "keeps no"},
		{"prompt", base, []option.RequestOption{option.WithJSONSet("prompt", map[string]any{"id": "pmpt_1"})}, "prompt", "stored prompt"},
		{"web_search", webSearch, nil, "tools", `"web_search"`},
		{"tool_choice without tools", choice, nil, "tool_choice", "needs tools"},
		{"max_tokens", base, []option.RequestOption{option.WithJSONSet("max_tokens", 5)}, "max_tokens", "max_output_tokens"},
		{"response_format", base, []option.RequestOption{option.WithJSONSet("response_format", map[string]any{"type": "json_object"})}, "response_format", "text.format"},
		{"truncation", base, []option.RequestOption{option.WithJSONSet("truncation", "auto")}, "truncation", "disabled"},
		{"reasoning", base, []option.RequestOption{option.WithJSONSet("reasoning", map[string]any{"effort": "high"})}, "reasoning", "reason"},
		{"verbosity", base, []option.RequestOption{option.WithJSONSet("text", map[string]any{"verbosity": "low"})}, "text.verbosity", "medium"},
		{"include", base, []option.RequestOption{option.WithJSONSet("include", []string{"file_search_call.results"})}, "include", "not supported"},
		{"function_call_output without call_id", base, []option.RequestOption{option.WithJSONSet("input", []map[string]any{{"type": "function_call_output", "output": "1"}})}, "input", "call_id"},
		{"item type", base, []option.RequestOption{option.WithJSONSet("input", []map[string]any{{"type": "reasoning", "summary": []any{}}})}, "input", `"reasoning"`},
		{"image part", base, []option.RequestOption{option.WithJSONSet("input", []map[string]any{{"role": "user", "content": []map[string]any{{"type": "input_image", "image_url": "http://x"}}}})}, "input", "input_image"},
		{"tool role", base, []option.RequestOption{option.WithJSONSet("input", []map[string]any{{"role": "tool", "content": "x"}})}, "input", "tool"},
		{"empty input", base, []option.RequestOption{option.WithJSONSet("input", []any{})}, "input", "empty"},
		{"context", tooLong, nil, "max_output_tokens", "maximum context length"},
		{"max_output_tokens 0", base, []option.RequestOption{option.WithJSONSet("max_output_tokens", 0)}, "max_output_tokens", "at least 1"},
		{"schema keyword", badSchema, nil, "text.format", `"format"`},
		{"two formats", base, []option.RequestOption{option.WithJSONSet("text", map[string]any{"format": map[string]any{"type": "json_object"}}), option.WithJSONSet("guided_regex", "a")}, "guided_regex", "only one"},
		{"temperature type", base, []option.RequestOption{option.WithJSONSet("temperature", "hot")}, "temperature", "number"},
	}
	for _, tc := range cases {
		_, err := client.Responses.New(ctx, tc.params, tc.opts...)
		var ae *oai.Error
		if !errors.As(err, &ae) {
			t.Errorf("%s: %v, want an API error", tc.name, err)
			continue
		}
		if ae.StatusCode != http.StatusBadRequest || ae.Param != tc.param || !strings.Contains(ae.Message, tc.want) || ae.Type != "invalid_request_error" {
			t.Errorf("%s: %d param %q type %q message %q, want 400 naming %q with %q", tc.name, ae.StatusCode, ae.Param, ae.Type, ae.Message, tc.param, tc.want)
		}
	}
	// Input items past the messages limit are refused before any is decoded or rendered.
	items := strings.Repeat(`{"role":"user","content":"x"},`, serve.MaxMessages) + `{"role":"user","content":"x"}`
	start := time.Now()
	status, body := post(t, url, "/v1/responses", `{"model":"`+demo.Name+`","input":[`+items+`]}`, "Authorization", "Bearer "+testKey)
	checkError(t, status, body, 400, "input")
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("refused after %v", took)
	}
	// The neutral values of those fields change nothing and pass.
	ok, err := client.Responses.New(ctx, base, option.WithJSONSet("store", false), option.WithJSONSet("tool_choice", "auto"), option.WithJSONSet("tools", []any{}),
		option.WithJSONSet("truncation", "disabled"), option.WithJSONSet("reasoning", map[string]any{"effort": nil}), option.WithJSONSet("metadata", map[string]string{"k": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ok.RawJSON(), `"store":false`) || ok.Metadata["k"] != "v" {
		t.Errorf("response %s, want store false and the metadata", ok.RawJSON())
	}
}

// FuzzResponsesRequest throws request bodies at /v1/responses on the demo model (tokenizer and
// chat template, so input items, instructions and text.format are reachable), collected and
// streamed. No body may cause a panic or a 5xx; every non-200 answer must be an OpenAI error
// envelope, and every 200 valid JSON or a stream of named events.
func FuzzResponsesRequest(f *testing.F) {
	for _, s := range []string{
		`{"input":"hi","max_output_tokens":3}`,
		`{"input":"hi","instructions":"be brief","max_output_tokens":2,"temperature":0,"top_p":0.5,"stream":true}`,
		`{"input":[{"role":"user","content":"a"},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"b","annotations":[]}]},{"role":"developer","content":[{"type":"input_text","text":"c"}]}],"max_output_tokens":2}`,
		`{"input":"x","max_output_tokens":8,"text":{"format":{"type":"json_schema","name":"p","strict":true,"schema":{"type":"object","properties":{"a":{"type":"boolean"}},"required":["a"]}}}}`,
		`{"input":"x","max_output_tokens":8,"text":{"format":{"type":"json_object"}},"stream":true}`,
		`{"input":"x","max_output_tokens":2,"include":["message.output_text.logprobs"],"top_logprobs":2,"stream":true}`,
		`{"input":"x","store":true}`, `{"input":"x","previous_response_id":"resp_1"}`, `{"input":"x","background":true}`,
		`{"input":"x","conversation":{"id":"c"}}`, `{"input":"x","tools":[{"type":"web_search"}]}`,
		`{"input":"x","tools":[{"type":"function","name":"f","parameters":{}}],"tool_choice":{"type":"function","name":"f"}}`,
		`{"input":[{"type":"function_call_output","call_id":"c","output":"1"}]}`,
		`{"input":[{"role":"user","content":"a"},{"type":"function_call","call_id":"call_1","name":"f","arguments":"{\"a\":1}"},{"type":"function_call","id":"fc_2","call_id":"call_2","name":"g","arguments":"{}","status":"completed"},{"type":"function_call_output","call_id":"call_1","output":"ok"},{"type":"function_call_output","call_id":"call_2","output":[{"type":"input_text","text":"b"}]}],"max_output_tokens":2}`,
		`{"input":[{"type":"function_call","call_id":"c","name":"f"}]}`, `{"input":[{"type":"function_call","call_id":"c","name":"f","arguments":{}}]}`,
		`{"input":[{"type":"function_call_output","call_id":"c"}]}`, `{"input":[{"type":"function_call_output","call_id":"c","output":[{"type":"input_image"}]}]}`,
		`{"input":"x","max_output_tokens":4,"tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}}],"tool_choice":"required","parallel_tool_calls":false,"stream":true}`,
		`{"input":"x","tools":[{"type":"function","name":"f"}],"tool_choice":"none","include":["message.output_text.logprobs"],"max_output_tokens":2}`,
		`{"input":[{"role":"user","content":[{"type":"input_image"}]}]}`,
		`{"input":[]}`, `{"input":null}`, `{"input":5}`, `{"input":[5]}`, `{"input":[{"role":"user","content":[{"type":"input_text"}]}]}`,
		`{"input":"x","max_output_tokens":0}`, `{"input":"x","max_output_tokens":1e400}`, `{"input":"\ud800","max_output_tokens":1}`,
		`{"input":"x","text":{"format":{"type":"json_schema"}}}`, `{"input":"x","text":{"format":{"type":"yaml"}}}`, `{"input":"x","text":{"verbosity":"low"}}`,
		`{"input":"x","reasoning":{"effort":"low"}}`, `{"input":"x","truncation":"auto"}`, `{"input":"x","max_tokens":3,"n":2}`,
		`{"input":"x","max_output_tokens":2,"seed":3,"stop":["a"],"logit_bias":{"5":100},"metadata":{"k":"v"}}`, `{`, `[]`,
	} {
		f.Add([]byte(s))
	}
	// A short context keeps every accepted request cheap.
	e, ct := demoEngineWith(f, serve.Options{MaxModelLen: 64, MaxNumSeqs: 4, MaxBatchedTokens: 64})
	h := openai.New(e, openai.Options{MaxBodyBytes: 1 << 16, ChatTemplate: ct})
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := serveFuzzBody(t, h, "/v1/responses", body)
		switch {
		case rec.Code != http.StatusOK:
		case rec.Header().Get("Content-Type") == "text/event-stream":
			if !strings.HasPrefix(rec.Body.String(), "event: response.created\ndata: {") {
				t.Fatalf("a stream that does not start with response.created: %.200s", rec.Body)
			}
		case !json.Valid(rec.Body.Bytes()):
			t.Fatalf("200 with invalid JSON: %s", rec.Body)
		}
	})
}

// An error after the stream has started (here the engine shutting down mid-answer) is an
// "error" event with the code, message and next sequence_number, and the stream ends there:
// no response.completed follows.
func TestResponsesStreamErrorEvent(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{APIKey: testKey, ChatTemplate: ct})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream := client.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: demo.Name, MaxOutputTokens: oai.Int(200),
		Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("Go on and on.")}}, option.WithJSONSet("ignore_eos", true))
	var types []string
	var last responses.ResponseStreamEventUnion
	for stream.Next() {
		last = stream.Current()
		if last.SequenceNumber != int64(len(types)) {
			t.Errorf("event %d (%s) has sequence_number %d", len(types), last.Type, last.SequenceNumber)
		}
		types = append(types, last.Type)
		if last.Type == "response.output_text.delta" && len(types) == 5 {
			e.Close() // aborts every running request: the server is shutting down
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if last.Type != "error" || !strings.Contains(last.Message, "shutting down") || last.Code == "" {
		t.Fatalf("events %v, last %s: want an error event at the end", types, last.RawJSON())
	}
	for _, typ := range types {
		if typ == "response.completed" || typ == "response.incomplete" {
			t.Errorf("events %v: a final response after the error", types)
		}
	}
}
