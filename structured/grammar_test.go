package structured

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// testVocab is a byte-level vocabulary (every byte is a token, as in GPT-2 style tokenizers)
// plus multi-byte tokens that cross JSON's structure, a token ending inside a UTF-8 character,
// a special token without text, and EOS.
func testVocab() (*Vocab, int) {
	var toks [][]byte
	for b := range 256 {
		toks = append(toks, []byte{byte(b)})
	}
	for _, s := range []string{`{"`, `":`, `","`, `"}`, `true`, `false`, `null`, `name`, `age`, `"name":"`, `},{`,
		`[{"`, `}]`, `123`, `0.5`, `é`, "\xc3", "\xa9x", `yes`, `no`, `maybe`, `\u00e9`, `\"`, ` `, `ab`} {
		toks = append(toks, []byte(s))
	}
	special := len(toks)
	toks = append(toks, nil) // a special token
	eos := len(toks)
	toks = append(toks, nil)
	v := NewVocab(eos+5, len(toks), func(id int) ([]byte, bool) { return toks[id], toks[id] != nil }, []int{eos})
	_ = special
	return v, eos
}

// generate walks the grammar choosing uniformly among the allowed tokens (a model with random
// logits) until EOS or maxSteps; it returns the output and whether EOS ended it.
func generate(t *testing.T, g *Grammar, v *Vocab, eos int, rng *rand.Rand, maxSteps int) (string, bool) {
	t.Helper()
	var out []byte
	mt := g.NewMatcher()
	for range maxSteps {
		m := mt.Mask()
		var allowed []int
		for id := range v.size {
			if m[id/64]>>(id%64)&1 != 0 {
				allowed = append(allowed, id)
			}
		}
		if len(allowed) == 0 {
			t.Fatalf("no token allowed after %q", out)
		}
		// Prefer EOS half the time when allowed, so that outputs end.
		id := allowed[rng.IntN(len(allowed))]
		if mt.Accepting() && rng.IntN(2) == 0 {
			id = eos
		}
		if id == eos {
			if !mt.Accepting() {
				t.Fatalf("EOS allowed after incomplete %q", out)
			}
			return string(out), true
		}
		out = append(out, v.bytes(id)...)
		if !mt.Advance(id) {
			t.Fatalf("allowed token %q killed the automaton after %q", v.bytes(id), out)
		}
	}
	return string(out), false
}

func compileSchema(t *testing.T, schema string) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

var testSchemas = []string{
	`{"type":"object","properties":{"name":{"type":"string","maxLength":8},"age":{"type":"integer"},"ok":{"type":"boolean"}},"required":["name","age"],"additionalProperties":false}`,
	`{"type":"object","properties":{"a":{"type":"number"},"b":{"type":"null"},"c":{"enum":["x",1,null,{"k":[1,2]}]}}}`,
	`{"type":"array","items":{"type":"string","minLength":1,"maxLength":3},"minItems":1,"maxItems":4}`,
	`{"$defs":{"p":{"type":"object","properties":{"x":{"type":"integer"},"y":{"type":["integer","null"]}},"required":["x","y"]}},"type":"object","properties":{"points":{"type":"array","items":{"$ref":"#/$defs/p"},"maxItems":3}},"required":["points"]}`,
	`{"anyOf":[{"type":"string","maxLength":2},{"type":"boolean"},{"const":"fixed"}]}`,
	`{"type":"object","properties":{"tags":{"type":"array"},"meta":{"type":"object"},"any":{}},"required":["tags","meta","any"]}`,
}

// Every output a schema's grammar lets a random model finish is JSON that the schema
// validates (checked by an independent validator).
func TestSchemaOutputsValidate(t *testing.T) {
	v, eos := testVocab()
	c := NewCompiler(v)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, schema := range testSchemas {
		g, err := c.Compile(Spec{Kind: JSONSchema, Text: schema})
		if err != nil {
			t.Fatalf("%s: %v", schema, err)
		}
		sch := compileSchema(t, schema)
		ended := 0
		for range 200 {
			out, ok := generate(t, g, v, eos, rng, 400)
			if !ok {
				continue
			}
			ended++
			inst, err := jsonschema.UnmarshalJSON(strings.NewReader(out))
			if err != nil {
				t.Fatalf("%s: output %q is not JSON: %v", schema, out, err)
			}
			if err := sch.Validate(inst); err != nil {
				t.Fatalf("%s: output %q does not validate: %v", schema, out, err)
			}
		}
		if ended < 50 {
			t.Errorf("%s: only %d of 200 walks ended", schema, ended)
		}
	}
}

