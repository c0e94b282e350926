package adaptercache

import (
	"bytes"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

func load(t *testing.T, dir string, base *model.Config) *model.HostAdapter {
	t.Helper()
	a, closer, err := LoadPEFT(dir, "test", base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closer.Close() })
	return a
}

func near(a float32, b float64) bool { return math.Abs(float64(a)-b) < 1e-6 }

func TestLoadPEFTValid(t *testing.T) {
	base := testBase(t)
	// Several modules with different ranks through rank_pattern, in both blocks.
	cfg := with(map[string]any{
		"target_modules": []string{"q_proj", "k_proj", "down_proj"},
		"r":              8, "lora_alpha": 16,
		"rank_pattern": map[string]any{"k_proj": 2, "model.layers.1.mlp.down_proj": 4},
	})
	var ts [][]safetensors.Tensor
	for l := range 2 {
		ts = append(ts, pair(base, l, model.ProjQ, 8), pair(base, l, model.ProjK, 2))
	}
	ts = append(ts, pair(base, 0, model.ProjDown, 8), pair(base, 1, model.ProjDown, 4))
	dir := writeAdapter(t, cfg, ts...)
	a, closer, err := LoadPEFT(dir, "multi", base)
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "multi" || a.Path != dir || len(a.Modules) != 2 {
		t.Errorf("adapter header %q %q %d layers", a.Name, a.Path, len(a.Modules))
	}
	want := []string{"0.q_proj", "0.k_proj", "0.down_proj", "1.q_proj", "1.k_proj", "1.down_proj"}
	if got := adapted(a); !reflect.DeepEqual(got, want) {
		t.Errorf("adapted %v, want %v", got, want)
	}
	for _, c := range []struct {
		layer int
		p     model.Proj
		rank  int
		scale float64
	}{{0, model.ProjQ, 8, 2}, {1, model.ProjK, 2, 8}, {0, model.ProjDown, 8, 2}, {1, model.ProjDown, 4, 4}} {
		m := a.Modules[c.layer][c.p]
		if m.Rank != c.rank || !near(m.Scale, c.scale) {
			t.Errorf("%d.%v: rank %d scale %v, want %d %v", c.layer, c.p, m.Rank, m.Scale, c.rank, c.scale)
		}
	}
	var bytesWant int64
	for _, group := range ts {
		for _, tt := range group {
			bytesWant += int64(len(tt.Data))
		}
	}
	if a.Bytes != bytesWant {
		t.Errorf("Bytes %d, want %d", a.Bytes, bytesWant)
	}
	m := a.Modules[1][model.ProjDown]
	if m.A.DType != model.F32 || !reflect.DeepEqual(m.A.Shape, []int{4, 128}) || !reflect.DeepEqual(m.B.Shape, []int{64, 4}) ||
		m.A.Name != "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight" {
		t.Errorf("down_proj tensors: %s %v %v %v", m.A.Name, m.A.DType, m.A.Shape, m.B.Shape)
	}
	if !bytes.Equal(m.A.Data, f32("", 4, 128).Data) {
		t.Error("lora_A data differs from what was written")
	}
	if err := closer.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLoadPEFTScales(t *testing.T) {
	base := testBase(t)
	tests := []struct {
		name  string
		over  map[string]any
		scale float64 // for layer 0 q_proj
		vScal float64 // for layer 0 v_proj
	}{
		{"plain", nil, 2, 2},
		{"rslora", map[string]any{"use_rslora": true}, 4, 4}, // 8 / sqrt(4)
		{"fractional alpha", map[string]any{"lora_alpha": 2.5}, 0.625, 0.625},
		{"alpha_pattern", map[string]any{"alpha_pattern": map[string]any{"v_proj": 32}}, 2, 8},
		{"alpha_pattern rslora", map[string]any{"use_rslora": true, "alpha_pattern": map[string]any{"q_proj": 2}}, 1, 4},
		// A key matches the whole name or a suffix that starts after a dot: "proj" is no suffix
		// of "q_proj" in that sense, so it must not apply.
		{"no partial word", map[string]any{"alpha_pattern": map[string]any{"proj": 100}}, 2, 2},
		// Keys are regexes; the first match in file order wins.
		{"regex key", map[string]any{"alpha_pattern": map[string]any{`layers\.0\.self_attn\.(q|k)_proj`: 12}}, 3, 2},
		{"full name", map[string]any{"alpha_pattern": map[string]any{"model.layers.0.self_attn.v_proj": 4}}, 2, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := load(t, writeAdapter(t, with(tc.over), qv(base)...), base)
			if s := a.Modules[0][model.ProjQ].Scale; !near(s, tc.scale) {
				t.Errorf("q scale %v, want %v", s, tc.scale)
			}
			if s := a.Modules[0][model.ProjV].Scale; !near(s, tc.vScal) {
				t.Errorf("v scale %v, want %v", s, tc.vScal)
			}
		})
	}
}

