package model

import (
	"errors"
	"fmt"
)

// LoRAWeights is one adapted projection resident on a backend.
type LoRAWeights struct {
	A, B  Tensor // [rank, in], [out, rank]
	Rank  int
	Scale float32
}

// Adapter is a LoRA adapter resident on a backend, ready for the forward pass.
// Modules[layer][proj] is nil where the adapter leaves that projection alone.
//
// A sequence that runs through a router passes an Adapter with Routing set (and no Modules):
// its rows get the router's per-token mixture of expert adapters instead (see Routing).
type Adapter struct {
	Name    string
	Routing *Routing
	Modules [][NumProj]*LoRAWeights
	MaxRank int
	Bytes   int64
	// Digest is HostAdapter.Digest (for a router's view, the bundle's and its experts' digests
	// combined): what computed a KV page, for the engine's prefix cache. Zero: unknown.
	Digest [32]byte

	// Mem and Owner are set by an AdapterUploader: Mem is its one allocation holding all of the
	// adapter's tensors (each Modules tensor a view into it), and Free hands the adapter back to
	// Owner instead of freeing tensors one by one. Both are nil for per-tensor uploads.
	Mem   any
	Owner AdapterUploader
}

// AdapterUploader is implemented by backends that upload a whole adapter at once (the CUDA
// backend: one pooled device allocation, one staged copy on an upload stream of its own) rather
// than one Backend.Upload per tensor. UploadAdapter and Adapter.Free use it when present.
//
// UploadAdapter may be called from several goroutines, concurrently with the steps the engine
// runs; the adapter it returns must be readable by the next step. It returns an error wrapping
// ErrUnsupported for an adapter it cannot take, and the per-tensor path is used instead.
// FreeAdapter releases what UploadAdapter made; it is only called once no step that is still
// running can read the adapter.
type AdapterUploader interface {
	UploadAdapter(cfg *Config, h *HostAdapter) (*Adapter, error)
	FreeAdapter(a *Adapter)
}

// UploadAdapter moves a validated host adapter onto the backend: through the backend's
// AdapterUploader when it has one, else tensor by tensor.
func UploadAdapter(b Backend, cfg *Config, h *HostAdapter) (*Adapter, error) {
	if len(h.Modules) != cfg.NumLayers {
		return nil, fmt.Errorf("adapter %q: has %d layers, the model %d", h.Name, len(h.Modules), cfg.NumLayers)
	}
	if u, ok := b.(AdapterUploader); ok {
		a, err := u.UploadAdapter(cfg, h)
		if err == nil {
			a.Digest = h.Digest
		}
		if err == nil || !errors.Is(err, ErrUnsupported) {
			return a, err
		}
	}
	a, err := uploadTensors(b, cfg, h)
	if err == nil {
		a.Digest = h.Digest
	}
	return a, err
}

// uploadTensors uploads the adapter with one Backend.Upload per A and B tensor.
func uploadTensors(b Backend, cfg *Config, h *HostAdapter) (*Adapter, error) {
	a := &Adapter{Name: h.Name, Modules: make([][NumProj]*LoRAWeights, cfg.NumLayers), Bytes: h.Bytes}
	for l := range h.Modules {
		for p := Proj(0); p < NumProj; p++ {
			m := h.Modules[l][p]
			if m == nil {
				continue
			}
			out, in := cfg.ProjShape(p)
			ta, err := b.Upload(m.A, m.Rank, in)
			if err != nil {
				a.Free(b)
				return nil, fmt.Errorf("adapter %q: %s: %w", h.Name, m.A.Name, err)
			}
			tb, err := b.Upload(m.B, out, m.Rank)
			if err != nil {
				b.Free(ta)
				a.Free(b)
				return nil, fmt.Errorf("adapter %q: %s: %w", h.Name, m.B.Name, err)
			}
			a.Modules[l][p] = &LoRAWeights{A: ta, B: tb, Rank: m.Rank, Scale: m.Scale}
			a.MaxRank = max(a.MaxRank, m.Rank)
		}
	}
	return a, nil
}

// Free releases the adapter's backend tensors (through its Owner when an AdapterUploader made
// it, whatever b is). Freeing twice is harmless.
func (a *Adapter) Free(b Backend) {
	if o := a.Owner; o != nil {
		o.FreeAdapter(a)
		a.Owner, a.Mem = nil, nil
		clear(a.Modules)
		return
	}
	for l := range a.Modules {
		for p := range a.Modules[l] {
			if m := a.Modules[l][p]; m != nil {
				b.Free(m.A)
				b.Free(m.B)
				a.Modules[l][p] = nil
			}
		}
	}
}
