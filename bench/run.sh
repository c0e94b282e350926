#!/bin/sh
# Runs the CPU decode/prefill benchmarks (cpu/bench_test.go) and prints the raw output.
# Usage: bench/run.sh [extra go test flags, e.g. -tags purego]
# Decode: 30 steps per sample, 5 samples; prefill: 2 prompts per sample, 3 samples. About 2
# minutes on 2 quiet cores (much longer with the generic kernels, -tags purego).
set -e
cd "$(dirname "$0")/.."
echo "# $(date -u +%FT%TZ) $(go version) load: $(cut -d' ' -f1-3 /proc/loadavg)"
go test "$@" -run '^$' -bench 'Bandwidth' -benchtime=3x -count=3 ./cpu/
go test "$@" -run '^$' -bench 'Decode' -benchtime=30x -count=5 ./cpu/
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
go test "$@" -run '^$' -bench 'Prefill' -benchtime=2x -count=3 -timeout 30m ./cpu/
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
