//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// Router limits of the top-k kernel (kernels/shapes.h); larger gates are routed on the host.
const (
	maxRouteRows = int(C.LP_ROUTE_MAX_ROWS)
	maxRouteK    = int(C.LP_ROUTE_MAX_K)
	// Rows of one routed call (lp_lora_routed's limit, kernels/shapes.h).
	maxRoutedRows = int(C.LP_LORA_ROUTED_MAX_ROWS)
	// Choices (rows x passes) of one expert-major routed call (lp_route_lora_group_em).
	maxEMChoices = int(C.LP_ROUTE_EM_MAX_CHOICES)
)

var _ model.DeviceRouter = (*Backend)(nil)

// routeTable is a RoutedProj's experts on the device (lp_route_expert per real gate row).
//
// The engine resolves a fresh Routing for every routed sequence and releases it when the
// sequence ends, so allocating a table per RoutedProj would cost 7 x layers cudaMalloc and
// synchronous copies at a sequence's first step and as many cudaFree (each a device-wide
// wait) at its end. Tables are therefore shared by content instead: sequences of the same
// router over the same resident adapters make byte-identical tables (same A/B addresses,
// ranks, ids, scales) and reference one copy. A table nobody references stays cached (up to
// maxIdleRouteTables) for the next sequence; that is safe even after its adapters are freed,
// because a table is only ever found again by a RoutedProj whose experts have exactly its
// content, i.e. live at those addresses now.
type routeTable struct {
	b       *Backend
	key     string // the host bytes of the table
	ptr     uintptr
	maxRank int // largest expert rank on this projection (0: no expert adapts it)
	refs    int
	idleAt  uint64 // when refs last dropped to 0 (eviction order)
}

// routeCache holds one backend's tables (a package-level registry keeps Backend's fields as
// they are). The engine loop builds and releases tables; Generate may release unused ones.
//
// It also keeps the bookkeeping of routed steps under CUDA graphs: a recording bakes in the
// addresses of the tables its routed projections used, so freeing any table (freed counts
// them) makes BeginStep drop every recording (dropped is the count it last acted on).
type routeCache struct {
	mu     sync.Mutex
	tables map[string]*routeTable
	idle   int
	clock  uint64

	freed, dropped uint64
	replays        int             // RouteLoRA calls served by a replayed recording
	noRecord       map[string]bool // step keys whose capture met a gate routed on the host
}

const maxIdleRouteTables = 1024

var (
	routeCachesMu sync.Mutex
	routeCaches   = map[*Backend]*routeCache{}
)

func (b *Backend) routes() *routeCache {
	routeCachesMu.Lock()
	defer routeCachesMu.Unlock()
	c := routeCaches[b]
	if c == nil {
		c = &routeCache{tables: map[string]*routeTable{}}
		routeCaches[b] = c
	}
	return c
}

