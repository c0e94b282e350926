package model

import "fmt"

// routeState is the runner's per-step bookkeeping for routed sequences, and the buffers routing
// reuses from step to step (grown when a router with bigger gates or k first runs, never per step).
type routeState struct {
	s        *Step
	adapters []*Adapter
	seqs     int // routed sequences in this step

	// gateOut holds gate logits on the backend, [MaxTokens, gateCols] each: one per projection of
	// a shared-input group whose logits are computed beside the base products (gatedProducts;
	// only the first without a SharedMatMuler, the others then stay unallocated). They are views
	// of gateBuf, one allocation, so consecutive ones lie the same distance apart: with the
	// gates laid out as router.UploadGates lays them, a backend can make a group's gate products
	// in one strided-batched call.
	gateOut  [maxSharedGroup]Tensor
	gateBuf  Tensor
	gateCols int
	// pre[p] views the gate logits of projection p for every row of the step when the base
	// product's call computed them (gatedProducts); Rows == 0 otherwise. routeProj consumes it.
	pre     [NumProj]Tensor
	host    []float32 // the same logits on the host
	choices []Choice
	// passes[j] holds every routed row's (j+1)-th choice. Each LoRA call sees a row at most
	// once, so backends whose LoRA needs disjoint rows (CUDA's expand kernel) sum correctly.
	passes [][]LoRASeg
	trace  []int32 // [MaxTokens*NumLayers]: each row's top-1 expert per layer, -1 for none
	err    error

	dev      DeviceRouter      // the backend, when it routes on the device
	groupDev DeviceGroupRouter // the same backend, when it also routes the projections of one input together
	folder   RoutedFolder      // the same backend, when it folds a few-row step's expert shrinks into the products
	// groupRPs and groupLogits are a routeShared call's arguments, kept here so steps allocate nothing.
	groupRPs    [maxSharedGroup]*RoutedProj
	groupLogits [maxSharedGroup]Tensor
	devTrace    Tensor // [MaxTokens, NumLayers] F32 trace the device writes
	traceF      []float32
}

// beginRouting prepares a step's routed sequences: checks their routers against the model and
// grows the scratch buffers if this is the biggest router seen so far.
func (r *Runner) beginRouting(s *Step, adapters []*Adapter) error {
	rs := &r.routing
	rs.s, rs.adapters, rs.seqs, rs.err = s, adapters, 0, nil
	rows, k := 0, 0
	for _, a := range adapters {
		if a == nil || a.Routing == nil {
			continue
		}
		rt := a.Routing
		if len(rt.Layers) != r.Cfg.NumLayers || len(rt.TraceProj) != r.Cfg.NumLayers {
			return fmt.Errorf("runner: router %q has %d layers, the model %d", rt.Name, len(rt.Layers), r.Cfg.NumLayers)
		}
		rs.seqs++
		rows, k = max(rows, rt.MaxGateRows()), max(k, rt.MaxTopK())
	}
	if rs.seqs == 0 {
		return nil
	}
	if rows > rs.gateCols {
		if rs.gateBuf.Rows > 0 {
			r.B.Free(rs.gateBuf)
		}
		rs.gateOut, rs.gateBuf = [maxSharedGroup]Tensor{}, Tensor{}
		// One buffer for a group's own gate GEMM; one per projection of the largest group where
		// the base products' call computes the logits (the groups are q/k/v, gate/up, o, down).
		n := 1
		if r.shared != nil {
			n = len(rs.gateOut)
		}
		rs.gateBuf = r.B.Alloc(n*r.Opt.MaxTokens, rows)
		for i := range n {
			rs.gateOut[i] = rs.gateBuf.Slice(i*r.Opt.MaxTokens, r.Opt.MaxTokens)
		}
		rs.gateCols = rows
		if err := backendErr(r.B); err != nil {
			rs.gateCols = 0
			return fmt.Errorf("runner: allocating gate logits: %w", err)
		}
		rs.host = make([]float32, r.Opt.MaxTokens*rows)
	}
	for len(rs.passes) < k-1 {
		rs.passes = append(rs.passes, make([]LoRASeg, 0, r.Opt.MaxTokens))
	}
	if rs.trace == nil {
		rs.trace = make([]int32, r.Opt.MaxTokens*r.Cfg.NumLayers)
		if dr, ok := r.B.(DeviceRouter); ok && !r.Opt.HostRouting {
			rs.dev = dr
			rs.groupDev, _ = dr.(DeviceGroupRouter)
			rs.folder, _ = dr.(RoutedFolder)
			rs.devTrace = r.B.Alloc(r.Opt.MaxTokens, r.Cfg.NumLayers)
			rs.traceF = make([]float32, r.Opt.MaxTokens*r.Cfg.NumLayers)
		}
	}
	n := len(s.Tokens) * r.Cfg.NumLayers
	tr := rs.trace[:n]
	for i := range tr {
		tr[i] = -1
	}
	if rs.dev != nil {
		for i := range rs.traceF[:n] {
			rs.traceF[i] = -1
		}
		return r.B.Write(rs.devTrace.Slice(0, len(s.Tokens)), rs.traceF[:n])
	}
	return nil
}

