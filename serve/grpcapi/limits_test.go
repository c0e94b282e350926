package grpcapi_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// gRPC bounds every list and prompt before any work, with the same limits as HTTP: each is
// InvalidArgument naming the limit, and the server serves the next request as before.
func TestRequestLimits(t *testing.T) {
	e, tmpl := demoEngine(t)
	ts := startServer(t, e, grpcapi.Options{ChatTemplate: tmpl})
	ctx := ctxTimeout(t, 30*time.Second)
	tooLong := strings.Repeat("a", e.MaxPromptBytes()+1)
	text := func(s string) *loraplexv1.GenerateRequest_Text { return &loraplexv1.GenerateRequest_Text{Text: s} }
	one := &loraplexv1.SamplingParams{MaxTokens: 1}
	messages := make([]*loraplexv1.ChatMessage, serve.MaxMessages+1)
	for i := range messages {
		messages[i] = &loraplexv1.ChatMessage{Role: "user", Content: "hi"}
	}
	cases := []struct {
		name string
		req  *loraplexv1.GenerateRequest
		says string
	}{
		{"text beyond the byte bound", &loraplexv1.GenerateRequest{Prompt: text(tooLong), Params: one}, "bytes"},
		{"chat beyond it", &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Messages{Messages: &loraplexv1.ChatPrompt{
			Messages: []*loraplexv1.ChatMessage{{Role: "user", Content: tooLong}}}}, Params: one}, "bytes"},
		{"too many stop strings", &loraplexv1.GenerateRequest{Prompt: text("hi"), Params: &loraplexv1.SamplingParams{MaxTokens: 1,
			Stop: strings.Split(strings.Repeat("x", serve.MaxStopStrings+1), "")}}, "at most"},
		{"a million stop strings", &loraplexv1.GenerateRequest{Prompt: text("hi"), Params: &loraplexv1.SamplingParams{MaxTokens: 1,
			Stop: strings.Split(strings.Repeat("x", 1_000_000), "")}}, "at most"},
		{"a too long stop string", &loraplexv1.GenerateRequest{Prompt: text("hi"), Params: &loraplexv1.SamplingParams{MaxTokens: 1,
			Stop: []string{strings.Repeat("x", serve.MaxStopStringBytes+1)}}}, "at most"},
		{"too many stop_token_ids", &loraplexv1.GenerateRequest{Prompt: text("hi"), Params: &loraplexv1.SamplingParams{MaxTokens: 1,
			StopTokenIds: make([]int32, serve.MaxStopTokenIDs+1)}}, "at most"},
		{"too many messages", &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Messages{Messages: &loraplexv1.ChatPrompt{
			Messages: messages}}, Params: one}, "at most"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := generateErr(ctx, ts.client, c.req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), c.says) {
				t.Errorf("got %.300v, want InvalidArgument naming the limit (%q)", err, c.says)
			}
		})
	}
	_, err := ts.client.Tokenize(ctx, &loraplexv1.TokenizeRequest{Input: &loraplexv1.TokenizeRequest_Text{Text: tooLong}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "bytes") {
		t.Errorf("Tokenize beyond the byte bound: %.300v", err)
	}
	st, err := ts.client.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: text("hi"), Params: &loraplexv1.SamplingParams{MaxTokens: 2, Stop: []string{"x", "y"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := collect(t, st); err != nil {
		t.Errorf("valid request after the limits: %v", err)
	}
}
