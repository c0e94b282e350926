package openai_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/openai"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// quiet keeps the engine's info logs (adapter loads) out of test output.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var adapterNames = []string{"a_qv", "b_all_rslora", "c_patterns", "d_regex"}

// fixtureCase is one reference generation (internal/fixture).
type fixtureCase = fixture.Case

func fixtureDir(name string) string { return fixture.Dir(name) }

func loadCases(t testing.TB, name string) []fixtureCase { return fixture.Cases(t, name) }

// fixtureEngine serves a fixture model (no tokenizer) with its four adapters on the CPU backend.
func fixtureEngine(t testing.TB, name string) *serve.Engine {
	t.Helper()
	return testengine.New(t, name, serve.Options{MaxNumSeqs: 8, MaxBatchedTokens: 128, MaxModelLen: 128, Logger: quiet,
		AdapterRoots: []string{filepath.Join(fixtureDir(name), "adapters")}})
}

// demoEngine serves the built-in demo model, which has a tokenizer and a chat template.
func demoEngine(t testing.TB) (*serve.Engine, *chat.Template) {
	t.Helper()
	return demoEngineWith(t, serve.Options{MaxNumSeqs: 4, MaxBatchedTokens: 128, MaxModelLen: 256})
}

// demoEngineWith is demoEngine with the test's own limits (opt names the model and, unless it
// has a logger, keeps the engine quiet). Everything is closed when the test ends.
func demoEngineWith(t testing.TB, opt serve.Options) (*serve.Engine, *chat.Template) {
	t.Helper()
	b := cpu.New(2)
	cfg, w, tok, tmpl, err := demo.Build(b)
	if err != nil {
		t.Fatal(err)
	}
	opt.ModelName = demo.Name
	if opt.Logger == nil {
		opt.Logger = quiet
	}
	e, err := serve.NewEngine(cfg, b, w, tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); b.Close(); w.Close() })
	ct, err := chat.Parse(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	return e, ct
}

func newServer(t testing.TB, e *serve.Engine, opt openai.Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(openai.New(e, opt))
	t.Cleanup(srv.Close)
	return srv
}

// post sends a raw body and returns the status and body.
func post(t testing.TB, url, path, body string, header ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+path, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func get(t testing.TB, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// serveFuzzBody posts a fuzzed body to path on h as a loopback client would and fails the
// test unless the answer is a 200 (returned for the target's own checks on it) or a 4xx with
// an OpenAI error envelope: no 5xx, no bare error.
func serveFuzzBody(t *testing.T, h http.Handler, path string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Host = "127.0.0.1:8000" // httptest's example.com is a name this server does not answer to
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, req)
	switch {
	case rec.Code == http.StatusOK:
	case rec.Code >= 400 && rec.Code < 500:
		var env errorEnvelope
		if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || env.Error.Message == "" || env.Error.Type == "" {
			t.Fatalf("%d without an error envelope: %s", rec.Code, rec.Body)
		}
	default:
		t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
	}
	return rec
}

// errorShape checks the OpenAI error envelope and returns it.
type errorEnvelope struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func checkError(t testing.TB, status int, body []byte, wantStatus int, wantParam string) errorEnvelope {
	t.Helper()
	if status != wantStatus {
		t.Errorf("status %d, want %d (body %s)", status, wantStatus, body)
	}
	var raw map[string]map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := raw["error"][k]; !ok {
			t.Errorf("error body lacks %q: %s", k, body)
		}
	}
	var env errorEnvelope
	json.Unmarshal(body, &env)
	if env.Error.Message == "" || env.Error.Type == "" {
		t.Errorf("error body has empty message or type: %s", body)
	}
	if wantParam != "" && (env.Error.Param == nil || *env.Error.Param != wantParam) {
		t.Errorf("param %v, want %q (body %s)", env.Error.Param, wantParam, body)
	}
	return env
}
