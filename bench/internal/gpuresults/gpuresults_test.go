package gpuresults

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func byID(t *testing.T, f *File) map[string]Row {
	t.Helper()
	m := map[string]Row{}
	for _, r := range f.Rows {
		if _, dup := m[r.ID]; dup {
			t.Fatalf("row %s twice", r.ID)
		}
		m[r.ID] = r
	}
	return m
}

// goalRows are issue 15's goal table and issue 14's GPU rows, one id each.
var goalRows = []string{
	"prefill_2048_vs_gemm", "prefill_8192_vs_gemm", "decode_b1_vs_roofline_ctx128", "decode_b1_vs_roofline_ctx32768",
	"adapters16_vs_ceiling", "adapters8qv_vs_base", "router28_top2_b1", "router28_top2_b64", "coldload_lorapack_warm_ms",
	"decode_b1_vs_llamacpp", "prefill_2048_vs_llamacpp", "decode_b64_vs_llamacpp", "deterministic_vs_default_b64",
	"decode_b1_vs_hf", "decode_b64_vs_hf", "prefix_ttft_cached_vs_uncached",
}

// A run whose every stage wrote its output gives every goal row a value and a verdict, each
// computed from that run's files (the fastest prefill kernel, llama.cpp's flash-attention
// pp2048, the deterministic mode from its A/B run, the routed rows' byte-bound ceiling).
func TestEveryGoalRowFromOneRun(t *testing.T) {
	f, err := Build("testdata/run", "2026-12-07T02:00:00Z", "bench/gpu/run.sh OUT")
	if err != nil {
		t.Fatal(err)
	}
	if f.Card != "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)" || CardSlug(f.Card) != "h100" {
		t.Fatalf("card %q", f.Card)
	}
	rows := byID(t, f)
	for _, id := range goalRows {
		r, ok := rows[id]
		if !ok {
			t.Errorf("no row %s", id)
			continue
		}
		if r.Value == nil || (r.Status != Met && r.Status != Missed) || r.Goal == "" {
			t.Errorf("row %s: value %v status %q goal %q note %q", id, r.Value, r.Status, r.Goal, r.Note)
		}
	}
	want := map[string]struct {
		v      float64
		status string
	}{
		"prefill_2048_vs_gemm":           {0.60, Met},      // the tensor-core point, faster than the CUDA-core one
		"prefill_8192_vs_gemm":           {0.522, Missed},  // below 0.55
		"adapters16_vs_ceiling":          {0.8003, Missed}, // 0.60 of base against a 0.75 ceiling
		"adapters8qv_vs_base":            {0.9601, Met},
		"router28_top2_b64":              {0.91, Met},
		"coldload_lorapack_warm_ms":      {13.6, Missed}, // not below 10 ms
		"decode_b1_vs_llamacpp":          {135.1 / 167.1, Missed},
		"prefill_2048_vs_llamacpp":       {29257.0 / 25261, Met}, // flash attention on, not the faster-looking off row
		"decode_b64_vs_llamacpp":         {5800 / 5572.79, Met},
		"deterministic_vs_default_b64":   {0.862, Met},
		"prefix_ttft_cached_vs_uncached": {0.0699, Met},
	}
	for id, w := range want {
		r := rows[id]
		if r.Value == nil || !near(*r.Value, w.v) || r.Status != w.status {
			t.Errorf("row %s: value %v status %q, want %v %q", id, deref(r.Value), r.Status, w.v, w.status)
		}
	}
	for _, n := range []string{"prefill_2048_ms", "prefill_8192_ms", "prefill_32768_ms"} {
		if r := rows[n]; r.Issue != 14 || r.Value == nil || r.Unit != "ms" {
			t.Errorf("issue 14 row %s: %+v", n, r)
		}
	}
	// The routed rows state their byte-bound ceiling where the run wrote one (results before it did not).
	if r := rows["router28_top2_b64"]; !strings.Contains(r.Baseline, "byte-bound ceiling 0.932: 18.43 GB a routed step beside 17.17 GB") {
		t.Errorf("routed batch-64 baseline %q", r.Baseline)
	}
	if r := rows["router28_top2_b1"]; strings.Contains(r.Baseline, "ceiling") {
		t.Errorf("routed batch-1 baseline %q states a ceiling the run did not write", r.Baseline)
	}
	if r := rows["ab_deterministic_decode_b64"]; r.Issue != ABRows || r.Value == nil || !near(*r.Value, 5000.0/5800) {
		t.Errorf("A/B row: %+v", r)
	}
	if len(f.Stages) != 8 || f.Stages[0].Name != "build" || f.Stages[7].Status != "budget 530 s" {
		t.Errorf("stages %+v", f.Stages)
	}
	for _, p := range []string{"loraplex", "hf", "coldload", "prefixcache", "ab-deterministic", "llamacpp"} {
		if len(f.Parts[p]) == 0 {
			t.Errorf("part %s not kept", p)
		}
	}
	md := Markdown(f)
	for _, s := range []string{"NVIDIA H100", "| prefill 8,192 tokens, achieved FLOP/s ÷ cuBLAS bf16 GEMM |", "| missed |", "## A/B runs", "| build | 61.2 | ok |"} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q", s)
		}
	}
	if strings.Contains(Table(f, 15), "A/B LORAPLEX_DETERMINISTIC=1:") {
		t.Error("the goal table carries A/B rows")
	}
}

