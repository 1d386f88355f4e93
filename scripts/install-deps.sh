#!/usr/bin/env bash
# Installs, from Debian bookworm's packages, exactly the build and test
# dependencies of kvgate that are missing. Idempotent: when everything is
# present it only checks and exits (no apt-get update, no network).
#
# Usage: scripts/install-deps.sh [--runtime]
#   --runtime   only the shared libraries kvgated needs to run (Dockerfile).
set -euo pipefail

BUILD_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  clang clang-format libclang-rt-14-dev
  protobuf-compiler libprotobuf-dev
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc
  libabsl-dev
  prometheus-cpp-dev
  nlohmann-json3-dev
  libgtest-dev libgmock-dev googletest
  libbenchmark-dev
  prometheus
  python3 python3-grpcio python3-protobuf python3-fastapi python3-starlette
  python3-uvicorn python3-httpx python3-pytest python3-venv python3-pip
  python3-torch
  yamllint python3-yaml
  libssl-dev openssl
  libcurl4-openssl-dev
  jq
)
RUNTIME_PACKAGES=(
  libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libssl3
  libcurl4
)

packages=("${BUILD_PACKAGES[@]}")
if [[ "${1:-}" == "--runtime" ]]; then
  packages=("${RUNTIME_PACKAGES[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
