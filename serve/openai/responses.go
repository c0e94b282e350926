package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/structured"
)

// OpenAI's Responses API (POST /v1/responses) on the chat path: a request is converted once
// into the chat request it means (instructions and input items become messages, text.format
// becomes the constraint, max_output_tokens the token limit) and runs through chat's own
// parameter checks, limits, template and engine call; only the output's shape is this file's.
// No state is kept: the fields that need stored responses or conversations, background runs
// and built-in tools are a 400 naming the field, never ignored.

// responsesRequest is a Responses API request as it arrives. samplingFields carries model,
// temperature, top_p and stream (the same names as chat) and vLLM's sampling extensions
// (seed, top_k, stop, logit_bias, ...), which mean what they mean on chat.
type responsesRequest struct {
	samplingFields
	Input           json.RawMessage   `json:"input"`
	Instructions    *string           `json:"instructions"`
	MaxOutputTokens *int              `json:"max_output_tokens"`
	Text            *responsesText    `json:"text"`
	TopLogprobs     *int              `json:"top_logprobs"`
	Include         []string          `json:"include"`
	Metadata        map[string]string `json:"metadata"`
	Tools           []json.RawMessage `json:"tools"`
	ToolChoice      json.RawMessage   `json:"tool_choice"`
	// ParallelToolCalls false keeps at most one function call (chat's field of the same name).
	ParallelToolCalls *bool `json:"parallel_tool_calls"`
	// Stateful and server-side features this server does not have.
	Store              json.RawMessage `json:"store"`
	PreviousResponseID json.RawMessage `json:"previous_response_id"`
	Background         json.RawMessage `json:"background"`
	Conversation       json.RawMessage `json:"conversation"`
	Prompt             json.RawMessage `json:"prompt"`
	Reasoning          json.RawMessage `json:"reasoning"`
	Truncation         json.RawMessage `json:"truncation"`
	// Chat's names for what the Responses API names otherwise: refused with the right name,
	// since a client that sends them means something this endpoint would otherwise ignore.
	Messages            json.RawMessage `json:"messages"`
	MaxCompletionTokens json.RawMessage `json:"max_completion_tokens"`
}

// responsesText is the request's and the response's `text`: the output format.
type responsesText struct {
	Format    json.RawMessage `json:"format"`
	Verbosity json.RawMessage `json:"verbosity,omitempty"`
}

// responsesParams map the chat request's field names, which the shared checks put in errors,
// to the Responses API's.
var responsesParams = map[string]string{"max_tokens": "max_output_tokens", "messages": "input", "response_format": "text.format"}

// responsesError names the Responses API's field in an error raised on the chat path.
func responsesError(err error) error {
	if err == nil {
		return nil
	}
	ae := fromEngine(err)
	to, ok := responsesParams[ae.param]
	if !ok {
		return err // as it was, so that the log keeps an internal error's details
	}
	renamed := *ae
	renamed.param = to
	return &renamed
}

// refused checks the fields this endpoint does not implement: stateful ones, then chat's names
// for Responses fields and the vLLM extensions whose output has no place in a response.
func (r *responsesRequest) refused() error {
	stateless := "this server keeps no responses or conversations; send the whole input"
	checks := []struct {
		name, why string
		raw       json.RawMessage
	}{
		{"store", stateless + " (store must be false or absent)", r.Store},
		{"previous_response_id", stateless, r.PreviousResponseID},
		{"conversation", stateless, r.Conversation},
		{"background", "background responses are not supported (there is no stored response to poll)", r.Background},
		{"prompt", "stored prompt templates are not supported; send instructions and input", r.Prompt},
		{"messages", "the Responses API takes input, not messages", r.Messages},
		{"max_completion_tokens", "the Responses API takes max_output_tokens", r.MaxCompletionTokens},
		{"max_tokens", "the Responses API takes max_output_tokens", rawOf(r.MaxTokens)},
		{"response_format", "the Responses API takes text.format", r.ResponseFormat},
		{"n", "the Responses API returns one output; n is not supported", rawOf(r.N)},
		{"prompt_logprobs", "prompt_logprobs have no place in a response; use /v1/completions", rawOf(r.PromptLogprobs)},
		{"expert_trace", "expert_trace is available on /v1/completions and /v1/chat/completions only", rawOf(r.ExpertTrace)},
		{"return_token_ids", "return_token_ids is available on /v1/completions and /v1/chat/completions only", rawOf(r.ReturnTokenIDs)},
	}
	for _, c := range checks {
		if !neutral(c.raw) && !(c.name == "n" && string(c.raw) == "1") {
			return invalid(c.name, "%s: %s", c.name, c.why)
		}
	}
	if t := string(bytes.TrimSpace(r.Truncation)); t != "" && t != "null" && t != `"disabled"` {
		return invalid("truncation", `truncation: only "disabled" is supported (a prompt longer than the context is a 400, never cut)`)
	}
	if r.Text != nil {
		if v := string(bytes.TrimSpace(r.Text.Verbosity)); v != "" && v != "null" && v != `"medium"` {
			return invalid("text.verbosity", `text.verbosity: only "medium" (the default) is supported, got %s`, v)
		}
	}
	if !neutralReasoning(r.Reasoning) {
		return invalid("reasoning", "reasoning: the served models do not reason; reasoning options are not supported")
	}
	return nil
}

