//go:build cuda

package cuda_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/cuda"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// perTensor hides the backend's AdapterUploader: model.UploadAdapter and Adapter.Free then take
// the old path, one Backend.Upload / Backend.Free per tensor.
type perTensor struct{ model.Backend }

// oddConfig has dimensions that are neither powers of two nor multiples of the slab alignment.
var oddConfig = &model.Config{HiddenSize: 67, IntermediateSize: 131, NumLayers: 3, NumHeads: 3, NumKVHeads: 1, HeadDim: 10}

// hostTensor makes a rows x cols host tensor of dtype dt with random values, and some special
// ones (zeros, infinities, NaN, subnormals, values that round to even) in the first elements.
func hostTensor(r *rand.Rand, name string, dt model.DType, rows, cols int) model.HostTensor {
	n := rows * cols
	data := make([]byte, n*dt.Size())
	special := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		1e-40, -3e-39, 1.00390625, 1.01171875, 65504, 6e-8, 3.4e38}
	for i := 0; i < n; i++ {
		f := float32(r.NormFloat64() * 0.05)
		if i < len(special) {
			f = special[i]
		}
		switch dt {
		case model.F32:
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(f))
		case model.BF16:
			binary.LittleEndian.PutUint16(data[2*i:], uint16(math.Float32bits(f)>>16))
		case model.F16:
			binary.LittleEndian.PutUint16(data[2*i:], f32ToF16(f))
		}
	}
	return model.HostTensor{Name: name, DType: dt, Shape: []int{rows, cols}, Data: data}
}

// f32ToF16 truncates to IEEE half (good enough to make test data: any bit pattern is valid input).
func f32ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	exp := int(u>>23&0xff) - 127 + 15
	mant := u & 0x7fffff
	switch {
	case u&0x7fffffff > 0x7f800000:
		return sign | 0x7e00
	case exp >= 0x1f:
		return sign | 0x7c00
	case exp <= 0:
		if exp < -10 {
			return sign
		}
		return sign | uint16((mant|0x800000)>>uint(14-exp))
	}
	return sign | uint16(exp)<<10 | uint16(mant>>13)
}

// randomAdapter makes a host adapter for cfg touching a random subset of projections, with the
// given ranks (cycled) and dtypes (cycled over tensors).
func randomAdapter(r *rand.Rand, name string, cfg *model.Config, ranks []int, dtypes []model.DType) *model.HostAdapter {
	h := &model.HostAdapter{Name: name, Modules: make([][model.NumProj]*model.HostLoRA, cfg.NumLayers)}
	k := 0
	for l := 0; l < cfg.NumLayers; l++ {
		for p := model.Proj(0); p < model.NumProj; p++ {
			if r.IntN(3) == 0 {
				continue
			}
			out, in := cfg.ProjShape(p)
			rank := ranks[k%len(ranks)]
			a := hostTensor(r, fmt.Sprintf("l%d.p%d.A", l, p), dtypes[k%len(dtypes)], rank, in)
			b := hostTensor(r, fmt.Sprintf("l%d.p%d.B", l, p), dtypes[(k+1)%len(dtypes)], out, rank)
			k++
			h.Modules[l][p] = &model.HostLoRA{A: a, B: b, Rank: rank, Scale: 0.5}
			h.Bytes += int64(len(a.Data) + len(b.Data))
		}
	}
	return h
}

// wantBF16 is what the device must hold for t: Backend.Upload's conversion, done on the host.
func wantBF16(t model.HostTensor) []byte {
	n := t.Shape[0] * t.Shape[1]
	out := make([]byte, 2*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint16(out[2*i:], model.F32ToBF16(t.At(i)))
	}
	if t.DType == model.BF16 {
		copy(out, t.Data)
	}
	return out
}

// checkAdapter fails t unless compareAdapter finds a right.
func checkAdapter(t testing.TB, b *cuda.Backend, h *model.HostAdapter, a, old *model.Adapter) {
	t.Helper()
	if err := compareAdapter(b, h, a, old); err != nil {
		t.Fatal(err)
	}
}

