package adaptercache

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/lorapack"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/model/safetensors"
)

// FuzzLoadPEFTConfig feeds arbitrary adapter_config.json bytes to the parser and, when it accepts
// them, asks the selection and scaling questions LoadPEFT asks. Nothing may panic, and an
// accepted config must give positive ranks.
func FuzzLoadPEFTConfig(f *testing.F) {
	seeds, _ := filepath.Glob("../testdata/models/*/adapters/*/adapter_config.json")
	for _, p := range seeds {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	for _, over := range []map[string]any{
		nil,
		{"target_modules": "all-linear", "layers_to_transform": 1, "use_rslora": true},
		{"target_modules": `.*\.layers\.0\.mlp\.(up|down)_proj`},
		{"layers_to_transform": []int{0, 1}, "layers_pattern": []string{"h", "layers|x"}},
		{"rank_pattern": map[string]any{"q_proj": 2, `layers\.1\..*`: 16}, "alpha_pattern": map[string]any{"v_proj": 0.5}},
		{"exclude_modules": ".*0.*", "init_lora_weights": "pissa"},
		{"use_dora": true},
	} {
		b, _ := json.Marshal(with(over))
		f.Add(b)
	}
	f.Add([]byte(`{"peft_type":"LORA","r":1e400}`))
	f.Add([]byte(`{"peft_type":"LORA","r":"8","rank_pattern":{"":1}}`))
	var modules []string
	for l := range 3 {
		for p := model.Proj(0); p < model.NumProj; p++ {
			modules = append(modules, fmt.Sprintf("model.layers.%d.%s.%s", l, p.Block(), p))
		}
	}
	modules = append(modules, "lm_head", "", "model.layers.x.self_attn.q_proj", "a.b.99999999999999999999.c")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParsePEFTConfig(data)
		if err != nil {
			return
		}
		for _, m := range modules {
			c.Targets(m)
			if r, _ := c.RankAlpha(m); r < 1 {
				t.Fatalf("rank %d for %s", r, m)
			}
			c.Scale(m)
		}
	})
}

// FuzzLoadCompressed feeds arbitrary bytes to the lorapack loaders as a file on disk, with
// and without resealing: a resealed input gets valid checksums for whatever streams and
// manifest it holds, so the fuzzer reaches the manifest checks and the codecs behind the
// checksums. Nothing may panic, and an adapter that loads has only finite values.
func FuzzLoadCompressed(f *testing.F) {
	base, err := model.LoadConfig(filepath.Join("..", "testdata", "models", "llama"))
	if err != nil {
		f.Fatal(err)
	}
	for i, opt := range []CompressOptions{DefaultCompressOptions(), {Codec: "q8"}, {Codec: "dense"}, {Codec: "rice", Density: 0.25},
		{Codec: "ternary", Density: 0.5}, {Codec: "bitmap", Density: 0.25}, {Codec: "rice-q8", Density: 0.3}, {Codec: "auto", Density: 0.1, Global: true, AlphaC: 1}} {
		var buf bytes.Buffer
		if _, err := CompressPEFT(filepath.Join("..", "testdata", "models", "llama", "adapters", "a_qv"), &buf, opt); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes(), i%2 == 0)
	}
	f.Fuzz(func(t *testing.T, data []byte, reseal bool) {
		if reseal {
			if b, ok := resealed(data); ok {
				data = b
			}
		}
		path := filepath.Join(t.TempDir(), "a.lorapack")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		onDevice := func(c string) bool { return c == "q4" }
		for _, load := range []LoaderFunc{LoadCompressed, func(p, n string, c *model.Config) (*model.HostAdapter, io.Closer, error) {
			return LoadCompressedEncoded(p, n, c, onDevice)
		}} {
			a, closer, err := load(path, "x", base)
			if err != nil {
				continue
			}
			if err := checkFinite(a); err != nil {
				t.Fatalf("loaded with %v", err)
			}
			closer.Close()
		}
	})
}

// resealed rewrites a lorapack file with the checksums of what it holds, if it parses that far.
func resealed(data []byte) ([]byte, bool) {
	f, err := safetensors.Parse("fuzz", data)
	if err != nil {
		return nil, false
	}
	var m lorapack.Manifest
	if json.Unmarshal([]byte(f.Metadata()[lorapack.MetaManifest]), &m) != nil {
		return nil, false
	}
	var streams []lorapack.Stream
	for _, n := range f.Names() {
		t, _ := f.Tensor(n)
		streams = append(streams, lorapack.Stream{Name: n, Data: t.Data})
	}
	var buf bytes.Buffer
	if lorapack.WriteContainer(&buf, &m, streams) != nil {
		return nil, false
	}
	return buf.Bytes(), true
}

// FuzzParseKey holds parseKey's fast path to the regexps that define the accepted key forms:
// wherever fastKey reads a name, regexpKey reads the same key from it.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
		"model.layers.31.mlp.down_proj.lora_B.weight",
		"base_model.model.model.layers.7.mlp.up_proj.lora_A.default.weight",
		"base_model.model.model.layers.07.self_attn.k_proj.lora_A.weight",
		"base_model.model.model.layers.1.mlp.q_proj.lora_A.weight",
		"base_model.model.base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight",
		"base_model.model..lora_A.weight",
		"model.layers.1234567890.mlp.gate_proj.lora_B.weight",
		"base_model.model.model.layers.2.self_attn.v_proj.lora_B.lora_A.weight",
		"model.layers.3.self_attn.q_proj.lora_A.other.weight",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		fast, ok := fastKey(name)
		if !ok {
			return
		}
		slow, err := regexpKey(name)
		if err != nil || slow != fast {
			t.Fatalf("%q: fastKey %+v, regexpKey %+v (%v)", name, fast, slow, err)
		}
	})
}

// The key forms peft and transformers write are read by the fast path (so the loaders do not
// fall back to the regexps for them), to the key the regexps give.
func TestParseKeyFastPathTakesTheUsualForms(t *testing.T) {
	for _, name := range []string{
		"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
		"base_model.model.model.layers.12.mlp.gate_proj.lora_B.default.weight",
		"model.layers.31.mlp.down_proj.lora_B.weight",
	} {
		fast, ok := fastKey(name)
		slow, err := regexpKey(name)
		if !ok || err != nil || fast != slow {
			t.Errorf("%q: fastKey %+v %v, regexpKey %+v %v", name, fast, ok, slow, err)
		}
	}
}
