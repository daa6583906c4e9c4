#!/usr/bin/env bash
# The container appliance, tested in a real Docker engine (SPEC §8):
#   the image builds through `docker-compose build`, as operators build it, from a
#   fresh clone (no ./wechat-api), with the legacy builder (DOCKER_BUILDKIT=0:
#   Debian's docker.io and docker-compose 1.29) and with BuildKit, both the default
#   target (`runtime`, the binary built in a stand-in Rust image) and `prebuilt`;
#   the build context holds none of the operator's secrets; runs as uid 1001; health check goes healthy;
#   a signed URL verification passes through the published port (127.0.0.1 only);
#   an upload bind mount owned by root 755 is named, with the chown fix, by
#   /api/health and the in-container `diagnose`; a killed process is restarted by
#   Docker; an unresponsive (SIGSTOPped) one turns unhealthy and
#   scripts/monitor-wechat-api.sh restarts it and mails a real SMTP server.
#
# Needs root, docker.io and docker-compose (Debian), python3 (SMTP sink), openssl, git.
# No image registry is used: the base image is made from this host's glibc, and
# the Rust image is a stand-in whose cargo copies the binary built here (it tests
# the Dockerfile's stages, not cargo).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export COMPOSE_PROJECT_NAME=wechatci
port=18092
smtp_port=2525
passed=0
failed=0

