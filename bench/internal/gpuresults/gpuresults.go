// Package gpuresults turns the outputs of one bench/gpu/run.sh invocation into its results
// file: every row of issue 15's goal table (and issue 14's GPU rows) with the figure measured,
// the baseline it is divided by, the ratio, the goal and whether the goal is met, all from that
// one run on one named card. bench/gpu/report writes the file (JSON and markdown); bench/readme
// renders README.md's GPU table from it.
//
// A run directory holds what each stage wrote (any may be missing: its rows then say why):
//
//	loraplex.json        bench/gpu (every stage)
//	ab-*.json            bench/gpu runs with an environment switch flipped (label in "env")
//	prefixcache-ab-LABEL.json  bench/prefixcache -json with ab-LABEL.json's switch flipped
//	hf.json              bench/reference/hf_bench.py
//	coldload.json        bench/coldload -json
//	prefixcache.json     bench/prefixcache -json
//	llamacpp/            the llama.cpp kit's outputs (llama-bench.json, llama-batched-bench.txt)
//	llamacpp/status.txt  why llama.cpp was not measured, when it was not
//	stages.tsv           run.sh's stage timings: name, seconds, exit status
//	machine.txt          card, driver, toolkit and Python package versions
package gpuresults

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Format names this file layout; Load refuses others.
const Format = "loraplex-gpu-results/1"

// File is one run's results.
type File struct {
	Format  string  `json:"format"`
	Date    string  `json:"date"` // UTC, RFC 3339
	Card    string  `json:"card"` // the GPU, as the backend names it
	Machine string  `json:"machine"`
	Command string  `json:"command"`
	Stages  []Stage `json:"stages"`
	Rows    []Row   `json:"rows"`
	// Parts are the stage outputs as they were, for figures the rows do not show.
	Parts map[string]json.RawMessage `json:"parts"`
	// Problems: outputs that could not be read (their rows then say the stage did not run).
	Problems []string `json:"problems,omitempty"`
}

// Stage is one step of run.sh with its wall time.
type Stage struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	Status  string  `json:"status"` // ok, failed (exit code), skipped (why)
}

// Row is one measure: Value (a ratio unless Unit says otherwise) against the goal.
type Row struct {
	Issue    int      `json:"issue"`
	ID       string   `json:"id"`
	Measure  string   `json:"measure"`
	Measured string   `json:"measured"` // loraplex's figure, with units
	Baseline string   `json:"baseline"` // what it is divided by
	Value    *float64 `json:"value"`    // nil: not measured
	Unit     string   `json:"unit,omitempty"`
	Goal     string   `json:"goal"`           // e.g. ">= 0.60"; "" for a row with no goal
	Status   string   `json:"status"`         // met, missed, n/a, or "" (no goal)
	Note     string   `json:"note,omitempty"` // why n/a, or what the figure leaves out
}

// Statuses of a row.
const (
	Met    = "met"
	Missed = "missed"
	NA     = "n/a"
)

// goal is a comparison a row's value must pass.
type goal struct {
	op string // ">=", "<=", "<"
	v  float64
}

func (g goal) String() string {
	sym := map[string]string{">=": "≥", "<=": "≤", "<": "<"}[g.op]
	switch {
	case g.op == "":
		return ""
	case g.v < 5:
		return fmt.Sprintf("%s %.2f", sym, g.v)
	default:
		return sym + " " + strconv.FormatFloat(g.v, 'f', -1, 64)
	}
}

func (g goal) met(v float64) bool {
	switch g.op {
	case ">=":
		return v >= g.v
	case "<=":
		return v <= g.v
	case "<":
		return v < g.v
	}
	return false
}

// row makes a Row from a measured value (ok false: not measured, note says why).
func row(issue int, id, measure string, g goal, v float64, ok bool, measured, baseline, note string) Row {
	r := Row{Issue: issue, ID: id, Measure: measure, Goal: g.String(), Measured: measured, Baseline: baseline, Note: note}
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		r.Status = NA
		if g.op == "" {
			r.Status = ""
		}
		return r
	}
	r.Value = &v
	switch {
	case g.op == "":
	case g.met(v):
		r.Status = Met
	default:
		r.Status = Missed
	}
	return r
}

// Load reads a results file and checks its format.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Format != Format {
		return nil, fmt.Errorf("%s: format %q, want %q", path, f.Format, Format)
	}
	return &f, nil
}

