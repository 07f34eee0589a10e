#!/usr/bin/env bash
# One-shot check on a fresh CUDA machine (torch already installed, no network):
# build, CUDA tests, compute-sanitizer, benchmark sweep. Everything goes to OUT.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Designed to finish in about 8 minutes on an H100; each step has its own
# time limit and a failure in one step does not stop the others. The exit
# status is non-zero if the build, the tests or the sanitizer failed.
set -uo pipefail
OUT="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
status=0
step() { echo "== $1 ($(date +%T))" | tee -a "$OUT/summary.txt"; }
result() { echo "   -> $1" | tee -a "$OUT/summary.txt"; }

{ nvidia-smi; python -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'; git log -1 --oneline; } \
  > "$OUT/env.txt" 2>&1

step "build (MASKEXT_BUILD_CUDA=1, for the visible GPU)"
if MASKEXT_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" timeout 300 \
    python -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
  result "ok"
else
  result "FAILED (see build.log)"; echo "build failed" >&2; exit 1
fi
python -c 'import maskext; assert maskext.cuda_built()' || { result "CUDA kernels missing"; exit 1; }

step "tests (CPU and CUDA)"
if MASKEXT_EXPECT_CUDA=1 timeout 240 python -m pytest -q -x tests > "$OUT/tests.log" 2>&1; then
  result "$(tail -1 "$OUT/tests.log")"
else
  result "FAILED: $(tail -1 "$OUT/tests.log")"; status=1
fi

SAN="$(command -v compute-sanitizer || true)"
[ -z "$SAN" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] && SAN="$CUDA_HOME/bin/compute-sanitizer"
[ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
if [ -n "$SAN" ]; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    if timeout 180 "$SAN" --tool "$tool" --error-exitcode 1 python benchmarks/sanitize_cases.py \
        > "$OUT/sanitizer_$tool.log" 2>&1; then
      result "clean"
    else
      result "FINDINGS or failure (see sanitizer_$tool.log)"; status=1
    fi
  done
else
  step "compute-sanitizer"; result "not found: skipped"
fi

step "benchmarks: mask building"
timeout 60 python benchmarks/bench_masks.py --device cuda --out "$OUT" > "$OUT/bench_masks.log" 2>&1
result "exit $?"
step "benchmarks: masked softmax fp16 (all shapes)"
timeout 200 python benchmarks/bench_softmax.py --device cuda --dtypes fp16 --out "$OUT" \
  > "$OUT/bench_softmax_fp16.log" 2>&1
result "exit $?"
for dt in fp32 bf16; do
  step "benchmarks: masked softmax $dt"
  timeout 120 python benchmarks/bench_softmax.py --device cuda --dtypes "$dt" --out "$OUT" \
    > "$OUT/bench_softmax_$dt.log" 2>&1
  result "exit $?"
done
exit $status
