//go:build cuda

package cuda

import (
	"testing"

	"github.com/loraplex/loraplex/model"
)

// The prefill split rule splits only steps whose tiles leave the GPU short of blocks, and only
// key ranges long enough to give every run LP_PREFILL_SPLIT_KEYS keys: a 40-row chunk over
// 2,000 cached positions (one tile, 32 heads, 132 SMs) splits 8 ways, a 2,048-row prompt (32
// tiles) and short ranges run unsplit, and the count never passes LP_PREFILL_MAX_SPLITS.
func TestPrefillSplitRule(t *testing.T) {
	for _, c := range []struct{ tiles, heads, keys, sms, want int }{
		{1, 32, 2040, 132, 8},
		{32, 32, 2048, 132, 1},
		{1, 32, 200, 132, 1},
		{1, 4, 5000, 132, 16},
		{2, 8, 640, 132, 5},
		{1, 32, 2040, 16, 1},
		{0, 32, 2040, 132, 1},
	} {
		if got := prefillSplits(c.tiles, c.heads, c.keys, c.sms); got != c.want || got > maxPrefillSplits {
			t.Errorf("prefillSplits(tiles %d, heads %d, keys %d, sms %d) = %d, want %d", c.tiles, c.heads, c.keys, c.sms, got, c.want)
		}
	}
}

// The split count of a step follows the switch, the layer's window, the tile plan and the mode:
// off or in deterministic mode the kernel runs unsplit; a sliding window bounds the keys a tile
// sees to the window plus the tile's rows less one, so the wide plan's 128-row tiles see more.
func TestPrefillSplitCount(t *testing.T) {
	b := &Backend{numTiles: 1, tileKeys: 5000, sms: 132, tileRows: prefillMMATile}
	p := model.AttnParams{Heads: 8}
	if got := b.prefillSplitCount(p); got != 1 {
		t.Errorf("switch off: %d splits, want 1", got)
	}
	b.SetPrefillSplit(true)
	if got := b.prefillSplitCount(p); got != 16 {
		t.Errorf("switch on, 5,000 keys: %d splits, want 16", got)
	}
	p.Window = 300 // 300 + 63 keys at most: two runs of at least 128
	if got := b.prefillSplitCount(p); got != 2 {
		t.Errorf("window 300: %d splits, want 2", got)
	}
	b.tileRows = prefillWideTile // 300 + 127 keys at most: three runs
	if got := b.prefillSplitCount(p); got != 3 {
		t.Errorf("window 300, 128-row tiles: %d splits, want 3", got)
	}
	b.batchInvariant = true
	if got := b.prefillSplitCount(p); got != 1 {
		t.Errorf("deterministic mode: %d splits, want 1", got)
	}
}

// The decode fill rule splits as deep as allowed while the blocks fit four a multiprocessor and
// halves from there, so a batch-1 step of 32 heads on 132 SMs splits 8 ways (the grouped
// kernel's 8 kv heads 32 ways), a 64-row step of short contexts runs unsplit, and the depth
// follows the device it runs on, never another backend's.
func TestDecodeFillSplits(t *testing.T) {
	for _, c := range []struct{ n, blocks, most, sms, want int }{
		{1, 32, 8, 132, 8},
		{1, 8, 32, 132, 32},
		{4, 8, 32, 132, 16},
		{64, 32, 8, 132, 1},
		{64, 8, 32, 132, 1},
		{1, 32, 8, 16, 2},
		{3, 7, 32, 114, 16},
	} {
		if got := decodeFillSplits(c.n, c.blocks, c.most, c.sms); got != c.want {
			t.Errorf("decodeFillSplits(n %d, blocks %d, most %d, sms %d) = %d, want %d", c.n, c.blocks, c.most, c.sms, got, c.want)
		}
	}
}

// The prefill tile plan: 32-row tiles on the CUDA-core kernel (any head dim it alone takes, or
// all with the tensor cores off); 64-row tiles on the tensor-core kernel, 128-row ones with the
// wide switch on for head dims 64, 80 and 128 and only for steps with a chunk of at least 128
// rows (a shorter chunk would leave most of a tall tile idle); head dim 256 keeps 64-row tiles.
func TestPrefillTilePlan(t *testing.T) {
	for _, c := range []struct {
		simt, wide         bool
		dim, longest, want int
	}{
		{false, false, 128, 2048, prefillMMATile},
		{false, true, 128, 2048, prefillWideTile},
		{false, true, 128, 128, prefillWideTile},
		{false, true, 128, 127, prefillMMATile},
		{false, true, 128, 0, prefillMMATile},
		{false, true, 64, 300, prefillWideTile},
		{false, true, 80, 300, prefillWideTile},
		{false, true, 256, 2048, prefillMMATile},
		{false, true, 48, 2048, prefillTile},
		{true, true, 128, 2048, prefillTile},
	} {
		b := &Backend{simtPrefill: c.simt, prefillWide: c.wide, kv: model.KVSpec{HeadDim: c.dim}}
		if got := b.prefillTileRows(c.longest); got != c.want {
			t.Errorf("cuda cores %v, wide %v, head dim %d, longest chunk %d: %d-row tiles, want %d", c.simt, c.wide, c.dim, c.longest, got, c.want)
		}
	}
}
