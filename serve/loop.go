package serve

import (
	"context"
	"fmt"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/loraplex/loraplex/adaptercache"
	"github.com/loraplex/loraplex/model"
	"github.com/loraplex/loraplex/structured"
	"github.com/loraplex/loraplex/tokenizer"
)

// sequence is one request inside the engine loop.
type sequence struct {
	id          uint64
	ctx         context.Context
	params      SamplingParams
	ticket      *adaptercache.Ticket // the adapter this request waits for (until leased)
	lease       *adaptercache.Lease  // the adapter on the device, held while the request lives
	adapterW    *model.Adapter       // lease.Adapter() (or the routing over route's leases); nil for the base model
	route       *routerSeq           // the router this request runs through, if any
	adapterName string
	tokens      []int // prompt, then generated tokens
	promptLen   int
	ended       bool // finish has run: the request is counted out of Engine.unfinished
	computed    int  // tokens whose keys and values are in the cache
	scored      int  // prompt rows whose logprobs of the next prompt token are out (PromptLogprobs)
	pages       []int32
	sampler     *sampler
	matcher     *structured.Matcher // follows the constraint's grammar; nil when unconstrained
	dec         *tokenizer.StreamDecoder
	text        string // generated text so far (stop strings are searched here)
	sent        int    // bytes of text already streamed
	maxStop     int
	stream      *Stream
	arrival     time.Time
	firstTok    time.Time
	lastTok     time.Time
	scheduled   time.Time

	// Prefix caching (prefixcache.go): what computes this sequence's pages, whether they may be
	// shared, the keys of its full pages so far, how many of its pages are indexed, and the
	// prompt tokens its first admission found cached (Usage.CachedTokens).
	identity     pageKey
	cacheable    bool
	keys         []pageKey
	llmdKeys     []uint64 // the full pages' llm-d block hashes, with KV-cache events on (kvevents.go)
	registered   int
	cachedTokens int
	admitted     bool
}

func (s *sequence) generated() int { return len(s.tokens) - s.promptLen }

// loop is the scheduler: one goroutine owns the batch, the KV pages and every sequence.
// Each iteration admits new requests, builds a step (decode rows first, then prefill chunks
// within the token budget), runs the forward pass and samples.
func (e *Engine) loop() {
	defer close(e.closed)
	for {
		idle := len(e.running) == 0 && len(e.waiting) == 0
		if !e.receive(idle) {
			e.abortAll(&Error{Kind: KindUnavailable, Msg: "the server is shutting down"})
			return
		}
		e.dropCancelled()
		if !e.schedule() {
			e.publish()
			if len(e.waiting) > 0 && !e.waitForChange() {
				e.abortAll(&Error{Kind: KindUnavailable, Msg: "the server is shutting down"})
				return
			}
			continue
		}
		e.safeStep()
		e.publish()
	}
}

// safeStep runs one step. A panic inside it (a bug: shapes are checked before any kernel runs)
// must not take the process and every other request down with it: the requests of the step fail
// with an internal error, the stack is logged, and the loop goes on with the next step.
func (e *Engine) safeStep() {
	defer func() {
		if r := recover(); r != nil {
			e.stats.Panics.Add(1)
			e.log.Error("engine step panicked", "panic", r, "stack", string(debug.Stack()))
			for _, sq := range slices.Clone(e.running) {
				e.finish(sq, "error", nil, &Error{Kind: KindInternal, Msg: fmt.Sprintf("internal error: %v", r)})
			}
			e.pages.forget()
		}
	}()
	e.stats.Steps.Add(1)
	stepStart := time.Now()
	rows := e.sampleRows()
	for len(e.scoreOut) < len(e.scoreRows) {
		e.scoreOut = append(e.scoreOut, model.ScoreResult{})
	}
	// ForwardSampleScore returns once the step is complete on the device (model.StepSynchronizer),
	// prefill-only steps included: only then may finish release what the step read.
	if err := e.runner.ForwardSampleScore(&e.step, e.stepAd, rows, e.sampleOut[:len(rows)], e.scoreRows, e.scoreOut[:len(e.scoreRows)]); err != nil {
		e.log.Error("forward pass failed", "err", err)
		fail := &Error{Kind: KindInternal, Msg: "forward pass failed", Err: err}
		if berr := e.backendFailed(); berr != nil {
			fail = berr
		}
		for _, sq := range slices.Clone(e.running) {
			e.finish(sq, "error", nil, fail)
		}
		// Pages indexed while building the step were never written: no one may reuse them.
		e.pages.forget()
		return
	}
	now := time.Now()
	if o := e.obs(); o != nil {
		o.Step(len(e.step.Tokens), len(e.step.Seqs), now.Sub(stepStart))
	}
	e.emitScores()
	for _, sq := range e.stepDone {
		e.stats.PromptTokens.Add(int64(sq.promptLen))
		e.finish(sq, "length", nil, nil)
	}
	for k, sq := range e.stepSeq {
		tok, ev := e.sampled(sq, &e.sampleOut[k])
		if sq.route != nil {
			if names := e.countRoute(sq.route, e.runner.RouteTrace(int(e.step.LogitRows[k]))); names != nil {
				ev.Experts = [][]string{names}
			}
		}
		e.emit(sq, tok, ev, now)
	}
}

