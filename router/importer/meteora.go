package importer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/router"
)

// MeteoRATasks is the expert order of MeteoRA's released 28-task checkpoints (METEORA_TASKS in
// the repository's constant.py: the adapters are stacked in this order, and its authors warn that
// the order must not change). It is used when the checkpoint has 28 experts and no task list is
// given.
var MeteoRATasks = []string{
	"abstract_narrative_understanding", "alpaca", "cnn_dailymail", "contextual_parametric_knowledge_conflicts",
	"cs_algorithms", "disfl_qa", "elementary_math_qa", "epistemic_reasoning", "formal_fallacies_syllogisms_negation",
	"goal_step_wikihow", "gsm8k", "language_identification", "linguistics_puzzles", "logical_deduction",
	"news_commentary_de", "news_commentary_es", "news_commentary_it", "object_counting", "paragraph_segmentation",
	"play_dialog_same_or_different", "question_selection", "reasoning_about_colored_objects", "strategyqa",
	"topical_chat", "tracking_shuffled_objects", "unit_conversion", "vitaminc_fact_verification", "winowhy",
}

// TaskFiles are the task-list files looked for next to a MeteoRA checkpoint when no list is given.
var TaskFiles = []string{"tasks.txt", "tasks.json"}

// MeteoRAOptions configures ImportMeteoRA.
type MeteoRAOptions struct {
	// Tasks names the N experts in stacking order; they become the adapter folder names. Empty:
	// a TaskFiles file next to the checkpoint, else MeteoRATasks when N is 28.
	Tasks []string
	// Config is an adapter_config.json of the stacked adapters (r, lora_alpha, use_rslora,
	// base_model_name_or_path). Empty: adapter_config.json next to the checkpoint, if any.
	Config string
	// Alpha, when set, is lora_alpha (overriding the config's). One of the two is required.
	Alpha *float64
	// TopK (0: router.DefaultTopK, MeteoRA's 2) and Temperature (0: 1, MeteoRA's default for
	// single tasks; its authors use 15-30 for composite prompts) go into router.json.
	TopK        int
	Temperature float64
	// Base is base_model_name_or_path for the adapters (empty: the config's).
	Base string
}

// ReadTaskList reads a task list: a JSON array of strings, or one name per line (blank lines
// and lines starting with '#' are skipped).
func ReadTaskList(path string) ([]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	text := strings.TrimSpace(string(raw))
	if strings.HasPrefix(text, "[") {
		var names []string
		if err := json.Unmarshal([]byte(text), &names); err != nil {
			return nil, fmt.Errorf("%s: want a JSON array of task names: %v", path, err)
		}
		return names, nil
	}
	var names []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names = append(names, line)
	}
	return names, nil
}

type meteoraModule struct{ a, b, gate string }

