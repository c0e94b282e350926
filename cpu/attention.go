package cpu

import (
	"fmt"
	"math"

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

// Attention is exact softmax attention over the paged cache, one (row, head) at a time: scores
// for every visible position, a max-subtracted softmax, then the weighted sum of values.
// Work is spread over rows x heads; each worker has its own score buffer.
func (b *Backend) Attention(out, q model.Tensor, layer int, p model.AttnParams) {
	s := b.step
	D := p.HeadDim
	if q.Cols != p.Heads*D || out.Cols != q.Cols || q.Rows != len(s.Tokens) || out.Rows != q.Rows || D != b.kv.HeadDim || p.KVHeads != b.kv.KVHeads {
		panic(fmt.Sprintf("cpu: Attention q %s out %s heads %d/%d dim %d", q.Shape(), out.Shape(), p.Heads, p.KVHeads, D))
	}
	qs, os := f32(q), f32(out)
	kc, vc := b.kcache[layer], b.vcache[layer]
	width, group, ps := p.KVHeads*D, p.Heads/p.KVHeads, b.kv.PageSize
	for _, sq := range s.Seqs {
		sq := sq
		b.pool.run(sq.N*p.Heads, 4, func(w, lo, hi int) {
			scores := b.scratchFor(w, sq.Len)
			for item := lo; item < hi; item++ {
				row, h := sq.Start+item/p.Heads, item%p.Heads
				pos := int(s.Positions[row])
				first := 0
				if p.Window > 0 {
					first = max(0, pos-p.Window+1)
				}
				qh := qs[row*q.Cols+h*D : row*q.Cols+h*D+D]
				koff := (h / group) * D
				maxScore := float32(math.Inf(-1))
				for t := first; t <= pos; t++ {
					slot := int(sq.Pages[t/ps])*ps + t%ps
					sc := dotF32(qh, kc[slot*width+koff:slot*width+koff+D]) * p.Scale
					scores[t] = sc
					maxScore = max(maxScore, sc)
				}
				var sum float32
				for t := first; t <= pos; t++ {
					e := float32(math.Exp(float64(scores[t] - maxScore)))
					scores[t] = e
					sum += e
				}
				oh := os[row*out.Cols+h*D : row*out.Cols+h*D+D]
				clear(oh)
				inv := 1 / sum
				for t := first; t <= pos; t++ {
					slot := int(sq.Pages[t/ps])*ps + t%ps
					wt := scores[t] * inv
					axpyF32(wt, vc[slot*width+koff:slot*width+koff+D], oh)
				}
			}
		})
	}
}

// scratchFor returns worker w's buffer with room for n floats, growing it only when a longer
// sequence than ever before shows up.
func (b *Backend) scratchFor(w, n int) []float32 {
	if cap(b.scratch[w]) < n {
		b.scratch[w] = make([]float32, n+n/2)
	}
	return b.scratch[w][:n]
}
