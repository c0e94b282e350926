package grpcapi

import (
	"fmt"

	loraplexv1 "github.com/loraplex/loraplex/api/proto/loraplex/v1"
	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/tokenizer/chat"
)

// encode tokenizes text. addSpecial defaults to def when the client left it unset: true for
// plain text, false for rendered chat (the template already wrote the special tokens it wants,
// and a second BOS would change the model's output).
func (s *Service) encode(text string, addSpecial *bool, def bool, param string) ([]int, error) {
	tok := s.e.Tokenizer()
	if tok == nil {
		return nil, invalid(param, "this model has no tokenizer; send token_ids")
	}
	add := def
	if addSpecial != nil {
		add = *addSpecial
	}
	if err := s.e.CheckPromptText(param, text); err != nil {
		return nil, err
	}
	ids, err := tok.Encode(text, add)
	if err != nil {
		return nil, invalid(param, fmt.Sprintf("cannot tokenize: %v", err))
	}
	return ids, nil
}

// render turns chat messages into prompt text with the configured template. The prompt's
// counts are bounded and its tools checked before (chatTools, then serve.CheckTools or
// serve.PlanTools).
func (s *Service) render(p *loraplexv1.ChatPrompt) (string, error) {
	if s.opt.ChatTemplate == nil {
		return "", invalid("messages", "this model has no chat template; send text or token_ids")
	}
	if len(p.GetMessages()) == 0 {
		return "", invalid("messages", "messages must not be empty")
	}
	msgs := make([]chat.Message, len(p.GetMessages()))
	for i, m := range p.GetMessages() {
		if m.GetRole() == "" {
			return "", invalid("messages", fmt.Sprintf("messages[%d].role is required", i))
		}
		msgs[i] = chat.Message{Role: m.GetRole(), Content: m.GetContent(), ToolCallID: m.GetToolCallId()}
		for j, tc := range m.GetToolCalls() {
			c := chat.ToolCall{ID: tc.GetId(), Type: "function"}
			args, err := serve.ToolCallArguments(tc.GetArguments())
			if err != nil {
				return "", invalid("messages", fmt.Sprintf("messages[%d].tool_calls[%d].%v", i, j, err))
			}
			c.Function.Name, c.Function.Arguments = tc.GetName(), args
			msgs[i].ToolCalls = append(msgs[i].ToolCalls, c)
		}
	}
	addGen := p.AddGenerationPrompt == nil || *p.AddGenerationPrompt
	opts := chat.Options{AddGenerationPrompt: addGen, Tokens: s.opt.ChatTokens}
	if len(p.GetTools()) > 0 {
		tools, err := templateTools(p.GetTools())
		if err != nil {
			return "", err
		}
		opts.RawTools = tools
	}
	text, err := s.opt.ChatTemplate.Render(msgs, opts)
	if err != nil {
		return "", invalid("messages", fmt.Sprintf("rendering the chat template: %v", err))
	}
	return text, nil
}

// prompt resolves GenerateRequest's oneof into token ids; for messages it also plans their
// tool calling into p (before rendering, so that bad tools cost nothing).
func (s *Service) prompt(req *loraplexv1.GenerateRequest, p *serve.SamplingParams) ([]int, serve.ToolPlan, error) {
	switch pr := req.GetPrompt().(type) {
	case *loraplexv1.GenerateRequest_Text:
		ids, err := s.encode(pr.Text, req.AddSpecialTokens, true, "text")
		return ids, serve.ToolPlan{}, err
	case *loraplexv1.GenerateRequest_TokenIds:
		// Range checks are the engine's (InvalidArgument for out-of-vocabulary ids).
		return ints(pr.TokenIds.GetIds()), serve.ToolPlan{}, nil
	case *loraplexv1.GenerateRequest_Messages:
		tools, err := s.chatTools(pr.Messages)
		if err != nil {
			return nil, serve.ToolPlan{}, err
		}
		plan, err := s.planTools(pr.Messages, tools, req.GetParams() != nil && req.GetParams().SkipSpecialTokens != nil, p)
		if err != nil {
			return nil, serve.ToolPlan{}, err
		}
		text, err := s.render(pr.Messages)
		if err != nil {
			return nil, serve.ToolPlan{}, err
		}
		ids, err := s.encode(text, req.AddSpecialTokens, false, "messages")
		return ids, plan, err
	default:
		return nil, serve.ToolPlan{}, invalid("prompt", "one of text, token_ids or messages is required")
	}
}

// checkModel rejects a model name the engine does not serve, for the calls that do not go
// through Generate (which checks it itself).
func (s *Service) checkModel(name string) error {
	if name == "" {
		return nil
	}
	_, err := s.e.Serves(name)
	return err
}

func ints(v []int32) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

func int32s(v []int) []int32 {
	out := make([]int32, len(v))
	for i, x := range v {
		out[i] = int32(x)
	}
	return out
}
