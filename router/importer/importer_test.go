package importer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
	"github.com/loraplex/loraplex/router"
)

func llamaConfig(t *testing.T) *model.Config {
	t.Helper()
	cfg, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// mat makes a random [rows, cols] tensor of dtype (F32 or BF16, the latter by truncation).
func mat(rng *rand.Rand, name, dtype string, rows, cols int) safetensors.Tensor {
	es := 4
	if dtype == "BF16" {
		es = 2
	}
	data := make([]byte, rows*cols*es)
	for i := range rows * cols {
		u := math.Float32bits(float32(rng.NormFloat64() * 0.5))
		if es == 4 {
			binary.LittleEndian.PutUint32(data[4*i:], u)
		} else {
			binary.LittleEndian.PutUint16(data[2*i:], uint16(u>>16))
		}
	}
	return safetensors.Tensor{Name: name, DType: dtype, Shape: []int{rows, cols}, Data: data}
}

// at reads element (r, c) of a row-major tensor as float64.
func at(t safetensors.Tensor, r, c int) float64 {
	dt, err := model.ParseDType(t.DType)
	if err != nil {
		panic(err)
	}
	return float64(model.HostTensor{DType: dt, Shape: t.Shape, Data: t.Data}.At(r*t.Shape[1] + c))
}

func writeJSON(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func modName(l int, p model.Proj) string {
	return fmt.Sprintf("base_model.model.model.layers.%d.%s.%s", l, p.Block(), p)
}

// meteoraTensors builds a MeteoRA checkpoint for cfg: n experts of rank r stacked on every
// projection of every layer, plus base-model weights the importer must skip.
func meteoraTensors(cfg *model.Config, n, r int, dtype string, seed uint64) map[string]safetensors.Tensor {
	rng := rand.New(rand.NewPCG(seed, 1))
	ts := map[string]safetensors.Tensor{}
	add := func(t safetensors.Tensor) { ts[t.Name] = t }
	for l := range cfg.NumLayers {
		for p := model.Proj(0); p < model.NumProj; p++ {
			out, in := cfg.ProjShape(p)
			m := modName(l, p)
			add(mat(rng, m+".moe_gate.weight", dtype, n, in))
			add(mat(rng, m+".lora_A.weight", dtype, n*r, in))
			add(mat(rng, m+".lora_B.weight", dtype, out, n*r))
			add(mat(rng, m+".base_layer.weight", dtype, 2, 2))
		}
		add(mat(rng, fmt.Sprintf("base_model.model.model.layers.%d.input_layernorm.weight", l), dtype, 1, 4))
	}
	add(mat(rng, "base_model.model.model.embed_tokens.weight", dtype, 4, 4))
	add(mat(rng, "base_model.model.lm_head.weight", dtype, 4, 4))
	return ts
}

func writeCheckpoint(t *testing.T, path string, ts map[string]safetensors.Tensor) {
	t.Helper()
	list := make([]safetensors.Tensor, 0, len(ts))
	for _, v := range ts {
		list = append(list, v)
	}
	if err := safetensors.WriteFile(path, list, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

// loraDelta is scale·B(Ax) in float64 for A rows [a0, a0+r) and B columns [b0, b0+r).
func loraDelta(a, b safetensors.Tensor, a0, b0, r int, scale float64, x []float64) []float64 {
	h := make([]float64, r)
	for j := range r {
		for c, v := range x {
			h[j] += at(a, a0+j, c) * v
		}
	}
	y := make([]float64, b.Shape[0])
	for o := range y {
		for j := range r {
			y[o] += at(b, o, b0+j) * h[j]
		}
		y[o] *= scale
	}
	return y
}

// hostDelta is the loaded adapter's Scale·B(Ax).
func hostDelta(l *model.HostLoRA, x []float64) []float64 {
	a := safetensors.Tensor{DType: l.A.DType.String(), Shape: l.A.Shape, Data: l.A.Data}
	b := safetensors.Tensor{DType: l.B.DType.String(), Shape: l.B.Shape, Data: l.B.Data}
	return loraDelta(a, b, 0, 0, l.Rank, float64(l.Scale), x)
}

func close64(t *testing.T, what string, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if d := math.Abs(got[i] - want[i]); d > 1e-6*(1+math.Abs(want[i])) {
			t.Fatalf("%s: [%d] = %v, want %v", what, i, got[i], want[i])
		}
	}
}

func randVec(rng *rand.Rand, n int) []float64 {
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	return x
}

// checkGatesBitExact compares every gate of the bundle with the checkpoint's, byte for byte.
func checkGatesBitExact(t *testing.T, rdir string, src map[string]safetensors.Tensor, srcGate func(string) string) {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(rdir, router.GatesFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, n := range f.Names() {
		g, _ := f.Tensor(n)
		s, ok := src[srcGate(n)]
		if !ok {
			t.Fatalf("gate %s: no source tensor %s", n, srcGate(n))
		}
		if g.DType != s.DType || !slices.Equal(g.Shape, s.Shape) || !bytes.Equal(g.Data, s.Data) {
			t.Fatalf("gate %s is not a bit-exact copy of %s", n, srcGate(n))
		}
	}
}

func TestImportMeteoRA(t *testing.T) {
	cfg := llamaConfig(t)
	for _, dtype := range []string{"F32", "BF16"} {
		t.Run(dtype, func(t *testing.T) {
			const n, r, alpha = 3, 4, 16.0
			tasks := []string{"gsm8k", "alpaca", "winowhy"}
			src := meteoraTensors(cfg, n, r, dtype, 1)
			ck := t.TempDir()
			writeCheckpoint(t, filepath.Join(ck, "model.safetensors"), src)
			writeJSON(t, filepath.Join(ck, "adapter_config.json"), `{"peft_type":"LORA","r":4,"lora_alpha":16,"base_model_name_or_path":"tiny-llama"}`)
			writeJSON(t, filepath.Join(ck, "tasks.txt"), "# MeteoRA stacking order\n"+strings.Join(tasks, "\n")+"\n")
			out := t.TempDir()
			res, notes, err := ImportMeteoRA(ck, out, MeteoRAOptions{Temperature: 2})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Adapters, tasks) || res.Gates != cfg.NumLayers*int(model.NumProj) || res.Skipped != cfg.NumLayers*(int(model.NumProj)+1)+2 {
				t.Fatalf("result %+v", res)
			}
			if len(notes) != 1 || !strings.Contains(notes[0], "tasks.txt") {
				t.Fatalf("notes %q", notes)
			}
			// (b) the bundle loads, experts in task order, k = 2, T = 2.
			b, err := router.Load(res.RouterDir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(b.Experts(), tasks) || b.Layer(0).TopK != 2 || b.Layer(1).Temperature != 2 || len(b.Gates()) != res.Gates {
				t.Fatalf("bundle: experts %v, layer 0 %+v", b.Experts(), b.Layer(0))
			}
			checkGatesBitExact(t, res.RouterDir, src, func(g string) string { return "base_model.model." + g })
			// (a) every adapter loads with the server's PEFT loader; (c) its delta is the
			// stacked slice's.
			rng := rand.New(rand.NewPCG(7, 7))
			for i, task := range tasks {
				h, c, err := adaptercache.LoadPEFT(filepath.Join(res.AdapterDir, task), task, cfg)
				if err != nil {
					t.Fatal(err)
				}
				for l := range cfg.NumLayers {
					for p := model.Proj(0); p < model.NumProj; p++ {
						lo := h.Modules[l][p]
						if lo == nil || lo.Rank != r || lo.Scale != alpha/r {
							t.Fatalf("%s layer %d %s: %+v", task, l, p, lo)
						}
						_, in := cfg.ProjShape(p)
						x := randVec(rng, in)
						m := modName(l, p)
						want := loraDelta(src[m+".lora_A.weight"], src[m+".lora_B.weight"], i*r, i*r, r, alpha/r, x)
						close64(t, fmt.Sprintf("%s layer %d %s", task, l, p), hostDelta(lo, x), want)
					}
				}
				c.Close()
			}
			raw, _ := os.ReadFile(filepath.Join(res.AdapterDir, "alpaca", "adapter_config.json"))
			if !strings.Contains(string(raw), `"tiny-llama"`) {
				t.Fatalf("adapter_config.json lacks the base model:\n%s", raw)
			}
		})
	}
}

// A single file, tasks from the options, alpha from the flag, rslora off; top-k 1; a second
// import into the same folder is refused.
func TestImportMeteoRAFileAndFlags(t *testing.T) {
	cfg := llamaConfig(t)
	src := meteoraTensors(cfg, 2, 8, "F32", 2)
	file := filepath.Join(t.TempDir(), "meteora.safetensors")
	writeCheckpoint(t, file, src)
	alpha := 4.0
	out := t.TempDir()
	res, _, err := ImportMeteoRA(file, out, MeteoRAOptions{Tasks: []string{"x", "y"}, Alpha: &alpha, TopK: 1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := router.Load(res.RouterDir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b.Layer(1).TopK != 1 {
		t.Fatalf("top_k %d", b.Layer(1).TopK)
	}
	h, c, err := adaptercache.LoadPEFT(filepath.Join(res.AdapterDir, "y"), "y", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if s := h.Modules[1][model.ProjDown].Scale; s != 0.5 {
		t.Fatalf("scale %v, want 4/8", s)
	}
	if _, _, err := ImportMeteoRA(file, out, MeteoRAOptions{Tasks: []string{"x", "y"}, Alpha: &alpha}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second import: %v", err)
	}
}

// 28 experts without a task list take MeteoRA's released order.
func TestImportMeteoRADefaultTasks(t *testing.T) {
	cfg := llamaConfig(t)
	src := meteoraTensors(cfg, 28, 1, "BF16", 3)
	ck := t.TempDir()
	writeCheckpoint(t, filepath.Join(ck, "model.safetensors"), src)
	alpha := 2.0
	res, notes, err := ImportMeteoRA(ck, t.TempDir(), MeteoRAOptions{Alpha: &alpha})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Adapters, MeteoRATasks) || len(notes) != 1 || !strings.Contains(notes[0], "METEORA_TASKS") {
		t.Fatalf("adapters %v notes %q", res.Adapters, notes)
	}
	if _, err := router.Load(res.RouterDir, cfg); err != nil {
		t.Fatal(err)
	}
}

func molaTensors(cfg *model.Config, experts, ranks []int, projs []model.Proj, seed uint64) map[string]safetensors.Tensor {
	rng := rand.New(rand.NewPCG(seed, 2))
	ts := map[string]safetensors.Tensor{}
	add := func(t safetensors.Tensor) { ts[t.Name] = t }
	for l := range cfg.NumLayers {
		for _, p := range projs {
			out, in := cfg.ProjShape(p)
			m := modName(l, p)
			add(mat(rng, m+".router.router.weight", "F32", experts[l], in))
			for i := range experts[l] {
				add(mat(rng, fmt.Sprintf("%s.lora_A_%d.weight", m, i), "F32", ranks[l], in))
				add(mat(rng, fmt.Sprintf("%s.lora_B_%d.weight", m, i), "F32", out, ranks[l]))
			}
		}
	}
	return ts
}

// Layer 0: 2 experts of rank 4, top-1; layer 1: 3 experts of rank 2, top-2; three projections.
// Expert 2 exists only in layer 1.
func TestImportMoLA(t *testing.T) {
	cfg := llamaConfig(t)
	experts, ranks := []int{2, 3}, []int{4, 2}
	projs := []model.Proj{model.ProjQ, model.ProjV, model.ProjDown}
	src := molaTensors(cfg, experts, ranks, projs, 4)
	ck := t.TempDir()
	writeCheckpoint(t, filepath.Join(ck, "adapter_model.safetensors"), src)
	writeJSON(t, filepath.Join(ck, "adapter_config.json"), `{"peft_type":"LORA","r":[4,2],"lora_alpha":16,"target_modules":["q_proj","v_proj","down_proj"]}`)
	res, err := ImportMoLA(ck, t.TempDir(), MoLAOptions{Experts: experts, TopK: []int{1, 2}, Prefix: "sciqa"})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"sciqa-0", "sciqa-1", "sciqa-2"}
	if !slices.Equal(res.Adapters, names) || res.Gates != 6 || res.Layers != 2 {
		t.Fatalf("result %+v", res)
	}
	b, err := router.Load(res.RouterDir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l0, l1 := b.Layer(0), b.Layer(1); !slices.Equal(l0.Experts, names[:2]) || l0.TopK != 1 || !slices.Equal(l1.Experts, names) || l1.TopK != 2 {
		t.Fatalf("layer 0 %v k %d, layer 1 %v k %d", l0.Experts, l0.TopK, l1.Experts, l1.TopK)
	}
	if b.Gate(0, model.ProjK) != nil || b.Gate(1, model.ProjDown).Rows != 3 {
		t.Fatal("gates in the wrong places")
	}
	checkGatesBitExact(t, res.RouterDir, src, func(g string) string {
		return "base_model.model." + strings.TrimSuffix(g, ".moe_gate.weight") + ".router.router.weight"
	})
	rng := rand.New(rand.NewPCG(9, 9))
	for i, name := range names {
		h, c, err := adaptercache.LoadPEFT(filepath.Join(res.AdapterDir, name), name, cfg)
		if err != nil {
			t.Fatal(err)
		}
		for l := range cfg.NumLayers {
			for p := model.Proj(0); p < model.NumProj; p++ {
				lo := h.Modules[l][p]
				if i >= experts[l] || !slices.Contains(projs, p) {
					if lo != nil {
						t.Fatalf("%s has a LoRA on layer %d %s", name, l, p)
					}
					continue
				}
				scale := 16 / float64(ranks[l])
				if lo == nil || lo.Rank != ranks[l] || float64(lo.Scale) != scale {
					t.Fatalf("%s layer %d %s: %+v", name, l, p, lo)
				}
				_, in := cfg.ProjShape(p)
				x := randVec(rng, in)
				m := modName(l, p)
				want := loraDelta(src[fmt.Sprintf("%s.lora_A_%d.weight", m, i)], src[fmt.Sprintf("%s.lora_B_%d.weight", m, i)], 0, 0, ranks[l], scale, x)
				close64(t, fmt.Sprintf("%s layer %d %s", name, l, p), hostDelta(lo, x), want)
			}
		}
		c.Close()
	}
}

func TestExpandPerLayer(t *testing.T) {
	for _, c := range []struct {
		in     []int
		layers int
		want   []int
	}{
		{[]int{8}, 3, []int{8, 8, 8}},
		{[]int{2, 4, 6, 8}, 4, []int{2, 4, 6, 8}},
		{[]int{2, 4, 6, 8}, 8, []int{2, 2, 4, 4, 6, 6, 8, 8}},
	} {
		got, err := ExpandPerLayer(c.in, c.layers, "x")
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%v over %d: %v %v", c.in, c.layers, got, err)
		}
	}
	for _, in := range [][]int{nil, {2, 3, 4}, {0}} {
		if _, err := ExpandPerLayer(in, 4, "x"); err == nil {
			t.Errorf("%v over 4 layers: no error", in)
		}
	}
}

func TestMeteoRAErrors(t *testing.T) {
	cfg := llamaConfig(t)
	q0 := modName(0, model.ProjQ)
	alpha := 16.0
	for _, c := range []struct {
		name   string
		edit   func(ts map[string]safetensors.Tensor)
		opt    MeteoRAOptions
		want   []string // substrings of the error
		tensor bool     // the error names the checkpoint file
	}{
		{"missing gate", func(ts map[string]safetensors.Tensor) { delete(ts, q0+".moe_gate.weight") },
			MeteoRAOptions{}, []string{"model.layers.0.self_attn.q_proj.moe_gate.weight", "missing"}, true},
		{"missing lora_B", func(ts map[string]safetensors.Tensor) { delete(ts, q0+".lora_B.weight") },
			MeteoRAOptions{}, []string{"q_proj.lora_B.weight", "missing"}, true},
		{"rank not divisible", func(ts map[string]safetensors.Tensor) {
			ts[q0+".lora_A.weight"] = mat(rand.New(rand.NewPCG(1, 1)), q0+".lora_A.weight", "F32", 13, 64)
		}, MeteoRAOptions{}, []string{q0 + ".lora_A.weight", "not divisible by the 3 experts"}, true},
		{"B columns", func(ts map[string]safetensors.Tensor) {
			ts[q0+".lora_B.weight"] = mat(rand.New(rand.NewPCG(1, 1)), q0+".lora_B.weight", "F32", 64, 11)
		}, MeteoRAOptions{}, []string{q0 + ".lora_B.weight", "want N·r = 12"}, true},
		{"A input size", func(ts map[string]safetensors.Tensor) {
			ts[q0+".lora_A.weight"] = mat(rand.New(rand.NewPCG(1, 1)), q0+".lora_A.weight", "F32", 12, 63)
		}, MeteoRAOptions{}, []string{q0 + ".lora_A.weight", "input size 63"}, true},
		{"gate rows differ", func(ts map[string]safetensors.Tensor) {
			n := modName(1, model.ProjUp) + ".moe_gate.weight"
			ts[n] = mat(rand.New(rand.NewPCG(1, 1)), n, "F32", 4, 64)
		}, MeteoRAOptions{}, []string{"mlp.up_proj.moe_gate.weight", "4 rows"}, true},
		{"unknown module tensor", func(ts map[string]safetensors.Tensor) {
			n := q0 + ".lora_magnitude_vector.weight"
			ts[n] = mat(rand.New(rand.NewPCG(1, 1)), n, "F32", 1, 64)
		}, MeteoRAOptions{}, []string{"lora_magnitude_vector", "unknown tensor"}, true},
		{"unknown tensor", func(ts map[string]safetensors.Tensor) {
			ts["extra.thing"] = mat(rand.New(rand.NewPCG(1, 1)), "extra.thing", "F32", 1, 1)
		}, MeteoRAOptions{}, []string{`"extra.thing"`, "unknown tensor"}, true},
		{"dtype", func(ts map[string]safetensors.Tensor) {
			g := ts[q0+".moe_gate.weight"]
			g.DType, g.Shape = "I32", []int{3, 64}
			ts[g.Name] = g
		}, MeteoRAOptions{}, []string{"moe_gate.weight", "I32"}, true},
		{"rank vs config", func(ts map[string]safetensors.Tensor) {}, MeteoRAOptions{Config: "r8"}, []string{"rank 4", "r = 8"}, true},
		{"task count", func(ts map[string]safetensors.Tensor) {}, MeteoRAOptions{Tasks: []string{"a", "b"}}, []string{"2 task names for the 3 experts"}, false},
		{"no task list", func(ts map[string]safetensors.Tensor) {}, MeteoRAOptions{Tasks: nil}, []string{"--tasks"}, false},
		{"bad task name", func(ts map[string]safetensors.Tensor) {}, MeteoRAOptions{Tasks: []string{"a", "b/c", "d"}}, []string{`"b/c" is not a valid adapter name`}, false},
		{"top_k", func(ts map[string]safetensors.Tensor) {}, MeteoRAOptions{Tasks: []string{"a", "b", "c"}, TopK: 4}, []string{"top_k 4"}, false},
		{"no alpha", func(ts map[string]safetensors.Tensor) {}, MeteoRAOptions{Config: "none"}, []string{"no lora_alpha"}, false},
		{"nothing", func(ts map[string]safetensors.Tensor) {
			for k := range ts {
				if !strings.Contains(k, "base_layer") {
					delete(ts, k)
				}
			}
		}, MeteoRAOptions{}, []string{"no MeteoRA tensors"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := meteoraTensors(cfg, 3, 4, "F32", 5)
			c.edit(ts)
			ck := t.TempDir()
			file := filepath.Join(ck, "model.safetensors")
			writeCheckpoint(t, file, ts)
			opt := c.opt
			switch opt.Config {
			case "r8":
				opt.Config = filepath.Join(ck, "cfg.json")
				writeJSON(t, opt.Config, `{"r":8,"lora_alpha":16}`)
			case "none":
				opt.Config = ""
			default:
				opt.Alpha = &alpha
			}
			if opt.Tasks == nil && c.name != "no task list" {
				opt.Tasks = []string{"a", "b", "c"}
			}
			_, _, err := ImportMeteoRA(ck, t.TempDir(), opt)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q lacks %q", err, w)
				}
			}
			if c.tensor && (!errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), file)) {
				t.Fatalf("error %q does not wrap ErrMalformed naming %s", err, file)
			}
		})
	}
}

func TestMoLAErrors(t *testing.T) {
	cfg := llamaConfig(t)
	q1 := modName(1, model.ProjQ)
	alpha := 16.0
	projs := []model.Proj{model.ProjQ, model.ProjO}
	for _, c := range []struct {
		name    string
		edit    func(ts map[string]safetensors.Tensor)
		experts []int
		topK    []int
		rank    int
		want    []string
		tensor  bool
	}{
		{"missing expert B", func(ts map[string]safetensors.Tensor) { delete(ts, q1+".lora_B_2.weight") },
			[]int{2, 3}, []int{2}, 0, []string{q1[len("base_model.model."):] + ".lora_B_2.weight", "missing"}, true},
		{"missing gate", func(ts map[string]safetensors.Tensor) { delete(ts, q1+".router.router.weight") },
			[]int{2, 3}, []int{2}, 0, []string{"router.router.weight", "no gate"}, true},
		{"gate rows vs --experts", func(ts map[string]safetensors.Tensor) {}, []int{3}, []int{2}, 0, []string{"gate has 2 rows", "layer 0 3 experts"}, true},
		{"expert beyond --experts", func(ts map[string]safetensors.Tensor) {
			ts[q1+".router.router.weight"] = mat(rand.New(rand.NewPCG(1, 1)), q1+".router.router.weight", "F32", 2, 64)
		}, []int{2, 2}, []int{2}, 0, []string{"lora_A_2.weight", "only 2 experts"}, true},
		{"rank flag", func(ts map[string]safetensors.Tensor) {}, []int{2, 3}, []int{2}, 8, []string{"rank 4, but --rank is 8"}, true},
		{"B rank", func(ts map[string]safetensors.Tensor) {
			ts[q1+".lora_B_0.weight"] = mat(rand.New(rand.NewPCG(1, 1)), q1+".lora_B_0.weight", "F32", 64, 3)
		}, []int{2, 3}, []int{2}, 0, []string{"lora_B_0.weight", "want the rank 4"}, true},
		{"unknown", func(ts map[string]safetensors.Tensor) {
			ts[q1+".lora_C_0.weight"] = mat(rand.New(rand.NewPCG(1, 1)), q1+".lora_C_0.weight", "F32", 1, 1)
		}, []int{2, 3}, []int{2}, 0, []string{"lora_C_0.weight", "unknown tensor"}, true},
		{"top-k over experts", func(ts map[string]safetensors.Tensor) {}, []int{2, 3}, []int{3}, 0, []string{"layer 0 has k = 3 but only 2 experts"}, false},
		{"--experts length", func(ts map[string]safetensors.Tensor) {}, []int{2, 3, 4}, []int{2}, 0, []string{"--experts: 3 values for 2 layers"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := molaTensors(cfg, []int{2, 3}, []int{4, 4}, projs, 6)
			c.edit(ts)
			ck := t.TempDir()
			file := filepath.Join(ck, "adapter_model.safetensors")
			writeCheckpoint(t, file, ts)
			_, err := ImportMoLA(ck, t.TempDir(), MoLAOptions{Experts: c.experts, TopK: c.topK, Rank: c.rank, Alpha: &alpha})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q lacks %q", err, w)
				}
			}
			if c.tensor && (!errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), file)) {
				t.Fatalf("error %q does not wrap ErrMalformed naming %s", err, file)
			}
		})
	}
	// A pickle-only folder gets the conversion hint.
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, "adapter_model.bin"), "PK")
	if _, err := ImportMoLA(dir, t.TempDir(), MoLAOptions{Experts: []int{2}, TopK: []int{1}, Alpha: &alpha}); !errors.Is(err, model.ErrUnsupported) || !strings.Contains(err.Error(), "safetensors.torch.save_file") {
		t.Fatalf("pickle: %v", err)
	}
}
