#!/usr/bin/env bash
# Builds kvgate with clang under a sanitizer preset and runs the test suite
# there (docs/sanitizers.md). Any sanitizer report fails the test that
# produced it: halt_on_error, with the options and suppressions of the
# preset's testPreset (CMakePresets.json), which ctest passes to every test
# and to the kvgated processes the integration tests start.
# Usage: scripts/sanitize.sh asan|tsan
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:?usage: scripts/sanitize.sh asan|tsan}
case "$preset" in asan|tsan) ;; *) echo "unknown preset $preset" >&2; exit 2;; esac

bash scripts/install-deps.sh
# The same options during the build: gtest_discover_tests runs each test
# binary (sanitized) to list its tests.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$PWD/tests/sanitizers/tsan.supp"
cmake --preset "$preset"
cmake --build --preset "$preset" -j "$(nproc)"
ctest --preset "$preset" -j "$(nproc)"