// receive moves submitted requests to the waiting list, blocking when idle. It returns false
// when the engine is stopping.
func (e *Engine) receive(block bool) bool {
	if block {
		select {
		case sq := <-e.submit:
			e.waiting = append(e.waiting, sq)
		case <-e.stop:
			return false
		}
	}
	for {
		select {
		case sq := <-e.submit:
			e.waiting = append(e.waiting, sq)
		case <-e.stop:
			return false
		default:
			return true
		}
	}
}

// waitForChange blocks while nothing can run but requests wait (for adapter loads or pages):
// until a request arrives, an adapter changes state, or a short tick passes (to notice
// cancellations). It returns false when the engine is stopping.
func (e *Engine) waitForChange() bool {
	tick := time.NewTimer(20 * time.Millisecond)
	defer tick.Stop()
	select {
	case sq := <-e.submit:
		e.waiting = append(e.waiting, sq)
	case <-e.cache.Changed():
	case <-tick.C:
	case <-e.stop:
		return false
	}
	return true
}

func (e *Engine) dropCancelled() {
	for _, list := range [][]*sequence{slices.Clone(e.running), slices.Clone(e.waiting)} {
		for _, sq := range list {
			if err := sq.ctx.Err(); err != nil {
				kind := KindCanceled
				if err == context.DeadlineExceeded {
					kind = KindDeadline
				}
				e.finish(sq, "abort", nil, &Error{Kind: kind, Msg: "request cancelled", Err: err})
			}
		}
	}
}

