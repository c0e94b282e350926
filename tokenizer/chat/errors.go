package chat

import (
	"errors"
	"fmt"
)

// TemplateError is what a template raises through raise_exception(msg);
// Msg is the template's message verbatim.
type TemplateError struct{ Msg string }

func (e *TemplateError) Error() string { return e.Msg }

// RenderError is a runtime failure (type errors, undefined values used in
// arithmetic, limits hit) with the template line it happened on.
type RenderError struct {
	Line int
	Msg  string
}

func (e *RenderError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("chat template: line %d: %s", e.Line, e.Msg)
	}
	return "chat template: " + e.Msg
}

var (
	// Python ints are unbounded; int64 results that would wrap are refused
	// rather than silently wrong.
	errOverflow = errors.New("integer overflow (beyond 64-bit range)")
	errBreak    = errors.New("break")
	errContinue = errors.New("continue")
)

// errorf builds a RenderError; an error that already is one keeps its line.
func errorf(line int, format string, args ...any) error {
	return &RenderError{Line: line, Msg: fmt.Sprintf(format, args...)}
}

func withLine(err error, line int) error {
	var re *RenderError
	if errors.As(err, &re) || err == errBreak || err == errContinue {
		return err
	}
	var te *TemplateError
	if errors.As(err, &te) {
		return err
	}
	return &RenderError{Line: line, Msg: err.Error()}
}

func withLineIf(err error, line int) error {
	if err == nil {
		return nil
	}
	return withLine(err, line)
}
