//go:build !unix

package main

import "time"

type cpuSnapshot struct {
	cpu    time.Duration
	nivcsw int64
}

func takeCPU() cpuSnapshot { return cpuSnapshot{} }
func loadAvg() string      { return "" }
