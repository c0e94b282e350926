// Package demo holds the models that need no download. trained.go embeds the trained demo that
// `go run ./cmd/server` serves when no --model is given (a 6.8M-parameter Llama-architecture
// model, four LoRA adapters and a router over them); load.go loads such a folder on a backend
// for tests and benchmarks (Load, LoadDir, Perplexity).
//
// This file builds a second, untrained model in code (Build): deterministic pseudo-random
// weights over a byte-level tokenizer with a ChatML template. It produces random bytes, not
// language, and exists for gateway tests and load benchmarks that need a model of a fixed
// shape in well under a second, on any machine.
package demo

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
	"github.com/loraplex/loraplex/tokenizer"
)

// Name is the demo model's default served name.
const Name = "loraplex-demo"

// SpecialTokens are the demo tokenizer's added tokens, ids 256.. in this order.
var SpecialTokens = []string{"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"}

// ChatTemplate is ChatML, the format of the <|im_start|>/<|im_end|> tokens, with tools in the
// Hermes format that Qwen2.5 uses (vLLM's --tool-call-parser hermes, detected from the
// <tool_call> tag): the tools listed in a system message, an assistant's calls as
// <tool_call>{"name": ..., "arguments": ...}</tool_call>, tool results as <tool_response> in a
// user turn. Without tools, tool calls or tool messages it renders plain ChatML. The trained
// demo's tokenizer_config.json holds the same template (TestTrainedDemoTemplate).
const ChatTemplate = `{% if tools %}{{ '<|im_start|>system\n' }}` +
	`{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}` +
	`{{ '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}` +
	`{{ 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}` +
	`{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}` +
	`{{ '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n' }}` +
	`{{ '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}{% endif %}` +
	"{% for message in messages %}" +
	"{% if tools and loop.first and message['role'] == 'system' %}" +
	"{% elif message['role'] == 'assistant' and message['tool_calls'] %}" +
	"{{ '<|im_start|>assistant' }}{% if message['content'] %}{{ '\\n' + message['content'] }}{% endif %}" +
	"{% for call in message['tool_calls'] %}" +
	`{{ '\n<tool_call>\n{"name": "' + call['function']['name'] + '", "arguments": ' }}` +
	"{% if call['function']['arguments'] is string %}{{ call['function']['arguments'] }}{% else %}{{ call['function']['arguments'] | tojson }}{% endif %}" +
	`{{ '}\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\n' }}` +
	`{% elif message['role'] == 'tool' %}{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}` +
	"{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}" +
	"{% endfor %}" +
	"{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

// Shape of the demo network: small enough to build in well under a second and to answer quickly
// on a laptop CPU, big enough that batching and paging do real work.
const (
	hidden       = 256
	layers       = 4
	heads        = 8
	kvHeads      = 4
	intermediate = 688
	maxPositions = 2048
	seed         = 0x10a2a9_1e
)

// Build makes the demo model on b: its config, its weights (uploaded through
// model.UploadWeights from an in-memory source), its tokenizer and its chat template source.
// The same call always yields the same weights.
func Build(b model.Backend) (*model.Config, *model.Weights, *tokenizer.Tokenizer, string, error) {
	tok := tokenizer.NewByteLevelDemo(SpecialTokens)
	bos, _ := tok.TokenID("<|begin_of_text|>")
	eot, _ := tok.TokenID("<|end_of_text|>")
	imEnd, _ := tok.TokenID("<|im_end|>")
	cfgJSON := fmt.Sprintf(`{
		"architectures": ["LlamaForCausalLM"], "model_type": "llama",
		"vocab_size": %d, "hidden_size": %d, "intermediate_size": %d,
		"num_hidden_layers": %d, "num_attention_heads": %d, "num_key_value_heads": %d,
		"max_position_embeddings": %d, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
		"tie_word_embeddings": false, "hidden_act": "silu", "torch_dtype": "float32",
		"bos_token_id": %d, "eos_token_id": [%d, %d]}`,
		tok.VocabSize(), hidden, intermediate, layers, heads, kvHeads, maxPositions, bos, eot, imEnd)
	cfg, err := model.ParseConfig([]byte(cfgJSON))
	if err != nil {
		return nil, nil, nil, "", fmt.Errorf("demo: config: %w", err)
	}
	w, err := model.UploadWeights(newSource(cfg), cfg, b)
	if err != nil {
		return nil, nil, nil, "", fmt.Errorf("demo: weights: %w", err)
	}
	return cfg, w, tok, ChatTemplate, nil
}

// source is an in-memory model.TensorSource.
type source struct {
	names   []string
	tensors map[string]safetensors.Tensor
}

func (s *source) Names() []string { return s.names }
func (s *source) Tensor(name string) (safetensors.Tensor, bool) {
	t, ok := s.tensors[name]
	return t, ok
}
func (s *source) Where(string) string { return "demo model" }

func (s *source) add(name string, shape []int, data []byte) {
	s.names = append(s.names, name)
	s.tensors[name] = safetensors.Tensor{Name: name, DType: "F32", Shape: shape, Data: data}
}

// newSource generates every tensor of cfg. Matrices are uniform with the variance of a
// 1/sqrt(fan_in) initialisation so activations stay in range through the layers; norm weights
// are ones, as freshly initialised HF models have.
func newSource(cfg *model.Config) *source {
	s := &source{tensors: map[string]safetensors.Tensor{}}
	rng := rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
	matrix := func(name string, rows, cols int, std float64) {
		a := float32(std * math.Sqrt(3)) // uniform[-a, a] has standard deviation std
		buf := make([]byte, 4*rows*cols)
		for i := 0; i < len(buf); i += 4 {
			// Two values per 64-bit draw keeps generation cheap.
			if i%8 == 0 {
				r := rng.Uint64()
				binary.LittleEndian.PutUint32(buf[i:], math.Float32bits(a*(2*float32(uint32(r))/(1<<32)-1)))
				if i+4 < len(buf) {
					binary.LittleEndian.PutUint32(buf[i+4:], math.Float32bits(a*(2*float32(uint32(r>>32))/(1<<32)-1)))
				}
			}
		}
		s.add(name, []int{rows, cols}, buf)
	}
	ones := func(name string, n int) {
		buf := make([]byte, 4*n)
		for i := 0; i < n; i++ {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(1))
		}
		s.add(name, []int{n}, buf)
	}
	matrix("model.embed_tokens.weight", cfg.VocabSize, cfg.HiddenSize, 1)
	for l := 0; l < cfg.NumLayers; l++ {
		pre := fmt.Sprintf("model.layers.%d.", l)
		ones(pre+"input_layernorm.weight", cfg.HiddenSize)
		ones(pre+"post_attention_layernorm.weight", cfg.HiddenSize)
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := cfg.ProjShape(p)
			matrix(pre+p.Block()+"."+p.String()+".weight", out, in, 1/math.Sqrt(float64(in)))
		}
	}
	ones("model.norm.weight", cfg.HiddenSize)
	// A larger head scale makes the (random) next-token distribution peaked rather than uniform.
	matrix("lm_head.weight", cfg.VocabSize, cfg.HiddenSize, 4/math.Sqrt(float64(cfg.HiddenSize)))
	return s
}
