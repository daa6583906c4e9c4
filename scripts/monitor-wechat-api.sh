#!/usr/bin/env bash
# Keeps the wechat-api containers up: for cron, every minute.
#
# Docker restarts a container whose process exits, not one that is merely
# unhealthy. This restarts a stopped or unhealthy container, emails on every
# restart and louder on a restart loop (its own restarts and Docker's), and
# emails when a container is missing, using the SMTP settings in
# monitor-config.env. Safe to run every minute: runs are serialised with flock,
# and repeated emails about the same condition are rate-limited. While the
# maintenance file exists it does nothing (logged once): create it before
# stopping a container on purpose (README, "Moving an existing installation").
#
#   * * * * * /opt/wechat-api/scripts/monitor-wechat-api.sh >> /var/log/wechat-api-monitor.log 2>&1
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: monitor-wechat-api.sh [--help] [-c|--container NAME]... [-p|--project NAME]

Restarts a watched container when it is stopped or unhealthy and emails about it;
emails when one is missing or crash-looping. Watched containers, the first that is
given: the -c names; -p: every container of that compose project; CONTAINERS
(names separated by spaces or commas) or COMPOSE_PROJECT in the configuration or
the environment; else the container named wechat-api.
  docker-compose.production.yml: wechat-api (the default)
  docker-compose.ha.yml:  -c wechat-api-1 -c wechat-api-2 -c wechat-api-3
                          -c wechat-api-postgres -c wechat-api-balancer
Configuration: monitor-config.env beside this script, or $MONITOR_CONFIG
(see monitor-config.env.example).
Paused while $MAINTENANCE_FILE exists (default $STATE_DIR/maintenance, i.e.
/var/lib/wechat-api-monitor/maintenance).
Exit status: 0 healthy, repaired or paused; 1 otherwise; 2 usage.
USAGE
}

names=()
project=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -c | --container) [ $# -ge 2 ] || { usage >&2; exit 2; }; names+=("$2"); shift 2 ;;
    -p | --project) [ $# -ge 2 ] || { usage >&2; exit 2; }; project=$2; shift 2 ;;
    *) usage >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
config=${MONITOR_CONFIG:-$here/monitor-config.env}
if [ -f "$config" ]; then
  # shellcheck source=/dev/null
  . "$config"
fi
# CONTAINER: the single name of older configurations.
CONTAINERS=${CONTAINERS:-${CONTAINER:-}}
COMPOSE_PROJECT=${COMPOSE_PROJECT:-}
STATE_DIR=${STATE_DIR:-/var/lib/wechat-api-monitor}
MAINTENANCE_FILE=${MAINTENANCE_FILE:-$STATE_DIR/maintenance}
RESTART_LOOP_COUNT=${RESTART_LOOP_COUNT:-3}
RESTART_LOOP_WINDOW_SECS=${RESTART_LOOP_WINDOW_SECS:-3600}
MAIL_EVERY_SECS=${MAIL_EVERY_SECS:-1800}
mkdir -p "$STATE_DIR"

exec 9>"$STATE_DIR/lock"
flock -n 9 || { echo "another run is in progress"; exit 0; }

log() { echo "$(date -u +%FT%TZ) $*"; }
host=$(hostname)

# The maintenance pause: one line when it starts, one when it ends.
if [ -e "$MAINTENANCE_FILE" ]; then
  if [ ! -e "$STATE_DIR/paused" ]; then
    log "paused: $MAINTENANCE_FILE exists; nothing is checked or restarted until it is removed"
    : >"$STATE_DIR/paused"
  fi
  exit 0
fi
if [ -e "$STATE_DIR/paused" ]; then
  rm -f "$STATE_DIR/paused"
  log "resumed: $MAINTENANCE_FILE is gone"
fi

# send_mail KEY SUBJECT BODY — at most once per MAIL_EVERY_SECS for the same KEY
# (an empty KEY: every time).
# The SMTP credentials reach curl in a config file on a pipe (-K), not on its
# command line, which every local user can read (ps).
send_mail() {
  local key=$1 subject=$2 body=$3 stamp now last
  if [ -z "${SMTP_SERVER:-}" ] || [ -z "${ALERT_EMAIL_TO:-}" ]; then
    log "no SMTP settings: not mailing '$subject'"
    return 0
  fi
  now=$(date +%s)
  if [ -n "$key" ]; then
    stamp="$STATE_DIR/mail-$key"; last=$(cat "$stamp" 2>/dev/null || echo 0)
    if [ $((now - last)) -lt "$MAIL_EVERY_SECS" ]; then log "mail '$key' sent recently; not again"; return 0; fi
  fi
  local scheme=smtp tls_args=() rcpt_args=() message r
  case "${SMTP_TLS:-starttls}" in
    tls) scheme=smtps ;;
    starttls) tls_args=(--ssl-reqd) ;;
    none) ;;
  esac
  local from=${ALERT_EMAIL_FROM:-${SMTP_USER:-wechat-api-monitor@localhost}}
  IFS=, read -r -a recipients <<<"$ALERT_EMAIL_TO"
  for r in "${recipients[@]}"; do rcpt_args+=(--mail-rcpt "$(echo "$r" | tr -d ' ')"); done
  message=$(printf 'From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n' \
    "$from" "$ALERT_EMAIL_TO" "$subject" "$(date -R)" "$body")
  if curl -sS --max-time 20 -K <(curl_credentials) "${tls_args[@]}" --url "$scheme://$SMTP_SERVER:${SMTP_PORT:-25}" \
      --mail-from "$from" "${rcpt_args[@]}" -T - <<<"$message"; then
    if [ -n "$key" ]; then echo "$now" >"$stamp"; fi
    log "mailed: $subject"
  else
    log "could not mail: $subject"
  fi
}

