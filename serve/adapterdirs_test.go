package serve

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
)

func newBareEngine(t *testing.T, name string, opt Options) *Engine {
	t.Helper()
	b := cpu.New(2)
	t.Cleanup(b.Close)
	return fixtureEngine(t, name, b, nil, opt, nil)
}

// TestAdapterDirLoadsOnDemand: eight concurrent first requests for an adapter that is only on
// disk share one load and all get the reference tokens.
func TestAdapterDirLoadsOnDemand(t *testing.T) {
	e := newBareEngine(t, "llama", Options{AdapterDirs: []string{filepath.Join(fixtureDir("llama"), "adapters")}})
	var c fixtureCase
	for _, x := range loadCases(t, "llama") {
		if x.Adapter == "c_patterns" {
			c = x
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.Generate(context.Background(), Request{Model: "c_patterns", Prompt: c.Prompt, Params: greedyParams(len(c.Steps))})
			if err != nil {
				t.Error(err)
				return
			}
			ev, err := s.Collect(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			for i, st := range c.Steps {
				if ev.Tokens[i] != st.Token {
					t.Errorf("tokens %v, want %d at %d", ev.Tokens, st.Token, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := len(e.Models()); n != 2 {
		t.Fatalf("models after on-demand load: %+v", e.Models())
	}
	for _, bad := range []string{"../adapters/a_qv", "..", ".hidden", "a/b", "missing"} {
		if _, err := e.Generate(context.Background(), Request{Model: bad, Prompt: []int{1}}); KindOf(err) != KindNotFound {
			t.Errorf("model %q: %v, want NotFound", bad, err)
		}
	}
}

func TestCheckAdapterPath(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	os.Mkdir(filepath.Join(root, "good"), 0o755)
	os.Mkdir(filepath.Join(outside, "secret"), 0o755)
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	e := newBareEngine(t, "llama", Options{AdapterRoots: []string{root}})
	for _, ok := range []string{filepath.Join(root, "good"), root} {
		if _, err := e.CheckAdapterPath(ok); err != nil {
			t.Fatal(err)
		}
	}
	for path, kind := range map[string]Kind{
		filepath.Join(root, "escape"):                               KindForbidden,
		filepath.Join(root, "..", filepath.Base(outside), "secret"): KindForbidden,
		filepath.Join(root, "good", "..", ".."):                     KindForbidden,
		filepath.Join(outside, "nothing"):                           KindForbidden,
		filepath.Join(root, "escape", "nothing"):                    KindForbidden,
		filepath.Join(root, "nothing"):                              KindNotFound,
	} {
		if _, err := e.CheckAdapterPath(path); KindOf(err) != kind {
			t.Errorf("%s: %v, want kind %d", path, err, kind)
		}
	}
	noRoots := newBareEngine(t, "llama", Options{})
	if _, err := noRoots.CheckAdapterPath(filepath.Join(root, "good")); KindOf(err) != KindForbidden {
		t.Errorf("without roots: %v", err)
	}
}

// TestCompressedAdapterServed: a lorapack file is served like a PEFT folder, and gives exactly
// what the PEFT folder it decompresses to gives.
func TestCompressedAdapterServed(t *testing.T) {
	dir := t.TempDir()
	packed := filepath.Join(dir, "b.lorapack")
	f, err := os.Create(packed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adaptercache.CompressPEFT(fixture.AdapterDir("llama", "b_all_rslora"), f, adaptercache.CompressOptions{Codec: "rice", Density: 0.5}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	unpacked := filepath.Join(dir, "unpacked")
	if err := adaptercache.DecompressFile(packed, unpacked); err != nil {
		t.Fatal(err)
	}
	e := newBareEngine(t, "llama", Options{})
	if err := e.LoadAdapter("packed", packed); err != nil {
		t.Fatal(err)
	}
	if err := e.LoadAdapter("unpacked", unpacked); err != nil {
		t.Fatal(err)
	}
	prompt := []int{11, 200, 3, 45, 99}
	a := generate(t, e, Request{Model: "packed", Prompt: prompt, Params: greedyParams(8)})
	b := generate(t, e, Request{Model: "unpacked", Prompt: prompt, Params: greedyParams(8)})
	base := generate(t, e, Request{Prompt: prompt, Params: greedyParams(8)})
	if fmt.Sprint(a.Tokens) != fmt.Sprint(b.Tokens) {
		t.Fatalf("lorapack %v, its PEFT folder %v", a.Tokens, b.Tokens)
	}
	if fmt.Sprint(a.Tokens) == fmt.Sprint(base.Tokens) {
		t.Fatalf("the compressed adapter changed nothing: %v", a.Tokens)
	}
}

// TestFewDeviceSlots: 2 device slots for 4 adapters (plus base requests and a corrupt adapter
// among them). Every request for a good adapter waits its turn for a slot and gets exactly the
// reference tokens; requests for the corrupt adapter fail alone with a clear error; no lease
// or slot is left behind.
func TestFewDeviceSlots(t *testing.T) {
	dir := t.TempDir()
	for _, a := range fixture.Adapters {
		copyTree(t, fixture.AdapterDir("llama", a), filepath.Join(dir, a))
	}
	copyTree(t, fixture.AdapterDir("llama", "a_qv"), filepath.Join(dir, "corrupt"))
	st := filepath.Join(dir, "corrupt", "adapter_model.safetensors")
	data, err := os.ReadFile(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(st, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	e := newBareEngine(t, "llama", Options{MaxLoRAs: 2, MaxNumSeqs: 6, AdapterDirs: []string{dir}})
	cases := loadCases(t, "llama")
	var wg sync.WaitGroup
	errs := make(chan error, 3*len(cases)+8)
	for rep := 0; rep < 3; rep++ {
		for _, c := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := e.Generate(context.Background(), Request{Model: c.Adapter, Prompt: c.Prompt, Params: greedyParams(len(c.Steps))})
				if err != nil {
					errs <- err
					return
				}
				ev, err := s.Collect(context.Background())
				if err != nil || fmt.Sprint(ev.Tokens) != fmt.Sprint(c.Tokens()) {
					errs <- fmt.Errorf("adapter %q: tokens %v (%v), want %v", c.Adapter, ev.Tokens, err, c.Tokens())
				}
			}()
		}
	}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.Generate(context.Background(), Request{Model: "corrupt", Prompt: []int{1, 2}, Params: greedyParams(2)})
			if err == nil {
				ev, _ := s.Collect(context.Background())
				err = ev.Err
			}
			if KindOf(err) != KindUnprocessable || !strings.Contains(err.Error(), "corrupt") {
				errs <- fmt.Errorf("corrupt adapter: %v (kind %d)", err, KindOf(err))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitIdle(t, e)
	if st := e.AdapterCache().Stats(); st.Leases != 0 || st.DeviceSlots > 2 {
		t.Fatalf("after all requests: %d leases, %d device slots", st.Leases, st.DeviceSlots)
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		data, err := os.ReadFile(filepath.Join(from, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, en.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
