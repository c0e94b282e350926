package adaptercache

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/loraplex/loraplex/model"
)

// loraKey is a parsed PEFT tensor name.
type loraKey struct {
	module string // full module name as peft sees it: "model.layers.3.self_attn.q_proj"
	layer  int
	proj   model.Proj
	isB    bool
}

var (
	// peft's get_peft_model_state_dict writes base_model.model.<module>.lora_A.weight. Tools that
	// save the raw state_dict of a PeftModel keep the adapter name (".lora_A.default.weight"),
	// and transformers' own PEFT integration (model.add_adapter + save_pretrained) leaves out
	// the "base_model.model." prefix; all three name the same weights.
	loraKeyRe  = regexp.MustCompile(`^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.default)?\.weight$`)
	layerModRe = regexp.MustCompile(`^model\.layers\.(\d+)\.([^.]+)\.([^.]+)$`)
	namedKeyRe = regexp.MustCompile(`\.lora_[AB]\.([^.]+)\.weight$`)
)

// parseKey maps a tensor name to the projection it adapts. Every failure is unsupported: a key
// that is not one of the seven projections' lora_A / lora_B belongs to a feature loraplex does
// not serve.
func parseKey(name string) (loraKey, error) {
	if k, ok := fastKey(name); ok {
		return k, nil
	}
	return regexpKey(name)
}

// fastKey reads a key of the usual form, [base_model.model.]model.layers.<n>.<block>.<proj>.
// lora_A|lora_B[.default].weight with n written without leading zeros and block the one proj
// belongs to, without the regexps: matching them was two thirds of buildAdapter, ~0.7 ms of a
// cold load's critical path for the 448 keys of a rank-16 8B adapter. ok is false for any
// other name, which regexpKey then reads (or refuses, with its reason); FuzzParseKey holds the
// two to the same key wherever fastKey answers.
func fastKey(name string) (k loraKey, ok bool) {
	s := strings.TrimPrefix(name, "base_model.model.")
	for _, suffix := range [...]string{".lora_A.weight", ".lora_B.weight", ".lora_A.default.weight", ".lora_B.default.weight"} {
		if module, found := strings.CutSuffix(s, suffix); found {
			k.module, k.isB, ok = module, suffix[6] == 'B', true
			break
		}
	}
	if !ok {
		return loraKey{}, false
	}
	rest, found := strings.CutPrefix(k.module, "model.layers.")
	digits := 0
	for digits < len(rest) && digits < 9 && '0' <= rest[digits] && rest[digits] <= '9' {
		k.layer = 10*k.layer + int(rest[digits]-'0')
		digits++
	}
	if !found || digits == 0 || digits == len(rest) || rest[digits] != '.' || (rest[0] == '0' && digits > 1) {
		return loraKey{}, false
	}
	block, proj, found := strings.Cut(rest[digits+1:], ".")
	if k.proj, ok = model.ParseProj(proj); !found || !ok || k.proj.Block() != block {
		return loraKey{}, false
	}
	return k, true
}

// regexpKey is parseKey of any name, through the regexps that define the forms accepted.
func regexpKey(name string) (loraKey, error) {
	m := loraKeyRe.FindStringSubmatch(name)
	if m == nil {
		return loraKey{}, unsupportedKey(name)
	}
	module, isB := m[1], m[2] == "lora_B"
	lm := layerModRe.FindStringSubmatch(module)
	if lm == nil {
		return loraKey{}, fmt.Errorf("LoRA on module %s: %w (only the q/k/v/o/gate/up/down projections of decoder layers)", module, model.ErrUnsupported)
	}
	layer, err := strconv.Atoi(lm[1])
	if err != nil || strconv.Itoa(layer) != lm[1] {
		return loraKey{}, fmt.Errorf("module %s: bad layer index %q", module, lm[1])
	}
	proj, ok := model.ParseProj(lm[3])
	if !ok {
		return loraKey{}, fmt.Errorf("LoRA on module %s: %w (only the q/k/v/o/gate/up/down projections of decoder layers)", module, model.ErrUnsupported)
	}
	if lm[2] != proj.Block() {
		return loraKey{}, fmt.Errorf("module %s: %s belongs to %s, not %s", module, proj, proj.Block(), lm[2])
	}
	return loraKey{module: module, layer: layer, proj: proj, isB: isB}, nil
}

// unsupportedKey explains a tensor that is not a plain LoRA factor.
func unsupportedKey(name string) error {
	why := "not a lora_A / lora_B weight: full module copies (modules_to_save) and other PEFT methods are not supported"
	switch {
	case strings.Contains(name, "lora_magnitude_vector"):
		why = "DoRA magnitude vector (use_dora) is not supported"
	case strings.Contains(name, "lora_embedding_"):
		why = "LoRA on embeddings is not supported"
	case strings.HasSuffix(name, ".bias") && (strings.Contains(name, ".lora_A") || strings.Contains(name, ".lora_B")):
		why = "a bias on the LoRA factors (lora_bias) is not supported"
	default:
		if m := namedKeyRe.FindStringSubmatch(name); m != nil {
			why = fmt.Sprintf("adapter name %q inside the key: only files of a single adapter (no name, or \"default\") are supported", m[1])
		}
	}
	return fmt.Errorf("%w: %s", model.ErrUnsupported, why)
}

var errNoTensors = errors.New("the file holds no LoRA tensors")
