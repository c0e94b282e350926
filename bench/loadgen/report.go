package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
)

// Ratio is multi-adapter / base-only for one metric; nil when the base value is zero or missing.
type Ratio struct {
	Metric  string   `json:"metric"`
	Base    float64  `json:"base"`
	Adapter float64  `json:"adapters"`
	Ratio   *float64 `json:"ratio"`
}

func ratios(base, ad Summary) []Ratio {
	row := func(name string, b, a float64, ok bool) Ratio {
		r := Ratio{Metric: name, Base: b, Adapter: a}
		if ok && b > 0 {
			v := a / b
			r.Ratio = &v
		}
		return r
	}
	okT := base.TTFT.N > 0 && ad.TTFT.N > 0
	okI := base.ITL.N > 0 && ad.ITL.N > 0
	okE := base.E2E.N > 0 && ad.E2E.N > 0
	return []Ratio{
		row("request throughput (req/s)", base.RequestRate, ad.RequestRate, true),
		row("output throughput (tok/s)", base.OutputTokRate, ad.OutputTokRate, true),
		row("TTFT p50 (ms)", base.TTFT.P50, ad.TTFT.P50, okT),
		row("TTFT p99 (ms)", base.TTFT.P99, ad.TTFT.P99, okT),
		row("ITL p50 (ms)", base.ITL.P50, ad.ITL.P50, okI),
		row("ITL p99 (ms)", base.ITL.P99, ad.ITL.P99, okI),
		row("E2E p50 (ms)", base.E2E.P50, ad.E2E.P50, okE),
		row("E2E p99 (ms)", base.E2E.P99, ad.E2E.P99, okE),
	}
}

func printSummary(w io.Writer, s Summary, desc string) {
	fmt.Fprintf(w, "\n== %s: %s ==\n", s.Name, desc)
	fmt.Fprintf(w, "%-22s %.2f req/s (%d requests sent over %.1f s)\n", "offered rate", s.OfferedRate, s.Requests, s.ArrivalSeconds)
	errs := "none"
	if len(s.Errors) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(s.Errors)) {
			parts = append(parts, fmt.Sprintf("%s x%d", k, s.Errors[k]))
		}
		errs = strings.Join(parts, ", ")
	}
	fmt.Fprintf(w, "%-22s %d / %d   errors: %s   short outputs: %d\n", "completed", s.Completed, s.Requests, errs, s.ShortOutputs)
	fmt.Fprintf(w, "%-22s %.1f s\n", "wall (incl. drain)", s.WallSeconds)
	fmt.Fprintf(w, "%-22s %.2f cores, %d involuntary context switches, loadavg after %s\n", "this process", s.ProcessCores, s.Preempted, s.LoadAvg)
	fmt.Fprintf(w, "%-22s %.2f req/s\n", "request throughput", s.RequestRate)
	fmt.Fprintf(w, "%-22s %.1f tok/s (%d tokens, %.2f per SSE chunk)\n", "output throughput", s.OutputTokRate, s.OutputTokens, s.TokensPerChunk)
	fmt.Fprintf(w, "%-10s %8s %9s %9s %9s %9s %9s\n", "ms", "n", "mean", "p50", "p90", "p99", "max")
	for _, d := range []struct {
		name string
		d    Dist
	}{{"TTFT", s.TTFT}, {"ITL", s.ITL}, {"E2E", s.E2E}} {
		if d.d.N == 0 {
			fmt.Fprintf(w, "%-10s %8d %9s\n", d.name, 0, "-")
			continue
		}
		fmt.Fprintf(w, "%-10s %8d %9.2f %9.2f %9.2f %9.2f %9.2f\n", d.name, d.d.N, d.d.Mean, d.d.P50, d.d.P90, d.d.P99, d.d.Max)
	}
	if e := s.Engine; e != nil {
		fmt.Fprintf(w, "engine: %d steps, %.1f seqs / %.1f rows per step, busy %.0f%%, %d preemptions\n",
			e.Steps, e.MeanSeqs, e.MeanRows, 100*e.Busy, e.Preemptions)
		for _, d := range []struct {
			name string
			d    Dist
		}{{"eng step", e.Step}, {"eng queue", e.Queue}, {"eng TTFT", e.TTFT}, {"eng ITL", e.ITL}} {
			if d.d.N > 0 {
				fmt.Fprintf(w, "%-10s %8d %9.2f %9.2f %9.2f %9.2f %9.2f\n", d.name, d.d.N, d.d.Mean, d.d.P50, d.d.P90, d.d.P99, d.d.Max)
			}
		}
	}
}

func printRatios(w io.Writer, rs []Ratio) {
	printRatiosTitled(w, rs, "multi-adapter / base-only", "base", "adapters")
}

// printRatiosTitled prints the second run over the first under the given names.
func printRatiosTitled(w io.Writer, rs []Ratio, title, first, second string) {
	fmt.Fprintf(w, "\n== %s ==\n", title)
	fmt.Fprintf(w, "%-28s %12s %12s %8s\n", "metric", first, second, "ratio")
	for _, r := range rs {
		ratio := "-"
		if r.Ratio != nil {
			ratio = fmt.Sprintf("%.3f", *r.Ratio)
		}
		fmt.Fprintf(w, "%-28s %12.2f %12.2f %8s\n", r.Metric, r.Base, r.Adapter, ratio)
	}
}

// Report is the -json file.
type Report struct {
	Started string            `json:"started"`
	Command string            `json:"command"`
	Server  map[string]any    `json:"server"`
	Load    map[string]string `json:"load"`
	Runs    []Summary         `json:"runs"`
	Ratios  []Ratio           `json:"ratios,omitempty"`
}

func writeJSON(path string, r Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
