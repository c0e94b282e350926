package importer

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/router"
)

// MoLAOptions configures ImportMoLA.
type MoLAOptions struct {
	// Experts and TopK give each layer's expert count and k (MoLA's --number_experts and
	// --top_k): one value for every layer, one per layer, or one per group of equally many
	// consecutive layers ("2,4,6,8" over 32 layers: layers 0-7 have 2 experts, ...).
	Experts []int
	TopK    []int
	// Rank, when set, is checked against the checkpoint (which gives each layer's rank anyway).
	Rank int
	// Alpha is lora_alpha (scale alpha/r, MoLA's lora_alpha / r[layer]); nil: the checkpoint's
	// adapter_config.json (Config, or the one next to the checkpoint).
	Alpha  *float64
	Config string
	// Prefix names the experts' adapters Prefix-0, Prefix-1, ... (empty: "expert").
	Prefix string
	// Base is base_model_name_or_path for the adapters (empty: the config's).
	Base string
}

// MoLA's saved keys: peft strips ".default" from "lora_A.default_3.weight", giving
// "lora_A_3.weight"; the unstripped form is accepted too. The gate is a ModuleDict entry named
// "router" inside a ModuleDict named "router".
var molaFactorRe = regexp.MustCompile(`^lora_([AB])(?:_|\.default_)(\d+)\.weight$`)

const molaGate = "router.router.weight"

type molaModule struct {
	gate string
	a, b map[int]string
}

// ExpandPerLayer turns a MoLA-style list (one value, one per layer, or one per equal group of
// consecutive layers) into one value per layer.
func ExpandPerLayer(vals []int, layers int, what string) ([]int, error) {
	if len(vals) == 0 {
		return nil, fmt.Errorf("%s: no values", what)
	}
	for _, v := range vals {
		if v < 1 {
			return nil, fmt.Errorf("%s: %d, want >= 1", what, v)
		}
	}
	if len(vals) > layers || layers%len(vals) != 0 {
		return nil, fmt.Errorf("%s: %d values for %d layers (want 1, %d, or a count of equal layer groups dividing %d)", what, len(vals), layers, layers, layers)
	}
	per := layers / len(vals)
	out := make([]int, layers)
	for l := range out {
		out[l] = vals[l/per]
	}
	return out, nil
}

