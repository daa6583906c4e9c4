# Shared by benches/compare.sh and benches/soak.sh (sourced, not run): builds the
# shipped binary and the load generator, then makes the work directory
# (benches/work.sh) and the demo configuration in it.
#
# Two builds: the binary measured is exactly the shipped one (the example's
# dev-dependencies would otherwise add features to shared crates).
# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing script
cargo build --release --quiet --bin wechat-api
cargo build --release --quiet --example loadgen
repo=$PWD
bin=$PWD/target/release/wechat-api
loadgen=$PWD/target/release/examples/loadgen
# shellcheck source=benches/work.sh
source benches/work.sh
cd "$work" || exit
# The demo configuration (Token, key, corp id, self-signed certificate), made before
# any timed start so that start-up is measured without key generation.
"${clean[@]}" "DATA_DIR=$demo" "$bin" sign --demo >/dev/null
