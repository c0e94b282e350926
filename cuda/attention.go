//go:build cuda

package cuda

// #include "shims.h"
import "C"

import (
	"fmt"
	"os"

	"github.com/loraplex/loraplex/model"
)

// DecodeSplit chooses how decode attention splits a row's context over blocks (split-K,
// kernels/attention.cu has the design): LORAPLEX_DECODE_SPLIT=fill|context|off, or
// Backend.SetDecodeSplit.
type DecodeSplit int

const (
	// DecodeSplitFill splits only as far as it takes to fill the GPU (by the step's row count):
	// the fastest at short contexts, but a row's last bits may depend on its batch.
	DecodeSplitFill DecodeSplit = iota
	// DecodeSplitContext splits each row by its own context length (LP_DECODE_SPLIT_CHUNK
	// positions a chunk at least, up to LP_DECODE_DEPTH chunks, or LP_DECODE_MAX_SPLITS under
	// SetDecodeDeep): batch-invariant, and
	// long contexts spread over the GPU at any batch size.
	DecodeSplitContext
	// DecodeSplitOff runs every (row, head) in one block.
	DecodeSplitOff
)

func (d DecodeSplit) String() string {
	switch d {
	case DecodeSplitFill:
		return "fill"
	case DecodeSplitContext:
		return "context"
	case DecodeSplitOff:
		return "off"
	}
	return fmt.Sprintf("DecodeSplit(%d)", int(d))
}

// groupedDecodeDefault: whether decode attention takes the grouped kernel (one block per GQA
// group, kernels/attention.cu) unless LORAPLEX_GROUPED_DECODE=on|off or SetGroupedDecode says
// otherwise; shapes it does not take (lp_attention_grouped_ok) keep the per-head kernel. On:
// its GPU tests passed on an H100 (TestDecodeSplitRules, both kernels, every split rule) and,
// against the per-head kernel in one bench/gpu run there (Llama-3-8B shape, 4 query heads a kv
// head), batch-1 decode at 32,768 positions 2.43x (42.5 to 103.4 tok/s), at 4,096 1.21x, batch
// 64 at 128 positions 1.16x, 64 distinct adapters 1.05-1.11x; batch 1 at 128 positions 0.98x
// (three splits of the 129 keys against the per-head kernel's eight: a few microseconds a layer).
const groupedDecodeDefault = true

// SetGroupedDecode chooses the grouped or the per-head decode attention kernel for the
// following steps (recorded graphs hold the other kernel's launches, so they are dropped).
func (b *Backend) SetGroupedDecode(on bool) {
	setSwitch(b, &b.groupedDecode, on)
}

// grouped reports whether decode attention over these heads runs on the grouped kernel.
func (b *Backend) grouped(heads, kvHeads, headDim int) bool {
	return b.groupedDecode && C.lp_attention_grouped_ok(C.int(heads), C.int(kvHeads), C.int(headDim)) != 0
}

// gqPrefetchDefault: whether the grouped kernel asks L2 for each tile's values while it scores
// the keys (LP_ATTN_PREFETCH_V, kernels/attention.cu says why) unless LORAPLEX_GQ_PREFETCH=on|off
// or SetGQPrefetch says otherwise. Off, measured: written without a GPU from the batch-1
// breakdown's 13 us of attention a layer at 128 positions (goals-2026-12-07-final3/
// breakdown.txt), it passed TestDecodeSplitRules' bitwise check on an H100, and one A/B run
// there measured batch-1 decode 1.008x at ctx 128 and 1.002x at 4k but 0.960x at 32k and 0.979x
// at batch 64, where the prefetches add to traffic the kernel already keeps in flight
// (bench/results/gpu-h100/goals-2026-12-08-s30a).
const gqPrefetchDefault = false

