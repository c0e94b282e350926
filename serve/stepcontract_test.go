package serve

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
)

// asyncDevice is the CPU backend seen as a device whose ops finish later, as CUDA's do: the
// adapter weights a LoRA op reads stay "in flight" until the step is known to be complete (a
// synchronising Read or Sample, or Sync), and freeing a tensor in flight is what would let the
// GPU read a reused slab. It records every such free, and steps that began before the
// previous one was synchronised.
type asyncDevice struct {
	*cpu.Backend
	mu       sync.Mutex
	inFlight map[uintptr]bool
	open     bool // a step began (Prepare) and has not been synchronised
	steps    int
	syncs    int
	unsynced int            // steps that began before the previous one was synchronised
	freed    []string       // tensors freed while a step could still read them
	onStep   func(step int) // called from Prepare with the step's number (1-based)
}

func dataOf(t model.Tensor) uintptr { return reflect.ValueOf(t.Buf).Pointer() }

func (d *asyncDevice) Prepare(s *model.Step) error {
	d.mu.Lock()
	if d.open {
		d.unsynced++
	}
	d.open = true
	d.steps++
	n, hook := d.steps, d.onStep
	d.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	return d.Backend.Prepare(s)
}

func (d *asyncDevice) LoRA(out, x model.Tensor, segs []model.LoRASeg) {
	d.mu.Lock()
	for _, sg := range segs {
		d.inFlight[dataOf(sg.A)], d.inFlight[dataOf(sg.B)] = true, true
	}
	d.mu.Unlock()
	d.Backend.LoRA(out, x, segs)
}

// completed marks everything queued so far as done.
func (d *asyncDevice) completed() {
	d.mu.Lock()
	clear(d.inFlight)
	d.mu.Unlock()
}

func (d *asyncDevice) Read(t model.Tensor, dst []float32) error {
	err := d.Backend.Read(t, dst)
	d.completed()
	return err
}

func (d *asyncDevice) Sample(logits model.Tensor, rows []model.SampleRow, out []model.SampleResult) error {
	err := d.Backend.Sample(logits, rows, out)
	d.completed()
	return err
}

// Sync implements model.StepSynchronizer.
func (d *asyncDevice) Sync() error {
	d.completed()
	d.mu.Lock()
	d.open = false
	d.syncs++
	d.mu.Unlock()
	return nil
}

func (d *asyncDevice) Free(t model.Tensor) {
	d.mu.Lock()
	if d.inFlight[dataOf(t)] {
		d.freed = append(d.freed, fmt.Sprintf("a %s adapter tensor was freed while step %d could still read it", t.Shape(), d.steps))
	}
	d.mu.Unlock()
	d.Backend.Free(t)
}

// Every step ends complete (model.StepSynchronizer) before the engine releases anything it
// read: requests cancelled in the middle of their prefill (steps made only of prefill chunks,
// which read nothing back) under adapter churn (two device slots, four adapters) never get
// their adapter freed while a step may still read it; every step is synchronised before the
// next begins; and the requests that survive get the tokens they get alone.
func TestStepsEndCompleteBeforeReleases(t *testing.T) {
	d := &asyncDevice{Backend: cpu.New(2), inFlight: map[uintptr]bool{}}
	t.Cleanup(d.Close)
	opt := Options{MaxNumSeqs: 4, MaxBatchedTokens: 4, MaxLoRAs: 2}
	e := fixtureEngine(t, "llama", d, nil, opt, fixture.Adapters)
	long := make([]int, 64)
	for i := range long {
		long[i] = (7*i + 3) % 300
	}
	// Victims: 64-token prompts prefilled 4 tokens a step, cancelled after a few steps.
	type victim struct {
		adapter string
		at      int // cancelled in the Prepare of this step
		cancel  context.CancelFunc
	}
	victims := []*victim{{adapter: fixture.Adapters[0], at: 3}, {adapter: fixture.Adapters[1], at: 6}}
	var vmu sync.Mutex
	d.mu.Lock()
	d.onStep = func(n int) {
		vmu.Lock()
		defer vmu.Unlock()
		for _, v := range victims {
			if v.at == n && v.cancel != nil {
				v.cancel()
			}
		}
	}
	d.mu.Unlock()
	var streams []*Stream
	for _, v := range victims {
		ctx, cancel := context.WithCancel(context.Background())
		vmu.Lock()
		v.cancel = cancel
		vmu.Unlock()
		s, err := e.Generate(ctx, Request{Model: v.adapter, Prompt: long, Params: greedyParams(8)})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	// Survivors: the other two adapters, queued behind the victims; they need the victims'
	// device slots, so the cache evicts the victims' adapters as soon as they are released.
	type survivor struct {
		req Request
		s   *Stream
	}
	var survivors []*survivor
	for i, a := range []string{fixture.Adapters[2], fixture.Adapters[3], fixture.Adapters[2], fixture.Adapters[3]} {
		req := Request{Model: a, Prompt: []int{1 + i, 20 + i, 30, 40 + i, 5}, Params: greedyParams(10)}
		s, err := e.Generate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		survivors = append(survivors, &survivor{req, s})
	}
	for i, s := range streams {
		ev, _ := s.Collect(context.Background())
		if ev.Finish != "abort" || KindOf(ev.Err) != KindCanceled || len(ev.Tokens) > 0 {
			t.Fatalf("victim %d: finish %q, err %v, %d tokens (want cancelled during prefill)", i, ev.Finish, ev.Err, len(ev.Tokens))
		}
	}
	got := make([][]int, len(survivors))
	for i, sv := range survivors {
		ev, err := sv.s.Collect(context.Background())
		if err != nil {
			t.Fatalf("survivor %d: %v", i, err)
		}
		got[i] = ev.Tokens
	}
	// Let the adapter cache finish its evictions before reading the record.
	time.Sleep(50 * time.Millisecond)
	d.mu.Lock()
	freed, steps, syncs, unsynced := slices.Clone(d.freed), d.steps, d.syncs, d.unsynced
	d.mu.Unlock()
	for _, f := range freed[:min(len(freed), 5)] {
		t.Error(f)
	}
	if len(freed) > 0 {
		t.Fatalf("%d adapter tensors freed while a step could read them", len(freed))
	}
	if unsynced > 0 || syncs < steps {
		t.Fatalf("%d steps, %d synchronised, %d began before the previous one was", steps, syncs, unsynced)
	}
	// Solo: each survivor alone on a fresh engine.
	for i, sv := range survivors {
		solo := newTestEngine(t, "llama", nil, Options{MaxLoRAs: 2})
		want := generate(t, solo, sv.req)
		if !slices.Equal(got[i], want.Tokens) {
			t.Errorf("survivor %d (%q): %v under churn, %v alone", i, sv.req.Model, got[i], want.Tokens)
		}
		solo.Close()
	}
	t.Logf("%d steps, each synchronised before the next; no adapter freed while in flight", steps)
}
