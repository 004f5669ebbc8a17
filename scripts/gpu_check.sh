#!/usr/bin/env bash
# Check a built wheel on a GPU machine without network: install dist/*.whl into a temporary
# folder, then with Triton hidden run `python -m fusedaot` and the tests (the default library,
# then the PTX library), then with Triton visible (the JIT baseline needs it) the benchmarks.
#
#   scripts/gpu_check.sh RESULTS_DIR [quick|full]          (from the repository root)
#
# quick (default) runs the benchmarks' --quick shapes, a few minutes; full runs every shape,
# which takes longer than ten minutes: where a command has a time limit, run the benchmark
# scripts on their own instead (bench_rms_norm.py --dtype bf16, then --dtype fp16, ...).
# RESULTS_DIR receives check.log, tests.log, tests_ptx.log, one bench_<name>.log per script in
# benchmarks/ and results.jsonl (the benchmarks' JSON lines).
# Exit status: 0 when every step passed; 1 when a step failed (the benchmarks run regardless);
# 2 on bad usage or when dist/ holds no wheel. PYTHON picks the interpreter (default python3).
set -u
export PYTHONUNBUFFERED=1

usage="usage: scripts/gpu_check.sh RESULTS_DIR [quick|full]   (run it from the repository root)"
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "$usage" >&2; exit 2; }
case "${2:-quick}" in
  quick) bench_args=(--quick) ;;
  full) bench_args=() ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
[ -d benchmarks ] && [ -d tests ] && [ -d dist ] || {
  echo "gpu_check: benchmarks/, tests/ or dist/ is missing here; $usage" >&2; exit 2; }
wheel=$(ls -t dist/*.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || { echo "gpu_check: no wheel in dist/; build one first (pip wheel . -w dist)" >&2; exit 2; }

mkdir -p "$1" && res=$(cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 2; }
py=${PYTHON:-python3}
work=$(mktemp -d) || exit 2
trap 'rm -rf "$work"' EXIT
site=$work/site          # the installed wheel
blocker=$work/no-triton  # a triton package that refuses to import
mkdir -p "$site" "$blocker/triton"
echo 'raise ImportError("triton is hidden by scripts/gpu_check.sh: fusedaot must run without it")' \
  > "$blocker/triton/__init__.py"
hidden="$site:$blocker${PYTHONPATH:+:$PYTHONPATH}"
visible="$site${PYTHONPATH:+:$PYTHONPATH}"
unset FUSEDAOT_ARCH FUSEDAOT_DISABLE  # the default library unless a step sets one

benches=(benchmarks/bench_*.py)
for f in check.log tests.log tests_ptx.log results.jsonl; do
  : > "$res/$f"
done
failed=()

# step NAME LOG COMMAND...: run COMMAND, its output shown and appended to LOG; a failure is
# recorded and the script goes on.
step() {
  local name=$1 log=$res/$2 rc
  shift 2
  echo "== $name: $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$log"
  [ "$log" = "$res/check.log" ] || echo "== $name: exit $rc" >> "$res/check.log"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

{
  echo "gpu_check $(date -Is) in $(pwd), wheel $wheel, python $py"
  git rev-parse HEAD 2>/dev/null || echo "(no commit)"
  git status --short 2>/dev/null | head -n 20
  nvidia-smi 2>&1 || echo "nvidia-smi unavailable"
} 2>&1 | tee -a "$res/check.log"

step install check.log "$py" -m pip install --no-deps --no-index --no-cache-dir --target "$site" "$wheel"
step wheel-is-imported check.log env PYTHONPATH="$hidden" "$py" -c "
import fusedaot, sys
print('fusedaot', getattr(fusedaot, '__version__', '?'), 'from', fusedaot.__file__)
sys.exit(0 if fusedaot.__file__.startswith('$site/') else 'fusedaot was not imported from the wheel')"
step triton-hidden check.log env PYTHONPATH="$hidden" "$py" -c "
try:
    import triton
except ImportError as e:
    print('import triton fails as intended:', e)
else:
    raise SystemExit('triton is still importable: the test run would not prove fusedaot runs without it')"
step cli check.log env PYTHONPATH="$hidden" "$py" -m fusedaot

# -p no:cacheprovider: leave no .pytest_cache in the checkout; -o pythonpath=: only the wheel
# may provide fusedaot, never the source tree.
pytest_args=(--maxfail=20 -q -p no:cacheprovider -o pythonpath=)
step tests tests.log env PYTHONPATH="$hidden" "$py" -m pytest tests "${pytest_args[@]}"
step tests-ptx tests_ptx.log env PYTHONPATH="$hidden" FUSEDAOT_ARCH=ptx \
  "$py" -m pytest tests "${pytest_args[@]}" -k "not slow"

for path in "${benches[@]}"; do
  b=$(basename "$path" .py)
  : > "$res/$b.log"
  step "$b" "$b.log" env PYTHONPATH="$visible" "$py" "$path" "${bench_args[@]}" --out "$res/results.jsonl"
done

if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu_check: every step passed; logs in $res" | tee -a "$res/check.log"
  exit 0
fi
echo "gpu_check: FAILED: ${failed[*]}; logs in $res" | tee -a "$res/check.log"
exit 1
