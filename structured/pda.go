package structured

import (
	"bytes"
	"encoding/binary"
	"slices"
)

// cfg is a context-free grammar (ebnf.go) flattened for the pushdown recognizer: every rule's
// alternatives laid end to end in elems, each closed by an opEnd.
type cfg struct {
	elems []elem
	alts  [][]int32 // per rule, the positions its alternatives start at
	sets  []byteSet
	root  int32
}

// thread is one way the parser may be reading the output: the position of the element it
// expects next, and the stack of continuations under it (a node, -1 for none). A node has
// the same shape: where to continue once the rule being read ends, and the stack below.
//
// The recognizer is a nondeterministic pushdown automaton run breadth-first, as llama.cpp's
// grammar engine is: the state after some output is the set of its threads, each stopped at a
// terminal. A byte advances the threads whose terminal holds it, and each then expands
// (closure): a rule reference pushes its continuation and forks into the rule's alternatives,
// the end of an alternative pops. Stacks are persistent (nodes shared between threads, and
// interned, so that equal stacks are equal nodes and duplicate threads merge), and a
// reference in tail position pushes nothing, so that repetition (right recursion) runs in
// constant stack. Left recursion would expand forever and is refused when parsing.
type thread struct{ pos, parent int32 }

// pda is one output's parser: the node arena its threads' stacks live in, and scratch.
type pda struct {
	g      *cfg
	nodes  []thread
	height []int32 // of each node: its stack's length (the bottom, -1, has height 0)
	index  map[thread]int32
	seen   threadSet
	work   []thread
	// budget is the thread visits a mask walk may still make (MaxMaskWork).
	budget int
	// While a mask walk runs, watch is the first node it added, and lowest the lowest
	// height of the state's own nodes (those below watch) that it read, or 0 when it read
	// a stack's bottom: how deep into the stacks the mask looked.
	watch, lowest int32
	// highest is the greatest stack height a push reached (a mask walk's rise above the
	// state's top), full whether a push was refused at MaxParserDepth.
	highest int32
	full    bool
	// ctx is the node that stands for the unknown stack below a grammar position while its
	// tokens are classified (maskcache.go; noContext otherwise): a thread that would pop it
	// ends, and popped records that one did. peak is the most threads one step visited.
	ctx    int32
	popped bool
	peak   int
}

// noContext is pda.ctx outside a position's walk: no node (nor the bottom, -1) is it.
const noContext = -2

func newPDA(g *cfg) *pda { return &pda{g: g, index: map[thread]int32{}, ctx: noContext} }

// intern returns the node for (pos, parent), adding it once.
func (p *pda) intern(t thread) int32 {
	if n, ok := p.index[t]; ok {
		return n
	}
	p.nodes = append(p.nodes, t)
	p.height = append(p.height, p.heightOf(t.parent)+1)
	n := int32(len(p.nodes) - 1)
	p.index[t] = n
	return n
}

// truncate forgets the nodes from n on (a mask walk's speculative ones).
func (p *pda) truncate(n int) {
	for _, t := range p.nodes[n:] {
		delete(p.index, t)
	}
	p.nodes = p.nodes[:n]
	p.height = p.height[:n]
}

func (p *pda) heightOf(n int32) int32 {
	if n < 0 {
		return 0
	}
	return p.height[n]
}

// start is the threads (and whether the output may end) before any output.
func (p *pda) start(out []thread) ([]thread, bool, bool) {
	p.seen.reset()
	acc := false
	ok := true
	for _, a := range p.g.alts[p.g.root] {
		if out, ok = p.closure(thread{a, -1}, out, &acc); !ok {
			break
		}
	}
	return out, acc, ok
}

