package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
)

// RunnerOptions size the runner's preallocated workspaces.
type RunnerOptions struct {
	MaxTokens    int // rows per step (prefill chunk + decode rows)
	MaxLogitRows int // sequences that want logits in one step
	MaxContext   int // longest sequence (positions) the rotary table covers
	KV           KVSpec
	// HostRouting routes on the host even when the backend is a DeviceRouter (for comparisons).
	HostRouting bool
}

// Runner executes forward passes of one model on one backend. It owns every buffer a step
// needs, allocated once: a step allocates nothing.
type Runner struct {
	Cfg *Config
	B   Backend
	W   *Weights
	Opt RunnerOptions

	rope                                      Tensor
	x, h, q, k, v, attn, delta, gate, up, act Tensor
	sel, logits                               Tensor
	scoreBuf                                  []float32            // host copies of logits rows being scored (score.go)
	segs                                      [NumProj][]LoRASeg   // this layer's LoRA segments: a segCache entry, or routedSegs
	segCache                                  [][NumProj][]LoRASeg // every layer's segs as the last step built them (loadSegs)
	segFrom                                   []segSource          // what segCache was built from, when segVersion is set
	segKey                                    []byte               // the step key's part for segCache's layout (stepKey)
	segVersion                                uint64               // segCache's version (SegmentKeeper); 0: segCache and segKey do not hold segFrom's segments
	segMerged                                 bool                 // segCache merges adjacent sequences on one adapter (SegmentMerger)
	segRuns                                   []segSource          // the step's runs of rows on one plain adapter (loadRuns)
	routedFrom                                []segSource          // the plain runs of the last routed step, when routedVersion is set
	routedVersion                             uint64               // the version of routedFrom's segments (SegmentKeeper)
	stepVersion                               uint64               // this step's segment lists' version: segVersion, or routedVersion in a routed step
	routedSegs                                [NumProj][]LoRASeg   // a routed step's segs, rebuilt each layer (routeProj appends)
	routing                                   routeState
	attnParams                                AttnParams
	shared                                    SharedMatMuler            // nil: one MatMul per projection
	fuser                                     DecodeFuser               // nil: the backend fuses nothing
	normer                                    NormFuser                 // nil: every RMSNorm is its own op
	keeper                                    NormKeeper                // nil: a routed step's RMSNorm is its own op
	siluDown                                  SiLUMulMatMuler           // nil: SwiGLU, then the down projection's product
	loraSwiGLU                                LoRASwiGLUer              // nil: gate/up's LoRA deltas are added before SwiGLU
	loraRoPE                                  LoRARoPEer                // nil: q/k/v's LoRA deltas are added before RoPE
	grouper                                   LoRAGrouper               // nil: one LoRA call per projection
	folder                                    LoRAFolder                // nil: LoRA shrinks are launches of their own
	groupOuts, groupWs                        [MaxSharedProducts]Tensor // outputs and weights of a projection group and its routers' gates (gatedProducts), kept here so steps allocate nothing
	groupSegs                                 [3][]LoRASeg
	foldBiases                                [maxSharedGroup]Tensor // a folded group's biases (foldedProducts)
	windows                                   []int                  // per layer: the sliding window (Config.LayerWindow)
	keyBuf                                    []byte
	id                                        uint64
	eps                                       float32
}

var runnerIDs atomic.Uint64

// segVersions numbers the segment lists loadSegs builds, across runners: a backend shared by
// several runners tells their lists apart by version alone (SegmentKeeper).
var segVersions atomic.Uint64

