package serve

import (
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/grpc/codes"
)

// Kind classifies an engine error. kindTable below gives every kind its HTTP status, OpenAI
// error type and gRPC code side by side, and both gateways read it (KindInfo), so the two APIs
// agree on what every failure means.
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
	// KindConflict is an operation the served names' current state forbids: unloading an
	// adapter a loaded router uses, or touching a name whose load is in progress: 409 /
	// FailedPrecondition (the client must change that state first, e.g. unload the router,
	// rather than retry the same call at once, which is what Aborted would invite).
	KindConflict
	// The kinds below are the edges' own (no engine call returns them), in the table so that
	// every error a client sees comes from it.
	KindUnauthenticated // missing or wrong API key: 401 / Unauthenticated
	KindTooLarge        // a request body over the size limit: 413 / ResourceExhausted
	KindBadMethod       // a route called with the wrong HTTP method: 405 / Unimplemented
	KindBadMediaType    // a body not declared application/json: 415 / InvalidArgument

	numKinds // not a kind: the number of kinds, which sizes kindTable
)

// KindInfo is how the edges answer one kind of error.
type KindInfo struct {
	HTTPStatus int        // the status code of the HTTP answer
	OpenAIType string     // the OpenAI error body's "type"
	GRPCCode   codes.Code // the gRPC status code
}

// kindTable is the one table from kinds to answers. Types follow OpenAI where it has one and
// vLLM's exception names otherwise, so clients that switch on either keep working.
var kindTable = [...]KindInfo{
	KindInternal:      {http.StatusInternalServerError, "InternalServerError", codes.Internal},
	KindInvalid:       {http.StatusBadRequest, "invalid_request_error", codes.InvalidArgument},
	KindNotFound:      {http.StatusNotFound, "NotFoundError", codes.NotFound},
	KindOverloaded:    {http.StatusTooManyRequests, "rate_limit_error", codes.ResourceExhausted},
	KindUnavailable:   {http.StatusServiceUnavailable, "ServiceUnavailableError", codes.Unavailable},
	KindCanceled:      {499, "CanceledError", codes.Canceled}, // nginx's "client closed request"
	KindDeadline:      {http.StatusGatewayTimeout, "TimeoutError", codes.DeadlineExceeded},
	KindForbidden:     {http.StatusForbidden, "permission_error", codes.PermissionDenied},
	KindUnprocessable: {http.StatusUnprocessableEntity, "UnprocessableEntityError", codes.FailedPrecondition},
	KindConflict:      {http.StatusConflict, "ConflictError", codes.FailedPrecondition},

	KindUnauthenticated: {http.StatusUnauthorized, "authentication_error", codes.Unauthenticated},
	KindTooLarge:        {http.StatusRequestEntityTooLarge, "invalid_request_error", codes.ResourceExhausted},
	KindBadMethod:       {http.StatusMethodNotAllowed, "invalid_request_error", codes.Unimplemented},
	KindBadMediaType:    {http.StatusUnsupportedMediaType, "invalid_request_error", codes.InvalidArgument},
}

// A kind added without a row does not build: the table must have exactly numKinds rows (the
// uint conversions overflow, a compile error, when the lengths differ either way). A row left
// out in the middle is caught by TestKindTableCoversEveryKind.
const (
	_ = uint(len(kindTable) - int(numKinds))
	_ = uint(int(numKinds) - len(kindTable))
)

// Info returns how the edges answer k; kinds outside the table answer as KindInternal.
func (k Kind) Info() KindInfo {
	if k < 0 || k >= numKinds {
		k = KindInternal
	}
	return kindTable[k]
}

// Kinds lists every kind, in order (for tests that walk the table).
func Kinds() []Kind {
	out := make([]Kind, numKinds)
	for i := range out {
		out[i] = Kind(i)
	}
	return out
}

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
