package adaptercache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// LoadCompressedEncoded gives the HostAdapter LoadCompressed gives (names, dtypes, shapes, ranks,
// scales, bytes), with the q4 / q8 tensors the backend accepts left encoded (Encoded set, Data
// zeros; the stream decodes to LoadCompressed's data) and every other tensor decoded the same.
func TestLoadCompressedEncoded(t *testing.T) {
	dirs, _ := filepath.Glob("../testdata/models/*/adapters/*")
	if len(dirs) != 20 {
		t.Fatalf("%d fixture adapters, want 20", len(dirs))
	}
	accept := map[string]func(string) bool{
		"all":     func(c string) bool { return c == "q4" || c == "q8" },
		"q4-only": func(c string) bool { return c == "q4" },
		"none":    func(string) bool { return false },
	}
	for _, dir := range dirs {
		modelDir := filepath.Dir(filepath.Dir(dir))
		base, err := model.LoadConfig(modelDir)
		if err != nil {
			t.Fatal(err)
		}
		for mode, opt := range compressModes {
			t.Run(filepath.Base(modelDir)+"/"+filepath.Base(dir)+"/"+mode, func(t *testing.T) {
				path := compressTo(t, dir, opt)
				want, wc, err := LoadCompressed(path, "x", base)
				if err != nil {
					t.Fatal(err)
				}
				defer wc.Close()
				for an, ok := range accept {
					got, gc, err := LoadCompressedEncoded(path, "x", base, ok)
					if err != nil {
						t.Fatalf("%s: %v", an, err)
					}
					sameEncoded(t, an, got, want, path, ok)
					if err := gc.Close(); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	}
}

func sameEncoded(t *testing.T, mode string, got, want *model.HostAdapter, path string, ok func(string) bool) {
	t.Helper()
	c, err := lorapack.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(got.Modules) != len(want.Modules) || got.Bytes != want.Bytes || got.Name != want.Name || got.Path != want.Path {
		t.Fatalf("%s: %d layers %d bytes, want %d %d", mode, len(got.Modules), got.Bytes, len(want.Modules), want.Bytes)
	}
	for l := range want.Modules {
		for p, w := range want.Modules[l] {
			g := got.Modules[l][p]
			if (g == nil) != (w == nil) {
				t.Fatalf("%s: layer %d %v: present %v, want %v", mode, l, model.Proj(p), g != nil, w != nil)
			}
			if w == nil {
				continue
			}
			if g.Rank != w.Rank || g.Scale != w.Scale {
				t.Fatalf("%s: layer %d %v: rank %d scale %v, want %d %v", mode, l, model.Proj(p), g.Rank, g.Scale, w.Rank, w.Scale)
			}
			for _, x := range [][2]model.HostTensor{{g.A, w.A}, {g.B, w.B}} {
				gt, wt := x[0], x[1]
				if gt.Name != wt.Name || gt.DType != wt.DType || !slices.Equal(gt.Shape, wt.Shape) || len(gt.Data) != len(wt.Data) {
					t.Fatalf("%s: tensor %s: %v %v differs from %s %v %v", mode, gt.Name, gt.DType, gt.Shape, wt.Name, wt.DType, wt.Shape)
				}
				info := c.Manifest.Tensors[gt.Name]
				enc := (info.Codec == "q4" || info.Codec == "q8") && ok(info.Codec)
				if wt.Encoded != nil {
					t.Fatalf("LoadCompressed set Encoded on %s", wt.Name)
				}
				if !enc {
					if gt.Encoded != nil || !bytes.Equal(gt.Data, wt.Data) {
						t.Fatalf("%s: tensor %s (%s): encoded %v or data differs", mode, gt.Name, info.Codec, gt.Encoded != nil)
					}
					continue
				}
				e := gt.Encoded
				if e == nil || e.Codec != info.Codec || e.Group != info.Group || e.Group == 0 {
					t.Fatalf("%s: tensor %s (%s g%d): Encoded %+v", mode, gt.Name, info.Codec, info.Group, e)
				}
				if slices.ContainsFunc(gt.Data, func(b byte) bool { return b != 0 }) {
					t.Fatalf("%s: tensor %s: an encoded tensor's data was written", mode, gt.Name)
				}
				n := wt.Shape[0] * wt.Shape[1]
				bf := make([]uint16, n)
				if err := lorapack.DecodeBF16(e.Stream, bf); err != nil {
					t.Fatal(err)
				}
				if wt.DType == model.BF16 {
					if !bytes.Equal(unsafe.Slice((*byte)(unsafe.Pointer(&bf[0])), 2*n), wt.Data) {
						t.Fatalf("%s: tensor %s: the stream decodes to other values", mode, gt.Name)
					}
				} else {
					for i := range n {
						if bf[i] != model.F32ToBF16(wt.At(i)) {
							t.Fatalf("%s: tensor %s value %d: the stream decodes to other values", mode, gt.Name, i)
						}
					}
				}
			}
		}
	}
}

// decodingBackend is the counting CPU backend claiming to decode q4 and q8 itself: Upload
// decodes encoded tensors on the host (counting them) before handing them on.
type decodingBackend struct {
	*countingBackend
	encoded atomic.Int64
}

func (b *decodingBackend) DecodesOnDevice(c string) bool { return c == "q4" || c == "q8" }

func (b *decodingBackend) Upload(h model.HostTensor, rows, cols int) (model.Tensor, error) {
	if e := h.Encoded; e != nil {
		b.encoded.Add(1)
		bf := make([]uint16, rows*cols)
		if err := lorapack.DecodeBF16(e.Stream, bf); err != nil {
			return model.Tensor{}, err
		}
		h.DType, h.Data, h.Encoded = model.BF16, unsafe.Slice((*byte)(unsafe.Pointer(&bf[0])), 2*len(bf)), nil
	}
	return b.countingBackend.Upload(h, rows, cols)
}

// sawEncoded is a CPU backend that records whether any uploaded tensor came encoded.
type sawEncoded struct {
	*countingBackend
	encoded atomic.Int64
}

func (b *sawEncoded) Upload(h model.HostTensor, rows, cols int) (model.Tensor, error) {
	if h.Encoded != nil {
		b.encoded.Add(1)
	}
	return b.countingBackend.Upload(h, rows, cols)
}

// The cache hands encoded tensors only to a backend that implements model.EncodedUploader (and
// then for a q4 file, only encoded ones); any other backend gets decoded data.
func TestCacheEncodedOnlyForEncodedUploader(t *testing.T) {
	for _, opt := range []CompressOptions{DefaultCompressOptions(), {Codec: "q8"}, {Codec: "q4", DenseA: true}} {
		path := compressTo(t, fixturePath("b_all_rslora"), opt)

		_, cb := newTestCache(t, Options{})
		plain := &sawEncoded{countingBackend: cb}
		c, err := New(Options{Config: llamaConfig(t), Backend: plain, MaxDeviceSlots: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Register("x", path); err != nil {
			t.Fatal(err)
		}
		l := mustAcquire(t, c, "x")
		l.Release()
		c.Close()
		if n := plain.encoded.Load(); n != 0 || cb.uploads.Load() == 0 {
			t.Errorf("%s: a backend without EncodedUploader got %d encoded tensors (%d uploads)", opt.Codec, n, cb.uploads.Load())
		}

		_, cb2 := newTestCache(t, Options{})
		dec := &decodingBackend{countingBackend: cb2}
		c2, err := New(Options{Config: llamaConfig(t), Backend: dec, MaxDeviceSlots: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := c2.Register("x", path); err != nil {
			t.Fatal(err)
		}
		l2 := mustAcquire(t, c2, "x")
		l2.Release()
		c2.Close()
		want := cb2.uploads.Load()
		if opt.DenseA {
			want /= 2 // only the B factors are q4
		}
		if n := dec.encoded.Load(); n == 0 || n != want {
			t.Errorf("%s dense-a %v: %d of %d uploaded tensors came encoded, want %d", opt.Codec, opt.DenseA, n, cb2.uploads.Load(), want)
		}
	}
}

// The streams of a lorapack file, each padded to 8 bytes, fit in the file's size (its header
// holds more than 7 bytes per tensor): the buffer LoadCompressedEncoded allocates ahead from the
// size alone always holds them, whatever the codec and however small the tensors.
func TestEncodedStreamsFitTheirFileSize(t *testing.T) {
	dirs, _ := filepath.Glob("../testdata/models/*/adapters/*")
	for _, dir := range dirs {
		for mode, opt := range compressModes {
			path := compressTo(t, dir, opt)
			c, err := lorapack.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			size := 0
			for _, info := range c.Manifest.Tensors {
				size += align8(info.Bytes)
			}
			c.Close()
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if int64(size) > st.Size() {
				t.Errorf("%s %s: %d bytes of padded streams in a file of %d", dir, mode, size, st.Size())
			}
		}
	}
}

// Streams larger than any adapter of the base model decodes to are refused (lorapack.ErrCorrupt)
// before anything is allocated for them: the buffer is never asked for.
func TestReadEncodedRefusesStreamsPastTheLimit(t *testing.T) {
	path := compressTo(t, "../testdata/models/llama/adapters/b_all_rslora", DefaultCompressOptions())
	c, err := lorapack.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	asked := false
	_, err = readEncoded(c.File, func(string) bool { return true }, 100, func() []byte { asked = true; return nil })()
	if !errors.Is(err, lorapack.ErrCorrupt) || asked {
		t.Fatalf("streams past a 100-byte limit: %v, buffer asked for %v", err, asked)
	}
}

// Where the buffer allocated ahead is too small (the file shrank between its stat and its
// mapping), the readers allocate their own and the streams are the same.
func TestReadEncodedWithoutTheBufferAhead(t *testing.T) {
	path := compressTo(t, "../testdata/models/llama/adapters/b_all_rslora", DefaultCompressOptions())
	c, err := lorapack.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	all := func(string) bool { return true }
	want, err := readEncoded(c.File, all, 1<<30, func() []byte { return make([]byte, 1<<20) })()
	if err != nil {
		t.Fatal(err)
	}
	got, err := readEncoded(c.File, all, 1<<30, func() []byte { return make([]byte, 100) })()
	if err != nil {
		t.Fatal(err)
	}
	if len(got.streams) != len(c.File.Names()) {
		t.Fatalf("%d streams read of %d", len(got.streams), len(c.File.Names()))
	}
	for _, n := range c.File.Names() {
		if !bytes.Equal(got.streams[n], want.streams[n]) || len(got.streams[n]) != c.Manifest.Tensors[n].Bytes {
			t.Fatalf("%s: %d bytes, want %d", n, len(got.streams[n]), c.Manifest.Tensors[n].Bytes)
		}
		if err := c.CheckSum(n, got.sums[n]); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
	}
}

// Nothing is allocated ahead of the checks for a file larger than any adapter of the base
// model may decode to, and a file within that gets its size: what a path to some other large
// file costs before it is refused is bounded by the base model, not by the file.
func TestAllocAheadOnlyWhatAnAdapterMayTake(t *testing.T) {
	base, err := model.LoadConfig("../testdata/models/llama")
	if err != nil {
		t.Fatal(err)
	}
	limit := maxAdapterBytes(base)
	for _, c := range []struct{ size, want int }{{0, 0}, {1000, 1000}, {limit, limit}, {limit + 1, 0}, {1 << 40, 0}} {
		if got := len(allocAhead(int64(c.size), limit)()); got != c.want {
			t.Errorf("%d-byte file: %d bytes ahead, want %d", c.size, got, c.want)
		}
	}
	// And the loader refuses such a file with nothing allocated for it.
	path := filepath.Join(t.TempDir(), "large.lorapack")
	if err := os.WriteFile(path, []byte("not a lorapack file"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<30); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, _, err := LoadCompressedEncoded(path, "x", base, func(string) bool { return true }); err == nil {
		t.Fatal("loaded")
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("%d bytes allocated for a 1 GiB file that is not an adapter", n)
	}
}

// A damaged q4 file fails in LoadCompressedEncoded (whose streams are read ahead, on other
// goroutines, into memory allocated ahead) with the errors LoadCompressed gives: a truncated file
// is a *safetensors.FormatError, a changed byte in a stream left encoded fails its checksum
// (lorapack.ErrCorrupt), both as *AdapterError.
func TestEncodedRefusesDamagedFiles(t *testing.T) {
	base, good := llamaQ4(t)
	load := func(b []byte) error {
		p := filepath.Join(t.TempDir(), "bad.lorapack")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, err := LoadCompressedEncoded(p, "x", base, func(string) bool { return true })
		return err
	}
	var ae *AdapterError
	for _, n := range []int{0, 5, 100, len(good) / 2, len(good) - 1} {
		var fe *safetensors.FormatError
		if err := load(good[:n]); !errors.As(err, &ae) || !errors.As(err, &fe) {
			t.Errorf("truncated to %d bytes: %v", n, err)
		}
	}
	bad := slices.Clone(good)
	bad[len(bad)-1] ^= 0x10 // the last stream's last q4 codes
	if err := load(bad); !errors.As(err, &ae) || !errors.Is(err, lorapack.ErrCorrupt) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("changed stream byte: %v", err)
	}
}
