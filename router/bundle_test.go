package router

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

func fixtureConfig(t *testing.T) *model.Config {
	t.Helper()
	cfg, err := model.LoadConfig(fixture.Dir("llama"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func randGate(rng *rand.Rand, name string, rows, cols int) safetensors.Tensor {
	v := make([]float32, rows*cols)
	for i := range v {
		v[i] = float32(rng.NormFloat64() / math.Sqrt(float64(cols)) * 3)
	}
	return safetensors.Tensor{Name: name, DType: "F32", Shape: []int{rows, cols}, Data: f32Bytes(v)}
}

// writeBundle writes router.json and gates.safetensors into a new temp folder.
func writeBundle(t *testing.T, cfgJSON string, tensors []safetensors.Tensor) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(cfgJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	if tensors != nil {
		f, err := os.Create(filepath.Join(dir, GatesFile))
		if err != nil {
			t.Fatal(err)
		}
		if err := safetensors.Write(f, tensors, nil); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// allGates makes a gate for every projection of every layer, sized by rowsOf(layer).
func allGates(cfg *model.Config, rng *rand.Rand, rowsOf func(l int) int) []safetensors.Tensor {
	var ts []safetensors.Tensor
	for l := 0; l < cfg.NumLayers; l++ {
		for p := model.Proj(0); p < model.NumProj; p++ {
			_, in := cfg.ProjShape(p)
			ts = append(ts, randGate(rng, GateName(l, p), rowsOf(l), in))
		}
	}
	return ts
}

const mixedJSON = `{"format":"loraplex.router/v1","experts":["a_qv","b_all_rslora","c_patterns","d_regex"],
 "top_k":2,"temperature":1.0,"null_experts":0,
 "layers":{"1":{"experts":["c_patterns","x_extra","a_qv"],"null_experts":1,"temperature":0.5,"top_k":3}}}`

func TestLoadResolvesLayers(t *testing.T) {
	cfg := fixtureConfig(t)
	rng := rand.New(rand.NewPCG(1, 2))
	dir := writeBundle(t, mixedJSON, allGates(cfg, rng, func(l int) int { return []int{4, 4}[l] }))
	b, err := Load(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(b.Experts(), ","); got != "a_qv,b_all_rslora,c_patterns,d_regex,x_extra" {
		t.Fatalf("experts %s", got)
	}
	l0, l1 := b.Layer(0), b.Layer(1)
	if l0.TopK != 2 || l0.Temperature != 1 || l0.Nulls != 0 || len(l0.Experts) != 4 || l0.Rows() != 4 {
		t.Fatalf("layer 0: %+v", l0)
	}
	if l1.TopK != 3 || l1.Temperature != 0.5 || l1.Nulls != 1 || strings.Join(l1.Experts, ",") != "c_patterns,x_extra,a_qv" {
		t.Fatalf("layer 1: %+v", l1)
	}
	if want := []int{2, 4, 0}; l1.Index[0] != want[0] || l1.Index[1] != want[1] || l1.Index[2] != want[2] {
		t.Fatalf("layer 1 index %v", l1.Index)
	}
	if g := b.Gate(1, model.ProjDown); g == nil || g.Rows != 4 || g.Cols != cfg.IntermediateSize {
		t.Fatalf("gate %+v", g)
	}
	if len(b.Gates()) != 2*int(model.NumProj) {
		t.Fatalf("%d gates", len(b.Gates()))
	}
}

func TestLoadDefaultsAndPartialGates(t *testing.T) {
	cfg := fixtureConfig(t)
	rng := rand.New(rand.NewPCG(3, 4))
	_, in := cfg.ProjShape(model.ProjQ)
	bf := randGate(rng, GateName(0, model.ProjQ), 2, in)
	// The same gate stored as BF16 must load (converted to F32).
	vals := make([]byte, 2*2*in)
	for i := 0; i < 2*in; i++ {
		f := math.Float32frombits(binary.LittleEndian.Uint32(bf.Data[4*i:]))
		binary.LittleEndian.PutUint16(vals[2*i:], model.F32ToBF16(f))
	}
	bf.DType, bf.Data = "BF16", vals
	dir := writeBundle(t, `{"format":"loraplex.router/v1","experts":["x","y"]}`, []safetensors.Tensor{bf})
	b, err := Load(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l := b.Layer(1); l.TopK != DefaultTopK || l.Temperature != DefaultTemperature || l.Nulls != 0 {
		t.Fatalf("defaults: %+v", l)
	}
	if b.Gate(0, model.ProjQ) == nil || b.Gate(0, model.ProjK) != nil || b.Gate(1, model.ProjQ) != nil {
		t.Fatal("only layer 0's q_proj is routed")
	}
	if g := b.Gate(0, model.ProjQ); g.W[5] != model.BF16ToF32(binary.LittleEndian.Uint16(vals[10:])) {
		t.Fatal("BF16 gate not converted")
	}
}

func TestLoadErrors(t *testing.T) {
	cfg := fixtureConfig(t)
	_, hid := cfg.ProjShape(model.ProjQ)
	rng := rand.New(rand.NewPCG(5, 6))
	ok := func() []safetensors.Tensor {
		return []safetensors.Tensor{randGate(rng, GateName(0, model.ProjQ), 2, hid)}
	}
	const head = `{"format":"loraplex.router/v1","experts":["x","y"]`
	tests := []struct {
		name    string
		json    string
		tensors []safetensors.Tensor
		want    string
	}{
		{"missing router.json", "", ok(), "router.json"},
		{"bad json", `{"format":`, ok(), "router.json"},
		{"unknown field", head + `,"topk":2}`, ok(), `unknown field "topk"`},
		{"wrong format", `{"format":"meteora","experts":["x"]}`, ok(), `"format" is "meteora"`},
		{"no experts", `{"format":"loraplex.router/v1"}`, ok(), "layer 0 has no experts"},
		{"duplicate expert", `{"format":"loraplex.router/v1","experts":["x","x"]}`, ok(), `"experts": "x" is listed twice`},
		{"empty expert", `{"format":"loraplex.router/v1","experts":["x",""]}`, ok(), `"experts": entry 1 is empty`},
		{"top_k 0", head + `,"top_k":0}`, ok(), `"top_k" is 0`},
		{"top_k too large", head + `,"top_k":3}`, ok(), "layer 0: top_k 3 exceeds its 2 experts + 0 null experts"},
		{"temperature 0", head + `,"temperature":0}`, ok(), `"temperature" is 0`},
		{"temperature negative", head + `,"temperature":-1}`, ok(), `"temperature" is -1`},
		{"null_experts negative", head + `,"null_experts":-1}`, ok(), `"null_experts" is -1`},
		{"layer key not a number", head + `,"layers":{"x":{}}}`, ok(), `key "x" is not a layer index`},
		{"layer key padded", head + `,"layers":{"01":{}}}`, ok(), `key "01" is not a layer index`},
		{"layer out of range", head + `,"layers":{"2":{"top_k":1}}}`, ok(), "layer 2 out of range (the model has 2 layers)"},
		{"layer top_k bad", head + `,"layers":{"1":{"top_k":-2}}}`, ok(), `"layers"."1": "top_k" is -2`},
		{"layer temperature bad", head + `,"layers":{"1":{"temperature":0}}}`, ok(), `"layers"."1": "temperature" is 0`},
		{"layer experts duplicate", head + `,"layers":{"1":{"experts":["a","a"]}}}`, ok(), `"layers"."1"."experts": "a" is listed twice`},
		{"layer experts empty list", head + `,"layers":{"1":{"experts":[]}}}`, ok(), "layer 1 has no experts"},
		{"layer top_k exceeds", head + `,"layers":{"1":{"experts":["a"],"null_experts":1,"top_k":3}}}`, ok(), "layer 1: top_k 3 exceeds its 1 experts + 1 null experts"},
		{"missing gates", head + `}`, nil, "gates.safetensors"},
		{"no gate tensors", head + `}`, []safetensors.Tensor{}, "no gate tensors"},
		{"unknown tensor", head + `}`, []safetensors.Tensor{randGate(rng, "model.layers.0.self_attn.q_proj.weight", 2, hid)}, `unknown tensor "model.layers.0.self_attn.q_proj.weight"`},
		{"wrong block", head + `}`, []safetensors.Tensor{randGate(rng, "model.layers.0.mlp.q_proj.moe_gate.weight", 2, hid)}, "unknown tensor"},
		{"unknown projection", head + `}`, []safetensors.Tensor{randGate(rng, "model.layers.0.self_attn.qkv_proj.moe_gate.weight", 2, hid)}, "unknown tensor"},
		{"gate layer out of range", head + `}`, []safetensors.Tensor{randGate(rng, GateName(2, model.ProjQ), 2, hid)}, "layer 2 out of range"},
		{"gate rows", head + `}`, []safetensors.Tensor{randGate(rng, GateName(0, model.ProjQ), 3, hid)}, "has shape [3 64], want [2, 64]"},
		{"gate rows with nulls", head + `,"null_experts":1}`, ok(), "has shape [2 64], want [3, 64] (layer 0: 2 experts + 1 null experts"},
		{"gate rows of a layer override", head + `,"layers":{"1":{"experts":["a","b","c"]}}}`, []safetensors.Tensor{randGate(rng, GateName(1, model.ProjK), 2, hid)}, "want [3, 64]"},
		{"gate cols", head + `}`, []safetensors.Tensor{randGate(rng, GateName(0, model.ProjDown), 2, hid)}, "has shape [2 64], want [2, 96]"},
		{"gate dtype", head + `}`, []safetensors.Tensor{{Name: GateName(0, model.ProjQ), DType: "I32", Shape: []int{2, hid}, Data: make([]byte, 8*hid)}}, `unsupported dtype "I32"`},
		{"gate 1-D", head + `}`, []safetensors.Tensor{{Name: GateName(0, model.ProjQ), DType: "F32", Shape: []int{2 * hid}, Data: make([]byte, 8*hid)}}, "has shape [128]"},
		{"gate NaN", head + `}`, []safetensors.Tensor{{Name: GateName(0, model.ProjQ), DType: "F32", Shape: []int{2, hid}, Data: f32Bytes(append(make([]float32, 2*hid-1), float32(math.NaN())))}}, "is NaN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var dir string
			if tc.json == "" {
				dir = t.TempDir()
			} else {
				dir = writeBundle(t, tc.json, tc.tensors)
			}
			_, err := Load(dir, cfg)
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if strings.HasPrefix(tc.name, "missing") || tc.name == "missing gates" {
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %q does not wrap ErrInvalid", err)
			}
		})
	}
}
