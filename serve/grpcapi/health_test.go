package grpcapi_test

import (
	"context"
	"slices"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/grpcapi"
)

// TestHealthFollowsEngine: SERVING while the engine is ready; WatchReady turns it NOT_SERVING
// after e.Close(), as a health Watch stream sees; SetServing overrides it.
func TestHealthFollowsEngine(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{})
	ts := startServer(t, e, grpcapi.Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	h := healthpb.NewHealthClient(ts.conn)
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		r, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetStatus()
	}
	for _, svc := range []string{"", "loraplex.v1.Loraplex"} {
		if s := check(svc); s != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("%q: %v", svc, s)
		}
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); ts.svc.WatchReady(watchCtx, 5*time.Millisecond) }()
	defer func() { stopWatch(); <-watched }()

	w, err := h.Watch(ctx, &healthpb.HealthCheckRequest{Service: "loraplex.v1.Loraplex"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", r, err)
	}
	e.Close()
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch after close: %v %v", r, err)
	}
	if s := check(""); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("after close: %v", s)
	}
	stopWatch()
	<-watched
	ts.svc.SetServing(true)
	if s := check(""); s != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("after SetServing(true): %v", s)
	}
}

// TestReflectionListsService asks the v1 reflection service what the server offers.
func TestReflectionListsService(t *testing.T) {
	e := fixtureEngine(t, "llama", serve.Options{})
	ts := startServer(t, e, grpcapi.Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	st, err := reflectionpb.NewServerReflectionClient(ts.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"loraplex.v1.Loraplex", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
	// The file descriptor is there too, so grpcurl can describe the methods.
	if err := st.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "loraplex.v1.Loraplex"}}); err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err != nil || len(r.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("file containing loraplex.v1.Loraplex: %v %v", r, err)
	}
	st.CloseSend()
}
