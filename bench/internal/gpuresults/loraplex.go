package gpuresults

// Loraplex is what bench/gpu writes (loraplex.json, ab-*.json): one home for the schema, so
// the writer and the rows cannot drift apart. The first fields keep the names bench/readme's
// older table reads.
type Loraplex struct {
	label         string             // an A/B run's name (ab-LABEL.json)
	prefix        *prefixRun         // an A/B run's bench/prefixcache -json (prefixcache-ab-LABEL.json), when it ran
	missing       string             // why there is no loraplex.json ("" when there is)
	runStatus     string             // run.sh's status of the stage when not ok (timed out, failed)
	Device        string             `json:"device"`
	Shape         string             `json:"shape"`
	CopyBandwidth float64            `json:"copy_bandwidth_bytes_per_s"`
	GEMMFlops     float64            `json:"cublas_gemm_flop_per_s"`
	Batch1        map[string]float64 `json:"batch1_decode,omitempty"`
	Sweep         map[int]float64    `json:"decode_tokens_per_s_by_batch,omitempty"`
	Adapters      *AdapterRatio      `json:"adapters_64_distinct_rank16,omitempty"`
	Prefill2048   map[string]float64 `json:"prefill_2048,omitempty"`

	// GEMMFlopsByRows: the cuBLAS ceiling at each prefill length's row count (at most 8,192).
	GEMMFlopsByRows map[int]float64    `json:"cublas_gemm_flop_per_s_by_rows,omitempty"`
	LongContext     []LongContextPoint `json:"long_context_decode,omitempty"`
	AdaptersQV      *AdapterRatio      `json:"adapters_64_distinct_rank8_qv,omitempty"`
	Router          []RouterPoint      `json:"router_28_experts_top2,omitempty"`
	Deterministic   *Deterministic     `json:"deterministic,omitempty"`
	Prefill         []PrefillPoint     `json:"prefill,omitempty"`
	// AdapterPrefill: a 2,048-token prompt on one rank-16 adapter against the same prompt on
	// none (the LoRA cost at time to first token; no goal of its own).
	AdapterPrefill *AdapterPrefill `json:"prefill_2048_one_rank16_adapter,omitempty"`
	// Env: the LORAPLEX_* variables the run saw (the switches A/B runs flip).
	Env map[string]string `json:"env,omitempty"`
	// StageSeconds: wall time of each stage, the weights' upload included as "weights".
	StageSeconds map[string]float64 `json:"stage_seconds"`
	// Errors: why a stage that failed failed.
	Errors map[string]string `json:"errors,omitempty"`
}

// AdapterRatio is a batch of distinct adapters against the same batch without adapters, with
// the ratio the bytes alone allow: (weights + KV) / (weights + KV + every adapter's factors).
type AdapterRatio struct {
	Batch          int     `json:"batch"`
	Rank           int     `json:"rank"`
	Targets        string  `json:"targets"`
	Base           float64 `json:"base_tokens_per_s"`
	Mixed          float64 `json:"mixed_tokens_per_s"`
	Ratio          float64 `json:"ratio"`
	AdapterBytes   float64 `json:"adapter_bytes_per_step"`
	BaseBytes      float64 `json:"base_bytes_per_step"`
	Ceiling        float64 `json:"byte_bound_ceiling"`
	RatioOfCeiling float64 `json:"ratio_of_ceiling"`
}

// LongContextPoint is batch-1 decode at one context length; the roofline counts the weights
// and the context's K/V bytes.
type LongContextPoint struct {
	Context  int     `json:"context"`
	Tokens   float64 `json:"tokens_per_s"`
	Roofline float64 `json:"roofline_tokens_per_s"`
	Ratio    float64 `json:"ratio"`
	KVBytes  float64 `json:"kv_bytes"`
}

// RouterPoint is routed decode (every row routed) against one adapter of the experts' rank.
type RouterPoint struct {
	Experts int     `json:"experts"`
	TopK    int     `json:"top_k"`
	Batch   int     `json:"batch"`
	Base    float64 `json:"base_tokens_per_s"`
	Single  float64 `json:"single_adapter_tokens_per_s"`
	Routed  float64 `json:"routed_tokens_per_s"`
	Ratio   float64 `json:"ratio_to_single"`
	// Ceiling is the byte-bound ceiling of Ratio: the bytes a single-adapter step reads over
	// those a routed step reads (the gates, bf16, and the experts its rows are expected to pick,
	// uniformly at random, each read once). 0 in results written before it was stated;
	// goals-2026-12-07-s27a counted the gates at 4 bytes an element (its 0.927 at batch 64 is
	// 0.931 with them at 2).
	Ceiling     float64 `json:"byte_ceiling,omitempty"`
	RoutedBytes float64 `json:"routed_step_bytes,omitempty"`
	SingleBytes float64 `json:"single_step_bytes,omitempty"`
}

// Deterministic is the deterministic mode against the default, by batch size.
type Deterministic struct {
	Available bool            `json:"available"`
	Note      string          `json:"note"`
	Default   map[int]float64 `json:"default_tokens_per_s,omitempty"`
	On        map[int]float64 `json:"deterministic_tokens_per_s,omitempty"`
	Ratio     map[int]float64 `json:"ratio,omitempty"`
}

// AdapterPrefill is one prompt prefilled as one step on the tensor-core attention, on one adapter
// of Rank on all seven projections (Adapter) and on none (Base), measured one after the other.
type AdapterPrefill struct {
	Tokens  int     `json:"tokens"`
	Rank    int     `json:"rank"`
	Base    float64 `json:"base_tokens_per_s"`
	Adapter float64 `json:"adapter_tokens_per_s"`
	Ratio   float64 `json:"ratio"`
}

// PrefillPoint is one prompt prefilled as one step on one attention kernel.
type PrefillPoint struct {
	Tokens      int     `json:"tokens"`
	Kernel      string  `json:"kernel"`
	Seconds     float64 `json:"seconds"`
	TokensPerS  float64 `json:"tokens_per_s"`
	FLOPs       float64 `json:"flop_per_s"`
	RatioToGEMM float64 `json:"ratio_to_gemm"`
	AttnLayerMS float64 `json:"attention_ms_per_layer"`
}
