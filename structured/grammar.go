package structured

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Kind is what a Spec constrains the output to.
type Kind uint8

const (
	JSONSchema   Kind = iota + 1 // Text is a JSON schema
	JSONObject                   // any JSON object
	Regex                        // Text is a regular expression (RE2 syntax) the whole output matches
	Choice                       // the output is exactly one of Choices
	JSONSequence                 // JSON instances in literal markup (Sequence: tool calls)
	EBNF                         // Text is a context-free grammar in llama.cpp's GBNF / xgrammar's EBNF (ebnf.go)
)

// Spec is one constraint as a request states it.
type Spec struct {
	Kind     Kind
	Text     string
	Choices  []string
	Sequence *Sequence
}

// Sequence is output in a fixed wire format around JSON values, such as a model's tool calls
// (<tool_call>{"name": "f", "arguments": {...}}</tool_call>): Open, then one or more items
// separated by Sep (exactly one when Single), then Close. Each item is one of Items.
type Sequence struct {
	Open, Sep, Close string
	Single           bool
	Items            []Item
}

// Item is one alternative of a Sequence: the literal Before, a compact JSON instance of the
// schema Schema, the literal After. Name names it in errors (a tool's name).
type Item struct {
	Name                  string
	Before, Schema, After string
}

// regex is the sequence's regular expression; the items' schemas together expand to at most
// MaxRegexBytes, checked as each is expanded.
func (q *Sequence) regex(rules *schemaRules) (string, error) {
	if len(q.Items) == 0 {
		return "", fmt.Errorf("the sequence has no items")
	}
	if len(q.Items) > MaxChoices {
		return "", &LimitError{Limit: "MaxChoices", Msg: fmt.Sprintf("%d sequence items, more than %d", len(q.Items), MaxChoices)}
	}
	alts := make([]string, len(q.Items))
	n := 0
	for i, it := range q.Items {
		body, err := schemaRegex([]byte(it.Schema), rules, strconv.Itoa(i), it.Name+": ")
		if err != nil {
			return "", fmt.Errorf("%s: %w", it.Name, err)
		}
		alts[i] = regexp.QuoteMeta(it.Before) + `(?:` + body + `)` + regexp.QuoteMeta(it.After)
		if n += len(alts[i]); n > MaxRegexBytes {
			return "", &LimitError{Limit: "MaxRegexBytes", Msg: fmt.Sprintf("the sequence's schemas expand to more than %d bytes of regular expression", MaxRegexBytes)}
		}
	}
	item := `(?:` + strings.Join(alts, `|`) + `)`
	more := ""
	if !q.Single {
		more = `(?:` + regexp.QuoteMeta(q.Sep) + item + `)*`
	}
	return regexp.QuoteMeta(q.Open) + item + more + regexp.QuoteMeta(q.Close), nil
}

// regex is the spec's regular expression; with rules (a recursive schema, schemacfg.go) its
// top level, the schemas' $refs placeholders for their rules in rules.
func (s *Spec) regex(rules *schemaRules) (string, error) {
	switch s.Kind {
	case JSONSchema:
		return schemaRegex([]byte(s.Text), rules, "", "")
	case JSONObject:
		return AnyJSONObjectRegex(), nil
	case Regex:
		if len(s.Text) > MaxSpecBytes {
			return "", &LimitError{Limit: "MaxSpecBytes", Msg: fmt.Sprintf("the regular expression has %d bytes, more than %d", len(s.Text), MaxSpecBytes)}
		}
		return s.Text, nil
	case Choice:
		if len(s.Choices) == 0 {
			return "", fmt.Errorf("the choice list is empty")
		}
		if len(s.Choices) > MaxChoices {
			return "", &LimitError{Limit: "MaxChoices", Msg: fmt.Sprintf("%d choices, more than %d", len(s.Choices), MaxChoices)}
		}
		n := 0
		alts := make([]string, len(s.Choices))
		for i, c := range s.Choices {
			n += len(c)
			alts[i] = regexp.QuoteMeta(c)
		}
		if n > MaxSpecBytes {
			return "", &LimitError{Limit: "MaxSpecBytes", Msg: fmt.Sprintf("the choices have %d bytes, more than %d", n, MaxSpecBytes)}
		}
		return `(?:` + strings.Join(alts, `|`) + `)`, nil
	case JSONSequence:
		if s.Sequence == nil {
			return "", fmt.Errorf("the sequence is missing")
		}
		return s.Sequence.regex(rules)
	}
	return "", fmt.Errorf("unknown constraint kind %d", s.Kind)
}

