// Package toolcall is the one home of the tool-call wire formats models are trained on: how a
// model writes a function call into its output, how that output is parsed back into calls
// (whole, or token by token for streaming), and how a call is forced through constrained
// decoding. The gateways (the OpenAI chat API, and any later one) share it: a format is a
// property of the model's chat template, not of an API.
//
// It lives apart from serve/openai because nothing in it is OpenAI's, and apart from
// tokenizer/chat because that package renders templates exactly as transformers does and has
// no notion of a model's output; a template only teaches the format (Detect reads it from the
// template's text).
//
// The formats, by vLLM's --tool-call-parser names:
//
//   - hermes (Hermes 2 Pro, Qwen2.5, Qwen3): <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>,
//     once per call; text outside the tags is content.
//   - llama3_json (Llama 3.1 to 3.3 with JSON tools): the output starts with a call object
//     {"name": ..., "parameters": {...}}, possibly after <|python_tag|>, calls separated by ";".
//     Output that does not start so is content.
//   - mistral: [TOOL_CALLS] followed by a JSON array of {"name", "arguments"} objects (older
//     tokenizers) or by name[ARGS]{...} per call (tokenizer v11 and later); text before the
//     marker is content.
//
// Parsing is one state machine (Stream) for both answers: a whole response is its stream fed
// at once, so streamed deltas reassemble to exactly the non-streamed calls. The machine holds
// back only what could still be markup: the tail of the text that is a prefix of a marker, a
// call object until its name is known, and trailing white space. White space that only frames
// calls is dropped (before a call; after one, unless content came before it; at the end of a
// response with calls); an output without calls is its content unchanged. Arguments are passed on as the model wrote them (a JSON text; an
// arguments value written as a JSON string is unquoted), so a stream's fragments concatenate to
// the same string.
package toolcall

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/loraplex/loraplex/structured"
)

// Limits on one tool, checked before anything is rendered or compiled.
const (
	// MaxParametersBytes bounds a tool's parameters schema (the constraint compiler's own
	// bound on a schema).
	MaxParametersBytes = structured.MaxSpecBytes
	// MaxParametersDepth bounds how deep a parameters schema's JSON nests (objects and
	// arrays); structured.MaxSchemaDepth bounds the schema levels a forced call expands.
	MaxParametersDepth = 64
)

// namePattern is OpenAI's rule for function names.
var namePattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// Tool is one function a request offers the model.
type Tool struct {
	Name string
	// Parameters is the function's JSON schema (an object); nil: it takes no arguments.
	Parameters json.RawMessage
}

// Check validates a tool as a request states it (and trims white space around its
// parameters): a name OpenAI accepts and parameters that are a JSON object of bounded size and
// depth. The error says what is wrong, not where; the caller names the field.
func (t *Tool) Check() error {
	if !namePattern.MatchString(t.Name) {
		return fmt.Errorf("function name %q must match %s", t.Name, namePattern)
	}
	t.Parameters = bytes.TrimSpace(t.Parameters)
	if len(t.Parameters) == 0 || string(t.Parameters) == "null" {
		return nil
	}
	if len(t.Parameters) > MaxParametersBytes {
		return fmt.Errorf("function %s: parameters have %d bytes, more than %d", t.Name, len(t.Parameters), MaxParametersBytes)
	}
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range t.Parameters {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
		if deepest > MaxParametersDepth {
			return fmt.Errorf("function %s: parameters nest deeper than %d levels", t.Name, MaxParametersDepth)
		}
	}
	if t.Parameters[0] != '{' || !json.Valid(t.Parameters) {
		return fmt.Errorf("function %s: parameters must be a JSON schema object", t.Name)
	}
	return nil
}

// schema is the tool's parameters schema for a forced call.
func (t *Tool) schema() string {
	if len(t.Parameters) == 0 || string(t.Parameters) == "null" {
		return `{"type":"object","properties":{},"additionalProperties":false}`
	}
	return string(t.Parameters)
}

// Call is one parsed function call.
type Call struct {
	Name string
	// Arguments is JSON text, as OpenAI returns it.
	Arguments string
}

// Format is one tool-call wire format.
type Format struct {
	name string
	kind kind
	// special: the format's markers are special tokens in its models' tokenizers, so the
	// output must keep special tokens for the parser to see them (vLLM does the same).
	special bool
	// detect says whether a chat template's source teaches this format.
	detect func(src string) bool
	// item writes a forced call to tool name (its JSON name) around its arguments.
	open, sep, close string
	before, after    string // with %s for the name's JSON
}

