package adaptercache

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// An adapter's digest is its content's: the same files under another name or path hash the
// same, and changing one byte of one tensor, a scale or a rank changes it; different adapters
// differ.
func TestDigestIsContentNotName(t *testing.T) {
	cfg, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	load := func(adapter, name string) *model.HostAdapter {
		t.Helper()
		ha, c, err := LoadPEFT(fixture.AdapterDir("llama", adapter), name, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return ha
	}
	a, again, b := load("a_qv", "x"), load("a_qv", "y"), load("b_all_rslora", "x")
	d := Digest(a)
	if d != Digest(again) {
		t.Fatal("the same adapter under two names hashes differently")
	}
	if d == Digest(b) || d == ([32]byte{}) {
		t.Fatal("two different adapters hash the same")
	}
	var m *model.HostLoRA
	for l := range again.Modules {
		for _, x := range again.Modules[l] {
			if x != nil && m == nil {
				m = x
			}
		}
	}
	for what, change := range map[string]func(){
		"a byte of B": func() {
			data := append([]byte(nil), m.B.Data...) // the file is mapped read-only
			data[len(data)/2] ^= 1
			m.B.Data = data
		},
		"the scale": func() { m.Scale *= 2 },
		"the rank":  func() { m.Rank++ },
	} {
		saved := *m
		change()
		if Digest(again) == d {
			t.Errorf("changing %s leaves the digest unchanged", what)
		}
		*m = saved
	}
	if Digest(again) != d {
		t.Fatal("restoring the adapter does not restore its digest")
	}
}

// digestAdapters are a rank-4 adapter on all seven projections of both layers of testBase, written as
// a PEFT folder and as a lorapack file (q4), and loaded as the cache loads them: the folder
// with its F32 factors, the file for a device that decodes q4 (every tensor left a stream).
func digestAdapters(t *testing.T) (peft, encoded *model.HostAdapter) {
	t.Helper()
	base := testBase(t)
	var pairs [][]safetensors.Tensor
	for l := range base.NumLayers {
		for p := model.Proj(0); p < model.NumProj; p++ {
			pairs = append(pairs, pair(base, l, p, 4))
		}
	}
	dir := writeAdapter(t, with(map[string]any{"target_modules": []string{
		"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}}), pairs...)
	peft, c, err := LoadPEFT(dir, "peft", base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p := filepath.Join(t.TempDir(), "a.lorapack")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	opt := DefaultCompressOptions()
	opt.Codec = "q4"
	if _, err := CompressPEFT(dir, f, opt); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	encoded, c, err = LoadCompressedEncoded(p, "encoded", base, func(codec string) bool { return codec == "q4" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, tt := range digestTensors(encoded) {
		if tt.Encoded == nil {
			t.Fatalf("%s was decoded, not left a q4 stream", tt.Name)
		}
	}
	return peft, encoded
}

// digestTensors lists a's tensors in module order, A before B.
func digestTensors(a *model.HostAdapter) []*model.HostTensor {
	var out []*model.HostTensor
	for l := range a.Modules {
		for _, m := range a.Modules[l] {
			if m != nil {
				out = append(out, &m.A, &m.B)
			}
		}
	}
	return out
}

// The digest is construction v2 whatever the number of goroutines hashing and their schedule:
// the SHA-256 of the domain, the layer count and, per module in order, layer, projection, rank,
// scale and per tensor dtype, shape, form, byte length and the SHA-256 of its bytes, computed
// here on one goroutine.
func TestDigestIsV2WhateverTheWorkers(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	peft, encoded := digestAdapters(t)
	for _, a := range []*model.HostAdapter{peft, encoded} {
		want := digestV2Serial(a)
		for _, procs := range []int{1, 4, 1, 4, 64} {
			runtime.GOMAXPROCS(procs)
			for range 5 {
				if got := Digest(a); got != want {
					t.Fatalf("%s at GOMAXPROCS %d: digest %x, want %x", a.Name, procs, got, want)
				}
				// As the cache's upload hashes: GOMAXPROCS-1 workers, joined late by another.
				for _, workers := range []int{1, 3} {
					j := newHashJob(a)
					ran := make(chan struct{})
					go func() { j.run(workers); close(ran) }()
					j.work()
					<-ran
					if got := j.digest(); got != want {
						t.Fatalf("%s at GOMAXPROCS %d on %d workers and a late one: digest %x, want %x", a.Name, procs, workers, got, want)
					}
				}
			}
		}
	}
	if Digest(peft) == Digest(encoded) {
		t.Fatal("an adapter's F32 factors and its q4 streams hash the same")
	}
}

// digestV2Serial is construction v2 as Digest's comment states it, on one goroutine.
func digestV2Serial(a *model.HostAdapter) [32]byte {
	var rec []byte
	putInt := func(v int) { rec = binary.LittleEndian.AppendUint64(rec, uint64(v)) }
	putString := func(s string) { putInt(len(s)); rec = append(rec, s...) }
	rec = append(rec, "loraplex adapter v2\x00"...)
	putInt(len(a.Modules))
	for l := range a.Modules {
		for p, m := range a.Modules[l] {
			if m == nil {
				continue
			}
			putInt(l)
			putInt(p)
			putInt(m.Rank)
			putInt(int(math.Float32bits(m.Scale)))
			for _, tt := range []*model.HostTensor{&m.A, &m.B} {
				putString(tt.DType.String())
				putInt(len(tt.Shape))
				for _, n := range tt.Shape {
					putInt(n)
				}
				bytes := tt.Data
				if e := tt.Encoded; e != nil {
					putString("encoded")
					putString(e.Codec)
					putInt(e.Group)
					bytes = e.Stream
				} else {
					putString("data")
				}
				putInt(len(bytes))
				sum := sha256.Sum256(bytes)
				rec = append(rec, sum[:]...)
			}
		}
	}
	return sha256.Sum256(rec)
}

// One flipped byte in any tensor (its data, or its stream where left encoded), at its start,
// middle or end, changes the digest; so do a tensor's rank, scale, shape (same bytes), dtype,
// codec, group and form (the same bytes as data instead of a stream). Restored, the adapter
// hashes as before.
func TestDigestChangesWithAnyTensorOrField(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	peft, encoded := digestAdapters(t)
	for _, a := range []*model.HostAdapter{peft, encoded} {
		want := Digest(a)
		changed := func(what string) {
			t.Helper()
			if Digest(a) == want {
				t.Errorf("%s: changing %s leaves the digest unchanged", a.Name, what)
			}
		}
		for i, tt := range digestTensors(a) {
			bytes := &tt.Data
			if tt.Encoded != nil {
				bytes = &tt.Encoded.Stream
			}
			saved := *bytes
			for _, at := range []int{0, len(saved) / 2, len(saved) - 1} {
				*bytes = append([]byte(nil), saved...)
				(*bytes)[at] ^= 0x10
				changed(fmt.Sprintf("byte %d of tensor %d (%s)", at, i, tt.Name))
			}
			*bytes = saved

			shape := tt.Shape
			tt.Shape = []int{shape[1], shape[0]}
			changed(fmt.Sprintf("the shape of %s to %v", tt.Name, tt.Shape))
			tt.Shape = shape

			dt := tt.DType
			tt.DType = map[bool]model.DType{true: model.BF16, false: model.F32}[dt == model.F32]
			changed("the dtype of " + tt.Name)
			tt.DType = dt

			if e := tt.Encoded; e != nil {
				saved := *e
				e.Codec = "q8"
				changed("the codec of " + tt.Name)
				*e = saved
				e.Group *= 2
				changed("the group of " + tt.Name)
				*e = saved
				data := tt.Data
				tt.Encoded, tt.Data = nil, e.Stream
				changed("the form of " + tt.Name + " (its stream as data)")
				tt.Encoded, tt.Data = e, data
			}
		}
		for l := range a.Modules {
			for p, m := range a.Modules[l] {
				if m == nil {
					continue
				}
				saved := *m
				m.Rank++
				changed(fmt.Sprintf("the rank of layer %d %v", l, model.Proj(p)))
				*m = saved
				m.Scale = math.Nextafter32(m.Scale, 10)
				changed(fmt.Sprintf("the scale of layer %d %v by one ulp", l, model.Proj(p)))
				*m = saved
			}
		}
		if Digest(a) != want {
			t.Fatalf("%s: restoring the adapter does not restore its digest", a.Name)
		}
	}
}

// Every load through the cache is hashed once, beside its first upload, and the device copy a
// lease gives carries the digest of what was loaded: a load that is not uploaded (Prefetch) is
// not hashed, Stats count the hashing within UploadSeconds (the stage it overlaps, so
// bench/coldload shows it there) and not LoadSeconds, and an upload of the same host copy
// after its device copy was evicted hashes nothing again and carries the same digest.
func TestCacheDigestsBesideTheFirstUpload(t *testing.T) {
	c, _ := newTestCache(t, Options{MaxDeviceSlots: 1})
	want := map[string][32]byte{}
	for _, n := range []string{"a_qv", "b_all_rslora"} {
		if err := c.Register(n, fixturePath(n)); err != nil {
			t.Fatal(err)
		}
		ha, cl, err := LoadPEFT(fixturePath(n), "other name", llamaConfig(t))
		if err != nil {
			t.Fatal(err)
		}
		want[n] = Digest(ha)
		cl.Close()
	}
	if err := c.Prefetch("a_qv"); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "a_qv", StateHost)
	if s := c.Stats(); s.Loads != 1 || s.DigestSeconds != 0 {
		t.Fatalf("after a load with no upload: %d loads, DigestSeconds %g, want 1 and 0", s.Loads, s.DigestSeconds)
	}
	lease := func(n string) Stats {
		t.Helper()
		l := mustAcquire(t, c, n)
		if got := l.Adapter().Digest; got != want[n] || got == ([32]byte{}) {
			t.Errorf("%s: the lease's adapter has digest %x, want %x", n, got, want[n])
		}
		l.Release()
		return c.Stats()
	}
	var before Stats
	for _, n := range []string{"a_qv", "b_all_rslora"} { // b evicts a's device copy
		s := lease(n)
		if s.DigestSeconds <= before.DigestSeconds || s.DigestSeconds-before.DigestSeconds > s.UploadSeconds-before.UploadSeconds {
			t.Errorf("%s: DigestSeconds %g -> %g, UploadSeconds %g -> %g: the hashing is not counted within the upload",
				n, before.DigestSeconds, s.DigestSeconds, before.UploadSeconds, s.UploadSeconds)
		}
		before = s
	}
	if s := lease("a_qv"); s.Uploads != 3 || s.Loads != 2 || s.DigestSeconds != before.DigestSeconds {
		t.Errorf("a_qv uploaded again from its host copy: %d uploads, %d loads, DigestSeconds %g -> %g; want 3, 2, unchanged",
			s.Uploads, s.Loads, before.DigestSeconds, s.DigestSeconds)
	}
}
