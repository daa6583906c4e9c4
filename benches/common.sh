# Shared by benches/compare.sh and benches/soak.sh (sourced, not run): builds the
# shipped binary and the load generator, makes a work directory that is removed on
# exit with every process listed in `pids`, and the demo configuration in it.
#
# Two builds: the binary measured is exactly the shipped one (the example's
# dev-dependencies would otherwise add features to shared crates).
# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing script
cargo build --release --quiet --bin wechat-api
cargo build --release --quiet --example loadgen
repo=$PWD
bin=$PWD/target/release/wechat-api
loadgen=$PWD/target/release/examples/loadgen
work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Nothing from the caller's environment or a .env reaches the service.
clean=(env -i "PATH=$PATH" "HOME=$work")
demo=$work/demo
cd "$work" || exit
# The demo configuration (Token, key, corp id, self-signed certificate), made before
# any timed start so that start-up is measured without key generation.
"${clean[@]}" "DATA_DIR=$demo" "$bin" sign --demo >/dev/null