// schedule fills e.step; false when there is nothing to run.
func (e *Engine) schedule() bool {
	s := &e.step
	s.Tokens, s.Positions, s.Slots, s.Seqs, s.LogitRows = s.Tokens[:0], s.Positions[:0], s.Slots[:0], s.Seqs[:0], s.LogitRows[:0]
	e.stepAd, e.stepSeq = e.stepAd[:0], e.stepSeq[:0]
	e.scoreRows, e.scoreSeq, e.scorePos, e.scoreIdx, e.stepDone = e.scoreRows[:0], e.scoreSeq[:0], e.scorePos[:0], e.scoreIdx[:0], e.stepDone[:0]
	e.scoreRoom = maxScoreRows(e.opt)
	e.longSeq, e.longRows, e.planned = e.longSeq[:0], e.longRows[:0], e.planned[:0]
	budget, long := e.opt.MaxBatchedTokens, e.opt.LongPrefillTokenThreshold

	// Running sequences first, in admission order: decodes take one row each, sequences still
	// in prefill take a chunk of what budget is left, a long prefill at most the threshold for
	// now (its rows are planned last, with what the waiting requests leave).
	for i := 0; i < len(e.running) && budget > 0; i++ {
		sq := e.running[i]
		left := len(sq.tokens) - sq.computed
		n := e.scoreLimit(sq, min(left, budget, long))
		if n == 0 {
			continue // its next rows are scored, and this step has no room left to score
		}
		if !e.reservePages(sq, sq.computed+n) {
			break // sq itself was preempted
		}
		if left > long {
			e.holdLong(sq, n)
		} else {
			e.plan(sq, n)
		}
		budget -= n
	}
	// Admit waiting requests in arrival order while there is room. A request whose adapter is
	// still loading is passed over (it waits in its own queue while others run); among ready
	// requests the first is never skipped for lack of KV pages, so a long prompt cannot be
	// starved by short ones behind it. A long prompt is passed over while another long prefill
	// runs (vLLM's max_num_partial_prefills of 1): admitted, it would take the first one's rows
	// and delay both; short ones behind it go ahead, and it is first once that prefill ends.
	for i := 0; i < len(e.waiting) && budget > 0 && len(e.running) < e.opt.MaxNumSeqs; {
		sq := e.waiting[i]
		if sq.ticket != nil {
			l, err := sq.ticket.TryLease()
			if err != nil {
				sq.ticket = nil
				e.finish(sq, "error", nil, adapterError(sq.adapterName, err))
				continue
			}
			if l == nil {
				i++
				continue
			}
			sq.ticket, sq.lease, sq.adapterW = nil, l, l.Adapter()
		}
		if sq.route != nil && sq.adapterW == nil {
			ready, err := sq.route.tryLease()
			if err == nil && ready {
				sq.adapterW, err = sq.route.routing(e.cfg)
			}
			if err != nil {
				e.finish(sq, "error", nil, &Error{Kind: KindUnprocessable, Msg: fmt.Sprintf("router %q", sq.adapterName), Err: err})
				continue
			}
			if !ready {
				i++
				continue
			}
		}
		if e.scoreLimit(sq, budget) == 0 {
			break // it would score its first rows, and this step has no room left to score
		}
		// Reuse the longest cached prefix, then check that the rest of the prompt (and the first
		// generated token) fits; if not, hand the cached pages back and wait.
		if !sq.admitted {
			sq.identity, sq.cacheable = identityOf(sq)
		}
		cached := e.lookupPrefix(sq)
		isLong := len(sq.tokens)-sq.computed > long
		if isLong && len(e.longSeq) > 0 {
			e.pages.release(sq.pages)
			sq.pages, sq.computed, sq.registered = sq.pages[:0], 0, 0
			i++
			continue
		}
		if e.pages.available() < e.pages.pagesFor(len(sq.tokens)+1)-len(sq.pages) {
			e.pages.release(sq.pages)
			sq.pages, sq.computed, sq.registered = sq.pages[:0], 0, 0
			break
		}
		if !sq.admitted {
			// Counted once per request, in prompt tokens, as vLLM counts (a preempted request
			// coming back is not a new query).
			sq.admitted, sq.cachedTokens = true, cached
			e.stats.PrefixCacheQueries.Add(int64(sq.promptLen))
			e.stats.PrefixCacheHits.Add(int64(cached))
			if o, ok := e.obs().(PrefixCacheObserver); ok {
				o.PrefixCacheLookup(e.modelName(sq), sq.promptLen, cached)
			}
		}
		e.waiting = slices.Delete(e.waiting, i, i+1)
		e.queued.Add(-1)
		e.admit(sq)
		if sq.scheduled.IsZero() {
			sq.scheduled = time.Now()
		}
		n := e.scoreLimit(sq, min(len(sq.tokens)-sq.computed, budget, long))
		e.reservePages(sq, sq.computed+n)
		if isLong {
			e.holdLong(sq, n)
		} else {
			e.plan(sq, n)
		}
		budget -= n
	}
	// Long prefills last, in admission order: each its held rows and what budget is left, as
	// far as free pages go (taking pages from others now would preempt rows already placed).
	for k, sq := range e.longSeq {
		budget += e.longRows[k]
		e.scoreRoom += e.scoredRows(sq, e.longRows[k])
		n := e.scoreLimit(sq, min(len(sq.tokens)-sq.computed, budget))
		n = min(n, e.growPages(sq, sq.computed+n)-sq.computed)
		if n == 0 {
			continue
		}
		e.plan(sq, n)
		budget -= n
	}
	e.emitRows()
	// Scored rows follow the sampled ones (model.Runner.ForwardSampleScore).
	s.LogitRows = append(s.LogitRows, e.scoreIdx...)
	e.stats.Running.Store(int64(len(e.running)))
	e.stats.Waiting.Store(int64(len(e.waiting)))
	e.stats.KVPagesUsed.Store(e.stats.KVPages.Load() - int64(e.pages.available()))
	return len(s.Tokens) > 0
}

