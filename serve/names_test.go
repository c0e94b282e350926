package serve

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/loraplex/loraplex/internal/fixture"
)

// caseFor returns the first reference case of the llama fixture for adapter.
func caseFor(t *testing.T, adapter string) fixtureCase {
	t.Helper()
	for _, c := range loadCases(t, "llama") {
		if c.Adapter == adapter {
			return c
		}
	}
	t.Fatalf("no case for %q", adapter)
	return fixtureCase{}
}

// wantTokens runs c's prompt on model and checks the reference tokens of c.
func wantTokens(t *testing.T, e *Engine, model string, c fixtureCase) {
	t.Helper()
	s, err := e.Generate(context.Background(), Request{Model: model, Prompt: c.Prompt, Params: greedyParams(len(c.Steps))})
	if err != nil {
		t.Fatalf("%q: %v", model, err)
	}
	ev, err := s.Collect(context.Background())
	if err != nil {
		t.Fatalf("%q: %v", model, err)
	}
	if fmt.Sprint(ev.Tokens) != fmt.Sprint(c.Tokens()) {
		t.Fatalf("%q: tokens %v, want %v (adapter %q's)", model, ev.Tokens, c.Tokens(), c.Adapter)
	}
}

func adapterPath(name string) string { return filepath.Join(fixtureDir("llama"), "adapters", name) }

func topTwoRouter() string { return filepath.Join(fixture.RoutersRoot(), "llama", "top2") }

// A router cannot take a name that an adapter directory serves: a request for that name must
// keep getting the directory's adapter.
func TestRouterRefusesAdapterDirName(t *testing.T) {
	e := newBareEngine(t, "llama", Options{AdapterDirs: []string{filepath.Join(fixtureDir("llama"), "adapters")}})
	err := e.LoadRouter("a_qv", topTwoRouter())
	if KindOf(err) != KindInvalid || !strings.Contains(err.Error(), "adapter directory") {
		t.Fatalf("LoadRouter on an adapter directory's name: %v, want KindInvalid naming the directory", err)
	}
	wantTokens(t, e, "a_qv", caseFor(t, "a_qv"))
	for _, m := range e.Models() {
		if m.Kind == "router" {
			t.Fatalf("a refused router is listed: %+v", m)
		}
	}
	// Once requested, the name is an adapter's for routers too (the directory need not be read).
	if err := e.LoadRouter("a_qv", topTwoRouter()); KindOf(err) != KindInvalid {
		t.Fatalf("LoadRouter on an adapter in use: %v", err)
	}
}

// Concurrent loads of one name as an adapter and as a router: exactly one wins, the others are
// refused, and the name then serves what the winner loaded.
func TestConcurrentLoadsOfOneNameOneWins(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{MaxLoRAs: 6})
	for round := range 6 {
		name := fmt.Sprintf("x%d", round)
		const loaders = 6
		var wg sync.WaitGroup
		errs := make([]error, loaders)
		for i := range loaders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i%2 == 0 {
					errs[i] = e.LoadAdapter(name, adapterPath("a_qv"))
				} else {
					errs[i] = e.LoadRouter(name, topTwoRouter())
				}
			}()
		}
		wg.Wait()
		wins := 0
		winner := ""
		for i, err := range errs {
			switch k := KindOf(err); {
			case err == nil:
				wins++
				winner = map[bool]string{true: "adapter", false: "router"}[i%2 == 0]
			case k != KindInvalid && k != KindConflict:
				t.Errorf("round %d loader %d: %v, want a refusal (invalid or conflict)", round, i, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d loads won: %v", round, wins, errs)
		}
		kinds := 0
		for _, m := range e.Models() {
			if m.ID == name {
				kinds++
				if m.Kind != winner {
					t.Errorf("round %d: %q listed as %s, the %s won", round, name, m.Kind, winner)
				}
			}
		}
		if kinds != 1 {
			t.Errorf("round %d: %q listed %d times", round, name, kinds)
		}
	}
}

