// Command report writes the results file of one bench/gpu/run.sh invocation: it reads the run
// directory (package gpuresults describes it) and writes gpu-goals-CARD.json and gpu-goals-CARD.md beside
// it, CARD being the GPU's short name (h100, h200). Copy both into bench/results/ and run
// `go run ./bench/readme` to put the table into README.md.
//
//	go run ./bench/gpu/report -dir OUT -command 'bench/gpu/run.sh OUT'
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/loraplex/loraplex/bench/internal/gpuresults"
)

func main() {
	dir := flag.String("dir", "", "run directory")
	command := flag.String("command", "", "the command that made the run, for the file")
	flag.Parse()
	if err := run(*dir, *command); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(dir, command string) error {
	if dir == "" {
		return fmt.Errorf("-dir is required")
	}
	f, err := gpuresults.Build(dir, time.Now().UTC().Format(time.RFC3339), command)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	base := filepath.Join(dir, "gpu-goals-"+gpuresults.CardSlug(f.Card))
	if err := os.WriteFile(base+".json", append(data, '\n'), 0o644); err != nil {
		return err
	}
	md := gpuresults.Markdown(f)
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	fmt.Printf("\nwrote %s.json and %s.md\n", base, base)
	return nil
}
