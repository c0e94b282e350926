package grpcapi_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// Every engine kind maps to its gRPC code and HTTP status side by side, from the one table;
// kinds outside the table are Internal. A kind added without a line here fails the test.
func TestEveryKindMapsOnBothEdges(t *testing.T) {
	want := map[serve.Kind]struct {
		http int
		code codes.Code
	}{
		serve.KindInternal:        {500, codes.Internal},
		serve.KindInvalid:         {400, codes.InvalidArgument},
		serve.KindNotFound:        {404, codes.NotFound},
		serve.KindOverloaded:      {429, codes.ResourceExhausted},
		serve.KindUnavailable:     {503, codes.Unavailable},
		serve.KindCanceled:        {499, codes.Canceled},
		serve.KindDeadline:        {504, codes.DeadlineExceeded},
		serve.KindForbidden:       {403, codes.PermissionDenied},
		serve.KindUnprocessable:   {422, codes.FailedPrecondition},
		serve.KindConflict:        {409, codes.FailedPrecondition},
		serve.KindUnauthenticated: {401, codes.Unauthenticated},
		serve.KindTooLarge:        {413, codes.ResourceExhausted},
		serve.KindBadMethod:       {405, codes.Unimplemented},
		serve.KindBadMediaType:    {415, codes.InvalidArgument},
	}
	for _, k := range serve.Kinds() {
		w, ok := want[k]
		if !ok {
			t.Errorf("kind %d has no expected mapping in this test", k)
			continue
		}
		if got := grpcapi.CodeOf(k); got != w.code {
			t.Errorf("CodeOf(%d) = %v, want %v", k, got, w.code)
		}
		if got := k.Info().HTTPStatus; got != w.http {
			t.Errorf("kind %d: HTTP %d, want %d", k, got, w.http)
		}
	}
	if got := grpcapi.CodeOf(serve.Kind(99)); got != codes.Internal {
		t.Errorf("CodeOf(99) = %v, want Internal", got)
	}
}

// generateErr opens a Generate stream and returns the error its first Recv gets.
func generateErr(ctx context.Context, c loraplexv1.LoraplexClient, req *loraplexv1.GenerateRequest) error {
	st, err := c.Generate(ctx, req)
	if err != nil {
		return err
	}
	_, err = st.Recv()
	return err
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v, want %v", what, err, code)
	}
}

// TestErrorCodes reaches the table's codes through real calls.
func TestErrorCodes(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{MaxModelLen: longLen})
	ts := startServer(t, e, grpcapi.Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	c := ts.client

	wantCode(t, "unknown model", generateErr(ctx, c, &loraplexv1.GenerateRequest{Model: "nope", Prompt: tokenPrompt(1)}), codes.NotFound)
	wantCode(t, "no prompt", generateErr(ctx, c, &loraplexv1.GenerateRequest{}), codes.InvalidArgument)
	wantCode(t, "text without tokenizer", generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Text{Text: "hi"}}), codes.InvalidArgument)
	wantCode(t, "messages without template", generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: &loraplexv1.GenerateRequest_Messages{Messages: &loraplexv1.ChatPrompt{}}}), codes.InvalidArgument)
	wantCode(t, "out-of-vocab token", generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1, 320)}), codes.InvalidArgument)
	wantCode(t, "negative token", generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(-1)}), codes.InvalidArgument)

	// Bad parameters name the field in a BadRequest detail.
	err := generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1), Params: &loraplexv1.SamplingParams{Temperature: -1}})
	wantCode(t, "negative temperature", err, codes.InvalidArgument)
	var field string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 {
			field = br.GetFieldViolations()[0].GetField()
		}
	}
	if field != "temperature" {
		t.Errorf("bad temperature: field violation %q in %v", field, status.Convert(err).Details())
	}
	for name, p := range map[string]*loraplexv1.SamplingParams{
		"top_p":     {TopP: 2},
		"top_k":     {TopK: -2},
		"min_p":     {MinP: -0.5},
		"max_tokns": {MaxTokens: longLen},
		"min_tokns": {MaxTokens: 2, MinTokens: 3},
		"logprobs":  {Logprobs: 21},
		"stop ids":  {StopTokenIds: []int32{9999}},
		"stop strs": {Stop: []string{"x"}}, // no tokenizer
	} {
		wantCode(t, name, generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1), Params: p}), codes.InvalidArgument)
	}

	// Runtime adapter updates are disabled by default.
	_, err = c.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: "x", Path: filepath.Join(fixtureDir("llama"), "adapters", "a_qv")})
	wantCode(t, "load disabled", err, codes.PermissionDenied)
	_, err = c.UnloadAdapter(ctx, &loraplexv1.UnloadAdapterRequest{Name: "a_qv"})
	wantCode(t, "unload disabled", err, codes.PermissionDenied)

	// Tokenize and Detokenize need a tokenizer, and a model that exists.
	_, err = c.Tokenize(ctx, &loraplexv1.TokenizeRequest{Input: &loraplexv1.TokenizeRequest_Text{Text: "hi"}})
	wantCode(t, "tokenize without tokenizer", err, codes.InvalidArgument)
	_, err = c.Detokenize(ctx, &loraplexv1.DetokenizeRequest{Model: "nope", TokenIds: []int32{1}})
	wantCode(t, "detokenize unknown model", err, codes.NotFound)

	// A panic under the service (here in the server's own interceptor) is Internal, and the
	// server keeps serving.
	_, err = c.ListModels(metadata.AppendToOutgoingContext(ctx, panicKey, "1"), &loraplexv1.ListModelsRequest{})
	wantCode(t, "panic", err, codes.Internal)
	if status.Convert(err).Message() != "internal server error" {
		t.Errorf("panic leaked details: %v", err)
	}
	if _, err := c.ListModels(ctx, &loraplexv1.ListModelsRequest{}); err != nil {
		t.Errorf("after a panic: %v", err)
	}

	// Shutdown: Unavailable, for a request in flight (after the tokens it already has) and for
	// a new one.
	st, err := c.Generate(ctx, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1), Params: long})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	e.Close()
	_, _, _, err = collect(t, st)
	wantCode(t, "in flight at shutdown", err, codes.Unavailable)
	wantCode(t, "closed engine", generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1)}), codes.Unavailable)
}

