#!/usr/bin/env bash
# Usage: run.sh [SECONDS [TARGET...]]. Runs the fuzz targets (default: all) for SECONDS each
# (default 45) - or, with FUZZ_RUNS=N set, for N executions each - starting from the committed
# seeds plus whatever earlier runs found (build/fuzz/corpus/). Prints executions per target; a
# crash stops with the libFuzzer report and a non-zero exit (the crashing input is left in
# build/fuzz/).
set -euo pipefail
seconds=${1:-45}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_safetensors fuzz_sharded_index fuzz_model_reader fuzz_gguf \
  fuzz_config fuzz_calibration_data)
limit="-max_total_time=$seconds"
[ -n "${FUZZ_RUNS:-}" ] && limit="-runs=$FUZZ_RUNS"
root=$(cd "$(dirname "$0")/../.." && pwd)
# FUZZ_BUILD: the build folder of the targets (make test's short runs: build/fuzz-smoke).
build=$root/${FUZZ_BUILD:-build/fuzz}
bin=$build/tests/fuzz
work=$build/corpus
mkdir -p "$work"
# Arrow's own allocator (jemalloc) keeps freed memory; with malloc, ASan sees every allocation and
# the fuzzer's RSS reflects what is really live.
export ARROW_DEFAULT_MEMORY_POOL=system
# The file-based targets write each input to a temporary file: tmpfs makes that 1.6x faster.
[ -z "${TMPDIR:-}" ] && [ -w /dev/shm ] && export TMPDIR=/dev/shm
# ASan records a stack for every allocation; Arrow allocates a lot per input. Without those
# stacks the runs are ~30% faster; rerun a crashing input without this to see them.
export ASAN_OPTIONS=${ASAN_OPTIONS:-malloc_context_size=0}
summary=()
run() {  # name, command...
  local name=$1; shift
  mkdir -p "$work/$name"
  local log=$build/$name.log
  local t0=$SECONDS
  if ! (cd "$build" && "$@" "$limit" -print_final_stats=1 \
        -rss_limit_mb=2048 -timeout=20 "$work/$name" "$root/tests/fuzz/corpus/$name") >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $name FAILED (log: $log)"
    exit 1
  fi
  local execs
  execs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  [ -n "$execs" ] || execs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  summary+=("$name: $execs executions in $((SECONDS - t0)) s, no crash")
}
for t in "${targets[@]}"; do
  case $t in
    # The Python loaders under atheris (libFuzzer's engine); ASan is not involved there.
    fuzz_config | fuzz_calibration_data) run "$t" "$root/.venv/bin/python" "$root/tests/fuzz/$t.py" ;;
    *) run "$t" "$bin/$t" ;;
  esac
done
printf '%s\n' "${summary[@]}"
