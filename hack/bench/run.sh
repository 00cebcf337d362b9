#!/usr/bin/env bash
# Benchmark berth side by side with containerd on this machine; run as root.
#
#   hack/bench/run.sh [--short]
#
# One run sets up three runtimes -- berth, containerd 2.4 (the reference,
# built by hack/install.sh) and Debian's containerd 1.6 (the older baseline)
# -- on the same loopback registry (port $BENCH_PORT, default: a free one
# that hack/registry.sh picks), the same images and the same CNI config
# (bridge benchbr0, 10.77.0.0/16), then runs each benchmark against each,
# rotating which runtime goes first: cold pull of bench/large:1, the pod
# lifecycle (serial and parallel), density (N sleeping pods), load
# (berth-load: pod lifecycles at a concurrency with List/Status calls beside
# them) and `critest -benchmark`. It writes docs/benchmarks.md and
# docs/benchmarks.json: median and p99 of every figure for each runtime and
# the berth / containerd 2.4 ratio.  Where berth lacks an RPC its column
# reads "n/a: <the error crictl or critest got>"; nothing is asserted.
#
#   --short   few iterations (1 pull, 5 serial and 3 parallel lifecycles,
#             5 pods, 6 load pods at 3, a small critest config): a few
#             minutes, for CI
#   (default) full: 5 pulls, 50 serial + 3x10 parallel lifecycles, 30 pods,
#             300 load pods at 20, critest with 50 pods/containers
#
# Installs what it needs (hack/install.sh, which builds containerd 2.4, plus
# Debian's containerd), builds berthd and berth-load in release mode unless
# BERTHD=PATH is given (berth-load then in debug mode, unless
# BERTH_LOAD=PATH).  Everything it starts (berthd, the containerds and their
# shims, the registry) runs from one temp dir and is stopped by PID; the
# dir, the bridge and containerd's pods are removed at the end, and
# leftovers (processes, mounts, network namespaces) are reported.
#
# Exit status: 0 unless the setup fails, a leftover had to be removed,
# containerd 2.4 (the reference) could not produce a figure, or berth got an
# n/a for a figure that the committed docs/benchmarks.json has for it
# (containerd 1.6's n/a cells are only reported).
#
# Environment: BERTHD=PATH, BERTH_LOAD=PATH, BENCH_PORT=PORT, LARGE_MIB=N (size of the pulled
# image, default 150), KEEP=1 (keep the temp dir: daemon and critest logs),
# BENCH_OUT=PREFIX (write PREFIX.md and PREFIX.json instead of
# docs/benchmarks.*; the test command uses it so CI's smoke run leaves the
# committed figures alone).
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

MODE=full
case "${1:-}" in
    "") ;;
    --short) MODE=short ;;
    -h | --help) usage 0 ;;
    *) usage ;;
