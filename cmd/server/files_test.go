//go:build unix

package main

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/internal/fixture"
)

var grpcAddrRE = regexp.MustCompile(`msg="gRPC server listening" addr=(\S+)`)

// grpcAddr waits for the server's gRPC listener to log its address and returns it: start
// returns once the HTTP server listens, and the gRPC server may log a moment later.
func grpcAddr(t *testing.T, logs *logBuffer) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if m := grpcAddrRE.FindStringSubmatch(logs.String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no gRPC address in the log:\n%s", logs)
		}
	}
}

// Shutdown never waits on a load stuck on the file system longer than --shutdown-timeout: with
// loads of a FIFO config and FIFO weights in flight over HTTP and gRPC (which used to hang for
// ever, and SIGTERM with them), the loads are answered and run returns in time.
func TestShutdownWithFIFOLoads(t *testing.T) {
	h := fixture.HostileTree(t, "llama")
	dir := filepath.Join("..", "..", "testdata", "models", "llama")
	const shutdownTimeout = 2 * time.Second
	url, logs, stop := start(t, "--model", dir, "--device", "cpu", "--max-model-len", "64", "--grpc-addr", "127.0.0.1:0",
		"--adapter-root", h.Root, "--allow-runtime-adapter-updates", "--shutdown-timeout", shutdownTimeout.String())
	defer stop()
	conn, err := grpc.NewClient(grpcAddr(t, logs), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := loraplexv1.NewLoraplexClient(conn)

	var fifos []string
	for _, c := range h.Adapters {
		if strings.Contains(c.Name, "FIFO") {
			fifos = append(fifos, c.Path)
		}
	}
	answered := make(chan string, 2*len(fifos))
	hc := &http.Client{Timeout: 30 * time.Second}
	for i, p := range fifos {
		go func() {
			body, _ := json.Marshal(map[string]string{"lora_name": "fifo" + string(rune('a'+i)), "lora_path": p})
			resp, err := hc.Post(url+"/v1/load_lora_adapter", "application/json", strings.NewReader(string(body)))
			if err != nil {
				answered <- "HTTP " + err.Error()
				return
			}
			resp.Body.Close()
			answered <- "HTTP " + resp.Status
		}()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := client.LoadAdapter(ctx, &loraplexv1.LoadAdapterRequest{Name: "grpcfifo" + string(rune('a'+i)), Path: p})
			answered <- "gRPC " + status.Code(err).String()
		}()
	}
	time.Sleep(300 * time.Millisecond) // the loads are in flight (or, today, already refused)
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	// The drain has nothing to wait for; the HTTP server's own grace period (5s) bounds the rest.
	if took := time.Since(start); took > shutdownTimeout+6*time.Second {
		t.Fatalf("shutdown took %v with --shutdown-timeout %v", took, shutdownTimeout)
	}
	for range 2 * len(fifos) {
		select {
		case a := <-answered:
			if a != "HTTP 422 Unprocessable Entity" && a != "gRPC FailedPrecondition" {
				t.Errorf("a FIFO load was answered %q", a)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a FIFO load got no answer")
		}
	}
}
