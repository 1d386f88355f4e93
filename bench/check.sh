#!/usr/bin/env bash
# Checks kvgate's performance targets on this machine, prints every figure
# and ratio, and exits non-zero when a target is missed. Run by hand (it takes
# about two minutes), not as a timed unit test; bench/RESULTS.md holds the
# figures of a reference run.
#
# Usage: bench/check.sh [build_dir]        (default: build/release)
#   needs build_dir/plugin/server/kvgated, build_dir/bench/kvgate-loadgen,
#   build_dir/bench/controller_bench and build_dir/bench/estimator_bench;
#   python3 serves the vLLM metrics page.
# Environment: KVGATE_CHECK_DURATION (default 10s) is the length of each
#   side-by-side comparison (both modes together, in alternating phases).
#
# Targets:
#   1. Admit+Release through the real server reaches >= 90% of the throughput
#      of two no-op RPCs (grpc.health.v1.Health/Check) at concurrency 8 and
#      64, over a unix socket and over TCP, and at concurrency 64 over a unix
#      socket against a vllm-kind pool (engine { kind: "vllm" }: the budget
#      read every 200 ms from a vLLM metrics page that a local python3 HTTP
#      server serves, a big pool at 0 usage, so nothing queues); Admit's p99
#      <= 1.2x Check's p99; no errors, every Admit admitted.
#      The throughput ratio checked is pooled over all phases of both modes
#      (20 rounds, ABBA order); the ratio of each round's two adjacent phases
#      is printed beside it (median, min, max) to show how much this VM's
#      speed drifted during the run.
#   2. Controller alone: admit + release median < 1 us uncontended; its cost
#      with 10,000 requests queued within 1.5x of its cost with 100 queued
#      (not linear in the queue length; below 100 the bounded backfill scan
#      of at most 64 entries is still filling up).
#   3. 10,000 concurrently queued Admits leave kvgated's thread count flat
#      (at most 2 more threads than idle); RSS per queued request is reported.
#   4. Estimator: a 64-sequence batch < 1 us median.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
duration=${KVGATE_CHECK_DURATION:-10s}
kvgated=$build/plugin/server/kvgated
loadgen=$build/bench/kvgate-loadgen
for b in "$kvgated" "$loadgen" "$build/bench/controller_bench" \
         "$build/bench/estimator_bench"; do
  if [[ ! -x $b ]]; then
    echo "check: $b is missing; build it first (cmake --build --preset release)" >&2
    exit 2
  fi
done
command -v jq >/dev/null || { echo "check: jq is required" >&2; exit 2; }
command -v python3 >/dev/null || { echo "check: python3 is required" >&2; exit 2; }

work=$(mktemp -d /tmp/kvgate-check.XXXXXX)
server_pid=""
stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
engine_pid=""
stop_engine() {
  if [[ -n $engine_pid ]]; then
    kill "$engine_pid" 2>/dev/null || true
    wait "$engine_pid" 2>/dev/null || true
    engine_pid=""
  fi
}
trap 'stop_server; stop_engine; rm -rf "$work"' EXIT

failed=0
# Pinning: kvgated on CPU 0 and the load generator on CPU 1 (taskset), so
# that the two processes do not take turns on the same core: unpinned, the
# scheduler's placement moved the throughput ratio between 0.77 and 1.02
# from run to run on this 2-core VM (bench/RESULTS.md). Both workloads of a
# comparison run under the same pinning. KVGATE_CHECK_PIN=0 turns it off.
server_cpu=""
client_cpu=""
if [[ ${KVGATE_CHECK_PIN:-1} != 0 ]] && command -v taskset >/dev/null &&
   (( $(nproc) >= 2 )); then
  server_cpu="taskset -c 0"
  client_cpu="taskset -c 1"
fi
# check NAME VALUE OP LIMIT: prints PASS/FAIL; OP is <, <=, >= or >.
check() {
  if awk -v v="$2" -v l="$4" "BEGIN { exit !(v $3 l) }"; then
    printf 'PASS  %-52s %10s  (target %s %s)\n' "$1" "$2" "$3" "$4"
  else
    printf 'FAIL  %-52s %10s  (target %s %s)\n' "$1" "$2" "$3" "$4"
    failed=1
  fi
}

# start_server CONFIG_FILE: starts kvgated, waits until it listens; sets
# server_pid and server_port (TCP).
start_server() {
  local log=$work/kvgated.log
  $server_cpu "$kvgated" --config="$1" >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    if grep -q '"msg":"listening"' "$log"; then
      server_port=$(grep -o '"port":"[0-9]*"' "$log" | tail -1 | tr -dc 0-9)
      return 0
    fi
    sleep 0.1
  done
  echo "check: kvgated did not start:" >&2
  cat "$log" >&2
  exit 2
}

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(uptime | sed 's/.*load average/load average/')"
echo "== pinning: kvgated ${server_cpu:-unpinned}, loadgen ${client_cpu:-unpinned}"
echo "== date: $(date -u +%Y-%m-%dT%H:%M:%SZ); revision $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"

