#!/usr/bin/env bash
# The container appliance, tested in a real Docker engine (SPEC §8):
#   image builds from the CI binary; runs as uid 1001; health check goes healthy;
#   a signed URL verification passes through the published port (127.0.0.1 only);
#   an upload bind mount owned by root 755 is named, with the chown fix, by
#   /api/health and the in-container `diagnose`; a killed process is restarted by
#   Docker; an unresponsive (SIGSTOPped) one turns unhealthy and
#   scripts/monitor-wechat-api.sh restarts it and mails a real SMTP server.
#
# Needs root, docker.io and docker-compose (Debian), python3 (SMTP sink), openssl.
# No image registry is used: the base image is made from this host's glibc.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export COMPOSE_PROJECT_NAME=wechatci
port=18092
smtp_port=2525
passed=0
failed=0

work=$(mktemp -d)
smtp_pid=""
cleanup() {
  # From the work directory: compose needs the env_file it was started with.
  (cd "$work" && docker-compose -f docker-compose.production.yml -f compose.test.yml down -v >/dev/null 2>&1) ||
    docker rm -f wechat-api >/dev/null 2>&1 || true
  [ -n "$smtp_pid" ] && kill "$smtp_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out after ${seconds}s waiting for: $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

health_is() { [ "$(docker inspect -f '{{.State.Health.Status}}' wechat-api)" = "$1" ]; }
restarts() { docker inspect -f '{{.RestartCount}}' wechat-api; }
container_pid() { docker inspect -f '{{.State.Pid}}' wechat-api; }

echo "== the engine"
if ! docker info >/dev/null 2>&1; then
  (dockerd >"$work/dockerd.log" 2>&1 &)
  wait_for 60 "dockerd" docker info
fi

echo "== the image"
cargo build --release --locked --quiet --bin wechat-api
bin=$root/target/release/wechat-api
base=$work/base
mkdir -p "$base/tmp" "$base/lib64" "$base/lib/x86_64-linux-gnu" "$base/etc"
chmod 1777 "$base/tmp"
for lib in $(ldd "$bin" | grep -o '/lib[^ ]*'); do cp -L "$lib" "$base$lib"; done
echo "app:x:1001:1001::/app:/sbin/nologin" >"$base/etc/passwd"
tar -C "$base" -c . | docker import - wechat-api-base:ci >/dev/null
context=$work/context
mkdir -p "$context/docker"
cp "$root/Dockerfile" "$context/"
cp -r "$root/docker/layout" "$context/docker/"
cp "$bin" "$context/wechat-api"
docker build -q --target prebuilt --build-arg RUNTIME_BASE=wechat-api-base:ci -t wechat-api:latest "$context" >/dev/null
size=$(docker image inspect -f '{{.Size}}' wechat-api:latest)
ok "image builds from the CI binary ($((size / 1024 / 1024)) MiB)"

echo "== the appliance"
# A container left over from an interrupted run would hold the name and the port.
docker rm -f wechat-api >/dev/null 2>&1 || true
cd "$work"
"$bin" keygen >keys.env
{
  echo "WECOM_CORP_ID=wwcontainertest01"
  grep -E '^WECOM_(TOKEN|ENCODING_AES_KEY)=' keys.env
  echo "SUPERVISOR_INTERVAL_SECS=1"
} >.env
mkdir -p certs uploads
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout certs/server.key -out certs/server.crt 2>/dev/null
chown 1001:1001 certs/server.key certs/server.crt
chown 0:0 uploads
chmod 755 uploads
cp "$root/docker-compose.production.yml" "$root/tests/container/compose.test.yml" .

# The replica topology's compose file and balancer configuration are valid.
mkdir -p deploy
cp "$root/docker-compose.ha.yml" .
cp "$root/deploy/haproxy.cfg" deploy/
if POSTGRES_PASSWORD=ci docker-compose -f docker-compose.ha.yml config -q; then
  ok "docker-compose.ha.yml passes docker-compose config"
else
  not_ok "docker-compose.ha.yml passes docker-compose config"
fi
if haproxy -c -f deploy/haproxy.cfg >/dev/null 2>&1; then ok "deploy/haproxy.cfg is valid"; else not_ok "deploy/haproxy.cfg is valid"; fi
export WECHAT_API_PUBLISH=127.0.0.1:$port UPLOAD_HOST_DIR=$work/uploads CERTS_DIR=$work/certs
compose() { docker-compose -f docker-compose.production.yml -f compose.test.yml "$@"; }
compose up -d --no-build >/dev/null 2>&1

if wait_for 60 "healthy" health_is healthy; then ok "health check goes healthy"; else not_ok "health check goes healthy"; docker logs wechat-api | tail -20; fi

uid=$(awk '/^Uid:/ {print $2}' "/proc/$(container_pid)/status")
if [ "$uid" = 1001 ]; then ok "runs as uid 1001"; else not_ok "runs as uid 1001 (got $uid)"; fi

set -a
# shellcheck source=/dev/null
. ./.env
set +a
commands=$("$bin" sign --url "https://127.0.0.1:$port/api/v1/wecom/callback")
promised=$(printf '%s\n' "$commands" | head -n 1 | awk '{print $NF}')
answer=$(sh -c "$(printf '%s\n' "$commands" | grep '^curl' | head -n 1)" || true)
if [ -n "$promised" ] && [ "$answer" = "$promised" ]; then
  ok "a signed URL verification passes through the published port"
else
  not_ok "signed URL verification: expected $promised, got $answer"
fi

health_json=$(curl -sk "https://127.0.0.1:$port/api/health" || true)
if printf '%s' "$health_json" | grep -q '"uploads:writable":\[{"status":"fail"' && printf '%s' "$health_json" | grep -q 'chown -R 1001:1001'; then
  ok "/api/health names the root-owned upload mount and the chown fix"
else
  not_ok "/api/health on a root-owned upload mount: $health_json"
fi
if diagnose=$(docker exec wechat-api /usr/local/bin/wechat-api diagnose 2>&1); then
  not_ok "diagnose exits non-zero on a root-owned upload mount"
else
  if printf '%s' "$diagnose" | grep -q '✖ UPLOAD_DIR writable' && printf '%s' "$diagnose" | grep -q 'chown -R 1001:1001'; then
    ok "diagnose names the upload mount, the fix, and exits non-zero"
  else
    not_ok "diagnose output: $diagnose"
  fi
fi
chown 1001:1001 uploads
uploads_pass() { curl -sk "https://127.0.0.1:$port/api/health" | grep -q '"uploads:writable":\[{"status":"pass"'; }
if wait_for 20 "uploads:writable passes" uploads_pass; then ok "chown 1001:1001 fixes it without a restart"; else not_ok "uploads:writable after chown"; fi

before=$(restarts)
kill -9 "$(container_pid)"
restarted() { [ "$(restarts)" -gt "$before" ] && health_is healthy; }
if wait_for 60 "restart after kill -9" restarted; then ok "a killed process is restarted by Docker (restart policy)"; else not_ok "restart after kill -9"; fi

python3 -u -m smtpd -n -c DebuggingServer "127.0.0.1:$smtp_port" >"$work/smtp.log" 2>&1 &
smtp_pid=$!
wait_for 10 "SMTP sink" bash -c "exec 3<>/dev/tcp/127.0.0.1/$smtp_port"
cat >"$work/monitor-config.env" <<EOF
CONTAINER=wechat-api
STATE_DIR=$work/monitor-state
SMTP_SERVER=127.0.0.1
SMTP_PORT=$smtp_port
SMTP_TLS=none
ALERT_EMAIL_FROM=monitor@example.test
ALERT_EMAIL_TO=oncall@example.test
EOF
if MONITOR_CONFIG=$work/monitor-config.env "$root/scripts/monitor-wechat-api.sh" >/dev/null; then
  ok "the monitor leaves a healthy container alone"
else
  not_ok "monitor on a healthy container"
fi
stopped_pid=$(container_pid)
kill -STOP "$stopped_pid"
if wait_for 60 "unhealthy" health_is unhealthy; then ok "an unresponsive process turns unhealthy"; else not_ok "unhealthy after SIGSTOP"; fi
MONITOR_CONFIG=$work/monitor-config.env "$root/scripts/monitor-wechat-api.sh" || true
# `docker restart` does not count in RestartCount (only the policy does): a new process.
replaced() { [ "$(container_pid)" != "$stopped_pid" ] && health_is healthy; }
if wait_for 60 "healthy again" replaced; then ok "monitor-wechat-api.sh restarts the unhealthy container"; else not_ok "monitor restart"; fi
mailed() { grep -q 'Subject: \[wechat-api RESTARTED\] wechat-api was unhealthy' "$work/smtp.log"; }
if wait_for 10 "the monitor's email" mailed; then ok "the monitor emails a real SMTP server"; else not_ok "monitor email"; cat "$work/smtp.log"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
