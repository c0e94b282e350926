package grpcapi_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/internal/testengine"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// TestMain fails the package if any test leaves a goroutine behind: engine loops, CPU
// workers, gRPC transports, health watchers and WatchReady must all stop with their owners.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixtureCase is one reference generation (internal/fixture).
type fixtureCase = fixture.Case

func fixtureDir(name string) string { return fixture.Dir(name) }

func loadCases(t testing.TB, name string) []fixtureCase { return fixture.Cases(t, name) }

// fixtureEngine serves a fixture model (token ids only) with its four adapters on the CPU
// backend; the model's folder is an adapter root, so runtime loads of its adapters pass.
func fixtureEngine(t testing.TB, name string, opt serve.Options) *serve.Engine {
	t.Helper()
	if opt.MaxModelLen == 0 {
		opt.MaxModelLen = 64
	}
	opt.AdapterRoots = append(opt.AdapterRoots, fixtureDir(name))
	opt.Logger = testLogger(t)
	return testengine.New(t, name, opt)
}

// demoEngine serves the built-in demo model, which has a tokenizer and a chat template.
func demoEngine(t testing.TB) (*serve.Engine, *chat.Template) {
	return demoEngineSized(t, 128, 256)
}

// demoEngineSized is demoEngine with its step budget and context length given.
func demoEngineSized(t testing.TB, maxBatchedTokens, maxModelLen int) (*serve.Engine, *chat.Template) {
	t.Helper()
	b := cpu.New(2)
	cfg, w, tok, tmpl, err := demo.Build(b)
	if err != nil {
		t.Fatal(err)
	}
	e, err := serve.NewEngine(cfg, b, w, tok, serve.Options{ModelName: demo.Name, MaxNumSeqs: 4, MaxBatchedTokens: maxBatchedTokens, MaxModelLen: maxModelLen, Logger: testLogger(t)})
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

// testLogger writes to the test's output, which is shown only when the test fails or with -v.
func testLogger(t testing.TB) *slog.Logger { return slog.New(slog.NewTextHandler(t.Output(), nil)) }

// testServer is a real gRPC server on a loopback port with a real client connection.
type testServer struct {
	svc    *grpcapi.Service
	conn   *grpc.ClientConn
	client loraplexv1.LoraplexClient

	mu      sync.Mutex
	results map[string]error // the error each method's handler last returned, server side
}

// lastError is what the server's handler for method (e.g. "Generate") last returned: the
// client cannot tell a server-side Canceled from its own, so cancellation is checked here.
func (ts *testServer) lastError(method string) error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.results["/loraplex.v1.Loraplex/"+method]
}

// panicKey in incoming metadata makes the test's own server interceptor panic, to show that
// the service's recovery turns it into Internal.
const panicKey = "x-test-panic"

func startServer(t testing.TB, e *serve.Engine, opt grpcapi.Options) *testServer {
	t.Helper()
	ts := &testServer{results: map[string]error{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(panicKey)) > 0 {
				panic("test panic")
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			err := h(srv, ss)
			ts.mu.Lock()
			ts.results[info.FullMethod] = err
			ts.mu.Unlock()
			return err
		}),
	)
	if opt.Logger == nil {
		opt.Logger = testLogger(t)
	}
	ts.svc = grpcapi.Register(s, e, opt)
	served := make(chan struct{})
	go func() { defer close(served); s.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ts.conn, ts.client = conn, loraplexv1.NewLoraplexClient(conn)
	t.Cleanup(func() {
		conn.Close()
		ts.svc.Shutdown()
		s.Stop()
		<-served
	})
	return ts
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// collect reads a Generate stream to its end.
func collect(t testing.TB, st grpc.ServerStreamingClient[loraplexv1.GenerateResponse]) (tokens []int32, text string, last *loraplexv1.GenerateResponse, err error) {
	t.Helper()
	for {
		r, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return tokens, text, last, nil
			}
			return tokens, text, last, err
		}
		tokens = append(tokens, r.GetTokenIds()...)
		text += r.GetText()
		last = r
	}
}
