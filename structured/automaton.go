// Package structured compiles output constraints (a JSON schema, any JSON object, a regular
// expression, a choice of strings) into a byte-level DFA, and the DFA into per-state masks
// over a tokenizer's vocabulary: the tokens whose bytes keep the automaton alive. The engine
// gives a constrained row its state's mask (model.SampleRow.Allowed), so the one sampler can
// only pick tokens that keep the output completable, and EOS is allowed exactly in accepting
// states.
//
// Everything becomes a regular expression first (JSON schemas as Outlines and vLLM do, with
// nesting unrolled to a bounded depth), then a Thompson NFA over bytes (UTF-8 ranges split into
// byte sequences, so a token may end inside a character), then a DFA built eagerly by subset
// construction and trimmed to the states from which a match is still reachable. The DFA is
// built before any generation starts, so every cost a client can cause (regex size, NFA and
// DFA states) is bounded up front by the limits below; masks are computed lazily per state and
// cached with the grammar.
//
// Context-free grammars (GBNF / EBNF, ebnf.go) cannot become a DFA (they count nesting): they
// are parsed into rules over byte sets and run by a pushdown recognizer (pda.go) whose state is
// a set of parser threads with persistent stacks. A recursive JSON schema is one too: the
// schema walk writes each $ref target's regular expression as a rule, and those become
// grammar rules (schemacfg.go). Their masks walk the same sorted vocabulary
// against the threads and are cached by the stacks as deep as the walk read them. Either way
// an output follows its constraint through one Matcher, which is all the engine sees.
package structured

