package cpu

import (
	"fmt"
	"math"
	"runtime/debug"

	"github.com/loraplex/loraplex/model"
)

func (b *Backend) Embed(out, table model.Tensor) {
	if b.Err() != nil {
		return
	}
	defer b.guard(debug.SetPanicOnFault(true))
	ids := b.step.Tokens
	if out.Rows != len(ids) || out.Cols != table.Cols {
		panic(fmt.Sprintf("cpu: Embed %d ids into %s from %s", len(ids), out.Shape(), table.Shape()))
	}
	os, d := f32(out), table.Cols
	for i, id := range ids {
		if int(id) < 0 || int(id) >= table.Rows {
			panic(fmt.Sprintf("cpu: Embed token id %d outside the vocabulary of %d", id, table.Rows))
		}
		dst := os[i*d : i*d+d]
		switch table.DType {
		case model.F32:
			copy(dst, f32(table)[int(id)*d:int(id)*d+d])
		case model.BF16:
			src := bf16(table)[int(id)*d : int(id)*d+d]
			for j, u := range src {
				dst[j] = model.BF16ToF32(u)
			}
		}
	}
}

func (b *Backend) AddBias(x, bias model.Tensor) {
	if b.Err() != nil {
		return
	}
	defer b.guard(debug.SetPanicOnFault(true))
	if bias.Cols != x.Cols {
		panic(fmt.Sprintf("cpu: AddBias %s + %s", x.Shape(), bias.Shape()))
	}
	xs, bs := f32(x), f32(bias)
	for i := 0; i < x.Rows; i++ {
		row := xs[i*x.Cols : (i+1)*x.Cols]
		for j := range row {
			row[j] += bs[j]
		}
	}
}

// RMSNorm follows HF exactly: the mean of squares in float32, then x * rsqrt(ms + eps) * w.
func (b *Backend) RMSNorm(out, x, w model.Tensor, eps float32) {
	if b.Err() != nil {
		return
	}
	defer b.guard(debug.SetPanicOnFault(true))
	checkRows("RMSNorm", out, x)
	if w.Cols != x.Cols || out.Cols != x.Cols {
		panic(fmt.Sprintf("cpu: RMSNorm %s with weight %s", x.Shape(), w.Shape()))
	}
	xs, os, ws, d := f32(x), f32(out), f32(w), x.Cols
	for i := 0; i < x.Rows; i++ {
		rmsRow(os[i*d:(i+1)*d], xs[i*d:(i+1)*d], ws, eps)
	}
}

func (b *Backend) AddRMSNorm(x, delta, out, w model.Tensor, eps float32) {
	if b.Err() != nil {
		return
	}
	defer b.guard(debug.SetPanicOnFault(true))
	checkRows("AddRMSNorm", x, delta)
	checkRows("AddRMSNorm", x, out)
	if delta.Cols != x.Cols || out.Cols != x.Cols || w.Cols != x.Cols {
		panic(fmt.Sprintf("cpu: AddRMSNorm %s + %s -> %s with %s", x.Shape(), delta.Shape(), out.Shape(), w.Shape()))
	}
	xs, ds := f32(x), f32(delta)
	for i := range xs {
		xs[i] += ds[i]
	}
	b.RMSNorm(out, x, w, eps)
}

func rmsRow(out, x, w []float32, eps float32) {
	var ss float32
	for _, v := range x {
		ss += v * v
	}
	inv := float32(1 / math.Sqrt(float64(ss/float32(len(x))+eps)))
	for j, v := range x {
		out[j] = w[j] * (v * inv)
	}
}

// RoPE uses the rotate-half convention of HF Llama: the two halves of a head are the real and
// imaginary parts, not interleaved pairs.
func (b *Backend) RoPE(x model.Tensor, heads int, table model.Tensor) {
	pos := b.step.Positions
	if x.Rows != len(pos)*heads || table.Cols != x.Cols {
		panic(fmt.Sprintf("cpu: RoPE %s with %d heads, %d positions, table %s", x.Shape(), heads, len(pos), table.Shape()))
	}
	xs, ts, d := f32(x), f32(table), x.Cols
	half := d / 2
	for r := 0; r < x.Rows; r++ {
		p := int(pos[r/heads])
		cos, sin := ts[p*d:p*d+half], ts[p*d+half:p*d+d]
		row := xs[r*d : r*d+d]
		for j := 0; j < half; j++ {
			a, c := row[j], row[j+half]
			row[j] = a*cos[j] - c*sin[j]
			row[j+half] = c*cos[j] + a*sin[j]
		}
	}
}

// SiluMul computes silu(gate) * up, with silu(g) = g / (1 + e^-g) as torch does in float32
// (exp is expF32, within 2 ulp, eight lanes at a time: see attnkern.go).
func (b *Backend) SiluMul(out, gate, up model.Tensor) {
	checkRows("SiluMul", out, gate)
	checkRows("SiluMul", out, up)
	if gate.Cols != out.Cols || up.Cols != out.Cols {
		panic(fmt.Sprintf("cpu: SiluMul %s = silu(%s) * %s", out.Shape(), gate.Shape(), up.Shape()))
	}
	siluMul(f32(out), f32(gate), f32(up))
}

func (b *Backend) GatherRows(out, x model.Tensor) {
	rows := b.step.LogitRows
	if out.Rows != len(rows) || out.Cols != x.Cols {
		panic(fmt.Sprintf("cpu: GatherRows %d rows of %s into %s", len(rows), x.Shape(), out.Shape()))
	}
	os, xs, d := f32(out), f32(x), x.Cols
	for i, r := range rows {
		copy(os[i*d:(i+1)*d], xs[int(r)*d:int(r)*d+d])
	}
}
