package gpuresults

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// llamaCpp is what the llama.cpp kit measured (llama-bench and llama-batched-bench), or why
// it measured nothing.
type llamaCpp struct {
	Status  string          `json:"status,omitempty"` // llamacpp/status.txt: why not measured
	Bench   []llamaBenchRow `json:"llama_bench,omitempty"`
	Batched []batchedRow    `json:"llama_batched_bench,omitempty"`
}

// llamaBenchRow is one test of llama-bench's JSON output (-oe json).
type llamaBenchRow struct {
	NPrompt   int     `json:"n_prompt"`
	NGen      int     `json:"n_gen"`
	FlashAttn bool    `json:"flash_attn"`
	AvgTS     float64 `json:"avg_ts"`
	StddevTS  float64 `json:"stddev_ts"`
}

// batchedRow is one line of llama-batched-bench's table.
type batchedRow struct {
	PP, TG, B int
	SPP, STG  float64 // prompt and generation tokens per second
}

func (l llamaCpp) ok() bool { return l.Status != "" || len(l.Bench) > 0 || len(l.Batched) > 0 }

// why is the note of a llama.cpp row: empty when measured.
func (l llamaCpp) why(measured bool) string {
	switch {
	case measured:
		return ""
	case l.Status != "":
		return "llama.cpp not measured: " + l.Status
	default:
		return "llama.cpp not measured (LLAMACPP_KIT not set, or its stage wrote nothing)"
	}
}

// tg is batch-1 decode (tg128): the faster of flash attention on and off.
func (l llamaCpp) tg() (float64, bool) {
	best := 0.0
	for _, r := range l.Bench {
		if r.NPrompt == 0 && r.NGen > 0 {
			best = max(best, r.AvgTS)
		}
	}
	return best, best > 0
}

// pp is prompt processing of n tokens with flash attention on.
func (l llamaCpp) pp(n int) (float64, bool) {
	for _, r := range l.Bench {
		if r.NPrompt == n && r.NGen == 0 && r.FlashAttn {
			return r.AvgTS, r.AvgTS > 0
		}
	}
	return 0, false
}

// batched is generation throughput (S_TG) at b parallel sequences.
func (l llamaCpp) batched(b int) (float64, bool) {
	for _, r := range l.Batched {
		if r.B == b {
			return r.STG, r.STG > 0
		}
	}
	return 0, false
}

func readLlamaCpp(dir string) (llamaCpp, error) {
	var l llamaCpp
	if s, err := os.ReadFile(filepath.Join(dir, "status.txt")); err == nil {
		l.Status = strings.TrimSpace(string(s))
	}
	if data, err := os.ReadFile(filepath.Join(dir, "llama-bench.json")); err == nil {
		rows, err := parseLlamaBench(data)
		if err != nil {
			return l, fmt.Errorf("llamacpp/llama-bench.json: %w", err)
		}
		l.Bench = rows
	} else if !errors.Is(err, fs.ErrNotExist) {
		return l, err
	}
	if data, err := os.ReadFile(filepath.Join(dir, "llama-batched-bench.txt")); err == nil {
		l.Batched = parseBatchedBench(string(data))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return l, err
	}
	return l, nil
}

// parseLlamaBench reads llama-bench's JSON array (-oe json writes it to stderr, where log lines
// may come before it: the array starts at the first line that is "["; a run cut short before
// the closing "]" keeps the tests it finished). flash_attn is a number in this release (-1 auto,
// 0 off, 1 on) and a bool in older ones; both are accepted.
func parseLlamaBench(data []byte) ([]llamaBenchRow, error) {
	text := string(data)
	if i := strings.Index("\n"+text, "\n[\n"); i >= 0 {
		text = text[i:]
	}
	var raw []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(text), &raw); err != nil {
		if err2 := json.Unmarshal([]byte(strings.TrimRight(text, " \n")+"\n]"), &raw); err2 != nil {
			return nil, err
		}
	}
	var out []llamaBenchRow
	for _, m := range raw {
		var r llamaBenchRow
		for k, dst := range map[string]any{"n_prompt": &r.NPrompt, "n_gen": &r.NGen, "avg_ts": &r.AvgTS, "stddev_ts": &r.StddevTS} {
			if v, ok := m[k]; ok {
				if err := json.Unmarshal(v, dst); err != nil {
					return nil, fmt.Errorf("%s: %w", k, err)
				}
			}
		}
		switch s := strings.Trim(string(m["flash_attn"]), `" `); s {
		case "true", "1", "on", "enabled":
			r.FlashAttn = true
		}
		out = append(out, r)
	}
	return out, nil
}

// parseBatchedBench reads the rows of llama-batched-bench's markdown table, by the header's
// column names (PP, TG, B, S_PP t/s, S_TG t/s); lines that are not rows of it are skipped.
func parseBatchedBench(text string) []batchedRow {
	var out []batchedRow
	col := map[string]int{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(col) == 0 {
			for i, c := range cells {
				col[c] = i
			}
			if _, ok := col["S_TG t/s"]; !ok {
				clear(col)
			}
			continue
		}
		get := func(name string) (float64, bool) {
			i, ok := col[name]
			if !ok || i >= len(cells) {
				return 0, false
			}
			v, err := strconv.ParseFloat(cells[i], 64)
			return v, err == nil
		}
		b, okB := get("B")
		stg, okS := get("S_TG t/s")
		if !okB || !okS {
			continue // the separator line, or noise
		}
		pp, _ := get("PP")
		tg, _ := get("TG")
		spp, _ := get("S_PP t/s")
		out = append(out, batchedRow{PP: int(pp), TG: int(tg), B: int(b), SPP: spp, STG: stg})
	}
	return out
}