import (
	"errors"
	"fmt"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on what one constraint may cost. A constraint over a limit is refused before any
// generation (LimitError names the limit).
const (
	MaxSpecBytes   = 64 << 10 // schema, regex or choices as sent
	MaxRegexBytes  = 1 << 20  // the regular expression a schema expands to
	MaxNFAStates   = 200_000
	MaxDFAStates   = 10_000
	MaxSchemaDepth = 12 // nesting of a JSON schema (objects, arrays, anyOf, $ref)
	MaxChoices     = 1_000

	// Context-free grammars (EBNF): their text is bounded by MaxSpecBytes.
	MaxGrammarRules   = 4_000   // rules, counting those repetitions and groups expand into
	MaxGrammarElems   = 200_000 // elements of all rules' alternatives after that expansion
	MaxGrammarNesting = 64      // groups nested in groups
	MaxGrammarRepeat  = 1_000   // the bounds m and n of x{m,n}
	// MaxParserThreads bounds the parser threads one byte of output may visit (an ambiguous
	// grammar's threads multiply): a byte past it is treated as leaving the grammar.
	MaxParserThreads = 20_000
	// MaxParserNodes bounds the stack nodes one output's parser holds (its threads' stacks,
	// shared): an output past it leaves the grammar.
	MaxParserNodes = 200_000
	// MaxParserDepth bounds a parser thread's stack: a thread that would push past it ends,
	// so masks leave out the tokens that would nest an output deeper (a level of a recursive
	// JSON schema's output takes one to three entries), and it cannot be produced.
	MaxParserDepth = 100_000
	// MaxMaskWork bounds the thread visits one token mask may cost (the walk over the
	// vocabulary; about a nanosecond each, a JSON grammar's string state on a 128k vocabulary
	// takes 6.5M): tokens past it are not allowed in that state. An ambiguous grammar whose
	// threads multiply is bounded by it and MaxParserThreads at run time, not refused.
	MaxMaskWork = 32_000_000
)

// LimitError is a constraint over one of the limits.
type LimitError struct {
	Limit string // the limit's name, e.g. "MaxDFAStates"
	Msg   string
}

func (e *LimitError) Error() string { return e.Msg + " (limit " + e.Limit + ")" }

// UnsupportedError is a constraint that uses something this package cannot enforce (a schema
// keyword, a regex operator). It is refused, never ignored.
type UnsupportedError struct {
	What string // the keyword or operator
	Msg  string
}

func (e *UnsupportedError) Error() string { return e.Msg }

// nfa is a Thompson NFA over bytes: a state either consumes one byte in [lo, hi] and moves to
// next, or has epsilon moves, or accepts.
type nfa struct {
	states []nstate
}

type nstate struct {
	lo, hi byte
	byteOp bool
	next   int
	eps    []int
	match  bool
}

func (n *nfa) add(s nstate) (int, error) {
	if len(n.states) >= MaxNFAStates {
		return 0, &LimitError{Limit: "MaxNFAStates", Msg: fmt.Sprintf("the constraint needs more than %d automaton states", MaxNFAStates)}
	}
	n.states = append(n.states, s)
	return len(n.states) - 1, nil
}

// compileRegex parses a regular expression (RE2 syntax, matched against the whole output) into
// a byte NFA; it returns the NFA and its start state.
func compileRegex(expr string) (*nfa, int, error) {
	re, err := parseRegex(expr)
	if err != nil {
		return nil, 0, err
	}
	re = stripAnchors(re.Simplify(), true, true)
	n := &nfa{}
	match, _ := n.add(nstate{match: true})
	start, err := n.build(re, match)
	if err != nil {
		return nil, 0, err
	}
	return n, start, nil
}

// parseRegex parses a regular expression (RE2 syntax) within MaxRegexBytes and RE2's limits.
func parseRegex(expr string) (*syntax.Regexp, error) {
	if len(expr) > MaxRegexBytes {
		return nil, &LimitError{Limit: "MaxRegexBytes", Msg: fmt.Sprintf("the constraint's regular expression has %d bytes, more than %d", len(expr), MaxRegexBytes)}
	}
	re, err := syntax.Parse(expr, syntax.Perl)
	var se *syntax.Error
	if errors.As(err, &se) && (se.Code == syntax.ErrInvalidRepeatSize || se.Code == syntax.ErrLarge || se.Code == syntax.ErrNestingDepth) {
		return nil, &LimitError{Limit: "MaxRepeat", Msg: fmt.Sprintf("the constraint's repeats or nesting exceed RE2's limits (nested repeat counts multiply to at most 1000): %v", err)}
	}
	if err != nil {
		return nil, fmt.Errorf("invalid regular expression: %w", err)
	}
	return re, nil
}

// build compiles re so that it continues to state next, returning its start state.
func (n *nfa) build(re *syntax.Regexp, next int) (int, error) {
	switch re.Op {
	case syntax.OpEmptyMatch:
		return n.add(nstate{eps: []int{next}})
	case syntax.OpNoMatch:
		return n.add(nstate{})
	case syntax.OpLiteral:
		s := next
		for i := len(re.Rune) - 1; i >= 0; i-- {
			r := re.Rune[i]
			ranges := []rune{r, r}
			if re.Flags&syntax.FoldCase != 0 {
				ranges = foldRanges(r)
			}
			var err error
			if s, err = n.runeRanges(ranges, s); err != nil {
				return 0, err
			}
		}
		return s, nil
	case syntax.OpCharClass:
		return n.runeRanges(re.Rune, next)
	case syntax.OpAnyCharNotNL:
		return n.runeRanges([]rune{0, '\n' - 1, '\n' + 1, unicode.MaxRune}, next)
	case syntax.OpAnyChar:
		return n.runeRanges([]rune{0, unicode.MaxRune}, next)
	case syntax.OpCapture:
		return n.build(re.Sub[0], next)
	case syntax.OpConcat:
		s := next
		for i := len(re.Sub) - 1; i >= 0; i-- {
			var err error
			if s, err = n.build(re.Sub[i], s); err != nil {
				return 0, err
			}
		}
		return s, nil
	case syntax.OpAlternate:
		var eps []int
		for _, sub := range re.Sub {
			s, err := n.build(sub, next)
			if err != nil {
				return 0, err
			}
			eps = append(eps, s)
		}
		return n.add(nstate{eps: eps})
	case syntax.OpStar, syntax.OpPlus:
		loop, err := n.add(nstate{})
		if err != nil {
			return 0, err
		}
		body, err := n.build(re.Sub[0], loop)
		if err != nil {
			return 0, err
		}
		n.states[loop].eps = []int{body, next}
		if re.Op == syntax.OpPlus {
			return body, nil
		}
		return loop, nil
	case syntax.OpQuest:
		body, err := n.build(re.Sub[0], next)
		if err != nil {
			return 0, err
		}
		return n.add(nstate{eps: []int{body, next}})
	case syntax.OpRepeat:
		// Simplify leaves only x{0} style repeats of empty results here.
		if re.Max == 0 {
			return n.add(nstate{eps: []int{next}})
		}
	}
	return 0, &UnsupportedError{What: re.Op.String(), Msg: fmt.Sprintf("regular expression operator %q is not supported in constraints", re.String())}
}

// stripAnchors removes the ^ (\A) that start and the $ (\z) that end the expression, in
// every branch: the whole output is matched, so they are no-ops there. Anchors left elsewhere
// are refused by build.
func stripAnchors(re *syntax.Regexp, atStart, atEnd bool) *syntax.Regexp {
	switch re.Op {
	case syntax.OpBeginText:
		if atStart {
			return &syntax.Regexp{Op: syntax.OpEmptyMatch}
		}
	case syntax.OpEndText:
		if atEnd {
			return &syntax.Regexp{Op: syntax.OpEmptyMatch}
		}
	case syntax.OpCapture:
		re.Sub[0] = stripAnchors(re.Sub[0], atStart, atEnd)
	case syntax.OpAlternate:
		for i := range re.Sub {
			re.Sub[i] = stripAnchors(re.Sub[i], atStart, atEnd)
		}
	case syntax.OpConcat:
		last := len(re.Sub) - 1
		for i := range re.Sub {
			re.Sub[i] = stripAnchors(re.Sub[i], atStart && i == 0, atEnd && i == last)
		}
	}
	return re
}

// foldRanges is the case-folding orbit of r as rune ranges.
func foldRanges(r rune) []rune {
	out := []rune{r, r}
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		out = append(out, f, f)
	}
	return out
}