// routeProj routes the rows of every routed sequence through the gate of (layer l, projection p)
// and returns the LoRA segments to apply: segs (the plain adapters' segments) with each routed
// row's first choice appended, and the further passes. in is the projection's input.
//
// Gate logits come from the base products' call where one router serves every routed row
// (gatedProducts), else from one gate GEMM per group of rows; the backend routes them on the
// device where it can (model.DeviceRouter), else they come back to the host, where Route picks
// the experts (the reference semantics) at the price of one device-to-host read per group.
func (r *Runner) routeProj(l int, p Proj, in, out Tensor, segs []LoRASeg) ([]LoRASeg, [][]LoRASeg) {
	rs := &r.routing
	for j := range rs.passes {
		rs.passes[j] = rs.passes[j][:0]
	}
	npass := 0
	pre := rs.pre[p]
	rs.pre[p] = Tensor{} // this layer's logits only: a later layer's call computes its own
	// One gate GEMM and one routing call for each group of rows (nextRouteGroup).
	for g, i := r.nextRouteGroup(l, p, 0); g.rp != nil; g, i = r.nextRouteGroup(l, p, i) {
		segs, npass = r.routeGroup(l, g, in, out, pre, segs, npass)
	}
	r.segs[p], r.routedSegs[p] = segs, segs // keep any capacity append grew
	return segs, rs.passes[:npass]
}

// routedFolded computes the products outs of the projections ps of in with their biases and
// routed deltas in one RoutedFolder call where one routing covers every row of the step for each
// of them and no plain adapter segment does (a routed batch-1 step), reporting whether it did
// (the base products, gatedProducts and the routing then do not run).
func (r *Runner) routedFolded(in Tensor, l int, ps []Proj, outs []Tensor) bool {
	rs := &r.routing
	if rs.folder == nil || len(ps) > maxSharedGroup {
		return false
	}
	rps, traced := rs.groupRPs[:len(ps)], -1
	for i, p := range ps {
		g, ok := r.routeGroupOf(l, p)
		if !ok || g.start != 0 || g.n != in.Rows || len(r.segs[p]) > 0 {
			return false
		}
		if g.traced {
			traced = i
		}
		rps[i] = g.rp
	}
	trace := Tensor{}
	if traced >= 0 {
		trace = rs.devTrace
	}
	return rs.folder.RoutedFoldedProducts(outs, in, r.groupWeights(l, ps), r.foldBiasesOf(l, ps), rps, trace, traced, l)
}

// routeShared adds the biases and the routed deltas of the projections ps, which read in, in
// one DeviceGroupRouter call where each of them is routed by exactly one group of rows, the same
// rows for all, from logits the base products' call computed (gatedProducts), with no plain
// adapter segment beside; it reports whether it did the projections' work after their products
// (when the backend declines the group, projLoRA routes each projection after the biases).
func (r *Runner) routeShared(in Tensor, l int, ps []Proj, outs []Tensor) bool {
	rs := &r.routing
	if rs.groupDev == nil || len(ps) < 2 || len(ps) > maxSharedGroup {
		return false
	}
	rps, logits, traced := rs.groupRPs[:len(ps)], rs.groupLogits[:len(ps)], -1
	var first routeGroup
	for i, p := range ps {
		g, ok := r.routeGroupOf(l, p)
		if !ok || len(r.segs[p]) > 0 || rs.pre[p].Rows == 0 || i > 0 && (g.start != first.start || g.n != first.n) {
			return false
		}
		if i == 0 {
			first = g
		}
		if g.traced {
			traced = i
		}
		rps[i], logits[i] = g.rp, rs.pre[p].Slice(g.start, g.n)
	}
	r.addBiases(l, ps, outs)
	trace := Tensor{}
	if traced >= 0 {
		trace = rs.devTrace
	}
	if !rs.groupDev.RouteLoRAGroup(outs, in, logits, first.start, first.n, rps, trace, traced, l) {
		for i, p := range ps {
			r.projLoRA(outs[i], in, l, p)
		}
		return true
	}
	for _, p := range ps {
		rs.pre[p] = Tensor{} // consumed, as routeProj consumes it
	}
	return true
}

