package adaptercache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/loraplex/loraplex/model"
)

// PEFTConfig is the part of a PEFT adapter_config.json that decides which modules an adapter
// touches and with what rank and scale. Build it with ParsePEFTConfig.
type PEFTConfig struct {
	R         int
	Alpha     float64
	UseRSLoRA bool
	// BaseModel is base_model_name_or_path, informational only.
	BaseModel string

	targets  moduleSelector   // nil: target_modules was null, so the tensors decide
	exclude  moduleSelector   // nil: nothing excluded
	layers   []int            // layers_to_transform; nil or empty: all layers
	layerRes []*regexp.Regexp // from layers_pattern: where the layer index is in a name
	rankPat  []pattern[int]
	alphaPat []pattern[float64]
}

// rawPEFTConfig mirrors adapter_config.json. Fields whose type varies (a string or a list, an int
// or a list) stay raw. Unknown fields are ignored: newer peft versions add many, and those that
// change the math are listed in unsupportedIfSet.
type rawPEFTConfig struct {
	PeftType          *string         `json:"peft_type"`
	R                 json.RawMessage `json:"r"`
	LoraAlpha         json.RawMessage `json:"lora_alpha"`
	UseRSLoRA         *bool           `json:"use_rslora"`
	TargetModules     json.RawMessage `json:"target_modules"`
	ExcludeModules    json.RawMessage `json:"exclude_modules"`
	LayersToTransform json.RawMessage `json:"layers_to_transform"`
	LayersPattern     json.RawMessage `json:"layers_pattern"`
	RankPattern       json.RawMessage `json:"rank_pattern"`
	AlphaPattern      json.RawMessage `json:"alpha_pattern"`
	Bias              *string         `json:"bias"`
	UseDoRA           *bool           `json:"use_dora"`
	FanInFanOut       *bool           `json:"fan_in_fan_out"`
	LoraBias          *bool           `json:"lora_bias"`
	UseQALoRA         *bool           `json:"use_qalora"`
	ModulesToSave     json.RawMessage `json:"modules_to_save"`
	InitLoraWeights   json.RawMessage `json:"init_lora_weights"`
	BaseModel         *string         `json:"base_model_name_or_path"`
}

// unsupportedIfSet lists options that, when present and not null / false / empty, change what the
// adapter computes at inference in ways loraplex does not implement. Options that only affect
// training (lora_dropout, velora_config, loftq_config without loftq init, eva_config, ...) are
// ignored, like every field not named here.
var unsupportedIfSet = []struct{ key, why string }{
	{"alora_invocation_tokens", "activated LoRA applies the adapter only after the invocation tokens"},
	{"layer_replication", "layer replication changes the base model's layer stack"},
	{"target_parameters", "LoRA on raw parameters (MoE experts) is not implemented"},
	{"trainable_token_indices", "trainable tokens change embedding rows"},
	{"use_bdlora", "block-diagonal LoRA factors are not implemented"},
	{"arrow_config", "Arrow routing is not implemented"},
	{"kasa_config", "KaSA adds a singular-value diagonal and truncates the base weight"},
	{"monteclora_config", "MonteCLoRA adds variational sampling on top of LoRA"},
}

