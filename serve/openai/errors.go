package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/loraplex/loraplex/serve"
)

// kindStatus is the one table from engine error kinds to HTTP statuses and OpenAI error types.
// Types follow OpenAI where it has one and vLLM's exception names otherwise, so clients that
// switch on either keep working.
var kindStatus = map[serve.Kind]struct {
	status int
	typ    string
}{
	serve.KindInvalid:       {http.StatusBadRequest, "invalid_request_error"},
	serve.KindNotFound:      {http.StatusNotFound, "NotFoundError"},
	serve.KindOverloaded:    {http.StatusTooManyRequests, "rate_limit_error"},
	serve.KindUnavailable:   {http.StatusServiceUnavailable, "ServiceUnavailableError"},
	serve.KindCanceled:      {499, "CanceledError"}, // nginx's "client closed request"
	serve.KindDeadline:      {http.StatusGatewayTimeout, "TimeoutError"},
	serve.KindForbidden:     {http.StatusForbidden, "permission_error"},
	serve.KindUnprocessable: {http.StatusUnprocessableEntity, "UnprocessableEntityError"},
	serve.KindInternal:      {http.StatusInternalServerError, "InternalServerError"},
}

// apiError is an error on its way to a client.
type apiError struct {
	status int
	typ    string
	msg    string
	param  string
	code   string
}

func (e *apiError) Error() string { return e.msg }

// fromEngine converts any error into an apiError through kindStatus.
func fromEngine(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	k := serve.KindOf(err)
	s, ok := kindStatus[k]
	if !ok {
		s = kindStatus[serve.KindInternal]
	}
	msg := err.Error()
	if k == serve.KindInternal {
		// Internal details stay in the log; the client learns only that it was our fault.
		msg = "internal server error"
	}
	return &apiError{status: s.status, typ: s.typ, msg: msg, param: serve.ParamOf(err)}
}

// invalid is a 400 about one request field.
func invalid(param, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: "invalid_request_error", param: param, msg: fmt.Sprintf(format, args...)}
}

func notFound(param, format string, args ...any) *apiError {
	e := fromEngine(&serve.Error{Kind: serve.KindNotFound, Param: param, Msg: fmt.Sprintf(format, args...)})
	return e
}

// errorBody is OpenAI's error envelope.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (e *apiError) body() errorBody {
	d := errorDetail{Message: e.msg, Type: e.typ}
	if e.param != "" {
		d.Param = &e.param
	}
	if e.code != "" {
		d.Code = &e.code
	}
	return errorBody{Error: d}
}

// writeError answers with err as JSON. Internal errors are logged with their details.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := fromEngine(err)
	if ae.status >= 500 {
		h.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", ae.status, "err", err)
	} else {
		h.log.Debug("request rejected", "method", r.Method, "path", r.URL.Path, "status", ae.status, "err", err)
	}
	if ae.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.Itoa(serve.RetryAfterSeconds))
	}
	writeJSON(w, ae.status, ae.body())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"message":"internal server error","type":"InternalServerError","param":null,"code":null}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
