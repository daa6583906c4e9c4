#!/usr/bin/env bash
# Every test: the Rust unit and integration tests, then the container appliance in
# a real Docker engine. The container part needs root, docker.io and
# docker-compose (.ci/run installs them on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked
if ! command -v docker >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  echo "the container tests need docker.io and docker-compose: apt-get install -y docker.io docker-compose (or run .ci/run)" >&2
  exit 1
fi
bash tests/container/run.sh
