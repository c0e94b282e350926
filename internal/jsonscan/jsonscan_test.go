package jsonscan

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// In a valid document, Value steps over exactly one value: from the first non-space byte it
// reaches the trailing whitespace, and inside an array it stops at each element's end, where
// Next finds the next element or the closing bracket.
func FuzzValue(f *testing.F) {
	for _, s := range []string{`{"a":[1,{"b":"]}\""}],"c":null}`, ` 12.5e-3 `, `"\\"`, `[true, false ,"x", -0, {}]`, `{}`, `[]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return
		}
		if end := Value(b, Space(b, 0)); Space(b, end) != len(b) {
			t.Fatalf("%q: Value ends at %d, before trailing non-space", b, end)
		}
		var elems []json.RawMessage
		i := Space(b, 0)
		if b[i] != '[' || json.Unmarshal(b, &elems) != nil {
			return
		}
		if i = Space(b, i+1); b[i] == ']' {
			return
		}
		for n := 0; ; n++ {
			end := Value(b, i)
			if n >= len(elems) || !json.Valid(b[i:end]) {
				t.Fatalf("%q: element %d is %q", b, n, b[i:end])
			}
			if i = Next(b, end); b[i] == ']' {
				if n != len(elems)-1 {
					t.Fatalf("%q: %d elements, encoding/json reads %d", b, n+1, len(elems))
				}
				return
			}
		}
	})
}

// Unquote gives what encoding/json gives for every string literal of a valid UTF-8 document:
// escapes, surrogate pairs, lone and mismatched surrogates (U+FFFD) and plain runs alike.
func FuzzUnquote(f *testing.F) {
	for _, s := range []string{`""`, `"plain"`, `"a\"b\\c\/d\b\f\n\r\t"`, `"\u00e9\u4E2D"`, `"\ud83d\ude00"`,
		`"\ud83d"`, `"\ud83dx"`, `"\ude00\ud83d"`, `"\ud83d\u0041"`, `"\ud83d\ud83d\ude00"`, `"{\"k\":[1,\"\\\"\"]}"`, `"é中😀"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want string
		// A string literal exactly, as the callers cut it with Value.
		if !utf8.Valid(b) || len(b) < 2 || b[0] != '"' || Value(b, 0) != len(b) || json.Unmarshal(b, &want) != nil {
			return
		}
		if got := Unquote(b); got != want {
			t.Fatalf("%q: Unquote gives %q, encoding/json %q", b, got, want)
		}
	})
}