// RouteLoRA routes rows [start, start+n) on the device (model.DeviceRouter): kernels/route.cu
// turns each row's gate logits into one single-row LoRA segment per chosen expert, written
// straight into the device segment ring (row-major: row i's p-th choice at i*passes + p), and
// one lp_lora_routed launch pair (shrink, expand) adds them all, each row's choices summed in
// choice order by one block, deterministically (kernels/lora.cu says why not atomics). Nothing
// comes back to the host. With LORAPLEX_ROUTED_WIDE (SetRoutedWide) the pair is
// lp_lora_routed_wide's (the wide kernels' split-K shrink, routedWideLayout), and with
// LORAPLEX_ROUTED_FUSED as well the route kernel folds into that shrink (lp_route_lora_wide).
//
// Under CUDA graphs (the runner keys routed steps by Routing.Key) the route kernel and the routed
// LoRA launches are captured like any launch: the gate GEMM before them writes the logits, the kernel
// writes its entries into this call's region of the device segment ring, and the LoRA kernels
// read them there. A replay only advances the ring as the recording did, so that later staged
// tables land at the recorded offsets; EndStep copies the staged tables before launching the
// graph, and the route kernel inside the graph then overwrites its regions. A step whose
// expert table does not exist yet, whose buffers must grow, or whose gate exceeds the kernel's
// limits is abandoned (EndStep answers ErrRerun and the runner repeats it directly).
func (b *Backend) RouteLoRA(out, x, logits model.Tensor, start, n int, rp *model.RoutedProj, trace model.Tensor, layer int) {
	checkRouted(out, x, logits, start, n, rp, trace, layer)
	rows := rp.Gate.Rows
	real := rows - rp.Nulls
	if n == 0 || b.failed() {
		return
	}
	if rows > maxRouteRows || rp.TopK > maxRouteK {
		if b.mode != modeDirect {
			// The host path reads logits mid-step: never recordable. Remember the key so that
			// later steps with it do not try again.
			if b.mode == modeCapture {
				c := b.routes()
				c.mu.Lock()
				if c.noRecord == nil || len(c.noRecord) >= maxGraphs {
					c.noRecord = map[string]bool{}
				}
				c.noRecord[b.capKey] = true
				c.mu.Unlock()
			}
			b.broken = true
			return
		}
		b.routeOnHost(out, x, logits, start, n, rp, trace, layer)
		return
	}
	// Building a table allocates and copies synchronously, which a capture cannot contain and a
	// replay has no recording of: a recorded step only finds tables (the rerun builds them).
	tab := b.routeTable(rp, b.mode == modeDirect)
	if tab == nil {
		if b.mode != modeDirect {
			b.broken = true
		}
		return
	}
	// A row has at most min(k, real experts) real choices: that many segments a row ("passes",
	// the name of the k launches this once took), n*passes in the ring as before, so recording
	// and replay advance it identically. Each choice has its own scratch slice of maxRank floats.
	passes := min(rp.TopK, real)
	if b.routedWide && b.routedFused && tab.maxRank > 0 && (b.expertMajor(n, passes, real) || b.routedRowsTakes(n, 1)) {
		// One member of the expert-major or by-rows group launches, which lay out the ring and
		// the scratch as below.
		b.emOuts[0], b.emLogits[0], b.emRPs[0] = out, logits, rp
		traced := -1
		if trace.Rows > 0 {
			traced = 0
		}
		took := b.routeGroup(b.emOuts[:], x, b.emLogits[:], start, n, b.emRPs[:], trace, traced, layer)
		b.emOuts[0], b.emLogits[0], b.emRPs[0] = model.Tensor{}, model.Tensor{}, nil
		if took {
			return
		}
	}
	if need := b.segUsed + passes*n; need > b.segCap && (!b.canGrow() || !b.growSegs(need)) {
		return
	}
	// The wide kernels keep one copy of the packed intermediates per split (stride apart).
	splits, stride := b.routedWideLayout(x.Cols, n, passes, tab.maxRank)
	if tmp := max(n*passes*tab.maxRank, splits*stride); !b.reserve(&b.loraTmp, &b.loraCap, tmp, 4) {
		return
	}
	segs := b.segDev + uintptr(b.segUsed*b.segSize)
	b.segUsed += passes * n
	b.devSegs = segTable{} // the routing kernels write their segments to segDev
	if b.mode == modeReplay {
		// The graph holds the launches; the ring advanced exactly as when it was recorded.
		b.countReplay()
		return
	}
	var tr C.uintptr_t
	if trace.Rows > 0 {
		tr = ptr(trace)
	}
	if splits > 0 && b.routedFused && tab.maxRank > 0 && !b.routeFirstTakes(n) {
		// The routing shrink routes each row itself and writes its segments and trace.
		b.ok("route + lora (routed wide)", C.s_route_lora_wide(ptr(logits), C.int(rows), C.int(rp.TopK), C.float(rp.Temperature), C.int(rp.Nulls),
			C.int(passes), C.int(start), C.int(tab.maxRank), C.uintptr_t(tab.ptr), tr, C.int(trace.Cols), C.int(layer), ptr(out), ptr(x),
			C.uintptr_t(segs), C.int(n), C.int(tab.maxRank), C.uintptr_t(b.loraTmp), C.int(x.Cols), C.int(out.Cols), C.int(splits), C.int(stride),
			cflag(b.routeStaged), b.work()))
		return
	}
	if !b.ok("route", C.s_route_segs(ptr(logits), C.int(n), C.int(rows), C.int(rp.TopK), C.float(rp.Temperature), C.int(rp.Nulls),
		C.uintptr_t(tab.ptr), C.uintptr_t(segs), C.int(passes), C.int(start), C.int(tab.maxRank), tr, C.int(trace.Cols), C.int(layer), b.work())) {
		return
	}
	if tab.maxRank == 0 {
		return // no expert adapts this projection: only the trace was wanted
	}
	if splits > 0 {
		b.ok("lora (routed wide)", C.s_lora_routed_wide(ptr(out), ptr(x), C.uintptr_t(segs), C.int(n), C.int(passes), C.int(tab.maxRank),
			C.uintptr_t(b.loraTmp), C.int(x.Cols), C.int(out.Cols), C.int(splits), C.int(stride), b.work()))
		return
	}
	b.ok("lora (routed)", C.s_lora_routed(ptr(out), ptr(x), C.uintptr_t(segs), C.int(n), C.int(passes), C.int(tab.maxRank),
		C.uintptr_t(b.loraTmp), C.int(x.Cols), C.int(out.Cols), b.work()))
}

