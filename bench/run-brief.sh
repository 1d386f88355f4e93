#!/usr/bin/env bash
# Runs every benchmark of a build for a short, bounded time so that CI keeps
# them building and running: each Google Benchmark binary, then
# kvgate-loadgen in every mode against a real kvgated on a unix socket. The
# figures of this run are not measurements (bench/check.sh and
# bench/RESULTS.md are); it fails only when a benchmark fails to run, or the
# load generator sees an RPC error.
#
# Usage: bench/run-brief.sh [build_dir]     (default: build/release)
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

kvgated=$build/plugin/server/kvgated
loadgen=$build/bench/kvgate-loadgen
work=$(mktemp -d /tmp/kvgate-brief.XXXXXX)
server_pid=""
trap '[[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT

cat >"$work/kvgated.textproto" <<EOF
grpc_address: "unix:$work/kvgate.sock"
models { name: "llama-3-8b" preset: "llama-3-8b" }
memory_source { static_source { memory_bytes: 20000000000 } }
queue { max_requests: 1000 max_bytes: 1000000000000 max_queue_wait { seconds: 60 } }
EOF
"$kvgated" --config="$work/kvgated.textproto" >"$work/kvgated.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  grep -q '"msg":"listening"' "$work/kvgated.log" && break
  sleep 0.1
done
grep -q '"msg":"listening"' "$work/kvgated.log" || {
  cat "$work/kvgated.log" >&2
  exit 1
}

# loadgen NAME ARGS...: runs kvgate-loadgen (at most 60 s), prints its
# summary, and fails on a non-zero exit or any RPC error.
loadgen() {
  local name=$1
  shift
  echo "--- kvgate-loadgen $name"
  timeout 60 "$loadgen" --address="unix:$work/kvgate.sock" \
    --model=llama-3-8b --server_pid="$server_pid" "$@" >"$work/$name.json"
  jq -c '{result: (.result // .admit_release // .), ratios}' \
    "$work/$name.json" | cut -c1-400
  local errors
  errors=$(jq '[.. | objects | .errors? | numbers] | add // 0' "$work/$name.json")
  if [[ $errors != 0 ]]; then
    echo "run-brief: kvgate-loadgen $name saw $errors RPC errors" >&2
    exit 1
  fi
}
loadgen admit-release --mode=admit-release --concurrency=8 --duration=1s --warmup=100ms
loadgen noop --mode=noop --concurrency=8 --duration=1s --warmup=100ms
loadgen compare --compare --concurrency=8 --duration=2s --rounds=2 --warmup=100ms
loadgen mixed --mode=mixed --rate=200 --concurrency=200 --duration=2s \
  --max_queue_wait=500ms
loadgen hold --mode=hold --hold_requests=200 --channels=2
echo "run-brief: every benchmark ran"
