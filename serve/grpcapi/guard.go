package grpcapi

import (
	"context"
	"crypto/subtle"
	"runtime/debug"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// guard returns a copy of desc whose methods run through our unary and stream interceptors
// (API key when auth is set, panic recovery always). Wrapping the service description instead
// of asking for grpc.ServerOptions keeps Register's signature and means the checks come with
// the service wherever it is registered.
func (s *Service) guard(desc *grpc.ServiceDesc, auth bool) *grpc.ServiceDesc {
	d := *desc
	ui, si := s.unaryInterceptor(auth), s.streamInterceptor(auth)
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		h := m.Handler
		d.Methods[i] = grpc.MethodDesc{MethodName: m.MethodName, Handler: func(srv any, ctx context.Context, dec func(any) error, next grpc.UnaryServerInterceptor) (any, error) {
			return h(srv, ctx, dec, chainUnary(ui, next))
		}}
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, sd := range desc.Streams {
		h := sd.Handler
		info := &grpc.StreamServerInfo{FullMethod: "/" + desc.ServiceName + "/" + sd.StreamName, IsClientStream: sd.ClientStreams, IsServerStream: sd.ServerStreams}
		d.Streams[i] = sd
		d.Streams[i].Handler = func(srv any, ss grpc.ServerStream) error { return si(srv, ss, info, h) }
	}
	return &d
}

// chainUnary runs first, then next (the server's own interceptor, if any), then the handler.
func chainUnary(first, next grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	if next == nil {
		return first
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return first(ctx, req, info, func(ctx context.Context, req any) (any, error) { return next(ctx, req, info, h) })
	}
}

func (s *Service) unaryInterceptor(auth bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer s.recoverPanic(ctx, info.FullMethod, &err)
		if auth {
			if err := s.authorize(ctx); err != nil {
				return nil, err
			}
		}
		return h(ctx, req)
	}
}

func (s *Service) streamInterceptor(auth bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer s.recoverPanic(ss.Context(), info.FullMethod, &err)
		if auth {
			if err := s.authorize(ss.Context()); err != nil {
				return err
			}
		}
		return h(srv, ss)
	}
}

// recoverPanic turns a panic in a handler into Internal, so one bad request neither kills the
// process nor shows a client our stack.
func (s *Service) recoverPanic(ctx context.Context, method string, err *error) {
	if r := recover(); r != nil {
		s.log.ErrorContext(ctx, "grpc handler panicked", "method", method, "panic", r, "stack", string(debug.Stack()))
		*err = status.Error(codes.Internal, "internal server error")
	}
}

// authorize checks "authorization: Bearer <key>" when an API key is configured.
func (s *Service) authorize(ctx context.Context) error {
	if s.opt.APIKey == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, key, ok := strings.Cut(v, " ")
		if ok && strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(key)), []byte(s.opt.APIKey)) == 1 {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "missing or invalid API key: send \"authorization: Bearer <key>\" metadata")
}
