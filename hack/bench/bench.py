#!/usr/bin/env python3
"""The driver of hack/bench/run.sh: each benchmark against berth and containerd.

run.sh has prepared WORK (registry/ with the images, mirrors/ with hosts.toml
files, cni/ with the bridge conflist); this starts the three daemons (berthd,
containerd 2.4 -- the reference every ratio is taken against -- and Debian's
containerd 1.6, the older baseline), each from its own dirs WORK/<name>,
drives them with crictl, critest and berth-load, stops them by PID and writes
OUT.md and OUT.json.

Every benchmark runs the same code against every runtime, rotating which
goes first.  When a runtime fails a step, the figures that need the step get
"n/a: <the gRPC code and message that crictl or critest printed>" instead of
numbers, so berth's column fills in by itself as berth implements the RPCs.
No figure is asserted.  Python standard library only.
"""

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

LARGE = "bench/large:1"  # pulled as <registry>/bench/large:1
PAUSE_1_6 = "registry.k8s.io/pause:3.6"  # containerd 1.6's default sandbox image
PAUSE_2_4 = "registry.k8s.io/pause:3.10"  # containerd 2.4's default sandbox image
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"  # critest's default
MIB = 1024 * 1024

MODES = {
    "short": dict(pulls=1, version_calls=5, serial=5, parallel=3, parallel_rounds=1,
                  density=5, critest=dict(podsNumber=3, containersNumber=3, imagesNumber=2),
                  load=dict(pods=6, concurrency=3)),
    "full": dict(pulls=5, version_calls=20, serial=50, parallel=10, parallel_rounds=3,
                 density=30, critest=dict(podsNumber=50, containersNumber=50, imagesNumber=10),
                 load=dict(pods=300, concurrency=20)),
}

# critest -benchmark's output files (cri-tools v1.37.0 pkg/benchmark) and the
# operations each datapoint times, in order.
CRITEST_FILES = {
    "pod_benchmark_data.json":
        ("critest: pod lifecycle", ["CreatePod", "StatusPod", "StopPod", "RemovePod"]),
    "container_benchmark_data.json":
        ("critest: container lifecycle",
         ["CreateContainer", "StartContainer", "StatusContainer", "StopContainer", "RemoveContainer"]),
    "image_lifecycle_benchmark_data.json":
        ("critest: image lifecycle", ["PullImage", "StatusImage", "RemoveImage"]),
    "image_listing_benchmark_data.json": ("critest: image listing", ["ListImages"]),
}

# The runtime the ratios are taken against; containerd 1.6 is only shown.
REFERENCE = "containerd-2.4"

# The calls berth-load's List/Status tasks make.
LOAD_HAMMERED = ["ListPodSandbox", "ListContainers", "ContainerStatus", "PodSandboxStatus", "Version", "Status"]

LIFECYCLE_STEPS = ["RunPodSandbox", "CreateContainer", "StartContainer", "StopPodSandbox", "RemovePodSandbox"]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A runtime could not do a step; the message becomes its n/a cell."""


def rpc_reason(what, output):
    """One line out of crictl's or critest's output: the first gRPC error."""
    m = re.search(r'code = (\w+) desc = ([^"\n]*)', output)
    if m:
        desc = m.group(2).replace("\\", "").strip().rstrip(".")
        reason = f"{what}: {m.group(1)}: {desc}"
    else:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        reason = f"{what}: {lines[-1] if lines else 'failed without output'}"
    return reason if len(reason) <= 200 else reason[:197] + "..."


def proc_status(pid, key):
    """A size field of /proc/PID/status (VmRSS, VmHWM) in bytes, None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def descendants(pid):
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            out.append(child)
            out.extend(descendants(child))
    return out


def mounts_under(path):
    prefix = path.rstrip("/") + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


class RssSampler:
    """Samples VmRSS of a process every 20 ms in a thread; .peak in bytes."""

    def __init__(self, pid, period=0.02):
        self.pid, self.period, self.peak = pid, period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS") or 0)
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status(self.pid, "VmRSS") or 0)


