package router

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// refRoute is an independent float64 implementation of the equations for one token: logits in
// float64, stable sort for top-k (ties by lower index), softmax(l/T) over I, nulls dropped and
// the rest renormalised; k = 1 gives weight 1. It returns expert -> weight.
func refRoute(logits []float64, k int, T float64, nulls int) map[int]float64 {
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
	idx = idx[:k]
	w := map[int]float64{}
	if k == 1 {
		if idx[0] < len(logits)-nulls {
			w[idx[0]] = 1
		}
		return w
	}
	var s float64
	for _, i := range idx {
		s += math.Exp((logits[i] - logits[idx[0]]) / T)
	}
	var real float64
	for _, i := range idx {
		if i < len(logits)-nulls {
			w[i] = math.Exp((logits[i]-logits[idx[0]])/T) / s
			real += w[i]
		}
	}
	for i := range w {
		w[i] /= real
	}
	return w
}

// routeRows runs a gate over the rows of x on be and routes every row with model.Route: the
// plain CPU path this test checks the backend's routed LoRA against.
func routeRows(ly *Layer, be model.Backend, g *Gate, x, logits model.Tensor, host []float32, choices [][]model.Choice) ([][]model.Choice, []float32, error) {
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
		choices[r] = model.Route(host[r*g.Rows:(r+1)*g.Rows], ly.TopK, ly.Temperature, ly.Nulls, choices[r])
	}
	return choices, host, nil
}

// segments turns routed rows into single-row LoRA segments: row start+i chose choices[i], and
// each chosen expert j with a LoRA here (mods[j] != nil) adds Scale = weight x its PEFT scale.
// Experts without a LoRA here add nothing, and their weight is not given to the others.
func segments(segs []model.LoRASeg, start int, choices [][]model.Choice, mods []*model.LoRAWeights) []model.LoRASeg {
	for i, cs := range choices {
		for _, c := range cs {
			if m := mods[c.Expert]; m != nil && c.Weight != 0 {
				segs = append(segs, model.LoRASeg{Start: start + i, N: 1, A: m.A, B: m.B, Scale: c.Weight * m.Scale})
			}
		}
	}
	return segs
}

// TestRoutedProjectionCPU routes every projection of the llama fixture through its four PEFT
// adapters (different ranks, targets, rslora and per-module scales) with random gates: layer 0
// top-2 over the four, layer 1 a different expert list with a null expert, top-3, T = 0.5, and
// a top-1 layer in a second bundle. y = W x + routed LoRA through cpu.Backend must equal a
// float64 computation of y = W x + Σ w_j s_j B_j A_j x.
func TestRoutedProjectionCPU(t *testing.T) {
	be := cpu.New(2)
	t.Cleanup(be.Close)
	cfg, w := fixture.LoadModel(t, fixture.Dir("llama"), be)
	byName := fixtureadapters.Upload(t, "llama", cfg, be)
	bundles := map[string]string{
		"top-2, per-layer experts, nulls, T": `{"format":"loraplex.router/v1","experts":["a_qv","b_all_rslora","c_patterns","d_regex"],
			"top_k":2,"layers":{"1":{"experts":["c_patterns","b_all_rslora","a_qv"],"null_experts":1,"top_k":3,"temperature":0.5}}}`,
		"top-1 and top-4 with nulls": `{"format":"loraplex.router/v1","experts":["d_regex","c_patterns","b_all_rslora","a_qv"],
			"top_k":1,"null_experts":2,"layers":{"1":{"top_k":4,"temperature":2}}}`,
	}
	seed := uint64(10)
	for name, js := range bundles {
		t.Run(name, func(t *testing.T) {
			seed++
			rng := rand.New(rand.NewPCG(seed, 7))
			probe, err := parseConfig("probe", []byte(js), cfg)
			if err != nil {
				t.Fatal(err)
			}
			dir := writeBundle(t, js, allGates(cfg, rng, func(l int) int { return probe.Layer(l).Rows() }))
			b, err := Load(dir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Upload(be); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Free(be) })
			adapters := make([]*model.Adapter, len(b.Experts()))
			for i, e := range b.Experts() {
				adapters[i] = byName[e]
			}
			const N = 7
			var (
				choices [][]model.Choice
				host    []float32
				mods    []*model.LoRAWeights
				segs    []model.LoRASeg
				routed  int
				selNull int
			)
			for l := 0; l < cfg.NumLayers; l++ {
				ly := b.Layer(l)
				for p := model.Proj(0); p < model.NumProj; p++ {
					g := b.Gate(l, p)
					outDim, in := cfg.ProjShape(p)
					xs := make([]float32, N*in)
					for i := range xs {
						xs[i] = float32(rng.NormFloat64())
					}
					x := be.Alloc(N, in)
					if err := be.Write(x, xs); err != nil {
						t.Fatal(err)
					}
					out := be.Alloc(N, outDim)
					logits := be.Alloc(N, g.Rows)
					be.MatMul(out, x, w.Layers[l].W[p])
					choices, host, err = routeRows(ly, be, g, x, logits, host, choices)
					if err != nil {
						t.Fatal(err)
					}
					mods = ly.Modules(l, p, adapters, mods)
					segs = segments(segs[:0], 0, choices, mods)
					routed += len(segs)
					be.LoRA(out, x, segs)
					got := make([]float32, N*outDim)
					if err := be.Read(out, got); err != nil {
						t.Fatal(err)
					}

					// float64 reference.
					W := make([]float32, outDim*in)
					if err := be.Read(w.Layers[l].W[p], W); err != nil {
						t.Fatal(err)
					}
					for r := 0; r < N; r++ {
						xr := xs[r*in : (r+1)*in]
						lg := make([]float64, g.Rows)
						for e := range lg {
							for i, v := range xr {
								lg[e] += float64(g.W[e*in+i]) * float64(v)
							}
						}
						wts := refRoute(lg, ly.TopK, float64(ly.Temperature), ly.Nulls)
						if len(wts) < ly.TopK {
							selNull++
						}
						y := make([]float64, outDim)
						for o := range y {
							for i, v := range xr {
								y[o] += float64(W[o*in+i]) * float64(v)
							}
						}
						for e, wt := range wts {
							m := adapters[ly.Index[e]].Modules[l][p]
							if m == nil {
								continue // no LoRA here: adds nothing, weight not redistributed
							}
							A := make([]float32, m.Rank*in)
							B := make([]float32, outDim*m.Rank)
							if err := be.Read(m.A, A); err != nil {
								t.Fatal(err)
							}
							if err := be.Read(m.B, B); err != nil {
								t.Fatal(err)
							}
							ax := make([]float64, m.Rank)
							for k := range ax {
								for i, v := range xr {
									ax[k] += float64(A[k*in+i]) * float64(v)
								}
							}
							for o := range y {
								var s float64
								for k := range ax {
									s += float64(B[o*m.Rank+k]) * ax[k]
								}
								y[o] += wt * float64(m.Scale) * s
							}
						}
						for o := range y {
							if d := math.Abs(float64(got[r*outDim+o]) - y[o]); d > 1e-4*(1+math.Abs(y[o])) {
								t.Fatalf("layer %d %s row %d col %d: got %v, want %v (choices %v, ref %v)", l, p, r, o, got[r*outDim+o], y[o], choices[r], wts)
							}
						}
					}
					be.Free(x)
					be.Free(out)
					be.Free(logits)
				}
			}
			if routed == 0 {
				t.Fatal("no expert delta was applied")
			}
			t.Logf("%d routed segments; %d rows had a null expert among their top-k", routed, selNull)
		})
	}
}
