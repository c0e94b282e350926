#!/usr/bin/env bash
# Nsight Compute's view of a few launches of one kernel, for kernels whose benchmark figures do
# not say why they are slow (bench/results/gpu-h100/goals-2026-12-07-ab3: the deterministic GEMM
# streams 0.55 TB/s of weights at 64 rows whatever its variant; the LoRA kernels at batch 64 run
# 6 us launches at 1.3 TB/s), or of the kernels of a real decode step in the order they run
# (goals-2026-12-07-final3/ncu-decode1.txt: one batch-1 layer, which showed the q/k/v GEMV at 67
# registers, 3 blocks an SM and 1.94 waves): speed-of-light throughputs, the memory workload,
# launch statistics and occupancy (warp stall reasons too in the benchmark form), as text in OUT,
# and a line per launch (duration, DRAM busy, registers, waves) in OUT/summary.txt. Needs ncu
# (part of the CUDA toolkit) and permission to read the GPU's counters; without them it says so
# and exits 2.
#   bench/gpu/profile.sh OUT KERNEL_REGEX [BENCH_REGEX]
# profiles the go test benchmarks of ./cuda/ matching BENCH_REGEX (default
# BenchmarkGemmInvariantVariants), skipping each matching kernel's first 5 launches (warm-up)
# and recording the next 3. Example: bench/gpu/profile.sh /tmp/prof gemm_invariant_kernel
#   bench/gpu/profile.sh OUT KERNEL_REGEX step SKIP COUNT BENCH_GPU_ARGS...
# profiles bench/gpu run with BENCH_GPU_ARGS (its steps replayed as CUDA graphs, whose kernels
# ncu takes one by one), skipping the first SKIP launches matching KERNEL_REGEX and recording
# the next COUNT. Examples: one batch-1 decode layer,
#   bench/gpu/profile.sh /tmp/d1 . step 3000 24 -shape 8b -only decode1
# and the LoRA kernels of 64-adapter decode steps (the base steps before them launch none),
#   bench/gpu/profile.sh /tmp/a16 lora step 300 20 -shape 8b -stages adapters16
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?OUT dir}; kernel=${2:?kernel name regex}; bench=${3:-BenchmarkGemmInvariantVariants}
mkdir -p "$out"
ncu=$(command -v ncu || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ncu")
[ -x "$ncu" ] || { echo "profile: no ncu on this machine (looked in PATH and \$CUDA_HOME/bin)"; exit 2; }
eval "$(make -s cuda-env)"
make -s kernels > "$out/build.txt" 2>&1 || { tail -20 "$out/build.txt"; exit 1; }
if [ "$bench" = step ]; then
  skip=${4:?SKIP}; count=${5:?COUNT}; shift 5
  go build -tags cuda -o "$out/gpubench" ./bench/gpu || exit 1
  "$ncu" --kernel-name "regex:$kernel" --launch-skip "$skip" --launch-count "$count" --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy -f -o "$out/prof" \
    "$out/gpubench" "$@" > "$out/ncu.txt" 2>&1
else
  go test -tags cuda -c -o "$out/cuda.test" ./cuda/ || exit 1
  "$ncu" --kernel-name "regex:$kernel" --launch-skip 5 --launch-count 3 --set full -f -o "$out/prof" \
    "$out/cuda.test" -test.run '^$' -test.bench "$bench" -test.benchtime 20x > "$out/ncu.txt" 2>&1
fi
rc=$?
if [ $rc -ne 0 ] || [ ! -f "$out/prof.ncu-rep" ]; then
  tail -20 "$out/ncu.txt"
  grep -q 'ERR_NVGPUCTRPERM' "$out/ncu.txt" && echo "profile: no permission to read the GPU's performance counters here"
  exit 2
fi
"$ncu" --import "$out/prof.ncu-rep" --page details > "$out/details.txt" 2>&1
# One line per launch: its name, then the figures that say whether it streams at the limit.
awk '/^  [^ ].*\(/ { if (line != "") print line; n = $0; sub(/^  /, "", n); sub(/\(.*/, "", n); line = n }
     /^    Duration / { line = line " | " $NF " " $(NF-1) } /^    DRAM Throughput / { line = line " | DRAM " $NF "%" }
     /^    Registers Per Thread / { line = line " | " $NF " regs" } /^    Waves Per SM / { line = line " | " $NF " waves" }
     END { if (line != "") print line }' "$out/details.txt" > "$out/summary.txt"
cat "$out/summary.txt" | head -60
[ "$bench" = step ] || grep -E 'Stall|One or More Eligible|Issued Warp' "$out/details.txt" | head -40