# ------------------------------------------------------------ controller ---
echo "== controller (Google Benchmark, median of 5)"
"$build/bench/controller_bench" --benchmark_repetitions=5 \
  --benchmark_report_aggregates_only=true --benchmark_min_time=0.2 \
  --benchmark_format=json >"$work/controller.json" 2>/dev/null
# Median CPU time in ns of benchmark $2 in file $1. CPU time, not wall time:
# on a machine shared with compilers, a preempted iteration costs no CPU.
median() {
  jq -r --arg n "$2" '.benchmarks[] | select(.name == ($n + "_median")) |
    .cpu_time | . * 10 | round / 10' "$1"
}
for q in 0 10 100 1000 10000; do
  echo "   admit+release with $q queued: $(median "$work/controller.json" "BM_AdmitRelease/$q") ns;" \
       "queue+cancel: $(median "$work/controller.json" "BM_QueueCancel/$q") ns"
done
contended=$(jq -r '.benchmarks[] | select(.name ==
  "BM_AdmitReleaseContended/real_time/threads:2_median") |
  .items_per_second | round' "$work/controller.json")
single=$(jq -r '.benchmarks[] | select(.name ==
  "BM_AdmitReleaseContended/real_time/threads:1_median") |
  .items_per_second | round' "$work/controller.json")
echo "   admit+release pairs/s: 1 thread $single, 2 threads contending $contended"
ar0=$(median "$work/controller.json" BM_AdmitRelease/0)
check "controller admit+release, uncontended (ns)" "$ar0" "<" 1000
qc0=$(median "$work/controller.json" BM_QueueCancel/0)
check "controller queue+cancel, uncontended (ns)" "$qc0" "<" 1000
for b in BM_AdmitRelease BM_QueueCancel; do
  r=$(awk -v a="$(median "$work/controller.json" "$b/10000")" \
          -v b="$(median "$work/controller.json" "$b/100")" \
          'BEGIN { printf "%.2f", a / b }')
  check "$b: 10000 queued / 100 queued" "$r" "<=" 1.5
done

# ------------------------------------------------------------- estimator ---
echo "== estimator (Google Benchmark, median of 5)"
"$build/bench/estimator_bench" --benchmark_filter=BM_EstimateBatch \
  --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.2 --benchmark_format=json >"$work/estimator.json" 2>/dev/null
check "estimate, 1-sequence batch (ns)" "$(median "$work/estimator.json" BM_EstimateBatch/1)" "<" 1000
check "estimate, 64-sequence batch (ns)" "$(median "$work/estimator.json" BM_EstimateBatch/64)" "<" 1000

# ------------------------------------------------ through the real server ---
# compare NAME ADDRESS CONCURRENCY: Admit+Release against two Health/Check
# calls on the running kvgated (server_pid), side by side; prints the figures
# and checks target 1.
compare() {
  local name=$1 address=$2 c=$3
  local out=$work/compare-$name-$c.json
  $client_cpu "$loadgen" --address="$address" --compare --concurrency="$c" --channels=4 \
    --duration="$duration" --rounds=20 --server_pid="$server_pid" >"$out"
  echo "== $name, concurrency $c: $(jq -c '{
    admit_release_per_s: .admit_release.operations_per_second,
    noop_pairs_per_s: .noop.operations_per_second,
    server_cpu_us: [.admit_release.server_cpu_us_per_operation,
                    .noop.server_cpu_us_per_operation],
    admit_us: .admit_release.latency_us.admit,
    check_us: .noop.latency_us.check,
    decisions: .admit_release.decisions,
    errors: (.admit_release.errors + .noop.errors)}' "$out")"
  echo "   server CPU per admit+release / per 2 checks: $(jq .ratios.server_cpu_per_operation "$out")"
  echo "   throughput ratio per round (adjacent phases): median" \
       "$(jq .ratios.throughput_median_of_rounds "$out"), min, max" \
       "$(jq -c .ratios.throughput_rounds_min_max "$out")"
  check "$name c=$c throughput admit+release / 2 checks" \
    "$(jq .ratios.throughput "$out")" ">=" 0.90
  check "$name c=$c p99 admit / p99 check" \
    "$(jq .ratios.p99_admit_over_check "$out")" "<=" 1.2
  check "$name c=$c errors and non-admitted" \
    "$(jq '.admit_release.errors + .noop.errors +
           .admit_release.operations - .admit_release.decisions.ADMITTED' "$out")" "==" 0
}

# gpt2 on a simulated 80 GB device: 64 leases of 256 tokens use under 1% of
# the budget, so an admit-release never queues.
for transport in unix tcp; do
  if [[ $transport == unix ]]; then
    address="unix:$work/kvgate.sock"
  else
    address="127.0.0.1:0"
  fi
  cat >"$work/throughput.textproto" <<EOF
grpc_address: "$address"
models { name: "gpt2" preset: "gpt2" }
memory_source { static_source { gpu: "H100-80GB" } }
EOF
  start_server "$work/throughput.textproto"
  [[ $transport == tcp ]] && address="127.0.0.1:$server_port"
  for c in 8 64; do
    compare "$transport" "$address" "$c"
  done
  stop_server
done