// Build reads a run directory (see the package comment) into a File.
func Build(dir, date, command string) (*File, error) {
	f := &File{Format: Format, Date: date, Command: command, Parts: map[string]json.RawMessage{}}
	if m, err := os.ReadFile(filepath.Join(dir, "machine.txt")); err == nil {
		f.Machine = strings.TrimSpace(string(m))
	}
	var err error
	if f.Stages, err = readStages(filepath.Join(dir, "stages.tsv")); err != nil {
		return nil, err
	}
	var lp Loraplex
	hasLP, err := readPart(f, dir, "loraplex.json", &lp)
	if err != nil {
		return nil, err
	}
	// run.sh's word on the bench/gpu stage (timed out, failed, skipped) goes into the notes of
	// its rows that have no figure; without its output at all, every one of them says so, and
	// the card is the one nvidia-smi named.
	lp.runStatus = stageStatus(f.Stages, "loraplex")
	if !hasLP {
		lp.missing = "bench/gpu wrote no loraplex.json"
		if lp.runStatus == "" {
			lp.runStatus = "did not run"
		}
	}
	f.Card = lp.Device
	if f.Card == "" {
		f.Card, _, _ = strings.Cut(f.Machine, ",")
	}
	var hf hfRun
	hasHF, err := readPart(f, dir, "hf.json", &hf)
	if err != nil {
		return nil, err
	}
	var cl coldloadRun
	hasCL, err := readPart(f, dir, "coldload.json", &cl)
	if err != nil {
		return nil, err
	}
	var pc prefixRun
	hasPC, err := readPart(f, dir, "prefixcache.json", &pc)
	if err != nil {
		return nil, err
	}
	abs, err := readABs(f, dir)
	if err != nil {
		return nil, err
	}
	lc, err := readLlamaCpp(filepath.Join(dir, "llamacpp"))
	if err != nil {
		return nil, err
	}
	if lc.ok() {
		data, _ := json.Marshal(lc)
		f.Parts["llamacpp"] = data
	}
	f.Rows = rows(&lp, hf, hasHF, cl, hasCL, pc, hasPC, abs, lc)
	return f, nil
}

// stageStatus is run.sh's status of the named stage when it is not "ok" ("" when it is, or
// when the stage is not listed).
func stageStatus(stages []Stage, name string) string {
	for _, s := range stages {
		if s.Name == name && s.Status != "ok" {
			return s.Status
		}
	}
	return ""
}

// readPart reads dir/name into v and keeps it in f.Parts; a missing file is not an error.
func readPart(f *File, dir, name string, v any) (bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(data, v); err != nil || !json.Valid(data) {
		// A stage cut off mid-write is the stage not having run, not a run with no results.
		f.Problems = append(f.Problems, fmt.Sprintf("%s: %v", name, err))
		return false, nil
	}
	f.Parts[strings.TrimSuffix(name, ".json")] = json.RawMessage(data)
	return true, nil
}

func readABs(f *File, dir string) ([]Loraplex, error) {
	names, err := filepath.Glob(filepath.Join(dir, "ab-*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []Loraplex
	for _, n := range names {
		var r Loraplex
		if _, err := readPart(f, dir, filepath.Base(n), &r); err != nil {
			return nil, err
		}
		r.label = strings.TrimSuffix(strings.TrimPrefix(filepath.Base(n), "ab-"), ".json")
		var pc prefixRun
		has, err := readPart(f, dir, "prefixcache-ab-"+r.label+".json", &pc)
		if err != nil {
			return nil, err
		}
		if has {
			r.prefix = &pc
		}
		out = append(out, r)
	}
	return out, nil
}

// readStages parses run.sh's stages.tsv: name, seconds, status (tab-separated).
func readStages(path string) ([]Stage, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Stage
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), "\t", 3)
		if len(parts) < 2 {
			continue
		}
		sec, err := strconv.ParseFloat(strings.TrimSpace(parts[1]), 64)
		if err != nil {
			continue
		}
		s := Stage{Name: parts[0], Seconds: sec, Status: "ok"}
		if len(parts) == 3 {
			s.Status = parts[2]
		}
		out = append(out, s)
	}
	return out, nil
}

// CardSlug is a card's short name for file names: "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)" ->
// "h100"; a card of no known family gets its words joined ("gpu" when there are none).
func CardSlug(card string) string {
	low := strings.ToLower(card)
	for _, fam := range []string{"gh200", "h200", "h100", "h20", "b200", "b100", "a100", "l40s", "l4"} {
		if strings.Contains(low, fam) {
			return fam
		}
	}
	var b strings.Builder
	for _, r := range low {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	if s := strings.Trim(b.String(), "-"); s != "" {
		return s
	}
	return "gpu"
}
