package grpcapi

import (
	"context"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
)

// SetServing sets the health status of the server as a whole ("") and of loraplex.v1.Loraplex:
// SERVING or NOT_SERVING. Call it with false when draining starts, so load balancers stop
// sending work before the engine refuses it.
func (s *Service) SetServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(loraplexv1.Loraplex_ServiceDesc.ServiceName, st)
}

// WatchReady keeps the health status equal to the engine's Ready(), checking every interval
// (default 1s), until ctx ends. It blocks; run it in a goroutine that the caller owns.
func (s *Service) WatchReady(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last := s.e.Ready()
	s.SetServing(last)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if r := s.e.Ready(); r != last {
				last = r
				s.SetServing(r)
			}
		}
	}
}

// Shutdown sets every status to NOT_SERVING for good and ends health Watch streams' updates;
// call it before stopping the gRPC server.
func (s *Service) Shutdown() { s.health.Shutdown() }
