// The position mask cache: cheap cold masks for context-free grammars on large vocabularies.
//
// A context-free grammar's state is a set of parser threads, each waiting at a terminal of
// some rule (its position) over a stack of continuations. A mask walks the vocabulary's trie
// against all threads (pda.go); on 128k tokens a state never seen costs milliseconds, and a
// recursive output meets new states (the same place, other stacks) all the time. The idea is
// xgrammar's adaptive token mask cache, redone for this recognizer: most of what a thread
// decides depends only on where it is, not on the stack far below it.
//   precomputed, once per position (lazily, on the first mask that meets it): a position is
//           a thread's grammar position and the positions of its top positionDepth stack
//           nodes (a repetition nests its group's rule, so the rule a character is read in
//           often ends into another one just above). Its mask is the walk of the vocabulary
//           from one thread over those nodes and, below them, a node ctx standing for the
//           unknown rest of the stack (none if they reach the bottom). A path that would pop
//           ctx ends there and marks the token. Each token is then accepted (a path that
//           never popped ctx survives all its bytes), undecided (some path popped ctx on the
//           way: what follows depends on the stack), or rejected (neither). Kept: the
//           accepted tokens as a bitmap, the undecided ones as a sorted list, and the walk's
//           cost (thread visits), peak threads per step and rise (highest push above).
//   per mask: the union of the threads' accepted bitmaps, then the ordinary walk from the
//           whole state over the union of their undecided tokens only (prefixes shared as in
//           the full walk). EOS as before. On a JSON string the undecided tokens are none:
//           the string's end, and what follows it, pop only nodes the position names.
// Why the mask is bit for bit the full walk's: the threads after a prefix are the union of
// what each starting thread leads to, and a path that never pops below its thread's named
// nodes reads the same bytes, pushes the same positions and survives the same way over any
// stack below, so a token accepted that way by one thread is accepted by the state, and a
// token no thread accepts nor pops ctx on is rejected. The tokens left are walked exactly as
// the full walk walks them. What could differ is the full walk's limits, so the cache is used
// only where they provably do not bite, else the full walk runs:
//   - MaxParserDepth: each thread's height plus its position's rise stays within it (a
//     position's path then never meets the full stack);
//   - MaxMaskWork: the full walk's visits at trie nodes off the undecided tokens' prefixes
//     are at most the sum of the positions' walks' costs (no thread that popped ctx lives
//     there, and the union of threads visits at most the sum), at nodes on them exactly the
//     restricted walk's, so the positions' costs plus the restricted walk's must fit;
//   - MaxParserThreads: off those prefixes one step visits at most the sum of the positions'
//     peaks, which must fit; on them the restricted walk meets the limit exactly where the full
//     walk does, and any limit met there sends the mask to the full walk (which would then
//     also drop tokens the bitmaps accept).
// A position's mask reads the named nodes its walk popped (the bottom if it reached it), the
// restricted walk what it pops: the lowest of those heights and the rise key the state mask
// cache (grammar.go) as a full walk's do.
// Bounds: a mask computes positions only for states of at most maxPositionThreads threads,
// and spends at most maxPositionWork thread visits on positions' walks (a hostile grammar's
// thousands of positions cost a first mask at most a quarter of a full walk's budget more,
// then fall back; the positions learnt are kept); a position whose own walk meets a limit is kept as
// unusable. Memory: a position keeps 8·ceil(size/64) bytes of bitmap (16 KiB at 128k, none
// when nothing is accepted) plus 4 bytes per undecided token; these count against the
// Compiler's MaxMaskBytes with the state masks and are dropped with them.

// Learnt at compile: a grammar's first output would pay, per position it meets, about one
// full walk (a JSON string state's 11 positions ~100 ms on 128k, in the middle of a batch's
// decode step). Compile (once per distinct grammar, before its request joins a batch) learns the
// positions of the states reachable from the start within maxLearnBytes bytes of output,
// nearest first (a breadth-first search over bytes, states told apart by their whole key), as
// the first masks would learn them. Bounded before it starts: at most maxLearnStates states,
// maxLearnSteps thread visits on the search's steps and maxPositionWork on the positions'
// walks (one JSON string state's worth); past any of them it stops, and the rest is learnt lazily
// as before. The positions are keyed by grammar positions, not by the search's own stack
// nodes, so the masks they give are the same as if the first masks had learnt them. A state of
// more than maxPositionThreads threads is neither learnt nor searched past.

package structured

import (
	"math/bits"
	"slices"
)

// maxPositionWork bounds the thread visits one mask spends on learning positions: a JSON
// string state's 11 positions take 6.5M on a 128k vocabulary, about what the state's full
// walk costs, once per grammar.
const maxPositionWork = MaxMaskWork / 4