# curl's config file syntax: user = "name:password", with \ and " escaped.
curl_credentials() {
  [ -n "${SMTP_USER:-}" ] || return 0
  local user="$SMTP_USER:${SMTP_PASS:-}"
  user=${user//\\/\\\\}
  user=${user//\"/\\\"}
  printf 'user = "%s"\n' "$user"
}

# The watched containers.
if [ ${#names[@]} -eq 0 ] && [ -z "$project" ]; then
  if [ -n "$CONTAINERS" ]; then
    read -r -a names <<<"${CONTAINERS//,/ }"
  elif [ -n "$COMPOSE_PROJECT" ]; then
    project=$COMPOSE_PROJECT
  else
    names=(wechat-api)
  fi
fi
if [ -n "$project" ]; then
  if ! listed=$(docker ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Names}}'); then
    log "cannot list the containers of compose project $project (is Docker running?)"
    exit 1
  fi
  read -r -d '' -a found <<<"$listed" || true
  if [ ${#found[@]} -eq 0 ]; then
    log "compose project $project has no containers"
    send_mail "missing-project-$project" "[wechat-api DOWN] compose project $project has no containers on $host" \
      "The compose project $project has no containers on $host. Start it: docker compose -f <its compose file> up -d"
    exit 1
  fi
  names+=("${found[@]}")
fi

# restarts_in_window CONTAINER NEW_RESTARTS: records NEW_RESTARTS restarts now,
# forgets those older than the window, prints how many are left.
restarts_in_window() {
  local file="$STATE_DIR/restarts-$1" n=$2 now since
  now=$(date +%s); since=$((now - RESTART_LOOP_WINDOW_SECS))
  while [ "$n" -gt 0 ]; do echo "$now" >>"$file"; n=$((n - 1)); done
  touch "$file"
  awk -v since="$since" '$1 >= since' "$file" >"$file.tmp" && mv "$file.tmp" "$file"
  wc -l <"$file" | tr -d ' '
}

# check CONTAINER: 0 when it is fine or was repaired, 1 otherwise.
check() {
  local c=$1 state status health count seen docker_restarts recent reason outcome last_health body
  # `docker inspect` prints an empty line for a missing container: test its
  # exit status, never its output.
  if ! state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' "$c" 2>/dev/null); then
    log "container $c does not exist"
    send_mail "missing-$c" "[wechat-api DOWN] container $c missing on $host" \
      "The container $c does not exist on $host. Start it: docker compose -f <its compose file> up -d"
    return 1
  fi
  read -r status health count <<<"$state"

  # Restarts by Docker's restart policy since the last run count towards a loop.
  seen=$(cat "$STATE_DIR/restart-count-$c" 2>/dev/null || echo "$count")
  echo "$count" >"$STATE_DIR/restart-count-$c"
  docker_restarts=0
  if [ "$count" -gt "$seen" ] 2>/dev/null; then docker_restarts=$((count - seen)); fi

  reason=""
  case "$status" in
    running) [ "$health" = unhealthy ] && reason="unhealthy" ;;
    restarting) ;;
    *) reason="stopped ($status)" ;;
  esac

  if [ -z "$reason" ]; then
    recent=$(restarts_in_window "$c" "$docker_restarts")
    if [ "$recent" -ge "$RESTART_LOOP_COUNT" ]; then
      log "$c: restart loop ($recent restarts in $((RESTART_LOOP_WINDOW_SECS / 60)) minutes)"
      send_mail "loop-$c" "[wechat-api RESTART LOOP] $c restarted $recent times on $host" \
        "$c on $host has been restarted $recent times in the last $((RESTART_LOOP_WINDOW_SECS / 60)) minutes (Docker's restart policy: RestartCount $count).

Investigate: scripts/diagnose-wechat-api.sh -c $c"
      return 1
    fi
    if [ "$status" = restarting ]; then
      # Docker's restart policy is at work: restarting it too would not help.
      log "$c: Docker is restarting it (RestartCount $count)"
      send_mail "restarting-$c" "[wechat-api RESTARTING] $c keeps exiting on $host" \
        "$c on $host exited and Docker is restarting it (RestartCount $count).

Investigate: scripts/diagnose-wechat-api.sh -c $c"
      return 1
    fi
    return 0
  fi

  last_health=$(docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}{{.End}} exit={{.ExitCode}} {{.Output}}{{end}}{{end}}' "$c" 2>/dev/null | tail -n 3) || true
  log "restarting $c: $reason"
  if docker restart -t 15 "$c" >/dev/null; then outcome="restarted"; else outcome="restart FAILED"; fi
  recent=$(restarts_in_window "$c" $((docker_restarts + 1)))
  body="$c on $host was $reason and has been $outcome by monitor-wechat-api.sh.
Restarts in the last $((RESTART_LOOP_WINDOW_SECS / 60)) minutes: $recent.
Last health checks:
$last_health

Investigate: scripts/diagnose-wechat-api.sh -c $c"
  if [ "$recent" -ge "$RESTART_LOOP_COUNT" ]; then
    send_mail "loop-$c" "[wechat-api RESTART LOOP] $c restarted $recent times on $host" "$body"
  else
    send_mail "" "[wechat-api RESTARTED] $c was $reason on $host" "$body"
  fi
  [ "$outcome" = restarted ]
}

failed=0
for c in "${names[@]}"; do
  check "$c" || failed=1
done
exit "$failed"
