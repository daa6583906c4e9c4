#!/usr/bin/env bash
# Soak: the service (release, pinned to core 0) with forwarding, the supervisor and
# alert email on, under a steady moderate load for a long time, sampled every few
# seconds: RSS, open file descriptors, database + WAL size, journal and outbox rows.
# RSS should stay flat, descriptors should not grow, and the store should level off
# once handled entries outlive RETENTION_SECS (120 s here).
#
#   benches/soak.sh [seconds] [rate] [connections]     (defaults: 600 s, 500 req/s, 16)
#
# The load (benches/loadgen/, core 1) is distinct, signed app callbacks over TLS at
# the given total rate, plus KF_RATE (default 10, 0 = none) kf notices per second
# over plain HTTP, each making the service call kf/sync_msg on the fake API, which
# also receives every forwarded message. Alert mail goes to a local SMTP sink
# (python3 -m smtpd; mail is off without it). SAMPLE_SECS (10) sets the sampling
# period, SOAK_PORT_BASE (18190) the ports: +0 TLS, +1 plain, +2 fake API, +3 SMTP.
#
# Needs taskset (util-linux) and curl; sqlite3 for row counts (skipped without it).
# Sends traffic to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
rate=${2:-500}
connections=${3:-16}
kf_rate=${KF_RATE:-10}
every=${SAMPLE_SECS:-10}
base=${SOAK_PORT_BASE:-18190}
https_port=$base
http_port=$((base + 1))
fake_port=$((base + 2))
smtp_port=$((base + 3))

# shellcheck source=benches/common.sh
source benches/common.sh
db=$demo/wechat-api.sqlite3

taskset -c 1 "$loadgen" fake-api --listen "127.0.0.1:$fake_port" >"$work/fake.log" 2>&1 &
pids+=("$!")
"$loadgen" wait --url "http://127.0.0.1:$fake_port/stats" >/dev/null

service_env=(
  "DATA_DIR=$demo" "HTTPS_PORT=$https_port" "HTTP_PORT=$http_port" "BIND_ADDRESS=127.0.0.1"
  "WECOM_API_BASE_URL=http://127.0.0.1:$fake_port" "WECOM_SECRET=soak-app-secret" "WECOM_AGENT_ID=1000002"
  "WECOM_KF_SECRET=soak-kf-secret" "FORWARD_URL=http://127.0.0.1:$fake_port/forward"
  "FORWARD_SECRET=soak-forward-secret" "HEARTBEAT_URL=http://127.0.0.1:$fake_port/heartbeat"
  "SUPERVISOR_INTERVAL_SECS=5" "ALERT_GROUP_WAIT_SECS=5" "RETENTION_SECS=120"
)
mail="off (python3 without the smtpd module)"
if python3 -c 'import smtpd' 2>/dev/null; then
  taskset -c 1 python3 -W ignore -u -m smtpd -n -c DebuggingServer "127.0.0.1:$smtp_port" >"$work/smtp.log" 2>&1 &
  pids+=("$!")
  service_env+=(
    "ALERT_EMAIL_ENABLED=true" "SMTP_SERVER=127.0.0.1" "SMTP_PORT=$smtp_port" "SMTP_TLS=none"
    "ALERT_EMAIL_FROM=wechat-api@soak.invalid" "ALERT_EMAIL_TO=ops@soak.invalid"
  )
  mail="on (SMTP sink on 127.0.0.1:$smtp_port)"
fi

"${clean[@]}" "${service_env[@]}" taskset -c 0 "$bin" serve --demo >"$work/service.log" 2>&1 &
pid=$!
pids+=("$pid")
"$loadgen" wait --url "http://127.0.0.1:$http_port/api/health/live" --timeout 20 >/dev/null
sleep 2 # the first supervisor round and token fetches
echo "== soak: $seconds s at $rate req/s over TLS ($connections connections) + $kf_rate kf notices/s; mail $mail; pid $pid"