// maxPositionThreads is the most threads a state may have for its mask to come from the
// position cache: past it the sums that bound the full walk's limits grow large and the
// union of undecided tokens approaches the vocabulary.
const maxPositionThreads = 16

// positionDepth is how many of a thread's top stack nodes key its position mask with its
// position: what pops them is known, so only tokens that pop deeper are undecided. A
// repetition nests a group's rule in the repetition's (a UTF-8 character's byte sequences in a
// string's characters), so one node would leave every token of a string undecided.
const positionDepth = 4

// position is what a position mask is keyed by: a thread's position and the positions of its
// stack's top nodes, topmost first, then bottom if the stack ends there, then noNode.
type position struct {
	pos   int32
	stack [positionDepth]int32
}

// bottom marks the end of the stack in position.stack; noNode fills what is past it.
const (
	bottom = -1
	noNode = -2
)

// positionOf is t's position key.
func (r *cfgRow) positionOf(t thread) (at position) {
	at.pos = t.pos
	n := t.parent
	i := 0
	for ; i < positionDepth && n >= 0; i++ {
		at.stack[i] = r.p.nodes[n].pos
		n = r.p.nodes[n].parent
	}
	if i < positionDepth {
		at.stack[i] = bottom
		i++
	}
	for ; i < positionDepth; i++ {
		at.stack[i] = noNode
	}
	return at
}

// positionMask is what one grammar position decides alone over the vocabulary.
type positionMask struct {
	accepted  []uint64 // by token id; nil when none
	undecided []int32  // indices into Vocab.sorted, ascending
	cost      int      // thread visits of its walk
	peak      int      // most threads one step of its walk visited
	rise      int32    // highest push above the thread's stack
	read      int32    // how many of its stack's nodes its walk popped (bottom counts as one)
	unusable  bool     // its walk met a limit: states holding it take the full walk
}

func (pm *positionMask) bytes() int64 { return int64(8*len(pm.accepted) + 4*len(pm.undecided) + 64) }

// positionWalk classifies the vocabulary from a thread at at.pos over a stack whose top nodes
// are at.stack's (ctx below them unless they reach the bottom), spending at most budget thread
// visits; ok is false when the walk ran out of that budget (nothing is learnt).
func (r *cfgRow) positionWalk(v *Vocab, at position, budget int) (pm *positionMask, ok bool) {
	p := r.p
	base := len(p.nodes)
	parent := int32(-1)
	deepest := len(at.stack) - 1
	for deepest >= 0 && at.stack[deepest] == noNode {
		deepest--
	}
	if deepest >= 0 && at.stack[deepest] != bottom {
		p.ctx = p.intern(thread{pos: -1, parent: -1})
		parent = p.ctx
	}
	for i := deepest; i >= 0; i-- {
		if at.stack[i] != bottom {
			parent = p.intern(thread{at.stack[i], parent})
		}
	}
	r.one[0] = thread{at.pos, parent}
	baseHeight := p.heightOf(parent)
	p.budget, p.highest, p.full, p.peak = budget, baseHeight, false, 0
	// The named nodes are the walk's "state": lowest is the lowest of them it popped.
	p.watch, p.lowest = int32(len(p.nodes)), baseHeight+1
	defer func() { p.watch = 0 }()
	accepted := make([]uint64, (v.size+63)/64)
	pops := r.undecidedBits[:0]
	pops = append(pops, make([]uint64, (len(v.sorted)+63)/64)...)
	limited := r.scan(v, r.one[:], nil, accepted, pops)
	p.truncate(base)
	p.ctx = noContext
	pm = &positionMask{cost: budget - p.budget, peak: p.peak, rise: p.highest - baseHeight, read: baseHeight + 1 - p.lowest}
	if p.budget < 0 || limited {
		pm.unusable = true
		return pm, budget >= maxPositionWork
	}
	for i, w := range pops {
		for ; w != 0; w &= w - 1 {
			pm.undecided = append(pm.undecided, int32(i*64+bits.TrailingZeros64(w)))
		}
	}
	for _, w := range accepted {
		if w != 0 {
			pm.accepted = accepted
			break
		}
	}
	return pm, true
}

