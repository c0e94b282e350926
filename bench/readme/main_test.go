package main

import (
	"os"
	"testing"
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
