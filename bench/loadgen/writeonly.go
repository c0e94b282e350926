package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
)

// writeOnly is -write-adapters: the adapters a separately started server needs for a -url run
// with the same shape as an in-process one.
func writeOnly(o options) error {
	targets, err := ParseTargets(o.targets)
	if err != nil {
		return err
	}
	dir := o.modelDir
	if dir == "" {
		// cmd/server without --model serves the trained demo, not the in-process one that
		// demo.Build makes (other shapes): write adapters that fit what the server loads.
		root, err := demo.Extract()
		if err != nil {
			return err
		}
		dir = filepath.Join(root, "model")
	}
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.writeAdapters, 0o755); err != nil {
		return err
	}
	names, err := WriteAdapters(o.writeAdapters, cfg, o.adapters, o.rank, targets, o.seed)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %d adapters (rank %d, %s) to %s\n", len(names), o.rank, o.targets, o.writeAdapters)
	return nil
}

// adapterNames reads -adapter-names: "a,b,c", or "@DIR" for DIR's sub-folders (sorted), which
// is what cmd/server --adapter-dir DIR loads on demand. nil means "ask the server".
func adapterNames(s string) ([]string, error) {
	dir, ok := strings.CutPrefix(s, "@")
	if !ok {
		return splitList(s), nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("-adapter-names %s: no adapter folders in %s", s, filepath.Clean(dir))
	}
	return out, nil
}
