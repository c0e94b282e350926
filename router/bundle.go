// Package router implements learned mixtures of LoRA experts (MeteoRA, MoLA, AdaMoE): a bundle
// of per-projection gates that, for every token, pick the top-k of a list of ordinary adapters
// and mix their deltas. See docs/ARCHITECTURE.md ("Router").
//
// A bundle is a folder with router.json (experts, top_k, temperature, null_experts, per-layer
// overrides) and gates.safetensors (one [experts+nulls, d_in] gate per routed projection). The
// experts are adapter names the engine resolves like a request's model name. This package holds
// the format (Config, GateName), its validation (Load) and the view the forward pass runs
// (Bundle.Routing, a model.Routing); the gate math itself is model.Route.
package router

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/loraplex/loraplex/internal/confine"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

const (
	// Format is the value router.json's "format" must have.
	Format = "loraplex.router/v1"
	// ConfigFile and GatesFile are the two files of a bundle folder.
	ConfigFile = "router.json"
	GatesFile  = "gates.safetensors"

	// Defaults when router.json leaves a field out (MeteoRA's).
	DefaultTopK        = 2
	DefaultTemperature = 1.0
)

// ErrInvalid is wrapped by every validation error of Load.
var ErrInvalid = errors.New("invalid router bundle")

// LayerConfig is a per-layer override of router.json; nil fields inherit the top-level value.
type LayerConfig struct {
	Experts     []string `json:"experts,omitempty"`
	TopK        *int     `json:"top_k,omitempty"`
	Temperature *float64 `json:"temperature,omitempty"`
	NullExperts *int     `json:"null_experts,omitempty"`
}

// Config is router.json's schema, the one struct that Load reads and the importers
// (router/importer) write. Nil fields take the defaults (DefaultTopK, DefaultTemperature, no
// null experts); Layers overrides them per decoder layer, keyed by the layer index.
type Config struct {
	Format      string                 `json:"format"`
	Experts     []string               `json:"experts"`
	TopK        *int                   `json:"top_k,omitempty"`
	Temperature *float64               `json:"temperature,omitempty"`
	NullExperts *int                   `json:"null_experts,omitempty"`
	Layers      map[string]LayerConfig `json:"layers,omitempty"`
}

// Layer is the resolved routing configuration of one decoder layer.
type Layer struct {
	// Experts are the layer's expert adapter names in gate-row order (gate row j is Experts[j];
	// rows len(Experts) .. len(Experts)+Nulls-1 are null experts).
	Experts []string
	// Index[j] is the position of Experts[j] in Bundle.Experts().
	Index       []int
	TopK        int
	Temperature float32
	Nulls       int
	// Gates[p] is the gate of projection p, nil where p is not routed in this layer.
	Gates [model.NumProj]*Gate
}

// Rows is the number of gate rows: experts plus null experts.
func (l *Layer) Rows() int { return len(l.Experts) + l.Nulls }

// Gate is the router of one projection of one layer: logits = W x, W [Rows, Cols].
type Gate struct {
	Name       string // the tensor name in gates.safetensors
	Layer      int
	Proj       model.Proj
	Rows, Cols int
	// W is the gate in host memory, row-major, converted to F32 (the reference values).
	W []float32
	// T is W on a backend after Bundle.Upload (T.Rows == 0 before).
	T model.Tensor
}

// Logits computes l = W x on the host (x has Cols elements, out Rows), accumulating in float64.
func (g *Gate) Logits(x, out []float32) []float32 {
	if len(x) != g.Cols {
		panic(fmt.Sprintf("router: gate %s: input of %d values, want %d", g.Name, len(x), g.Cols))
	}
	out = out[:0]
	for r := 0; r < g.Rows; r++ {
		w := g.W[r*g.Cols : (r+1)*g.Cols]
		var s float64
		for i, v := range w {
			s += float64(v) * float64(x[i])
		}
		out = append(out, float32(s))
	}
	return out
}

// Bundle is a loaded router: resolved per-layer configs and host gates.
type Bundle struct {
	Dir     string
	experts []string
	layers  []Layer
	uploads []model.Tensor // what Upload put on the backend (the gates' T are views of them)
}

// Experts returns every expert adapter name of the bundle: the top-level list first, then names
// that only per-layer lists add, in layer order. The engine resolves each as an adapter.
func (b *Bundle) Experts() []string { return b.experts }

