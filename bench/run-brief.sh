#!/usr/bin/env bash
# Runs every Google Benchmark binary of a build for a short, bounded time so
# that CI keeps them building and running. Figures from this run are not
# measurements; see bench/RESULTS.md for those.
set -euo pipefail
build=${1:-build/release}
found=0
for b in "$build"/bench/*_bench; do
  [[ -x "$b" ]] || continue
  found=1
  echo "--- $(basename "$b")"
  timeout 120 "$b" --benchmark_min_time=0.01 --benchmark_counters_tabular=true
done
if [[ $found -eq 0 ]]; then
  echo "run-brief: no benchmark binaries under $build/bench" >&2
  exit 1
fi
