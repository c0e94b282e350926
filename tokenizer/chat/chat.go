// Package chat renders Hugging Face chat templates exactly as transformers'
// tokenizer.apply_chat_template(messages, tokenize=False, ...) does.
//
// transformers renders with a Jinja2 ImmutableSandboxedEnvironment
// (trim_blocks, lstrip_blocks, loop controls), a json.dumps-based tojson
// filter, and raise_exception / strftime_now globals. This package has its
// own interpreter for the Jinja2 subset chat templates use, because
// byte-exact output depends on Python details a generic engine gets wrong:
// str methods, slicing, str()/repr() of values, json.dumps spacing, Jinja2's
// whitespace control and scoping. Files by concern: lexer.go (tags and
// whitespace control), parser.go and parse_expr.go (Jinja2's grammar),
// exec.go and eval.go (statements, expressions), ops.go, access.go,
// methods.go, filters*.go, tests.go, globals.go (Python and Jinja2
// semantics), repr.go, pyjson.go, pyfmt.go, pyformatspec.go, casing.go
// (Python formatting and Unicode casing).
//
// Supported: {{ }}, {% if/elif/else %}, {% for %} (else, "if" filter,
// recursive, tuple unpacking, loop.*), break/continue, {% set %} (also
// namespace attributes, tuples and block set), {% macro %} (defaults,
// varargs/kwargs), {% filter %}, {% with %}, {% raw %}, {% generation %},
// comments; all Jinja2 operators and literals; the tests and filters chat
// templates use (unknown ones fail at Parse, as in Jinja2); str, dict and
// list methods; range, namespace, dict, raise_exception, strftime_now.
//
// Not supported: {% call %} blocks, {% include/import/extends/block %},
// *args/**kwargs in calls, the filters batch, slice, groupby, truncate,
// wordwrap, striptags, urlize, pprint, xmlattr, filesizeformat, random,
// and the globals cycler, joiner, lipsum. Ints are 64-bit (overflow is an
// error, not a big int). dict.items() and range() print as lists.
//
// Rendering untrusted templates and messages is bounded (evaluation steps,
// recursion depth, output and value sizes) and never panics: a panic would
// be recovered and returned as an error.
package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNoTemplate reports a tokenizer folder without a chat template.
var ErrNoTemplate = errors.New("chat template not found")

// Message is one chat message, as in the OpenAI chat API. Templates see it
// as the dict json.loads would give for the OpenAI JSON form: keys role,
// content (always), reasoning_content, tool_calls, tool_call_id and name,
// in that order, each left out when empty; tool calls likewise have id,
// type and function {name, arguments}.
type Message struct {
	Role             string
	Content          string
	ReasoningContent string // omitted when empty
	ToolCalls        []ToolCall
	ToolCallID       string
	Name             string
}

// ToolCall is an assistant's function call.
type ToolCall struct {
	ID       string
	Type     string
	Function struct {
		Name string
		// Arguments is either a JSON object (map, json.RawMessage, struct)
		// or a string holding JSON text; templates tell them apart with
		// "is string". nil renders as an empty object.
		Arguments any
	}
}

// Options are the apply_chat_template arguments besides the messages.
type Options struct {
	AddGenerationPrompt bool
	// Tokens are the tokenizer's special tokens by attribute name
	// (bos_token, eos_token, unk_token, pad_token, ...).
	Tokens map[string]string
	// Tools are JSON schemas; nil passes tools=None. Go maps are unordered,
	// so their keys reach the template sorted; use RawTools to keep the
	// client's key order, which tojson output depends on.
	Tools []map[string]any
	// RawTools, when non-nil, is used instead of Tools: one JSON object per
	// tool, decoded with key order preserved as json.loads would.
	RawTools []json.RawMessage
	// Extra are additional template kwargs such as enable_thinking; they
	// override Tokens of the same name, as in transformers.
	Extra map[string]any
}

// Template is a parsed chat template; it is safe for concurrent use.
type Template struct {
	src      string
	body     []node
	now      func() time.Time // for tests of strftime_now
	maxSteps int              // tests lower it to hit the limit cheaply
}

// Parse parses Jinja2 template source.
func Parse(src string) (t *Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("chat template: internal error while parsing: %v", r)
		}
	}()
	body, err := parseTemplate(src)
	if err != nil {
		return nil, err
	}
	return &Template{src: src, body: body}, nil
}

// Source is the template's Jinja2 text (what a server reads a model's conventions from, such
// as its tool-call format); "" for no template (nil).
func (t *Template) Source() string {
	if t == nil {
		return ""
	}
	return t.src
}

