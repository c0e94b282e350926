package router

import (
	"fmt"

	"github.com/loraplex/loraplex/model"
)

// Choice is one selected expert of one token (model.Choice): Expert indexes the layer's expert
// list (Layer.Experts; never a null expert) and Weight is its mixing weight (the gate's, without
// the adapter's own PEFT scale).
type Choice = model.Choice

// Route is the gate math for one token; it is model.Route, which the forward pass runs (see
// there for the exact rules: top-k with ties to the lower index, softmax(l[I]/T), nulls dropped
// and the rest renormalised).
func Route(logits []float32, k int, T float32, nulls int, out []Choice) []Choice {
	return model.Route(logits, k, T, nulls, out)
}

// RouteLayer routes one token through layer ly's gate logits with the layer's k, T and nulls.
func (ly *Layer) Route(logits []float32, out []Choice) []Choice {
	if len(logits) != ly.Rows() {
		panic(fmt.Sprintf("router: %d logits for a layer of %d gate rows", len(logits), ly.Rows()))
	}
	return Route(logits, ly.TopK, ly.Temperature, ly.Nulls, out)
}

// Modules collects, for projection p of layer ly, each expert's LoRA in the layer's expert order:
// dst[j] is the module of Experts[j] (nil where that adapter does not adapt p in this layer).
// adapters is indexed like Bundle.Experts() (the engine resolves those names to adapters);
// layer is the decoder layer index of ly.
func (ly *Layer) Modules(layer int, p model.Proj, adapters []*model.Adapter, dst []*model.LoRAWeights) []*model.LoRAWeights {
	dst = dst[:0]
	for _, gi := range ly.Index {
		var m *model.LoRAWeights
		if a := adapters[gi]; a != nil && layer < len(a.Modules) {
			m = a.Modules[layer][p]
		}
		dst = append(dst, m)
	}
	return dst
}

// Segments appends the LoRA segments of routed rows to segs: row start+i chose choices[i], and
// each chosen expert j with a LoRA on this projection (mods[j] != nil, see Layer.Modules) gives
// one single-row segment with Scale = weight · the expert's own PEFT scale. Experts without a
// LoRA here add nothing, and their weight is not given to the others.
//
// Backend.LoRA then applies the routed rows unchanged: out[r] += Σ_j w_j s_j B_j (A_j x[r]).
// A row's segments overlap each other (k segments on the same row). The CPU backend applies
// segments one after another, so overlapping rows accumulate correctly. The CUDA expand kernel
// (kernels/lora.cu) runs all segments of a call in parallel with a plain `+=` on the output
// row: overlapping segments race there. Until it accumulates atomically or takes per-row
// expert lists, the engine must split a routed projection into k LoRA calls, each with at
// most one segment per row (see Passes).
func Segments(segs []model.LoRASeg, start int, choices [][]Choice, mods []*model.LoRAWeights) []model.LoRASeg {
	for i, cs := range choices {
		for _, c := range cs {
			m := mods[c.Expert]
			if m == nil || c.Weight == 0 {
				continue
			}
			segs = append(segs, model.LoRASeg{Start: start + i, N: 1, A: m.A, B: m.B, Scale: c.Weight * m.Scale})
		}
	}
	return segs
}

// Passes splits segments into groups whose rows are disjoint, keeping order: pass p holds each
// row's p-th segment. For backends whose LoRA requires disjoint rows (CUDA today), one LoRA
// call per pass gives the same sums. dst is reused.
func Passes(segs []model.LoRASeg, dst [][]model.LoRASeg) [][]model.LoRASeg {
	for i := range dst {
		dst[i] = dst[i][:0]
	}
	dst = dst[:0]
	// count[row] = segments of that row placed so far; rows are small integers.
	count := map[int]int{}
	for _, s := range segs {
		// A multi-row segment occupies all its rows: its pass is the max over them.
		p := 0
		for r := s.Start; r < s.Start+s.N; r++ {
			p = max(p, count[r])
		}
		for r := s.Start; r < s.Start+s.N; r++ {
			count[r] = p + 1
		}
		for len(dst) <= p {
			if len(dst) < cap(dst) {
				dst = dst[:len(dst)+1]
				dst[len(dst)-1] = dst[len(dst)-1][:0]
			} else {
				dst = append(dst, nil)
			}
		}
		dst[p] = append(dst[p], s)
	}
	return dst
}

// RouteRows runs a gate over the rows of x on backend be and routes every row: be.MatMul(logits,
// x, g.T) (logits is an F32 [x.Rows, g.Rows] scratch tensor from be.Alloc), read to the host,
// then Route per row. It is what the engine's CPU path (and a first GPU path) does per routed
// projection; choices is reused.
func (ly *Layer) RouteRows(be model.Backend, g *Gate, x, logits model.Tensor, host []float32, choices [][]Choice) ([][]Choice, []float32, error) {
	if g.T.Rows == 0 {
		return nil, host, fmt.Errorf("router: gate %s is not uploaded", g.Name)
	}
	logits = logits.Slice(0, x.Rows)
	be.MatMul(logits, x, g.T)
	n := x.Rows * g.Rows
	if cap(host) < n {
		host = make([]float32, n)
	}
	host = host[:n]
	if err := be.Read(logits, host); err != nil {
		return nil, host, err
	}
	for len(choices) < x.Rows {
		choices = append(choices, nil)
	}
	choices = choices[:x.Rows]
	for r := range choices {
		choices[r] = ly.Route(host[r*g.Rows:(r+1)*g.Rows], choices[r])
	}
	return choices, host, nil
}
