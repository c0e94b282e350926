// Package grpcapi serves the loraplex.v1 gRPC API, the gRPC health service and server
// reflection over a serve.Engine. It calls the same engine API as the HTTP gateway and
// translates errors through one table (CodeOf).
package grpcapi

import (
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/toolcall"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// Options configure the service.
type Options struct {
	// APIKey, when set, is required as "authorization: Bearer <key>" metadata on every call
	// except the health service (load balancers and kubelet probes send no credentials).
	APIKey string
	// ChatTemplate renders ChatPrompt messages; nil rejects them with InvalidArgument.
	ChatTemplate *chat.Template
	// ChatTokens are the special tokens templates see (bos_token, eos_token, ...).
	ChatTokens map[string]string
	// ToolCallParser is the model's tool-call format (--tool-call-parser); nil: the one the
	// chat template teaches, if any (a request that wants calls fails without one).
	ToolCallParser *toolcall.Format
	// AllowRuntimeAdapterUpdates enables LoadAdapter, UnloadAdapter, LoadRouter and
	// UnloadRouter (PermissionDenied otherwise), like vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING.
	AllowRuntimeAdapterUpdates bool
	Logger                     *slog.Logger
}

// Service implements loraplex.v1.Loraplex over an engine.
type Service struct {
	loraplexv1.UnimplementedLoraplexServer
	e      *serve.Engine
	opt    Options
	log    *slog.Logger
	health *health.Server
	// toolFormat is how the model writes tool calls (nil: unknown).
	toolFormat *toolcall.Format
}

// Register adds the loraplex.v1 service, grpc.health.v1 and server reflection to s. The API-key
// check and panic recovery are wrapped around every method of the three services here rather
// than passed as server options, so a caller cannot forget them; interceptors given to
// grpc.NewServer still run as well. The health status starts as e.Ready() says; keep it
// current with WatchReady or SetServing. Typical wiring:
//
//	s := grpc.NewServer()
//	svc := grpcapi.Register(s, e, grpcapi.Options{APIKey: key, ChatTemplate: tmpl})
//	go svc.WatchReady(ctx, time.Second)
//	go s.Serve(lis)
//	...
//	svc.SetServing(false) // draining: probes fail first
//	e.Drain(drainCtx)
//	svc.Shutdown()
//	s.GracefulStop()
func Register(s *grpc.Server, e *serve.Engine, opt Options) *Service {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	svc := &Service{e: e, opt: opt, log: opt.Logger, health: health.NewServer(),
		toolFormat: toolcall.ForModel(opt.ToolCallParser, opt.ChatTemplate.Source())}
	svc.SetServing(e.Ready())
	s.RegisterService(svc.guard(&loraplexv1.Loraplex_ServiceDesc, true), svc)
	s.RegisterService(svc.guard(&healthpb.Health_ServiceDesc, false), svc.health)
	// reflection.Register registers through this small shim so its stream method gets the
	// same guard as ours.
	reflection.Register(guardedRegistrar{s, svc})
	return svc
}

// guardedRegistrar lets third-party Register functions add services with our guard.
type guardedRegistrar struct {
	s   *grpc.Server
	svc *Service
}

func (g guardedRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	g.s.RegisterService(g.svc.guard(desc, true), impl)
}

// GetServiceInfo lets reflection list the server's services.
func (g guardedRegistrar) GetServiceInfo() map[string]grpc.ServiceInfo { return g.s.GetServiceInfo() }
