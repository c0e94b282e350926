package tokenizer

import (
	"errors"
	"fmt"
)

// ErrUnsupported is wrapped by every error about a component type (model,
// normalizer, pre-tokenizer, post-processor, decoder) this package does not
// implement. We refuse at load time instead of silently tokenizing differently.
var ErrUnsupported = errors.New("unsupported tokenizer component")

// ErrMalformed is wrapped by every error about a tokenizer.json that cannot be
// interpreted (bad JSON, missing or mistyped fields, inconsistent vocab).
var ErrMalformed = errors.New("malformed tokenizer.json")

// ErrInvalidUTF8 is returned by Encode for text that is not valid UTF-8: HF
// tokenizers only ever sees valid Rust strings, so there is no reference
// behaviour to reproduce for broken input.
var ErrInvalidUTF8 = errors.New("tokenizer: input text is not valid UTF-8")

// ErrUnknownID is wrapped by Decode/StreamDecoder errors for ids outside the vocabulary.
var ErrUnknownID = errors.New("tokenizer: unknown token id")

// ComponentError names the tokenizer.json component that could not be used.
type ComponentError struct {
	Component string // "model", "normalizer", "pre_tokenizer", "post_processor", "decoder"
	Type      string // the "type" field found in the JSON
	Err       error  // ErrUnsupported or ErrMalformed, possibly wrapped
}

func (e *ComponentError) Error() string {
	if e.Err == ErrUnsupported {
		return fmt.Sprintf("tokenizer: unsupported %s type %q", e.Component, e.Type)
	}
	if e.Type != "" {
		return fmt.Sprintf("tokenizer: %s %q: %v", e.Component, e.Type, e.Err)
	}
	return fmt.Sprintf("tokenizer: %s: %v", e.Component, e.Err)
}

func (e *ComponentError) Unwrap() error { return e.Err }

func unsupported(component, typ string) error {
	return &ComponentError{Component: component, Type: typ, Err: ErrUnsupported}
}

// malformed builds an error naming the offending JSON field.
func malformed(field string, format string, args ...any) error {
	return fmt.Errorf("%w: field %q: %s", ErrMalformed, field, fmt.Sprintf(format, args...))
}
