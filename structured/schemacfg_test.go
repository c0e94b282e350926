package structured

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// Recursive schemas the tests compile: a tree, a linked list, mutual recursion (A -> B -> A)
// through anyOf, a self-reference to the root, nested comments with bounded strings.
var recursiveSchemas = []string{
	`{"$defs":{"node":{"type":"object","properties":{"value":{"type":"integer"},"children":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":3}},"required":["value","children"],"additionalProperties":false}},"$ref":"#/$defs/node"}`,
	`{"$defs":{"n":{"type":"object","properties":{"v":{"enum":["a","b"]},"next":{"$ref":"#/$defs/n"}},"required":["v"]}},"$ref":"#/$defs/n"}`,
	`{"$defs":{"A":{"type":"object","properties":{"b":{"anyOf":[{"$ref":"#/$defs/B"},{"type":"null"}]}},"required":["b"],"additionalProperties":false},"B":{"type":"array","items":{"$ref":"#/$defs/A"},"minItems":1,"maxItems":2}},"$ref":"#/$defs/A"}`,
	`{"type":"object","properties":{"name":{"type":"string","maxLength":4},"self":{"$ref":"#"}},"required":["name"]}`,
	`{"definitions":{"c":{"type":"object","properties":{"text":{"type":"string","minLength":1,"maxLength":6},"replies":{"type":"array","items":{"$ref":"#/definitions/c"}}},"required":["text"]}},"type":"object","properties":{"thread":{"type":"array","items":{"$ref":"#/definitions/c"},"maxItems":2}},"required":["thread"]}`,
}

// A recursive schema compiles to a context-free grammar (not a 400), and every output it lets
// a random model finish is JSON the schema validates (an independent validator); some outputs
// nest deeper than a regular expression of the schema could have unrolled.
func TestRecursiveSchemaOutputsValidate(t *testing.T) {
	v, eos := testVocab()
	c := NewCompiler(v)
	rng := rand.New(rand.NewPCG(7, 8))
	for _, schema := range recursiveSchemas {
		g, err := c.Compile(Spec{Kind: JSONSchema, Text: schema})
		if err != nil {
			t.Fatalf("%s: %v", schema, err)
		}
		if g.cfg == nil {
			t.Fatalf("%s: compiled to a DFA", schema)
		}
		sch := compileSchema(t, schema)
		ended, deepest := 0, 0
		for range 150 {
			out, ok := generate(t, g, v, eos, rng, 400)
			if !ok {
				continue
			}
			ended++
			var inst any
			if err := json.Unmarshal([]byte(out), &inst); err != nil {
				t.Fatalf("%s: output %q is not JSON: %v", schema, out, err)
			}
			if err := sch.Validate(inst); err != nil {
				t.Fatalf("%s: output %q does not validate: %v", schema, out, err)
			}
			deepest = max(deepest, nesting(out))
		}
		if ended < 30 {
			t.Errorf("%s: only %d of 150 walks ended", schema, ended)
		}
		if deepest <= AnyJSONDepth {
			t.Errorf("%s: no output nested deeper than %d", schema, AnyJSONDepth)
		}
	}
}

// nesting is how deep out's objects and arrays nest (brackets in strings included: an upper
// bound the schemas' outputs here reach only through structure).
func nesting(out string) int {
	d, deepest := 0, 0
	for _, c := range out {
		switch c {
		case '{', '[':
			d++
			deepest = max(deepest, d)
		case '}', ']':
			d--
		}
	}
	return deepest
}

// A recursive schema's grammar accepts exactly the compact instances: deep ones it could not
// have unrolled, and not those breaking the schema below the first level (a missing required
// property, an extra one, too many items, whitespace).
func TestRecursiveSchemaMatches(t *testing.T) {
	v, _ := testVocab()
	g, err := NewCompiler(v).Compile(Spec{Kind: JSONSchema, Text: recursiveSchemas[0]})
	if err != nil {
		t.Fatal(err)
	}
	deep := strings.Repeat(`{"value":1,"children":[`, 40) + `{"value":-2,"children":[]}` + strings.Repeat(`]}`, 40)
	for _, tc := range []struct {
		out  string
		want bool
	}{
		{`{"value":1,"children":[]}`, true},
		{`{"value":1,"children":[{"value":2,"children":[]},{"value":3,"children":[{"value":4,"children":[]}]}]}`, true},
		{deep, true},
		{`{"value":1,"children":[{"value":2}]}`, false},
		{`{"value":1,"children":[{"value":2,"children":[],"x":1}]}`, false},
		{`{"value":1,"children":[{"value":2,"children":[{"value":1,"children":[]},{"value":1,"children":[]},{"value":1,"children":[]},{"value":1,"children":[]}]}]}`, false},
		{`{"value":1, "children":[]}`, false},
		{`{"value":1.5,"children":[]}`, false},
	} {
		if got := g.Matches([]byte(tc.out)); got != tc.want {
			t.Errorf("%.80s: matches %v, want %v", tc.out, got, tc.want)
		}
	}
}

