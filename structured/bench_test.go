package structured

import (
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/tokenizer"
)

// benchSpecs are representative constraints: an OpenAI-style strict object, a nested schema
// with $defs, json_object, a regex and a choice.
var benchSpecs = []struct {
	name string
	spec Spec
}{
	{"person_schema", Spec{Kind: JSONSchema, Text: `{"type":"object","properties":{"name":{"type":"string","maxLength":40},"age":{"type":"integer"},"admin":{"type":"boolean"},"role":{"enum":["reader","writer","owner"]},"tags":{"type":"array","items":{"type":"string"},"maxItems":5}},"required":["name","age","admin","role","tags"],"additionalProperties":false}`}},
	{"nested_defs_schema", Spec{Kind: JSONSchema, Text: testSchemas[3]}},
	{"json_object", Spec{Kind: JSONObject}},
	{"regex_date", Spec{Kind: Regex, Text: `20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]`}},
	{"choice", Spec{Kind: Choice, Choices: []string{"approve", "reject", "escalate"}}},
}

// BenchmarkCompile is the cost of a constraint the first time it is seen, on Llama 3's
// 128,256-token vocabulary: the DFA (compile) and the start state's token mask (first_mask;
// every later state costs one such walk on first use, then a lookup).
func BenchmarkCompile(b *testing.B) {
	tok, err := tokenizer.Load(filepath.Join("..", "testdata", "tokenizers", "llama3"))
	if err != nil {
		b.Fatal(err)
	}
	v := NewVocab(128256, min(tok.VocabSize(), 128256), tok.TokenBytes, tok.EOS())
	for _, bs := range benchSpecs {
		b.Run(bs.name+"/compile", func(b *testing.B) {
			var states int
			for b.Loop() {
				g, err := NewCompiler(v).Compile(bs.spec)
				if err != nil {
					b.Fatal(err)
				}
				states = g.States()
			}
			b.ReportMetric(float64(states), "dfa_states")
		})
		b.Run(bs.name+"/first_mask", func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				g, err := NewCompiler(v).Compile(bs.spec)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				g.NewMatcher().Mask()
			}
		})
	}
}
