#!/usr/bin/env bash
# Write the CNI network config that berth's pods use, unless one exists.
#
#   hack/cni-config.sh [CONF_DIR]        (default /etc/cni/net.d)
#
# When CONF_DIR holds no *.conf, *.conflist or *.json file, writes
# CONF_DIR/10-berth-bridge.conflist: network "berth-bridge", bridge cni0 with
# the gateway 10.88.0.1 of 10.88.0.0/16 (host-local IPAM), no masquerading, hairpin
# mode, and portmap for hostPort (the config containerd passed critest with
# here, see ../shared/CRITEST-NOTES.md).  An existing config is never touched.
# Then checks that the plugins bridge, host-local, loopback and portmap are in
# $CNI_BIN_DIR (default /usr/lib/cni, Debian's containernetworking-plugins) and
# fails if one is missing.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
    -h | --help) usage 0 ;;
    -*) usage ;;
esac
[ $# -le 1 ] || usage
CONF_DIR=${1:-/etc/cni/net.d}
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}
CONF_NAME=10-berth-bridge.conflist

existing=()
if [ -d "$CONF_DIR" ]; then
    shopt -s nullglob
    existing=("$CONF_DIR"/*.conf "$CONF_DIR"/*.conflist "$CONF_DIR"/*.json)
    shopt -u nullglob
fi

if [ ${#existing[@]} -eq 0 ]; then
    mkdir -p "$CONF_DIR"
    tmp=$(mktemp "$CONF_DIR/.$CONF_NAME.XXXXXX")
    trap 'rm -f "$tmp"' EXIT
    # Not *.conf/*.conflist/*.json until the rename, so that a runtime never
    # loads a half-written file.
    cat >"$tmp" <<'EOF'
{
  "cniVersion": "1.0.0",
  "name": "berth-bridge",
  "plugins": [
    { "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.88.0.0/16", "gateway": "10.88.0.1" }]],
                "routes": [{ "dst": "0.0.0.0/0" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONF_DIR/$CONF_NAME"
elif [ "${existing[*]}" != "$CONF_DIR/$CONF_NAME" ]; then
    # Only says something when the config is not (only) ours.
    note "$CONF_DIR already has a CNI config, not writing $CONF_NAME: ${existing[*]}"
fi

missing=()
for plugin in bridge host-local loopback portmap; do
    [ -x "$CNI_BIN_DIR/$plugin" ] || missing+=("$plugin")
done
[ ${#missing[@]} -eq 0 ] ||
    die "CNI plugins missing from $CNI_BIN_DIR: ${missing[*]} (apt-get install containernetworking-plugins, or set CNI_BIN_DIR)"
