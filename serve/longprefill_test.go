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

// demoEngine serves the demo model on the CPU with a small step budget, so that a long prompt
// takes many steps, and a stepGate as its observer.
func demoEngine(t *testing.T, budget int) (*Engine, *stepGate, *model.Config) {
	t.Helper()
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
	e, err := NewEngine(cfg, b, w, nil, Options{ModelName: "m", MaxNumSeqs: 4, MaxBatchedTokens: budget, MaxModelLen: cfg.MaxPositions,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	gate := &stepGate{held: make(chan struct{}), release: make(chan struct{}), finished: map[int]int{}}
	e.SetObserver(gate)
	return e, gate, cfg
}

// submitOne submits a greedy one-token request for a prompt of n tokens.
func submitOne(t *testing.T, e *Engine, cfg *model.Config, n, seed int) *Stream {
	t.Helper()
	p := make([]int, n)
	for i := range p {
		p[i] = (i*7 + seed) % cfg.VocabSize
	}
	s, err := e.Generate(context.Background(), Request{Model: "m", Prompt: p, Params: greedyParams(1)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// finishAll reads every stream to its end and waits for the engine to be idle.
func finishAll(t *testing.T, e *Engine, streams ...*Stream) {
	t.Helper()
	for _, s := range streams {
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
}

// A short request submitted while a long prompt is mid-prefill gets its first token at the
// next step, before the long prompt's prefill completes, and the long prompt still takes no
// more steps than its rows and the short request's need (the demo model on the CPU).
func TestShortRequestIsNotHeldBehindLongPrefill(t *testing.T) {
	const budget, longLen, shortLen = 64, 1000, 16
	e, gate, cfg := demoEngine(t, budget)
	long := submitOne(t, e, cfg, longLen, 1)
	<-gate.held // the long prompt has had its first chunk, and the scheduler waits
	short := submitOne(t, e, cfg, shortLen, 2)
	close(gate.release)
	finishAll(t, e, short, long)
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

// A second long prompt waits while the first one prefills (one long prefill at a time, in
// arrival order, so sharing steps does not delay both), and a short request behind it still
// starts at the next step.
func TestLongPromptsPrefillOneAtATime(t *testing.T) {
	const budget, firstLen, secondLen, shortLen = 64, 600, 500, 16
	e, gate, cfg := demoEngine(t, budget)
	first := submitOne(t, e, cfg, firstLen, 1)
	<-gate.held
	second := submitOne(t, e, cfg, secondLen, 2)
	short := submitOne(t, e, cfg, shortLen, 3)
	close(gate.release)
	finishAll(t, e, first, second, short)
	gate.mu.Lock()
	defer gate.mu.Unlock()
	f, s, sh := gate.finished[firstLen], gate.finished[secondLen], gate.finished[shortLen]
	if sh != 2 {
		t.Errorf("short request finished in step %d, want 2", sh)
	}
	if most := (firstLen + shortLen + budget - 1) / budget; f > most || s <= f {
		t.Errorf("first long prompt finished in step %d (want at most %d), second in step %d (want after the first)", f, most, s)
	}
}