// TestAdapterLoadErrors: with updates allowed, a missing folder is NotFound, an adapter of
// another model FailedPrecondition, a bad name InvalidArgument, a path outside the adapter
// roots PermissionDenied.
func TestAdapterLoadErrors(t *testing.T) {
	// A second adapter root holding a copy of a qwen3 adapter: inside the roots, wrong shapes.
	other := t.TempDir()
	copyDir(t, filepath.Join(fixtureDir("qwen3"), "adapters", "a_qv"), filepath.Join(other, "qwen3_a_qv"))
	e := fixtureEngine(t, "llama", serve.Options{AdapterRoots: []string{other}})
	ts := startServer(t, e, grpcapi.Options{AllowRuntimeAdapterUpdates: true})
	ctx := ctxTimeout(t, 10*time.Second)
	load := func(name, path string) error {
		_, err := ts.client.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: name, Path: path})
		return err
	}
	dir := fixtureDir("llama")
	wantCode(t, "missing folder", load("m", filepath.Join(dir, "adapters", "nothing")), codes.NotFound)
	wantCode(t, "no path", load("m", ""), codes.InvalidArgument)
	wantCode(t, "empty name", load("", filepath.Join(dir, "adapters", "a_qv")), codes.InvalidArgument)
	wantCode(t, "base model's name", load("llama", filepath.Join(dir, "adapters", "a_qv")), codes.InvalidArgument)
	wantCode(t, "outside the roots", load("q", filepath.Join(fixtureDir("qwen3"), "adapters", "a_qv")), codes.PermissionDenied)
	wantCode(t, "other model's adapter", load("q", filepath.Join(other, "qwen3_a_qv")), codes.FailedPrecondition)
	// A symlink inside a root that points out of it is refused like the path it points to.
	target, err := filepath.Abs(filepath.Join(fixtureDir("qwen3"), "adapters"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(other, "escape")); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "symlink out of the roots", load("q", filepath.Join(other, "escape", "a_qv")), codes.PermissionDenied)
	_, err = ts.client.UnloadAdapter(ctx, &loraplexv1.UnloadAdapterRequest{Name: "nope"})
	wantCode(t, "unload unknown", err, codes.NotFound)
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}

// TestAuth: with an API key, calls without it (or with a wrong one) are Unauthenticated, and
// health checks need none.
func TestAuth(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{})
	ts := startServer(t, e, grpcapi.Options{APIKey: "sekret"})
	ctx := ctxTimeout(t, 10*time.Second)
	c := ts.client
	_, err := c.ListModels(ctx, &loraplexv1.ListModelsRequest{})
	wantCode(t, "no key, unary", err, codes.Unauthenticated)
	wantCode(t, "no key, stream", generateErr(ctx, c, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1)}), codes.Unauthenticated)
	bad := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer wrong")
	_, err = c.ListModels(bad, &loraplexv1.ListModelsRequest{})
	wantCode(t, "wrong key", err, codes.Unauthenticated)
	basic := metadata.AppendToOutgoingContext(ctx, "authorization", "Basic sekret")
	_, err = c.ListModels(basic, &loraplexv1.ListModelsRequest{})
	wantCode(t, "wrong scheme", err, codes.Unauthenticated)

	good := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer sekret")
	if _, err := c.ListModels(good, &loraplexv1.ListModelsRequest{}); err != nil {
		t.Fatal(err)
	}
	st, err := c.Generate(good, &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1), Params: &loraplexv1.SamplingParams{MaxTokens: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := collect(t, st); err != nil {
		t.Fatal(err)
	}
	h, err := healthpb.NewHealthClient(ts.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health without a key: %v %v", h, err)
	}
}

// TestOverload fills an engine that runs one sequence and queues one: the next request is
// ResourceExhausted, with a retry-after trailer.
func TestOverload(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{MaxNumSeqs: 1, MaxQueued: 1, MaxModelLen: longLen})
	ts := startServer(t, e, grpcapi.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	long := &loraplexv1.GenerateRequest{Prompt: tokenPrompt(1, 2), Params: long}
	running, err := ts.client.Generate(ctx, long)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := running.Recv(); err != nil {
		t.Fatal(err)
	}
	queued, err := ts.client.Generate(ctx, long)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second request to queue", func() bool { return e.Stats().Waiting.Load() == 1 })
	var trailer metadata.MD
	third, err := ts.client.Generate(ctx, long, grpc.Trailer(&trailer))
	if err == nil {
		_, err = third.Recv()
	}
	wantCode(t, "third request", err, codes.ResourceExhausted)
	if ra := trailer.Get("retry-after"); len(ra) != 1 || ra[0] == "" {
		t.Errorf("ResourceExhausted without a retry-after trailer: %v", trailer)
	}
	cancel()
	_, _, _, err = collect(t, queued)
	wantCode(t, "queued request after cancel", err, codes.Canceled)
	waitFor(t, "the engine to go idle", func() bool { return e.Stats().Running.Load()+e.Stats().Waiting.Load() == 0 })
}
