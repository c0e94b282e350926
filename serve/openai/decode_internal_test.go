package openai

import (
	"encoding/json"
	"slices"
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