// NewRunner allocates workspaces and the KV cache on w's backend.
func NewRunner(cfg *Config, b Backend, w *Weights, opt RunnerOptions) (*Runner, error) {
	if opt.MaxTokens <= 0 || opt.MaxLogitRows <= 0 || opt.MaxContext <= 0 {
		return nil, fmt.Errorf("runner: MaxTokens, MaxLogitRows and MaxContext must be positive")
	}
	opt.KV.Layers, opt.KV.KVHeads, opt.KV.HeadDim = cfg.NumLayers, cfg.NumKVHeads, cfg.HeadDim
	if err := b.AllocKV(opt.KV); err != nil {
		return nil, err
	}
	r := &Runner{Cfg: cfg, B: b, W: w, Opt: opt, eps: float32(cfg.RMSNormEps), id: runnerIDs.Add(1)}
	r.shared, _ = b.(SharedMatMuler)
	r.fuser, _ = b.(DecodeFuser)
	r.normer, _ = b.(NormFuser)
	r.keeper, _ = b.(NormKeeper)
	r.siluDown, _ = b.(SiLUMulMatMuler)
	r.loraSwiGLU, _ = b.(LoRASwiGLUer)
	r.loraRoPE, _ = b.(LoRARoPEer)
	r.grouper, _ = b.(LoRAGrouper)
	r.folder, _ = b.(LoRAFolder)
	n, H, D := opt.MaxTokens, cfg.HiddenSize, cfg.HeadDim
	qd, kvd := cfg.NumHeads*D, cfg.NumKVHeads*D
	r.x, r.h, r.delta = b.Alloc(n, H), b.Alloc(n, H), b.Alloc(n, max(H, qd))
	r.q, r.k, r.v, r.attn = b.Alloc(n, qd), b.Alloc(n, kvd), b.Alloc(n, kvd), b.Alloc(n, qd)
	r.gate, r.up, r.act = b.Alloc(n, cfg.IntermediateSize), b.Alloc(n, cfg.IntermediateSize), b.Alloc(n, cfg.IntermediateSize)
	r.sel, r.logits = b.Alloc(opt.MaxLogitRows, H), b.Alloc(opt.MaxLogitRows, cfg.VocabSize)
	r.attnParams = AttnParams{Heads: cfg.NumHeads, KVHeads: cfg.NumKVHeads, HeadDim: D,
		Scale: float32(1 / math.Sqrt(float64(D)))}
	r.windows = make([]int, cfg.NumLayers)
	for l := range r.windows {
		r.windows[l] = cfg.LayerWindow(l)
	}

	// The rotary table is computed once and stored as float32 cos|sin rows. The angle
	// position x inv_freq is rounded to float32 as transformers and vLLM compute it: 32k
	// positions out a float32 angle is 0.002 rad from the exact one, which moves peaked
	// attention scores by more than the fixtures' tolerance. cos and sin are then exact.
	inv, scale := cfg.InvFreq()
	half := D / 2
	table := make([]float32, opt.MaxContext*D)
	for p := 0; p < opt.MaxContext; p++ {
		for i := 0; i < half; i++ {
			ang := float64(float32(float32(p) * float32(inv[i])))
			table[p*D+i] = float32(math.Cos(ang) * scale)
			table[p*D+half+i] = float32(math.Sin(ang) * scale)
		}
	}
	r.rope = b.Alloc(opt.MaxContext, D)
	if err := b.Write(r.rope, table); err != nil {
		return nil, err
	}
	// Alloc has no error result; a backend that failed (device memory exhausted) says so here,
	// at start-up, instead of at the first request.
	if err := backendErr(b); err != nil {
		return nil, fmt.Errorf("runner: allocating workspaces: %w", err)
	}
	if sr, ok := b.(SampleReserver); ok {
		if err := sr.ReserveSampling(opt.MaxLogitRows, cfg.VocabSize); err != nil {
			return nil, fmt.Errorf("runner: reserving the sampler's buffers: %w", err)
		}
	}
	r.segCache = make([][NumProj][]LoRASeg, cfg.NumLayers)
	r.segFrom = make([]segSource, 0, opt.MaxTokens) // a step has at most a sequence a row
	r.segRuns = make([]segSource, 0, opt.MaxTokens)
	r.routedFrom = make([]segSource, 0, opt.MaxTokens)
	for p := range r.routedSegs {
		r.routedSegs[p] = make([]LoRASeg, 0, 64)
		for l := range r.segCache {
			r.segCache[l][p] = make([]LoRASeg, 0, 8)
		}
	}
	return r, nil
}

// Forward runs one step. adapters[i] is the adapter of s.Seqs[i] (nil for the base model).
// Logits of s.LogitRows are written to logits, row after row (len = len(LogitRows)*VocabSize).
// It returns once the step is complete (see StepSynchronizer).
func (r *Runner) Forward(s *Step, adapters []*Adapter, logits []float32) error {
	m := len(s.LogitRows)
	if len(logits) != m*r.Cfg.VocabSize {
		return fmt.Errorf("runner: logits buffer has %d floats, want %d", len(logits), m*r.Cfg.VocabSize)
	}
	return r.step(s, adapters, logits, nil, nil, nil, nil, nil)
}

// Err returns the backend's permanent failure (FailureReporter), nil while it works.
func (r *Runner) Err() error { return backendErr(r.B) }

// step runs one step, then hands the logits to the host (ds nil: Read into logits) or to the
// backend's sampler (ds). It is the one place the step contract (StepSynchronizer) is kept:
// however the step ends (logits read, only prefill chunks, an error, a panic), the backend has
// finished every op of it before step returns.
func (r *Runner) step(s *Step, adapters []*Adapter, logits []float32, ds DeviceSampler, rows []SampleRow, out []SampleResult,
	score []ScoreRow, scoreOut []ScoreResult) (err error) {
	defer func() {
		if serr := r.sync(); err == nil {
			err = serr
		}
	}()
	if err := r.run(s, adapters); err != nil {
		return err
	}
	m := len(s.LogitRows)
	switch {
	case m == 0:
		return nil
	case ds != nil:
		if err := ds.Sample(r.logits.Slice(0, len(rows)), rows, out); err != nil {
			return err
		}
		return r.score(len(rows), score, scoreOut)
	default:
		return r.B.Read(r.logits.Slice(0, m), logits)
	}
}