// step appends to out the threads after byte c from threads in, and reports whether the
// output may end there; ok is false when the step exceeds MaxParserThreads or the walk's
// budget (the byte is then treated as not allowed).
func (p *pda) step(in []thread, c byte, out []thread) (next []thread, acc, ok bool) {
	p.seen.reset()
	ok = true
	// Each thread looked at counts against the walk's budget, as each closure visit does.
	if p.budget -= len(in); p.budget < 0 {
		return out[:0], false, false
	}
	for _, t := range in {
		if p.g.sets[p.g.elems[t.pos].arg].has(c) {
			if out, ok = p.closure(thread{t.pos + 1, t.parent}, out, &acc); !ok {
				return out[:0], false, false
			}
		}
	}
	p.peak = max(p.peak, p.seen.len())
	return out, acc, true
}

// closure expands t until every thread it leads to waits at a terminal (appended to out);
// acc is set when one reaches the end of root.
func (p *pda) closure(t thread, out []thread, acc *bool) ([]thread, bool) {
	p.work = append(p.work[:0], t)
	for len(p.work) > 0 {
		t := p.work[len(p.work)-1]
		p.work = p.work[:len(p.work)-1]
		if !p.seen.add(t) {
			continue
		}
		if p.seen.len() > MaxParserThreads {
			return out, false
		}
		if p.budget--; p.budget < 0 {
			return out, false
		}
		e := p.g.elems[t.pos]
		switch e.op {
		case opTerm:
			out = append(out, t)
		case opEnd:
			if t.parent == p.ctx {
				p.popped = true
				continue // what follows depends on the stack below the position
			}
			if t.parent < p.watch {
				p.lowest = min(p.lowest, p.heightOf(t.parent))
			}
			if t.parent < 0 {
				*acc = true
			} else {
				p.work = append(p.work, p.nodes[t.parent])
			}
		case opRef:
			parent := t.parent
			if p.g.elems[t.pos+1].op != opEnd { // a reference in tail position pushes nothing
				h := p.heightOf(t.parent) + 1
				if h > MaxParserDepth {
					p.full = true
					continue // the stack is full: this way of reading the output ends here
				}
				p.highest = max(p.highest, h)
				parent = p.intern(thread{t.pos + 1, t.parent})
			}
			for _, a := range p.g.alts[e.arg] {
				p.work = append(p.work, thread{a, parent})
			}
		}
	}
	return out, true
}

// threadSet is a set of threads, cleared per step: a short list while small (most steps
// have a handful of threads), a map past that.
type threadSet struct {
	small []thread
	big   map[thread]struct{}
}

const threadSetSmall = 32

func (s *threadSet) reset() {
	s.small = s.small[:0]
	if len(s.big) > 0 {
		clear(s.big)
	}
}

func (s *threadSet) len() int { return len(s.small) + len(s.big) }

// add adds t and reports whether it was new.
func (s *threadSet) add(t thread) bool {
	if len(s.big) == 0 {
		if slices.Contains(s.small, t) {
			return false
		}
		if len(s.small) < threadSetSmall {
			s.small = append(s.small, t)
			return true
		}
		if s.big == nil {
			s.big = map[thread]struct{}{}
		}
		for _, x := range s.small {
			s.big[x] = struct{}{}
		}
		s.small = s.small[:0]
	}
	if _, ok := s.big[t]; ok {
		return false
	}
	s.big[t] = struct{}{}
	return true
}

// cfgRow is a Matcher's state in a context-free grammar: the parser, its threads after the
// output so far, and scratch for masks (per level of the vocabulary walk) and state keys.
type cfgRow struct {
	p       *pda
	live    int // nodes after the last compaction
	threads []thread
	spare   []thread
	acc     bool
	levels  [][]thread
	ends    []int
	popAt   []bool // per level of a walk: whether a thread popped the context (pda.ctx) on the way
	// Scratch of the position-cached mask (maskcache.go): the undecided tokens' sorted
	// indices, as a bitmap and in order, and a one-thread start.
	undecidedBits []uint64
	undecided     []int32
	one           [1]thread
	key           []byte
	recs          [][2]int
	scratch       []byte
}

