package adaptercache

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/model"
)

// TestLoadPEFTFixtures loads every adapter that HF peft wrote under testdata/models (produced by
// tools/fixtures/gen_models.py), each against its own base model.
func TestLoadPEFTFixtures(t *testing.T) {
	dirs, _ := filepath.Glob("../testdata/models/*/adapters/*")
	if len(dirs) == 0 {
		t.Skip("no PEFT fixtures in testdata/models")
	}
	for _, dir := range dirs {
		modelDir := filepath.Dir(filepath.Dir(dir))
		t.Run(filepath.Base(modelDir)+"/"+filepath.Base(dir), func(t *testing.T) {
			base, err := model.LoadConfig(modelDir)
			if err != nil {
				t.Fatal(err)
			}
			a, closer, err := LoadPEFT(dir, filepath.Base(dir), base)
			if err != nil {
				t.Fatal(err)
			}
			defer closer.Close()
			n := 0
			for l := range a.Modules {
				for p, m := range a.Modules[l] {
					if m == nil {
						continue
					}
					n++
					out, in := base.ProjShape(model.Proj(p))
					if m.A.Shape[0] != m.Rank || m.A.Shape[1] != in || m.B.Shape[0] != out || m.B.Shape[1] != m.Rank {
						t.Errorf("layer %d %v: shapes %v %v rank %d", l, model.Proj(p), m.A.Shape, m.B.Shape, m.Rank)
					}
				}
			}
			if n == 0 || a.Bytes == 0 {
				t.Errorf("loaded %d modules, %d bytes", n, a.Bytes)
			}
		})
	}
}

// The llama fixtures' expected modules, ranks and scales, worked out by hand from their
// adapter_config.json files.
func TestLoadPEFTFixtureDetails(t *testing.T) {
	modelDir := "../testdata/models/llama"
	if _, err := os.Stat(filepath.Join(modelDir, "adapters")); err != nil {
		t.Skip("no llama fixtures")
	}
	base, err := model.LoadConfig(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	type mod struct {
		layer int
		proj  model.Proj
		rank  int
		scale float64
	}
	cases := map[string][]mod{
		// r 8, alpha 16, q and v everywhere.
		"a_qv": {{0, model.ProjQ, 8, 2}, {0, model.ProjV, 8, 2}, {1, model.ProjQ, 8, 2}, {1, model.ProjV, 8, 2}},
		// layers_to_transform [1]; rank_pattern down_proj 4; alpha_pattern k_proj 64; r 16 alpha 16.
		"c_patterns": {{1, model.ProjK, 16, 4}, {1, model.ProjO, 16, 1}, {1, model.ProjGate, 16, 1}, {1, model.ProjDown, 4, 4}},
		// regex on layer 0 up/down, r 2, alpha 4.
		"d_regex": {{0, model.ProjUp, 2, 2}, {0, model.ProjDown, 2, 2}},
	}
	// all-linear saved as full names, r 4, alpha 8, rslora: 8 / sqrt(4) = 4.
	for l := range 2 {
		for p := model.Proj(0); p < model.NumProj; p++ {
			cases["b_all_rslora"] = append(cases["b_all_rslora"], mod{l, p, 4, 4})
		}
	}
	for name, want := range cases {
		a, closer, err := LoadPEFT(filepath.Join(modelDir, "adapters", name), name, base)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := 0
		for _, w := range want {
			m := a.Modules[w.layer][w.proj]
			if m == nil {
				t.Errorf("%s: layer %d %v missing", name, w.layer, w.proj)
				continue
			}
			if m.Rank != w.rank || math.Abs(float64(m.Scale)-w.scale) > 1e-6 {
				t.Errorf("%s: layer %d %v rank %d scale %v, want %d %v", name, w.layer, w.proj, m.Rank, m.Scale, w.rank, w.scale)
			}
		}
		for l := range a.Modules {
			for _, m := range a.Modules[l] {
				if m != nil {
					got++
				}
			}
		}
		if got != len(want) {
			t.Errorf("%s: %d modules, want %d", name, got, len(want))
		}
		closer.Close()
	}
}