// json_object's outputs are JSON objects; a regex's outputs match it; a choice's outputs are
// one of the choices.
func TestObjectRegexChoiceOutputs(t *testing.T) {
	v, eos := testVocab()
	c := NewCompiler(v)
	rng := rand.New(rand.NewPCG(3, 4))
	obj, err := c.Compile(Spec{Kind: JSONObject})
	if err != nil {
		t.Fatal(err)
	}
	re, err := c.Compile(Spec{Kind: Regex, Text: `[a-c]{2,5}(-[0-9]+)?é`})
	if err != nil {
		t.Fatal(err)
	}
	choices := []string{"yes", "no", "maybe", "é"}
	ch, err := c.Compile(Spec{Kind: Choice, Choices: choices})
	if err != nil {
		t.Fatal(err)
	}
	match := regexp.MustCompile(`^(?:[a-c]{2,5}(-[0-9]+)?é)$`)
	for range 200 {
		if out, ok := generate(t, obj, v, eos, rng, 300); ok {
			var m map[string]any
			if err := json.Unmarshal([]byte(out), &m); err != nil || !json.Valid([]byte(out)) {
				t.Fatalf("json_object output %q: %v", out, err)
			}
		}
		if out, ok := generate(t, re, v, eos, rng, 300); ok && !match.MatchString(out) {
			t.Fatalf("regex output %q does not match", out)
		}
		if out, ok := generate(t, ch, v, eos, rng, 300); ok && !bytes.Contains([]byte("|yes|no|maybe|é|"), []byte("|"+out+"|")) {
			t.Fatalf("choice output %q is not a choice", out)
		}
	}
}

// A constraint that cannot be enforced is refused naming the keyword or the limit, never
// ignored, and hostile constraints fail fast.
func TestRefusals(t *testing.T) {
	v, _ := testVocab()
	c := NewCompiler(v)
	deep := strings.Repeat(`{"type":"array","items":`, 40) + `{"type":"string"}` + strings.Repeat(`}`, 40)
	wide := `{"type":"object","properties":{` + strings.Repeat(`"p":{"type":"string"},`, 0)
	var props []string
	for i := range 200 {
		props = append(props, `"p`+string(rune('a'+i%26))+string(rune('a'+i/26))+`":{"type":"object"}`)
	}
	wide += strings.Join(props, ",") + `}}`
	huge := `{"enum":[` + strings.Repeat(`"aaaaaaaaaa",`, 10000) + `"b"]}`
	cases := []struct {
		spec                 Spec
		unsupported, limited string
		plain                string
	}{
		{spec: Spec{Kind: JSONSchema, Text: `{"type":"string","pattern":"^a+$"}`}, unsupported: "pattern"},
		{spec: Spec{Kind: JSONSchema, Text: `{"type":"integer","minimum":3}`}, unsupported: "minimum"},
		{spec: Spec{Kind: JSONSchema, Text: `{"oneOf":[{"type":"string"}]}`}, unsupported: "oneOf"},
		{spec: Spec{Kind: JSONSchema, Text: `{"type":"object","additionalProperties":{"type":"string"}}`}, unsupported: "additionalProperties"},
		{spec: Spec{Kind: JSONSchema, Text: deep}, limited: "MaxSchemaDepth"},
		{spec: Spec{Kind: JSONSchema, Text: huge}, limited: "MaxSpecBytes"},
		{spec: Spec{Kind: JSONSchema, Text: wide}},
		{spec: Spec{Kind: JSONSchema, Text: `{"type":"string","maxLength":100000}`}, limited: "MaxRepeat"},
		{spec: Spec{Kind: JSONSchema, Text: `{"type":"array","minItems":3,"maxItems":2}`}, plain: "conflicting"},
		{spec: Spec{Kind: JSONSchema, Text: `{"type":"integer","enum":["a","b"]}`}, plain: "conflicting"},
		{spec: Spec{Kind: JSONSchema, Text: `{"type":"object","properties":{},"required":["x"]}`}, plain: "conflicting"},
		{spec: Spec{Kind: JSONSchema, Text: `false`}, plain: "conflicting"},
		{spec: Spec{Kind: Regex, Text: `a\bb`}, unsupported: `\b`},
		{spec: Spec{Kind: Regex, Text: `(a|b`}, plain: "invalid regular expression"},
		{spec: Spec{Kind: Regex, Text: `[a-z]{1000}[0-9]{1000}[a-z]{1000}[0-9]{1000}[a-z]{1000}[0-9]{1000}[a-z]{1000}[0-9]{1000}[a-z]{1000}[0-9]{1000}[a-z]{1000}`}, limited: "MaxDFAStates"},
		{spec: Spec{Kind: Regex, Text: `(?:a|b)*a(?:a|b){20}`}, limited: "MaxDFAStates"},
		{spec: Spec{Kind: Choice}, plain: "empty"},
	}
	for _, tc := range cases {
		start := time.Now()
		_, err := c.Compile(tc.spec)
		took := time.Since(start)
		if took > 3*time.Second {
			t.Errorf("%.80s: compile took %v", tc.spec.Text, took)
		}
		var ue *UnsupportedError
		var le *LimitError
		switch {
		case err == nil && tc.spec.Text == wide:
			// 200 optional properties: accepted or refused by a limit, but bounded in time.
		case err == nil && tc.spec.Text != wide:
			t.Errorf("%.80s: compiled", tc.spec.Text)
		case tc.spec.Text == wide:
			if !errors.As(err, &le) {
				t.Errorf("wide schema: %v", err)
			}
		case tc.unsupported != "":
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.unsupported) {
				t.Errorf("%.80s: %v, want unsupported %s", tc.spec.Text, err, tc.unsupported)
			}
		case tc.limited != "":
			if !errors.As(err, &le) || le.Limit != tc.limited {
				t.Errorf("%.80s: %v, want limit %s", tc.spec.Text, err, tc.limited)
			}
		default:
			if !strings.Contains(err.Error(), tc.plain) {
				t.Errorf("%.80s: %v, want %q", tc.spec.Text, err, tc.plain)
			}
		}
	}
}

