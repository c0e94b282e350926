#!/bin/sh
# Multi-replica load test (issue 17 item 5): N loraplex processes (cmd/server, demo model) on
# loopback share one folder of generated adapters, loaded on demand; bench/loadgen replays the
# same zipf plan twice, once with adapter-affine routing and once round robin, restarting the
# replicas in between so both start cold. Prints both reports; JSON lands in $OUT.
#
# Usage: bench/multireplica/run.sh [replicas] [extra loadgen flags]
# Environment: ADAPTERS (200), RANK (4), RATE (4 req/s), DURATION (60s), MAX_LORAS (8 device
# slots a replica), MAX_CPU_LORAS (32 in host memory), THREADS (1 a replica), OUT (a temp dir).
set -eu
cd "$(dirname "$0")/../.."
N=${1:-3}
[ $# -gt 0 ] && shift
ADAPTERS=${ADAPTERS:-200} RANK=${RANK:-4} RATE=${RATE:-4} DURATION=${DURATION:-60s}
MAX_LORAS=${MAX_LORAS:-8} MAX_CPU_LORAS=${MAX_CPU_LORAS:-32} THREADS=${THREADS:-1}
OUT=${OUT:-$(mktemp -d /tmp/multireplica.XXXXXX)}
BASEPORT=${BASEPORT:-8101}
mkdir -p "$OUT/bin"
go build -o "$OUT/bin/server" ./cmd/server
go build -o "$OUT/bin/loadgen" ./bench/loadgen
[ -d "$OUT/adapters" ] || "$OUT/bin/loadgen" -write-adapters "$OUT/adapters" -adapters "$ADAPTERS" -rank "$RANK"

PIDS=""
stop() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; for p in $PIDS; do wait "$p" 2>/dev/null || true; done; PIDS=""; }
trap stop EXIT INT TERM
start() {
	URLS=""
	i=0
	while [ $i -lt "$N" ]; do
		port=$((BASEPORT + i))
		"$OUT/bin/server" --http-addr "127.0.0.1:$port" --adapter-dir "$OUT/adapters" --max-loras "$MAX_LORAS" \
			--max-cpu-loras "$MAX_CPU_LORAS" --threads "$THREADS" --log-level warn >"$OUT/server-$1-$i.log" 2>&1 &
		PIDS="$PIDS $!"
		URLS="$URLS${URLS:+,}http://127.0.0.1:$port"
		i=$((i + 1))
	done
	for u in $(echo "$URLS" | tr , ' '); do
		n=0
		until curl -sf "$u/health" >/dev/null; do
			n=$((n + 1)); [ $n -lt 100 ] || { echo "replica $u did not start" >&2; exit 1; }; sleep 0.1
		done
	done
}
echo "# $(date -u +%FT%TZ) $(go version) $(git rev-parse --short HEAD) load: $(cut -d' ' -f1-3 /proc/loadavg)"
for route in affine round-robin; do
	start "$route"
	"$OUT/bin/loadgen" -replicas "$URLS" -route "$route" -adapters 0 -adapter-names "@$OUT/adapters" -base loraplex-demo \
		-popularity zipf -rate "$RATE" -duration "$DURATION" -json "$OUT/$route.json" "$@"
	stop
	echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
done
echo "# reports in $OUT"
