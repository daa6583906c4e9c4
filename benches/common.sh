# Shared by benches/compare.sh, benches/replicas.sh and benches/soak.sh (sourced,
# not run): builds the shipped binary and the load generator, then makes the work
# directory (benches/work.sh) and the demo configuration in it; `stage_table`.
#
# Two builds: the binary measured is exactly the shipped one (the example's
# dev-dependencies would otherwise add features to shared crates). BIN=PATH
# measures another build of it instead (an older commit's, for a before/after).
# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing script
cargo build --release --quiet --bin wechat-api
cargo build --release --quiet --example loadgen
repo=$PWD
bin=${BIN:-$PWD/target/release/wechat-api}
loadgen=$PWD/target/release/examples/loadgen
# shellcheck source=benches/work.sh
source benches/work.sh
cd "$work" || exit
# The demo configuration (Token, key, corp id, self-signed certificate), made before
# any timed start so that start-up is measured without key generation.
"${clean[@]}" "DATA_DIR=$demo" "$bin" sign --demo >/dev/null

# stage_table METRICS_URL: where the service's time went, from its /metrics, as a
# Markdown table: the callback's duration and each store stage, their count, mean,
# and the upper bounds of the buckets that hold p50 and p99.
stage_table() {
  echo "| histogram | count | mean ms | p50 ≤ ms | p99 ≤ ms |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  { curl -s "$1" || true; } | awk '
    /^wechat_api_(callback_duration|store_stage)_seconds_(bucket|sum|count)/ {
      name = $1; sub(/_(bucket|sum|count).*/, "", name); sub(/^wechat_api_/, "", name)
      stage = ""; if (match($1, /stage="[a-z]+"/)) stage = " " substr($1, RSTART + 7, RLENGTH - 8)
      key = name stage
      if ($1 ~ /_count/) count[key] = $2
      else if ($1 ~ /_sum/) sum[key] = $2
      else if (match($1, /le="[^"]+"/)) { n[key]++; le[key, n[key]] = substr($1, RSTART + 4, RLENGTH - 5); cum[key, n[key]] = $2 }
      if (!(key in seen)) { seen[key] = 1; order[++keys] = key }
    }
    function pct(key, q,   i) { for (i = 1; i <= n[key]; i++) if (cum[key, i] >= q * count[key]) return le[key, i] == "+Inf" ? "inf" : sprintf("%.2f", le[key, i] * 1000); return "-" }
    END { for (k = 1; k <= keys; k++) { key = order[k]; if (count[key] > 0) printf "| %s | %d | %.3f | %s | %s |\n", key, count[key], sum[key] / count[key] * 1000, pct(key, 0.5), pct(key, 0.99) } }'
}
