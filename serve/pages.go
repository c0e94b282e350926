package serve

// pageAllocator hands out KV-cache pages. It is used by the engine loop only (no locking).
type pageAllocator struct {
	free []int32
	size int
}

func newPageAllocator(pages, size int) *pageAllocator {
	a := &pageAllocator{free: make([]int32, pages), size: size}
	for i := range a.free {
		a.free[i] = int32(pages - 1 - i) // pop from the end: page 0 first
	}
	return a
}

func (a *pageAllocator) available() int { return len(a.free) }

func (a *pageAllocator) alloc() (int32, bool) {
	if len(a.free) == 0 {
		return 0, false
	}
	p := a.free[len(a.free)-1]
	a.free = a.free[:len(a.free)-1]
	return p, true
}

func (a *pageAllocator) release(pages []int32) { a.free = append(a.free, pages...) }

// pagesFor is the number of pages n tokens occupy.
func (a *pageAllocator) pagesFor(n int) int { return (n + a.size - 1) / a.size }