var _ model.DeviceGroupRouter = (*Backend)(nil)

// routeGroupArgs are lp_route_lora_group_wide's per-member arguments, for the shim that fills
// lp_route_group (kept in the backend: a cgo call would move stack arrays to the heap).
type routeGroupArgs struct {
	routeMembers
	segs, scratch [loraGroupMax]C.uintptr_t
	stride, ranks [loraGroupMax]C.int
	joins         [forkLanes]C.uintptr_t // the lanes' events the expands wait on (fork.go)
}

// routeMembers are the per-member arguments of the launches that route a group of projections
// (lp_route_lora_group_wide, lp_route_fold_expand): each member's routing and output.
type routeMembers struct {
	logits, experts, traces, outs [loraGroupMax]C.uintptr_t
	rows, k, nulls, passes, dims  [loraGroupMax]C.int
	temps                         [loraGroupMax]C.float
}

// set fills member i: rp routed by its table tab from logits into out, writing trace when it
// has rows (0: no trace), passes = its real choices a row.
func (a *routeMembers) set(i int, rp *model.RoutedProj, tab *routeTable, logits C.uintptr_t, out, trace model.Tensor) {
	a.logits[i], a.experts[i], a.outs[i], a.dims[i] = logits, C.uintptr_t(tab.ptr), ptr(out), C.int(out.Cols)
	a.rows[i], a.k[i], a.nulls[i], a.temps[i] = C.int(rp.Gate.Rows), C.int(rp.TopK), C.int(rp.Nulls), C.float(rp.Temperature)
	a.passes[i] = C.int(min(rp.TopK, rp.Gate.Rows-rp.Nulls))
	a.traces[i] = 0
	if trace.Rows > 0 {
		a.traces[i] = ptr(trace)
	}
}

// SetRouteStaged turns the staged logits of the routing blocks (LORAPLEX_ROUTE_STAGED) on or off
// for the following steps: the routing shrinks and the routed fold's expand copy their row's
// gate logits and the expert table into shared memory before thread 0 routes the row
// (kernels/route_row.cuh route_staged).
// The same routing to the bit either way; recorded graphs hold the other launches, so they are
// dropped.
func (b *Backend) SetRouteStaged(on bool) { setSwitch(b, &b.routeStaged, on) }

// routeStagedDefault: on since goals-2026-12-08-s28a (H100): TestRouteStaged passed, and routed
// top-2 of 28 at batch 1 decoded 133.3 tok/s staged against 128.2 not (0.850 of one adapter
// against 0.819); at batch 64 no change (4,587 against 4,593), where the blocks' waves, not
// their routing, set the time. Written without a GPU from goals-2026-12-07-s27a call 2's Nsight
// view: a routing shrink block took ~10 us (31 us for 2.9 waves at batch 64, 12-13 us for one
// at batch 1) against 6-9 us for a plain shrink of the same bytes, and thread 0's routing read
// its 28 logits from L2 ~60 times one after another, then each choice's expert.
const routeStagedDefault = true

// cflag is a switch as the kernels' int flags take it.
func cflag(on bool) C.int {
	if on {
		return 1
	}
	return 0
}

// SetRoutedGroup turns the grouped routed launches (LORAPLEX_ROUTED_GROUP) on or off for the
// following steps (recorded graphs hold the other path's launches, so they are dropped).
func (b *Backend) SetRoutedGroup(on bool) {
	setSwitch(b, &b.routedGroup, on)
}

// RoutedGroupCount is the number of grouped routed calls the backend has taken (for tests).
func (b *Backend) RoutedGroupCount() int { return b.routedGroups }

