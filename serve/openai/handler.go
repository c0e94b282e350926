// Package openai is the OpenAI-style HTTP gateway with vLLM's extensions: completions, chat
// completions, responses (OpenAI's Responses API, on the chat path), models,
// tokenize/detokenize and runtime adapter and router loading, all on serve.Engine.
package openai

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/toolcall"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// Options configure a Handler.
type Options struct {
	// APIKey, when set, must be sent as "Authorization: Bearer <key>" on every route but /health.
	APIKey string
	// MaxBodyBytes bounds request bodies (default 16 MiB); larger ones get 413.
	MaxBodyBytes int64
	// AllowRuntimeAdapterUpdates enables /v1/load_lora_adapter and /v1/unload_lora_adapter
	// (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING), and /v1/load_router and /v1/unload_router;
	// without it they answer 403.
	AllowRuntimeAdapterUpdates bool
	// ChatTemplate renders /v1/chat/completions and /tokenize messages; nil: chat is refused.
	ChatTemplate *chat.Template
	// ChatTokens are the special tokens templates see (bos_token, eos_token, ...).
	ChatTokens map[string]string
	// ToolCallParser is the model's tool-call format (--tool-call-parser); nil: the one the
	// chat template teaches, if it teaches exactly one (toolcall.Detect). Without a format,
	// requests that want tool calls are refused.
	ToolCallParser *toolcall.Format
	// MaxN bounds a request's n (default 16): each choice is one engine request.
	MaxN int
	// AllowedOrigins and AllowedHosts widen what browsers may reach when APIKey is empty (see
	// browser.go): origins as "scheme://host[:port]", host names without port; "*" allows
	// any. Loopback names, IP literals and the server's own origin are always allowed.
	AllowedOrigins []string
	AllowedHosts   []string
	Logger         *slog.Logger
}

// Handler serves the HTTP API of one engine.
type Handler struct {
	e      *serve.Engine
	opt    Options
	log    *slog.Logger
	routes map[string]route
	guard  *browserGuard
	// toolFormat is how the model writes tool calls (nil: unknown).
	toolFormat *toolcall.Format
}

type route struct {
	method string
	h      func(http.ResponseWriter, *http.Request) error
	open   bool // reachable without the API key
}

// New builds the handler.
func New(e *serve.Engine, opt Options) *Handler {
	if opt.MaxBodyBytes <= 0 {
		opt.MaxBodyBytes = 16 << 20
	}
	if opt.MaxN <= 0 {
		opt.MaxN = 16
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	h := &Handler{e: e, opt: opt, log: opt.Logger, guard: newBrowserGuard(opt.AllowedOrigins, opt.AllowedHosts), toolFormat: toolcall.ForModel(opt.ToolCallParser, opt.ChatTemplate.Source())}
	h.routes = map[string]route{
		"/health":                 {method: http.MethodGet, h: h.health, open: true},
		"/v1/models":              {method: http.MethodGet, h: h.models},
		modelsPrefix:              {method: http.MethodGet, h: h.model},               // any /v1/models/{id}
		"/version":                {method: http.MethodGet, h: h.version, open: true}, // as vLLM, outside /v1
		"/v1/completions":         {method: http.MethodPost, h: h.completions},
		"/v1/chat/completions":    {method: http.MethodPost, h: h.chatCompletions},
		"/v1/responses":           {method: http.MethodPost, h: h.responses},
		"/tokenize":               {method: http.MethodPost, h: h.tokenize},
		"/detokenize":             {method: http.MethodPost, h: h.detokenize},
		"/v1/load_lora_adapter":   {method: http.MethodPost, h: h.loadAdapter},
		"/v1/unload_lora_adapter": {method: http.MethodPost, h: h.unloadAdapter},
		"/v1/load_router":         {method: http.MethodPost, h: h.loadRouter},
		"/v1/unload_router":       {method: http.MethodPost, h: h.unloadRouter},
	}
	return h
}

// ServeHTTP routes, authenticates, bounds the body and turns every failure, panics included,
// into an OpenAI error body. Routing is a plain table rather than http.ServeMux so that unknown
// paths and wrong methods get JSON errors too.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			h.log.Error("panic in handler", "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
			if !sw.wrote {
				// Through the kind table like every other error (this path once wrote a body of
				// its own, with a type but no status of the table's).
				ie := internalError()
				writeJSON(sw, ie.status, ie.body())
			}
		}
	}()
	rt, ok := h.routes[r.URL.Path]
	if !ok && strings.HasPrefix(r.URL.Path, modelsPrefix) {
		rt, ok = h.routes[modelsPrefix]
	}
	if !ok {
		h.writeError(sw, r, notFound("", "no route %s", r.URL.Path))
		return
	}
	if r.Method != rt.method && !(rt.method == http.MethodGet && r.Method == http.MethodHead) {
		sw.Header().Set("Allow", rt.method)
		h.writeError(sw, r, kindError(serve.KindBadMethod, "", fmt.Sprintf("%s %s is not allowed; use %s", r.Method, r.URL.Path, rt.method)))
		return
	}
	if !rt.open && h.opt.APIKey == "" {
		if err := h.guard.check(r); err != nil {
			h.writeError(sw, r, err)
			return
		}
	}
	if !rt.open && h.opt.APIKey != "" && !h.authorized(r) {
		ae := kindError(serve.KindUnauthenticated, "", "missing or incorrect API key")
		ae.code = "invalid_api_key"
		h.writeError(sw, r, ae)
		return
	}
	if r.Method == http.MethodPost {
		if err := jsonBody(r); err != nil {
			h.writeError(sw, r, err)
			return
		}
	}
	r.Body = http.MaxBytesReader(sw, r.Body, h.opt.MaxBodyBytes)
	if err := rt.h(sw, r); err != nil {
		if sw.wrote {
			// Headers are gone (a stream had started); the handler reported in-band.
			h.log.Debug("error after response started", "path", r.URL.Path, "err", err)
			return
		}
		h.writeError(sw, r, err)
	}
}

func (h *Handler) authorized(r *http.Request) bool {
	// The scheme is case-insensitive (RFC 9110 11.1), as on gRPC.
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(h.opt.APIKey)) == 1
}

// statusWriter remembers whether the response has started, so errors after that point are not
// written as a second response.
type statusWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush on the real writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (h *Handler) health(w http.ResponseWriter, r *http.Request) error {
	if !h.e.Ready() {
		return kindError(serve.KindUnavailable, "", "the server is not ready")
	}
	w.WriteHeader(http.StatusOK)
	return nil
}
