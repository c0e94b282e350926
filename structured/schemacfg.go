package structured

import (
	"encoding/binary"
	"fmt"
	"regexp/syntax"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// A recursive JSON schema (a $ref that reaches itself: trees, linked lists, nested comments)
// has no regular expression: its instances nest without bound. It compiles to a context-free
// grammar run by the pushdown recognizer (pda.go) instead, built from the same walk as a
// regular schema's expression (schema.go, the one home of the JSON-value rules: strings and
// their escapes, numbers, compactness, required and optional properties, enum/const, item
// bounds). The walk runs in grammar mode: each $ref target is walked once into the regular
// expression of its own rule, in which every $ref is a placeholder (?P<rN>) for rule N; each
// rule's expression then becomes grammar rules (fromRegex), the placeholders references.
//
// Compile cost is bounded as a regular schema's is (MaxSpecBytes, MaxSchemaDepth within each
// rule, MaxRegexBytes over all rules together) and then by the grammar limits
// (MaxGrammarRules, MaxGrammarElems). A recursive schema every instance of which would contain
// itself (a required self-reference) has no finite instance and is refused. The nesting of an
// output is bounded by the parser's stack (MaxParserDepth entries; a JSON level takes one to
// three): masks leave out a token that would nest deeper, so such an output cannot be produced.

// schemaRules are the rules of a recursive schema's grammar, by $ref.
type schemaRules struct {
	names     []string // the refs as errors name them
	bodies    []string // each rule's regular expression
	walking   []bool   // whether the rule's target is being walked
	index     map[string]int
	bytes     int  // of the bodies, against MaxRegexBytes
	recursive bool // a ref was met while its target was being walked
}

func newSchemaRules() *schemaRules { return &schemaRules{index: map[string]int{}} }

// rule returns the rule of the ref keyed key, and whether its target has been (or is being)
// walked; a new rule's target is the caller's to walk and define.
func (rs *schemaRules) rule(key, name string) (int, bool) {
	if n, ok := rs.index[key]; ok {
		rs.recursive = rs.recursive || rs.walking[n]
		return n, true
	}
	rs.names = append(rs.names, name)
	rs.bodies = append(rs.bodies, "")
	rs.walking = append(rs.walking, true)
	rs.index[key] = len(rs.names) - 1
	return len(rs.names) - 1, false
}

func (rs *schemaRules) define(n int, body string) error {
	if rs.bytes += len(body); rs.bytes > MaxRegexBytes {
		return &LimitError{Limit: "MaxRegexBytes", Msg: fmt.Sprintf("the schema expands to more than %d bytes of regular expression", MaxRegexBytes)}
	}
	rs.bodies[n], rs.walking[n] = body, false
	return nil
}

// placeholder stands for rule n in a rule's regular expression: an empty named group, which
// neither the walk's expressions (their groups are (?:...)) nor quoted names and values
// (regexp.QuoteMeta) can spell.
func placeholder(n int) string { return "(?P<r" + strconv.Itoa(n) + ">)" }

// grammar is the context-free grammar whose root matches the regular expression root, the
// placeholders in it and in the rules' bodies standing for the rules.
func (rs *schemaRules) grammar(root string) (*cfg, error) {
	b := &grammarBuilder{index: map[string]int32{}, refAt: map[int32]int{}, defAt: map[int32]int{},
		setIx: map[byteSet]int32{}, shared: map[string]int32{}}
	for _, name := range rs.names {
		r, err := b.newRule(name)
		if err != nil {
			return nil, err
		}
		b.user[r] = true // errors name it as the schema's
	}
	top, err := b.newRule("the schema")
	if err != nil {
		return nil, err
	}
	b.user[top] = true
	for r, body := range append(rs.bodies, root) {
		b.cur = b.names[r]
		re, err := parseRegex(body)
		if err != nil {
			return nil, err
		}
		var alts []gseq
		subs := []*syntax.Regexp{re}
		if re.Op == syntax.OpAlternate {
			subs = re.Sub
		}
		for _, sub := range subs {
			seq, err := b.fromRegex(sub, len(rs.names))
			if err != nil {
				return nil, err
			}
			alts = append(alts, seq)
		}
		if err := b.define(int32(r), alts...); err != nil {
			return nil, err
		}
	}
	// A $ref every instance of which contains another has no instance at all: refused, as
	// the regular path refuses any subschema that matches nothing (an optional one too).
	productive := b.productive()
	for r, name := range rs.names {
		if !productive[r] {
			return nil, fmt.Errorf("conflicting schema: the recursive schema has no finite instance: every instance of $ref %q contains another one", name)
		}
	}
	return b.finish(top)
}

// fromRegex is the grammar sequence matching the regular expression re (as the walk writes
// them: no anchors), its placeholders (?P<rN>) references to rules N below rules.
func (b *grammarBuilder) fromRegex(re *syntax.Regexp, rules int) (gseq, error) {
	switch re.Op {
	case syntax.OpEmptyMatch:
		return gseq{}, nil
	case syntax.OpNoMatch:
		return b.generated() // a rule without alternatives: never productive
	case syntax.OpLiteral:
		var seq gseq
		for _, r := range re.Rune {
			if re.Flags&syntax.FoldCase != 0 {
				class, err := b.runeClass(foldRanges(r))
				if err != nil {
					return nil, err
				}
				seq = append(seq, class...)
				continue
			}
			var buf [utf8.UTFMax]byte
			for _, c := range buf[:utf8.EncodeRune(buf[:], r)] {
				var s byteSet
				s.addRange(c, c)
				seq = append(seq, elem{op: opTerm, arg: b.set(s)})
			}
		}
		return seq, nil
	case syntax.OpCharClass:
		return b.runeClass(re.Rune)
	case syntax.OpAnyChar:
		return b.runeClass([]rune{0, unicode.MaxRune})
	case syntax.OpAnyCharNotNL:
		return b.runeClass([]rune{0, '\n' - 1, '\n' + 1, unicode.MaxRune})
	case syntax.OpCapture:
		if n, err := strconv.Atoi(strings.TrimPrefix(re.Name, "r")); err == nil && strings.HasPrefix(re.Name, "r") && n >= 0 && n < rules {
			return gseq{{op: opRef, arg: int32(n)}}, nil
		}
		return b.fromRegex(re.Sub[0], rules)
	case syntax.OpConcat:
		var seq gseq
		for _, sub := range re.Sub {
			s, err := b.fromRegex(sub, rules)
			if err != nil {
				return nil, err
			}
			seq = append(seq, s...)
		}
		return seq, nil
	case syntax.OpAlternate:
		alts := make([]gseq, len(re.Sub))
		for i, sub := range re.Sub {
			s, err := b.fromRegex(sub, rules)
			if err != nil {
				return nil, err
			}
			alts[i] = s
		}
		return b.generated(alts...)
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat:
		lo, hi := re.Min, re.Max
		switch re.Op {
		case syntax.OpStar:
			lo, hi = 0, -1
		case syntax.OpPlus:
			lo, hi = 1, -1
		case syntax.OpQuest:
			lo, hi = 0, 1
		}
		x, err := b.fromRegex(re.Sub[0], rules)
		if err != nil {
			return nil, err
		}
		return b.repeatSeq(x, lo, hi)
	}
	return nil, &UnsupportedError{What: re.Op.String(), Msg: fmt.Sprintf("regular expression operator %v is not supported in a grammar", re.Op)}
}

// altsKey is a generated rule's alternatives as a key: equal keys, equal rules.
func altsKey(alts []gseq) string {
	var buf []byte
	for _, a := range alts {
		for _, e := range a {
			buf = append(buf, e.op)
			buf = binary.LittleEndian.AppendUint32(buf, uint32(e.arg))
		}
		buf = append(buf, opEnd)
	}
	return string(buf)
}