// The masks a compiler's grammars cache stay within MaxMaskBytes: past it they are dropped,
// and a dropped mask is recomputed identical.
func TestMaskBudget(t *testing.T) {
	const size = 1 << 20 // 128 KiB masks: the budget holds 2,048
	var toks [][]byte
	for b := range 256 {
		toks = append(toks, []byte{byte(b)})
	}
	v := NewVocab(size, len(toks), func(id int) ([]byte, bool) { return toks[id], true }, []int{size - 1})
	c := NewCompiler(v)
	g, err := c.Compile(Spec{Kind: Regex, Text: `[a-z]{1000}[a-z]{1000}[a-z]{1000}`})
	if err != nil {
		t.Fatal(err)
	}
	first := slices.Clone(g.mask(Start))
	for s := range State(3000) {
		g.mask(s)
		if n := c.maskBytes.Load(); n > MaxMaskBytes {
			t.Fatalf("state %d: %d bytes of masks cached", s, n)
		}
	}
	if !slices.Equal(g.mask(Start), first) {
		t.Error("a recomputed mask differs")
	}
}

// A sequence's outputs are its markup around instances of its items' schemas: each item
// between its literals validates against its own schema, items are separated as stated, and a
// Single sequence holds exactly one item.
func TestSequenceOutputs(t *testing.T) {
	v, eos := testVocab()
	c := NewCompiler(v)
	rng := rand.New(rand.NewPCG(5, 6))
	schemas := []string{`{"type":"object","properties":{"city":{"type":"string","maxLength":5}},"required":["city"],"additionalProperties":false}`,
		`{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}`}
	items := make([]Item, len(schemas))
	for i, s := range schemas {
		items[i] = Item{Before: "<call>\n{\"name\": \"f" + string(rune('0'+i)) + "\", \"arguments\": ", Schema: s, After: "}\n</call>"}
	}
	call := regexp.MustCompile(`<call>\n\{"name": "f([01])", "arguments": (\{.*?\})\}\n</call>`)
	for _, single := range []bool{false, true} {
		g, err := c.Compile(Spec{Kind: JSONSequence, Sequence: &Sequence{Open: "[", Sep: "\n", Close: "]", Single: single, Items: items}})
		if err != nil {
			t.Fatal(err)
		}
		many := false
		for range 100 {
			out, ok := generate(t, g, v, eos, rng, 400)
			if !ok {
				continue
			}
			if !strings.HasPrefix(out, "[<call>") || !strings.HasSuffix(out, "</call>]") {
				t.Fatalf("output %q is not in its markup", out)
			}
			found := call.FindAllStringSubmatch(out, -1)
			if single && len(found) != 1 || len(found) == 0 {
				t.Fatalf("single %v: output %q has %d items", single, out, len(found))
			}
			many = many || len(found) > 1
			var rebuilt []string
			for _, m := range found {
				val := compileSchema(t, schemas[m[1][0]-'0'])
				var inst any
				if err := json.Unmarshal([]byte(m[2]), &inst); err != nil {
					t.Fatalf("item %q: %v", m[2], err)
				}
				if err := val.Validate(inst); err != nil {
					t.Fatalf("item %q: %v", m[2], err)
				}
				rebuilt = append(rebuilt, m[0])
			}
			if want := "[" + strings.Join(rebuilt, "\n") + "]"; out != want {
				t.Fatalf("output %q, want items separated by the separator: %q", out, want)
			}
		}
		if !single && !many {
			t.Error("no output of an unbounded sequence held more than one item")
		}
	}
	// An item's unsupported keyword is refused naming it.
	_, err := c.Compile(Spec{Kind: JSONSequence, Sequence: &Sequence{Items: []Item{{Schema: `{"type":"string","pattern":"a+"}`}}}})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || ue.What != "pattern" {
		t.Errorf("unsupported keyword in an item: %v", err)
	}
}
