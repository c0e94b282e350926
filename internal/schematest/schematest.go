// Package schematest checks model output against a JSON Schema in the structured-output tests
// of every surface (serve/openai, serve/grpcapi, cuda), with an independent validator
// (santhosh-tekuri/jsonschema), not the grammar compiler whose output is under test.
package schematest

import (
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