class Daemon:
    """One CRI runtime: its own root, state, socket, config and log in DIR."""

    name = ""
    label = ""  # the column heading
    start_timeout = 60
    sandbox_image = PAUSE_1_6  # pulled in the warm-up (berth has no pause container)

    def __init__(self, work):
        self.work = work
        self.dir = os.path.join(work, self.name)
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.config = os.path.join(self.dir, "config.toml")
        self.log = os.path.join(self.dir, "daemon.log")
        self.crictl_config = os.path.join(self.dir, "crictl.yaml")
        self.proc = None

    @property
    def socket(self):
        raise NotImplementedError

    def argv(self):
        raise NotImplementedError

    def write_config(self):
        raise NotImplementedError

    def env(self):
        """The daemon's environment (None: this process's)."""
        return None

    @property
    def pid(self):
        return self.proc.pid

    def reset(self):
        """Remove root and state (a cold start); the daemon must be stopped."""
        assert self.proc is None
        for path in (self.root, self.state):
            for m in mounts_under(path):
                subprocess.run(["umount", "-l", m], check=False)
            shutil.rmtree(path, ignore_errors=True)

    def start(self):
        """Start the daemon; return the seconds until `crictl version` answered."""
        os.makedirs(self.dir, exist_ok=True)
        self.write_config()
        with open(self.crictl_config, "w") as f:
            f.write(f"runtime-endpoint: unix://{self.socket}\nimage-endpoint: unix://{self.socket}\n"
                    "timeout: 300\npull-image-on-create: false\n")
        with open(self.log, "ab") as logf:
            t0 = time.monotonic()
            # Own session: a Ctrl-C reaches the driver, which stops the daemon.
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=self.env())
        while True:
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                raise RuntimeError(f"{self.name} exited with {rc} at start:\n{self.log_tail()}")
            if os.path.exists(self.socket):
                r = subprocess.run(["crictl", "-c", self.crictl_config, "--max-retries", "0", "version"],
                                   capture_output=True)
                if r.returncode == 0:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > self.start_timeout:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer within {self.start_timeout} s:\n{self.log_tail()}")
            time.sleep(0.01)

    def stop(self):
        """Remove the pods, SIGTERM the daemon (SIGKILL after 20 s), reap shims."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.remove_pods()
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for 20 s: SIGKILL")
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # Shims outlive their daemon by design; after remove_pods none is left
        # unless a stop failed.
        for pid in self.shim_pids():
            log(f"{self.name}: shim {pid} left after stop, killing it and its processes: {cmdline(pid)}")
            for p in [pid] + descendants(pid):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove_pods(self):
        try:
            pods = self.crictl("pods", "-q", timeout=60).split()
        except Unavailable:
            return  # ListPodSandbox unimplemented: nothing can exist either
        for pod in pods:
            for cmd in (["stopp", pod], ["rmp", "-f", pod]):
                try:
                    self.crictl(*cmd, timeout=120)
                except Unavailable as e:
                    log(f"{self.name}: cleaning up pod {pod}: {e}")

    def shim_pids(self):
        """Shim processes of this daemon: a "shim" named process whose command
        line names this daemon's dir (containerd's pass -address SOCKET), or
        one the daemon spawned and still parents."""
        mine = set()
        if self.proc is not None:
            mine.update(p for p in descendants(self.proc.pid) if "shim" in comm(p))
        for entry in os.listdir("/proc"):
            if entry.isdigit() and "shim" in comm(entry) and self.dir + "/" in cmdline(entry):
                mine.add(int(entry))
        return sorted(mine)

    def rss(self):
        return proc_status(self.pid, "VmRSS")

    def crictl(self, *args, timeout=300):
        argv = ["crictl", "-c", self.crictl_config, *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"crictl {args[0]}: no answer within {timeout} s") from None
        if r.returncode != 0:
            raise Unavailable(rpc_reason(f"crictl {args[0]}", r.stderr + r.stdout))
        return r.stdout.strip()

    def log_tail(self, n=30):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"


class Berth(Daemon):
    name = "berth"
    label = "berth"

    def __init__(self, work, berthd):
        super().__init__(work)
        self.berthd = berthd

    @property
    def socket(self):
        return os.path.join(self.state, "berth.sock")

    def argv(self):
        return [self.berthd, "--config", self.config]

    def write_config(self):
        with open(self.config, "w") as f:
            f.write(f'''root = "{self.root}"
state = "{self.state}"

[metrics]
address = "127.0.0.1:0"

[cni]
conf_dir = "{self.work}/cni"

[registry]
config_path = "{self.work}/mirrors"
''')


class Containerd(Daemon):
    """Debian's containerd 1.6 (config version 2)."""
    name = "containerd-1.6"
    label = "containerd 1.6"

    @property
    def socket(self):
        return os.path.join(self.dir, "containerd.sock")

    def argv(self):
        return ["containerd", "--config", self.config]

    def write_config(self):
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        # Everything under self.dir except what containerd 1.6 hard-codes: the
        # shim sockets in /run/containerd/s and the pods' netns in /run/netns.
        with open(self.config, "w") as f:
            f.write(f'''version = 2
root = "{self.root}"
state = "{self.state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir}/opt"

[{cri}]
  sandbox_image = "{PAUSE_1_6}"
  # root lacks CAP_SYS_RESOURCE on these machines (CRITEST-NOTES.md)
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "runc"
  Root = "{self.dir}/runc"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{self.work}/cni"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{self.work}/mirrors"
''')