// RouteLoRAGroup implements model.DeviceGroupRouter: the members' routing shrinks in one
// launch and their expands in another (lp_route_lora_group_wide), where each member would take
// RouteLoRA's routing wide kernels (LORAPLEX_ROUTED_WIDE and _FUSED) and its table adapts the
// projection; otherwise it declines. The ring and the scratch are laid out member after member,
// each as RouteLoRA lays out its own, so recordings and replays advance them alike.
func (b *Backend) RouteLoRAGroup(outs []model.Tensor, x model.Tensor, logits []model.Tensor, start, n int, rps []*model.RoutedProj,
	trace model.Tensor, traced, layer int) bool {
	members := len(outs)
	if len(logits) != members || len(rps) != members {
		panic(fmt.Sprintf("cuda: RouteLoRAGroup of %d outputs, %d logits, %d routings", members, len(logits), len(rps)))
	}
	for i := range outs {
		tr := model.Tensor{}
		if i == traced {
			tr = trace
		}
		checkRouted(outs[i], x, logits[i], start, n, rps[i], tr, layer)
	}
	// Deterministic mode keeps lp_lora_routed (routedWideLayout gives no split there).
	if !b.routedGroup || !b.routedWide || !b.routedFused || b.batchInvariant || members < 2 || members > loraGroupMax || n == 0 {
		return false
	}
	return b.routeGroup(outs, x, logits, start, n, rps, trace, traced, layer)
}

// routeGroup is RouteLoRAGroup's work once its switches allow it, for 1 to loraGroupMax members
// (RouteLoRA sends one member here for the expert-major launches and the routing shrink by
// rows): it declines (false) gates past the route kernel's limits and members no expert adapts.
func (b *Backend) routeGroup(outs []model.Tensor, x model.Tensor, logits []model.Tensor, start, n int, rps []*model.RoutedProj,
	trace model.Tensor, traced, layer int) bool {
	members := len(outs)
	maxExperts := 0
	for _, rp := range rps {
		if rp.Gate.Rows > maxRouteRows || rp.TopK > maxRouteK || rp.Gate.Rows-rp.Nulls < 1 {
			return false
		}
		maxExperts = max(maxExperts, rp.Gate.Rows-rp.Nulls)
	}
	if b.failed() {
		return true
	}
	var tabs [loraGroupMax]*routeTable
	maxPasses, maxRank, segs := 0, 0, 0
	for i, rp := range rps {
		if tabs[i] = b.routeTable(rp, b.mode == modeDirect); tabs[i] == nil {
			if b.mode != modeDirect {
				b.broken = true // the rerun builds the table
			}
			return true
		}
		if tabs[i].maxRank == 0 {
			return false // no expert adapts this member: RouteLoRA writes only its trace
		}
		passes := min(rp.TopK, rp.Gate.Rows-rp.Nulls)
		maxPasses, maxRank, segs = max(maxPasses, passes), max(maxRank, tabs[i].maxRank), segs+passes*n
	}
	if need := b.segUsed + segs; need > b.segCap && (!b.canGrow() || !b.growSegs(need)) {
		return true
	}
	em := b.expertMajor(n, maxPasses, maxExperts)
	rows := !em && b.routedRowsTakes(n, members)
	splits, stride := b.routedWideLayout(x.Cols, n, maxPasses, maxRank)
	if rows {
		splits, stride = 1, 0 // a block shrinks its row's choices over the whole input
	}
	planLen := 0
	if em {
		splits, stride = b.expertMajorLayout(x.Cols, n, maxPasses, maxRank)
		planLen = int(C.lp_route_em_plan_ints(C.int(n), C.int(maxPasses), C.int(maxExperts)))
		if !b.reserve(&b.emPlan, &b.emPlanCap, members*planLen, 4) {
			return true
		}
	}
	per := max(n*maxPasses*maxRank, splits*stride)
	if !b.reserve(&b.loraTmp, &b.loraCap, members*per, 4) {
		return true
	}
	a := &b.routeGroupArgs
	for i, rp := range rps {
		tr := model.Tensor{}
		if i == traced {
			tr = trace
		}
		a.set(i, rp, tabs[i], ptr(logits[i]), outs[i], tr)
		a.stride[i], a.ranks[i] = C.int(tabs[i].maxRank), C.int(tabs[i].maxRank)
		a.segs[i] = C.uintptr_t(b.segDev + uintptr(b.segUsed*b.segSize))
		a.scratch[i] = C.uintptr_t(b.loraTmp + uintptr(4*i*per))
		b.segUsed += int(a.passes[i]) * n
	}
	b.devSegs = segTable{} // the routing kernels write their segments to segDev
	if em {
		b.routedEMs++
	} else if members > 1 {
		b.routedGroups++
	}
	if rows {
		b.routedRowCalls++
	}
	if b.mode == modeReplay {
		b.countReplay()
		return true
	}
	what := "route + lora (routed group)"
	switch {
	case em:
		what = "route + lora (expert-major)"
	case rows:
		what = "route + lora (routed rows)"
	}
	// The routing shrinks read x and the logits, which the stream wrote: they run beside the
	// lanes of the products call before (fork.go), and the expands wait on its joins.
	if !b.forkBeside {
		b.joinLanes() // the shrinks after the products, as without the fork
	}
	joins := b.laneJoins(&a.joins)
	ok := b.ok(what, C.s_route_lora_group_wide(&a.logits[0], &a.rows[0], &a.k[0], &a.temps[0], &a.nulls[0], &a.passes[0],
		&a.stride[0], &a.experts[0], &a.traces[0], C.int(trace.Cols), C.int(layer), &a.segs[0], &a.scratch[0], &a.outs[0], &a.dims[0],
		&a.ranks[0], C.int(members), C.int(n), C.int(start), ptr(x), C.int(x.Cols), C.int(splits), C.int(stride), cflag(b.routeStaged), cflag(em), C.uintptr_t(b.emPlan), C.int(planLen),
		cflag(rows), &a.joins[0], joins, b.stream)) // beside the lanes: the joins above
	if !ok {
		// A launcher that refused before its wait still leaves the stream joined (a capture must end so).
		for _, e := range a.joins[:joins] {
			b.ok("join wait", C.s_stream_wait(b.stream, e)) // beside the lanes: this is the join
		}
	}
	return true
}

