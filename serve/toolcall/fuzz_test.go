package toolcall

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

// fuzzFormat is every parser's fuzz rule: any output parses without panicking, whole or
// streamed in any chunking, to the same content and calls; streamed deltas keep their shape
// (reassemble checks it); parallel calls off keeps at most one.
func fuzzFormat(f *testing.F, format string, seeds ...string) {
	for _, c := range parseCases {
		if c.format == format {
			f.Add(c.output, uint64(1))
		}
	}
	for i, s := range seeds {
		f.Add(s, uint64(i))
	}
	fm := lookup(f, format)
	f.Fuzz(func(t *testing.T, output string, seed uint64) {
		for _, maxCalls := range []int{0, 1} {
			content, calls := fm.Parse(output, maxCalls)
			if maxCalls == 1 && len(calls) > 1 {
				t.Fatalf("%d calls with at most 1", len(calls))
			}
			sc, scalls := reassemble(t, chunks(fm, output, rand.New(rand.NewPCG(seed, seed)), maxCalls))
			if sc != content || !reflect.DeepEqual(scalls, calls) {
				t.Fatalf("streamed %q %q, whole %q %q", sc, scalls, content, calls)
			}
		}
	})
}

func FuzzHermes(f *testing.F) {
	fuzzFormat(f, "hermes", "<tool_call><tool_call>{\"name\":\"a\",\"name\":1}}}</tool_call></tool_call",
		"<tool_call>{\"name\":\"\"", " \n<tool_call>\n{\"arguments\": \"\\u00e9\", \"name\": \"x\"}\n</tool_call> \n")
}

func FuzzLlama3JSON(f *testing.F) {
	fuzzFormat(f, "llama3_json", "<|python_tag|>{\"name\": \"a\", \"parameters\": 5};;{", "  <|python_t", "{\"name\": \"a\"} ; x")
}

func FuzzMistral(f *testing.F) {
	fuzzFormat(f, "mistral", "[TOOL_CALLS][TOOL_CALLS]x[CALL_ID]y[ARGS]\"{}\"[TOOL_CALLS][{},", "[TOOL_CALLS]]", "a[TOOL_CALLS]f[ARGS]{\"a\": [1, {\"b\": \"]\"}]} tail")
}
