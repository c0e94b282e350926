package adaptercache

import (
	"bytes"
	"cmp"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// compressTo writes dir as a lorapack file under t.TempDir.
func compressTo(t *testing.T, dir string, opt CompressOptions) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := CompressPEFT(dir, &buf, opt); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), filepath.Base(dir)+".lorapack")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// llamaQ4 is the llama fixture's config and its b_all_rslora adapter compressed with the default
// options (q4), as file bytes: what the tests of damaged files start from.
func llamaQ4(t *testing.T) (*model.Config, []byte) {
	t.Helper()
	base, err := model.LoadConfig("../testdata/models/llama")
	if err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(compressTo(t, "../testdata/models/llama/adapters/b_all_rslora", DefaultCompressOptions()))
	if err != nil {
		t.Fatal(err)
	}
	return base, good
}

var compressModes = map[string]CompressOptions{
	"dense":       {Codec: "dense"},
	"default":     DefaultCompressOptions(),
	"auto-10pct":  {Codec: "auto", Density: 0.1, AlphaC: 1},
	"ternary-50":  {Codec: "ternary", Density: 0.5},
	"bitmap-25":   {Codec: "bitmap", Density: 0.25},
	"rice-5":      {Codec: "rice", Density: 0.05},
	"global-10-2": {Codec: "auto", Density: 0.1, Global: true, AlphaC: 2},
	"dense-a-10":  {Codec: "auto", Density: 0.1, AlphaC: 1, DenseA: true},
	"q8-g32":      {Codec: "q8"},
	"q4-g32":      {Codec: "q4", Density: 0.1}, // density is ignored
	"q4-g64":      {Codec: "q4", Group: 64},
	"q4-g16-a":    {Codec: "q4", Group: 16, DenseA: true},
	"rice-q8-25":  {Codec: "rice-q8", Density: 0.25},
}

func sameHostAdapter(t *testing.T, got, want *model.HostAdapter) {
	t.Helper()
	if len(got.Modules) != len(want.Modules) || got.Bytes != want.Bytes {
		t.Fatalf("%d layers %d bytes, want %d %d", len(got.Modules), got.Bytes, len(want.Modules), want.Bytes)
	}
	for l := range want.Modules {
		for p, w := range want.Modules[l] {
			g := got.Modules[l][p]
			if (g == nil) != (w == nil) {
				t.Fatalf("layer %d %v: present %v, want %v", l, model.Proj(p), g != nil, w != nil)
			}
			if w == nil {
				continue
			}
			if g.Rank != w.Rank || g.Scale != w.Scale {
				t.Fatalf("layer %d %v: rank %d scale %v, want %d %v", l, model.Proj(p), g.Rank, g.Scale, w.Rank, w.Scale)
			}
			for _, x := range [][2]model.HostTensor{{g.A, w.A}, {g.B, w.B}} {
				if x[0].Name != x[1].Name || x[0].DType != x[1].DType || !slices.Equal(x[0].Shape, x[1].Shape) || !bytes.Equal(x[0].Data, x[1].Data) {
					t.Fatalf("tensor %s: %v %v differs from %s %v %v", x[0].Name, x[0].DType, x[0].Shape, x[1].Name, x[1].DType, x[1].Shape)
				}
			}
		}
	}
}

// compress -> LoadCompressed equals compress -> decompress -> LoadPEFT, for all 20 fixture
// adapters and every codec; dense decodes to the original rounded to bf16 and sparse codecs to
// sign x scale on the kept set.
func TestCompressedFixtures(t *testing.T) {
	dirs, _ := filepath.Glob("../testdata/models/*/adapters/*")
	if len(dirs) != 20 {
		t.Fatalf("%d fixture adapters, want 20", len(dirs))
	}
	for _, dir := range dirs {
		modelDir := filepath.Dir(filepath.Dir(dir))
		base, err := model.LoadConfig(modelDir)
		if err != nil {
			t.Fatal(err)
		}
		orig, closer, err := LoadPEFT(dir, "x", base)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closer.Close() })
		for mode, opt := range compressModes {
			t.Run(filepath.Base(modelDir)+"/"+filepath.Base(dir)+"/"+mode, func(t *testing.T) {
				path := compressTo(t, dir, opt)
				if !IsCompressed(path) {
					t.Fatal("IsCompressed is false for a lorapack file")
				}
				got, _, err := LoadCompressed(path, "x", base)
				if err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(t.TempDir(), "peft")
				if err := DecompressFile(path, out); err != nil {
					t.Fatal(err)
				}
				want, c2, err := LoadPEFT(out, "x", base)
				if err != nil {
					t.Fatal(err)
				}
				defer c2.Close()
				want.Path = path
				sameHostAdapter(t, got, want)
				checkDecodedValues(t, got, orig, opt)
			})
		}
	}
}

