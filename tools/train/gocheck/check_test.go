// Package gocheck loads a tools/train output folder with loraplex's own loaders (demo.LoadDir:
// the same path the embedded demo takes) and recomputes the held-out perplexities of
// report.json with the CPU engine:
//
//	TRAIN_OUT=/path/to/out go test ./tools/train/gocheck -run TestTrainedOutput -v
//
// It is a check of a fresh training run, so it needs TRAIN_OUT; CI checks the shipped demo in
// demo/trained_test.go instead.
package gocheck

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
)

func TestTrainedOutput(t *testing.T) {
	out := os.Getenv("TRAIN_OUT")
	if out == "" {
		t.Skip("TRAIN_OUT not set")
	}
	var rep struct {
		Args       struct{ Seq int } `json:"args"`
		Perplexity map[string]map[string]float64
	}
	raw, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	be := cpu.New(8)
	defer be.Close()
	l, err := demo.LoadDir(out, be)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r, err := l.NewRunner(rep.Args.Seq)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name, dom string, ids []int, ad *model.Adapter) {
		got, err := demo.Perplexity(r, ids, ad)
		if err != nil {
			t.Fatal(err)
		}
		want := rep.Perplexity[name][dom]
		rel := math.Abs(got-want) / want
		t.Logf("%-16s %-8s engine %9.4f python %9.4f (rel %.2e)", name, dom, got, want, rel)
		if rel > 1e-2 {
			t.Errorf("%s on %s: engine ppl %v, report %v", name, dom, got, want)
		}
	}
	for _, d := range l.EvalDomains() {
		ids, err := l.EvalTokens(d, 0)
		if err != nil {
			t.Fatal(err)
		}
		check("base", d, ids, nil)
		for a, ad := range l.Adapters {
			check("adapter_"+a, d, ids, ad)
		}
		check("router", d, ids, l.Router)
	}
}