// sync waits for the backend to finish the step's ops (a no-op for backends whose ops are
// synchronous, which do not implement StepSynchronizer).
func (r *Runner) sync() error {
	if ss, ok := r.B.(StepSynchronizer); ok {
		return ss.Sync()
	}
	return nil
}

// run checks the step and runs everything up to the logits (r.logits rows 0..len(LogitRows)),
// recorded when the backend records steps. Only step calls it.
func (r *Runner) run(s *Step, adapters []*Adapter) error {
	n, m := len(s.Tokens), len(s.LogitRows)
	switch {
	case n == 0 || n > r.Opt.MaxTokens:
		return fmt.Errorf("runner: step has %d tokens, want 1..%d", n, r.Opt.MaxTokens)
	case m > r.Opt.MaxLogitRows:
		return fmt.Errorf("runner: step wants %d logit rows, max %d", m, r.Opt.MaxLogitRows)
	case len(adapters) != len(s.Seqs):
		return fmt.Errorf("runner: %d adapters for %d sequences", len(adapters), len(s.Seqs))
	}
	for i, p := range s.Positions {
		if int(p) >= r.Opt.MaxContext || p < 0 {
			return fmt.Errorf("runner: row %d at position %d is outside the context of %d", i, p, r.Opt.MaxContext)
		}
	}
	// Here, not only in Embed: a replay that keeps its segment tables (SegmentKeeper) calls no op.
	for i, t := range s.Tokens {
		if t < 0 || int(t) >= r.Cfg.VocabSize {
			return fmt.Errorf("runner: row %d has token %d, outside the vocabulary of %d", i, t, r.Cfg.VocabSize)
		}
	}
	if err := r.beginRouting(s, adapters); err != nil {
		return err
	}
	if err := r.B.Prepare(s); err != nil {
		return err
	}
	r.loadSegs(s, adapters)
	rec, _ := r.B.(StepRecorder)
	if rec == nil {
		r.layers(s, adapters)
	} else {
		key := r.stepKey(s, adapters)
		for attempt := 0; ; attempt++ {
			if attempt > 0 {
				key = nil
			}
			replay, kept := rec.BeginStep(key), false
			if sk, ok := rec.(SegmentKeeper); ok && key != nil {
				kept = sk.StepSegments(r.stepVersion) && replay
			}
			if !kept { // a replay of segment tables the device holds needs none of the walk's op calls
				r.layers(s, adapters)
			}
			err := rec.EndStep()
			if err == ErrRerun && attempt == 0 {
				continue
			}
			if err != nil {
				return err
			}
			break
		}
	}
	if r.routing.err != nil {
		return r.routing.err
	}
	return r.endRouting(n)
}

// stepKey encodes what shapes the step's launches: rows per sequence, logit rows, and per layer
// and projection the number of LoRA segments and their largest rows and rank. Steps with equal
// keys launch the same kernels with the same grids, so a recording of one replays for another.
//
// Device-routed sequences add what their launches bake in: each one's rows and Routing.Key
// (gates, expert weights and the backend's expert tables, which decide how adjacent sequences
// group) and the gate-logit scratch they write to. The experts a row picks are decided on the
// device inside the step, so a recording replays for any tokens. Steps routed on the host read
// gate logits mid-step, and routings without a key promise nothing: those run unrecorded (nil).
func (r *Runner) stepKey(s *Step, adapters []*Adapter) []byte {
	rs := &r.routing
	if rs.seqs > 0 && rs.dev == nil {
		return nil
	}
	k := r.keyBuf[:0]
	// Recordings bake in this runner's weights and workspaces: keys of different runners on
	// one backend must differ.
	k = binary.AppendUvarint(k, r.id)
	k = binary.AppendUvarint(k, uint64(len(s.Tokens)))
	k = binary.AppendUvarint(k, uint64(len(s.LogitRows)))
	for _, sq := range s.Seqs {
		k = binary.AppendUvarint(k, uint64(sq.N))
	}
	if rs.seqs > 0 {
		k = binary.AppendUvarint(k, uint64(rs.gateCols))
		k = binary.AppendUvarint(k, uint64(len(s.Seqs)))
		for i, a := range adapters {
			if a == nil || a.Routing == nil {
				k = append(k, 0)
				continue
			}
			if a.Routing.Key == 0 {
				r.keyBuf = k
				return nil
			}
			k = binary.AppendUvarint(k, a.Routing.Key)
			k = binary.AppendUvarint(k, uint64(s.Seqs[i].Start))
		}
	}
	if rs.seqs == 0 {
		k = append(k, r.segKey...) // loadSegs's, from the segments of every layer
	} else {
		for l := range r.W.Layers {
			for p := Proj(0); p < NumProj; p++ {
				segs, rows, rank := 0, 0, 0
				for _, rn := range r.segRuns { // loadSegs's: the plain sequences' runs
					if m := rn.a.Modules[l][p]; m != nil {
						segs++
						rows, rank = max(rows, rn.n), max(rank, m.Rank)
					}
				}
				k = appendSegLayout(k, segs, rows, rank)
			}
		}
	}
	r.keyBuf = k
	return k
}