// ImportMoLA converts the MoLA checkpoint at src into outDir/adapters/<prefix>-<i>/ (expert i
// of every layer that has at least i+1 experts) and outDir/router/ (per-layer expert lists and
// k where they differ).
func ImportMoLA(src, outDir string, opt MoLAOptions) (*Result, error) {
	s, file, side, err := openCheckpoint(src)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	mods := map[modKey]*molaModule{}
	skipped, nLayers := 0, 0
	for _, name := range s.Names() {
		if baseRe.MatchString(name) {
			skipped++
			continue
		}
		k, rest, err := splitModule(name)
		if err != nil {
			return nil, malformed(file, name, "unknown tensor (%v); a MoLA checkpoint holds <module>.router.router.weight and <module>.lora_A_{i}.weight / lora_B_{i}.weight per adapted projection", err)
		}
		m := mods[k]
		if m == nil {
			m = &molaModule{a: map[int]string{}, b: map[int]string{}}
			mods[k] = m
		}
		nLayers = max(nLayers, k.layer+1)
		if rest == molaGate {
			m.gate = name
			continue
		}
		f := molaFactorRe.FindStringSubmatch(rest)
		if f == nil {
			hint := ""
			if rest == "lora_A.weight" || rest == "lora_B.weight" || rest == "moe_gate.weight" {
				hint = "; this looks like a MeteoRA checkpoint (lorapack import-meteora)"
			}
			return nil, malformed(file, name, "unknown tensor %q on module %s (want %s, lora_A_{i}.weight or lora_B_{i}.weight)%s", rest, k.name(), molaGate, hint)
		}
		i, err := strconv.Atoi(f[2])
		if err != nil || strconv.Itoa(i) != f[2] {
			return nil, malformed(file, name, "bad expert index %q", f[2])
		}
		slot := m.a
		if f[1] == "B" {
			slot = m.b
		}
		if prev, dup := slot[i]; dup {
			return nil, malformed(file, name, "expert %d's lora_%s given twice (also %q)", i, f[1], prev)
		}
		slot[i] = name
	}
	if len(mods) == 0 {
		return nil, malformed(file, "", "no MoLA tensors (<module>.%s, lora_A_{i}.weight, lora_B_{i}.weight)", molaGate)
	}
	experts, err := ExpandPerLayer(opt.Experts, nLayers, "--experts")
	if err != nil {
		return nil, fmt.Errorf("%w (the checkpoint has layers 0-%d)", err, nLayers-1)
	}
	topK, err := ExpandPerLayer(opt.TopK, nLayers, "--top-k")
	if err != nil {
		return nil, fmt.Errorf("%w (the checkpoint has layers 0-%d)", err, nLayers-1)
	}
	cfgPath, optional := opt.Config, false
	if cfgPath == "" {
		cfgPath, optional = filepath.Join(side, adaptercache.PEFTConfigFile), true
	}
	cfg, err := readSrcConfig(cfgPath, optional)
	if err != nil {
		return nil, err
	}
	p := &plan{base: opt.Base, layers: map[int][]int{}, topK: map[int]int{}}
	switch {
	case opt.Alpha != nil:
		p.alpha = *opt.Alpha
	case cfg != nil && cfg.LoraAlpha != nil:
		p.alpha = *cfg.LoraAlpha
	default:
		return nil, fmt.Errorf("no lora_alpha: pass --alpha (MoLA's default is 16), or --config with the checkpoint's adapter_config.json (none at %s)", cfgPath)
	}
	if cfg != nil && p.base == "" {
		p.base = cfg.BaseModel
	}
	total := 0
	for _, n := range experts {
		total = max(total, n)
	}
	prefix := opt.Prefix
	if prefix == "" {
		prefix = "expert"
	}
	p.loras = make([]map[modKey]*factors, total)
	for i := range total {
		p.experts = append(p.experts, fmt.Sprintf("%s-%d", prefix, i))
		p.loras[i] = map[modKey]*factors{}
	}
	for _, key := range sortedKeys(mods) {
		m, n := mods[key], experts[key.layer]
		if m.gate == "" {
			return nil, malformed(file, key.name()+"."+molaGate, "missing: module %s has expert LoRAs but no gate", key.name())
		}
		g, _ := s.Tensor(m.gate)
		if err := checkDType(file, g); err != nil {
			return nil, err
		}
		if g.Shape[0] != n {
			return nil, malformed(file, m.gate, "gate has %d rows but --experts gives layer %d %d experts", g.Shape[0], key.layer, n)
		}
		if topK[key.layer] > n {
			return nil, fmt.Errorf("--top-k: layer %d has k = %d but only %d experts", key.layer, topK[key.layer], n)
		}
		in := g.Shape[1]
		for _, ab := range []struct {
			slot map[int]string
			f    string
		}{{m.a, "A"}, {m.b, "B"}} {
			for i, name := range ab.slot {
				if i >= n {
					return nil, malformed(file, name, "expert %d, but --experts gives layer %d only %d experts", i, key.layer, n)
				}
			}
			for i := range n {
				if _, ok := ab.slot[i]; !ok {
					return nil, malformed(file, fmt.Sprintf("%s.lora_%s_%d.weight", key.name(), ab.f, i), "missing: layer %d has %d experts (gate %q) but no lora_%s for expert %d", key.layer, n, m.gate, ab.f, i)
				}
			}
		}
		out := 0
		for i := range n {
			a, _ := s.Tensor(m.a[i])
			b, _ := s.Tensor(m.b[i])
			if err := checkDType(file, a); err != nil {
				return nil, err
			}
			if err := checkDType(file, b); err != nil {
				return nil, err
			}
			if a.Shape[1] != in {
				return nil, malformed(file, m.a[i], "shape %v: input size %d differs from the gate's %d", a.Shape, a.Shape[1], in)
			}
			r := a.Shape[0]
			if b.Shape[1] != r {
				return nil, malformed(file, m.b[i], "shape %v: %d columns, want the rank %d of %s", b.Shape, b.Shape[1], r, m.a[i])
			}
			if out == 0 {
				out = b.Shape[0]
			} else if b.Shape[0] != out {
				return nil, malformed(file, m.b[i], "shape %v: output size %d differs from expert 0's %d", b.Shape, b.Shape[0], out)
			}
			if opt.Rank != 0 && r != opt.Rank {
				return nil, malformed(file, m.a[i], "rank %d, but --rank is %d", r, opt.Rank)
			}
			if want := cfg.rankFor(key.layer); opt.Rank == 0 && want != 0 && r != want {
				return nil, malformed(file, m.a[i], "rank %d, but %s gives layer %d r = %d", r, cfgPath, key.layer, want)
			}
			p.loras[i][key] = &factors{
				a:    tensorRef{Name: peftKey(key, "lora_A"), DType: a.DType, Shape: a.Shape, Data: a.Data},
				b:    tensorRef{Name: peftKey(key, "lora_B"), DType: b.DType, Shape: b.Shape, Data: b.Data},
				rank: r,
			}
		}
		p.gates = append(p.gates, tensorRef{Name: router.GateName(key.layer, key.proj), DType: g.DType, Shape: g.Shape, Data: g.Data})
		if _, ok := p.layers[key.layer]; !ok {
			idx := make([]int, n)
			for i := range idx {
				idx[i] = i
			}
			p.layers[key.layer], p.topK[key.layer] = idx, topK[key.layer]
		}
	}
	var empty []string
	for i, l := range p.loras {
		if len(l) == 0 {
			empty = append(empty, p.experts[i])
		}
	}
	if len(empty) > 0 {
		return nil, fmt.Errorf("--experts gives at most %d experts but no adapted layer of the checkpoint uses %s", total, strings.Join(empty, ", "))
	}
	res, err := p.write(outDir)
	if err != nil {
		return nil, err
	}
	res.Skipped = skipped
	return res, nil
}