# ------------------------------------------- a vllm-kind pool (engine) ---
# The same comparison against a pool whose budget is a vLLM engine's KV pool:
# kvgated scrapes a vLLM-shaped /metrics page every 200 ms (python3's
# http.server on a kernel-chosen port, serving the file `metrics`; on the
# client's CPU, so kvgated's core only pays for its own scrapes). 100,000
# blocks of 16 tokens of gpt2 (about 59 GB) at 0 usage and no preemptions:
# an admit-release never queues nor pauses.
mkdir -p "$work/engine"
cat >"$work/engine/metrics" <<'EOF'
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="gpt2"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="gpt2"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="gpt2"} 0.0
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="gpt2"} 0.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",kv_cache_size_tokens="None",num_gpu_blocks="100000",sliding_window="None"} 1.0
EOF
$client_cpu python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work/engine" \
  >"$work/engine.log" 2>&1 &
engine_pid=$!
engine_port=""
for _ in $(seq 100); do
  engine_port=$(grep -o 'port [0-9]*' "$work/engine.log" | head -1 | tr -dc 0-9) || true
  [[ -n $engine_port ]] && break
  sleep 0.1
done
if [[ -z $engine_port ]]; then
  echo "check: the metrics server did not start:" >&2
  cat "$work/engine.log" >&2
  exit 2
fi
cat >"$work/vllm.textproto" <<EOF
grpc_address: "unix:$work/vllm.sock"
models {
  name: "gpt2" preset: "gpt2"
  engine {
    kind: "vllm"
    metrics_url: "http://127.0.0.1:$engine_port/metrics"
    poll_interval { nanos: 200000000 }
  }
}
memory_source { static_source { gpu: "H100-80GB" } }
EOF
start_server "$work/vllm.textproto"
for _ in $(seq 50); do
  grep -q '"msg":"engine metrics read"' "$work/kvgated.log" && break
  sleep 0.1
done
if ! grep -q '"msg":"engine metrics read"' "$work/kvgated.log"; then
  echo "check: kvgated did not read the vLLM metrics page:" >&2
  cat "$work/kvgated.log" >&2
  exit 2
fi
echo "== vllm pool: $(grep -m1 '"msg":"engine metrics read"' "$work/kvgated.log")"
compare vllm "unix:$work/vllm.sock" 64
stop_server
stop_engine

# ------------------------------------------------- queued requests: hold ---
# A 1 GB simulated device: gpt2's budget holds about 40 leases of 256
# tokens; 10,000 more wait in the queue over 4 connections (at most
# --max_concurrent_streams = 4096 calls each).
cat >"$work/hold.textproto" <<EOF
grpc_address: "unix:$work/hold.sock"
models { name: "gpt2" preset: "gpt2" }
memory_source { static_source { memory_bytes: 1000000000 } }
queue { max_requests: 20000 max_bytes: 1000000000000 max_queue_wait { seconds: 300 } }
EOF
start_server "$work/hold.textproto"
"$loadgen" --address="unix:$work/hold.sock" --mode=hold --hold_requests=10000 \
  --channels=4 --server_pid="$server_pid" >"$work/hold.json"
stop_server
echo "== hold: $(jq -c '{queued: .queued_seen, threads: [.threads_idle,
  .threads_queued_max, .threads_after], rss_kib: [.rss_idle_kib,
  .rss_queued_kib], rss_per_queued_bytes, drain_seconds, decisions}' "$work/hold.json")"
check "10000 queued Admits held at once" "$(jq .queued_seen "$work/hold.json")" ">=" 10000
check "threads while 10000 queued - threads idle" \
  "$(jq '.threads_queued_max - .threads_idle' "$work/hold.json")" "<=" 2
check "every queued Admit answered" "$(jq .answered "$work/hold.json")" "==" 10000
echo "   RSS per queued request: $(jq .rss_per_queued_bytes "$work/hold.json") bytes"

# --------------------------------------------------------- mixed traffic ---
# llama-3-8b on a simulated 20 GB device (about 1.9 GB of budget, two dozen
# typical leases) at 400 requests/s: it must queue, shed and reject.
cat >"$work/mixed.textproto" <<EOF
grpc_address: "unix:$work/mixed.sock"
models { name: "llama-3-8b" preset: "llama-3-8b" }
memory_source { static_source { memory_bytes: 20000000000 } }
queue { max_requests: 32 max_queue_wait { seconds: 2 } }
tenant_weights { key: "tenant-a" value: 2 }
EOF
start_server "$work/mixed.textproto"
"$loadgen" --address="unix:$work/mixed.sock" --mode=mixed --model=llama-3-8b \
  --rate=400 --concurrency=2000 --duration=4s --max_queue_wait=500ms \
  >"$work/mixed.json"
stop_server
echo "== mixed: $(jq -c '.result | {operations_per_second, decisions,
  admit_us: .latency_us.admit, errors}' "$work/mixed.json")"
check "mixed: errors" "$(jq .result.errors "$work/mixed.json")" "==" 0

echo
if [[ $failed -ne 0 ]]; then
  echo "check: some targets were missed"
  exit 1
fi
echo "check: every target met"