func newCFGRow(g *cfg, maxLen int) (*cfgRow, bool) {
	r := &cfgRow{p: newPDA(g), levels: make([][]thread, maxLen+1), ends: make([]int, maxLen+1), popAt: make([]bool, maxLen+1)}
	r.p.budget = MaxMaskWork
	var ok bool
	r.threads, r.acc, ok = r.p.start(nil)
	return r, ok && (len(r.threads) > 0 || r.acc)
}

// advance moves the threads past b; false when b leaves the grammar (or the stacks would
// hold more than MaxParserNodes nodes).
func (r *cfgRow) advance(b []byte) bool {
	for _, c := range b {
		r.p.budget = MaxMaskWork
		next, acc, ok := r.p.step(r.threads, c, r.spare[:0])
		r.spare, r.threads, r.acc = r.threads, next, acc
		if !ok || len(next) == 0 && !acc {
			return false
		}
	}
	if len(r.p.nodes) > 2*r.live+1024 {
		r.compact()
	}
	return r.live <= MaxParserNodes
}

// compact drops the nodes no thread's stack holds any more (the arena only grows while the
// output does) and renumbers the rest; live is what is left.
func (r *cfgRow) compact() {
	p := r.p
	keep := make([]int32, len(p.nodes)) // new index + 1, 0 for dropped
	for _, t := range r.threads {
		for n := t.parent; n >= 0 && keep[n] == 0; n = p.nodes[n].parent {
			keep[n] = 1
		}
	}
	clear(p.index)
	nodes, height := p.nodes[:0:len(p.nodes)], p.height[:0:len(p.height)]
	// A node's parent is older than it, so parents are renumbered first.
	for i, t := range p.nodes {
		if keep[i] == 0 {
			continue
		}
		if t.parent >= 0 {
			t.parent = keep[t.parent] - 1
		}
		keep[i] = int32(len(nodes)) + 1
		p.index[t] = int32(len(nodes))
		// In place: the writes go to positions up to i, already read.
		nodes, height = append(nodes, t), append(height, p.height[i])
	}
	p.nodes, p.height = nodes, height
	for i, t := range r.threads {
		if t.parent >= 0 {
			r.threads[i].parent = keep[t.parent] - 1
		}
	}
	r.live = len(nodes)
}

// top is the height of the state's highest stack (under its threads).
func (r *cfgRow) top() int32 {
	h := int32(0)
	for _, t := range r.threads {
		h = max(h, r.p.heightOf(t.parent))
	}
	return h
}

// stateKey is a canonical key of the state as seen by a mask that reads the stacks down to
// height cut (0: whole, bottom included): each thread's position and its stack's positions
// down to the cut as words, the stacks sorted, and whether the output may end. A mask walk
// that read no deeper than cut does the same steps in every state with the same key, so masks
// are cached by it, and states that differ only deeper in their stacks (the same place in a
// recursive structure, at another depth) share a mask.
func (r *cfgRow) stateKey(cut int32) []byte {
	const cutMark, bottomMark = ^uint32(0), ^uint32(1)
	buf := r.scratch[:0]
	recs := r.recs[:0]
	for _, t := range r.threads {
		start := len(buf)
		buf = binary.LittleEndian.AppendUint32(buf, uint32(t.pos))
		n := t.parent
		for ; n >= 0 && r.p.height[n] >= cut; n = r.p.nodes[n].parent {
			buf = binary.LittleEndian.AppendUint32(buf, uint32(r.p.nodes[n].pos))
		}
		if n < 0 && cut == 0 {
			buf = binary.LittleEndian.AppendUint32(buf, bottomMark)
		} else {
			buf = binary.LittleEndian.AppendUint32(buf, cutMark)
		}
		recs = append(recs, [2]int{start, len(buf)})
	}
	if len(recs) > 1 {
		slices.SortFunc(recs, func(a, b [2]int) int { return bytes.Compare(buf[a[0]:a[1]], buf[b[0]:b[1]]) })
	}
	key := r.key[:0]
	if r.acc {
		key = append(key, 1)
	} else {
		key = append(key, 0)
	}
	for _, rc := range recs {
		key = append(key, buf[rc[0]:rc[1]]...)
	}
	r.scratch, r.recs, r.key = buf, recs, key
	return key
}

