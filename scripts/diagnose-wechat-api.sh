#!/usr/bin/env bash
# Collects everything needed to troubleshoot the wechat-api containers into one
# report file, secrets redacted: container state, restart count and policy, port,
# health status and its last log, recent logs, and the in-container
# `wechat-api diagnose`.
#
# The recent logs hold customer message text (one line per message): the report
# is written readable by its owner only (0600). Share it as you would the logs.
set -uo pipefail
umask 077

usage() {
  cat <<'USAGE'
Usage: diagnose-wechat-api.sh [--help] [-c|--container NAME]... [-p|--project NAME]
                              [REPORT_FILE]

Writes a troubleshooting report (default: wechat-api-report-<time>.txt) about
the containers, the first that is given: the -c names; -p: every container of
that compose project; CONTAINERS (names separated by spaces or commas),
CONTAINER or COMPOSE_PROJECT in the environment; else the container named
wechat-api. For docker-compose.ha.yml: -c wechat-api-1 -c wechat-api-2
-c wechat-api-3 -c wechat-api-postgres -c wechat-api-balancer, or -p <project>.
Secrets are redacted (values of *SECRET*, *TOKEN*, *PASS*, *KEY* settings in any
case, Bearer and Basic credentials, passwords in URLs). The report includes
recent log lines, which hold customer message text: it is written with mode
0600; share it with care.
USAGE
}

names=()
project=""
report=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -c | --container) [ $# -ge 2 ] || { usage >&2; exit 2; }; names+=("$2"); shift 2 ;;
    -p | --project) [ $# -ge 2 ] || { usage >&2; exit 2; }; project=$2; shift 2 ;;
    -*) usage >&2; exit 2 ;;
    *) report=$1; shift ;;
  esac
done
if [ ${#names[@]} -eq 0 ] && [ -z "$project" ]; then
  list=${CONTAINERS:-${CONTAINER:-}}
  if [ -n "$list" ]; then
    read -r -a names <<<"${list//,/ }"
  elif [ -n "${COMPOSE_PROJECT:-}" ]; then
    project=$COMPOSE_PROJECT
  else
    names=(wechat-api)
  fi
fi
if [ -n "$project" ]; then
  read -r -d '' -a found < <(docker ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Names}}') || true
  [ ${#found[@]} -gt 0 ] || echo "compose project $project has no containers" >&2
  names+=("${found[@]}")
fi
report=${report:-wechat-api-report-$(date -u +%Y%m%dT%H%M%SZ).txt}

# Replaced, in any case: values of settings whose names say they are secret
# (WECOM_SECRET=…, wecom_secret = "…", "smtp_pass": "…", access_token=… in a URL),
# Bearer and Basic credentials, and the password of a URL (postgres://u:pw@host).
redact() {
  sed -E \
    -e 's/((secret|token|pass|key)[a-z0-9_]*"?[[:space:]]*(=|:[[:space:]]|:")[[:space:]]*["'"'"']?)[^"'"'"'[:space:],;&]+/\1<redacted>/gI' \
    -e 's/((bearer|basic)[[:space:]]+)[^"'"'"'[:space:],;]+/\1<redacted>/gI' \
    -e 's#([a-z][a-z0-9+.-]*://[^/:@[:space:]]*:)[^@/[:space:]]+@#\1<redacted>@#gI'
}

section() { printf '\n===== %s =====\n' "$1"; }

# A report left by an earlier run keeps its mode through `>`: start afresh.
rm -f -- "$report"
{
  echo "wechat-api report, $(date -u +%FT%TZ), host $(hostname)"
  echo "Holds customer message text (in the log lines); secrets are redacted. Share with care."
  echo "Containers: ${names[*]}"
  for c in "${names[@]}"; do
    printf '\n##### %s\n' "$c"
    section "container"
    docker inspect -f 'status={{.State.Status}} running={{.State.Running}} started={{.State.StartedAt}} exit={{.State.ExitCode}} oom={{.State.OOMKilled}}
restarts={{.RestartCount}} policy={{.HostConfig.RestartPolicy.Name}} user={{.Config.User}} image={{.Config.Image}}' "$c" 2>&1
    section "ports"
    docker port "$c" 2>&1
    (ss -ltn 2>/dev/null || netstat -ltn 2>/dev/null) | grep -E ':8092\b' || echo "nothing listens on :8092 on the host"
    section "health"
    docker inspect -f '{{if .State.Health}}status={{.State.Health.Status}} failing_streak={{.State.Health.FailingStreak}}{{range .State.Health.Log}}
{{.End}} exit={{.ExitCode}} {{.Output}}{{end}}{{else}}no health check{{end}}' "$c" 2>&1
    section "mounts"
    docker inspect -f '{{range .Mounts}}{{.Type}} {{.Source}} -> {{.Destination}} rw={{.RW}}
{{end}}' "$c" 2>&1
    for source in $(docker inspect -f '{{range .Mounts}}{{if eq .Type "bind"}}{{.Source}} {{end}}{{end}}' "$c" 2>/dev/null); do
      stat -c '%n owner %u:%g mode %a' "$source" 2>&1
    done
    section "wechat-api diagnose (inside the container)"
    docker exec "$c" /usr/local/bin/wechat-api diagnose 2>&1
    section "last 200 log lines"
    docker logs --tail 200 "$c" 2>&1
  done
} | redact >"$report"
chmod 600 "$report"

echo "report written to $report"
