package model_test

import (
	"os"
	"testing"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
)

// longCases are the long-context cases a run compares: the 8k ones always, the 32k ones when
// LORAPLEX_LONGCTX_32K=1 (a 32k prefill of the tiny models takes minutes on CI's two cores;
// the GPU machine's run sets it, see tools/fixtures/gen_longctx.py).
func longCases(fx *fixture.LongFixture) []fixture.LongCase {
	var out []fixture.LongCase
	for _, c := range fx.Cases {
		if c.Name == "32k" && os.Getenv("LORAPLEX_LONGCTX_32K") != "1" {
			continue
		}
		out = append(out, c)
	}
	return out
}

// Far past 4,096 positions the CPU engine computes what transformers does: for llama3 and yarn
// RoPE scaling and for Mistral and Qwen2 sliding windows shorter than the prompt, the rotary
// frequencies match, the logits at sampled prompt positions and at every greedy step agree
// within the fixture tolerance, and every greedy token is the reference's.
func TestLongContextFixtures(t *testing.T) {
	for _, name := range fixture.LongModels {
		t.Run(name, func(t *testing.T) {
			b := cpu.New(0)
			defer b.Close()
			fx, cfg, h := fixture.OpenLong(t, name, b)
			if err := fixture.CheckInvFreq(cfg, fx); err != nil {
				t.Fatal(err)
			}
			for _, c := range longCases(fx) {
				start := time.Now()
				res, err := h.RunLong(c, 512, cpuTolerance)
				if err != nil {
					t.Fatalf("%s: %v", c.Name, err)
				}
				t.Logf("%s %s: %d positions in %v, %d probes and %d steps, worst logit diff %.2e", name, c.Name,
					len(c.Prompt)+len(c.Steps), time.Since(start).Round(time.Millisecond), len(c.Probes), res.Steps, res.WorstDiff)
			}
		})
	}
}
