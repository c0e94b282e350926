package grpcapi

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/structured"
)

const generateMethod = "/loraplex.v1.Loraplex/Generate"

// Generate streams one request's events. The stream's context is the engine request's
// context, so a client that cancels (or whose deadline passes) aborts the request and the
// engine frees its batch slot and KV pages at its next step.
func (s *Service) Generate(req *loraplexv1.GenerateRequest, stream grpc.ServerStreamingServer[loraplexv1.GenerateResponse]) error {
	ctx := stream.Context()
	// Bounded before any work (templating, tokenizing, queueing), as on HTTP.
	if err := s.e.CheckCounts(serve.Counts{Prompts: 1, N: 1, Stop: req.GetParams().GetStop(),
		StopTokenIDs: len(req.GetParams().GetStopTokenIds()), LogitBias: len(req.GetParams().GetLogitBias())}); err != nil {
		return s.toStatus(ctx, generateMethod, err)
	}
	p, err := params(req.GetParams())
	if err != nil {
		return s.toStatus(ctx, generateMethod, err)
	}
	prompt, tools, err := s.prompt(req, &p)
	if err != nil {
		return s.toStatus(ctx, generateMethod, err)
	}
	if err := s.checkTrace(req); err != nil {
		return s.toStatus(ctx, generateMethod, err)
	}
	st, err := s.e.Generate(ctx, serve.Request{Model: req.GetModel(), Prompt: prompt, Params: p, TraceExperts: req.GetExpertTrace()})
	if err != nil {
		return s.toStatus(ctx, generateMethod, err)
	}
	defer st.Cancel() // no-op after the final event; frees the request if Send fails
	var parser *toolStream
	if tools.Format != nil {
		parser = &toolStream{s: tools.Format.NewStream(tools.MaxCalls)}
	}
	// respond is ev's response, its text parsed into content and calls when the request
	// parses tool calls (last: the output ends, with a final event or an error).
	respond := func(ev serve.Event, last bool) *loraplexv1.GenerateResponse {
		r := response(ev)
		if parser != nil {
			parser.feed(r, ev.Text, last)
			r.FinishReason = tools.FinishWithCalls(r.FinishReason, parser.calls)
		}
		return r
	}
	for {
		ev, ok := st.Next(ctx)
		if !ok {
			// ctx ended before the final event: the client went away or its deadline passed.
			if err := ctx.Err(); err != nil {
				return status.FromContextError(err).Err()
			}
			return s.toStatus(ctx, generateMethod, errors.New("engine stream ended without a final event"))
		}
		if ev.Err != nil {
			// An aborted or failed request: deliver what was generated (and what the tool-call
			// parser held back), then the error's code (Unavailable when the server shuts
			// down, Internal for a failed step).
			ev.Finish, ev.StopReason, ev.Usage = "", nil, nil
			if r := respond(ev, true); len(r.TokenIds) > 0 || r.Text != "" || len(r.ToolCalls) > 0 {
				if err := stream.Send(r); err != nil {
					return err
				}
			}
			return s.toStatus(ctx, generateMethod, ev.Err)
		}
		if err := stream.Send(respond(ev, ev.Finish != "")); err != nil {
			return err
		}
		if ev.Finish != "" {
			return nil
		}
	}
}

// params maps the proto's sampling parameters onto the engine's, which has the same zero-value
// meanings; the engine validates them (ranges, logit_bias, the structure's compilation), so
// both APIs answer a bad value with the same message. Only what the proto adds is checked here.
func params(p *loraplexv1.SamplingParams) (serve.SamplingParams, error) {
	if p == nil {
		p = &loraplexv1.SamplingParams{}
	}
	if p.GetPromptOnly() && p.GetMaxTokens() != 0 {
		return serve.SamplingParams{}, invalid("max_tokens", fmt.Sprintf("max_tokens must be 0 with prompt_only (nothing is generated), got %d", p.GetMaxTokens()))
	}
	constraint, err := structuredOutput(p.GetStructuredOutput())
	if err != nil {
		return serve.SamplingParams{}, err
	}
	var bias map[int]float64
	if len(p.GetLogitBias()) > 0 {
		bias = make(map[int]float64, len(p.GetLogitBias()))
		for t, b := range p.GetLogitBias() {
			bias[int(t)] = b
		}
	}
	return serve.SamplingParams{
		MaxTokens:         int(p.GetMaxTokens()),
		MinTokens:         int(p.GetMinTokens()),
		Temperature:       p.GetTemperature(),
		TopP:              p.GetTopP(),
		TopK:              int(p.GetTopK()),
		MinP:              p.GetMinP(),
		Seed:              p.Seed,
		RepetitionPenalty: p.GetRepetitionPenalty(),
		PresencePenalty:   p.GetPresencePenalty(),
		FrequencyPenalty:  p.GetFrequencyPenalty(),
		Stop:              p.GetStop(),
		StopTokenIDs:      ints(p.GetStopTokenIds()),
		IgnoreEOS:         p.GetIgnoreEos(),
		Logprobs:          int(p.GetLogprobs()),
		SkipSpecialTokens: p.SkipSpecialTokens == nil || *p.SkipSpecialTokens,
		LogitBias:         bias,
		PromptLogprobs:    int(p.GetPromptLogprobs()),
		PromptOnly:        p.GetPromptOnly(),
		Constraint:        constraint,
	}, nil
}

