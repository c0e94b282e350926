package grpcapi

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve/toolcall"
)

// Any output, in any chunking (at character boundaries, as the engine emits text), turns into
// responses that marshal and whose text and tool_calls reassemble to the format's parse of
// the whole output: each call starts (id, name) before its fragments, in index order.
func FuzzToolStream(f *testing.F) {
	f.Add("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", uint64(1))
	f.Add("hi <tool_call>{\"name\":\"a\",\"arguments\":\"{\\\"x\\\": \\\"é\\\"}\"}</tool_call><tool_call>{\"name\":\"b\"}", uint64(2))
	f.Add("<|python_tag|>{\"name\": \"a\", \"parameters\": {\"q\": \"ü\"}}; {\"name\": \"b\", \"parameters\": {}}", uint64(3))
	f.Add("[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"z\": [1]}}]", uint64(4))
	f.Add("text[TOOL_CALLS]f[ARGS]{\"a\": \"\\ud800\"}", uint64(5))
	f.Add("\xff<tool_call>{\"name\": \"\xfe\"", uint64(6))
	f.Fuzz(func(t *testing.T, output string, seed uint64) {
		output = strings.ToValidUTF8(output, "\uFFFD")
		rng := rand.New(rand.NewPCG(seed, seed))
		for _, name := range toolcall.Names() {
			format, _ := toolcall.Lookup(name)
			for _, maxCalls := range []int{0, 1} {
				content, calls := format.Parse(output, maxCalls)
				ts := &toolStream{s: format.NewStream(maxCalls)}
				var text string
				var got []*loraplexv1.ToolCall
				for rest := output; ; {
					n := 0
					for n < len(rest) && rng.IntN(4) != 0 {
						_, size := utf8.DecodeRuneInString(rest[n:])
						n += size
					}
					r := &loraplexv1.GenerateResponse{}
					ts.feed(r, rest[:n], n == len(rest))
					if _, err := proto.Marshal(r); err != nil {
						t.Fatalf("%s: a response does not marshal: %v", name, err)
					}
					text += r.GetText()
					for _, p := range r.GetToolCalls() {
						switch i := int(p.GetIndex()); {
						case i == len(got) && strings.HasPrefix(p.GetId(), "call_"):
							got = append(got, &loraplexv1.ToolCall{Name: p.GetName(), Arguments: p.GetArguments()})
						case i == len(got)-1 && p.GetId() == "" && p.GetName() == "":
							got[i].Arguments += p.GetArguments()
						default:
							t.Fatalf("%s: piece %v out of order after %d calls", name, p, len(got))
						}
					}
					rest = rest[n:]
					if rest == "" {
						break
					}
				}
				if text != strings.ToValidUTF8(content, "\uFFFD") || len(got) != len(calls) || ts.calls != len(calls) {
					t.Fatalf("%s: streamed %q and %d calls, whole %q and %d calls", name, text, len(got), content, len(calls))
				}
				for i := range calls {
					if got[i].GetName() != strings.ToValidUTF8(calls[i].Name, "\uFFFD") || got[i].GetArguments() != strings.ToValidUTF8(calls[i].Arguments, "\uFFFD") {
						t.Fatalf("%s: call %d streamed %v, whole %+v", name, i, got[i], calls[i])
					}
				}
			}
		}
	})
}
