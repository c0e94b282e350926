package main

import (
	"sync"
	"time"

	"github.com/loraplex/loraplex/serve"
)

// engineObserver records what the engine itself saw, in-process only. Set against the client's
// numbers it separates scheduling and compute from the gateway and HTTP: client TTFT minus
// engine TTFT is the time a token spends in JSON, SSE and the socket.
type engineObserver struct {
	mu                 sync.Mutex
	steps              []time.Duration
	rows, seqs         int
	ttft, itl, queue   []time.Duration
	preemptionsAtStart int64
	stats              *serve.Stats
}

func (o *engineObserver) FirstToken(_ string, d time.Duration) {
	o.mu.Lock()
	o.ttft = append(o.ttft, d)
	o.mu.Unlock()
}

func (o *engineObserver) NextToken(_ string, d time.Duration) {
	o.mu.Lock()
	o.itl = append(o.itl, d)
	o.mu.Unlock()
}

func (o *engineObserver) Finished(r serve.FinishedRequest) {
	o.mu.Lock()
	o.queue = append(o.queue, r.Queue)
	o.mu.Unlock()
}

func (o *engineObserver) Step(rows, seqs int, d time.Duration) {
	o.mu.Lock()
	o.steps = append(o.steps, d)
	o.rows += rows
	o.seqs += seqs
	o.mu.Unlock()
}

// EngineSummary is the engine's view of one run.
type EngineSummary struct {
	Steps       int     `json:"steps"`
	MeanSeqs    float64 `json:"mean_seqs_per_step"`
	MeanRows    float64 `json:"mean_rows_per_step"`
	Busy        float64 `json:"busy_fraction"` // time in forward passes / wall
	Step        Dist    `json:"step"`
	TTFT        Dist    `json:"ttft"`
	ITL         Dist    `json:"itl"`
	Queue       Dist    `json:"queue"`
	Preemptions int64   `json:"preemptions"`
}

// reset starts a new run's recording.
func (o *engineObserver) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.steps, o.ttft, o.itl, o.queue = nil, nil, nil, nil
	o.rows, o.seqs = 0, 0
	o.preemptionsAtStart = o.stats.Preemptions.Load()
}

func (o *engineObserver) summary(wall time.Duration) *EngineSummary {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := &EngineSummary{Steps: len(o.steps), Step: Summarize(o.steps), TTFT: Summarize(o.ttft), ITL: Summarize(o.itl),
		Queue: Summarize(o.queue), Preemptions: o.stats.Preemptions.Load() - o.preemptionsAtStart}
	if len(o.steps) > 0 {
		s.MeanSeqs = float64(o.seqs) / float64(len(o.steps))
		s.MeanRows = float64(o.rows) / float64(len(o.steps))
		var busy time.Duration
		for _, d := range o.steps {
			busy += d
		}
		s.Busy = busy.Seconds() / wall.Seconds()
	}
	return s
}
