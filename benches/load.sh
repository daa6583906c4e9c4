#!/usr/bin/env bash
# Load run of the whole callback path over real HTTPS and plain HTTP on loopback.
# The service is pinned to core 0 and wrk to core 1; every request is a signed,
# encrypted text callback (the same one: until dedup exists it takes the full path).
#
#   benches/load.sh [seconds] [connections]
#
# Needs wrk (Debian: apt-get install wrk). Sends traffic to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-64}
https_port=${HTTPS_PORT_BENCH:-18092}
http_port=${HTTP_PORT_BENCH:-18093}

cargo build --release --quiet
bin=$PWD/target/release/wechat-api
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cd "$work"
DATA_DIR="$work/demo" HTTPS_PORT=$https_port HTTP_PORT=$http_port BIND_ADDRESS=127.0.0.1 \
  taskset -c 0 "$bin" serve --demo >"$work/service.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  grep -q "wechat-api listening" "$work/service.log" && break
  sleep 0.1
done
echo "idle RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"

post=$(DATA_DIR="$work/demo" "$bin" sign --demo --url "https://127.0.0.1:$https_port/api/v1/wecom/callback" | grep -- '--data-binary')
body=$(sed -E "s/.*--data-binary '([^']*)'.*/\1/" <<<"$post")
query=$(sed -E "s/.*'https:[^?]*\?([^']*)'$/\1/" <<<"$post")
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[$body]==]
wrk.headers["Content-Type"] = "text/xml"
LUA

for scheme in http https; do
  port=$http_port
  [ "$scheme" = https ] && port=$https_port
  echo "== $scheme: $connections connections, ${seconds}s, POST callbacks"
  taskset -c 1 wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$work/post.lua" \
    "$scheme://127.0.0.1:$port/api/v1/wecom/callback?$query" | grep -E "Requests/sec|Latency|99%|50%|Non-2xx|Socket errors"
  echo "RSS after $scheme load: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
done
curl -sk "https://127.0.0.1:$https_port/metrics" | grep -E 'callbacks_total\{channel="app",outcome="ok"\}'
