package adaptercache

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/model"
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
