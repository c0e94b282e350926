package toolcall

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/loraplex/loraplex/structured"
)

var forceTools = []Tool{
	{Name: "get_weather", Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string","maxLength":8},"unit":{"enum":["c","f"]}},"required":["city","unit"],"additionalProperties":false}`)},
	{Name: "now"},
}

// byteVocab is every byte as a token, plus EOS.
func byteVocab() (*structured.Vocab, int) {
	eos := 256
	return structured.NewVocab(eos+1, eos, func(id int) ([]byte, bool) { return []byte{byte(id)}, true }, []int{eos}), eos
}

// sample walks g choosing uniformly among allowed tokens, ending at EOS when allowed half the
// time; false when it did not end within maxSteps.
func sample(g *structured.Grammar, eos int, rng *rand.Rand, maxSteps int) (string, bool) {
	var out []byte
	mt := g.NewMatcher()
	for range maxSteps {
		m := mt.Mask()
		var allowed []int
		for id := range eos + 1 {
			if m[id/64]>>(id%64)&1 != 0 {
				allowed = append(allowed, id)
			}
		}
		if mt.Accepting() && rng.IntN(2) == 0 {
			return string(out), true
		}
		id := allowed[rng.IntN(len(allowed))]
		if id == eos {
			return string(out), true
		}
		out = append(out, byte(id))
		mt.Advance(id)
	}
	return string(out), false
}

// A forced call, whatever the model would have written, is in the format's own wire format,
// parses back into calls of the offered tools with arguments their schemas validate, and is
// exactly one call when parallel calls are off.
func TestForcedOutputsParse(t *testing.T) {
	v, eos := byteVocab()
	c := structured.NewCompiler(v)
	rng := rand.New(rand.NewPCG(7, 8))
	schemas := map[string]*jsonschema.Schema{}
	for _, tool := range forceTools {
		comp := jsonschema.NewCompiler()
		doc, _ := jsonschema.UnmarshalJSON(strings.NewReader(tool.schema()))
		if err := comp.AddResource(tool.Name+".json", doc); err != nil {
			t.Fatal(err)
		}
		s, err := comp.Compile(tool.Name + ".json")
		if err != nil {
			t.Fatal(err)
		}
		schemas[tool.Name] = s
	}
	for _, name := range Names() {
		f := lookup(t, name)
		for _, single := range []bool{true, false} {
			g, err := c.Compile(f.Force(forceTools, single))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			ended := 0
			for range 40 {
				out, ok := sample(g, eos, rng, 2000)
				if !ok {
					continue
				}
				ended++
				content, calls := f.Parse(out, 0)
				if content != "" || len(calls) == 0 || single && len(calls) != 1 {
					t.Fatalf("%s single %v: %q parsed to content %q and %d calls", name, single, out, content, len(calls))
				}
				for _, call := range calls {
					s := schemas[call.Name]
					var args any
					if s == nil || json.Unmarshal([]byte(call.Arguments), &args) != nil || s.Validate(args) != nil {
						t.Fatalf("%s: %q: call %q with arguments %q", name, out, call.Name, call.Arguments)
					}
				}
			}
			if ended == 0 {
				t.Errorf("%s single %v: no forced output ended", name, single)
			}
		}
	}
}
