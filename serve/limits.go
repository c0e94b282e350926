package serve

import (
	"fmt"

	"github.com/loraplex/loraplex/model"
)

// Request limits. Every cost a client can cause is bounded before the work starts: the
// gateways (HTTP and gRPC) check a request's counts with CheckCounts and each prompt text with
// CheckPromptText right after decoding it, before any template is rendered, any text tokenized
// or anything queued; the engine checks the stop lists again in Generate, so a caller that
// skips the gateways gets the same rules. The README's "Request limits" section lists them.
const (
	// MaxStopStrings bounds stop strings per request: the engine scans the new text for each
	// of them on every decode step (a million one-character stops stalled the loop for 80 s).
	MaxStopStrings = 64
	// MaxStopStringBytes bounds the length of one stop string.
	MaxStopStringBytes = 1024
	// MaxStopTokenIDs bounds stop_token_ids (banned from sampling until min_tokens).
	MaxStopTokenIDs = 1024
	// MaxLogitBias bounds logit_bias entries (OpenAI clients send at most a vocabulary's worth);
	// it is the sampler's own bound on a row's bias list.
	MaxLogitBias = model.MaxSampleBias
	// MaxMessages bounds the messages of one chat request.
	MaxMessages = 4096
	// MaxTools bounds the tools of one chat request (OpenAI's own limit is 128).
	MaxTools = 128
)

// RetryAfterSeconds is how long an overloaded server (429 / ResourceExhausted) asks a client
// to wait: HTTP's Retry-After header, the "retry-after" trailer on gRPC. Requests that could
// never be admitted are 400s instead (CheckCounts), so a retry after this wait can succeed.
const RetryAfterSeconds = 1

// Counts are the sizes of one request's lists, as a gateway decoded them.
type Counts struct {
	Prompts      int // prompts in the request (1 for a single prompt)
	N            int // samples per prompt; each is one engine request
	MaxN         int // the gateway's bound on Prompts*N
	Messages     int
	Tools        int
	LogitBias    int
	Stop         []string
	StopTokenIDs int
}

// CheckCounts refuses a request whose lists exceed the limits, or which asks for more engine
// requests than the queue can ever hold: that is a 400, not a 429, since retrying cannot help.
func (e *Engine) CheckCounts(c Counts) error {
	switch {
	case c.Messages > MaxMessages:
		return errorf(KindInvalid, "messages", "at most %d messages per request, got %d", MaxMessages, c.Messages)
	case c.Tools > MaxTools:
		return errorf(KindInvalid, "tools", "at most %d tools per request, got %d", MaxTools, c.Tools)
	case c.LogitBias > MaxLogitBias:
		return errorf(KindInvalid, "logit_bias", "at most %d logit_bias entries, got %d", MaxLogitBias, c.LogitBias)
	case c.StopTokenIDs > MaxStopTokenIDs:
		return errorf(KindInvalid, "stop_token_ids", "at most %d stop_token_ids, got %d", MaxStopTokenIDs, c.StopTokenIDs)
	}
	if err := checkStop(c.Stop); err != nil {
		return err
	}
	prompts, n := max(c.Prompts, 1), max(c.N, 1)
	if c.MaxN > 0 && prompts*n > c.MaxN {
		if n == 1 {
			return errorf(KindInvalid, "prompt", "at most %d prompts per request, got %d", c.MaxN, prompts)
		}
		return errorf(KindInvalid, "n", "n times the number of prompts must be at most %d, got %d", c.MaxN, prompts*n)
	}
	if prompts*n > e.opt.MaxQueued {
		return errorf(KindInvalid, "n", "this request needs %d generations but at most %d can wait at once (--max-queued-requests)", prompts*n, e.opt.MaxQueued)
	}
	return nil
}

func checkStop(stop []string) error {
	if len(stop) > MaxStopStrings {
		return errorf(KindInvalid, "stop", "at most %d stop strings, got %d", MaxStopStrings, len(stop))
	}
	for _, s := range stop {
		if len(s) > MaxStopStringBytes {
			return errorf(KindInvalid, "stop", "a stop string may have at most %d bytes, got %d", MaxStopStringBytes, len(s))
		}
	}
	return nil
}

// MaxPromptBytes is the longest prompt text, in bytes, that can still fit the model's context:
// no token stands for more than the tokenizer's MaxBytesPerToken bytes, so a longer text has
// at least max-model-len tokens. 0 without a tokenizer.
func (e *Engine) MaxPromptBytes() int {
	if e.tok == nil {
		return 0
	}
	return e.opt.MaxModelLen * e.tok.MaxBytesPerToken()
}

// CheckPromptText refuses, before tokenizing it, a prompt text (for param) too long to fit
// max-model-len tokens whatever it contains.
func (e *Engine) CheckPromptText(param string, text string) error {
	if limit := e.MaxPromptBytes(); limit > 0 && len(text) > limit {
		return &Error{Kind: KindInvalid, Param: param, Msg: fmt.Sprintf(
			"the %s has %d bytes, more than %d tokens can hold (this model's maximum context length is %d tokens, and no token stands for more than %d bytes)",
			param, len(text), e.opt.MaxModelLen, e.opt.MaxModelLen, e.tok.MaxBytesPerToken())}
	}
	return nil
}
