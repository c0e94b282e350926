#!/usr/bin/env bash
# One command for the CUDA benchmarks on a GPU machine: builds the kernels, runs bench/gpu for
# the Llama-3-8B and ~1B shapes, the per-op breakdown and the HF transformers/peft reference in
# the same invocation, and writes them into one results file.
#   bench/gpu/run.sh [OUT_DIR]        (default bench/results/gpu-run)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench/results/gpu-run}
mkdir -p "$out"
make kernels >/dev/null
eval "$(make -s cuda-env)" # cgo flags of a CUDA build (gorgonia.org/cu, cuda/cu13compat.h)
{
  echo "# loraplex CUDA benchmarks — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  python3 -c "import torch,transformers,peft;print('torch',torch.__version__,'transformers',transformers.__version__,'peft',peft.__version__)" || true
  echo '```'
  for shape in 8b 1b; do
    echo; echo "## loraplex, $shape shape"; echo; echo '```'
    go run -tags cuda ./bench/gpu -shape "$shape" -out "$out/gpu-$shape.json"
    echo '```'
  done
  echo; echo "## per-op breakdown, 8b"; echo; echo '```'
  go run -tags cuda ./bench/gpu -shape 8b -only breakdown
  echo '```'
  echo; echo "## HF transformers / peft, 8b"; echo; echo '```'
  python3 bench/reference/hf_bench.py --shape 8b --out "$out/hf-8b.json" 2>&1 | grep -E '^(HF|peft)' || true
  echo '```'
} | tee "$out/results.md"
