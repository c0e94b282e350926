package adaptercache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// Every single-byte change of a lorapack file, anywhere in it (safetensors header, manifest,
// streams), is refused or decodes to exactly the original adapter: the streams and the manifest
// carry CRC-32C checksums. Before the checksums, 18 of 40 flips of a q4 file's streams loaded
// silently with other values.
func TestCompressedEveryByteFlip(t *testing.T) {
	dir := fixture.AdapterDir("llama", "a_qv")
	base, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "flipped.lorapack")
	// q4 (the default): every byte of the streams, and every 31st of the header (JSON, which a
	// flip mostly breaks; the manifest's own checksum covers the rest). The other codecs are
	// sampled, to keep the test quick.
	for k, opt := range []CompressOptions{DefaultCompressOptions(), {Codec: "dense"}, {Codec: "rice", Density: 0.25}} {
		streamStep, headerStep := 1, 31
		if k > 0 {
			streamStep, headerStep = 7, 61
		}
		good, err := os.ReadFile(compressTo(t, dir, opt))
		if err != nil {
			t.Fatal(err)
		}
		want, _, err := LoadCompressed(compressTo(t, dir, opt), "x", base)
		if err != nil {
			t.Fatal(err)
		}
		hdrLen := 8 + int(binary.LittleEndian.Uint64(good))
		silent := 0
		for i := 0; i < len(good); i++ {
			if (i < hdrLen && i%headerStep != 0) || (i >= hdrLen && (i-hdrLen)%streamStep != 0) {
				continue
			}
			b := slices.Clone(good)
			b[i] ^= byte(0xff - i%2*0xfe) // alternately 0xff and 0x01
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			got, _, err := LoadCompressed(path, "x", base)
			if err != nil || sameValues(got, want) {
				continue
			}
			if silent++; silent > 5 {
				t.Fatal("giving up")
			}
			if i >= hdrLen {
				t.Errorf("%s: byte %d of %d (stream data) loads with other values", opt.Codec, i, len(good))
			} else {
				t.Errorf("%s: byte %d (header: %q) loads with other values", opt.Codec, i, good[max(0, i-20):min(hdrLen, i+20)])
			}
		}
		t.Logf("%s: %d bytes, %d of them streams", opt.Codec, len(good), len(good)-hdrLen)
	}
}

// sameValues reports whether two adapters compute the same thing.
func sameValues(a, b *model.HostAdapter) bool {
	if len(a.Modules) != len(b.Modules) {
		return false
	}
	for l := range a.Modules {
		for p := range a.Modules[l] {
			x, y := a.Modules[l][p], b.Modules[l][p]
			if (x == nil) != (y == nil) {
				return false
			}
			if x != nil && (x.Rank != y.Rank || x.Scale != y.Scale || x.A.DType != y.A.DType || x.B.DType != y.B.DType ||
				!bytes.Equal(x.A.Data, y.A.Data) || !bytes.Equal(x.B.Data, y.B.Data)) {
				return false
			}
		}
	}
	return true
}

