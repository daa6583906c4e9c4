#!/usr/bin/env bash
# Replicas measured (issue 12), in one run on one machine: durable distinct
# callbacks per second and their latency at the same connections, for
#   1. one service on SQLite (the default),
#   2. one replica on PostgreSQL (a throwaway local cluster, fsync and
#      synchronous_commit on),
#   3. three replicas on that PostgreSQL behind HAProxy in mode tcp,
# plus PostgreSQL's commits and rows per commit during run 2.
#
#   benches/replicas.sh [SECONDS] [CONNECTIONS]     (as root: initdb runs as postgres)
#
# Needs postgresql and haproxy (Debian). Plain HTTP on loopback, so the numbers are
# the store's and not TLS's; everything shares this machine's cores, so run 3
# measures coordination, not scale-out.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-64}
base=${REPLICAS_PORT_BASE:-18190}
fake_port=$base
pg_port=$((base + 1))
lb_port=$((base + 2))

source benches/common.sh

pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
# Not under $work (0700, root's): the postgres user must reach it.
pg=$(mktemp -d /tmp/wechat-api-bench-pg.XXXXXX)
chown postgres:postgres "$pg"
as_postgres() { runuser -u postgres -- "$@"; }
as_postgres "$pg_bin/initdb" -D "$pg" -A trust -U postgres --no-sync >/dev/null
as_postgres "$pg_bin/pg_ctl" -D "$pg" -l "$pg/log" -w start \
  -o "-p $pg_port -k $pg -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200" >/dev/null
stop_pg() {
  as_postgres "$pg_bin/pg_ctl" -D "$pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$pg"
}
trap 'stop_pg; cleanup' EXIT
psql_q() { psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "$1" -Atc "$2"; }
psql_q postgres "CREATE DATABASE bench" >/dev/null

taskset -c 1 "$loadgen" fake-api --listen "127.0.0.1:$fake_port" >"$work/fake.log" 2>&1 &
pids+=("$!")
"$loadgen" wait --url "http://127.0.0.1:$fake_port/stats" >/dev/null

field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^],\"}]*\).*/\1/p" <<<"$1"; }
num() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == "") printf "-"; else printf "%.*f", d, v }'; }

# serve NAME HTTP_PORT [VAR=VALUE…]: a service on the demo configuration.
serve() {
  local name=$1 port=$2
  shift 2
  "${clean[@]}" "DATA_DIR=$work/data-$name" "HTTPS_PORT=0" "HTTP_PORT=$port" "BIND_ADDRESS=127.0.0.1" \
    "WECHAT_API_CONFIG=$demo/demo.toml" "WECOM_API_BASE_URL=http://127.0.0.1:$fake_port" \
    "REPLICA_ID=$name" "$@" "$bin" serve >>"$work/$name.log" 2>&1 &
  pids+=("$!")
  "$loadgen" wait --url "http://127.0.0.1:$port/api/health/live" >/dev/null
}
measure() { # LABEL URL
  local out
  out=$("${clean[@]}" "$loadgen" run --label "$1" --mode distinct --url "$2" \
    -c "$connections" -d "$seconds" --config "$demo/demo.toml" --json)
  printf '%-44s %9s req/s   p50 %6s ms   p99 %7s ms   non-2xx %s\n' "$1" "$(num "$(field "$out" rps)" 0)" \
    "$(num "$(field "$out" p50_ms)" 2)" "$(num "$(field "$out" p99_ms)" 2)" "$(field "$out" non_2xx)"
}

url="postgres://postgres@127.0.0.1:$pg_port/bench?sslmode=disable"
echo "== $connections connections, ${seconds} s each, distinct callbacks over plain HTTP, $(nproc) cores"

serve sqlite $((base + 10))
measure "1. SQLite, one service" "http://127.0.0.1:$((base + 10))"
sleep 5
stage_table "http://127.0.0.1:$((base + 10))/metrics"

serve pg-1 $((base + 11)) "DATABASE_URL=$url"
commits_before=$(psql_q bench "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")
rows_before=$(psql_q bench "SELECT COUNT(*) FROM journal")
measure "2. PostgreSQL, one replica" "http://127.0.0.1:$((base + 11))"
commits=$(($(psql_q bench "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'") - commits_before))
rows=$(($(psql_q bench "SELECT COUNT(*) FROM journal") - rows_before))
echo "   PostgreSQL: $commits commits ($((commits / seconds))/s, all kinds), $rows journal rows, $(awk -v r="$rows" -v c="$commits" 'BEGIN { printf "%.1f", c ? r / c : 0 }') rows per commit"
sleep 2 # the metrics upkeep folds the histograms every second
stage_table "http://127.0.0.1:$((base + 11))/metrics"

serve pg-2 $((base + 12)) "DATABASE_URL=$url"
serve pg-3 $((base + 13)) "DATABASE_URL=$url"
cat >"$work/haproxy.cfg" <<EOF
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend callbacks
    bind 127.0.0.1:$lb_port
    default_backend replicas
backend replicas
    balance roundrobin
    server pg-1 127.0.0.1:$((base + 11))
    server pg-2 127.0.0.1:$((base + 12))
    server pg-3 127.0.0.1:$((base + 13))
EOF
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=("$!")
"$loadgen" wait --url "http://127.0.0.1:$lb_port/api/health/live" >/dev/null
measure "3. PostgreSQL, three replicas behind HAProxy" "http://127.0.0.1:$lb_port"
