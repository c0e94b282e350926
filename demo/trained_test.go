package demo_test

import (
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
)

// TestTrainedDemoQuality loads the embedded trained demo the way the server does (extracted,
// memory-mapped, PEFT adapters, the router bundle) and checks, on one held-out window per code
// domain, what the demo exists to show: each adapter is far better than the base on its own
// domain (bench/results/demo-quality.md: 17-35 against 760-4,900 perplexity), and the router is
// close to the matching adapter. A broken forward pass, adapter loader, tokenizer or router
// fails it.
func TestTrainedDemoQuality(t *testing.T) {
	b := cpu.New(0)
	defer b.Close()
	l, err := demo.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const n = 256
	r, err := l.NewRunner(n)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"c", "go", "python"} {
		ids, err := l.EvalTokens(d, n)
		if err != nil {
			t.Fatal(err)
		}
		ppl := map[string]float64{}
		for name, ad := range map[string]*model.Adapter{"base": nil, "adapter": l.Adapters[d], "router": l.Router} {
			if ppl[name], err = demo.Perplexity(r, ids, ad); err != nil {
				t.Fatal(err)
			}
		}
		base, own, rtd := ppl["base"], ppl["adapter"], ppl["router"]
		t.Logf("%s, first %d held-out tokens: base %.1f, adapter %.2f, router %.2f", d, n, base, own, rtd)
		if own*3 > base {
			t.Errorf("%s: adapter perplexity %.2f is not far below the base's %.1f", d, own, base)
		}
		if rtd > 1.5*own {
			t.Errorf("%s: router perplexity %.2f is far above the adapter's %.2f", d, rtd, own)
		}
	}
}