// ImportMeteoRA converts the MeteoRA checkpoint at src (a .safetensors file or a folder holding
// one) into outDir/adapters/<task>/ (one PEFT adapter per task) and outDir/router/.
func ImportMeteoRA(src, outDir string, opt MeteoRAOptions) (*Result, []string, error) {
	s, file, side, err := openCheckpoint(src)
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	var notes []string
	mods := map[modKey]*meteoraModule{}
	skipped := 0
	for _, name := range s.Names() {
		if baseRe.MatchString(name) {
			skipped++
			continue
		}
		k, rest, err := splitModule(name)
		if err != nil {
			return nil, nil, malformed(file, name, "unknown tensor (%v); a MeteoRA checkpoint holds <module>.moe_gate.weight, <module>.lora_A.weight and <module>.lora_B.weight per adapted projection, plus base-model weights", err)
		}
		m := mods[k]
		if m == nil {
			m = &meteoraModule{}
			mods[k] = m
		}
		switch rest {
		case "lora_A.weight":
			m.a = name
		case "lora_B.weight":
			m.b = name
		case "moe_gate.weight":
			m.gate = name
		default:
			hint := ""
			if rest == molaGate || molaFactorRe.MatchString(rest) {
				hint = "; this looks like a MoLA checkpoint (lorapack import-mola)"
			}
			return nil, nil, malformed(file, name, "unknown tensor %q on module %s (want lora_A.weight, lora_B.weight or moe_gate.weight)%s", rest, k.name(), hint)
		}
	}
	if len(mods) == 0 {
		return nil, nil, malformed(file, "", "no MeteoRA tensors (<module>.moe_gate.weight, lora_A.weight, lora_B.weight)")
	}
	keys := sortedKeys(mods)

	cfgPath, optional := opt.Config, false
	if cfgPath == "" {
		cfgPath, optional = filepath.Join(side, adaptercache.PEFTConfigFile), true
	}
	cfg, err := readSrcConfig(cfgPath, optional)
	if err != nil {
		return nil, nil, err
	}
	p := &plan{temp: opt.Temperature, base: opt.Base, layers: map[int][]int{}, topK: map[int]int{}}
	switch {
	case opt.Alpha != nil:
		p.alpha = *opt.Alpha
	case cfg != nil && cfg.LoraAlpha != nil:
		p.alpha = *cfg.LoraAlpha
	default:
		return nil, nil, fmt.Errorf("no lora_alpha: pass --alpha, or --config with the stacked adapters' adapter_config.json (none at %s)", cfgPath)
	}
	if cfg != nil {
		p.rslora = cfg.UseRSLoRA
		if p.base == "" {
			p.base = cfg.BaseModel
		}
		if len(cfg.ranks) > 1 {
			return nil, nil, fmt.Errorf("%s: \"r\" is a list; MeteoRA adapters have one rank", cfgPath)
		}
	}
	k := opt.TopK
	if k == 0 {
		k = router.DefaultTopK
	}

	n := 0
	for _, key := range keys {
		m := mods[key]
		for _, f := range []struct{ name, what string }{{m.gate, "moe_gate.weight"}, {m.a, "lora_A.weight"}, {m.b, "lora_B.weight"}} {
			if f.name == "" {
				var have []string
				for _, h := range []string{m.gate, m.a, m.b} {
					if h != "" {
						have = append(have, fmt.Sprintf("%q", h))
					}
				}
				return nil, nil, malformed(file, key.name()+"."+f.what, "missing: module %s has only %s", key.name(), strings.Join(have, ", "))
			}
		}
		g, _ := s.Tensor(m.gate)
		a, _ := s.Tensor(m.a)
		b, _ := s.Tensor(m.b)
		for _, t := range []struct {
			name string
			t    tensorRef
		}{{m.gate, g}, {m.a, a}, {m.b, b}} {
			if err := checkDType(file, t.t); err != nil {
				return nil, nil, err
			}
		}
		if n == 0 {
			n = g.Shape[0]
		}
		if g.Shape[0] != n {
			return nil, nil, malformed(file, m.gate, "gate has %d rows (experts) but other modules have %d", g.Shape[0], n)
		}
		in := g.Shape[1]
		if a.Shape[1] != in {
			return nil, nil, malformed(file, m.a, "shape %v: input size %d differs from the gate's %d (%s is %v)", a.Shape, a.Shape[1], in, m.gate, g.Shape)
		}
		if a.Shape[0]%n != 0 {
			return nil, nil, malformed(file, m.a, "%d rows are not divisible by the %d experts of %s (want N·r rows)", a.Shape[0], n, m.gate)
		}
		if b.Shape[1] != a.Shape[0] {
			return nil, nil, malformed(file, m.b, "shape %v: %d columns, want N·r = %d (the rows of %s)", b.Shape, b.Shape[1], a.Shape[0], m.a)
		}
		r := a.Shape[0] / n
		if want := cfg.rankFor(key.layer); want != 0 && want != r {
			return nil, nil, malformed(file, m.a, "%d rows / %d experts = rank %d, but %s gives r = %d", a.Shape[0], n, r, cfgPath, want)
		}
		if p.loras == nil {
			p.loras = make([]map[modKey]*factors, n)
			for i := range p.loras {
				p.loras[i] = map[modKey]*factors{}
			}
		}
		for i := range n {
			p.loras[i][key] = &factors{
				a:    rowSlice(a, peftKey(key, "lora_A"), i*r, (i+1)*r),
				b:    colSlice(b, peftKey(key, "lora_B"), i*r, (i+1)*r),
				rank: r,
			}
		}
		p.gates = append(p.gates, tensorRef{Name: router.GateName(key.layer, key.proj), DType: g.DType, Shape: g.Shape, Data: g.Data})
		if _, ok := p.layers[key.layer]; !ok {
			idx := make([]int, n)
			for i := range idx {
				idx[i] = i
			}
			p.layers[key.layer], p.topK[key.layer] = idx, k
		}
	}
	if k < 1 || k > n {
		return nil, nil, fmt.Errorf("top_k %d: want 1 <= k <= %d (the experts)", k, n)
	}

	tasks := opt.Tasks
	if len(tasks) == 0 {
		for _, tf := range TaskFiles {
			path := filepath.Join(side, tf)
			names, err := ReadTaskList(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, nil, err
			}
			tasks = names
			notes = append(notes, fmt.Sprintf("task names from %s", path))
			break
		}
	}
	if len(tasks) == 0 {
		if n != len(MeteoRATasks) {
			return nil, nil, fmt.Errorf("the checkpoint stacks %d experts: give their task names in stacking order with --tasks a,b,... (or a %s next to it)", n, strings.Join(TaskFiles, " / "))
		}
		tasks = MeteoRATasks
		notes = append(notes, "28 experts and no task list: using MeteoRA's released task order (constant.py METEORA_TASKS)")
	}
	if len(tasks) != n {
		return nil, nil, fmt.Errorf("%d task names for the %d experts stacked in %s", len(tasks), n, file)
	}
	p.experts = tasks
	res, err := p.write(outDir)
	if err != nil {
		return nil, nil, err
	}
	res.Skipped = skipped
	return res, notes, nil
}

func sortedKeys[V any](m map[modKey]V) []modKey {
	keys := make([]modKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].layer != keys[j].layer {
			return keys[i].layer < keys[j].layer
		}
		return keys[i].proj < keys[j].proj
	})
	return keys
}
