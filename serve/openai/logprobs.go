package openai

import (
	"crypto/rand"
	"encoding/hex"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/loraplex/loraplex/serve"
)

func newID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// tokenString is how logprobs name a token: its decoded text, or "token_id:<id>" when asked
// for (vLLM's return_tokens_as_token_ids) or when there is no tokenizer. Text that is not valid
// UTF-8 on its own (a piece of a multi-byte character) is reported as vLLM does.
func (h *Handler) tokenString(id int, asIDs bool) string {
	tok := h.e.Tokenizer()
	if asIDs || tok == nil {
		return "token_id:" + strconv.Itoa(id)
	}
	s, err := tok.Decode([]int{id}, false)
	if err != nil {
		return "token_id:" + strconv.Itoa(id)
	}
	return s
}

// finite clamps -Inf (a masked token) to vLLM's -9999, since JSON has no infinities.
func finite(lp float32) float64 {
	if math.IsInf(float64(lp), 0) || math.IsNaN(float64(lp)) {
		return -9999
	}
	return float64(lp)
}

// completionLogprobs is the completions API's logprobs object.
type completionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []float64            `json:"token_logprobs"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// appendCompletion adds ev's tokens to lp; offset is the running text offset of the choice
// (characters, as Python counts them) and is advanced.
func (h *Handler) appendCompletion(lp *completionLogprobs, ev *serve.Event, asIDs bool, offset *int) {
	for i, c := range ev.Logprobs {
		s := h.tokenString(c.Token, asIDs)
		lp.Tokens = append(lp.Tokens, s)
		lp.TokenLogprobs = append(lp.TokenLogprobs, finite(c.Logprob))
		top := map[string]float64{}
		if i < len(ev.Top) {
			for _, t := range ev.Top[i] {
				top[h.tokenString(t.Token, asIDs)] = finite(t.Logprob)
			}
		}
		// vLLM always lists the chosen token among the alternatives.
		top[s] = finite(c.Logprob)
		lp.TopLogprobs = append(lp.TopLogprobs, top)
		lp.TextOffset = append(lp.TextOffset, *offset)
		*offset += utf8.RuneCountInString(s)
	}
}

// chatLogprob is one entry of the chat API's logprobs.content.
type chatLogprob struct {
	Token       string           `json:"token"`
	Logprob     float64          `json:"logprob"`
	Bytes       []int            `json:"bytes"`
	TopLogprobs []chatTopLogprob `json:"top_logprobs"`
}

type chatTopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

type chatLogprobs struct {
	Content []chatLogprob `json:"content"`
}

func tokenBytes(s string) []int {
	b := make([]int, len(s))
	for i := 0; i < len(s); i++ {
		b[i] = int(s[i])
	}
	return b
}

func (h *Handler) appendChat(lp *chatLogprobs, ev *serve.Event, asIDs bool) {
	for i, c := range ev.Logprobs {
		s := h.tokenString(c.Token, asIDs)
		e := chatLogprob{Token: s, Logprob: finite(c.Logprob), Bytes: tokenBytes(s), TopLogprobs: []chatTopLogprob{}}
		if i < len(ev.Top) {
			for _, t := range ev.Top[i] {
				ts := h.tokenString(t.Token, asIDs)
				e.TopLogprobs = append(e.TopLogprobs, chatTopLogprob{Token: ts, Logprob: finite(t.Logprob), Bytes: tokenBytes(ts)})
			}
		}
		lp.Content = append(lp.Content, e)
	}
}
