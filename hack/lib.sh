# Shared helpers for the hack/ scripts.  Source it, do not run it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sets REPO (the repository root, found from this file's location) and SHARED
# (the shared directory next to the repository: $REPO/../shared, or $BERTH_SHARED).
# The caller sets `set -euo pipefail` itself.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034  # used by the scripts that source this file
SHARED=${BERTH_SHARED:-$REPO/../shared}
PROG=${PROG:-$(basename "$0")}

# containerd 2.4, hack/bench's reference runtime: hack/install.sh builds it
# and its runc shim into $CONTAINERD_DIR/bin, hack/bench/run.sh runs them.
# shellcheck disable=SC2034
CONTAINERD_VERSION=v2.4.2
# shellcheck disable=SC2034
CONTAINERD_DIR=${CONTAINERD_DIR:-/var/cache/berth/containerd-$CONTAINERD_VERSION}

# die MESSAGE...: print "PROG: MESSAGE" on stderr and exit 1.
die() {
    echo "$PROG: $*" >&2
    exit 1
}

# note MESSAGE...: print "PROG: MESSAGE" on stderr, keep going.
note() {
    echo "$PROG: $*" >&2
}

# usage: print the comment block at the top of the calling script (from line 2
# to the first line that is not a comment) and exit with $1 (default 2).
usage() {
    sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$0" >&2
    exit "${1:-2}"
}

# quietly DESCRIPTION CMD [ARGS...]: run CMD with stdout+stderr captured; on
# failure print DESCRIPTION, the command's output and exit 1.
quietly() {
    local what=$1 log rc=0
    shift
    log=$(mktemp "${TMPDIR:-/tmp}/berth-hack.XXXXXX")
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "$PROG: $what failed (exit $rc): $*" >&2
        sed 's/^/    /' "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}

# require_root: exit unless running as root.
require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
}

# proc_is PID WORD: true when process PID is alive and its command line
# contains WORD (guards against killing a recycled PID).
proc_is() {
    local pid=$1 word=$2
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$word"
}

# Builds the release binaries berthd runs with: berthd and berth-init, then
# the shim linked statically. One shim runs per container, so its resident
# memory counts many times; a static binary maps no shared libraries (about
# 1 MB less per shim) and keeps working across libc upgrades, as containerd's
# Go shims do. `cargo build -p berth-shim` would relink it dynamically, so
# the shim is built last and on its own.
build_release() {
    (cd "$REPO" &&
        cargo build --release --locked -p berth-agent &&
        cargo rustc --release --locked -p berth-shim --bin containerd-shim-berth-v2 \
            -- -C target-feature=+crt-static)
}