class Containerd24(Daemon):
    """containerd 2.4 and its runc shim as hack/install.sh builds them
    (config version 3), the reference runtime."""
    name = "containerd-2.4"
    label = "containerd 2.4"
    sandbox_image = PAUSE_2_4

    def __init__(self, work, bindir):
        super().__init__(work)
        self.bindir = bindir

    @property
    def socket(self):
        return os.path.join(self.dir, "containerd.sock")

    def argv(self):
        return [os.path.join(self.bindir, "containerd"), "--config", self.config]

    def env(self):
        # Its own shim first: Debian's 1.6 shim is on PATH too.
        return dict(os.environ, PATH=self.bindir + ":" + os.environ.get("PATH", ""))

    def write_config(self):
        images, runtime = "plugins.'io.containerd.cri.v1.images'", "plugins.'io.containerd.cri.v1.runtime'"
        # Everything under self.dir but the shim sockets (/run/containerd/s);
        # the pods' netns go under the state dir too.
        with open(self.config, "w") as f:
            f.write(f'''version = 3
root = "{self.root}"
state = "{self.state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins.'io.containerd.internal.v1.opt']
  path = "{self.dir}/opt"

# Another containerd of the machine may own the default NRI socket.
[plugins.'io.containerd.nri.v1.nri']
  disable = true
  socket_path = "{self.dir}/nri.sock"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{images}]
  snapshotter = "overlayfs"

[{images}.pinned_images]
  sandbox = "{PAUSE_2_4}"

[{images}.registry]
  config_path = "{self.work}/mirrors"

[{runtime}]
  # root lacks CAP_SYS_RESOURCE on these machines (CRITEST-NOTES.md)
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[{runtime}.containerd]
  default_runtime_name = "runc"

[{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  runtime_path = "{self.bindir}/containerd-shim-runc-v2"

[{runtime}.containerd.runtimes.runc.options]
  BinaryName = "runc"
  Root = "{self.dir}/runc"
  SystemdCgroup = false

[{runtime}.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "{self.work}/cni"
  max_conf_num = 1
''')


class Results:
    """Figures in report order: (section, metric) -> unit, samples and the n/a
    reason of each runtime."""

    def __init__(self, runtimes):
        self.runtimes = runtimes
        self.figures = {}
        self.sections = {}

    def section(self, key, title, note=""):
        self.sections[key] = (title, note)

    def _fig(self, section, metric, unit, better):
        key = (section, metric)
        if key not in self.figures:
            self.figures[key] = dict(unit=unit, better=better,
                                     samples={rt: [] for rt in self.runtimes},
                                     na={rt: None for rt in self.runtimes})
        return self.figures[key]

    def declare(self, section, metric, unit, better):
        """Creates a figure before any sample, so its direction is set
        whichever runtime reports first."""
        self._fig(section, metric, unit, better)

    def add(self, section, metric, unit, rt, value, better="lower"):
        self._fig(section, metric, unit, better)["samples"][rt].append(value)

    def fail(self, section, metric, unit, rt, reason, better="lower"):
        fig = self._fig(section, metric, unit, better)
        if fig["na"][rt] is None:
            fig["na"][rt] = reason

    def failed(self, section, metric, rt):
        fig = self.figures.get((section, metric))
        return fig is not None and fig["na"][rt] is not None


def nearest_rank(values, q):
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def summary(fig, rt):
    samples, na = fig["samples"][rt], fig["na"][rt]
    if na is not None or not samples:
        return dict(n=len(samples), median=None, p99=None, na=na or "no samples", samples=samples)
    return dict(n=len(samples), median=statistics.median(samples), p99=nearest_rank(samples, 0.99),
                na=None, samples=samples)


def order(daemons, i):
    """Rotate which runtime goes first."""
    k = i % len(daemons)
    return daemons[k:] + daemons[:k]


# --- the benchmarks ----------------------------------------------------------

