#!/usr/bin/env bash
# scripts/monitor-wechat-api.sh and scripts/diagnose-wechat-api.sh against a
# stand-in `docker` (tests/monitor/docker, first on PATH) for every state a
# container can be in: missing, exited, restarting, unhealthy, healthy, a restart
# loop (the monitor's restarts and Docker's), plus the maintenance pause, several
# containers and compose projects. The emails go through the real curl to a real
# SMTP server on 127.0.0.1 (tests/monitor/smtp_sink.py). No Docker engine needed.
#
# Needs bash, curl, python3, flock.
#
# The checks are strings that `expect` evaluates after each run: single quotes.
# shellcheck disable=SC2016
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
passed=0
failed=0

work=$(mktemp -d)
sink_pid=""
cleanup() {
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
# expect DESCRIPTION COMMAND...: ok when COMMAND succeeds, else not ok with the run's output.
expect() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else not_ok "$what"; show; fi
}
show() {
  echo "  # exit $rc; output:"; sed 's/^/  #   /' "$work/out"
  echo "  # docker calls:"; sed 's/^/  #   /' "$DOCKER_STUB/calls" 2>/dev/null || true
  echo "  # SMTP sink:"; sed 's/^/  #   /' "$work/smtp.log" 2>/dev/null || true
}

# The SMTP sink, on a port the system picks.
python3 "$root/tests/monitor/smtp_sink.py" "$work/smtp.log" "$work/smtp.port" &
sink_pid=$!
deadline=$(($(date +%s) + 10))
until [ -s "$work/smtp.port" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "the SMTP sink did not start" >&2; exit 1; }
  sleep 0.1
done
smtp_port=$(cat "$work/smtp.port")

# The stand-in docker, and a curl that notes its command line and runs the real one.
bin=$work/bin
mkdir -p "$bin"
cp "$root/tests/monitor/docker" "$bin/docker"
real_curl=$(command -v curl)
cat >"$bin/curl" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >>"$work/curl-args"
exec "$real_curl" "\$@"
EOF
chmod +x "$bin/docker" "$bin/curl"
export PATH="$bin:$PATH"

password='pa"ss\wo rd-s3cret'
# fresh: a new state for the stand-in docker, the monitor and the sink.
fresh() {
  export DOCKER_STUB=$work/docker-$RANDOM$RANDOM
  mkdir -p "$DOCKER_STUB/containers"
  : >"$DOCKER_STUB/calls"
  state=$work/state-$RANDOM$RANDOM
  : >"$work/smtp.log"
  : >"$work/curl-args"
  cat >"$work/monitor-config.env" <<EOF
STATE_DIR=$state
SMTP_SERVER=127.0.0.1
SMTP_PORT=$smtp_port
SMTP_TLS=none
SMTP_USER=alerts@example.test
SMTP_PASS='$password'
ALERT_EMAIL_FROM=alerts@example.test
ALERT_EMAIL_TO='oncall@example.test, second@example.test'
EOF
}
# container NAME STATUS HEALTH [RESTART_COUNT [PROJECT]]
container() {
  local dir=$DOCKER_STUB/containers/$1
  mkdir -p "$dir"
  echo "$2" >"$dir/status"
  echo "$3" >"$dir/health"
  echo "${4:-0}" >"$dir/restart_count"
  [ -z "${5:-}" ] || echo "$5" >"$dir/project"
  printf '2025-01-01T00:00:0%sZ exit=1 health check: timed out\n' 1 2 3 >"$dir/health_log"
}
monitor() {
  rc=0
  MONITOR_CONFIG=$work/monitor-config.env "$root/scripts/monitor-wechat-api.sh" "$@" >"$work/out" 2>&1 || rc=$?
}
mailed() { grep -qF "Subject: $1" "$work/smtp.log"; }
mails() { grep -c '^Subject: ' "$work/smtp.log" || true; }
restarted() { grep -qx "restart -t 15 $1" "$DOCKER_STUB/calls"; }
restarts() { grep -c '^restart ' "$DOCKER_STUB/calls" || true; }
logged() { grep -qF "$1" "$work/out"; }

