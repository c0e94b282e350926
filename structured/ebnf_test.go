package structured

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"
)

// testGrammars are grammars the tests walk: arithmetic with recursion, a JSON-ish value
// grammar (llama.cpp's json.gbnf style), and small ones for the dialect's operators.
var testGrammars = map[string]string{
	"arith": `# arithmetic expressions
root   ::= expr
expr   ::= term (("+" | "-") term)*
term   ::= factor (("*" | "/") factor)*
factor ::= [0-9]{1,3} | "(" expr ")" | "-" factor
`,
	"json": `root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}"
array  ::= "[" ws ( value ("," ws value)* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\""
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
ws     ::= [ ]?
`,
	"yesno": `root ::= "yes" | "no"`,
	"balanced": `root ::= pair*
pair ::= "(" root ")" | "[" root "]"`,
	"unicode": `root ::= [α-ω]+ "é" [^a-z]? .`,
}

func compileGrammar(t testing.TB, c *Compiler, name string) *Grammar {
	t.Helper()
	g, err := c.Compile(Spec{Kind: EBNF, Text: testGrammars[name]})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return g
}

// The recognizer accepts exactly the outputs the grammar derives.
func TestGrammarRecognizer(t *testing.T) {
	v, _ := testVocab()
	c := NewCompiler(v)
	cases := []struct {
		grammar          string
		accepts, rejects []string
	}{
		{"arith", []string{"1", "1+2", "(1+2)*3", "((((7))))", "-(-1)/22", "123*456-789"}, []string{"", "1+", "(1", "1234", "1++2", "()", "1 + 2"}},
		{"json", []string{`{}`, `{"a": 1}`, `{"a":[1,2.5e3,{"b":null}],"c":"x\"y\u00e9"}`, `{"k":"é"}`}, []string{`[]`, `{`, `{"a"}`, `{"a":01}`, `{"a":"\q"}`, `{"a":1,}`}},
		{"yesno", []string{"yes", "no"}, []string{"", "y", "yesno", "no "}},
		{"balanced", []string{"", "()", "([])()", "[[[()]]]"}, []string{"(", "(]", "())"}},
		{"unicode", []string{"αωé!", "βéx", "γγéAé"}, []string{"aé!", "αé", "αéa!"}},
	}
	for _, tc := range cases {
		g := compileGrammar(t, c, tc.grammar)
		for _, s := range tc.accepts {
			if !g.Matches([]byte(s)) {
				t.Errorf("%s rejects %q", tc.grammar, s)
			}
		}
		for _, s := range tc.rejects {
			if g.Matches([]byte(s)) {
				t.Errorf("%s accepts %q", tc.grammar, s)
			}
		}
	}
}

// A grammar's mask allows exactly the tokens after which the output can still be completed
// (checked against the byte recognizer from scratch), allows EOS exactly when the output is
// complete, and always allows something until the output ends; every output a random model
// finishes matches the grammar.
func TestGrammarMasksAreExact(t *testing.T) {
	v, eos := testVocab()
	c := NewCompiler(v)
	rng := rand.New(rand.NewPCG(5, 6))
	// viable reports whether the recognizer, run from scratch over the output (prefix), can
	// read b too.
	viable := func(prefix *cfgRow, b []byte) bool {
		threads := prefix.threads
		for _, c := range b {
			var acc, ok bool
			if threads, acc, ok = prefix.p.step(threads, c, nil); !ok || len(threads) == 0 && !acc {
				return false
			}
		}
		return true
	}
	for name := range testGrammars {
		g := compileGrammar(t, c, name)
		ended := 0
		for range 60 {
			var out []byte
			m := g.NewMatcher()
			for range 80 {
				prefix, _ := newCFGRow(g.cfg, 0)
				if !prefix.advance(out) {
					t.Fatalf("%s: the recognizer refuses the output so far %q", name, out)
				}
				mask := m.Mask()
				var allowed []int
				for id := range v.size {
					on := mask[id/64]>>(id%64)&1 != 0
					if on {
						allowed = append(allowed, id)
					}
					if id == eos {
						if on != m.Accepting() || on != g.Matches(out) {
							t.Fatalf("%s after %q: EOS allowed %v, accepting %v", name, out, on, m.Accepting())
						}
						continue
					}
					b := v.bytes(id)
					if len(b) > 0 && on != viable(prefix, b) {
						t.Fatalf("%s after %q: token %q allowed %v, but the recognizer says %v", name, out, b, on, !on)
					}
				}
				if len(allowed) == 0 {
					t.Fatalf("%s: no token allowed after %q", name, out)
				}
				id := allowed[rng.IntN(len(allowed))]
				if m.Accepting() && rng.IntN(3) == 0 {
					id = eos
				}
				if id == eos {
					ended++
					if !g.Matches(out) {
						t.Fatalf("%s: finished output %q does not match", name, out)
					}
					break
				}
				out = append(out, v.bytes(id)...)
				if !m.Advance(id) {
					t.Fatalf("%s: allowed token %q left the grammar after %q", name, v.bytes(id), out)
				}
			}
		}
		if ended < 10 {
			t.Errorf("%s: only %d of 60 walks ended", name, ended)
		}
	}
}