// SetRoutedExpertMajor turns the expert-major routed launches (LORAPLEX_ROUTED_EXPERT_MAJOR,
// kernels/lora.cu lp_route_lora_group_em) on or off for the following steps, taken where the
// step's choices average at least minPerExpert an expert (expertMajor; below 0 keeps the
// default, 0 takes every call whose choices fit: the tests' small batches). Recorded graphs hold
// the other launches, so they are dropped.
func (b *Backend) SetRoutedExpertMajor(on bool, minPerExpert int) {
	if minPerExpert < 0 {
		minPerExpert = routedEMMinDefault
	}
	setSwitch(b, &b.routedEMMin, minPerExpert) // recordings hold the launches the old rule chose
	setSwitch(b, &b.routedEM, on)
}

// RoutedExpertMajorCount is the number of expert-major routed calls the backend has taken (for tests).
func (b *Backend) RoutedExpertMajorCount() int { return b.routedEMs }

// routedEMDefault: off. Written without a GPU from goals-2026-12-07-s27a call 2's Nsight view of
// a routed batch-64 step (lora.cu says why). Its first version (one block an expert) passed
// TestRoutedExpertMajor and TestRouteLoRAMatchesHost's expert-major side in
// goals-2026-12-08-s28a (H100) but decoded routed top-2 of 28 at batch 64 at 2,588 tok/s
// against 4,587 row-major (0.56x), unprofiled: an expert many rows chose walked them all in one
// block. This version (chunks of at most LP_ROUTE_EM_ROWS choices of one pass and expert,
// planned by a kernel of its own) has not run.
// routedEMMinDefault: each expert's A and B are read once instead of once a choice, for 2 +
// passes launches instead of 2, so it pays where an expert has choices to share them; at batch
// 64, top-2 of 28, 4.6 an expert.
const (
	routedEMDefault    = false
	routedEMMinDefault = 2
)

// SetRoutedRows turns the routing shrink by rows (LORAPLEX_ROUTED_ROWS, kernels/lora.cu: one
// block a row and member, which routes the row once and shrinks its choices over the whole
// input) on or off for the following steps, taken by routed calls of at least minBlocks (row,
// member) pairs (below 0 keeps the default, half the SMs; 0 takes every call: the tests'
// small batches). Recorded graphs hold the other launches, so they are dropped.
func (b *Backend) SetRoutedRows(on bool, minBlocks int) {
	if minBlocks < 0 {
		minBlocks = b.routedRowsMinDefault()
	}
	setSwitch(b, &b.routedRowsMin, minBlocks)
	setSwitch(b, &b.routedRows, on)
}

// RoutedRowsCount is the number of routed calls the routing shrink by rows has taken (for tests).
func (b *Backend) RoutedRowsCount() int { return b.routedRowCalls }

// routedRowsDefault: off until a GPU run has measured it. Written without a GPU from
// goals-2026-12-07-s27a call 2's Nsight view of a routed batch-64 step, where the four routing
// shrinks of a layer took ~90 us, mostly blocks routing their row again (kernels/lora.cu). Its
// tests passed on an H100 (TestRoutedGroup, TestRoutedRowsFixtures, TestKeptRoutedReplaysCUDA:
// bench/results/gpu-h100/goals-2026-12-08-s30a).
const routedRowsDefault = false

