package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// fake answers /v1/completions with a scripted SSE body, pausing between events so the gaps
// are measurable.
func fake(t *testing.T, status int, events ...string) *Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if status != http.StatusOK {
			http.Error(w, `{"error":{"message":"busy","type":"rate_limit_error"}}`, status)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range events {
			time.Sleep(5 * time.Millisecond)
			fmt.Fprintf(w, "data: %s\n\n", ev)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(srv.Close)
	c := NewClient(srv.URL, 5*time.Second, 0)
	t.Cleanup(c.Close)
	return c
}

func TestStreamParsing(t *testing.T) {
	p := &Planned{PromptIDs: []int{1, 2}, MaxTokens: 4, PromptLen: 2}
	for _, tc := range []struct {
		name     string
		status   int
		events   []string
		want     string
		tokens   int
		chunks   int
		itls     int
		withTTFT bool
	}{
		{"one token per chunk", 200, []string{
			`{"choices":[{"text":"a","token_ids":[1]}]}`,
			`{"choices":[{"text":"","token_ids":[2]}]}`, // a token that completed no UTF-8 text yet
			`{"choices":[{"text":"c","token_ids":[3]}]}`,
			`{"choices":[{"text":"d","token_ids":[4],"finish_reason":"length"}]}`,
			`{"choices":[],"usage":{"completion_tokens":4}}`, `[DONE]`,
		}, "", 4, 4, 3, true},
		{"coalesced chunk splits its gap", 200, []string{
			`{"choices":[{"text":"a","token_ids":[1]}]}`,
			`{"choices":[{"text":"bcd","token_ids":[2,3,4],"finish_reason":"length"}]}`, `[DONE]`,
		}, "", 4, 2, 3, true},
		{"text only server", 200, []string{
			`{"choices":[{"text":"a"}]}`, `{"choices":[{"text":"b","finish_reason":"length"}]}`, `[DONE]`,
		}, "", 2, 2, 1, true},
		{"in-band error", 200, []string{
			`{"choices":[{"text":"a","token_ids":[1]}]}`, `{"error":{"message":"x","type":"InternalServerError"}}`, `[DONE]`,
		}, "stream error: InternalServerError", 0, 1, 0, true},
		{"no DONE", 200, []string{`{"choices":[{"text":"a","token_ids":[1],"finish_reason":"length"}]}`},
			"stream ended without [DONE]", 0, 1, 0, true},
		{"no finish", 200, []string{`{"choices":[{"text":"a","token_ids":[1]}]}`, `[DONE]`}, "no finish_reason", 0, 1, 0, true},
		{"overloaded", 429, nil, "HTTP 429", 0, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fake(t, tc.status, tc.events...).Complete(context.Background(), "m", p)
			if r.Status != tc.want || r.Tokens != tc.tokens || r.Chunks != tc.chunks || len(r.ITL) != tc.itls {
				t.Fatalf("status %q tokens %d chunks %d itls %d; want %q %d %d %d", r.Status, r.Tokens, r.Chunks, len(r.ITL), tc.want, tc.tokens, tc.chunks, tc.itls)
			}
			if tc.withTTFT && r.TTFT < 4*time.Millisecond {
				t.Errorf("TTFT %v shorter than the server's first pause", r.TTFT)
			}
			if tc.name == "coalesced chunk splits its gap" && (r.ITL[0] != r.ITL[2] || r.ITL[0] > 5*time.Millisecond) {
				t.Errorf("coalesced gaps %v: want three equal parts of one ~5 ms gap", r.ITL)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-stop // a server that never answers (its handler can't see the client leave)
	}))
	defer srv.Close()
	defer close(stop)
	c := NewClient(srv.URL, 50*time.Millisecond, 0)
	defer c.Close()
	if r := c.Complete(context.Background(), "m", &Planned{PromptIDs: []int{1}, MaxTokens: 1}); r.Status != "timeout" {
		t.Errorf("status %q, want timeout", r.Status)
	}
}
