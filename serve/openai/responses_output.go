package openai

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/loraplex/loraplex/serve"
	"github.com/loraplex/loraplex/serve/toolcall"
)

// The output side of /v1/responses: the response object, collected or streamed as OpenAI's
// named events, from the chat path's engine events (responses.go builds the request).

// responseState is one response in progress.
type responseState struct {
	h       *Handler
	req     *responsesRequest
	chat    *chatRequest
	prompt  []int
	events  <-chan choiceEvent
	cancel  context.CancelFunc
	tools   serve.ToolPlan
	choices choiceSet
	id      string
	created int64
	model   string

	temperature, topP float64
}

// The response object and its parts, as OpenAI's Responses API writes them.
type (
	responseObject struct {
		ID                 string             `json:"id"`
		Object             string             `json:"object"`
		CreatedAt          int64              `json:"created_at"`
		Status             string             `json:"status"`
		Background         bool               `json:"background"`
		Error              *responseError     `json:"error"`
		IncompleteDetails  *incompleteDetails `json:"incomplete_details"`
		Instructions       *string            `json:"instructions"`
		MaxOutputTokens    *int               `json:"max_output_tokens"`
		Model              string             `json:"model"`
		Output             []responseItem     `json:"output"`
		ParallelToolCalls  bool               `json:"parallel_tool_calls"`
		PreviousResponseID *string            `json:"previous_response_id"`
		Reasoning          map[string]any     `json:"reasoning"`
		Store              bool               `json:"store"`
		Temperature        float64            `json:"temperature"`
		Text               responsesText      `json:"text"`
		ToolChoice         json.RawMessage    `json:"tool_choice"`
		Tools              []json.RawMessage  `json:"tools"`
		TopLogprobs        int                `json:"top_logprobs"`
		TopP               float64            `json:"top_p"`
		Truncation         string             `json:"truncation"`
		Usage              *responseUsage     `json:"usage"`
		Metadata           map[string]string  `json:"metadata"`
		User               *string            `json:"user"`
	}
	responseError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	incompleteDetails struct {
		Reason string `json:"reason"`
	}
	// responseItem is an output item: a message (role, content) or a function_call (call_id,
	// name, arguments: a JSON string).
	responseItem struct {
		ID        string         `json:"id"`
		Type      string         `json:"type"`
		Status    string         `json:"status"`
		Role      string         `json:"role,omitzero"`
		Content   []responsePart `json:"content,omitzero"`
		CallID    string         `json:"call_id,omitzero"`
		Name      string         `json:"name,omitzero"`
		Arguments *string        `json:"arguments,omitzero"`
	}
	responsePart struct {
		Type        string        `json:"type"`
		Text        string        `json:"text"`
		Annotations []any         `json:"annotations"`
		Logprobs    []chatLogprob `json:"logprobs"`
	}
	responseUsage struct {
		InputTokens        int `json:"input_tokens"`
		InputTokensDetails struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"input_tokens_details"`
		OutputTokens        int `json:"output_tokens"`
		OutputTokensDetails struct {
			ReasoningTokens int `json:"reasoning_tokens"`
		} `json:"output_tokens_details"`
		TotalTokens int `json:"total_tokens"`
	}
)

// object is the response as it stands: status "in_progress" until the output item is done,
// then "completed", or "incomplete" when the token limit (max_output_tokens or the context)
// cut the output short.
func (res *responseState) object(status string, output []responseItem, usage *responseUsage) responseObject {
	o := responseObject{ID: res.id, Object: "response", CreatedAt: res.created, Status: status, Instructions: res.req.Instructions,
		MaxOutputTokens: res.req.MaxOutputTokens, Model: res.model, Output: output, ParallelToolCalls: true,
		Reasoning: map[string]any{"effort": nil, "summary": nil}, Temperature: res.temperature, ToolChoice: res.req.ToolChoice,
		Tools: res.req.Tools, TopP: res.topP, Truncation: "disabled", Usage: usage, Metadata: res.req.Metadata}
	if isNull(o.ToolChoice) {
		o.ToolChoice = json.RawMessage(`"auto"`)
	}
	if o.Tools == nil {
		o.Tools = []json.RawMessage{}
	}
	if p := res.req.ParallelToolCalls; p != nil {
		o.ParallelToolCalls = *p
	}
	o.Text.Format = json.RawMessage(`{"type":"text"}`)
	if res.req.Text != nil && !isNull(res.req.Text.Format) {
		o.Text.Format = res.req.Text.Format
	}
	if res.req.TopLogprobs != nil {
		o.TopLogprobs = *res.req.TopLogprobs
	}
	if o.Metadata == nil {
		o.Metadata = map[string]string{}
	}
	if status == "incomplete" {
		o.IncompleteDetails = &incompleteDetails{Reason: "max_output_tokens"}
	}
	return o
}

// finalStatus is the response's status once its choice has finished.
func (res *responseState) finalStatus() string {
	if res.choices.st[0].final.Finish == "length" {
		return "incomplete"
	}
	return "completed"
}

func (res *responseState) usage() *responseUsage {
	u := res.choices.usage(len(res.prompt))
	var ru responseUsage
	ru.InputTokens, ru.OutputTokens, ru.TotalTokens = u.PromptTokens, u.CompletionTokens, u.TotalTokens
	ru.InputTokensDetails.CachedTokens = u.PromptTokensDetails.CachedTokens
	return &ru
}

func (res *responseState) collect(w http.ResponseWriter, ctx context.Context) error {
	out := res.newOutput(nil)
	for ev := range res.events {
		_, _, err := res.choices.take(&ev, true)
		if err != nil {
			return err
		}
		var lp chatLogprobs
		if res.chat.Logprobs {
			res.h.appendChat(&lp, &ev.Event, res.chat.ReturnTokensAsTokenIDs)
		}
		out.feed(ev.Text, lp.Content, ev.Finish != "") // collecting sends nothing: no error
	}
	if err := res.choices.complete(ctx); err != nil {
		return err
	}
	status := res.finalStatus()
	out.finish(status)
	writeJSON(w, http.StatusOK, res.object(status, out.items, res.usage()))
	return nil
}

// responseOutput builds a response's output items from the generated text as it comes, and
// sends the stream events that say so (emit nil: collecting, nothing is sent). Without a
// tool-call format the text is one message, opened at once. With one, chat's tool-call parser
// splits it into text and function calls, each an item of its own in the order it begins
// (text after a call opens a new message), opened when it begins and done when the next one
// begins or the output ends. Collected and streamed responses are built by this one code, so
// they are equal.
type responseOutput struct {
	parser *toolcall.Stream
	emit   func(typ string, fields map[string]any) error
	items  []responseItem
	open   bool // the last item is still being written
}

func (res *responseState) newOutput(emit func(typ string, fields map[string]any) error) *responseOutput {
	o := &responseOutput{emit: emit}
	if f := res.tools.Format; f != nil {
		o.parser = f.NewStream(res.tools.MaxCalls)
	}
	return o
}

// begin opens the message of an output that has no tool calls to parse.
func (o *responseOutput) begin() error {
	if o.parser != nil {
		return nil
	}
	return o.openMessage()
}

func (o *responseOutput) send(typ string, fields map[string]any) error {
	if o.emit == nil {
		return nil
	}
	return o.emit(typ, fields)
}

// at adds the address of the last item (and its one text part for a message) to fields.
func (o *responseOutput) at(fields map[string]any) map[string]any {
	last := len(o.items) - 1
	fields["item_id"], fields["output_index"] = o.items[last].ID, last
	if o.items[last].Type == "message" {
		fields["content_index"] = 0
	}
	return fields
}

// feed adds one engine event's text and its tokens' logprobs; last: the output ends with it.
func (o *responseOutput) feed(text string, lp []chatLogprob, last bool) error {
	if o.parser == nil {
		return o.text(text, lp)
	}
	deltas := o.parser.Feed(text)
	if last {
		deltas = append(deltas, o.parser.Finish()...)
	}
	for _, d := range deltas {
		var err error
		switch {
		case !d.Call:
			err = o.text(d.Content, nil)
		case d.Start:
			err = o.openCall(d.Name)
		default:
			err = o.arguments(d.Arguments)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (o *responseOutput) openMessage() error {
	if err := o.close("completed"); err != nil {
		return err
	}
	o.items = append(o.items, responseItem{ID: newID("msg_"), Type: "message", Status: "in_progress", Role: "assistant", Content: []responsePart{}})
	o.open = true
	if err := o.send("response.output_item.added", map[string]any{"output_index": len(o.items) - 1, "item": o.items[len(o.items)-1]}); err != nil {
		return err
	}
	part := responsePart{Type: "output_text", Text: "", Annotations: []any{}, Logprobs: []chatLogprob{}}
	o.items[len(o.items)-1].Content = []responsePart{part}
	return o.send("response.content_part.added", o.at(map[string]any{"part": part}))
}

// text adds text to the open message, opening one if the last item is not.
func (o *responseOutput) text(text string, lp []chatLogprob) error {
	// A token that ends inside a UTF-8 character has no text yet: it comes with the next.
	if text == "" && len(lp) == 0 {
		return nil
	}
	if !o.open || o.items[len(o.items)-1].Type != "message" {
		if err := o.openMessage(); err != nil {
			return err
		}
	}
	part := &o.items[len(o.items)-1].Content[0]
	part.Text += text
	part.Logprobs = append(part.Logprobs, lp...)
	if lp == nil {
		lp = []chatLogprob{}
	}
	return o.send("response.output_text.delta", o.at(map[string]any{"delta": text, "logprobs": lp}))
}

func (o *responseOutput) openCall(name string) error {
	if err := o.close("completed"); err != nil {
		return err
	}
	empty := ""
	o.items = append(o.items, responseItem{ID: newID("fc_"), Type: "function_call", Status: "in_progress", CallID: toolcall.NewCallID(), Name: name, Arguments: &empty})
	o.open = true
	return o.send("response.output_item.added", map[string]any{"output_index": len(o.items) - 1, "item": o.items[len(o.items)-1]})
}

// arguments adds a fragment of the open call's arguments.
func (o *responseOutput) arguments(fragment string) error {
	args := *o.items[len(o.items)-1].Arguments + fragment
	o.items[len(o.items)-1].Arguments = &args
	return o.send("response.function_call_arguments.delta", o.at(map[string]any{"delta": fragment}))
}

// close ends the open item, if any, with status.
func (o *responseOutput) close(status string) error {
	if !o.open {
		return nil
	}
	o.open = false
	item := &o.items[len(o.items)-1]
	item.Status = status
	if item.Type == "message" {
		part := item.Content[0]
		if err := o.send("response.output_text.done", o.at(map[string]any{"text": part.Text, "logprobs": part.Logprobs})); err != nil {
			return err
		}
		if err := o.send("response.content_part.done", o.at(map[string]any{"part": part})); err != nil {
			return err
		}
	} else if err := o.send("response.function_call_arguments.done", o.at(map[string]any{"arguments": *item.Arguments, "name": item.Name})); err != nil {
		return err
	}
	return o.send("response.output_item.done", map[string]any{"output_index": len(o.items) - 1, "item": *item})
}

// finish ends the output with the response's status: an output with no items gets an empty
// message, and the last item ends with status (incomplete when the token limit cut it).
func (o *responseOutput) finish(status string) error {
	if len(o.items) == 0 {
		if err := o.openMessage(); err != nil {
			return err
		}
	}
	return o.close(status)
}

// responseEvents writes the Responses API's server-sent events: each an `event:` line with
// its type and the JSON with type and sequence_number (from 0, one per event).
type responseEvents struct {
	s   *sse
	seq int
}

func (e *responseEvents) send(typ string, fields map[string]any) error {
	fields["type"], fields["sequence_number"] = typ, e.seq
	e.seq++
	b, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	return e.s.event(typ, b)
}

// fail reports an error after the stream started, as OpenAI does (an "error" event), and ends
// the stream.
func (e *responseEvents) fail(err error) error {
	ae := fromEngine(responsesError(err))
	code := ae.code
	if code == "" {
		code = ae.typ
	}
	e.send("error", map[string]any{"code": code, "message": ae.msg, "param": nilIfEmpty(ae.param)})
	return err
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// stream sends the response as OpenAI streams one: created, in_progress, then each output
// item as responseOutput builds it (added; its text or arguments in deltas; done), and the
// final response (response.completed, or response.incomplete at the token limit).
func (res *responseState) stream(w http.ResponseWriter, ctx context.Context) error {
	e := &responseEvents{s: startSSE(w)}
	for _, typ := range []string{"response.created", "response.in_progress"} {
		if err := e.send(typ, map[string]any{"response": res.object("in_progress", []responseItem{}, nil)}); err != nil {
			return err
		}
	}
	out := res.newOutput(e.send)
	if err := out.begin(); err != nil {
		return err
	}
	for ev := range res.events {
		_, send, err := res.choices.take(&ev, false)
		if err != nil {
			return e.fail(err)
		}
		var lp chatLogprobs
		if res.chat.Logprobs {
			res.h.appendChat(&lp, &ev.Event, res.chat.ReturnTokensAsTokenIDs)
		}
		if !send {
			continue
		}
		if err := out.feed(ev.Text, lp.Content, ev.Finish != ""); err != nil {
			return err
		}
	}
	if err := res.choices.complete(ctx); err != nil {
		return e.fail(err)
	}
	status := res.finalStatus()
	if err := out.finish(status); err != nil {
		return err
	}
	final := "response.completed"
	if status == "incomplete" {
		final = "response.incomplete"
	}
	return e.send(final, map[string]any{"response": res.object(status, out.items, res.usage())})
}
