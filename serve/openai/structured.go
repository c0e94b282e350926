package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/structured"
)

// structuredFields are the request fields that constrain the output (constrained decoding):
// OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields, on chat
// and completions alike. At most one may set a constraint; what cannot be enforced is a 400,
// never ignored.
type structuredFields struct {
	ResponseFormat          json.RawMessage `json:"response_format"`
	StructuredOutputs       json.RawMessage `json:"structured_outputs"`
	GuidedJSON              json.RawMessage `json:"guided_json"`
	GuidedRegex             json.RawMessage `json:"guided_regex"`
	GuidedChoice            json.RawMessage `json:"guided_choice"`
	GuidedGrammar           json.RawMessage `json:"guided_grammar"`
	GuidedWhitespacePattern json.RawMessage `json:"guided_whitespace_pattern"`
	// guided_decoding_backend names vLLM's engine (xgrammar, outlines...): it changes how, not
	// what, so any value is accepted.
	GuidedDecodingBackend json.RawMessage `json:"guided_decoding_backend"`
}

// constraint reads the fields into the engine's constraint (nil: none).
func (f *structuredFields) constraint() (*serve.Constraint, error) {
	var found []*serve.Constraint
	add := func(c *serve.Constraint, err error) error {
		if err != nil {
			return err
		}
		if c != nil {
			found = append(found, c)
		}
		return nil
	}
	if err := add(responseFormat(f.ResponseFormat)); err != nil {
		return nil, err
	}
	if err := add(structuredOutputs(f.StructuredOutputs)); err != nil {
		return nil, err
	}
	guided := []struct {
		raw   json.RawMessage
		param string
	}{{f.GuidedJSON, "guided_json"}, {f.GuidedRegex, "guided_regex"}, {f.GuidedChoice, "guided_choice"}, {f.GuidedGrammar, "guided_grammar"}}
	for _, g := range guided {
		if err := add(guidedField(g.param, g.param, g.raw)); err != nil {
			return nil, err
		}
	}
	if !isNull(f.GuidedWhitespacePattern) {
		return nil, invalid("guided_whitespace_pattern", "guided_whitespace_pattern is not supported (structured outputs are compact JSON)")
	}
	if len(found) > 1 {
		return nil, invalid(found[1].Param, "only one structured output constraint may be given, got %s and %s", found[0].Param, found[1].Param)
	}
	if len(found) == 0 {
		return nil, nil
	}
	return found[0], nil
}

// responseFormat reads OpenAI's response_format: {"type":"text"}, {"type":"json_object"} or
// {"type":"json_schema","json_schema":{"name","schema","strict","description"}}.
func responseFormat(raw json.RawMessage) (*serve.Constraint, error) {
	const param = "response_format"
	if isNull(raw) {
		return nil, nil
	}
	var rf struct {
		Type       string `json:"type"`
		JSONSchema *struct {
			Name        string          `json:"name"`
			Description string          `json:"description"`
			Schema      json.RawMessage `json:"schema"`
			Strict      *bool           `json:"strict"`
		} `json:"json_schema"`
	}
	if err := strictObject(raw, param, &rf, "type", "json_schema"); err != nil {
		return nil, err
	}
	switch rf.Type {
	case "text":
		return nil, nil
	case "json_object":
		return &serve.Constraint{Spec: structured.Spec{Kind: structured.JSONObject}, Param: param}, nil
	case "json_schema":
		if rf.JSONSchema == nil {
			return nil, invalid(param, "response_format of type json_schema needs a json_schema object")
		}
		js := rf.JSONSchema
		var outer map[string]json.RawMessage
		_ = json.Unmarshal(raw, &outer) // decoded above
		if err := strictObject(outer["json_schema"], "response_format.json_schema", nil, "name", "description", "schema", "strict"); err != nil {
			return nil, err
		}
		if isNull(js.Schema) {
			// OpenAI's default schema is any JSON object.
			return &serve.Constraint{Spec: structured.Spec{Kind: structured.JSONObject}, Param: param}, nil
		}
		return schemaConstraint(js.Schema, param)
	}
	return nil, invalid(param, "response_format type must be text, json_object or json_schema, got %q", rf.Type)
}

