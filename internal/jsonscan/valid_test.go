package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"
)

// validSeeds are documents at every edge of the grammar, valid and not.
var validSeeds = []string{
	``, ` `, `{}`, `[]`, ` {} `, `{`, `}`, `[`, `]`, `{]`, `[}`, `{"a":1}`, `{"a":1,}`, `{"a" 1}`, `{"a":}`, `{1:2}`, `{"a":1 "b":2}`,
	`[1,2,3]`, `[1,,2]`, `[,1]`, `[1 2]`, `{"a":[{"b":null}],"c":{"d":[true,false]}}`, `[[[[]]]]`, `[[[[]]]`, `{} {}`, `1 2`,
	`0`, `-0`, `-`, `01`, `1.`, `.5`, `1.5`, `1e5`, `1E+5`, `1e-5`, `1e`, `1e+`, `-01`, `1.5e3.2`, `123456789012345678901234567890`, `- 1`,
	`"x"`, `"`, `"\"`, `"\\"`, `"\/\b\f\n\r\t"`, `"\u00e9"`, `"\u00g9"`, `"\u00e"`, `"\x"`, "\"a\tb\"", "\"a\x7fb\"", "\"\xff\xfe\"",
	`true`, `false`, `null`, `tru`, `truex`, `nul`, `[true,false,null]`, `nulll`, `"a"b`, `{"a":"b"}x`,
	"\t\n\r {\"a\" :\t[ 1 , 2 ]\n}\r\n", "\v{}", "{}\x00",
}

// Valid says what encoding/json.Valid says, for every input.
func FuzzValid(f *testing.F) {
	for _, s := range validSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Valid(b), json.Valid(b); got != want {
			t.Fatalf("%q: Valid %v, encoding/json %v", b, got, want)
		}
	})
}

// Valid holds to encoding/json's nesting limit: as deep as it allows is valid, one deeper is
// not, whether the innermost container is empty or not.
func TestValidNestingLimit(t *testing.T) {
	for _, depth := range []int{maxDepth - 1, maxDepth, maxDepth + 1} {
		for _, doc := range []string{
			strings.Repeat("[", depth) + strings.Repeat("]", depth),
			strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1),
			strings.Repeat("[", depth) + "1" + strings.Repeat("]", depth),
		} {
			if got, want := Valid([]byte(doc)), json.Valid([]byte(doc)); got != want || want != (depth <= maxDepth) {
				t.Errorf("depth %d (%.10s...): Valid %v, encoding/json %v", depth, doc, got, want)
			}
		}
	}
}

// BenchmarkValid compares Valid with encoding/json.Valid on a document shaped like a lorapack
// manifest (an object of objects of short strings and numbers).
func BenchmarkValid(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"format":"loraplex.lorapack/v2","tensors":{`)
	for i := range 448 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` + strings.Repeat("x", i%7) + `":{"codec":"q4","density":1,"kept":65536,"shape":[16,4096],"dtype":"BF16","bytes":36884,"group":32,"crc32c":3735928559}`)
	}
	sb.WriteString(`}}`)
	doc := []byte(sb.String())
	b.Run("jsonscan", func(b *testing.B) {
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			if !Valid(doc) {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			if !json.Valid(doc) {
				b.Fatal("invalid")
			}
		}
	})
}
