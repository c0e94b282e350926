package grpcapi

import (
	"context"
	"errors"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/loraplex/loraplex/serve"
)

// CodeOf returns the gRPC code for an engine error kind, from the engine's one kind table
// (serve.Kind.Info), which also holds the HTTP status: both APIs agree on what every failure
// means. Kinds outside the table answer Internal.
func CodeOf(k serve.Kind) codes.Code { return k.Info().GRPCCode }

// toStatus converts any error into a gRPC status error through the kind table (CodeOf). Errors that already
// are statuses pass through; context errors become Canceled / DeadlineExceeded. For
// InvalidArgument, the request field at fault travels as a google.rpc.BadRequest detail.
func (s *Service) toStatus(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if serve.KindOf(err) == serve.KindInternal {
			return status.FromContextError(err).Err()
		}
	}
	k := serve.KindOf(err)
	code := CodeOf(k)
	if code == codes.Internal {
		// Details stay in the log; the client learns only that it was our fault.
		s.log.ErrorContext(ctx, "grpc request failed", "method", method, "err", err)
		return status.Error(codes.Internal, "internal server error")
	}
	if code == codes.ResourceExhausted {
		grpc.SetTrailer(ctx, metadata.Pairs("retry-after", strconv.Itoa(serve.RetryAfterSeconds)))
	}
	st := status.New(code, err.Error())
	if p := serve.ParamOf(err); p != "" && code == codes.InvalidArgument {
		d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: p, Description: err.Error()}}})
		if derr == nil {
			st = d
		}
	}
	return st.Err()
}

// invalid is an InvalidArgument about one request field, built as an engine error so that it
// takes the same path (and table) as the engine's own.
func invalid(param, msg string) error {
	return &serve.Error{Kind: serve.KindInvalid, Param: param, Msg: msg}
}