// The first matching key in the JSON object's order wins, as in peft (a Python dict keeps
// insertion order); a Go map would pick at random.
func TestPatternOrder(t *testing.T) {
	base := testBase(t)
	first := `{"peft_type":"LORA","r":8,"lora_alpha":8,"target_modules":["q_proj"],
		"rank_pattern":{"q_proj":2,"model.layers.0.self_attn.q_proj":4}}`
	a := load(t, writeAdapter(t, first, pair(base, 0, model.ProjQ, 2), pair(base, 1, model.ProjQ, 2)), base)
	if r := a.Modules[0][model.ProjQ].Rank; r != 2 {
		t.Errorf("rank %d, want 2 (first key)", r)
	}
	second := `{"peft_type":"LORA","r":8,"lora_alpha":8,"target_modules":["q_proj"],
		"rank_pattern":{"model.layers.0.self_attn.q_proj":4,"q_proj":2}}`
	a = load(t, writeAdapter(t, second, pair(base, 0, model.ProjQ, 4), pair(base, 1, model.ProjQ, 2)), base)
	if r := a.Modules[0][model.ProjQ].Rank; r != 4 {
		t.Errorf("rank %d, want 4 (first key)", r)
	}
	if r := a.Modules[1][model.ProjQ].Rank; r != 2 {
		t.Errorf("layer 1 rank %d, want 2", r)
	}
}

