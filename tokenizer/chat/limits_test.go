package chat

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLimits checks that hostile templates stop with the right error.
func TestLimits(t *testing.T) {
	cases := []struct {
		src, wantErr string
		fullBudget   bool // size limits must trip before the step limit
	}{
		{"{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}", "step limit", false},
		{"{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output too large", true},
		{"{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "value too large", true},
		{"{% set s = 'x' * 10000000 %}{% for i in range(100000) %}{% set t = s ~ i %}{% endfor %}", "step limit", false},
		{"{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", "list too long", false},
		{"{{ [0] * 100000000000 }}", "value too large", false},
		{"{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", "recursion depth", false},
		{"{% for x in [[1]] recursive %}{{ loop([x]) }}{% endfor %}", "recursion depth", false},
		{"{{ " + strings.Repeat("(", 1000) + "1" + strings.Repeat(")", 1000) + " }}", "nested too deeply", false},
		{strings.Repeat("{% if true %}", 1000), "nested too deeply", false},
		{"{{ range(1000000) }}", "range too big", false},
		{"{{ 2 ** 63 }}", "integer overflow", false},
		{"{{ 9223372036854775807 + 1 }}", "integer overflow", false},
		{"{% set ns = namespace(t=(1,)) %}{% for i in range(1000) %}{% set ns.t = (ns.t,) %}{% endfor %}{{ {ns.t: 1} }}", "nested too deeply", false},
		{"{{ 'x'|indent(100000) }}", "indent width too large", false},
	}
	for _, c := range cases {
		start := time.Now()
		tmpl, err := Parse(c.src)
		if err == nil {
			// A tenth of the real budget exercises the same checks faster.
			if !c.fullBudget {
				tmpl.maxSteps = maxSteps / 10
			}
			_, err = tmpl.Render(nil, Options{})
		}
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%.60q: want error containing %q, got %v", c.src, c.wantErr, err)
		}
		// No time limit is asserted (speed belongs in benchmarks, and CI machines are shared):
		// the step, size and depth limits above are what bound the work.
		t.Logf("%.40q: %v in %v", c.src, c.wantErr, time.Since(start))
	}
}

func TestRaiseException(t *testing.T) {
	_, err := renderSrc(t, "{% if true %}\n{{ raise_exception('Conversation roles must alternate') }}{% endif %}", nil)
	var te *TemplateError
	if !errors.As(err, &te) || te.Msg != "Conversation roles must alternate" || err.Error() != te.Msg {
		t.Fatalf("got %#v", err)
	}
}

func TestSyntaxErrorLine(t *testing.T) {
	_, err := Parse("line 1\n{% if x %}\nline 3\n{{ x + }}\n{% endif %}")
	var se *SyntaxError
	if !errors.As(err, &se) || se.Line != 4 {
		t.Fatalf("got %v", err)
	}
	for src, line := range map[string]int{
		"a\nb\n{% for x in y %}\n": 3, "{#\n\n unterminated": 1, "\n{{ 'x }}": 2, "\n\n{% endif %}": 3,
		"{% raw %}\n": 1, "\n{{ x | nosuchfilter }}": 2, "{% set %}": 1,
	} {
		_, err := Parse(src)
		if !errors.As(err, &se) || se.Line != line {
			t.Errorf("%q: want syntax error on line %d, got %v", src, line, err)
		}
	}
}

