package grpcapi

import (
	"context"
	"errors"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
)

// ListRouters lists the loaded routers with their experts and per-layer top-1 selection counts.
func (s *Service) ListRouters(ctx context.Context, _ *loraplexv1.ListRoutersRequest) (*loraplexv1.ListRoutersResponse, error) {
	rs := s.e.Routers()
	out := &loraplexv1.ListRoutersResponse{Routers: make([]*loraplexv1.Router, len(rs))}
	for i, r := range rs {
		pr := &loraplexv1.Router{Name: r.Name, Path: r.Dir, Experts: r.Experts, Created: r.Created}
		for _, l := range r.Selections {
			pr.Selections = append(pr.Selections, &loraplexv1.LayerSelections{Counts: l})
		}
		out.Routers[i] = pr
	}
	return out, nil
}

// LoadRouter loads a router bundle under a name, with LoadAdapter's rules: PermissionDenied
// unless runtime updates are allowed and the path lies inside an adapter root.
func (s *Service) LoadRouter(ctx context.Context, req *loraplexv1.LoadRouterRequest) (*loraplexv1.LoadRouterResponse, error) {
	const method = "/loraplex.v1.Loraplex/LoadRouter"
	if err := s.updatesAllowed(); err != nil {
		return nil, s.toStatus(ctx, method, err)
	}
	if req.GetName() == "" {
		return nil, s.toStatus(ctx, method, invalid("name", "name is required"))
	}
	if req.GetPath() == "" {
		return nil, s.toStatus(ctx, method, invalid("path", "path is required"))
	}
	path, err := s.e.CheckAdapterPath(req.GetPath())
	if err != nil {
		return nil, s.toStatus(ctx, method, withParam(err, "path"))
	}
	load := s.e.LoadRouter
	if req.GetLoadInplace() {
		load = s.e.ReplaceRouter
	}
	if err := load(req.GetName(), path); err != nil {
		if k := serve.KindOf(err); k == serve.KindInvalid || k == serve.KindConflict {
			return nil, s.toStatus(ctx, method, withParam(err, "name"))
		}
		return nil, s.toStatus(ctx, method, withParam(err, "path"))
	}
	return &loraplexv1.LoadRouterResponse{}, nil
}

// UnloadRouter removes a router; requests already running finish with it.
func (s *Service) UnloadRouter(ctx context.Context, req *loraplexv1.UnloadRouterRequest) (*loraplexv1.UnloadRouterResponse, error) {
	const method = "/loraplex.v1.Loraplex/UnloadRouter"
	if err := s.updatesAllowed(); err != nil {
		return nil, s.toStatus(ctx, method, err)
	}
	if err := s.e.UnloadRouter(req.GetName()); err != nil {
		return nil, s.toStatus(ctx, method, withParam(err, "name"))
	}
	return &loraplexv1.UnloadRouterResponse{}, nil
}

// checkTrace rejects an expert trace for anything but a loaded router.
func (s *Service) checkTrace(req *loraplexv1.GenerateRequest) error {
	if !req.GetExpertTrace() {
		return nil
	}
	m := req.GetModel()
	if kind, _ := s.e.Serves(m); kind == "router" {
		return nil
	}
	return invalid("expert_trace", "expert_trace needs a router as the model; "+quote(m)+" is not a loaded router")
}

func quote(s string) string {
	if s == "" {
		return "the base model"
	}
	return "\"" + s + "\""
}

// withParam names this API's request field in an engine error (which names the HTTP field),
// keeping its kind and message.
func withParam(err error, param string) error {
	var se *serve.Error
	if !errors.As(err, &se) || se.Param == "" {
		return err
	}
	c := *se
	c.Param = param
	return &c
}

// experts converts a response's expert trace.
func experts(trace [][]string) []*loraplexv1.TokenExperts {
	if len(trace) == 0 {
		return nil
	}
	out := make([]*loraplexv1.TokenExperts, len(trace))
	for i, t := range trace {
		out[i] = &loraplexv1.TokenExperts{Layers: t}
	}
	return out
}
