package serve

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
)

// stepGate is an Observer that holds the scheduler after its first step until released, and
// records the step in which each request finished, by prompt length: it lets a test submit a
// request at a known point of another one's prefill without timing anything.
type stepGate struct {
	held     chan struct{} // closed once the scheduler is held
	release  chan struct{}
	mu       sync.Mutex
	steps    int
	finished map[int]int // prompt tokens -> the step that finished the request
}

func (g *stepGate) FirstToken(string, time.Duration) {}
func (g *stepGate) NextToken(string, time.Duration)  {}
func (g *stepGate) Finished(r FinishedRequest) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.finished[r.PromptTokens] = g.steps
}
func (g *stepGate) Step(int, int, time.Duration) {
	g.mu.Lock()
	g.steps++
	first := g.steps == 1
	g.mu.Unlock()
	if first {
		close(g.held)
		<-g.release
	}
}

// A short request submitted while a long prompt is mid-prefill gets its first token at the
// next step, before the long prompt's prefill completes, and the long prompt still takes no
// more steps than its rows and the short request's need (the demo model on the CPU).
func TestShortRequestIsNotHeldBehindLongPrefill(t *testing.T) {
	root, err := demo.Extract()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "model")
	b := cpu.New(2)
	t.Cleanup(b.Close)
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	const budget, longLen, shortLen = 64, 1000, 16
	e, err := NewEngine(cfg, b, w, nil, Options{ModelName: "m", MaxNumSeqs: 4, MaxBatchedTokens: budget, MaxModelLen: cfg.MaxPositions,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	gate := &stepGate{held: make(chan struct{}), release: make(chan struct{}), finished: map[int]int{}}
	e.SetObserver(gate)

	prompt := func(n, seed int) []int {
		p := make([]int, n)
		for i := range p {
			p[i] = (i*7 + seed) % cfg.VocabSize
		}
		return p
	}
	run := func(p []int) *Stream {
		s, err := e.Generate(context.Background(), Request{Model: "m", Prompt: p, Params: greedyParams(1)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	long := run(prompt(longLen, 1))
	<-gate.held // the long prompt has had its first chunk, and the scheduler waits
	short := run(prompt(shortLen, 2))
	close(gate.release)
	for _, s := range []*Stream{short, long} {
		for {
			ev, ok := s.Next(context.Background())
			if !ok || ev.Err != nil {
				t.Fatalf("stream ended without finishing: %v", ev.Err)
			}
			if ev.Finish != "" {
				break
			}
		}
	}
	waitIdle(t, e)
	gate.mu.Lock()
	defer gate.mu.Unlock()
	shortStep, longStep := gate.finished[shortLen], gate.finished[longLen]
	if shortStep != 2 || longStep <= shortStep {
		t.Errorf("short request's first token in step %d, long prompt's in step %d: want the short one in step 2, before the long one", shortStep, longStep)
	}
	if most := (longLen + shortLen + budget - 1) / budget; longStep > most {
		t.Errorf("long prompt took %d steps, want at most %d", longStep, most)
	}
}
