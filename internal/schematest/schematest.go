// Package schematest checks model output against a JSON Schema in the structured-output tests
// of every surface (serve/openai, serve/grpcapi, cuda), with an independent validator
// (santhosh-tekuri/jsonschema), not the grammar compiler whose output is under test; and, for
// the tool-call tests of both gateways, how a prompt shows a call the client sent back.
package schematest

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Person is the structured-output tests' schema: bounded strings, an enum, an optional
// bounded array.
const Person = `{"type":"object","properties":{
	"name":{"type":"string","minLength":1,"maxLength":12},
	"age":{"type":"integer"},
	"admin":{"type":"boolean"},
	"role":{"enum":["reader","writer","owner"]},
	"tags":{"type":"array","items":{"type":"string","maxLength":6},"maxItems":3}},
	"required":["name","age","admin","role"],"additionalProperties":false}`

// Compile compiles a JSON Schema document, failing the test if it is not one.
func Compile(t testing.TB, schema string) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("s.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("s.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Validate says why text is not a JSON document that s accepts (nil when it is).
func Validate(s *jsonschema.Schema, text string) error {
	inst, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// RenderedCall returns the arguments a Hermes-format chat prompt shows for its first call to
// name, as the template wrote them: templates get a call's arguments parsed (an object, as vLLM
// gives them), so they are the value the client sent in the template's own spacing, not its
// string. It fails the test if the prompt shows no such call or the two values differ.
func RenderedCall(t testing.TB, prompt, name, sentArgs string) {
	t.Helper()
	head := "<|im_start|>assistant\n<tool_call>\n{\"name\": \"" + name + "\", \"arguments\": "
	i := strings.Index(prompt, head)
	if i < 0 {
		t.Fatalf("the prompt shows no call to %s:\n%s", name, prompt)
	}
	rest := prompt[i+len(head):]
	j := strings.Index(rest, "}\n</tool_call><|im_end|>\n")
	if j < 0 {
		t.Fatalf("the call to %s is not closed:\n%s", name, prompt)
	}
	var shown, sent any
	if err := json.Unmarshal([]byte(rest[:j]), &shown); err != nil {
		t.Fatalf("the call's arguments %q are not JSON: %v", rest[:j], err)
	}
	if err := json.Unmarshal([]byte(sentArgs), &sent); err != nil {
		t.Fatalf("the sent arguments %q are not JSON: %v", sentArgs, err)
	}
	if !reflect.DeepEqual(shown, sent) {
		t.Fatalf("the prompt shows arguments %s, the client sent %s", rest[:j], sentArgs)
	}
}