// NumLayers is the number of decoder layers of the model the bundle was checked against.
func (b *Bundle) NumLayers() int { return len(b.layers) }

// Layer returns layer L's resolved configuration (L in [0, NumLayers)).
func (b *Bundle) Layer(l int) *Layer { return &b.layers[l] }

// Gate returns the gate of (layer, p), nil where that projection is not routed.
func (b *Bundle) Gate(l int, p model.Proj) *Gate {
	if l < 0 || l >= len(b.layers) {
		return nil
	}
	return b.layers[l].Gates[p]
}

// Gates lists every gate in (layer, projection) order.
func (b *Bundle) Gates() []*Gate {
	var gs []*Gate
	for l := range b.layers {
		for _, g := range b.layers[l].Gates {
			if g != nil {
				gs = append(gs, g)
			}
		}
	}
	return gs
}

// Upload puts every gate on backend be as a [Rows, Cols] weight (Gate.T), for the engine's gate
// GEMM (be.MatMul(logits, x, g.T) gives logits [tokens, Rows]), each layer's as UploadGates lays
// them out. On error nothing stays uploaded.
func (b *Bundle) Upload(be model.Backend) error {
	for l := range b.layers {
		var gs []*Gate
		for _, g := range b.layers[l].Gates {
			if g != nil {
				gs = append(gs, g)
			}
		}
		ts, err := UploadGates(be, gs)
		b.uploads = append(b.uploads, ts...)
		if err != nil {
			b.Free(be)
			return fmt.Errorf("router %s: %w", b.Dir, err)
		}
	}
	return nil
}

// UploadGates uploads one layer's gates gs (in projection order) and sets each Gate.T: the gates
// of one input width go up as one tensor, their rows end to end, and each T is a view of its
// rows. The gates of projections that read one input (q/k/v, gate/up) then lie one gate's size
// apart, so a backend can make their products in one strided-batched call (the CUDA backend's
// MatMulShared). It returns the tensors to free (Free them, not the views); on error, the ones
// uploaded so far, and no Gate.T is set.
func UploadGates(be model.Backend, gs []*Gate) ([]model.Tensor, error) {
	var widths [][]*Gate // gs by input width, in order of first appearance
	for _, g := range gs {
		i := slices.IndexFunc(widths, func(w []*Gate) bool { return w[0].Cols == g.Cols })
		if i < 0 {
			widths = append(widths, nil)
			i = len(widths) - 1
		}
		widths[i] = append(widths[i], g)
	}
	ups := make([]model.Tensor, 0, len(widths))
	for _, same := range widths {
		rows, cols := 0, same[0].Cols
		for _, g := range same {
			rows += g.Rows
		}
		data := make([]byte, 0, 4*rows*cols)
		for _, g := range same {
			for _, v := range g.W {
				data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
			}
		}
		t, err := be.Upload(model.HostTensor{Name: same[0].Name, DType: model.F32, Shape: []int{rows, cols}, Data: data}, rows, cols)
		if err != nil {
			return ups, fmt.Errorf("gate %s: %w", same[0].Name, err)
		}
		ups = append(ups, t)
	}
	for i, same := range widths {
		at := 0
		for _, g := range same {
			g.T, at = ups[i].Slice(at, g.Rows), at+g.Rows
		}
	}
	return ups, nil
}

// Free releases the gates uploaded by Upload.
func (b *Bundle) Free(be model.Backend) {
	for _, t := range b.uploads {
		be.Free(t)
	}
	b.uploads = nil
	for _, g := range b.Gates() {
		g.T = model.Tensor{}
	}
}

func invalid(dir, format string, args ...any) error {
	return fmt.Errorf("%w %s: %s", ErrInvalid, dir, fmt.Sprintf(format, args...))
}

// Load reads the bundle in dir and checks it against the base model cfg: the config's fields,
// every layer index, every gate's name, dtype and shape ([experts+nulls of its layer, d_in of
// its projection]); unknown tensors are errors. Errors wrap ErrInvalid (or the file error) and
// name the file, the field or layer, and the tensor.
func Load(dir string, cfg *model.Config) (*Bundle, error) { return LoadIn(nil, dir, cfg) }

