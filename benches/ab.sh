#!/usr/bin/env bash
# Same-run A/B of builds of wechat-api on the durable callback path, as wrk sees
# it: for each round, nginx `return 200` (the ceiling) and then every build given,
# in an order that alternates between rounds, each on a FRESH store, the server
# pinned to core 0 and wrk (one thread, benches/wrk-callbacks.lua, distinct
# chat-sized bodies from `loadgen bodies`) to core 1. On a shared, noisy machine
# only the comparison within one run means anything: absolute numbers do not.
#
#   AB_BINS="before=/tmp/ab/before after=target/release/wechat-api" \
#     benches/ab.sh [seconds] [connections] [rounds]        (defaults: 10 s, 64, 3)
#
# Optional: PERF_OUT=DIR records `perf record` (PERF_ARGS, default DWARF call
# graphs: the release profile has no frame pointers) of each build's last run to
# DIR/NAME.perf.data (perf at /usr/bin/perf; build with --profile profiling to
# see symbols; benches/perf-attribute.py sums it up by part of the callback
# path); AB_SERVICE_ENV="NAME=VALUE ..." extra environment for the service;
# METRICS_OUT=DIR keeps each run's /metrics as DIR/NAME-ROUND.prom (the stage
# histograms' buckets, for the tail).
# Prints one line per run and, per build, the medians over rounds: req/s, the
# ratio to nginx within the round, wrk's p50/p99/p99.9/max, the service's own stage
# means from /metrics, ops per commit, RSS idle and after the load, and KiB the
# service wrote to disk per callback (/proc/PID/io: WAL, checkpoints), and its CPU
# time per callback in µs (/proc/PID/stat), the figure a busy machine disturbs least.
#
# Needs taskset, curl, wrk, nginx (Debian: nginx-light) and a loadgen binary
# (LOADGEN, default target/release/examples/loadgen; any profile works: it only
# makes the bodies and serves the fake WeCom API).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
seconds=${1:-10}
connections=${2:-64}
rounds=${3:-3}
base=${AB_PORT_BASE:-18290}
nginx_port=$base
http_port=$((base + 3))
https_port=$((base + 2))
fake_port=$((base + 5))
loadgen=${LOADGEN:-$repo/target/release/examples/loadgen}
read -r -a bins <<<"${AB_BINS:?AB_BINS=\"name=path ...\"}"
[ -x "$loadgen" ] || { echo "no loadgen at $loadgen (cargo build --example loadgen)" >&2; exit 1; }

