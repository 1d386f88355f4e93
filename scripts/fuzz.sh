#!/usr/bin/env bash
# Runs every libFuzzer target of a KVGATE_BUILD_FUZZERS build (the `asan`
# preset) for a bounded time, starting from its seed corpus in
# tests/fuzz/corpus/<target>/. New inputs go to a scratch corpus under the
# build directory, never into the source tree. A crash, leak, sanitizer
# report, timeout or out-of-memory fails the run; libFuzzer leaves the input
# as <build>/fuzz/<target>/crash-* (add it to the seed corpus once fixed so
# that the <target>_corpus ctest test keeps it as a regression test).
# Usage: scripts/fuzz.sh [build dir, default build/asan] [seconds per target, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/asan}
seconds=${2:-20}
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

failed=()
for corpus in tests/fuzz/corpus/*/; do
  target=$(basename "$corpus")
  binary="$build/tests/fuzz/$target"
  if [[ ! -x "$binary" ]]; then
    echo "fuzz: $binary is missing (configure with KVGATE_BUILD_FUZZERS=ON)" >&2
    exit 1
  fi
  work="$build/fuzz/$target"
  mkdir -p "$work/corpus"
  echo "--- $target (${seconds}s)"
  if ! "$binary" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$work/" \
      "$work/corpus" "$corpus" > "$work/log" 2>&1; then
    failed+=("$target")
    tail -n 60 "$work/log"
    ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2>/dev/null || true
  else
    grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$work/log" || true
  fi
done
if ((${#failed[@]} > 0)); then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: every target ran ${seconds}s without a finding"