have_sqlite=false
command -v sqlite3 >/dev/null 2>&1 && have_sqlite=true
fake_stat() { curl -s "http://127.0.0.1:$fake_port/stats" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
# One sample: seconds, RSS KiB, fds, DB bytes, WAL bytes, journal rows, outbox
# rows, outbox rows not done, forwarded (distinct X-Message-Id).
t0=$(date +%s)
sample() {
  local rss fds size wal rows="- - -"
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  size=$(stat -c %s "$db" 2>/dev/null || echo 0)
  wal=$(stat -c %s "$db-wal" 2>/dev/null || echo 0)
  if $have_sqlite; then
    rows=$(sqlite3 -readonly -separator ' ' "$db" "SELECT (SELECT COUNT(*) FROM journal), (SELECT COUNT(*) FROM outbox),
      (SELECT COUNT(*) FROM outbox WHERE done_at IS NULL)" 2>/dev/null || echo "? ? ?")
  fi
  echo "$(($(date +%s) - t0)) $rss $fds $size $wal $rows $(fake_stat forward_distinct)"
}
echo "   live samples: t_s rss_kib fds db_bytes wal_bytes journal outbox outbox_not_done forwarded"
samples=("$(sample)")
echo "   idle: ${samples[0]}"

lg_run() { # OUTPUT [loadgen run arguments]: in the background, on core 1
  local out=$1
  shift
  "${clean[@]}" taskset -c 1 "$loadgen" run -d "$seconds" --config "$demo/demo.toml" --json "$@" >"$out" 2>"$out.log" &
  pids+=("$!")
}
lg_run "$work/load.json" --url "https://127.0.0.1:$https_port" --rate "$rate" -c "$connections" --pid "$pid"
load_pid=$!
kf_pid=""
if awk -v r="$kf_rate" 'BEGIN { exit !(r > 0) }'; then
  lg_run "$work/kf.json" --mode kf --url "http://127.0.0.1:$http_port" --rate "$kf_rate" -c 1
  kf_pid=$!
fi
while kill -0 "$load_pid" 2>/dev/null; do
  sleep "$every"
  samples+=("$(sample)")
  echo "   ${samples[-1]}"
done
wait "$load_pid" || true
[ -z "$kf_pid" ] || wait "$kf_pid" || true
load_end=${#samples[@]}

# After the load: the outbox drains (every message forwarded), within a minute.
for _ in $(seq 60); do
  $have_sqlite || break
  pending=$(sqlite3 -readonly "$db" "SELECT COUNT(*) FROM outbox WHERE done_at IS NULL" 2>/dev/null || echo 0)
  [ "$pending" = 0 ] && break
  sleep 1
done
sleep 1
samples+=("$(sample)")
health=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/api/health" || true)
callbacks=$(curl -s "http://127.0.0.1:$http_port/metrics" | awk '/^wechat_api_(callbacks|outbox_actions|store_pruned)_total/ && $2 != 0' || true)

echo
echo "| t s | RSS MiB | fds | DB MiB | WAL MiB | journal rows | outbox rows | outbox not done | forwarded |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for i in "${!samples[@]}"; do
  read -r t rss fds size wal journal outbox pending forwarded <<<"${samples[$i]}"
  label=$t
  [ "$i" = 0 ] && label="$t (idle)"
  [ "$i" = "$load_end" ] && label="$t (drained)"
  printf '| %s | %.1f | %s | %.1f | %.1f | %s | %s | %s | %s |\n' "$label" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" \
    "$fds" "$(awk -v b="$size" 'BEGIN {print b / 1048576}')" "$(awk -v b="$wal" 'BEGIN {print b / 1048576}')" \
    "$journal" "$outbox" "$pending" "$forwarded"
done

col() { # N FIRST LAST: field N of the samples FIRST..LAST
  local i f
  for ((i = $2; i <= $3; i++)); do read -ra f <<<"${samples[$i]}" && echo "${f[$1]}"; done
}
minmax() { sort -n | awk 'NR == 1 {min = $1} {max = $1} END {printf "%s / %s", min, max}'; }
last=$((load_end - 1))
middle=$(((1 + last) / 2))
mib_of() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
rss_at() { mib_of "$(col 1 "$1" "$1")"; }
field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$1"; }
echo
echo "| summary | value |"
echo "| --- | --- |"
echo "| load achieved | $(field "$work/load.json" rps | cut -d. -f1) req/s of $rate, p99 $(field "$work/load.json" p99_ms) ms, non-2xx $(field "$work/load.json" non_2xx), socket errors $(field "$work/load.json" socket_errors) |"
if [ -s "$work/kf.json" ]; then
  echo "| kf notices | $(field "$work/kf.json" ok) accepted, $(fake_stat sync_msg) sync_msg calls, $(fake_stat kf_messages) kf messages served |"
fi
echo "| RSS idle / start / middle / end / drained | $(rss_at 0) / $(rss_at 1) / $(rss_at "$middle") / $(rss_at "$last") / $(rss_at "$load_end") MiB |"
echo "| fds idle / min / max during load / drained | $(col 2 0 0) / $(col 2 1 "$last" | minmax) / $(col 2 "$load_end" "$load_end") |"
echo "| DB bytes min / max | $(col 3 1 "$last" | minmax) |"
echo "| WAL bytes min / max | $(col 4 1 "$last" | minmax) |"
if $have_sqlite; then
  echo "| journal rows min / max | $(col 5 1 "$last" | minmax) |"
  echo "| outbox rows min / max | $(col 6 1 "$last" | minmax) |"
fi
accepted=$(($(field "$work/load.json" ok) + $(fake_stat kf_messages)))
echo "| forwarded (distinct ids) / accepted messages | $(fake_stat forward_distinct) / $accepted ($(fake_stat forward) posts) |"
if [ -f "$work/smtp.log" ]; then
  echo "| alert emails received | $(grep -c 'MESSAGE FOLLOWS' "$work/smtp.log" || true): $(grep -o "Subject: [^'\"]*" "$work/smtp.log" | sort | uniq -c | sed 's/^ *//' | paste -sd ';' - || true) |"
fi
echo "| /api/health at the end | HTTP $health |"
echo
echo "${callbacks:-}"
