#!/usr/bin/env bash
# One GPU-machine call that checks a change end to end: builds the kernels (with the compiler's
# resource report), runs the named CUDA tests, then the whole CUDA suite and the prefill
# benchmark, each bounded so the call ends inside the device tool's limit. Logs go to OUT.
# go test's own -timeout sits inside each outer timeout, so a hung test panics with every
# goroutine's stack in the log (naming the test) instead of being killed without a word.
#   bench/gpu/check.sh OUT 'TestA|TestB' [suite seconds] [bench seconds]
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?OUT dir}; focus=${2:-.}; suite_s=${3:-240}; bench_s=${4:-120}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1; } | tee "$out/machine.txt"
start=$(date +%s)
if ! make -j"$(nproc)" kernels NVCC_FLAGS='-O3 -std=c++17 -Xcompiler -fPIC -gencode arch=compute_90,code=sm_90 -Xptxas -v' > "$out/build.txt" 2>&1; then
  grep -E 'error|Error' "$out/build.txt" | head -40; echo "BUILD FAILED"; exit 1
fi
echo "kernels built in $(( $(date +%s) - start )) s"
eval "$(make -s cuda-env)"
timeout 300 go test -tags cuda -count=1 -timeout 285s -v -run "$focus" ./cuda/ > "$out/focus.txt" 2>&1; echo "focus rc=$?"
grep -E '^(--- |FAIL|ok|panic)' "$out/focus.txt" | head -60
[ "$suite_s" -gt 0 ] && timeout "$suite_s" go test -tags cuda -count=1 -timeout "$(( suite_s > 30 ? suite_s - 15 : suite_s ))s" ./cuda/... ./model/... ./serve/... > "$out/suite.txt" 2>&1; echo "suite rc=$?"
grep -E '^(--- FAIL|FAIL|ok|panic)' "$out/suite.txt" | head -40
[ "$bench_s" -gt 0 ] && timeout "$bench_s" go run -tags cuda ./bench/gpu -shape 8b -only prefill > "$out/prefill.txt" 2>&1; echo "prefill rc=$?"
tail -25 "$out/prefill.txt"
