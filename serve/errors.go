package serve

import (
	"errors"
	"fmt"
)

// Kind classifies an engine error. One table (kindStatus in the gateways) maps kinds to HTTP
// statuses and gRPC codes, so both APIs agree on what every failure means.
type Kind int

const (
	KindInternal      Kind = iota
	KindInvalid            // bad parameters or input: 400 / InvalidArgument
	KindNotFound           // unknown model or adapter: 404 / NotFound
	KindOverloaded         // queue full: 429 / ResourceExhausted
	KindUnavailable        // not ready or draining: 503 / Unavailable
	KindCanceled           // client went away: 499 / Canceled
	KindDeadline           // deadline passed: 504 / DeadlineExceeded
	KindForbidden          // operation disabled by configuration: 403 / PermissionDenied
	KindUnprocessable      // an adapter that cannot be used with this model: 422 / FailedPrecondition
)

// Error is the one error type that leaves the engine. Param names the offending request field
// when there is one (OpenAI's error.param).
type Error struct {
	Kind  Kind
	Param string
	Msg   string
	Err   error
}

func (e *Error) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(kind Kind, param, format string, args ...any) *Error {
	return &Error{Kind: kind, Param: param, Msg: fmt.Sprintf(format, args...)}
}

// KindOf returns the kind of any error (KindInternal for errors not made by the engine).
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// ParamOf returns the request field an error is about, if any.
func ParamOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Param
	}
	return ""
}
