package serve

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
)

// TestRoutersMatchReference serves every router case of the PyTorch reference
// (testdata/routers/llama) next to the plain adapters and the base model, all submitted at once
// with a small token budget so routed prefill chunks, routed decode rows and unrouted rows share
// steps; every request must produce exactly the reference's greedy tokens. Traced requests get
// one expert per layer per generated token, and the selection counters add up.
func TestRoutersMatchReference(t *testing.T) {
	rfx, err := fixture.LoadRouters("llama")
	if err != nil {
		t.Fatal(err)
	}
	cases := append(loadCases(t, "llama"), rfx.Cases...)
	e := newTestEngine(t, "llama", nil, Options{MaxNumSeqs: 8, MaxBatchedTokens: 12, MaxLoRAs: 4})
	routers := map[string]bool{}
	for _, c := range rfx.Cases {
		if !routers[c.Adapter] {
			routers[c.Adapter] = true
			if err := e.LoadRouter(c.Adapter, filepath.Join(fixture.RoutersRoot(), c.Router)); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(cases))
	var mu sync.Mutex
	traced := 0
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.Generate(context.Background(), Request{Model: c.Adapter, Prompt: c.Prompt, Params: greedyParams(len(c.Steps)), TraceExperts: routers[c.Adapter]})
			if err != nil {
				errs <- err
				return
			}
			var toks []int
			var experts [][]string
			for {
				ev, ok := s.Next(context.Background())
				if !ok {
					break
				}
				toks = append(toks, ev.Tokens...)
				experts = append(experts, ev.Experts...)
				if ev.Err != nil {
					errs <- ev.Err
					return
				}
			}
			if fmt.Sprint(toks) != fmt.Sprint(c.Tokens()) {
				errs <- fmt.Errorf("%q prompt %v: tokens %v, want %v", c.Adapter, c.Prompt, toks, c.Tokens())
				return
			}
			if routers[c.Adapter] {
				if len(experts) != len(toks) {
					errs <- fmt.Errorf("%q: %d traced tokens for %d tokens", c.Adapter, len(experts), len(toks))
					return
				}
				for _, layer := range experts {
					if len(layer) != 2 {
						errs <- fmt.Errorf("%q: trace %v, want one entry per layer", c.Adapter, layer)
						return
					}
				}
				mu.Lock()
				traced += len(experts)
				mu.Unlock()
			} else if len(experts) != 0 {
				errs <- fmt.Errorf("%q is not routed but has a trace", c.Adapter)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var selected int64
	for _, r := range e.Routers() {
		for _, l := range r.Selections {
			for _, n := range l {
				selected += n
			}
		}
	}
	// Null experts can take a layer's top-1, so at most two selections per traced token.
	if traced == 0 || selected == 0 || selected > int64(2*traced) {
		t.Errorf("%d selections counted for %d routed tokens", selected, traced)
	}
	waitIdle(t, e)
	// Listing: every router, with its experts.
	n := 0
	for _, m := range e.Models() {
		if m.Kind == "router" {
			n++
			if len(m.Experts) == 0 || m.Parent != "llama" {
				t.Errorf("router listing %+v", m)
			}
		}
	}
	if n != len(routers) {
		t.Errorf("%d routers listed, want %d", n, len(routers))
	}
}

// TestRouterLoadErrors: bad bundles, unknown experts and too many experts for the device fail
// with the right kinds and leave nothing behind; unloading a router in use lets its requests
// finish.
func TestRouterLoadErrors(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{MaxLoRAs: 3})
	dir := filepath.Join(fixture.RoutersRoot(), "llama", "top2")
	kindOf := func(err error) Kind {
		var se *Error
		if errors.As(err, &se) {
			return se.Kind
		}
		return -1
	}
	for _, tc := range []struct {
		name, dir string
		want      Kind
	}{
		{"r", t.TempDir(), KindNotFound},
		{"r", filepath.Join(fixture.Dir("llama"), "adapters", "a_qv"), KindNotFound},
		{"r", dir, KindUnprocessable}, // four experts, three slots
		{"a_qv", dir, KindInvalid},    // an adapter's name
		{"../x", dir, KindInvalid},
	} {
		if err := e.LoadRouter(tc.name, tc.dir); kindOf(err) != tc.want {
			t.Errorf("LoadRouter(%q, %q) = %v, want kind %v", tc.name, tc.dir, err, tc.want)
		}
	}
	for _, m := range e.Models() {
		if m.Kind == "router" {
			t.Errorf("a failed load left %+v", m)
		}
	}
	if err := e.UnloadRouter("r"); kindOf(err) != KindNotFound {
		t.Errorf("UnloadRouter of nothing: %v", err)
	}
	if _, err := e.Generate(context.Background(), Request{Model: "r", Prompt: []int{1, 2}, Params: greedyParams(2)}); kindOf(err) != KindNotFound {
		t.Errorf("request for an unloaded router: %v", err)
	}
}
