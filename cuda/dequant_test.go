//go:build cuda

package cuda_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
)

// compressFile writes the PEFT folder dir as a lorapack file under t.TempDir.
func compressFile(t testing.TB, dir string, opt adaptercache.CompressOptions) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := adaptercache.CompressPEFT(dir, &buf, opt); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), filepath.Base(dir)+".lorapack")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// sameOnDevice reads back every tensor of a and want and fails unless they are bit-identical.
func sameOnDevice(t testing.TB, b *cuda.Backend, a, want *model.Adapter) {
	t.Helper()
	if len(a.Modules) != len(want.Modules) || a.MaxRank != want.MaxRank || a.Bytes != want.Bytes {
		t.Fatalf("%s: %d layers rank %d bytes %d, want %d %d %d", a.Name, len(a.Modules), a.MaxRank, a.Bytes, len(want.Modules), want.MaxRank, want.Bytes)
	}
	for l := range want.Modules {
		for p, w := range want.Modules[l] {
			g := a.Modules[l][p]
			if (g == nil) != (w == nil) {
				t.Fatalf("layer %d %v: present %v, want %v", l, model.Proj(p), g != nil, w != nil)
			}
			if w == nil {
				continue
			}
			if g.Rank != w.Rank || g.Scale != w.Scale {
				t.Fatalf("layer %d %v: rank %d scale %v, want %d %v", l, model.Proj(p), g.Rank, g.Scale, w.Rank, w.Scale)
			}
			for i, x := range [][2]model.Tensor{{g.A, w.A}, {g.B, w.B}} {
				if x[0].Rows != x[1].Rows || x[0].Cols != x[1].Cols || x[0].DType != x[1].DType {
					t.Fatalf("layer %d %v factor %d: %dx%d %v, want %dx%d %v", l, model.Proj(p), i, x[0].Rows, x[0].Cols, x[0].DType, x[1].Rows, x[1].Cols, x[1].DType)
				}
				gb, err := b.ReadBytes(x[0])
				if err != nil {
					t.Fatal(err)
				}
				wb, err := b.ReadBytes(x[1])
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(gb, wb) {
					for j := 0; j+1 < len(gb); j += 2 {
						if gb[j] != wb[j] || gb[j+1] != wb[j+1] {
							t.Fatalf("layer %d %v factor %d value %d: %#02x%02x, want %#02x%02x", l, model.Proj(p), i, j/2, gb[j+1], gb[j], wb[j+1], wb[j])
						}
					}
				}
			}
		}
	}
}

func countEncoded(h *model.HostAdapter) (enc, all int) {
	for l := range h.Modules {
		for _, m := range h.Modules[l] {
			if m == nil {
				continue
			}
			for _, x := range []model.HostTensor{m.A, m.B} {
				all++
				if x.Encoded != nil {
					enc++
				}
			}
		}
	}
	return
}

var deviceDecodeModes = map[string]adaptercache.CompressOptions{
	"q4":         adaptercache.DefaultCompressOptions(),
	"q8":         {Codec: "q8"},
	"q4-dense-a": {Codec: "q4", DenseA: true},
	"q4-g64":     {Codec: "q4", Group: 64},
	"q8-g16":     {Codec: "q8", Group: 16},
	"q4-g128-a":  {Codec: "q4", Group: 128, DenseA: true},
	"rice-10":    {Codec: "rice", Density: 0.1}, // nothing decoded on the device
}