// key is the spec's cache key: schemas compacted, so that whitespace does not matter.
func (s *Spec) key() string {
	text := s.Text
	if s.Kind == JSONSchema {
		var b bytes.Buffer
		if json.Compact(&b, []byte(s.Text)) == nil {
			text = b.String()
		}
	}
	if s.Kind == Choice {
		k, _ := json.Marshal(s.Choices)
		text = string(k)
	}
	if s.Kind == JSONSequence && s.Sequence != nil {
		q := *s.Sequence
		q.Items = slices.Clone(q.Items)
		for i := range q.Items {
			var b bytes.Buffer
			if json.Compact(&b, []byte(q.Items[i].Schema)) == nil {
				q.Items[i].Schema = b.String()
			}
		}
		k, _ := json.Marshal(q)
		text = string(k)
	}
	return fmt.Sprintf("%d:%s", s.Kind, text)
}

// Vocab is a tokenizer's vocabulary as bytes: each token's bytes as they appear in the output
// (the tokens sorted, so that a mask walk shares the work of common prefixes), and the EOS ids.
type Vocab struct {
	size   int      // ids in a logits row (the model's vocabulary, maybe padded)
	offs   []int32  // bytes of id i: data[offs[i]:offs[i+1]]; empty for tokens without text
	data   []byte   //
	sorted []int32  // ids with text, by their bytes
	lcp    []uint16 // common prefix length of sorted[i] and sorted[i-1]
	maxLen int
	eos    []int32
}

// NewVocab indexes the vocabulary: size is the logits row's length, tokenBytes(id) the bytes
// id stands for in the output for ids below tokens (false for special tokens, which a
// constraint never allows), eos the ids that end a sequence.
func NewVocab(size, tokens int, tokenBytes func(id int) ([]byte, bool), eos []int) *Vocab {
	v := &Vocab{size: size, offs: make([]int32, tokens+1)}
	for id := range tokens {
		if b, ok := tokenBytes(id); ok && len(b) > 0 && len(b) < 1<<16 {
			v.data = append(v.data, b...)
			v.sorted = append(v.sorted, int32(id))
			v.maxLen = max(v.maxLen, len(b))
		}
		v.offs[id+1] = int32(len(v.data))
	}
	slices.SortFunc(v.sorted, func(a, b int32) int { return bytes.Compare(v.bytes(int(a)), v.bytes(int(b))) })
	v.lcp = make([]uint16, len(v.sorted))
	for i := 1; i < len(v.sorted); i++ {
		a, b := v.bytes(int(v.sorted[i-1])), v.bytes(int(v.sorted[i]))
		n := 0
		for n < len(a) && n < len(b) && a[n] == b[n] {
			n++
		}
		v.lcp[i] = uint16(n)
	}
	for _, id := range eos {
		if id >= 0 && id < size {
			v.eos = append(v.eos, int32(id))
		}
	}
	return v
}

func (v *Vocab) bytes(id int) []byte {
	if id < 0 || id+1 >= len(v.offs) {
		return nil
	}
	return v.data[v.offs[id]:v.offs[id+1]]
}

// Grammar is a compiled constraint over one vocabulary: a DFA (regular constraints: schemas,
// regexes, choices) or a context-free grammar run by a pushdown recognizer (EBNF). Outputs
// follow it through a Matcher each. It is safe for concurrent use.
type Grammar struct {
	v         *Vocab
	d         *dfa      // regular constraints
	cfg       *cfg      // context-free grammars
	c         *Compiler // whose mask budget the cached masks count against
	mu        sync.Mutex
	masks     [][]uint64                 // per DFA state, computed on first use
	cfgMasks  map[string]cfgMask         // per parser state key (cfgRow.stateKey), computed on first use
	cfgDepths []int32                    // the depths (below the top stack) masks were keyed at, wholeState for whole states
	positions map[position]*positionMask // per grammar position, what it decides alone (maskcache.go)
	maskBytes int64                      // bytes of masks (and their keys) and positions cached
	posBytes  int64                      // of which positions
	fullWalks bool                       // masks never from positions (the benchmarks' before)
	stack     []int32                    // DFA mask walk scratch
	none      []uint64                   // the all-zero mask (a context-free grammar's Done)
}

