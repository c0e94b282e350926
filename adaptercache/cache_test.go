package adaptercache

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/model"
)

func registerFixtures(t *testing.T, c *Cache) {
	t.Helper()
	for _, n := range fixtureNames {
		if err := c.Register(n, fixturePath(n)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCacheStateTransitions(t *testing.T) {
	c, _ := newTestCache(t, Options{})
	if err := c.Register("a_qv", fixturePath("a_qv")); err != nil {
		t.Fatal(err)
	}
	if s := stateOf(c, "a_qv"); s != StateDisk {
		t.Fatalf("registered: %v, want disk", s)
	}
	if err := c.Prefetch("a_qv"); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "a_qv", StateHost)
	l := mustAcquire(t, c, "a_qv")
	info, _ := c.State("a_qv")
	if info.State != StateDevice || info.Leases != 1 || !info.InHost || info.Bytes == 0 {
		t.Fatalf("leased: %+v", info)
	}
	if a := l.Adapter(); a == nil || a.Name != "a_qv" || a.MaxRank != 8 {
		t.Fatalf("lease adapter %+v", a)
	}
	l.Release()
	l.Release() // a second release is a no-op
	if info, _ := c.State("a_qv"); info.State != StateDevice || info.Leases != 0 {
		t.Fatalf("released: %+v", info)
	}
	l = mustAcquire(t, c, "a_qv")
	l.Release()
	s := c.Stats()
	if s.Misses != 0 || s.HostHits != 1 || s.DeviceHits != 1 || s.Loads != 1 || s.Uploads != 1 || s.DeviceSlots != 1 || s.HostAdapters != 1 || s.Leases != 0 {
		t.Fatalf("stats %+v", s)
	}
	if !c.Unregister("a_qv") || c.Unregister("a_qv") {
		t.Fatal("Unregister should report the first removal only")
	}
	if _, ok := c.State("a_qv"); ok {
		t.Fatal("still listed after Unregister")
	}
	if s := c.Stats(); s.DeviceSlots != 0 || s.HostAdapters != 0 || s.HostBytes != 0 || s.DeviceBytes != 0 {
		t.Fatalf("after Unregister: %+v", s)
	}
	if _, err := c.Acquire(context.Background(), "a_qv"); !errors.Is(err, ErrUnknownAdapter) {
		t.Fatalf("Acquire after Unregister: %v", err)
	}
}

// The device tier evicts the least recently used slot that no lease holds.
func TestCacheDeviceLRU(t *testing.T) {
	c, _ := newTestCache(t, Options{MaxDeviceSlots: 2})
	registerFixtures(t, c)
	mustAcquire(t, c, "a_qv").Release()
	mustAcquire(t, c, "b_all_rslora").Release()
	mustAcquire(t, c, "a_qv").Release() // a_qv is now the most recent
	mustAcquire(t, c, "c_patterns").Release()
	if a, b, cp := stateOf(c, "a_qv"), stateOf(c, "b_all_rslora"), stateOf(c, "c_patterns"); a != StateDevice || b != StateHost || cp != StateDevice {
		t.Fatalf("states a %v b %v c %v; want device host device", a, b, cp)
	}
	// A leased adapter is never the victim, however old.
	la := mustAcquire(t, c, "a_qv")
	mustAcquire(t, c, "c_patterns").Release()
	mustAcquire(t, c, "d_regex").Release()
	if a, cp := stateOf(c, "a_qv"), stateOf(c, "c_patterns"); a != StateDevice || cp != StateHost {
		t.Fatalf("leased a_qv %v, c_patterns %v; want device, host", a, cp)
	}
	la.Release()
	if s := c.Stats(); s.DeviceEvictions != 2 || s.DeviceSlots != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCacheHostBudget(t *testing.T) {
	cfg := llamaConfig(t)
	bytes := map[string]int64{}
	for _, n := range fixtureNames {
		h, cl, err := LoadPEFT(fixturePath(n), n, cfg)
		if err != nil {
			t.Fatal(err)
		}
		bytes[n] = h.Bytes
		cl.Close()
	}
	prefetch := func(c *Cache, names ...string) {
		for _, n := range names {
			if err := c.Prefetch(n); err != nil {
				t.Fatal(err)
			}
			waitFor(t, c, n+" loaded", func() bool { s := stateOf(c, n); return s != StateLoading })
		}
	}
	t.Run("count", func(t *testing.T) {
		c, _ := newTestCache(t, Options{MaxHostAdapters: 2})
		registerFixtures(t, c)
		prefetch(c, "a_qv", "b_all_rslora", "a_qv", "c_patterns") // a_qv used again: b is the oldest
		if a, b, cp := stateOf(c, "a_qv"), stateOf(c, "b_all_rslora"), stateOf(c, "c_patterns"); a != StateHost || b != StateDisk || cp != StateHost {
			t.Fatalf("a %v b %v c %v; want host disk host", a, b, cp)
		}
		if s := c.Stats(); s.HostEvictions != 1 || s.HostAdapters != 2 || s.HostBytes != bytes["a_qv"]+bytes["c_patterns"] {
			t.Fatalf("stats %+v", s)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		c, _ := newTestCache(t, Options{MaxHostBytes: bytes["b_all_rslora"] + bytes["c_patterns"]})
		registerFixtures(t, c)
		prefetch(c, "b_all_rslora", "c_patterns", "a_qv")
		if s := c.Stats(); s.HostBytes > bytes["b_all_rslora"]+bytes["c_patterns"] || stateOf(c, "b_all_rslora") != StateDisk {
			t.Fatalf("b %v, stats %+v", stateOf(c, "b_all_rslora"), s)
		}
	})
	t.Run("device copies pin their host copy", func(t *testing.T) {
		// The CPU backend's device tensors alias the file mapping: dropping the host copy of a
		// device-resident adapter would unmap what the forward pass reads.
		c, _ := newTestCache(t, Options{MaxHostAdapters: 1, MaxDeviceSlots: 2})
		registerFixtures(t, c)
		mustAcquire(t, c, "a_qv").Release()
		prefetch(c, "b_all_rslora", "c_patterns")
		if a := stateOf(c, "a_qv"); a != StateDevice {
			t.Fatalf("a_qv %v", a)
		}
		info, _ := c.State("a_qv")
		if !info.InHost {
			t.Fatal("device-resident a_qv lost its host copy on an aliasing backend")
		}
		if b := stateOf(c, "b_all_rslora"); b != StateDisk {
			t.Fatalf("b %v, want disk", b)
		}
	})
	t.Run("copying backends drop host copies of device adapters", func(t *testing.T) {
		c, _ := newTestCache(t, Options{MaxHostAdapters: 1, MaxDeviceSlots: 2, UploadCopies: true})
		registerFixtures(t, c)
		mustAcquire(t, c, "a_qv").Release()
		prefetch(c, "b_all_rslora")
		if info, _ := c.State("a_qv"); info.State != StateDevice || info.InHost {
			t.Fatalf("a_qv %+v, want on the device only", info)
		}
		mustAcquire(t, c, "b_all_rslora").Release()
		mustAcquire(t, c, "c_patterns").Release() // evicts a_qv from the device: back to disk
		if a := stateOf(c, "a_qv"); a != StateDisk {
			t.Fatalf("a_qv %v, want disk", a)
		}
		mustAcquire(t, c, "a_qv").Release()
	})
}

// With every slot leased, Acquire waits for a Release, or for its context.
func TestCacheAcquireWaitsForSlot(t *testing.T) {
	c, _ := newTestCache(t, Options{MaxDeviceSlots: 1})
	registerFixtures(t, c)
	la := mustAcquire(t, c, "a_qv")
	got := make(chan error, 1)
	var lb *Lease
	go func() {
		var err error
		lb, err = c.Acquire(context.Background(), "b_all_rslora")
		got <- err
	}()
	waitFor(t, c, "b waiting", func() bool { i, _ := c.State("b_all_rslora"); return i.Waiting == 1 && i.State == StateHost })
	select {
	case err := <-got:
		t.Fatalf("Acquire returned while the only slot is leased: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	la.Release()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if lb.Adapter() == nil || stateOf(c, "a_qv") != StateHost {
		t.Fatalf("b leased %v, a_qv %v", lb.Adapter() != nil, stateOf(c, "a_qv"))
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, err := c.Acquire(ctx, "a_qv")
		got <- err
	}()
	waitFor(t, c, "a waiting", func() bool { i, _ := c.State("a_qv"); return i.Waiting == 1 })
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Acquire: %v", err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer tcancel()
	if _, err := c.Acquire(tctx, "c_patterns"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire past its deadline: %v", err)
	}
	if i, _ := c.State("a_qv"); i.Waiting != 0 {
		t.Fatalf("waiters left behind: %+v", i)
	}
	lb.Release()
	mustAcquire(t, c, "a_qv").Release()
}

// Tickets let a scheduler wait without blocking: the adapter loads in the background, a copy
// some ticket wants is not evicted for another ticket, and slots go to tickets in order.
func TestCacheTickets(t *testing.T) {
	c, _ := newTestCache(t, Options{MaxDeviceSlots: 1})
	registerFixtures(t, c)
	lease := func(tk *Ticket) *Lease {
		t.Helper()
		var l *Lease
		waitFor(t, c, "lease", func() bool {
			var err error
			if l, err = tk.TryLease(); err != nil {
				t.Fatal(err)
			}
			return l != nil
		})
		return l
	}
	ta, err := c.Want("c_patterns")
	if err != nil {
		t.Fatal(err)
	}
	la := lease(ta)
	if la.Adapter().MaxRank != 16 {
		t.Fatalf("max rank %d", la.Adapter().MaxRank)
	}
	if _, err := ta.TryLease(); err == nil {
		t.Fatal("a used ticket gave a second answer")
	}
	la.Release() // c_patterns is idle on the device now

	ta, _ = c.Want("c_patterns")
	tb, _ := c.Want("a_qv")
	waitState(t, c, "a_qv", StateHost)
	time.Sleep(10 * time.Millisecond)
	if s := stateOf(c, "a_qv"); s != StateHost || stateOf(c, "c_patterns") != StateDevice {
		t.Fatalf("a_qv %v evicted c_patterns (%v), which a ticket wants", s, stateOf(c, "c_patterns"))
	}
	lease(ta).Release()
	lb := lease(tb) // c_patterns is idle and unwanted now: a_qv takes its slot
	if stateOf(c, "c_patterns") != StateHost {
		t.Fatalf("c_patterns %v", stateOf(c, "c_patterns"))
	}
	lb.Release()

	// An older ticket may take the slot of a copy only younger tickets want: no starvation.
	tc, _ := c.Want("c_patterns") // on the host, needs the slot a_qv has
	tb, _ = c.Want("a_qv")        // resident, but wanted later
	lc := lease(tc)
	if stateOf(c, "a_qv") != StateHost {
		t.Fatalf("a_qv %v", stateOf(c, "a_qv"))
	}
	lc.Release()
	lease(tb).Release()

	// A cancelled ticket stops protecting its adapter.
	td, _ := c.Want("a_qv")
	td.Cancel()
	td.Cancel()
	if i, _ := c.State("a_qv"); i.Waiting != 0 {
		t.Fatalf("%+v", i)
	}
	mustAcquire(t, c, "d_regex").Release()
}

// A queue of distinct adapters loads only what the host tier can hold, the adapters next for
// the device first.
func TestCacheQueueLoadsWithinHostBudget(t *testing.T) {
	c, _ := newTestCache(t, Options{MaxDeviceSlots: 1, MaxHostAdapters: 2})
	registerFixtures(t, c)
	lx := mustAcquire(t, c, "a_qv") // holds the slot and, pinned, one host place
	var tks []*Ticket
	for _, n := range fixtureNames[1:] {
		tk, err := c.Want(n)
		if err != nil {
			t.Fatal(err)
		}
		tks = append(tks, tk)
	}
	waitState(t, c, "b_all_rslora", StateHost)
	time.Sleep(10 * time.Millisecond)
	if s1, s2 := stateOf(c, "c_patterns"), stateOf(c, "d_regex"); s1 != StateDisk || s2 != StateDisk {
		t.Fatalf("c_patterns %v, d_regex %v: loaded past the host budget", s1, s2)
	}
	lx.Release()
	for _, tk := range tks {
		var l *Lease
		waitFor(t, c, "lease", func() bool {
			var err error
			if l, err = tk.TryLease(); err != nil {
				t.Fatal(err)
			}
			return l != nil
		})
		l.Release()
		if s := c.Stats(); s.HostAdapters > 2 {
			t.Fatalf("host tier %d adapters, budget 2", s.HostAdapters)
		}
	}
}

// Broken adapters fail alone, with an error naming them, and are retried on Register.
func TestCacheBrokenAdapters(t *testing.T) {
	root := t.TempDir()
	truncated := copyDir(t, fixturePath("a_qv"), root, "truncated")
	st := filepath.Join(truncated, PEFTWeightsFile)
	raw, _ := os.ReadFile(st)
	if err := os.WriteFile(st, raw[:len(raw)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	garbage := copyDir(t, fixturePath("a_qv"), root, "garbage")
	if err := os.WriteFile(filepath.Join(garbage, PEFTWeightsFile), []byte("\xff\xff\xff\xff\xff\xff\xff\x7fnot safetensors"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An adapter for a model with a wider MLP (intermediate 128, the fixture's is 96).
	base := testBase(t)
	mismatched := writeAdapter(t, with(map[string]any{"target_modules": []string{"up_proj"}}),
		pair(base, 0, model.ProjUp, 4), pair(base, 1, model.ProjUp, 4))
	badConfig := copyDir(t, fixturePath("a_qv"), root, "badconfig")
	if err := os.WriteFile(filepath.Join(badConfig, PEFTConfigFile), []byte(`{"peft_type": "LORA", "r": `), 0o644); err != nil {
		t.Fatal(err)
	}

	c, _ := newTestCache(t, Options{RetryAfter: time.Hour})
	registerFixtures(t, c)
	bad := map[string]string{"truncated": truncated, "garbage": garbage, "mismatched": mismatched,
		"badconfig": badConfig, "missing": filepath.Join(root, "missing"), "file": st}
	for name, p := range bad {
		if err := c.Register(name, p); err != nil {
			t.Fatal(err)
		}
	}
	for name := range bad {
		_, err := c.Acquire(context.Background(), name)
		if err == nil || !strings.Contains(err.Error(), `"`+name+`"`) {
			t.Errorf("%s: error %v does not name the adapter", name, err)
			continue
		}
		var ae *AdapterError
		if name == "missing" {
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("missing: %v, want fs.ErrNotExist", err)
			}
		} else if !errors.As(err, &ae) {
			t.Errorf("%s: %T %v, want an *AdapterError", name, err, err)
		}
		t.Logf("%s: %v", name, err)
		info, _ := c.State(name)
		if info.State != StateFailed || info.Err == nil {
			t.Errorf("%s: %+v, want failed with its error", name, info)
		}
		// Inside the backoff the error comes back without another load.
		if _, err2 := c.Acquire(context.Background(), name); err2 != err {
			t.Errorf("%s: second Acquire %v", name, err2)
		}
	}
	// The good ones are unaffected.
	for _, n := range fixtureNames {
		mustAcquire(t, c, n).Release()
	}
	s := c.Stats()
	if s.LoadFailures != uint64(len(bad)) || s.DeviceSlots > 2 {
		t.Fatalf("stats %+v", s)
	}
	// Repaired and registered again: retried at once.
	if err := os.WriteFile(st, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Register("truncated", truncated); err != nil {
		t.Fatal(err)
	}
	mustAcquire(t, c, "truncated").Release()
}

// A backoff that has passed lets the next request try again.
func TestCacheRetryAfterBackoff(t *testing.T) {
	root := t.TempDir()
	c, _ := newTestCache(t, Options{RetryAfter: time.Millisecond})
	p := filepath.Join(root, "later")
	c.Register("later", p)
	if _, err := c.Acquire(context.Background(), "later"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("before it exists: %v", err)
	}
	copyDir(t, fixturePath("d_regex"), root, "later")
	time.Sleep(5 * time.Millisecond)
	mustAcquire(t, c, "later").Release()
}

// A failed upload gives its slot back and fails only that adapter.
func TestCacheUploadFailure(t *testing.T) {
	c, b := newTestCache(t, Options{MaxDeviceSlots: 1, RetryAfter: time.Hour})
	registerFixtures(t, c)
	b.fail.Store(true)
	if _, err := c.Acquire(context.Background(), "a_qv"); !errors.Is(err, errInjected) {
		t.Fatalf("Acquire with failing uploads: %v", err)
	}
	b.fail.Store(false)
	if s := c.Stats(); s.DeviceSlots != 0 || s.UploadFailures != 1 || s.HostAdapters != 0 {
		t.Fatalf("stats %+v", s)
	}
	mustAcquire(t, c, "b_all_rslora").Release()
	c.Register("a_qv", fixturePath("a_qv"))
	mustAcquire(t, c, "a_qv").Release()
}

// Unregistering or replacing a leased adapter leaves the lease valid until Release.
func TestCacheUnregisterWhileLeased(t *testing.T) {
	c, b := newTestCache(t, Options{MaxDeviceSlots: 2})
	registerFixtures(t, c)
	l := mustAcquire(t, c, "a_qv")
	c.Unregister("a_qv")
	if _, err := c.Want("a_qv"); !errors.Is(err, ErrUnknownAdapter) {
		t.Fatalf("Want after Unregister: %v", err)
	}
	a := l.Adapter()
	if a.Modules[0][model.ProjQ] == nil || b.frees.Load() != 0 {
		t.Fatal("device copy freed under a lease")
	}
	if s := c.Stats(); s.DeviceSlots != 1 || s.Leases != 1 {
		t.Fatalf("stats %+v", s)
	}
	l.Release()
	if s := c.Stats(); s.DeviceSlots != 0 || b.frees.Load() != b.uploads.Load() {
		t.Fatalf("after Release: %+v, %d uploaded, %d freed", s, b.uploads.Load(), b.frees.Load())
	}

	// Replacing: the old lease keeps the old copy, new requests get the new path.
	l = mustAcquire(t, c, "b_all_rslora")
	if err := c.Register("b_all_rslora", fixturePath("d_regex")); err != nil {
		t.Fatal(err)
	}
	l2 := mustAcquire(t, c, "b_all_rslora")
	if l.Adapter().MaxRank != 4 || l2.Adapter().MaxRank != 2 {
		t.Fatalf("old lease rank %d, new %d; want 4, 2", l.Adapter().MaxRank, l2.Adapter().MaxRank)
	}
	l.Release()
	l2.Release()
	if s := c.Stats(); s.DeviceSlots != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// Unregistering while a load or upload is in progress cleans up when it ends.
func TestCacheUnregisterWhileLoading(t *testing.T) {
	release := make(chan struct{})
	slow := func(path, name string, cfg *model.Config) (*model.HostAdapter, io.Closer, error) {
		<-release
		return DefaultLoader(path, name, cfg)
	}
	c, b := newTestCache(t, Options{Loader: slow})
	registerFixtures(t, c)
	c.Prefetch("a_qv")
	waitState(t, c, "a_qv", StateLoading)
	c.Unregister("a_qv")
	close(release)
	c.Close()
	if s := c.Stats(); s.HostAdapters != 0 || s.DeviceSlots != 0 || b.uploads.Load() != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// A lorapack file loads through the default loader like a PEFT folder.
func TestCacheCompressedAdapter(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a_qv.lorapack")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CompressPEFT(fixturePath("a_qv"), f, DefaultCompressOptions()); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c, _ := newTestCache(t, Options{})
	c.Register("packed", p)
	l := mustAcquire(t, c, "packed")
	defer l.Release()
	if a := l.Adapter(); a.MaxRank != 8 || a.Modules[1][model.ProjV] == nil {
		t.Fatalf("compressed a_qv: max rank %d", a.MaxRank)
	}
}

func TestCacheDirs(t *testing.T) {
	c, _ := newTestCache(t, Options{Dirs: []string{t.TempDir(), filepath.Join(llamaDir, "adapters")}})
	l := mustAcquire(t, c, "c_patterns")
	l.Release()
	if info, _ := c.State("c_patterns"); info.Path != fixturePath("c_patterns") {
		t.Fatalf("path %q", info.Path)
	}
	for _, name := range []string{"nope", "../adapters/a_qv", "..", ".hidden", ""} {
		if _, err := c.Acquire(context.Background(), name); !errors.Is(err, ErrUnknownAdapter) {
			t.Errorf("%q: %v, want ErrUnknownAdapter", name, err)
		}
	}
	if err := c.Register("a/b", "x"); err == nil {
		t.Error("Register accepted a name with a slash")
	}
	if len(c.List()) != 1 {
		t.Fatalf("list %+v", c.List())
	}
}

func TestCacheClose(t *testing.T) {
	c, b := newTestCache(t, Options{})
	registerFixtures(t, c)
	l := mustAcquire(t, c, "a_qv")
	mustAcquire(t, c, "d_regex").Release()
	c.Close()
	if _, err := c.Acquire(context.Background(), "a_qv"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Acquire after Close: %v", err)
	}
	if err := c.Register("x", "y"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Register after Close: %v", err)
	}
	if s := c.Stats(); s.DeviceSlots != 1 {
		t.Fatalf("leased copy should outlive Close: %+v", s)
	}
	l.Release()
	if s := c.Stats(); s.DeviceSlots != 0 || b.uploads.Load() != b.frees.Load() {
		t.Fatalf("after the last Release: %+v", s)
	}
}

func TestCacheOptions(t *testing.T) {
	cfg := llamaConfig(t)
	for _, o := range []Options{{}, {Config: cfg}, {Config: cfg, Backend: &countingBackend{}}, {Config: cfg, Backend: &countingBackend{}, MaxDeviceSlots: 1, MaxHostBytes: -1}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}