func TestRuntimeErrorLine(t *testing.T) {
	_, err := renderSrc(t, "ok\n\n{{ 'a' + 1 }}", nil)
	var re *RenderError
	if !errors.As(err, &re) || re.Line != 3 {
		t.Fatalf("got %v", err)
	}
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFromTokenizerConfig(t *testing.T) {
	// llama2's config has no chat_template.
	if _, err := FromTokenizerConfig(filepath.Join("..", "..", "testdata", "tokenizers", "llama2")); !errors.Is(err, ErrNoTemplate) {
		t.Errorf("llama2: want ErrNoTemplate, got %v", err)
	}
	if _, err := FromTokenizerConfig(t.TempDir()); !errors.Is(err, ErrNoTemplate) {
		t.Errorf("empty dir: want ErrNoTemplate, got %v", err)
	}
	named := writeFiles(t, map[string]string{"tokenizer_config.json": `{"chat_template": [
		{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "default {{ bos_token }}"}],
		"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "unk_token": null}`})
	tmpl, err := FromTokenizerConfig(named)
	if err != nil {
		t.Fatal(err)
	}
	toks, err := SpecialTokens(named)
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 2 || toks["bos_token"] != "<s>" || toks["eos_token"] != "</s>" {
		t.Errorf("tokens %v", toks)
	}
	if got, err := tmpl.Render(nil, Options{Tokens: toks}); err != nil || got != "default <s>" {
		t.Errorf("named default: %q %v", got, err)
	}
	noDefault := writeFiles(t, map[string]string{"tokenizer_config.json": `{"chat_template": [{"name": "rag", "template": "x"}]}`})
	if _, err := FromTokenizerConfig(noDefault); !errors.Is(err, ErrNoTemplate) {
		t.Errorf("no default: want ErrNoTemplate, got %v", err)
	}
	// chat_template.jinja wins over the config field; its final newline is
	// dropped like Jinja2 does.
	jinja := writeFiles(t, map[string]string{"tokenizer_config.json": `{"chat_template": "old"}`, "chat_template.jinja": "new\n"})
	tmpl, err = FromTokenizerConfig(jinja)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := tmpl.Render(nil, Options{}); got != "new" {
		t.Errorf("chat_template.jinja: got %q", got)
	}
	bad := writeFiles(t, map[string]string{"tokenizer_config.json": `{"chat_template": "{% if %}"}`})
	var se *SyntaxError
	if _, err := FromTokenizerConfig(bad); !errors.As(err, &se) {
		t.Errorf("bad template: want SyntaxError, got %v", err)
	}
}

// TestMessageDicts checks how Message fields reach templates: absent when
// empty, tool call arguments as object (Go maps with sorted keys, raw JSON in
// order) or string.
func TestMessageDicts(t *testing.T) {
	tmpl, err := Parse("{% for m in messages %}{{ m|tojson }}\n{% endfor %}{{ tools|tojson }}|{{ documents }}|{{ add_generation_prompt }}|{{ bos_token }}|{{ enable_thinking }}")
	if err != nil {
		t.Fatal(err)
	}
	call := func(args any) ToolCall {
		var c ToolCall
		c.ID, c.Type, c.Function.Name, c.Function.Arguments = "call_1", "function", "f", args
		return c
	}
	msgs := []Message{
		{Role: "user", Content: ""},
		{Role: "assistant", Content: "x", ReasoningContent: "why", ToolCalls: []ToolCall{
			call(map[string]any{"z": 1.0, "a": []any{2.5, "s", nil, true}}),
			call(json.RawMessage(`{"z": 1, "a": {"y": 1.0, "b": null}}`)),
			call(`{"raw": "string"}`),
			{}, // empty fields are left out; nil arguments are an empty object
		}},
		{Role: "tool", Content: "42", ToolCallID: "call_1", Name: "f"},
	}
	got, err := tmpl.Render(msgs, Options{
		AddGenerationPrompt: true,
		Tokens:              map[string]string{"bos_token": "<s>", "enable_thinking": "overridden"},
		Tools:               []map[string]any{{"type": "function", "function": map[string]any{"name": "f"}}},
		Extra:               map[string]any{"enable_thinking": false},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"role": "user", "content": ""}
{"role": "assistant", "content": "x", "reasoning_content": "why", "tool_calls": [` +
		`{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"a": [2.5, "s", null, true], "z": 1}}}, ` +
		`{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"z": 1, "a": {"y": 1.0, "b": null}}}}, ` +
		`{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"raw\": \"string\"}"}}, ` +
		`{"function": {"name": "", "arguments": {}}}]}
{"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "f"}
[{"function": {"name": "f"}, "type": "function"}]|None|True|<s>|False`
	if got != want {
		t.Errorf("%s", firstDiff(got, want))
	}
	got, err = tmpl.Render(nil, Options{RawTools: []json.RawMessage{json.RawMessage(`{"type": "function", "function": {"name": "f"}}`)}})
	if err != nil || !strings.HasSuffix(got, `[{"type": "function", "function": {"name": "f"}}]|None|False||`) {
		t.Errorf("raw tools: %q %v", got, err)
	}
}

// TestConcurrentRender renders one parsed template from many goroutines.
func TestConcurrentRender(t *testing.T) {
	tmpl, toks := loadTokenizer(t, "qwen3")
	msgs := []Message{{Role: "user", Content: "hi"}, {Role: "assistant", Content: "<think>\nx\n</think>\n\nyo"}}
	want, err := tmpl.Render(msgs, Options{Tokens: toks})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				if got, err := tmpl.Render(msgs, Options{Tokens: toks}); err != nil || got != want {
					t.Errorf("concurrent render differs: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
