package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
)

// Config is the architecture of a decoder-only model, read from a Hugging Face config.json.
// One struct serves Llama, Mistral, Qwen2 and Qwen3: they differ only in the flags below.
type Config struct {
	Architecture string // the HF class, e.g. "LlamaForCausalLM"
	Family       string // "llama", "mistral", "qwen2", "qwen3"

	VocabSize        int
	HiddenSize       int
	IntermediateSize int
	NumLayers        int
	NumHeads         int
	NumKVHeads       int
	HeadDim          int
	MaxPositions     int
	RMSNormEps       float64
	TieEmbeddings    bool

	QKVBias bool // bias on q/k/v (Qwen2 always; Llama/Qwen3 with attention_bias)
	OBias   bool // bias on o_proj (Llama/Qwen3 with attention_bias)
	MLPBias bool // bias on gate/up/down (Llama mlp_bias)
	QKNorm  bool // per-head RMSNorm of q and k before RoPE (Qwen3)

	// SlidingWindow > 0 limits attention to the last SlidingWindow positions: in every layer
	// (Mistral), or in the layers WindowLayers marks (Qwen2 and Qwen3 with use_sliding_window:
	// transformers' layer_types, by default the layers from max_window_layers on). LayerWindow
	// gives a layer's.
	SlidingWindow int
	WindowLayers  []bool // nil: every layer

	Rope RopeConfig

	BOSTokenID  int   // -1 when absent
	EOSTokenIDs []int // may be empty
	TorchDType  string
}

// RopeConfig describes rotary position embeddings. Type is "default", "linear", "llama3" or "yarn".
type RopeConfig struct {
	Type  string
	Theta float64
	// Factor scales positions (linear), or the context (llama3, yarn).
	Factor float64
	// llama3
	LowFreqFactor, HighFreqFactor float64
	OriginalMaxPositions          int
	// yarn
	BetaFast, BetaSlow   float64
	AttentionFactor      float64 // 0 = derived from Factor
	MScale, MScaleAllDim float64
	Truncate             bool
	// PartialRotaryFactor < 1 rotates only part of each head; only 1 is supported.
}

// ErrUnsupported marks a model or option loraplex does not implement. Errors wrapping it name the
// option so the user knows what to change.
var ErrUnsupported = errors.New("unsupported")

type rawConfig struct {
	Architectures         []string         `json:"architectures"`
	ModelType             string           `json:"model_type"`
	VocabSize             int              `json:"vocab_size"`
	HiddenSize            int              `json:"hidden_size"`
	IntermediateSize      int              `json:"intermediate_size"`
	NumHiddenLayers       int              `json:"num_hidden_layers"`
	NumAttentionHeads     int              `json:"num_attention_heads"`
	NumKeyValueHeads      *int             `json:"num_key_value_heads"`
	HeadDim               *int             `json:"head_dim"`
	MaxPositionEmbeddings int              `json:"max_position_embeddings"`
	RMSNormEps            *float64         `json:"rms_norm_eps"`
	TieWordEmbeddings     *bool            `json:"tie_word_embeddings"`
	AttentionBias         *bool            `json:"attention_bias"`
	MLPBias               bool             `json:"mlp_bias"`
	HiddenAct             string           `json:"hidden_act"`
	SlidingWindow         *int             `json:"sliding_window"`
	UseSlidingWindow      bool             `json:"use_sliding_window"`
	MaxWindowLayers       *int             `json:"max_window_layers"`
	LayerTypes            []string         `json:"layer_types"`
	RopeTheta             *float64         `json:"rope_theta"`
	RopeScaling           map[string]any   `json:"rope_scaling"`
	RopeParameters        map[string]any   `json:"rope_parameters"`
	PartialRotaryFactor   *float64         `json:"partial_rotary_factor"`
	BOSTokenID            json.RawMessage  `json:"bos_token_id"`
	EOSTokenID            json.RawMessage  `json:"eos_token_id"`
	TorchDType            string           `json:"torch_dtype"`
	DType                 string           `json:"dtype"`
	QuantizationConfig    map[string]any   `json:"quantization_config"`
	TextConfig            *json.RawMessage `json:"text_config"`
}

var families = map[string]string{
	"LlamaForCausalLM":   "llama",
	"MistralForCausalLM": "mistral",
	"Qwen2ForCausalLM":   "qwen2",
	"Qwen3ForCausalLM":   "qwen3",
}