// routedRowsMinDefault: a call takes the rows launch from about half as many (row, member) pairs
// as the GPU has SMs: q/k/v (3 x 64 blocks) and gate/up (2 x 64) at batch 64, where the split
// launch runs 2-3 waves; o and down (64) keep the split launch, one wave of it, whose splits
// then spread one row's shrink over several SMs.
func (b *Backend) routedRowsMinDefault() int { return max(b.sms/2+1, 1) }

// SetRouteFirst turns LORAPLEX_ROUTE_FIRST on or off for the following steps: RouteLoRA's calls
// of at least minRows rows (below 0: the default, 64) route their rows in the route kernel and
// then run the wide routed shrink (lp_lora_routed_wide, the LORAPLEX_ROUTED_FUSED=off launches)
// instead of the routing shrink, whose every (row, choice, split) block routes its row again
// (kernels/lora.cu). Recorded graphs hold the other launches, so they are dropped.
func (b *Backend) SetRouteFirst(on bool, minRows int) {
	if minRows < 0 {
		minRows = routeFirstMinDefault
	}
	setSwitch(b, &b.routeFirstMin, minRows)
	setSwitch(b, &b.routeFirst, on)
}

// RouteFirstCount is the number of RouteLoRA calls LORAPLEX_ROUTE_FIRST has taken (for tests).
func (b *Backend) RouteFirstCount() int { return b.routeFirsts }

// routeFirstDefault: off until a GPU run has measured it; its launches are the wide routed
// path's (TestRouteLoRAMatchesHost's "wide" and "route first" sides, which passed on an H100 in
// goals-2026-12-08-s30a). Written without a GPU from
// goals-2026-12-07-s27a call 2's Nsight view of a routed batch-64 step, where o's and down's
// routing shrinks (one member each, 512 and 1,792 blocks) took 12.9 and 25 us against 5.6 and
// 9.9 us for the plain shrinks of 64 adapters. routeFirstMinDefault: a decode batch of 64.
// Precedence: a call the expert-major or the rows launches take (RouteLoRA sends it to
// routeGroup) never reaches this rule; at the rows rule's default that leaves one projection's
// calls of 64 to SMs/2 rows here.
const (
	routeFirstDefault    = false
	routeFirstMinDefault = 64
)

// routeFirstTakes reports whether a RouteLoRA call of n rows routes first (SetRouteFirst), a
// function of the row count and the switches as the step key needs.
func (b *Backend) routeFirstTakes(n int) bool {
	if b.routeFirst && n >= b.routeFirstMin {
		b.routeFirsts++
		return true
	}
	return false
}

// routedRowsFromEnv reads LORAPLEX_ROUTED_ROWS: on or off with the default rule, or a number N,
// on for calls of at least N (row, member) pairs (1: every call, o's and down's at batch 64 too),
// so one benchmark run can compare rules.
func routedRowsFromEnv(def bool, min int) (bool, int) {
	v := os.Getenv("LORAPLEX_ROUTED_ROWS")
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return true, n
	}
	return envSwitch("LORAPLEX_ROUTED_ROWS", def), min
}

// routedRowsTakes reports whether a routed call of n rows over members members takes the
// routing shrink by rows: the switch is on, the mode is not deterministic (whose routed kernel is
// lp_lora_routed) and the call has at least routedRowsMin (row, member) pairs. Fixed by the step key.
func (b *Backend) routedRowsTakes(n, members int) bool {
	return b.routedRows && !b.batchInvariant && n*members >= b.routedRowsMin
}

// expertMajor reports whether a routed call of n rows, passes choices a row, over at most
// experts experts takes the expert-major launches: the switch is on, the mode is not
// deterministic (whose routed kernel is lp_lora_routed), the choices fit the plan's shared
// memory and average at least routedEMMin an expert. Fixed by the step key.
func (b *Backend) expertMajor(n, passes, experts int) bool {
	c := n * passes
	return b.routedEM && !b.batchInvariant && c <= maxEMChoices && c >= b.routedEMMin*experts
}

// expertMajorLayout is the split rule of the expert-major shrink: as many loraWideSlice slices
// of the input as the wide kernels take (its blocks number chunks of up to LP_ROUTE_EM_ROWS
// choices, not choices, so the rows do not cap them as in wideLayout), each split's copy
// stride apart.
func (b *Backend) expertMajorLayout(inDim, rows, passes, maxRank int) (splits, stride int) {
	splits = min((inDim+loraWideSlice-1)/loraWideSlice, loraWideMaxSplits)
	if splits <= 1 {
		return 1, 0
	}
	return splits, rows * passes * maxRank
}