func TestLoadPEFTTargets(t *testing.T) {
	base := testBase(t)
	all := func(layers ...int) [][]safetensors.Tensor {
		var out [][]safetensors.Tensor
		for _, l := range layers {
			for p := model.Proj(0); p < model.NumProj; p++ {
				out = append(out, pair(base, l, p, 4))
			}
		}
		return out
	}
	tests := []struct {
		name    string
		over    map[string]any
		tensors [][]safetensors.Tensor
		want    []string
	}{
		{"regex", map[string]any{"target_modules": `.*\.layers\.1\.mlp\.(up|down)_proj`},
			[][]safetensors.Tensor{pair(base, 1, model.ProjUp, 4), pair(base, 1, model.ProjDown, 4)},
			[]string{"1.up_proj", "1.down_proj"}},
		{"regex with wildcard", map[string]any{"target_modules": `.*q_proj`},
			[][]safetensors.Tensor{pair(base, 0, model.ProjQ, 4), pair(base, 1, model.ProjQ, 4)},
			[]string{"0.q_proj", "1.q_proj"}},
		{"all-linear", map[string]any{"target_modules": "all-linear"}, all(0, 1),
			[]string{"0.q_proj", "0.k_proj", "0.v_proj", "0.o_proj", "0.gate_proj", "0.up_proj", "0.down_proj",
				"1.q_proj", "1.k_proj", "1.v_proj", "1.o_proj", "1.gate_proj", "1.up_proj", "1.down_proj"}},
		{"all-linear layer 1", map[string]any{"target_modules": "all-linear", "layers_to_transform": 1}, all(1),
			[]string{"1.q_proj", "1.k_proj", "1.v_proj", "1.o_proj", "1.gate_proj", "1.up_proj", "1.down_proj"}},
		{"layers_to_transform list", map[string]any{"layers_to_transform": []int{0}},
			[][]safetensors.Tensor{pair(base, 0, model.ProjQ, 4), pair(base, 0, model.ProjV, 4)},
			[]string{"0.q_proj", "0.v_proj"}},
		{"layers_pattern", map[string]any{"layers_to_transform": []int{1}, "layers_pattern": "layers"},
			[][]safetensors.Tensor{pair(base, 1, model.ProjQ, 4), pair(base, 1, model.ProjV, 4)},
			[]string{"1.q_proj", "1.v_proj"}},
		{"layers_pattern list", map[string]any{"layers_to_transform": []int{1}, "layers_pattern": []string{"h", "layers"}},
			[][]safetensors.Tensor{pair(base, 1, model.ProjQ, 4), pair(base, 1, model.ProjV, 4)},
			[]string{"1.q_proj", "1.v_proj"}},
		{"empty layers_to_transform means all", map[string]any{"layers_to_transform": []int{}}, qv(base),
			[]string{"0.q_proj", "0.v_proj", "1.q_proj", "1.v_proj"}},
		// A full name in the list is taken as is, without the layers_to_transform filter (peft).
		{"full names", map[string]any{"target_modules": []string{"model.layers.1.self_attn.o_proj", "model.layers.0.mlp.up_proj"}},
			[][]safetensors.Tensor{pair(base, 1, model.ProjO, 4), pair(base, 0, model.ProjUp, 4)},
			[]string{"0.up_proj", "1.o_proj"}},
		{"suffix with block", map[string]any{"target_modules": []string{"self_attn.q_proj"}},
			[][]safetensors.Tensor{pair(base, 0, model.ProjQ, 4), pair(base, 1, model.ProjQ, 4)},
			[]string{"0.q_proj", "1.q_proj"}},
		{"exclude_modules list", map[string]any{"exclude_modules": []string{"1.self_attn.v_proj"}},
			[][]safetensors.Tensor{pair(base, 0, model.ProjQ, 4), pair(base, 0, model.ProjV, 4), pair(base, 1, model.ProjQ, 4)},
			[]string{"0.q_proj", "0.v_proj", "1.q_proj"}},
		{"exclude_modules regex", map[string]any{"exclude_modules": `.*\.0\..*`},
			[][]safetensors.Tensor{pair(base, 1, model.ProjQ, 4), pair(base, 1, model.ProjV, 4)},
			[]string{"1.q_proj", "1.v_proj"}},
		// target_modules null (peft fills it in before saving, but hand-written configs exist):
		// the tensors decide.
		{"null target_modules", map[string]any{"target_modules": nil},
			[][]safetensors.Tensor{pair(base, 1, model.ProjGate, 4)}, []string{"1.gate_proj"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := load(t, writeAdapter(t, with(tc.over), tc.tensors...), base)
			if got := adapted(a); !sameSet(got, tc.want) {
				t.Errorf("adapted %v, want %v", got, tc.want)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}

func TestLoadPEFTKeyForms(t *testing.T) {
	base := testBase(t)
	for name, keys := range map[string][2]string{
		"adapter name": {prefix, ".default"}, // raw PeftModel.state_dict()
		"no prefix":    {"", ""},             // transformers' integrated PEFT
	} {
		t.Run(name, func(t *testing.T) {
			var ts [][]safetensors.Tensor
			for l := range 2 {
				ts = append(ts, pairKeys(base, l, model.ProjQ, 4, keys[0], keys[1]), pairKeys(base, l, model.ProjV, 4, keys[0], keys[1]))
			}
			a := load(t, writeAdapter(t, baseCfg(), ts...), base)
			if got := adapted(a); len(got) != 4 {
				t.Errorf("adapted %v", got)
			}
		})
	}
}

func TestLoadPEFTHalfPrecision(t *testing.T) {
	base := testBase(t)
	var ts [][]safetensors.Tensor
	for l := range 2 {
		for i, p := range []model.Proj{model.ProjQ, model.ProjV} {
			pr := pair(base, l, p, 4)
			for j := range pr {
				pr[j].DType = []string{"BF16", "F16"}[i]
				pr[j].Data = pr[j].Data[:len(pr[j].Data)/2]
			}
			ts = append(ts, pr)
		}
	}
	a := load(t, writeAdapter(t, baseCfg(), ts...), base)
	if a.Modules[0][model.ProjQ].A.DType != model.BF16 || a.Modules[1][model.ProjV].B.DType != model.F16 {
		t.Errorf("dtypes %v %v", a.Modules[0][model.ProjQ].A.DType, a.Modules[1][model.ProjV].B.DType)
	}
}

func TestLoadPEFTFileErrors(t *testing.T) {
	base := testBase(t)
	// Missing folder / config: plain I/O errors, not AdapterError.
	_, _, err := LoadPEFT(filepath.Join(t.TempDir(), "nope"), "x", base)
	var ae *AdapterError
	if !errors.Is(err, fs.ErrNotExist) || errors.As(err, &ae) || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("missing folder: %v", err)
	}
	// Config but no weights at all.
	dir := writeAdapter(t, baseCfg(), qv(base)...)
	os.Remove(filepath.Join(dir, PEFTWeightsFile))
	if _, _, err := LoadPEFT(dir, "x", base); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing weights: %v", err)
	}
	// A pickle only.
	os.WriteFile(filepath.Join(dir, "adapter_model.bin"), []byte("PK"), 0o644)
	_, _, err = LoadPEFT(dir, "x", base)
	if !errors.As(err, &ae) || !errors.Is(err, model.ErrUnsupported) || !strings.Contains(err.Error(), "torch pickle") ||
		!strings.Contains(err.Error(), "safetensors") || ae.Adapter != "x" || !strings.HasSuffix(ae.File, "adapter_model.bin") {
		t.Errorf("pickle: %v", err)
	}
	// A corrupt safetensors file is an AdapterError carrying the FormatError.
	os.WriteFile(filepath.Join(dir, PEFTWeightsFile), []byte("garbage!garbage!"), 0o644)
	_, _, err = LoadPEFT(dir, "x", base)
	var fe *safetensors.FormatError
	if !errors.As(err, &ae) || !errors.As(err, &fe) || !strings.HasSuffix(ae.File, PEFTWeightsFile) {
		t.Errorf("corrupt weights: %v", err)
	}
}
