#!/usr/bin/env bash
# Nsight Compute's view of a few launches of one kernel, for kernels whose benchmark figures do
# not say why they are slow (bench/results/gpu-h100/goals-2026-12-07-ab3: the deterministic GEMM
# streams 0.55 TB/s of weights at 64 rows whatever its variant; the LoRA kernels at batch 64 run
# 6 us launches at 1.3 TB/s): speed-of-light throughputs, the memory workload, warp stall reasons
# and occupancy, as text in OUT. Needs ncu (part of the CUDA toolkit) and permission to read the
# GPU's counters; without them it says so and exits 2.
#   bench/gpu/profile.sh OUT KERNEL_REGEX [BENCH_REGEX]
# profiles the go test benchmarks of ./cuda/ matching BENCH_REGEX (default
# BenchmarkGemmInvariantVariants), skipping each matching kernel's first 5 launches (warm-up)
# and recording the next 3. Example: bench/gpu/profile.sh /tmp/prof gemm_invariant_kernel
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?OUT dir}; kernel=${2:?kernel name regex}; bench=${3:-BenchmarkGemmInvariantVariants}
mkdir -p "$out"
ncu=$(command -v ncu || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ncu")
[ -x "$ncu" ] || { echo "profile: no ncu on this machine (looked in PATH and \$CUDA_HOME/bin)"; exit 2; }
eval "$(make -s cuda-env)"
make -s kernels > "$out/build.txt" 2>&1 || { tail -20 "$out/build.txt"; exit 1; }
go test -tags cuda -c -o "$out/cuda.test" ./cuda/ || exit 1
"$ncu" --kernel-name "regex:$kernel" --launch-skip 5 --launch-count 3 --set full -f -o "$out/prof" \
  "$out/cuda.test" -test.run '^$' -test.bench "$bench" -test.benchtime 20x > "$out/ncu.txt" 2>&1
rc=$?
if [ $rc -ne 0 ] || [ ! -f "$out/prof.ncu-rep" ]; then
  tail -20 "$out/ncu.txt"
  grep -q 'ERR_NVGPUCTRPERM' "$out/ncu.txt" && echo "profile: no permission to read the GPU's performance counters here"
  exit 2
fi
"$ncu" --import "$out/prof.ncu-rep" --page details > "$out/details.txt" 2>&1
grep -E '^  [^ ].*\(|Duration|Memory Throughput|DRAM Throughput|L1/TEX Hit|L2 Hit|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per Thread|Shared Memory Configuration Size|Stall|One or More Eligible|Issued Warp' "$out/details.txt" | head -120