// positionsWalk sets m from the position cache (computing the positions r's threads need);
// ok is false when the cache cannot give the full walk's mask (see the file comment), and m
// must then be cleared and walked.
func (g *Grammar) positionsWalk(r *cfgRow, m []uint64) (lowest, rise int32, ok bool) {
	if len(r.threads) > maxPositionThreads || g.fullWalks {
		return 0, 0, false
	}
	v := g.v
	top := r.top()
	var pms [maxPositionThreads]*positionMask
	spare := maxPositionWork
	cost, peak := 0, 0
	rise = 0
	lowest = top + 1
	for i, t := range r.threads {
		at := r.positionOf(t)
		g.mu.Lock()
		pm := g.positions[at]
		g.mu.Unlock()
		if pm == nil {
			var learnt bool
			pm, learnt = r.positionWalk(v, at, spare)
			spare -= pm.cost
			if !learnt {
				return 0, 0, false
			}
			g.keepPosition(at, pm)
		}
		h := r.p.heightOf(t.parent)
		lowest = min(lowest, h+1-pm.read)
		if pm.unusable || h+pm.rise > MaxParserDepth {
			return 0, 0, false
		}
		pms[i] = pm
		cost += pm.cost
		peak += pm.peak
		rise = max(rise, h+pm.rise-top)
	}
	if cost > MaxMaskWork || peak > MaxParserThreads {
		return 0, 0, false
	}
	// The undecided tokens of all threads, in sorted order.
	words := (len(v.sorted) + 63) / 64
	undecided := append(r.undecidedBits[:0], make([]uint64, words)...)
	for _, pm := range pms[:len(r.threads)] {
		for _, i := range pm.undecided {
			undecided[i/64] |= 1 << (i % 64)
		}
		for w, x := range pm.accepted {
			m[w] |= x
		}
	}
	list := r.undecided[:0]
	if list == nil {
		list = make([]int32, 0, 64) // not nil: nil walks every token
	}
	for w, x := range undecided {
		for ; x != 0; x &= x - 1 {
			list = append(list, int32(w*64+bits.TrailingZeros64(x)))
		}
	}
	r.undecidedBits, r.undecided = undecided, list
	walkLowest, walkRise, limited := r.walk(v, m, list, MaxMaskWork-cost)
	if limited || r.p.budget < 0 {
		return 0, 0, false
	}
	return min(lowest, walkLowest), max(rise, walkRise), true
}

// keepPosition caches pm for pos, its bytes counted with the masks'.
func (g *Grammar) keepPosition(pos position, pm *positionMask) {
	n := pm.bytes()
	g.mu.Lock()
	if g.positions[pos] != nil {
		g.mu.Unlock()
		return
	}
	g.positions[pos] = pm
	g.maskBytes += n
	g.posBytes += n
	c := g.c
	g.mu.Unlock()
	if c != nil && c.maskBytes.Add(n) > MaxMaskBytes {
		c.dropMasks()
	}
}

// cfgWalk sets m to the mask of r's state: from the position cache where it gives the full
// walk's mask, else by the full walk.
func (g *Grammar) cfgWalk(r *cfgRow, m []uint64) (lowest, rise int32) {
	if lowest, rise, ok := g.positionsWalk(r, m); ok {
		return lowest, rise
	}
	clear(m)
	lowest, rise, _ = r.walk(g.v, m, nil, MaxMaskWork)
	return lowest, rise
}

// maxLearnStates and maxLearnBytes bound the states compile searches for positions to learn,
// maxLearnSteps the thread visits of the search's steps (a JSON grammar's 64 states take
// ~100k; a state of more than maxPositionThreads threads is not expanded, as its positions
// are not learnt).
const (
	maxLearnStates = 64
	maxLearnBytes  = 16
	maxLearnSteps  = 1 << 20
)

// learnPositions learns the positions of the states near g's start (see the file comment).
// It runs before g is shared: g.c is nil, and Compile counts the bytes when it keeps g.
func (g *Grammar) learnPositions() {
	r, ok := newCFGRow(g.cfg, g.v.maxLen)
	if !ok {
		return
	}
	type state struct {
		threads []thread
		depth   int
	}
	seen := map[string]bool{string(r.stateKey(0)): true}
	queue := []state{{slices.Clone(r.threads), 0}}
	walks, steps := maxPositionWork, maxLearnSteps
	var next []thread
	for i := 0; i < len(queue); i++ {
		s := queue[i]
		if len(s.threads) <= maxPositionThreads {
			r.threads = s.threads
			for _, t := range s.threads {
				at := r.positionOf(t)
				if g.positions[at] != nil {
					continue
				}
				pm, learnt := r.positionWalk(g.v, at, walks)
				walks -= pm.cost
				if !learnt {
					return
				}
				g.keepPosition(at, pm)
			}
		}
		if s.depth == maxLearnBytes || len(s.threads) > maxPositionThreads {
			continue
		}
		for c := range 256 {
			if len(queue) == maxLearnStates {
				break
			}
			r.p.budget = steps
			var acc bool
			next, acc, ok = r.p.step(s.threads, byte(c), next[:0])
			if steps = r.p.budget; steps < 0 {
				return
			}
			if !ok || len(next) == 0 {
				continue
			}
			r.threads, r.acc = next, acc
			if k := r.stateKey(0); !seen[string(k)] {
				seen[string(k)] = true
				queue = append(queue, state{slices.Clone(next), s.depth + 1})
			}
		}
	}
}
