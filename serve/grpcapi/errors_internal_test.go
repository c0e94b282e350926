package grpcapi

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/grpc/status"

	"github.com/loraplex/loraplex/serve"
)

// Every engine kind leaves the gRPC edge with the code of its row in the one table, and
// internal errors never show their details.
func TestEveryKindAnswersFromTheTable(t *testing.T) {
	s := &Service{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, k := range serve.Kinds() {
		st := status.Convert(s.toStatus(context.Background(), "/m", &serve.Error{Kind: k, Param: "p", Msg: "secret detail"}))
		if st.Code() != k.Info().GRPCCode {
			t.Errorf("kind %d: %v, want %v", k, st.Code(), k.Info().GRPCCode)
		}
		if (k == serve.KindInternal) != (st.Message() == "internal server error") {
			t.Errorf("kind %d: message %q", k, st.Message())
		}
	}
}