echo "== missing"
fresh
monitor
expect "a missing container: exit 1, a log line and a DOWN email" \
  eval '[ "$rc" = 1 ] && logged "container wechat-api does not exist" && mailed "[wechat-api DOWN] container wechat-api missing on $(hostname)" && [ "$(restarts)" = 0 ]'
monitor
expect "a missing container is mailed once per MAIL_EVERY_SECS" \
  eval '[ "$rc" = 1 ] && [ "$(mails)" = 1 ] && logged "sent recently"'

echo "== exited"
fresh
container wechat-api exited none
monitor
expect "an exited container is restarted and a RESTARTED email sent" \
  eval '[ "$rc" = 0 ] && restarted wechat-api && logged "restarting wechat-api: stopped (exited)" && mailed "[wechat-api RESTARTED] wechat-api was stopped (exited) on $(hostname)"'

echo "== restarting"
fresh
container wechat-api restarting none 5
monitor
expect "a container Docker is restarting is not restarted again, and mailed" \
  eval '[ "$rc" = 1 ] && [ "$(restarts)" = 0 ] && mailed "[wechat-api RESTARTING] wechat-api keeps exiting on $(hostname)"'

echo "== unhealthy"
fresh
container wechat-api running unhealthy
monitor
expect "an unhealthy container is restarted and mailed with its last health checks" \
  eval '[ "$rc" = 0 ] && restarted wechat-api && mailed "[wechat-api RESTARTED] wechat-api was unhealthy on $(hostname)" && grep -q "exit=1 health check: timed out" "$work/smtp.log"'
expect "the email goes to every recipient of ALERT_EMAIL_TO" \
  grep -q -- '--mail-rcpt second@example.test' "$work/curl-args"
expect "the SMTP password reaches the server, not curl's command line" \
  eval 'grep -qxF "AUTH alerts@example.test:$password" "$work/smtp.log" && ! grep -qF "s3cret" "$work/curl-args" && ! grep -qF "s3cret" "$work/out"'

echo "== healthy"
fresh
container wechat-api running healthy 2
monitor
expect "a healthy container is left alone: exit 0, no restart, no email, no output" \
  eval '[ "$rc" = 0 ] && [ "$(restarts)" = 0 ] && [ "$(mails)" = 0 ] && [ ! -s "$work/out" ]'
container wechat-api running none
monitor
expect "a running container without a health check is left alone" \
  eval '[ "$rc" = 0 ] && [ "$(restarts)" = 0 ] && [ "$(mails)" = 0 ]'

echo "== restart loop"
fresh
for _ in 1 2 3; do
  container wechat-api running unhealthy
  monitor
done
expect "the third restart within the window is mailed as a RESTART LOOP" \
  eval '[ "$(restarts)" = 3 ] && [ "$(grep -c "Subject: \[wechat-api RESTARTED\]" "$work/smtp.log")" = 2 ] && mailed "[wechat-api RESTART LOOP] wechat-api restarted 3 times on $(hostname)"'
fresh
container wechat-api running healthy 1
monitor
container wechat-api running healthy 4
monitor
expect "three restarts by Docker's policy between two runs are a RESTART LOOP too" \
  eval '[ "$rc" = 1 ] && [ "$(restarts)" = 0 ] && mailed "[wechat-api RESTART LOOP] wechat-api restarted 3 times on $(hostname)"'

echo "== a failed restart"
fresh
container wechat-api exited none
touch "$DOCKER_STUB/containers/wechat-api/restart_fails"
monitor
expect "a restart that fails: exit 1 and an email saying so" \
  eval '[ "$rc" = 1 ] && grep -q "has been restart FAILED" "$work/smtp.log"'

echo "== maintenance"
fresh
container wechat-api exited none
mkdir -p "$state"
touch "$state/maintenance"
monitor
cp "$work/out" "$work/out-first"
monitor
expect "while the maintenance file exists nothing is restarted, and the pause is logged once" \
  eval '[ "$rc" = 0 ] && [ "$(restarts)" = 0 ] && [ "$(mails)" = 0 ] && grep -qF "paused: $state/maintenance exists" "$work/out-first" && [ ! -s "$work/out" ]'
