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
	"path/filepath"
	"time"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/demo"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/metrics"
	"github.com/loraplex/loraplex/serve/openai"
	"github.com/loraplex/loraplex/tokenizer"
)

// LocalConfig shapes the in-process server.
type LocalConfig struct {
	ModelDir   string // "" = the demo model
	Threads    int
	MaxNumSeqs int
	MaxLoRAs   int // device slots (0: the engine's default)
	Adapters   int
	Rank       int
	Targets    []model.Proj
	Preload    bool // load every adapter before the run; false leaves it to on-demand loading
	Seed       uint64
	Verbose    bool
	// NoPrefixCaching turns the engine's prefix cache off (the multi-turn workload's
	// comparison run).
	NoPrefixCaching bool
	// Metrics serves /metrics as cmd/server does. Its collectors replace the engine observer,
	// so such a server reports no engine view (Local.obs is nil).
	Metrics bool
}

// Local is an engine and its OpenAI gateway on 127.0.0.1, reached over real HTTP so that the
// numbers include the gateway's JSON and SSE work as a deployed server's would.
type Local struct {
	URL      string
	Base     string
	Adapters []string
	Backend  string
	Model    *model.Config

	obs     *engineObserver
	engine  *serve.Engine
	backend *cpu.Backend
	srv     *http.Server
	tmp     string
}

func StartLocal(c LocalConfig) (_ *Local, err error) {
	l := &Local{}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if c.Verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	l.backend = cpu.New(c.Threads)
	l.Backend = l.backend.Name()
	var (
		cfg *model.Config
		w   *model.Weights
		tok *tokenizer.Tokenizer
	)
	l.Base = demo.Name
	if c.ModelDir == "" {
		if cfg, w, tok, _, err = demo.Build(l.backend); err != nil {
			return nil, err
		}
	} else {
		l.Base = filepath.Base(filepath.Clean(c.ModelDir))
		if cfg, err = model.LoadConfig(c.ModelDir); err != nil {
			return nil, err
		}
		if w, err = model.LoadWeights(c.ModelDir, cfg, l.backend); err != nil {
			return nil, err
		}
		if _, statErr := os.Stat(filepath.Join(c.ModelDir, "tokenizer.json")); statErr == nil {
			if tok, err = tokenizer.Load(c.ModelDir); err != nil {
				return nil, err
			}
		}
	}
	l.Model = cfg
	if l.tmp, err = os.MkdirTemp("", "loadgen-adapters-"); err != nil {
		return nil, err
	}
	if c.Adapters > 0 {
		if l.Adapters, err = WriteAdapters(l.tmp, cfg, c.Adapters, c.Rank, c.Targets, c.Seed); err != nil {
			return nil, err
		}
	}
	// MaxModelLen is left to the engine (the model's max positions); the KV cache then holds
	// MaxNumSeqs full-length sequences, far more than the short benchmark prompts need, so
	// preemption never distorts the numbers.
	l.engine, err = serve.NewEngine(cfg, l.backend, w, tok, serve.Options{
		ModelName: l.Base, MaxNumSeqs: c.MaxNumSeqs, MaxLoRAs: c.MaxLoRAs, AdapterDirs: []string{l.tmp}, Logger: log,
		DisablePrefixCaching: c.NoPrefixCaching,
	})
	if err != nil {
		return nil, err
	}
	l.obs = &engineObserver{stats: l.engine.Stats()}
	l.engine.SetObserver(l.obs)
	if c.Preload {
		for _, name := range l.Adapters {
			if err := l.engine.LoadAdapter(name, filepath.Join(l.tmp, name)); err != nil {
				return nil, fmt.Errorf("loading %s: %w", name, err)
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l.URL = "http://" + ln.Addr().String()
	var h http.Handler = openai.New(l.engine, openai.Options{Logger: log})
	if c.Metrics {
		mux := http.NewServeMux()
		mux.Handle("/", h)
		mux.Handle("GET /metrics", metrics.New(l.engine, nil).Handler())
		h, l.obs = mux, nil
	}
	l.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := l.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "loadgen: server:", err)
		}
	}()
	return l, nil
}

// Close stops the server, the engine and the backend and removes the adapters.
func (l *Local) Close() {
	if l.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		l.srv.Shutdown(ctx)
		cancel()
	}
	if l.engine != nil {
		l.engine.Close()
	}
	if l.backend != nil {
		l.backend.Close()
	}
	if l.tmp != "" {
		os.RemoveAll(l.tmp)
	}
}
