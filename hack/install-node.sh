#!/usr/bin/env bash
# Install berth on a node: binaries, systemd unit, default config, CNI
# network and crictl config.
#
#   hack/install-node.sh [--prefix DIR] [--destdir DIR] [--from DIR]
#   hack/install-node.sh --uninstall [--purge] [--prefix DIR] [--destdir DIR]
#
# --prefix DIR   where the binaries go: DIR/bin (default /usr/local)
# --destdir DIR  install below DIR instead of / (a staging root, as make's
#                DESTDIR); paths written into files stay the real ones
# --from DIR     take berthd, containerd-shim-berth-v2 and berth-init from DIR
#                (default: build them with `cargo build --release`)
# --uninstall    remove what an install wrote and still has the content it
#                wrote (files an operator edited are kept and named); berth's
#                data (/var/lib/berth, /run/berth) is kept
# --purge        with --uninstall: remove berth's data too (containers must
#                be gone: stop them with crictl first)
#
# Installs PREFIX/bin/{berthd,containerd-shim-berth-v2,berth-init};
# /etc/systemd/system/berth.service (Type=notify, Delegate=yes,
# KillMode=process, Restart=on-failure, LimitNOFILE, TasksMax);
# /etc/berth/config.toml (`berthd config default`) and /etc/berth/config.d/
# when there is no config; a CNI bridge network in /etc/cni/net.d when it has
# none (hack/cni-config.sh); /etc/crictl.yaml pointing at berth's socket when
# there is none. Existing configs are never overwritten. Idempotent: a second
# run changes nothing but newer binaries. What it wrote is listed, with
# checksums, in /etc/berth/.install-manifest for --uninstall. It does not
# start anything: `systemctl daemon-reload && systemctl enable --now berth`.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PREFIX=/usr/local
DESTDIR=
FROM=
UNINSTALL=0
PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?}; shift 2 ;;
        --destdir) DESTDIR=${2:?}; shift 2 ;;
        --from) FROM=${2:?}; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h | --help) usage 0 ;;
        *) usage ;;
    esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be absolute: $PREFIX" ;; esac
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"
DESTDIR=${DESTDIR%/}

BINARIES=(berthd containerd-shim-berth-v2 berth-init)
MANIFEST=/etc/berth/.install-manifest
UNIT=/etc/systemd/system/berth.service
SOCKET=/run/berth/berth.sock

checksum() { sha256sum "$1" | cut -d' ' -f1; }

# recorded PATH: the checksum the manifest holds for PATH, or nothing.
recorded() {
    [ -f "$DESTDIR$MANIFEST" ] || return 0
    awk -v p="$1" '$2 == p { print $1 }' "$DESTDIR$MANIFEST"
}

# record PATH: note in the manifest that PATH (a real path) holds what we
# wrote now.
record() {
    local manifest=$DESTDIR$MANIFEST
    mkdir -p "$(dirname "$manifest")"
    touch "$manifest"
    {
        awk -v p="$1" '$2 != p' "$manifest"
        echo "$(checksum "$DESTDIR$1") $1"
    } | sort -k2 >"$manifest.new"
    mv -f "$manifest.new" "$manifest"
}

# put MODE SOURCE PATH: install SOURCE at PATH (below DESTDIR), atomically.
put() {
    local mode=$1 source=$2 target=$DESTDIR$3
    mkdir -p "$(dirname "$target")"
    if [ -f "$target" ] && cmp -s "$source" "$target"; then
        record "$3"
        return
    fi
    install -m "$mode" "$source" "$target.berth-new"
    mv -f "$target.berth-new" "$target"
    record "$3"
    note "installed $3"
}

# put_once MODE SOURCE PATH: as put, unless PATH exists and is not ours.
put_once() {
    local target=$DESTDIR$3 sum
    sum=$(recorded "$3")
    if [ -e "$target" ] && [ -z "$sum" ]; then
        note "keeping the existing $3"
        return
    fi
    if [ -e "$target" ] && [ "$(checksum "$target")" != "$sum" ]; then
        note "keeping $3, edited since it was installed"
        return
    fi
    put "$1" "$2" "$3"
}