// walk sets in m the tokens whose bytes the threads can read (and EOS when the output may
// end). Tokens are visited in byte order, so levels[k] (the threads after a token's first k
// bytes) is shared with the previous token up to their common prefix, and a prefix no thread
// survives skips every token that starts with it: the walk costs one step per live node of
// the vocabulary's trie. Nodes pushed while walking are forgotten after it. The walk makes
// at most budget thread visits (MaxMaskWork for a whole mask); tokens past that are not
// allowed. subset, when not nil, is the tokens to walk (indices into v.sorted, ascending);
// limited reports whether a step met MaxParserThreads or the budget. It returns the lowest
// height of the stacks it read (0 when it read a bottom, ran out of budget or met
// MaxParserDepth: the mask is then the whole state's), top()+1 when it read no stack below the
// threads, and how far above top() it pushed (a state at another height may reuse the mask
// only where that rise stays within MaxParserDepth).
func (r *cfgRow) walk(v *Vocab, m []uint64, subset []int32, budget int) (lowest, rise int32, limited bool) {
	p := r.p
	p.budget = budget
	base := len(p.nodes)
	top := r.top()
	p.watch, p.lowest, p.highest, p.full = int32(base), top+1, top, false
	defer func() { p.watch = 0 }()
	limited = r.scan(v, r.threads, subset, m, nil)
	p.truncate(base)
	if r.acc {
		for _, id := range v.eos {
			m[id/64] |= 1 << (id % 64)
		}
	}
	if p.budget < 0 || p.full {
		return 0, p.highest - top, limited
	}
	return p.lowest, p.highest - top, limited
}

// scan is the walk's loop from the threads start: it sets in alive (by token id) the tokens
// some thread survives, and in pops (by sorted index; nil: not recorded) the tokens along
// whose bytes a thread popped the context (pda.ctx), alive or not. It reports whether a step
// met a limit (the prefix is then treated as dead, as the walk always has).
func (r *cfgRow) scan(v *Vocab, start []thread, subset []int32, alive, pops []uint64) (limited bool) {
	p := r.p
	r.levels[0] = start
	r.ends[0] = len(p.nodes)
	r.popAt[0] = false
	valid := 0   // levels[0..valid] hold the previous token's prefixes
	deadLen := 0 // the previous token's first deadLen bytes leave the grammar (0: none)
	deadPopped := false
	n := len(v.sorted)
	if subset != nil {
		n = len(subset)
	}
	var prev []byte
	for j := range n {
		i := j
		if subset != nil {
			i = int(subset[j])
		}
		id := v.sorted[i]
		b := v.bytes(int(id))
		l := int(v.lcp[i])
		if subset != nil {
			l = commonPrefix(prev, b)
			prev = b
		}
		if deadLen > 0 && l >= deadLen {
			if deadPopped {
				pops[i/64] |= 1 << (i % 64)
			}
			continue // starts with the dead prefix
		}
		if p.budget < 0 {
			break
		}
		deadLen, deadPopped = 0, false
		k := min(l, valid)
		p.truncate(r.ends[k])
		for ; k < len(b); k++ {
			p.popped = false
			next, acc, ok := p.step(r.levels[k], b[k], r.levels[k+1][:0])
			r.levels[k+1] = next
			r.ends[k+1] = len(p.nodes)
			r.popAt[k+1] = r.popAt[k] || p.popped
			if !ok {
				limited = true
			}
			if !ok || len(next) == 0 && !acc {
				deadLen, valid, deadPopped = k+1, k, ok && r.popAt[k+1]
				break
			}
			valid = k + 1
		}
		if deadLen == 0 {
			alive[id/64] |= 1 << (id % 64)
		}
		if pops != nil && (deadLen == 0 && r.popAt[len(b)] || deadPopped) {
			pops[i/64] |= 1 << (i % 64)
		}
	}
	return limited
}

// commonPrefix is the length of a's and b's common prefix.
func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
