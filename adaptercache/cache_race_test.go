package adaptercache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loraplex/loraplex/model"
)

// TestCacheConcurrentChurn runs 200 goroutines doing random Acquire / Release / Prefetch /
// tickets (Want, TryLease, Cancel) / Unregister / Register over 12 adapters (one of them corrupt, half of them also
// found through Options.Dirs) with 2 device slots
// and a 4-adapter host tier, checking the slot bound throughout and every lease's digest (each
// load is hashed beside its first upload: no lease may see it unset) and, at the end, that no
// slot or tensor is leaked, no goroutine is left and no file on disk changed.
func TestCacheConcurrentChurn(t *testing.T) {
	defer goleak.VerifyNone(t)
	root := t.TempDir()
	paths := map[string]string{}
	for i := range 12 {
		name := fmt.Sprintf("ad%02d", i)
		paths[name] = copyDir(t, fixturePath(fixtureNames[i%len(fixtureNames)]), root, name)
	}
	corrupt := filepath.Join(paths["ad11"], PEFTWeightsFile)
	raw, _ := os.ReadFile(corrupt)
	if err := os.WriteFile(corrupt, raw[:len(raw)-100], 0o644); err != nil {
		t.Fatal(err)
	}
	digests := map[string][32]byte{}
	for n, p := range paths {
		if n == "ad11" {
			continue
		}
		ha, cl, err := LoadPEFT(p, n, llamaConfig(t))
		if err != nil {
			t.Fatal(err)
		}
		digests[n] = Digest(ha)
		cl.Close()
	}
	checkLease := func(t *testing.T, l *Lease, name string) {
		t.Helper()
		checkLease(t, l, name)
		if got := l.Adapter().Digest; got != digests[name] {
			t.Errorf("lease for %s: digest %x, want %x", name, got, digests[name])
		}
	}
	before := hashTree(t, root)
	fixturesBefore := hashTree(t, filepath.Join(llamaDir, "adapters"))

	const slots = 2
	// Half the names come back through Dirs after an Unregister, half only through Register.
	dirs := t.TempDir()
	for _, n := range []string{"ad00", "ad02", "ad04", "ad06", "ad08", "ad10"} {
		if err := os.Symlink(paths[n], filepath.Join(dirs, n)); err != nil {
			t.Fatal(err)
		}
	}
	c, b := newTestCache(t, Options{MaxDeviceSlots: slots, MaxHostAdapters: 4, RetryAfter: time.Millisecond, Dirs: []string{dirs}})
	for n, p := range paths {
		c.Register(n, p)
	}
	names := make([]string, 0, len(paths))
	for n := range paths {
		names = append(names, n)
	}
	slices.Sort(names) // ad11, the corrupt one, last

	stop := make(chan struct{})
	var checker sync.WaitGroup
	checker.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
			if s := c.Stats(); s.DeviceSlots > slots {
				t.Errorf("%d device slots taken, limit %d", s.DeviceSlots, slots)
				return
			}
		}
	})

	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	count := func(k string) { mu.Lock(); counts[k]++; mu.Unlock() }
	for g := range 200 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 40 {
				name := names[r.IntN(len(names))]
				switch op := r.IntN(20); {
				case op < 12:
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(r.IntN(100))*time.Millisecond)
					l, err := c.Acquire(ctx, name)
					cancel()
					switch {
					case err == nil:
						count("leased")
						checkLease(t, l, name)
						time.Sleep(time.Duration(r.IntN(200)) * time.Microsecond)
						l.Release()
					case errors.Is(err, context.DeadlineExceeded):
						count("timeout")
					case errors.Is(err, ErrUnknownAdapter):
						count("unknown")
					case name == "ad11":
						var ae *AdapterError
						if !errors.As(err, &ae) || ae.Adapter != "ad11" {
							t.Errorf("corrupt adapter: %v", err)
						}
						count("corrupt")
					default:
						t.Errorf("Acquire(%s): %v", name, err)
					}
				case op < 14:
					// A scheduler's way: open a ticket, poll it a few times, give up.
					tk, err := c.Want(name)
					if err != nil {
						if !errors.Is(err, ErrUnknownAdapter) {
							t.Errorf("Want(%s): %v", name, err)
						}
						break
					}
					for range r.IntN(5) {
						l, err := tk.TryLease()
						if l != nil {
							checkLease(t, l, name)
							l.Release()
							break
						}
						if err != nil {
							if name != "ad11" && !errors.Is(err, ErrUnknownAdapter) {
								t.Errorf("TryLease(%s): %v", name, err)
							}
							break
						}
						time.Sleep(time.Millisecond)
					}
					tk.Cancel()
				case op < 17:
					c.Prefetch(name)
				case op < 18:
					c.Unregister(name)
					count("unregister")
				default:
					c.Register(name, paths[name])
				}
			}
		})
	}
	wg.Wait()
	// Then with deadlines generous enough, every request must get its lease: no starvation, no
	// lost wakeup.
	for _, n := range names {
		c.Register(n, paths[n])
	}
	for g := range 50 {
		wg.Go(func() {
			name := names[g%(len(names)-1)] // not the corrupt ad11
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			l, err := c.Acquire(ctx, name)
			if err != nil {
				t.Errorf("Acquire(%s) after the churn: %v", name, err)
				return
			}
			checkLease(t, l, name)
			time.Sleep(time.Millisecond)
			l.Release()
		})
	}
	wg.Wait()
	close(stop)
	checker.Wait()
	t.Logf("%v", counts)

	s := c.Stats()
	t.Logf("stats %+v", s)
	if s.Leases != 0 || s.DeviceSlots > slots {
		t.Fatalf("after the churn: %d leases, %d slots", s.Leases, s.DeviceSlots)
	}
	dev := 0
	for _, i := range c.List() {
		if i.State == StateDevice || i.State == StateUploading {
			dev++
		}
		if i.Leases != 0 || i.Waiting != 0 {
			t.Errorf("%s: %+v", i.Name, i)
		}
	}
	if dev > slots {
		t.Fatalf("%d adapters on the device, limit %d", dev, slots)
	}
	// Everything still works after the churn.
	for _, n := range names[:4] {
		if n != "ad11" {
			c.Register(n, paths[n])
			mustAcquire(t, c, n).Release()
		}
	}
	c.Close()
	if s := c.Stats(); s.DeviceSlots != 0 || s.DeviceBytes != 0 || b.uploads.Load() != b.frees.Load() {
		t.Fatalf("after Close: %+v; %d tensors uploaded, %d freed", s, b.uploads.Load(), b.frees.Load())
	}
	for p, h := range hashTree(t, root) {
		if before[p] != h {
			t.Errorf("%s changed", p)
		}
	}
	for p, h := range hashTree(t, filepath.Join(llamaDir, "adapters")) {
		if fixturesBefore[p] != h {
			t.Errorf("%s changed", p)
		}
	}
}

// checkLease reads every tensor header of the leased adapter, the way the forward pass would,
// so the race detector sees any free or write that races with it.
func checkLease(t *testing.T, l *Lease, name string) {
	a := l.Adapter()
	if a == nil || l.Name() != name {
		t.Errorf("lease for %s: %v", name, a)
		return
	}
	n := 0
	for _, layer := range a.Modules {
		for p := range model.NumProj {
			if m := layer[p]; m != nil {
				n += m.A.Rows + m.B.Rows
			}
		}
	}
	if n == 0 {
		t.Errorf("lease for %s: an adapter with no modules", name)
	}
}