uninstall() {
    local manifest=$DESTDIR$MANIFEST
    if [ -f "$manifest" ]; then
        while read -r sum path; do
            [ -e "$DESTDIR$path" ] || continue
            if [ "$(checksum "$DESTDIR$path")" = "$sum" ]; then
                rm -f "$DESTDIR$path"
                note "removed $path"
            else
                note "keeping $path: edited since it was installed"
            fi
        done <"$manifest"
        rm -f "$manifest"
    else
        note "no $MANIFEST: nothing was installed here"
    fi
    rmdir "$DESTDIR/etc/berth/config.d" "$DESTDIR/etc/berth" 2>/dev/null || true
    if [ "$PURGE" = 1 ]; then
        if [ -z "$DESTDIR" ] && pgrep -f containerd-shim-berth-v2 >/dev/null; then
            die "shims are still running: remove the pods (crictl rmp -af) before --purge"
        fi
        rm -rf "$DESTDIR/var/lib/berth" "$DESTDIR/run/berth"
        note "removed berth's data"
    else
        note "kept berth's data (/var/lib/berth); --purge removes it"
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi

if [ -z "$FROM" ]; then
    (cd "$REPO" && cargo build --release --locked -p berth-agent -p berth-shim)
    FROM=$REPO/target/release
fi
for binary in "${BINARIES[@]}"; do
    [ -x "$FROM/$binary" ] || die "$FROM/$binary is missing: build it or pass --from"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

for binary in "${BINARIES[@]}"; do
    put 0755 "$FROM/$binary" "$PREFIX/bin/$binary"
done

cat >"$work/berth.service" <<EOF
[Unit]
Description=berth, a Kubernetes CRI container runtime
Documentation=https://github.com/berth/berth/blob/main/docs/install.md
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
Type=notify
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$PREFIX/bin/berthd
ExecReload=/bin/kill -HUP \$MAINPID
# Shims move themselves out of this cgroup; KillMode=process makes sure a
# stop or restart signals berthd alone all the same.
Delegate=yes
KillMode=process
Restart=on-failure
RestartSec=5
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
EOF
put 0644 "$work/berth.service" "$UNIT"

"$FROM/berthd" config default >"$work/config.toml"
put_once 0644 "$work/config.toml" /etc/berth/config.toml
mkdir -p "$DESTDIR/etc/berth/config.d"

cat >"$work/crictl.yaml" <<EOF
runtime-endpoint: unix://$SOCKET
image-endpoint: unix://$SOCKET
timeout: 30
EOF
put_once 0644 "$work/crictl.yaml" /etc/crictl.yaml

# The CNI network: hack/cni-config.sh writes one only when the dir has none.
cni_dir=$DESTDIR/etc/cni/net.d
had_cni=$(find "$cni_dir" -maxdepth 1 \( -name '*.conf' -o -name '*.conflist' -o -name '*.json' \) 2>/dev/null | head -1 || true)
"$REPO/hack/cni-config.sh" "$cni_dir"
if [ -z "$had_cni" ] && [ -f "$cni_dir/10-berth-bridge.conflist" ]; then
    record /etc/cni/net.d/10-berth-bridge.conflist
fi

# Below a DESTDIR the unit's binaries are not at their real paths yet: a
# copy that names the staged ones is verified instead.
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$work/verify"
    sed "s|$PREFIX/bin/|$DESTDIR$PREFIX/bin/|g" "$DESTDIR$UNIT" >"$work/verify/berth.service"
    systemd-analyze verify "$work/verify/berth.service" ||
        die "systemd-analyze verify $UNIT failed"
fi
note "installed; start it with: systemctl daemon-reload && systemctl enable --now berth"