// State is a position in a regular Grammar: the DFA state after the output so far. Start is
// the empty output.
type State int32

// Start is the state of an empty output.
const Start State = 0

// Done is the state after EOS (and after a token the grammar does not allow).
const Done State = dead

// States is the size of the compiled constraint: its DFA states, or a context-free
// grammar's elements (after repetitions are expanded into rules).
func (g *Grammar) States() int {
	if g.cfg != nil {
		return len(g.cfg.elems)
	}
	return g.d.states()
}

// accepting reports whether the output so far is complete (EOS is allowed).
func (g *Grammar) accepting(s State) bool { return s >= 0 && g.d.accept[s] }

// advance returns the state after token id, Done for EOS or a token s does not allow.
func (g *Grammar) advance(s State, id int) State {
	if s < 0 || slices.Contains(g.v.eos, int32(id)) {
		return Done
	}
	b := g.v.bytes(id)
	if len(b) == 0 {
		return Done
	}
	return State(g.d.step(int32(s), b))
}

// mask returns the allowed tokens in DFA state s as a bitmap over the row (bit id%64 of word
// id/64): the tokens whose bytes keep the automaton live, and the EOS ids when s accepts. The
// bitmap is shared and must not be modified. Done allows nothing.
func (g *Grammar) mask(s State) []uint64 {
	g.mu.Lock()
	if s < 0 {
		s = State(len(g.masks) - 1) // the all-zero mask kept past the DFA's states
	}
	if m := g.masks[s]; m != nil {
		g.mu.Unlock()
		return m
	}
	m := make([]uint64, (g.v.size+63)/64)
	if int(s) < g.d.states() {
		g.walk(int32(s), m)
	}
	g.masks[s] = m
	n := int64(8 * len(m))
	g.maskBytes += n
	c := g.c
	g.mu.Unlock()
	if c != nil && c.maskBytes.Add(n) > MaxMaskBytes {
		c.dropMasks()
	}
	return m
}

// dropMasks forgets every cached mask and position of g (rows still holding one keep it alive
// until they are done with it) and returns their bytes to the compiler's budget.
func (g *Grammar) dropMasks() { g.drop(true) }

// drop forgets g's cached masks, and its positions too when positions is set.
func (g *Grammar) drop(positions bool) {
	g.mu.Lock()
	clear(g.masks)
	clear(g.cfgMasks)
	n := g.maskBytes - g.posBytes
	if positions {
		clear(g.positions)
		n = g.maskBytes
		g.posBytes = 0
	}
	g.maskBytes -= n
	c := g.c
	g.mu.Unlock()
	if c != nil {
		c.maskBytes.Add(-n)
	}
}

// walk sets the bits of the tokens allowed from state s. Tokens are visited in byte order, so
// stack[k] (the state after the token's first k bytes) is shared with the previous token up to
// their common prefix: the walk costs one step per node of the vocabulary's trie.
func (g *Grammar) walk(s int32, m []uint64) {
	v := g.v
	st := g.stack[:v.maxLen+1]
	st[0] = s
	for i, id := range v.sorted {
		b := v.bytes(int(id))
		for k := int(v.lcp[i]); k < len(b); k++ {
			if st[k] == dead {
				st[k+1] = dead
			} else {
				st[k+1] = g.d.next[int(st[k])*256+int(b[k])]
			}
		}
		if st[len(b)] != dead {
			m[id/64] |= 1 << (id % 64)
		}
	}
	if g.d.accept[s] {
		for _, id := range v.eos {
			m[id/64] |= 1 << (id % 64)
		}
	}
}

// Compiler compiles specs over one vocabulary and caches the grammars by spec (at most
// MaxCachedGrammars, the oldest dropped first). It is safe for concurrent use.
type Compiler struct {
	v         *Vocab
	mu        sync.Mutex
	cache     map[string]*Grammar
	order     []string
	maskBytes atomic.Int64 // masks cached by its grammars
}

const (
	// MaxCachedGrammars bounds a Compiler's cache.
	MaxCachedGrammars = 64
	// MaxMaskBytes bounds the masks a Compiler's grammars cache together (16 KiB a state on a
	// 128k vocabulary): past it every cached mask is dropped and recomputed on its next use.
	MaxMaskBytes = 256 << 20
)

