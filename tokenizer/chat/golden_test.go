package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// goldenFile is what tools/fixtures/chat_golden.py writes from transformers'
// apply_chat_template. Name, Tools and Error are extensions used by
// development oracles (CHAT_ORACLE below).
type goldenFile struct {
	TransformersVersion string       `json:"transformers_version"`
	Cases               []goldenCase `json:"cases"`
}

type goldenCase struct {
	Name                string                     `json:"name"`
	Messages            []json.RawMessage          `json:"messages"`
	AddGenerationPrompt bool                       `json:"add_generation_prompt"`
	Kwargs              map[string]json.RawMessage `json:"kwargs"`
	Tools               []json.RawMessage          `json:"tools"`
	Rendered            *string                    `json:"rendered"`
	Error               *string                    `json:"error"`
}

// messageFromJSON decodes an OpenAI-style message, keeping tool call
// arguments as raw JSON so their key order survives.
func messageFromJSON(raw json.RawMessage) (Message, error) {
	var m struct {
		Role             string  `json:"role"`
		Content          *string `json:"content"`
		ReasoningContent string  `json:"reasoning_content"`
		ToolCallID       string  `json:"tool_call_id"`
		Name             string  `json:"name"`
		ToolCalls        []struct {
			ID       string `json:"id"`
			Type     string `json:"type"`
			Function struct {
				Name      string          `json:"name"`
				Arguments json.RawMessage `json:"arguments"`
			} `json:"function"`
		} `json:"tool_calls"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return Message{}, err
	}
	out := Message{Role: m.Role, ReasoningContent: m.ReasoningContent, ToolCallID: m.ToolCallID, Name: m.Name}
	if m.Content != nil {
		out.Content = *m.Content
	}
	for _, tc := range m.ToolCalls {
		var c ToolCall
		c.ID, c.Type, c.Function.Name = tc.ID, tc.Type, tc.Function.Name
		var s string
		if json.Unmarshal(tc.Function.Arguments, &s) == nil {
			c.Function.Arguments = s
		} else {
			c.Function.Arguments = tc.Function.Arguments
		}
		out.ToolCalls = append(out.ToolCalls, c)
	}
	return out, nil
}

// firstDiff describes where two renderings part, with context.
func firstDiff(got, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	for i > 0 && !utf8.RuneStart(want[min(i, len(want)-1)]) {
		i--
	}
	lo := max(0, i-40)
	ctx := func(s string) string {
		return fmt.Sprintf("%q", s[min(lo, len(s)):min(i+40, len(s))])
	}
	return fmt.Sprintf("first difference at byte %d (got %d bytes, want %d)\n  got:  ...%s...\n  want: ...%s...",
		i, len(got), len(want), ctx(got), ctx(want))
}

func runGoldenCases(t *testing.T, tmplFor func(name string) (*Template, map[string]string), f goldenFile, label string) {
	t.Helper()
	matched := 0
	for i, c := range f.Cases {
		tmpl, toks := tmplFor(c.Name)
		msgs := make([]Message, len(c.Messages))
		for j, raw := range c.Messages {
			m, err := messageFromJSON(raw)
			if err != nil {
				t.Fatalf("%s case %d: message %d: %v", label, i, j, err)
			}
			msgs[j] = m
		}
		extra := map[string]any{}
		for k, v := range c.Kwargs {
			extra[k] = v
		}
		got, err := tmpl.Render(msgs, Options{AddGenerationPrompt: c.AddGenerationPrompt, Tokens: toks, RawTools: c.Tools, Extra: extra})
		desc := fmt.Sprintf("%s case %d (%s gen=%v kwargs=%v tools=%v)", label, i, c.Name, c.AddGenerationPrompt, c.Kwargs, c.Tools != nil)
		switch {
		case c.Error != nil:
			if err == nil {
				t.Errorf("%s: want error %q, got output %q", desc, *c.Error, got)
				continue
			}
			if !strings.Contains(err.Error(), *c.Error) {
				t.Errorf("%s: want error %q, got %v", desc, *c.Error, err)
				continue
			}
		case err != nil:
			t.Errorf("%s: %v", desc, err)
			continue
		case c.Rendered == nil:
			t.Fatalf("%s: case has neither rendered nor error", desc)
		case got != *c.Rendered:
			t.Errorf("%s: %s", desc, firstDiff(got, *c.Rendered))
			continue
		}
		matched++
	}
	t.Logf("%s: %d/%d cases matched", label, matched, len(f.Cases))
}

func loadGolden(t *testing.T, path string) (goldenFile, bool) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return goldenFile{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var f goldenFile
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(f.Cases) == 0 {
		t.Fatalf("%s: no cases", path)
	}
	return f, true
}

func loadTokenizer(t *testing.T, name string) (*Template, map[string]string) {
	t.Helper()
	return loadTokenizerDir(t, filepath.Join("..", "..", "testdata", "tokenizers", name))
}

// loadTokenizerDir loads the template and special tokens of a folder.
func loadTokenizerDir(t *testing.T, dir string) (*Template, map[string]string) {
	t.Helper()
	name := dir
	tmpl, err := FromTokenizerConfig(dir)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	toks, err := SpecialTokens(dir)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return tmpl, toks
}

// TestGolden compares against renderings by transformers itself
// (tools/fixtures/chat_golden.py) byte for byte.
func TestGolden(t *testing.T) {
	for _, name := range []string{"llama3", "qwen3"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("..", "..", "testdata", "tokenizers", name, "chat_golden.json")
			f, ok := loadGolden(t, path)
			if !ok {
				t.Skipf("%s not generated yet (run tools/fixtures/chat_golden.py)", path)
			}
			tmpl, toks := loadTokenizer(t, name)
			runGoldenCases(t, func(string) (*Template, map[string]string) { return tmpl, toks }, f,
				name+" (transformers "+f.TransformersVersion+")")
		})
	}
}

// TestToolGolden compares against transformers' renderings of conversations
// with tool calls, tool results, reasoning_content, tool schemas and
// enable_thinking (testdata/tool_golden.py made testdata/tool_golden.json).
func TestToolGolden(t *testing.T) {
	f, ok := loadGolden(t, filepath.Join("testdata", "tool_golden.json"))
	if !ok {
		t.Fatal("testdata/tool_golden.json missing")
	}
	cache := map[string][2]any{}
	runGoldenCases(t, func(name string) (*Template, map[string]string) {
		if c, ok := cache[name]; ok {
			return c[0].(*Template), c[1].(map[string]string)
		}
		tmpl, toks := loadTokenizer(t, name)
		cache[name] = [2]any{tmpl, toks}
		return tmpl, toks
	}, f, "tool_golden (transformers "+f.TransformersVersion+")")
}

// TestOracleFile checks a case file from a development oracle (for example
// jinja2 configured like transformers) named by CHAT_ORACLE; each case names
// the testdata tokenizer whose template it uses.
func TestOracleFile(t *testing.T) {
	path := os.Getenv("CHAT_ORACLE")
	if path == "" {
		t.Skip("CHAT_ORACLE not set")
	}
	f, ok := loadGolden(t, path)
	if !ok {
		t.Fatalf("%s does not exist", path)
	}
	type loaded struct {
		tmpl *Template
		toks map[string]string
	}
	cache := map[string]loaded{}
	runGoldenCases(t, func(name string) (*Template, map[string]string) {
		l, ok := cache[name]
		if !ok {
			if strings.Contains(name, "/") {
				l.tmpl, l.toks = loadTokenizerDir(t, name)
			} else {
				l.tmpl, l.toks = loadTokenizer(t, name)
			}
			// Oracles freeze strftime_now at this instant too.
			l.tmpl.now = func() time.Time { return time.Date(2026, 7, 4, 13, 5, 9, 0, time.UTC) }
			cache[name] = l
		}
		return l.tmpl, l.toks
	}, f, path)
}
