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
	p := &s.pending
	p.Tokens = append(p.Tokens, ev.Tokens...)
	p.Text += ev.Text
	p.Logprobs = append(p.Logprobs, ev.Logprobs...)
	p.Top = append(p.Top, ev.Top...)
	p.Experts = append(p.Experts, ev.Experts...)
	if ev.Finish != "" {
		p.Finish, p.StopReason, p.Err, p.Usage = ev.Finish, ev.StopReason, ev.Err, ev.Usage
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
		all.Tokens = append(all.Tokens, ev.Tokens...)
		all.Text += ev.Text
		all.Logprobs = append(all.Logprobs, ev.Logprobs...)
		all.Top = append(all.Top, ev.Top...)
		all.Experts = append(all.Experts, ev.Experts...)
		if ev.Finish != "" {
			all.Finish, all.StopReason, all.Err, all.Usage = ev.Finish, ev.StopReason, ev.Err, ev.Usage
		}
	}
}
