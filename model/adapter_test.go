package model_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/model"
)

// fakeUploader is a backend with an AdapterUploader that records its calls; with refuse set it
// answers ErrUnsupported and UploadAdapter must fall back to one Upload per tensor.
type fakeUploader struct {
	model.Backend
	refuse         bool
	uploads, frees int
	perTensorFrees int
}

func (f *fakeUploader) UploadAdapter(cfg *model.Config, h *model.HostAdapter) (*model.Adapter, error) {
	f.uploads++
	if f.refuse {
		return nil, fmt.Errorf("fake: %w", model.ErrUnsupported)
	}
	a := &model.Adapter{Name: h.Name, Modules: make([][model.NumProj]*model.LoRAWeights, cfg.NumLayers), Mem: "slab"}
	a.Owner = f
	return a, nil
}

func (f *fakeUploader) FreeAdapter(a *model.Adapter) { f.frees++ }

func (f *fakeUploader) Free(t model.Tensor) { f.perTensorFrees++; f.Backend.Free(t) }

func smallAdapter(cfg *model.Config) *model.HostAdapter {
	h := &model.HostAdapter{Name: "small", Modules: make([][model.NumProj]*model.HostLoRA, cfg.NumLayers)}
	out, in := cfg.ProjShape(model.ProjQ)
	mk := func(rows, cols int) model.HostTensor {
		d := make([]byte, 4*rows*cols)
		for i := 0; i < rows*cols; i++ {
			binary.LittleEndian.PutUint32(d[4*i:], math.Float32bits(float32(i%7)/7))
		}
		return model.HostTensor{Name: "t", DType: model.F32, Shape: []int{rows, cols}, Data: d}
	}
	h.Modules[0][model.ProjQ] = &model.HostLoRA{A: mk(2, in), B: mk(out, 2), Rank: 2, Scale: 1}
	return h
}

func TestUploadAdapterUsesAdapterUploader(t *testing.T) {
	cfg := &model.Config{HiddenSize: 8, IntermediateSize: 16, NumLayers: 2, NumHeads: 2, NumKVHeads: 1, HeadDim: 4}
	b := cpu.New(1)
	defer b.Close()

	f := &fakeUploader{Backend: b}
	a, err := model.UploadAdapter(f, cfg, smallAdapter(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if f.uploads != 1 || a.Owner == nil {
		t.Fatalf("uploads %d owner %v", f.uploads, a.Owner)
	}
	// Free goes to the owner whatever backend it is given, once.
	a.Free(b)
	a.Free(f)
	if f.frees != 1 || f.perTensorFrees != 0 || a.Owner != nil || a.Mem != nil {
		t.Fatalf("frees %d per-tensor frees %d owner %v mem %v", f.frees, f.perTensorFrees, a.Owner, a.Mem)
	}

	// ErrUnsupported falls back to the per-tensor path.
	f = &fakeUploader{Backend: b, refuse: true}
	a, err = model.UploadAdapter(f, cfg, smallAdapter(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if f.uploads != 1 || a.Owner != nil || a.Modules[0][model.ProjQ] == nil || a.MaxRank != 2 {
		t.Fatalf("fallback: uploads %d owner %v module %v rank %d", f.uploads, a.Owner, a.Modules[0][model.ProjQ], a.MaxRank)
	}
	a.Free(f)
	if f.frees != 0 || f.perTensorFrees != 2 {
		t.Fatalf("fallback free: frees %d per-tensor %d", f.frees, f.perTensorFrees)
	}

	// Layer count mismatch is refused before the backend is asked.
	f = &fakeUploader{Backend: b}
	bad := smallAdapter(&model.Config{NumLayers: 1, HiddenSize: 8, NumHeads: 2, HeadDim: 4})
	if _, err := model.UploadAdapter(f, cfg, bad); err == nil || f.uploads != 0 {
		t.Fatalf("layer mismatch: err %v uploads %d", err, f.uploads)
	}
}