// LoadIn is Load reading the bundle's files beneath roots (internal/confine; nil: anywhere),
// router.json through confine.MaxConfigBytes: a bundle whose files link out of the roots, or
// that are not regular files, is refused.
func LoadIn(roots *confine.Roots, dir string, cfg *model.Config) (*Bundle, error) {
	if _, err := roots.Resolve(dir); err != nil {
		return nil, fmt.Errorf("router %s: %w", dir, err)
	}
	raw, err := roots.ReadFile(filepath.Join(dir, ConfigFile), confine.MaxConfigBytes)
	if err != nil {
		return nil, fmt.Errorf("router %s: %w", dir, err)
	}
	b, err := parseConfig(dir, raw, cfg)
	if err != nil {
		return nil, err
	}
	gpath := filepath.Join(dir, GatesFile)
	fd, err := roots.Open(gpath)
	if err != nil {
		return nil, fmt.Errorf("router %s: %w", dir, err)
	}
	f, err := safetensors.OpenFile(gpath, fd)
	fd.Close() // the mapping does not need the descriptor
	if err != nil {
		return nil, fmt.Errorf("router %s: %w", dir, err)
	}
	defer f.Close()
	// The gates are read out of the mapping into private memory here; the file may shrink
	// while that happens (a cp over it), which is an error, not a crash.
	if err := safetensors.ReadMapped(func() error { return b.readGates(gpath, f, cfg) }); err != nil {
		if errors.Is(err, safetensors.ErrFileChanged) {
			return nil, fmt.Errorf("router %s: %s: %w", dir, GatesFile, err)
		}
		return nil, err
	}
	return b, nil
}

func parseConfig(dir string, raw []byte, cfg *model.Config) (*Bundle, error) {
	where := filepath.Join(dir, ConfigFile)
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var fj Config
	if err := dec.Decode(&fj); err != nil {
		return nil, invalid(where, "%v", err)
	}
	if fj.Format != Format {
		return nil, invalid(where, "\"format\" is %q, want %q", fj.Format, Format)
	}
	top := Layer{TopK: DefaultTopK, Temperature: DefaultTemperature}
	if err := checkExperts(fj.Experts); err != nil {
		return nil, invalid(where, "\"experts\": %v", err)
	}
	top.Experts = fj.Experts
	if err := apply(&top, LayerConfig{TopK: fj.TopK, Temperature: fj.Temperature, NullExperts: fj.NullExperts}); err != nil {
		return nil, invalid(where, "%v", err)
	}
	b := &Bundle{Dir: dir, layers: make([]Layer, cfg.NumLayers)}
	seen := map[string]int{}
	addExpert := func(name string) int {
		if i, ok := seen[name]; ok {
			return i
		}
		seen[name] = len(b.experts)
		b.experts = append(b.experts, name)
		return len(b.experts) - 1
	}
	for _, e := range top.Experts {
		addExpert(e)
	}
	over := map[int]LayerConfig{}
	keys := make([]string, 0, len(fj.Layers))
	for k := range fj.Layers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		l, err := strconv.Atoi(k)
		if err != nil || strconv.Itoa(l) != k {
			return nil, invalid(where, "\"layers\": key %q is not a layer index", k)
		}
		if l < 0 || l >= cfg.NumLayers {
			return nil, invalid(where, "\"layers\": layer %d out of range (the model has %d layers)", l, cfg.NumLayers)
		}
		over[l] = fj.Layers[k]
	}
	for l := range b.layers {
		ly := top
		ly.Experts = append([]string(nil), top.Experts...)
		if o, ok := over[l]; ok {
			if o.Experts != nil {
				if err := checkExperts(o.Experts); err != nil {
					return nil, invalid(where, "\"layers\".%q.\"experts\": %v", strconv.Itoa(l), err)
				}
				ly.Experts = append([]string(nil), o.Experts...)
			}
			if err := apply(&ly, o); err != nil {
				return nil, invalid(where, "\"layers\".%q: %v", strconv.Itoa(l), err)
			}
		}
		if len(ly.Experts) == 0 {
			return nil, invalid(where, "layer %d has no experts (set \"experts\" at the top level or in \"layers\".%q)", l, strconv.Itoa(l))
		}
		if ly.TopK > ly.Rows() {
			return nil, invalid(where, "layer %d: top_k %d exceeds its %d experts + %d null experts", l, ly.TopK, len(ly.Experts), ly.Nulls)
		}
		ly.Index = make([]int, len(ly.Experts))
		for j, e := range ly.Experts {
			ly.Index[j] = addExpert(e)
		}
		b.layers[l] = ly
	}
	return b, nil
}

