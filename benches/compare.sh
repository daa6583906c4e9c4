#!/usr/bin/env bash
# Side by side, in one run on one machine: a static nginx `return 200` (the ceiling
# of an HTTP stack here) and wechat-api's whole callback path (verify, decrypt,
# parse, journal durably with an fsync'd commit, answer). The server under test is
# pinned to core 0, the load generator (benches/loadgen/) and the fake WeCom API
# to core 1; every run has the same connections and duration. The machine may be
# shared and noisy: the runs are repeated in interleaved rounds, each ratio is taken
# within a round (its two runs seconds apart) and the median is reported, and each
# run says how much of core 0 something else used.
#
#   benches/compare.sh [seconds] [connections] [rounds]      (defaults: 10 s, 64, 3)
#
# A round: nginx plain and TLS (GET /, and plain with wrk when installed, a check on
# the load generator), then wechat-api with distinct callbacks (a new MsgId each)
# over plain HTTP and TLS, one callback replayed (the duplicate path), and kf
# notices (each makes the service call kf/sync_msg on the fake API); with wrk, also
# the distinct callbacks as an outside benchmark sends them (made beforehand by
# `loadgen bodies`, chat-sized, each posted once by benches/wrk-callbacks.lua), so
# the table shows the tail such a client sees. Also measured:
# start-up to live, idle RSS, RSS after the load, the release binary's size. Prints
# Markdown tables, then compares the run with the previous one recorded in
# benches/results.tsv (see the end). Ports from COMPARE_PORT_BASE (18090): +0 nginx, +1 nginx TLS,
# +2 wechat-api TLS, +3 wechat-api plain, +5 the fake API.
#
# Needs taskset (util-linux) and curl; nginx for the reference (Debian: apt-get
# install -y nginx-light; skipped without it); sqlite3 (waits for the journal
# backlog between runs) and wrk are used when present. Sends traffic to 127.0.0.1
# only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-64}
rounds=${3:-3}
base=${COMPARE_PORT_BASE:-18090}
nginx_port=$base
nginx_tls_port=$((base + 1))
https_port=$((base + 2))
http_port=$((base + 3))
fake_port=$((base + 5))

# shellcheck source=benches/common.sh
source benches/common.sh
service_env=(
  "DATA_DIR=$demo" "HTTPS_PORT=$https_port" "HTTP_PORT=$http_port" "BIND_ADDRESS=127.0.0.1"
  "WECOM_API_BASE_URL=http://127.0.0.1:$fake_port" "WECOM_KF_SECRET=compare-kf-secret"
)