work=$(mktemp -d)
# The operator's checkout: a fresh clone of this worktree.
checkout=$work/checkout
smtp_pid=""
cleanup() {
  # From the checkout: compose needs the env_file it was started with.
  (cd "$checkout" && docker-compose -f docker-compose.production.yml -f tests/container/compose.test.yml down -v >/dev/null 2>&1) ||
    docker rm -f wechat-api >/dev/null 2>&1 || true
  [ -n "$smtp_pid" ] && kill "$smtp_pid" 2>/dev/null
  # Untagged images this test's builds left (earlier bases, replaced images).
  docker image prune -f --filter label=wechat-api.ci=true >/dev/null 2>&1 || true
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
# image_from DIR TAG [docker import --change …]: an image of DIR with the libraries
# its executables need, from this host.
image_from() {
  local dir=$1 tag=$2 lib file
  shift 2
  mkdir -p "$dir/tmp" "$dir/etc"
  chmod 1777 "$dir/tmp"
  find "$dir" -type f -perm -u+x -print0 | while IFS= read -r -d '' file; do
    for lib in $(ldd "$file" 2>/dev/null | grep -o '/lib[^ ]*'); do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  done
  echo "app:x:1001:1001::/app:/sbin/nologin" >"$dir/etc/passwd"
  # The label marks every image made from it (cleanup prunes the untagged ones).
  tar -C "$dir" -c . | docker import --change 'LABEL wechat-api.ci=true' "$@" - "$tag" >/dev/null
}
# The runtime base: the libraries the binary needs (glibc), nothing else, like
# distroless/cc.
mkdir -p "$work/base"
for lib in $(ldd "$bin" | grep -o '/lib[^ ]*'); do
  mkdir -p "$work/base$(dirname "$lib")"
  cp -L "$lib" "$work/base$lib"
done
image_from "$work/base" wechat-api-base:ci
# The stand-in Rust image: a shell, the tools the build stage runs, and a cargo
# that checks how it is called and what it was given, then "builds" by copying.
rust=$work/rust
mkdir -p "$rust/bin" "$rust/usr/local/cargo/bin" "$rust/opt"
cp /bin/dash "$rust/bin/sh"
cp /bin/mkdir /bin/cp /usr/bin/install "$rust/bin/"
cp "$bin" "$rust/opt/wechat-api"
cat >"$rust/usr/local/cargo/bin/cargo" <<'CARGO'
#!/bin/sh
# The stand-in Rust image's cargo (tests/container/run.sh).
[ "$*" = "build --release --locked --bin wechat-api" ] || { echo "stand-in cargo: called as: cargo $*" >&2; exit 1; }
[ -f Cargo.lock ] && [ -f src/main.rs ] || { echo "stand-in cargo: no sources in $PWD" >&2; exit 1; }
for secret in .env certs/server.key scripts/monitor-config.env wechat-api-report-1.txt wechat-api; do
  [ ! -e "$secret" ] || { echo "stand-in cargo: $secret is in the build context" >&2; exit 1; }
done
mkdir -p target/release && cp /opt/wechat-api target/release/wechat-api
CARGO
chmod 755 "$rust/usr/local/cargo/bin/cargo"
image_from "$rust" wechat-api-rust:ci --change 'ENV PATH=/usr/local/cargo/bin:/bin'

# A fresh clone, as the operator has it: the worktree's files that git would
# check out (tracked and new, not ignored); then the operator's secrets beside
# them, which no build context may carry (.dockerignore).
mkdir -p "$checkout"
git -C "$root" ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
  [ -f "$root/$file" ] && printf '%s\0' "$file"
done | tar -C "$root" --null -T - -c | tar -C "$checkout" -x
cd "$checkout"
"$bin" keygen >"$work/keys.env"
{
  echo "WECOM_CORP_ID=wwcontainertest01"
  grep -E '^WECOM_(TOKEN|ENCODING_AES_KEY)=' "$work/keys.env"
  echo "SUPERVISOR_INTERVAL_SECS=1"
} >.env
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout certs/server.key -out certs/server.crt 2>/dev/null
chown 1001:1001 certs/server.key certs/server.crt
echo "SMTP_PASS=not-for-images" >scripts/monitor-config.env
echo "a diagnose report" >wechat-api-report-1.txt

export RUNTIME_BASE=wechat-api-base:ci RUST_IMAGE=wechat-api-rust:ci IMAGE_SOURCE=https://example.test/wechat-api
# build BUILDER TARGET: `docker-compose build` as an operator runs it; ok or not ok.
build() {
  local builder=$1 target=$2 buildkit=0 label marker
  [ "$builder" = BuildKit ] && buildkit=1
  docker rmi -f wechat-api:latest >/dev/null 2>&1 || true
  if DOCKER_BUILDKIT=$buildkit COMPOSE_DOCKER_CLI_BUILD=$buildkit WECHAT_API_TARGET=$target \
    docker-compose -f docker-compose.production.yml build >"$work/build.log" 2>&1 &&
    [ "$(docker run --rm wechat-api:latest --version 2>&1)" = "$("$bin" --version)" ]; then
    label=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.source"}}' wechat-api:latest)
    # The builder that ran: BuildKit numbers its steps (#1 …), the legacy one counts them (Step 1/…).
    marker='^Step 1/'
    [ "$buildkit" = 0 ] || marker='^#[0-9]'
    if ! grep -q "$marker" "$work/build.log"; then
      not_ok "$builder: target $target was built by the other builder"
      tail -n 5 "$work/build.log" | sed 's/^/  # /'
    elif [ "$label" = "$IMAGE_SOURCE" ]; then
      ok "$builder: docker-compose build, target $target, from a fresh clone (IMAGE_SOURCE labelled)"
    else
      not_ok "$builder: target $target: org.opencontainers.image.source is '$label'"
    fi
  else
    not_ok "$builder: docker-compose build, target $target, from a fresh clone"
    tail -n 15 "$work/build.log" | sed 's/^/  # /'
  fi
}
build legacy runtime
cp "$bin" wechat-api
build legacy prebuilt
rm wechat-api
started=$(DOCKER_BUILDKIT=0 docker build -q --target prebuilt --build-arg RUNTIME_BASE -t wechat-api:nobinary . 2>&1 &&
  docker run --rm wechat-api:nobinary 2>&1) || true
if grep -q '/usr/local/bin/wechat-api.*no such file' <<<"$started"; then
  ok "without ./wechat-api, the prebuilt image builds and refuses to start, naming the missing binary"
else
  not_ok "prebuilt without ./wechat-api"
fi
docker rmi -f wechat-api:nobinary >/dev/null 2>&1 || true
# BuildKit through docker-compose 1.29 is `docker build` with DOCKER_BUILDKIT=1:
# built into the docker CLI up to 20.10 (Debian's), a plugin (buildx) from 23 on.
buildkit_cli() { "$1" buildx version >/dev/null 2>&1 || [ "$("$1" version -f '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)" -lt 23 ] 2>/dev/null; }
buildkit_path=""
if buildkit_cli docker; then
  buildkit_path=$PATH
elif [ -x /usr/bin/docker ] && buildkit_cli /usr/bin/docker; then
  # Another docker CLI ahead on PATH lacks buildx: Debian's, as operators have it.
  mkdir -p "$work/debian-docker"
  ln -s /usr/bin/docker "$work/debian-docker/docker"
  buildkit_path=$work/debian-docker:$PATH
fi
if [ -n "$buildkit_path" ]; then
  echo "BuildKit through docker CLI $(PATH=$buildkit_path docker version -f '{{.Client.Version}}') ($(PATH=$buildkit_path command -v docker))"
  PATH=$buildkit_path build BuildKit runtime
  cp "$bin" wechat-api
  PATH=$buildkit_path build BuildKit prebuilt
  rm wechat-api
else
  ok "# SKIP BuildKit: no docker CLI here can use it (docker $(docker version -f '{{.Client.Version}}' 2>/dev/null), no buildx)"
  cp "$bin" wechat-api
  build legacy prebuilt
  rm wechat-api
fi
echo "image size (docker images): $(docker images wechat-api:latest --format '{{.Size}}'), of which the base $(docker images wechat-api-base:ci --format '{{.Size}}')"

echo "== the appliance"
# A container left over from an interrupted run would hold the name and the port.
docker rm -f wechat-api >/dev/null 2>&1 || true
mkdir -p "$work/uploads"
chown 0:0 "$work/uploads"
chmod 755 "$work/uploads"
export WECHAT_API_PUBLISH=127.0.0.1:$port UPLOAD_HOST_DIR=$work/uploads
compose() { docker-compose -f docker-compose.production.yml -f tests/container/compose.test.yml "$@"; }
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
chown 1001:1001 "$work/uploads"
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
