package toolcall

import (
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/tokenizer/chat"
)

// parseCase is a model-style output and what it parses to.
type parseCase struct {
	format  string
	name    string
	output  string
	content string
	calls   []Call
}

// The outputs below follow the formats' documentation (Qwen's and Hermes 2 Pro's function
// calling guides, Meta's Llama 3.1 prompt format, Mistral's function calling guide); the
// examples themselves are ours.
var parseCases = []parseCase{
	{"hermes", "one call, no text", "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"unit\": \"celsius\"}}\n</tool_call>",
		"", []Call{{"get_current_temperature", `{"location": "San Francisco, CA, USA", "unit": "celsius"}`}}},
	{"hermes", "text then two calls", "Let me check both cities.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
		"Let me check both cities.", []Call{{"get_weather", `{"city": "Paris"}`}, {"get_weather", `{"city": "Oslo"}`}}},
	{"hermes", "Qwen3 thinking, then a call", "<think>\nThe user wants the time.\n</think>\n\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>",
		"<think>\nThe user wants the time.\n</think>", []Call{{"now", `{}`}}},
	{"hermes", "arguments before name, as a JSON string", "<tool_call>{\"arguments\": \"{\\\"q\\\": \\\"go\\\"}\", \"name\": \"search\"}</tool_call>",
		"", []Call{{"search", `{"q": "go"}`}}},
	{"hermes", "text on both sides", "Looking.\n<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>\nDone.\n",
		"Looking.\nDone.", []Call{{"ping", `{}`}}},
	{"hermes", "no arguments key", "<tool_call>\n{\"name\": \"ping\"}\n</tool_call>", "", []Call{{"ping", `{}`}}},
	{"hermes", "plain answer", "The capital of France is Paris. Use <b>bold</b> < and > freely.\n",
		"The capital of France is Paris. Use <b>bold</b> < and > freely.\n", nil},
	{"hermes", "not a call object stays content", "<tool_call>\nsorry\n</tool_call>", "<tool_call>\nsorry\n</tool_call>", nil},
	{"hermes", "truncated in the arguments", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
		"", []Call{{"get_weather", `{"city": "Par`}}},
	{"hermes", "truncated before the name", "Checking.\n<tool_call>\n{\"na", "Checking.\n<tool_call>\n{\"na", nil},
	{"hermes", "nested braces and markup in strings", "<tool_call>\n{\"name\": \"run\", \"arguments\": {\"code\": \"if x { y(\\\"}\\\") } </tool_call>\", \"opts\": [{\"a\": [1, 2]}]}}\n</tool_call>",
		"", []Call{{"run", `{"code": "if x { y(\"}\") } </tool_call>", "opts": [{"a": [1, 2]}]}`}}},

	{"llama3_json", "one call", "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": 3}}",
		"", []Call{{"get_weather", `{"city": "Paris", "days": 3}`}}},
	{"llama3_json", "python_tag and two calls", "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}",
		"", []Call{{"a", `{"x": 1}`}, {"b", `{}`}}},
	{"llama3_json", "arguments key as vLLM accepts", "{\"name\": \"a\", \"arguments\": {\"x\": 1}}", "", []Call{{"a", `{"x": 1}`}}},
	{"llama3_json", "a plain answer", "It is sunny in Paris {today}.", "It is sunny in Paris {today}.", nil},
	{"llama3_json", "JSON that is not a call stays content", "{\"city\": \"Paris\", \"temp\": 21}", "{\"city\": \"Paris\", \"temp\": 21}", nil},

	{"mistral", "array format", "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}]",
		"", []Call{{"get_weather", `{"city": "Paris"}`}, {"get_time", `{"tz": "CET"}`}}},
	{"mistral", "name[ARGS] format", "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{\"tz\": \"CET\"}",
		"", []Call{{"get_weather", `{"city": "Paris"}`}, {"get_time", `{"tz": "CET"}`}}},
	{"mistral", "text before the marker", "Sure.[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {}}]", "Sure.", []Call{{"f", `{}`}}},
	{"mistral", "plain answer with brackets", "Use [x] and [TOOL] freely.", "Use [x] and [TOOL] freely.", nil},
}

