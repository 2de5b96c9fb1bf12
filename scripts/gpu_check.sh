#!/usr/bin/env bash
# The GPU check in one run: build the kernels for the visible GPU, run the CUDA tests, the launch
# profile, the bandwidth and CUDA-graph measurements and the benchmark suite. It stops within
# BUDGET seconds (default 450): each step gets its own limit or what is left, whichever is
# smaller. Every step logs to $OUT (default ./gpu-check), so partial results survive.
# Usage: OUT=/some/dir [BUDGET=450] bash scripts/gpu_check.sh [--quick | --cpu-smoke]
#   --quick      skip the benchmark suite
#   --cpu-smoke  every step on the CPU with tiny sizes (no GPU needed): checks this script and
#                the code paths it drives before a GPU's time is spent on them
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
END=$((SECONDS + ${BUDGET:-450}))
MODE=${1:-}
FAILED=0
step() { local name=$1 limit=$2; shift 2; local left=$((END - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo "== $name: skipped, out of time"; return; fi
  echo "== $name (limit $limit s)"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  [ "$rc" -ne 0 ] && FAILED=1
  echo "   rc=$rc in $((SECONDS - t0)) s"; tail -n 4 "$OUT/$name.log"; }

if [ "$MODE" = "--cpu-smoke" ]; then
  DEV=cpu; EXTRA="--smoke"; BENCH_OPTS="--benchmark-disable"; export WGAN_EXT_CUDA=0
else
  DEV=cuda; EXTRA=""; BENCH_OPTS="--benchmark-json=$OUT/bench_gpu.json"
  # Offline machines: wheels carried in .whl/ (torchgan for the DCGAN critic, hypothesis, ...).
  if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv > "$OUT/gpu.txt" 2>&1
  cat "$OUT/gpu.txt"
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  fi
  export TORCH_CUDA_ARCH_LIST WGAN_EXT_CUDA=1
fi
export MAX_JOBS=${MAX_JOBS:-16}
step build 240 $PY setup.py build_ext --inplace
step info 60 $PY -m wgan_ext.info
# Record the toolchain, and whether an error raised inside the extension reaches Python as an
# exception (rc 0) or kills the process (rc 139: a C++ runtime mismatch between build and torch).
{ command -v g++ c++ gcc; g++ --version | head -1; readelf -p .comment wgan_ext/_C*.so; } > "$OUT/toolchain.txt" 2>&1
step exception_probe 60 $PY -c "
import torch, wgan_ext
wgan_ext._ext.require('$DEV')
t = torch.zeros(2, dtype=torch.int64, device='$DEV')
try:
    torch.ops.wgan_ext.fused_clip_([t], -1.0, 1.0)
    raise SystemExit('an int64 tensor was accepted')
except TypeError as e:
    print('raised normally:', e)
"
step tests ${TESTS_LIMIT:-200} $PY -m pytest tests/test_fused_clip.py tests/test_fused_clipper.py \
  tests/test_cuda_graphs.py -q -p no:cacheprovider -rs -x
step tests_optim 120 $PY -m pytest tests/test_optim.py -q -p no:cacheprovider -rs -x \
  $([ "$DEV" = cuda ] && echo "-m cuda")
step launches 90 $PY benchmarks/profile_launches.py --device $DEV --json "$OUT/launches.json"
step extra 120 $PY benchmarks/gpu_extra.py --device $DEV $EXTRA --json "$OUT/gpu_extra.json"
if [ "$MODE" != "--quick" ]; then
  step bench ${BENCH_LIMIT:-200} $PY -m pytest benchmarks -q -p no:cacheprovider --bench-devices=$DEV \
    --bench-compile=${BENCH_COMPILE:-none} $BENCH_OPTS ${BENCH_ARGS:-}
fi
exit $FAILED
