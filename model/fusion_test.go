package model_test

import (
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// composingBackend is the CPU backend with the fusion capabilities (DecodeFuser, LoRAGrouper,
// NormFuser) carried out by the CPU's own unfused ops, which is what every fused kernel must
// equal, and counted; with decline set it refuses every call.
type composingBackend struct {
	*cpu.Backend
	decline, declineNorms                      bool // refuse every call; refuse the NormFuser calls only
	declineNormSiLU                            bool // refuse NormGateUpSiLU only (CUDA's cuBLAS-sized steps)
	normedGateUp                               int  // NormMatMulShared calls of gate/up (two products)
	products, ropeKV, gateUp, groups, siluDown int
	folded                                     [2]int // FoldedProducts, NormFoldedProducts calls
	foldedSegs                                 int    // NormFoldedProducts calls with a projection of several segments
	loraSwiGLU                                 int    // NormGateUpLoRASwiGLU calls
	foldedGateUp                               int    // NormFoldedProducts calls of gate/up (two products)
	loraRoPE                                   int    // NormQKVLoRARoPE calls
	normed                                     [2]int // NormMatMulShared, NormGateUpSiLU calls
}

// normedRows carries out in's norm as the forward pass's unfused ops do, into a fresh tensor
// (the fused kernels never store it), and writes the new residual to in.Next, leaving in.X as
// it was: whatever the forward pass reads afterwards must come from in.Next.
func (c *composingBackend) normedRows(in model.NormedInput) model.Tensor {
	h := c.Alloc(in.X.Rows, in.X.Cols)
	if in.Delta.Rows == 0 {
		c.RMSNorm(h, in.X, in.Weight, in.Eps)
		return h
	}
	x := make([]float32, in.X.Rows*in.X.Cols)
	if err := c.Read(in.X, x); err != nil {
		panic(err)
	}
	if err := c.Write(in.Next, x); err != nil {
		panic(err)
	}
	c.AddRMSNorm(in.Next, in.Delta, h, in.Weight, in.Eps)
	return h
}

func (c *composingBackend) NormMatMulShared(outs []model.Tensor, in model.NormedInput, ws []model.Tensor) bool {
	if c.decline || c.declineNorms {
		return false
	}
	c.normed[0]++
	if len(ws) == 2 {
		c.normedGateUp++
	}
	h := c.normedRows(in)
	for i := range outs {
		c.MatMul(outs[i], h, ws[i])
	}
	return true
}

func (c *composingBackend) NormGateUpSiLU(act model.Tensor, in model.NormedInput, wGate, wUp model.Tensor) bool {
	if c.decline || c.declineNorms || c.declineNormSiLU {
		return false
	}
	c.normed[1]++
	h := c.normedRows(in)
	gate, up := c.Alloc(h.Rows, wGate.Rows), c.Alloc(h.Rows, wUp.Rows)
	c.MatMul(gate, h, wGate)
	c.MatMul(up, h, wUp)
	c.SiluMul(act, gate, up)
	return true
}

func (c *composingBackend) MatMulShared(outs []model.Tensor, x model.Tensor, ws []model.Tensor) bool {
	if c.decline {
		return false
	}
	c.products++
	for i := range outs {
		c.MatMul(outs[i], x, ws[i])
	}
	return true
}

func (c *composingBackend) SiLUMulMatMul(outs []model.Tensor, act, gate, up model.Tensor, ws []model.Tensor) bool {
	if c.decline {
		return false
	}
	c.siluDown++
	c.SiluMul(act, gate, up)
	for i := range outs {
		c.MatMul(outs[i], act, ws[i])
	}
	return true
}

// NormGateUpLoRASwiGLU is a norm fusion too: the backends that decline norms decline it, and,
// as CUDA does, it declines one-row steps (the GEMV's, where gate/up fold instead).
func (c *composingBackend) NormGateUpLoRASwiGLU(out, act, gate, up model.Tensor, in model.NormedInput, wGate, wUp, wDown model.Tensor,
	segs [2][]model.LoRASeg) bool {
	if c.decline || c.declineNorms || in.X.Rows == 1 {
		return false
	}
	c.loraSwiGLU++
	h := c.normedRows(in) // reads in.Delta, which may be out, before out is written below
	c.MatMul(gate, h, wGate)
	c.MatMul(up, h, wUp)
	for i, t := range []model.Tensor{gate, up} {
		if len(segs[i]) > 0 {
			c.LoRA(t, h, segs[i])
		}
	}
	c.SiluMul(act, gate, up)
	c.MatMul(out, act, wDown)
	return true
}

// NormQKVLoRARoPE declines as NormGateUpLoRASwiGLU does.
func (c *composingBackend) NormQKVLoRARoPE(q, k, v model.Tensor, in model.NormedInput, ws [3]model.Tensor, segs [3][]model.LoRASeg,
	layer, heads, kvHeads int, table model.Tensor) bool {
	if c.decline || c.declineNorms || in.X.Rows == 1 {
		return false
	}
	c.loraRoPE++
	h := c.normedRows(in)
	for i, t := range [3]model.Tensor{q, k, v} {
		c.MatMul(t, h, ws[i])
		if len(segs[i]) > 0 {
			c.LoRA(t, h, segs[i])
		}
	}
	d := table.Cols
	c.RoPE(q.Reshape(q.Rows*q.Cols/d, d), heads, table)
	c.RoPE(k.Reshape(k.Rows*k.Cols/d, d), kvHeads, table)
	c.StoreKV(layer, k, v)
	return true
}

func (c *composingBackend) RoPEStoreKV(layer int, q, k, v model.Tensor, heads, kvHeads int, table model.Tensor) bool {
	if c.decline {
		return false
	}
	c.ropeKV++
	d := table.Cols
	c.RoPE(q.Reshape(q.Rows*q.Cols/d, d), heads, table)
	c.RoPE(k.Reshape(k.Rows*k.Cols/d, d), kvHeads, table)
	c.StoreKV(layer, k, v)
	return true
}

func (c *composingBackend) GateUpSiLU(act, x, wGate, wUp model.Tensor) bool {
	if c.decline {
		return false
	}
	c.gateUp++
	gate, up := c.Alloc(x.Rows, wGate.Rows), c.Alloc(x.Rows, wUp.Rows)
	c.MatMul(gate, x, wGate)
	c.MatMul(up, x, wUp)
	c.SiluMul(act, gate, up)
	return true
}

// foldedRest is the folded calls' work after the products: each bias, then each LoRA delta.
func (c *composingBackend) foldedRest(outs []model.Tensor, h model.Tensor, biases []model.Tensor, segs [][]model.LoRASeg) {
	for i, bias := range biases {
		if bias.Rows > 0 {
			c.AddBias(outs[i], bias)
		}
	}
	for i := range outs {
		if len(segs[i]) > 0 {
			c.LoRA(outs[i], h, segs[i])
		}
	}
}

// FoldedProducts takes what CUDA's folds take without the norm: projections whose one segment
// covers the step's rows (one adapter); other layouts go to the group and LoRA calls.
func (c *composingBackend) FoldedProducts(outs []model.Tensor, x model.Tensor, ws, biases []model.Tensor, segs [][]model.LoRASeg) bool {
	if c.decline {
		return false
	}
	for _, sg := range segs {
		if len(sg) > 1 || len(sg) == 1 && (sg[0].Start != 0 || sg[0].N != x.Rows) {
			return false
		}
	}
	c.folded[0]++
	for i := range outs {
		c.MatMul(outs[i], x, ws[i])
	}
	c.foldedRest(outs, x, biases, segs)
	return true
}

func (c *composingBackend) NormFoldedProducts(outs []model.Tensor, in model.NormedInput, ws, biases []model.Tensor, segs [][]model.LoRASeg) bool {
	if c.decline || c.declineNorms {
		return false
	}
	c.folded[1]++
	if len(ws) == 2 {
		c.foldedGateUp++
	}
	for _, sg := range segs {
		if len(sg) > 1 {
			c.foldedSegs++
			break
		}
	}
	h := c.normedRows(in)
	for i := range outs {
		c.MatMul(outs[i], h, ws[i])
	}
	c.foldedRest(outs, h, biases, segs)
	return true
}

func (c *composingBackend) LoRAGroup(outs []model.Tensor, x model.Tensor, segs [][]model.LoRASeg) bool {
	if c.decline {
		return false
	}
	c.groups++
	for i := range outs {
		if len(segs[i]) > 0 {
			c.LoRA(outs[i], x, segs[i])
		}
	}
	return true
}

// The forward pass gives a backend's fusion capabilities exactly the work of the ops they
// replace: with a backend that fuses by running its own unfused ops, or one that declines every
// call, every logit equals the plain backend's (Qwen2's q/k/v biases, Qwen3's Q/K norms, base
// and adapted rows in one batch, prefill chunked, each case alone), and the capabilities are
// used: shared-input products and RoPE + KV store in every layer, one group call for adapted
// q/k/v and gate/up, both norms folded into the products that read them where nothing else
// reads the normed state (the residual then living in the other buffer from one layer to the
// next), and, where the norms are not folded, gate/up + SiLU for steps with nothing to add to
// gate and up, and SwiGLU with the down projection's product for the others; where the backend
// folds the norm into the gate/up products but not into the activation, the norm goes there;
// projections whose one adapter covers the step's rows fold their LoRA into the products' call
// (LoRAFolder), and where the backend folds norms, the norm goes into that call whatever the
// step's adapters (several segments a projection included), adapted gate/up go with their norm,
// SwiGLU and the down product into one call (LoRASwiGLUer) and adapted q/k/v with their norm,
// RoPE and the KV store (LoRARoPEer) where nothing comes between; the group call takes the rest.
func TestForwardUsesFusionCapabilities(t *testing.T) {
	for _, name := range []string{"llama", "qwen2", "qwen3"} {
		t.Run(name, func(t *testing.T) {
			var results [5][]fixture.Result
			var fusing, unnormed, unsiluNormed *composingBackend
			for i := range results {
				b := &composingBackend{Backend: cpu.New(0), declineNorms: i == 2, decline: i == 3, declineNormSiLU: i == 4}
				t.Cleanup(b.Close)
				var mb model.Backend = b
				switch i {
				case 0:
					mb = b.Backend // the plain backend, no capabilities
				case 1:
					fusing = b
				case 2:
					unnormed = b
				case 4:
					unsiluNormed = b
				}
				fx, cfg, h := fixture.Open(t, name, mb)
				adapters := fixtureadapters.Upload(t, name, cfg, mb)
				runs := []struct {
					cases []fixture.Case
					chunk int
				}{{fx.Cases, 3}, {fx.Cases[:1], 1 << 20}, {fx.Cases[len(fx.Cases)-1:], 1 << 20}}
				for _, run := range runs {
					res, err := h.Run(run.cases, adapters, run.chunk, cpuTolerance)
					if err != nil {
						t.Fatal(err)
					}
					results[i] = append(results[i], res)
				}
			}
			for i, name := range []string{"fusing", "fusing all but the norms", "declining", "fusing the norms with the products only"} {
				for j := range results[0] {
					if results[i+1][j] != results[0][j] {
						t.Fatalf("run %d: the %s backend's logits differ from the plain backend's: %+v, plain %+v", j, name, results[i+1][j], results[0][j])
					}
				}
			}
			if unnormed.products == 0 || fusing.ropeKV == 0 || unnormed.groups == 0 || fusing.loraSwiGLU == 0 || fusing.foldedGateUp == 0 ||
				// Llama's q/k/v go with RoPE; Qwen2's (biases) and Qwen3's (Q/K norms) to the norm fold.
				(name == "llama") != (fusing.loraRoPE > 0) || (name == "llama") == (fusing.foldedSegs > 0) || fusing.siluDown == 0 || fusing.normed[0] == 0 || fusing.normed[1] == 0 || unnormed.gateUp == 0 ||
				unnormed.siluDown == 0 || unsiluNormed.normedGateUp == 0 || unsiluNormed.normed[1] != 0 || fusing.folded[1] == 0 || unnormed.folded[0] == 0 ||
				unnormed.folded[1] != 0 {
				t.Fatalf("fusion capabilities unused: %d shared-input products, %d RoPE + KV store, %d LoRA group calls, %d norm-folded calls of several segments, %d LoRA SwiGLU calls (%d folded gate/up, %d SwiGLU + down beside them), %d LoRA RoPE calls, %v norm-fused products, %d gate/up without them, %d SwiGLU + down, %d norm-fused gate/up products (%d with the activation), %v folded LoRA calls (%v without the norms)",
					unnormed.products, fusing.ropeKV, unnormed.groups, fusing.foldedSegs, fusing.loraSwiGLU, fusing.foldedGateUp, fusing.siluDown, fusing.loraRoPE, fusing.normed, unnormed.gateUp, unnormed.siluDown, unsiluNormed.normedGateUp, unsiluNormed.normed[1],
					fusing.folded, unnormed.folded)
			}
		})
	}
}
