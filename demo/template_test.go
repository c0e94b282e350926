package demo_test

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/serve/toolcall"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// The demo's template renders plain ChatML when a conversation has no tools; with tools it
// lists them in a system turn (merged with the conversation's own system message), writes an
// assistant's calls in the Hermes format and tool results as <tool_response> in a user turn,
// and the server reads the hermes format from it.
func TestChatTemplateTools(t *testing.T) {
	ct, err := chat.Parse(demo.ChatTemplate)
	if err != nil {
		t.Fatal(err)
	}
	plain := []chat.Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "hi"}, {Role: "assistant", Content: "hello"}, {Role: "user", Content: "bye"}}
	text, err := ct.Render(plain, chat.Options{AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	want := "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n"
	if text != want {
		t.Fatalf("without tools: %q, want %q", text, want)
	}
	call := chat.ToolCall{ID: "call_1", Type: "function"}
	call.Function.Name, call.Function.Arguments = "get_weather", `{"city": "Paris"}`
	msgs := []chat.Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Weather in Paris?"},
		{Role: "assistant", ToolCalls: []chat.ToolCall{call}}, {Role: "tool", ToolCallID: "call_1", Content: `{"temp": 21}`}}
	tool := json.RawMessage(`{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}`)
	text, err = ct.Render(msgs, chat.Options{AddGenerationPrompt: true, RawTools: []json.RawMessage{tool}})
	if err != nil {
		t.Fatal(err)
	}
	want = "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
		"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
		`{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}` +
		"\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n" +
		"<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" +
		"<|im_start|>user\nWeather in Paris?<|im_end|>\n" +
		"<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n" +
		"<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
	if text != want {
		t.Fatalf("with tools:\n%q\nwant\n%q", text, want)
	}
	if f := toolcall.Detect(demo.ChatTemplate); f == nil || f.Name() != "hermes" {
		t.Errorf("detected tool-call format %v, want hermes", f)
	}
}

// The trained demo's tokenizer_config.json holds the demo's ChatTemplate, so the served demo
// and the built one render alike.
func TestTrainedDemoTemplate(t *testing.T) {
	root, err := demo.Extract()
	if err != nil {
		t.Fatal(err)
	}
	ct, err := chat.FromTokenizerConfig(filepath.Join(root, "model"))
	if err != nil {
		t.Fatal(err)
	}
	if ct.Source() != demo.ChatTemplate {
		t.Errorf("the trained demo's chat template differs from demo.ChatTemplate:\n%s", ct.Source())
	}
}
