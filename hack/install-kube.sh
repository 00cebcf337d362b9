#!/usr/bin/env bash
# Build the Kubernetes binaries the kubelet and cluster suites run, from the Go
# module proxy, into a cache kept by version outside the repository; run as root.
#
#   hack/install-kube.sh [COMPONENT...]
#
# COMPONENT is kubelet, kube-apiserver, kube-scheduler, kube-controller-manager,
# kubectl or etcd (default: all of them, kubelet first).  A component whose
# binary in the cache already reports its version is skipped, so a clean clone
# reuses what an earlier run built.  Each build runs under `nice` and prints
# its wall and CPU time.  hack/install.sh calls this with no argument.
#
#   - Kubernetes $KUBE_VERSION: k8s.io/kubernetes is not meant to be imported,
#     so a scratch module requires it and replaces every k8s.io/* staging
#     module its go.mod points at ./staging/... with the published
#     v0.<minor>.<patch>; the version is stamped in with -ldflags (otherwise
#     the binaries report v0.0.0-master)
#   - etcd $ETCD_VERSION (the one Kubernetes $KUBE_VERSION requires), from
#     go.etcd.io/etcd/server/v3, whose go.mod replaces its sibling modules with
#     ../ paths the same way
#
# Environment:
#   KUBE_BINDIR=DIR   the cache (default /var/cache/berth/kube-$KUBE_VERSION/bin);
#                     the e2e suites find the binaries there
#   GO=PATH           go binary (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.7.0
KUBE_BINDIR=${KUBE_BINDIR:-/var/cache/berth/kube-$KUBE_VERSION/bin}
KUBE_COMPONENTS=(kubelet kube-apiserver kube-scheduler kube-controller-manager kubectl etcd)

case "${1:-}" in
    -h | --help) usage 0 ;;
esac
for c in "$@"; do
    [[ " ${KUBE_COMPONENTS[*]} " == *" $c "* ]] || usage
done
[ $# -gt 0 ] || set -- "${KUBE_COMPONENTS[@]}"

require_root
if [ -z "${GO:-}" ]; then
    GO=$(command -v go || true)
    [ -n "$GO" ] || GO=/usr/local/go/bin/go
fi
[ -x "$GO" ] || die "go not found (looked on PATH and at /usr/local/go/bin/go; set GO=)"
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-install-kube.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# version_of NAME: the version NAME in the cache reports, empty if none.
version_of() {
    local bin=$KUBE_BINDIR/$1 out
    [ -x "$bin" ] || return 0
    case $1 in
        kubectl) out=$("$bin" version --client 2>/dev/null | grep -m1 '^Client Version:') || true ;;
        etcd) out=$("$bin" --version 2>/dev/null | grep -m1 '^etcd Version:') || true ;;
        *) out=$("$bin" --version 2>/dev/null) || true ;;
    esac
    echo "${out##* }"
}

wanted_version() {
    if [ "$1" = etcd ]; then echo "${ETCD_VERSION#v}"; else echo "$KUBE_VERSION"; fi
}

# scratch_module DIR MODULE VERSION OLD_PREFIX: a module in DIR requiring
# MODULE@VERSION, with each replace of MODULE's go.mod whose target is a
# relative path (./staging/src/k8s.io/api, ../api) redone as the published
# module at the version staging_version gives.
scratch_module() {
    local dir=$1 module=$2 version=$3 gomod old new
    [ -f "$dir/go.mod" ] && return
    mkdir -p "$dir"
    gomod=$(cd "$dir" && "$GO" mod download -json "$module@$version" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')
    (
        cd "$dir"
        quietly "go mod init" "$GO" mod init "berth-build-${module##*/}"
        "$GO" mod edit -require "$module@$version"
        "$GO" mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("."):
        print(r["Old"]["Path"])' | while read -r old; do
            new=$(staging_version "$module" "$version" "$old")
            "$GO" mod edit -replace "$old=$old@$new"
        done
    )
}

# staging_version MODULE VERSION DEP: the published version of DEP, a module
# MODULE@VERSION takes from its own tree.  k8s.io staging modules are
# v0.<minor>.<patch> of v1.<minor>.<patch>; etcd's siblings share its version.
staging_version() {
    case $1 in
        k8s.io/kubernetes) echo "v0.${2#v1.}" ;;
        *) echo "$2" ;;
    esac
}

# build NAME MODULE VERSION PACKAGE LDFLAGS: go build PACKAGE into the cache
# as NAME, printing the wall and CPU time it took.
build() {
    local name=$1 module=$2 version=$3 pkg=$4 ldflags=$5 src t
    src=$WORK/src-${module//\//_}
    scratch_module "$src" "$module" "$version"
    t=$WORK/time-$name
    exec 3>&2
    {
        TIMEFORMAT='%R %U %S'
        time (cd "$src" && quietly "building $name $version" \
            nice -n 10 "$GO" build -trimpath -ldflags "$ldflags" -o "$WORK/$name" "$pkg" 2>&3)
    } 2>"$t"
    exec 3>&-
    mkdir -p "$KUBE_BINDIR"
    install -m 0755 "$WORK/$name" "$KUBE_BINDIR/.$name.new"
    mv -f "$KUBE_BINDIR/.$name.new" "$KUBE_BINDIR/$name"
    read -r wall user sys <"$t"
    printf '%s: built %s %s in %.0f s wall, %.0f s CPU\n' "$PROG" "$name" "$version" \
        "$wall" "$(python3 -c "print($user + $sys)")" >&2
}

install_component() {
    local name=$1 want kube_ldflags minor pkg
    want=$(wanted_version "$name")
    [ "$(version_of "$name")" = "$want" ] && return
    minor=${KUBE_VERSION#v1.}
    minor=${minor%%.*}
    # Both version packages, as Kubernetes' hack/lib/version.sh stamps them.
    kube_ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    done
    case $name in
        etcd)
            build etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 "-s -w"
            ;;
        *)
            build "$name" k8s.io/kubernetes "$KUBE_VERSION" "k8s.io/kubernetes/cmd/$name" "$kube_ldflags"
            ;;
    esac
    [ "$(version_of "$name")" = "$want" ] ||
        die "$KUBE_BINDIR/$name does not report $want after the build (it says: $(version_of "$name"))"
}

for c in "$@"; do
    install_component "$c"
done
for c in "$@"; do
    printf '%-22s %s\n' "$c" "$(version_of "$c")"
done
