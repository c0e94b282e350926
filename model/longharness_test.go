package model_test

import (
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
)

// The long-context harness checks what the reference says: replaying a short fixture case as
// a long one (its first greedy tokens appended to the prompt, their logits as probes inside the
// prefill, the remaining steps decoded) agrees with transformers at every probe and step, and a
// wrong probe or step is caught.
func TestRunLongFollowsTheReference(t *testing.T) {
	for _, name := range fixture.Models {
		fx, h, _, _ := loadModel(t, name)
		for _, c := range fx.Cases {
			if c.Adapter != "" {
				continue
			}
			lc := asLongCase(c, 3)
			for _, chunk := range []int{512, 2} {
				res, err := h.RunLong(lc, chunk, cpuTolerance)
				if err != nil {
					t.Fatalf("%s chunk %d: %v", name, chunk, err)
				}
				if res.Steps != len(lc.Steps) {
					t.Errorf("%s: %d steps compared, want %d", name, res.Steps, len(lc.Steps))
				}
			}
			bad := asLongCase(c, 3)
			bad.Probes[1].Logits = append([]float32(nil), bad.Probes[1].Logits...)
			bad.Probes[1].Logits[0] += 0.01
			if _, err := h.RunLong(bad, 512, cpuTolerance); err == nil {
				t.Errorf("%s: a probe 0.01 off passed", name)
			}
			bad = asLongCase(c, 3)
			bad.Steps[1].Token = (bad.Steps[1].Token + 1) % len(bad.Steps[1].Logits)
			if _, err := h.RunLong(bad, 512, fixture.Tolerance{Abs: 1e9, AllTokens: true}); err == nil {
				t.Errorf("%s: a wrong greedy token passed", name)
			}
		}
	}
}

// asLongCase moves a case's first k greedy steps into its prompt, their logits becoming probes.
func asLongCase(c fixture.Case, k int) fixture.LongCase {
	lc := fixture.LongCase{Name: "short", Prompt: append([]int(nil), c.Prompt...)}
	for _, s := range c.Steps[:k] {
		lc.Probes = append(lc.Probes, fixture.Probe{Position: len(lc.Prompt) - 1, Logits: s.Logits})
		lc.Prompt = append(lc.Prompt, s.Token)
	}
	lc.Steps = c.Steps[k:]
	return lc
}
