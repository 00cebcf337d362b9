#!/usr/bin/env bash
# Install what berth needs to build and test on a Debian 12 machine; run as root.
#
#   hack/install.sh
#
# Idempotent: installs only what is missing and prints one line per tool with
# its version at the end.
#   - Debian packages (apt-get update runs only when something is missing)
#   - Rust: cargo plus the rustfmt and clippy components (needs rustup)
#   - cargo-machete $CARGO_MACHETE_VERSION (crates.io, `cargo install --locked`),
#     the unused-dependency check of hack/test.sh; skipped when
#     `cargo machete --version` already reports that version
#   - cargo-fuzz $CARGO_FUZZ_VERSION likewise, for the fuzz step (with the
#     nightly toolchain, which must be there)
#   - crictl and critest from cri-tools $CRI_TOOLS_VERSION, built with Go into
#     $BINDIR; critest is skipped when $STAMP_DIR/critest-<version>.stamp exists
#     and $BINDIR/critest too, crictl when `crictl --version` reports the version
#   - containerd $CONTAINERD_VERSION and its runc shim, built with Go from the
#     module proxy into $CONTAINERD_DIR/bin: hack/bench's reference runtime
#     (beside Debian's containerd 1.6, which hack/bench installs itself);
#     skipped when both binaries there report the version
#   - kubelet, kube-apiserver, kube-scheduler, kube-controller-manager,
#     kubectl and etcd for the kubelet suite, built from the Go module proxy by
#     hack/install-kube.sh into /var/cache/berth/kube-<version>/bin (kept
#     across clean clones; see that script)
#
# Environment:
#   BINDIR=DIR        where crictl and critest go (default /usr/local/bin)
#   STAMP_DIR=DIR     build stamps (default /usr/local/lib/berth)
#   GO=PATH           go binary (default: go on PATH, else /usr/local/go/bin/go)
#   CONTAINERD_DIR=DIR  containerd's build cache, by version (default
#                     /var/cache/berth/containerd-$CONTAINERD_VERSION; both in hack/lib.sh)
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
    "") ;;
    -h | --help) usage 0 ;;
    *) usage ;;
esac

CRI_TOOLS_VERSION=v1.37.0
CARGO_MACHETE_VERSION=0.9.2
CARGO_FUZZ_VERSION=0.13.1
BINDIR=${BINDIR:-/usr/local/bin}
STAMP_DIR=${STAMP_DIR:-/usr/local/lib/berth}

# Debian packages, each with what needs it.  Checked against
# `apt-mark showmanual` of a fresh machine of the project's kind: what that
# image already ships (git, curl, jq, build-essential, ...) is named here too,
# so the list stays true on any Debian 12.  Rust (rustup) and Go
# (/usr/local/go) come with the machine image, not from apt.  busybox itself
# is not installed: testimages/build-and-push.sh fetches it with
# `apt-get download busybox` (installing it would conflict with
# busybox-static), so the apt lists must know it; dpkg-deb and ldd
# (libc-bin) are essential.
APT_PACKAGES=(
    runc crun                   # the OCI runtimes: agent, shim and e2e tests
    containernetworking-plugins # bridge, host-local, loopback, portmap: pod networking
    docker-registry             # hack/registry.sh: e2e images/pods/critest, bench
    iproute2                    # ip (netns and bridge clean-up), ss (registry.sh's port check)
    iptables                    # the portmap CNI plugin (hostPort, critest)
    util-linux                  # setsid (registry.sh), flock (bench/run.sh)
    mount                       # umount (bench clean-up of leftover mounts)
    procps                      # ps/pgrep, to look into a leak report by hand
    curl                        # registry.sh waits for /v2/ to answer
    python3                     # bench.py, testimages/ocibuild.py, test.sh's go mod JSON
    protobuf-compiler           # proto/build.rs and proto/check-wire-compat.sh
    libprotobuf-dev             # google/protobuf/descriptor.proto for check-wire-compat.sh
    openssl                     # the imageservice TLS tests make their certificates
    ca-certificates             # cargo, go mod download and go get over HTTPS
    git                         # bench.py records the commit it measured
    jq                          # for developers reading JSON reports; no check needs it
    build-essential pkg-config  # cc and the linker for cargo builds
    busybox-static              # /bin/busybox for the shim tests' bundles
)

