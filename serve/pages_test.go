package serve

import (
	"math/rand/v2"
	"testing"
)

// The page allocator never hands out a page someone holds, never loses a page, reuses cached
// pages least recently released first, and a lookup finds exactly the pages indexed and not
// yet reused: random alloc / register / lookup / release / forget sequences against a model of
// the rules.
func TestPageAllocatorKeepsItsInvariants(t *testing.T) {
	const pages = 12
	rng := rand.New(rand.NewPCG(3, 4))
	a := newPageAllocator(pages, 4, true)
	held := map[int32]int{}        // page -> references held by the test
	indexed := map[pageKey]int32{} // the model of the index
	var released []int32           // indexed pages released to refs 0, oldest first
	key := func(i int) pageKey { return pageKey{byte(i), byte(i >> 8), 1} }
	drop := func(p int32) {
		for k, q := range indexed {
			if q == p {
				delete(indexed, k)
			}
		}
		for i, q := range released {
			if q == p {
				released = append(released[:i], released[i+1:]...)
				break
			}
		}
	}
	isIndexed := func(p int32) bool {
		for _, q := range indexed {
			if q == p {
				return true
			}
		}
		return false
	}
	for step := 0; step < 20000; step++ {
		switch op := rng.IntN(10); {
		case op < 4:
			freeBefore := len(a.free)
			p, ok := a.alloc()
			if !ok {
				if a.available() != 0 {
					t.Fatalf("step %d: alloc failed with %d available", step, a.available())
				}
				continue
			}
			if held[p] != 0 {
				t.Fatalf("step %d: page %d handed out while held", step, p)
			}
			if freeBefore == 0 {
				// No free page: the least recently released cached page is reused.
				if len(released) == 0 || released[0] != p {
					t.Fatalf("step %d: reused page %d, want the LRU one of %v", step, p, released)
				}
			}
			drop(p)
			held[p] = 1
		case op < 6:
			for p, n := range held {
				if n == 1 && !isIndexed(p) {
					k := key(rng.IntN(30))
					a.register(p, k, 0)
					if _, dup := indexed[k]; !dup {
						indexed[k] = p
					}
					break
				}
			}
		case op < 8:
			k := key(rng.IntN(30))
			p, ok := a.lookup(k)
			q, want := indexed[k]
			if ok != want || (ok && p != q) {
				t.Fatalf("step %d: lookup = %d %v, want %d %v", step, p, ok, q, want)
			}
			if ok {
				if held[p] == 0 {
					drop(p)
					indexed[k] = p
				}
				held[p]++
			}
		case op < 9:
			for p := range held {
				a.release([]int32{p})
				if held[p]--; held[p] == 0 {
					delete(held, p)
					if isIndexed(p) {
						released = append(released, p)
					}
				}
				break
			}
		default:
			if rng.IntN(50) == 0 {
				a.forget()
				indexed, released = map[pageKey]int32{}, nil
			}
		}
		if got, want := a.available(), pages-len(held); got != want {
			t.Fatalf("step %d: %d available, want %d (held %v)", step, got, want, held)
		}
	}
}

// With caching off nothing is indexed: released pages are free at once and lookups miss.
func TestPageAllocatorWithoutCaching(t *testing.T) {
	a := newPageAllocator(2, 4, false)
	p, _ := a.alloc()
	a.register(p, pageKey{1}, 0)
	a.release([]int32{p})
	if _, ok := a.lookup(pageKey{1}); ok || a.available() != 2 {
		t.Fatalf("lookup hit %v, %d available", ok, a.available())
	}
}

// Filling, indexing, reusing and evicting pages allocates nothing once warm: a decode step that
// fills a page pays a hash and a map insert into an index sized for every page.
func TestPageCycleAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	const pages = 64
	a := newPageAllocator(pages, 16, true)
	e := &Engine{opt: Options{PageSize: 16}, pages: a}
	sq := &sequence{identity: baseIdentity, cacheable: true, tokens: make([]int, 16*pages*4), keys: make([]pageKey, 0, pages*4)}
	held := make([]int32, 0, pages)
	i := 0
	cycle := func() {
		if i == pages*4 {
			i, sq.keys = 0, sq.keys[:0]
			a.release(held)
			held = held[:0]
		}
		p, ok := a.alloc()
		if !ok {
			a.release(held)
			held = held[:0]
			p, _ = a.alloc()
		}
		a.register(p, e.pageKeyAt(sq, i), 0)
		if q, ok := a.lookup(sq.keys[i]); ok {
			a.release([]int32{q})
		}
		held = append(held, p)
		i++
	}
	for range pages * 8 {
		cycle()
	}
	if n := testing.AllocsPerRun(500, cycle); n != 0 {
		t.Fatalf("%v allocations per page cycle", n)
	}
}
