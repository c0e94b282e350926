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

// Attention is exact softmax attention over the paged cache: scores for every visible
// position, a max-subtracted softmax, then the weighted sum of values. Work items are
// (row, KV head) pairs over the whole step, so one pool run covers every sequence, and each
// item serves all query heads of its KV group: a key or value row is read once for the group
// (three or four heads under GQA) instead of once per head. Each worker has its own scores.
func (b *Backend) Attention(out, q model.Tensor, layer int, p model.AttnParams) {
	s := b.step
	D := p.HeadDim
	if q.Cols != p.Heads*D || out.Cols != q.Cols || q.Rows != len(s.Tokens) || out.Rows != q.Rows || D != b.kv.HeadDim || p.KVHeads != b.kv.KVHeads {
		panic(fmt.Sprintf("cpu: Attention q %s out %s heads %d/%d dim %d", q.Shape(), out.Shape(), p.Heads, p.KVHeads, D))
	}
	qs, os := f32(q), f32(out)
	kc, vc := b.kcache[layer], b.vcache[layer]
	width, group, ps := p.KVHeads*D, p.Heads/p.KVHeads, b.kv.PageSize
	maxLen := 0
	for _, sq := range s.Seqs {
		maxLen = max(maxLen, sq.Len)
	}
	b.pool.run(len(s.Tokens)*p.KVHeads, 1, func(w, lo, hi int) {
		buf := b.scratchFor(w, group*maxLen+2*group)
		maxScore, inv, all := buf[:group], buf[group:2*group], buf[2*group:]
		for item := lo; item < hi; item++ {
			row, kvh := item/p.KVHeads, item%p.KVHeads
			sq := &s.Seqs[b.rowSeq[row]]
			pos := int(s.Positions[row])
			first := 0
			if p.Window > 0 {
				first = max(0, pos-p.Window+1)
			}
			n := pos + 1
			koff := kvh * D
			for g := 0; g < group; g++ {
				maxScore[g] = float32(math.Inf(-1))
			}
			for t := first; t <= pos; t++ {
				slot := int(sq.Pages[t/ps])*ps + t%ps
				kr := kc[slot*width+koff : slot*width+koff+D]
				for g := 0; g < group; g++ {
					h := kvh*group + g
					sc := dotF32(qs[row*q.Cols+h*D:row*q.Cols+h*D+D], kr) * p.Scale
					all[g*n+t] = sc
					maxScore[g] = max(maxScore[g], sc)
				}
			}
			for g := 0; g < group; g++ {
				scores := all[g*n : g*n+n]
				var sum float32
				for t := first; t <= pos; t++ {
					e := float32(math.Exp(float64(scores[t] - maxScore[g])))
					scores[t] = e
					sum += e
				}
				inv[g] = 1 / sum
				h := kvh*group + g
				clear(os[row*out.Cols+h*D : row*out.Cols+h*D+D])
			}
			for t := first; t <= pos; t++ {
				slot := int(sq.Pages[t/ps])*ps + t%ps
				vr := vc[slot*width+koff : slot*width+koff+D]
				for g := 0; g < group; g++ {
					h := kvh*group + g
					axpyF32(all[g*n+t]*inv[g], vr, os[row*out.Cols+h*D:row*out.Cols+h*D+D])
				}
			}
		}
	})
}

// scratchFor returns worker w's buffer with room for n floats, growing it only when a longer
// sequence than ever before shows up.
func (b *Backend) scratchFor(w, n int) []float32 {
	if cap(b.scratch[w]) < n {
		b.scratch[w] = make([]float32, n+n/2)
	}
	return b.scratch[w][:n]
}
