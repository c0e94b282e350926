#!/usr/bin/env bash
# The GPU forms of the adapter-cache benchmarks of issue 5, in one command on a GPU machine:
#   (b) bench/coldload: a rank-16 Llama-3-8B adapter (all seven projections, bf16, 84 MB) from
#       disk to ready on the device, PEFT folder vs lorapack file, page cache warm and cold,
#       with the host-to-device copy bandwidth of the same run as the roofline;
#   (c) bench/adaptercache: 1,000 adapters (rank 8 on q,k,v,o), zipf popularity, 32 device
#       slots vs all resident, same plan, same weights, one invocation.
# Writes OUT_DIR/results.md (and the programs' stderr logs next to it).
#   bench/adaptercache/run-gpu.sh OUT_DIR        (default bench/results/adaptercache-gpu)
# Knobs (environment): DEVICE (cuda) and SHAPE (8b) for a CPU smoke test (DEVICE=cpu SHAPE=small
# NVCC=nvcc), COLDLOAD_ARGS, ADAPTERCACHE_ARGS (extra flags), WORK_DIR (where the
# adapters are written: a real disk, not tmpfs, for the cold-cache numbers).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench/results/adaptercache-gpu}
dev=${DEVICE:-cuda}
shape=${SHAPE:-8b}
mkdir -p "$out"
t_start=$(date +%s)
make kernels >/dev/null || { echo "make kernels failed" >&2; exit 1; }
bin=$(mktemp -d)
go build -tags cuda -o "$bin/coldload" ./bench/coldload || exit 1
go build -tags cuda -o "$bin/adaptercache" ./bench/adaptercache || exit 1
t_built=$(date +%s)

# A work dir on a real disk: /var/tmp, else the repository's folder, unless it is tmpfs.
work=${WORK_DIR:-}
if [ -z "$work" ]; then
  for d in /var/tmp /tmp "$PWD"; do
    if [ -d "$d" ] && [ -w "$d" ] && [ "$(stat -f -c %T "$d")" != tmpfs ]; then work=$(mktemp -d -p "$d" adbench.XXXXXX); break; fi
  done
  work=${work:-$(mktemp -d)}
fi
trap 'rm -rf "$bin" "$work"' EXIT

{
  echo "# Adapter cache, GPU forms of issue 5 (b) and (c) — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader 2>&1
  nvcc --version 2>&1 | tail -1
  go version
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; work dir $work ($(stat -f -c %T "$work")); git $(git rev-parse --short HEAD 2>/dev/null)"
  echo "built in $((t_built - t_start)) s (make kernels + go build)"
  echo '```'
  echo
  echo "## (b) cold load, rank 16, all seven projections, Llama-3-8B shape"
  echo
  timeout 240 "$bin/coldload" -device "$dev" -shape "$shape" -trials 10 -dir "$work/coldload" ${COLDLOAD_ARGS:-} 2>"$out/coldload.stderr" | sed "s/^#/##/"
  rc=${PIPESTATUS[0]}; [ $rc = 0 ] || { echo; echo "**coldload exited with status $rc**:"; echo '```'; tail -20 "$out/coldload.stderr"; echo '```'; }
  rm -rf "$work/coldload"
  echo
  echo "## (c) 1,000 adapters, zipf, 32 device slots vs all resident"
  echo
  timeout 420 "$bin/adaptercache" -device "$dev" -shape "$shape" -adapters 1000 -slots 32 -rank 8 -targets q_proj,k_proj,v_proj,o_proj \
    -rate 16 -duration 30s -dir "$work/adapters" ${ADAPTERCACHE_ARGS:-} 2>"$out/adaptercache.stderr" | sed "s/^#/##/"
  rc=${PIPESTATUS[0]}; [ $rc = 0 ] || { echo; echo "**adaptercache exited with status $rc**:"; echo '```'; tail -20 "$out/adaptercache.stderr"; echo '```'; }
  echo
  echo "Total wall time of this script: $(( $(date +%s) - t_start )) s."
} | tee "$out/results.md"
