// Package testengine builds a serve.Engine over a reference fixture model on the CPU backend,
// with the fixture's four PEFT adapters loaded (and, on request, its router bundles), for the
// tests of packages above serve (the HTTP and gRPC gateways, metrics, the load generator).
// serve's own tests cannot import it (cycle).
package testengine

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/loraplex/loraplex/cpu"
	"github.com/loraplex/loraplex/internal/fixture"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/serve"
)

// New serves fixture model name (token ids only). Zero options get the name as the model name
// and a silent logger; the engine, backend and weights are closed when the test ends.
func New(t testing.TB, name string, opt serve.Options) *serve.Engine {
	t.Helper()
	dir := fixture.Dir(name)
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := cpu.New(2)
	w, err := model.LoadWeights(dir, cfg, b)
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	if opt.ModelName == "" {
		opt.ModelName = name
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// The fixture's adapters and router bundles are what a server's command line would name, so
	// they are allowed roots as the server's --adapter and --router paths are (serve.Options).
	opt.AdapterRoots = append(opt.AdapterRoots, filepath.Join(fixture.RoutersRoot(), name))
	for _, a := range fixture.Adapters {
		opt.AdapterRoots = append(opt.AdapterRoots, fixture.AdapterDir(name, a))
	}
	e, err := serve.NewEngine(cfg, b, w, nil, opt)
	if err != nil {
		b.Close()
		w.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); b.Close(); w.Close() })
	for _, a := range fixture.Adapters {
		if err := e.LoadAdapter(a, fixture.AdapterDir(name, a)); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// LoadRouters loads every router bundle of fixture model name's router cases
// (testdata/routers/<name>) into e, each under its case's Adapter name, and returns the cases:
// requests naming c.Adapter must produce exactly c.Tokens(). The bundles' experts are the
// fixture's four adapters, which New has loaded; e needs at least four device slots.
func LoadRouters(t testing.TB, e *serve.Engine, name string) []fixture.Case {
	t.Helper()
	fx, err := fixture.LoadRouters(name)
	if err != nil {
		t.Fatal(err)
	}
	loaded := map[string]bool{}
	for _, c := range fx.Cases {
		if loaded[c.Adapter] {
			continue
		}
		loaded[c.Adapter] = true
		if err := e.LoadRouter(c.Adapter, filepath.Join(fixture.RoutersRoot(), c.Router)); err != nil {
			t.Fatal(err)
		}
	}
	return fx.Cases
}