class Bench:
    def __init__(self, args, cfg, daemons, res):
        self.args, self.cfg, self.daemons, self.res = args, cfg, daemons, res
        self.specs = os.path.join(args.work, "specs")
        os.makedirs(self.specs, exist_ok=True)
        self.container_spec = os.path.join(self.specs, "container.json")
        with open(self.container_spec, "w") as f:
            json.dump({"metadata": {"name": "sleep"}, "image": {"image": BUSYBOX},
                       "command": ["sleep", "3600"], "linux": {}}, f)
        self.prep_error = {}

    def pod_spec(self, tag):
        path = os.path.join(self.specs, f"pod-{tag}.json")
        with open(path, "w") as f:
            json.dump({"metadata": {"name": f"bench-{tag}", "namespace": "berth-bench",
                                    "uid": uuid.uuid4().hex, "attempt": 0},
                       "hostname": f"bench-{tag}", "linux": {}}, f)
        return path

    def lifecycle(self, d, tag):
        """RunPodSandbox, CreateContainer, StartContainer, StopPodSandbox,
        RemovePodSandbox: the seconds each took."""
        spec = self.pod_spec(f"{d.name}-{tag}")
        times, pod = {}, None

        def step(name, *args):
            t0 = time.perf_counter()
            out = d.crictl(*args)
            times[name] = time.perf_counter() - t0
            return out

        try:
            pod = step("RunPodSandbox", "runp", spec)
            ctr = step("CreateContainer", "create", pod, self.container_spec, spec)
            step("StartContainer", "start", ctr)
            step("StopPodSandbox", "stopp", pod)
            step("RemovePodSandbox", "rmp", pod)
            pod = None
        finally:
            if pod is not None:
                for cmd in (["stopp", pod], ["rmp", "-f", pod]):
                    try:
                        d.crictl(*cmd, timeout=120)
                    except Unavailable:
                        pass
        return times

    def daemon_basics(self, d, start_seconds):
        sec = "daemon"
        self.res.add(sec, "start until `crictl version` answers", "ms", d.name, start_seconds * 1000)
        time.sleep(1)
        self.res.add(sec, "idle RSS, empty root, 1 s after start", "MiB", d.name, d.rss() / MIB)

    def pull(self):
        sec, ref = "pull", f"{self.args.registry}/{LARGE}"
        size, layers = image_size(self.args.registry, LARGE)
        self.res.section("daemon", "Daemon start and idle memory",
                         "Measured on each fresh daemon of the pull benchmark. `crictl version` is "
                         "called in a loop (one crictl start, ~20-40 ms, is included). "
                         "The round trip row is one `crictl version` on a warm daemon.")
        self.res.section(sec, f"Cold pull of `{ref}` ({size / 1e6:.1f} MB compressed, {layers} layers)",
                         "Each run starts the daemon on an empty root, so nothing is cached, and syncs the disk "
                         "before the pull; "
                         "time of `crictl pull` (download and unpack); MB/s = compressed bytes / time; "
                         "peak RSS = the daemon's VmHWM after the pull (its high-water mark since start).")
        self.pull_size = size
        metrics = [("time", "s", "lower"), ("throughput", "MB/s", "higher"), ("peak RSS (VmHWM)", "MiB", "lower")]
        n = self.cfg["pulls"]
        for i in range(n):
            for d in order(self.daemons, i):
                d.reset()
                self.daemon_basics(d, d.start())
                if not self.res.failed(sec, "time", d.name):
                    # Write back the previous run's files (and their removal)
                    # first, so that no pull pays for another's dirty pages.
                    os.sync()
                    try:
                        t0 = time.perf_counter()
                        d.crictl("pull", ref)
                        dt = time.perf_counter() - t0
                        hwm = proc_status(d.pid, "VmHWM")
                        self.res.add(sec, "time", "s", d.name, dt)
                        self.res.add(sec, "throughput", "MB/s", d.name, size / 1e6 / dt, better="higher")
                        self.res.add(sec, "peak RSS (VmHWM)", "MiB", d.name, hwm / MIB)
                        log(f"pull {i + 1}/{n} {d.name}: {dt:.2f} s, {size / 1e6 / dt:.0f} MB/s, "
                            f"VmHWM {hwm / MIB:.1f} MiB")
                    except Unavailable as e:
                        log(f"pull {i + 1}/{n} {d.name}: n/a: {e}")
                        for metric, unit, better in metrics:
                            self.res.fail(sec, metric, unit, d.name, str(e), better)
                d.stop()

    def start_warm(self):
        """Start every daemon on fresh roots for the remaining benchmarks;
        pull pause and busybox, then one unmeasured lifecycle."""
        for d in self.daemons:
            d.reset()
            d.start()
        for i in range(self.cfg["version_calls"]):
            for d in order(self.daemons, i):
                t0 = time.perf_counter()
                d.crictl("version")
                self.res.add("daemon", "`crictl version` round trip", "ms", d.name,
                             (time.perf_counter() - t0) * 1000)
        for d in self.daemons:
            try:
                d.crictl("pull", d.sandbox_image)
                d.crictl("pull", BUSYBOX)
                self.lifecycle(d, "warmup")
            except Unavailable as e:
                self.prep_error[d.name] = f"warm-up {e}"
                log(f"{d.name}: warm-up failed, its pod figures are n/a: {e}")

    def ready(self, d, sec, metrics):
        """False (and the figures n/a) when the warm-up or an earlier sample failed."""
        reason = self.prep_error.get(d.name)
        if reason is None and not any(self.res.failed(sec, m, d.name) for m, _ in metrics):
            return True
        for metric, unit in metrics:
            self.res.fail(sec, metric, unit, d.name, reason or "an earlier sample failed")
        return False

    def serial(self):
        sec, n = "serial", self.cfg["serial"]
        self.res.section(sec, f"Pod lifecycle, serial ({n} iterations)",
                         f"`crictl runp` → `create` → `start` → `stopp` → `rmp`, pod with one container "
                         f"(`{BUSYBOX}`, `sleep 3600`), images already pulled; each step is one crictl "
                         "process, so its ~20-40 ms start-up is in every step for every runtime.")
        metrics = [("whole lifecycle", "ms")] + [(s, "ms") for s in LIFECYCLE_STEPS]
        for i in range(n):
            for d in order(self.daemons, i):
                if not self.ready(d, sec, metrics):
                    continue
                try:
                    times = self.lifecycle(d, f"serial-{i}")
                except Unavailable as e:
                    log(f"serial {d.name}: n/a: {e}")
                    for metric, unit in metrics:
                        self.res.fail(sec, metric, unit, d.name, str(e))
                    continue
                self.res.add(sec, "whole lifecycle", "ms", d.name, sum(times.values()) * 1000)
                for s in LIFECYCLE_STEPS:
                    self.res.add(sec, s, "ms", d.name, times[s] * 1000)
            if (i + 1) % 10 == 0 or i + 1 == n:
                log(f"serial lifecycle {i + 1}/{n}")

    def parallel(self):
        sec, p, rounds = "parallel", self.cfg["parallel"], self.cfg["parallel_rounds"]
        self.res.section(sec, f"Pod lifecycle, {p} in parallel ({rounds} round(s))",
                         f"{p} lifecycles as above started at once; latency of each lifecycle, and the "
                         "wall time of a round.")
        metrics = [("lifecycle latency", "ms"), ("round wall time", "s")]
        for r in range(rounds):
            for d in order(self.daemons, r + 1):
                if not self.ready(d, sec, metrics):
                    continue
                t0 = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(p) as pool:
                    futures = [pool.submit(self.lifecycle, d, f"par-{r}-{k}") for k in range(p)]
                    outcomes = []
                    for fut in futures:
                        try:
                            outcomes.append(sum(fut.result().values()))
                        except Unavailable as e:
                            outcomes.append(e)
                wall = time.perf_counter() - t0
                errors = [o for o in outcomes if isinstance(o, Unavailable)]
                if errors:
                    log(f"parallel {d.name}: n/a: {errors[0]}")
                    for metric, unit in metrics:
                        self.res.fail(sec, metric, unit, d.name, str(errors[0]))
                    continue
                for o in outcomes:
                    self.res.add(sec, "lifecycle latency", "ms", d.name, o * 1000)
                self.res.add(sec, "round wall time", "s", d.name, wall)
                log(f"parallel round {r + 1}/{rounds} {d.name}: {wall:.2f} s")

    def density(self):
        sec, n = "density", self.cfg["density"]
        self.res.section(sec, f"Density: {n} pods, one sleeping container each",
                         f"Pods started one after the other (runp, create, start); RSS read 2 s after the "
                         "last start; shims = the runtime's shim processes (containerd: one "
                         "containerd-shim-runc-v2 per pod). One sample per runtime.")
        metrics = [(f"wall time to start {n} pods", "s"), (f"daemon RSS with {n} pods", "MiB"),
                   ("daemon peak RSS while starting (sampled every 20 ms)", "MiB"),
                   ("shim processes", "count"), ("RSS of all shims", "MiB"), ("RSS per shim", "MiB")]
        for d in order(self.daemons, 0):
            if not self.ready(d, sec, metrics):
                continue
            pods = []
            try:
                with RssSampler(d.pid) as sampler:
                    t0 = time.perf_counter()
                    for i in range(n):
                        spec = self.pod_spec(f"{d.name}-density-{i}")
                        pods.append(d.crictl("runp", spec))
                        ctr = d.crictl("create", pods[-1], self.container_spec, spec)
                        d.crictl("start", ctr)
                    wall = time.perf_counter() - t0
                time.sleep(2)
                shims = d.shim_pids()
                shim_rss = [proc_status(pid, "VmRSS") or 0 for pid in shims]
                values = [wall, d.rss() / MIB, sampler.peak / MIB, len(shims), sum(shim_rss) / MIB,
                          (sum(shim_rss) / len(shims) / MIB) if shims else None]
                for (metric, unit), v in zip(metrics, values):
                    if v is None:
                        self.res.fail(sec, metric, unit, d.name, "no shim process found")
                    else:
                        self.res.add(sec, metric, unit, d.name, v)
                log(f"density {d.name}: {n} pods in {wall:.1f} s, daemon {values[1]:.1f} MiB, "
                    f"{len(shims)} shims {values[4]:.1f} MiB")
            except Unavailable as e:
                log(f"density {d.name}: n/a: {e}")
                for metric, unit in metrics:
                    self.res.fail(sec, metric, unit, d.name, str(e))
            finally:
                def remove(pod):
                    for cmd in (["stopp", pod], ["rmp", "-f", pod]):
                        try:
                            d.crictl(*cmd, timeout=120)
                        except Unavailable as e:
                            log(f"density {d.name}: cleaning up {pod}: {e}")
                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    list(pool.map(remove, pods))

    def load(self):
        """berth-load against each runtime: pod lifecycles at a concurrency
        with List/Status calls beside them (loadgen/)."""
        sec, n, c = "load", self.cfg["load"]["pods"], self.cfg["load"]["concurrency"]
        self.res.section(sec, f"Load: {n} pods at concurrency {c} (`berth-load`)",
                         f"`berth-load --pods {n} --concurrency {c} --hammer 2`: each pod runs two `{BUSYBOX}` "
                         "containers, one ExecSync and one read of a container's CRI log file, then is stopped "
                         "and removed, as kubelet does it, while 2 tasks call ListPodSandbox, ListContainers, "
                         "ContainerStatus, PodSandboxStatus, Version and Status back to back; one gRPC "
                         "connection, no crictl processes. Throughput = completed pods / wall time; pod "
                         "latency = one pod's whole lifecycle (median = p50). Any error makes the figures n/a.")
        metrics = [("throughput", "pods/s", "higher"), ("pod lifecycle latency", "ms", "lower"),
                   ("RunPodSandbox p99 under load", "ms", "lower"),
                   ("List/Status calls: p99 of the slowest method", "ms", "lower")]
        for metric, unit, better in metrics:
            self.res.declare(sec, metric, unit, better)
        for d in order(self.daemons, 2):
            if not self.ready(d, sec, [(m, u) for m, u, _ in metrics]):
                continue
            report_file = os.path.join(d.dir, "load.json")
            argv = [self.args.berth_load, "--endpoint", f"unix://{d.socket}", "--image", BUSYBOX,
                    "--pods", str(n), "--concurrency", str(c), "--hammer", "2",
                    "--log-dir", os.path.join(d.dir, "load-logs"), "--json", report_file]
            log(f"berth-load against {d.name}: {n} pods at {c}")
            try:
                report = self.berth_load(d, argv, report_file)
            except Unavailable as e:
                log(f"load {d.name}: n/a: {e}")
                for metric, unit, better in metrics:
                    self.res.fail(sec, metric, unit, d.name, str(e), better)
                d.remove_pods()
                continue
            rpc = report["rpc_ms"]
            slowest = max((rpc[m]["p99"] for m in LOAD_HAMMERED if rpc.get(m, {}).get("n")), default=None)
            values = [report["pods_per_s"], None, rpc.get("RunPodSandbox", {}).get("p99"), slowest]
            for (metric, unit, better), v in zip(metrics, values):
                if metric == "pod lifecycle latency":
                    for ms in report["pod_ms_samples"]:
                        self.res.add(sec, metric, unit, d.name, ms, better)
                elif v is None:
                    self.res.fail(sec, metric, unit, d.name, "berth-load timed no such call", better)
                else:
                    self.res.add(sec, metric, unit, d.name, v, better)
            log(f"load {d.name}: {report['pods_per_s']:.2f} pods/s, pod p50 {report['pod_ms']['p50']:.0f} ms, "
                f"p99 {report['pod_ms']['p99']:.0f} ms")

    @staticmethod
    def berth_load(d, argv, report_file):
        """Runs berth-load; its JSON report, or Unavailable with the first error."""
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        except subprocess.TimeoutExpired:
            raise Unavailable("berth-load: no result within 3600 s") from None
        with open(os.path.join(d.dir, "load.log"), "w") as f:
            f.write(r.stdout + r.stderr)
        try:
            with open(report_file) as f:
                report = json.load(f)
        except (OSError, ValueError):
            lines = r.stderr.strip().splitlines()
            raise Unavailable(f"berth-load (exit {r.returncode}): {lines[-1] if lines else 'no report'}"[:200]) from None
        if r.returncode != 0 or report["errors"]:
            first = (report["error_messages"] or ["?"])[0]
            raise Unavailable(f"berth-load: {report['errors']} error(s), the first: {first}"[:200])
        return report

    def critest(self):
        params = dict(self.cfg["critest"], containersNumberParallel=1, podsNumberParallel=1,
                      imagesNumberParallel=1)
        self.res.section("critest", "`critest -benchmark`",
                         "cri-tools' own benchmarks: bare CRI calls from critest (no crictl start-up), "
                         f"each operation in ms; parameters: {json.dumps(params)}. The pod benchmark's "
                         "CreatePod is RunPodSandbox; the image lifecycle pulls "
                         "`public.ecr.aws/docker/library/busybox:1.35.0-glibc` through the mirror.")
        for d in order(self.daemons, 1):
            out = os.path.join(d.dir, "critest")
            os.makedirs(out, exist_ok=True)
            params_file = os.path.join(out, "params.yaml")
            with open(params_file, "w") as f:
                f.writelines(f"{k}: {v}\n" for k, v in params.items())
            argv = ["critest", "-benchmark", f"--runtime-endpoint=unix://{d.socket}",
                    f"--image-endpoint=unix://{d.socket}", f"--benchmarking-params-file={params_file}",
                    f"--benchmarking-output-dir={out}", "--ginkgo.no-color"]
            log(f"critest -benchmark against {d.name}")
            t0 = time.monotonic()
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=out)
                output, rc = r.stdout + r.stderr, r.returncode
            except subprocess.TimeoutExpired as e:
                output, rc = (e.stdout or b"").decode(errors="replace"), "timeout"
            with open(os.path.join(out, "critest.log"), "w") as f:
                f.write(output)
            log(f"critest against {d.name}: exit {rc} after {time.monotonic() - t0:.0f} s")
            reason = rpc_reason(f"critest (exit {rc})", output) if rc != 0 else None
            for fname, (sec, ops) in CRITEST_FILES.items():
                path = os.path.join(out, fname)
                data = None
                if os.path.exists(path):
                    with open(path) as f:
                        data = json.load(f)
                if not data or not data.get("datapoints"):
                    for op in ops:
                        self.res.fail("critest", f"{sec}: {op}", "ms", d.name,
                                      reason or f"critest wrote no {fname}")
                    continue
                names = data.get("operationsNames") or ops
                for point in data["datapoints"]:
                    for op, ns in zip(names, point["operationsDurationsNs"]):
                        self.res.add("critest", f"{sec}: {op}", "ms", d.name, ns / 1e6)
            d.remove_pods()


