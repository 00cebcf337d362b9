#!/usr/bin/env bash
# Set up and run berthd in the foreground with the defaults.
#
#   hack/run.sh [BERTHD FLAGS...]
#
# Installs the prerequisites (hack/install.sh), builds berthd in release
# mode, writes a CNI bridge config to /etc/cni/net.d if none exists, and
# runs berthd: socket /run/berth/berth.sock, root /var/lib/berth, runc.
# Flags are passed to berthd (e.g. --log-level debug). Stop it with Ctrl-C.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
    -h | --help) usage 0 ;;
esac
require_root
cd "$REPO"
"$REPO/hack/install.sh"
. "$REPO/hack/env.sh"
build_release
"$REPO/hack/cni-config.sh"
exec "${CARGO_TARGET_DIR:-$REPO/target}/release/berthd" "$@"
