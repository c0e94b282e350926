package adaptercache

import (
	"errors"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// TestLoadPEFTErrors covers every way a well-formed safetensors file can still be a bad adapter.
// Each error must be an *AdapterError naming the adapter, the file and (where one is to blame)
// the tensor, and must say whether the problem is an unsupported option.
func TestLoadPEFTErrors(t *testing.T) {
	base := testBase(t)
	q0A := prefix + "model.layers.0.self_attn.q_proj.lora_A.weight"
	q0B := prefix + "model.layers.0.self_attn.q_proj.lora_B.weight"
	withoutB := func(ts []safetensors.Tensor) []safetensors.Tensor { return ts[:1] }
	withoutA := func(ts []safetensors.Tensor) []safetensors.Tensor { return ts[1:] }
	rest := [][]safetensors.Tensor{pair(base, 0, model.ProjV, 4), pair(base, 1, model.ProjQ, 4), pair(base, 1, model.ProjV, 4)}
	plus := func(extra ...[]safetensors.Tensor) [][]safetensors.Tensor { return append(qv(base), extra...) }
	one := func(ts ...safetensors.Tensor) []safetensors.Tensor { return ts }
	reshaped := func(name string, rows, cols int) []safetensors.Tensor { return one(f32(name, rows, cols)) }

	tests := []struct {
		name        string
		cfg         any
		tensors     [][]safetensors.Tensor
		tensor      string // blamed tensor ("" for none)
		msg         string
		unsupported bool
	}{
		{"missing B", baseCfg(), append(rest, withoutB(pair(base, 0, model.ProjQ, 4))), q0A, "no lora_B", false},
		{"missing A", baseCfg(), append(rest, withoutA(pair(base, 0, model.ProjQ, 4))), q0B, "no lora_A", false},
		{"A in dim", baseCfg(), append(rest, reshaped(q0A, 4, 32), one(f32(q0B, 64, 4))), q0A, "want [rank, 64]", false},
		{"A rank vs r", baseCfg(), append(rest, pair(base, 0, model.ProjQ, 3)), q0A, "rank 3", false},
		{"B out dim", baseCfg(), append(rest, one(f32(q0A, 4, 64)), reshaped(q0B, 32, 4)), q0B, "want [64, 4]", false},
		{"B rank", baseCfg(), append(rest, one(f32(q0A, 4, 64)), reshaped(q0B, 64, 2)), q0B, "want [64, 4]", false},
		{"A not 2-D", baseCfg(), append(rest, one(safetensors.Tensor{Name: q0A, DType: "F32", Shape: []int{4, 64, 1}, Data: make([]byte, 1024)}), one(f32(q0B, 64, 4))), q0A, "want [rank, 64]", false},
		{"r missing means 8", with(map[string]any{"r": nil}), plus(), q0A, "rank 4, adapter_config.json gives 8", false},
		{"rank_pattern vs A", with(map[string]any{"rank_pattern": map[string]any{"q_proj": 8}}), plus(), q0A, "rank 4, adapter_config.json gives 8", false},
		{"layer beyond base", baseCfg(), plus(pair(base, 2, model.ProjQ, 4)), prefix + "model.layers.2.self_attn.q_proj.lora_A.weight", "beyond the base model's 2 layers", false},
		{"lm_head", baseCfg(), plus(one(f32(prefix+"lm_head.lora_A.weight", 4, 64), f32(prefix+"lm_head.lora_B.weight", 100, 4))), prefix + "lm_head.lora_A.weight", "lm_head", true},
		{"embed_tokens", baseCfg(), plus(one(f32(prefix+"model.embed_tokens.lora_embedding_A", 4, 100))), prefix + "model.embed_tokens.lora_embedding_A", "embeddings", true},
		{"unknown projection", baseCfg(), plus(one(f32(prefix+"model.layers.0.self_attn.qkv_proj.lora_A.weight", 4, 64), f32(prefix+"model.layers.0.self_attn.qkv_proj.lora_B.weight", 64, 4))), prefix + "model.layers.0.self_attn.qkv_proj.lora_A.weight", "only the q/k/v/o", true},
		{"wrong block", baseCfg(), plus(one(f32(prefix+"model.layers.0.mlp.q_proj.lora_A.weight", 4, 64), f32(prefix+"model.layers.0.mlp.q_proj.lora_B.weight", 64, 4))), prefix + "model.layers.0.mlp.q_proj.lora_A.weight", "belongs to self_attn", false},
		{"modules_to_save copy", baseCfg(), plus(one(f32(prefix+"lm_head.modules_to_save.default.weight", 100, 64))), prefix + "lm_head.modules_to_save.default.weight", "modules_to_save", true},
		{"dora magnitude", baseCfg(), plus(one(safetensors.Tensor{Name: prefix + "model.layers.0.self_attn.q_proj.lora_magnitude_vector", DType: "F32", Shape: []int{64}, Data: make([]byte, 256)})), prefix + "model.layers.0.self_attn.q_proj.lora_magnitude_vector", "DoRA", true},
		{"lora bias", baseCfg(), plus(one(safetensors.Tensor{Name: prefix + "model.layers.0.self_attn.q_proj.lora_B.bias", DType: "F32", Shape: []int{64}, Data: make([]byte, 256)})), prefix + "model.layers.0.self_attn.q_proj.lora_B.bias", "lora_bias", true},
		{"other adapter name", baseCfg(), append(rest, pairKeys(base, 0, model.ProjQ, 4, prefix, ".other")), prefix + "model.layers.0.self_attn.q_proj.lora_A.other.weight", `adapter name "other"`, true},
		{"plain and default keys", baseCfg(), plus(pairKeys(base, 0, model.ProjQ, 4, prefix, ".default")), q0A, "with and without the adapter name", false},
		{"dtype F64", baseCfg(), append(rest, one(safetensors.Tensor{Name: q0A, DType: "F64", Shape: []int{4, 64}, Data: make([]byte, 2048)}), one(f32(q0B, 64, 4))), q0A, "dtype F64", true},
		{"dtype I8", baseCfg(), append(rest, one(f32(q0A, 4, 64)), one(safetensors.Tensor{Name: q0B, DType: "I8", Shape: []int{64, 4}, Data: make([]byte, 256)})), q0B, "dtype I8", true},
		{"not targeted", baseCfg(), plus(pair(base, 0, model.ProjK, 4)), prefix + "model.layers.0.self_attn.k_proj.lora_A.weight", "not selected", false},
		{"excluded layer", with(map[string]any{"layers_to_transform": 0}), plus(), prefix + "model.layers.1.self_attn.q_proj.lora_A.weight", "not selected", false},
		{"layers_pattern matches nothing", with(map[string]any{"layers_to_transform": []int{0, 1}, "layers_pattern": "h"}), plus(), prefix + "model.layers.0.self_attn.q_proj.lora_A.weight", "not selected", false},
		{"regex without wildcard", with(map[string]any{"target_modules": "q_proj"}), [][]safetensors.Tensor{pair(base, 0, model.ProjQ, 4)}, q0A, "not selected", false},
		{"targeted module missing", baseCfg(), rest, "", "model.layers.0.self_attn.q_proj is targeted", false},
		{"no tensors", baseCfg(), nil, "", "no LoRA tensors", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeAdapter(t, tc.cfg, tc.tensors...)
			a, closer, err := LoadPEFT(dir, "bad-one", base)
			if err == nil {
				closer.Close()
				t.Fatalf("loaded: %v", adapted(a))
			}
			var ae *AdapterError
			if !errors.As(err, &ae) {
				t.Fatalf("%T %v is not an *AdapterError", err, err)
			}
			if ae.Adapter != "bad-one" || !strings.HasSuffix(ae.File, PEFTWeightsFile) || ae.Tensor != tc.tensor {
				t.Errorf("got adapter %q file %q tensor %q, want tensor %q", ae.Adapter, ae.File, ae.Tensor, tc.tensor)
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "bad-one") {
				t.Errorf("error %q does not contain %q", err, tc.msg)
			}
			if errors.Is(err, model.ErrUnsupported) != tc.unsupported {
				t.Errorf("errors.Is(ErrUnsupported) = %v, want %v", !tc.unsupported, tc.unsupported)
			}
		})
	}
}

