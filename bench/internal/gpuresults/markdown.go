package gpuresults

import (
	"fmt"
	"strings"
)

// Table is the goal table: one line per row, the ratio against the goal and whether it is met.
func Table(f *File, issue int) string {
	var b strings.Builder
	b.WriteString("| measure | loraplex | baseline | ratio | goal | |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, r := range f.Rows {
		if r.Issue != issue {
			continue
		}
		val := "—"
		if r.Value != nil {
			val = fmt.Sprintf("**%s**", formatValue(*r.Value, r.Unit))
		}
		status := r.Status
		if r.Note != "" {
			status = strings.TrimSpace(status + " (" + r.Note + ")")
		}
		measured, baseline := r.Measured, r.Baseline
		if r.Value == nil {
			measured, baseline = "—", "—"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", r.Measure, cell(measured), cell(baseline), val, cell(r.Goal), cell(status))
	}
	return b.String()
}

func cell(s string) string {
	if s == "" {
		return "—"
	}
	return strings.ReplaceAll(s, "|", "\\|")
}

func formatValue(v float64, unit string) string {
	switch {
	case unit != "":
		return fmt.Sprintf("%.2f %s", v, unit)
	case v >= 10:
		return fmt.Sprintf("%.1fx", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// Markdown is the results file's human half: the card, the command, every stage's time, and
// the rows of both issues.
func Markdown(f *File) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# loraplex GPU benchmarks on %s — %s\n\n", f.Card, f.Date)
	fmt.Fprintf(&b, "One `bench/gpu/run.sh` invocation; Llama-3-8B shape, random bf16 weights; every ratio from this run.\n\n")
	if f.Machine != "" {
		fmt.Fprintf(&b, "```\n%s\n```\n\n", f.Machine)
	}
	if f.Command != "" {
		fmt.Fprintf(&b, "Command: `%s`\n\n", f.Command)
	}
	b.WriteString("## Issue 15: GPU at the hardware limits\n\n")
	b.WriteString(Table(f, 15))
	b.WriteString("\n## Issue 14: prefix caching and long prompts on the GPU\n\n")
	b.WriteString(Table(f, 14))
	if ab := Table(f, ABRows); strings.Count(ab, "\n") > 2 {
		b.WriteString("\n## A/B runs: a switch against the default, same run\n\n")
		b.WriteString(ab)
	}
	if len(f.Stages) > 0 {
		b.WriteString("\n## Stages (wall time)\n\n| stage | seconds | status |\n| --- | --- | --- |\n")
		total := 0.0
		for _, s := range f.Stages {
			fmt.Fprintf(&b, "| %s | %.1f | %s |\n", s.Name, s.Seconds, cell(s.Status))
			if s.Name == "total" {
				total = s.Seconds
			}
		}
		if total > 0 {
			fmt.Fprintf(&b, "\nTotal %.0f s.\n", total)
		}
	}
	for _, p := range f.Problems {
		fmt.Fprintf(&b, "\nNot read: %s\n", p)
	}
	b.WriteString("\nThe JSON beside this file holds every stage's output (`parts`) as it was written.\n")
	return b.String()
}
