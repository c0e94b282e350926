package adaptercache

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/loraplex/loraplex/model"
)

// This file reproduces peft's module selection (peft 0.21, tuners_utils.check_target_module_exists
// and utils.other.get_pattern_key) over full module names such as "model.layers.3.self_attn.q_proj".
// peft's patterns are Python regular expressions; Go's RE2 agrees on the syntax adapters use
// (names, dots, alternation, classes, repetition) and rejects look-around and back-references,
// which is reported as unsupported rather than guessed at.

// moduleSelector is target_modules or exclude_modules.
type moduleSelector interface {
	// match reports whether the module is selected, and whether it was named exactly (peft skips
	// the layers_to_transform check for an exact name in a list).
	match(module string) (found, exact bool)
}

// regexSelector is a string target_modules: re.fullmatch against the full module name.
type regexSelector struct{ re *regexp.Regexp }

func (s regexSelector) match(module string) (bool, bool) { return s.re.MatchString(module), false }

// listSelector is a list: a module is selected when its full name is in the list, or ends with
// "." + an entry.
type listSelector struct {
	names map[string]bool
	list  []string
}

func (s listSelector) match(module string) (bool, bool) {
	if s.names[module] {
		return true, true
	}
	for _, n := range s.list {
		if strings.HasSuffix(module, "."+n) {
			return true, false
		}
	}
	return false, false
}

// allLinear is peft's "all-linear" shorthand: every linear layer but the output head, which for
// the decoder models loraplex serves are the seven projections of each layer.
var allLinear = func() []string {
	var names []string
	for p := model.Proj(0); p < model.NumProj; p++ {
		names = append(names, p.String())
	}
	return names
}()

// parseSelector reads a target_modules or exclude_modules value: a regex string or a list of
// names. isRegex reports the string form (other than "all-linear", for target_modules).
func parseSelector(raw json.RawMessage, allowAllLinear bool) (sel moduleSelector, isRegex bool, err error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if allowAllLinear && strings.EqualFold(s, "all-linear") {
			return newList(allLinear), false, nil
		}
		re, err := compilePython(`^(?:` + s + `)$`)
		if err != nil {
			return nil, false, err
		}
		return regexSelector{re}, true, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, false, fmt.Errorf("want a regex string or a list of module names, got %s", compact(raw))
	}
	return newList(list), false, nil
}

func newList(list []string) listSelector {
	s := listSelector{names: map[string]bool{}, list: list}
	for _, n := range list {
		s.names[n] = true
	}
	return s
}

// compilePython compiles a pattern taken from a Python config; RE2's refusals become unsupported.
func compilePython(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w (Go's RE2 cannot compile it: %v)", expr, model.ErrUnsupported, err)
	}
	return re, nil
}

// Targets reports whether peft would have put a LoRA on the module with this full name. With
// target_modules null (which peft itself never saves) it reports true: the tensors decide.
func (c *PEFTConfig) Targets(module string) bool {
	if c.exclude != nil {
		if found, _ := c.exclude.match(module); found {
			return false
		}
	}
	if c.targets == nil {
		return true
	}
	found, exact := c.targets.match(module)
	if !found || exact {
		return found
	}
	if _, isList := c.targets.(listSelector); !isList || len(c.layers) == 0 {
		return true
	}
	idx, ok := c.layerIndex(module)
	if !ok {
		return false
	}
	for _, l := range c.layers {
		if l == idx {
			return true
		}
	}
	return false
}

// layerIndex finds the layer number the way peft does: the first number that follows a
// ModuleList name (any name without layers_pattern; one of layers_pattern otherwise). peft splices
// the pattern into its regex unparenthesised, and so do we, so "a|b" behaves as it does there.
func (c *PEFTConfig) layerIndex(module string) (int, bool) {
	for _, re := range c.layerRes {
		m := re.FindStringSubmatch(module)
		if m == nil {
			continue
		}
		// With an alternation in the pattern the match may not have bound the group; peft would
		// crash on int(None). Treat it as no layer.
		n, err := strconv.Atoi(m[1])
		return n, err == nil
	}
	return 0, false
}

// compileLayerPatterns builds the layer-index regexes (re.match anchors at the start only).
func compileLayerPatterns(pats []string) ([]*regexp.Regexp, error) {
	exprs := []string{`.*?\.[^.]*\.(\d+)\.`}
	if len(pats) > 0 {
		exprs = exprs[:0]
		for _, p := range pats {
			exprs = append(exprs, `.*?\.`+p+`\.(\d+)\.`)
		}
	}
	var out []*regexp.Regexp
	for _, e := range exprs {
		re, err := compilePython(`^(?:` + e + `)`)
		if err != nil {
			return nil, err
		}
		out = append(out, re)
	}
	return out, nil
}

// pattern is one rank_pattern or alpha_pattern entry, in file order: peft takes the first key
// (in dict order, i.e. the order of the JSON object) that matches.
type pattern[T any] struct {
	key   string
	re    *regexp.Regexp
	value T
}

// parsePatterns reads a {regex: value} object keeping its order, which a Go map would lose.
func parsePatterns[T any](raw json.RawMessage, conv func(json.Number) (T, error)) ([]pattern[T], error) {
	if len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("want an object of pattern: value, got %s", compact(raw))
	}
	var out []pattern[T]
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key := tok.(string)
		var n json.RawMessage
		if err := dec.Decode(&n); err != nil {
			return nil, fmt.Errorf("%q: want a number", key)
		}
		v, err := number(n, conv)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", key, err)
		}
		// get_pattern_key: re.match(rf"(.*\.)?({key})$", name), i.e. the key matches the whole
		// name or a suffix of it that starts after a dot.
		re, err := compilePython(`^(?:.*\.)?(?:` + key + `)$`)
		if err != nil {
			return nil, err
		}
		out = append(out, pattern[T]{key, re, v})
	}
	return out, nil
}

// RankAlpha returns the rank and lora_alpha peft uses for the module: the first matching
// rank_pattern / alpha_pattern entry, else r / lora_alpha.
func (c *PEFTConfig) RankAlpha(module string) (rank int, alpha float64) {
	rank, alpha = c.R, c.Alpha
	for _, p := range c.rankPat {
		if p.re.MatchString(module) {
			rank = p.value
			break
		}
	}
	for _, p := range c.alphaPat {
		if p.re.MatchString(module) {
			alpha = p.value
			break
		}
	}
	return rank, alpha
}

// Scale returns the module's LoRA scale: alpha / rank, or alpha / sqrt(rank) with use_rslora.
func (c *PEFTConfig) Scale(module string) float32 {
	r, a := c.RankAlpha(module)
	if c.UseRSLoRA {
		return float32(a / math.Sqrt(float64(r)))
	}
	return float32(a / float64(r))
}
