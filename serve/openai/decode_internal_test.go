package openai

import (
	"encoding/json"
	"slices"
	"strconv"
	"testing"
)

// stringOrList, which stops reading a list at its limit, agrees with decoding the whole value
// on any valid JSON: the same strings, or an error exactly when json.Unmarshal fails or the
// list is over the limit.
func FuzzStringOrList(f *testing.F) {
	for _, s := range []string{`"a"`, `["a","b"]`, `[]`, `null`, `[null]`, `["a",1]`, `[["a"]]`, `{"a":1}`, `5`,
		` [ "x" , "y" , "z" , "w" ] `, `["\u0007","\\u0007"]`, `["a","b","c","d","e"]`, `[""]`, `true`} {
		f.Add(s)
	}
	const limit = 4
	f.Fuzz(func(t *testing.T, raw string) {
		if !json.Valid([]byte(raw)) {
			return // bodies are parsed before a field is; invalid JSON never gets here
		}
		got, err := stringOrList(json.RawMessage(raw), "stop", limit)
		var one string
		var many []string
		switch {
		case isNull(json.RawMessage(raw)):
			if err != nil || got != nil {
				t.Fatalf("%s: %q %v, want nothing", raw, got, err)
			}
		case json.Unmarshal([]byte(raw), &one) == nil:
			if err != nil || !slices.Equal(got, []string{one}) {
				t.Fatalf("%s: %q %v, want [%q]", raw, got, err, one)
			}
		case json.Unmarshal([]byte(raw), &many) != nil:
			if err == nil {
				t.Fatalf("%s: %q, want an error", raw, got)
			}
		case len(many) > limit:
			if err == nil {
				t.Fatalf("%s: %d strings accepted, limit %d", raw, len(got), limit)
			}
		default:
			if err != nil || !slices.Equal(got, many) {
				t.Fatalf("%s: %q %v, want %q", raw, got, err, many)
			}
		}
	})
}

// parseLogitBias accepts exactly the objects whose keys are token ids written as canonical
// decimal integers and whose values are numbers, and keeps every entry; anything else is an
// error naming logit_bias, never a panic.
func FuzzParseLogitBias(f *testing.F) {
	for _, s := range []string{`{"5":10}`, `{"0":-100,"4095":100}`, `{"05":1}`, `{"-1":1}`, `{"x":1}`, `{"5":"1"}`,
		`{"5":null}`, `{"5":[1]}`, `{}`, `{"99999999999999999999":1}`, `{"+5":1}`, `{" 5":1}`, `{"5":1e308}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		var m map[string]any
		if json.Unmarshal([]byte(raw), &m) != nil {
			return // the request body decodes first
		}
		got, err := parseLogitBias(m)
		if err != nil {
			if e, ok := err.(*apiError); !ok || e.param != "logit_bias" || e.status != 400 {
				t.Fatalf("%s: error %#v, want a 400 on logit_bias", raw, err)
			}
			return
		}
		if len(got) != len(m) {
			t.Fatalf("%s: %d entries of %d", raw, len(got), len(m))
		}
		for k, v := range m {
			id, convErr := strconv.Atoi(k)
			if convErr != nil || strconv.Itoa(id) != k {
				t.Fatalf("%s: key %q accepted", raw, k)
			}
			if got[id] != v.(float64) {
				t.Fatalf("%s: %d -> %v, want %v", raw, id, got[id], v)
			}
		}
	})
}