rm "$state/maintenance"
monitor
expect "once it is removed the monitor resumes (logged) and restarts the container" \
  eval '[ "$rc" = 0 ] && logged "resumed" && restarted wechat-api'
fresh
echo "MAINTENANCE_FILE=$work/elsewhere" >>"$work/monitor-config.env"
container wechat-api exited none
touch "$work/elsewhere"
monitor
expect "MAINTENANCE_FILE names another pause file" eval '[ "$(restarts)" = 0 ] && logged "paused: $work/elsewhere"'
rm "$work/elsewhere"

echo "== several containers"
fresh
container wechat-api-1 running healthy
container wechat-api-2 running unhealthy
monitor -c wechat-api-1 -c wechat-api-2 -c wechat-api-3
expect "-c names: each is checked; the unhealthy one restarted, the missing one mailed" \
  eval '[ "$rc" = 1 ] && restarted wechat-api-2 && ! restarted wechat-api-1 && mailed "[wechat-api RESTARTED] wechat-api-2 was unhealthy" && mailed "[wechat-api DOWN] container wechat-api-3 missing"'
fresh
echo "CONTAINERS=wechat-api-1,wechat-api-2" >>"$work/monitor-config.env"
container wechat-api-1 exited none
container wechat-api-2 running healthy
monitor
expect "CONTAINERS in the configuration names them" eval '[ "$rc" = 0 ] && restarted wechat-api-1 && ! restarted wechat-api-2'
fresh
echo "CONTAINER=old-name" >>"$work/monitor-config.env"
container old-name exited none
monitor
expect "CONTAINER (older configurations) still names one" eval '[ "$rc" = 0 ] && restarted old-name'
fresh
container wechat-api-1 running healthy 0 wechatha
container wechat-api-2 exited none 0 wechatha
container wechat-api-postgres running unhealthy 0 wechatha
container unrelated exited none 0 other
monitor -p wechatha
expect "-p: every container of the compose project, and no other" \
  eval '[ "$rc" = 0 ] && restarted wechat-api-2 && restarted wechat-api-postgres && ! restarted unrelated && ! restarted wechat-api-1'
monitor -p nothing-here
expect "-p of a project with no containers: exit 1 and a DOWN email" \
  eval '[ "$rc" = 1 ] && mailed "[wechat-api DOWN] compose project nothing-here has no containers"'
monitor --bogus
expect "an unknown option: usage, exit 2" eval '[ "$rc" = 2 ] && logged "Usage: monitor-wechat-api.sh"'

echo "== diagnose"
fresh
container wechat-api-1 running healthy 0 wechatha
container wechat-api-2 running unhealthy 0 wechatha
diagnose() {
  rc=0
  (cd "$work" && "$root/scripts/diagnose-wechat-api.sh" "$@") >"$work/out" 2>&1 || rc=$?
}
diagnose -c wechat-api-1 -c wechat-api-2 report-c.txt
expect "diagnose -c: one report with a part for each container" \
  eval '[ "$rc" = 0 ] && grep -q "^##### wechat-api-1" "$work/report-c.txt" && grep -q "^##### wechat-api-2" "$work/report-c.txt" && grep -q "stub logs of wechat-api-2" "$work/report-c.txt"'
diagnose -p wechatha report-p.txt
expect "diagnose -p: every container of the compose project" \
  eval '[ "$rc" = 0 ] && grep -q "^##### wechat-api-1" "$work/report-p.txt" && grep -q "^##### wechat-api-2" "$work/report-p.txt"'
CONTAINER=wechat-api-2 diagnose report-env.txt
expect "diagnose: CONTAINER still names one" \
  eval '[ "$rc" = 0 ] && grep -q "^##### wechat-api-2" "$work/report-env.txt" && ! grep -q "^##### wechat-api-1" "$work/report-env.txt"'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