require_root
export DEBIAN_FRONTEND=noninteractive
WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

apt_updated=
apt_update_once() {
    [ -n "$apt_updated" ] && return
    quietly "apt-get update" apt-get update -q
    apt_updated=1
}

busybox_candidate() {
    local policy
    policy=$(apt-cache policy busybox 2>/dev/null) || return 1
    [[ $policy == *"Candidate: "[0-9]* ]]
}

install_apt_packages() {
    local missing=() p status
    for p in "${APT_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
        [ "$status" = installed ] || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_update_once
        quietly "apt-get install ${missing[*]}" \
            apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    # build-and-push.sh runs `apt-get download busybox`: needs a candidate.
    if ! busybox_candidate; then
        apt_update_once
        busybox_candidate ||
            die "apt knows no 'busybox' package (needed by testimages/build-and-push.sh); check /etc/apt/sources.list"
    fi
}

install_rust() {
    if ! command -v cargo >/dev/null && [ -r "$HOME/.cargo/env" ]; then
        # shellcheck source=/dev/null
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null ||
        die "cargo not found: install Rust with rustup (https://rustup.rs) first; Debian's cargo is too old"
    command -v rustup >/dev/null ||
        die "rustup not found (cargo is $(command -v cargo)): rustfmt and clippy are installed with rustup"
    local installed missing=() c
    installed=$(rustup component list --installed 2>/dev/null) ||
        die "rustup component list failed (no default toolchain? run: rustup default stable)"
    for c in rustfmt clippy; do
        grep -q "^$c-" <<<"$installed" || missing+=("$c")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        quietly "rustup component add ${missing[*]}" rustup component add "${missing[@]}"
    fi
}

# cargo_tool_current BIN VERSION: `BIN --version` ends with VERSION
# (cargo-machete prints "0.9.2", cargo-fuzz "cargo-fuzz 0.13.1").
cargo_tool_current() {
    local out
    out=$("$1" --version 2>/dev/null) || return 1
    [ "${out##* }" = "$2" ]
}

# install_cargo_tool CRATE VERSION: `cargo install --locked` it from
# crates.io unless the installed binary (named as the crate) reports VERSION.
install_cargo_tool() {
    local crate=$1 version=$2
    cargo_tool_current "$crate" "$version" && return
    quietly "cargo install $crate@$version" cargo install --locked --quiet "$crate@$version"
    cargo_tool_current "$crate" "$version" || die "$crate does not report $version after the install"
}

# The fuzz step of hack/test.sh: cargo-fuzz and the nightly toolchain it
# builds with (the machine image ships it; rustup cannot download one here).
install_fuzzing() {
    install_cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION"
    rustup toolchain list | grep -q '^nightly' ||
        die "the fuzz targets need a nightly toolchain: rustup toolchain install nightly"
}

setup_go() {
    if [ -z "${GO:-}" ]; then
        GO=$(command -v go || true)
        [ -n "$GO" ] || GO=/usr/local/go/bin/go
    fi
    [ -x "$GO" ] || die "go not found (looked on PATH and at /usr/local/go/bin/go; set GO=)"
    # The ordinary module cache ($GOPATH/pkg/mod) and build cache make a rebuild
    # fast; -mod=mod lets `go test -c` add the test-only dependencies of
    # cmd/critest to the scratch module's go.sum (else: "missing go.sum entry").
    export GOFLAGS="-mod=mod -buildvcs=false"
    # Static binaries with the version stamped in, like cri-tools' release.sh.
    export CGO_ENABLED=0
    ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION"
}

