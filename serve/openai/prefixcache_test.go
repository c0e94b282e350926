package openai_test

import (
	"context"
	"strings"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/loraplex/loraplex/serve/openai"
)

// usage.prompt_tokens_details.cached_tokens reports, as OpenAI does, the prompt tokens the
// prefix cache served: none the first time, every full 16-token page before the last prompt
// token the second time, in chat and completions responses, plain and streamed, and once per
// prompt with n > 1.
func TestUsageReportsCachedTokens(t *testing.T) {
	e, ct := demoEngine(t)
	srv := newServer(t, e, openai.Options{ChatTemplate: ct})
	client := newClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	system := strings.Repeat("You answer questions about Go source files briefly. ", 4)
	chat := oai.ChatCompletionNewParams{
		Model:     "loraplex-demo",
		Messages:  []oai.ChatCompletionMessageParamUnion{oai.SystemMessage(system), oai.UserMessage("hello")},
		MaxTokens: oai.Int(3), Temperature: oai.Float(0),
	}
	first, err := client.Chat.Completions.New(ctx, chat)
	if err != nil {
		t.Fatal(err)
	}
	prompt := first.Usage.PromptTokens
	full := (prompt - 1) / 16 * 16
	if prompt < 33 || first.Usage.PromptTokensDetails.CachedTokens != 0 {
		t.Fatalf("first request: usage %+v", first.Usage)
	}
	second, err := client.Chat.Completions.New(ctx, chat)
	if err != nil {
		t.Fatal(err)
	}
	if second.Usage.PromptTokensDetails.CachedTokens != full || second.Choices[0].Message.Content != first.Choices[0].Message.Content {
		t.Fatalf("second request: usage %+v text %q, want %d cached tokens and %q", second.Usage, second.Choices[0].Message.Content, full, first.Choices[0].Message.Content)
	}
	chat.StreamOptions = oai.ChatCompletionStreamOptionsParam{IncludeUsage: oai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(ctx, chat)
	var streamed int64 = -1
	for stream.Next() {
		if c := stream.Current(); len(c.Choices) == 0 {
			streamed = c.Usage.PromptTokensDetails.CachedTokens
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	if streamed != full {
		t.Fatalf("streamed usage: %d cached tokens, want %d", streamed, full)
	}

	// Completions: a first request computes the prompt (the chat template's tokens differ from
	// the bare text's), then n = 3 samples each find it cached; the prompt counts once.
	text := system + "And now a completion."
	comp := oai.CompletionNewParams{Model: "loraplex-demo", Prompt: oai.CompletionNewParamsPromptUnion{OfString: oai.String(text)},
		MaxTokens: oai.Int(2), Temperature: oai.Float(0)}
	warm, err := client.Completions.New(ctx, comp)
	if err != nil {
		t.Fatal(err)
	}
	cp := warm.Usage.PromptTokens
	if warm.Usage.PromptTokensDetails.CachedTokens != 0 {
		t.Fatalf("first completion: usage %+v", warm.Usage)
	}
	comp.N = oai.Int(3)
	resp, err := client.Completions.New(ctx, comp, option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Usage.PromptTokens != cp || resp.Usage.PromptTokensDetails.CachedTokens != (cp-1)/16*16 {
		t.Fatalf("n=3: usage %+v, want %d prompt tokens, %d cached", resp.Usage, cp, (cp-1)/16*16)
	}
}
