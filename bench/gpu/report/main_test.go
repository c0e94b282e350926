package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/bench/internal/gpuresults"
)

// copyRun copies the named files of gpuresults' sample run directory into a fresh one.
func copyRun(t *testing.T, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join("../../internal/gpuresults/testdata/run", n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, n)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A run cut short before bench/gpu wrote anything still gets both halves of its results file
// (run.sh exports them after every stage), named by the card nvidia-smi named, every loraplex
// row saying why it is empty.
func TestReportOfAPartialRun(t *testing.T) {
	dir := copyRun(t, "machine.txt", "hf.json")
	if err := os.WriteFile(filepath.Join(dir, "stages.tsv"), []byte("build\t101.5\tok\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(dir, "bench/gpu/run.sh OUT"); err != nil {
		t.Fatal(err)
	}
	if f, err := gpuresults.Load(filepath.Join(dir, "gpu-goals-h100.json")); err != nil || f.Command != "bench/gpu/run.sh OUT" || len(f.Rows) == 0 {
		t.Fatalf("results file: %v", err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "gpu-goals-h100.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "n/a (bench/gpu wrote no loraplex.json (run.sh stage loraplex: did not run))") {
		t.Errorf("markdown:\n%s", md)
	}
}