// compareAdapter compares every tensor of a against host's expected bf16 bytes and, when old is
// given, against old's (uploaded per tensor) as read back from the device. Safe from any goroutine.
func compareAdapter(b *cuda.Backend, h *model.HostAdapter, a, old *model.Adapter) error {
	for l := range h.Modules {
		for p, m := range h.Modules[l] {
			got := a.Modules[l][p]
			if (m == nil) != (got == nil) {
				return fmt.Errorf("%s layer %d proj %d: host module %v, device %v", h.Name, l, p, m != nil, got != nil)
			}
			if m == nil {
				continue
			}
			if got.Rank != m.Rank || got.Scale != m.Scale || got.A.DType != model.BF16 || got.B.DType != model.BF16 {
				return fmt.Errorf("%s layer %d proj %d: rank %d scale %g dtypes %s/%s", h.Name, l, p, got.Rank, got.Scale, got.A.DType, got.B.DType)
			}
			for i, pair := range [][2]any{{got.A, m.A}, {got.B, m.B}} {
				dt, ht := pair[0].(model.Tensor), pair[1].(model.HostTensor)
				if dt.Rows != ht.Shape[0] || dt.Cols != ht.Shape[1] {
					return fmt.Errorf("%s: shape %s, host %v", ht.Name, dt.Shape(), ht.Shape)
				}
				raw, err := b.ReadBytes(dt)
				if err != nil {
					return err
				}
				if want := wantBF16(ht); !bytes.Equal(raw, want) {
					return fmt.Errorf("%s %s (%s): device bytes differ from the host conversion", h.Name, ht.Name, ht.DType)
				}
				if old != nil {
					ot := old.Modules[l][p].A
					if i == 1 {
						ot = old.Modules[l][p].B
					}
					oraw, err := b.ReadBytes(ot)
					if err != nil {
						return err
					}
					if !bytes.Equal(raw, oraw) {
						return fmt.Errorf("%s %s (%s): new path differs from the per-tensor upload", h.Name, ht.Name, ht.DType)
					}
				}
			}
		}
	}
	return nil
}

// TestUploadAdapterMatchesPerTensor: the pooled, staged upload gives bit-identical tensors to
// one Backend.Upload per tensor, for F32, BF16 and F16 host data, odd shapes and ranks.
func TestUploadAdapterMatchesPerTensor(t *testing.T) {
	b := newGPU(t)
	r := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		ranks  []int
		dtypes []model.DType
	}{
		{[]int{1}, []model.DType{model.F32}},
		{[]int{3, 16}, []model.DType{model.BF16}},
		{[]int{7, 5}, []model.DType{model.F16}},
		{[]int{17, 2, 64}, []model.DType{model.F32, model.BF16, model.F16}},
	}
	for i, c := range cases {
		h := randomAdapter(r, fmt.Sprintf("odd%d", i), oddConfig, c.ranks, c.dtypes)
		a, err := model.UploadAdapter(b, oddConfig, h)
		if err != nil {
			t.Fatal(err)
		}
		if a.Owner == nil || a.Mem == nil {
			t.Fatalf("%s: not uploaded through the AdapterUploader", h.Name)
		}
		old, err := model.UploadAdapter(perTensor{b}, oddConfig, h)
		if err != nil {
			t.Fatal(err)
		}
		if old.Owner != nil {
			t.Fatal("perTensor took the AdapterUploader path")
		}
		if a.MaxRank != old.MaxRank || a.Bytes != old.Bytes {
			t.Fatalf("%s: MaxRank %d/%d Bytes %d/%d", h.Name, a.MaxRank, old.MaxRank, a.Bytes, old.Bytes)
		}
		checkAdapter(t, b, h, a, old)
		a.Free(b)
		a.Free(b) // twice is harmless
		old.Free(perTensor{b})
	}
	// A large adapter: several copy batches, parts converted in parallel, and tensors of more
	// than 2^18 elements (B of gate/up/down at rank 96) split over the CPUs.
	big := &model.Config{HiddenSize: 1000, IntermediateSize: 5000, NumLayers: 3, NumHeads: 10, NumKVHeads: 2, HeadDim: 100}
	h := randomAdapter(r, "big", big, []int{96, 33}, []model.DType{model.F32, model.F16, model.BF16})
	a, err := model.UploadAdapter(b, big, h)
	if err != nil {
		t.Fatal(err)
	}
	old, err := model.UploadAdapter(perTensor{b}, big, h)
	if err != nil {
		t.Fatal(err)
	}
	checkAdapter(t, b, h, a, old)
	a.Free(b)
	old.Free(perTensor{b})
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestUploadAdapterErrors: bad shapes fail for that adapter only (no sticky error, no panic);
// vectors fall back to the per-tensor path.
func TestUploadAdapterErrors(t *testing.T) {
	b := newGPU(t)
	r := rand.New(rand.NewPCG(3, 4))
	h := randomAdapter(r, "short", oddConfig, []int{4}, []model.DType{model.F32})
	for l := range h.Modules {
		for _, m := range h.Modules[l] {
			if m != nil {
				m.B.Data = m.B.Data[:len(m.B.Data)-1]
				goto cut
			}
		}
	}
cut:
	if _, err := b.UploadAdapter(oddConfig, h); err == nil {
		t.Fatal("a truncated tensor was accepted")
	} else {
		t.Log(err)
	}
	if _, err := b.UploadAdapter(&model.Config{NumLayers: 1}, h); err == nil {
		t.Fatal("a layer count mismatch was accepted")
	}
	if err := b.Err(); err != nil {
		t.Fatalf("a refused adapter made the backend fail: %v", err)
	}
	st := b.AdapterPoolStats()
	if st.Live != 0 {
		t.Fatalf("refused uploads hold %d slabs", st.Live)
	}
	// A 1-D tensor: Backend.Upload would keep it in F32, so the whole adapter takes that path.
	v := randomAdapter(r, "vector", oddConfig, []int{1}, []model.DType{model.BF16})
	for l := range v.Modules {
		for _, m := range v.Modules[l] {
			if m != nil {
				m.A.Shape = []int{m.A.Shape[1]}
				goto vec
			}
		}
	}
vec:
	a, err := model.UploadAdapter(b, oddConfig, v)
	if err != nil {
		t.Fatal(err)
	}
	if a.Owner != nil {
		t.Fatal("an adapter with a vector went through the AdapterUploader")
	}
	a.Free(b)
}