// appendSegLayout appends what the step key holds of a projection's LoRA segments in one
// layer: their count, and when there are any their most rows and largest rank.
func appendSegLayout(k []byte, segs, rows, rank int) []byte {
	k = binary.AppendUvarint(k, uint64(segs))
	if segs > 0 {
		k = binary.AppendUvarint(k, uint64(rows))
		k = binary.AppendUvarint(k, uint64(rank))
	}
	return k
}

// layers runs everything between Prepare and the read of the logits.
func (r *Runner) layers(s *Step, adapters []*Adapter) {
	n, m := len(s.Tokens), len(s.LogitRows)
	b, cfg, w := r.B, r.Cfg, r.W
	x, h := r.x.Slice(0, n), r.h.Slice(0, n)
	var delta Tensor
	q, k, v, attn := r.q.Slice(0, n), r.k.Slice(0, n), r.v.Slice(0, n), r.attn.Slice(0, n)
	gate, up, act := r.gate.Slice(0, n), r.up.Slice(0, n), r.act.Slice(0, n)
	H, KV, D := cfg.NumHeads, cfg.NumKVHeads, cfg.HeadDim

	b.Embed(x, w.Embed)
	for l := range w.Layers {
		L := &w.Layers[l]
		r.layerSegs(l)
		r.groupOuts[0], r.groupOuts[1], r.groupOuts[2] = q, k, v
		in := NormedInput{X: x, Delta: delta, Next: h, Weight: L.AttnNorm, Eps: r.eps} // delta has no rows in layer 0
		if r.qkvLoRARoPE(q, k, v, in, l) {
			x, h = fusedResidual(in)
		} else {
			if r.normFusable(l, qkvProjs) && r.normer.NormMatMulShared(r.groupOuts[:3], in, r.groupWeights(l, qkvProjs)) {
				r.addBiases(l, qkvProjs, r.groupOuts[:3])
				x, h = fusedResidual(in)
			} else if r.normFolded(in, l, qkvProjs, r.groupOuts[:3]) || r.normKeptRouted(in, l, qkvProjs, r.groupOuts[:3]) {
				x, h = fusedResidual(in)
			} else {
				if l == 0 {
					b.RMSNorm(h, x, L.AttnNorm, r.eps)
				} else {
					b.AddRMSNorm(x, delta, h, L.AttnNorm, r.eps)
				}
				r.projShared(h, l, qkvProjs, r.groupOuts[:3])
			}
			qh, kh := q.Reshape(n*H, D), k.Reshape(n*KV, D)
			if cfg.QKNorm {
				b.RMSNorm(qh, qh, L.QNorm, r.eps)
				b.RMSNorm(kh, kh, L.KNorm, r.eps)
			}
			if r.fuser == nil || !r.fuser.RoPEStoreKV(l, q, k, v, H, KV, r.rope) {
				b.RoPE(qh, H, r.rope)
				b.RoPE(kh, KV, r.rope)
				b.StoreKV(l, k, v)
			}
		}
		ap := r.attnParams
		ap.Window = r.windows[l]
		b.Attention(attn, q, l, ap)
		o := r.deltaFor(n, cfg.HiddenSize)
		r.proj(o, attn, l, ProjO)
		in = NormedInput{X: x, Delta: o, Next: h, Weight: L.MLPNorm, Eps: r.eps}
		down := false // the down projection's product made with the activation (SiLUMulMatMuler)
		if r.gateUpNormFused(act, in, l) {
			x, h = fusedResidual(in)
		} else if down = r.gateUpLoRASwiGLU(o, act, gate, up, in, l); down {
			x, h = fusedResidual(in)
		} else {
			r.groupOuts[0], r.groupOuts[1] = gate, up
			// The norm folded into the gate/up products alone where the backend takes that but
			// not the activation too (CUDA: steps whose products run on cuBLAS).
			normed := r.normFusable(l, gateUpProjs) && r.normer.NormMatMulShared(r.groupOuts[:2], in, r.groupWeights(l, gateUpProjs))
			if normed {
				r.addBiases(l, gateUpProjs, r.groupOuts[:2])
				x, h = fusedResidual(in)
			} else if normed = r.normFolded(in, l, gateUpProjs, r.groupOuts[:2]) || r.normKeptRouted(in, l, gateUpProjs, r.groupOuts[:2]); normed {
				x, h = fusedResidual(in) // the folded or routed call added the biases and the LoRA deltas too
			} else {
				b.AddRMSNorm(x, o, h, L.MLPNorm, r.eps)
			}
			if normed || !r.gateUpFused(act, h, l) {
				if !normed {
					r.projShared(h, l, gateUpProjs, r.groupOuts[:2])
				}
				// Routed steps make the product with the down projection's gate (withGates).
				down = r.siluDown != nil && r.siluDownProducts(o, act, gate, up, l)
				if !down {
					b.SiluMul(act, gate, up)
				}
			}
		}
		if down {
			r.projAfter(o, act, l, ProjDown)
		} else {
			r.proj(o, act, l, ProjDown)
		}
		delta = o
	}
	b.AddRMSNorm(x, delta, h, w.Norm, r.eps)
	if m == 0 {
		return
	}
	sel, out := r.sel.Slice(0, m), r.logits.Slice(0, m)
	b.GatherRows(sel, h)
	b.MatMul(out, sel, w.LMHead)
}

