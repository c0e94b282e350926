package grpcapi

import (
	"context"
	"fmt"
	"strings"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
)

// Tokenize encodes text, or chat messages rendered with the chat template, as Generate would.
func (s *Service) Tokenize(ctx context.Context, req *loraplexv1.TokenizeRequest) (*loraplexv1.TokenizeResponse, error) {
	const method = "/loraplex.v1.Loraplex/Tokenize"
	if err := s.checkModel(req.GetModel()); err != nil {
		return nil, s.toStatus(ctx, method, err)
	}
	var ids []int
	var err error
	switch in := req.GetInput().(type) {
	case *loraplexv1.TokenizeRequest_Text:
		ids, err = s.encode(in.Text, req.AddSpecialTokens, true, "text")
	case *loraplexv1.TokenizeRequest_Messages:
		ids, err = s.tokenizeChat(in.Messages, req.AddSpecialTokens)
	default:
		err = invalid("input", "one of text or messages is required")
	}
	if err != nil {
		return nil, s.toStatus(ctx, method, err)
	}
	return &loraplexv1.TokenizeResponse{TokenIds: int32s(ids), MaxModelLen: int32(s.e.Options().MaxModelLen)}, nil
}

// Detokenize decodes token ids; unknown ids are InvalidArgument.
func (s *Service) Detokenize(ctx context.Context, req *loraplexv1.DetokenizeRequest) (*loraplexv1.DetokenizeResponse, error) {
	const method = "/loraplex.v1.Loraplex/Detokenize"
	if err := s.checkModel(req.GetModel()); err != nil {
		return nil, s.toStatus(ctx, method, err)
	}
	tok := s.e.Tokenizer()
	if tok == nil {
		return nil, s.toStatus(ctx, method, invalid("token_ids", "this model has no tokenizer"))
	}
	text, err := tok.Decode(ints(req.GetTokenIds()), req.GetSkipSpecialTokens())
	if err != nil {
		return nil, s.toStatus(ctx, method, invalid("token_ids", fmt.Sprint(err)))
	}
	// Arbitrary ids can end inside a multi-byte character; proto3 strings must be UTF-8.
	return &loraplexv1.DetokenizeResponse{Text: strings.ToValidUTF8(text, "\uFFFD")}, nil
}

// tokenizeChat renders and encodes chat messages as Generate would, its tools checked first.
func (s *Service) tokenizeChat(p *loraplexv1.ChatPrompt, addSpecial *bool) ([]int, error) {
	tools, err := s.chatTools(p)
	if err != nil {
		return nil, err
	}
	if err := serve.CheckTools(tools); err != nil {
		return nil, err
	}
	text, err := s.render(p)
	if err != nil {
		return nil, err
	}
	return s.encode(text, addSpecial, false, "messages")
}