// SetGQPrefetch turns the grouped kernel's value prefetch on or off for the following steps;
// recorded graphs hold the other launch, so they are dropped.
func (b *Backend) SetGQPrefetch(on bool) { setSwitch(b, &b.gqPrefetch, on) }

// attentionKernel is lp_attention's kernel argument for a decode launch on the grouped kernel or not.
func (b *Backend) attentionKernel(grouped bool) C.int {
	switch {
	case !grouped:
		return 0
	case b.gqPrefetch:
		return C.LP_ATTN_GROUPED | C.LP_ATTN_PREFETCH_V
	}
	return C.LP_ATTN_GROUPED
}

// decodeSplitFromEnv reads LORAPLEX_DECODE_SPLIT (fill, the default, when unset or unknown).
func decodeSplitFromEnv() DecodeSplit {
	for _, d := range []DecodeSplit{DecodeSplitFill, DecodeSplitContext, DecodeSplitOff} {
		if os.Getenv("LORAPLEX_DECODE_SPLIT") == d.String() {
			return d
		}
	}
	return DecodeSplitFill
}

// SetDecodeSplit chooses the split rule for the following steps (recorded graphs hold the
// other rule's launches, so they are dropped).
func (b *Backend) SetDecodeSplit(d DecodeSplit) {
	if d < DecodeSplitFill || d > DecodeSplitOff {
		panic(fmt.Sprintf("cuda: SetDecodeSplit(%d)", int(d)))
	}
	setSwitch(b, &b.decodeSplit, d)
}

// contextSplits is the context rule's split count for a row at position pos: what the kernel
// gives a row that sees every position up to pos (a sliding window can only lower it, so this
// bounds the grid depth the step needs).
func (b *Backend) contextSplits(pos int32) int {
	chunk := int(C.LP_DECODE_SPLIT_CHUNK)
	return min(b.decodeDepth, (int(pos)+chunk)/chunk)
}

// decodeDeepDefault: whether the context rule and the grouped kernel's fill rule may split a
// row up to LP_DECODE_MAX_SPLITS (64) ways instead of LP_DECODE_DEPTH (32) unless
// LORAPLEX_DECODE_DEEP=on|off or SetDecodeDeep says otherwise. On: the grouped kernel takes 128
// registers a thread (4 blocks an SM), so batch-1 decode at 32,768 positions split 32 ways (8 kv
// heads x 32 = 256 blocks of 1,024 positions) left half of an H100's 528 resident slots empty
// (bench/results/gpu-h100/goals-2026-12-07-final3/ncu-decode1.txt). Two A/B runs on an H100
// (goals-2026-12-07-s24a, -s24b) measured 64 splits at 1.053x at 32k but 0.966x at 4,096 positions,
// where 64 chunks of 64 positions are too short to pay for their merge; hence the grouped fill
// rule's chunk floor of 128 (LP_GQ_FILL_CHUNK), which keeps 4k rows at 32 chunks. With it, an
// A/B run on an H200 (gpu-h200/goals-2026-12-07-s24c) measured 1.076x at 32k, 0.996x at 4k and
// 1.003x at 128 positions against the old rule. Under the fill rule only batch 1 gets deeper
// (from two rows on, its 4-blocks-an-SM bound halves the depth back to 32); the context rule,
// and so deterministic mode, splits rows of 8k positions and more 64 ways at any batch size:
// still a function of the row alone, but their last bits differ from builds before this one.
const decodeDeepDefault = true

// decodeDepthKey is what the step's graph key needs beyond the runner's key for decode
// attention's grid depth, which follows the step's contexts under the context rule (and in
// deterministic mode, which takes that rule whatever the switch says); 0 where it follows the
// row count alone.
func (b *Backend) decodeDepthKey() byte {
	if b.batchInvariant || b.decodeSplit == DecodeSplitContext {
		return byte(b.ctxSplits)
	}
	return 0
}