// checkRouted panics unless RouteLoRA's arguments fit together (a bug in the forward pass).
func checkRouted(out, x, logits model.Tensor, start, n int, rp *model.RoutedProj, trace model.Tensor, layer int) {
	rows := rp.Gate.Rows
	real := rows - rp.Nulls
	if logits.Rows != n || logits.Cols != rows || logits.DType != model.F32 || x.DType != model.F32 || out.DType != model.F32 ||
		x.Cols != rp.Gate.Cols || start < 0 || n < 0 || start+n > x.Rows || start+n > out.Rows || n > maxRoutedRows {
		panic(fmt.Sprintf("cuda: RouteLoRA rows [%d,+%d) of x %s out %s, logits %s %s, gate %s", start, n, x.Shape(), out.Shape(), logits.Shape(), logits.DType, rp.Gate.Shape()))
	}
	if rows < 1 || rp.TopK < 1 || rp.TopK > rows || !(rp.Temperature > 0) || rp.Nulls < 0 || real < 0 || len(rp.Experts) != real || len(rp.IDs) != real {
		panic(fmt.Sprintf("cuda: RouteLoRA gate of %d rows, top_k %d, T %v, %d nulls, %d experts, %d ids",
			rows, rp.TopK, rp.Temperature, rp.Nulls, len(rp.Experts), len(rp.IDs)))
	}
	if trace.Rows > 0 && (trace.DType != model.F32 || start+n > trace.Rows || layer < 0 || layer >= trace.Cols) {
		panic(fmt.Sprintf("cuda: RouteLoRA trace %s %s for rows [%d,+%d) layer %d", trace.Shape(), trace.DType, start, n, layer))
	}
	for j, m := range rp.Experts {
		if m != nil && (m.A.DType != model.BF16 || m.B.DType != model.BF16 || m.A.Cols != x.Cols || m.B.Rows != out.Cols ||
			m.A.Rows != m.B.Cols || m.A.Rows < 1 || m.A.Rows > maxLoRARank) {
			panic(fmt.Sprintf("cuda: RouteLoRA expert %d: A %s %s, B %s %s for x %s out %s", j, m.A.Shape(), m.A.DType, m.B.Shape(), m.B.DType, x.Shape(), out.Shape()))
		}
	}
}

// routeTable returns rp's device expert table, finding it by content or, when build is set,
// building it on first use (nil when not found and not built).
func (b *Backend) routeTable(rp *model.RoutedProj, build bool) *routeTable {
	if t, ok := rp.Dev.(*routeTable); ok && t.b == b {
		return t
	}
	if rp.Dev != nil {
		panic(fmt.Sprintf("cuda: RoutedProj.Dev holds %T from another backend", rp.Dev))
	}
	size := int(C.route_expert_size())
	host := make([]byte, max(len(rp.Experts), 1)*size)
	maxRank := 0
	for j, m := range rp.Experts {
		var a, bb C.uintptr_t
		rank, scale := 0, float32(0)
		if m != nil {
			a, bb, rank, scale = ptr(m.A), ptr(m.B), m.A.Rows, m.Scale
			maxRank = max(maxRank, rank)
		}
		C.s_set_route_expert(unsafe.Pointer(&host[0]), C.int(j), a, bb, C.int(rank), C.int(rp.IDs[j]), C.float(scale))
	}
	c := b.routes()
	c.mu.Lock()
	defer c.mu.Unlock()
	key := string(host)
	if t := c.tables[key]; t != nil {
		if t.refs == 0 {
			c.idle--
		}
		t.refs++
		rp.Dev = t
		return t
	}
	if !build {
		return nil
	}
	p, err := b.malloc(len(host))
	if err != nil {
		b.ok("route table", 2) // cudaErrorMemoryAllocation
		return nil
	}
	// Synchronous, like Upload: host is Go memory.
	if !b.ok("route table copy", C.s_htod(C.uintptr_t(p), unsafe.Pointer(&host[0]), C.size_t(len(host)), 0)) ||
		!b.ok("route table sync", C.s_stream_sync(0)) {
		C.s_free(C.uintptr_t(p))
		return nil
	}
	t := &routeTable{b: b, key: key, ptr: p, maxRank: maxRank, refs: 1}
	c.tables[key] = t
	rp.Dev = t
	return t
}

