package openai

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/loraplex/loraplex/serve"
)

// Every engine kind is answered with the status and type of its row in the one table, in the
// OpenAI error envelope, and internal errors never show their details.
func TestEveryKindAnswersFromTheTable(t *testing.T) {
	h := &Handler{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, k := range serve.Kinds() {
		rec := httptest.NewRecorder()
		h.writeError(rec, httptest.NewRequest(http.MethodPost, "/v1/completions", nil), &serve.Error{Kind: k, Param: "p", Msg: "secret detail"})
		info := k.Info()
		var body errorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("kind %d: %v: %s", k, err, rec.Body)
		}
		if rec.Code != info.HTTPStatus || body.Error.Type != info.OpenAIType {
			t.Errorf("kind %d: %d %q, want %d %q", k, rec.Code, body.Error.Type, info.HTTPStatus, info.OpenAIType)
		}
		if (k == serve.KindInternal) != (body.Error.Message == "internal server error") {
			t.Errorf("kind %d: message %q", k, body.Error.Message)
		}
	}
}
