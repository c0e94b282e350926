package structured

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file parses the grammar dialect of llama.cpp (GBNF) and xgrammar (EBNF) into a
// context-free grammar over bytes:
//
//	root   ::= expr                 # a rule; the output must match rule root
//	expr   ::= term ([-+] term)*    # sequences, alternation |, grouping ( )
//	term   ::= [0-9]+ | "(" expr ")"
//	word   ::= [^ "\\\n]{1,8}       # classes (negated, ranges, escapes), x{m} x{m,} x{m,n}
//	quoted ::= "\"" [a-z]* "\""     # literals with \n \t \r \\ \" \xHH \uHHHH \UHHHHHHHH
//
// `*` `+` `?` repeat the item before them, `.` is any character, `#` starts a comment. Rule
// names are letters, digits, `_` and `-`; a rule may span lines (the next `name ::=` starts
// the next rule). Characters are Unicode code points, matched as their UTF-8 bytes (so a token
// may end inside one). Left recursion (`expr ::= expr "+" term`) is refused naming the rule:
// the pushdown recognizer (pda.go) expands rules top down, and every left-recursive rule has a
// right-recursive or repetition form. The sizes a grammar may reach are bounded by the limits
// in automaton.go (MaxSpecBytes, MaxGrammarRules, MaxGrammarElems, MaxGrammarNesting,
// MaxGrammarRepeat), checked while parsing, before any generation.

// GrammarError is a grammar that does not parse or does not make sense, at a line and column
// (1-based, columns in bytes).
type GrammarError struct {
	Line, Col int
	Msg       string
}

func (e *GrammarError) Error() string {
	return fmt.Sprintf("grammar line %d:%d: %s", e.Line, e.Col, e.Msg)
}

// gseq is a sequence of grammar elements; a rule is a list of alternative sequences.
type gseq []elem

const (
	opTerm uint8 = iota // matches one byte in sets[arg]
	opRef               // matches rule arg
	opEnd               // ends an alternative
)

// elem is one element of a flattened grammar.
type elem struct {
	op  uint8
	arg int32
}

// byteSet is a set of bytes (bit b%64 of word b/64).
type byteSet [4]uint64

func (s *byteSet) has(b byte) bool { return s[b/64]>>(b%64)&1 != 0 }
func (s *byteSet) addRange(lo, hi byte) {
	for b := int(lo); b <= int(hi); b++ {
		s[b/64] |= 1 << (b % 64)
	}
}

// grammarBuilder collects rules while the text is parsed.
type grammarBuilder struct {
	src   string
	pos   int
	rules [][]gseq // by rule index; nil until defined
	names []string // user rule names; generated rules are named after the rule they serve
	user  []bool   // defined by the text (not generated)
	index map[string]int32
	refAt map[int32]int // where a rule was first referenced (for "undefined rule" errors)
	defAt map[int32]int // where a user rule was defined
	sets  []byteSet
	setIx map[byteSet]int32
	elems int    // elements so far, against MaxGrammarElems
	cur   string // the user rule being parsed, which generated rules are named after
	// shared, set for a schema's grammar (schemacfg.go), makes equal generated rules one (it
	// repeats the same string, number and value rules many times): keyed by altsKey, and
	// stars by 3 and their item's key.
	shared map[string]int32
}