// admit adds sq to the running list, in admission order: the order the scheduler gives rows,
// budget and, from the end, preemption in. The step groups its rows by adapter and router
// (emitRows) whatever that order.
func (e *Engine) admit(sq *sequence) {
	e.running = append(e.running, sq)
}

// reservePages makes sq own enough pages for n tokens, preempting the most recently admitted
// other sequences (they will recompute later) when the cache is full. It returns false if sq
// itself had to be preempted.
func (e *Engine) reservePages(sq *sequence, n int) bool {
	for len(sq.pages) < e.pages.pagesFor(n) {
		if p, ok := e.pages.alloc(); ok {
			sq.pages = append(sq.pages, p)
			continue
		}
		victim := e.running[len(e.running)-1]
		e.preempt(victim)
		if victim == sq {
			return false
		}
	}
	return true
}

// holdLong holds n rows of the step for sq, a long prefill whose rows are planned last: their
// budget, and their room for scored rows, which the requests admitted meanwhile may not take.
func (e *Engine) holdLong(sq *sequence, n int) {
	e.longSeq, e.longRows = append(e.longSeq, sq), append(e.longRows, n)
	e.scoreRoom -= e.scoredRows(sq, n)
}

// scoredRows counts the rows among sq's next n that are scored (PromptLogprobs): prompt rows
// not scored yet, but the last.
func (e *Engine) scoredRows(sq *sequence, n int) int {
	if sq.params.PromptLogprobs == 0 {
		return 0
	}
	from, to := max(sq.computed, sq.scored), min(sq.computed+n, sq.promptLen-1)
	return max(0, to-from)
}

// growPages gives sq free pages (no preemption) towards n tokens and returns how many tokens
// its pages then hold.
func (e *Engine) growPages(sq *sequence, n int) int {
	for len(sq.pages) < e.pages.pagesFor(n) {
		p, ok := e.pages.alloc()
		if !ok {
			break
		}
		sq.pages = append(sq.pages, p)
	}
	return min(n, len(sq.pages)*e.opt.PageSize)
}

// preempt frees a running sequence's pages and puts it back at the head of the queue; it keeps
// its tokens, so it resumes by recomputing its cache.
func (e *Engine) preempt(sq *sequence) {
	e.stats.Preemptions.Add(1)
	e.pages.release(sq.pages)
	sq.pages, sq.computed, sq.registered = sq.pages[:0], 0, 0
	e.running = slices.DeleteFunc(e.running, func(x *sequence) bool { return x == sq })
	e.waiting = append([]*sequence{sq}, e.waiting...)
	e.queued.Add(1)
}

// plannedRows are the rows [from, from+n) of sq the scheduler chose for the step.
type plannedRows struct {
	sq      *sequence
	from, n int
}

// plan chooses sq's next n rows for the step (their pages reserved). Everything the scheduler's
// later choices read happens now: they take their room for scored rows, sq counts them computed
// and its pages they fill are indexed for the prefix cache (a request admitted later in the same
// step may reuse them: every layer stores the step's keys and values before attention reads
// them); emitRows then writes them into the step.
func (e *Engine) plan(sq *sequence, n int) {
	e.scoreRoom -= e.scoredRows(sq, n)
	e.planned = append(e.planned, plannedRows{sq, sq.computed, n})
	sq.computed += n
	e.registerPages(sq)
}

// emitRows adds the planned rows to the step, each sequence's at the place of the first planned
// sequence on its adapter (or through its router), so the rows of one adapter are adjacent: the
// forward pass then adapts them as one LoRA segment (model.SegmentMerger) and routes a router's
// as one group, whatever the order requests were admitted in. The order rows run in decides
// nothing else: which rows the step holds, and which sequence preemption takes, was decided in
// the scheduler's order; sequences on the base model keep their places.
func (e *Engine) emitRows() {
	// One pass links each planned entry to the next of its group (groupLast: a group's latest
	// entry so far, cleared every step; -1 ends a chain), a second emits each group's chain at
	// its first entry's place: linear in the planned rows whatever the number of adapters.
	n := len(e.planned)
	if e.groupLast == nil {
		e.groupLast = map[any]int{}
	}
	if cap(e.groupNext) < n {
		e.groupNext = make([]int, n, 2*n)
	}
	next := e.groupNext[:n]
	clear(e.groupLast)
	for i := range e.planned {
		next[i] = -1
		if key := groupKey(e.planned[i].sq); key != nil {
			if j, ok := e.groupLast[key]; ok {
				next[j] = i
			}
			e.groupLast[key] = i
		}
	}
	for i := range e.planned {
		if next[i] == -2 {
			continue // emitted with its group
		}
		for j := i; j >= 0; {
			e.addRows(e.planned[j])
			j, next[j] = next[j], -2
		}
	}
}