// checkDecodedValues compares decoded factors with the originals: bf16 rounding for dense; for
// q8 / q4, every value within half a quantization step of its group's (bf16-rounded-up)
// maximum, plus the rounding of the decoded value to its dtype, and the group maximum exact; for
// rice-q8, the per-tensor kept set with each magnitude within Scale/510 (Scale the largest
// |value|, exact); and for the other per-tensor sparse codecs, every non-zero is +-scale with the
// original's sign, at least KeepCount of them minus the original's zeros.
func checkDecodedValues(t *testing.T, got, orig *model.HostAdapter, opt CompressOptions) {
	t.Helper()
	for l := range orig.Modules {
		for p, o := range orig.Modules[l] {
			if o == nil {
				continue
			}
			g := got.Modules[l][p]
			for xi, x := range [][2]model.HostTensor{{g.A, o.A}, {g.B, o.B}} {
				n := x[1].Shape[0] * x[1].Shape[1]
				var scale float32
				kept := 0
				dense := opt.Codec == "dense" || (opt.DenseA && xi == 0)
				if !dense && (opt.Codec == "q8" || opt.Codec == "q4") {
					checkQuantValues(t, x[0], x[1], opt)
					continue
				}
				if !dense && opt.Codec == "rice-q8" {
					checkRiceQ8Values(t, x[0], x[1], opt.Density)
					continue
				}
				for i := range n {
					gv, ov := x[0].At(i), x[1].At(i)
					if dense {
						if gv != model.BF16ToF32(model.F32ToBF16(ov)) {
							t.Fatalf("%s[%d] = %v, want bf16(%v)", x[0].Name, i, gv, ov)
						}
						continue
					}
					if gv == 0 {
						continue
					}
					kept++
					if scale == 0 {
						scale = max(gv, -gv)
					}
					if (gv < 0) != (ov < 0) || ov == 0 || max(gv, -gv) != scale {
						t.Fatalf("%s[%d] = %v from %v (scale %v)", x[0].Name, i, gv, ov, scale)
					}
				}
				if !dense && !opt.Global && kept != min(lorapack.KeepCount(n, opt.Density), nonZeros(x[1])) {
					t.Fatalf("%s: %d kept, want %d", x[0].Name, kept, lorapack.KeepCount(n, opt.Density))
				}
			}
		}
	}
}

// roundTol is the error the decoded value's own rounding to its dtype may add.
func roundTol(h model.HostTensor, v float32) float64 {
	if h.DType == model.F32 {
		return math.Abs(float64(v)) * 0x1p-23
	}
	return math.Abs(float64(v)) * 0x1p-8
}

func checkQuantValues(t *testing.T, got, orig model.HostTensor, opt CompressOptions) {
	t.Helper()
	n := orig.Shape[0] * orig.Shape[1]
	group := cmp.Or(opt.Group, lorapack.DefaultGroup)
	q := 127.0
	if opt.Codec == "q4" {
		q = 7
	}
	for lo := 0; lo < n; lo += group {
		hi := min(n, lo+group)
		var m float32
		for i := lo; i < hi; i++ {
			m = max(m, float32(math.Abs(float64(orig.At(i)))))
		}
		mb := model.F32ToBF16(m)
		if model.BF16ToF32(mb) < m {
			mb++
		}
		M := float64(model.BF16ToF32(mb))
		for i := lo; i < hi; i++ {
			gv, ov := got.At(i), orig.At(i)
			if e := math.Abs(float64(gv) - float64(ov)); e > M/(2*q)*(1+1e-6)+roundTol(got, gv) {
				t.Fatalf("%s[%d] = %v from %v: error %g > half step %g", got.Name, i, gv, ov, e, M/(2*q))
			}
			if math.Abs(float64(ov)) == M && gv != ov {
				t.Fatalf("%s[%d]: group maximum %v decodes to %v", got.Name, i, ov, gv)
			}
		}
	}
}