// SetGroupedFillChunk sets the grouped kernel's fill rule's chunk floor for the following steps
// (LORAPLEX_GQ_FILL_CHUNK; LP_GQ_FILL_CHUNK, 128, by default): a row splits no further than into
// chunks of that many positions. The floor sets where batch-1 rows stop gaining splits: 128
// keeps 4,096-position rows at 32 chunks under the deeper rule (decodeDeepDefault says why);
// 256 (short rows in one block a kv head) measured 0.992x at 4k and 0.993x at 128 positions on
// an H100 (goals-2026-12-07-s24b). Recorded graphs hold the other floor's launches, so they are
// dropped.
func (b *Backend) SetGroupedFillChunk(positions int) {
	if positions < 1 {
		panic(fmt.Sprintf("cuda: SetGroupedFillChunk(%d)", positions))
	}
	setSwitch(b, &b.gqFillChunk, positions)
}

// SetDecodeDeep sets the context and grouped fill rules' most splits for the following steps:
// LP_DECODE_MAX_SPLITS when on, LP_DECODE_DEPTH when off (recorded graphs hold the other
// depth's launches, so they are dropped). Both rules stay what they are: the context rule
// still a function of the row's own positions (batch-invariant), the fill rule of the row count.
func (b *Backend) SetDecodeDeep(on bool) {
	d := int(C.LP_DECODE_DEPTH)
	if on {
		d = int(C.LP_DECODE_MAX_SPLITS)
	}
	setSwitch(b, &b.decodeDepth, d)
}

// prefillSplitDefault: whether the tensor-core prefill kernel splits a tile's key range over
// blocks (kernels/attention_prefill_mma.cu, split-K) unless LORAPLEX_PREFILL_SPLIT=on|off or
// SetPrefillSplit says otherwise. On: TestPrefillSplitSweep passed on an H100, and in one A/B
// run a 40-token chunk over a 2,000-token cached prefix (32 tiles on 132 SMs unsplit) took
// 9.4 ms instead of 12.2 (TTFT ÷ uncached 0.163 → 0.122); the 2k/8k one-step prefills and
// decode did not move (bench/results/gpu-h100/goals-2026-12-07-ab2).
const prefillSplitDefault = true

// prefillSplitFill: blocks per SM the prefill split rule aims at; the kernel's shared memory
// (87 KiB a block at head dim 128, 101 KiB at 256) lets two share an H100 or A100 SM (the wide
// plan's 102 KiB at 128: two on an H100, one on an A100, where the rule then fills half).
const prefillSplitFill = 2

// SetPrefillSplit turns split-K of the tensor-core prefill tiles on or off for the following
// steps (prefill steps are never recorded as graphs, graph.go, so no recording holds the other
// choice).
func (b *Backend) SetPrefillSplit(on bool) { b.prefillSplit = on }

// prefillWideDefault: whether the tensor-core prefill cuts its tiles LP_PREFILL_WIDE_TILE (128)
// rows tall, each warp 32 rows, for the head dims lp_prefill_wide_ok takes (64, 80, 128) and
// steps with a chunk of at least 128 rows (prefillTileRows), unless LORAPLEX_PREFILL_WIDE=on|off
// or SetPrefillWide says otherwise (kernels/attention_prefill_mma.cu argues the plan). On: its GPU
// tests passed on an H100 (TestPrefillWideMatchesNarrow bitwise, the sweeps against the CPU) and
// one A/B run measured one layer's prefill attention 1.10x faster at 2,048 tokens and 1.26x at
// 8,192, the whole prefill 1.015x and 1.085x, nothing slower (bench/results/gpu-h100/
// goals-2026-12-07-ab3).
const prefillWideDefault = true

// SetPrefillWide chooses the tensor-core prefill's tile plan for the steps prepared after it (the
// tiles are cut in Prepare): true the 128-row tiles where prefillTileRows takes them, false the
// 64-row ones. Prefill steps are never recorded as graphs (graph.go), so no recording holds the
// other plan.
func (b *Backend) SetPrefillWide(on bool) { b.prefillWide = on }