def image_size(registry, ref):
    """Compressed size (config + layers) and layer count of REF's linux/amd64 image."""
    repo, tag = ref.rsplit(":", 1)
    accept = ", ".join(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json"])

    def get(reference):
        req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{reference}",
                                     headers={"Accept": accept})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    m = get(tag)
    if "manifests" in m:
        amd64 = [e for e in m["manifests"] if e.get("platform", {}).get("architecture") == "amd64"]
        m = get(amd64[0]["digest"])
    return m["config"]["size"] + sum(layer["size"] for layer in m["layers"]), len(m["layers"])


# --- the report ---------------------------------------------------------------

def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        lines = (r.stdout + r.stderr).strip().splitlines()
        return lines[0].strip() if lines else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def environment(args):
    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    os_name = "?"
    if os.path.exists("/etc/os-release"):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    git = ["git", "-C", args.repo]
    commit = first_line(git + ["rev-parse", "HEAD"])
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() != ""
    critest = next((line for line in subprocess.run(["critest", "--version"], capture_output=True,
                                                    text=True).stdout.splitlines()
                    if line.startswith("critest version")), "?")
    return {
        "machine": {"cores": os.cpu_count(), "cpu": model,
                    "memory_bytes": int(meminfo["MemTotal"].split()[0]) * 1024,
                    "kernel": platform.release(), "os": os_name},
        "versions": {"berth_commit": commit, "berth_tree_dirty": dirty,
                     "berthd": first_line([args.berthd, "--version"]),
                     "containerd_2_4": first_line([os.path.join(args.containerd_bin, "containerd"), "--version"]),
                     "containerd_1_6": first_line(["containerd", "--version"]),
                     "runc": first_line(["runc", "--version"]),
                     "crictl": first_line(["crictl", "--version"]),
                     "critest": critest.split(":", 1)[-1].strip()},
    }