// LoadConfig reads dir/config.json.
func LoadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses a config.json written by transformers 4.x (rope_theta + rope_scaling) or 5.x
// (rope_parameters).
func ParseConfig(data []byte) (*Config, error) {
	var r rawConfig
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	if len(r.Architectures) != 1 {
		return nil, fmt.Errorf("config.json: architectures must name exactly one class, got %v", r.Architectures)
	}
	c := &Config{Architecture: r.Architectures[0]}
	fam, ok := families[c.Architecture]
	if !ok {
		return nil, fmt.Errorf("architecture %q: %w (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)", c.Architecture, ErrUnsupported)
	}
	c.Family = fam
	if r.QuantizationConfig != nil {
		return nil, fmt.Errorf("quantization_config: %w (quantized checkpoints are not supported; use F32, BF16 or F16 weights)", ErrUnsupported)
	}
	if r.HiddenAct != "" && r.HiddenAct != "silu" {
		return nil, fmt.Errorf("hidden_act %q: %w (only silu)", r.HiddenAct, ErrUnsupported)
	}
	if r.PartialRotaryFactor != nil && *r.PartialRotaryFactor != 1 {
		return nil, fmt.Errorf("partial_rotary_factor %v: %w", *r.PartialRotaryFactor, ErrUnsupported)
	}
	c.VocabSize, c.HiddenSize, c.IntermediateSize = r.VocabSize, r.HiddenSize, r.IntermediateSize
	c.NumLayers, c.NumHeads = r.NumHiddenLayers, r.NumAttentionHeads
	c.MaxPositions = r.MaxPositionEmbeddings
	for _, f := range []struct {
		name string
		v    int
	}{{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumLayers}, {"num_attention_heads", c.NumHeads}} {
		if f.v <= 0 {
			return nil, fmt.Errorf("config.json: %s must be positive, got %d", f.name, f.v)
		}
	}
	c.NumKVHeads = c.NumHeads
	if r.NumKeyValueHeads != nil {
		c.NumKVHeads = *r.NumKeyValueHeads
	}
	if c.NumKVHeads <= 0 || c.NumHeads%c.NumKVHeads != 0 {
		return nil, fmt.Errorf("config.json: num_key_value_heads %d must divide num_attention_heads %d", c.NumKVHeads, c.NumHeads)
	}
	if r.HeadDim != nil && *r.HeadDim > 0 {
		c.HeadDim = *r.HeadDim
	} else {
		if c.HiddenSize%c.NumHeads != 0 {
			return nil, fmt.Errorf("config.json: hidden_size %d is not a multiple of num_attention_heads %d and head_dim is not given", c.HiddenSize, c.NumHeads)
		}
		c.HeadDim = c.HiddenSize / c.NumHeads
	}
	if c.HeadDim%2 != 0 {
		return nil, fmt.Errorf("config.json: head_dim %d must be even for rotary embeddings", c.HeadDim)
	}
	c.RMSNormEps = 1e-6
	if r.RMSNormEps != nil {
		c.RMSNormEps = *r.RMSNormEps
	}
	// Defaults of tie_word_embeddings differ by family in transformers: False for Llama/Mistral/Qwen2
	// configs written without it, True for Qwen3.
	c.TieEmbeddings = fam == "qwen3"
	if r.TieWordEmbeddings != nil {
		c.TieEmbeddings = *r.TieWordEmbeddings
	}
	attnBias := false
	if r.AttentionBias != nil {
		attnBias = *r.AttentionBias
	}
	switch fam {
	case "qwen2":
		c.QKVBias = true
	case "mistral":
	default: // llama, qwen3
		c.QKVBias, c.OBias = attnBias, attnBias
	}
	c.MLPBias = fam == "llama" && r.MLPBias
	c.QKNorm = fam == "qwen3"
	switch fam {
	case "mistral":
		if r.SlidingWindow != nil {
			c.SlidingWindow = *r.SlidingWindow
		}
	case "qwen2", "qwen3":
		if r.UseSlidingWindow {
			if err := parseLayerWindows(&r, c); err != nil {
				return nil, err
			}
		}
	}
	if err := parseRope(&r, c); err != nil {
		return nil, err
	}
	c.BOSTokenID = -1
	if ids, err := intOrList(r.BOSTokenID); err != nil {
		return nil, fmt.Errorf("config.json: bos_token_id: %w", err)
	} else if len(ids) > 0 {
		c.BOSTokenID = ids[0]
	}
	ids, err := intOrList(r.EOSTokenID)
	if err != nil {
		return nil, fmt.Errorf("config.json: eos_token_id: %w", err)
	}
	c.EOSTokenIDs = ids
	c.TorchDType = r.TorchDType
	if c.TorchDType == "" {
		c.TorchDType = r.DType
	}
	return c, nil
}

