package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/internal/schematest"
	"github.com/loraplex/loraplex/serve/openai"
)

// person is what the structured-output test parses the model's answer into.
type person struct {
	Name  string   `json:"name"`
	Age   int      `json:"age"`
	Admin bool     `json:"admin"`
	Role  string   `json:"role"`
	Tags  []string `json:"tags,omitempty"`
}

// A chat request with a json_schema response_format, sent by the official client to the demo
// model sampling hot (near-random text), always ends with JSON that the schema validates and
// that parses into the Go struct, on every seed: the mask, not the model, makes it valid.
func TestStructuredOutputParsesIntoStruct(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{APIKey: testKey, ChatTemplate: ct})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var schema map[string]any
	if err := json.Unmarshal([]byte(schematest.Person), &schema); err != nil {
		t.Fatal(err)
	}
	val := schematest.Compile(t, schematest.Person)
	for seed := range int64(6) {
		resp, err := client.Chat.Completions.New(ctx, schemaChat("Describe a user as JSON.", "person", schema, seed))
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		ch := resp.Choices[0]
		text := ch.Message.Content
		if ch.FinishReason != "stop" {
			t.Fatalf("seed %d: finish %q after %q", seed, ch.FinishReason, text)
		}
		t.Logf("seed %d: %s", seed, text)
		var p person
		if err := json.Unmarshal([]byte(text), &p); err != nil {
			t.Fatalf("seed %d: %q does not parse: %v", seed, text, err)
		}
		if err := schematest.Validate(val, text); err != nil {
			t.Fatalf("seed %d: %q does not validate: %v", seed, text, err)
		}
	}
}

// treeSchema is a recursive schema, an expression tree through mutually recursive $defs
// (call -> expr -> call), that a strict OpenAI client may send as a response format.
const treeSchema = `{"$defs":{
	"expr":{"anyOf":[{"type":"integer"},{"$ref":"#/$defs/call"}]},
	"call":{"type":"object","properties":{
		"op":{"enum":["+","*"]},
		"args":{"type":"array","items":{"$ref":"#/$defs/expr"},"minItems":2,"maxItems":2}},
		"required":["op","args"],"additionalProperties":false}},
	"$ref":"#/$defs/call"}`

// A recursive json_schema response_format (an expression tree), sent by the official client
// to the demo model sampling hot, compiles (no 400) and every answer that ends is JSON the
// schema validates; the mask lets trees nest past the first level.
func TestRecursiveSchemaThroughServer(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{APIKey: testKey, ChatTemplate: ct})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// The client sends a map (its keys sorted): the node's definition goes raw, so that its
	// properties keep their order (label first).
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(treeSchema), &top); err != nil {
		t.Fatal(err)
	}
	schema := map[string]any{}
	for k, v := range top {
		schema[k] = v
	}
	val := schematest.Compile(t, treeSchema)
	var depth func(n any) int
	depth = func(n any) int {
		call, _ := n.(map[string]any)
		if call == nil {
			return 0
		}
		d := 0
		args, _ := call["args"].([]any)
		for _, a := range args {
			d = max(d, depth(a))
		}
		return d + 1
	}
	stopped, deepest := 0, 0
	for seed := range int64(16) {
		resp, err := client.Chat.Completions.New(ctx, schemaChat("A tree as JSON.", "tree", schema, seed))
		if err != nil {
			var apiErr *oai.Error
			if errors.As(err, &apiErr) {
				t.Fatalf("seed %d: %s", seed, apiErr.RawJSON())
			}
			t.Fatalf("seed %d: %v", seed, err)
		}
		ch := resp.Choices[0]
		text := ch.Message.Content
		t.Logf("seed %d (%s): %s", seed, ch.FinishReason, text)
		if ch.FinishReason != "stop" {
			// A tree may outgrow max_tokens; what it wrote is still a prefix of one.
			if !strings.HasPrefix(text, `{"op":"`) {
				t.Fatalf("seed %d: %q does not start a call", seed, text)
			}
			continue
		}
		stopped++
		if err := schematest.Validate(val, text); err != nil {
			t.Fatalf("seed %d: %q does not validate: %v", seed, text, err)
		}
		var root any
		if err := json.Unmarshal([]byte(text), &root); err != nil {
			t.Fatal(err)
		}
		deepest = max(deepest, depth(root))
	}
	if stopped < 12 || deepest < 3 {
		t.Errorf("%d of 16 answers ended, the deepest %d calls deep: want at least 12, and one 3 deep", stopped, deepest)
	}
}

