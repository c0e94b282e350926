package serve

// SamplingParams are the knobs of one request, with vLLM's semantics. The zero value is greedy
// decoding of up to the context length.
type SamplingParams struct {
	MaxTokens   int     // 0: up to the context length
	MinTokens   int     // EOS and stop token ids are suppressed until this many tokens exist
	Temperature float64 // 0: greedy
	TopP        float64 // 0 or 1: off
	TopK        int     // 0 or -1: off
	MinP        float64 // 0: off
	Seed        *uint64 // nil: random

	RepetitionPenalty float64 // 0 or 1: off; > 1 discourages tokens already in prompt or output
	PresencePenalty   float64 // subtracted once from tokens already generated
	FrequencyPenalty  float64 // subtracted per occurrence in the generated text

	Stop         []string // generation ends before the first occurrence; the stop string is not returned
	StopTokenIDs []int    // generation ends after one of these tokens (not returned as text)
	IgnoreEOS    bool

	Logprobs int // > 0: return the chosen token's logprob and this many top alternatives; 0 none; -1: chosen only
	// PromptLogprobs asks for every prompt token's logprob given the tokens before it (all but
	// the first; vLLM's prompt_logprobs, OpenAI's echo with logprobs), as Logprobs counts:
	// 0 none, -1 the token's only, N also the N most likely. Such a request's prompt is always
	// computed in full (the prefix cache has no logits).
	PromptLogprobs int
	// PromptOnly computes the prompt and generates nothing (max_tokens 0 with echo): the
	// request finishes with "length" once its prompt logprobs are out.
	PromptOnly bool
	// LogitBias adds a bias in [-100, 100] to a token's logit before sampling (OpenAI's
	// logit_bias; at most MaxLogitBias entries). Logprobs stay those of the raw logits.
	LogitBias map[int]float64
	// Constraint, when set, holds the output to a structure (constrained decoding).
	Constraint *Constraint
	// SkipSpecialTokens drops special tokens from the returned text (default true in the gateways).
	SkipSpecialTokens bool
}

// Request is one generation. Model is "" or the base model's name for the base model, or an
// adapter's name.
type Request struct {
	Model  string
	Prompt []int
	Params SamplingParams
	// TraceExperts asks, when Model is a router, for the experts chosen for each generated
	// token (Event.Experts).
	TraceExperts bool
}

// TokenLogprob is one alternative in a logprobs list.
type TokenLogprob struct {
	Token   int
	Logprob float32
}

// PromptLogprob is the logprob of prompt token Token given the tokens before it.
type PromptLogprob struct {
	Token   int
	Logprob float32
	Rank    int            // vLLM's rank: tokens at least as likely, Token included
	Top     []TokenLogprob // the most likely tokens, when asked for
}

// Event is one step of a generation stream. Every event carries the tokens generated in that
// step (zero or one today) and the UTF-8-complete text they completed. The last event of a
// stream has Finish set ("stop", "length", "abort" or "error", with Err) and Usage.
type Event struct {
	Tokens   []int
	Text     string
	Logprobs []TokenLogprob   // the chosen tokens' logprobs, parallel to Tokens (when asked for)
	Top      [][]TokenLogprob // top alternatives per token (when asked for)
	// Experts, for a routed request that asked for a trace, holds per token the top-1 expert
	// adapter of every layer ("" where the layer chose only null experts).
	Experts [][]string
	// PromptLogprobs continue the request's prompt logprobs (PromptTokens[1:] in order), each
	// event the next ones, all of them before the first generated token.
	PromptLogprobs []PromptLogprob

	Finish string
	// StopReason is the stop string or token id that ended the request, when Finish is "stop"
	// for that reason (nil for EOS).
	StopReason any
	Err        error
	Usage      *Usage
}

// Usage counts tokens of a finished request.
type Usage struct {
	PromptTokens     int
	CompletionTokens int
	// CachedTokens are the prompt tokens whose keys and values came from the prefix cache
	// (OpenAI's usage.prompt_tokens_details.cached_tokens).
	CachedTokens int
}

// ModelInfo describes something a request can name.
type ModelInfo struct {
	ID      string
	Parent  string // the base model, for adapters
	Kind    string // "base", "adapter" or "router"
	Created int64
	MaxLen  int
	Experts []string // a router's expert adapters
}
