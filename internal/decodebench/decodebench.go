// Package decodebench measures end-to-end decode throughput one way for every backend's
// benchmark (serve's on the CPU, cuda's on the GPU): rounds of concurrent requests, the first
// round untimed. It does not import serve, so serve's own benchmarks can use it; the caller
// starts each request.
package decodebench

import (
	"sync"
	"testing"
	"time"
)

// Schema is the benchmarks' JSON schema: its outputs can hardly end within a benchmark's few
// dozen tokens (the string needs 200 characters), so constrained and free requests generate
// about the same number of tokens (tok/s counts the tokens generated either way).
const Schema = `{"type":"object","properties":{"text":{"type":"string","minLength":200,"maxLength":200},"n":{"type":"integer"}},"required":["text","n"]}`

// Wait blocks until a started request ends and says how many tokens it generated and how it
// finished.
type Wait func() (tokens int, finish string, err error)

// TokensPerSecond runs rounds of batch requests at once while b.Loop runs: start(seed) starts
// one request (from the benchmark's goroutine, in order, seeds counting up from *seed) and
// returns how to wait for it. A request that fails or finishes with "error" fails the benchmark.
// It returns the tokens per second of every round but the first, which is untimed (it compiles
// the constraint, computes the masks of the states it visits and, on CUDA, records the step
// graphs), so -benchtime must allow two rounds or more (-benchtime=10x).
func TokensPerSecond(b *testing.B, batch int, seed *uint64, start func(seed uint64) Wait) float64 {
	var tokens int
	var elapsed time.Duration
	for round := 0; b.Loop(); round++ {
		t0 := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		n := 0
		for range batch {
			*seed++
			wait := start(*seed)
			wg.Go(func() {
				got, finish, err := wait()
				if err != nil || finish == "error" {
					b.Errorf("finish %q, %v", finish, err)
				}
				mu.Lock()
				n += got
				mu.Unlock()
			})
		}
		wg.Wait()
		if round > 0 {
			tokens += n
			elapsed += time.Since(t0)
		}
	}
	if elapsed == 0 {
		b.Fatal("only the untimed first round ran: run with -benchtime=10x (or more)")
	}
	return float64(tokens) / elapsed.Seconds()
}
