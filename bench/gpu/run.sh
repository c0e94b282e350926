#!/usr/bin/env bash
# One command for every GPU ratio of issue 15's goal table (and issue 14's GPU rows), on one
# machine, in one invocation, inside one bounded device call (BUDGET_S, default 530 s: the device
# tool kills a call at 600 s). It writes OUT/gpu-goals-CARD.json and OUT/gpu-goals-CARD.md (bench/gpu/report;
# copy them into bench/results/ and run `go run ./bench/readme`), with every stage's log in OUT/logs.
# The results file is rewritten after every stage, so a run cut short keeps what it measured.
#
#   bench/gpu/run.sh [OUT]                    (a run's own folder; default bench/results/gpu-run)
#   EXPORT=$OUT bench/gpu/run.sh /tmp/gpu-run (the device tool: see EXPORT)
#
# Stages, in order of what their rows are worth, each timed and bounded by what is left of the
# budget. Estimates for an H100 box of 16 cores (8B shape), from the H200 runs in
# bench/results/gpu-h200 and the kernel build of bench/results/gpu-h100:
#   build        kernels for sm_$ARCH (make -j) and the Go binaries (cgo flags of `make cuda-env`):
#                ~40 s of nvcc on 4 cores (30 s on 16) beside a cold Go build of ~40-60 s: ~90 s;
#                ~10 s on a warm machine's second call (make and the Go cache are incremental)
#   loraplex     bench/gpu: ceilings, decode (ctx 128, 4k, 32k), adapters (rank 16 all, rank 8 q/v),
#                routed top-2 of 28, deterministic mode ÷ default (same process), prefill 2k/8k/32k
#                (tensor cores; 2k also CUDA cores, and on one rank-16 adapter): ~60 s. The weights are one shared 1 GB buffer of
#                random bf16 (benchenv.RandomSource), not 16 GB generated: 16 GB uploaded in 3-5 s
#                per process (2.7-4.5 s on the H200), as in every Go stage below
#   prefixcache  bench/prefixcache on CUDA, 8B shape: TTFT with a 2,000-token cached prefix ÷
#                uncached: ~20 s (weights, an 8.6 GB KV cache, 6 pairs of requests)
#   hf           bench/reference/hf_bench.py (HF transformers, batch 1 and 64; peft's point is not
#                a goal row and is left out): ~45 s (imports, 16 GB initialised on the GPU, then
#                ~7 s at 11 tok/s and ~15 s at 340 tok/s, the H200's figures)
#   ab           bench/gpu again for each assignment in AB (default none): a switch (fused decode
#                kernels, grouped or wide LoRA, decode split rule, deterministic mode's GEMM) against the
#                default, on the rows it can move (decode at batch 1 and 64 and at ctx 32k, both
#                adapter batches and their ratio of the byte-bound ceiling inside the A/B run,
#                routed decode, deterministic mode at batch 1 and 64, 2k and 8k prefill and their
#                attention alone): ~30 s each (its own process: weights and 5.8 GB of adapters
#                uploaded again), then bench/prefixcache with the same switch (the prefix-cache
#                TTFT, which prefill switches move): ~20 s each, 3 pairs of requests (AB_PREFIX=0
#                leaves it out)
#   llamacpp     with LLAMACPP_KIT (the kit's folder or its .tar.xz): its CUDA build starts at once in
#                the background on BUILD_CPUS while loraplex runs pinned to LP_CPUS (the kit says
#                4-6 min on 16 cores: on 11 it may not finish inside one call, and a second call on
#                the warm machine resumes it); llama-bench and llama-batched-bench (~40 s) run when
#                it is done, or the rows say it did not fit. The wait ends at BUDGET_S - 150 s.
#   coldload     bench/coldload on CUDA, 8B rank-16 adapter (all cores: the host stage is parallel,
#                so it runs after the llama.cpp build is done or stopped): ~20 s
#   report       bench/gpu/report: one results file, <1 s (also after every stage above)
#   tests        with TESTS (a go test -run regex), those CUDA tests of ./cuda/, right after the
#                build (logs/tests.txt; their compile ~60 s on a cold Go cache, then their run)
# Without llama.cpp ~235 s (+~30 s per AB run, with its prefix-cache pass); with its benchmarks ~280 s, plus the wait for its build.
# Knobs (env): BUDGET_S=530, SKIP="stage,stage", ARCH=90, AB="NAME=V NAME=V,NAME=V" (one run per word, commas join switches;
#   unset: none), TESTS='TestA|TestB' (unset: no tests stage), SWITCHES='A=on,B=on' (set after the tests pass), AB_PREFIX=1 (0: A/B runs leave bench/prefixcache out),
#   AB_STAGES=router (the bench/gpu stages each A/B run measures; unset: all of them), LP_CPUS / CONVERT_CPUS / BUILD_CPUS (taskset lists; default 0-3 / 4 / 5..N-1 on
#   machines of 12+ cores), LLAMACPP_REPS=3, COLDLOAD_TRIALS=10, EXPORT=DIR: after every stage the
#   results file so far and gpu-run.tgz (OUT whole: logs, every stage's output) are copied into DIR
#   (three files: the device tool brings back at most 8 from its $OUT, so OUT itself goes elsewhere).
set -uo pipefail
T0=$(date +%s) # the budget counts from here: unpacking the Go toolchain (.gpu/env.sh) included
cmdline="bench/gpu/run.sh $*"
EXPORT=${EXPORT:-}
if [ -n "$EXPORT" ]; then mkdir -p "$EXPORT" && EXPORT=$(cd "$EXPORT" && pwd) || exit 1; fi
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
out=${1:-bench/results/gpu-run}
mkdir -p "$out/logs" && out=$(cd "$out" && pwd)
[ -f .gpu/env.sh ] && ! command -v go >/dev/null && source .gpu/env.sh
BUDGET_S=${BUDGET_S:-530}; export ARCH=${ARCH:-90}; SKIP=",${SKIP:-},"; AB=${AB:-}
LLAMACPP_REPS=${LLAMACPP_REPS:-3}; COLDLOAD_TRIALS=${COLDLOAD_TRIALS:-10}
RESERVE_S=15 # the report at the end
ncpu=$(nproc)
if [ "$ncpu" -ge 12 ]; then
  LP_CPUS=${LP_CPUS:-0-3}; CONVERT_CPUS=${CONVERT_CPUS:-4}; BUILD_CPUS=${BUILD_CPUS:-5-$((ncpu - 1))}