// A schema compiles to a context-free grammar exactly when its $refs recurse: one without
// recursion keeps its DFA (the regular path, unchanged), even when its $refs are shared or
// nested.
func TestRecursionChoosesTheGrammar(t *testing.T) {
	v, _ := testVocab()
	c := NewCompiler(v)
	shared := `{"$defs":{"p":{"type":"integer"},"q":{"type":"array","items":{"$ref":"#/$defs/p"}}},"type":"object","properties":{"a":{"$ref":"#/$defs/q"},"b":{"$ref":"#/$defs/q"}}}`
	for _, schema := range append(append(slices.Clone(testSchemas), shared), recursiveSchemas...) {
		g, err := c.Compile(Spec{Kind: JSONSchema, Text: schema})
		if err != nil {
			t.Fatalf("%s: %v", schema, err)
		}
		recursive := slices.Contains(recursiveSchemas, schema)
		if (g.cfg != nil) != recursive || (g.d != nil) == recursive {
			t.Errorf("%s: context-free %v, want %v", schema, g.cfg != nil, recursive)
		}
	}
}

// A recursive schema none of whose instances is finite (each must contain another: a required
// self-reference, a cycle of required references) is refused saying so; a recursive schema
// that breaks a rule elsewhere is refused as a regular one is; limits hold per rule.
func TestRecursiveSchemaRefusals(t *testing.T) {
	v, _ := testVocab()
	c := NewCompiler(v)
	deepRule := `{"$defs":{"n":` + strings.Repeat(`{"type":"array","items":`, 20) + `{"$ref":"#/$defs/n"}` + strings.Repeat(`}`, 20) + `},"$ref":"#/$defs/n"}`
	for _, tc := range []struct {
		schema, want string
	}{
		{`{"$defs":{"n":{"type":"object","properties":{"next":{"$ref":"#/$defs/n"}},"required":["next"]}},"$ref":"#/$defs/n"}`, `no finite instance: every instance of $ref "#/$defs/n"`},
		{`{"type":"object","properties":{"self":{"$ref":"#"}},"required":["self"]}`, "no finite instance"},
		{`{"$defs":{"A":{"type":"array","items":{"$ref":"#/$defs/B"},"minItems":1},"B":{"type":"object","properties":{"a":{"$ref":"#/$defs/A"}},"required":["a"]}},"$ref":"#/$defs/A"}`, "no finite instance"},
		{`{"$defs":{"n":{"$ref":"#/$defs/n"}},"$ref":"#/$defs/n"}`, "no finite instance"},
		{`{"$defs":{"n":{"type":"object","properties":{"next":{"$ref":"#/$defs/n"},"s":{"type":"string","pattern":"a"}}}},"$ref":"#/$defs/n"}`, `"pattern"`},
		{`{"$defs":{"n":{"type":"object","properties":{"next":{"$ref":"#/$defs/n"},"s":{"$ref":"#/$defs/missing"}}}},"$ref":"#/$defs/n"}`, "names no definition"},
		{deepRule, "MaxSchemaDepth"},
	} {
		_, err := c.Compile(Spec{Kind: JSONSchema, Text: tc.schema})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.80s: error %v, want %q", tc.schema, err, tc.want)
		}
	}
	// A self-reference that reads nothing first (A is A or a string) is left recursion: refused
	// as unsupported, naming the ref.
	_, err := c.Compile(Spec{Kind: JSONSchema, Text: `{"$defs":{"A":{"anyOf":[{"$ref":"#/$defs/A"},{"type":"string"}]}},"$ref":"#/$defs/A"}`})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `$ref "#/$defs/A" reaches itself before any character`) {
		t.Errorf("left-recursive schema: %v", err)
	}
}