// TestAdapterPoolReuse: freeing and uploading an adapter of the same size reuses the slab; the
// cap and TrimAdapterPool give idle slabs back.
func TestAdapterPoolReuse(t *testing.T) {
	b := newGPU(t)
	r := rand.New(rand.NewPCG(5, 6))
	h1 := randomAdapter(r, "one", oddConfig, []int{8}, []model.DType{model.BF16})
	a, err := model.UploadAdapter(b, oddConfig, h1)
	if err != nil {
		t.Fatal(err)
	}
	s0 := b.AdapterPoolStats()
	if s0.Allocs != 1 || s0.Reuses != 0 || s0.Live != 1 {
		t.Fatalf("after one upload: %+v", s0)
	}
	a.Free(b)
	if s := b.AdapterPoolStats(); s.Live != 0 || s.Idle != 1 {
		t.Fatalf("after free: %+v", s)
	}
	// The same adapter again, three times: each takes the idle slab.
	for i := 0; i < 3; i++ {
		a, err = model.UploadAdapter(b, oddConfig, h1)
		if err != nil {
			t.Fatal(err)
		}
		checkAdapter(t, b, h1, a, nil)
		a.Free(b)
	}
	if s := b.AdapterPoolStats(); s.Allocs != 1 || s.Reuses != 3 {
		t.Fatalf("free then upload of the same size did not reuse the slab: %+v", s)
	}
	// Two live at once need two slabs; both go back to the pool.
	a1, err := model.UploadAdapter(b, oddConfig, h1)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := model.UploadAdapter(b, oddConfig, h1)
	if err != nil {
		t.Fatal(err)
	}
	if s := b.AdapterPoolStats(); s.Allocs != 2 || s.Live != 2 || s.Idle != 0 {
		t.Fatalf("two live adapters: %+v", s)
	}
	a1.Free(b)
	a2.Free(b)
	s := b.AdapterPoolStats()
	if s.Idle != 2 || s.IdleBytes == 0 {
		t.Fatalf("after two frees: %+v", s)
	}
	t.Logf("pool: %+v", s)
	if s.StreamOrdered {
		// Over the cap, freed slabs are released (stream-ordered) instead of kept.
		b.SetAdapterPoolCap(s.IdleBytes / 2)
		if s2 := b.AdapterPoolStats(); s2.Idle != 1 || s2.Releases != 1 {
			t.Fatalf("cap of half the idle bytes: %+v", s2)
		}
		b.SetAdapterPoolCap(cuda.DefaultAdapterPoolCap)
	}
	b.TrimAdapterPool()
	if s := b.AdapterPoolStats(); s.Idle != 0 || s.IdleBytes != 0 {
		t.Fatalf("after TrimAdapterPool: %+v", s)
	}
	a, err = model.UploadAdapter(b, oddConfig, h1)
	if err != nil {
		t.Fatal(err)
	}
	checkAdapter(t, b, h1, a, nil)
	a.Free(b)
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestUploadAdapterFixtureLogits: fixture adapters uploaded through the new path give the same
// logits as uploaded tensor by tensor (the same worst differences from the reference, to the bit),
// on the plain and on the wide LoRA kernels.
func TestUploadAdapterFixtureLogits(t *testing.T) {
	b := newGPU(t)
	for _, wide := range []bool{false, true} {
		b.SetLoRAWide(wide)
		uploadAdapterFixtureLogits(t, b)
	}
}

// uploadAdapterFixtureLogits checks the rule on b with its LoRA kernels as they are switched.
func uploadAdapterFixtureLogits(t *testing.T, b *cuda.Backend) {
	for _, name := range []string{"llama", "mistral_f16", "qwen2"} {
		fx, cfg, h := fixture.Open(t, name, b)
		var results [2]fixture.Result
		for i, up := range []model.Backend{perTensor{b}, b} {
			adapters := map[string]*model.Adapter{}
			for _, a := range fixture.Adapters {
				host, closer, err := adaptercache.LoadPEFT(fixture.AdapterDir(name, a), a, cfg)
				if err != nil {
					t.Fatal(err)
				}
				if adapters[a], err = model.UploadAdapter(up, cfg, host); err != nil {
					t.Fatal(err)
				}
				closer.Close()
				if (adapters[a].Owner != nil) != (i == 1) {
					t.Fatalf("%s/%s: wrong upload path", name, a)
				}
			}
			res, err := h.Run(fx.Cases, adapters, 3, bf16Tolerance)
			if err != nil {
				t.Fatalf("%s (path %d): %v", name, i, err)
			}
			results[i] = res
			for _, a := range adapters {
				a.Free(up)
			}
		}
		if results[0] != results[1] {
			t.Fatalf("%s: per-tensor upload %+v, pooled upload %+v", name, results[0], results[1])
		}
		t.Logf("%s: %+v", name, results[1])
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestUploadAdapterConcurrent: several goroutines upload, check and free adapters while a decode
// loop runs fixture cases (with adapters uploaded the same way) on the runner. Run with -race.
func TestUploadAdapterConcurrent(t *testing.T) {
	b := newGPU(t)
	name := "qwen2"
	fx, cfg, h := fixture.Open(t, name, b)
	adapters := fixtureadapters.Upload(t, name, cfg, b)
	want, err := h.Run(fx.Cases, adapters, 1<<20, bf16Tolerance)
	if err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	const workers = 4
	uploads := make([]int, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			dts := []model.DType{model.F32, model.BF16, model.F16}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				hc := cfg
				if i%2 == 1 {
					hc = oddConfig
				}
				ha := randomAdapter(r, fmt.Sprintf("w%d.%d", w, i), hc, []int{1 + i%3*8, 4}, dts[i%3:])
				a, err := b.UploadAdapter(hc, ha)
				if err != nil {
					errs <- err
					return
				}
				err = compareAdapter(b, ha, a, nil)
				b.FreeAdapter(a)
				if err != nil {
					errs <- err
					return
				}
				uploads[w]++
			}
		}(w)
	}
	for round := 0; round < 3; round++ {
		got, err := h.Run(fx.Cases, adapters, 1<<20, bf16Tolerance)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("round %d with concurrent uploads: %+v, alone %+v", round, got, want)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, a := range adapters {
		a.Free(b)
	}
	s := b.AdapterPoolStats()
	t.Logf("uploads per worker %v; pool %+v", uploads, s)
	if s.Live != 0 {
		t.Fatalf("%d slabs still live", s.Live)
	}
	if s.Reuses == 0 {
		t.Fatal("no slab was reused")
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}