// ParsePEFTConfig parses and checks adapter_config.json. Errors wrapping model.ErrUnsupported
// name an option loraplex does not implement; other errors mean the file is malformed.
func ParsePEFTConfig(data []byte) (*PEFTConfig, error) {
	var r rawPEFTConfig
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	var all map[string]json.RawMessage
	_ = json.Unmarshal(data, &all) // cannot fail where the struct decode succeeded
	if r.PeftType == nil || *r.PeftType != "LORA" {
		got := "missing"
		if r.PeftType != nil {
			got = fmt.Sprintf("%q", *r.PeftType)
		}
		return nil, fmt.Errorf("peft_type %s: %w (only LORA adapters)", got, model.ErrUnsupported)
	}
	for _, u := range unsupportedIfSet {
		if isSet(all[u.key]) {
			return nil, fmt.Errorf("%s: %w (%s)", u.key, model.ErrUnsupported, u.why)
		}
	}
	if r.Bias != nil && *r.Bias != "none" {
		return nil, fmt.Errorf("bias %q: %w (adapters with trained biases; only bias \"none\")", *r.Bias, model.ErrUnsupported)
	}
	for _, f := range []struct {
		key string
		v   *bool
		why string
	}{
		{"use_dora", r.UseDoRA, "DoRA's magnitude vector is not implemented"},
		{"fan_in_fan_out", r.FanInFanOut, "transposed (Conv1D-style) weights are not supported"},
		{"lora_bias", r.LoraBias, "a bias on lora_B is not implemented"},
		{"use_qalora", r.UseQALoRA, "QA-LoRA pools the input and needs a GPTQ base"},
	} {
		if f.v != nil && *f.v {
			return nil, fmt.Errorf("%s: %w (%s)", f.key, model.ErrUnsupported, f.why)
		}
	}
	if isSet(r.ModulesToSave) {
		return nil, fmt.Errorf("modules_to_save %s: %w (full copies of modules such as lm_head or embed_tokens are not served)", compact(r.ModulesToSave), model.ErrUnsupported)
	}
	if err := checkInit(r.InitLoraWeights); err != nil {
		return nil, err
	}

	c := &PEFTConfig{}
	if r.BaseModel != nil {
		c.BaseModel = *r.BaseModel
	}
	// peft always writes r and lora_alpha; a hand-written config without them gets peft's
	// defaults (8 and 8), and the lora_A row count check still catches a wrong r.
	c.R, c.Alpha = 8, 8
	var err error
	if !isNull(r.R) {
		if c.R, err = number(r.R, positiveInt); err != nil {
			return nil, fmt.Errorf("r: %w", err)
		}
	}
	if !isNull(r.LoraAlpha) {
		if c.Alpha, err = number(r.LoraAlpha, finite); err != nil {
			return nil, fmt.Errorf("lora_alpha: %w", err)
		}
	}
	c.UseRSLoRA = r.UseRSLoRA != nil && *r.UseRSLoRA

	targetIsRegex := false
	if !isNull(r.TargetModules) {
		if c.targets, targetIsRegex, err = parseSelector(r.TargetModules, true); err != nil {
			return nil, fmt.Errorf("target_modules: %w", err)
		}
	}
	if !isNull(r.ExcludeModules) {
		if c.exclude, _, err = parseSelector(r.ExcludeModules, false); err != nil {
			return nil, fmt.Errorf("exclude_modules: %w", err)
		}
	}
	if !isNull(r.LayersToTransform) {
		if c.layers, err = intOrInts(r.LayersToTransform); err != nil {
			return nil, fmt.Errorf("layers_to_transform: %w", err)
		}
		if c.layers == nil {
			c.layers = []int{} // an explicit empty list: peft treats it as "all layers"
		}
	}
	// The same consistency rules peft's LoraConfig enforces on construction.
	if targetIsRegex && c.layers != nil {
		return nil, errors.New("layers_to_transform cannot be used when target_modules is a regex string")
	}
	if targetIsRegex && isSet(r.LayersPattern) {
		return nil, errors.New("layers_pattern cannot be used when target_modules is a regex string")
	}
	var layerPat []string
	if isSet(r.LayersPattern) {
		if layerPat, err = stringOrStrings(r.LayersPattern); err != nil {
			return nil, fmt.Errorf("layers_pattern: %w", err)
		}
	}
	if c.layerRes, err = compileLayerPatterns(layerPat); err != nil {
		return nil, fmt.Errorf("layers_pattern: %w", err)
	}
	if len(layerPat) > 0 && c.layers == nil {
		return nil, errors.New("layers_pattern needs layers_to_transform")
	}
	if c.rankPat, err = parsePatterns(r.RankPattern, positiveInt); err != nil {
		return nil, fmt.Errorf("rank_pattern: %w", err)
	}
	if c.alphaPat, err = parsePatterns(r.AlphaPattern, finite); err != nil {
		return nil, fmt.Errorf("alpha_pattern: %w", err)
	}
	return c, nil
}