// TestConfigErrors covers adapter_config.json: malformed files and options that change the math.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name        string
		cfg         any
		msg         string
		unsupported bool
	}{
		{"not json", `{"r": `, "not valid JSON", false},
		{"not object", `[1]`, "not valid JSON", false},
		{"peft_type missing", with(map[string]any{"peft_type": nil}), "peft_type missing", true},
		{"peft_type IA3", with(map[string]any{"peft_type": "IA3"}), `peft_type "IA3"`, true},
		{"r zero", with(map[string]any{"r": 0}), "r: want a positive integer", false},
		{"r fractional", with(map[string]any{"r": 2.5}), "r: want a positive integer", false},
		{"r string", `{"peft_type":"LORA","r":"8"}`, `r: want a number, got "8"`, false},
		{"alpha string", with(map[string]any{"lora_alpha": "x"}), "lora_alpha: want a number", false},
		{"bias all", with(map[string]any{"bias": "all"}), `bias "all"`, true},
		{"bias lora_only", with(map[string]any{"bias": "lora_only"}), `bias "lora_only"`, true},
		{"dora", with(map[string]any{"use_dora": true}), "use_dora", true},
		{"fan_in_fan_out", with(map[string]any{"fan_in_fan_out": true}), "fan_in_fan_out", true},
		{"lora_bias", with(map[string]any{"lora_bias": true}), "lora_bias", true},
		{"qalora", with(map[string]any{"use_qalora": true}), "use_qalora", true},
		{"modules_to_save", with(map[string]any{"modules_to_save": []string{"lm_head"}}), "modules_to_save", true},
		{"alora", with(map[string]any{"alora_invocation_tokens": []int{1, 2}}), "alora_invocation_tokens", true},
		{"layer_replication", with(map[string]any{"layer_replication": [][]int{{0, 2}}}), "layer_replication", true},
		{"target_parameters", with(map[string]any{"target_parameters": []string{"experts.down_proj"}}), "target_parameters", true},
		{"trainable tokens", with(map[string]any{"trainable_token_indices": []int{5}}), "trainable_token_indices", true},
		{"bdlora", with(map[string]any{"use_bdlora": map[string]any{"nblocks": 2}}), "use_bdlora", true},
		{"pissa", with(map[string]any{"init_lora_weights": "pissa_niter_4"}), "modified base model", true},
		{"olora", with(map[string]any{"init_lora_weights": "olora"}), "modified base model", true},
		{"loftq", with(map[string]any{"init_lora_weights": "loftq"}), "modified base model", true},
		{"bad regex", with(map[string]any{"target_modules": "(q"}), "target_modules", true},
		{"lookahead regex", with(map[string]any{"target_modules": `.*(?=q_proj)q_proj`}), "RE2", true},
		{"target_modules number", with(map[string]any{"target_modules": 3}), "target_modules: want", false},
		{"layers with regex", with(map[string]any{"target_modules": ".*q_proj", "layers_to_transform": []int{0}}), "layers_to_transform cannot", false},
		{"layers_pattern with regex", with(map[string]any{"target_modules": ".*q_proj", "layers_pattern": "layers"}), "layers_pattern cannot", false},
		{"layers_pattern alone", with(map[string]any{"layers_pattern": "layers"}), "needs layers_to_transform", false},
		{"negative layer", with(map[string]any{"layers_to_transform": []int{-1}}), "non-negative", false},
		{"layers string", with(map[string]any{"layers_to_transform": "0"}), "layers_to_transform: want", false},
		{"rank_pattern not object", with(map[string]any{"rank_pattern": []int{1}}), "rank_pattern: want an object", false},
		{"rank_pattern zero", with(map[string]any{"rank_pattern": map[string]any{"q_proj": 0}}), "rank_pattern", false},
		{"rank_pattern string", with(map[string]any{"rank_pattern": map[string]any{"q_proj": "8"}}), "rank_pattern", false},
		{"alpha_pattern bad regex", with(map[string]any{"alpha_pattern": map[string]any{"(": 8}}), "alpha_pattern", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeAdapter(t, tc.cfg)
			_, closer, err := LoadPEFT(dir, "cfg", testBase(t))
			if err == nil {
				closer.Close()
				t.Fatal("loaded")
			}
			var ae *AdapterError
			if !errors.As(err, &ae) || ae.Adapter != "cfg" || !strings.HasSuffix(ae.File, PEFTConfigFile) || ae.Tensor != "" {
				t.Fatalf("got %#v", err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not contain %q", err, tc.msg)
			}
			if errors.Is(err, model.ErrUnsupported) != tc.unsupported {
				t.Errorf("%v: errors.Is(ErrUnsupported) = %v, want %v", err, !tc.unsupported, tc.unsupported)
			}
		})
	}
}

