package toolcall

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

// Any output parses without panicking, whole or streamed in any chunking, to the same
// content and calls, and streamed deltas keep their shape (reassemble checks it).
func FuzzParse(f *testing.F) {
	for _, c := range parseCases {
		f.Add(c.format, c.output, uint64(1))
	}
	f.Add("hermes", "<tool_call><tool_call>{\"name\":\"a\",\"name\":1}}}</tool_call></tool_call", uint64(2))
	f.Add("mistral", "[TOOL_CALLS][TOOL_CALLS]x[CALL_ID]y[ARGS]\"{}\"[TOOL_CALLS][{},", uint64(3))
	f.Add("hermes", "<tool_call>{\"name\":\"\"", uint64(91))
	f.Add("llama3_json", "<|python_tag|>{\"name\": \"a\", \"parameters\": 5};;{", uint64(4))
	f.Fuzz(func(t *testing.T, format, output string, seed uint64) {
		fm, err := Lookup(format)
		if err != nil {
			return
		}
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