// runeRanges adds states matching one rune in any of the pairs [lo, hi] (UTF-8 encoded).
func (n *nfa) runeRanges(ranges []rune, next int) (int, error) {
	var eps []int
	var err error
	for i := 0; i+1 < len(ranges); i += 2 {
		utf8Sequences(ranges[i], ranges[i+1], func(seq []byteRange) {
			if err != nil {
				return
			}
			s := next
			for j := len(seq) - 1; j >= 0 && err == nil; j-- {
				s, err = n.add(nstate{byteOp: true, lo: seq[j].lo, hi: seq[j].hi, next: s})
			}
			eps = append(eps, s)
		})
		if err != nil {
			return 0, err
		}
	}
	return n.add(nstate{eps: eps})
}

type byteRange struct{ lo, hi byte }

// utf8Sequences calls emit with byte-range sequences whose union is exactly the UTF-8
// encodings of the runes in [lo, hi] (surrogates excluded), the algorithm of Rust's
// regex-syntax utf8 module.
func utf8Sequences(lo, hi rune, emit func([]byteRange)) {
	if lo > hi {
		return
	}
	hi = min(hi, unicode.MaxRune)
	if lo < 0xD800 && hi > 0xDFFF {
		utf8Sequences(lo, 0xD7FF, emit)
		utf8Sequences(0xE000, hi, emit)
		return
	}
	if lo >= 0xD800 && lo <= 0xDFFF {
		lo = 0xE000
	}
	if hi >= 0xD800 && hi <= 0xDFFF {
		hi = 0xD7FF
	}
	if lo > hi {
		return
	}
	for _, b := range []rune{0x7F, 0x7FF, 0xFFFF} {
		if lo <= b && hi > b {
			utf8Sequences(lo, b, emit)
			utf8Sequences(b+1, hi, emit)
			return
		}
	}
	if hi <= 0x7F {
		emit([]byteRange{{byte(lo), byte(hi)}})
		return
	}
	size := utf8.RuneLen(lo)
	for i := 1; i < size; i++ {
		m := rune(1)<<(6*i) - 1
		if lo&^m != hi&^m {
			if lo&m != 0 {
				utf8Sequences(lo, lo|m, emit)
				utf8Sequences((lo|m)+1, hi, emit)
				return
			}
			if hi&m != m {
				utf8Sequences(lo, (hi&^m)-1, emit)
				utf8Sequences(hi&^m, hi, emit)
				return
			}
		}
	}
	var a, b [4]byte
	utf8.EncodeRune(a[:], lo)
	utf8.EncodeRune(b[:], hi)
	seq := make([]byteRange, size)
	for i := range seq {
		seq[i] = byteRange{a[i], b[i]}
	}
	emit(seq)
}

