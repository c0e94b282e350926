package safetensors

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenDirFixtures opens the models transformers wrote under testdata/models: single files
// and a five-shard index, in F32, BF16 and F16.
func TestOpenDirFixtures(t *testing.T) {
	cfgs, _ := filepath.Glob("../../testdata/models/*/config.json")
	if len(cfgs) == 0 {
		t.Skip("no model fixtures")
	}
	for _, cfg := range cfgs {
		dir := filepath.Dir(cfg)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			s, err := OpenDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			found := false
			for _, n := range s.Names() {
				tt, ok := s.Tensor(n)
				if !ok || s.Where(n) == "" {
					t.Fatalf("tensor %s listed but not found", n)
				}
				if strings.HasSuffix(n, "layers.0.self_attn.q_proj.weight") {
					found = len(tt.Shape) == 2 && len(tt.Data) > 0
				}
			}
			if !found {
				t.Errorf("no layer 0 q_proj weight among %d tensors", len(s.Names()))
			}
		})
	}
}
