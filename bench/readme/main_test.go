package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/bench/internal/gpuresults"
)

// README.md's GPU table is exactly what the results files say: a number retyped by hand, or a
// results file replaced without `go run ./bench/readme`, fails here.
func TestREADMEIsCurrent(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	table, err := gpuTable("../..")
	if err != nil {
		t.Fatal(err)
	}
	want, err := splice(readme, table)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != string(readme) {
		t.Fatal("README.md's GPU table differs from bench/results/gpu-h200: run go run ./bench/readme")
	}
}

// The table shows thousands separators as the README writes them.
func TestCommas(t *testing.T) {
	for v, want := range map[float64]string{154.84: "154.8", 6762.72: "6,763", 13677.6: "13,678", 10.88: "10.9", 1234567: "1,234,567"} {
		if got := commas(v, 1); got != want {
			t.Errorf("commas(%v) = %q, want %q", v, got, want)
		}
	}
}

// Once a results file of bench/gpu/report lands in bench/results, the table comes from the
// newest of them (by the run's date), with every goal row; JSON files of other layouts there
// are not results files and are passed over.
func TestTableFromNewestResultsFile(t *testing.T) {
	root := t.TempDir()
	results := filepath.Join(root, "bench", "results")
	if err := os.MkdirAll(results, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, date string) {
		f, err := gpuresults.Build("../internal/gpuresults/testdata/run", date, "bench/gpu/run.sh OUT")
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(f)
		if err := os.WriteFile(filepath.Join(results, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("gpu-goals-h200.json", "2026-12-01T00:00:00Z")
	write("gpu-goals-h100.json", "2026-12-07T02:00:00Z")
	if err := os.WriteFile(filepath.Join(results, "gpu-goals-8b.json"), []byte(`{"device":"x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	readme := "# x\n\n" + begin + "\nold\n" + end + "\ntail\n"
	if err := os.WriteFile(filepath.Join(root, "README.md"), []byte(readme), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := rewrite(root); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"from bench/results/gpu-goals-h100.json", "2026-12-07T02:00:00Z", "| prefill 8,192 tokens, achieved FLOP/s ÷ cuBLAS bf16 GEMM |",
		"| decode batch 64 ÷ llama.cpp batched |", "\ntail\n"} {
		if !strings.Contains(string(got), s) {
			t.Errorf("README lacks %q:\n%s", s, got)
		}
	}
	if strings.Contains(string(got), "old") || strings.Contains(string(got), "gpu-goals-h200.json") {
		t.Errorf("README kept the old table or took the older file:\n%s", got)
	}
}