// groupKey is what sq's rows are grouped by in a step: its router, else its adapter; nil on the
// base model.
func groupKey(sq *sequence) any {
	switch {
	case sq.route != nil:
		return sq.route.entry
	case sq.adapterW != nil:
		return sq.adapterW
	}
	return nil
}

// addRows writes planned rows into the step: their tokens, positions and cache slots, the
// sequence's rows, its scored rows and, where they end its known tokens, its logits row.
func (e *Engine) addRows(pr plannedRows) {
	sq, n := pr.sq, pr.n
	s := &e.step
	start := len(s.Tokens)
	ps := int32(e.opt.PageSize)
	for j := 0; j < n; j++ {
		p := pr.from + j
		s.Tokens = append(s.Tokens, int32(sq.tokens[p]))
		s.Positions = append(s.Positions, int32(p))
		s.Slots = append(s.Slots, sq.pages[p/e.opt.PageSize]*ps+int32(p)%ps)
		if sq.params.PromptLogprobs != 0 && p >= sq.scored && p < sq.promptLen-1 {
			e.scoreRows = append(e.scoreRows, model.ScoreRow{Token: int32(sq.tokens[p+1]), Logprobs: max(sq.params.PromptLogprobs, 0)})
			e.scoreSeq, e.scorePos = append(e.scoreSeq, sq), append(e.scorePos, p)
			e.scoreIdx = append(e.scoreIdx, int32(start+j))
		}
	}
	s.Seqs = append(s.Seqs, model.SeqRows{Start: start, N: n, Len: pr.from + n, Pages: sq.pages})
	var ad *model.Adapter
	if sq.adapterW != nil {
		ad = sq.adapterW
	}
	e.stepAd = append(e.stepAd, ad)
	switch {
	case pr.from+n < len(sq.tokens):
	case sq.params.PromptOnly:
		e.stepDone = append(e.stepDone, sq) // nothing to sample: it ends with this step
	default:
		s.LogitRows = append(s.LogitRows, int32(len(s.Tokens)-1))
		e.stepSeq = append(e.stepSeq, sq)
	}
}

// maxScoreRowsPerStep bounds the prompt rows scored in one step (prompt logprobs): the
// runner's logits workspace holds this many rows beyond one per sequence.
const maxScoreRowsPerStep = 64

func maxScoreRows(o Options) int { return min(maxScoreRowsPerStep, o.MaxBatchedTokens) }

// scoreLimit cuts n, the rows sq would compute next, to what the step's room for scored rows
// allows: rows of sq's prompt not yet scored each take one (PromptLogprobs); rows already
// scored (recomputed after a preemption) and the last prompt row take none. 0: sq must wait.
func (e *Engine) scoreLimit(sq *sequence, n int) int {
	last := sq.promptLen - 1 // rows before it score the next prompt token
	from := max(sq.computed, sq.scored)
	if sq.params.PromptLogprobs == 0 || from >= last || from+e.scoreRoom >= last {
		return n
	}
	return min(n, from+e.scoreRoom-sq.computed)
}

// emitScores streams the step's scored rows, in prompt order, one event per sequence.
func (e *Engine) emitScores() {
	for k := 0; k < len(e.scoreRows); {
		sq := e.scoreSeq[k]
		var ev Event
		for ; k < len(e.scoreRows) && e.scoreSeq[k] == sq; k++ {
			r := &e.scoreOut[k]
			lp := PromptLogprob{Token: int(e.scoreRows[k].Token), Logprob: r.Logprob, Rank: r.Rank}
			if sq.params.PromptLogprobs > 0 {
				lp.Top = make([]TokenLogprob, len(r.Top))
				for i, t := range r.Top {
					lp.Top[i] = TokenLogprob{Token: int(t.Token), Logprob: t.Logprob}
				}
			}
			ev.PromptLogprobs = append(ev.PromptLogprobs, lp)
			sq.scored = e.scorePos[k] + 1
		}
		sq.stream.push(ev)
	}
}

