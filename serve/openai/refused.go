package openai

import (
	"bytes"
	"encoding/json"
	"slices"
)

// Unknown request fields are ignored, as OpenAI does, but a field that would change what is
// generated must never be: a client cannot tell a silently ignored field from one that had no
// effect. The fields below are OpenAI's and vLLM's that change the output and that this server
// does not implement; a request that sets one to anything but null or its neutral value (false,
// an empty list, ...) is a 400 naming it. This is the one list of them. (Constrained decoding
// and tool fields are their own feature's, and the Responses API's own fields, which only it
// has, are refused in responses.go.)

// refusedFields are refused on completions and chat alike.
type refusedFields struct {
	UseBeamSearch          json.RawMessage `json:"use_beam_search"`
	IncludeStopStrInOutput json.RawMessage `json:"include_stop_str_in_output"`
	TruncatePromptTokens   json.RawMessage `json:"truncate_prompt_tokens"`
	AllowedTokenIDs        json.RawMessage `json:"allowed_token_ids"`
	BadWords               json.RawMessage `json:"bad_words"`
	LogitsProcessors       json.RawMessage `json:"logits_processors"`
}

// refusedChatFields are refused on chat only (completions implement echo).
type refusedChatFields struct {
	ChatTemplate json.RawMessage `json:"chat_template"`
	Echo         json.RawMessage `json:"echo"`
	Audio        json.RawMessage `json:"audio"`
	Modalities   json.RawMessage `json:"modalities"`
}

func (f *refusedFields) check() error {
	return firstSet([]namedRaw{{"use_beam_search", f.UseBeamSearch}, {"include_stop_str_in_output", f.IncludeStopStrInOutput},
		{"truncate_prompt_tokens", f.TruncatePromptTokens}, {"allowed_token_ids", f.AllowedTokenIDs}, {"bad_words", f.BadWords},
		{"logits_processors", f.LogitsProcessors}})
}

func (f *refusedChatFields) check() error {
	return firstSet([]namedRaw{{"chat_template", f.ChatTemplate}, {"echo", f.Echo}, {"audio", f.Audio}, {"modalities", f.Modalities}})
}

type namedRaw struct {
	name string
	raw  json.RawMessage
}

// neutralValues change nothing whatever the field: absent, null, false, empty, and the text
// modality that is all this server produces.
var neutralValues = []string{"", "null", "false", "[]", "{}", `""`, `["text"]`}

func firstSet(fields []namedRaw) error {
	for _, f := range fields {
		if !neutral(f.raw) {
			return invalid(f.name, "%s is not supported by this server", f.name)
		}
	}
	return nil
}

// neutral reports a value that changes nothing (one of neutralValues, white space aside).
func neutral(raw json.RawMessage) bool {
	return slices.Contains(neutralValues, string(bytes.Join(bytes.Fields(raw), nil)))
}
