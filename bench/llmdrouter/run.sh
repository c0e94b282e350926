#!/bin/sh
# Checks loraplex against llm-d-router's real endpoint picker (EPP) (issue 17 item 4). Run by
# hand (needs the Go module proxy; CI never runs it).
#
# Usage: bench/llmdrouter/run.sh SNAPSHOT [WORKDIR]
#   SNAPSHOT: a git directory of github.com/llm-d/llm-d-router (e.g. a bare mirror); its HEAD
#             is checked out into WORKDIR (default: a temp dir), outside this repository.
# The EPP runs as its own binary (cmd/epp) with file discovery (an endpoints file instead of
# Kubernetes), the metrics data source and core metrics extractor with the built-in vLLM
# mapping, the lora-affinity scorer and the max-score picker, and --emit-endpoint-scores. Two
# loraplex replicas (cmd/server, the demo's model and adapters c, english, go, python; --max-loras 1)
# serve on loopback. harness.go (ours, no llm-d code) is copied into the checkout and run
# there: it asks the EPP where requests go over Envoy's ext_proc stream while it holds
# requests open on the replicas, and prints the picks and scores as Markdown.
#
# MODE=prefix checks the precise prefix-cache scorer instead: the replicas publish their KV events
# (--kv-events-config, vLLM's ZMQ format) to the EPP's precise-prefix-cache-producer, whose
# llm-d-kv-cache indexer binds one global socket (tcp://127.0.0.1:$ZMQ) that every replica dials;
# the topic kv@<host:port>@loraplex-demo names the endpoint as the EPP knows it. The EPP's
# token-producer tokenizes through vLLM's /v1/completions/render, which loraplex lacks: the
# harness serves it on 127.0.0.1:$RENDER from a replica's /tokenize. The scheduling profile
# then has the prefix-cache-scorer (bound to that producer) alone, so the emitted scores are
# the prefix scores; speculative indexing is off, so only the engines' events move them.
set -eu
SNAP=${1:?usage: $0 SNAPSHOT_GIT_DIR [WORKDIR]}
WORK=${2:-$(mktemp -d /tmp/llmd-router.XXXXXX)}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
case "$WORK" in "$REPO"/*) echo "WORKDIR must be outside this repository" >&2; exit 2 ;; esac
P0=${P0:-8201} P1=${P1:-8202} GRPC=${GRPC:-9002} MODE=${MODE:-lora} ZMQ=${ZMQ:-5557} RENDER=${RENDER:-9100}
# KV_EVENTS=off (prefix mode) starts the replicas without --kv-events-config: the control run.
# EPP_V=9 makes the EPP log each KV-event batch its indexer processes (llm-d's TRACE level).
KV_EVENTS=${KV_EVENTS:-on} EPP_V=${EPP_V:-2}

mkdir -p "$WORK/src" "$WORK/bin"
if [ ! -f "$WORK/src/go.mod" ]; then
	git --git-dir="$SNAP" --work-tree="$WORK/src" checkout -f HEAD -- .
fi
SNAPREV=$(git --git-dir="$SNAP" rev-parse HEAD)
(cd "$WORK/src" && go build -o "$WORK/bin/epp" ./cmd/epp)
mkdir -p "$WORK/src/hack/loraplexharness"
cp "$HERE/harness.go" "$WORK/src/hack/loraplexharness/main.go"
(cd "$WORK/src" && go build -o "$WORK/bin/harness" ./hack/loraplexharness/main.go) # named: its ignore tag keeps loraplex's builds off it
(cd "$REPO" && go build -o "$WORK/bin/server" ./cmd/server)

cat >"$WORK/endpoints.yaml" <<EOT
endpoints:
  - name: loraplex-0
    address: 127.0.0.1
    port: "$P0"
    labels: {llm-d.ai/engine-type: vllm}
  - name: loraplex-1
    address: 127.0.0.1
    port: "$P1"
    labels: {llm-d.ai/engine-type: vllm}
EOT
if [ "$MODE" = prefix ]; then
	cat >"$WORK/epp.yaml" <<EOT
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - name: file-discovery
    type: file-discovery
    parameters: {path: "$WORK/endpoints.yaml", watchFile: false}
  - {name: metrics-source, type: metrics-data-source, parameters: {scheme: http, path: /metrics}}
  - {name: metrics-extractor, type: core-metrics-extractor}
  - name: token-producer
    type: token-producer
    parameters: {modelName: loraplex-demo, vllm: {url: "http://127.0.0.1:$RENDER"}}
  - name: precise-prefix-cache-producer
    type: precise-prefix-cache-producer
    parameters:
      kvEventsConfig: {zmqEndpoint: "tcp://127.0.0.1:$ZMQ", topicFilter: "kv@", discoverPods: false}
  - name: prefix-cache-scorer
    type: prefix-cache-scorer
    parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}
  - {name: max-score-picker, type: max-score-picker}
  - {name: single-profile-handler, type: single-profile-handler}
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: prefix-cache-scorer, weight: 1}
      - {pluginRef: max-score-picker}
dataLayer:
  injectDefaults: false
  discovery: {pluginRef: file-discovery}
  sources:
    - pluginRef: metrics-source
      extractors:
        - pluginRef: metrics-extractor
EOT
else
cat >"$WORK/epp.yaml" <<EOT
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - name: file-discovery
    type: file-discovery
    parameters: {path: "$WORK/endpoints.yaml", watchFile: false}
  - {name: metrics-source, type: metrics-data-source, parameters: {scheme: http, path: /metrics}}
  - {name: metrics-extractor, type: core-metrics-extractor}
  - {name: lora-affinity-scorer, type: lora-affinity-scorer}
  - {name: max-score-picker, type: max-score-picker}
  - {name: single-profile-handler, type: single-profile-handler}
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: lora-affinity-scorer, weight: 1}
      - {pluginRef: max-score-picker}
dataLayer:
  injectDefaults: false
  discovery: {pluginRef: file-discovery}
  sources:
    - pluginRef: metrics-source
      extractors:
        - pluginRef: metrics-extractor
EOT
fi

PIDS=""
stop() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; for p in $PIDS; do wait "$p" 2>/dev/null || true; done; }
trap stop EXIT INT TERM
# The demo's files, as cmd/server extracts them (its log names the folder): served with
# --model and --adapter rather than as the demo, because the demo's router needs a device slot
# per expert and a replica with one slot is what makes an adapter wait.
"$WORK/bin/server" --http-addr 127.0.0.1:0 >"$WORK/extract.log" 2>&1 &
XPID=$!
n=0
until DEMO=$(sed -n 's/.*serving the built-in demo.* folder=\([^ ]*\).*/\1/p' "$WORK/extract.log") && [ -n "$DEMO" ]; do
	n=$((n + 1)); [ $n -lt 300 ] || { echo "cmd/server did not extract the demo" >&2; kill $XPID; exit 1; }; sleep 0.1
