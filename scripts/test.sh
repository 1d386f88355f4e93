#!/usr/bin/env bash
# Installs what is missing, builds and runs the whole test suite with ctest.
# Usage: scripts/test.sh [preset]   (presets in CMakePresets.json; default
# "release"; CI uses "ci", which also turns warnings into errors)
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-release}

bash scripts/install-deps.sh
cmake --preset "$preset"
cmake --build --preset "$preset" -j "$(nproc)"
ctest --preset "$preset" -j "$(nproc)"
