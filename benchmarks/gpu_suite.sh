#!/usr/bin/env bash
# The CUDA half of the benchmark suite, in one go (about 2 minutes on an H100/H200 once the
# package's CUDA kernel is built). Writes into OUTDIR (default: $OUT, else /tmp/wgan_ext_gpu):
#   bench_cuda.json      pytest-benchmark JSON of the CUDA groups
#   launches_cuda.json   kernel launches per call (torch.profiler)
#   RESULTS.md           benchmarks/RESULTS.md with its GPU section filled in
# Run from the repository root: bash benchmarks/gpu_suite.sh "$OUT"
# Then, on the machine that holds the checkout, with the two JSON files fetched:
#   python benchmarks/make_results.py --gpu bench_cuda.json --launches launches_cuda.json
set -u
out=${1:-${OUT:-/tmp/wgan_ext_gpu}}
py=${PYTHON:-python}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader || true
"$py" -c "import torch, wgan_ext; from wgan_ext import _ext; print('torch', torch.__version__, \
'cuda', torch.version.cuda, '| cuda kernel:', _ext.status('cuda'))"
SECONDS=0
"$py" -m pytest benchmarks -q -p no:cacheprovider --bench-devices=cuda --bench-compile=dcgan64 \
    --benchmark-json="$out/bench_cuda.json" "${@:2}"
rc=$?
echo "suite: ${SECONDS}s, rc=$rc"
"$py" benchmarks/profile_launches.py --device cuda --json "$out/launches_cuda.json"
echo "suite + profile: ${SECONDS}s"
cp benchmarks/RESULTS.md "$out/RESULTS.md" 2>/dev/null || true
"$py" benchmarks/make_results.py --gpu "$out/bench_cuda.json" \
    --launches "$out/launches_cuda.json" -o "$out/RESULTS.md"
exit $rc
