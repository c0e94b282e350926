package tokenizer

import (
	"fmt"
	"slices"
	"sync"
	"unicode/utf8"
)

// bpeModel is HF's BPE model (models/bpe/model.rs) without dropout.
type bpeModel struct {
	vocab  map[string]int
	vocabR []string // id -> token; "" for holes
	merges map[uint64]mergeInfo
	// newIDByRank[r] is the token merge r produces.
	newIDByRank []int32
	unkID       int // -1 when there is no unk token
	unkToken    string

	continuingPrefix string
	endOfWordSuffix  string
	fuseUnk          bool
	byteFallback     bool
	ignoreMerges     bool
	// byteIDs[b] is the id of "<0xNN>" for byte fallback, -1 if absent.
	byteIDs [256]int

	cache wordCache
}

type mergeInfo struct {
	rank  int32
	newID int32
}

func pairKey(a, b int) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// tokenize appends the ids for one pre-token to dst.
func (m *bpeModel) tokenize(dst []int, word string) []int {
	if word == "" {
		return dst
	}
	// ignore_merges: a pre-token that is itself a vocab entry is emitted whole,
	// even when the merge rules would split it differently.
	if m.ignoreMerges {
		if id, ok := m.vocab[word]; ok {
			return append(dst, id)
		}
	}
	if ids, ok := m.cache.get(word); ok {
		return append(dst, ids...)
	}
	start := len(dst)
	dst = m.mergeWord(dst, word)
	if len(word) < maxCachedWordLen {
		m.cache.put(word, dst[start:])
	}
	return dst
}

// tokenizeUncached is tokenize without the word cache, for callers that
// cache at their own level.
func (m *bpeModel) tokenizeUncached(dst []int, word string) []int {
	if word == "" {
		return dst
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[word]; ok {
			return append(dst, id)
		}
	}
	return m.mergeWord(dst, word)
}

// symbol is one node of the doubly linked list the merge loop works on.
// int32 fields keep it at 16 bytes: a pre-token can be a whole prompt
// (Llama 2 has no pre-tokenizer), so this is paid per input character.
type symbol struct {
	id         int32
	prev, next int32 // indices into the symbol slice, -1 at the ends
	alive      bool
}

// mergeCand is rank<<32 | pos: lowest rank first and, on equal rank (the
// same pair at several places), the leftmost, exactly as HF's BinaryHeap of
// Merge pops them. One integer compare keeps the heap cheap, and 8 bytes
// keep it small; the merged token, which HF keeps in the entry to
// recognise stale ones, is newIDByRank[rank].
type mergeCand uint64

func newCand(rank int32, pos int) mergeCand {
	return mergeCand(uint64(uint32(rank))<<32 | uint64(uint32(pos)))
}

func (c mergeCand) pos() int    { return int(uint32(c)) }
func (c mergeCand) rank() int32 { return int32(c >> 32) }

// candHeap is a binary min-heap of merge candidates, typed to avoid the
// interface boxing of container/heap on this hot path.
type candHeap []mergeCand

func (h candHeap) less(i, j int) bool { return h[i] < h[j] }

