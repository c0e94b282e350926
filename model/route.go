package model

import (
	"fmt"
	"math"
	"sync/atomic"
)

// Routing is a router (a learned mixture of LoRA experts, ARCHITECTURE.md "Router") resident on a
// backend, resolved against the adapters its experts name. A sequence runs routed when its
// Adapter has Routing set: for every row and every projection with a gate, the forward pass
// computes the gate's logits from that projection's input, picks the top-k experts (Route) and
// adds their deltas weighted by the gate. Projections without a gate get no expert delta.
type Routing struct {
	Name string
	// Experts are the expert adapter names; RoutedProj.IDs index this list.
	Experts []string
	// Layers[l][p] is the routed projection p of layer l (nil: not routed).
	Layers [][NumProj]*RoutedProj
	// TraceProj[l] is the projection whose choices the trace records for layer l: the first
	// routed one in forward order, -1 where the layer has none.
	TraceProj []Proj
	// Key identifies what a recorded step (StepRecorder) bakes in from this routing: its gate
	// tensors, settings and expert weights. Routings with equal non-zero keys must route through
	// the same gates (same device addresses) over the same expert weights with the same
	// settings; routers built by router.Bundle.Routing share a key per bundle and expert set.
	// 0: no such promise, and steps with this routing run unrecorded. Take new keys from
	// NewRoutingKey.
	Key uint64
}

var routingKeys atomic.Uint64

// NewRoutingKey returns a Routing.Key no earlier call returned.
func NewRoutingKey() uint64 { return routingKeys.Add(1) }

// RoutedProj is one routed projection of one layer.
type RoutedProj struct {
	Gate        Tensor // [experts+nulls, in]: logits = x · Gateᵀ
	TopK        int
	Temperature float32
	Nulls       int
	// Experts[j] is gate row j's LoRA on this projection (nil: that expert does not adapt it and
	// adds nothing; its weight is not given to the others). len = gate rows - Nulls.
	Experts []*LoRAWeights
	// IDs[j] is gate row j's index in Routing.Experts.
	IDs []int32
	// Source identifies the gate across Routings built from one bundle (router.Gate): adjacent
	// sequences whose projections share it and the expert weights are routed as one group.
	Source any
	// Dev is the backend's own data for this projection (a DeviceRouter's table of expert
	// weights), made on first use and released by DeviceRouter.ReleaseRouting.
	Dev any
}

// DeviceRouter is implemented by backends that route on the device, without reading gate logits
// back to the host: gate GEMM (MatMul), then RouteLoRA's top-k kernel feeding the LoRA kernels.
type DeviceRouter interface {
	// RouteLoRA adds the routed deltas of rows [start, start+n) of x to out: logits ([n, gate
	// rows], F32, from MatMul of those rows by rp.Gate) are routed per row exactly as Route does,
	// then out[r] += Σ_j w_j s_j B_j (A_j x[r]) over the chosen experts that adapt this
	// projection. When trace has rows (F32 [MaxTokens, NumLayers]), column layer of rows
	// [start, start+n) receives each row's top-1 expert id (rp.IDs; -1 when none).
	RouteLoRA(out, x, logits Tensor, start, n int, rp *RoutedProj, trace Tensor, layer int)
	// ReleaseRouting frees whatever RouteLoRA cached for rt's projections.
	ReleaseRouting(rt *Routing)
}

// DeviceGroupRouter is implemented by device routers that route the projections of one input
// (q/k/v, gate/up) together: RouteLoRAGroup(outs, x, logits, start, n, rps, trace, traced,
// layer) is RouteLoRA(outs[i], x, logits[i], start, n, rps[i], t_i, layer) for every i, where t_i
// is trace for i == traced and none otherwise (cuda: one launch pair for the group instead of
// one a projection, LORAPLEX_ROUTED_GROUP). It does all of it and returns true, or nothing
// and returns false; the answer may depend only on what the StepRecorder key fixes.
type DeviceGroupRouter interface {
	RouteLoRAGroup(outs []Tensor, x Tensor, logits []Tensor, start, n int, rps []*RoutedProj, trace Tensor, traced, layer int) bool
}

// RoutedFolder is implemented by device routers that fold a routed projection group's expert
// shrinks into the base products' call where one routing covers every row of a few-row step
// (cuda: batch 1; every expert's A factor streams beside the weights and the gate, then one
// route-and-expand launch for the group, LORAPLEX_ROUTED_FOLD). For every i,
// RoutedFoldedProducts computes outs[i] = x·ws[i]ᵀ, adds biases[i] where it has rows, then rps[i]'s
// routed delta of every row of x (logits x·rps[i].Gateᵀ, routed per row as Route does,
// RouteLoRA's semantics and trace: trace for i == traced, none otherwise), each output within
// rounding of those ops. It does all of it and returns true, or nothing and returns false; the
// answer may depend only on what the StepRecorder key fixes.
type RoutedFolder interface {
	RoutedFoldedProducts(outs []Tensor, x Tensor, ws, biases []Tensor, rps []*RoutedProj, trace Tensor, traced, layer int) bool
}