// parseLayerWindows reads Qwen2/Qwen3's sliding window as transformers does: sliding_window
// applies to the layers layer_types calls "sliding_attention", or without layer_types to layers
// max_window_layers (default 28) and up.
func parseLayerWindows(r *rawConfig, c *Config) error {
	if r.SlidingWindow == nil || *r.SlidingWindow <= 0 {
		return fmt.Errorf("config.json: use_sliding_window needs a positive sliding_window")
	}
	c.SlidingWindow = *r.SlidingWindow
	c.WindowLayers = make([]bool, c.NumLayers)
	if r.LayerTypes != nil {
		if len(r.LayerTypes) != c.NumLayers {
			return fmt.Errorf("config.json: layer_types has %d entries for %d layers", len(r.LayerTypes), c.NumLayers)
		}
		for i, t := range r.LayerTypes {
			switch t {
			case "sliding_attention":
				c.WindowLayers[i] = true
			case "full_attention":
			default:
				return fmt.Errorf("config.json: layer_types[%d] %q: %w (full_attention or sliding_attention)", i, t, ErrUnsupported)
			}
		}
		return nil
	}
	first := 28
	if r.MaxWindowLayers != nil {
		first = *r.MaxWindowLayers
	}
	for i := range c.WindowLayers {
		c.WindowLayers[i] = i >= first
	}
	return nil
}

// LayerWindow is layer l's sliding window (0: full attention).
func (c *Config) LayerWindow(l int) int {
	if c.WindowLayers != nil && !c.WindowLayers[l] {
		return 0
	}
	return c.SlidingWindow
}

func intOrList(raw json.RawMessage) ([]int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one int
	if err := json.Unmarshal(raw, &one); err == nil {
		return []int{one}, nil
	}
	var many []int
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fmt.Errorf("want an integer or a list of integers, got %s", raw)
	}
	return many, nil
}

func parseRope(r *rawConfig, c *Config) error {
	// transformers 5 writes rope_parameters (with rope_theta inside); 4.x writes rope_theta and an
	// optional rope_scaling. Either may be present; rope_parameters wins.
	params := r.RopeParameters
	if params == nil {
		params = r.RopeScaling
	}
	rc := RopeConfig{Type: "default", Theta: 10000, Factor: 1, BetaFast: 32, BetaSlow: 1, Truncate: true}
	if r.RopeTheta != nil {
		rc.Theta = *r.RopeTheta
	}
	num := func(key string, dst *float64) error {
		v, ok := params[key]
		if !ok || v == nil {
			return nil
		}
		f, ok := v.(float64)
		if !ok {
			return fmt.Errorf("config.json: rope %s must be a number, got %v", key, v)
		}
		*dst = f
		return nil
	}
	if params != nil {
		t, _ := params["rope_type"].(string)
		if t == "" {
			t, _ = params["type"].(string)
		}
		if t != "" {
			rc.Type = t
		}
		var orig float64
		for key, dst := range map[string]*float64{
			"rope_theta": &rc.Theta, "factor": &rc.Factor, "low_freq_factor": &rc.LowFreqFactor,
			"high_freq_factor": &rc.HighFreqFactor, "original_max_position_embeddings": &orig,
			"beta_fast": &rc.BetaFast, "beta_slow": &rc.BetaSlow, "attention_factor": &rc.AttentionFactor,
			"mscale": &rc.MScale, "mscale_all_dim": &rc.MScaleAllDim,
		} {
			if err := num(key, dst); err != nil {
				return err
			}
		}
		rc.OriginalMaxPositions = int(orig)
		if v, ok := params["truncate"].(bool); ok {
			rc.Truncate = v
		}
	}
	switch rc.Type {
	case "default":
	case "linear":
		if rc.Factor <= 0 {
			return fmt.Errorf("config.json: linear rope factor must be positive")
		}
	case "llama3":
		if rc.Factor <= 0 || rc.LowFreqFactor <= 0 || rc.HighFreqFactor <= rc.LowFreqFactor || rc.OriginalMaxPositions <= 0 {
			return fmt.Errorf("config.json: llama3 rope needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings")
		}
	case "yarn":
		if rc.Factor < 1 {
			return fmt.Errorf("config.json: yarn rope factor must be >= 1")
		}
		if rc.OriginalMaxPositions == 0 {
			rc.OriginalMaxPositions = c.MaxPositions
		}
	default:
		return fmt.Errorf("rope type %q: %w (supported: default, linear, llama3, yarn)", rc.Type, ErrUnsupported)
	}
	c.Rope = rc
	return nil
}