// TestDeviceDecodeMatchesHost: lorapack fixture adapters (q4, q8, mixed with dense A) loaded
// with LoadCompressedEncoded and decoded by the kernel read back bit-identical to the same files
// decoded on the host (LoadCompressed) and uploaded through the pooled path.
func TestDeviceDecodeMatchesHost(t *testing.T) {
	b := newGPU(t)
	for _, name := range []string{"llama", "mistral_f16", "qwen2"} {
		cfg, err := model.LoadConfig(fixture.Dir(name))
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range fixture.Adapters {
			for mode, opt := range deviceDecodeModes {
				path := compressFile(t, fixture.AdapterDir(name, a), opt)
				host, hc, err := adaptercache.LoadCompressed(path, a, cfg)
				if err != nil {
					t.Fatal(err)
				}
				enc, ec, err := adaptercache.LoadCompressedEncoded(path, a, cfg, b.DecodesOnDevice)
				if err != nil {
					t.Fatal(err)
				}
				ne, all := countEncoded(enc)
				switch {
				case mode == "rice-10" && ne != 0,
					mode != "rice-10" && opt.DenseA && ne != all/2,
					mode != "rice-10" && !opt.DenseA && ne != all:
					t.Fatalf("%s/%s/%s: %d of %d tensors encoded", name, a, mode, ne, all)
				}
				want, err := model.UploadAdapter(b, cfg, host)
				if err != nil {
					t.Fatal(err)
				}
				got, err := model.UploadAdapter(b, cfg, enc)
				if err != nil {
					t.Fatalf("%s/%s/%s: %v", name, a, mode, err)
				}
				if got.Owner == nil {
					t.Fatal("not uploaded through the AdapterUploader")
				}
				sameOnDevice(t, b, got, want)
				got.Free(b)
				want.Free(b)
				hc.Close()
				ec.Close()
			}
		}
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// encodedAdapter makes a random adapter on every projection of cfg (ranks cycling over ranks),
// each tensor q4 or q8 (alternating) with the given group size, as LoadCompressedEncoded gives
// it (Encoded set, Data zeros), and the same decoded on the host (BF16).
func encodedAdapter(t testing.TB, r *rand.Rand, name string, cfg *model.Config, ranks []int, group int) (enc, dec *model.HostAdapter) {
	t.Helper()
	enc = &model.HostAdapter{Name: name, Modules: make([][model.NumProj]*model.HostLoRA, cfg.NumLayers)}
	dec = &model.HostAdapter{Name: name, Modules: make([][model.NumProj]*model.HostLoRA, cfg.NumLayers)}
	i := 0
	tensor := func(tn string, rows, cols int) (model.HostTensor, model.HostTensor) {
		i++
		c := lorapack.Q4
		if i%2 == 0 {
			c = lorapack.Q8
		}
		vals := make([]float32, rows*cols)
		scale := math.Ldexp(1, -r.IntN(20))
		for j := range vals {
			switch {
			case (j/group)%7 == 3:
				vals[j] = 0 // a group of zeros (maximum 0)
			default:
				vals[j] = float32(r.NormFloat64() * scale)
			}
		}
		s, err := lorapack.EncodeQuant(c, vals, rows, cols, group)
		if err != nil {
			t.Fatal(err)
		}
		bf := make([]uint16, rows*cols)
		if err := lorapack.DecodeBF16(s, bf); err != nil {
			t.Fatal(err)
		}
		shape := []int{rows, cols}
		e := model.HostTensor{Name: tn, DType: model.BF16, Shape: shape, Data: make([]byte, 2*rows*cols),
			Encoded: &model.EncodedTensor{Codec: c.String(), Group: group, Stream: s}}
		d := model.HostTensor{Name: tn, DType: model.BF16, Shape: shape, Data: unsafe.Slice((*byte)(unsafe.Pointer(&bf[0])), 2*len(bf))}
		return e, d
	}
	for l := range cfg.NumLayers {
		for p := model.Proj(0); p < model.NumProj; p++ {
			rank := ranks[(l*int(model.NumProj)+int(p))%len(ranks)]
			out, in := cfg.ProjShape(p)
			ea, da := tensor(fmt.Sprintf("l%d.%v.A", l, p), rank, in)
			eb, db := tensor(fmt.Sprintf("l%d.%v.B", l, p), out, rank)
			enc.Modules[l][p] = &model.HostLoRA{A: ea, B: eb, Rank: rank, Scale: 0.5}
			dec.Modules[l][p] = &model.HostLoRA{A: da, B: db, Rank: rank, Scale: 0.5}
			enc.Bytes += int64(len(ea.Data) + len(eb.Data))
			dec.Bytes += int64(len(da.Data) + len(db.Data))
		}
	}
	return enc, dec
}

// TestDeviceDecodeOddShapes: odd element counts (q4's padding nibble, a short last group), every
// group size, zero groups, and tensors of more than a million values (the kernel's grid stride).
func TestDeviceDecodeOddShapes(t *testing.T) {
	b := newGPU(t)
	r := rand.New(rand.NewPCG(3, 4))
	big := &model.Config{HiddenSize: 1000, IntermediateSize: 12001, NumLayers: 2, NumHeads: 10, NumKVHeads: 2, HeadDim: 100}
	for _, c := range []struct {
		cfg   *model.Config
		ranks []int
		group int
	}{
		{oddConfig, []int{1, 3, 7}, 16},
		{oddConfig, []int{5, 2}, 32},
		{oddConfig, []int{9}, 64},
		{oddConfig, []int{17, 1}, 128},
		{big, []int{97, 8}, 32},
	} {
		enc, dec := encodedAdapter(t, r, fmt.Sprintf("g%d", c.group), c.cfg, c.ranks, c.group)
		want, err := model.UploadAdapter(b, c.cfg, dec)
		if err != nil {
			t.Fatal(err)
		}
		got, err := model.UploadAdapter(b, c.cfg, enc)
		if err != nil {
			t.Fatal(err)
		}
		sameOnDevice(t, b, got, want)
		got.Free(b)
		want.Free(b)
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestDeviceDecodeCorrupt: a corrupt q4 / q8 stream (a code the encoder never writes, a bad
// group maximum, a set padding nibble, non-zero codes under a zero maximum) or one that does
// not match its tensor fails that adapter with lorapack.ErrCorrupt, leaves the backend healthy and
// the slab in the pool, and the next adapter uploads fine.
func TestDeviceDecodeCorrupt(t *testing.T) {
	b := newGPU(t)
	r := rand.New(rand.NewPCG(5, 6))
	// first returns the first encoded tensor of the given codec.
	first := func(h *model.HostAdapter, c string) *model.HostTensor {
		for l := range h.Modules {
			for _, m := range h.Modules[l] {
				if m != nil && m.A.Encoded.Codec == c {
					return &m.A
				}
				if m != nil && m.B.Encoded.Codec == c {
					return &m.B
				}
			}
		}
		t.Fatalf("no %s tensor", c)
		return nil
	}
	corrupt := []struct {
		name  string
		codec string
		edit  func(ht *model.HostTensor)
	}{
		{"q4 code -8", "q4", func(ht *model.HostTensor) {
			s := ht.Encoded.Stream
			s[len(s)-1] = s[len(s)-1]&0xf0 | 0x08 // the last value (the high nibble is padding)
		}},
		{"q8 code -128", "q8", func(ht *model.HostTensor) { s := ht.Encoded.Stream; s[len(s)-1] = 0x80 }},
		{"negative maximum", "q4", func(ht *model.HostTensor) { ht.Encoded.Stream[lorapack.HeaderSize+1] |= 0x80 }},
		{"infinite maximum", "q8", func(ht *model.HostTensor) {
			ht.Encoded.Stream[lorapack.HeaderSize], ht.Encoded.Stream[lorapack.HeaderSize+1] = 0x80, 0x7f
		}},
		{"codes under a zero maximum", "q4", func(ht *model.HostTensor) {
			s := ht.Encoded.Stream
			s[lorapack.HeaderSize], s[lorapack.HeaderSize+1] = 0, 0
			ng := (ht.Shape[0]*ht.Shape[1] + ht.Encoded.Group - 1) / ht.Encoded.Group
			s[lorapack.HeaderSize+2*ng] = 0x11
		}},
		{"q4 padding nibble", "q4", func(ht *model.HostTensor) {
			s := ht.Encoded.Stream
			s[len(s)-1] |= 0x10
		}},
		{"shape mismatch", "q8", func(ht *model.HostTensor) {
			s := ht.Encoded.Stream
			s[4]++ // rows, the payload no longer matches either
		}},
		{"group mismatch", "q4", func(ht *model.HostTensor) { ht.Encoded.Group = 64 }},
		{"truncated", "q8", func(ht *model.HostTensor) { ht.Encoded.Stream = ht.Encoded.Stream[:len(ht.Encoded.Stream)-1] }},
	}
	for _, c := range corrupt {
		// oddConfig with rank 3: A is [3, 67], 201 values, odd (the padding nibble exists).
		enc, _ := encodedAdapter(t, r, "bad", oddConfig, []int{3}, 16)
		ht := first(enc, c.codec)
		c.edit(ht)
		before := b.AdapterPoolStats()
		a, err := model.UploadAdapter(b, oddConfig, enc)
		if err == nil {
			a.Free(b)
			t.Fatalf("%s: uploaded", c.name)
		}
		if !errors.Is(err, lorapack.ErrCorrupt) {
			t.Errorf("%s: %v does not wrap lorapack.ErrCorrupt", c.name, err)
		}
		t.Logf("%s: %v", c.name, err)
		if err := b.Err(); err != nil {
			t.Fatalf("%s: sticky error %v", c.name, err)
		}
		if s := b.AdapterPoolStats(); s.Live != before.Live {
			t.Fatalf("%s: %d live slabs, %d before", c.name, s.Live, before.Live)
		}
		good, dec := encodedAdapter(t, r, "good", oddConfig, []int{3}, 16)
		ga, err := model.UploadAdapter(b, oddConfig, good)
		if err != nil {
			t.Fatalf("%s: the next adapter: %v", c.name, err)
		}
		wa, err := model.UploadAdapter(b, oddConfig, dec)
		if err != nil {
			t.Fatal(err)
		}
		sameOnDevice(t, b, ga, wa)
		ga.Free(b)
		wa.Free(b)
	}
	// The per-tensor path refuses encoded tensors instead of uploading their zeros.
	enc, _ := encodedAdapter(t, r, "pt", oddConfig, []int{3}, 16)
	if a, err := model.UploadAdapter(perTensor{b}, oddConfig, enc); err == nil {
		a.Free(perTensor{b})
		t.Fatal("Backend.Upload took an encoded tensor")
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestDeviceDecodeFixtureLogits: the fixture cases through q4 / q8 / mixed lorapack adapters
// decoded on the device give the logits of the same files decoded on the host.
func TestDeviceDecodeFixtureLogits(t *testing.T) {
	b := newGPU(t)
	for _, name := range []string{"llama", "qwen2"} {
		fx, cfg, h := fixture.Open(t, name, b)
		for _, mode := range []string{"q4", "q8", "q4-dense-a"} {
			opt := deviceDecodeModes[mode]
			var results [2]fixture.Result
			for i := range 2 {
				adapters := map[string]*model.Adapter{}
				for _, a := range fixture.Adapters {
					path := compressFile(t, fixture.AdapterDir(name, a), opt)
					var host *model.HostAdapter
					var closer interface{ Close() error }
					var err error
					if i == 0 {
						host, closer, err = adaptercache.LoadCompressed(path, a, cfg)
					} else {
						host, closer, err = adaptercache.LoadCompressedEncoded(path, a, cfg, b.DecodesOnDevice)
					}
					if err != nil {
						t.Fatal(err)
					}
					if adapters[a], err = model.UploadAdapter(b, cfg, host); err != nil {
						t.Fatal(err)
					}
					closer.Close()
				}
				res, err := h.Run(fx.Cases, adapters, 3, fixture.Tolerance{Abs: 1e9})
				if err != nil {
					t.Fatalf("%s %s (path %d): %v", name, mode, i, err)
				}
				results[i] = res
				for _, a := range adapters {
					a.Free(b)
				}
			}
			if results[0] != results[1] {
				t.Fatalf("%s %s: host-decoded %+v, device-decoded %+v", name, mode, results[0], results[1])
			}
			t.Logf("%s %s: %+v", name, mode, results[1])
		}
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// The cache on the CUDA backend loads lorapack files through the device-decoding loader.
var _ model.EncodedUploader = (*cuda.Backend)(nil)