// vLLM's constraint fields (structured_outputs, guided_regex, guided_choice, guided_json) and
// response_format json_object hold completions to their structure on a near-random model.
func TestGuidedFieldsConstrainCompletions(t *testing.T) {
	e, _ := demoEngine(t)
	srv := newServer(t, e, openai.Options{APIKey: testKey})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	complete := func(seed int64, field string, value any) oai.CompletionChoice {
		t.Helper()
		resp, err := client.Completions.New(ctx, oai.CompletionNewParams{
			Model: demo.Name, Prompt: oai.CompletionNewParamsPromptUnion{OfString: oai.String("func main() {")},
			MaxTokens: oai.Int(120), Temperature: oai.Float(1.5), Seed: oai.Int(seed),
		}, option.WithJSONSet(field, value))
		if err != nil {
			t.Fatalf("%s: %v", field, err)
		}
		return resp.Choices[0]
	}
	date := regexp.MustCompile(`^(?:20[0-9]{2}-(?:0[1-9]|1[0-2])-[0-3][0-9])$`)
	choices := []string{"approve", "reject", "escalate"}
	for seed := range int64(4) {
		for _, tc := range []struct {
			field string
			value any
			check func(string) bool
		}{
			{"guided_regex", `20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]`, date.MatchString},
			{"structured_outputs", map[string]any{"regex": `20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]`}, date.MatchString},
			{"guided_choice", choices, func(s string) bool { return slices.Contains(choices, s) }},
			{"structured_outputs", map[string]any{"choice": choices}, func(s string) bool { return slices.Contains(choices, s) }},
			{"guided_json", `{"type":"object","properties":{"ok":{"type":"boolean"},"n":{"type":"integer"}},"required":["ok","n"]}`, func(s string) bool {
				var v struct {
					OK *bool `json:"ok"`
					N  *int  `json:"n"`
				}
				return json.Unmarshal([]byte(s), &v) == nil && v.OK != nil && v.N != nil
			}},
			{"structured_outputs", map[string]any{"json": map[string]any{"type": "array", "items": map[string]any{"type": "boolean"}, "minItems": 2, "maxItems": 2}}, func(s string) bool {
				var v [2]bool
				return json.Unmarshal([]byte(s), &v) == nil && strings.Count(s, ",") == 1
			}},
		} {
			ch := complete(seed, tc.field, tc.value)
			if ch.FinishReason != "stop" || !tc.check(ch.Text) {
				t.Errorf("seed %d %s %v: %q (finish %s)", seed, tc.field, tc.value, ch.Text, ch.FinishReason)
			}
		}
		// json_object: any JSON object; a free structure may run out of tokens, but what
		// ends is an object.
		ch := complete(seed, "response_format", map[string]any{"type": "json_object"})
		if ch.FinishReason == "stop" {
			var m map[string]any
			if err := json.Unmarshal([]byte(ch.Text), &m); err != nil {
				t.Errorf("seed %d json_object: %q: %v", seed, ch.Text, err)
			}
		} else if !strings.HasPrefix(ch.Text, "{") {
			t.Errorf("seed %d json_object: %q does not start an object", seed, ch.Text)
		}
	}
}