// A stage that failed, was cut off or did not fit leaves its rows n/a with the reason: the
// stage's error, llama.cpp's status line, the part that is missing.
func TestRowsSayWhyNotMeasured(t *testing.T) {
	dir := t.TempDir()
	lp := Loraplex{Device: "cuda:0 NVIDIA H200 (sm_90)", Batch1: map[string]float64{"tokens_per_s": 170, "ratio": 0.6, "roofline_tokens_per_s": 283, "context": 128},
		Sweep:        map[int]float64{1: 169, 64: 7000},
		StageSeconds: map[string]float64{"decode": 3, "prefill": 1}, Errors: map[string]string{"prefill": "cuda: illegal memory access"}}
	writeJSON(t, filepath.Join(dir, "loraplex.json"), lp)
	if err := os.MkdirAll(filepath.Join(dir, "llamacpp"), 0o755); err != nil {
		t.Fatal(err)
	}
	status := "its CUDA build had not finished after 360 s"
	if err := os.WriteFile(filepath.Join(dir, "llamacpp", "status.txt"), []byte(status+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Build(dir, "2026-12-07T02:00:00Z", "")
	if err != nil {
		t.Fatal(err)
	}
	rows := byID(t, f)
	for id, note := range map[string]string{
		"prefill_2048_vs_gemm":           "stage prefill failed: cuda: illegal memory access",
		"prefill_32768_ms":               "stage prefill failed",
		"adapters16_vs_ceiling":          "stage adapters16 did not run",
		"decode_b1_vs_roofline_ctx32768": "stage longctx did not run",
		"decode_b1_vs_llamacpp":          status,
		"decode_b64_vs_llamacpp":         status,
		"decode_b1_vs_hf":                "hf_bench.py did not run",
		"coldload_lorapack_warm_ms":      "bench/coldload did not run",
		"prefix_ttft_cached_vs_uncached": "bench/prefixcache did not run",
		"deterministic_vs_default_b64":   "stage deterministic did not run",
	} {
		r := rows[id]
		if r.Value != nil || !strings.Contains(r.Note, note) {
			t.Errorf("row %s: value %v status %q note %q, want n/a saying %q", id, deref(r.Value), r.Status, r.Note, note)
		}
		if r.Status != NA && r.Goal != "" {
			t.Errorf("row %s: status %q, want %q", id, r.Status, NA)
		}
	}
	if r := rows["decode_b1_vs_roofline_ctx128"]; r.Value == nil || r.Status != Missed {
		t.Errorf("measured row: %+v", r)
	}
}

// A run whose bench/gpu stage wrote nothing (the build failed, or it was cut off before its
// first stage) still gets its results file: every loraplex row n/a with run.sh's word on that
// stage, the card named as nvidia-smi named it, and the other stages' rows measured.
func TestNoLoraplexOutputStillAFile(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"hf.json", "coldload.json", "machine.txt"} {
		data, err := os.ReadFile(filepath.Join("testdata/run", n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stages := "build\t240.0\ttimed out after 240 s\nloraplex\t0\tskipped (SKIP)\ntotal\t300\tbudget 530 s\n"
	if err := os.WriteFile(filepath.Join(dir, "stages.tsv"), []byte(stages), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Build(dir, "2026-12-07T02:00:00Z", "")
	if err != nil {
		t.Fatal(err)
	}
	if f.Card != "NVIDIA H100 80GB HBM3" || CardSlug(f.Card) != "h100" {
		t.Errorf("card %q", f.Card)
	}
	rows := byID(t, f)
	for _, id := range []string{"prefill_2048_vs_gemm", "decode_b1_vs_roofline_ctx128", "decode_b1_vs_roofline_ctx32768", "adapters16_vs_ceiling",
		"adapters8qv_vs_base", "router28_top2_b64", "deterministic_vs_default_b64", "decode_b1_vs_hf", "decode_b1_vs_llamacpp", "prefill_32768_ms"} {
		r := rows[id]
		if r.Value != nil || !strings.Contains(r.Note, "bench/gpu wrote no loraplex.json (run.sh stage loraplex: skipped (SKIP))") {
			t.Errorf("row %s: value %v note %q", id, deref(r.Value), r.Note)
		}
	}
	if r := rows["coldload_lorapack_warm_ms"]; r.Value == nil || !near(*r.Value, 13.6) {
		t.Errorf("cold load row %+v", r)
	}
	if md := Markdown(f); !strings.Contains(md, "# loraplex GPU benchmarks on NVIDIA H100 80GB HBM3") || !strings.Contains(md, "| build | 240.0 | timed out after 240 s |") {
		t.Errorf("markdown:\n%s", md)
	}
}

// A bench/gpu process cut off by its time limit leaves the stages it finished; the rows of the
// others say they did not run and why.
func TestCutOffBenchSaysSo(t *testing.T) {
	dir := t.TempDir()
	lp := Loraplex{Device: "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)", Batch1: map[string]float64{"tokens_per_s": 150, "ratio": 0.7, "roofline_tokens_per_s": 200, "context": 128},
		StageSeconds: map[string]float64{"decode": 3}}
	writeJSON(t, filepath.Join(dir, "loraplex.json"), lp)
	if err := os.WriteFile(filepath.Join(dir, "stages.tsv"), []byte("loraplex\t200.0\ttimed out after 200 s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Build(dir, "2026-12-07T02:00:00Z", "")
	if err != nil {
		t.Fatal(err)
	}
	rows := byID(t, f)
	if r := rows["decode_b1_vs_roofline_ctx32768"]; r.Value != nil || r.Note != "stage longctx did not run (bench/gpu timed out after 200 s)" {
		t.Errorf("long-context row %+v", r)
	}
	if r := rows["decode_b1_vs_roofline_ctx128"]; r.Value == nil || r.Note != "" {
		t.Errorf("measured row %+v", r)
	}
}

// Load reads back what Build made and refuses JSON of another layout.
func TestLoadChecksFormat(t *testing.T) {
	f, err := Build("testdata/run", "2026-12-07T02:00:00Z", "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, "gpu-h100.json"), f)
	g, err := Load(filepath.Join(dir, "gpu-h100.json"))
	if err != nil || len(g.Rows) != len(f.Rows) || g.Card != f.Card {
		t.Fatalf("load: %v", err)
	}
	writeJSON(t, filepath.Join(dir, "gpu-8b.json"), Loraplex{Device: "x"})
	if _, err := Load(filepath.Join(dir, "gpu-8b.json")); err == nil {
		t.Fatal("a bench/gpu output loaded as a results file")
	}
}

// llama-bench's JSON is read after the log lines before it, and a run cut short keeps the
// tests it finished.
func TestLlamaBenchJSON(t *testing.T) {
	data, err := os.ReadFile("testdata/run/llamacpp/llama-bench.json")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := parseLlamaBench(data)
	if err != nil || len(rows) != 4 || !rows[1].FlashAttn || rows[0].FlashAttn || rows[3].NGen != 128 || rows[1].AvgTS != 25261 {
		t.Fatalf("rows %+v, err %v", rows, err)
	}
	cut := string(data)
	cut = cut[:strings.LastIndex(cut, "]")]
	if rows, err := parseLlamaBench([]byte(cut)); err != nil || len(rows) != 4 {
		t.Fatalf("cut short: %d rows, err %v", len(rows), err)
	}
	if rows, err := parseLlamaBench([]byte(`[{"n_prompt": 512, "n_gen": 0, "flash_attn": true, "avg_ts": 1}]`)); err != nil || !rows[0].FlashAttn {
		t.Fatalf("bool flash_attn: %+v %v", rows, err)
	}
	if _, err := parseLlamaBench([]byte("error: failed to load model\n")); err == nil {
		t.Fatal("no JSON, no error")
	}
}

// llama-batched-bench's table is read by its header's column names, skipping other lines.
func TestBatchedBenchTable(t *testing.T) {
	data, err := os.ReadFile("testdata/run/llamacpp/llama-batched-bench.txt")
	if err != nil {
		t.Fatal(err)
	}
	rows := parseBatchedBench(string(data))
	if len(rows) != 3 || rows[2].B != 64 || rows[2].STG != 5572.79 || rows[0].PP != 128 || rows[1].SPP != 20480 {
		t.Fatalf("rows %+v", rows)
	}
	if rows := parseBatchedBench("| a | b |\n| 1 | 2 |\n"); len(rows) != 0 {
		t.Fatalf("a table without S_TG gave %+v", rows)
	}
}

// Cards get the short names the results files are named by.
func TestCardSlug(t *testing.T) {
	for card, want := range map[string]string{
		"cuda:0 NVIDIA H100 80GB HBM3 (sm_90)": "h100", "cuda:0 NVIDIA H200 (sm_90)": "h200", "NVIDIA GH200 480GB": "gh200",
		"NVIDIA A100-SXM4-80GB": "a100", "Some New GPU!": "some-new-gpu", "": "gpu", "///": "gpu",
	} {
		if got := CardSlug(card); got != want {
			t.Errorf("CardSlug(%q) = %q, want %q", card, got, want)
		}
	}
}

func FuzzParseBatchedBench(f *testing.F) {
	data, _ := os.ReadFile("testdata/run/llamacpp/llama-batched-bench.txt")
	f.Add(string(data))
	f.Add("| S_TG t/s | B |\n| x | 1e400 |\n| 1 | 2 | 3 |\n|")
	f.Fuzz(func(t *testing.T, s string) {
		for _, r := range parseBatchedBench(s) {
			_ = r.STG
		}
	})
}

func FuzzParseLlamaBench(f *testing.F) {
	data, _ := os.ReadFile("testdata/run/llamacpp/llama-bench.json")
	f.Add(data)
	f.Add([]byte("[\n{\"flash_attn\": \"on\", \"n_gen\": -1}"))
	f.Add([]byte("x\n[\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rows, err := parseLlamaBench(b)
		if err != nil && rows != nil {
			t.Fatal("rows with an error")
		}
	})
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func near(a, b float64) bool { return a-b < 1e-3 && b-a < 1e-3 }

func deref(v *float64) any {
	if v == nil {
		return nil
	}
	return *v
}

// An output cut off mid-write (a stage killed at its time limit) counts as that stage not having
// run: the file is still written, its rows say so, and the problem is listed.
func TestCutOffOutputIsAStageNotRun(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"loraplex.json", "coldload.json"} {
		data, err := os.ReadFile(filepath.Join("testdata/run", n))
		if err != nil {
			t.Fatal(err)
		}
		if n == "coldload.json" {
			data = data[:len(data)/2]
		}
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := Build(dir, "2026-12-07T02:00:00Z", "")
	if err != nil {
		t.Fatal(err)
	}
	if r := byID(t, f)["coldload_lorapack_warm_ms"]; r.Value != nil || r.Status != NA || !strings.Contains(r.Note, "did not run") {
		t.Errorf("cold load row %+v", r)
	}
	if len(f.Problems) != 1 || !strings.HasPrefix(f.Problems[0], "coldload.json:") || !strings.Contains(Markdown(f), "Not read: coldload.json") {
		t.Errorf("problems %q", f.Problems)
	}
}

// An A/B run is set against the default on every row its switch can move: decode at batch 1,
// 64 and at a 32k context, both adapter batches (and their ratio of the byte-bound ceiling
// inside the A/B run, where that run measured them), routed decode, prefill at 2k and 8k tokens
// and its attention alone (a time, so the default's ÷ the A/B run's), deterministic mode at batch 1 and 64
// (and the deterministic goal's ratio inside the A/B run), the prefix-cache TTFT when
// bench/prefixcache ran with the switch (and the prefix goal's ratio inside the A/B run); a row
// either run lacks is n/a, and the A/B prefix-cache output is not taken for an A/B run.
func TestABRowsAgainstTheDefault(t *testing.T) {
	dir := t.TempDir()
	lp := Loraplex{Device: "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)", Sweep: map[int]float64{1: 150, 64: 6000},
		LongContext: []LongContextPoint{{Context: 32768, Tokens: 100}},
		Adapters:    &AdapterRatio{Mixed: 3000}, AdaptersQV: &AdapterRatio{Mixed: 5000}, StageSeconds: map[string]float64{},
		Router: []RouterPoint{{Batch: 1, Base: 150, Single: 100, Routed: 75}, {Batch: 64, Base: 6000, Single: 4000, Routed: 3200}},
		Deterministic: &Deterministic{Available: true, On: map[int]float64{1: 100, 64: 500}, Default: map[int]float64{1: 150, 64: 6000},
			Ratio: map[int]float64{1: 100.0 / 150, 64: 500.0 / 6000}},
		Prefill: []PrefillPoint{{Tokens: 2048, Kernel: "cuda-cores", Seconds: 0.3, TokensPerS: 6800, AttnLayerMS: 6.5},
			{Tokens: 2048, Kernel: "tensor-cores", Seconds: 0.068, TokensPerS: 30000, AttnLayerMS: 0.34},
			{Tokens: 8192, Kernel: "tensor-cores", Seconds: 0.41, TokensPerS: 20000, AttnLayerMS: 4.4}}}
	ab := lp
	ab.Prefill = []PrefillPoint{{Tokens: 2048, Kernel: "tensor-cores", Seconds: 0.062, TokensPerS: 33000, AttnLayerMS: 0.2},
		{Tokens: 8192, Kernel: "tensor-cores", Seconds: 0.34, TokensPerS: 24000, AttnLayerMS: 2.2}}
	ab.Env = map[string]string{"LORAPLEX_FUSED_DECODE": "on"}
	ab.Sweep = map[int]float64{1: 165, 64: 6000}
	ab.LongContext = []LongContextPoint{{Context: 32768, Tokens: 120}}
	ab.AdaptersQV = &AdapterRatio{Base: 6000, Mixed: 5500, Ratio: 5500.0 / 6000, Ceiling: 0.97, RatioOfCeiling: 5500.0 / 6000 / 0.97}
	ab.Router = []RouterPoint{{Batch: 1, Base: 160, Single: 120, Routed: 90}, {Batch: 64, Base: 6000, Single: 4000, Routed: 3360}}
	ab.Adapters = nil
	ab.Deterministic = &Deterministic{Available: true, On: map[int]float64{1: 140, 64: 5400}, Default: map[int]float64{1: 160, 64: 6000},
		Ratio: map[int]float64{1: 140.0 / 160, 64: 0.9}}
	lp.AdapterPrefill = &AdapterPrefill{Tokens: 2048, Rank: 16, Base: 30000, Adapter: 24000, Ratio: 0.8}
	ab.AdapterPrefill = &AdapterPrefill{Tokens: 2048, Rank: 16, Base: 33000, Adapter: 30000, Ratio: 30000.0 / 33000}
	writeJSON(t, filepath.Join(dir, "loraplex.json"), lp)
	writeJSON(t, filepath.Join(dir, "ab-fused-decode-on.json"), ab)
	writeJSON(t, filepath.Join(dir, "prefixcache.json"), prefixRun{Prefix: 2000, Suffix: 40, UncachedMS: 74.5, CachedMS: 12.2, Ratio: 12.2 / 74.5})
	writeJSON(t, filepath.Join(dir, "prefixcache-ab-fused-decode-on.json"), prefixRun{Prefix: 2000, Suffix: 40, UncachedMS: 73.2, CachedMS: 9.15, Ratio: 0.125})
	f, err := Build(dir, "2026-12-07T02:00:00Z", "")
	if err != nil {
		t.Fatal(err)
	}
	rows := byID(t, f)
	for id, want := range map[string]float64{"ab_fused-decode-on_decode_b1": 1.1, "ab_fused-decode-on_decode_b1_ctx32768": 1.2,
		"ab_fused-decode-on_adapters8qv_b64": 1.1, "ab_fused-decode-on_deterministic_b1": 1.4,
		"ab_fused-decode-on_deterministic_b64": 10.8, "ab_fused-decode-on_deterministic_vs_default_b1": 0.875,
		"ab_fused-decode-on_deterministic_vs_default_b64": 0.9, "ab_fused-decode-on_prefix_ttft_cached": 0.75,
		"ab_fused-decode-on_prefix_ttft_cached_vs_uncached": 0.125, "ab_fused-decode-on_single_adapter_b1": 1.2,
		"ab_fused-decode-on_routed_b1": 1.2, "ab_fused-decode-on_routed_b64": 1.05, "ab_fused-decode-on_prefill_2048": 1.1,
		"ab_fused-decode-on_prefill_8192": 1.2, "ab_fused-decode-on_prefill_2048_one_adapter": 1.25,
		"ab_fused-decode-on_prefill_attention_2048": 1.7,
		"ab_fused-decode-on_prefill_attention_8192": 2.0, "ab_fused-decode-on_adapters8qv_b64_of_ceiling": 5500.0 / 6000 / 0.97} {
		if r := rows[id]; r.Value == nil || !near(*r.Value, want) || r.Issue != ABRows || !strings.Contains(r.Measure, "LORAPLEX_FUSED_DECODE=on") {
			t.Errorf("row %s: %+v, want %v", id, r, want)
		}
	}
	if r := rows["prefill_2048_one_adapter_vs_base"]; r.Value == nil || !near(*r.Value, 0.8) || r.Issue != 15 || r.Goal != "" {
		t.Errorf("the adapter prefill row: %+v", r)
	}
	if r := rows["ab_fused-decode-on_adapters16_b64"]; r.Value != nil {
		t.Errorf("a row the A/B run lacks: %+v", r)
	}
	if r, ok := rows["ab_fused-decode-on_adapters16_b64_of_ceiling"]; !ok || r.Value != nil {
		t.Errorf("a row the A/B run lacks, present without a value: %v %+v", ok, r)
	}
	if _, ok := rows["ab_prefixcache-ab-fused-decode-on_decode_b1"]; ok {
		t.Error("the A/B prefix-cache output was read as an A/B run")
	}
}

// The cold-load row shows the adapter's content digest where bench/coldload timed it: within
// disk → host for results of a cache that hashed every load before its upload, within host →
// device for one that hashes beside the first upload; nothing of it for a run that did not.
func TestColdLoadRowShowsTheDigest(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join("testdata/run", "coldload.json"))
	if err != nil {
		t.Fatal(err)
	}
	warm := `{"form": "lorapack", "cache": "warm", `
	if !bytes.Contains(orig, []byte(warm)) {
		t.Fatalf("testdata coldload.json has no %s row", warm)
	}
	for _, c := range []struct{ json, want string }{
		{string(orig), "13.60 ms (disk → host 11.20, host → device 2.10)"},
		{strings.Replace(string(orig), warm, warm+`"digest_ms_median": 1.25, `, 1), "13.60 ms (disk → host 11.20 of which digest 1.25, host → device 2.10)"},
		{strings.Replace(string(orig), warm, warm+`"digest_ms_median": 1.25, "digest_beside_upload": true, `, 1),
			"13.60 ms (disk → host 11.20, host → device 2.10 with the digest beside it 1.25)"},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "coldload.json"), []byte(c.json), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := Build(dir, "2026-12-07T02:00:00Z", "")
		if err != nil {
			t.Fatal(err)
		}
		if r := byID(t, f)["coldload_lorapack_warm_ms"]; r.Measured != c.want {
			t.Errorf("cold load row measured %q, want %q", r.Measured, c.want)
		}
	}
}
