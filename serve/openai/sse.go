package openai

import (
	"encoding/json"
	"net/http"
)

// sse writes server-sent events the way OpenAI streams: `data: <json>\n\n`, flushed at once,
// ending with `data: [DONE]`.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func startSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // proxies must not buffer a token stream
	w.WriteHeader(http.StatusOK)
	s := &sse{w: w, rc: http.NewResponseController(w)}
	s.rc.Flush()
	return s
}

func (s *sse) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.raw(b)
}

func (s *sse) raw(b []byte) error { return s.event("", b) }

// event writes one event with data b, named by an `event:` line when name is set (the
// Responses API names every event; chat and completions name none).
func (s *sse) event(name string, b []byte) error {
	buf := make([]byte, 0, len(name)+len(b)+16)
	if name != "" {
		buf = append(buf, "event: "...)
		buf = append(buf, name...)
		buf = append(buf, '\n')
	}
	buf = append(buf, "data: "...)
	buf = append(buf, b...)
	buf = append(buf, "\n\n"...)
	if _, err := s.w.Write(buf); err != nil {
		return err
	}
	return s.rc.Flush()
}

// fail reports an error inside a stream that has already started (vLLM's in-band error event),
// then ends the stream.
func (s *sse) fail(err error) error {
	s.send(fromEngine(err).body())
	s.done()
	return err
}

func (s *sse) done() error { return s.raw([]byte("[DONE]")) }
