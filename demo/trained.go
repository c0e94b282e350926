package demo

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// The trained demo (tools/train/train.py, issue 7): a 6.8M-parameter Llama-architecture model
// with a byte-level BPE tokenizer trained on prose and code, four rank-8 LoRA adapters (Go,
// Python, C, English prose) and a router bundle over them. It is what `go run ./cmd/server`
// serves when no --model is given. See assets/report.json for how it was made and what it
// scores, and bench/results/demo-quality.md for the quality table.
//
//go:embed all:assets
var assets embed.FS

// Names under which the server lists the trained demo's parts.
const (
	// RouterName is the router over the four domain adapters: a request for it lets the gates
	// pick the adapters token by token.
	RouterName = "auto"
	// AssetsDir is the embedded tree's root: model/, adapters/<domain>/, router/, eval/.
	AssetsDir = "assets"
)

// Domains are the trained adapters, each named after the text it was trained on.
var Domains = []string{"c", "english", "go", "python"}

var (
	extractOnce sync.Once
	extractDir  string
	extractErr  error
)

// Extract writes the embedded trained demo to a folder and returns it; the server then loads
// it like any model folder (memory-mapped weights, PEFT adapters, a router bundle). The folder
// is named after a hash of the contents under the user's cache directory (or the temporary
// directory), so it is written once per machine and version and shared by later runs.
func Extract() (string, error) {
	extractOnce.Do(func() { extractDir, extractErr = extract() })
	return extractDir, extractErr
}

func extract() (string, error) {
	var files []string
	if err := fs.WalkDir(assets, AssetsDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return err
	}); err != nil {
		return "", err
	}
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		data, err := assets.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", f, len(data))
		h.Write(data)
	}
	base, err := os.UserCacheDir()
	if err != nil || base == "" {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "loraplex", "demo-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	// Written into a fresh sibling and renamed, so a crash or a concurrent server never leaves
	// (or reads) a half-written folder.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".demo-*")
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, f := range files {
		data, _ := assets.ReadFile(f)
		out := filepath.Join(tmp, filepath.FromSlash(f[len(AssetsDir)+1:]))
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return "", fmt.Errorf("demo: %w", err)
		}
		if err := os.WriteFile(out, data, 0o644); err != nil {
			return "", fmt.Errorf("demo: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process finished first: use its copy.
		if _, statErr := os.Stat(filepath.Join(dir, ".complete")); statErr == nil {
			return dir, nil
		}
		return "", fmt.Errorf("demo: %w", err)
	}
	return dir, nil
}