// ProjShape returns (out, in) of a projection's weight [out, in].
func (c *Config) ProjShape(p Proj) (out, in int) {
	q, kv := c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	switch p {
	case ProjQ:
		return q, c.HiddenSize
	case ProjK, ProjV:
		return kv, c.HiddenSize
	case ProjO:
		return c.HiddenSize, q
	case ProjGate, ProjUp:
		return c.IntermediateSize, c.HiddenSize
	case ProjDown:
		return c.HiddenSize, c.IntermediateSize
	}
	panic(fmt.Sprintf("model: bad projection %d", p))
}

// InvFreq returns the rotary inverse frequencies (HeadDim/2 of them) and the factor cos and sin
// are multiplied by (1 except for yarn), following transformers' rope initialisation functions.
func (c *Config) InvFreq() (inv []float64, attnScale float64) {
	rc, dim := c.Rope, c.HeadDim
	half := dim / 2
	inv = make([]float64, half)
	// transformers and vLLM compute 1 / theta^(2i/dim) in float32, each operation rounded; so
	// do we, so that tens of thousands of positions out the angles are still the reference's.
	theta32, dim32 := float32(rc.Theta), float32(dim)
	for i := range inv {
		exp := float32(2*i) / dim32
		inv[i] = float64(1 / float32(math.Pow(float64(theta32), float64(exp))))
	}
	attnScale = 1
	switch rc.Type {
	case "linear":
		for i := range inv {
			inv[i] /= rc.Factor
		}
	case "llama3":
		old := float64(rc.OriginalMaxPositions)
		lowWavelen, highWavelen := old/rc.LowFreqFactor, old/rc.HighFreqFactor
		for i, f := range inv {
			wavelen := 2 * math.Pi / f
			switch {
			case wavelen < highWavelen: // high frequency: keep
			case wavelen > lowWavelen: // low frequency: interpolate fully
				inv[i] = f / rc.Factor
			default: // in between: blend
				smooth := (old/wavelen - rc.LowFreqFactor) / (rc.HighFreqFactor - rc.LowFreqFactor)
				inv[i] = (1-smooth)*f/rc.Factor + smooth*f
			}
		}
	case "yarn":
		mscale := func(scale, m float64) float64 {
			if scale <= 1 {
				return 1
			}
			return 0.1*m*math.Log(scale) + 1
		}
		attnScale = rc.AttentionFactor
		if attnScale == 0 {
			if rc.MScale != 0 && rc.MScaleAllDim != 0 {
				attnScale = mscale(rc.Factor, rc.MScale) / mscale(rc.Factor, rc.MScaleAllDim)
			} else {
				attnScale = mscale(rc.Factor, 1)
			}
		}
		orig := float64(rc.OriginalMaxPositions)
		corr := func(rot float64) float64 {
			return float64(dim) * math.Log(orig/(rot*2*math.Pi)) / (2 * math.Log(rc.Theta))
		}
		low, high := corr(rc.BetaFast), corr(rc.BetaSlow)
		if rc.Truncate {
			low, high = math.Floor(low), math.Ceil(high)
		}
		low, high = math.Max(low, 0), math.Min(high, float64(dim-1))
		if low == high {
			high += 0.001
		}
		for i, f := range inv {
			ramp := math.Min(math.Max((float64(i)-low)/(high-low), 0), 1)
			extrapolation := 1 - ramp
			inv[i] = f/rc.Factor*(1-extrapolation) + f*extrapolation
		}
	}
	return inv, attnScale
}