// banned appends to dst the ids sq may not produce yet: EOS and stop ids before min_tokens.
func (e *Engine) banned(sq *sequence, dst []int) []int {
	p := &sq.params
	if sq.generated() >= p.MinTokens {
		return dst
	}
	for id := range e.eos {
		dst = append(dst, id)
	}
	return append(dst, p.StopTokenIDs...)
}

// sampleRows builds the step's sampling rows, one per e.stepSeq entry, reusing the rows,
// results and their slices from step to step (the sampling path allocates nothing).
func (e *Engine) sampleRows() []model.SampleRow {
	n := len(e.stepSeq)
	for len(e.rows) < n {
		e.rows = append(e.rows, model.SampleRow{})
		e.sampleOut = append(e.sampleOut, model.SampleResult{})
	}
	for k, sq := range e.stepSeq {
		e.banBuf = e.banned(sq, e.banBuf[:0])
		sq.sampler.row(e.banBuf, sq.params.Logprobs, &e.rows[k])
		sq.constrain(&e.rows[k])
	}
	return e.rows[:n]
}

// sampled turns the backend's result for sq into the token and its logprobs event.
func (e *Engine) sampled(sq *sequence, r *model.SampleResult) (int, Event) {
	var ev Event
	if n := sq.params.Logprobs; n != 0 {
		ev.Logprobs = []TokenLogprob{{Token: int(r.Token), Logprob: r.Logprob}}
		if n > 0 {
			top := make([]TokenLogprob, len(r.Top))
			for i, t := range r.Top {
				top[i] = TokenLogprob{Token: int(t.Token), Logprob: t.Logprob}
			}
			ev.Top = [][]TokenLogprob{top}
		}
	}
	return int(r.Token), ev
}

// emit appends the chosen token to sq and streams it: timing, stop conditions,
// detokenisation and the event.
func (e *Engine) emit(sq *sequence, tok int, ev Event, now time.Time) {
	p := &sq.params
	o := e.obs()
	if sq.generated() == 0 && sq.firstTok.IsZero() {
		sq.firstTok = now
		e.stats.PromptTokens.Add(int64(sq.promptLen))
		if o != nil {
			o.FirstToken(e.modelName(sq), now.Sub(sq.arrival))
		}
	} else if o != nil && !sq.lastTok.IsZero() {
		o.NextToken(e.modelName(sq), now.Sub(sq.lastTok))
	}
	sq.lastTok = now
	sq.tokens = append(sq.tokens, tok)
	sq.sampler.observe(tok)
	if err := sq.advanceGrammar(tok, e.eos[tok]); err != nil {
		e.finish(sq, "error", nil, &Error{Kind: KindInternal, Msg: "constrained decoding", Err: err})
		return
	}
	e.stats.GenerationTokens.Add(1)
	ev.Tokens = []int{tok}

	// Like vLLM, no stop condition but the length limit applies before min_tokens.
	finish, reason := "", any(nil)
	canStop := sq.generated() >= p.MinTokens
	if canStop && slices.Contains(p.StopTokenIDs, tok) {
		finish, reason = "stop", tok
	} else if canStop && !p.IgnoreEOS && e.eos[tok] {
		finish = "stop"
	}
	// Models often pad their vocabulary past the tokenizer's (Qwen: 151,936 rows for 151,669
	// tokens); a sampled padding id has no text, as in vLLM.
	if finish == "" && sq.dec != nil && tok < e.tok.VocabSize() {
		delta, err := sq.dec.Push(tok)
		if err != nil {
			e.finish(sq, "error", nil, &Error{Kind: KindInternal, Msg: "detokenizing", Err: err})
			return
		}
		sq.text += delta
		if canStop && sq.maxStop > 0 && delta != "" {
			from := max(0, len(sq.text)-len(delta)-sq.maxStop+1)
			best, which := -1, ""
			for _, s := range p.Stop {
				if i := indexFrom(sq.text, s, from); i >= 0 && (best < 0 || i < best) {
					best, which = i, s
				}
			}
			if best >= 0 {
				sq.text = sq.text[:best]
				finish, reason = "stop", which
			}
		}
	}
	if finish == "" && (sq.generated() >= p.MaxTokens || len(sq.tokens) >= e.opt.MaxModelLen) {
		finish = "length"
	}
	if _, byString := reason.(string); finish != "" && !byString && sq.dec != nil {
		sq.text += sq.dec.Flush() // bytes held back for an incomplete character
	}
	// Stream what can no longer become part of a stop string.
	safe := len(sq.text)
	if finish == "" && sq.maxStop > 1 {
		safe = max(sq.sent, len(sq.text)-(sq.maxStop-1))
		for safe > sq.sent && safe < len(sq.text) && !utf8.RuneStart(sq.text[safe]) {
			safe--
		}
	}
	ev.Text = sq.text[sq.sent:safe]
	sq.sent = safe
	sq.stream.push(ev)
	if finish != "" {
		e.finish(sq, finish, reason, nil)
	}
}

