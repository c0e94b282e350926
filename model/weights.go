package model

import (
	"fmt"
	"sort"
	"strings"

	"github.com/loraplex/loraplex/model/safetensors"
)

// Layer holds one decoder layer's weights on the backend. Bias and norm tensors the
// architecture lacks are zero-valued (Rows == 0).
type Layer struct {
	AttnNorm, MLPNorm Tensor
	W                 [NumProj]Tensor
	Bias              [NumProj]Tensor
	QNorm, KNorm      Tensor
}

// Weights is a base model resident on a backend.
type Weights struct {
	Embed   Tensor
	Layers  []Layer
	Norm    Tensor
	LMHead  Tensor // the embedding table when embeddings are tied
	closers []func() error
}

// Close releases the files the weights may still reference.
func (w *Weights) Close() error {
	var first error
	for _, c := range w.closers {
		if err := c(); err != nil && first == nil {
			first = err
		}
	}
	w.closers = nil
	return first
}

// TensorSource is where weights come from: a safetensors file set (or anything that looks up
// tensors by name).
type TensorSource interface {
	Names() []string
	Tensor(name string) (safetensors.Tensor, bool)
	Where(name string) string
}

// LoadWeights opens dir's safetensors and uploads every tensor cfg needs to b. Missing tensors,
// unexpected tensors and shape mismatches are errors naming the file and the tensor.
func LoadWeights(dir string, cfg *Config, b Backend) (*Weights, error) {
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	w, err := UploadWeights(set, cfg, b)
	if err != nil {
		set.Close()
		return nil, err
	}
	w.closers = append(w.closers, set.Close)
	return w, nil
}

// UploadWeights uploads from any TensorSource (tests build sources in memory).
func UploadWeights(src TensorSource, cfg *Config, b Backend) (*Weights, error) {
	used := map[string]bool{}
	get := func(name string, rows, cols int) (Tensor, error) {
		st, ok := src.Tensor(name)
		if !ok {
			return Tensor{}, fmt.Errorf("missing tensor %q", name)
		}
		used[name] = true
		where := src.Where(name)
		dt, err := ParseDType(st.DType)
		if err != nil {
			return Tensor{}, fmt.Errorf("%s: tensor %q: %w", where, name, err)
		}
		want := []int{rows, cols}
		if rows == 1 {
			want = []int{cols}
		}
		if !equalShape(st.Shape, want) {
			return Tensor{}, fmt.Errorf("%s: tensor %q has shape %v, want %v", where, name, st.Shape, want)
		}
		t, err := b.Upload(HostTensor{Name: name, DType: dt, Shape: st.Shape, Data: st.Data}, rows, cols)
		if err != nil {
			return Tensor{}, fmt.Errorf("%s: tensor %q: %w", where, name, err)
		}
		return t, nil
	}
	w := &Weights{Layers: make([]Layer, cfg.NumLayers)}
	var err error
	if w.Embed, err = get("model.embed_tokens.weight", cfg.VocabSize, cfg.HiddenSize); err != nil {
		return nil, err
	}
	if w.Norm, err = get("model.norm.weight", 1, cfg.HiddenSize); err != nil {
		return nil, err
	}
	if cfg.TieEmbeddings {
		w.LMHead = w.Embed
		// Some checkpoints store the tied head anyway; it is the same matrix, so accept and skip it.
		if _, ok := src.Tensor("lm_head.weight"); ok {
			used["lm_head.weight"] = true
		}
	} else if w.LMHead, err = get("lm_head.weight", cfg.VocabSize, cfg.HiddenSize); err != nil {
		return nil, err
	}
	for i := range w.Layers {
		l := &w.Layers[i]
		pre := fmt.Sprintf("model.layers.%d.", i)
		if l.AttnNorm, err = get(pre+"input_layernorm.weight", 1, cfg.HiddenSize); err != nil {
			return nil, err
		}
		if l.MLPNorm, err = get(pre+"post_attention_layernorm.weight", 1, cfg.HiddenSize); err != nil {
			return nil, err
		}
		for p := Proj(0); p < NumProj; p++ {
			out, in := cfg.ProjShape(p)
			name := pre + p.Block() + "." + p.String()
			if l.W[p], err = get(name+".weight", out, in); err != nil {
				return nil, err
			}
			if cfg.HasBias(p) {
				if l.Bias[p], err = get(name+".bias", 1, out); err != nil {
					return nil, err
				}
			}
		}
		if cfg.QKNorm {
			if l.QNorm, err = get(pre+"self_attn.q_norm.weight", 1, cfg.HeadDim); err != nil {
				return nil, err
			}
			if l.KNorm, err = get(pre+"self_attn.k_norm.weight", 1, cfg.HeadDim); err != nil {
				return nil, err
			}
		}
	}
	var extra []string
	for _, n := range src.Names() {
		if !used[n] && !strings.HasSuffix(n, ".rotary_emb.inv_freq") {
			extra = append(extra, n)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		more := ""
		if len(extra) > 5 {
			more = fmt.Sprintf(" and %d more", len(extra)-5)
			extra = extra[:5]
		}
		return nil, fmt.Errorf("%s: unexpected tensors for %s: %s%s", src.Where(extra[0]), cfg.Architecture, strings.Join(extra, ", "), more)
	}
	return w, nil
}

// HasBias says whether projection p carries a bias in this architecture.
func (c *Config) HasBias(p Proj) bool {
	switch p {
	case ProjQ, ProjK, ProjV:
		return c.QKVBias
	case ProjO:
		return c.OBias
	default:
		return c.MLPBias
	}
}

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