func (b *grammarBuilder) errAt(pos int, format string, args ...any) error {
	line, col := 1, 1
	for i := 0; i < pos && i < len(b.src); i++ {
		if b.src[i] == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return &GrammarError{Line: line, Col: col, Msg: fmt.Sprintf(format, args...)}
}

// newRule adds a rule (generated when name is empty) and returns its index.
func (b *grammarBuilder) newRule(name string) (int32, error) {
	if len(b.rules) >= MaxGrammarRules {
		return 0, &LimitError{Limit: "MaxGrammarRules", Msg: fmt.Sprintf("the grammar needs more than %d rules (repetitions and groups count)", MaxGrammarRules)}
	}
	if name == "" {
		name = b.cur
	}
	b.rules = append(b.rules, nil)
	b.names = append(b.names, name)
	b.user = append(b.user, false)
	return int32(len(b.rules) - 1), nil
}

// define sets a generated rule's alternatives.
func (b *grammarBuilder) define(r int32, alts ...gseq) error {
	for _, a := range alts {
		b.elems += len(a) + 1
	}
	if b.elems > MaxGrammarElems {
		return &LimitError{Limit: "MaxGrammarElems", Msg: fmt.Sprintf("the grammar expands to more than %d elements", MaxGrammarElems)}
	}
	b.rules[r] = alts
	return nil
}

// generated is a new rule with alts, as a one-element sequence referring to it.
func (b *grammarBuilder) generated(alts ...gseq) (gseq, error) {
	var key string
	if b.shared != nil {
		key = altsKey(alts)
		if r, ok := b.shared[key]; ok {
			return gseq{{op: opRef, arg: r}}, nil
		}
	}
	r, err := b.newRule("")
	if err != nil {
		return nil, err
	}
	if b.shared != nil {
		b.shared[key] = r
	}
	return gseq{{op: opRef, arg: r}}, b.define(r, alts...)
}

func (b *grammarBuilder) ruleRef(name string, at int) (int32, error) {
	if r, ok := b.index[name]; ok {
		return r, nil
	}
	r, err := b.newRule(name)
	if err != nil {
		return 0, err
	}
	b.index[name] = r
	b.refAt[r] = at
	return r, nil
}

func (b *grammarBuilder) set(s byteSet) int32 {
	if i, ok := b.setIx[s]; ok {
		return i
	}
	b.sets = append(b.sets, s)
	b.setIx[s] = int32(len(b.sets) - 1)
	return int32(len(b.sets) - 1)
}

// skipSpace skips blanks, newlines and comments.
func (b *grammarBuilder) skipSpace() {
	for b.pos < len(b.src) {
		switch c := b.src[b.pos]; {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			b.pos++
		case c == '#':
			for b.pos < len(b.src) && b.src[b.pos] != '\n' {
				b.pos++
			}
		default:
			return
		}
	}
}

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// name reads a rule name at pos ("" when there is none).
func (b *grammarBuilder) name() string {
	start := b.pos
	for b.pos < len(b.src) && isNameByte(b.src[b.pos]) {
		b.pos++
	}
	return b.src[start:b.pos]
}

// atRuleStart reports whether a rule definition (name ::=) starts at pos.
func (b *grammarBuilder) atRuleStart() bool {
	save := b.pos
	defer func() { b.pos = save }()
	if b.name() == "" {
		return false
	}
	b.skipSpace()
	return strings.HasPrefix(b.src[b.pos:], "::=")
}

// parseGrammar parses a grammar's text into its flattened form, checked: every rule
// referenced is defined, root exists and can match something, no rule is left-recursive.
func parseGrammar(src string) (*cfg, error) {
	if len(src) > MaxSpecBytes {
		return nil, &LimitError{Limit: "MaxSpecBytes", Msg: fmt.Sprintf("the grammar has %d bytes, more than %d", len(src), MaxSpecBytes)}
	}
	b := &grammarBuilder{src: src, index: map[string]int32{}, refAt: map[int32]int{}, defAt: map[int32]int{}, setIx: map[byteSet]int32{}}
	b.skipSpace()
	if b.pos == len(src) {
		return nil, b.errAt(b.pos, "the grammar is empty (it needs a rule root ::= ...)")
	}
	for b.skipSpace(); b.pos < len(src); b.skipSpace() {
		at := b.pos
		name := b.name()
		if name == "" {
			return nil, b.errAt(b.pos, "expected a rule name, found %q", b.peekText())
		}
		b.skipSpace()
		if !strings.HasPrefix(src[b.pos:], "::=") {
			return nil, b.errAt(b.pos, "expected ::= after rule name %q", name)
		}
		b.pos += 3
		r, err := b.ruleRef(name, at)
		if err != nil {
			return nil, err
		}
		if b.user[r] {
			return nil, b.errAt(at, "rule %q is defined twice (first at %s)", name, b.where(b.defAt[r]))
		}
		b.user[r] = true
		b.defAt[r] = at
		b.cur = name
		alts, err := b.alternatives(0)
		if err != nil {
			return nil, err
		}
		if b.pos < len(src) && !b.atRuleStart() {
			return nil, b.errAt(b.pos, "unexpected %q", b.peekText())
		}
		if err := b.define(r, alts...); err != nil {
			return nil, err
		}
	}
	var undefined []int32
	for _, r := range b.index {
		if !b.user[r] {
			undefined = append(undefined, r)
		}
	}
	if len(undefined) > 0 {
		r := slices.MinFunc(undefined, func(x, y int32) int { return cmp.Compare(b.refAt[x], b.refAt[y]) })
		return nil, b.errAt(b.refAt[r], "rule %q is used but not defined", b.names[r])
	}
	root, ok := b.index["root"]
	if !ok {
		return nil, b.errAt(0, "the grammar has no rule root (the rule the output must match)")
	}
	return b.finish(root)
}

// where is pos as line:col.
func (b *grammarBuilder) where(pos int) string {
	e := b.errAt(pos, "").(*GrammarError)
	return fmt.Sprintf("%d:%d", e.Line, e.Col)
}

func (b *grammarBuilder) peekText() string {
	rest := b.src[b.pos:]
	if len(rest) > 12 {
		rest = rest[:12]
	}
	return rest
}

// alternatives parses seq ("|" seq)* up to a ")" (depth > 0), the next rule or the end.
func (b *grammarBuilder) alternatives(depth int) ([]gseq, error) {
	if depth > MaxGrammarNesting {
		return nil, &LimitError{Limit: "MaxGrammarNesting", Msg: fmt.Sprintf("the grammar nests groups more than %d deep", MaxGrammarNesting)}
	}
	var alts []gseq
	for {
		seq, err := b.sequence(depth)
		if err != nil {
			return nil, err
		}
		alts = append(alts, seq)
		b.skipSpace()
		if b.pos < len(b.src) && b.src[b.pos] == '|' {
			b.pos++
			continue
		}
		return alts, nil
	}
}

// sequence parses items up to "|", ")", the next rule or the end.
func (b *grammarBuilder) sequence(depth int) (gseq, error) {
	var seq gseq
	for {
		b.skipSpace()
		if b.pos == len(b.src) || b.src[b.pos] == '|' || b.src[b.pos] == ')' || b.atRuleStart() {
			return seq, nil
		}
		item, err := b.item(depth)
		if err != nil {
			return nil, err
		}
		seq = append(seq, item...)
		if len(seq) > MaxGrammarElems {
			return nil, &LimitError{Limit: "MaxGrammarElems", Msg: fmt.Sprintf("the grammar expands to more than %d elements", MaxGrammarElems)}
		}
	}
}

// item parses one primary and the repetition operators after it.
func (b *grammarBuilder) item(depth int) (gseq, error) {
	start := b.pos
	var seq gseq
	var err error
	switch c := b.src[b.pos]; {
	case c == '"':
		seq, err = b.literal()
	case c == '[':
		seq, err = b.class()
	case c == '.':
		b.pos++
		seq, err = b.runeClass([]rune{0, unicode.MaxRune})
	case c == '(':
		b.pos++
		var alts []gseq
		if alts, err = b.alternatives(depth + 1); err != nil {
			return nil, err
		}
		if b.pos == len(b.src) || b.src[b.pos] != ')' {
			return nil, b.errAt(start, "unclosed (")
		}
		b.pos++
		if len(alts) == 1 {
			seq = alts[0]
		} else {
			seq, err = b.generated(alts...)
		}
	case isNameByte(c):
		at := b.pos
		var r int32
		if r, err = b.ruleRef(b.name(), at); err == nil {
			seq = gseq{{op: opRef, arg: r}}
		}
	default:
		return nil, b.errAt(b.pos, "unexpected %q", b.peekText())
	}
	if err != nil {
		return nil, err
	}
	for b.pos < len(b.src) {
		op := b.src[b.pos]
		if op != '*' && op != '+' && op != '?' && op != '{' {
			return seq, nil
		}
		if seq, err = b.repeat(seq, start); err != nil {
			return nil, err
		}
	}
	return seq, nil
}

// one is seq as a single element (a rule of it when longer), to repeat.
func (b *grammarBuilder) one(seq gseq) (elem, error) {
	if len(seq) == 1 {
		return seq[0], nil
	}
	g, err := b.generated(seq)
	if err != nil {
		return elem{}, err
	}
	return g[0], nil
}

// repeat applies the operator at pos to seq: x? x* x+ x{m} x{m,} x{m,n}. Repetitions become
// right-recursive rules (x* is S ::= x S | ""), so a repeat's size is linear in its bounds,
// never in the product of nested bounds.
func (b *grammarBuilder) repeat(seq gseq, start int) (gseq, error) {
	op := b.src[b.pos]
	b.pos++
	var lo, hi int
	switch op {
	case '?':
		lo, hi = 0, 1
	case '*':
		lo, hi = 0, -1
	case '+':
		lo, hi = 1, -1
	default: // {m}, {m,}, {m,n}
		var err error
		if lo, hi, err = b.bounds(start); err != nil {
			return nil, err
		}
	}
	return b.repeatSeq(seq, lo, hi)
}

// repeatSeq is seq repeated lo to hi times (hi -1: unbounded): lo copies, then a
// right-recursive star (S ::= x S | "") or a chain of hi-lo optional tails.
func (b *grammarBuilder) repeatSeq(seq gseq, lo, hi int) (gseq, error) {
	x, err := b.one(seq)
	if err != nil {
		return nil, err
	}
	star := func() (gseq, error) {
		var key string
		if b.shared != nil {
			key = "\x03" + altsKey([]gseq{{x}})
			if r, ok := b.shared[key]; ok {
				return gseq{{op: opRef, arg: r}}, nil
			}
		}
		r, err := b.newRule("")
		if err != nil {
			return nil, err
		}
		if b.shared != nil {
			b.shared[key] = r
		}
		return gseq{{op: opRef, arg: r}}, b.define(r, gseq{x, {op: opRef, arg: r}}, gseq{})
	}
	out := make(gseq, 0, lo+1)
	for range lo {
		out = append(out, x)
	}
	if hi < 0 {
		s, err := star()
		return append(out, s...), err
	}
	// The optional tail: O1 ::= x | "", Ok ::= x O(k-1) | "".
	var tail gseq
	for range hi - lo {
		alt := append(gseq{x}, tail...)
		if tail, err = b.generated(alt, gseq{}); err != nil {
			return nil, err
		}
	}
	return append(out, tail...), nil
}

// bounds reads m}, m,} or m,n} after a "{" (hi -1 when unbounded).
func (b *grammarBuilder) bounds(start int) (lo, hi int, err error) {
	num := func() (int, bool) {
		b.skipSpace()
		s := b.pos
		for b.pos < len(b.src) && b.src[b.pos] >= '0' && b.src[b.pos] <= '9' {
			b.pos++
		}
		if s == b.pos {
			return 0, false
		}
		n, err := strconv.Atoi(b.src[s:b.pos])
		if err != nil || n > MaxGrammarRepeat {
			return MaxGrammarRepeat + 1, true
		}
		return n, true
	}
	at := b.pos
	lo, ok := num()
	if !ok {
		return 0, 0, b.errAt(at, "expected a repetition count after {")
	}
	hi = lo
	b.skipSpace()
	if b.pos < len(b.src) && b.src[b.pos] == ',' {
		b.pos++
		if hi, ok = num(); !ok {
			hi = -1
		}
		b.skipSpace()
	}
	if b.pos == len(b.src) || b.src[b.pos] != '}' {
		return 0, 0, b.errAt(at, "expected } to close the repetition")
	}
	b.pos++
	if lo > MaxGrammarRepeat || hi > MaxGrammarRepeat {
		return 0, 0, &LimitError{Limit: "MaxGrammarRepeat", Msg: fmt.Sprintf("grammar line %s: repetition bounds above %d", b.where(start), MaxGrammarRepeat)}
	}
	if hi >= 0 && hi < lo {
		return 0, 0, b.errAt(at, "repetition {%d,%d} has its maximum below its minimum", lo, hi)
	}
	return lo, hi, nil
}

// escape reads one escape sequence after a backslash at pos, as a code point.
func (b *grammarBuilder) escape() (rune, error) {
	at := b.pos
	b.pos++ // the backslash
	if b.pos == len(b.src) {
		return 0, b.errAt(at, "unfinished escape")
	}
	c := b.src[b.pos]
	b.pos++
	hex := 0
	switch c {
	case 'n':
		return '\n', nil
	case 'r':
		return '\r', nil
	case 't':
		return '\t', nil
	case '0':
		return 0, nil
	case '\\', '"', '[', ']', '-', '^', '\'', '/', '.', '*', '+', '?', '(', ')', '{', '}', '|':
		return rune(c), nil
	case 'x':
		hex = 2
	case 'u':
		hex = 4
	case 'U':
		hex = 8
	default:
		return 0, b.errAt(at, "unknown escape \\%c", c)
	}
	if b.pos+hex > len(b.src) {
		return 0, b.errAt(at, "unfinished escape \\%c", c)
	}
	n, err := strconv.ParseUint(b.src[b.pos:b.pos+hex], 16, 32)
	if err != nil || n > unicode.MaxRune || n >= 0xD800 && n <= 0xDFFF {
		return 0, b.errAt(at, "invalid escape %q", b.src[at:b.pos+hex])
	}
	b.pos += hex
	return rune(n), nil
}

// char reads one character of a literal or class: an escape or a UTF-8 encoded code point.
func (b *grammarBuilder) char() (rune, error) {
	if b.src[b.pos] == '\\' {
		return b.escape()
	}
	r, n := utf8.DecodeRuneInString(b.src[b.pos:])
	if r == utf8.RuneError && n <= 1 {
		return 0, b.errAt(b.pos, "invalid UTF-8")
	}
	b.pos += n
	return r, nil
}

// literal reads a "..." string: its characters' UTF-8 bytes in sequence.
func (b *grammarBuilder) literal() (gseq, error) {
	start := b.pos
	b.pos++
	var seq gseq
	for {
		if b.pos >= len(b.src) || b.src[b.pos] == '\n' {
			return nil, b.errAt(start, "unclosed string literal")
		}
		if b.src[b.pos] == '"' {
			b.pos++
			return seq, nil
		}
		r, err := b.char()
		if err != nil {
			return nil, err
		}
		var buf [4]byte
		for _, c := range buf[:utf8.EncodeRune(buf[:], r)] {
			var s byteSet
			s.addRange(c, c)
			seq = append(seq, elem{op: opTerm, arg: b.set(s)})
		}
		if len(seq) > MaxGrammarElems {
			return nil, &LimitError{Limit: "MaxGrammarElems", Msg: fmt.Sprintf("the grammar expands to more than %d elements", MaxGrammarElems)}
		}
	}
}

// class reads a [...] or [^...] character class.
func (b *grammarBuilder) class() (gseq, error) {
	start := b.pos
	b.pos++
	negate := b.pos < len(b.src) && b.src[b.pos] == '^'
	if negate {
		b.pos++
	}
	var ranges []rune
	for {
		if b.pos >= len(b.src) {
			return nil, b.errAt(start, "unclosed character class")
		}
		if b.src[b.pos] == ']' {
			b.pos++
			break
		}
		lo, err := b.char()
		if err != nil {
			return nil, err
		}
		hi := lo
		if b.pos+1 < len(b.src) && b.src[b.pos] == '-' && b.src[b.pos+1] != ']' {
			b.pos++
			if hi, err = b.char(); err != nil {
				return nil, err
			}
			if hi < lo {
				return nil, b.errAt(start, "character range %q-%q is reversed", lo, hi)
			}
		}
		ranges = append(ranges, lo, hi)
	}
	if negate {
		ranges = complementRanges(ranges)
	}
	if len(ranges) == 0 {
		return nil, b.errAt(start, "the character class matches nothing")
	}
	return b.runeClass(ranges)
}

// complementRanges is the code points outside the pairs [lo, hi].
func complementRanges(ranges []rune) []rune {
	pairs := make([][2]rune, 0, len(ranges)/2)
	for i := 0; i+1 < len(ranges); i += 2 {
		pairs = append(pairs, [2]rune{ranges[i], ranges[i+1]})
	}
	slices.SortFunc(pairs, func(a, b [2]rune) int { return cmp.Compare(a[0], b[0]) })
	var out []rune
	next := rune(0) // the first code point not yet known to be covered
	for _, p := range pairs {
		if p[0] > next {
			out = append(out, next, p[0]-1)
		}
		next = max(next, p[1]+1)
	}
	if next <= unicode.MaxRune {
		out = append(out, next, unicode.MaxRune)
	}
	return out
}

// runeClass is one character in the pairs [lo, hi], as bytes: one element when every
// character is one byte, else a rule whose alternatives are the UTF-8 byte-range sequences
// (the ASCII ones merged into one set).
func (b *grammarBuilder) runeClass(ranges []rune) (gseq, error) {
	var ascii byteSet
	hasASCII := false
	var alts []gseq
	for i := 0; i+1 < len(ranges); i += 2 {
		utf8Sequences(ranges[i], ranges[i+1], func(seq []byteRange) {
			if len(seq) == 1 {
				ascii.addRange(seq[0].lo, seq[0].hi)
				hasASCII = true
				return
			}
			alt := make(gseq, len(seq))
			for j, r := range seq {
				var s byteSet
				s.addRange(r.lo, r.hi)
				alt[j] = elem{op: opTerm, arg: b.set(s)}
			}
			alts = append(alts, alt)
		})
	}
	if hasASCII {
		one := gseq{{op: opTerm, arg: b.set(ascii)}}
		if len(alts) == 0 {
			return one, nil
		}
		alts = append(alts, one)
	}
	return b.generated(alts...)
}

// productive reports, per rule, whether it matches some finite text: it has an alternative
// made of terminals and productive rules.
func (b *grammarBuilder) productive() []bool {
	productive := make([]bool, len(b.rules))
	altOK := func(a gseq) bool {
		for _, e := range a {
			if e.op == opRef && !productive[e.arg] {
				return false
			}
		}
		return true
	}
	for changed := true; changed; {
		changed = false
		for r, alts := range b.rules {
			if productive[r] {
				continue
			}
			for _, a := range alts {
				if altOK(a) {
					productive[r], changed = true, true
					break
				}
			}
		}
	}
	return productive
}

// finish checks the rules and flattens them: alternatives that can never finish (they
// refer to a rule that matches no finite text) are dropped so that every parser thread can
// complete, and left recursion is refused.
func (b *grammarBuilder) finish(root int32) (*cfg, error) {
	n := len(b.rules)
	productive := b.productive()
	if !productive[root] {
		return nil, b.errAt(b.defAt[root], "rule root matches no finite text")
	}
	altOK := func(a gseq) bool {
		for _, e := range a {
			if e.op == opRef && !productive[e.arg] {
				return false
			}
		}
		return true
	}
	for r, alts := range b.rules {
		kept := alts[:0:0]
		for _, a := range alts {
			if altOK(a) {
				kept = append(kept, a)
			}
		}
		b.rules[r] = kept
	}
	// Nullable rules (matching ""), then the left-corner graph: r -> s when an alternative
	// of r can start with s. A cycle is left recursion.
	nullable := make([]bool, n)
	for changed := true; changed; {
		changed = false
		for r, alts := range b.rules {
			if nullable[r] {
				continue
			}
			for _, a := range alts {
				all := true
				for _, e := range a {
					if e.op != opRef || !nullable[e.arg] {
						all = false
						break
					}
				}
				if all {
					nullable[r], changed = true, true
					break
				}
			}
		}
	}
	const (
		unvisited = iota
		onPath
		doneVisit
	)
	mark := make([]uint8, n)
	var visit func(r int32) error
	visit = func(r int32) error {
		mark[r] = onPath
		for _, a := range b.rules[r] {
			for _, e := range a {
				if e.op != opRef {
					break
				}
				switch mark[e.arg] {
				case onPath:
					if !b.user[e.arg] {
						return &UnsupportedError{What: "left recursion", Msg: fmt.Sprintf("grammar rule %q repeats an item that can match empty text (left recursion), which is not supported", b.names[e.arg])}
					}
					if b.shared != nil { // a schema's rule (schemacfg.go), named by its $ref
						return &UnsupportedError{What: "$ref", Msg: fmt.Sprintf("recursive schema $ref %q reaches itself before any character of JSON (an anyOf branch that is the $ref itself), which is not supported", b.names[e.arg])}
					}
					return &UnsupportedError{What: "left recursion", Msg: fmt.Sprintf("grammar rule %q is left-recursive (it can reach itself without matching a character), which is not supported: write it with repetition, e.g. expr ::= term (\"+\" term)*", b.names[e.arg])}
				case unvisited:
					if err := visit(e.arg); err != nil {
						return err
					}
				}
				if !nullable[e.arg] {
					break
				}
			}
		}
		mark[r] = doneVisit
		return nil
	}
	for r := range n {
		if mark[r] == unvisited {
			// Depth is bounded by the rule count (MaxGrammarRules).
			if err := visit(int32(r)); err != nil {
				return nil, err
			}
		}
	}
	g := &cfg{alts: make([][]int32, n), sets: b.sets, root: root}
	for r, alts := range b.rules {
		for _, a := range alts {
			g.alts[r] = append(g.alts[r], int32(len(g.elems)))
			g.elems = append(g.elems, a...)
			g.elems = append(g.elems, elem{op: opEnd})
		}
	}
	return g, nil
}