// dropMasks empties every grammar's mask cache (the budget is spent).
func (c *Compiler) dropMasks() {
	c.mu.Lock()
	grammars := make([]*Grammar, 0, len(c.cache))
	for _, g := range c.cache {
		grammars = append(grammars, g)
	}
	c.mu.Unlock()
	for _, g := range grammars {
		g.dropMasks()
	}
}

// NewCompiler returns a compiler over v.
func NewCompiler(v *Vocab) *Compiler { return &Compiler{v: v, cache: map[string]*Grammar{}} }

// Compile returns the grammar of spec, compiled once per distinct spec. Errors are
// *LimitError, *UnsupportedError or a plain error for an invalid or unsatisfiable spec.
func (c *Compiler) Compile(spec Spec) (*Grammar, error) {
	k := spec.key()
	c.mu.Lock()
	cached := c.cache[k]
	c.mu.Unlock()
	if cached != nil {
		return cached, nil
	}
	g, err := c.compile(spec)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if old := c.cache[k]; old != nil {
		c.mu.Unlock()
		return old, nil
	}
	if len(c.order) >= MaxCachedGrammars {
		old := c.cache[c.order[0]]
		delete(c.cache, c.order[0])
		c.order = c.order[1:]
		// Its masks are dropped and no longer count: requests still using it cache the
		// masks of the states they visit (at most one per token they generate) until they
		// end and it is collected.
		old.mu.Lock()
		clear(old.masks)
		clear(old.cfgMasks)
		clear(old.positions)
		c.maskBytes.Add(-old.maskBytes)
		old.maskBytes, old.posBytes = 0, 0
		old.c = nil
		old.mu.Unlock()
	}
	// The positions compile learnt count from here (a grammar compiled twice at once, and
	// dropped above, never counted); g is not shared yet.
	learnt := g.maskBytes
	c.cache[k] = g
	c.order = append(c.order, k)
	c.mu.Unlock()
	if c.maskBytes.Add(learnt) > MaxMaskBytes {
		c.dropMasks()
	}
	return g, nil
}

// compile builds spec's grammar (uncached).
func (c *Compiler) compile(spec Spec) (*Grammar, error) {
	if spec.Kind == EBNF {
		g, err := parseGrammar(spec.Text)
		if err != nil {
			return nil, err
		}
		return c.cfgGrammar(g)
	}
	expr, err := spec.regex(nil)
	_, recursive := errors.AsType[*recursiveRefError](err)
	_, limited := errors.AsType[*LimitError](err)
	if recursive || limited && (spec.Kind == JSONSchema || spec.Kind == JSONSequence) {
		// A recursive schema: the same walk, its $refs as rules of a context-free grammar.
		// A schema over a limit may be one whose expansion met the limit before it met its
		// recursion (a long cycle of $defs): it is a grammar if its walk in rules recurses,
		// else it keeps its error.
		rules := newSchemaRules()
		gexpr, gerr := spec.regex(rules)
		if !recursive && !rules.recursive {
			return nil, err
		}
		if gerr != nil {
			return nil, gerr
		}
		g, err := rules.grammar(gexpr)
		if err != nil {
			return nil, err
		}
		return c.cfgGrammar(g)
	}
	if err != nil {
		return nil, err
	}
	n, start, err := compileRegex(expr)
	if err != nil {
		return nil, err
	}
	d, err := determinise(n, start)
	if err != nil {
		return nil, err
	}
	return &Grammar{v: c.v, d: d, c: c, masks: make([][]uint64, d.states()+1), stack: make([]int32, c.v.maxLen+1)}, nil
}

// cfgGrammar is the grammar of a context-free g, whose start must expand within the limits.
func (c *Compiler) cfgGrammar(g *cfg) (*Grammar, error) {
	if _, ok := newCFGRow(g, c.v.maxLen); !ok {
		return nil, &LimitError{Limit: "MaxParserThreads", Msg: fmt.Sprintf("the grammar's start expands to more than %d parser threads", MaxParserThreads)}
	}
	gr := &Grammar{v: c.v, cfg: g, cfgMasks: map[string]cfgMask{}, positions: map[position]*positionMask{}, none: make([]uint64, (c.v.size+63)/64)}
	gr.learnPositions()
	gr.c = c
	return gr, nil
}

// Matcher follows one output through a Grammar: the masks of the tokens it may take next,
// and its state after each token it takes. A Matcher is for one output (one goroutine at a
// time); masks are shared through the Grammar's cache.
type Matcher struct {
	g *Grammar
	s State   // a DFA's state
	r *cfgRow // a context-free grammar's parser state; nil once Done
}