// rawOf is v as JSON (absent when nil or zero), for the neutral-value check.
func rawOf[T comparable](v T) json.RawMessage {
	var zero T
	if v == zero {
		return nil
	}
	b, _ := json.Marshal(v)
	return b
}

// neutralReasoning accepts a reasoning object that asks for nothing (absent, null, {} or only
// null members), which clients send by default.
func neutralReasoning(raw json.RawMessage) bool {
	if isNull(raw) {
		return true
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	for _, v := range m {
		if !isNull(v) {
			return false
		}
	}
	return true
}

// responsesTools maps the Responses API's function tools ({"type":"function","name",
// "description","parameters","strict"}) and tool_choice ("auto", "none", "required" or
// {"type":"function","name"}) to chat's forms ({"type":"function","function":{...}},
// {"type":"function","function":{"name"}}), which chat's tool calling then checks, renders,
// forces and parses as it does its own. Built-in tools (web_search, file_search, ...) run on
// OpenAI's servers and are refused here.
func responsesTools(tools []json.RawMessage, choice json.RawMessage) (chatTools []json.RawMessage, chatChoice json.RawMessage, err error) {
	for i, raw := range tools {
		var tool struct {
			Type        string          `json:"type"`
			Name        string          `json:"name"`
			Description string          `json:"description"`
			Parameters  json.RawMessage `json:"parameters"`
			Strict      *bool           `json:"strict"`
		}
		if err := json.Unmarshal(raw, &tool); err != nil {
			return nil, nil, invalid("tools", "tools[%d] must be an object with a type", i)
		}
		if tool.Type != "function" {
			return nil, nil, invalid("tools", "tools[%d]: the built-in tool %q is not supported by this server (only function tools are)", i, tool.Type)
		}
		if tool.Name == "" {
			return nil, nil, invalid("tools", "tools[%d].name is required", i)
		}
		// In OpenAI's order: the template renders the tool as it is written here.
		fn := struct {
			Name        string          `json:"name"`
			Description string          `json:"description,omitempty"`
			Parameters  json.RawMessage `json:"parameters,omitempty"`
			Strict      *bool           `json:"strict,omitempty"`
		}{tool.Name, tool.Description, tool.Parameters, tool.Strict}
		if isNull(fn.Parameters) {
			fn.Parameters = nil
		}
		b, _ := json.Marshal(map[string]any{"type": "function", "function": fn}) // strings, a bool and valid JSON
		chatTools = append(chatTools, b)
	}
	if isNull(choice) {
		return chatTools, nil, nil
	}
	var mode string
	if json.Unmarshal(choice, &mode) == nil {
		if mode != "auto" && mode != "none" && mode != "required" {
			return nil, nil, invalid("tool_choice", `tool_choice must be "auto", "none", "required" or a function, got %q`, mode)
		}
		return chatTools, choice, nil
	}
	var named struct {
		Type string `json:"type"`
		Name string `json:"name"`
	}
	if json.Unmarshal(choice, &named) != nil || named.Type != "function" || named.Name == "" {
		return nil, nil, invalid("tool_choice", `tool_choice must be "auto", "none", "required" or {"type":"function","name":...}`)
	}
	b, _ := json.Marshal(map[string]any{"type": "function", "function": map[string]string{"name": named.Name}})
	return chatTools, b, nil
}

// inputMessages converts instructions and input into chat messages: instructions first as a
// system message, then input (a string: one user message; a list: input items, see inputItem).
func (r *responsesRequest) inputMessages() ([]chatMessage, error) {
	var msgs []chatMessage
	text := func(s string) json.RawMessage { b, _ := json.Marshal(s); return b }
	if r.Instructions != nil && *r.Instructions != "" {
		msgs = append(msgs, chatMessage{Role: "system", Content: text(*r.Instructions)})
	}
	raw := bytes.TrimSpace(r.Input)
	if isNull(raw) {
		return nil, invalid("input", "input is required")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return append(msgs, chatMessage{Role: "user", Content: text(s)}), nil
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return nil, invalid("input", "input must be a string or an array of input items")
	}
	if len(items) == 0 {
		return nil, invalid("input", "input must not be empty")
	}
	// Bounded before any item is decoded (the limit is chat's messages limit).
	if len(msgs)+len(items) > serve.MaxMessages {
		return nil, invalid("input", "at most %d input items per request, got %d", serve.MaxMessages, len(items))
	}
	for i, raw := range items {
		var err error
		if msgs, err = inputItem(msgs, raw, i); err != nil {
			return nil, err
		}
	}
	return msgs, nil
}

// inputItem adds one input item to msgs: a message ({"role","content"} with an optional
// "type":"message", developer read as system, which chat templates know); a function_call (a
// call the model made, as the client sends it back), which joins the assistant message just
// before it as one of its tool_calls, or starts one; a function_call_output (the tool's
// result), chat's tool message.
func inputItem(msgs []chatMessage, raw json.RawMessage, i int) ([]chatMessage, error) {
	var item struct {
		Type      string          `json:"type"`
		Role      string          `json:"role"`
		Content   json.RawMessage `json:"content"`
		CallID    string          `json:"call_id"`
		Name      string          `json:"name"`
		Arguments *string         `json:"arguments"`
		Output    json.RawMessage `json:"output"`
	}
	if err := json.Unmarshal(raw, &item); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, invalid("input", "input[%d].%s must be a %s, got %s", i, te.Field, te.Type, te.Value)
		}
		return nil, invalid("input", "input[%d] must be an object", i)
	}
	switch item.Type {
	case "", "message":
	case "function_call":
		if item.CallID == "" || item.Name == "" || item.Arguments == nil {
			return nil, invalid("input", "input[%d]: a function_call item needs call_id, name and arguments", i)
		}
		call, _ := json.Marshal(map[string]any{"id": item.CallID, "type": "function",
			"function": map[string]string{"name": item.Name, "arguments": *item.Arguments}}) // strings only
		if n := len(msgs); n > 0 && msgs[n-1].Role == "assistant" {
			msgs[n-1].ToolCalls = append(msgs[n-1].ToolCalls, call)
			return msgs, nil
		}
		return append(msgs, chatMessage{Role: "assistant", ToolCalls: []json.RawMessage{call}}), nil
	case "function_call_output":
		if item.CallID == "" {
			return nil, invalid("input", "input[%d]: a function_call_output item needs the call_id of its call", i)
		}
		if isNull(item.Output) {
			return nil, invalid("input", "input[%d].output is required", i)
		}
		output, err := inputText(item.Output, fmt.Sprintf("input[%d].output", i))
		if err != nil {
			return nil, err
		}
		return append(msgs, chatMessage{Role: "tool", ToolCallID: item.CallID, Content: output}), nil
	default:
		return nil, invalid("input", "input[%d]: item type %q is not supported (message, function_call and function_call_output are)", i, item.Type)
	}
	role := item.Role
	switch role {
	case "user", "assistant", "system":
	case "developer":
		role = "system"
	case "":
		return nil, invalid("input", "input[%d].role is required", i)
	default:
		return nil, invalid("input", "input[%d].role must be user, assistant, system or developer, got %q", i, role)
	}
	content, err := inputText(item.Content, fmt.Sprintf("input[%d].content", i))
	if err != nil {
		return nil, err
	}
	return append(msgs, chatMessage{Role: role, Content: content}), nil
}