done
kill $XPID; wait $XPID 2>/dev/null || true
# The EPP first: in prefix mode its indexer binds the socket the replicas dial.
"$WORK/bin/epp" --config-file "$WORK/epp.yaml" --grpc-port "$GRPC" --grpc-health-port $((GRPC + 1)) \
	--metrics-port $((GRPC + 2)) --secure-serving=false --pool-name loraplex --pool-namespace default \
	--emit-endpoint-scores --refresh-metrics-interval 50ms --v "$EPP_V" >"$WORK/epp.log" 2>&1 &
PIDS="$PIDS $!"
n=0
until grep -q '"gRPC server listening","name":"ext-proc"' "$WORK/epp.log"; do
	n=$((n + 1)); [ $n -lt 300 ] || { echo "EPP did not start; see $WORK/epp.log" >&2; tail -20 "$WORK/epp.log" >&2; exit 1; }; sleep 0.1
done
for port in "$P0" "$P1"; do
	set --
	if [ "$MODE" = prefix ] && [ "$KV_EVENTS" = on ]; then
		set -- --kv-events-config "{\"enable_kv_cache_events\": true, \"publisher\": \"zmq\", \"endpoint\": \"tcp://127.0.0.1:$ZMQ\", \"topic\": \"kv@127.0.0.1:$port@loraplex-demo\"}"
	fi
	"$WORK/bin/server" "$@" --http-addr "127.0.0.1:$port" --model "$DEMO/model" --served-model-name loraplex-demo \
		--adapter c="$DEMO/adapters/c" --adapter english="$DEMO/adapters/english" --adapter go="$DEMO/adapters/go" \
		--adapter python="$DEMO/adapters/python" --max-loras 1 --threads 1 --log-level warn >"$WORK/server-$port.log" 2>&1 &
	PIDS="$PIDS $!"
done
for port in "$P0" "$P1"; do
	n=0
	until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
		n=$((n + 1)); [ $n -lt 200 ] || { echo "replica $port did not start" >&2; exit 1; }; sleep 0.1
	done
done
echo "# $(date -u +%FT%TZ) loraplex $(cd "$REPO" && git rev-parse --short HEAD), llm-d-router $SNAPREV, $(go version), MODE=$MODE KV_EVENTS=$KV_EVENTS"
rc=0
"$WORK/bin/harness" -mode "$MODE" -render "127.0.0.1:$RENDER" -epp "127.0.0.1:$GRPC" -replicas "127.0.0.1:$P0,127.0.0.1:$P1" || rc=$?
if [ "$MODE" = prefix ]; then
	echo
	for port in "$P0" "$P1"; do
		echo "- KV-event batches the EPP's indexer processed from 127.0.0.1:$port (its log at --v $EPP_V): $(grep -c "\"Processing event batch\",\"podID\":\"127.0.0.1:$port\"" "$WORK/epp.log" || true)"
	done
fi
exit $rc