// structuredOutputs reads vLLM's structured_outputs: exactly one of json, regex, choice,
// grammar, json_object (true); structural_tag is refused.
func structuredOutputs(raw json.RawMessage) (*serve.Constraint, error) {
	const param = "structured_outputs"
	if isNull(raw) {
		return nil, nil
	}
	var so map[string]json.RawMessage
	if err := json.Unmarshal(raw, &so); err != nil {
		return nil, invalid(param, "structured_outputs must be an object")
	}
	var found []*serve.Constraint
	for _, k := range sortedKeys(so) {
		v := so[k]
		if isNull(v) {
			continue
		}
		var c *serve.Constraint
		var err error
		switch k {
		case "json":
			c, err = guidedField(param, "guided_json", v)
		case "regex", "choice", "grammar":
			c, err = guidedField(param, "guided_"+k, v)
		case "json_object":
			var on bool
			if json.Unmarshal(v, &on) != nil {
				return nil, invalid(param, "structured_outputs.json_object must be a boolean")
			}
			if on {
				c = &serve.Constraint{Spec: structured.Spec{Kind: structured.JSONObject}, Param: param}
			}
		case "structural_tag", "whitespace_pattern":
			return nil, invalid(param, "structured_outputs.%s is not supported (supported: json, json_object, regex, choice, grammar)", k)
		case "disable_fallback", "disable_any_whitespace", "disable_additional_properties", "backend":
			// How vLLM's engines enforce a constraint, not what it is: accepted.
		default:
			return nil, invalid(param, "unknown structured_outputs field %q", k)
		}
		if err != nil {
			return nil, err
		}
		if c != nil {
			found = append(found, c)
		}
	}
	if len(found) > 1 {
		return nil, invalid(param, "structured_outputs must set only one of json, json_object, regex, choice and grammar")
	}
	if len(found) == 0 {
		return nil, nil
	}
	return found[0], nil
}

// guidedField reads the value of one of vLLM's guided_* fields (field), given as the request
// field param (the field itself, or structured_outputs holding its equivalent).
func guidedField(param, field string, raw json.RawMessage) (*serve.Constraint, error) {
	if isNull(raw) {
		return nil, nil
	}
	name := param // what messages call the value
	if param != field {
		name = param + "." + strings.TrimPrefix(field, "guided_")
	}
	switch field {
	case "guided_json":
		// A schema object, or a schema as a JSON string.
		var text string
		if json.Unmarshal(raw, &text) == nil {
			raw = json.RawMessage(text)
		}
		return schemaConstraint(raw, param)
	case "guided_regex":
		var text string
		if json.Unmarshal(raw, &text) != nil {
			return nil, invalid(param, "%s must be a string", name)
		}
		return &serve.Constraint{Spec: structured.Spec{Kind: structured.Regex, Text: text}, Param: param}, nil
	case "guided_choice":
		var choices []string
		if json.Unmarshal(raw, &choices) != nil {
			return nil, invalid(param, "%s must be an array of strings", name)
		}
		if len(choices) == 0 {
			return nil, invalid(param, "%s must not be empty", name)
		}
		return &serve.Constraint{Spec: structured.Spec{Kind: structured.Choice, Choices: choices}, Param: param}, nil
	case "guided_grammar":
		// A grammar in llama.cpp's GBNF / xgrammar's EBNF (structured/ebnf.go), as vLLM takes.
		var text string
		if json.Unmarshal(raw, &text) != nil {
			return nil, invalid(param, "%s must be a string", name)
		}
		return &serve.Constraint{Spec: structured.Spec{Kind: structured.EBNF, Text: text}, Param: param}, nil
	}
	return nil, fmt.Errorf("openai: unknown guided field %s", field)
}

// schemaConstraint is a JSON schema constraint; the schema must be a JSON object or boolean.
func schemaConstraint(schema json.RawMessage, param string) (*serve.Constraint, error) {
	schema = bytes.TrimSpace(schema)
	if len(schema) > structured.MaxSpecBytes {
		return nil, invalid(param, "%s: the schema has %d bytes, more than %d (limit MaxSpecBytes)", param, len(schema), structured.MaxSpecBytes)
	}
	if !json.Valid(schema) || !(strings.HasPrefix(string(schema), "{") || string(schema) == "true" || string(schema) == "false") {
		return nil, invalid(param, "%s: the schema must be a JSON object", param)
	}
	return &serve.Constraint{Spec: structured.Spec{Kind: structured.JSONSchema, Text: string(schema)}, Param: param}, nil
}

// strictObject decodes raw into dst (when not nil) and refuses keys outside allowed: a
// misspelt or unknown field of a constraint would otherwise be ignored.
func strictObject(raw json.RawMessage, param string, dst any, allowed ...string) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return invalid(param, "%s must be an object", param)
	}
	for k := range keys {
		if !slices.Contains(allowed, k) {
			return invalid(param, "unknown %s field %q", param, k)
		}
	}
	if dst != nil {
		if err := json.Unmarshal(raw, dst); err != nil {
			return invalid(param, "%s: %v", param, err)
		}
	}
	return nil
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