// A tool call's recursive parameters compile in a sequence with the other tools' (each
// tool's $refs its own): every item validates against its own schema.
func TestSequenceWithRecursiveItem(t *testing.T) {
	v, eos := testVocab()
	c := NewCompiler(v)
	rng := rand.New(rand.NewPCG(9, 10))
	// Both items define "n", differently: each item's refs resolve in its own schema.
	schemas := []string{recursiveSchemas[1],
		`{"$defs":{"n":{"type":"integer"}},"type":"object","properties":{"k":{"$ref":"#/$defs/n"}},"required":["k"],"additionalProperties":false}`}
	items := make([]Item, len(schemas))
	for i, s := range schemas {
		items[i] = Item{Name: "f" + string(rune('0'+i)), Before: `<call f` + string(rune('0'+i)) + `>`, Schema: s, After: "</call>"}
	}
	g, err := c.Compile(Spec{Kind: JSONSequence, Sequence: &Sequence{Open: "", Sep: "\n", Close: "", Items: items}})
	if err != nil {
		t.Fatal(err)
	}
	call := regexp.MustCompile(`<call f([01])>(.*?)</call>`)
	seen := map[byte]bool{}
	for range 100 {
		out, ok := generate(t, g, v, eos, rng, 400)
		if !ok {
			continue
		}
		for _, m := range call.FindAllStringSubmatch(out, -1) {
			seen[m[1][0]] = true
			var inst any
			if err := json.Unmarshal([]byte(m[2]), &inst); err != nil {
				t.Fatalf("item %q: %v", m[2], err)
			}
			if err := compileSchema(t, schemas[m[1][0]-'0']).Validate(inst); err != nil {
				t.Fatalf("item %q: %v", m[2], err)
			}
		}
	}
	if !seen['0'] || !seen['1'] {
		t.Errorf("items seen: %v", seen)
	}
	// A recursive item without a finite instance is refused naming the tool.
	items[0].Schema = `{"type":"object","properties":{"self":{"$ref":"#"}},"required":["self"]}`
	_, err = c.Compile(Spec{Kind: JSONSequence, Sequence: &Sequence{Items: items}})
	if err == nil || !strings.Contains(err.Error(), `"f0: #"`) {
		t.Errorf("recursive item without a finite instance: %v", err)
	}
}

// An output cannot nest deeper than the parser's stack (MaxParserDepth): at the limit the mask
// leaves out the token that would open another level, and the output can still close.
func TestOutputNestingBoundedByStack(t *testing.T) {
	v, eos := testVocab()
	g, err := NewCompiler(v).Compile(Spec{Kind: EBNF, Text: `root ::= "[" root? "]"`})
	if err != nil {
		t.Fatal(err)
	}
	allowed := func(m *Matcher, id int) bool { return m.Mask()[id/64]>>(id%64)&1 != 0 }
	m := g.NewMatcher()
	depth := 0
	for ; depth <= MaxParserDepth+1 && allowed(m, '['); depth++ {
		if !m.Advance('[') {
			t.Fatalf("allowed [ left the grammar at depth %d", depth)
		}
	}
	// root? pushes one entry per level.
	if depth != MaxParserDepth {
		t.Fatalf("opened %d levels, want %d", depth, MaxParserDepth)
	}
	for i := range depth {
		if !allowed(m, ']') || !m.Advance(']') {
			t.Fatalf("cannot close level %d of %d", i, depth)
		}
	}
	if !allowed(m, eos) || !m.Accepting() {
		t.Fatal("the closed output is not complete")
	}
}

// A long cycle of $defs (an AST's node types, each holding the next) compiles to a grammar,
// though expanding it as a regular expression meets MaxSchemaDepth before the recursion: each
// rule's depth counts from its own ref. A long chain without a cycle keeps that limit.
func TestLongRefCycleCompiles(t *testing.T) {
	v, _ := testVocab()
	c := NewCompiler(v)
	chain := func(n int, cycle bool) string {
		var defs []string
		for i := range n {
			next := fmt.Sprintf(`{"$ref":"#/$defs/d%d"}`, i+1)
			if i == n-1 {
				next = `{"type":"null"}`
				if cycle {
					next = `{"$ref":"#/$defs/d0"}`
				}
			}
			defs = append(defs, fmt.Sprintf(`"d%d":{"type":"object","properties":{"k":{"type":"integer"},"n":%s},"required":["k"]}`, i, next))
		}
		return `{"$defs":{` + strings.Join(defs, ",") + `},"$ref":"#/$defs/d0"}`
	}
	g, err := c.Compile(Spec{Kind: JSONSchema, Text: chain(20, true)})
	if err != nil {
		t.Fatal(err)
	}
	deep := strings.Repeat(`{"k":1,"n":`, 30) + `{"k":2}` + strings.Repeat(`}`, 30)
	if !g.Matches([]byte(deep)) || g.Matches([]byte(`{"k":1,"n":{"n":{"k":2}}}`)) {
		t.Error("the cycle's grammar does not hold its instances")
	}
	if _, err := c.Compile(Spec{Kind: JSONSchema, Text: chain(20, false)}); err == nil || !strings.Contains(err.Error(), "MaxSchemaDepth") {
		t.Errorf("a long chain without a cycle: %v", err)
	}
}
