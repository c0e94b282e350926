//go:build unix

package main

import (
	"os"
	"strings"
	"syscall"
	"time"
)

// cpuSnapshot is this process's CPU time and involuntary context switches. On a shared machine
// the load generator, gateway and engine compete with whatever else runs: a run whose process
// got fewer cores, or was preempted much more, than its twin is not comparable to it.
type cpuSnapshot struct {
	cpu    time.Duration
	nivcsw int64
}

func takeCPU() cpuSnapshot {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return cpuSnapshot{}
	}
	return cpuSnapshot{cpu: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nivcsw: int64(ru.Nivcsw)}
}

// loadAvg is /proc/loadavg's first three fields ("" where there is none).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