// Loading under a name that is served is refused (vLLM's 400) unless it asks to replace; a
// replacement leaves requests already running on the old weights and gives later ones the new
// weights, and a replacement that fails leaves the old adapter served.
func TestLoadUnderServedNameNeedsReplace(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{MaxBatchedTokens: 16})
	a, b := caseFor(t, "a_qv"), caseFor(t, "b_all_rslora")
	err := e.LoadAdapter("a_qv", adapterPath("b_all_rslora"))
	if KindOf(err) != KindInvalid || !strings.Contains(err.Error(), "The lora adapter 'a_qv' has already been loaded") {
		t.Fatalf("load over a loaded adapter: %v", err)
	}
	if err := e.LoadAdapter(e.opt.ModelName, adapterPath("a_qv")); KindOf(err) != KindInvalid {
		t.Fatalf("load under the base model's name: %v", err)
	}
	wantTokens(t, e, "a_qv", a) // the refused load changed nothing

	running, err := e.Generate(context.Background(), Request{Model: "a_qv", Prompt: a.Prompt, Params: greedyParams(len(a.Steps))})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ReplaceAdapter("a_qv", adapterPath("b_all_rslora")); err != nil {
		t.Fatal(err)
	}
	ev, err := running.Collect(context.Background())
	if err != nil || fmt.Sprint(ev.Tokens) != fmt.Sprint(a.Tokens()) {
		t.Fatalf("request running across the replacement: %v %v, want the old adapter's %v", err, ev.Tokens, a.Tokens())
	}
	wantTokens(t, e, "a_qv", b)

	// A failed replacement (an adapter of another model) keeps the old one.
	if err := e.ReplaceAdapter("c_patterns", filepath.Join(fixtureDir("qwen3"), "adapters", "a_qv")); KindOf(err) != KindUnprocessable {
		t.Fatalf("replacing with an adapter that does not fit: %v", err)
	}
	wantTokens(t, e, "c_patterns", caseFor(t, "c_patterns"))

	// Replacing never crosses kinds.
	if err := e.LoadRouter("r", topTwoRouter()); err != nil {
		t.Fatal(err)
	}
	if err := e.ReplaceAdapter("r", adapterPath("a_qv")); KindOf(err) != KindInvalid {
		t.Fatalf("an adapter replacing a router: %v", err)
	}
	if err := e.LoadRouter("r", topTwoRouter()); KindOf(err) != KindInvalid {
		t.Fatalf("a second router load without replace: %v", err)
	}
	if err := e.ReplaceRouter("r", topTwoRouter()); err != nil {
		t.Fatalf("replacing a router: %v", err)
	}
	if n := len(e.Routers()); n != 1 {
		t.Fatalf("%d routers after a replacement", n)
	}
}

// Unloading an adapter that a loaded router uses is a conflict naming the router, and changes
// nothing; once the router is gone the adapter unloads.
func TestUnloadAdapterUsedByRouter(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{})
	if err := e.LoadRouter("mix", topTwoRouter()); err != nil {
		t.Fatal(err)
	}
	expert := e.Routers()[0].Experts[0]
	err := e.UnloadAdapter(expert)
	if KindOf(err) != KindConflict || !strings.Contains(err.Error(), "'mix'") {
		t.Fatalf("unloading expert %q of a loaded router: %v, want KindConflict naming the router", expert, err)
	}
	wantTokens(t, e, expert, caseFor(t, expert))
	if err := e.UnloadRouter("mix"); err != nil {
		t.Fatal(err)
	}
	if err := e.UnloadAdapter(expert); err != nil {
		t.Fatalf("unloading %q after its router: %v", expert, err)
	}
}

