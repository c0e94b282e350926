package model_test

import (
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/fixtureadapters"
	"github.com/loraplex/loraplex/model"
)

// The CPU engine computes in float32 like the reference, so logits must agree to 1e-3 and every
// greedy token must match.
var cpuTolerance = fixture.Tolerance{Abs: 1e-3, AllTokens: true}

func fixtureDir(name string) string { return fixture.Dir(name) }

func loadModel(t *testing.T, name string) (*fixture.Fixture, *fixture.Harness, *model.Config, model.Backend) {
	t.Helper()
	b := cpu.New(0)
	t.Cleanup(b.Close)
	fx, cfg, h := fixture.Open(t, name, b)
	return fx, h, cfg, b
}

func TestFixturesBaseModel(t *testing.T) {
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			fx, h, _, _ := loadModel(t, name)
			var base []fixture.Case
			for _, c := range fx.Cases {
				if c.Adapter == "" {
					base = append(base, c)
				}
			}
			res, err := h.Run(base, nil, 1<<20, cpuTolerance)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d cases, worst logit diff %.2e", name, len(base), res.WorstDiff)
		})
	}
}

// TestFixturesMixedAdapters runs every case of a model (base and four adapters of different
// ranks, targets and scales) in one batch, then again with prefill chunked to 3 tokens so
// chunks of different sequences interleave with decode rows.
func TestFixturesMixedAdapters(t *testing.T) {
	for _, name := range fixture.Models {
		t.Run(name, func(t *testing.T) {
			fx, h, cfg, b := loadModel(t, name)
			adapters := fixtureadapters.Upload(t, name, cfg, b)
			for _, chunk := range []int{1 << 20, 3} {
				res, err := h.Run(fx.Cases, adapters, chunk, cpuTolerance)
				if err != nil {
					t.Fatalf("chunk %d: %v", chunk, err)
				}
				t.Logf("%s chunk %d: %d cases, %d steps, worst logit diff %.2e", name, chunk, len(fx.Cases), res.Steps, res.WorstDiff)
			}
		})
	}
}
