package serve_test

import (
	"testing"

	"github.com/loraplex/loraplex/internal/batchinv"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"
	"github.com/loraplex/loraplex/model"
)

// Deterministic mode on the CPU backend: fixture requests (the base model and four adapters,
// greedy with top logprobs and seeded sampling, short and long prompts) get bitwise the tokens
// and logprobs they get alone when they run inside busy mixed batches (other adapters, other
// lengths, any place in the batch, prompts chunked differently). The CPU is not batch-invariant
// by default (its 4-row product kernel rounds differently from its 1-row one), and the check
// finds that without the mode, so it would catch a regression of the mode.
func TestDeterministicModeIsBatchInvariantOnCPU(t *testing.T) {
	const name = "llama"
	cfg, err := model.LoadConfig(fixture.Dir(name))
	if err != nil {
		t.Fatal(err)
	}
	models := append([]string{name}, fixture.Adapters...)
	for _, deterministic := range []bool{true, false} {
		opt := batchinv.Options(name)
		opt.Deterministic = deterministic
		e := testengine.New(t, name, opt)
		reqs := batchinv.Requests(t, name)
		diffs := batchinv.Differences(t, e, reqs, models, cfg.VocabSize, 2)
		if deterministic {
			for _, d := range diffs {
				t.Error("deterministic mode:", d)
			}
			t.Logf("deterministic mode: %d requests x 2 busy rounds, all bitwise equal to their runs alone", len(reqs))
		} else {
			if len(diffs) == 0 {
				t.Error("without deterministic mode no request's output moved with its batch: the check has lost its teeth")
			}
			t.Logf("default mode: %d outputs differ from the runs alone, e.g. %s", len(diffs), first(diffs))
		}
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return s[0]
}
