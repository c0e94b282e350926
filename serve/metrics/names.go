package metrics

import "github.com/prometheus/client_golang/prometheus"

// Metric names. The vllm:* names, types, labels and buckets follow vLLM v1's
// PrometheusStatLogger (vllm/v1/metrics/loggers.py), because routers such as the Gateway API
// Inference Extension scrape exactly those names; a rename breaks them silently. The colons are
// therefore deliberate even though promlint discourages them (they are legal in the exposition
// format and reserved for recording rules by convention only).
const (
	nameRunning     = "vllm:num_requests_running"
	nameWaiting     = "vllm:num_requests_waiting"
	nameKVUsage     = "vllm:kv_cache_usage_perc"
	namePreemptions = "vllm:num_preemptions_total"
	namePromptToks  = "vllm:prompt_tokens_total"
	nameGenToks     = "vllm:generation_tokens_total"
	nameSuccess     = "vllm:request_success_total"
	nameLoRAInfo    = "vllm:lora_requests_info"
	nameTTFT        = "vllm:time_to_first_token_seconds"
	nameITL         = "vllm:inter_token_latency_seconds"
	nameE2E         = "vllm:e2e_request_latency_seconds"
	nameQueue       = "vllm:request_queue_time_seconds"
	// Counted in prompt tokens, as vLLM v1 counts them (queried and found cached).
	namePrefixQueries = "vllm:prefix_cache_queries_total"
	namePrefixHits    = "vllm:prefix_cache_hits_total"

	// Adapter residency, as vLLM's pending LoRA load-event metrics (vllm-project/vllm #54830 on
	// #51433) name them and llm-d-router's lora-load-state scorer (#2792) reads them.
	nameLoRALoaded      = "vllm:lora_adapter_loaded"
	nameGPULoaded       = "vllm:num_gpu_loaded_lora_adapters"
	nameCPULoaded       = "vllm:num_cpu_loaded_lora_adapters"
	nameMaxGPU          = "vllm:max_gpu_lora_adapters"
	nameLoRALoadSeconds = "vllm:lora_adapter_load_seconds"

	nameAdapterRequests = "loraplex_adapter_requests_total"
	nameAdapterPrompt   = "loraplex_adapter_prompt_tokens_total"
	nameAdapterGen      = "loraplex_adapter_generation_tokens_total"
	nameAdapterQueries  = "loraplex_adapter_prefix_cache_queries_total"
	nameAdapterHits     = "loraplex_adapter_prefix_cache_hits_total"
	nameResident        = "loraplex_adapters_resident"
	nameLoadSeconds     = "loraplex_adapter_load_seconds"
	nameLoads           = "loraplex_adapter_loads_total"
	nameCacheEvents     = "loraplex_adapter_cache_events_total"
	nameCacheBytes      = "loraplex_adapter_cache_bytes"
	nameTransfers       = "loraplex_adapter_cache_transfers_total"
	nameTransferSeconds = "loraplex_adapter_cache_transfer_seconds_total"
	nameBatchRows       = "loraplex_batch_rows"
	nameBatchSeqs       = "loraplex_batch_sequences"
	nameStepSeconds     = "loraplex_step_seconds"
	nameRouters         = "loraplex_routers"
	nameRouterSelect    = "loraplex_router_expert_selections_total"
	// KV-cache events (serve/kvevents.go) dropped because the publisher's queue was full.
	nameKVEventsDropped = "loraplex_kv_events_dropped_total"
)

// Label names. vLLM labels every engine metric with the served model name and the engine
// index; a loraplex process runs one engine, so engine is always "0".
const (
	labelModel   = "model_name"
	labelEngine  = "engine"
	engineIndex  = "0"
	labelReason  = "finished_reason"
	labelAdapter = "adapter"
	labelTier    = "tier"
	labelRouter  = "router"
	labelExpert  = "expert"
	labelLayer   = "layer"

	labelAdapterName = "adapter_name"
	labelLevel       = "level" // "gpu": in a device slot (whatever the backend); "cpu": in host memory only
	labelPinned      = "pinned"
	labelRank        = "rank"

	labelMaxLoRA = "max_lora"
	labelRunning = "running_lora_adapters"
	labelWaiting = "waiting_lora_adapters"
)

// Finish reasons, in vLLM v1's FinishReason order. vLLM pre-creates one request_success series
// per reason at zero so rate() works from the first scrape; we do the same. "error" is vLLM's
// retryable request-level internal error, which is what the engine's "error" means (a failed
// forward pass or detokenisation), so it maps to itself rather than being folded into "abort".
var reasons = [...]string{"stop", "length", "abort", "error"}

// reasonIndex maps an engine finish reason to its slot in reasons. Anything the engine may add
// later counts as "abort", vLLM's "aborted for another reason".
func reasonIndex(r string) int {
	switch r {
	case "stop":
		return 0
	case "length":
		return 1
	case "error":
		return 3
	default:
		return 2
	}
}

// vLLM's bucket boundaries, copied as numbers so dashboards and SLO rules written for vLLM
// (le="0.1" and so on) keep matching.
var (
	bucketsTTFT = []float64{
		0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
		0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
	}
	bucketsITL = []float64{
		0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
		1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
	}
	// vLLM shares one list between e2e latency and queue time.
	bucketsRequest = []float64{
		0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
		40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
	}
	// Token rows per step use the boundaries of vLLM's vllm:iteration_tokens_total, which
	// measures the same thing (prompt plus generation tokens in one engine step).
	bucketsRows = []float64{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}
	// A CPU step of a tiny model takes well under a millisecond, a GPU step of a large one
	// tens to hundreds: 0.25 ms doubling to about 8 s.
	bucketsStep = prometheus.ExponentialBuckets(0.00025, 2, 16)
)

// bucketsSeqs are powers of two up to the batch size limit, the last one being the limit
// itself, so a full batch is its own bucket.
func bucketsSeqs(maxSeqs int) []float64 {
	var b []float64
	for v := 1; v < maxSeqs; v *= 2 {
		b = append(b, float64(v))
	}
	return append(b, float64(max(maxSeqs, 1)))
}

// bucketsLoad spans a compressed adapter from page cache (about a millisecond) to a large
// adapter from a cold disk (seconds).
var bucketsLoad = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