// A file of the first lorapack format (no checksums) is refused, through the cache's loader
// too, with a message that says how to rebuild it.
func TestCompressedOldFormatRefused(t *testing.T) {
	base, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(compressTo(t, fixture.AdapterDir("llama", "a_qv"), DefaultCompressOptions()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	meta := f.Metadata()
	var tensors []safetensors.Tensor
	for _, n := range f.Names() {
		tt, _ := f.Tensor(n)
		tensors = append(tensors, tt)
	}
	v1 := map[string]string{lorapack.MetaFormat: "loraplex.lorapack/v1",
		lorapack.MetaManifest: strings.Replace(meta[lorapack.MetaManifest], lorapack.Format, "loraplex.lorapack/v1", 1)}
	path := filepath.Join(t.TempDir(), "old.lorapack")
	if err := safetensors.WriteFile(path, tensors, v1); err != nil {
		t.Fatal(err)
	}
	for name, load := range map[string]LoaderFunc{"LoadCompressed": LoadCompressed, "DefaultLoader": DefaultLoader} {
		_, _, err := load(path, "old", base)
		var ae *AdapterError
		if !errors.As(err, &ae) || !strings.Contains(err.Error(), "loraplex.lorapack/v1") || !strings.Contains(err.Error(), "lorapack compress") {
			t.Errorf("%s: %v, want an adapter error naming the format and how to rebuild", name, err)
		}
	}
}

// A NaN or an infinity anywhere in a LoRA factor is refused at load, naming the tensor, for PEFT
// folders of every dtype and for lorapack files alike.
func TestNonFiniteFactorRefused(t *testing.T) {
	base := testBase(t)
	for _, dtype := range []string{"F32", "BF16", "F16"} {
		for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
			tensors := qv(base)
			victim := &tensors[1][1] // layer 0's v_proj lora_B
			*victim = convert(*victim, dtype)
			// The last element: the scan's tail, past its eight-byte blocks when the size is odd.
			n := victim.Shape[0] * victim.Shape[1]
			putValue(victim, n-1, bad)
			dir := writeAdapter(t, baseCfg(), tensors...)
			_, _, err := LoadPEFT(dir, "x", base)
			var ae *AdapterError
			if !errors.As(err, &ae) || ae.Tensor != victim.Name || !errors.Is(err, errNonFinite) {
				t.Errorf("%s %v: %v, want an error naming %s", dtype, bad, err, victim.Name)
			}
		}
	}
	// The first element of every tensor, each in its own adapter (the scan's blocks).
	for i := range qv(base) {
		for j := range 2 {
			tensors := qv(base)
			putValue(&tensors[i][j], 0, math.NaN())
			_, _, err := LoadPEFT(writeAdapter(t, baseCfg(), tensors...), "x", base)
			var ae *AdapterError
			if !errors.As(err, &ae) || ae.Tensor != tensors[i][j].Name {
				t.Errorf("NaN first in %s: %v", tensors[i][j].Name, err)
			}
		}
	}
	// lorapack: the encoders refuse non-finite values, so the file is made by hand: a dense-bf16
	// stream with an infinity, under valid checksums.
	tensors := qv(base)
	dir := writeAdapter(t, baseCfg(), tensors...)
	packed := compressTo(t, dir, CompressOptions{Codec: "dense"})
	c, err := lorapack.Open(packed)
	if err != nil {
		t.Fatal(err)
	}
	var streams []lorapack.Stream
	victim := tensors[0][0].Name
	for _, n := range c.File.Names() {
		st := make([]byte, c.Manifest.Tensors[n].Bytes)
		if err := c.ReadStream(n, st); err != nil {
			t.Fatal(err)
		}
		if n == victim {
			binary.LittleEndian.PutUint16(st[lorapack.HeaderSize+2*3:], 0x7f80) // element 3: +Inf
		}
		streams = append(streams, lorapack.Stream{Name: n, Data: st})
	}
	var buf bytes.Buffer
	if err := lorapack.WriteContainer(&buf, c.Manifest, streams); err != nil {
		t.Fatal(err)
	}
	c.Close()
	path := filepath.Join(t.TempDir(), "inf.lorapack")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = LoadCompressed(path, "x", base)
	var ae *AdapterError
	if !errors.As(err, &ae) || ae.Tensor != victim || !errors.Is(err, errNonFinite) {
		t.Errorf("lorapack: %v, want an error naming %s", err, victim)
	}
}

// convert re-encodes an F32 test tensor as dtype.
func convert(t safetensors.Tensor, dtype string) safetensors.Tensor {
	if dtype == "F32" {
		return t
	}
	n := len(t.Data) / 4
	out := safetensors.Tensor{Name: t.Name, DType: dtype, Shape: t.Shape, Data: make([]byte, 2*n)}
	for i := range n {
		f := math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
		var u uint16
		if dtype == "BF16" {
			u = model.F32ToBF16(f)
		} else {
			u = f16(f)
		}
		binary.LittleEndian.PutUint16(out.Data[2*i:], u)
	}
	return out
}

// f16 converts the test pattern's values (multiples of 0.25 below 2), and the non-finite values,
// to IEEE half precision.
func f16(f float32) uint16 {
	switch {
	case math.IsNaN(float64(f)):
		return 0x7e00
	case math.IsInf(float64(f), 1):
		return 0x7c00
	case math.IsInf(float64(f), -1):
		return 0xfc00
	case f == 0:
		return 0
	}
	exp, frac := math.Frexp(float64(f)) // f = frac * 2^exp, 0.5 <= frac < 1
	return uint16(exp-1+15)<<10 | uint16((frac*2-1)*1024)
}

// putValue sets element i of a test tensor in its dtype.
func putValue(t *safetensors.Tensor, i int, v float64) {
	switch t.DType {
	case "F32":
		binary.LittleEndian.PutUint32(t.Data[4*i:], math.Float32bits(float32(v)))
	case "BF16":
		binary.LittleEndian.PutUint16(t.Data[2*i:], model.F32ToBF16(float32(v)))
	default:
		binary.LittleEndian.PutUint16(t.Data[2*i:], f16(float32(v)))
	}
}

// Ranks above the cache's MaxRank (--max-lora-rank) are refused at load, naming a tensor of
// the module and the limit; the default limit is the kernels' (256), which every fixture fits
// and rank 257 does not.
func TestMaxRankRefused(t *testing.T) {
	c, _ := newTestCache(t, Options{MaxRank: 8})
	for _, a := range []string{"a_qv", "c_patterns"} { // rank 8; rank 16 with patterns
		if err := c.Register(a, fixturePath(a)); err != nil {
			t.Fatal(err)
		}
	}
	mustAcquire(t, c, "a_qv").Release()
	_, err := c.Acquire(context.Background(), "c_patterns")
	var ae *AdapterError
	if !errors.As(err, &ae) || !strings.HasSuffix(ae.Tensor, "lora_A.weight") || !errors.Is(err, model.ErrUnsupported) ||
		!strings.Contains(err.Error(), "limit of 8 (--max-lora-rank)") {
		t.Errorf("rank 16 under MaxRank 8: %v", err)
	}

	base := testBase(t)
	c, _ = newTestCache(t, Options{Config: base})
	for name, rank := range map[string]int{"r256": 256, "r257": 257} {
		dir := writeAdapter(t, with(map[string]any{"r": rank, "target_modules": []string{"q_proj"}}), pair(base, 0, model.ProjQ, rank), pair(base, 1, model.ProjQ, rank))
		if err := c.Register(name, dir); err != nil {
			t.Fatal(err)
		}
	}
	mustAcquire(t, c, "r256").Release()
	if _, err := c.Acquire(context.Background(), "r257"); !errors.Is(err, model.ErrUnsupported) || !strings.Contains(err.Error(), "rank 257") {
		t.Errorf("rank 257 under the default limit: %v", err)
	}
}

// A lorapack file is held to rank DefaultMaxRank before anything is decoded: its config's rank
// is the one size it chooses, and a tiny sparse stream can claim a huge shape under it. (Before,
// a config of rank 65535 let a 20-byte stream make the loader allocate 128 MiB on this small
// model, and gigabytes on a large one.)
func TestCompressedHugeRankRefused(t *testing.T) {
	base, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	st := make([]byte, lorapack.HeaderSize) // rice, nothing kept, [65535, 1024]
	copy(st, "LX\x04\x00\xff\xff\x00\x00\x00\x04\x00\x00")
	name := "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
	m := &lorapack.Manifest{Format: lorapack.Format, PEFTConfig: []byte(`{"peft_type":"LORA","r":65535,"lora_alpha":16,"target_modules":["q_proj"]}`),
		Tensors: map[string]lorapack.TensorInfo{name: {Codec: "rice", Shape: [2]int{65535, 1024}, DType: "BF16", Bytes: len(st)}}}
	var buf bytes.Buffer
	if err := lorapack.WriteContainer(&buf, m, []lorapack.Stream{{Name: name, Data: st}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "huge-rank.lorapack")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	for what, load := range map[string]LoaderFunc{"LoadCompressed": LoadCompressed, "LoadCompressedEncoded": func(p, n string, c *model.Config) (*model.HostAdapter, io.Closer, error) {
		return LoadCompressedEncoded(p, n, c, func(string) bool { return true })
	}} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _, err := load(path, "x", base)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, model.ErrUnsupported) || !strings.Contains(err.Error(), "rank 65535") {
			t.Errorf("%s: %v", what, err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 16<<20 {
			t.Errorf("%s allocated %d MiB", what, n>>20)
		}
	}
}