else
  LP_CPUS=${LP_CPUS:-0-$((ncpu - 1))}; BUILD_CPUS=${BUILD_CPUS:-0-$((ncpu - 1))}; CONVERT_CPUS=${CONVERT_CPUS:-0-$((ncpu - 1))}
fi
count_cpus() { local n=0 a b; for r in ${1//,/ }; do a=${r%-*}; b=${r#*-}; n=$((n + b - a + 1)); done; echo "$n"; }
LP_JOBS=$(count_cpus "$LP_CPUS"); BUILD_JOBS=$(count_cpus "$BUILD_CPUS")
bin=/tmp/loraplex-gpubench-bin; mkdir -p "$bin"
# What an earlier run left in OUT must not pass for this one's (a llama.cpp exit status above
# all, which the wait below takes for its build having ended): OUT is a run's own folder.
rm -rf "$out"/{loraplex,hf,coldload,prefixcache}.json "$out"/ab-*.json "$out"/prefixcache-ab-*.json "$out"/gpu-goals-* "$out/llamacpp" "$out"/logs/*
: > "$out/stages.tsv"

elapsed() { echo $(( $(date +%s) - T0 )); }
skipped() { [[ $SKIP == *",$1,"* ]]; }
# export_results rewrites the results file from what the stages have written so far and, with
# EXPORT, copies it there with OUT in one archive: a call cut off later keeps this much.
export_results() {
  [ -x "$bin/report" ] && "$bin/report" -dir "$out" -command "$cmdline" > "$out/logs/report.txt" 2>&1
  [ -n "$EXPORT" ] || return 0
  cp "$out"/gpu-goals-*.json "$out"/gpu-goals-*.md "$EXPORT/" 2>/dev/null
  tar -czf "$EXPORT/.gpu-run.tgz" -C "$out" . 2>/dev/null && mv "$EXPORT/.gpu-run.tgz" "$EXPORT/gpu-run.tgz"
  return 0
}
record() {
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$out/stages.tsv"; echo "[$(elapsed)s] <<< $1: $3 (${2} s)"
  export_results
}
# stage NAME MAX_S CMD...: runs CMD (log in logs/NAME.txt) bounded by MAX_S and by the budget left.
stage() {
  local name=$1 max=$2; shift 2
  if skipped "$name"; then record "$name" 0 "skipped (SKIP)"; return 1; fi
  local left=$(( BUDGET_S - RESERVE_S - $(elapsed) ))
  local lim=$(( max < left ? max : left ))
  if [ "$lim" -lt 5 ]; then record "$name" 0 "skipped (budget spent at $(elapsed) s)"; return 1; fi
  echo "[$(elapsed)s] >>> $name (at most ${lim} s): $*"
  local t0 rc status; t0=$(date +%s%N)
  timeout --kill-after=5 "$lim" "$@" > "$out/logs/$name.txt" 2>&1; rc=$?
  local sec; sec=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}')
  case $rc in 0) status=ok;; 124|137) status="timed out after ${lim} s";; *) status="failed (exit $rc)";; esac
  record "$name" "$sec" "$status"
  grep -E '^(==|batch|router|prefill|deterministic|device|median|HF|peft|\| lorapack|stage|bench:|coldload:|prefixcache:|FAIL|panic)' "$out/logs/$name.txt" | head -60
  [ $rc -ne 0 ] && tail -15 "$out/logs/$name.txt"
  return $rc
}

{
  # The first line names the card (the report's fallback when bench/gpu wrote nothing).
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>/dev/null ||
    echo "no GPU, nvidia-smi failed"
  nvcc --version | tail -1; go version
  echo "$ncpu CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); loraplex pinned to $LP_CPUS, llama.cpp build to $BUILD_CPUS; budget ${BUDGET_S} s"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
# Importing torch, transformers and peft takes seconds: in the background, not before the builds.
timeout 60 python3 -c "import torch,transformers,peft;print('torch',torch.__version__,'transformers',transformers.__version__,'peft',peft.__version__)" \
  >> "$out/machine.txt" 2>/dev/null &
versions_pid=$!

# llama.cpp: its build is the longest stage, so it starts first, in the background, on its own cores.
llama_build_pid=; llama_model_pid=; kit=
if [ -n "${LLAMACPP_KIT:-}" ] && ! skipped llamacpp; then
  mkdir -p "$out/llamacpp"
  if [ -f "$LLAMACPP_KIT" ]; then
    mkdir -p /tmp/llamacpp-kit && tar -xJf "$LLAMACPP_KIT" -C /tmp/llamacpp-kit && kit=/tmp/llamacpp-kit/llamacpp
  elif [ -f "$LLAMACPP_KIT/gpu_peer.sh" ]; then kit=$(cd "$LLAMACPP_KIT" && pwd)
  elif [ -f "$LLAMACPP_KIT/llamacpp/gpu_peer.sh" ]; then kit=$(cd "$LLAMACPP_KIT/llamacpp" && pwd)
  fi
  # The kit's build folder, HF folder and GGUF (~33 GB): an ignored folder of the checkout, which
  # the device machine keeps between calls while it stays warm, so a build the budget cut short
  # resumes where it stopped (make is incremental) and a finished one is reused.
  export WORK=${WORK:-$root/.llamacpp-work}
  if [ -n "$kit" ] && [ -f "$kit/gpu_peer.sh" ]; then
    echo "[$(elapsed)s] llama.cpp: building on CPUs $BUILD_CPUS (-j$BUILD_JOBS), model + GGUF on $CONVERT_CPUS, in the background"
    # Each job leaves its exit status in a file when it ends (polled below); setsid makes it a
    # process group of its own, so that one that outlives the budget is stopped whole.
    setsid bash -c 'OUT=$1 JOBS=$2 taskset -c "$3" bash "$4/gpu_peer.sh" build > "$5" 2>&1; echo $? > "$1/.build.rc"' \
      _ "$out/llamacpp" "$BUILD_JOBS" "$BUILD_CPUS" "$kit" "$out/logs/llamacpp-build.txt" &
    llama_build_pid=$!
    setsid bash -c 'OUT=$1 taskset -c "$2" bash "$3/gpu_peer.sh" model convert > "$4" 2>&1; echo $? > "$1/.model.rc"' \
      _ "$out/llamacpp" "$CONVERT_CPUS" "$kit" "$out/logs/llamacpp-model.txt" &
    llama_model_pid=$!
  else
    echo "LLAMACPP_KIT=$LLAMACPP_KIT holds no gpu_peer.sh" | tee "$out/llamacpp/status.txt"
  fi
fi

build() {
  local nv="-O3 -std=c++17 -Xcompiler -fPIC -gencode arch=compute_${ARCH},code=sm_${ARCH}"
  ( go build -o "$bin/report" ./bench/gpu/report && go build ./bench/prefixcache ./bench/coldload ) > "$out/logs/go-warm.txt" 2>&1 &
  local warm=$!
  if ! make -j"$LP_JOBS" kernels NVCC_FLAGS="$nv"; then wait $warm; return 1; fi
  eval "$(make -s cuda-env)" || { wait $warm; return 1; }
  wait $warm || { cat "$out/logs/go-warm.txt"; return 1; }
  # One go build for the three: their packages compile in parallel, and each binary is named
  # after its folder (bench/gpu's is gpu).
  go build -tags cuda -o "$bin/" ./bench/gpu ./bench/prefixcache ./bench/coldload && mv "$bin/gpu" "$bin/gpubench"
}
export -f build
export bin out ARCH LP_JOBS
ok_build=1
stage build 240 taskset -c "$LP_CPUS" bash -c build || ok_build=0

# TESTS (a go test -run regex): a change's CUDA tests right after the build, while llama.cpp
# builds beside them, so that one call on a fresh machine both checks and measures it (the
# numbers after a failed test are kept, and the results file says the tests failed).
if [ $ok_build = 1 ] && [ -n "${TESTS:-}" ]; then
  stage tests 300 taskset -c "$LP_CPUS" bash -c 'eval "$(make -s cuda-env)" && go test -tags cuda -count=1 -timeout 280s -v -run "$1" ./cuda/' _ "$TESTS"
  grep -E -- '^(--- FAIL|ok|FAIL)' "$out/logs/tests.txt" | head -20
fi
# SWITCHES ("A=on,B=on"): switches every later loraplex stage runs with, when the tests stage ran
# and passed: the defaults a change's tests must clear before one call measures it as the new
# default (machine.txt says which were set, or why not; AB words still override them).
if [ -n "${SWITCHES:-}" ]; then
  if [ $ok_build = 1 ] && [ -n "${TESTS:-}" ] && grep -q '^tests.*[[:space:]]ok$' "$out/stages.tsv" &&
    grep -q -- '^--- PASS' "$out/logs/tests.txt" && ! grep -q 'no tests to run' "$out/logs/tests.txt"; then
    # shellcheck disable=SC2086 # commas join the assignments
    export ${SWITCHES//,/ }
    echo "switches set for every loraplex stage (the tests passed): $SWITCHES" | tee -a "$out/machine.txt"
  else
    echo "switches NOT set (the tests did not run or did not pass): $SWITCHES" | tee -a "$out/machine.txt"
  fi
fi
if [ $ok_build = 1 ]; then
  stage loraplex 200 taskset -c "$LP_CPUS" "$bin/gpubench" -shape 8b -out "$out/loraplex.json"
  stage prefixcache 60 taskset -c "$LP_CPUS" "$bin/prefixcache" -device cuda -shape 8b -runs 5 -prefix 2000 -suffix 40 -json "$out/prefixcache.json"
fi
stage hf 120 taskset -c "$LP_CPUS" python3 bench/reference/hf_bench.py --shape 8b --no-peft --out "$out/hf.json"
if [ $ok_build = 1 ]; then
  for assign in $AB; do
    label=$(printf '%s' "$assign" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9' '-' | sed 's/^loraplex-//')
    # shellcheck disable=SC2086 # a word may set several switches at once: A=on,B=context
    stage "ab-$label" 60 env ${assign//,/ } taskset -c "$LP_CPUS" "$bin/gpubench" -shape 8b -out "$out/ab-$label.json" \
      -stages "${AB_STAGES:-decode,longctx,adapters16,adapters8qv,router,deterministic,prefill}" -sweep 1,64 -contexts 4096,32768 -prefill-tokens 2048,8192 -prefill-cuda-cores ''
    # The report reads prefixcache-ab-LABEL.json beside ab-LABEL.json (not ab-*: that is bench/gpu's).
    # shellcheck disable=SC2086 # the same switches as above
    [ "${AB_PREFIX:-1}" = 0 ] ||
      stage "ab-$label-prefixcache" 45 env ${assign//,/ } taskset -c "$LP_CPUS" "$bin/prefixcache" -device cuda -shape 8b -runs 3 \
        -prefix 2000 -suffix 40 -json "$out/prefixcache-ab-$label.json"
  done
fi

# llama.cpp: wait for its build while the budget leaves room for its benchmarks, cold load and the report.
COLDLOAD_S=45; LLAMA_BENCH_S=90
if [ -n "$llama_build_pid" ]; then
  deadline=$(( BUDGET_S - RESERVE_S - COLDLOAD_S - LLAMA_BENCH_S ))
  L=$out/llamacpp
  while { [ ! -f "$L/.build.rc" ] || [ ! -f "$L/.model.rc" ]; } && [ "$(elapsed)" -lt "$deadline" ]; do sleep 2; done
  why=
  if [ ! -f "$L/.build.rc" ]; then
    why="its CUDA build (release b10573, sm_$ARCH, -j$BUILD_JOBS on CPUs $BUILD_CPUS) had not finished after $(elapsed) s, the most this ${BUDGET_S}-s run could give it (a second call on the warm machine resumes it from $WORK); last build line: $(tail -1 "$L/cmake-build.log" 2>/dev/null | tr -d '\r' | cut -c1-160)"
  # The kit's phases can exit 0 after a failed command (its timing wrapper), so success is
  # what they leave: the two binaries, and a GGUF whose conversion said it finished.
  elif [ "$(cat "$L/.build.rc")" != 0 ] || [ ! -x "$WORK/build/bin/llama-bench" ] || [ ! -x "$WORK/build/bin/llama-batched-bench" ]; then
    why="its CUDA build failed: $(grep -h -A1 -E 'CMake Error|error:|\*\*\*' "$L/cmake-configure.log" "$L/cmake-build.log" 2>/dev/null | head -2 | tr -s ' \n' ' ' | cut -c1-240) (logs/llamacpp-build.txt)"
  elif [ ! -f "$L/.model.rc" ]; then
    why="the bf16 GGUF conversion of the random 8B model had not finished after $(elapsed) s"
  elif [ "$(cat "$L/.model.rc")" != 0 ] || ! grep -qE 'Model successfully exported|convert: .* exists, skipping' "$L/convert.log" "$out/logs/llamacpp-model.txt" 2>/dev/null; then
    why="writing or converting the random 8B model failed: $(grep -hm1 -E 'Error|error' "$out/logs/llamacpp-model.txt" "$L/convert.log" 2>/dev/null | cut -c1-200)"
  fi
  for p in $llama_build_pid $llama_model_pid; do kill -- -"$p" 2>/dev/null; done
  # A conversion stopped half way leaves a GGUF newer than its HF folder, which the kit would
  # take for finished on the next call: remove it (a stopped build or HF write redo themselves).
  if [ ! -f "$L/.model.rc" ] && [ -f "$L/convert.log" ] && ! grep -q 'Model successfully exported' "$L/convert.log"; then
    rm -f "$WORK/llama3-8b-random-bf16.gguf"
  fi
  if [ -n "$why" ]; then
    echo "$why" > "$L/status.txt"; record llamacpp 0 "not measured: $why"
  else
    grep -h '^[a-z]' "$L/timings.txt" 2>/dev/null
    stage llamacpp "$LLAMA_BENCH_S" env OUT="$out/llamacpp" REPS="$LLAMACPP_REPS" bash "$kit/gpu_peer.sh" bench batched ||
      echo "llama-bench / llama-batched-bench did not complete (logs/llamacpp.txt)" > "$L/status.txt"
  fi
fi
[ $ok_build = 1 ] && stage coldload "$COLDLOAD_S" "$bin/coldload" -device cuda -shape 8b -trials "$COLDLOAD_TRIALS" -dir /var/tmp/loraplex-coldload -json "$out/coldload.json"

wait "$versions_pid" # machine.txt's Python line
[ -x "$bin/report" ] || go build -o "$bin/report" ./bench/gpu/report # the build stage failed before it
record total "$(elapsed)" "budget ${BUDGET_S} s"
if ls "$out"/gpu-goals-*.md > /dev/null 2>&1; then
  cat "$out"/gpu-goals-*.md
else
  cat "$out/logs/report.txt" 2>/dev/null; echo "no results file: raw outputs are in $out"; exit 1
fi
