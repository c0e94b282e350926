package openai

import (
	"encoding/json"
	"strconv"

	"github.com/loraplex/loraplex/serve"
)

// samplingFields are the request fields completions and chat share. Pointers tell "absent"
// from zero where the default is not zero.
type samplingFields struct {
	Model             string          `json:"model"`
	MaxTokens         *int            `json:"max_tokens"`
	Temperature       *float64        `json:"temperature"`
	TopP              *float64        `json:"top_p"`
	TopK              *int            `json:"top_k"`
	MinP              *float64        `json:"min_p"`
	Seed              *int64          `json:"seed"`
	Stop              json.RawMessage `json:"stop"`
	StopTokenIDs      []int           `json:"stop_token_ids"`
	IgnoreEOS         bool            `json:"ignore_eos"`
	MinTokens         int             `json:"min_tokens"`
	RepetitionPenalty *float64        `json:"repetition_penalty"`
	PresencePenalty   float64         `json:"presence_penalty"`
	FrequencyPenalty  float64         `json:"frequency_penalty"`
	LogitBias         map[string]any  `json:"logit_bias"`
	// PromptLogprobs is vLLM's: each prompt token's logprob (and this many alternatives).
	PromptLogprobs *int `json:"prompt_logprobs"`
	N              *int `json:"n"`
	Stream         bool `json:"stream"`
	StreamOptions  *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	SkipSpecialTokens      *bool `json:"skip_special_tokens"`
	AddSpecialTokens       *bool `json:"add_special_tokens"`
	ReturnTokenIDs         bool  `json:"return_token_ids"`
	ReturnTokensAsTokenIDs bool  `json:"return_tokens_as_token_ids"`
	// ExpertTrace (an extension, for routers) returns each choice's top-1 experts per token
	// and layer, and their summary.
	ExpertTrace bool `json:"expert_trace"`
	refusedFields
	structuredFields
}

// params converts the shared fields to engine parameters. maxTokensDefault applies when
// max_tokens is absent (16 for completions as in OpenAI, 0 = the rest of the context for chat).
// Range checks that the engine makes are left to it, so there is one source of truth; the
// checks here are for values the engine reads as "off" but OpenAI clients mean otherwise.
func (f *samplingFields) params(maxTokensDefault int) (serve.SamplingParams, error) {
	if err := f.refusedFields.check(); err != nil {
		return serve.SamplingParams{}, err
	}
	p := serve.SamplingParams{
		MaxTokens:         maxTokensDefault,
		Temperature:       1,
		MinTokens:         f.MinTokens,
		StopTokenIDs:      f.StopTokenIDs,
		IgnoreEOS:         f.IgnoreEOS,
		PresencePenalty:   f.PresencePenalty,
		FrequencyPenalty:  f.FrequencyPenalty,
		SkipSpecialTokens: true,
	}
	if f.MaxTokens != nil {
		if *f.MaxTokens < 1 {
			return p, invalid("max_tokens", "max_tokens must be at least 1, got %d", *f.MaxTokens)
		}
		p.MaxTokens = *f.MaxTokens
	}
	if f.Temperature != nil {
		p.Temperature = *f.Temperature
	}
	if f.TopP != nil {
		if !(*f.TopP > 0) {
			return p, invalid("top_p", "top_p must be in (0, 1], got %v", *f.TopP)
		}
		p.TopP = *f.TopP
	}
	if f.TopK != nil {
		p.TopK = *f.TopK
	}
	if f.MinP != nil {
		p.MinP = *f.MinP
	}
	if f.Seed != nil {
		s := uint64(*f.Seed)
		p.Seed = &s
	}
	if f.RepetitionPenalty != nil {
		if !(*f.RepetitionPenalty > 0) {
			return p, invalid("repetition_penalty", "repetition_penalty must be positive, got %v", *f.RepetitionPenalty)
		}
		p.RepetitionPenalty = *f.RepetitionPenalty
	}
	if f.SkipSpecialTokens != nil {
		p.SkipSpecialTokens = *f.SkipSpecialTokens
	}
	if f.PromptLogprobs != nil {
		switch lp := *f.PromptLogprobs; {
		case lp < 0 || lp > 20:
			return p, invalid("prompt_logprobs", "prompt_logprobs must be between 0 and 20, got %d", lp)
		case f.Stream:
			// As vLLM: prompt logprobs are a whole-prompt answer, not a stream.
			return p, invalid("prompt_logprobs", "prompt_logprobs are not available when stream is true")
		default:
			p.PromptLogprobs = engineLogprobs(lp)
		}
	}
	stop, err := stringOrList(f.Stop, "stop", serve.MaxStopStrings)
	if err != nil {
		return p, err
	}
	p.Stop = stop
	if p.Constraint, err = f.constraint(); err != nil {
		return p, err
	}
	return p, nil
}

// engineLogprobs turns an API logprobs count (0: the token's own logprob only, N: also N
// alternatives) into the engine's (-1, N).
func engineLogprobs(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// wantPrompt merges two wishes for prompt logprobs in the engine's terms (0 none, -1 the
// token's only, N also N alternatives).
func wantPrompt(a, b int) int {
	if a > 0 || b > 0 {
		return max(a, b)
	}
	return min(a, b)
}

// parseLogitBias reads OpenAI's logit_bias: token ids as decimal strings, biases as numbers.
// Ranges (the vocabulary, [-100, 100]) are the engine's to check.
func parseLogitBias(m map[string]any) (map[int]float64, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[int]float64, len(m))
	for k, v := range m {
		id, err := strconv.Atoi(k)
		if err != nil || k != strconv.Itoa(id) {
			return nil, invalid("logit_bias", "logit_bias keys must be token ids, got %q", k)
		}
		b, ok := v.(float64)
		if !ok {
			return nil, invalid("logit_bias", "logit_bias of token %d must be a number", id)
		}
		out[id] = b
	}
	return out, nil
}

// check bounds the request's lists (serve.CheckCounts, before any work) and reads the
// logit_bias into p. prompts is the number of prompts; messages and tools are the chat
// request's counts (0 for completions).
func (h *Handler) check(f *samplingFields, p *serve.SamplingParams, prompts, n, messages, tools int) error {
	if err := h.e.CheckCounts(serve.Counts{Prompts: prompts, N: n, MaxN: h.opt.MaxN, Messages: messages, Tools: tools,
		LogitBias: len(f.LogitBias), Stop: p.Stop, StopTokenIDs: len(p.StopTokenIDs)}); err != nil {
		return err
	}
	bias, err := parseLogitBias(f.LogitBias)
	p.LogitBias = bias
	return err
}

// choices validates n.
func (f *samplingFields) choices(maxN int) (int, error) {
	if f.N == nil {
		return 1, nil
	}
	if *f.N < 1 || *f.N > maxN {
		return 0, invalid("n", "n must be between 1 and %d, got %d", maxN, *f.N)
	}
	return *f.N, nil
}

func (f *samplingFields) includeUsage() bool {
	return f.StreamOptions != nil && f.StreamOptions.IncludeUsage
}

// modelName is what responses report: the requested name, or the base model's.
func (h *Handler) modelName(requested string) string {
	if requested == "" {
		return h.e.Options().ModelName
	}
	return requested
}
