package grpcapi

import (
	"context"

	"github.com/loraplex/loraplex/adaptercache"
	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
)

// ListModels lists the base model, every adapter and every router (with its experts), as GET
// /v1/models does.
func (s *Service) ListModels(ctx context.Context, _ *loraplexv1.ListModelsRequest) (*loraplexv1.ListModelsResponse, error) {
	ms := s.e.Models()
	out := &loraplexv1.ListModelsResponse{Models: make([]*loraplexv1.Model, len(ms))}
	for i, m := range ms {
		out.Models[i] = &loraplexv1.Model{Id: m.ID, Kind: m.Kind, Parent: m.Parent, Created: m.Created, MaxModelLen: int32(m.MaxLen), Experts: m.Experts}
	}
	return out, nil
}

// ListAdapters lists every adapter the engine's cache knows, with its state (disk, loading,
// host, uploading, device, failed) and the fastest tier holding a copy.
func (s *Service) ListAdapters(ctx context.Context, _ *loraplexv1.ListAdaptersRequest) (*loraplexv1.ListAdaptersResponse, error) {
	out := &loraplexv1.ListAdaptersResponse{}
	for _, a := range s.e.AdapterCache().List() {
		tier := "disk"
		switch {
		case a.State == adaptercache.StateDevice:
			tier = "device"
		case a.InHost:
			tier = "host"
		}
		out.Adapters = append(out.Adapters, &loraplexv1.Adapter{Name: a.Name, State: a.State.String(), Tier: tier, Path: a.Path})
	}
	return out, nil
}

// LoadAdapter loads a PEFT folder under a name (PermissionDenied unless runtime updates are
// allowed and the path lies inside an adapter root). A name already served is InvalidArgument
// unless load_inplace asks to replace it; a load of the name in progress is FailedPrecondition.
func (s *Service) LoadAdapter(ctx context.Context, req *loraplexv1.LoadAdapterRequest) (*loraplexv1.LoadAdapterResponse, error) {
	const method = "/loraplex.v1.Loraplex/LoadAdapter"
	if err := s.updatesAllowed(); err != nil {
		return nil, s.toStatus(ctx, method, err)
	}
	if req.GetPath() == "" {
		return nil, s.toStatus(ctx, method, invalid("path", "path is required"))
	}
	// A client must not make the server read arbitrary files: the path has to resolve inside
	// one of the engine's adapter roots (PermissionDenied otherwise, whether it exists or not;
	// NotFound if missing inside a root), and so does every file the loader opens in it.
	path, err := s.e.CheckAdapterPath(req.GetPath())
	if err != nil {
		return nil, s.toStatus(ctx, method, err)
	}
	load := s.e.LoadAdapter
	if req.GetLoadInplace() {
		load = s.e.ReplaceAdapter
	}
	if err := load(req.GetName(), path); err != nil {
		return nil, s.toStatus(ctx, method, nameParam(err))
	}
	return &loraplexv1.LoadAdapterResponse{}, nil
}

// UnloadAdapter removes an adapter; requests already running finish with it. An adapter that a
// loaded router uses is FailedPrecondition (serve.KindConflict), naming the router.
func (s *Service) UnloadAdapter(ctx context.Context, req *loraplexv1.UnloadAdapterRequest) (*loraplexv1.UnloadAdapterResponse, error) {
	const method = "/loraplex.v1.Loraplex/UnloadAdapter"
	if err := s.updatesAllowed(); err != nil {
		return nil, s.toStatus(ctx, method, err)
	}
	if err := s.e.UnloadAdapter(req.GetName()); err != nil {
		return nil, s.toStatus(ctx, method, nameParam(err))
	}
	return &loraplexv1.UnloadAdapterResponse{}, nil
}

func (s *Service) updatesAllowed() error {
	if !s.opt.AllowRuntimeAdapterUpdates {
		return &serve.Error{Kind: serve.KindForbidden, Msg: "runtime adapter updates are disabled on this server"}
	}
	return nil
}

// nameParam names this API's field for an engine error about the adapter's name (the engine
// names the HTTP field, lora_name).
func nameParam(err error) error {
	if serve.ParamOf(err) == "lora_name" {
		return withParam(err, "name")
	}
	return err
}