// Servable names follow one rule, for adapters, routers and adapter-directory names alike.
func TestCheckName(t *testing.T) {
	good := []string{"a", "sql-lora", "Team A v2", "名前", "naïve", "x.y", strings.Repeat("a", MaxNameBytes), "emoji-🙂"}
	bad := []string{"", " a", "a ", "\ta", "a\n", ".hidden", ".", "..", "a/b", `a\b`, "a\x00b", "a\x7fb",
		"a\u202eb", "a\u2066b", "a\u200fb", "a\u200bb", "a\ufeffb", "a\u00a0b", "a\u2028b", "\xff",
		strings.Repeat("a", MaxNameBytes+1), strings.Repeat("é", MaxNameBytes/2+1)}
	for _, n := range good {
		if msg := CheckName(n); msg != "" {
			t.Errorf("CheckName(%q) = %q, want good", n, msg)
		}
	}
	e := newBareEngine(t, "llama", Options{AdapterDirs: []string{filepath.Join(fixtureDir("llama"), "adapters")}})
	for _, n := range bad {
		if CheckName(n) == "" {
			t.Errorf("CheckName(%q) accepts it", n)
		}
		if err := e.LoadAdapter(n, adapterPath("a_qv")); KindOf(err) != KindInvalid {
			t.Errorf("LoadAdapter(%q): %v, want KindInvalid", n, err)
		}
		if err := e.LoadRouter(n, topTwoRouter()); KindOf(err) != KindInvalid {
			t.Errorf("LoadRouter(%q): %v, want KindInvalid", n, err)
		}
		_, gerr := e.Generate(context.Background(), Request{Model: n, Prompt: []int{1}})
		if n != "" && KindOf(gerr) != KindNotFound {
			t.Errorf("request for %q: %v, want KindNotFound", n, gerr)
		}
		// Refusals quote a refused name, so its control or bidi characters never reach a
		// response or a log as they are.
		for _, err := range []error{gerr, e.UnloadAdapter(n), e.UnloadRouter(n)} {
			if err == nil {
				continue // "" is the base model for requests
			}
			if msg := err.Error(); strings.ContainsFunc(msg, func(r rune) bool { return !unicode.IsPrint(r) }) {
				t.Errorf("error for %q carries a non-printable character: %q", n, msg)
			}
		}
	}
}

// The name rule never panics, and what it accepts is valid UTF-8 within the length bound, with
// no white space at either end, no path separator or leading dot, and no control, format (bidi
// included) or non-ASCII space character.
func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"a", " a", "a\u202eb", "..", "a/b", "名前", "\xff", "a\u00a0b", strings.Repeat("x", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckName(s) != "" {
			return
		}
		if len(s) == 0 || len(s) > MaxNameBytes || !utf8.ValidString(s) || strings.ContainsAny(s, "/\\") ||
			strings.TrimSpace(s) != s || s[0] == '.' {
			t.Fatalf("CheckName accepted %q", s)
		}
		for _, r := range s {
			if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || (unicode.IsSpace(r) && r != ' ') {
				t.Fatalf("CheckName accepted %q with %U", s, r)
			}
		}
	})
}

// A router's experts are adapters: a bundle whose expert names a loaded router or the base
// model is refused, and one whose expert serves nothing is not found.
func TestRouterExpertsMustBeAdapters(t *testing.T) {
	e := newTestEngine(t, "llama", nil, Options{})
	if err := e.LoadRouter("mix", topTwoRouter()); err != nil {
		t.Fatal(err)
	}
	gates, err := os.ReadFile(filepath.Join(topTwoRouter(), "gates.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for expert, want := range map[string]Kind{"mix": KindUnprocessable, "llama": KindUnprocessable, "nothing": KindNotFound} {
		dir := t.TempDir()
		cfg := `{"format":"loraplex.router/v1","experts":["a_qv","b_all_rslora","c_patterns",` + strconv.Quote(expert) + `],"top_k":2}`
		if err := os.WriteFile(filepath.Join(dir, "router.json"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "gates.safetensors"), gates, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := e.LoadRouter("r", dir); KindOf(err) != want {
			t.Errorf("expert %q: %v, want kind %d", expert, err, want)
		}
	}
	if n := len(e.Routers()); n != 1 {
		t.Errorf("%d routers after refused loads", n)
	}
}
