package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
)

// Prefix caching is on by default and follows vLLM's flags: --no-enable-prefix-caching turns it
// off, --enable-prefix-caching on, and the last one given wins.
func TestPrefixCachingFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--no-enable-prefix-caching"}, false},
		{[]string{"--enable-prefix-caching"}, true},
		{[]string{"--enable-prefix-caching=false"}, false},
		{[]string{"--enable-prefix-caching", "--no-enable-prefix-caching"}, false},
		{[]string{"--no-enable-prefix-caching", "--enable-prefix-caching"}, true},
	} {
		cfg, err := parseFlags(c.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if cfg.prefixCaching != c.want {
			t.Errorf("%v: prefix caching %v, want %v", c.args, cfg.prefixCaching, c.want)
		}
	}
}

// --deterministic is off by default and turns the engine's batch-invariant mode on.
func TestDeterministicFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--deterministic"}, true},
		{[]string{"--deterministic=false"}, false},
	} {
		cfg, err := parseFlags(c.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if cfg.deterministic != c.want {
			t.Errorf("%v: deterministic %v, want %v", c.args, cfg.deterministic, c.want)
		}
	}
}

// --tool-call-parser takes vLLM's parser names and refuses others, naming the known ones; the
// format it names replaces the one the chat template teaches (the demo's is hermes), on the
// HTTP API and on gRPC alike.
func TestToolCallParserFlag(t *testing.T) {
	if _, err := parseFlags([]string{"--tool-call-parser", "pythonic"}, io.Discard); err == nil || !strings.Contains(err.Error(), "llama3_json") {
		t.Errorf("unknown parser: %v", err)
	}
	// The demo writes Mistral's markup (forced by a regex); parsed as mistral, it is a call.
	body := `{"messages":[{"role":"user","content":"x"}],"max_tokens":80,"tools":[{"type":"function","function":{"name":"f"}}],` +
		`"guided_regex":"\\[TOOL_CALLS\\]\\[\\{\"name\": \"f\", \"arguments\": \\{\\}\\}\\]"}`
	for _, c := range []struct {
		args  []string
		calls int
	}{{nil, 0}, {[]string{"--tool-call-parser", "mistral"}, 1}} {
		url, logs, stop := start(t, append([]string{"--device", "cpu", "--grpc-addr", "127.0.0.1:0"}, c.args...)...)
		resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Choices []struct {
				Message struct {
					Content   *string           `json:"content"`
					ToolCalls []json.RawMessage `json:"tool_calls"`
				} `json:"message"`
			} `json:"choices"`
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(b, &out); err != nil || resp.StatusCode != 200 || len(out.Choices[0].Message.ToolCalls) != c.calls {
			t.Errorf("%v: %d %s", c.args, resp.StatusCode, b)
		}
		if calls := grpcToolCalls(t, logs); calls != c.calls {
			t.Errorf("%v: %d calls on gRPC, want %d", c.args, calls, c.calls)
		}
		if err := stop(); err != nil {
			t.Error(err)
		}
	}
}

// grpcToolCalls sends TestToolCallParserFlag's request to the gRPC address in the server's log
// and counts the calls its stream starts.
func grpcToolCalls(t *testing.T, logs *logBuffer) int {
	t.Helper()
	conn, err := grpc.NewClient(grpcAddr(t, logs), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := loraplexv1.NewLoraplexClient(conn).Generate(ctx, &loraplexv1.GenerateRequest{
		Prompt: &loraplexv1.GenerateRequest_Messages{Messages: &loraplexv1.ChatPrompt{
			Messages: []*loraplexv1.ChatMessage{{Role: "user", Content: "x"}}, Tools: []*loraplexv1.Tool{{Name: "f"}}}},
		Params: &loraplexv1.SamplingParams{MaxTokens: 80, StructuredOutput: &loraplexv1.StructuredOutput{
			Kind: &loraplexv1.StructuredOutput_Regex{Regex: `\[TOOL_CALLS\]\[\{"name": "f", "arguments": \{\}\}\]`}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return calls
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range r.GetToolCalls() {
			if c.GetId() != "" {
				calls++
			}
		}
	}
}