// deltaFor views the shared delta buffer as [n, cols].
func (r *Runner) deltaFor(n, cols int) Tensor {
	d := r.delta
	d.Rows, d.Cols = n, cols
	return d
}

func (r *Runner) proj(out, in Tensor, l int, p Proj) {
	if r.routing.seqs == 0 {
		r.groupOuts[0] = out
		if r.folded(in, l, allProjs[p:p+1], r.groupOuts[:1]) {
			return
		}
		r.B.MatMul(out, in, r.W.Layers[l].W[p])
	} else {
		ps := allProjs[p : p+1]
		r.groupOuts[0] = out
		if r.routedFolded(in, l, ps, r.groupOuts[:1]) {
			return
		}
		r.gatedProducts(in, l, ps, r.groupOuts[:1], r.groupWeights(l, ps))
	}
	r.projAfter(out, in, l, p)
}

// projAfter adds projection p's bias and its adapters' LoRA deltas to its product out.
func (r *Runner) projAfter(out, in Tensor, l int, p Proj) {
	L := &r.W.Layers[l]
	if L.Bias[p].Rows > 0 {
		r.B.AddBias(out, L.Bias[p])
	}
	r.projLoRA(out, in, l, p)
}

// projLoRA adds projection p's LoRA deltas, plain and routed, to its product out.
func (r *Runner) projLoRA(out, in Tensor, l int, p Proj) {
	segs, extra := r.segs[p], [][]LoRASeg(nil)
	if r.routing.seqs > 0 {
		segs, extra = r.routeProj(l, p, in, out, segs)
	}
	if len(segs) > 0 {
		r.B.LoRA(out, in, segs)
	}
	for _, pass := range extra {
		if len(pass) > 0 {
			r.B.LoRA(out, in, pass)
		}
	}
}

// maxSharedGroup is the most projections one group below holds (q/k/v).
const maxSharedGroup = 3

// The projections that read the same input (the normed hidden state) as groups, in the order
// their products are computed.
var (
	qkvProjs    = []Proj{ProjQ, ProjK, ProjV} // maxSharedGroup: the largest group
	gateUpProjs = []Proj{ProjGate, ProjUp}
	allProjs    = []Proj{ProjQ, ProjK, ProjV, ProjO, ProjGate, ProjUp, ProjDown} // allProjs[p] == p
)

// projShared computes the projections ps of one input into outs: the base products (in one
// MatMulShared call where the backend takes them, with the routers' gate logits beside them:
// gatedProducts), then the biases, then the group's LoRA deltas (in one LoRAGrouper call where
// the backend has one). Each output receives the same additions in the same order as proj gives
// it. Routed steps add their deltas per projection (projAfter).
func (r *Runner) projShared(in Tensor, l int, ps []Proj, outs []Tensor) {
	if r.folded(in, l, ps, outs) || r.routing.seqs > 0 && r.routedFolded(in, l, ps, outs) {
		return
	}
	r.gatedProducts(in, l, ps, outs, r.groupWeights(l, ps))
	if r.routing.seqs > 0 {
		r.routedAfter(in, l, ps, outs)
		return
	}
	if r.grouper == nil {
		for i, p := range ps {
			r.projAfter(outs[i], in, l, p)
		}
		return
	}
	r.addBiases(l, ps, outs)
	segs, adapted := r.groupSegs[:len(ps)], false
	for i, p := range ps {
		segs[i] = r.segs[p]
		adapted = adapted || len(segs[i]) > 0
	}
	if !adapted || r.grouper.LoRAGroup(outs, in, segs) {
		return
	}
	for i := range ps {
		if len(segs[i]) > 0 {
			r.B.LoRA(outs[i], in, segs[i])
		}
	}
}