func indexFrom(s, sub string, from int) int {
	for i := from; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// finish ends a sequence (running or waiting) and frees everything it holds.
func (e *Engine) finish(sq *sequence, reason string, stopReason any, err error) {
	if sq.ended {
		return
	}
	sq.ended = true
	e.unfinished.Add(-1)
	if i := slices.Index(e.running, sq); i >= 0 {
		e.running = slices.Delete(e.running, i, i+1)
	} else if i := slices.Index(e.waiting, sq); i >= 0 {
		e.waiting = slices.Delete(e.waiting, i, i+1)
		e.queued.Add(-1)
	}
	e.pages.release(sq.pages)
	sq.pages = nil
	// The step that last read the adapter has completed (the runner ends every step complete:
	// model.StepSynchronizer), so the device copy may be evicted once no one else holds it.
	if sq.lease != nil {
		sq.lease.Release()
		sq.lease, sq.adapterW = nil, nil
	}
	if sq.ticket != nil {
		sq.ticket.Cancel()
		sq.ticket = nil
	}
	if sq.route != nil {
		e.endRoute(sq.route, sq.adapterW)
		sq.route, sq.adapterW = nil, nil
	}
	if o := e.obs(); o != nil {
		now := time.Now()
		queue := now.Sub(sq.arrival)
		if !sq.scheduled.IsZero() {
			queue = sq.scheduled.Sub(sq.arrival)
		}
		o.Finished(FinishedRequest{Model: e.modelName(sq), Reason: reason, PromptTokens: sq.promptLen, CachedTokens: sq.cachedTokens,
			CompletionTokens: sq.generated(), Queue: queue, E2E: now.Sub(sq.arrival)})
	}
	counter, _ := e.stats.Finished.LoadOrStore(reason, new(atomic.Int64))
	counter.(*atomic.Int64).Add(1)
	sq.stream.push(Event{Finish: reason, StopReason: stopReason, Err: err,
		Usage: &Usage{PromptTokens: sq.promptLen, CompletionTokens: sq.generated(), CachedTokens: sq.cachedTokens}})
	sq.stream.cancel()
}

func (e *Engine) abortAll(err error) {
	for _, sq := range slices.Clone(e.running) {
		e.finish(sq, "abort", nil, err)
	}
	for _, sq := range slices.Clone(e.waiting) {
		e.finish(sq, "abort", nil, err)
	}
	for {
		select {
		case sq := <-e.submit:
			e.queued.Add(-1)
			e.waiting = append(e.waiting, sq)
			e.queued.Add(1)
			e.finish(sq, "abort", nil, err)
		default:
			return
		}
	}
}

func (e *Engine) publish() {
	if e.kvLog != nil {
		e.kvLog.flush()
	}
	e.publishLoRAInfo()
	e.stats.PrefixCacheEvictions.Store(e.pages.evictions)
	e.stats.Running.Store(int64(len(e.running)))
	e.stats.Waiting.Store(int64(len(e.waiting)))
	e.stats.KVPagesUsed.Store(e.stats.KVPages.Load() - int64(e.pages.available()))
}
