package cpu

import (
	"fmt"
	"math"
	"sync/atomic"

	"github.com/loraplex/loraplex/model"
)

func (b *Backend) StoreKV(layer int, k, v model.Tensor) {
	width := b.kv.KVHeads * b.kv.HeadDim
	slots := b.step.Slots
	if k.Cols != width || v.Cols != width || k.Rows != len(slots) || v.Rows != len(slots) {
		panic(fmt.Sprintf("cpu: StoreKV k %s v %s into width %d for %d slots", k.Shape(), v.Shape(), width, len(slots)))
	}
	ks, vs := f32(k), f32(v)
	kc, vc := b.kcache[layer], b.vcache[layer]
	for i, s := range slots {
		copy(kc[int(s)*width:int(s+1)*width], ks[i*width:(i+1)*width])
		copy(vc[int(s)*width:int(s+1)*width], vs[i*width:(i+1)*width])
	}
}

// Attention is exact softmax attention over the paged cache: scores for every visible
// position, a max-subtracted softmax, then the weighted sum of values.
//
// It is tiled for prefill. A work item is (block of up to attnBlock rows of one sequence, KV
// head): it walks the pages its rows can see once, and every page's keys (then values) serve
// all the item's query vectors (its rows times the KV group's query heads under GQA) while the
// page is in L1, instead of each row re-reading the sequence's whole cache. The scores are kept
// per query vector for the positions the block can see (block rows x group x span floats per
// worker, never a T x T matrix). A decode row is a block of one. Items go to workers from a
// shared counter, the latest (costliest, under the causal mask) first, so two workers finish
// together however uneven the items are. The kernels (attnkern.go) make a row's result
// independent of the block, chunk or batch it is computed in.
func (b *Backend) Attention(out, q model.Tensor, layer int, p model.AttnParams) {
	s := b.step
	D := p.HeadDim
	if q.Cols != p.Heads*D || out.Cols != q.Cols || q.Rows != len(s.Tokens) || out.Rows != q.Rows || D != b.kv.HeadDim || p.KVHeads != b.kv.KVHeads ||
		p.KVHeads <= 0 || p.Heads%p.KVHeads != 0 {
		panic(fmt.Sprintf("cpu: Attention q %s out %s heads %d/%d dim %d", q.Shape(), out.Shape(), p.Heads, p.KVHeads, D))
	}
	j := &b.attn
	j.items = j.items[:0]
	for i, sq := range s.Seqs {
		for r := sq.Start; r < sq.Start+sq.N; r += attnBlock {
			j.items = append(j.items, attnItem{seq: int32(i), lo: int32(r), hi: int32(min(r+attnBlock, sq.Start+sq.N))})
		}
	}
	j.b, j.s, j.p = b, s, p
	j.qs, j.os = f32(q), f32(out)
	j.kc, j.vc = b.kcache[layer], b.vcache[layer]
	j.total = len(j.items) * p.KVHeads
	j.next.Store(0)
	b.pool.run(min(j.total, b.workers), 1, j.fn)
	j.b, j.s, j.qs, j.os, j.kc, j.vc = nil, nil, nil, nil, nil, nil
}

// attnBlock is the most rows of one sequence an attention item takes. 16 rows of 2-4 query
// heads reuse each key and value row 32-64 times from L1; bigger blocks balance worse between
// workers on short chunks and grow the per-worker scores.
const attnBlock = 16

type attnItem struct{ seq, lo, hi int32 }

// attnJob is one Attention call's operands; fn is its run method, bound once (New), so handing
// it to the pool allocates nothing.
type attnJob struct {
	b      *Backend
	s      *model.Step
	p      model.AttnParams
	qs, os []float32
	kc, vc []float32
	items  []attnItem
	total  int
	next   atomic.Int64
	fn     func(worker, lo, hi int)
}

func (j *attnJob) run(w, _, _ int) {
	for {
		i := int(j.next.Add(1)) - 1
		if i >= j.total {
			return
		}
		i = j.total - 1 - i
		j.item(w, j.items[i/j.p.KVHeads], i%j.p.KVHeads)
	}
}

// item computes the rows [it.lo, it.hi) of one sequence for the query heads of KV head kvh.
func (j *attnJob) item(w int, it attnItem, kvh int) {
	s, p := j.s, j.p
	sq := &s.Seqs[it.seq]
	D, ps := p.HeadDim, j.b.kv.PageSize
	width, group, qcols := p.KVHeads*D, p.Heads/p.KVHeads, p.Heads*D
	koff := kvh * D
	// The positions the block sees: [lo, hi], page-aligned to [base, base+span).
	lo, hi := math.MaxInt, 0
	for r := it.lo; r < it.hi; r++ {
		lo, hi = min(lo, j.first(int(s.Positions[r]))), max(hi, int(s.Positions[r]))
	}
	pg0, pg1 := lo/ps, hi/ps
	base, span := pg0*ps, (pg1-pg0+1)*ps
	nv := int(it.hi-it.lo) * group
	buf := j.b.scratchFor(w, nv+nv*span)
	inv, sc := buf[:nv], buf[nv:]
	// vector v = (row it.lo + v/group, head kvh*group + v%group): its query, output and scores.
	qvec := func(v int) []float32 {
		o := (int(it.lo)+v/group)*qcols + (kvh*group+v%group)*D
		return j.qs[o : o+D]
	}
	ovec := func(v int) []float32 {
		o := (int(it.lo)+v/group)*qcols + (kvh*group+v%group)*D
		return j.os[o : o+D]
	}
	for pg := pg0; pg <= pg1; pg++ {
		slot := int(sq.Pages[pg]) * ps
		keys := j.kc[slot*width+koff : (slot+ps-1)*width+koff+D]
		for v := 0; v < nv; v++ {
			pos := int(s.Positions[int(it.lo)+v/group])
			if pg*ps > pos || pg*ps+ps <= j.first(pos) {
				continue // no position of this page is visible to the row
			}
			scores(qvec(v), keys, width, p.Scale, sc[v*span+pg*ps-base:v*span+pg*ps-base+ps])
		}
	}
	for v := 0; v < nv; v++ {
		pos := int(s.Positions[int(it.lo)+v/group])
		row := sc[v*span+j.first(pos)-base : v*span+pos-base+1]
		inv[v] = 1 / expSub(row, maxF32(row))
		clear(ovec(v))
	}
	for pg := pg0; pg <= pg1; pg++ {
		slot := int(sq.Pages[pg]) * ps
		for v := 0; v < nv; v++ {
			pos := int(s.Positions[int(it.lo)+v/group])
			t0, t1 := max(pg*ps, j.first(pos)), min(pg*ps+ps-1, pos)
			if t0 > t1 {
				continue
			}
			vals := j.vc[(slot+t0-pg*ps)*width+koff:]
			accum(sc[v*span+t0-base:v*span+t1-base+1], vals, width, ovec(v))
		}
	}
	for v := 0; v < nv; v++ {
		o := ovec(v)
		for i := range o {
			o[i] *= inv[v]
		}
	}
}

// first is the first position a row at pos sees: 0, or the start of its sliding window.
func (j *attnJob) first(pos int) int {
	if j.p.Window > 0 {
		return max(0, pos-j.p.Window+1)
	}
	return 0
}

// scratchFor returns worker w's buffer with room for n floats, growing it only when a longer
// sequence than ever before shows up.
func (b *Backend) scratchFor(w, n int) []float32 {
	if cap(b.scratch[w]) < n {
		b.scratch[w] = make([]float32, n+n/2)
	}
	return b.scratch[w][:n]
}
