package openai

import (
	"errors"
	"net/http"
	"unicode/utf8"

	"github.com/loraplex/loraplex/serve"
)

// tokenizeRequest is either of vLLM's two /tokenize bodies: a prompt, or chat messages.
type tokenizeRequest struct {
	chatFields
	Model            string  `json:"model"`
	Prompt           *string `json:"prompt"`
	AddSpecialTokens *bool   `json:"add_special_tokens"`
}

type tokenizeResponse struct {
	Tokens      []int `json:"tokens"`
	Count       int   `json:"count"`
	MaxModelLen int   `json:"max_model_len"`
}

func (h *Handler) tokenize(w http.ResponseWriter, r *http.Request) error {
	var req tokenizeRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	if err := h.checkModel(req.Model); err != nil {
		return err
	}
	tok := h.e.Tokenizer()
	if tok == nil {
		return invalid("prompt", "this model has no tokenizer")
	}
	var text string
	var addSpecial bool
	switch {
	case req.Prompt != nil && req.Messages != nil:
		return invalid("prompt", "give either prompt or messages, not both")
	case req.Prompt != nil:
		text, addSpecial = *req.Prompt, req.AddSpecialTokens == nil || *req.AddSpecialTokens
	case req.Messages != nil:
		if err := h.e.CheckCounts(serve.Counts{Messages: len(req.Messages), Tools: len(req.Tools)}); err != nil {
			return err
		}
		var err error
		if text, err = h.render(&req.chatFields); err != nil {
			return err
		}
		// As for chat completions, the template already wrote the special tokens it wants.
		addSpecial = req.AddSpecialTokens != nil && *req.AddSpecialTokens
	default:
		return invalid("prompt", "prompt or messages is required")
	}
	if err := h.e.CheckPromptText("prompt", text); err != nil {
		return err
	}
	ids, err := tok.Encode(text, addSpecial)
	if err != nil {
		return invalid("prompt", "cannot tokenize: %v", err)
	}
	writeJSON(w, http.StatusOK, tokenizeResponse{Tokens: nonNil(ids), Count: len(ids), MaxModelLen: h.e.Options().MaxModelLen})
	return nil
}

type detokenizeRequest struct {
	Model             string `json:"model"`
	Tokens            []int  `json:"tokens"`
	SkipSpecialTokens bool   `json:"skip_special_tokens"`
}

func (h *Handler) detokenize(w http.ResponseWriter, r *http.Request) error {
	var req detokenizeRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	if err := h.checkModel(req.Model); err != nil {
		return err
	}
	tok := h.e.Tokenizer()
	if tok == nil {
		return invalid("tokens", "this model has no tokenizer")
	}
	if req.Tokens == nil {
		return invalid("tokens", "tokens is required")
	}
	text, err := tok.Decode(req.Tokens, req.SkipSpecialTokens)
	if err != nil {
		return invalid("tokens", "%v", err)
	}
	if !utf8.ValidString(text) {
		return errors.New("detokenize produced invalid UTF-8")
	}
	writeJSON(w, http.StatusOK, map[string]string{"prompt": text})
	return nil
}

// checkModel rejects a model name the engine does not serve (never falling back to the base).
func (h *Handler) checkModel(name string) error {
	if name == "" {
		return nil
	}
	_, err := h.e.Serves(name)
	return err
}
