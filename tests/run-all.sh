#!/usr/bin/env bash
# Every test: the Rust unit and integration tests; the operator scripts against a
# stand-in docker (tests/monitor/run.sh); the compose files and HAProxy's
# configuration (tests/compose/run.sh); then the container appliance in a real
# Docker engine. The last two need docker-compose, the last root and docker.io
# (.ci/run installs them on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked
bash tests/monitor/run.sh
if ! command -v docker >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  echo "the compose and container tests need docker.io and docker-compose: apt-get install -y docker.io docker-compose (or run .ci/run)" >&2
  exit 1
fi
bash tests/compose/run.sh
bash tests/container/run.sh
