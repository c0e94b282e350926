package openai

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/loraplex/loraplex/serve"
)

func newID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// tokenString is how logprobs name a token: its decoded text, or "token_id:<id>" when asked
// for (vLLM's return_tokens_as_token_ids) or when there is no tokenizer. A token that is only
// part of a UTF-8 character is named "bytes:\xNN..." as vLLM does. The second result is
// the token's bytes (the chat API's `bytes`).
func (h *Handler) tokenString(id int, asIDs bool) string {
	s, _ := h.tokenText(id, asIDs)
	return s
}

func (h *Handler) tokenText(id int, asIDs bool) (string, []byte) {
	tok := h.e.Tokenizer()
	if tok == nil {
		s := "token_id:" + strconv.Itoa(id)
		return s, []byte(s)
	}
	b := h.rawBytes(id)
	if asIDs {
		return "token_id:" + strconv.Itoa(id), b
	}
	if utf8.Valid(b) {
		return string(b), b
	}
	var sb strings.Builder
	sb.WriteString("bytes:")
	for _, c := range b {
		fmt.Fprintf(&sb, "\\x%02x", c)
	}
	return sb.String(), b
}

// rawBytes recovers the bytes a token stands for. Decoding one token alone replaces a partial
// UTF-8 character with U+FFFD, so such tokens are mapped back through their vocabulary string:
// GPT-2 byte-level characters, or SentencePiece byte-fallback "<0xNN>".
func (h *Handler) rawBytes(id int) []byte {
	tok := h.e.Tokenizer()
	text, err := tok.Decode([]int{id}, false)
	if err != nil {
		return nil
	}
	if !strings.ContainsRune(text, utf8.RuneError) {
		return []byte(text)
	}
	raw, ok := tok.TokenString(id)
	if !ok {
		return []byte(text)
	}
	if len(raw) == 6 && strings.HasPrefix(raw, "<0x") && raw[5] == '>' {
		if v, err := strconv.ParseUint(raw[3:5], 16, 8); err == nil {
			return []byte{byte(v)}
		}
	}
	out := make([]byte, 0, len(raw))
	for _, r := range raw {
		c, ok := gpt2Byte[r]
		if !ok {
			return []byte(text)
		}
		out = append(out, c)
	}
	return out
}

// gpt2Byte inverts GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
// other 68 bytes for U+0100 onwards, in byte order.
var gpt2Byte = func() map[rune]byte {
	m := make(map[rune]byte, 256)
	n := 0
	for b := 0; b < 256; b++ {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			m[rune(b)] = byte(b)
		} else {
			m[rune(256+n)] = byte(b)
			n++
		}
	}
	return m
}()

// finite clamps -Inf (a masked token) to vLLM's -9999, since JSON has no infinities.
func finite(lp float32) float64 {
	if math.IsInf(float64(lp), 0) || math.IsNaN(float64(lp)) {
		return -9999
	}
	return float64(lp)
}

// completionLogprobs is the completions API's logprobs object. With echo it starts with the
// prompt's tokens, the first of which has null token and top logprobs (nothing predicts it).
type completionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []*float64           `json:"token_logprobs"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// appendEcho adds the echoed prompt's tokens to lp: prompt[0] with null logprobs, then
// prompt[i] with its prompt logprob and top alternatives (lps[i-1], top cut to n). offset is
// advanced as by appendCompletion.
func (h *Handler) appendEcho(lp *completionLogprobs, prompt []int, lps []serve.PromptLogprob, n int, asIDs bool, offset *int) {
	for i, id := range prompt {
		s := h.tokenString(id, asIDs)
		lp.Tokens = append(lp.Tokens, s)
		lp.TextOffset = append(lp.TextOffset, *offset)
		*offset += utf8.RuneCountInString(s)
		if i == 0 || i-1 >= len(lps) {
			lp.TokenLogprobs = append(lp.TokenLogprobs, nil)
			lp.TopLogprobs = append(lp.TopLogprobs, nil)
			continue
		}
		p := &lps[i-1]
		v := finite(p.Logprob)
		top := map[string]float64{}
		for _, t := range p.Top[:min(n, len(p.Top))] {
			top[h.tokenString(t.Token, asIDs)] = finite(t.Logprob)
		}
		top[s] = v
		lp.TokenLogprobs = append(lp.TokenLogprobs, &v)
		lp.TopLogprobs = append(lp.TopLogprobs, top)
	}
}

// vllmLogprob is one entry of vLLM's prompt_logprobs, keyed by token id.
type vllmLogprob struct {
	Logprob      float64 `json:"logprob"`
	Rank         int     `json:"rank"`
	DecodedToken string  `json:"decoded_token"`
}

// promptLogprobs is vLLM's prompt_logprobs: null for the first prompt token, then per token a
// map from token id to its logprob, rank and text, holding the prompt token and the top n.
func (h *Handler) promptLogprobs(lps []serve.PromptLogprob, n int, asIDs bool) []map[string]vllmLogprob {
	out := make([]map[string]vllmLogprob, 1, len(lps)+1)
	for i := range lps {
		p := &lps[i]
		m := map[string]vllmLogprob{strconv.Itoa(p.Token): {Logprob: finite(p.Logprob), Rank: p.Rank, DecodedToken: h.tokenString(p.Token, asIDs)}}
		for r, t := range p.Top[:min(n, len(p.Top))] {
			m[strconv.Itoa(t.Token)] = vllmLogprob{Logprob: finite(t.Logprob), Rank: r + 1, DecodedToken: h.tokenString(t.Token, asIDs)}
		}
		out = append(out, m)
	}
	return out
}

// appendCompletion adds ev's tokens to lp; offset is the running text offset of the choice
// (characters, as Python counts them) and is advanced.
func (h *Handler) appendCompletion(lp *completionLogprobs, ev *serve.Event, asIDs bool, offset *int) {
	for i, c := range ev.Logprobs {
		s := h.tokenString(c.Token, asIDs)
		lp.Tokens = append(lp.Tokens, s)
		v := finite(c.Logprob)
		lp.TokenLogprobs = append(lp.TokenLogprobs, &v)
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

func byteList(s []byte) []int {
	b := make([]int, len(s))
	for i, c := range s {
		b[i] = int(c)
	}
	return b
}

func (h *Handler) appendChat(lp *chatLogprobs, ev *serve.Event, asIDs bool) {
	for i, c := range ev.Logprobs {
		s, b := h.tokenText(c.Token, asIDs)
		e := chatLogprob{Token: s, Logprob: finite(c.Logprob), Bytes: byteList(b), TopLogprobs: []chatTopLogprob{}}
		if i < len(ev.Top) {
			for _, t := range ev.Top[i] {
				ts, tb := h.tokenText(t.Token, asIDs)
				e.TopLogprobs = append(e.TopLogprobs, chatTopLogprob{Token: ts, Logprob: finite(t.Logprob), Bytes: byteList(tb)})
			}
		}
		lp.Content = append(lp.Content, e)
	}
}