func checkRiceQ8Values(t *testing.T, got, orig model.HostTensor, density float64) {
	t.Helper()
	n := orig.Shape[0] * orig.Shape[1]
	var scale float64
	for i := range n {
		scale = max(scale, math.Abs(float64(orig.At(i))))
	}
	kept := 0
	for i := range n {
		gv, ov := got.At(i), orig.At(i)
		if gv == 0 {
			continue
		}
		kept++
		tol := scale / 510 * (1 + 1e-6)
		if math.Abs(float64(ov)) < scale/510 {
			tol = scale / 255
		}
		if (gv < 0) != (ov < 0) || ov == 0 || math.Abs(float64(gv)-float64(ov)) > tol+roundTol(got, gv) {
			t.Fatalf("%s[%d] = %v from %v (scale %v)", got.Name, i, gv, ov, scale)
		}
		if math.Abs(float64(ov)) == scale && float64(gv) != float64(ov) {
			t.Fatalf("%s[%d]: largest %v decodes to %v", got.Name, i, ov, gv)
		}
	}
	if want := min(lorapack.KeepCount(n, density), nonZeros(orig)); kept != want {
		t.Fatalf("%s: %d kept, want %d", got.Name, kept, want)
	}
}

func nonZeros(h model.HostTensor) int {
	n := 0
	for i := range h.Shape[0] * h.Shape[1] {
		if h.At(i) != 0 {
			n++
		}
	}
	return n
}

