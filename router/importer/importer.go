// Package importer converts released mixture-of-LoRA-experts checkpoints into what loraplex
// serves: one ordinary PEFT adapter folder per expert plus a loraplex.router/v1 bundle (see the
// router package) whose gates pick among them.
//
// Two layouts are understood:
//
//   - MeteoRA (github.com/NJUDeepEngine/meteora): per adapted projection a gate
//     "<module>.moe_gate.weight" [N, d_in] and the N task LoRAs stacked along the rank dimension,
//     "<module>.lora_A.weight" [N·r, d_in] and "<module>.lora_B.weight" [d_out, N·r]; expert i is
//     rows [i·r, (i+1)·r) of A and columns [i·r, (i+1)·r) of B, in task-list order. MeteoRA picks
//     the top-k gate logits and weights them with softmax(logits/T), as loraplex does.
//   - MoLA (github.com/GCYZSL/MoLA): per adapted projection a gate "<module>.router.router.weight"
//     [n_L, d_in] and experts "<module>.lora_A_{i}.weight" / "<module>.lora_B_{i}.weight"; the
//     number of experts n_L, the top-k and the rank may differ per layer. MoLA takes a softmax over
//     all n_L logits, keeps the top k and renormalises, which equals softmax over the top-k logits
//     (loraplex with T = 1).
//
// Module names may carry peft's "base_model.model." prefix. Base-model weights saved alongside
// (MeteoRA's model.safetensors is the whole PeftModel state dict) are skipped; any other tensor
// is an error.
package importer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
	"github.com/loraplex/loraplex/router"
)

// Output folders inside OUT_DIR.
const (
	AdaptersDir = "adapters"
	RouterDir   = "router"
)

// ErrMalformed is wrapped by every error about the checkpoint's contents.
var ErrMalformed = errors.New("malformed checkpoint")

// Result describes what an import wrote.
type Result struct {
	Adapters   []string // expert adapter names, in router order (folders under AdapterDir)
	AdapterDir string   // OUT_DIR/adapters: serve with --adapter-dir
	RouterDir  string   // OUT_DIR/router: serve with --router NAME=RouterDir
	Layers     int      // decoder layers with gates
	Gates      int      // gate tensors written
	Skipped    int      // base-model tensors of the checkpoint that were ignored
}

// source is an opened checkpoint: one safetensors file or a model folder's set.
type source interface {
	Names() []string
	Tensor(name string) (safetensors.Tensor, bool)
	Close() error
}

type fileSource struct{ *safetensors.File }

// openCheckpoint opens path: a .safetensors file, or a folder holding model.safetensors (or a
// sharded index), adapter_model.safetensors, or exactly one *.safetensors file. It returns the
// source, the path to name in errors, and the folder to look for side files in.
func openCheckpoint(path string) (source, string, string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, "", "", err
	}
	if !st.IsDir() {
		f, err := safetensors.Open(path)
		if err != nil {
			return nil, "", "", err
		}
		return fileSource{f}, path, filepath.Dir(path), nil
	}
	has := func(n string) bool { _, err := os.Stat(filepath.Join(path, n)); return err == nil }
	if has(safetensors.IndexFile) {
		s, err := safetensors.OpenDir(path)
		if err != nil {
			return nil, "", "", err
		}
		return s, filepath.Join(path, safetensors.IndexFile), path, nil
	}
	for _, single := range []string{safetensors.SingleFile, adaptercache.PEFTWeightsFile} {
		if has(single) {
			p := filepath.Join(path, single)
			f, err := safetensors.Open(p)
			if err != nil {
				return nil, "", "", err
			}
			return fileSource{f}, p, path, nil
		}
	}
	matches, _ := filepath.Glob(filepath.Join(path, "*.safetensors"))
	if len(matches) == 1 {
		f, err := safetensors.Open(matches[0])
		if err != nil {
			return nil, "", "", err
		}
		return fileSource{f}, matches[0], path, nil
	}
	if len(matches) > 1 {
		return nil, "", "", fmt.Errorf("%s holds %d .safetensors files and no %s: name the checkpoint file", path, len(matches), safetensors.IndexFile)
	}
	for _, pickle := range []string{"adapter_model.bin", "pytorch_model.bin"} {
		if has(pickle) {
			p := filepath.Join(path, pickle)
			return nil, "", "", fmt.Errorf("%s: %w: torch pickle checkpoints are not read (loading one can run arbitrary code); convert it first, e.g. in Python: "+
				"safetensors.torch.save_file(torch.load(%q, weights_only=True), %q)", p, model.ErrUnsupported, p, filepath.Join(path, adaptercache.PEFTWeightsFile))
		}
	}
	return nil, "", "", fmt.Errorf("%s: no .safetensors checkpoint in the folder", path)
}

