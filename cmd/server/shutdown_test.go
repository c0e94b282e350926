package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Shutdown ends within --shutdown-timeout plus the handlers' grace even while a gRPC stream
// would never end by itself: an open health Watch (what load balancers keep) used to hold
// GracefulStop, and SIGTERM with it, for ever.
func TestShutdownWithOpenHealthWatch(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "models", "llama")
	const shutdownTimeout = time.Second
	_, logs, stop := start(t, "--model", dir, "--device", "cpu", "--max-model-len", "64",
		"--grpc-addr", "127.0.0.1:0", "--shutdown-timeout", shutdownTimeout.String())
	defer stop()
	conn, err := grpc.NewClient(grpcAddr(t, logs), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil { // the stream is open on the server
		t.Fatal(err)
	}
	begin := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	if took := time.Since(begin); took > shutdownTimeout+handlerGrace+3*time.Second {
		t.Fatalf("shutdown took %v with --shutdown-timeout %v and a %v grace", took, shutdownTimeout, handlerGrace)
	}
}