esac
[ $# -le 1 ] || usage
require_root
PORT=${BENCH_PORT:-}
BRIDGE=benchbr0
SUBNET=10.77.0.0/16
GATEWAY=10.77.0.1
START=$SECONDS

# One bench run at a time: they would share the port and the bridge.
exec 9>/run/lock/berth-bench.lock
flock -n 9 || die "another hack/bench/run.sh is running"

# --- prerequisites ----------------------------------------------------------
note "checking prerequisites, building berthd"
quietly "hack/install.sh" "$REPO/hack/install.sh"
. "$REPO/hack/env.sh"
# containerd is the reference runtime of the benchmark only, so the test path
# (install.sh) does not install it.
if [ "$(dpkg-query -W -f='${db:Status-Status}' containerd 2>/dev/null || true)" != installed ]; then
    note "installing Debian's containerd"
    quietly "apt-get update" apt-get update -q
    # The package ships only a systemd unit; the benchmark never uses a
    # system containerd, it starts its own with its own config and socket.
    quietly "apt-get install containerd" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends containerd
fi
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if [ -z "${BERTHD:-}" ]; then
    quietly "build berthd and the static shim (release)" build_release
    BERTHD=$TARGET/release/berthd
    if [ -z "${BERTH_LOAD:-}" ]; then
        quietly "build berth-load (release)" cargo build --release --locked -p berth-loadgen
        BERTH_LOAD=$TARGET/release/berth-load
    fi
fi
if [ -z "${BERTH_LOAD:-}" ]; then
    quietly "build berth-load" cargo build --locked -p berth-loadgen
    BERTH_LOAD=$TARGET/debug/berth-load
fi
[ -x "$BERTHD" ] || die "berthd not found at $BERTHD"
[ -x "$BERTH_LOAD" ] || die "berth-load not found at $BERTH_LOAD"
# Where hack/install.sh put containerd 2.4 (hack/lib.sh names the dir).
CONTAINERD_BIN=$CONTAINERD_DIR/bin
[ -x "$CONTAINERD_BIN/containerd" ] || die "containerd 2.4 not found in $CONTAINERD_BIN (hack/install.sh builds it)"

# --- the temp dir and its cleanup -------------------------------------------
WORK=$(mktemp -d /tmp/berth-bench.XXXXXX)
chmod 0711 "$WORK"
mkdir -p "$WORK/pids"
# The lock above makes the bridge this run's alone: one that exists now is
# the leftover of a run that died (its state, e.g. its MAC, may be broken).
if ip link show "$BRIDGE" >/dev/null 2>&1; then
    note "removing the bridge $BRIDGE an earlier run left"
    ip link del "$BRIDGE"
fi
run_containerd_existed=$([ -d /run/containerd ] && echo 1 || true)
netns_before=$(ip netns list 2>/dev/null | awk '{print $1}' | sort)

# ours_pids: PIDs of live processes whose command line names $WORK (berthd,
# containerd, containerd-shim-runc-v2 -address $WORK/..., the registry).
ours_pids() {
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [ "$pid" != $$ ] || continue
        tr '\0' ' ' 2>/dev/null <"$f" | grep -qF -- "$WORK/" && echo "$pid"
    done
    return 0
}

# descendants PID: the children of PID, recursively (the containers of a shim).
descendants() {
    local child
    for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

leftovers=()
DRIVER=
cleanup() {
    local rc=$? pid pids m
    trap - EXIT INT TERM
    set +e
    if [ -n "${DRIVER:-}" ] && kill -0 "$DRIVER" 2>/dev/null; then
        kill -TERM "$DRIVER"
        wait "$DRIVER"
    fi
    "$REPO/hack/registry.sh" stop --dir "$WORK/registry" 2>/dev/null
    # The driver stops its daemons itself; this catches what a crash left.
    pids=$(ours_pids)
    if [ -n "$pids" ]; then
        for pid in $pids; do
            leftovers+=("process $pid: $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")")
            # shellcheck disable=SC2046
            kill -KILL $(descendants "$pid") "$pid" 2>/dev/null
        done
        sleep 1
    fi
    # Mounts under $WORK (snapshots, rootfs) would survive rm -rf.
    while read -r m; do
        leftovers+=("mount $m")
        umount -l "$m"
    done < <(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r)
    if [ -n "${KEEP:-}" ]; then
        note "kept $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
    # What containerd leaves outside its root/state: its shim socket dir.
    if [ -z "$run_containerd_existed" ]; then
        rmdir /run/containerd/s /run/containerd 2>/dev/null
    fi
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE"
    fi
    # Network namespaces: the pods of every runtime must be gone.  Others
    # (tests running beside us) may add some too, so this only reports.
    local extra
    extra=$(comm -13 <(echo "$netns_before") <(ip netns list 2>/dev/null | awk '{print $1}' | sort) | tr '\n' ' ')
    [ -z "$extra" ] || note "network namespaces that appeared during the run (ours, or another user's): $extra"
    if [ ${#leftovers[@]} -gt 0 ]; then
        note "left behind by the run, now removed:"
        printf '    %s\n' "${leftovers[@]}" >&2
        [ "$rc" -ne 0 ] || rc=1
    fi
    note "took $((SECONDS - START)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- registry, images, mirrors, CNI ----------------------------------------
"$REPO/hack/registry.sh" start --dir "$WORK/registry" ${PORT:+--port "$PORT"}
# The commands below take the port that start recorded in the registry's dir.
PORT=$("$REPO/hack/registry.sh" port --dir "$WORK/registry")
note "registry on 127.0.0.1:$PORT, building and pushing the images"
OUT=$WORK/images "$REPO/hack/registry.sh" push-images --dir "$WORK/registry" >/dev/null
"$REPO/hack/registry.sh" mirrors "$WORK/mirrors" --dir "$WORK/registry"
note "set up in $((SECONDS - START)) s; benchmarking ($MODE)"

mkdir -p "$WORK/cni"
cat >"$WORK/cni/10-bench.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "berth-bench",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$SUBNET", "gateway": "$GATEWAY" }]],
                "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "$WORK/cni-ipam" } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

# --- the benchmarks ---------------------------------------------------------
# In the background, so that a signal runs the trap at once; the trap passes
# SIGTERM on and the driver stops its daemons.
python3 "$REPO/hack/bench/bench.py" \
    --mode "$MODE" --work "$WORK" --berthd "$BERTHD" --registry "127.0.0.1:$PORT" \
    --repo "$REPO" --out "${BENCH_OUT:-$REPO/docs/benchmarks}" \
    --containerd-bin "$CONTAINERD_BIN" --berth-load "$BERTH_LOAD" &
DRIVER=$!
wait "$DRIVER"
