#!/usr/bin/env bash
# Set up and run every test: the one command CI runs (.ci/run calls it).
#
#   hack/test.sh
#
# Installs the prerequisites (hack/install.sh), then runs, stopping at the
# first failure: cargo fmt --check, cargo clippy -D warnings, cargo doc with
# warnings denied (broken intra-doc links and the like), cargo machete (no
# unused dependencies), the unit and integration tests, the e2e suite (crictl tests, image tests, pod tests, security tests, the crash matrix, then critest with the
# ratchet of e2e/critest-passing.txt), 15 s of each fuzz target, and a short smoke run of the benchmarks
# (hack/bench/run.sh --short, figures to a temp dir) so they cannot rot. Needs root: tests create namespaces,
# mounts and a loopback registry.
#
# An e2e test that fails once and passes on its retry is flaky: the suites
# list it, and the end of this script (pass or fail) prints every such test
# from $BERTH_E2E_FLAKY.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
    "") ;;
    -h | --help) usage 0 ;;
    *) usage ;;
esac
require_root
cd "$REPO"

step() {
    echo
    echo "== $* ($(date +%H:%M:%S))"
}

# The e2e suites append "SUITE: flaky: TEST (1 of 2 attempts failed)" here.
export BERTH_E2E_FLAKY=${TMPDIR:-/tmp}/berth-e2e-flaky.$$.txt
rm -f "$BERTH_E2E_FLAKY"
report_flaky() {
    local rc=$?
    if [ -s "$BERTH_E2E_FLAKY" ]; then
        echo
        echo "== flaky e2e tests (passed on retry):"
        sed 's/^/    /' "$BERTH_E2E_FLAKY"
    fi
    rm -f "$BERTH_E2E_FLAKY"
    exit "$rc"
}
trap report_flaky EXIT

step "install prerequisites"
"$REPO/hack/install.sh"
. "$REPO/hack/env.sh"

step "CRI definition is wire-compatible with k8s.io/cri-api v0.37.0"
cri_api=$(cd / && go mod download -json k8s.io/cri-api@v0.37.0 |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
"$REPO/proto/check-wire-compat.sh" "$cri_api/pkg/apis/runtime/v1/api.proto"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (warnings denied)"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked

step "cargo machete (unused dependencies)"
cargo machete

step "unit and integration tests"
cargo test --workspace --locked --exclude berth-e2e

step "e2e: crictl"
# berthd finds the shim and berth-init beside itself. The test-only
# failpoints (inert unless BERTH_FAILPOINT is set) serve the crash suite.
cargo build --locked -p berth-agent -p berth-shim --features berth-agent/failpoints
export BERTHD="$REPO/target/debug/berthd"
cargo test --locked -p berth-e2e --test crictl

step "e2e: images (pull through mirrors, crash mid-pull)"
cargo test --locked -p berth-e2e --test images

step "e2e: pods and containers (crictl lifecycle, kill -9 of berthd)"
cargo test --locked -p berth-e2e --test pods

step "e2e: security (other users, idle connections, hostile paths)"
cargo test --locked -p berth-e2e --test security

step "e2e: crash matrix (kill -9 of berthd at each step of CreateContainer and RunPodSandbox)"
cargo test --locked -p berth-e2e --test crash

step "e2e: operations (SIGHUP reload, config dump, doctor, shims outside berthd's cgroup, install-node.sh, sd_notify)"
cargo test --locked -p berth-e2e --test ops

step "benchmarks, short smoke run (fails on an n/a: containerd's, or berth's for a figure docs/benchmarks.json has)"
bench_out=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-smoke.XXXXXX")
BERTHD="$BERTHD" BENCH_OUT="$bench_out/benchmarks" "$REPO/hack/bench/run.sh" --short
rm -rf "$bench_out"

step "fuzz: every fuzz target for 15 s (a crash fails the run; its input lands in imageservice/fuzz/artifacts/)"
"$REPO/hack/fuzz.sh" 15

step "e2e: critest conformance (ratchet: every spec in e2e/critest-passing.txt)"
cargo test --locked -p berth-e2e --test critest
