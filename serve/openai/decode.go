package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/loraplex/loraplex/serve"
)

// decode reads a JSON object body into dst. Unknown fields are ignored, as OpenAI does; a
// value of the wrong type is a 400 naming the field; an oversized body is a 413.
func (h *Handler) decode(r *http.Request, dst any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			ae := kindError(serve.KindTooLarge, "", fmt.Sprintf("the request body is larger than %d bytes", mb.Limit))
			ae.code = "request_too_large"
			return ae
		}
		return invalid("", "reading the request body: %v", err)
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return invalid("", "the request body is empty; send a JSON object")
	}
	if body[0] != '{' {
		return invalid("", "the request body must be a JSON object")
	}
	return jsonError(json.Unmarshal(body, dst))
}

// jsonError turns encoding/json's errors into 400s a client can act on.
func jsonError(err error) error {
	if err == nil {
		return nil
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return invalid("", "malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		field := jsonField(te.Field)
		if field == "" {
			return invalid("", "the request body must be a JSON object")
		}
		return invalid(field, "field %q must be %s, got %s", field, typeName(te.Type.Kind().String()), te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("", "truncated JSON")
	case errors.As(err, new(*apiError)):
		return err
	}
	return invalid("", "invalid JSON: %v", err)
}

// embedded lists the Go names of embedded request structs, which encoding/json puts into field
// paths but clients never wrote.
var embedded = map[string]bool{"samplingFields": true, "chatFields": true, "refusedFields": true, "refusedChatFields": true, "structuredFields": true}

func jsonField(path string) string {
	parts := strings.Split(path, ".")
	out := parts[:0]
	for _, p := range parts {
		if !embedded[p] {
			out = append(out, p)
		}
	}
	return strings.Join(out, ".")
}

func typeName(kind string) string {
	switch {
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"):
		return "an integer in range"
	case strings.HasPrefix(kind, "float"):
		return "a number in range"
	case kind == "bool":
		return "a boolean"
	case kind == "string":
		return "a string"
	case kind == "slice":
		return "an array"
	case kind == "struct", kind == "map":
		return "an object"
	}
	return "of another type"
}

// isNull reports an absent or null raw value.
func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// stringOrList decodes OpenAI's `stop`: a string, a list of strings, or null. A list of more
// than maxItems strings is refused at item maxItems+1, so a huge list is not decoded (a
// million stop strings took ~0.6 s of decoding alone).
func stringOrList(raw json.RawMessage, param string, maxItems int) ([]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	notList := invalid(param, "field %q must be a string or an array of strings", param)
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return nil, notList
	}
	many := []string{}
	for dec.More() {
		if len(many) == maxItems {
			return nil, invalid(param, "at most %d %s strings, got more", maxItems, param)
		}
		var s string
		if err := dec.Decode(&s); err != nil {
			return nil, notList
		}
		many = append(many, s)
	}
	if t, err := dec.Token(); err != nil || t != json.Delim(']') {
		return nil, notList
	}
	return many, nil
}