# install_bin SRC NAME: put SRC at $BINDIR/NAME by rename, so a running old
# binary is not overwritten in place.
install_bin() {
    mkdir -p "$BINDIR"
    install -m 0755 "$1" "$BINDIR/.$2.new"
    mv -f "$BINDIR/.$2.new" "$BINDIR/$2"
}

crictl_current() {
    [ -x "$BINDIR/crictl" ] &&
        [ "$("$BINDIR/crictl" --version 2>/dev/null)" = "crictl version $CRI_TOOLS_VERSION" ]
}

install_crictl() {
    crictl_current && return
    local tmp=$WORK/crictl
    quietly "building crictl $CRI_TOOLS_VERSION" \
        env GOBIN="$tmp" "$GO" install -trimpath -ldflags "$ldflags" \
        "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
    install_bin "$tmp/crictl" crictl
    crictl_current || die "$BINDIR/crictl does not report $CRI_TOOLS_VERSION after the build"
}

install_critest() {
    local stamp=$STAMP_DIR/critest-$CRI_TOOLS_VERSION.stamp
    [ -f "$stamp" ] && [ -x "$BINDIR/critest" ] && return
    # cmd/critest holds only a _test.go file (package main), so it can be
    # neither imported nor `go install`ed: build its test binary from a scratch
    # module that requires cri-tools.
    local tmp=$WORK/critest
    mkdir -p "$tmp"
    (
        cd "$tmp"
        quietly "go mod init" "$GO" mod init critest-build
        quietly "go get sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" \
            "$GO" get "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION"
        quietly "building critest $CRI_TOOLS_VERSION" \
            "$GO" test -c -trimpath -ldflags "$ldflags" -o "$tmp/critest" \
            sigs.k8s.io/cri-tools/cmd/critest
    )
    local out
    out=$("$tmp/critest" --version 2>/dev/null) || true
    grep -qxF "critest version: $CRI_TOOLS_VERSION" <<<"$out" ||
        die "the built critest does not report $CRI_TOOLS_VERSION: $out"
    install_bin "$tmp/critest" critest
    mkdir -p "$STAMP_DIR"
    printf 'critest %s built %s with %s\n' "$CRI_TOOLS_VERSION" "$(date -u +%FT%TZ)" \
        "$("$GO" version)" >"$stamp"
}

# containerd_current BIN: $CONTAINERD_DIR/bin/BIN reports $CONTAINERD_VERSION
# ("containerd github.com/containerd/containerd/v2 v2.4.2 ..."; the shim
# prints "Version: v2.4.2" among other lines).
containerd_current() {
    local bin=$CONTAINERD_DIR/bin/$1
    [ -x "$bin" ] || return 1
    case $1 in
        containerd) "$bin" --version 2>/dev/null | grep -qw -- "$CONTAINERD_VERSION" ;;
        *) "$bin" -v 2>/dev/null | grep -qw -- "$CONTAINERD_VERSION" ;;
    esac
}

# install_containerd: containerd and containerd-shim-runc-v2 at
# $CONTAINERD_VERSION for hack/bench, kept out of PATH (the node's runtime
# is berth) and out of the repository. `go install pkg@version` builds from
# containerd's own go.mod (its replaces and pinned versions); cgo is off, so
# btrfs and devmapper (cgo only) are left out by tag, and the shim is built
# as containerd's Makefile builds it (no_grpc). Measured on the 2-core
# machine: with empty module and build caches about 2.5 min of CPU (12 min
# of wall time at nice 19 beside five other builds, downloads included);
# with the caches warm, 1 min; once built, nothing.
install_containerd() {
    containerd_current containerd && containerd_current containerd-shim-runc-v2 && return
    local module=github.com/containerd/containerd/v2 tmp=$WORK/containerd
    local version_flags="-X $module/version.Version=$CONTAINERD_VERSION -X $module/version.Package=github.com/containerd/containerd/v2"
    mkdir -p "$tmp"
    quietly "building containerd $CONTAINERD_VERSION" \
        env GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 "$GO" install -trimpath \
        -tags "no_btrfs no_devmapper" -ldflags "$version_flags" "$module/cmd/containerd@$CONTAINERD_VERSION"
    quietly "building containerd-shim-runc-v2 $CONTAINERD_VERSION" \
        env GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 "$GO" install -trimpath \
        -tags no_grpc -ldflags "$version_flags" "$module/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
    mkdir -p "$CONTAINERD_DIR/bin"
    local bin
    for bin in containerd containerd-shim-runc-v2; do
        install -m 0755 "$tmp/$bin" "$CONTAINERD_DIR/bin/.$bin.new"
        mv -f "$CONTAINERD_DIR/bin/.$bin.new" "$CONTAINERD_DIR/bin/$bin"
        containerd_current "$bin" || die "$CONTAINERD_DIR/bin/$bin does not report $CONTAINERD_VERSION after the build"
    done
}

