package adaptercache

import (
	"context"
	"crypto/sha256"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
)

const llamaDir = "../testdata/models/llama"

// fixtureNames are the llama fixture adapters (written by HF peft).
var fixtureNames = []string{"a_qv", "b_all_rslora", "c_patterns", "d_regex"}

func fixturePath(name string) string { return filepath.Join(llamaDir, "adapters", name) }

func llamaConfig(t testing.TB) *model.Config {
	t.Helper()
	cfg, err := model.LoadConfig(llamaDir)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// countingBackend is the CPU backend with a count of uploaded and freed tensors (a leaked device
// copy shows as more uploads than frees) and a switch that makes uploads fail.
type countingBackend struct {
	model.Backend
	uploads, frees atomic.Int64
	fail           atomic.Bool
}

func (b *countingBackend) Upload(h model.HostTensor, rows, cols int) (model.Tensor, error) {
	if b.fail.Load() {
		return model.Tensor{}, errInjected
	}
	t, err := b.Backend.Upload(h, rows, cols)
	if err == nil {
		b.uploads.Add(1)
	}
	return t, err
}

func (b *countingBackend) Free(t model.Tensor) {
	b.frees.Add(1)
	b.Backend.Free(t)
}

var errInjected = &AdapterError{Adapter: "-", Err: io.ErrShortBuffer}

// newTestCache makes a cache over a fresh counting CPU backend, closed at the end of the test,
// after which every uploaded tensor must have been freed.
func newTestCache(t testing.TB, opt Options) (*Cache, *countingBackend) {
	t.Helper()
	cb := cpu.New(1)
	b := &countingBackend{Backend: cb}
	if opt.Config == nil {
		opt.Config = llamaConfig(t)
	}
	opt.Backend = b
	if opt.MaxDeviceSlots == 0 {
		opt.MaxDeviceSlots = 2
	}
	c, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if s := c.Stats(); s.Leases == 0 && (s.DeviceSlots != 0 || b.uploads.Load() != b.frees.Load()) {
			t.Errorf("after Close: %d device slots, %d tensors uploaded, %d freed", s.DeviceSlots, b.uploads.Load(), b.frees.Load())
		}
		cb.Close()
	})
	return c, b
}

// copyDir copies an adapter folder to a new folder under root.
func copyDir(t testing.TB, src, root, name string) string {
	t.Helper()
	dst := filepath.Join(root, name)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// hashTree hashes every file under root, by path.
func hashTree(t testing.TB, root string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := os.ReadFile(p)
		out[p] = sha256.Sum256(raw)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFor polls cond at every state change (and every few milliseconds: a waiter arriving is
// not a state change) until it holds or 10 seconds pass.
func waitFor(t testing.TB, c *Cache, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		ch := c.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-time.After(2 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func stateOf(c *Cache, name string) State {
	i, ok := c.State(name)
	if !ok {
		return -1
	}
	return i.State
}

func waitState(t testing.TB, c *Cache, name string, want State) {
	t.Helper()
	waitFor(t, c, name+" "+want.String(), func() bool { return stateOf(c, name) == want })
}

func mustAcquire(t testing.TB, c *Cache, name string) *Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := c.Acquire(ctx, name)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", name, err)
	}
	return l
}
