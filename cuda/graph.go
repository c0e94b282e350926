//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"time"
	"unsafe"

	"github.com/loraplex/loraplex/model"
)

// CUDA graphs for decode steps (model.StepRecorder). The first step with a given key runs
// under stream capture; later steps with the same key only copy their metadata (Prepare) and
// LoRA segment tables into the same pinned buffers and replay the graph, which reads them from
// the same addresses. Prefill steps (tiled attention, many rows) always run directly.
// Device-routed steps are recorded too (route.go): the route kernels inside the graph fill
// their segment tables on the device; a freed expert table drops every recording (graphCheck).

const (
	maxGraphRows = 256 // steps with more rows than this are not recorded
	maxGraphs    = 128 // recordings kept, least recently used dropped first
)

type execMode int

const (
	modeDirect execMode = iota
	modeCapture
	modeReplay
)

type graphEntry struct {
	exec    unsafe.Pointer
	lastUse uint64
}

// segTable names the LoRA segment tables on the device: a version of a runner's segment lists
// (model.SegmentKeeper) as the recording g reads them.
type segTable struct {
	version uint64
	g       *graphEntry
}

// BeginStep chooses how this step's ops run; see model.StepRecorder.
func (b *Backend) BeginStep(key []byte) bool {
	b.mode, b.broken, b.segUsed = modeDirect, false, 0
	// Whatever this step does, the tables the last one left are only known valid until it
	// writes: StepSegments compares with prevSegs, EndStep names the ones the step leaves.
	b.prevSegs, b.devSegs, b.segVersion, b.segsKept = b.devSegs, segTable{}, 0, false
	if key == nil || b.step == nil || b.numTiles > 0 || len(b.step.Tokens) > maxGraphRows || b.failed() || b.noGraphs || !b.graphCheck(key) {
		return false
	}
	if d := b.decodeDepthKey(); d > 0 && b.numRows > 0 {
		// Decode attention's grid depth follows the step's contexts under the context rule
		// and in deterministic mode, which the runner's key does not hold (at most
		// LP_DECODE_MAX_SPLITS: one byte).
		b.keyBuf = append(append(b.keyBuf[:0], key...), d)
		key = b.keyBuf
	}
	if b.pdl == PDLPrefetch {
		// So does whether the GEMVs prefetch into L2 (prefetchL2: the context's K/V bytes).
		var l2 byte
		if b.prefetchL2() {
			l2 = 1
		}
		b.keyBuf = append(append(b.keyBuf[:0], key...), l2)
		key = b.keyBuf
	}
	b.useCount++
	if g, ok := b.graphs[string(key)]; ok {
		g.lastUse = b.useCount
		b.replaying = g
		b.mode = modeReplay
		return true
	}
	if !b.ok("capture begin", C.lp_capture_begin(C.P_stream(b.work()))) {
		return false
	}
	b.mode, b.capKey = modeCapture, string(key)
	return false
}

// EndStep ends a capture (instantiating and launching it) or launches the replayed graph.
func (b *Backend) EndStep() error {
	b.joinLanes() // inside the capture, before it ends (a capture must end with its side streams joined)
	mode := b.mode
	b.mode = modeDirect
	switch mode {
	case modeReplay:
		if b.broken {
			return model.ErrRerun
		}
		if b.segsKept {
			b.keptReplays++
		} else {
			b.copySegs()
		}
		b.leaveSegs(b.replaying)
		if !b.hostFrom.IsZero() { // a step Prepare began (tests drive BeginStep alone)
			b.hostReplays++
			b.hostTotal += time.Since(b.hostFrom)
			b.hostFrom = time.Time{}
		}
		b.ok("graph launch", C.lp_graph_launch(b.replaying.exec, C.P_stream(b.work())))
		return b.Err()
	case modeCapture:
		var exec unsafe.Pointer
		keep := C.int(1)
		if b.broken {
			keep = 0
		}
		code := C.lp_capture_end(C.P_stream(b.work()), keep, &exec)
		if b.broken || code != 0 {
			if code != 0 {
				// A capture the driver refused: stop recording rather than fail every step.
				b.noGraphs = true
				C.lp_last_error() // clear the non-sticky error
			}
			return model.ErrRerun
		}
		if b.graphs == nil {
			b.graphs = map[string]*graphEntry{}
		}
		if len(b.graphs) >= maxGraphs {
			b.evictGraph()
		}
		g := &graphEntry{exec: exec, lastUse: b.useCount}
		b.graphs[b.capKey] = g
		b.copySegs()
		b.leaveSegs(g)
		b.ok("graph launch", C.lp_graph_launch(exec, C.P_stream(b.work())))
		return b.Err()
	}
	return b.Err()
}

