#!/usr/bin/env bash
# One-shot check on a fresh CUDA machine (torch already installed, no network):
# build, CUDA tests, compute-sanitizer, benchmark sweeps. Everything goes to OUT.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [BUDGET_SECONDS]
#
# The whole run keeps within BUDGET_SECONDS (default 450: 8 minutes with
# margin on an H100): each step gets at most what is left, the benchmark
# sweeps write their tables after every case, so a sweep cut short keeps what
# it measured. The exit status is non-zero if the build, the tests or the
# sanitizer failed.
set -uo pipefail
OUT="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [BUDGET_SECONDS]}"
BUDGET="${2:-450}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
status=0
step() { echo "== $1 ($(date +%T), ${SECONDS}s)" | tee -a "$OUT/summary.txt"; }
result() { echo "   -> $1" | tee -a "$OUT/summary.txt"; }
# Seconds for the next step: its cap, or what is left of the budget.
limit() { local left=$((BUDGET - SECONDS)); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
# Runs "$@" with a time limit of at most $1 seconds; skipped when < 15 s are left.
run_step() {
  local cap=$1; shift
  local t; t=$(limit "$cap")
  if [ "$t" -lt 15 ]; then result "skipped: time budget spent"; return 124; fi
  timeout "$t" "$@"
}

{ nvidia-smi; python -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'; git log -1 --oneline; } \
  > "$OUT/env.txt" 2>&1

step "build (MASKEXT_BUILD_CUDA=1, for the visible GPU)"
if MASKEXT_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" run_step 240 \
    python -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1 &&
   python -c 'import maskext; assert maskext.cuda_built()' >> "$OUT/build.log" 2>&1; then
  result "ok"
else
  result "FAILED (see build.log)"; exit 1
fi

# First, on their own so that the summary names them: the CUDA kernels past
# element 2^31 (64-bit indexing), CUDA graph capture of forward and backward,
# the NaN rule and the device checks on CUDA (tests/test_robustness.py).
step "robustness on CUDA: >2^31 elements, CUDA graphs, NaN, devices"
if run_step 120 python -m pytest -q tests/test_robustness.py -k cuda > "$OUT/tests_robustness.log" 2>&1; then
  result "$(tail -1 "$OUT/tests_robustness.log")"
else
  result "FAILED: $(tail -1 "$OUT/tests_robustness.log")"; status=1
fi

step "tests (CPU and CUDA)"
if MASKEXT_EXPECT_CUDA=1 run_step 240 python -m pytest -q tests > "$OUT/tests.log" 2>&1; then
  result "$(tail -1 "$OUT/tests.log")"
else
  result "FAILED: $(tail -1 "$OUT/tests.log")"; status=1
fi

SAN="$(command -v compute-sanitizer || true)"
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
  [ -z "$SAN" ] && [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ] && SAN="$d/bin/compute-sanitizer"
done
if [ -n "$SAN" ]; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    if run_step 120 "$SAN" --tool "$tool" --error-exitcode 1 python benchmarks/sanitize_cases.py \
        > "$OUT/sanitizer_$tool.log" 2>&1; then
      result "clean"
    else
      result "FINDINGS, failure or time-out (see sanitizer_$tool.log)"; status=1
    fi
  done
else
  step "compute-sanitizer"; result "not found: skipped"
fi

step "benchmarks: mask building"
run_step 45 python benchmarks/bench_masks.py --device cuda --out "$OUT" > "$OUT/bench_masks.log" 2>&1
result "exit $?"
step "benchmarks: masked softmax fp16"
run_step 150 python benchmarks/bench_softmax.py --device cuda --dtypes fp16 --out "$OUT" \
  > "$OUT/bench_softmax_fp16.log" 2>&1
result "exit $? (124: time limit; the tables hold the cases done)"
step "benchmarks: other masked ops"
run_step 40 python benchmarks/bench_masked_ops.py --device cuda --out "$OUT" > "$OUT/bench_masked_ops.log" 2>&1
result "exit $?"
for dt in fp32 bf16; do
  step "benchmarks: masked softmax $dt"
  run_step 120 python benchmarks/bench_softmax.py --device cuda --dtypes "$dt" --out "$OUT" \
    > "$OUT/bench_softmax_$dt.log" 2>&1
  result "exit $?"
done
exit $status