// routeGroupOf returns the one group of rows routed through (layer l, projection p) in this
// step (nextRouteGroup's); false when there is none or more than one. The answer depends only
// on the step's routings, which the step key holds.
func (r *Runner) routeGroupOf(l int, p Proj) (routeGroup, bool) {
	g, i := r.nextRouteGroup(l, p, 0)
	if more, _ := r.nextRouteGroup(l, p, i); g.rp == nil || more.rp != nil {
		return routeGroup{}, false
	}
	return g, true
}

// nextRouteGroup returns the first group of rows routed through (layer l, projection p) among
// the step's sequences from index from on, and the index after it (g.rp nil: none left).
// Adjacent routed sequences through the same gate and experts (requests for one router) form
// one group.
func (r *Runner) nextRouteGroup(l int, p Proj, from int) (g routeGroup, next int) {
	rs := &r.routing
	for i := from; i < len(rs.adapters); i++ {
		a := rs.adapters[i]
		if a == nil || a.Routing == nil {
			continue
		}
		rp, sq := a.Routing.Layers[l][p], rs.s.Seqs[i]
		if rp == nil || sq.N == 0 {
			continue
		}
		traced := a.Routing.TraceProj[l] == p
		if g.rp != nil && g.start+g.n == sq.Start && g.traced == traced && sameRoute(g.rp, rp) {
			g.n += sq.N
			continue
		}
		if g.rp != nil {
			return g, i
		}
		g = routeGroup{rp: rp, name: a.Routing.Name, traced: traced, start: sq.Start, n: sq.N}
	}
	return g, len(rs.adapters)
}

// routeGroup is a run of rows routed through one gate.
type routeGroup struct {
	rp       *RoutedProj
	name     string
	traced   bool
	start, n int
}

// sameRoute reports whether two routed projections route identically: the same object, or the
// same bundle gate (Source) with the same settings over the same expert weights.
func sameRoute(a, b *RoutedProj) bool {
	if a == b {
		return true
	}
	if a.Source == nil || a.Source != b.Source || a.TopK != b.TopK || a.Temperature != b.Temperature || a.Nulls != b.Nulls ||
		len(a.Experts) != len(b.Experts) {
		return false
	}
	for j := range a.Experts {
		if a.Experts[j] != b.Experts[j] || a.IDs[j] != b.IDs[j] {
			return false
		}
	}
	return true
}

// sharedGate returns the gate that every routed sequence of the step with rows in it uses on
// (layer l, projection p), or nil when there is none or they use different gates. The answer
// depends on the sequences' routings only, which the step key holds.
func (r *Runner) sharedGate(l int, p Proj) *RoutedProj {
	rs := &r.routing
	var one *RoutedProj
	for i, a := range rs.adapters {
		if a == nil || a.Routing == nil || rs.s.Seqs[i].N == 0 {
			continue
		}
		rp := a.Routing.Layers[l][p]
		switch {
		case rp == nil:
		case one == nil:
			one = rp
		case !sameRoute(one, rp):
			return nil
		}
	}
	return one
}

// gatedProducts computes the base products outs[i] = in · ws[i]ᵀ of the projections ps (which
// share the input in), and in the same SharedMatMuler call the gate logits of every routed
// projection among them whose gate serves all routed rows (sharedGate), for every row of the
// step: a routed decode layer's seven gate GEMMs then ride on the base products' launches
// instead of costing seven launches of their own (three more products in q/k/v's call at most:
// model.MaxSharedProducts). The logits wait in rs.pre for routeProj; rows of sequences the gate
// does not route are computed and never read. outs and ws must have room for the gates
// (capacity len + len(ps): r.groupOuts, r.groupWs). Without routing, or without a backend that
// shares, it is the plain products.
func (r *Runner) gatedProducts(in Tensor, l int, ps []Proj, outs, ws []Tensor) {
	outs, ws = r.withGates(in, l, ps, outs, ws)
	if r.shared == nil || !r.shared.MatMulShared(outs, in, ws) {
		for i := range ws {
			r.B.MatMul(outs[i], in, ws[i])
		}
	}
}

// withGates appends to the base products outs, ws of the projections ps (which read in) the gate
// products that ride beside them (gatedProducts says which), noting each one's logits in rs.pre.
func (r *Runner) withGates(in Tensor, l int, ps []Proj, outs, ws []Tensor) ([]Tensor, []Tensor) {
	if rs := &r.routing; rs.seqs > 0 && r.shared != nil {
		for i, p := range ps {
			if rp := r.sharedGate(l, p); rp != nil {
				lg := rs.gateOut[i]
				lg.Rows, lg.Cols = in.Rows, rp.Gate.Rows
				rs.pre[p] = lg
				outs, ws = append(outs, lg), append(ws, rp.Gate)
			}
		}
	}
	return outs, ws
}