func (b *Backend) evictGraph() {
	var oldest string
	var at uint64 = ^uint64(0)
	for k, g := range b.graphs {
		if g.lastUse < at {
			oldest, at = k, g.lastUse
		}
	}
	C.lp_graph_destroy(b.graphs[oldest].exec)
	delete(b.graphs, oldest)
}

// launch reports whether an op should enqueue its kernels: not while replaying (the graph
// holds them) and not once the backend has failed.
func (b *Backend) launch() bool { return b.mode != modeReplay && !b.failed() }

// canGrow reports whether a buffer may be reallocated now: never while capturing or replaying
// (graphs hold buffer addresses). The step is then abandoned and rerun directly, and the growth
// drops every recorded graph.
func (b *Backend) canGrow() bool {
	if b.mode != modeDirect {
		b.broken = true
		return false
	}
	return true
}

// setSwitch sets a kernel-path choice for the following steps: a change drops every recording,
// since they hold the other path's launches (the Set* switches of fused.go, attention.go and
// deterministic.go).
func setSwitch[T comparable](b *Backend, p *T, v T) {
	if *p != v {
		b.dropGraphs()
	}
	*p = v
}

var _ model.SegmentKeeper = (*Backend)(nil)

// StepSegments implements model.SegmentKeeper: a replay keeps the tables on the device when the
// last recorded or replayed step left this version's for this same recording. A recording's
// ring layout is the order of its LoRA calls, which its key fixes, and a version names the
// segments' content, so the bytes there are the ones the step would copy. Steps that route on
// the device also write their routed rows' segments there, from inside the recording (the
// routing kernels, into the regions the recording fixed), so every replay rewrites those: their
// version names the plain sequences' tables staged beside them.
func (b *Backend) StepSegments(version uint64) bool {
	b.segVersion = version
	b.segsKept = b.segKeep && b.mode == modeReplay && version != 0 && b.prevSegs == segTable{version, b.replaying}
	return b.segsKept
}

// segKeepDefault: on since goals-2026-12-07-s27a (H100), where TestKeptSegmentReplays,
// TestSegmentKeepFixturesCUDA and TestKeptRoutedReplaysCUDA passed and its A/B row read: 64
// distinct rank-16 adapters at batch 64 1.067x (0.969 of the byte-bound ceiling), rank-8 q/v
// 1.018x (0.989 of its ceiling), routed top-2 of 28 1.022x at batch 1 and 1.033x at 64, one
// adapter at batch 1 1.016x, every other row within noise. A replayed step's host work went from
// 44-522 us (~600 with 64 adapters) to 3-14 us (call 2's host lines).
const segKeepDefault = true

// SetSegmentKeep lets replays keep the segment tables on the device (StepSegments) or not, for
// the following steps.
func (b *Backend) SetSegmentKeep(on bool) { b.segKeep = on }

var _ model.SegmentMerger = (*Backend)(nil)

