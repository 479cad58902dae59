#!/usr/bin/env bash
# Install dependencies, build, make the tiny model and serve it on the CPU backend: the protobuf RPC
# on tcp://127.0.0.1:5555 and the OpenAI-compatible HTTP API on http://127.0.0.1:8000/v1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
[ -f models/tiny/config.json ] || build/tools/gemma-mkmodel --preset tiny --out models/tiny
echo "gemmad: serving models/tiny on tcp://127.0.0.1:5555 (try: build/client/gemma-cli 'Hello')" >&2
echo "        and http://127.0.0.1:8000/v1 (try: curl http://127.0.0.1:8000/v1/completions" \
     "-d '{\"model\": \"tiny\", \"prompt\": \"Hello\"}')" >&2
exec build/daemon/gemmad --model models/tiny --backend cpu --listen tcp://127.0.0.1:5555 \
  --http-listen 127.0.0.1:8000
