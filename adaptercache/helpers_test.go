package adaptercache

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// testBase is a small Llama: hidden 64, 2 layers, 4 heads of 16, 2 kv heads, intermediate 128,
// so q/o are 64x64, k/v 32x64, gate/up 128x64 and down 64x128.
func testBase(t testing.TB) *model.Config {
	t.Helper()
	c, err := model.ParseConfig([]byte(`{
		"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100,
		"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
		"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
		"rms_norm_eps": 1e-5, "hidden_act": "silu"}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const prefix = "base_model.model."

// pair returns lora_A and lora_B for one module, F32, filled with a recognisable pattern.
func pair(base *model.Config, layer int, p model.Proj, rank int) []safetensors.Tensor {
	return pairKeys(base, layer, p, rank, prefix, "")
}

// pairKeys is pair with a key prefix and an infix after lora_A / lora_B (".default").
func pairKeys(base *model.Config, layer int, p model.Proj, rank int, pre, infix string) []safetensors.Tensor {
	out, in := base.ProjShape(p)
	mod := fmt.Sprintf("%smodel.layers.%d.%s.%s", pre, layer, p.Block(), p)
	return []safetensors.Tensor{
		f32(mod+".lora_A"+infix+".weight", rank, in),
		f32(mod+".lora_B"+infix+".weight", out, rank),
	}
}

func f32(name string, rows, cols int) safetensors.Tensor {
	data := make([]byte, rows*cols*4)
	for i := range rows * cols {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(i%7)*0.25))
	}
	return safetensors.Tensor{Name: name, DType: "F32", Shape: []int{rows, cols}, Data: data}
}

// baseCfg is a minimal adapter_config.json as peft writes it; tests override fields (a nil value
// deletes the field).
func baseCfg() map[string]any {
	return map[string]any{
		"peft_type": "LORA", "r": 4, "lora_alpha": 8, "bias": "none", "lora_dropout": 0.05,
		"target_modules": []string{"q_proj", "v_proj"}, "use_rslora": false, "use_dora": false,
		"fan_in_fan_out": false, "modules_to_save": nil, "init_lora_weights": true,
		"rank_pattern": map[string]any{}, "alpha_pattern": map[string]any{},
		"layers_to_transform": nil, "layers_pattern": nil, "peft_version": "0.21.0",
	}
}

func with(over map[string]any) map[string]any {
	c := baseCfg()
	for k, v := range over {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// writeAdapter creates an adapter folder in a temp dir. cfg may be a map (marshalled) or a raw
// string (written as is).
func writeAdapter(t *testing.T, cfg any, tensors ...[]safetensors.Tensor) string {
	t.Helper()
	dir := t.TempDir()
	var raw []byte
	switch c := cfg.(type) {
	case string:
		raw = []byte(c)
	default:
		var err error
		if raw, err = json.Marshal(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, PEFTConfigFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	var all []safetensors.Tensor
	for _, ts := range tensors {
		all = append(all, ts...)
	}
	if err := safetensors.WriteFile(filepath.Join(dir, PEFTWeightsFile), all, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// qv is every q and v module of the test base at rank 4: what baseCfg targets.
func qv(base *model.Config) [][]safetensors.Tensor {
	var out [][]safetensors.Tensor
	for l := range base.NumLayers {
		out = append(out, pair(base, l, model.ProjQ, 4), pair(base, l, model.ProjV, 4))
	}
	return out
}

// adapted lists the (layer, proj) pairs an adapter touches.
func adapted(a *model.HostAdapter) []string {
	var out []string
	for l := range a.Modules {
		for p, m := range a.Modules[l] {
			if m != nil {
				out = append(out, fmt.Sprintf("%d.%v", l, model.Proj(p)))
			}
		}
	}
	return out
}