// modKey is one adapted projection.
type modKey struct {
	layer int
	proj  model.Proj
}

func (k modKey) name() string {
	return fmt.Sprintf("model.layers.%d.%s.%s", k.layer, k.proj.Block(), k.proj)
}

var (
	// moduleRe splits "[base_model.model.]model.layers.L.{self_attn|mlp}.{proj}.REST".
	moduleRe = regexp.MustCompile(`^(?:base_model\.model\.)?model\.layers\.(\d+)\.([a-z_]+)\.([a-z_]+_proj)\.(.+)$`)
	// baseRe matches base-model weights that checkpoints of a whole PeftModel also hold.
	baseRe = regexp.MustCompile(`^(?:base_model\.model\.)?(?:` +
		`model\.(?:embed_tokens|norm|rotary_emb)\.[a-z_]+|lm_head\.weight|` +
		`model\.layers\.\d+\.(?:input_layernorm|post_attention_layernorm|self_attn\.rotary_emb)\.[a-z_]+|` +
		`model\.layers\.\d+\.(?:self_attn|mlp)\.[a-z_]+_proj\.(?:base_layer\.)?(?:weight|bias))$`)
)

// splitModule parses a tensor name into its module and the rest ("lora_A.weight", ...).
func splitModule(name string) (modKey, string, error) {
	m := moduleRe.FindStringSubmatch(name)
	if m == nil {
		return modKey{}, "", errors.New("not a tensor of a decoder layer's projection")
	}
	l, err := strconv.Atoi(m[1])
	if err != nil || strconv.Itoa(l) != m[1] {
		return modKey{}, "", fmt.Errorf("bad layer index %q", m[1])
	}
	p, ok := model.ParseProj(m[3])
	if !ok {
		return modKey{}, "", fmt.Errorf("%s is not one of q/k/v/o/gate/up/down_proj", m[3])
	}
	if p.Block() != m[2] {
		return modKey{}, "", fmt.Errorf("%s belongs to %s, not %s", p, p.Block(), m[2])
	}
	return modKey{l, p}, m[4], nil
}

// malformed builds an error naming the checkpoint file and tensor.
func malformed(file, tensor, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if tensor == "" {
		return fmt.Errorf("%w %s: %s", ErrMalformed, file, msg)
	}
	return fmt.Errorf("%w %s: tensor %q: %s", ErrMalformed, file, tensor, msg)
}

// checkDType accepts the dtypes the server loads.
func checkDType(file string, t safetensors.Tensor) error {
	if _, err := model.ParseDType(t.DType); err != nil {
		return malformed(file, t.Name, "%v", err)
	}
	if len(t.Shape) != 2 || t.Shape[0] < 1 || t.Shape[1] < 1 {
		return malformed(file, t.Name, "shape %v, want a non-empty matrix", t.Shape)
	}
	return nil
}

// factors is one expert's LoRA on one module.
type factors struct {
	a, b safetensors.Tensor // named with standard PEFT keys, data owned or aliasing the source
	rank int
}

// plan is the converted checkpoint, ready to write.
type plan struct {
	experts []string              // adapter names
	layers  map[int][]int         // layer -> expert indices in gate-row order
	topK    map[int]int           // layer -> k
	temp    float64               // 0: default
	gates   []safetensors.Tensor  // renamed, bit-exact
	loras   []map[modKey]*factors // per expert
	alpha   float64
	rslora  bool
	base    string
}

// rowSlice returns rows [r0, r1) of a row-major matrix (aliasing its data).
func rowSlice(t safetensors.Tensor, name string, r0, r1 int) safetensors.Tensor {
	rowBytes := len(t.Data) / t.Shape[0]
	return safetensors.Tensor{Name: name, DType: t.DType, Shape: []int{r1 - r0, t.Shape[1]}, Data: t.Data[r0*rowBytes : r1*rowBytes]}
}

// colSlice copies columns [c0, c1) of a row-major matrix.
func colSlice(t safetensors.Tensor, name string, c0, c1 int) safetensors.Tensor {
	es := len(t.Data) / (t.Shape[0] * t.Shape[1])
	rows, cols, w := t.Shape[0], t.Shape[1], c1-c0
	out := make([]byte, 0, rows*w*es)
	for r := range rows {
		out = append(out, t.Data[(r*cols+c0)*es:(r*cols+c1)*es]...)
	}
	return safetensors.Tensor{Name: name, DType: t.DType, Shape: []int{rows, w}, Data: out}
}

