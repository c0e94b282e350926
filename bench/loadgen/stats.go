package main

import (
	"math"
	"slices"
	"time"
)

// percentileSorted returns the p-th percentile (0..100) of the sorted s by linear
// interpolation between the two nearest ranks, numpy's default, so the numbers line up with
// vLLM's benchmark_serving. An empty sample gives NaN rather than 0 so that a missing
// measurement can never pass for a fast one.
func percentileSorted(s []float64, p float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	p = min(max(p, 0), 100)
	pos := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(s)-1)
	frac := pos - float64(lo)
	return s[lo] + frac*(s[hi]-s[lo])
}

// Dist summarises one latency distribution, in milliseconds.
type Dist struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean_ms"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
}

// Summarize computes a Dist over ds.
func Summarize(ds []time.Duration) Dist {
	if len(ds) == 0 {
		return Dist{} // N == 0 marks it empty; zeros (not NaN) keep the JSON encodable
	}
	ms := make([]float64, len(ds))
	sum := 0.0
	for i, d := range ds {
		ms[i] = float64(d) / float64(time.Millisecond)
		sum += ms[i]
	}
	slices.Sort(ms)
	return Dist{
		N: len(ms), Mean: sum / float64(len(ms)),
		P50: percentileSorted(ms, 50), P90: percentileSorted(ms, 90), P99: percentileSorted(ms, 99),
		Max: ms[len(ms)-1],
	}
}

// Result is what one request measured.
type Result struct {
	Model     string
	Status    string // "" for success, else an error class ("HTTP 429", "stream error", "timeout", ...)
	Sent      time.Time
	TTFT      time.Duration   // send to the first chunk carrying tokens or text
	ITL       []time.Duration // gaps between token-carrying chunks, one per token after the first
	E2E       time.Duration   // send to the end of the stream
	Tokens    int             // output tokens (usage when the server sent it, else counted)
	Chunks    int             // SSE chunks that carried tokens; < Tokens when the server coalesced
	Expected  int             // max_tokens asked for; with ignore_eos the output must be this long
	PromptLen int
	Replica   int // multi-replica runs: the index of the replica it was sent to
	// CachedTokens is the usage's prompt_tokens_details.cached_tokens: prompt tokens the
	// server's prefix cache supplied.
	CachedTokens int
	Output       []int // the output token ids, when the request asked to keep them (Planned.KeepOutput)
}

// Summary is one run's report.
type Summary struct {
	Name           string         `json:"name"`
	Requests       int            `json:"requests"`
	Completed      int            `json:"completed"`
	Errors         map[string]int `json:"errors"`
	ShortOutputs   int            `json:"short_outputs"`   // completed with fewer tokens than max_tokens despite ignore_eos
	ArrivalSeconds float64        `json:"arrival_seconds"` // first to last send
	WallSeconds    float64        `json:"wall_seconds"`    // first send to last completion
	OfferedRate    float64        `json:"offered_rate"`
	RequestRate    float64        `json:"request_throughput"`
	OutputTokens   int            `json:"output_tokens"`
	OutputTokRate  float64        `json:"output_tokens_per_s"`
	ProcessCores   float64        `json:"process_cores"` // CPU time of this process (generator, and in-process the server) / wall
	Preempted      int64          `json:"involuntary_ctx_switches"`
	LoadAvg        string         `json:"loadavg_after"`
	TokensPerChunk float64        `json:"tokens_per_chunk"` // > 1: the stream merged tokens a slow reader had not taken
	TTFT           Dist           `json:"ttft"`
	ITL            Dist           `json:"itl"`
	E2E            Dist           `json:"e2e"`
	PromptTokens   int            `json:"prompt_tokens,omitempty"` // multi-turn runs: prompt tokens of completed turns
	CachedTokens   int            `json:"cached_tokens,omitempty"` // and how many of them the prefix cache supplied
	Engine         *EngineSummary `json:"engine,omitempty"`        // in-process only: the engine's own view
	Replicas       *ReplicaReport `json:"replicas,omitempty"`      // multi-replica runs: routing and adapter loads
}

// Summarize folds results into a Summary. wall is from the first send to the last completion
// (arrivals plus the drain of the tail), so throughput above capacity reports capacity rather
// than the offered rate.
func summarize(name string, rs []Result, arrivalWindow, wall time.Duration) Summary {
	s := Summary{Name: name, Requests: len(rs), Errors: map[string]int{}, WallSeconds: wall.Seconds()}
	var ttft, itl, e2e []time.Duration
	chunks := 0
	for _, r := range rs {
		if r.Status != "" {
			s.Errors[r.Status]++
			continue
		}
		s.Completed++
		s.OutputTokens += r.Tokens
		chunks += r.Chunks
		if r.Tokens < r.Expected {
			s.ShortOutputs++
		}
		ttft = append(ttft, r.TTFT)
		itl = append(itl, r.ITL...)
		e2e = append(e2e, r.E2E)
	}
	s.ArrivalSeconds = arrivalWindow.Seconds()
	if arrivalWindow > 0 {
		s.OfferedRate = float64(len(rs)) / arrivalWindow.Seconds()
	}
	if wall > 0 {
		s.RequestRate = float64(s.Completed) / wall.Seconds()
		s.OutputTokRate = float64(s.OutputTokens) / wall.Seconds()
	}
	if chunks > 0 {
		s.TokensPerChunk = float64(s.OutputTokens) / float64(chunks)
	}
	s.TTFT, s.ITL, s.E2E = Summarize(ttft), Summarize(itl), Summarize(e2e)
	return s
}
