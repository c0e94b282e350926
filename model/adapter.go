package model

import "fmt"

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
}

// UploadAdapter moves a validated host adapter onto the backend.
func UploadAdapter(b Backend, cfg *Config, h *HostAdapter) (*Adapter, error) {
	if len(h.Modules) != cfg.NumLayers {
		return nil, fmt.Errorf("adapter %q: has %d layers, the model %d", h.Name, len(h.Modules), cfg.NumLayers)
	}
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

// Free releases the adapter's backend tensors.
func (a *Adapter) Free(b Backend) {
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