// siluDownProducts makes SwiGLU and the down projection's product in one SiLUMulMatMuler call,
// in routed steps with the down gate's logits beside the product as gatedProducts puts them
// (routeProj consumes them next): false, nothing done, where the backend declines.
func (r *Runner) siluDownProducts(o, act, gate, up Tensor, l int) bool {
	ps := allProjs[ProjDown : ProjDown+1]
	r.groupOuts[0] = o
	outs, ws := r.withGates(act, l, ps, r.groupOuts[:1], r.groupWeights(l, ps))
	if r.siluDown.SiLUMulMatMul(outs, act, gate, up, ws) {
		return true
	}
	r.routing.pre[ProjDown] = Tensor{} // proj makes the gate's product again
	return false
}

// routeGroup routes a group's rows by their gate logits (pre's rows when the base product's call
// computed them, else a gate GEMM of the group's rows here): on the device when the backend can,
// else on the host, appending the first choices to segs and the others to the passes.
func (r *Runner) routeGroup(l int, g routeGroup, in, out, pre Tensor, segs []LoRASeg, npass int) ([]LoRASeg, int) {
	rs := &r.routing
	rp := g.rp
	rows := rp.Gate.Rows
	var lg Tensor
	if pre.Rows > 0 {
		lg = pre.Slice(g.start, g.n)
	} else {
		lg = rs.gateOut[0]
		lg.Rows, lg.Cols = g.n, rows
		r.B.MatMul(lg, in.Slice(g.start, g.n), rp.Gate)
	}
	if rs.dev != nil {
		tr := Tensor{}
		if g.traced {
			tr = rs.devTrace
		}
		rs.dev.RouteLoRA(out, in, lg, g.start, g.n, rp, tr, l)
		return segs, npass
	}
	host := rs.host[:g.n*rows]
	if err := r.B.Read(lg, host); err != nil {
		if rs.err == nil {
			rs.err = fmt.Errorf("runner: reading gate logits of router %q: %w", g.name, err)
		}
		return segs, npass
	}
	nl := r.Cfg.NumLayers
	for row := 0; row < g.n; row++ {
		cs := Route(host[row*rows:(row+1)*rows], rp.TopK, rp.Temperature, rp.Nulls, rs.choices)
		rs.choices = cs[:0]
		if g.traced {
			id := int32(-1)
			if len(cs) > 0 {
				id = rp.IDs[cs[0].Expert]
			}
			rs.trace[(g.start+row)*nl+l] = id
		}
		for j, c := range cs {
			m := rp.Experts[c.Expert]
			if m == nil || c.Weight == 0 {
				continue // no LoRA on this projection: adds nothing, weight not redistributed
			}
			seg := LoRASeg{Start: g.start + row, N: 1, A: m.A, B: m.B, Scale: c.Weight * m.Scale}
			if j == 0 {
				segs = append(segs, seg)
			} else {
				rs.passes[j-1] = append(rs.passes[j-1], seg)
				npass = max(npass, j)
			}
		}
	}
	return segs, npass
}

// endRouting brings a device-routed step's trace to the host.
func (r *Runner) endRouting(n int) error {
	rs := &r.routing
	if rs.seqs == 0 || rs.dev == nil {
		return nil
	}
	nl := r.Cfg.NumLayers
	if err := r.B.Read(rs.devTrace.Slice(0, n), rs.traceF[:n*nl]); err != nil {
		return err
	}
	for i, v := range rs.traceF[:n*nl] {
		rs.trace[i] = int32(v)
	}
	return nil
}

// RouteTrace returns, for row of the last step, the top-1 expert each layer's router chose
// (an index into Routing.Experts; -1 where the layer has no gate or chose only null experts),
// traced at the first routed projection of each layer. Only rows of routed sequences carry
// choices. The slice is valid until the next step.
func (r *Runner) RouteTrace(row int) []int32 {
	nl := r.Cfg.NumLayers
	if r.routing.trace == nil || row < 0 || (row+1)*nl > len(r.routing.trace) {
		return nil
	}
	return r.routing.trace[row*nl : (row+1)*nl]
}

// ReleaseRouting frees what a device router cached for rt (DeviceRouter.ReleaseRouting); a
// no-op on backends that route on the host. Call it once no step will run rt again.
func (r *Runner) ReleaseRouting(rt *Routing) {
	if dr, ok := r.B.(DeviceRouter); ok {
		dr.ReleaseRouting(rt)
	}
}