// routedAfter adds the biases and the LoRA deltas, plain and routed, of the projections ps
// (which read in) to their products outs in a routed step: in one DeviceGroupRouter call where
// routeShared takes them, else per projection.
func (r *Runner) routedAfter(in Tensor, l int, ps []Proj, outs []Tensor) {
	if r.routeShared(in, l, ps, outs) {
		return
	}
	for i, p := range ps {
		r.projAfter(outs[i], in, l, p)
	}
}

// normKeptRouted is projShared of a routed step on in's normed rows with the RMSNorm folded
// into the products' call (NormKeeper, under NormFuser's contract: the caller moves the residual
// with fusedResidual): the base products with their gates beside them (withGates), then the
// biases and the deltas read from the normed rows the backend kept. False, nothing done, where
// the backend declines. It is tried before projShared's routedFolded: a backend that offers both
// must decline one of them for a step (CUDA: this takes cuBLAS-sized steps, the fold few-row ones).
func (r *Runner) normKeptRouted(in NormedInput, l int, ps []Proj, outs []Tensor) bool {
	if r.keeper == nil || r.routing.seqs == 0 {
		return false
	}
	all, ws := r.withGates(in.X, l, ps, outs, r.groupWeights(l, ps))
	h, ok := r.keeper.NormKeptMatMulShared(all, in, ws)
	if !ok {
		for _, p := range ps {
			r.routing.pre[p] = Tensor{} // projShared makes the gates' products again
		}
		return false
	}
	r.routedAfter(h, l, ps, outs)
	return true
}

// groupWeights returns layer l's weights of the projections ps (in r.groupWs: steps allocate nothing).
func (r *Runner) groupWeights(l int, ps []Proj) []Tensor {
	ws := r.groupWs[:len(ps)]
	for i, p := range ps {
		ws[i] = r.W.Layers[l].W[p]
	}
	return ws
}

// addBiases adds the biases of layer l's projections ps to their products outs.
func (r *Runner) addBiases(l int, ps []Proj, outs []Tensor) {
	L := &r.W.Layers[l]
	for i, p := range ps {
		if L.Bias[p].Rows > 0 {
			r.B.AddBias(outs[i], L.Bias[p])
		}
	}
}

// foldSegs returns the LoRA segments of the projections ps for a folded products call
// (LoRAFolder), in r.groupSegs: at least one projection is adapted and no sequence is routed;
// ok is false otherwise. Which layouts fold is the backend's to say. The answer depends only on
// the step key's segment layout.
func (r *Runner) foldSegs(ps []Proj) (segs [][]LoRASeg, ok bool) {
	if r.folder == nil || r.routing.seqs > 0 {
		return nil, false
	}
	segs = r.groupSegs[:len(ps)]
	for i, p := range ps {
		segs[i] = r.segs[p]
		ok = ok || len(segs[i]) > 0
	}
	return segs, ok
}

// foldBiasesOf returns layer l's biases of the projections ps (rows 0 where there is none).
func (r *Runner) foldBiasesOf(l int, ps []Proj) []Tensor {
	bs := r.foldBiases[:len(ps)]
	for i, p := range ps {
		bs[i] = r.W.Layers[l].Bias[p]
	}
	return bs
}

// folded computes the products outs of the projections ps of in with their biases and LoRA
// deltas in one LoRAFolder call where the backend folds the shrinks into the products (proj and
// projShared's work, the same additions in the same order), reporting whether it did.
func (r *Runner) folded(in Tensor, l int, ps []Proj, outs []Tensor) bool {
	segs, ok := r.foldSegs(ps)
	return ok && r.folder.FoldedProducts(outs, in, r.groupWeights(l, ps), r.foldBiasesOf(l, ps), segs)
}

// normFolded is folded on in's normed rows, the RMSNorm folded into the same call (NormFuser's
// contract: the caller moves the residual with fusedResidual).
func (r *Runner) normFolded(in NormedInput, l int, ps []Proj, outs []Tensor) bool {
	segs, ok := r.foldSegs(ps)
	return ok && r.folder.NormFoldedProducts(outs, in, r.groupWeights(l, ps), r.foldBiasesOf(l, ps), segs)
}

// normFusable reports whether the RMSNorm before the projections ps of layer l may be folded
// into their products (NormFuser): nothing else reads the normed state, i.e. no LoRA segment
// on ps (its shrink reads it) and no routed sequence in the step (its router gates read it).
// The answer depends only on the step key's adapter layout and routing.
func (r *Runner) normFusable(l int, ps []Proj) bool {
	if r.normer == nil || r.routing.seqs > 0 {
		return false
	}
	for _, p := range ps {
		if len(r.segs[p]) > 0 {
			return false
		}
	}
	return true
}