field() { # JSON-LINE NAME: a number or string field of loadgen's --json line
  sed -n "s/.*\"$2\":\"\{0,1\}\([^],\"}]*\).*/\1/p" <<<"$1"
}
core0() { sed -n 's/.*"core_busy_pct":\[\([^],]*\).*/\1/p' <<<"$1"; }
num() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == "" || v == "null") printf "-"; else printf "%.*f", d, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else printf "n/a" }'; }
mib() { awk -v k="$1" 'BEGIN { if (k == "") printf "n/a"; else printf "%.1f MiB", k / 1024 }'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
metric() { # NAME: its value in /metrics (summed over labels)
  { curl -s "http://127.0.0.1:$http_port/metrics" || true; } | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
# Polls URL until 2xx; prints milliseconds since T0 (date +%s%N before the exec).
live_ms() { "$loadgen" wait --url "$1" --since-ns "$2" --timeout 20; }

declare -A result per_commit
labels=()
wrk_args=()
round=0
keep() { # LABEL JSON: one run's result
  result[$1#$round]=$2
  if [ "$round" = 1 ]; then labels+=("$1"); fi
}
measure() { # LABEL MODE URL PID: one loadgen run
  local out
  out=$("${clean[@]}" taskset -c 1 "$loadgen" run --label "$1" --mode "$2" --url "$3" --pid "$4" \
    -c "$connections" -d "$seconds" --config "$demo/demo.toml" --json)
  keep "$1" "$out"
  if awk -v c="$(field "$out" loadgen_cpu_pct)" 'BEGIN { exit !(c >= 95) }'; then
    echo "   warning: the load generator used $(num "$(field "$out" loadgen_cpu_pct)" 0) % of its core: bound by it" >&2
  fi
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
core0_ticks() { awk '$1 == "cpu0" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
# The same run with wrk (C, one thread), shaped like loadgen's JSON for the tables.
wrk_run() { # LABEL URL PID [wrk arguments after the URL]
  local before out ms core_before label=$1 url=$2 target=$3
  shift 3
  before=$(cpu_ticks "$target")
  core_before=$(core0_ticks)
  out=$(taskset -c 1 wrk -t1 -c"$connections" -d"${seconds}s" --latency "$@" "$url" ${wrk_args[@]+"${wrk_args[@]}"})
  wrk_requests=$(awk '/requests in/ {print $1}' <<<"$out")
  # wrk prints 512.00us, 1.20ms or 1.00s; in milliseconds:
  ms='function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }'
  keep "$label" "$(awk -v cpu="$(($(cpu_ticks "$target") - before))" -v hz="$(getconf CLK_TCK)" -v secs="$seconds" \
    -v core="$core_before $(core0_ticks)" "$ms"'
    $1 == "Latency" && NF >= 4 { max = ms($4) }
    $1 == "50%" { p50 = ms($2) } $1 == "90%" { p90 = ms($2) } $1 == "99%" { p99 = ms($2) }
    $1 == "p99.9" { p999 = ms($2) } # from benches/wrk-callbacks.lua; not for nginx
    /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { non = $NF }
    /Socket errors/ { gsub(",", ""); errors = $4 + $6 + $8 + $10 }
    END {
      split(core, c, " ")
      printf "{\"rps\":%s,\"p50_ms\":%s,\"p90_ms\":%s,\"p99_ms\":%s,\"p999_ms\":%s,\"max_ms\":%s,\"non_2xx\":%d,\"socket_errors\":%d,\"server_cpu_pct\":%s,\"core_busy_pct\":[%s]}\n",
        rps, p50, p90, p99, (p999 == "" ? "null" : p999), max, non, errors, cpu / hz / secs * 100, (c[3] - c[1]) / (c[4] - c[2]) * 100
    }' <<<"$out")"
  echo "$label: $(grep -E 'Requests/sec' <<<"$out")" >&2
}

echo "== $(date -u +%FT%TZ), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)); $rounds rounds of $seconds s x $connections connections"
# The commit measured, "+" when the tree had changes: taken now, before this run's
# own record makes benches/results.tsv a change.
measured=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo '+')
echo "   wechat-api $measured, $(stat -c %s "$bin") bytes"

# --- the reference: a static nginx, one worker, no access log --------------------
nginx_bin=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
worker=""
if [ -z "$nginx_bin" ]; then
  echo "   nginx not found, skipping the reference: apt-get install -y nginx-light" >&2
else
  nginx_conf "    listen 127.0.0.1:$nginx_port;
    listen 127.0.0.1:$nginx_tls_port ssl;
    ssl_certificate $demo/certs/server.crt;
    ssl_certificate_key $demo/certs/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;"
  taskset -c 0 "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx/stderr.log" 2>&1 &
  nginx_pid=$!
  pids+=("$nginx_pid")
  live_ms "http://127.0.0.1:$nginx_port/" "$(date +%s%N)" >/dev/null
  worker=$(cat "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null || pgrep -P "$nginx_pid")
  worker=${worker%% *}
  echo "== nginx $("$nginx_bin" -v 2>&1 | sed 's|.*/||'): master $nginx_pid, worker $worker"
fi

# --- wechat-api --------------------------------------------------------------------
taskset -c 1 "$loadgen" fake-api --listen "127.0.0.1:$fake_port" >"$work/fake.log" 2>&1 &
pids+=("$!")
"$loadgen" wait --url "http://127.0.0.1:$fake_port/stats" >/dev/null

start_service() { # sets pid, and t0 just before the exec
  t0=$(date +%s%N)
  "${clean[@]}" "${service_env[@]}" taskset -c 0 "$bin" serve --demo >>"$work/service.log" 2>&1 &
  pid=$!
  pids+=("$pid")
}
start_service
live_fresh=$(live_ms "http://127.0.0.1:$http_port/api/health/live" "$t0")
kill "$pid"
wait "$pid" || true
start_service
live_restart=$(live_ms "http://127.0.0.1:$http_port/api/health/live" "$t0")
sleep 2 # the first supervisor round, token fetches, kf syncer start
idle_rss=$(rss_kib "$pid")
echo "== wechat-api: pid $pid, live after $live_fresh ms (empty store), $live_restart ms (restart); idle RSS $(mib "$idle_rss")"

# The journal not yet handled (the dispatcher works through it after a run).
backlog() {
  command -v sqlite3 >/dev/null 2>&1 || return 1
  sqlite3 -readonly "$demo/wechat-api.sqlite3" "SELECT COUNT(*) FROM journal WHERE id > (SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'journal_handled_through')" 2>/dev/null
}
# The same distinct callbacks from wrk, as an outside benchmark sends them: made
# beforehand (benches/wrk-callbacks.lua), each posted once, chat-sized bodies.
wrk_callbacks() { # LABEL URL
  local count=${COMPARE_WRK_BODIES:-$((40000 * seconds))}
  "$loadgen" bodies --count "$count" --out "$work/bodies" --config "$demo/demo.toml"
  wrk_args=(-- "$work/bodies")
  wrk_run "$1" "$2" "$pid" -s "$repo/benches/wrk-callbacks.lua"
  wrk_args=()
  if [ "${wrk_requests:-0}" -gt "$count" ]; then
    echo "   warning: wrk sent $wrk_requests of $count distinct callbacks: some were duplicates (raise COMPARE_WRK_BODIES)" >&2
  fi
}
service_run() { # LABEL MODE URL (MODE wrk: wrk_callbacks)
  local commits ops left
  commits=$(metric wechat_api_store_commits_total)
  ops=$(metric wechat_api_store_operations_total)
  if [ "$2" = wrk ]; then wrk_callbacks "$1" "$3"; else measure "$1" "$2" "$3" "$pid"; fi
  # Let the dispatcher finish the backlog so that it does not share the next run's
  # core, and the metrics upkeep (every second) copy the store's counters.
  sleep 2
  for _ in $(seq 300); do
    left=$(backlog) || break
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  per_commit[$1#$round]=$(ratio "$(($(metric wechat_api_store_operations_total) - ops))" "$(($(metric wechat_api_store_commits_total) - commits))")
}

for ((round = 1; round <= rounds; round++)); do
  echo "== round $round of $rounds"
  if [ -n "$worker" ]; then
    measure "nginx return 200, plain" get "http://127.0.0.1:$nginx_port/" "$worker"
    measure "nginx return 200, TLS" get "https://127.0.0.1:$nginx_tls_port/" "$worker"
    if command -v wrk >/dev/null 2>&1; then
      wrk_run "nginx return 200, plain (wrk)" "http://127.0.0.1:$nginx_port/" "$worker"
    fi
  fi
  service_run "wechat-api distinct, plain" distinct "http://127.0.0.1:$http_port"
  if command -v wrk >/dev/null 2>&1; then
    service_run "wechat-api distinct, plain (wrk)" wrk "http://127.0.0.1:$http_port"
  fi
  service_run "wechat-api distinct, TLS" distinct "https://127.0.0.1:$https_port"
  service_run "wechat-api duplicate, plain" duplicate "http://127.0.0.1:$http_port"
  service_run "wechat-api kf notices, plain" kf "http://127.0.0.1:$http_port"
done
after_rss=$(rss_kib "$pid")
peak_rss=$(hwm_kib "$pid")
fake_stats=$(curl -s "http://127.0.0.1:$fake_port/stats" || echo "{}")
callbacks=$(curl -s "http://127.0.0.1:$http_port/metrics" | awk '/^wechat_api_callbacks_total/ && $2 != 0' || true)

# --- the tables ---------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
median_round() { # LABEL: the round whose req/s is the median
  local r
  for ((r = 1; r <= rounds; r++)); do echo "$(field "${result[$1#$r]}" rps) $r"; done |
    sort -g | awk '{ r[NR] = $2 } END { print r[int((NR + 1) / 2)] }'
}
echo
echo "Median of $rounds round(s) (the run with the median req/s), $seconds s x $connections connections each:"
echo
echo "| run | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | socket errors | server CPU % | core 0 busy % | loadgen CPU % | ops/commit |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for label in "${labels[@]}"; do
  m=$(median_round "$label")
  r=${result[$label#$m]}
  echo "| $label | $(num "$(field "$r" rps)" 0) | $(num "$(field "$r" p50_ms)" 2) | $(num "$(field "$r" p90_ms)" 2)" \
    "| $(num "$(field "$r" p99_ms)" 2) | $(num "$(field "$r" p999_ms)" 2) | $(num "$(field "$r" max_ms)" 2) | $(field "$r" non_2xx) | $(field "$r" socket_errors)" \
    "| $(num "$(field "$r" server_cpu_pct)" 0) | $(num "$(core0 "$r")" 0) | $(num "$(field "$r" loadgen_cpu_pct)" 0)" \
    "| ${per_commit[$label#$m]:--} |"
done
ratios() { # A B: rps(A) / rps(B) of each round, sorted
  local r
  for ((r = 1; r <= rounds; r++)); do
    ratio "$(field "${result[$1#$r]}" rps)" "$(field "${result[$2#$r]}" rps)"
    echo
  done | sort -g
}
ratio_row() { # NAME A B GOAL: the median over rounds of rps(A) / rps(B), and its range
  local values
  [ -n "${result[$2#1]:-}" ] && [ -n "${result[$3#1]:-}" ] || return 0
  values=$(ratios "$2" "$3")
  echo "| $1 | $(median <<<"$values") | $(head -n 1 <<<"$values") – $(tail -n 1 <<<"$values") | $4 |"
}
echo
echo "| ratio (within a round) | median | range | goal |"
echo "| --- | ---: | ---: | --- |"
ratio_row "durable plain / nginx plain" "wechat-api distinct, plain" "nginx return 200, plain" "≥ 0.50"
ratio_row "durable plain / nginx plain, both wrk" "wechat-api distinct, plain (wrk)" "nginx return 200, plain (wrk)" "≥ 0.50"
ratio_row "TLS / plain, wechat-api" "wechat-api distinct, TLS" "wechat-api distinct, plain" "≥ 0.80"
ratio_row "TLS / plain, nginx" "nginx return 200, TLS" "nginx return 200, plain" "reference"
ratio_row "durable TLS / nginx TLS" "wechat-api distinct, TLS" "nginx return 200, TLS" ""
ratio_row "duplicate / nginx plain" "wechat-api duplicate, plain" "nginx return 200, plain" ""
ratio_row "kf notices / distinct, plain" "wechat-api kf notices, plain" "wechat-api distinct, plain" ""
ratio_row "nginx plain: loadgen / wrk" "nginx return 200, plain" "nginx return 200, plain (wrk)" "1.00 = not generator-bound"
echo
echo "| measure | value | goal |"
echo "| --- | ---: | --- |"
echo "| start-up to live, empty store | $live_fresh ms | ≤ 200 ms |"
echo "| start-up to live, restart | $live_restart ms | ≤ 200 ms |"
echo "| idle RSS | $(mib "$idle_rss") | ≤ 16 MiB |"
echo "| RSS after the load | $(mib "$after_rss") | ≤ 32 MiB |"
echo "| peak RSS (VmHWM) | $(mib "$peak_rss") | |"
echo "| release binary | $(awk -v b="$(stat -c %s "$bin")" 'BEGIN { printf "%.1f MiB", b / 1048576 }') | reported |"
echo
echo "Where the service's time went over all runs (from /metrics; a percentile is the"
echo "upper bound of its histogram bucket; the client's latency minus the callback's is"
echo "time outside the handler: the socket, the worker's queue, the other threads on core 0):"
echo
stage_table "http://127.0.0.1:$http_port/metrics"
echo
echo "fake API: $fake_stats"
echo "$callbacks"

# --- the record: this run beside the previous ones (benches/results.tsv) -----------
# One line per run: when, which commit, the machine, the client, then the durable
# path's median req/s, its ratio to nginx within the rounds (the number that
# travels between machines), p50 and p99 in ms, and RSS after the load. A run is
# compared with the last one recorded on the same machine and client: the durable
# path losing more than 10 % of its ratio, or its p99 growing more than 25 %, is
# called out. COMPARE_RECORD=0 measures without recording, as does BIN= (a build
# of some other commit: the record would name the wrong one).
results=$repo/benches/results.tsv
machine="$(nproc)x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo | tr -s ' \t' '  ')"
record() { # CLIENT DURABLE_LABEL NGINX_LABEL
  local m r now_ratio now_p99 previous
  [ -n "${result[$2#1]:-}" ] && [ -n "${result[$3#1]:-}" ] || return 0
  m=$(median_round "$2")
  r=${result[$2#$m]}
  now_ratio=$(ratios "$2" "$3" | median)
  now_p99=$(field "$r" p99_ms)
  previous=""
  if [ -f "$results" ]; then
    previous=$(awk -F'\t' -v machine="$machine" -v client="$1" '$3 == machine && $4 == client' "$results" | tail -n 1)
  fi
  if [ "${COMPARE_RECORD:-1}" != 0 ] && [ -z "${BIN:-}" ]; then
    [ -f "$results" ] || printf 'date\tcommit\tmachine\tclient\tdurable_rps\tratio_to_nginx\tp50_ms\tp99_ms\trss_after_kib\n' >"$results"
    printf '%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$measured" \
      "$machine" "$1" "$(field "$r" rps)" "$now_ratio" "$(field "$r" p50_ms)" "$now_p99" "$after_rss" >>"$results"
  fi
  [ -n "$previous" ] || { echo "- $1: first record on this machine ($results)"; return 0; }
  awk -F'\t' -v client="$1" -v ratio="$now_ratio" -v p99="$now_p99" '{
    lost = 1 - ratio / $6; grew = p99 / $8 - 1
    printf "- %s, against %s (%s): ratio to nginx %.2f -> %.2f (%+.0f %%), p99 %.2f -> %.2f ms (%+.0f %%)\n", client, $2, $1, $6, ratio, -lost * 100, $8, p99, grew * 100
    if (lost > 0.10) printf "  REGRESSION: the durable path lost %.0f %% of its ratio to nginx (more than 10 %%)\n", lost * 100
    if (grew > 0.25) printf "  REGRESSION: its p99 grew %.0f %% (more than 25 %%)\n", grew * 100
  }' <<<"$previous"
}
echo
echo "Against the previous record:"
record loadgen "wechat-api distinct, plain" "nginx return 200, plain"
record wrk "wechat-api distinct, plain (wrk)" "nginx return 200, plain (wrk)"
