// Package benchenv is what the adapter-cache benchmarks (bench/coldload, bench/adaptercache)
// share: model shapes, a random-weight tensor source, random PEFT adapters written to disk,
// backend selection (CPU always, CUDA with the `cuda` build tag) and the host-to-device copy
// measurements used as the roofline of an upload.
package benchenv

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// Shapes are config.json bodies: "8b" is Meta-Llama-3-8B, "small" a 4-layer Llama for CPU runs.
var Shapes = map[string]string{
	"8b":    `{"architectures":["LlamaForCausalLM"],"vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":8192,"rope_theta":500000,"rms_norm_eps":1e-5,"tie_word_embeddings":false}`,
	"small": `{"architectures":["LlamaForCausalLM"],"vocab_size":4096,"hidden_size":256,"intermediate_size":704,"num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":2,"max_position_embeddings":4096,"rope_theta":500000,"rms_norm_eps":1e-5,"tie_word_embeddings":false}`,
}

// Config parses one of Shapes.
func Config(shape string) (*model.Config, error) {
	s, ok := Shapes[shape]
	if !ok {
		return nil, fmt.Errorf("shape %q: want 8b or small", shape)
	}
	return model.ParseConfig([]byte(s))
}

// Backend is a model.Backend the benchmarks can close.
type Backend interface {
	model.Backend
	Name() string
}

// Copies reports whether the backend copies tensors on Upload (CUDA) rather than aliasing the
// host memory (CPU), the way serve.NewEngine decides adaptercache.Options.UploadCopies.
func Copies(b model.Backend) bool { return !model.AliasesUploads(b) }

// RandomBF16 returns n random bf16 values uniform in ±scale, generated on all cores.
func RandomBF16(n int, scale float64, seed uint64) []byte {
	buf := make([]byte, 2*n)
	workers := runtime.NumCPU()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := w * n / workers; i < (w+1)*n/workers; i++ {
				bits := math.Float32bits(float32((r.Float64()*2 - 1) * scale))
				buf[2*i], buf[2*i+1] = byte(bits>>16), byte(bits>>24)
			}
		}(w)
	}
	wg.Wait()
	return buf
}

// RandomSource serves every base-model tensor from one shared buffer of random bf16 values
// (bench/gpu uses it too): the values do not matter for timing, only the bytes read.
type RandomSource struct {
	names []string
	shape map[string][]int
	buf   []byte
}

// NewRandomSource builds the source for cfg.
func NewRandomSource(cfg *model.Config) *RandomSource {
	s := &RandomSource{shape: map[string][]int{}}
	add := func(name string, shape ...int) {
		s.names = append(s.names, name)
		s.shape[name] = shape
	}
	add("model.embed_tokens.weight", cfg.VocabSize, cfg.HiddenSize)
	add("model.norm.weight", cfg.HiddenSize)
	if !cfg.TieEmbeddings {
		add("lm_head.weight", cfg.VocabSize, cfg.HiddenSize)
	}
	biggest := cfg.VocabSize * cfg.HiddenSize
	for l := 0; l < cfg.NumLayers; l++ {
		pre := fmt.Sprintf("model.layers.%d.", l)
		add(pre+"input_layernorm.weight", cfg.HiddenSize)
		add(pre+"post_attention_layernorm.weight", cfg.HiddenSize)
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := cfg.ProjShape(p)
			add(pre+p.Block()+"."+p.String()+".weight", out, in)
			biggest = max(biggest, out*in)
		}
	}
	s.buf = RandomBF16(biggest, 0.02, 7)
	return s
}

func (s *RandomSource) Names() []string          { return s.names }
func (s *RandomSource) Where(name string) string { return "random" }
func (s *RandomSource) Tensor(name string) (safetensors.Tensor, bool) {
	shape, ok := s.shape[name]
	if !ok {
		return safetensors.Tensor{}, false
	}
	if len(shape) == 1 { // norm weights: ones, as float32
		data := make([]byte, 4*shape[0])
		for i := 0; i < shape[0]; i++ {
			data[4*i+2], data[4*i+3] = 0x80, 0x3f
		}
		return safetensors.Tensor{Name: name, DType: "F32", Shape: shape, Data: data}, true
	}
	return safetensors.Tensor{Name: name, DType: "BF16", Shape: shape, Data: s.buf[:2*shape[0]*shape[1]]}, true
}

// Release drops the shared buffer once the weights are uploaded to a backend that copies them.
func (s *RandomSource) Release() { s.buf = nil }

