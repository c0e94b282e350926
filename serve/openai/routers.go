package openai

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/loraplex/loraplex/serve"
)

// Routers (learned mixtures of LoRA experts) are served under their own names: `model` = a
// router's name works in completions and chat like an adapter's, /v1/models lists routers with
// their experts, and two extension endpoints load and unload them at runtime. A request may ask
// for the expert trace with the extension field "expert_trace": true; each choice then carries
// "expert_trace" ([[layer 0 expert, layer 1 expert, ...], ...], one entry per generated token,
// "" where a layer chose only null experts) and "expert_summary" ({"expert": fraction of the
// choice's (token, layer) pairs whose top-1 was that expert}; "" collects the null choices, so
// the fractions sum to 1).

// checkTrace rejects an expert trace for anything but a loaded router.
func (h *Handler) checkTrace(model string, trace bool) error {
	if !trace {
		return nil
	}
	if kind, _ := h.e.Serves(model); kind == "router" {
		return nil
	}
	return invalid("expert_trace", "expert_trace needs a router as the model; %q is not a loaded router", h.modelName(model))
}

// expertCounts accumulates a choice's (token, layer) selections for its summary.
type expertCounts struct {
	n     int
	count map[string]int
}

func (c *expertCounts) add(trace [][]string) {
	if c.count == nil {
		c.count = map[string]int{}
	}
	for _, tok := range trace {
		for _, x := range tok {
			c.count[x]++
			c.n++
		}
	}
}

// summary is each expert's share of the selections ({} when nothing was generated).
func (c *expertCounts) summary() map[string]float64 {
	out := make(map[string]float64, len(c.count))
	for x, k := range c.count {
		out[x] = float64(k) / float64(c.n)
	}
	return out
}

// traceOf keeps an empty trace as [] rather than null in JSON.
func traceOf(v [][]string) [][]string {
	if v == nil {
		return [][]string{}
	}
	return v
}

type loadRouterRequest struct {
	RouterName  string `json:"router_name"`
	RouterPath  string `json:"router_path"`
	LoadInplace bool   `json:"load_inplace"` // replace a router already loaded under the name
}

// loadRouter is /v1/load_router: {"router_name", "router_path", "load_inplace"}, gated,
// path-checked and name-checked exactly like /v1/load_lora_adapter; the router's experts must
// be adapters the server can load.
func (h *Handler) loadRouter(w http.ResponseWriter, r *http.Request) error {
	if err := h.runtimeUpdates(); err != nil {
		return err
	}
	var req loadRouterRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	if req.RouterName == "" {
		return invalid("router_name", "router_name must be given")
	}
	if req.RouterPath == "" {
		return invalid("router_path", "router_path must be given")
	}
	path, err := h.e.CheckAdapterPath(req.RouterPath)
	if err != nil {
		return routerParam(err, "router_path")
	}
	load := h.e.LoadRouter
	if req.LoadInplace {
		load = h.e.ReplaceRouter
	}
	if err := load(req.RouterName, path); err != nil {
		if k := serve.KindOf(err); k == serve.KindInvalid || k == serve.KindConflict {
			return routerParam(err, "router_name")
		}
		return routerParam(err, "router_path")
	}
	h.log.Info("router loaded over HTTP", "name", req.RouterName, "path", req.RouterPath)
	writeText(w, fmt.Sprintf("Success: router '%s' added successfully.", req.RouterName))
	return nil
}

func (h *Handler) unloadRouter(w http.ResponseWriter, r *http.Request) error {
	if err := h.runtimeUpdates(); err != nil {
		return err
	}
	var req loadRouterRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	if req.RouterName == "" {
		return invalid("router_name", "router_name must be given")
	}
	if err := h.e.UnloadRouter(req.RouterName); err != nil {
		return routerParam(err, "router_name")
	}
	h.log.Info("router unloaded over HTTP", "name", req.RouterName)
	writeText(w, fmt.Sprintf("Success: router '%s' removed successfully.", req.RouterName))
	return nil
}

// routerParam names the router endpoints' own field in an engine error about a path or name
// (the engine names lora_path or router), keeping its kind and message.
func routerParam(err error, param string) error {
	var se *serve.Error
	if !errors.As(err, &se) || se.Param == "" {
		return err
	}
	c := *se
	c.Param = param
	return &c
}
