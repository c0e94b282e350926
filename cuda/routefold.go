//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"

	"github.com/loraplex/loraplex/model"
)

var _ model.RoutedFolder = (*Backend)(nil)

// routeFoldArgs are a routed fold's launch arguments: the products' parts with router tables
// (s_gemv_parts_tab) and the route-and-expand members (s_route_fold_expand), kept in the backend
// (a cgo call would move stack arrays to the heap every call).
type routeFoldArgs struct {
	routeMembers
	ws, wtabs, ys, ends [gemvPartsMax]C.uintptr_t
	tranks              [gemvPartsMax]C.int
	ts                  [loraGroupMax]C.uintptr_t
	mranks              [loraGroupMax]C.int
}

// routeFoldMaxCols bounds a router table part (experts x largest rank): beyond it the dense
// shrinks cost more than the launches they save.
const routeFoldMaxCols = 4096

// SetRoutedFold turns the routed fold (LORAPLEX_ROUTED_FOLD) on or off for the following steps
// (recorded graphs hold the other path's launches, so they are dropped).
func (b *Backend) SetRoutedFold(on bool) {
	setSwitch(b, &b.routedFold, on)
}

// RoutedFoldCount is the number of routed folds the backend has taken (for tests).
func (b *Backend) RoutedFoldCount() int { return b.routedFolds }

// RoutedFoldedProducts implements model.RoutedFolder for steps the GEMV kernel takes (at most
// gemvRows rows, default mode): one parts launch computes the base products, each member's gate
// logits and every expert's shrink (lp_gemv_parts' wtab), all into the LoRA scratch but the
// products; then the biases; then lp_route_fold_expand routes each row and adds its choices
// (kernels/lora.cu, "Routed fold"). It declines a gate past the route kernel's limits, a table
// no expert of which adapts the projection, an A factor off 16 bytes, a table wider than
// routeFoldMaxCols, or more parts than one launch takes.
func (b *Backend) RoutedFoldedProducts(outs []model.Tensor, x model.Tensor, ws, biases []model.Tensor, rps []*model.RoutedProj,
	trace model.Tensor, traced, layer int) bool {
	members := len(ws)
	if len(outs) != members || len(biases) != members || len(rps) != members {
		panic(fmt.Sprintf("cuda: RoutedFoldedProducts of %d outputs, %d weights, %d biases, %d routings", len(outs), members, len(biases), len(rps)))
	}
	aligned := checkShared("RoutedFoldedProducts", outs, x, ws) && x.Cols%8 == 0 && uintptr(ptr(x))%16 == 0
	n := x.Rows
	for i, rp := range rps {
		tr := model.Tensor{}
		if i == traced {
			tr = trace
		}
		// The logits' shape is the gate's, n rows: what RouteLoRA would have been given.
		checkRouted(outs[i], x, model.Tensor{Rows: n, Cols: rp.Gate.Rows, DType: model.F32}, 0, n, rp, tr, layer)
		if biases[i].Rows > 0 && (biases[i].Cols != outs[i].Cols || biases[i].DType != model.F32) {
			panic(fmt.Sprintf("cuda: RoutedFoldedProducts bias %s for %s", biases[i].Shape(), outs[i].Shape()))
		}
	}
	if !b.routedFold || !b.fusedDecode || b.batchInvariant || n == 0 || n > b.gemvRows || !aligned || members > loraGroupMax ||
		3*members > gemvPartsMax {
		return false
	}
	for _, rp := range rps {
		real := rp.Gate.Rows - rp.Nulls
		if rp.Gate.Rows > maxRouteRows || rp.TopK > maxRouteK || real < 1 || uintptr(ptr(rp.Gate))%16 != 0 || rp.Gate.DType != model.BF16 {
			return false
		}
		for _, m := range rp.Experts {
			if m != nil && uintptr(ptr(m.A))%16 != 0 {
				return false
			}
		}
	}
	if b.failed() {
		return true
	}
	var tabs [loraGroupMax]*routeTable
	tmp := 0
	for i, rp := range rps {
		if tabs[i] = b.routeTable(rp, b.mode == modeDirect); tabs[i] == nil {
			if b.mode != modeDirect {
				b.broken = true // the rerun builds the table
			}
			return true
		}
		cols := len(rp.Experts) * tabs[i].maxRank
		if tabs[i].maxRank == 0 || cols > routeFoldMaxCols {
			return false
		}
		tmp += n * (rp.Gate.Rows + cols)
	}
	if !b.reserve(&b.loraTmp, &b.loraCap, tmp, 4) {
		return true
	}
	// Parts: the products, then each member's gate and its table, into the scratch.
	a := &b.routeFoldArgs
	end, part, off := 0, 0, 0
	addPart := func(w, wtab C.uintptr_t, trank, cols int, y C.uintptr_t) {
		end += cols
		a.ws[part], a.wtabs[part], a.tranks[part], a.ys[part], a.ends[part] = w, wtab, C.int(trank), y, C.uintptr_t(end)
		part++
	}
	for i, w := range ws {
		addPart(ptr(w), 0, 0, w.Rows, ptr(outs[i]))
	}
	for i, rp := range rps {
		lg := C.uintptr_t(b.loraTmp + uintptr(4*off))
		off += n * rp.Gate.Rows
		t := C.uintptr_t(b.loraTmp + uintptr(4*off))
		off += n * len(rp.Experts) * tabs[i].maxRank
		addPart(ptr(rp.Gate), 0, 0, rp.Gate.Rows, lg)
		addPart(0, C.uintptr_t(tabs[i].ptr), tabs[i].maxRank, len(rp.Experts)*tabs[i].maxRank, t)
		tr := model.Tensor{}
		if i == traced {
			tr = trace
		}
		a.set(i, rp, tabs[i], lg, outs[i], tr)
		a.ts[i], a.mranks[i] = t, C.int(tabs[i].maxRank)
	}
	b.routedFolds++
	if b.mode == modeReplay {
		// The recording holds the launches (RouteLoRA counts its replays the same way).
		b.countReplay()
	}
	if b.launch() {
		b.ok("gemv parts (routed fold)", C.s_gemv_parts_tab(C.int(n), C.int(x.Cols), ptr(x), &a.ws[0], &a.wtabs[0], &a.tranks[0], &a.ys[0],
			&a.ends[0], C.int(part), b.gemvOpts(ws...), b.work()))
	}
	for i, bias := range biases {
		if bias.Rows > 0 {
			b.AddBias(outs[i], bias)
		}
	}
	if b.launch() {
		b.ok("route fold expand", C.s_route_fold_expand(&a.logits[0], &a.rows[0], &a.k[0], &a.temps[0], &a.nulls[0], &a.passes[0],
			&a.experts[0], &a.traces[0], C.int(trace.Cols), C.int(layer), &a.ts[0], &a.mranks[0], &a.outs[0], &a.dims[0],
			C.int(members), C.int(n), cflag(b.routeStaged), b.work()))
	}
	return true
}