// dfa is the determinised, trimmed automaton: next[s*256+b] is the state after byte b in
// state s, or dead. State 0 is the start.
type dfa struct {
	next   []int32
	accept []bool
}

const dead = -1

func (d *dfa) states() int { return len(d.accept) }

// step returns the state after bytes from s (dead once any byte has no transition).
func (d *dfa) step(s int32, bytes []byte) int32 {
	for _, b := range bytes {
		if s == dead {
			return dead
		}
		s = d.next[int(s)*256+int(b)]
	}
	return s
}

// determinise builds the DFA of n from start by subset construction, at most MaxDFAStates
// states, then trims the states from which no accepting state is reachable.
func determinise(n *nfa, start int) (*dfa, error) {
	closure := func(set []int) []int {
		seen := map[int]bool{}
		stack := slices.Clone(set)
		var out []int
		for len(stack) > 0 {
			s := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if seen[s] {
				continue
			}
			seen[s] = true
			st := &n.states[s]
			if st.byteOp || st.match {
				out = append(out, s)
			}
			stack = append(stack, st.eps...)
		}
		slices.Sort(out)
		return out
	}
	key := func(set []int) string {
		var b strings.Builder
		for _, s := range set {
			b.WriteString(strconv.Itoa(s))
			b.WriteByte(',')
		}
		return b.String()
	}
	d := &dfa{}
	index := map[string]int32{}
	var sets [][]int
	addState := func(set []int) (int32, error) {
		k := key(set)
		if id, ok := index[k]; ok {
			return id, nil
		}
		if len(sets) >= MaxDFAStates {
			return 0, &LimitError{Limit: "MaxDFAStates", Msg: fmt.Sprintf("the constraint needs more than %d automaton states", MaxDFAStates)}
		}
		id := int32(len(sets))
		index[k] = id
		sets = append(sets, set)
		acc := false
		for _, s := range set {
			acc = acc || n.states[s].match
		}
		d.accept = append(d.accept, acc)
		for range 256 {
			d.next = append(d.next, dead)
		}
		return id, nil
	}
	if _, err := addState(closure([]int{start})); err != nil {
		return nil, err
	}
	for i := 0; i < len(sets); i++ {
		// The byte intervals on which the set's transitions are constant.
		cuts := []int{0, 256}
		for _, s := range sets[i] {
			if st := &n.states[s]; st.byteOp {
				cuts = append(cuts, int(st.lo), int(st.hi)+1)
			}
		}
		slices.Sort(cuts)
		cuts = slices.Compact(cuts)
		for c := 0; c+1 < len(cuts); c++ {
			lo := cuts[c]
			var targets []int
			for _, s := range sets[i] {
				if st := &n.states[s]; st.byteOp && int(st.lo) <= lo && lo <= int(st.hi) {
					targets = append(targets, st.next)
				}
			}
			if len(targets) == 0 {
				continue
			}
			id, err := addState(closure(targets))
			if err != nil {
				return nil, err
			}
			for b := lo; b < cuts[c+1]; b++ {
				d.next[i*256+b] = id
			}
		}
	}
	if !d.trim() {
		return nil, fmt.Errorf("the constraint matches nothing")
	}
	return d, nil
}

// trim sends every transition into a state that cannot reach an accepting state to dead, so
// that a live state always has a way to finish. It reports whether the start state is live.
func (d *dfa) trim() bool {
	// Backwards from the accepting states over reversed transitions: linear in the DFA.
	n := d.states()
	rev := make([][]int32, n)
	for i, t := range d.next {
		if t != dead {
			rev[t] = append(rev[t], int32(i/256))
		}
	}
	live := slices.Clone(d.accept)
	var queue []int32
	for s, acc := range d.accept {
		if acc {
			queue = append(queue, int32(s))
		}
	}
	for len(queue) > 0 {
		t := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		for _, s := range rev[t] {
			if !live[s] {
				live[s] = true
				queue = append(queue, s)
			}
		}
	}
	for i, t := range d.next {
		if t != dead && !live[t] {
			d.next[i] = dead
		}
	}
	return live[0]
}
