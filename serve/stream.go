package serve

import (
	"context"
	"sync"
)

// Stream delivers a request's events. The engine loop never blocks on a slow reader: events
// that the reader has not taken yet are merged into one pending event (tokens appended, text
// concatenated), so memory is bounded by unread output and the batch never waits for a client.
type Stream struct {
	mu      sync.Mutex
	pending Event
	has     bool
	done    bool // the final event has been queued
	taken   bool // the final event has been delivered
	notify  chan struct{}
	cancel  context.CancelFunc
}

func newStream(cancel context.CancelFunc) *Stream {
	return &Stream{notify: make(chan struct{}, 1), cancel: cancel}
}

// push merges ev into the pending event; called by the engine loop only.
func (s *Stream) push(ev Event) {
	s.mu.Lock()
	if s.pending.merge(&ev) {
		s.done = true
	}
	s.has = true
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Next waits for the next event. ok is false once the final event has been returned, or when
// ctx ends first (the request is then cancelled).
func (s *Stream) Next(ctx context.Context) (ev Event, ok bool) {
	for {
		s.mu.Lock()
		if s.taken {
			s.mu.Unlock()
			return Event{}, false
		}
		if s.has {
			ev, s.pending, s.has = s.pending, Event{}, false
			s.taken = ev.Finish != ""
			s.mu.Unlock()
			return ev, true
		}
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-ctx.Done():
			s.Cancel()
			return Event{}, false
		}
	}
}

// Cancel aborts the request; the engine frees its KV pages at the next step.
func (s *Stream) Cancel() { s.cancel() }

// Collect reads the whole stream into one event (the non-streaming APIs use it).
func (s *Stream) Collect(ctx context.Context) (Event, error) {
	var all Event
	for {
		ev, ok := s.Next(ctx)
		if !ok {
			if all.Finish == "" {
				return all, &Error{Kind: KindCanceled, Msg: "request cancelled", Err: ctx.Err()}
			}
			return all, nil
		}
		all.merge(&ev)
	}
}

// merge appends ev to e, the one way events are joined (a slow reader's pending event, a
// collected response): tokens, text, logprobs and the expert trace append, and the final
// event's finish, reason, error and usage are taken. It reports whether ev was the final one.
func (e *Event) merge(ev *Event) (final bool) {
	e.Tokens = append(e.Tokens, ev.Tokens...)
	e.Text += ev.Text
	e.Logprobs = append(e.Logprobs, ev.Logprobs...)
	e.Top = append(e.Top, ev.Top...)
	e.Experts = append(e.Experts, ev.Experts...)
	e.PromptLogprobs = append(e.PromptLogprobs, ev.PromptLogprobs...)
	if ev.Finish == "" {
		return false
	}
	e.Finish, e.StopReason, e.Err, e.Usage = ev.Finish, ev.StopReason, ev.Err, ev.Usage
	return true
}