// Fields peft uses only in training, or that newer versions add, must not stop a load.
func TestConfigIgnoredFields(t *testing.T) {
	c, err := ParsePEFTConfig([]byte(`{"peft_type":"LORA","r":8,"lora_alpha":16.0,"target_modules":["q_proj"],
		"lora_dropout":0.1,"init_lora_weights":"gaussian","velora_config":{"num_groups":2},
		"eva_config":null,"loftq_config":{},"megatron_core":"megatron.core","task_type":"CAUSAL_LM",
		"inference_mode":true,"some_future_option":{"x":1},"alora_invocation_tokens":null,
		"layer_replication":null,"trainable_token_indices":null,"use_bdlora":null,"modules_to_save":[],
		"base_model_name_or_path":"meta-llama/Llama-3.2-1B","revision":null,"auto_mapping":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.R != 8 || c.Alpha != 16 || c.BaseModel != "meta-llama/Llama-3.2-1B" {
		t.Errorf("got %+v", c)
	}
	// lora_alpha defaults to 8, as in peft.
	c, err = ParsePEFTConfig([]byte(`{"peft_type":"LORA","r":4}`))
	if err != nil || c.Alpha != 8 || c.Scale("model.layers.0.self_attn.q_proj") != 2 {
		t.Errorf("default alpha: %+v %v", c, err)
	}
}