// fusedResidual returns the residual and normed-state buffers after a norm fused with its
// products: with a residual add the new residual is in in.Next (the normed-state buffer, which
// the fused products leave unused), so the two buffers swap roles; without one, nothing moved.
func fusedResidual(in NormedInput) (x, h Tensor) {
	if in.Delta.Rows > 0 {
		return in.Next, in.X
	}
	return in.X, in.Next
}

// gateUpNormFused computes x += delta; act = silu(gate(h)) * up(h) with h = RMSNorm(x)·w (in)
// in one backend call (NormFuser) where nothing is added between the products and the
// activation and nothing else reads h (normFusable, no bias on gate or up).
func (r *Runner) gateUpNormFused(act Tensor, in NormedInput, l int) bool {
	L := &r.W.Layers[l]
	if !r.normFusable(l, gateUpProjs) || L.Bias[ProjGate].Rows > 0 || L.Bias[ProjUp].Rows > 0 {
		return false
	}
	return r.normer.NormGateUpSiLU(act, in, L.W[ProjGate], L.W[ProjUp])
}

// qkvLoRARoPE computes x += delta; h = RMSNorm(x); q, k, v = h's products with their LoRA
// deltas, rotated and stored to layer l's cache, in one backend call (LoRARoPEer) where the step
// adapts q, k or v, routes nothing and nothing comes between the products and RoPE (no bias,
// no Q/K norm).
func (r *Runner) qkvLoRARoPE(q, k, v Tensor, in NormedInput, l int) bool {
	L := &r.W.Layers[l]
	segs := [3][]LoRASeg{r.segs[ProjQ], r.segs[ProjK], r.segs[ProjV]}
	if r.loraRoPE == nil || r.routing.seqs > 0 || r.Cfg.QKNorm || len(segs[0])+len(segs[1])+len(segs[2]) == 0 ||
		L.Bias[ProjQ].Rows > 0 || L.Bias[ProjK].Rows > 0 || L.Bias[ProjV].Rows > 0 {
		return false
	}
	ws := [3]Tensor{L.W[ProjQ], L.W[ProjK], L.W[ProjV]}
	return r.loraRoPE.NormQKVLoRARoPE(q, k, v, in, ws, segs, l, r.Cfg.NumHeads, r.Cfg.NumKVHeads, r.rope)
}

// gateUpLoRASwiGLU computes x += delta; act = silu(gate(h)) * up(h) with gate and up's LoRA
// deltas, and o = act·W_downᵀ, in one backend call (LoRASwiGLUer) where the step adapts gate or
// up, routes nothing and neither has a bias (nothing else is added between the products and the
// activation, and only the LoRA shrinks read h).
func (r *Runner) gateUpLoRASwiGLU(o, act, gate, up Tensor, in NormedInput, l int) bool {
	L := &r.W.Layers[l]
	segs := [2][]LoRASeg{r.segs[ProjGate], r.segs[ProjUp]}
	if r.loraSwiGLU == nil || r.routing.seqs > 0 || len(segs[0])+len(segs[1]) == 0 || L.Bias[ProjGate].Rows > 0 || L.Bias[ProjUp].Rows > 0 {
		return false
	}
	return r.loraSwiGLU.NormGateUpLoRASwiGLU(o, act, gate, up, in, L.W[ProjGate], L.W[ProjUp], L.W[ProjDown], segs)
}

// gateUpFused computes act = silu(gate(h)) * up(h) in one backend call where that gives the
// same result: the backend fuses it (DecodeFuser) and nothing is added between the products
// and the activation (no bias, no LoRA segment, no routed sequence in the step).
func (r *Runner) gateUpFused(act, h Tensor, l int) bool {
	L := &r.W.Layers[l]
	if r.fuser == nil || r.routing.seqs > 0 || len(r.segs[ProjGate]) > 0 || len(r.segs[ProjUp]) > 0 ||
		L.Bias[ProjGate].Rows > 0 || L.Bias[ProjUp].Rows > 0 {
		return false
	}
	return r.fuser.GateUpSiLU(act, h, L.W[ProjGate], L.W[ProjUp])
}

// segSource is what a sequence gives a step's LoRA segments: its adapter and its rows.
type segSource struct {
	a        *Adapter
	start, n int
}

