package cpu

import (
	"fmt"

	"github.com/loraplex/loraplex/model"
)

// LoRA applies each segment as two skinny GEMMs at the adapter's own rank: shrink
// (t = x Aᵀ, [rows, r]) then expand (out += scale · t Bᵀ).
func (b *Backend) LoRA(out, x model.Tensor, segs []model.LoRASeg) {
	for _, sg := range segs {
		if sg.A.Cols != x.Cols || sg.B.Rows != out.Cols || sg.A.Rows != sg.B.Cols || sg.Start+sg.N > x.Rows {
			panic(fmt.Sprintf("cpu: LoRA x %s out %s A %s B %s rows [%d,+%d)", x.Shape(), out.Shape(), sg.A.Shape(), sg.B.Shape(), sg.Start, sg.N))
		}
		r := sg.A.Rows
		buf := b.loraScratch(sg.N * r)
		t := model.Tensor{Rows: sg.N, Cols: r, DType: model.F32, Buf: buf}
		b.gemm(t, x.Slice(sg.Start, sg.N), sg.A, 1, false)
		b.gemm(out.Slice(sg.Start, sg.N), t, sg.B, sg.Scale, true)
	}
}

// loraScratch is a dedicated buffer (not a worker's) because gemm hands work to every worker.
func (b *Backend) loraScratch(n int) []float32 {
	if cap(b.loraBuf) < n {
		b.loraBuf = make([]float32, n+n/2)
	}
	return b.loraBuf[:n]
}