// structuredParam is the field that errors about a structured output name.
const structuredParam = "structured_output"

// structuredOutput maps the proto's StructuredOutput onto the engine's constraint (nil: none).
// The engine compiles it, so an unsupported keyword or an invalid regex is the same
// InvalidArgument as on HTTP.
func structuredOutput(so *loraplexv1.StructuredOutput) (*serve.Constraint, error) {
	var spec structured.Spec
	switch k := so.GetKind().(type) {
	case nil:
		return nil, nil
	case *loraplexv1.StructuredOutput_JsonSchema:
		spec = structured.Spec{Kind: structured.JSONSchema, Text: k.JsonSchema}
	case *loraplexv1.StructuredOutput_JsonObject:
		if !k.JsonObject {
			return nil, invalid(structuredParam, "structured_output.json_object must be true when set")
		}
		spec = structured.Spec{Kind: structured.JSONObject}
	case *loraplexv1.StructuredOutput_Regex:
		spec = structured.Spec{Kind: structured.Regex, Text: k.Regex}
	case *loraplexv1.StructuredOutput_Choice:
		spec = structured.Spec{Kind: structured.Choice, Choices: k.Choice.GetChoices()}
	default:
		return nil, invalid(structuredParam, fmt.Sprintf("structured_output: unknown kind %T", k))
	}
	return &serve.Constraint{Spec: spec, Param: structuredParam}, nil
}

func response(ev serve.Event) *loraplexv1.GenerateResponse {
	r := &loraplexv1.GenerateResponse{
		TokenIds: int32s(ev.Tokens),
		// The engine only emits whole characters; this guards the wire against a decoder bug,
		// since proto3 refuses to marshal a string that is not UTF-8.
		Text:         strings.ToValidUTF8(ev.Text, "\uFFFD"),
		FinishReason: ev.Finish,
		ExpertTrace:  experts(ev.Experts),
	}
	for i, lp := range ev.Logprobs {
		tl := &loraplexv1.TokenLogprobs{Chosen: &loraplexv1.Logprob{TokenId: int32(lp.Token), Logprob: lp.Logprob}}
		if i < len(ev.Top) {
			for _, t := range ev.Top[i] {
				tl.Top = append(tl.Top, &loraplexv1.Logprob{TokenId: int32(t.Token), Logprob: t.Logprob})
			}
		}
		r.Logprobs = append(r.Logprobs, tl)
	}
	switch v := ev.StopReason.(type) {
	case string:
		r.StopReason = &loraplexv1.GenerateResponse_StopString{StopString: v}
	case int:
		r.StopReason = &loraplexv1.GenerateResponse_StopTokenId{StopTokenId: int32(v)}
	case nil:
	default:
		// A new kind of stop reason in the engine; say so rather than drop it silently.
		r.StopReason = &loraplexv1.GenerateResponse_StopString{StopString: fmt.Sprint(v)}
	}
	for _, lp := range ev.PromptLogprobs {
		pl := &loraplexv1.PromptLogprob{TokenId: int32(lp.Token), Logprob: lp.Logprob, Rank: int32(lp.Rank)}
		for _, t := range lp.Top {
			pl.Top = append(pl.Top, &loraplexv1.Logprob{TokenId: int32(t.Token), Logprob: t.Logprob})
		}
		r.PromptLogprobs = append(r.PromptLogprobs, pl)
	}
	if ev.Usage != nil {
		r.Usage = &loraplexv1.Usage{PromptTokens: int32(ev.Usage.PromptTokens), CompletionTokens: int32(ev.Usage.CompletionTokens),
			CachedTokens: int32(ev.Usage.CachedTokens)}
	}
	return r
}
