package openai

import (
	"context"
	"encoding/json"
	"net/http"
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
	choices choiceSet
	id      string
	itemID  string
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
		ToolChoice         string             `json:"tool_choice"`
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
	responseItem struct {
		ID      string         `json:"id"`
		Type    string         `json:"type"`
		Status  string         `json:"status"`
		Role    string         `json:"role"`
		Content []responsePart `json:"content"`
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
		Reasoning: map[string]any{"effort": nil, "summary": nil}, Temperature: res.temperature, ToolChoice: "auto",
		Tools: []json.RawMessage{}, TopP: res.topP, Truncation: "disabled", Usage: usage, Metadata: res.req.Metadata}
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

// item is the output message with text and logprobs (nil when not asked for).
func (res *responseState) item(status, text string, lp *chatLogprobs) responseItem {
	part := responsePart{Type: "output_text", Text: text, Annotations: []any{}, Logprobs: []chatLogprob{}}
	if lp != nil {
		part.Logprobs = lp.Content
	}
	return responseItem{ID: res.itemID, Type: "message", Status: status, Role: "assistant", Content: []responsePart{part}}
}

func (res *responseState) collect(w http.ResponseWriter, ctx context.Context) error {
	for ev := range res.events {
		st, _, err := res.choices.take(&ev, true)
		if err != nil {
			return err
		}
		if res.chat.Logprobs {
			if st.chatLP == nil {
				st.chatLP = &chatLogprobs{Content: []chatLogprob{}}
			}
			res.h.appendChat(st.chatLP, &ev.Event, res.chat.ReturnTokensAsTokenIDs)
		}
	}
	if err := res.choices.complete(ctx); err != nil {
		return err
	}
	st := &res.choices.st[0]
	status := res.finalStatus()
	writeJSON(w, http.StatusOK, res.object(status, []responseItem{res.item(status, string(st.text), st.chatLP)}, res.usage()))
	return nil
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

// stream sends the response as OpenAI streams one: created, in_progress, the message item and
// its text part opened, a delta per engine event, then both closed with the whole text and the
// final response (response.completed, or response.incomplete at the token limit).
func (res *responseState) stream(w http.ResponseWriter, ctx context.Context) error {
	e := &responseEvents{s: startSSE(w)}
	// inPart adds the address of the one text part (its item, output and content index).
	inPart := func(fields map[string]any) map[string]any {
		fields["item_id"], fields["output_index"], fields["content_index"] = res.itemID, 0, 0
		return fields
	}
	empty := responsePart{Type: "output_text", Text: "", Annotations: []any{}, Logprobs: []chatLogprob{}}
	for _, step := range []struct {
		typ    string
		fields map[string]any
	}{
		{"response.created", map[string]any{"response": res.object("in_progress", []responseItem{}, nil)}},
		{"response.in_progress", map[string]any{"response": res.object("in_progress", []responseItem{}, nil)}},
		{"response.output_item.added", map[string]any{"output_index": 0,
			"item": responseItem{ID: res.itemID, Type: "message", Status: "in_progress", Role: "assistant", Content: []responsePart{}}}},
		{"response.content_part.added", inPart(map[string]any{"part": empty})},
	} {
		if err := e.send(step.typ, step.fields); err != nil {
			return err
		}
	}
	var all chatLogprobs
	for ev := range res.events {
		st, send, err := res.choices.take(&ev, true)
		if err != nil {
			return e.fail(err)
		}
		lp := chatLogprobs{Content: []chatLogprob{}}
		if res.chat.Logprobs {
			res.h.appendChat(&lp, &ev.Event, res.chat.ReturnTokensAsTokenIDs)
			all.Content = append(all.Content, lp.Content...)
			st.chatLP = &all
		}
		// A token that ends inside a UTF-8 character has no text yet: it comes with the next.
		if !send || (ev.Text == "" && len(lp.Content) == 0) {
			continue
		}
		if err := e.send("response.output_text.delta", inPart(map[string]any{"delta": ev.Text, "logprobs": lp.Content})); err != nil {
			return err
		}
	}
	if err := res.choices.complete(ctx); err != nil {
		return e.fail(err)
	}
	st := &res.choices.st[0]
	status := res.finalStatus()
	item := res.item(status, string(st.text), st.chatLP)
	final := "response.completed"
	if status == "incomplete" {
		final = "response.incomplete"
	}
	for _, step := range []struct {
		typ    string
		fields map[string]any
	}{
		{"response.output_text.done", inPart(map[string]any{"text": item.Content[0].Text, "logprobs": item.Content[0].Logprobs})},
		{"response.content_part.done", inPart(map[string]any{"part": item.Content[0]})},
		{"response.output_item.done", map[string]any{"output_index": 0, "item": item}},
		{final, map[string]any{"response": res.object(status, []responseItem{item}, res.usage())}},
	} {
		if err := e.send(step.typ, step.fields); err != nil {
			return err
		}
	}
	return nil
}