// NewMatcher starts an output (nil for a nil grammar: no constraint).
func (g *Grammar) NewMatcher() *Matcher {
	if g == nil {
		return nil
	}
	m := &Matcher{g: g}
	if g.cfg != nil {
		m.r, _ = newCFGRow(g.cfg, g.v.maxLen) // compile checked that the start expands
	}
	return m
}

// Done reports whether the output has ended (EOS) or left the grammar.
func (m *Matcher) Done() bool {
	if m.g.cfg != nil {
		return m.r == nil
	}
	return m.s == Done
}

// Accepting reports whether the output so far is complete (EOS is allowed).
func (m *Matcher) Accepting() bool {
	if m.g.cfg != nil {
		return m.r != nil && m.r.acc
	}
	return m.g.accepting(m.s)
}

// Advance moves past token id and reports whether the grammar allowed it; EOS and a token it
// does not allow end the output (Done).
func (m *Matcher) Advance(id int) bool {
	g := m.g
	if g.cfg == nil {
		m.s = g.advance(m.s, id)
		return m.s != Done
	}
	if m.r == nil {
		return false
	}
	b := g.v.bytes(id)
	if slices.Contains(g.v.eos, int32(id)) || len(b) == 0 || !m.r.advance(b) {
		m.r = nil
		return false
	}
	return true
}

// Mask returns the tokens allowed next as a bitmap over the row (bit id%64 of word id/64):
// the tokens whose bytes keep the output completable, and the EOS ids when it is complete.
// The bitmap is shared and must not be modified. Done allows nothing.
func (m *Matcher) Mask() []uint64 {
	g := m.g
	if g.cfg == nil {
		return g.mask(m.s)
	}
	if m.r == nil {
		return g.none
	}
	// A mask is keyed by the stacks down to the depth its walk read (cfgRow.stateKey): try
	// each depth masks were keyed at.
	top := m.r.top()
	cut := func(depth int32) int32 { return max(top-depth, 0) }
	g.mu.Lock()
	for i := 0; i < len(g.cfgDepths); i++ {
		depth := g.cfgDepths[i]
		g.mu.Unlock()
		key := m.r.stateKey(cut(depth))
		g.mu.Lock()
		if cm := g.cfgMasks[string(key)]; cm.bits != nil && top+cm.rise <= MaxParserDepth {
			g.mu.Unlock()
			return cm.bits
		}
	}
	g.mu.Unlock()
	mask := make([]uint64, (g.v.size+63)/64)
	lowest, rise := g.cfgWalk(m.r, mask)
	depth := top - lowest
	g.mu.Lock()
	if !slices.Contains(g.cfgDepths, depth) {
		if len(g.cfgDepths) < maxMaskDepths {
			g.cfgDepths = append(g.cfgDepths, depth)
			slices.Sort(g.cfgDepths)
		} else {
			depth = wholeState
			if !slices.Contains(g.cfgDepths, depth) {
				g.cfgDepths = append(g.cfgDepths, depth)
			}
		}
	}
	g.mu.Unlock()
	key := m.r.stateKey(cut(depth))
	n := int64(8*len(mask) + len(key))
	g.mu.Lock()
	g.cfgMasks[string(key)] = cfgMask{mask, rise}
	g.maskBytes += n
	c := g.c
	g.mu.Unlock()
	if c != nil && c.maskBytes.Add(n) > MaxMaskBytes {
		c.dropMasks()
	}
	return mask
}

// cfgMask is a cached mask of a context-free grammar and how far above the state's top its
// walk pushed: a state whose top is higher may reuse it only while that stays within
// MaxParserDepth (else the walk would have met the full stack).
type cfgMask struct {
	bits []uint64
	rise int32
}

// maxMaskDepths bounds the depths a context-free grammar's masks are keyed at (each a key to
// try per step); masks past it are keyed by the whole state.
const maxMaskDepths = 8

// wholeState is the depth that keys a mask by the whole state (its stacks to the bottom).
const wholeState = 1 << 30

// Matches reports whether out is a complete output of the grammar (a recognizer over bytes,
// independent of any vocabulary's tokens).
func (g *Grammar) Matches(out []byte) bool {
	if g.cfg == nil {
		s := g.d.step(0, out)
		return s != dead && g.d.accept[s]
	}
	r, _ := newCFGRow(g.cfg, 0)
	return r.advance(out) && r.acc
}