func lookup(t testing.TB, name string) *Format {
	t.Helper()
	f, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Each format's model-style outputs parse into their content and calls.
func TestParse(t *testing.T) {
	for _, c := range parseCases {
		content, calls := lookup(t, c.format).Parse(c.output, 0)
		if content != c.content || !reflect.DeepEqual(calls, c.calls) {
			t.Errorf("%s %s: content %q calls %q, want %q %q", c.format, c.name, content, calls, c.content, c.calls)
		}
	}
}

// reassemble is what a client rebuilds from a stream's deltas; it also checks the deltas'
// shape: a call starts once, with its name, before any fragment of its arguments.
func reassemble(t *testing.T, deltas []Delta) (string, []Call) {
	t.Helper()
	var content strings.Builder
	var calls []Call
	for _, d := range deltas {
		switch {
		case !d.Call:
			if d.Content == "" {
				t.Fatalf("empty content delta")
			}
			content.WriteString(d.Content)
		case d.Start:
			if d.Index != len(calls) || d.Name == "" || d.Arguments != "" {
				t.Fatalf("start delta %+v after %d calls", d, len(calls))
			}
			calls = append(calls, Call{Name: d.Name})
		default:
			if d.Index != len(calls)-1 {
				t.Fatalf("fragment %+v of a call that is not the last started (%d)", d, len(calls))
			}
			calls[d.Index].Arguments += d.Arguments
		}
	}
	return content.String(), calls
}

// chunks feeds output in random pieces (as tokens arrive) and returns every delta.
func chunks(f *Format, output string, rng *rand.Rand, maxCalls int) []Delta {
	s := f.NewStream(maxCalls)
	var all []Delta
	for len(output) > 0 {
		n := 1 + rng.IntN(min(len(output), 6))
		all = append(all, s.Feed(output[:n])...)
		output = output[n:]
	}
	return append(all, s.Finish()...)
}

// Streamed in any chunking, an output's deltas reassemble to exactly its parse, and markup
// never reaches content deltas of well-formed calls.
func TestStreamReassemblesToParse(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range parseCases {
		f := lookup(t, c.format)
		for range 50 {
			content, calls := reassemble(t, chunks(f, c.output, rng, 0))
			if content != c.content || !reflect.DeepEqual(calls, c.calls) {
				t.Fatalf("%s %s streamed: content %q calls %q, want %q %q", c.format, c.name, content, calls, c.content, c.calls)
			}
		}
	}
}

// A call's start is sent as soon as its name is known and its arguments begin, and the
// arguments then stream as they come: the parser holds back only what may be markup.
func TestStreamSendsEarly(t *testing.T) {
	f := lookup(t, "hermes")
	s := f.NewStream(0)
	if d := s.Feed("Hi <tool"); len(d) != 1 || d[0].Content != "Hi" {
		t.Fatalf("content before a possible marker: %+v", d)
	}
	if d := s.Feed("_call>\n{\"name\": \"f\", \"arguments\": {\"a\": "); len(d) != 2 || !d[0].Start || d[0].Name != "f" || d[1].Arguments != `{"a": ` {
		t.Fatalf("start and first fragment: %+v", d)
	}
	if d := s.Feed("12"); len(d) != 1 || d[0].Arguments != "12" {
		t.Fatalf("fragment: %+v", d)
	}
	if d := s.Feed("}}\n</tool_"); len(d) != 1 || d[0].Arguments != "}" {
		t.Fatalf("last fragment: %+v", d)
	}
	if d := append(s.Feed("call>\n"), s.Finish()...); len(d) != 0 {
		t.Fatalf("after the call: %+v", d)
	}
}

// With parallel calls off, only the first call is reported.
func TestMaxCalls(t *testing.T) {
	out := parseCases[1].output
	content, calls := lookup(t, "hermes").Parse(out, 1)
	if content != "Let me check both cities." || len(calls) != 1 || calls[0].Arguments != `{"city": "Paris"}` {
		t.Errorf("content %q calls %q", content, calls)
	}
}

// A chat template teaches one format, found from its text; templates that teach none or
// several get none.
func TestDetect(t *testing.T) {
	for src, want := range map[string]string{
		"{%- if tools %}<tools>{{ tools }}</tools> <tool_call>\n{\"name\": <function-name>}</tool_call>{% endif %}":        "hermes",
		"<|start_header_id|>ipython<|end_header_id|> {\"name\": function name, \"parameters\": dictionary} <|python_tag|>": "llama3_json",
		"{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}":                                                                    "mistral",
		"{% for m in messages %}{{ m.content }}{% endfor %}":                                                               "",
		"<tool_call> [TOOL_CALLS]": "",
	} {
		got := ""
		if f := Detect(src); f != nil {
			got = f.Name()
		}
		if got != want {
			t.Errorf("Detect(%q) = %q, want %q", src, got, want)
		}
	}
	if _, err := Lookup("pythonic"); err == nil || !strings.Contains(err.Error(), "hermes") {
		t.Errorf("unknown parser: %v", err)
	}
}

// A tool is refused for a bad name, parameters that are not a JSON object, or parameters over
// the size or depth bound.
func TestToolCheck(t *testing.T) {
	deep := strings.Repeat(`{"a":`, MaxParametersDepth+1) + "1" + strings.Repeat("}", MaxParametersDepth+1)
	huge := `{"description":"` + strings.Repeat("x", MaxParametersBytes) + `"}`
	for _, tool := range []Tool{{Name: ""}, {Name: "has space"}, {Name: strings.Repeat("a", 65)}, {Name: "f.g"},
		{Name: "f", Parameters: json.RawMessage(`[1]`)}, {Name: "f", Parameters: json.RawMessage(`"x"`)},
		{Name: "f", Parameters: json.RawMessage(deep)}, {Name: "f", Parameters: json.RawMessage(huge)}} {
		if err := tool.Check(); err == nil {
			t.Errorf("tool %.80q accepted", tool.Name+" "+string(tool.Parameters))
		}
	}
	for _, tool := range []Tool{{Name: "get_weather-2"}, {Name: "f", Parameters: json.RawMessage(`{"type":"object"}`)}} {
		if err := tool.Check(); err != nil {
			t.Errorf("tool %q: %v", tool.Name, err)
		}
	}
}

// Real templates: Qwen3's teaches hermes; Llama 3.0's teaches no tool format.
func TestDetectRealTemplates(t *testing.T) {
	for name, want := range map[string]string{"qwen3": "hermes", "llama3": ""} {
		ct, err := chat.FromTokenizerConfig(filepath.Join("..", "..", "testdata", "tokenizers", name))
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if f := Detect(ct.Source()); f != nil {
			got = f.Name()
		}
		if got != want {
			t.Errorf("%s: detected %q, want %q", name, got, want)
		}
	}
}

// What Qwen3's own template writes for an assistant's calls is what the hermes parser reads
// back: the same names and arguments.
func TestHermesReadsQwen3Template(t *testing.T) {
	ct, err := chat.FromTokenizerConfig(filepath.Join("..", "..", "testdata", "tokenizers", "qwen3"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Call{{"get_weather", `{"city": "Paris", "unit": "celsius"}`}, {"get_time", `{"tz": "CET"}`}}
	msg := chat.Message{Role: "assistant", Content: "Checking."}
	for i, c := range want {
		tc := chat.ToolCall{ID: "call_" + string(rune('a'+i)), Type: "function"}
		tc.Function.Name, tc.Function.Arguments = c.Name, json.RawMessage(c.Arguments)
		msg.ToolCalls = append(msg.ToolCalls, tc)
	}
	text, err := ct.Render([]chat.Message{{Role: "user", Content: "Weather and time in Paris?"}, msg}, chat.Options{})
	if err != nil {
		t.Fatal(err)
	}
	i := strings.LastIndex(text, "<|im_start|>assistant\n")
	j := strings.LastIndex(text, "<|im_end|>")
	if i < 0 || j < i {
		t.Fatalf("no assistant turn in %q", text)
	}
	content, calls := lookup(t, "hermes").Parse(text[i+len("<|im_start|>assistant\n"):j], 0)
	if !reflect.DeepEqual(calls, want) || !strings.HasSuffix(content, "Checking.") {
		t.Errorf("parsed %q %q from %q", content, calls, text[i:j])
	}
}