// RandomWeights uploads a random-weight model of cfg's shape to b.
func RandomWeights(cfg *model.Config, b model.Backend) (*model.Weights, error) {
	src := NewRandomSource(cfg)
	return model.UploadWeights(src, cfg, b)
}

// AdapterSpec describes random PEFT adapters.
type AdapterSpec struct {
	Rank    int
	Targets []model.Proj
}

// AllProj is every projection of a Llama block.
func AllProj() []model.Proj {
	var out []model.Proj
	for p := model.Proj(0); p < model.NumProj; p++ {
		out = append(out, p)
	}
	return out
}

// ParseTargets reads "q_proj,v_proj" or "all".
func ParseTargets(s string) ([]model.Proj, error) {
	if s == "all" || s == "all-linear" {
		return AllProj(), nil
	}
	var out []model.Proj
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			name := s[start:i]
			start = i + 1
			if name == "" {
				continue
			}
			p, ok := model.ParseProj(name)
			if !ok {
				return nil, fmt.Errorf("target module %q", name)
			}
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no target modules in %q", s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Bytes is the adapter's size in bf16.
func (a AdapterSpec) Bytes(cfg *model.Config) int64 {
	var n int64
	for _, p := range a.Targets {
		out, in := cfg.ProjShape(p)
		n += int64(a.Rank * (out + in))
	}
	return 2 * n * int64(cfg.NumLayers)
}

// WritePEFT writes one bf16 PEFT adapter folder. values(name, rows, cols, isB) gives each
// factor's bytes (rows*cols bf16 values).
func (a AdapterSpec) WritePEFT(dir string, cfg *model.Config, values func(name string, rows, cols int, isB bool) []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	mods := make([]string, len(a.Targets))
	for i, p := range a.Targets {
		mods[i] = p.String()
	}
	conf, _ := json.Marshal(map[string]any{
		"peft_type": "LORA", "r": a.Rank, "lora_alpha": 2 * a.Rank, "bias": "none", "lora_dropout": 0.0,
		"target_modules": mods, "use_rslora": false, "use_dora": false, "fan_in_fan_out": false,
		"base_model_name_or_path": "meta-llama/Meta-Llama-3-8B",
	})
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), conf, 0o644); err != nil {
		return err
	}
	var ts []safetensors.Tensor
	for l := range cfg.NumLayers {
		for _, p := range a.Targets {
			out, in := cfg.ProjShape(p)
			key := fmt.Sprintf("base_model.model.model.layers.%d.%s.%s", l, p.Block(), p)
			ts = append(ts,
				safetensors.Tensor{Name: key + ".lora_A.weight", DType: "BF16", Shape: []int{a.Rank, in}, Data: values(key+".lora_A.weight", a.Rank, in, false)},
				safetensors.Tensor{Name: key + ".lora_B.weight", DType: "BF16", Shape: []int{out, a.Rank}, Data: values(key+".lora_B.weight", out, a.Rank, true)})
		}
	}
	return safetensors.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), ts, map[string]string{"format": "pt"})
}

// PEFTFactors draws factors the way compression.md describes: A as peft initialises it
// (kaiming-uniform, U(±1/√in)), B Gaussian with std 0.01, each from its own seed.
func PEFTFactors(seed uint64) func(name string, rows, cols int, isB bool) []byte {
	var i uint64
	return func(name string, rows, cols int, isB bool) []byte {
		i++
		n := rows * cols
		buf := make([]byte, 2*n)
		// Large factors are generated on all cores in chunks with their own streams.
		chunks := max(1, min(runtime.NumCPU(), n/(1<<16)))
		var wg sync.WaitGroup
		for c := 0; c < chunks; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, i<<8|uint64(c)))
				bound := 1 / math.Sqrt(float64(cols))
				for j := c * n / chunks; j < (c+1)*n/chunks; j++ {
					var v float64
					if isB {
						v = 0.01 * r.NormFloat64()
					} else {
						v = bound * (2*r.Float64() - 1)
					}
					bits := math.Float32bits(float32(v))
					buf[2*j], buf[2*j+1] = byte(bits>>16), byte(bits>>24)
				}
			}(c)
		}
		wg.Wait()
		return buf
	}
}

// Percentile of sorted-or-not values (nearest rank), in place sorted.
func Percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	sort.Float64s(v)
	k := int(math.Ceil(p/100*float64(len(v)))) - 1
	return v[min(max(k, 0), len(v)-1)]
}
