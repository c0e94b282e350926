package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/loraplex/loraplex/serve"
)

// apiError is an error on its way to a client.
type apiError struct {
	status int
	typ    string
	msg    string
	param  string
	code   string
}

func (e *apiError) Error() string { return e.msg }

// fromEngine converts any error into an apiError through the engine's kind table
// (serve.Kind.Info), the one place statuses and types come from.
func fromEngine(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	k := serve.KindOf(err)
	msg := err.Error()
	if k == serve.KindInternal {
		// Internal details stay in the log; the client learns only that it was our fault.
		msg = "internal server error"
	}
	return kindError(k, serve.ParamOf(err), msg)
}

// kindError is the answer for kind k, with its status and type from the kind table.
func kindError(k serve.Kind, param, msg string) *apiError {
	info := k.Info()
	return &apiError{status: info.HTTPStatus, typ: info.OpenAIType, msg: msg, param: param}
}

// codedError is kindError with OpenAI's machine-readable error.code set.
func codedError(k serve.Kind, code, msg string) *apiError {
	e := kindError(k, "", msg)
	e.code = code
	return e
}

// internalError is what a client learns of a failure of ours: details stay in the log.
func internalError() *apiError { return kindError(serve.KindInternal, "", "internal server error") }

// invalid is a 400 about one request field.
func invalid(param, format string, args ...any) *apiError {
	return kindError(serve.KindInvalid, param, fmt.Sprintf(format, args...))
}

func notFound(param, format string, args ...any) *apiError {
	return kindError(serve.KindNotFound, param, fmt.Sprintf(format, args...))
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
		ie := internalError()
		status = ie.status
		b, _ = json.Marshal(ie.body()) // strings and nil pointers only: cannot fail
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