// loadSegs makes segCache hold every layer's segments for the step: as they are when each
// sequence has the adapter and rows it had when they were built (consecutive decode steps of
// the same sequences), else built anew. Rebuilding is what a step cost before: at batch 64 on 64
// adapters 14,336 segments, host time the device waits for (BenchmarkStepHostWalk). Steps with
// routed sequences build theirs layer by layer (routeProj appends to them) and leave the cache
// as it is. Either way stepVersion names the segments the step stages (SegmentKeeper): the
// cache's version, or one for the routed step's plain runs, kept while the next routed step has
// the same. Adapters do not change while a sequence holds them, and segFrom and routedFrom keep
// each one they name alive, so an adapter freed since cannot come back at the same address.
// Steps allocate nothing here once the lists have grown to the batch (sized for MaxTokens).
func (r *Runner) loadSegs(s *Step, adapters []*Adapter) {
	merge := r.mergesSegs()
	if r.routing.seqs > 0 {
		// The plain sequences' runs, from which layerSegs builds each layer's segments as the
		// walk goes (routeProj appends the routed rows' to them). Their version is what a
		// SegmentKeeper keeps; the routed rows' segments the device routes inside the step.
		r.loadRuns(s, adapters, merge)
		if r.routedVersion == 0 || !slices.Equal(r.routedFrom, r.segRuns) {
			r.routedFrom = append(r.routedFrom[:0], r.segRuns...)
			r.routedVersion = segVersions.Add(1)
		}
		r.stepVersion = r.routedVersion
		return
	}
	r.stepVersion = 0
	same := r.segVersion != 0 && len(r.segFrom) == len(adapters) && r.segMerged == merge
	for i := 0; same && i < len(adapters); i++ {
		f, sq := r.segFrom[i], s.Seqs[i]
		same = f.a == adapters[i] && f.start == sq.Start && f.n == sq.N
	}
	if same {
		r.stepVersion = r.segVersion
		return
	}
	// Invalid until the whole rebuild is done: a step that panics in it (recovered by the
	// engine) must not leave a half-rebuilt cache for a later step to take.
	r.segVersion = 0
	r.segKey = r.segKey[:0]
	r.segMerged = merge
	r.loadRuns(s, adapters, merge)
	for l := range r.segCache {
		r.buildSegs(&r.segCache[l], l, r.segRuns)
		for _, segs := range r.segCache[l] {
			rows, rank := 0, 0
			for _, sg := range segs {
				rows, rank = max(rows, sg.N), max(rank, sg.A.Rows)
			}
			r.segKey = appendSegLayout(r.segKey, len(segs), rows, rank)
		}
	}
	r.segFrom = r.segFrom[:0]
	for i, a := range adapters {
		r.segFrom = append(r.segFrom, segSource{a, s.Seqs[i].Start, s.Seqs[i].N})
	}
	r.segVersion = segVersions.Add(1)
	r.stepVersion = r.segVersion
}

// layerSegs sets r.segs to layer l's segments: loadSegs's for the layer, or a routed step's
// built now from its runs.
func (r *Runner) layerSegs(l int) {
	if r.routing.seqs > 0 {
		r.buildSegs(&r.routedSegs, l, r.segRuns)
		r.segs = r.routedSegs
		return
	}
	r.segs = r.segCache[l]
}

// loadRuns sets r.segRuns to the step's runs of rows on one plain adapter, in step order: a
// sequence each, or with merge (SegmentMerger) one for each run of adjacent sequences on the same
// adapter whose rows follow each other. A run becomes one LoRA segment on every projection its
// adapter adapts, in every layer: the runs fix the step's segment layout.
func (r *Runner) loadRuns(s *Step, adapters []*Adapter, merge bool) {
	runs := r.segRuns[:0]
	var last *Adapter // the adapter of the sequence before, when its rows end where this one's start
	for i, a := range adapters {
		sq := s.Seqs[i]
		switch {
		case a == nil || a.Routing != nil:
			last = nil
		case merge && a == last && sq.Start == runs[len(runs)-1].start+runs[len(runs)-1].n:
			runs[len(runs)-1].n += sq.N
		default:
			runs = append(runs, segSource{a, sq.Start, sq.N})
			last = a
		}
	}
	r.segRuns = runs
}

// mergesSegs reports whether the backend wants adjacent sequences on one adapter in one segment
// (SegmentMerger).
func (r *Runner) mergesSegs() bool {
	m, ok := r.B.(SegmentMerger)
	return ok && m.MergesSegments()
}

// buildSegs lists into dst, per projection, layer l's segment of each run (loadRuns).
func (r *Runner) buildSegs(dst *[NumProj][]LoRASeg, l int, runs []segSource) {
	for p := range dst {
		dst[p] = dst[p][:0]
	}
	// By index and pointer, not range copies: a batch-64 step on 64 adapters puts 14,336
	// segments, all of it host time the device waits for (BenchmarkStepHostWalk).
	for i := range runs {
		rn := &runs[i]
		mods := &rn.a.Modules[l]
		for p := range mods {
			if lw := mods[p]; lw != nil {
				dst[p] = append(dst[p], LoRASeg{Start: rn.start, N: rn.n, A: lw.A, B: lw.B, Scale: lw.Scale})
			}
		}
	}
}
