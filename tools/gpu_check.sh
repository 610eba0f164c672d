#!/usr/bin/env bash
# One-shot check of the CUDA noisy-step op on a GPU machine (one NVIDIA GPU, nvcc, a CUDA build of
# torch on `python3` with pytest, hypothesis, scipy, numpy, setuptools, ninja; no internet).
#
#   tools/gpu_check.sh            build with CUDA, run tests/kernel (CUDA tests included) and the
#                                 ghost-norm CUDA tests, then the CUDA benchmarks (the op with the
#                                 card's copy bandwidth; per-sample steps against a plain step and
#                                 Opacus when installed) and quick CPU rows
#   GPU_CHECK_DRY_RUN=1 tools/gpu_check.sh   no GPU needed: CPU-only build, tests and tiny benchmark,
#                                 to exercise this script's logic
#
# Logs go to $OUT (default: a new temporary folder), one file per stage plus gpu_check.log with
# everything. Every stage runs under a timeout so the whole script stays under 6 minutes; a failed
# stage is reported and the next one still runs; the exit status is 0 only if every stage passed.
set -uo pipefail

PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the benchmark imports the in-place build
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
set -x

DRY=${GPU_CHECK_DRY_RUN:-0}
failed=()
stage() {  # stage NAME TIMEOUT_S CMD...: run, tee to $OUT/NAME.log, record failure
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== stage $name: exit $rc after $((SECONDS - t0)) s ==="
  if [ "$rc" -ne 0 ]; then failed+=("$name(rc=$rc)"); fi
  return "$rc"
}

{ date; uname -a; nvidia-smi || true; nvcc --version || true; command -v ninja || true; nproc
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

has_cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$has_cuda" != 1 ] && [ "$DRY" != 1 ]; then
  echo "gpu_check.sh: no CUDA device visible to $PY; this script is for the GPU machine" \
       "(GPU_CHECK_DRY_RUN=1 runs its CPU-only dry run)"
  exit 2
fi

if [ "$DRY" = 1 ]; then
  build_env=(env CERTUNLEARN_CUDA=0 MAX_JOBS=2)
  bench_sizes=64x1e4,4x1e5
  cpu_sizes=4x1e4
else
  build_env=(env CERTUNLEARN_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=16)
  bench_sizes=1x1e7,64x1e5,256x1e6,1024x1e6
  cpu_sizes=64x1e5,256x1e6
fi

# 1. Build the extension in place (the .so lands in certunlearn_train/).
rm -rf build certunlearn_train/_C*.so
if ! stage build 240 "${build_env[@]}" "$PY" setup.py build_ext --inplace -j 16; then
  echo "gpu_check.sh: build failed; see $OUT/build.log"
  exit 1
fi
stage import 60 "$PY" -c "
from certunlearn_train import ops
print('extension', ops.extension_available(), ops.extension_unavailable_reason())
print('cuda kernels', ops.cuda_kernels_available())
assert ops.extension_available()
assert ops.cuda_kernels_available() or $DRY == 1, 'built without CUDA kernels'
"

# 2. The kernel tests, CUDA ones included (they must not be skipped on the GPU machine). The
#    bad-input tests run in their own process afterwards, and each error path is also probed in a
#    subprocess of its own, so that a crash in an error path cannot hide the other results.
BAD=tests/kernel/test_op.py::test_bad_inputs_raise_and_leave_params_unchanged
stage pytest 200 "$PY" -m pytest tests/kernel -q -x -p no:cacheprovider -rs --durations=10 \
  --deselect "$BAD"
if [ "$DRY" != 1 ] && grep -q "needs a CUDA device" "$OUT/pytest.log"; then
  echo "gpu_check.sh: CUDA tests were skipped on a GPU machine"; failed+=("cuda-tests-skipped")
fi
stage pytest_bad_inputs 100 "$PY" -m pytest "$BAD" -q -p no:cacheprovider -rs
# the ghost-norm per-sample route on the GPU against the explicit CPU loop
stage ghost_cuda 100 "$PY" -m pytest tests/train/test_ghost.py -q -p no:cacheprovider -rs -k cuda
stage error_probe 100 "$PY" - <<'PROBE'
import os, subprocess, sys
import torch
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
cases = {  # name: statement raising ValueError from inside the extension
    "scalar check (lr=-1)": "torch.ops.certunlearn.noisy_step_(x, G, None, -1.0, 0., 1., 0., 1., True, 0, 0)",
    "nan in grads": "G[2, 9] = float('nan'); ops.noisy_step_(x, G, lr=0.1, seed=0, offset=0)",
    "negative norms": "ops.noisy_step_(x, G, lr=0.1, seed=0, offset=0, norms=-torch.ones(3, device=dev))",
    "shape check": "torch.ops.certunlearn.noisy_step_(x, G[:, :9].contiguous(), None, 0.1, 0., 1., 0., 1., True, 0, 0)",
}
bad = 0
for dev in devices:
    for name, stmt in cases.items():
        code = (f"import torch\nfrom certunlearn_train import ops\ndev = {dev!r}\n"
                f"x = torch.zeros(10, device=dev); G = torch.ones(3, 10, device=dev)\n"
                f"try:\n    {stmt}\nexcept ValueError as e:\n    print('ValueError:', e)\n")
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True,
                           text=True, timeout=60)
        ok = r.returncode == 0 and r.stdout.startswith("ValueError:")
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {dev:4s} {name:22s} rc={r.returncode} {r.stdout.strip()[:120]}"
              f"{'' if ok else ' | ' + r.stderr.strip()[-300:]}")
sys.exit(1 if bad else 0)
PROBE

# 3. Benchmarks: CUDA (with the copy bandwidth of the card), then a few CPU rows.
if [ "$DRY" != 1 ]; then
  stage bench_cuda 150 "$PY" benchmarks/bench_step.py --device cuda --sizes "$bench_sizes" \
    --repeats 20 --skip compile,compile-full
fi
if [ "$DRY" != 1 ]; then
  stage bench_unlearn_cuda 150 "$PY" benchmarks/bench_unlearn.py --device cuda --batch 256 \
    --repeats 10 --rounds 2
fi
stage bench_cpu 90 "$PY" benchmarks/bench_step.py --device cpu --sizes "$cpu_sizes" --repeats 3 \
  --skip compile,compile-full,reference

set +x
echo "gpu_check.sh: total ${SECONDS} s; logs in $OUT"
if [ ${#failed[@]} -ne 0 ]; then
  echo "gpu_check.sh: FAILED stages: ${failed[*]}"
  exit 1
fi
echo "gpu_check.sh: all stages passed"