// A grammar that does not parse or make sense is refused with its line and column, left
// recursion naming the rule, and hostile grammars (huge, deeply nested, over the rule,
// element or repetition limits) fail fast, in bounded memory, naming the limit.
func TestGrammarRefusals(t *testing.T) {
	v, _ := testVocab()
	c := NewCompiler(v)
	manyRules := "root ::= " + strings.Repeat(`"a"? `, MaxGrammarRules) // a rule per ?
	cases := []struct {
		text                 string
		where, plain         string // a GrammarError at line:col, containing plain
		unsupported, limited string
	}{
		{text: ``, where: "1:1", plain: "empty"},
		{text: `root ::= "a" |` + "\n  foo bar", where: "2:3", plain: `rule "foo" is used but not defined`},
		{text: `root ::= "abc`, where: "1:10", plain: "unclosed string"},
		{text: `root = "a"`, where: "1:6", plain: "expected ::="},
		{text: "root ::= \"a\"\nroot ::= \"b\"", where: "2:1", plain: "defined twice (first at 1:1)"},
		{text: `root ::= [a-`, where: "1:10", plain: "unclosed character class"},
		{text: `root ::= [z-a]`, where: "1:10", plain: "reversed"},
		{text: `root ::= ("a"`, where: "1:10", plain: "unclosed ("},
		{text: `root ::= "a"{3,2}`, where: "1:14", plain: "maximum below its minimum"},
		{text: `root ::= "\q"`, where: "1:11", plain: "unknown escape"},
		{text: `root ::= "a" )`, where: "1:14", plain: "unexpected"},
		{text: `expr ::= "x"`, where: "1:1", plain: "no rule root"},
		{text: `root ::= "x" root`, where: "1:1", plain: "matches no finite text"},
		{text: `root ::= root "+" "1" | "1"`, unsupported: `"root" is left-recursive`},
		{text: "root ::= a\na ::= b \"x\"\nb ::= a | \"y\"", unsupported: "left-recursive"},
		{text: "root ::= \"x\"? root \"y\" | \"z\"", unsupported: `"root" is left-recursive`},
		{text: `root ::= ("a"?)*`, unsupported: "can match empty text"},
		{text: `root ::= "` + strings.Repeat("a", MaxSpecBytes) + `"`, limited: "MaxSpecBytes"},
		{text: `root ::= ` + strings.Repeat("(", 10000) + `"a"` + strings.Repeat(")", 10000), limited: "MaxGrammarNesting"},
		{text: `root ::= "a"{1001}`, limited: "MaxGrammarRepeat"},
		{text: `root ::= "a"{2,99999999999999999999}`, limited: "MaxGrammarRepeat"},
		{text: manyRules, limited: "MaxGrammarRules"},
		{text: `root ::= ` + strings.Repeat(`[a-z]{1000}`, 300), limited: "MaxGrammarElems"},
	}
	for _, tc := range cases {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		_, err := c.Compile(Spec{Kind: EBNF, Text: tc.text})
		if took := time.Since(start); took > time.Second {
			t.Errorf("%.40q: compile took %v", tc.text, took)
		}
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
			t.Errorf("%.40q: compile allocated %d MiB", tc.text, n>>20)
		}
		var ge *GrammarError
		var ue *UnsupportedError
		var le *LimitError
		switch {
		case err == nil:
			t.Errorf("%.40q: compiled", tc.text)
		case tc.unsupported != "":
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.unsupported) {
				t.Errorf("%.40q: %v, want unsupported %s", tc.text, err, tc.unsupported)
			}
		case tc.limited != "":
			if !errors.As(err, &le) || le.Limit != tc.limited {
				t.Errorf("%.40q: %v, want limit %s", tc.text, err, tc.limited)
			}
		default:
			if !errors.As(err, &ge) || fmt.Sprintf("%d:%d", ge.Line, ge.Col) != tc.where || !strings.Contains(err.Error(), tc.plain) {
				t.Errorf("%.40q: %v, want %q at %s", tc.text, err, tc.plain, tc.where)
			}
		}
	}
}