def fmt(v, unit):
    if v is None:
        return "–"
    if unit == "count":
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.0f} {unit}"
    if abs(v) >= 10:
        return f"{v:.1f} {unit}"
    return f"{v:.2f} {unit}"


def short_version(line):
    """"containerd github.com/containerd/containerd 1.6.20~ds1 ..." -> "containerd 1.6.20~ds1"
    (2.x prints "v2.4.2": the v is dropped)."""
    words = line.split()
    name = words[0] if words else "?"
    version = next((w.lstrip("v") for w in words[1:] if w.lstrip("v")[:1].isdigit()), "?")
    return f"{name} {version}"


def ratio(b, c):
    return None if b is None or c in (None, 0) else b / c


def write_report(args, res, env, cfg, meta, daemons):
    rows = []
    for (sec, metric), fig in res.figures.items():
        per_runtime = {d.name: summary(fig, d.name) for d in daemons}
        b, c = per_runtime["berth"], per_runtime[REFERENCE]
        rows.append(dict(section=sec, metric=metric, unit=fig["unit"], better=fig["better"], **per_runtime,
                         ratio_to=REFERENCE,
                         ratio_median=ratio(b["median"], c["median"]), ratio_p99=ratio(b["p99"], c["p99"])))
    doc = dict(generated_by="hack/bench/run.sh", mode=args.mode, config=cfg, **meta, **env, results=rows)
    with open(args.out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

    m, v = env["machine"], env["versions"]
    lines = [
        "# Benchmarks: berth and containerd side by side",
        "",
        f"Written by `hack/bench/run.sh{' --short' if args.mode == 'short' else ''}` on {meta['date']}; "
        "rerun it rather than editing this file. Machine-readable: [`benchmarks.json`](benchmarks.json) "
        "(every sample).",
        "",
        "| | |",
        "| --- | --- |",
        f"| mode | {'short (few iterations, a smoke run)' if args.mode == 'short' else 'full'}; "
        f"the benchmarks took {meta['duration_s']:.0f} s |",
        f"| machine | {m['cores']} cores ({m['cpu']}), {m['memory_bytes'] / 2**30:.1f} GiB, "
        f"kernel {m['kernel']}, {m['os']}; load average {meta['loadavg_start']} at start, "
        f"{meta['loadavg_end']} at end |",
        f"| berth | commit `{v['berth_commit'][:12]}`{' (plus uncommitted changes)' if v['berth_tree_dirty'] else ''}, "
        f"{v['berthd']} ({'debug' if '/debug/' in args.berthd else 'release'} build) |",
        f"| containerd 2.4 (reference) | {short_version(v['containerd_2_4'])} and its containerd-shim-runc-v2, "
        "built from the Go module proxy by hack/install.sh (config version 3, overlayfs, "
        f"`{PAUSE_2_4}`), {short_version(v['runc'])} |",
        f"| containerd 1.6 (old baseline) | {short_version(v['containerd_1_6'])} "
        f"(Debian package; io.containerd.runc.v2 shim, overlayfs, `{PAUSE_1_6}`), {short_version(v['runc'])} |",
        f"| tools | {v['crictl']}; critest {v['critest']} |",
        f"| setup | all runtimes on one loopback registry ({args.registry}, hosts.toml mirrors), "
        "one CNI bridge config (benchbr0, 10.77.0.0/16), runc, cgroupfs |",
        "",
        "Each figure: median and p99 over n samples (p99 by nearest rank, so it is the maximum when n < 100) "
        "and the ratio berth / containerd 2.4: below 1 means berth is lower (faster, smaller), except for MB/s "
        "and pods/s where above 1 is better. containerd 1.6 is shown as the older baseline, not in the ratios. The machine is shared with other users, so figures are noisy; nothing here "
        "is a pass/fail threshold. `n/a` means berth could not do the step yet: the cell holds the error "
        "it returned.",
    ]
    for sec, (title, note) in res.sections.items():
        sec_rows = [r for r in rows if r["section"] == sec]
        if not sec_rows:
            continue
        heads = "".join(f" {d.label} median | {d.label} p99 |" for d in daemons)
        lines += ["", f"## {title}", "", note, "",
                  f"| metric |{heads} ratio median | ratio p99 |",
                  "| --- |" + " --- | --- |" * len(daemons) + " --- | --- |"]
        for r in sec_rows:
            cells = []
            for rt in (d.name for d in daemons):
                s = r[rt]
                if s["na"] is not None:
                    cells += [f"n/a: {s['na']}", "–"]
                else:
                    cells += [fmt(s["median"], r["unit"]) + f" (n={s['n']})", fmt(s["p99"], r["unit"])]
            rm, rp = r["ratio_median"], r["ratio_p99"]
            cells += ["–" if rm is None else f"{rm:.2f}", "–" if rp is None else f"{rp:.2f}"]
            lines.append(f"| {r['metric']} | " + " | ".join(cells) + " |")
    if meta["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="full")
    ap.add_argument("--work", required=True)
    ap.add_argument("--berthd", required=True)
    ap.add_argument("--registry", required=True, help="HOST:PORT of the loopback registry")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--containerd-bin", required=True,
                    help="directory of containerd 2.4 and its containerd-shim-runc-v2")
    ap.add_argument("--berth-load", required=True, help="the berth-load binary")
    ap.add_argument("--out", required=True, help="output path without .md/.json")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally below stops the daemons.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cfg = MODES[args.mode]
    # Read before this run may overwrite it (a full run writes docs/benchmarks.*).
    committed = berth_figures(os.path.join(args.repo, "docs", "benchmarks.json"))
    t0, start_load = time.monotonic(), loadavg()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    daemons = [Berth(args.work, args.berthd), Containerd24(args.work, args.containerd_bin), Containerd(args.work)]
    res = Results([d.name for d in daemons])
    bench = Bench(args, cfg, daemons, res)
    notes = []
    try:
        bench.pull()
        bench.start_warm()
        bench.serial()
        bench.parallel()
        bench.density()
        bench.load()
        bench.critest()
    finally:
        for d in daemons:
            try:
                d.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {d.name}: {e}")
    leftover = [m for m in mounts_under(args.work)]
    if leftover:
        notes.append(f"mounts left under the work dir after the daemons stopped: {leftover}")
    env = environment(args)
    meta = dict(date=date, duration_s=time.monotonic() - t0, loadavg_start=start_load, loadavg_end=loadavg(),
                pull_image=f"{args.registry}/{LARGE}", pull_image_bytes=getattr(bench, "pull_size", None),
                notes=notes)
    write_report(args, res, env, cfg, meta, daemons)
    log(f"wrote {args.out}.md and {args.out}.json")
    # containerd 2.4 is the reference: a figure it could not produce means
    # the benchmark itself is broken (CI runs --short to catch that).
    # containerd 1.6's n/a cells are only reported.
    broken = sorted({f"{sec} / {metric}: {fig['na'][REFERENCE] or 'no samples'}"
                     for (sec, metric), fig in res.figures.items()
                     if fig["na"][REFERENCE] or not fig["samples"][REFERENCE]})
    old = sorted({f"{sec} / {metric}: {fig['na'][Containerd.name]}"
                  for (sec, metric), fig in res.figures.items() if fig["na"][Containerd.name]})
    if old:
        log("containerd 1.6 is n/a (reported, not a failure):\n  " + "\n  ".join(old))
    # berth: a figure the committed report has must not become n/a (a step
    # that stopped working would else only show in a report CI throws away).
    lost = sorted({f"{sec} / {metric}: {fig['na']['berth'] or 'no samples'}"
                   for (sec, metric), fig in res.figures.items()
                   if (fig["na"]["berth"] or not fig["samples"]["berth"])
                   and figure_key(sec, metric) in committed})
    if lost:
        log("berth is n/a where docs/benchmarks.json has a figure:\n  " + "\n  ".join(lost))
    if broken:
        log(f"{REFERENCE} (the reference) failed where it must not:\n  " + "\n  ".join(broken))
    if broken or lost:
        sys.exit(1)


def figure_key(section, metric):
    """A figure's name without its counts ("start 30 pods" in a full run is
    "start 5 pods" in a short one)."""
    return section, re.sub(r"\d+", "N", metric)


def berth_figures(path):
    """The figures berth produced in the report at path (none if it is absent)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return set()
    return {figure_key(r["section"], r["metric"]) for r in doc.get("results", [])
            if r.get("berth", {}).get("na") is None}


if __name__ == "__main__":
    main()
