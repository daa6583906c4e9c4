#!/usr/bin/env bash
# The compose files and deploy/haproxy.cfg as docker-compose 1.29 (Debian) and
# HAProxy read them, without a Docker engine: `docker-compose config` with an
# operator's .env, `haproxy -c`, and HAProxy running deploy/haproxy.cfg on this
# host answering the balancer's container health check (the compose file's own
# command) and logging only abnormal connections.
#
# Needs docker-compose, haproxy, bash, python3 with PyYAML (docker-compose's).
#
# The checks are strings that `expect` evaluates: single quotes.
# shellcheck disable=SC2016
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
passed=0
failed=0
work=$(mktemp -d)
haproxy_pid=""
cleanup() {
  [ -n "$haproxy_pid" ] && kill "$haproxy_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
expect() {
  local what=$1
  shift
  # In a subshell: a check may `exit 1` from its loop.
  if ("$@"); then ok "$what"; else not_ok "$what"; sed 's/^/  #   /' "$work/out" 2>/dev/null || true; fi
}

# PyYAML: docker-compose's interpreter has it.
python=""
for candidate in python3 /usr/bin/python3; do
  if "$candidate" -c 'import yaml' 2>/dev/null; then python=$candidate; break; fi
done
[ -n "$python" ] || { echo "no python3 with PyYAML (apt-get install python3-yaml)" >&2; exit 1; }

# config FILE: `docker-compose config` of FILE in $work, one `path=value` line per
# leaf (services.wechat-api-1.environment.DATABASE_URL=…), into $work/config.
config() {
  (cd "$work" && docker-compose -f "$1" config) >"$work/out" 2>&1 || return 1
  "$python" -c '
import sys, yaml
def walk(prefix, node):
    if isinstance(node, dict):
        for key, value in node.items():
            walk(f"{prefix}.{key}" if prefix else str(key), value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk(f"{prefix}.{i}", value)
    else:
        print(f"{prefix}={node}")
walk("", yaml.safe_load(open(sys.argv[1])))' "$work/out" >"$work/config"
}
has() { grep -qxF -- "$1" "$work/config"; }
lacks() { ! grep -qF -- "$1" "$work/config"; }

cp "$root/docker-compose.production.yml" "$root/docker-compose.ha.yml" "$work/"
mkdir -p "$work/deploy"
cp "$root/deploy/haproxy.cfg" "$work/deploy/"
operator_url='postgres://wechat_api:operator-db-pw@db.example.internal:5432/wechat_api?sslmode=require'
{
  grep -v -E '^(DATABASE_URL|POSTGRES_PASSWORD)=' "$root/.env.example"
  echo "POSTGRES_PASSWORD=bundled-pg-pw"
  echo "DATABASE_URL=$operator_url"
  echo "IMAGE_SOURCE=https://example.test/wechat-api"
} >"$work/.env"

echo "== docker-compose.production.yml"
expect "docker-compose.production.yml passes docker-compose config" config docker-compose.production.yml
expect "its container has a stable name and host name (REPLICA_ID's default)" \
  eval 'has services.wechat-api.container_name=wechat-api && has services.wechat-api.hostname=wechat-api'
expect "it passes IMAGE_SOURCE to the build" \
  has services.wechat-api.build.args.IMAGE_SOURCE=https://example.test/wechat-api
expect "it sets the autoheal=true label the README mentions" has "services.wechat-api.labels.autoheal=true"

echo "== docker-compose.ha.yml"
expect "docker-compose.ha.yml passes docker-compose config" config docker-compose.ha.yml
expect "every replica uses the operator's DATABASE_URL from .env" \
  eval 'for n in 1 2 3; do has "services.wechat-api-$n.environment.DATABASE_URL=$operator_url" || exit 1; done'
expect "POSTGRES_PASSWORD reaches PostgreSQL, not the replicas" \
  eval 'has services.postgres.environment.POSTGRES_PASSWORD=bundled-pg-pw && [ "$(grep -c bundled-pg-pw "$work/config")" = 1 ]'
expect "stable container names: wechat-api-1..3, wechat-api-postgres, wechat-api-balancer" \
  eval 'for n in 1 2 3; do has "services.wechat-api-$n.container_name=wechat-api-$n" && has "services.wechat-api-$n.environment.REPLICA_ID=wechat-api-$n" || exit 1; done; has services.postgres.container_name=wechat-api-postgres && has services.balancer.container_name=wechat-api-balancer'
expect "the replicas pass IMAGE_SOURCE to the build and carry the autoheal label" \
  eval 'for n in 1 2 3; do has "services.wechat-api-$n.build.args.IMAGE_SOURCE=https://example.test/wechat-api" && has "services.wechat-api-$n.labels.autoheal=true" || exit 1; done'
expect "PostgreSQL and HAProxy have health checks, memory and process limits, rotated logs" \
  eval 'for s in postgres balancer; do grep -q "^services.$s.healthcheck.test.0=" "$work/config" && grep -q "^services.$s.mem_limit=" "$work/config" && grep -q "^services.$s.pids_limit=" "$work/config" && has "services.$s.logging.options.max-size=20m" || exit 1; done'
grep -v '^DATABASE_URL=' "$work/.env" >"$work/.env.new" && mv "$work/.env.new" "$work/.env"
echo "DATABASE_URL=" >>"$work/.env"
if config docker-compose.ha.yml; then
  not_ok "docker-compose.ha.yml without DATABASE_URL is refused"
else
  expect "docker-compose.ha.yml without DATABASE_URL is refused, naming it" grep -q 'set DATABASE_URL in .env' "$work/out"
fi

echo "== deploy/haproxy.cfg"
expect "deploy/haproxy.cfg passes haproxy -c" eval 'haproxy -c -f "$work/deploy/haproxy.cfg" >"$work/out" 2>&1'
# The balancer's health check, as the compose file runs it in the container.
echo "DATABASE_URL=$operator_url" >>"$work/.env"
config docker-compose.ha.yml
health_check=$(sed -n 's/^services\.balancer\.healthcheck\.test\.3=//p' "$work/config")
haproxy -db -f "$work/deploy/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
answers() { [ -n "$health_check" ] && bash -c "$health_check" 2>/dev/null; }
deadline=$(($(date +%s) + 10))
until answers || [ "$(date +%s)" -ge "$deadline" ]; do sleep 0.2; done
expect "HAProxy answers the compose file's health check with no replica up" answers
# A connection with no replica to take it is abnormal: logged. The health checks are not.
exec 3<>/dev/tcp/127.0.0.1/8092 && exec 3<&- 3>&-
logged() { grep -q 'callbacks replicas/<NOSRV>' "$work/haproxy.log"; }
deadline=$(($(date +%s) + 10))
until logged || [ "$(date +%s)" -ge "$deadline" ]; do sleep 0.2; done
cp "$work/haproxy.log" "$work/out"
expect "an abnormal connection is logged, the health checks are not" eval 'logged && ! grep -q "healthz\|health " "$work/haproxy.log"'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