func checkExperts(names []string) error {
	seen := map[string]bool{}
	for i, n := range names {
		if strings.TrimSpace(n) == "" {
			return fmt.Errorf("entry %d is empty", i)
		}
		if seen[n] {
			return fmt.Errorf("%q is listed twice", n)
		}
		seen[n] = true
	}
	return nil
}

// apply validates and applies the non-nil scalar fields of o.
func apply(l *Layer, o LayerConfig) error {
	if o.TopK != nil {
		if *o.TopK < 1 {
			return fmt.Errorf("\"top_k\" is %d, want >= 1", *o.TopK)
		}
		l.TopK = *o.TopK
	}
	if o.Temperature != nil {
		t := *o.Temperature
		if !(t > 0) || math.IsInf(t, 0) || float64(float32(t)) == 0 || math.IsInf(float64(float32(t)), 0) {
			return fmt.Errorf("\"temperature\" is %v, want a finite value > 0", t)
		}
		l.Temperature = float32(t)
	}
	if o.NullExperts != nil {
		if *o.NullExperts < 0 {
			return fmt.Errorf("\"null_experts\" is %d, want >= 0", *o.NullExperts)
		}
		l.Nulls = *o.NullExperts
	}
	return nil
}

// GateName is the tensor name of (layer, p)'s gate in gates.safetensors (MeteoRA's: the
// projection's module name + ".moe_gate.weight"); parseGateName is its inverse.
func GateName(l int, p model.Proj) string {
	return fmt.Sprintf("model.layers.%d.%s.%s.moe_gate.weight", l, p.Block(), p)
}

// parseGateName maps a tensor name to (layer, proj); ok false when it is not a gate name.
func parseGateName(name string) (l int, p model.Proj, ok bool) {
	rest, ok1 := strings.CutPrefix(name, "model.layers.")
	rest, ok2 := strings.CutSuffix(rest, ".moe_gate.weight")
	if !ok1 || !ok2 {
		return 0, 0, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return 0, 0, false
	}
	l, err := strconv.Atoi(parts[0])
	if err != nil || strconv.Itoa(l) != parts[0] {
		return 0, 0, false
	}
	p, ok = model.ParseProj(parts[2])
	if !ok || p.Block() != parts[1] {
		return 0, 0, false
	}
	return l, p, true
}

func (b *Bundle) readGates(where string, f *safetensors.File, cfg *model.Config) error {
	names := f.Names()
	if len(names) == 0 {
		return invalid(where, "no gate tensors")
	}
	for _, name := range names {
		l, p, ok := parseGateName(name)
		if !ok {
			return invalid(where, "unknown tensor %q (want model.layers.{L}.{self_attn|mlp}.{q|k|v|o|gate|up|down}_proj.moe_gate.weight)", name)
		}
		if l < 0 || l >= cfg.NumLayers {
			return invalid(where, "tensor %q: layer %d out of range (the model has %d layers)", name, l, cfg.NumLayers)
		}
		st, _ := f.Tensor(name)
		dt, err := model.ParseDType(st.DType)
		if err != nil {
			return invalid(where, "tensor %q: %v", name, err)
		}
		ly := &b.layers[l]
		_, in := cfg.ProjShape(p)
		if len(st.Shape) != 2 || st.Shape[0] != ly.Rows() || st.Shape[1] != in {
			return invalid(where, "tensor %q has shape %v, want [%d, %d] (layer %d: %d experts + %d null experts; %s input size %d)",
				name, st.Shape, ly.Rows(), in, l, len(ly.Experts), ly.Nulls, p, in)
		}
		h := model.HostTensor{Name: name, DType: dt, Shape: st.Shape, Data: st.Data}
		if i := h.FirstNonFinite(); i >= 0 {
			return invalid(where, "tensor %q: element %d is %v", name, i, h.At(i))
		}
		w := make([]float32, ly.Rows()*in)
		for i := range w {
			w[i] = h.At(i)
		}
		ly.Gates[p] = &Gate{Name: name, Layer: l, Proj: p, Rows: ly.Rows(), Cols: in, W: w}
	}
	return nil
}