first_line() {
    "$@" 2>&1 | head -n 1 || true
}

row() {
    printf '%-22s %s\n' "$1" "$2"
}

print_versions() {
    row runc "$(first_line runc --version)"
    row crun "$(first_line crun --version)"
    row cni-plugins "$(dpkg-query -W -f='${Version}' containernetworking-plugins)"
    row docker-registry "$(first_line docker-registry --version)"
    row protoc "$(first_line protoc --version)"
    row jq "$(first_line jq --version)"
    row python3 "$(first_line python3 --version)"
    row iptables "$(first_line iptables --version)"
    row cargo "$(first_line cargo --version)"
    row rustc "$(first_line rustc --version)"
    row rustfmt "$(first_line rustfmt --version)"
    row clippy "$(first_line cargo clippy --version)"
    row cargo-machete "$(first_line cargo machete --version)"
    row cargo-fuzz "$(first_line cargo fuzz --version)"
    row go "$(first_line "$GO" version)"
    row crictl "$(first_line "$BINDIR/crictl" --version)"
    row containerd-shim "$("$EXTERNAL_SHIM" -v 2>&1 | grep -m1 Version | tr -s " \t" " " || true)"
    row critest "$("$BINDIR/critest" --version 2>/dev/null | grep -m1 '^critest version' || true)"
    row containerd "$(first_line "$CONTAINERD_DIR/bin/containerd" --version) (hack/bench)"
    # A crictl earlier on PATH (e.g. an old `go install` into ~/go/bin) would
    # shadow the one installed here.
    local found
    found=$(command -v crictl || true)
    if [ -n "$found" ] && [ "$found" != "$BINDIR/crictl" ]; then
        note "warning: 'crictl' on PATH is $found ($(first_line "$found" --version)), not $BINDIR/crictl"
    fi
}

# Debian's containerd-shim-runc-v2 (containerd 1.6), the external shim v2
# the tests run as a RuntimeClass handler. Only the shim binary is taken
# from the package (apt-get download + dpkg-deb): installing containerd
# would start a containerd daemon on a node meant for berth.
EXTERNAL_SHIM="$STAMP_DIR/bin/containerd-shim-runc-v2"
install_external_shim() {
    [ -x "$EXTERNAL_SHIM" ] && return
    apt_update_once
    local deb_dir="$WORK/containerd-deb"
    mkdir -p "$deb_dir"
    (cd "$deb_dir" && quietly "apt-get download containerd" apt-get download -q containerd)
    dpkg-deb -x "$deb_dir"/containerd_*.deb "$deb_dir/root"
    install -D -m 0755 "$deb_dir/root/usr/bin/containerd-shim-runc-v2" "$EXTERNAL_SHIM"
}

install_apt_packages
install_external_shim
install_rust
install_cargo_tool cargo-machete "$CARGO_MACHETE_VERSION"
install_fuzzing
setup_go
install_crictl
install_critest
install_containerd
print_versions

# The Kubernetes binaries: their own script, with their own version table.
"$REPO/hack/install-kube.sh"
