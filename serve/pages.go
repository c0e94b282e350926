package serve

// pageAllocator hands out KV-cache pages and keeps the prefix cache: full pages indexed by a
// pageKey (prefixcache.go) so later sequences that start with the same tokens, computed by the
// same weights, reuse them instead of recomputing. It is used by the engine loop only (no
// locking), and allocates nothing after construction except when the index grows.
//
// Every page is in exactly one of three states:
//   - free: holds nothing reusable (len(free));
//   - in use: refs > 0 sequences have it in their block tables; a page indexed in the cache
//     may be in several (shared prompt pages), an unindexed one in only one (its writer);
//   - cached: indexed, refs == 0, on the LRU list; alloc takes the least recently released
//     one (dropping it from the index) once no free page is left.
//
// A sequence writes only into pages it alone holds: a page is indexed only once it is full, and
// a sequence never writes to a full page again, so a shared page is never written.
type pageAllocator struct {
	free []int32
	size int

	refs    []int32
	indexed []bool
	keys    []pageKey
	index   map[pageKey]int32 // nil: prefix caching off
	// The LRU list of cached pages, linked through prev/next (-1 ends it): head is the least
	// recently released.
	prev, next []int32
	head, tail int32
	lruLen     int
	evictions  int64 // cached pages reused for other contents (the engine publishes it)

	// KV-cache events (kvevents.go), nil when off: each indexed page's llm-d block hash, and
	// the log that hears of pages leaving the index.
	ext    []uint64
	events *kvEventLog
}

func newPageAllocator(pages, size int, caching bool) *pageAllocator {
	a := &pageAllocator{free: make([]int32, pages), size: size, refs: make([]int32, pages), head: -1, tail: -1}
	for i := range a.free {
		a.free[i] = int32(pages - 1 - i) // pop from the end: page 0 first
	}
	if caching {
		a.indexed = make([]bool, pages)
		a.keys = make([]pageKey, pages)
		a.index = make(map[pageKey]int32, pages)
		a.prev, a.next = make([]int32, pages), make([]int32, pages)
	}
	return a
}

// caching reports whether full pages are indexed for reuse.
func (a *pageAllocator) caching() bool { return a.index != nil }

// available is the number of pages alloc can hand out: free ones and cached ones nobody uses.
func (a *pageAllocator) available() int { return len(a.free) + a.lruLen }

// alloc hands out a page its caller alone holds: a free one, else the least recently used
// cached one, which leaves the index.
func (a *pageAllocator) alloc() (int32, bool) {
	if n := len(a.free); n > 0 {
		p := a.free[n-1]
		a.free = a.free[:n-1]
		a.refs[p] = 1
		return p, true
	}
	if a.head < 0 {
		return 0, false
	}
	p := a.head
	a.unlink(p)
	a.unindex(p)
	a.refs[p] = 1
	a.evictions++
	return p, true
}

// release drops one reference to each page; a page nobody holds becomes cached when it is
// indexed (most recently used end of the LRU list), free otherwise.
func (a *pageAllocator) release(pages []int32) {
	for _, p := range pages {
		if a.refs[p]--; a.refs[p] > 0 {
			continue
		}
		if a.caching() && a.indexed[p] {
			a.pushBack(p)
		} else {
			a.free = append(a.free, p)
		}
	}
}

// lookup returns the cached page of key with a reference taken for the caller.
func (a *pageAllocator) lookup(key pageKey) (int32, bool) {
	if !a.caching() {
		return 0, false
	}
	p, ok := a.index[key]
	if !ok {
		return 0, false
	}
	if a.refs[p] == 0 {
		a.unlink(p)
	}
	a.refs[p]++
	return p, true
}

// register indexes page p, which its holder has filled (or will have filled by the end of the
// step being built, before any other row of that step reads it: every layer stores the step's
// keys and values before its attention reads them), under key, with ext its llm-d block hash
// when events are on. A key already indexed keeps its page: p then stays private to its holder
// and is freed with it. It reports whether p entered the index.
func (a *pageAllocator) register(p int32, key pageKey, ext uint64) bool {
	if !a.caching() || a.indexed[p] {
		return false
	}
	if _, dup := a.index[key]; dup {
		return false
	}
	a.index[key] = p
	a.indexed[p], a.keys[p] = true, key
	if a.events != nil {
		a.ext[p] = ext
	}
	return true
}

// publishEvents makes the allocator keep each indexed page's llm-d hash and tell log when
// pages leave the index.
func (a *pageAllocator) publishEvents(log *kvEventLog) {
	if a.caching() {
		a.ext = make([]uint64, len(a.refs))
		a.events = log
	}
}

// forget empties the index: after a failed step, pages indexed while building it may hold
// anything. Cached pages become free; pages in use stay with their holders, unindexed.
func (a *pageAllocator) forget() {
	if !a.caching() {
		return
	}
	for a.head >= 0 {
		p := a.head
		a.unlink(p)
		a.free = append(a.free, p)
	}
	clear(a.index)
	clear(a.indexed)
	if a.events != nil {
		a.events.cleared()
	}
}

func (a *pageAllocator) unindex(p int32) {
	if a.indexed[p] {
		delete(a.index, a.keys[p])
		a.indexed[p] = false
		if a.events != nil {
			a.events.removed(a.ext[p])
		}
	}
}

func (a *pageAllocator) pushBack(p int32) {
	a.prev[p], a.next[p] = a.tail, -1
	if a.tail >= 0 {
		a.next[a.tail] = p
	} else {
		a.head = p
	}
	a.tail = p
	a.lruLen++
}

func (a *pageAllocator) unlink(p int32) {
	if a.prev[p] >= 0 {
		a.next[a.prev[p]] = a.next[p]
	} else {
		a.head = a.next[p]
	}
	if a.next[p] >= 0 {
		a.prev[a.next[p]] = a.prev[p]
	} else {
		a.tail = a.prev[p]
	}
	a.lruLen--
}

// pagesFor is the number of pages n tokens occupy.
func (a *pageAllocator) pagesFor(n int) int { return (n + a.size - 1) / a.size }
