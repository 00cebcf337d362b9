#!/usr/bin/env bash
# Fuzz every target of every cargo-fuzz crate in the repository for a while.
#
#   hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Finds each crate's fuzz crate (`<crate>/fuzz/Cargo.toml` with
# `cargo-fuzz = true`: today imageservice/fuzz, shim/fuzz, agent/fuzz; a
# new one is picked up without editing this script), lists its targets
# with `cargo fuzz list`, and runs each with the nightly toolchain for
# SECONDS_PER_TARGET (default 60). TARGET names limit the run, as `NAME`
# or `CRATE/NAME` (`shim/cri_log`). Needs cargo-fuzz and nightly
# (hack/install.sh installs cargo-fuzz and checks for nightly);
# apply_layer needs root. A crash fails the run and leaves its input in
# <crate>/fuzz/artifacts/<target>/. Prints each crate's and the whole
# run's time.
#
# Every fuzz crate builds into one target dir, BERTH_FUZZ_TARGET_DIR
# (default /var/cache/berth/fuzz-target): the crates share most of their
# dependencies, and a clean clone (CI) reuses what an earlier run built
# instead of building berthd's gRPC stack under the sanitizer again.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
    -h | --help) usage 0 ;;
esac
seconds=${1:-60}
shift || true
wanted=("$@")
. "$REPO/hack/env.sh"
command -v cargo-fuzz >/dev/null || die "cargo-fuzz not found: run hack/install.sh"
rustup toolchain list | grep -q '^nightly' || die "cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)"

# wanted CRATE TARGET: true when no TARGET was named or this one was.
is_wanted() {
    [ ${#wanted[@]} -eq 0 ] && return 0
    local w
    for w in "${wanted[@]}"; do
        [ "$w" = "$2" ] || [ "$w" = "$1/$2" ] && return 0
    done
    return 1
}

target_dir=${BERTH_FUZZ_TARGET_DIR:-/var/cache/berth/fuzz-target}
mkdir -p "$target_dir"

started=$SECONDS
ran=0
for manifest in "$REPO"/*/fuzz/Cargo.toml; do
    [ -f "$manifest" ] || continue
    grep -Eq '^cargo-fuzz *= *true' "$manifest" || continue
    crate_dir=$(dirname "$(dirname "$manifest")")
    crate=$(basename "$crate_dir")
    crate_started=$SECONDS
    targets=$(cd "$crate_dir" && cargo +nightly fuzz list)
    for target in $targets; do
        is_wanted "$crate" "$target" || continue
        note "fuzzing $crate/$target for ${seconds} s"
        (cd "$crate_dir" && cargo +nightly fuzz run --target-dir "$target_dir" "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048)
        ran=$((ran + 1))
    done
    note "$crate/fuzz: $((SECONDS - crate_started)) s (builds included)"
done
[ "$ran" -gt 0 ] || die "no fuzz target matched: ${wanted[*]:-(none found)}"
note "$ran fuzz targets in $((SECONDS - started)) s"