// inputText reads an item's text (what: where it is, for errors): a string or a list of
// input_text / output_text parts, joined by newlines, as a JSON string.
func inputText(raw json.RawMessage, what string) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return raw, nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return nil, invalid("input", "%s must be a string or an array of content parts", what)
	}
	texts := make([]string, 0, len(parts))
	for j, p := range parts {
		switch {
		case p.Type != "input_text" && p.Type != "output_text":
			return nil, invalid("input", "%s[%d]: part type %q is not supported (input_text and output_text only)", what, j, p.Type)
		case p.Text == nil:
			return nil, invalid("input", "%s[%d].text is required", what, j)
		}
		texts = append(texts, *p.Text)
	}
	joined, _ := json.Marshal(strings.Join(texts, "\n"))
	return joined, nil
}

// textFormat reads text.format ({"type":"text"}, {"type":"json_object"} or {"type":
// "json_schema","name","schema","strict","description"}) into the engine's constraint.
func textFormat(t *responsesText) (*serve.Constraint, error) {
	const param = "text.format"
	if t == nil || isNull(t.Format) {
		return nil, nil
	}
	var f struct {
		Type   string          `json:"type"`
		Schema json.RawMessage `json:"schema"`
	}
	if err := strictObject(t.Format, param, &f, "type", "name", "schema", "strict", "description"); err != nil {
		return nil, err
	}
	switch f.Type {
	case "text":
		return nil, nil
	case "json_object":
		return &serve.Constraint{Spec: structured.Spec{Kind: structured.JSONObject}, Param: param}, nil
	case "json_schema":
		if isNull(f.Schema) {
			return nil, invalid(param, "text.format of type json_schema needs a schema")
		}
		return schemaConstraint(f.Schema, param)
	}
	return nil, invalid(param, "text.format type must be text, json_object or json_schema, got %q", f.Type)
}

