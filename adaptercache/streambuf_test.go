package adaptercache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
)

// loadEncodedStreams is LoadCompressedEncoded of path on a device that decodes q4 and q8, and
// the streams it left encoded, by tensor name.
func loadEncodedStreams(t *testing.T, base *model.Config, path string) (*model.HostAdapter, map[string][]byte, func() error) {
	t.Helper()
	a, c, err := LoadCompressedEncoded(path, "x", base, func(string) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for l := range a.Modules {
		for _, m := range a.Modules[l] {
			if m == nil {
				continue
			}
			for _, h := range []*model.HostTensor{&m.A, &m.B} {
				if h.Encoded != nil {
					out[h.Name] = h.Encoded.Stream
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no stream left encoded")
	}
	return a, out, c.Close
}

// fileStreams is every stream of a lorapack file as stored, read apart from the loader.
func fileStreams(t *testing.T, path string) map[string][]byte {
	t.Helper()
	c, err := lorapack.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := map[string][]byte{}
	for _, n := range c.File.Names() {
		out[n] = make([]byte, c.Manifest.Tensors[n].Bytes)
		if err := c.ReadStream(n, out[n]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// sameStreams fails t unless every stream got holds the file's bytes.
func sameStreams(t *testing.T, what string, got, file map[string][]byte) {
	t.Helper()
	for n, s := range got {
		if !bytes.Equal(s, file[n]) {
			t.Fatalf("%s: stream %s differs from the file's", what, n)
		}
	}
}

// startOf is the address of b's first byte.
func startOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// A closed device-decoded load gives its streams' buffer to the next load, which holds its own
// adapter's streams in it, not the last one's; a load still open keeps its buffer, so two
// adapters open at once never share one and each keeps its bytes.
func TestStreamBufferReusedOnlyAfterClose(t *testing.T) {
	emptyStreamBuffers()
	base, err := model.LoadConfig("../testdata/models/llama")
	if err != nil {
		t.Fatal(err)
	}
	pathA := compressTo(t, "../testdata/models/llama/adapters/b_all_rslora", DefaultCompressOptions())
	pathB := filepath.Join(t.TempDir(), "b.lorapack") // the same shape, other values: the q8 codec
	raw, err := os.ReadFile(compressTo(t, "../testdata/models/llama/adapters/b_all_rslora", CompressOptions{Codec: "q8"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pathB, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	fileA, fileB := fileStreams(t, pathA), fileStreams(t, pathB)

	_, a1, close1 := loadEncodedStreams(t, base, pathA)
	sameStreams(t, "first load", a1, fileA)
	_, b1, close2 := loadEncodedStreams(t, base, pathB) // a1 still open: its buffer is not free
	sameStreams(t, "second load, the first open", b1, fileB)
	sameStreams(t, "first load after the second", a1, fileA)
	bufA := streamsStart(a1)
	if bufA == streamsStart(b1) {
		t.Fatal("two open loads share a buffer")
	}
	if err := close1(); err != nil {
		t.Fatal(err)
	}
	if err := close2(); err != nil {
		t.Fatal(err)
	}
	// Both buffers are free now; a load of A (whose file size picks a buffer) reuses one.
	_, a2, close3 := loadEncodedStreams(t, base, pathA)
	defer close3()
	sameStreams(t, "a load into a reused buffer", a2, fileA)
	if s := streamsStart(a2); s != bufA && s != streamsStart(b1) {
		t.Error("the load after two closed ones allocated a new buffer")
	}
}

// emptyStreamBuffers drops what the pool holds, so a test sees only its own loads' buffers.
func emptyStreamBuffers() {
	streamBuffers.mu.Lock()
	defer streamBuffers.mu.Unlock()
	streamBuffers.free, streamBuffers.held = nil, 0
}

// streamsStart is the lowest address among the streams: the start of the buffer holding them.
func streamsStart(streams map[string][]byte) uintptr {
	lo := ^uintptr(0)
	for _, s := range streams {
		lo = min(lo, startOf(s))
	}
	return lo
}

// A load that fails after its readers took the buffer (a stream fails its checksum) gives the
// buffer back, so a stream of damaged files does not make every load allocate afresh.
func TestStreamBufferGivenBackByAFailedLoad(t *testing.T) {
	emptyStreamBuffers()
	base, good := llamaQ4(t)
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 0x10 // the last stream's last q4 codes
	p := filepath.Join(t.TempDir(), "bad.lorapack")
	if err := os.WriteFile(p, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadCompressedEncoded(p, "x", base, func(string) bool { return true }); err == nil {
		t.Fatal("a damaged stream loaded")
	}
	if b := streamBuffers.get(len(bad)); b == nil {
		t.Error("the failed load's buffer is not in the pool")
	}
}

// The pool gives a buffer only to a request it fits without holding more than twice the
// request, the smallest such, and keeps no more than its limit, dropping its oldest buffers.
func TestBufferPoolBounds(t *testing.T) {
	p := &bufferPool{limit: 1000}
	p.put(make([]byte, 300))
	p.put(make([]byte, 200))
	if b := p.get(50); b != nil {
		t.Errorf("a 50-byte request got a %d-byte buffer", cap(b))
	}
	if b := p.get(301); b != nil {
		t.Errorf("a 301-byte request got a %d-byte buffer", cap(b))
	}
	if b := p.get(150); len(b) != 150 || cap(b) != 200 {
		t.Errorf("a 150-byte request got len %d cap %d, want the 200-byte buffer", len(b), cap(b))
	}
	p.put(make([]byte, 400))
	p.put(make([]byte, 500)) // 300 + 400 + 500 > 1000: the 300-byte buffer goes
	if p.held != 900 || len(p.free) != 2 {
		t.Errorf("held %d bytes in %d buffers, want 900 in 2", p.held, len(p.free))
	}
	if b := p.get(300); b == nil || cap(b) != 400 {
		t.Errorf("a 300-byte request got cap %d, want the 400-byte buffer", cap(b))
	}
	p.put(make([]byte, 2000)) // larger than the limit: not kept
	if p.held != 500 {
		t.Errorf("held %d bytes, want 500", p.held)
	}
}

// A stream buffer given back serves the next adapter of the same shape even when that one's
// file is a few bytes longer (the manifest's checksums are decimal numbers): buffers are
// allocated with headroom.
func TestStreamBufferServesASlightlyLargerFile(t *testing.T) {
	const n = 23_768_448 // a rank-16 Llama-3-8B adapter's lorapack file
	p := &bufferPool{limit: 4 * n}
	p.put(newStreamBuffer(n))
	if b := p.get(n + 24); len(b) != n+24 {
		t.Fatalf("a file 24 bytes longer got a %d-byte buffer from the pool", len(b))
	}
}

// The readers start on the streams before the manifest is checked: a file whose manifest is
// then refused fails as it did (lorapack.ErrCorrupt in an *AdapterError), the file is unmapped
// only once the readers are done (the race detector and a fault would say otherwise), and the
// buffer, taken by the readers or not, goes back to the pool.
func TestRefusedManifestWhileStreamsAreRead(t *testing.T) {
	base, good := llamaQ4(t)
	bad := bytes.Clone(good)
	at := bytes.Index(bad, []byte(`q4\"`)) // the manifest is a JSON string in the metadata
	if at < 0 {
		t.Fatal("no q4 codec in the manifest")
	}
	bad[at] = 'Q' // the manifest no longer matches its checksum
	p := filepath.Join(t.TempDir(), "bad.lorapack")
	if err := os.WriteFile(p, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		emptyStreamBuffers()
		var ae *AdapterError
		if _, _, err := LoadCompressedEncoded(p, "x", base, func(string) bool { return true }); !errors.As(err, &ae) || !errors.Is(err, lorapack.ErrCorrupt) {
			t.Fatalf("damaged manifest: %v", err)
		}
		// Given back at once if the readers took it, else by a goroutine once allocated.
		deadline := time.Now().Add(5 * time.Second)
		for streamBuffers.get(len(bad)) == nil {
			if time.Now().After(deadline) {
				t.Fatal("the refused load's buffer is not in the pool")
			}
			time.Sleep(time.Millisecond)
		}
	}
}
