package model_test

import (
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// composingBackend is the CPU backend with the fusion capabilities (DecodeFuser, LoRAGrouper)
// carried out by the CPU's own unfused ops, which is what every fused kernel must equal, and
// counted; with decline set it refuses every call.
type composingBackend struct {
	*cpu.Backend
	decline                          bool
	products, ropeKV, gateUp, groups int
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
// used: shared-input products and RoPE + KV store in every layer, gate/up + SiLU for steps with
// nothing to add to gate and up, one group call for adapted q/k/v and gate/up.
func TestForwardUsesFusionCapabilities(t *testing.T) {
	for _, name := range []string{"llama", "qwen2", "qwen3"} {
		t.Run(name, func(t *testing.T) {
			var results [3][]fixture.Result
			var fusing *composingBackend
			for i := range results {
				b := &composingBackend{Backend: cpu.New(0), decline: i == 2}
				t.Cleanup(b.Close)
				var mb model.Backend = b
				if i == 0 {
					mb = b.Backend // the plain backend, no capabilities
				} else if i == 1 {
					fusing = b
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
			for i, name := range []string{"fusing", "declining"} {
				for j := range results[0] {
					if results[i+1][j] != results[0][j] {
						t.Fatalf("run %d: the %s backend's logits differ from the plain backend's: %+v, plain %+v", j, name, results[i+1][j], results[0][j])
					}
				}
			}
			if fusing.products == 0 || fusing.ropeKV == 0 || fusing.gateUp == 0 || fusing.groups == 0 {
				t.Fatalf("fusion capabilities unused: %d shared-input products, %d RoPE + KV store, %d gate/up, %d LoRA group calls",
					fusing.products, fusing.ropeKV, fusing.gateUp, fusing.groups)
			}
		})
	}
}
