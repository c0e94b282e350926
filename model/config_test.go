package model

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestParseConfigFamilies(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		check      func(*Config) string
	}{
		{"llama4x", `{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":1,"rope_theta":500000,"rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,"original_max_position_embeddings":8192},"eos_token_id":[1,2],"attention_bias":true}`,
			func(c *Config) string {
				if c.Rope.Type != "llama3" || c.Rope.Theta != 500000 || c.Rope.OriginalMaxPositions != 8192 || c.NumKVHeads != 1 || c.HeadDim != 16 || !c.QKVBias || !c.OBias || len(c.EOSTokenIDs) != 2 || c.TieEmbeddings {
					return "llama3 fields"
				}
				return ""
			}},
		{"llama5x", `{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"rope_parameters":{"rope_type":"linear","factor":2.0,"rope_theta":1000.0}}`,
			func(c *Config) string {
				if c.Rope.Type != "linear" || c.Rope.Factor != 2 || c.Rope.Theta != 1000 || c.NumKVHeads != 4 {
					return "rope_parameters not read"
				}
				return ""
			}},
		{"qwen2 bias", `{"architectures":["Qwen2ForCausalLM"],"vocab_size":10,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2}`,
			func(c *Config) string {
				if !c.QKVBias || c.OBias || c.QKNorm {
					return "qwen2 has q/k/v bias only"
				}
				return ""
			}},
		{"qwen3 norm and tie default", `{"architectures":["Qwen3ForCausalLM"],"vocab_size":10,"hidden_size":64,"head_dim":32,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2}`,
			func(c *Config) string {
				if !c.QKNorm || c.HeadDim != 32 || !c.TieEmbeddings || c.QKVBias {
					return "qwen3 fields"
				}
				return ""
			}},
		{"mistral window", `{"architectures":["MistralForCausalLM"],"vocab_size":10,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"sliding_window":4096}`,
			func(c *Config) string {
				if c.SlidingWindow != 4096 {
					return "sliding window"
				}
				return ""
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if msg := tc.check(c); msg != "" {
				t.Fatalf("%s: %+v", msg, c)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	base := `"vocab_size":10,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4`
	for _, tc := range []struct {
		json, want  string
		unsupported bool
	}{
		{`{`, "config.json", false},
		{`{"architectures":["GPT2LMHeadModel"],` + base + `}`, "GPT2LMHeadModel", true},
		{`{"architectures":[],` + base + `}`, "exactly one", false},
		{`{"architectures":["LlamaForCausalLM"],"vocab_size":10}`, "hidden_size", false},
		{`{"architectures":["LlamaForCausalLM"],` + base + `,"num_key_value_heads":3}`, "divide", false},
		{`{"architectures":["LlamaForCausalLM"],` + base + `,"hidden_act":"gelu"}`, "hidden_act", true},
		{`{"architectures":["LlamaForCausalLM"],` + base + `,"rope_scaling":{"type":"dynamic","factor":2}}`, "dynamic", true},
		{`{"architectures":["LlamaForCausalLM"],` + base + `,"rope_scaling":{"rope_type":"llama3","factor":8}}`, "llama3", false},
		{`{"architectures":["LlamaForCausalLM"],` + base + `,"quantization_config":{"quant_method":"awq"}}`, "quantization", true},
		{`{"architectures":["Qwen2ForCausalLM"],` + base + `,"use_sliding_window":true}`, "sliding_window", false},
		{`{"architectures":["Qwen2ForCausalLM"],` + base + `,"use_sliding_window":true,"sliding_window":8,"layer_types":["full_attention"]}`, "layer_types", false},
		{`{"architectures":["Qwen3ForCausalLM"],` + base + `,"use_sliding_window":true,"sliding_window":8,"layer_types":["full_attention","chunked_attention"]}`, "chunked_attention", true},
		{`{"architectures":["LlamaForCausalLM"],` + base + `,"eos_token_id":"x"}`, "eos_token_id", false},
	} {
		_, err := ParseConfig([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrUnsupported) != tc.unsupported {
			t.Errorf("%s: err %v, want mention of %q (unsupported=%v)", tc.json, err, tc.want, tc.unsupported)
		}
	}
}

// TestInvFreqLlama3 checks the three bands of llama3 scaling against values worked by hand
// from transformers' _compute_llama3_parameters.
func TestInvFreqLlama3(t *testing.T) {
	c := &Config{HeadDim: 8, Rope: RopeConfig{Type: "llama3", Theta: 10000, Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 64}}
	inv, scale := c.InvFreq()
	// Base frequencies: 1, 0.1, 0.01, 0.001 -> wavelengths 6.3, 63, 628, 6283; bands split at
	// 16 (high) and 64 (low): keep, blend, divide, divide.
	want := []float64{1, 0, 0.01 / 8, 0.001 / 8}
	smooth := (64/(2*math.Pi/0.1) - 1) / (4 - 1)
	want[1] = (1-smooth)*0.1/8 + smooth*0.1
	for i := range want {
		// The base frequencies are float32 values, as transformers computes them.
		if math.Abs(inv[i]-want[i]) > 2e-7*want[i] {
			t.Fatalf("inv[%d] = %g, want %g", i, inv[i], want[i])
		}
	}
	if scale != 1 {
		t.Fatalf("scale %g", scale)
	}
}

// Qwen2 and Qwen3 slide their window only in some layers, as transformers decides: the layers
// layer_types calls sliding_attention, else those from max_window_layers (default 28) on;
// Mistral's window covers every layer, and without use_sliding_window there is none.
func TestLayerWindows(t *testing.T) {
	base := `"vocab_size":10,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":3,"num_attention_heads":4`
	for _, c := range []struct {
		json string
		want []int
	}{
		{`{"architectures":["MistralForCausalLM"],` + base + `,"sliding_window":5}`, []int{5, 5, 5}},
		{`{"architectures":["Qwen2ForCausalLM"],` + base + `,"sliding_window":5}`, []int{0, 0, 0}},
		{`{"architectures":["Qwen2ForCausalLM"],` + base + `,"use_sliding_window":true,"sliding_window":5,"max_window_layers":1}`, []int{0, 5, 5}},
		{`{"architectures":["Qwen2ForCausalLM"],` + base + `,"use_sliding_window":true,"sliding_window":5}`, []int{0, 0, 0}},
		{`{"architectures":["Qwen3ForCausalLM"],` + base + `,"use_sliding_window":true,"sliding_window":5,"max_window_layers":0,"layer_types":["sliding_attention","full_attention","sliding_attention"]}`, []int{5, 0, 5}},
	} {
		cfg, err := ParseConfig([]byte(c.json))
		if err != nil {
			t.Fatalf("%s: %v", c.json, err)
		}
		for l, want := range c.want {
			if got := cfg.LayerWindow(l); got != want {
				t.Errorf("%s: layer %d window %d, want %d", c.json, l, got, want)
			}
		}
	}
}