// A constraint that cannot be enforced is a 400 naming the field and the keyword or limit,
// fast, and never a silently unconstrained answer; hostile schemas (huge, deeply nested,
// recursive, conflicting) are refused before any generation.
func TestUnenforceableConstraintsAre400(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{ChatTemplate: ct})
	deep := strings.Repeat(`{"type":"array","items":`, 30) + `{"type":"null"}` + strings.Repeat(`}`, 30)
	huge := `{"enum":[` + strings.Repeat(`"aaaaaaaaaaaaaaaa",`, 5000) + `"b"]}`
	// Recursive with no finite instance: every node requires a child node.
	recursive := `{"$defs":{"node":{"type":"object","properties":{"kid":{"$ref":"#/$defs/node"}},"required":["kid"]}},"$ref":"#/$defs/node"}`
	blowup := `{"type":"object","properties":{` + strings.TrimSuffix(strings.Repeat(`"k":{"type":"array","items":{"type":"array","items":{"type":"object"}}},`, 1), ",") + `,` +
		`"x":{"type":"string","pattern":"a"}}}`
	rf := func(schema string) string {
		return `"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":` + schema + `}}`
	}
	cases := []struct {
		path, body, param, want string
	}{
		{"/v1/chat/completions", rf(`{"type":"string","format":"email"}`), "response_format", `"format"`},
		{"/v1/chat/completions", rf(`{"type":"integer","minimum":1}`), "response_format", `"minimum"`},
		{"/v1/chat/completions", rf(recursive), "response_format", "recursive schema has no finite instance"},
		{"/v1/chat/completions", rf(deep), "response_format", "MaxSchemaDepth"},
		{"/v1/chat/completions", rf(huge), "response_format", "MaxSpecBytes"},
		{"/v1/chat/completions", rf(blowup), "response_format", `"pattern"`},
		{"/v1/chat/completions", rf(`{"type":"array","minItems":4,"maxItems":1}`), "response_format", "conflicting"},
		{"/v1/chat/completions", rf(`{"type":"boolean","const":"yes"}`), "response_format", "conflicting"},
		{"/v1/chat/completions", `"response_format":{"type":"yaml"}`, "response_format", "yaml"},
		{"/v1/chat/completions", `"response_format":{"type":"json_schema"}`, "response_format", "json_schema"},
		{"/v1/chat/completions", `"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{},"stric":true}}`, "response_format.json_schema", "stric"},
		{"/v1/completions", `"guided_grammar":"root ::= expr\nexpr ::= expr \"+\" [0-9] | [0-9]"`, "guided_grammar", `"expr" is left-recursive`},
		{"/v1/completions", `"structured_outputs":{"grammar":"root ::= \"a\"\n  | b"}`, "structured_outputs", `line 2:5: rule "b" is used but not defined`},
		{"/v1/completions", `"guided_grammar":"root ::= ` + strings.Repeat(`\"aaaa\" `, 12000) + `"`, "guided_grammar", "MaxSpecBytes"},
		{"/v1/completions", `"guided_grammar":"root ::= ` + strings.Repeat(`(`, 5000) + strings.Repeat(`)`, 5000) + `"`, "guided_grammar", "MaxGrammarNesting"},
		{"/v1/completions", `"guided_grammar":"root ::= ` + strings.Repeat(`[a-z]{1000}`, 300) + `"`, "guided_grammar", "MaxGrammarElems"},
		{"/v1/completions", `"guided_grammar":"root ::= ` + strings.Repeat(`\"a\"? `, 5000) + `"`, "guided_grammar", "MaxGrammarRules"},
		{"/v1/completions", `"guided_grammar":"root ::= ((\"a\"{1000}){1000}){1001}"`, "guided_grammar", "MaxGrammarRepeat"},
		{"/v1/completions", `"guided_grammar":5`, "guided_grammar", "guided_grammar must be a string"},
		{"/v1/completions", `"structured_outputs":{"grammar":"root ::= \"a\"","regex":"a"}`, "structured_outputs", "only one"},
		{"/v1/completions", `"structured_outputs":{"structural_tag":{}}`, "structured_outputs", "not supported"},
		{"/v1/completions", `"structured_outputs":{"regexp":"a"}`, "structured_outputs", "regexp"},
		{"/v1/completions", `"guided_regex":"(?:a|b)*a(?:a|b){24}"`, "guided_regex", "MaxDFAStates"},
		{"/v1/completions", `"guided_regex":"a\\bb"`, "guided_regex", "not supported"},
		{"/v1/completions", `"guided_choice":[]`, "guided_choice", "empty"},
		{"/v1/completions", `"structured_outputs":{"regex":5}`, "structured_outputs", "structured_outputs.regex must be a string"},
		{"/v1/completions", `"structured_outputs":{"json":"{\"type\":\"string\",\"format\":\"uri\"}"}`, "structured_outputs", `"format"`},
		{"/v1/completions", `"guided_regex":"a","guided_choice":["b"]`, "guided_choice", "only one"},
		{"/v1/completions", `"guided_json":{"type":"object"},"min_tokens":3`, "min_tokens", "structured outputs"},
		{"/v1/completions", `"guided_whitespace_pattern":" *","guided_json":{}`, "guided_whitespace_pattern", "not supported"},
	}
	for _, tc := range cases {
		body := `{"model":"` + demo.Name + `","max_tokens":4,`
		if tc.path == "/v1/completions" {
			body += `"prompt":"x",`
		} else {
			body += `"messages":[{"role":"user","content":"x"}],`
		}
		body += tc.body + `}`
		start := time.Now()
		status, resp := post(t, srv.URL, tc.path, body)
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("%.60s: refused after %v", tc.body, took)
		}
		env := checkError(t, status, resp, 400, tc.param)
		if !strings.Contains(env.Error.Message, tc.want) {
			t.Errorf("%.60s: message %q lacks %q", tc.body, env.Error.Message, tc.want)
		}
	}
	// A model without a tokenizer (token ids only) cannot match text: refused, not ignored.
	fx := newServer(t, fixtureEngine(t, "llama"), openai.Options{})
	status, resp := post(t, fx.URL, "/v1/completions", `{"model":"llama","prompt":[1,2],"max_tokens":2,"response_format":{"type":"json_object"}}`)
	env := checkError(t, status, resp, 400, "response_format")
	if !strings.Contains(env.Error.Message, "tokenizer") {
		t.Errorf("fixture model: %q", env.Error.Message)
	}
	_ = fmt.Sprint
}

// schemaChat is a hot (temperature 1.5), seeded chat request whose answer must match the strict
// JSON schema named name: sampling that wanders is what the constraint has to hold against.
func schemaChat(prompt, name string, schema map[string]any, seed int64) oai.ChatCompletionNewParams {
	return oai.ChatCompletionNewParams{
		Model:       demo.Name,
		Messages:    []oai.ChatCompletionMessageParamUnion{oai.UserMessage(prompt)},
		Temperature: oai.Float(1.5),
		Seed:        oai.Int(seed),
		MaxTokens:   oai.Int(200),
		ResponseFormat: oai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
			JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: name, Schema: schema, Strict: oai.Bool(true)}}},
	}
}