// Render renders messages the way apply_chat_template(..., tokenize=False)
// does. A template's raise_exception surfaces as a *TemplateError.
func (t *Template) Render(messages []Message, opts Options) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("chat template: internal error while rendering: %v", r)
		}
	}()
	root := newScope(nil)
	for k, v := range opts.Tokens {
		root.set(k, v)
	}
	for k, v := range opts.Extra {
		x, err := fromGo(v, 0)
		if err != nil {
			return "", fmt.Errorf("chat template: extra %q: %w", k, err)
		}
		root.set(k, x)
	}
	msgs := make([]value, len(messages))
	for i, m := range messages {
		if msgs[i], err = messageValue(m); err != nil {
			return "", fmt.Errorf("chat template: message %d: %w", i, err)
		}
	}
	root.set("messages", newList(msgs))
	root.set("add_generation_prompt", opts.AddGenerationPrompt)
	root.set("documents", nil)
	root.set("tools", nil)
	switch {
	case opts.RawTools != nil:
		tools := make([]value, len(opts.RawTools))
		for i, tl := range opts.RawTools {
			if tools[i], err = decodeOrderedJSON(tl); err != nil {
				return "", fmt.Errorf("chat template: tool %d: %w", i, err)
			}
		}
		root.set("tools", newList(tools))
	case opts.Tools != nil:
		tools := make([]value, len(opts.Tools))
		for i, tl := range opts.Tools {
			if tools[i], err = fromGo(tl, 0); err != nil {
				return "", fmt.Errorf("chat template: tool %d: %w", i, err)
			}
		}
		root.set("tools", newList(tools))
	}
	var b strings.Builder
	ev := &evaluator{out: &b, now: t.now, maxSteps: maxSteps}
	if t.maxSteps > 0 {
		ev.maxSteps = t.maxSteps
	}
	err = ev.execBody(t.body, newScope(root))
	if err != nil {
		return "", err
	}
	return b.String(), nil
}

// messageValue builds the dict a template sees for a message: the keys an
// OpenAI JSON message would have after json.loads, content always present.
func messageValue(m Message) (value, error) {
	d := newDict()
	d.setStr("role", m.Role)
	d.setStr("content", m.Content)
	if m.ReasoningContent != "" {
		d.setStr("reasoning_content", m.ReasoningContent)
	}
	if len(m.ToolCalls) > 0 {
		calls := make([]value, len(m.ToolCalls))
		for i, tc := range m.ToolCalls {
			c := newDict()
			if tc.ID != "" {
				c.setStr("id", tc.ID)
			}
			if tc.Type != "" {
				c.setStr("type", tc.Type)
			}
			fn := newDict()
			fn.setStr("name", tc.Function.Name)
			args, err := fromGo(tc.Function.Arguments, 0)
			if err != nil {
				return nil, fmt.Errorf("tool call %d arguments: %w", i, err)
			}
			if tc.Function.Arguments == nil {
				args = newDict()
			}
			fn.setStr("arguments", args)
			c.setStr("function", fn)
			calls[i] = c
		}
		d.setStr("tool_calls", newList(calls))
	}
	if m.ToolCallID != "" {
		d.setStr("tool_call_id", m.ToolCallID)
	}
	if m.Name != "" {
		d.setStr("name", m.Name)
	}
	return d, nil
}

// FromTokenizerConfig loads the chat template of a Hugging Face tokenizer
// folder: chat_template.jinja if present (the newer layout, which
// transformers prefers), else tokenizer_config.json's chat_template, which is
// a string or a list of {"name", "template"} of which "default" is used.
func FromTokenizerConfig(dir string) (*Template, error) {
	src, err := templateSource(dir)
	if err != nil {
		return nil, err
	}
	return Parse(src)
}

func templateSource(dir string) (string, error) {
	if b, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
		return string(b), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%w in %s", ErrNoTemplate, dir)
	}
	if err != nil {
		return "", err
	}
	var cfg struct {
		ChatTemplate json.RawMessage `json:"chat_template"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return "", fmt.Errorf("parse tokenizer_config.json: %w", err)
	}
	if len(cfg.ChatTemplate) == 0 || string(cfg.ChatTemplate) == "null" {
		return "", fmt.Errorf("%w in %s", ErrNoTemplate, dir)
	}
	var s string
	if err := json.Unmarshal(cfg.ChatTemplate, &s); err == nil {
		return s, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(cfg.ChatTemplate, &named); err != nil {
		return "", fmt.Errorf("tokenizer_config.json: chat_template is neither a string nor a list of named templates")
	}
	for _, n := range named {
		if n.Name == "default" {
			return n.Template, nil
		}
	}
	return "", fmt.Errorf("%w: no \"default\" among the named chat templates in %s", ErrNoTemplate, dir)
}

// SpecialTokens reads the special tokens of tokenizer_config.json
// (bos_token, eos_token, unk_token, pad_token, sep_token, cls_token,
// mask_token), written as strings or as {"content": ...} objects; null ones
// are left out, as transformers leaves them out of the template kwargs.
func SpecialTokens(dir string) (map[string]string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil {
		return nil, err
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("parse tokenizer_config.json: %w", err)
	}
	out := map[string]string{}
	for _, k := range []string{"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"} {
		v, ok := cfg[k]
		if !ok || string(v) == "null" {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			out[k] = s
			continue
		}
		var obj struct {
			Content *string `json:"content"`
		}
		if json.Unmarshal(v, &obj) == nil && obj.Content != nil {
			out[k] = *obj.Content
		}
	}
	return out, nil
}