func (h candHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

func (h candHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *candHeap) push(c mergeCand) {
	*h = append(*h, c)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *candHeap) pop() mergeCand {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	*h = q[:last]
	if last > 0 {
		(*h).down(0)
	}
	return top
}

type mergeScratch struct {
	syms []symbol
	heap candHeap
}

// maxPooledSymbols bounds the scratch kept for reuse: one huge pre-token
// must not pin its buffers after the request is gone.
const maxPooledSymbols = 1 << 16

var scratchPool = sync.Pool{New: func() any { return &mergeScratch{} }}

// mergeWord splits word into initial symbols (chars, byte-fallback bytes or
// unk) and applies merges lowest rank first.
func (m *bpeModel) mergeWord(dst []int, word string) []int {
	sc := scratchPool.Get().(*mergeScratch)
	defer func() {
		if cap(sc.syms) > maxPooledSymbols {
			sc.syms, sc.heap = nil, nil
		}
		scratchPool.Put(sc)
	}()
	// Every symbol comes from at least one byte of word, so len(word) bounds
	// their number: sized once, the list never regrows (append's 1.25x
	// growth on big slices allocated ~5x the final size, 2.8 GB for a 15 MB
	// prompt).
	if cap(sc.syms) < len(word) {
		sc.syms = make([]symbol, 0, len(word))
	}
	syms := sc.syms[:0]
	add := func(id int) {
		n := int32(len(syms))
		syms = append(syms, symbol{id: int32(id), prev: n - 1, next: n + 1, alive: true})
	}
	// pending unk, flushed when a known char arrives (byte-fallback bytes do
	// not flush it: that is HF's order of operations).
	unkPending := false
	var key []byte
	for i := 0; i < len(word); {
		_, size := utf8.DecodeRuneInString(word[i:])
		ch := word[i : i+size]
		first, last := i == 0, i+size == len(word)
		i += size
		s := ch
		if (!first && m.continuingPrefix != "") || (last && m.endOfWordSuffix != "") {
			key = key[:0]
			if !first {
				key = append(key, m.continuingPrefix...)
			}
			key = append(key, ch...)
			if last {
				key = append(key, m.endOfWordSuffix...)
			}
			s = string(key)
		}
		if id, ok := m.vocab[s]; ok {
			if unkPending {
				add(m.unkID)
				unkPending = false
			}
			add(id)
			continue
		}
		if m.byteFallback {
			okAll := true
			for j := 0; j < len(s); j++ {
				if m.byteIDs[s[j]] < 0 {
					okAll = false
					break
				}
			}
			if okAll {
				for j := 0; j < len(s); j++ {
					add(m.byteIDs[s[j]])
				}
				continue
			}
		}
		if m.unkID >= 0 {
			if unkPending && !m.fuseUnk {
				add(m.unkID)
			}
			unkPending = true
		}
		// Without an unk token HF drops the character silently.
	}
	if unkPending {
		add(m.unkID)
	}
	if len(syms) == 0 {
		sc.syms = syms
		return dst
	}
	syms[len(syms)-1].next = -1

	// Each merge pops one candidate and pushes at most two, so the queue
	// never holds more than its first candidates plus one per merge, and
	// there are fewer merges than symbols: sized once, it never regrows
	// (and a word with no candidates needs none).
	first := 0
	for i := 0; i+1 < len(syms); i++ {
		if _, ok := m.merges[pairKey(int(syms[i].id), int(syms[i+1].id))]; ok {
			first++
		}
	}
	if first > 0 && cap(sc.heap) < first+len(syms) {
		sc.heap = make(candHeap, 0, first+len(syms))
	}
	h := sc.heap[:0]
	for i := 0; i+1 < len(syms) && len(h) < first; i++ {
		if mi, ok := m.merges[pairKey(int(syms[i].id), int(syms[i+1].id))]; ok {
			h = append(h, newCand(mi.rank, i))
		}
	}
	h.init()
	merged := 0
	for len(h) > 0 {
		c := h.pop()
		pos := c.pos()
		left := &syms[pos]
		if !left.alive || left.next < 0 {
			continue
		}
		right := &syms[left.next]
		// Stale candidate: one side has been merged since it was queued.
		if mi, ok := m.merges[pairKey(int(left.id), int(right.id))]; !ok || mi.newID != m.newIDByRank[c.rank()] {
			continue
		}
		left.id = m.newIDByRank[c.rank()]
		right.alive = false
		merged++
		left.next = right.next
		if right.next >= 0 {
			syms[right.next].prev = int32(pos)
		}
		if left.prev >= 0 {
			p := &syms[left.prev]
			if mi, ok := m.merges[pairKey(int(p.id), int(left.id))]; ok {
				h.push(newCand(mi.rank, int(left.prev)))
			}
		}
		if left.next >= 0 {
			if mi, ok := m.merges[pairKey(int(left.id), int(syms[left.next].id))]; ok {
				h.push(newCand(mi.rank, pos))
			}
		}
	}
	// One exact growth for a long word instead of append's 1.25x steps.
	dst = slices.Grow(dst, len(syms)-merged)
	for i := int32(0); i >= 0; i = syms[i].next {
		dst = append(dst, int(syms[i].id))
	}
	sc.syms, sc.heap = syms, h
	return dst
}

// buildMerges turns the merges list into the pair map, checking every token
// exists, as HF's BpeBuilder does.
func (m *bpeModel) buildMerges(merges [][2]string) error {
	m.merges = make(map[uint64]mergeInfo, len(merges))
	m.newIDByRank = make([]int32, len(merges))
	for rank, p := range merges {
		a, ok := m.vocab[p[0]]
		if !ok {
			return malformed("model.merges", "merge %d: token %q not in vocab", rank, p[0])
		}
		b, ok := m.vocab[p[1]]
		if !ok {
			return malformed("model.merges", "merge %d: token %q not in vocab", rank, p[1])
		}
		right := p[1]
		if len(m.continuingPrefix) > 0 && len(right) >= len(m.continuingPrefix) && right[:len(m.continuingPrefix)] == m.continuingPrefix {
			right = right[len(m.continuingPrefix):]
		}
		n, ok := m.vocab[p[0]+right]
		if !ok {
			return malformed("model.merges", "merge %d: result %q not in vocab", rank, p[0]+right)
		}
		m.merges[pairKey(a, b)] = mergeInfo{rank: int32(rank), newID: int32(n)}
		m.newIDByRank[rank] = int32(n)
	}
	return nil
}

func (m *bpeModel) initByteFallback() {
	for b := 0; b < 256; b++ {
		m.byteIDs[b] = -1
		if id, ok := m.vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.byteIDs[b] = id
		}
	}
}

// maxCachedWordLen bounds cached keys (HF uses 256 too): long words are rare
// and would bloat the cache.
const maxCachedWordLen = 256

// wordCacheCap bounds the number of cached words; when full it is simply
// reset, which keeps memory bounded without LRU bookkeeping on the hot path.
const wordCacheCap = 50000

// wordCache is a bounded, concurrency-safe pre-token -> ids cache.
type wordCache struct {
	mu sync.RWMutex
	m  map[string][]int
}

func (c *wordCache) get(w string) ([]int, bool) {
	c.mu.RLock()
	ids, ok := c.m[w]
	c.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []int) {
	cp := append([]int(nil), ids...)
	c.mu.Lock()
	if c.m == nil || len(c.m) >= wordCacheCap {
		c.m = make(map[string][]int, 1024)
	}
	c.m[w] = cp
	c.mu.Unlock()
}