// The fixture model gives the reference's logits with dense-compressed adapters (to the bf16
// rounding of the factors: within 2.5% of each row's largest logit; the fixture adapters are
// random and strongly scaled, so even rounding moves logits by up to 0.07), and with sparse
// ones a finite change. The sparse change is large here (about 1.6x the row's largest logit at
// every density from 10% to 50%): these random adapters dominate the tiny model's logits, and
// random factors are the worst case for top-K sparsification. Whether a trained adapter keeps
// its quality must be measured on trained adapters, which the fixtures are not.
func TestCompressedFixtureLogits(t *testing.T) {
	const name = "llama"
	cfg, err := model.LoadConfig(fixture.Dir(name))
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New(0)
	t.Cleanup(b.Close)
	w, err := model.LoadWeights(fixture.Dir(name), cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	cases := fixture.Cases(t, name)
	run := func(t *testing.T, opt CompressOptions, tol fixture.Tolerance) fixture.Result {
		h, err := fixture.NewHarness(cfg, b, w, 4, 256)
		if err != nil {
			t.Fatal(err)
		}
		adapters := map[string]*model.Adapter{}
		for _, a := range fixture.Adapters {
			host, _, err := LoadCompressed(compressTo(t, fixture.AdapterDir(name, a), opt), a, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if adapters[a], err = model.UploadAdapter(b, cfg, host); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { adapters[a].Free(b) })
		}
		res, err := h.Run(cases, adapters, 1<<20, tol)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	dense := run(t, CompressOptions{Codec: "dense"}, fixture.Tolerance{RowRel: 2.5e-2})
	t.Logf("dense-bf16: %d steps, worst logit diff %.3g (%.3g of the row's max)", dense.Steps, dense.WorstDiff, dense.WorstRowRel)
	for _, d := range []float64{0.5, 0.25, 0.1} {
		for _, global := range []bool{false, true} {
			res := run(t, CompressOptions{Codec: "auto", Density: d, Global: global, AlphaC: 1}, fixture.Tolerance{Abs: 1e9})
			t.Logf("density %v global %v: worst logit diff %.3g (%.3g of the row's max)", d, global, res.WorstDiff, res.WorstRowRel)
			if !(res.WorstRowRel < 10) {
				t.Errorf("density %v: worst logit change %v of the row's max", d, res.WorstRowRel)
			}
		}
	}
}

func TestCompressedErrors(t *testing.T) {
	dir := fixture.AdapterDir("llama", "b_all_rslora")
	base, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	// Rice streams carry the checks (trailing bits, lengths) that the last-byte flip below hits;
	// a q4 stream (the default) has no redundancy: any code is a valid value.
	path := compressTo(t, dir, CompressOptions{Codec: "auto", Density: 0.1, AlphaC: 1})
	good, _ := os.ReadFile(path)
	write := func(b []byte) string {
		p := filepath.Join(t.TempDir(), "bad.lorapack")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	isAdapterErr := func(err error) bool {
		var ae *AdapterError
		return errors.As(err, &ae)
	}
	// Truncated: the safetensors layer notices.
	for _, n := range []int{0, 5, 100, len(good) / 2, len(good) - 1} {
		_, _, err := LoadCompressed(write(good[:n]), "x", base)
		var fe *safetensors.FormatError
		if !isAdapterErr(err) || !errors.As(err, &fe) {
			t.Errorf("truncated to %d bytes: %v", n, err)
		}
	}
	// A flipped byte in the last stream's payload: the codec notices (a trailing-bits or length
	// check), never a panic, and reports it as a corrupt stream.
	bad := slices.Clone(good)
	bad[len(bad)-1] ^= 0xff
	if _, _, err := LoadCompressed(write(bad), "x", base); !isAdapterErr(err) || !errors.Is(err, lorapack.ErrCorrupt) {
		t.Errorf("corrupt stream: %v", err)
	}
	// Every single-byte corruption of the data section errors or loads; none panics.
	hdrLen := 8 + int(uint64(good[0])|uint64(good[1])<<8|uint64(good[2])<<16)
	for i := hdrLen; i < len(good); i += 7 {
		b := slices.Clone(good)
		b[i] ^= 0x5a
		if a, _, err := LoadCompressed(write(b), "x", base); err == nil && a == nil {
			t.Fatal("nil adapter without error")
		}
	}
	// The same for the codecs that keep magnitudes, and whatever fails is a corrupt stream.
	for _, opt := range []CompressOptions{{Codec: "q8"}, {Codec: "q4", Group: 64}, {Codec: "rice-q8", Density: 0.3}} {
		good, _ := os.ReadFile(compressTo(t, dir, opt))
		hdrLen := 8 + int(uint64(good[0])|uint64(good[1])<<8|uint64(good[2])<<16)
		for i := hdrLen; i < len(good); i += 5 {
			b := slices.Clone(good)
			b[i] ^= 0xa5
			a, _, err := LoadCompressed(write(b), "x", base)
			if err == nil && a == nil {
				t.Fatal("nil adapter without error")
			}
			if err != nil && !errors.Is(err, lorapack.ErrCorrupt) {
				t.Fatalf("%s: byte %d: %v", opt.Codec, i, err)
			}
		}
	}
	// A PEFT weights file is a safetensors file but not a lorapack one.
	if _, _, err := LoadCompressed(filepath.Join(dir, PEFTWeightsFile), "x", base); !isAdapterErr(err) || !errors.Is(err, lorapack.ErrCorrupt) {
		t.Errorf("PEFT file: %v", err)
	}
	if _, _, err := LoadCompressed(filepath.Join(t.TempDir(), "missing"), "x", base); !errors.Is(err, fs.ErrNotExist) || isAdapterErr(err) {
		t.Errorf("missing file: %v", err)
	}
	for _, p := range []string{dir, filepath.Join(dir, PEFTWeightsFile), filepath.Join(dir, "nope"), write(good[:50])} {
		if IsCompressed(p) {
			t.Errorf("IsCompressed(%s) = true", p)
		}
	}
}

// A lorapack file that does not fit the base model fails exactly as its PEFT folder does.
func TestCompressedSameValidationAsPEFT(t *testing.T) {
	other, err := model.LoadConfig(fixture.Dir("qwen3"))
	if err != nil {
		t.Fatal(err)
	}
	small := testBase(t)
	for _, a := range fixture.Adapters {
		path := compressTo(t, fixture.AdapterDir("llama", a), CompressOptions{Codec: "dense"})
		out := filepath.Join(t.TempDir(), "peft")
		if err := DecompressFile(path, out); err != nil {
			t.Fatal(err)
		}
		for _, base := range []*model.Config{other, small} {
			_, _, errC := LoadCompressed(path, a, base)
			_, _, errP := LoadPEFT(out, a, base)
			var ec, ep *AdapterError
			if (errP == nil) != (errC == nil) {
				t.Fatalf("%s: compressed %v, PEFT %v", a, errC, errP)
			}
			if errP == nil {
				continue
			}
			if !errors.As(errC, &ec) || !errors.As(errP, &ep) || ec.Tensor != ep.Tensor || ec.Err.Error() != ep.Err.Error() {
				t.Errorf("%s: compressed %v, PEFT %v", a, errC, errP)
			}
		}
	}
}

func TestCompressOptionErrors(t *testing.T) {
	dir := fixture.AdapterDir("llama", "a_qv")
	for _, opt := range []CompressOptions{
		{Codec: "zip", Density: 0.1},
		{Codec: "rice", Density: 0},
		{Codec: "rice", Density: 1.5},
		{Codec: "dense", Global: true},
		{Codec: "q4", Global: true},
		{Codec: "rice-q8", Density: 0.1, Global: true, AlphaC: 1},
		{Codec: "rice-q8", Density: 0},
		{Codec: "q8", Group: 24},
		{Codec: "q4", Group: 256},
		{Codec: "auto", Density: 0.1, Global: true, AlphaC: 0},
	} {
		if _, err := CompressPEFT(dir, &bytes.Buffer{}, opt); err == nil {
			t.Errorf("%+v: no error", opt)
		}
	}
	if _, err := CompressPEFT(t.TempDir(), &bytes.Buffer{}, DefaultCompressOptions()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("empty folder: %v", err)
	}
}

// BenchmarkLoadCompressed loads a random rank-16 Llama-3-8B-shaped adapter (bf16, all seven
// projections, 32 layers: 41,943,040 values) compressed with the defaults, against LoadPEFT of
// the same folder (which copies the file into private memory and checks its values). Each load allocates its 84 MB output afresh, so
// page faults and zeroing are part of the cost, as on the real load path.
func BenchmarkLoadCompressed(b *testing.B) {
	base, dir, path := writeLlama8BLorapack(b)
	b.Run("LoadCompressed", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := LoadCompressed(path, "x", base); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The host stage of a backend that decodes q4/q8 on the device (CUDA): the streams are
	// read, checked and left encoded; the decoded tensors are untouched zero pages.
	b.Run("LoadCompressedEncoded", func(b *testing.B) {
		for b.Loop() {
			_, c, err := LoadCompressedEncoded(path, "x", base, func(string) bool { return true })
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("LoadPEFT", func(b *testing.B) {
		for b.Loop() {
			_, c, err := LoadPEFT(dir, "x", base)
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
}

// A manifest that claims huge tensors is refused before anything that size is allocated.
func TestCompressedHugeClaim(t *testing.T) {
	base, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	// A 20-byte rice stream with nothing kept can claim any shape; 65535 x 65535 is 4G values.
	st := make([]byte, lorapack.HeaderSize)
	copy(st, "LX\x04\x00\xff\xff\x00\x00\xff\xff\x00\x00")
	name := "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
	m := &lorapack.Manifest{Format: lorapack.Format, PEFTConfig: []byte(`{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj"]}`),
		Tensors: map[string]lorapack.TensorInfo{name: {Codec: "rice", Shape: [2]int{65535, 65535}, DType: "BF16", Bytes: len(st)}}}
	var buf bytes.Buffer
	if err := lorapack.WriteContainer(&buf, m, []lorapack.Stream{{Name: name, Data: st}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "huge.lorapack")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadCompressed(path, "x", base); !errors.Is(err, lorapack.ErrCorrupt) {
		t.Errorf("LoadCompressed: %v", err)
	}
	if err := DecompressFile(path, t.TempDir()); !errors.Is(err, lorapack.ErrCorrupt) {
		t.Errorf("DecompressFile: %v", err)
	}
}