# shellcheck source=benches/work.sh
source benches/work.sh
first_bin=${bins[0]#*=}
"${clean[@]}" "DATA_DIR=$demo" "$first_bin" sign --demo >/dev/null
read -r -a extra_env <<<"${AB_SERVICE_ENV:-}"
service_env=(
  "DATA_DIR=$demo" "HTTPS_PORT=$https_port" "HTTP_PORT=$http_port" "BIND_ADDRESS=127.0.0.1"
  "WECOM_API_BASE_URL=http://127.0.0.1:$fake_port" "WECOM_KF_SECRET=compare-kf-secret" ${extra_env[@]+"${extra_env[@]}"}
)

# The reference nginx (benches/work.sh), plain only.
nginx_conf "    listen 127.0.0.1:$nginx_port;"
taskset -c 0 /usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx/stderr.log" 2>&1 &
pids+=("$!")
taskset -c 1 "$loadgen" fake-api --listen "127.0.0.1:$fake_port" >"$work/fake.log" 2>&1 &
pids+=("$!")
"$loadgen" wait --url "http://127.0.0.1:$nginx_port/" >/dev/null
"$loadgen" wait --url "http://127.0.0.1:$fake_port/stats" >/dev/null

count=${AB_BODIES:-$((40000 * seconds))}
"$loadgen" bodies --count "$count" --out "$work/bodies" --config "$demo/demo.toml"

# wrk's output as "rps p50 p99 p99.9 max non-2xx" (ms; p99.9 from the script's done()).
wrk_run() { # URL [SCRIPT BODIES]
  local url=$1
  local script=()
  [ $# -lt 3 ] || script=(-s "$2" "$url" -- "$3")
  [ $# -ge 3 ] || script=("$url")
  taskset -c 1 wrk -t1 -c"$connections" -d"${seconds}s" --latency "${script[@]}" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    $1 == "Latency" && NF >= 4 { max = ms($4) }
    $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) } $1 == "p99.9" { p999 = ms($2) }
    /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { non = $NF }
    END { printf "%.0f %.2f %.2f %.2f %.2f %d\n", rps, p50, p99, p999, max, non }'
}
# The service's stage means (ms) and ops/commit from /metrics.
stages() {
  curl -s "http://127.0.0.1:$http_port/metrics" | awk '
    /^wechat_api_callback_duration_seconds_sum/ { cs += $2 } /^wechat_api_callback_duration_seconds_count/ { cc += $2 }
    /^wechat_api_store_stage_seconds_sum/ { match($1, /stage="[a-z]+"/); s[substr($1, RSTART + 7, RLENGTH - 8)] = $2 }
    /^wechat_api_store_stage_seconds_count/ { match($1, /stage="[a-z]+"/); c[substr($1, RSTART + 7, RLENGTH - 8)] = $2 }
    function mean(k) { return (c[k] > 0 ? s[k] / c[k] * 1000 : 0) }
    END { printf "%.3f %.3f %.3f %.3f %.1f\n", (cc > 0 ? cs / cc * 1000 : 0), mean("queue"), mean("execute"), mean("commit"), (c["commit"] > 0 ? c["queue"] / c["commit"] : 0) }'
}
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
written() { awk '/^write_bytes:/ {print $2}' "/proc/$1/io"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "== $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds of $seconds s x $connections connections; $count bodies"
# The columns after build, round and req/s: one format and one list of names
# for the rows and both headers, so that a new column is added once.
columns="ratio p50 p99 p99.9 max callback queue execute commit ops/c idle_kib after_kib disk_kib cpu_us"
columns_format='%6s %7s %7s %7s %8s %9s %8s %8s %8s %7s %8s %8s %7s %7s\n'
# shellcheck disable=SC2086 # one word per column
printf "%-10s %5s %8s $columns_format" build round req/s $columns
results=$work/results
for ((round = 1; round <= rounds; round++)); do
  read -r n_rps _ <<<"$(wrk_run "http://127.0.0.1:$nginx_port/")"
  printf '%-10s %5d %8d\n' nginx "$round" "$n_rps"
  order=("${bins[@]}")
  if ((round % 2 == 0)); then
    order=()
    for ((i = ${#bins[@]} - 1; i >= 0; i--)); do order+=("${bins[i]}"); done
  fi
  for entry in "${order[@]}"; do
    name=${entry%%=*}
    bin=${entry#*=}
    rm -f "$demo"/wechat-api.sqlite3*
    "${clean[@]}" "${service_env[@]}" taskset -c 0 "$bin" serve --demo >>"$work/service-$name.log" 2>&1 &
    pid=$!
    "$loadgen" wait --url "http://127.0.0.1:$http_port/api/health/live" --timeout 20 >/dev/null
    sleep 2
    idle=$(rss "$pid")
    written_before=$(written "$pid")
    cpu_before=$(cpu_ticks "$pid")
    perf_pid=""
    if [ -n "${PERF_OUT:-}" ] && ((round == rounds)); then
      mkdir -p "$PERF_OUT"
      # shellcheck disable=SC2086 # PERF_ARGS is words
      perf record ${PERF_ARGS:---call-graph dwarf,16384 -F 499} -p "$pid" -o "$PERF_OUT/$name.perf.data" -- sleep "$seconds" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    read -r rps p50 p99 p999 max non <<<"$(wrk_run "http://127.0.0.1:$http_port" "$repo/benches/wrk-callbacks.lua" "$work/bodies")"
    [ -n "$perf_pid" ] && wait "$perf_pid"
    after=$(rss "$pid")
    # The service's CPU time per callback, in µs: what a noisy machine disturbs least.
    cpu_us=$(awk -v t="$(($(cpu_ticks "$pid") - cpu_before))" -v hz="$(getconf CLK_TCK)" -v r="$rps" -v s="$seconds" 'BEGIN { printf "%.1f", (r > 0 ? t / hz * 1e6 / (r * s) : 0) }')
    kib_per_callback=$(awk -v w="$(($(written "$pid") - written_before))" -v r="$rps" -v s="$seconds" 'BEGIN { printf "%.2f", (r > 0 ? w / 1024 / (r * s) : 0) }')
    sleep 2 # the metrics upkeep copies the store's counters every second
    read -r callback queue execute commit per_commit <<<"$(stages)"
    if [ -n "${METRICS_OUT:-}" ]; then
      mkdir -p "$METRICS_OUT"
      curl -s "http://127.0.0.1:$http_port/metrics" >"$METRICS_OUT/$name-$round.prom"
    fi
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    ratio=$(awk -v a="$rps" -v b="$n_rps" 'BEGIN { printf "%.3f", a / b }')
    printf "%-10s %5d %8d $columns_format" "$name" "$round" "$rps" "$ratio" "$p50" "$p99" "$p999" "$max" \
      "$callback" "$queue" "$execute" "$commit" "$per_commit" "$idle" "$after" "$kib_per_callback" "$cpu_us"
    [ "$non" = 0 ] || echo "   warning: $name answered $non non-2xx" >&2
    echo "$name $rps $ratio $p50 $p99 $p999 $max $callback $queue $execute $commit $per_commit $idle $after $kib_per_callback $cpu_us" >>"$results"
  done
done
echo
echo "Medians over $rounds rounds (ratio: req/s over nginx's in the same round):"
# shellcheck disable=SC2086 # one word per column
printf "%-10s %8s $columns_format" build req/s $columns
for entry in "${bins[@]}"; do
  name=${entry%%=*}
  line=""
  for col in $(seq 2 "$(awk '{ print NF; exit }' "$results")"); do
    line+="$(awk -v n="$name" -v c="$col" '$1 == n { print $c }' "$results" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }') "
  done
  # shellcheck disable=SC2086 # one word per column
  printf "%-10s %8s $columns_format" "$name" $line
done