// Check validates the routing against cfg: shapes of gates and expert lists, k and T in range.
func (rt *Routing) Check(cfg *Config) error {
	if len(rt.Layers) != cfg.NumLayers || len(rt.TraceProj) != cfg.NumLayers {
		return fmt.Errorf("router %q: %d layers (trace %d), the model has %d", rt.Name, len(rt.Layers), len(rt.TraceProj), cfg.NumLayers)
	}
	for l := range rt.Layers {
		for p, rp := range rt.Layers[l] {
			if rp == nil {
				continue
			}
			_, in := cfg.ProjShape(Proj(p))
			rows := len(rp.Experts) + rp.Nulls
			switch {
			case rp.Gate.Rows != rows || rp.Gate.Cols != in:
				return fmt.Errorf("router %q layer %d %s: gate %s, want %dx%d", rt.Name, l, Proj(p), rp.Gate.Shape(), rows, in)
			case len(rp.IDs) != len(rp.Experts):
				return fmt.Errorf("router %q layer %d %s: %d ids for %d experts", rt.Name, l, Proj(p), len(rp.IDs), len(rp.Experts))
			case rp.TopK < 1 || rp.TopK > rows || !(rp.Temperature > 0) || rp.Nulls < 0:
				return fmt.Errorf("router %q layer %d %s: top_k %d, temperature %v, %d nulls over %d rows", rt.Name, l, Proj(p), rp.TopK, rp.Temperature, rp.Nulls, rows)
			}
			for j, id := range rp.IDs {
				if id < 0 || int(id) >= len(rt.Experts) {
					return fmt.Errorf("router %q layer %d %s: expert id %d out of range", rt.Name, l, Proj(p), id)
				}
				if m := rp.Experts[j]; m != nil {
					out, in := cfg.ProjShape(Proj(p))
					if m.A.Cols != in || m.B.Rows != out || m.A.Rows != m.Rank || m.B.Cols != m.Rank {
						return fmt.Errorf("router %q layer %d %s: expert %s has A %s and B %s", rt.Name, l, Proj(p), rt.Experts[id], m.A.Shape(), m.B.Shape())
					}
				}
			}
		}
	}
	return nil
}

// MaxGateRows is the largest gate of the routing (the forward pass sizes its logits scratch).
func (rt *Routing) MaxGateRows() int {
	n := 0
	for l := range rt.Layers {
		for _, rp := range rt.Layers[l] {
			if rp != nil {
				n = max(n, rp.Gate.Rows)
			}
		}
	}
	return n
}

// MaxTopK is the largest k of the routing: a routed projection takes up to that many LoRA passes.
func (rt *Routing) MaxTopK() int {
	k := 0
	for l := range rt.Layers {
		for _, rp := range rt.Layers[l] {
			if rp != nil {
				k = max(k, rp.TopK)
			}
		}
	}
	return k
}

// Choice is one selected expert of one token: Expert indexes the gate's rows (never a null
// expert) and Weight is its mixing weight (the gate's, without the adapter's own PEFT scale).
type Choice struct {
	Expert int
	Weight float32
}

// Route is the gate math for one token, the reference of ARCHITECTURE.md "Router". logits are
// the gate's rows (l = W_g x): the experts first, nulls null experts last.
//
//	I = the k largest logits (ties go to the lower index; NaN ranks below every number)
//	w = softmax(l[I] / T)
//	null experts in I are dropped and the remaining weights renormalised to sum to 1
//
// It appends the real experts of I to out[:0] in descending logit order and returns it; the
// result is empty when every selected row is a null expert (no delta). k = 1 gives weight 1.
// k is clamped to len(logits). It allocates nothing for k <= 8.
func Route(logits []float32, k int, T float32, nulls int, out []Choice) []Choice {
	out = out[:0]
	n := len(logits)
	if nulls < 0 || nulls > n || !(T > 0) {
		panic(fmt.Sprintf("model: Route over %d logits with %d nulls, T %v", n, nulls, T))
	}
	k = min(k, n)
	if k <= 0 {
		return out
	}
	real := n - nulls
	// Selection by repeated arg-max: k is small (2 for MeteoRA/MoLA).
	var idxBuf [8]int
	idx := idxBuf[:0]
	if k > len(idxBuf) {
		idx = make([]int, 0, k)
	}
	for len(idx) < k {
		best := -1
		for i, v := range logits {
			if taken(idx, i) {
				continue
			}
			if best < 0 || better(v, logits[best]) {
				best = i
			}
		}
		idx = append(idx, best)
	}
	// softmax(l[I]/T) over all of I (nulls included), then renormalise over the real ones;
	// computed in float64. l[idx[0]] is the maximum.
	m := float64(logits[idx[0]])
	var sumAll, sumReal float64
	var eBuf [8]float64
	e := eBuf[:0]
	if k > len(eBuf) {
		e = make([]float64, 0, k)
	}
	for _, i := range idx {
		v := math.Exp((float64(logits[i]) - m) / float64(T))
		if math.IsNaN(v) {
			v = 0
		}
		e = append(e, v)
		sumAll += v
	}
	nReal := 0
	for j, i := range idx {
		if i < real {
			sumReal += e[j] / sumAll
			nReal++
		}
	}
	if nReal == 0 {
		return out // every selected row is a null expert: no delta
	}
	for j, i := range idx {
		if i >= real {
			continue
		}
		w := 0.0
		if sumReal > 0 {
			w = (e[j] / sumAll) / sumReal
		}
		out = append(out, Choice{Expert: i, Weight: float32(w)})
	}
	if len(out) == 1 && sumReal > 0 {
		out[0].Weight = 1 // exactly 1 (k = 1, or one real expert among nulls)
	}
	return out
}

func taken(idx []int, i int) bool {
	for _, j := range idx {
		if j == i {
			return true
		}
	}
	return false
}

// better reports whether logit a ranks above b (the caller scans in index order, so equal
// values keep the lower index). NaN ranks below everything.
func better(a, b float32) bool {
	if math.IsNaN(float64(b)) {
		return !math.IsNaN(float64(a))
	}
	return a > b
}