// checkInit rejects initialisations that leave the adapter tied to a modified base model. PiSSA,
// OLoRA, CorDA and LoRA-GA move the top singular components out of the base weights and into the
// adapter, and LoftQ pairs the adapter with a quantised base: such an adapter is only correct on
// that residual base. peft's save_pretrained(path_initial_model_for_weight_conversion=...)
// converts it into a plain LoRA (and then writes init_lora_weights: true).
func checkInit(raw json.RawMessage) error {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return nil // true, false, null or absent: plain LoRA
	}
	for _, p := range []string{"pissa", "olora", "corda", "lora_ga", "loftq"} {
		if strings.HasPrefix(strings.ToLower(s), p) {
			return fmt.Errorf("init_lora_weights %q: %w (the adapter belongs to a modified base model; re-save it with peft's save_pretrained(..., path_initial_model_for_weight_conversion=...) to get a plain LoRA)", s, model.ErrUnsupported)
		}
	}
	return nil
}

// isSet reports whether a raw JSON value is present and not null, false, 0, "", [] or {}.
func isSet(raw json.RawMessage) bool {
	switch string(bytes.TrimSpace(raw)) {
	case "", "null", "false", "0", `""`:
		return false
	}
	return !isEmptyList(raw) && !isEmptyObject(raw)
}

// isNull reports an absent or null value.
func isNull(raw json.RawMessage) bool {
	t := string(bytes.TrimSpace(raw))
	return t == "" || t == "null"
}

// number converts a JSON number literal; unlike decoding into json.Number it refuses a quoted
// number ("8"), which peft would not accept either.
func number[T any](raw json.RawMessage, conv func(json.Number) (T, error)) (T, error) {
	var zero T
	t := bytes.TrimSpace(raw)
	var n json.Number
	if len(t) == 0 || t[0] == '"' || json.Unmarshal(t, &n) != nil {
		return zero, fmt.Errorf("want a number, got %s", compact(raw))
	}
	return conv(n)
}

func isEmptyList(raw json.RawMessage) bool {
	var l []json.RawMessage
	return json.Unmarshal(raw, &l) == nil && l != nil && len(l) == 0
}

func isEmptyObject(raw json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && m != nil && len(m) == 0
}

func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// positiveInt accepts an integer-valued JSON number >= 1 (peft writes 8, sometimes 8.0).
func positiveInt(n json.Number) (int, error) {
	f, err := n.Float64()
	if err != nil || f != math.Trunc(f) || f < 1 || f > math.MaxInt32 {
		return 0, fmt.Errorf("want a positive integer, got %s", n)
	}
	return int(f), nil
}

func finite(n json.Number) (float64, error) {
	f, err := n.Float64()
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("want a number, got %s", n)
	}
	return f, nil
}

func intOrInts(raw json.RawMessage) ([]int, error) {
	if v, err := number(raw, nonNegativeInt); err == nil {
		return []int{v}, nil
	} else if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] != '[' {
		return nil, fmt.Errorf("want an integer or a list of integers: %w", err)
	}
	var many []json.RawMessage
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fmt.Errorf("want an integer or a list of integers, got %s", compact(raw))
	}
	out := make([]int, len(many))
	for i, n := range many {
		v, err := number(n, nonNegativeInt)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func nonNegativeInt(n json.Number) (int, error) {
	f, err := n.Float64()
	if err != nil || f != math.Trunc(f) || f < 0 || f > math.MaxInt32 {
		return 0, fmt.Errorf("want a non-negative integer, got %s", n)
	}
	return int(f), nil
}

func stringOrStrings(raw json.RawMessage) ([]string, error) {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fmt.Errorf("want a string or a list of strings, got %s", compact(raw))
	}
	return many, nil
}
