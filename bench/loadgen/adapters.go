package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// WriteAdapters writes n random PEFT LoRA adapters of the given rank for cfg under dir, named
// adapter-00, adapter-01, ..., and returns the names. The weights are random rather than PEFT's
// B = 0 initialisation so that the adapters change the output: the cost of applying them is the
// same either way, but a server that silently skipped them would then show up in the text.
func WriteAdapters(dir string, cfg *model.Config, n, rank int, targets []model.Proj, seed uint64) ([]string, error) {
	var names []string
	mods := make([]string, len(targets))
	for i, p := range targets {
		mods[i] = p.String()
	}
	for a := range n {
		name := fmt.Sprintf("adapter-%02d", a)
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(path, 0o755); err != nil {
			return nil, err
		}
		conf, _ := json.Marshal(map[string]any{
			"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none", "lora_dropout": 0.0,
			"target_modules": mods, "use_rslora": false, "use_dora": false, "fan_in_fan_out": false,
		})
		if err := os.WriteFile(filepath.Join(path, "adapter_config.json"), conf, 0o644); err != nil {
			return nil, err
		}
		rng := rand.New(rand.NewPCG(seed, uint64(a)))
		var ts []safetensors.Tensor
		for l := range cfg.NumLayers {
			for _, p := range targets {
				out, in := cfg.ProjShape(p)
				key := fmt.Sprintf("base_model.model.model.layers.%d.%s.%s", l, p.Block(), p)
				// A like kaiming-uniform, B small: the update is a perturbation, not a new model.
				ts = append(ts,
					randomF32(rng, key+".lora_A.weight", rank, in, 1/math.Sqrt(float64(in))),
					randomF32(rng, key+".lora_B.weight", out, rank, 0.02))
			}
		}
		if err := safetensors.WriteFile(filepath.Join(path, "adapter_model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

func randomF32(rng *rand.Rand, name string, rows, cols int, scale float64) safetensors.Tensor {
	data := make([]byte, 4*rows*cols)
	for i := 0; i < len(data); i += 4 {
		binary.LittleEndian.PutUint32(data[i:], math.Float32bits(float32(scale*(2*rng.Float64()-1))))
	}
	return safetensors.Tensor{Name: name, DType: "F32", Shape: []int{rows, cols}, Data: data}
}

// ParseTargets reads "q_proj,v_proj" or "all".
func ParseTargets(s string) ([]model.Proj, error) {
	if s == "all" || s == "all-linear" {
		var out []model.Proj
		for p := model.Proj(0); p < model.NumProj; p++ {
			out = append(out, p)
		}
		return out, nil
	}
	var out []model.Proj
	for _, name := range splitList(s) {
		p, ok := model.ParseProj(name)
		if !ok {
			return nil, fmt.Errorf("target module %q: want q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all", name)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no target modules")
	}
	return out, nil
}