// Grammars whose size or ambiguity could explode stay bounded: nested repetition bounds
// compile to rules linear in the bounds (not their product), and an ambiguous grammar's
// threads merge, so its masks cost about what an unambiguous one's do.
func TestGrammarHostileButBounded(t *testing.T) {
	v, eos := testVocab()
	c := NewCompiler(v)
	for _, text := range []string{
		`root ::= ((("a"{1000}){1000}){1000}){1000}`,
		`root ::= (a | a a | a a a | b)*
a ::= "x" | "x" | "x"?"x"
b ::= a a a a a a a a`,
		`root ::= ` + strings.Repeat(`("a" | "b" | "ab")*`, 200),
	} {
		start := time.Now()
		g, err := c.Compile(Spec{Kind: EBNF, Text: text})
		if err != nil {
			t.Fatalf("%.40q: %v", text, err)
		}
		if g.States() > 10_000 {
			t.Errorf("%.40q: %d elements", text, g.States())
		}
		rng := rand.New(rand.NewPCG(7, 8))
		for range 20 {
			generate(t, g, v, eos, rng, 60)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("%.40q: compile and 1,200 steps took %v", text, took)
		}
	}
	// Threads that multiply without merging (every digit may open a nested factor: the
	// stacks after n digits are exponential in n) are cut by MaxParserThreads and
	// MaxMaskWork: each mask stays bounded, and what is allowed still leads somewhere.
	g, err := c.Compile(Spec{Kind: EBNF, Text: "root::=expr\nexpr::=term((\"+\"|\"-\")term)*\nterm::=factor((\"*\"|\"/\")factor)*\nfactor::=[0-9]{1,3}expr\")\"|"})
	if err != nil {
		t.Fatal(err)
	}
	m := g.NewMatcher()
	for step := range 12 {
		start := time.Now()
		mask := m.Mask()
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("step %d: the mask took %v", step, took)
		}
		if !m.Advance('1') {
			if mask['1'/64]>>('1'%64)&1 != 0 {
				t.Fatalf("step %d: an allowed 1 left the grammar", step)
			}
			break
		}
	}
}

// A recursive grammar's states at the same place at different depths share one cached mask
// (keyed by the stacks only as deep as the mask looked), and the shared mask is exact at every
// depth: a closing token allowed exactly as far as the nesting goes.
func TestGrammarMasksShareAcrossDepths(t *testing.T) {
	var toks [][]byte
	for _, s := range []string{"(", ")", "))", ")))", "[", "]", "()", "x"} {
		toks = append(toks, []byte(s))
	}
	eos := len(toks)
	v := NewVocab(eos+1, len(toks), func(id int) ([]byte, bool) { return toks[id], true }, []int{eos})
	c := NewCompiler(v)
	g := compileGrammar(t, c, "balanced")
	m := g.NewMatcher()
	for depth := 1; depth <= 40; depth++ {
		if !m.Advance(0) { // "("
			t.Fatalf("( refused at depth %d", depth)
		}
		mask := m.Mask()
		for id, tok := range toks {
			open := string(tok) == "(" || string(tok) == "[" || string(tok) == "()"
			closes := strings.Count(string(tok), ")")
			want := open || closes > 0 && closes <= depth && strings.Trim(string(tok), ")") == ""
			if got := mask[id/64]>>(id%64)&1 != 0; got != want {
				t.Fatalf("depth %d: token %q allowed %v, want %v", depth, tok, got, want)
			}
		}
	}
	if n := len(g.cfgMasks); n > 8 {
		t.Errorf("%d masks cached for 40 depths of one place", n)
	}
}

// One output's parser keeps only the stack nodes its threads still hold: a long output of a
// recursive grammar that keeps going deep along new paths and coming back keeps a small
// arena, and matching goes on unchanged after the nodes are renumbered.
func TestGrammarParserDropsDeadNodes(t *testing.T) {
	v := NewVocab(257, 256, func(id int) ([]byte, bool) { return []byte{byte(id)}, true }, []int{256})
	g := compileGrammar(t, NewCompiler(v), "balanced")
	m := g.NewMatcher()
	rng := rand.New(rand.NewPCG(3, 3))
	var out []byte
	advance := func(c byte) {
		out = append(out, c)
		if !m.Advance(int(c)) {
			t.Fatalf("%q left the grammar", out)
		}
	}
	for range 40 {
		var closers []byte
		for range 64 {
			if rng.IntN(2) == 0 {
				advance('(')
				closers = append(closers, ')')
			} else {
				advance('[')
				closers = append(closers, ']')
			}
		}
		for i := len(closers) - 1; i >= 0; i-- {
			advance(closers[i])
		}
	}
	if n := len(m.r.p.nodes); n > 2048 {
		t.Errorf("%d nodes held after 40 trips to depth 64", n)
	}
	if !m.Accepting() || !g.Matches(out) {
		t.Error("the output is not complete")
	}
	mask := m.Mask()
	for id := range 256 {
		if want := id == '(' || id == '['; mask[id/64]>>(id%64)&1 != 0 != want {
			t.Errorf("byte %q allowed %v", rune(id), !want)
		}
	}
}