func peftKey(k modKey, factor string) string {
	return "base_model.model." + k.name() + "." + factor + ".weight"
}

// peftConfigJSON is the adapter_config.json written for each expert.
type peftConfigJSON struct {
	PeftType          string          `json:"peft_type"`
	TaskType          string          `json:"task_type"`
	BaseModel         *string         `json:"base_model_name_or_path"`
	R                 int             `json:"r"`
	LoraAlpha         float64         `json:"lora_alpha"`
	UseRSLoRA         bool            `json:"use_rslora"`
	TargetModules     []string        `json:"target_modules"`
	LayersToTransform []int           `json:"layers_to_transform,omitempty"`
	RankPattern       json.RawMessage `json:"rank_pattern,omitempty"`
	Bias              string          `json:"bias"`
	LoraDropout       float64         `json:"lora_dropout"`
	FanInFanOut       bool            `json:"fan_in_fan_out"`
	InferenceMode     bool            `json:"inference_mode"`
	InitLoraWeights   bool            `json:"init_lora_weights"`
	ModulesToSave     []string        `json:"modules_to_save"`
}

// peftConfig describes the modules of one expert: projection names plus layers_to_transform
// where they form a full grid, exact module names otherwise; r is the most common rank and
// rank_pattern (exact module names, in module order) lists the others.
func (p *plan) peftConfig(mods map[modKey]*factors) ([]byte, error) {
	keys := make([]modKey, 0, len(mods))
	for k := range mods {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].layer != keys[j].layer {
			return keys[i].layer < keys[j].layer
		}
		return keys[i].proj < keys[j].proj
	})
	layerSet, projSet := map[int]bool{}, map[model.Proj]bool{}
	count := map[int]int{}
	for _, k := range keys {
		layerSet[k.layer], projSet[k.proj] = true, true
		count[mods[k].rank]++
	}
	cfg := peftConfigJSON{PeftType: "LORA", TaskType: "CAUSAL_LM", LoraAlpha: p.alpha, UseRSLoRA: p.rslora,
		Bias: "none", InferenceMode: true, InitLoraWeights: true}
	if p.base != "" {
		cfg.BaseModel = &p.base
	}
	for r, n := range count {
		if n > count[cfg.R] || (n == count[cfg.R] && r < cfg.R) {
			cfg.R = r
		}
	}
	if len(keys) == len(layerSet)*len(projSet) {
		for pr := model.Proj(0); pr < model.NumProj; pr++ {
			if projSet[pr] {
				cfg.TargetModules = append(cfg.TargetModules, pr.String())
			}
		}
		for l := range layerSet {
			cfg.LayersToTransform = append(cfg.LayersToTransform, l)
		}
		slices.Sort(cfg.LayersToTransform)
	} else {
		for _, k := range keys {
			cfg.TargetModules = append(cfg.TargetModules, k.name())
		}
	}
	var rp []string
	for _, k := range keys {
		if r := mods[k].rank; r != cfg.R {
			kj, _ := json.Marshal(regexp.QuoteMeta(k.name()))
			rp = append(rp, fmt.Sprintf("%s: %d", kj, r))
		}
	}
	if len(rp) > 0 {
		cfg.RankPattern = json.RawMessage("{" + strings.Join(rp, ", ") + "}")
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// routerConfig makes the top level the widest layer's list and k, and overrides the layers
// that differ.
func (p *plan) routerConfig() ([]byte, error) {
	layers := make([]int, 0, len(p.layers))
	for l := range p.layers {
		layers = append(layers, l)
	}
	slices.Sort(layers)
	top := layers[0]
	for _, l := range layers {
		if len(p.layers[l]) > len(p.layers[top]) {
			top = l
		}
	}
	names := func(idx []int) []string {
		out := make([]string, len(idx))
		for i, e := range idx {
			out[i] = p.experts[e]
		}
		return out
	}
	// router.json in the router package's own schema, which Load reads back.
	topK := p.topK[top]
	rj := router.Config{Format: router.Format, Experts: names(p.layers[top]), TopK: &topK}
	if p.temp != 0 {
		t := p.temp
		rj.Temperature = &t
	}
	for _, l := range layers {
		var o router.LayerConfig
		if !slices.Equal(p.layers[l], p.layers[top]) {
			o.Experts = names(p.layers[l])
		}
		if k := p.topK[l]; k != topK {
			o.TopK = &k
		}
		if o.Experts != nil || o.TopK != nil {
			if rj.Layers == nil {
				rj.Layers = map[string]router.LayerConfig{}
			}
			rj.Layers[strconv.Itoa(l)] = o
		}
	}
	return json.MarshalIndent(rj, "", "  ")
}

// write puts the plan under outDir (adapters/<name>/ and router/), building it in a hidden
// folder first so that a failed import leaves nothing half-written; it refuses to replace
// existing adapter or router folders.
func (p *plan) write(outDir string) (*Result, error) {
	for e, name := range p.experts {
		if !adaptercache.ValidName(name) {
			return nil, fmt.Errorf("expert %d: %q is not a valid adapter name (a single path element, not starting with '.')", e, name)
		}
		if len(p.loras[e]) == 0 {
			return nil, fmt.Errorf("expert %q has no LoRA modules in the checkpoint", name)
		}
	}
	adir, rdir := filepath.Join(outDir, AdaptersDir), filepath.Join(outDir, RouterDir)
	targets := []string{rdir}
	for _, n := range p.experts {
		targets = append(targets, filepath.Join(adir, n))
	}
	for _, t := range targets {
		if _, err := os.Stat(t); err == nil {
			return nil, fmt.Errorf("%s already exists; remove it or choose another OUT_DIR", t)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	if err := os.MkdirAll(adir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(outDir, ".lorapack-import-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	for e, name := range p.experts {
		d := filepath.Join(tmp, AdaptersDir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		cfg, err := p.peftConfig(p.loras[e])
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(d, adaptercache.PEFTConfigFile), append(cfg, '\n'), 0o644); err != nil {
			return nil, err
		}
		var ts []safetensors.Tensor
		for _, f := range p.loras[e] {
			ts = append(ts, f.a, f.b)
		}
		if err := safetensors.WriteFile(filepath.Join(d, adaptercache.PEFTWeightsFile), ts, map[string]string{"format": "pt"}); err != nil {
			return nil, err
		}
	}
	rt := filepath.Join(tmp, RouterDir)
	if err := os.MkdirAll(rt, 0o755); err != nil {
		return nil, err
	}
	rj, err := p.routerConfig()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(rt, router.ConfigFile), append(rj, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := safetensors.WriteFile(filepath.Join(rt, router.GatesFile), p.gates, nil); err != nil {
		return nil, err
	}
	for _, n := range p.experts {
		if err := os.Rename(filepath.Join(tmp, AdaptersDir, n), filepath.Join(adir, n)); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(rt, rdir); err != nil {
		return nil, err
	}
	return &Result{Adapters: p.experts, AdapterDir: adir, RouterDir: rdir, Layers: len(p.layers), Gates: len(p.gates)}, nil
}

// srcConfig is the part of a source adapter_config.json the importers use. MoLA writes r as a
// list with one rank per layer.
type srcConfig struct {
	R         json.RawMessage `json:"r"`
	LoraAlpha *float64        `json:"lora_alpha"`
	UseRSLoRA bool            `json:"use_rslora"`
	BaseModel string          `json:"base_model_name_or_path"`
	ranks     []int           // parsed r: one value, or one per layer
}

// readSrcConfig reads path; a missing file gives (nil, nil) when optional.
func readSrcConfig(path string, optional bool) (*srcConfig, error) {
	raw, err := os.ReadFile(path)
	if optional && errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c srcConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(c.R) > 0 && string(c.R) != "null" {
		var one int
		if json.Unmarshal(c.R, &one) == nil {
			c.ranks = []int{one}
		} else if err := json.Unmarshal(c.R, &c.ranks); err != nil {
			return nil, fmt.Errorf("%s: \"r\": want an integer or a list of integers, got %s", path, c.R)
		}
		for _, r := range c.ranks {
			if r < 1 {
				return nil, fmt.Errorf("%s: \"r\": %d is not a positive rank", path, r)
			}
		}
	}
	if c.LoraAlpha != nil && (math.IsNaN(*c.LoraAlpha) || math.IsInf(*c.LoraAlpha, 0)) {
		return nil, fmt.Errorf("%s: \"lora_alpha\" is not finite", path)
	}
	return &c, nil
}

// rankFor returns the configured rank of a layer (0: none configured).
func (c *srcConfig) rankFor(layer int) int {
	switch {
	case c == nil || len(c.ranks) == 0:
		return 0
	case len(c.ranks) == 1:
		return c.ranks[0]
	case layer < len(c.ranks):
		return c.ranks[layer]
	}
	return 0
}

// tensorRef is a safetensors tensor (shorter to write).
type tensorRef = safetensors.Tensor
