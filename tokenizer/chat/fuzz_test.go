package chat

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParseRender feeds arbitrary template source and message content
// through Parse and Render: neither may panic or run away, whatever the
// input. The seeds (run by plain "go test") include the real templates and
// every engine table case.
func FuzzParseRender(f *testing.F) {
	for _, name := range []string{"llama3", "qwen3"} {
		raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "tokenizers", name, "tokenizer_config.json"))
		if err != nil {
			f.Fatal(err)
		}
		var cfg struct {
			ChatTemplate string `json:"chat_template"`
		}
		if err := json.Unmarshal(raw, &cfg); err != nil {
			f.Fatal(err)
		}
		f.Add(cfg.ChatTemplate, "<think>\nx\n</think>\n\nhello")
		f.Add(cfg.ChatTemplate, "{{ raise_exception('x') }}")
	}
	for _, c := range engineCases {
		f.Add(c.src, "content")
	}
	for _, src := range []string{
		"", "{", "{{", "{%", "{#", "{{ }}", "{% %}", "{%- -%}", "{{ ((((((((((((1)))))))))))) }}",
		"{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
		"{% set s = 'ab' %}{% for i in range(64) %}{% set s = s ~ s %}{% endfor %}{{ s|length }}",
		"{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
		"{{ 'x' * 100000000000 }}", "{{ [1] * 100000000000 }}", "{{ 2 ** 100000 }}", "{{ 1 // 0 }}",
		"{{ messages[0].content[::-1] }}{{ messages[0].content.split('x', -5) }}",
		"{{ messages|tojson(indent=999999) }}", "{{ '%*d' % (5, 1) }}", "{{ '{:>999999999}'.format(1) }}",
		"{% raw %}", "{% endfor %}", "{% if %}", "{{ a.b.c[0](1)(2) }}", "{{ x is }}", "{{ 'a' is divisibleby 0 }}",
		"{% set ns = namespace() %}{% set ns.x = ns %}{{ ns }}", "{% set d = {} %}{{ d.update({'a': 1}) }}",
		"{{ '\\U0010ffff\\ud800' }}", "{% for a, b in messages %}{% endfor %}",
	} {
		f.Add(src, "\xff\xfe invalid utf8 {{ }} {% %}")
	}
	f.Fuzz(func(t *testing.T, src, content string) {
		tmpl, err := Parse(src)
		if err != nil {
			if isInternal(err) {
				t.Fatalf("Parse(%q): %v", src, err)
			}
			return
		}
		tmpl.maxSteps = maxSteps / 10 // keeps seeds and fuzzing fast
		start := time.Now()
		msgs := []Message{
			{Role: "system", Content: content},
			{Role: "user", Content: content},
			{Role: "assistant", Content: content, ReasoningContent: content},
		}
		msgs[2].ToolCalls = []ToolCall{{ID: "1", Type: "function"}}
		msgs[2].ToolCalls[0].Function.Name = content
		msgs[2].ToolCalls[0].Function.Arguments = content
		_, err = tmpl.Render(msgs, Options{
			AddGenerationPrompt: true,
			Tokens:              map[string]string{"bos_token": content},
			Tools:               []map[string]any{{"type": "function", "name": content}},
			Extra:               map[string]any{"enable_thinking": false},
		})
		if isInternal(err) {
			t.Fatalf("Render(%q): %v", src, err)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("render took %v", d)
		}
	})
}

// isInternal spots a panic that Parse or Render recovered: the recovery
// keeps servers alive, but any such panic is a bug to fix.
func isInternal(err error) bool {
	return err != nil && strings.Contains(err.Error(), "internal error")
}
