//go:build cuda

package cuda_test

import (
	"math"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
)

// demoPerplexities loads the embedded trained demo on b and returns held-out perplexities over
// the first 2 x 256 tokens of each domain for the base, the matching adapter and the router.
func demoPerplexities(t *testing.T, b model.Backend) map[string]float64 {
	t.Helper()
	l, err := demo.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	const n = 256
	r, err := l.NewRunner(n)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, d := range l.EvalDomains() {
		ids, err := l.EvalTokens(d, 2*n)
		if err != nil {
			t.Fatal(err)
		}
		for name, ad := range map[string]*model.Adapter{"base": nil, "adapter": l.Adapters[d], "router": l.Router} {
			if out[d+"/"+name], err = demo.Perplexity(r, ids, ad); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

// TestTrainedDemoCUDA runs the trained demo (head_dim 40, tied embeddings, four adapters, the
// router on trained gates) on the GPU and on the CPU: held-out perplexities must agree within 3%
// (the GPU rounds GEMM inputs to bf16; a wrong kernel is off by far more).
func TestTrainedDemoCUDA(t *testing.T) {
	g := newGPU(t)
	c := cpu.New(0)
	defer c.Close()
	want := demoPerplexities(t, c)
	got := demoPerplexities(t, g)
	for k, w := range want {
		rel := math.Abs(got[k]-w) / w
		t.Logf("%-16s cpu %9.3f cuda %9.3f (%.2f%%)", k, w, got[k], 100*rel)
		if !(rel < 0.03) {
			t.Errorf("%s: cuda perplexity %.3f, cpu %.3f", k, got[k], w)
		}
	}
}
