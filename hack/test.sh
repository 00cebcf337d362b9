#!/usr/bin/env bash
# Set up and run every test: the one command CI runs (.ci/run calls it).
#
#   hack/test.sh
#
# Installs the prerequisites (hack/install.sh), then runs, stopping at the
# first failure: cargo fmt --check, cargo clippy -D warnings, cargo doc with
# warnings denied (broken intra-doc links and the like), cargo machete (no
# unused dependencies), the unit and integration tests, the e2e suite (crictl tests, image tests, pod tests, security tests, the crash matrix, faulty runc and CNI plugins, the load run, a standalone kubelet, a one-node cluster, then critest with the
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
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo doc (warnings denied)"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked

step "cargo machete (unused dependencies)"
cargo machete

step "unit and integration tests"
cargo test --workspace --locked --exclude berth-e2e

step "e2e: crictl"
# berthd finds the shim and berth-init beside itself. The test-only
# failpoints (inert unless BERTH_FAILPOINT is set) serve the crash suite,
# the OTLP export (off unless configured) the metrics suite. berth-load is
# the load generator of the load suite and of the bench.
cargo build --locked -p berth-agent -p berth-shim -p berth-loadgen --features berth-agent/failpoints,berth-agent/otlp
export BERTHD="$REPO/target/debug/berthd"
export BERTH_LOAD="$REPO/target/debug/berth-load"
cargo test --locked -p berth-e2e --test crictl

step "e2e: images (pull through mirrors, crash mid-pull)"
cargo test --locked -p berth-e2e --test images

step "e2e: pods and containers (crictl lifecycle, kill -9 of berthd)"
cargo test --locked -p berth-e2e --test pods

step "e2e: stats (crictl stats and statsp of busy and allocating containers, runc and crun)"
cargo test --locked -p berth-e2e --test stats

step "e2e: streaming (exec, attach, port-forward through crictl)"
cargo test --locked -p berth-e2e --test streaming

step "e2e: security (other users, idle connections, hostile paths)"
cargo test --locked -p berth-e2e --test security

step "e2e: metrics (pull, pod and container phases and state gauges from /metrics)"
cargo test --locked -p berth-e2e --test metrics

step "e2e: crash matrix (kill -9 of berthd at each step of CreateContainer and RunPodSandbox)"
cargo test --locked -p berth-e2e --test crash

step "e2e: crash matrix past create (kill -9 of berthd in pulls, start, stop, remove, pod stop and remove)"
cargo test --locked -p berth-e2e --test crash_lifecycle

step "e2e: faulty runc and CNI plugin (fail or hang once at create, start, kill, delete, ADD, DEL)"
cargo test --locked -p berth-e2e --test faults

step "e2e: load (berth-load: 30 pods at concurrency 6 with List/Status calls beside them; zero errors, zero leaks)"
cargo test --locked -p berth-e2e --test load

step "e2e: kubelet (a standalone kubelet runs static pods on berthd)"
cargo test --locked -p berth-e2e --test kubelet

step "e2e: a one-node cluster (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubelet) driven by kubectl"
cargo test --locked -p berth-e2e --test cluster

step "e2e: operations (SIGHUP reload, config dump, doctor, shims outside berthd's cgroup, install-node.sh, sd_notify)"
cargo test --locked -p berth-e2e --test ops

step "benchmarks, short smoke run against containerd 2.4 and 1.6 (fails on an n/a: containerd 2.4's, or berth's for a figure docs/benchmarks.json has)"
bench_out=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-smoke.XXXXXX")
BERTHD="$BERTHD" BERTH_LOAD="$BERTH_LOAD" BENCH_OUT="$bench_out/benchmarks" "$REPO/hack/bench/run.sh" --short
rm -rf "$bench_out"

step "fuzz: every target of every */fuzz crate for 15 s (a crash fails the run; its input lands in <crate>/fuzz/artifacts/)"
"$REPO/hack/fuzz.sh" 15

step "e2e: critest conformance (ratchet: every spec in e2e/critest-passing.txt)"
cargo test --locked -p berth-e2e --test critest
