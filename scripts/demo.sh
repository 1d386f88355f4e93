#!/usr/bin/env bash
# Sets everything up and shows kvgated at work: installs what is missing,
# builds (release preset), starts kvgated on its embedded default (the
# built-in llama-3-8b on a simulated H100 80GB, so no GPU is needed), runs a
# short demo load with `kvgate demo`, and stops kvgated (SIGTERM drains).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"

bin=build/release
sock=$(mktemp -u /tmp/kvgate-demo.XXXXXX.sock)
"$bin/plugin/server/kvgated" --grpc_address="unix:$sock" --metrics_address=127.0.0.1:0 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.05; done

echo
"$bin/tools/kvgate" budget --address="unix:$sock"
echo
"$bin/tools/kvgate" demo --address="unix:$sock"
echo
kill -TERM $pid
wait $pid
trap - EXIT
echo "kvgated drained and exited 0"