// ReleaseRouting drops rt's references to the tables RouteLoRA found or built for it
// (model.DeviceRouter). Unreferenced tables stay cached; past maxIdleRouteTables the oldest
// half are freed (cudaFree waits for work in flight that may still read them).
func (b *Backend) ReleaseRouting(rt *model.Routing) {
	c := b.routes()
	c.mu.Lock()
	defer c.mu.Unlock()
	for l := range rt.Layers {
		for _, rp := range rt.Layers[l] {
			if rp == nil {
				continue
			}
			if t, ok := rp.Dev.(*routeTable); ok && t.b == b {
				rp.Dev = nil
				if t.refs--; t.refs == 0 {
					c.clock++
					t.idleAt = c.clock
					c.idle++
				}
			}
		}
	}
	if c.idle <= maxIdleRouteTables {
		return
	}
	var idle []*routeTable
	for _, t := range c.tables {
		if t.refs == 0 {
			idle = append(idle, t)
		}
	}
	slices.SortFunc(idle, func(x, y *routeTable) int { return cmp.Compare(x.idleAt, y.idleAt) })
	for _, t := range idle[:len(idle)-maxIdleRouteTables/2] {
		C.s_free(C.uintptr_t(t.ptr))
		delete(c.tables, t.key)
		c.idle--
		c.freed++ // recordings may hold t.ptr: the next BeginStep drops them
	}
}

// graphCheck runs at BeginStep: it drops every recording once a route table they may hold has
// been freed, and reports whether key is one that must not be recorded.
func (b *Backend) graphCheck(key []byte) (record bool) {
	c := b.routes()
	c.mu.Lock()
	drop := c.freed != c.dropped
	c.dropped = c.freed
	record = !c.noRecord[string(key)]
	c.mu.Unlock()
	if drop {
		b.dropGraphs()
	}
	return record
}

// countReplay counts a routed call served by a replayed recording (RoutedReplays).
func (b *Backend) countReplay() {
	c := b.routes()
	c.mu.Lock()
	c.replays++
	c.mu.Unlock()
}

// RoutedReplays is the number of RouteLoRA calls served by replayed recordings (for tests).
func (b *Backend) RoutedReplays() int {
	c := b.routes()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.replays
}

// RouteTables reports how many expert tables the backend holds and how many of them no
// routing references (for tests).
func (b *Backend) RouteTables() (total, idle int) {
	c := b.routes()
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tables), c.idle
}

// routeOnHost routes a gate beyond the kernel's limits (more than LP_ROUTE_MAX_ROWS rows or
// LP_ROUTE_MAX_K choices) the way the runner's host path does: logits back to the host,
// model.Route per row, one LoRA call per pass. Slow (two synchronous copies) but exact.
func (b *Backend) routeOnHost(out, x, logits model.Tensor, start, n int, rp *model.RoutedProj, trace model.Tensor, layer int) {
	rows := rp.Gate.Rows
	host := make([]float32, n*rows)
	if b.Read(logits, host) != nil {
		return
	}
	var tr []float32
	if trace.Rows > 0 {
		tr = make([]float32, n*trace.Cols)
		if b.Read(trace.Slice(start, n), tr) != nil {
			return
		}
	}
	var passes [][]model.LoRASeg
	var cs []model.Choice
	for i := 0; i < n; i++ {
		cs = model.Route(host[i*rows:(i+1)*rows], rp.TopK, rp.Temperature, rp.Nulls, cs)
		if tr != nil {
			id := int32(-1)
			if len(cs) > 0 {
				id = rp.IDs[cs[0].Expert]
			}
			tr[i*trace.Cols+layer] = float32(id)
		}
		for j, c := range cs {
			m := rp.Experts[c.Expert]
			if m == nil || c.Weight == 0 {
				continue
			}
			for len(passes) <= j {
				passes = append(passes, nil)
			}
			passes[j] = append(passes[j], model.LoRASeg{Start: start + i, N: 1, A: m.A, B: m.B, Scale: c.Weight * m.Scale})
		}
	}
	if tr != nil && (!b.ok("route trace", C.s_htod(ptr(trace.Slice(start, n)), unsafe.Pointer(&tr[0]), C.size_t(4*len(tr)), b.work())) ||
		!b.ok("route trace sync", C.s_stream_sync(b.work()))) {
		return
	}
	for _, pass := range passes {
		if len(pass) > 0 {
			b.LoRA(out, x, pass)
		}
	}
}
