#!/usr/bin/env bash
# Packs what the GPU mode needs into one folder, to carry to a GPU machine
# that has Python, PyTorch, transformers and grpcio but not our build:
# kvgated and the shared libraries ldd says it loads (glibc's own stay
# behind: the target's must be used), a wrapper that points the loader at
# them, bench/engine/, the Python client and its generated gRPC stubs.
#
# Usage: bench/engine/bundle.sh [build dir, default build/ci] [out, default kvgate-engine-bundle]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/ci}
out=${2:-kvgate-engine-bundle}
kvgated="$build/plugin/server/kvgated"
[[ -x "$kvgated" ]] || { echo "bundle: no $kvgated; build it first" >&2; exit 1; }
[[ -f "$build/python/kvgate/v1/admission_pb2.py" ]] || {
  echo "bundle: no Python stubs in $build/python; build target kvgate_python" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/python"
cp "$kvgated" "$out/bin/kvgated.bin"
# glibc and the loader must come from the target machine.
ldd "$kvgated" | awk '/=> \// {print $3}' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libresolv.so*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
cat > "$out/bin/kvgated" <<'WRAP'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/kvgated.bin" "$@"
WRAP
chmod +x "$out/bin/kvgated"
mkdir -p "$out/bench"
cp -r bench/engine "$out/bench/"
find "$out/bench" -name __pycache__ -prune -exec rm -rf {} +
cp -r clients/python/kvgate "$out/python/"
cp -r "$build/python/kvgate/v1" "$out/python/kvgate/"
echo "bundle: $out ($(du -sh "$out" | cut -f1)); on the GPU machine:"
echo "  cd $out && python3 bench/engine/run.py --mode=gpu --kvgated=bin/kvgated --python-stubs=python --out=results"
