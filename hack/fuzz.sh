#!/usr/bin/env bash
# Fuzz the image service's parsers and the layer applier for a while.
#
#   hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs cargo-fuzz and the nightly toolchain (hack/install.sh installs
# cargo-fuzz and checks for nightly) and runs each target of
# imageservice/fuzz (reference, manifest, image_config, apply_layer) with
# the nightly toolchain for SECONDS_PER_TARGET (default 60). apply_layer
# needs root. Crashes land in imageservice/fuzz/artifacts/<target>/.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
    -h | --help) usage 0 ;;
esac
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(reference manifest image_config apply_layer)
. "$REPO/hack/env.sh"
command -v cargo-fuzz >/dev/null || die "cargo-fuzz not found: run hack/install.sh"
rustup toolchain list | grep -q '^nightly' || die "cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)"
cd "$REPO/imageservice"
for target in "${targets[@]}"; do
    note "fuzzing $target for ${seconds} s"
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