// prefillSplits is the prefill split rule: how many runs each of `tiles` tiles' key ranges is
// cut into, given the heads (blocks a tile), the longest tile's key count and the device's SMs.
// Enough runs that tiles x heads x splits blocks fill prefillSplitFill blocks an SM, none shorter
// than LP_PREFILL_SPLIT_KEYS keys, at most LP_PREFILL_MAX_SPLITS; 1 (the unsplit kernel) for any
// step whose tiles fill the GPU already. A 40-row chunk over 2,000 cached positions with 32
// heads on 132 SMs: min(16, 264 / 32, 2,040 / 128) = 8.
func prefillSplits(tiles, heads, keys, sms int) int {
	if tiles <= 0 || heads <= 0 {
		return 1
	}
	return max(1, min(maxPrefillSplits, prefillSplitFill*sms/(tiles*heads), keys/int(C.LP_PREFILL_SPLIT_KEYS)))
}

// prefillSplitCount is this step's split count for one layer's tensor-core prefill launch: 1
// with the switch off (or in deterministic mode, whose steps have no tiles anyway:
// deterministic.go), else prefillSplits over the step's longest key range, cut to the layer's
// sliding window (a tile's rows then see at most window + tile rows - 1 keys).
func (b *Backend) prefillSplitCount(p model.AttnParams) int {
	if !b.prefillSplit || b.batchInvariant {
		return 1
	}
	keys := b.tileKeys
	if p.Window > 0 {
		keys = min(keys, p.Window+b.tileRows-1)
	}
	return prefillSplits(b.numTiles, p.Heads, keys, b.sms)
}

// decodeSplits returns the grid depth and chunk floor of this step's decode attention over n
// rows: the fill rule's depth follows n (part of the step key), the context rule's the step's
// longest context (Prepare, added to the key by BeginStep).
// In deterministic mode (deterministic.go) it is the context rule whatever the switch says: a
// row splits min(depth, ceil(V / LP_DECODE_SPLIT_CHUNK)) ways (depth LP_DECODE_DEPTH, or
// LP_DECODE_MAX_SPLITS under SetDecodeDeep: fixed for the backend, not the step), a function of its
// own visible positions V alone (the step's depth, the largest row's count, is never below a
// row's own), and the depth is in the step key already (BeginStep).
// The grouped kernel's fill rule counts one block per kv head and may go up to
// LP_DECODE_DEPTH deep (LP_DECODE_MAX_SPLITS under SetDecodeDeep), with a floor of
// LP_GQ_FILL_CHUNK positions a chunk (SetGroupedFillChunk) so that short contexts do not split
// into chunks of a few keys (a block's tile is GQ_TILE keys wide).
func (b *Backend) decodeSplits(n, heads, kvHeads int, grouped bool) (splits, chunk int) {
	if b.batchInvariant {
		return b.ctxSplits, int(C.LP_DECODE_SPLIT_CHUNK)
	}
	switch b.decodeSplit {
	case DecodeSplitContext:
		return b.ctxSplits, int(C.LP_DECODE_SPLIT_CHUNK)
	case DecodeSplitOff:
		return 1, 1
	}
	if grouped {
		return decodeFillSplits(n, kvHeads, b.decodeDepth, b.sms), b.gqFillChunk
	}
	return decodeFillSplits(n, heads, int(C.LP_DECODE_SPLITS), b.sms), 1
}

// decodeFillSplits is the fill rule's grid depth for n decode rows of `blocks` blocks each
// (heads, or kv heads for the grouped kernel): most, halved while the blocks would pass four a
// multiprocessor. A function of n and the device alone, as the step key needs.
func decodeFillSplits(n, blocks, most, sms int) int {
	splits := most
	for splits > 1 && n*blocks*splits > 4*sms {
		splits /= 2
	}
	return splits
}
