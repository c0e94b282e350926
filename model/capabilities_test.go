package model_test

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Optional backend capabilities are named interfaces declared in model: no Go source of the
// repository (tests and generated code aside) asserts an anonymous interface, and the engine (serve)
// never reaches into the runner's backend (Runner.B) but goes through the Runner's methods.
func TestCapabilitiesAreNamed(t *testing.T) {
	anon := regexp.MustCompile(`\.\(\s*interface\s*\{`)
	files := 0
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "vendor" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(src, []byte("Code generated")) && bytes.Contains(src, []byte("DO NOT EDIT")) {
			return nil
		}
		files++
		for i, line := range strings.Split(string(src), "\n") {
			if anon.MatchString(line) {
				t.Errorf("%s:%d asserts an anonymous interface (declare the capability in model): %s", path, i+1, strings.TrimSpace(line))
			}
			if filepath.Base(filepath.Dir(path)) == "serve" && strings.Contains(line, "runner.B") {
				t.Errorf("%s:%d reaches into the runner's backend: %s", path, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("only %d Go files found from model/..", files)
	}
}
