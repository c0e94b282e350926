package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
	"github.com/loraplex/loraplex/serve/metrics"
	"github.com/loraplex/loraplex/serve/openai"
)

// maxModelLenSource says where the engine's max model length came from, for the startup log.
func maxModelLenSource(flagValue int) string {
	if flagValue > 0 {
		return "--max-model-len"
	}
	return "model config"
}

// run is the whole server: parse flags, load, serve until ctx ends, then shut down gracefully.
// It returns nil after a clean shutdown.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	c, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stdout, &slog.HandlerOptions{Level: c.logLevel}))
	b, closeBackend, err := openBackend(c.device, c.threads, log)
	if err != nil {
		return err
	}
	defer closeBackend()
	m, err := loadModel(c, b, log)
	if err != nil {
		return err
	}
	defer m.weights.Close()
	if c.noMmap {
		if err := copyWeights(b, m.weights, log); err != nil {
			return err
		}
	}
	if c.kvEvents != nil {
		// llm-d's indexer seeds its block hashes with hashSeed, which deployments align with
		// vLLM's PYTHONHASHSEED: the same variable seeds ours.
		c.kvEvents.HashSeed = os.Getenv("PYTHONHASHSEED")
	}
	maxModelLen, err := serve.ResolveMaxModelLen(m.cfg, c.maxModelLen)
	if err != nil {
		return err
	}
	kv, err := planKVCache(c, m.cfg, b, maxModelLen)
	if err != nil {
		return err
	}
	e, err := serve.NewEngine(m.cfg, b, m.weights, m.tok, serve.Options{
		ModelName: m.name, MaxNumSeqs: c.maxNumSeqs, MaxBatchedTokens: c.maxBatchedTokens, LongPrefillTokenThreshold: c.longPrefillThreshold, MaxModelLen: maxModelLen,
		KVCacheTokens: kv.tokens, KVCacheMemory: kv.bytes, MaxQueued: c.maxQueued, Logger: log, DisablePrefixCaching: !c.prefixCaching,
		AdapterDirs: c.adapterDirs, AdapterRoots: c.roots(), LoadTimeout: c.loadTimeout, MaxLoRAs: c.maxLoRAs, MaxLoRARank: c.maxLoRARank, MaxCPULoRAs: c.maxCPULoRAs,
		KVEvents: c.kvEvents, Deterministic: c.deterministic,
	})
	if errors.Is(err, serve.ErrKVCacheTooSmall) {
		return fmt.Errorf("%w; the KV cache was sized from %s: lower --max-model-len (now %d) or raise %s", err, kv.source, maxModelLen, kv.raise)
	}
	if err != nil {
		return err
	}
	defer e.Close()
	for _, a := range c.adapters {
		if err := e.LoadAdapter(a.name, a.path); err != nil {
			return err
		}
	}
	// Routers after adapters: their experts are adapters (from --adapter or --adapter-dir).
	for _, r := range c.routers {
		if err := e.LoadRouter(r.name, r.path); err != nil {
			return fmt.Errorf("--router %s=%s: %w", r.name, r.path, err)
		}
	}
	if c.kvEvents != nil {
		var addr string
		if a := e.KVEventsAddr(); a != nil {
			addr = a.String()
		}
		log.Info("KV events publishing", "endpoint", c.kvEvents.Endpoint, "addr", addr, "topic", c.kvEvents.Topic)
	}
	o := e.Options()
	log.Info("engine ready", "max_num_seqs", o.MaxNumSeqs, "max_num_batched_tokens", o.MaxBatchedTokens, "long_prefill_token_threshold", o.LongPrefillTokenThreshold,
		"max_model_len", o.MaxModelLen, "max_model_len_from", maxModelLenSource(c.maxModelLen), "kv_cache_tokens", o.KVCacheTokens,
		"kv_cache_bytes", o.KVCacheMemory, "kv_cache_from", kv.source, "prefix_caching", !o.DisablePrefixCaching, "adapters", len(c.adapters), "routers", len(c.routers))

	api := openai.New(e, openai.Options{
		APIKey: c.apiKey, AllowRuntimeAdapterUpdates: c.allowRuntimeAdapters,
		ChatTemplate: m.template, ChatTokens: m.chatTokens, ToolCallParser: c.toolCallParser, Logger: log,
		// The name the server was told to listen on is one it answers to.
		AllowedOrigins: c.allowedOrigins, AllowedHosts: append(c.allowedHosts, listenHost(c.httpAddr)),
	})
	// Prometheus scrapes /metrics without credentials, like /health.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.New(e, reg).Handler())
	mux.Handle("/", api)
	ln, err := net.Listen("tcp", c.httpAddr)
	if err != nil {
		return err
	}
	// Slow clients get a minute to send headers and body; there is no write timeout, because a
	// streamed completion may legitimately run for minutes (client disconnects cancel it).
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	log.Info("HTTP server listening", "addr", ln.Addr().String())

	var gs *grpc.Server
	var gsvc *grpcapi.Service
	if c.grpcAddr != "" {
		gln, err := net.Listen("tcp", c.grpcAddr)
		if err != nil {
			srv.Close()
			return err
		}
		gs = grpc.NewServer(grpc.MaxRecvMsgSize(16 << 20))
		gsvc = grpcapi.Register(gs, e, grpcapi.Options{APIKey: c.apiKey, ChatTemplate: m.template, ChatTokens: m.chatTokens, ToolCallParser: c.toolCallParser,
			AllowRuntimeAdapterUpdates: c.allowRuntimeAdapters, Logger: log})
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		go gsvc.WatchReady(wctx, time.Second)
		go func() { served <- gs.Serve(gln) }()
		log.Info("gRPC server listening", "addr", gln.Addr().String())
	}

	select {
	case err := <-served:
		srv.Close()
		if gs != nil {
			gs.Stop()
		}
		return err // a listener failed; nothing to drain
	case <-ctx.Done():
	}
	if gsvc != nil {
		gsvc.SetServing(false)
	}
	err = shutdown(e, srv, served, c.shutdownTimeout, log)
	if gs != nil {
		stopGRPC(gs, handlerGrace, log)
	}
	return err
}

// handlerGrace is how long handlers get to finish once the engine is closed: their engine
// streams have ended, so only a client that stopped reading (or a stream that never ends,
// such as a health Watch) can hold one longer.
const handlerGrace = 5 * time.Second

// stopGRPC stops gs gracefully, but for no longer than grace: GracefulStop waits for every RPC,
// and a health Watch or a stream whose client stopped reading would hold shutdown for ever.
func stopGRPC(gs *grpc.Server, grace time.Duration, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		log.Warn("gRPC graceful stop timed out; closing the remaining streams", "grace", grace)
		gs.Stop()
		<-done
	}
}

// shutdown drains: the engine stops admitting (so /health turns 503 and new requests get 503)
// while running requests finish until the timeout, then the HTTP server closes its listener and
// waits for handlers, which end once their engine streams have.
func shutdown(e *serve.Engine, srv *http.Server, served <-chan error, timeout time.Duration, log *slog.Logger) error {
	log.Info("shutting down: draining requests", "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := e.Drain(ctx); err != nil {
		log.Warn("drain timed out; remaining requests were aborted", "err", err)
	}
	// Handlers finish quickly once the engine is closed; give them a moment even if the drain
	// used the whole budget.
	sctx, scancel := context.WithTimeout(context.Background(), handlerGrace)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("HTTP shutdown incomplete", "err", err)
		srv.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

// listenHost is the host part of a listen address ("" for ":8000").
func listenHost(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return host
}