// toChat is the one conversion of a Responses request into the chat request it means, and its
// output constraint (text.format).
func (r *responsesRequest) toChat() (*chatRequest, *serve.Constraint, error) {
	chatTools, chatChoice, err := responsesTools(r.Tools, r.ToolChoice)
	if err != nil {
		return nil, nil, err
	}
	if r.MaxOutputTokens != nil && *r.MaxOutputTokens < 1 {
		return nil, nil, invalid("max_output_tokens", "max_output_tokens must be at least 1, got %d", *r.MaxOutputTokens)
	}
	for _, inc := range r.Include {
		if inc != "message.output_text.logprobs" && inc != "reasoning.encrypted_content" {
			return nil, nil, invalid("include", "include: %q is not supported (message.output_text.logprobs is)", inc)
		}
	}
	constraint, err := textFormat(r.Text)
	if err != nil {
		return nil, nil, err
	}
	msgs, err := r.inputMessages()
	if err != nil {
		return nil, nil, err
	}
	c := &chatRequest{samplingFields: r.samplingFields, chatFields: chatFields{Messages: msgs, Tools: chatTools}}
	c.ToolChoice, c.ParallelToolCalls = chatChoice, r.ParallelToolCalls
	c.MaxTokens = r.MaxOutputTokens
	c.Logprobs = slices.Contains(r.Include, "message.output_text.logprobs") || (r.TopLogprobs != nil && *r.TopLogprobs > 0)
	c.TopLogprobs = r.TopLogprobs
	// A message's logprobs are its tokens'; once the output is split into text and function
	// calls, which tokens are whose is the parser's guess: refused rather than made up.
	if c.Logprobs && len(chatTools) > 0 && string(bytes.TrimSpace(chatChoice)) != `"none"` {
		return nil, nil, invalid("include", "logprobs (include message.output_text.logprobs, top_logprobs) are not supported together with function tools, unless tool_choice is \"none\"")
	}
	return c, constraint, nil
}

func (h *Handler) responses(w http.ResponseWriter, r *http.Request) error {
	var req responsesRequest
	if err := h.decode(r, &req); err != nil {
		return err
	}
	// Refusals name the field as sent (chat's names included), so they skip responsesError.
	if err := req.refused(); err != nil {
		return err
	}
	res, err := h.startResponse(r.Context(), &req)
	if err != nil {
		return responsesError(err)
	}
	defer res.cancel()
	if req.Stream {
		return res.stream(w, r.Context())
	}
	return res.collect(w, r.Context())
}

// startResponse converts req into its chat request and starts it on chat's request path.
func (h *Handler) startResponse(ctx context.Context, req *responsesRequest) (*responseState, error) {
	// Tools are bounded before any is read (input items are, in inputMessages).
	if err := h.e.CheckCounts(serve.Counts{Tools: len(req.Tools)}); err != nil {
		return nil, err
	}
	c, format, err := req.toChat()
	if err != nil {
		return nil, err
	}
	run, err := h.startChat(ctx, c, format)
	if err != nil {
		return nil, err
	}
	res := &responseState{h: h, req: req, chat: c, prompt: run.prompt, events: run.events, cancel: run.cancel, tools: run.tools,
		choices: newChoiceSet(1, 1), id: newID("resp_"), created: time.Now().Unix(), model: h.modelName(c.Model)}
	res.temperature, res.topP = 1, 1
	if c.Temperature != nil {
		res.temperature = *c.Temperature
	}
	if c.TopP != nil {
		res.topP = *c.TopP
	}
	return res, nil
}