// MergesSegments implements model.SegmentMerger (LORAPLEX_SEGMENT_MERGE, SetSegmentMerge). A
// merged run is one segment of many rows where it was many of one: the plain and wide LoRA
// kernels give each (segment, row) its own blocks either way, so the launches' work is the same
// and the host writes a table of 7 segments a layer for a batch on one adapter instead of one a
// sequence. Deterministic mode keeps the plain kernels, whose shrink and expand reduce a row
// alike in a segment of any length (a prompt prefilled in chunks relies on it too).
func (b *Backend) MergesSegments() bool { return b.segMerge }

// segMergeDefault: on since goals-2026-12-08-s28a (H100), where the fixture suites passed with it
// (TestSegmentMergeFixturesCUDA, TestMergedSegmentsCUDA) and its A/B run (merging off against
// on) moved no row of the goals table beyond run-to-run noise: 64 rank-16 adapters 6,143 tok/s
// off against 6,153 on, rank-8 q/v 8,185 against 8,193, routed batch 64 4,575 against 4,587,
// batch 1 169.3 against 170.5. Its gain is the host walk below, which that table's steps (kept
// tables) do not make. Before that, in goals-2026-12-07-s27a (H100) TestMergedSegmentsCUDA found
// merged logits bitwise those of a segment a sequence, in deterministic mode and in the default
// one (its decode steps put 192 segments merged where they put 360); its A/B row moved no row of
// the goals table, whose steps the kept tables already spare the walk (one rank-8 adapter at
// batch 64 decoded 7,314 tok/s with both against 6,907 without, call 2, not apart). It matters
// where the kept tables do not reach: in serving every admission, finish or prefill chunk
// changes the batch's layout, and a walk of a batch on one adapter is then 7 segments a layer
// instead of 7 a request (745 us of host time a replayed batch-64 step in s26a).
const segMergeDefault = true

// SetSegmentMerge makes the following steps merge adjacent sequences on one adapter into one
// segment or not (MergesSegments). The runner's step keys hold the segment layout, so recordings
// of either side stay valid.
func (b *Backend) SetSegmentMerge(on bool) { b.segMerge = on }

// SegmentsPut is the number of LoRA segments the backend has written to its segment ring, in
// every step and every call (for tests).
func (b *Backend) SegmentsPut() int { return b.segsPut }

// KeptSegmentReplays is the number of replayed steps that kept the segment tables on the device
// and made no op call (StepSegments; for tests and benchmarks).
func (b *Backend) KeptSegmentReplays() int { return b.keptReplays }

// leaveSegs notes the tables a recorded or replayed step leaves on the device for g.
func (b *Backend) leaveSegs(g *graphEntry) {
	if b.segVersion != 0 {
		b.devSegs = segTable{b.segVersion, g}
	}
}

// dropGraphs forgets every recording; called when a buffer they reference moves.
func (b *Backend) dropGraphs() {
	b.devSegs, b.prevSegs = segTable{}, segTable{}
	for k, g := range b.graphs {
		C.lp_graph_destroy(g.exec)
		delete(b.graphs, k)
	}
}

// ReplayHostTime is how many steps replayed a recording and the host time they took from
// Prepare to the graph's launch (the metadata, the forward pass's walk writing the segment
// tables, their copy enqueued), summed. The device is idle for all of it: the runner builds a
// step only once the last one completed (model.StepSynchronizer), so a benchmark reads here how
// much of a replayed step is the host's.
func (b *Backend) ReplayHostTime() (steps int, total time.Duration) {
	return b.hostReplays, b.hostTotal
}

// GraphCount is the number of recorded step graphs (for tests and benchmarks).
func (b *Backend) GraphCount() int { return len(b.graphs) }

// SetGraphs turns recording on or off (on by default).
func (b *Backend) SetGraphs(on bool) { b.noGraphs = !on }

// copySegs moves the LoRA segment tables staged during a recorded step to the device in one
// transfer, ahead of the graph that reads them.
func (b *Backend) copySegs() {
	if b.segUsed > 0 {
		b.ok("lora segments", C.s_htod(C.uintptr_t(b.segDev), b.segHost, C.size_t(b.segUsed*b.segSize), b.work()))
	}
}