type kind uint8

const (
	hermes kind = iota + 1
	llama3JSON
	mistral
)

// formats are the supported formats, by vLLM's names.
var formats = []*Format{
	{name: "hermes", kind: hermes,
		detect: func(src string) bool { return strings.Contains(src, "<tool_call>") },
		sep:    "\n", before: "<tool_call>\n{\"name\": %s, \"arguments\": ", after: "}\n</tool_call>"},
	{name: "llama3_json", kind: llama3JSON, special: true,
		detect: func(src string) bool {
			return strings.Contains(src, pythonTag) || strings.Contains(src, "<|start_header_id|>") && strings.Contains(src, `"parameters"`)
		},
		sep: "; ", before: "{\"name\": %s, \"parameters\": ", after: "}"},
	{name: "mistral", kind: mistral, special: true,
		detect: func(src string) bool { return strings.Contains(src, toolCallsMarker) },
		open:   toolCallsMarker + "[", sep: ", ", close: "]", before: "{\"name\": %s, \"arguments\": ", after: "}"},
}

const (
	hermesOpen      = "<tool_call>"
	hermesClose     = "</tool_call>"
	pythonTag       = "<|python_tag|>"
	toolCallsMarker = "[TOOL_CALLS]"
	argsMarker      = "[ARGS]"
	callIDMarker    = "[CALL_ID]"
)

// Names are the formats' names, for --help and errors.
func Names() []string {
	names := make([]string, len(formats))
	for i, f := range formats {
		names[i] = f.name
	}
	return names
}

// Lookup returns the format named name (vLLM's --tool-call-parser names).
func Lookup(name string) (*Format, error) {
	for _, f := range formats {
		if f.name == name {
			return f, nil
		}
	}
	return nil, fmt.Errorf("unknown tool call parser %q (known: %s)", name, strings.Join(Names(), ", "))
}

// Detect returns the format a chat template teaches, or nil when it teaches none or its text
// matches more than one.
func Detect(templateSource string) *Format {
	var found []*Format
	for _, f := range formats {
		if f.detect(templateSource) {
			found = append(found, f)
		}
	}
	if len(found) != 1 {
		return nil
	}
	return found[0]
}

// ForModel is the format a server parses calls in: the one configured (--tool-call-parser),
// else the one its chat template's source teaches (Detect); nil when neither says.
func ForModel(configured *Format, templateSource string) *Format {
	if configured != nil {
		return configured
	}
	return Detect(templateSource)
}

// NewCallID is a new call's id, OpenAI's shape: "call_" and 24 random hex digits.
func NewCallID() string {
	var b [12]byte
	rand.Read(b[:])
	return "call_" + hex.EncodeToString(b[:])
}

// Name is the format's vLLM name.
func (f *Format) Name() string { return f.name }

// KeepsSpecialTokens says whether the format's markers are special tokens in its models'
// tokenizers: parsing needs them kept in the output text.
func (f *Format) KeepsSpecialTokens() bool { return f.special }

// Force is the constraint that makes the model write one call (single) or one or more calls to
// tools, in this format; the arguments are compact JSON instances of each tool's parameters.
// Markers that are special tokens in a tokenizer are spelt with ordinary tokens (a constraint
// never allows a special token); the parser reads them the same.
func (f *Format) Force(tools []Tool, single bool) structured.Spec {
	q := &structured.Sequence{Open: f.open, Sep: f.sep, Close: f.close, Single: single}
	for i := range tools {
		name, _ := json.Marshal(tools[i].Name)
		q.Items = append(q.Items, structured.Item{Name: "function " + tools[i].Name, Before: fmt.Sprintf(f.before, name), Schema: tools[i].schema(), After: f.after})
	}
	return structured.Spec{Kind: structured.JSONSequence, Sequence: q}
}

// Parse splits a whole output into its content (text outside calls; "" when none) and calls:
// the stream of the output fed at once, reassembled. maxCalls bounds the calls kept (0: no
// bound).
func (f *Format) Parse(output string, maxCalls int) (content string, calls []Call) {
	s := f.NewStream(maxCalls)
	var b strings.Builder
	for _, d := range slices.Concat(s.Feed(output), s.Finish()) {
		switch {
		case !d.Call:
			b.WriteString(d.Content)
		case d.Start:
			calls = append(calls, Call{Name: d.Name, Arguments: d.Arguments})
		default:
			calls[d.Index].Arguments += d.Arguments
		}
	}
	return b.String(), calls
}
