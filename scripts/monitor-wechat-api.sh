#!/usr/bin/env bash
# Keeps the wechat-api container up: for cron, every minute.
#
# Docker restarts a container whose process exits, not one that is merely
# unhealthy. This restarts a stopped or unhealthy container, emails on every
# restart and louder on a restart loop, using the SMTP settings in
# monitor-config.env. Safe to run every minute: runs are serialised with flock,
# and repeated emails about the same condition are rate-limited.
#
#   * * * * * /opt/wechat-api/scripts/monitor-wechat-api.sh >> /var/log/wechat-api-monitor.log 2>&1
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: monitor-wechat-api.sh [--help]

Restarts the wechat-api container when it is stopped or unhealthy and emails about
it. Configuration: monitor-config.env beside this script, or $MONITOR_CONFIG
(see monitor-config.env.example). Exit status: 0 healthy or repaired, 1 otherwise.
USAGE
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
config=${MONITOR_CONFIG:-$here/monitor-config.env}
if [ -f "$config" ]; then
  # shellcheck source=/dev/null
  . "$config"
fi
CONTAINER=${CONTAINER:-wechat-api}
STATE_DIR=${STATE_DIR:-/var/lib/wechat-api-monitor}
RESTART_LOOP_COUNT=${RESTART_LOOP_COUNT:-3}
RESTART_LOOP_WINDOW_SECS=${RESTART_LOOP_WINDOW_SECS:-3600}
MAIL_EVERY_SECS=${MAIL_EVERY_SECS:-1800}
mkdir -p "$STATE_DIR"

exec 9>"$STATE_DIR/lock"
flock -n 9 || { echo "another run is in progress"; exit 0; }

log() { echo "$(date -u +%FT%TZ) $*"; }

# send_mail KEY SUBJECT BODY — at most once per MAIL_EVERY_SECS for the same KEY.
send_mail() {
  local key=$1 subject=$2 body=$3 stamp now last
  if [ -z "${SMTP_SERVER:-}" ] || [ -z "${ALERT_EMAIL_TO:-}" ]; then
    log "no SMTP settings: not mailing '$subject'"
    return 0
  fi
  stamp="$STATE_DIR/mail-$key"; now=$(date +%s); last=$(cat "$stamp" 2>/dev/null || echo 0)
  if [ $((now - last)) -lt "$MAIL_EVERY_SECS" ]; then log "mail '$key' sent recently; not again"; return 0; fi
  local scheme=smtp tls_args=() auth_args=() rcpt_args=() message
  case "${SMTP_TLS:-starttls}" in
    tls) scheme=smtps ;;
    starttls) tls_args=(--ssl-reqd) ;;
    none) ;;
  esac
  [ -n "${SMTP_USER:-}" ] && auth_args=(--user "$SMTP_USER:${SMTP_PASS:-}")
  local from=${ALERT_EMAIL_FROM:-${SMTP_USER:-wechat-api-monitor@localhost}}
  IFS=, read -r -a recipients <<<"$ALERT_EMAIL_TO"
  for r in "${recipients[@]}"; do rcpt_args+=(--mail-rcpt "$(echo "$r" | tr -d ' ')"); done
  message=$(printf 'From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n' \
    "$from" "$ALERT_EMAIL_TO" "$subject" "$(date -R)" "$body")
  if curl -sS --max-time 20 "${tls_args[@]}" "${auth_args[@]}" --url "$scheme://$SMTP_SERVER:${SMTP_PORT:-25}" \
      --mail-from "$from" "${rcpt_args[@]}" -T - <<<"$message"; then
    echo "$now" >"$stamp"; log "mailed: $subject"
  else
    log "could not mail: $subject"
  fi
}

host=$(hostname)
status=$(docker inspect -f '{{.State.Status}}' "$CONTAINER" 2>/dev/null || echo missing)
health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CONTAINER" 2>/dev/null || true)

if [ "$status" = missing ]; then
  log "container $CONTAINER does not exist"
  send_mail missing "[wechat-api DOWN] container $CONTAINER missing on $host" \
    "The container $CONTAINER does not exist. Start it: docker compose -f docker-compose.production.yml up -d"
  exit 1
fi

reason=""
if [ "$status" != running ]; then reason="stopped ($status)"; elif [ "$health" = unhealthy ]; then reason="unhealthy"; fi
if [ -z "$reason" ]; then
  exit 0
fi

last_health=$(docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}{{.End}} exit={{.ExitCode}} {{.Output}}{{end}}{{end}}' "$CONTAINER" 2>/dev/null | tail -n 3)
log "restarting $CONTAINER: $reason"
if docker restart -t 15 "$CONTAINER" >/dev/null; then outcome="restarted"; else outcome="restart FAILED"; fi

# Restart loop: too many restarts by this script within the window.
now=$(date +%s)
echo "$now" >>"$STATE_DIR/restarts"
recent=$(awk -v since=$((now - RESTART_LOOP_WINDOW_SECS)) '$1 >= since' "$STATE_DIR/restarts" | wc -l)
awk -v since=$((now - RESTART_LOOP_WINDOW_SECS)) '$1 >= since' "$STATE_DIR/restarts" >"$STATE_DIR/restarts.tmp" && mv "$STATE_DIR/restarts.tmp" "$STATE_DIR/restarts"
body="$CONTAINER on $host was $reason and has been $outcome by monitor-wechat-api.sh.
Restarts in the last $((RESTART_LOOP_WINDOW_SECS / 60)) minutes: $recent.
Last health checks:
$last_health

Investigate: scripts/diagnose-wechat-api.sh"
if [ "$recent" -ge "$RESTART_LOOP_COUNT" ]; then
  send_mail loop "[wechat-api RESTART LOOP] $CONTAINER restarted $recent times on $host" "$body"
else
  send_mail "restart-$now" "[wechat-api RESTARTED] $CONTAINER was $reason on $host" "$body"
fi
[ "$outcome" = restarted ]
