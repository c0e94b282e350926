//go:build unix

package adaptercache

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/loraplex/loraplex/internal/confine"
	"github.com/loraplex/loraplex/model"
)

// The cache's default loader opens lorapack files beneath Options.Roots like PEFT folders: a
// lorapack file reached through Kubernetes-style links inside a root loads, one linked out of
// every root is refused with confine.ErrOutside, and a FIFO in its place with
// confine.ErrNotRegular, at once.
func TestCacheConfinesLorapackFiles(t *testing.T) {
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "..2026_01_01"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pack := func(path string) {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := CompressPEFT(fixturePath("a_qv"), f, CompressOptions{Codec: "q8"}); err != nil {
			t.Fatal(err)
		}
	}
	pack(filepath.Join(root, "..2026_01_01", "a.lorapack"))
	pack(filepath.Join(outside, "a.lorapack"))
	for target, link := range map[string]string{
		"..2026_01_01":                       "..data",
		"..data/a.lorapack":                  "kube.lorapack",
		filepath.Join(outside, "a.lorapack"): "out.lorapack",
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(root, "fifo.lorapack"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, _ := newTestCache(t, Options{Roots: confine.New(root), Dirs: []string{root}})
	mustAcquire(t, c, "kube.lorapack").Release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, want := range map[string]error{"out.lorapack": confine.ErrOutside, "fifo.lorapack": confine.ErrNotRegular} {
		if _, err := c.Acquire(ctx, name); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	// Registered by path, as the load APIs and --adapter do, alike.
	if err := c.Register("direct", filepath.Join(outside, "a.lorapack")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx, "direct"); !errors.Is(err, confine.ErrOutside) {
		t.Errorf("registered outside: %v", err)
	}
}

// A load stuck on the file system fails after Options.LoadTimeout with
// context.DeadlineExceeded, and Close does not wait for a stuck load; what the loader returns
// once the file system answers is closed, not leaked. (The loader stands in for a hung mount,
// which a test cannot make.)
func TestCacheStuckLoads(t *testing.T) {
	unstick := make(chan struct{})
	var started, closed atomic.Int64
	stuck := func(path, name string, cfg *model.Config) (*model.HostAdapter, io.Closer, error) {
		started.Add(1)
		<-unstick
		ha, cl, err := DefaultLoader(path, name, cfg)
		if cl == nil {
			return ha, cl, err
		}
		return ha, closeFunc(func() error { closed.Add(1); return cl.Close() }), err
	}
	c, _ := newTestCache(t, Options{Loader: stuck, LoadTimeout: 200 * time.Millisecond})
	registerFixtures(t, c)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Acquire(ctx, "a_qv"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stuck load: %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the stuck load failed after %v", took)
	}

	slow, _ := newTestCache(t, Options{Loader: stuck})
	registerFixtures(t, slow)
	if err := slow.Prefetch("b_all_rslora"); err != nil {
		t.Fatal(err)
	}
	for started.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	closedAt := make(chan time.Duration, 1)
	go func() { start := time.Now(); slow.Close(); closedAt <- time.Since(start) }()
	select {
	case took := <-closedAt:
		t.Logf("Close took %v with a load stuck", took)
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a stuck load")
	}
	close(unstick)
	for deadline := time.Now().Add(5 * time.Second); closed.Load() < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of the 2 abandoned loads were closed", closed.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
