//! The shim against real runc (and crun): launched the way containerd
//! launches a shim, driven over ttrpc with containerd-shim-protos'
//! `TaskClient`. Needs root, runc and Debian's busybox-static (the
//! containers' rootfs is `/bin/busybox` and a few links to it).
//!
//! Each test owns a temp dir (bundle, runtime root, socket dir, log) and a
//! unique container id and cgroup; its guard kills only the shim it
//! started (by pid), deletes the container and removes its cgroups.

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, CreateTaskRequest, DeleteRequest, DeleteResponse,
    ExecProcessRequest, KillRequest, Mount, PidsRequest, ResizePtyRequest, ShutdownRequest,
    StartRequest, StateRequest, StatsRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_shim_protos::cgroups::metrics::Metrics;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim::oci::Options;
use containerd_shim_protos::shim_async::{create_events, Client, Events, TaskClient};
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::types::task::Status;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const BIN: &str = env!("CARGO_BIN_EXE_containerd-shim-berth-v2");
const NS: &str = "berth-test";
const LONG_LINE: usize = 40 * 1024;
const CHUNK: usize = 16 * 1024;
const BUSYBOX_LINKS: &[&str] = &["sh", "echo", "sleep", "cat", "stty"];

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(30_000_000_000)
}

struct Fixture {
    dir: tempfile::TempDir,
    id: String,
    shim_pid: Option<i32>,
}

impl Fixture {
    /// A bundle whose container runs `args`.
    fn new(name: &str, args: &[&str], terminal: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-shim-test")
            .tempdir()
            .expect("temp dir");
        let f = Self {
            dir,
            id: format!("{name}-{}", std::process::id()),
            shim_pid: None,
        };
        std::fs::create_dir(f.bundle()).expect("bundle dir");
        make_rootfs(&f.bundle().join("rootfs"));
        write_config(&f.bundle(), args, terminal, &f.cgroup());
        f
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("runtime-root")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("c.log")
    }

    fn cgroup(&self) -> String {
        format!("/berth-shim-test-{}", self.id)
    }

    fn launcher(&self, action: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["-namespace", NS, "-id", &self.id])
            .args(["-address", "/run/berth-test/berthd.sock", action])
            .current_dir(self.bundle())
            .env("BERTH_SHIM_SOCKET_DIR", self.socket_dir())
            .env_remove("TTRPC_ADDRESS");
        cmd
    }

    /// Runs `start` as containerd does; returns the address it printed.
    fn start_shim(&self, events: Option<&Path>) -> String {
        let mut cmd = self.launcher("start");
        if let Some(events) = events {
            cmd.env("TTRPC_ADDRESS", events);
        }
        let out = cmd.output().expect("run start");
        assert!(
            out.status.success(),
            "start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("start prints a JSON object");
        assert_eq!(reply["version"], 3, "{reply}");
        assert_eq!(reply["protocol"], "ttrpc", "{reply}");
        let address = reply["address"].as_str().expect("address").to_string();
        assert_eq!(
            std::fs::read_to_string(self.bundle().join("address")).expect("address file"),
            address
        );
        address
    }

    async fn connect(&mut self, address: &str) -> TaskClient {
        let client = TaskClient::new(Client::connect(address).await.expect("connect"));
        let resp = client
            .connect(
                ctx(),
                &ConnectRequest {
                    id: self.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("connect rpc");
        self.shim_pid = Some(resp.shim_pid as i32);
        self.check_daemonised(resp.shim_pid);
        client
    }

    /// The shim runs in its own session and process group, stdio detached
    /// (stderr is its log), so it outlives whoever started it.
    fn check_daemonised(&self, pid: u32) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("shim stat");
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .expect("stat format")
            .1
            .split(' ')
            .collect();
        let (pgrp, session) = (fields[2], fields[3]);
        assert_eq!(
            (pgrp, session),
            (pid.to_string().as_str(), pid.to_string().as_str())
        );
        let fd = |n: u32| std::fs::read_link(format!("/proc/{pid}/fd/{n}")).expect("shim fd");
        assert_eq!(fd(0), Path::new("/dev/null"));
        assert_eq!(fd(1), Path::new("/dev/null"));
        assert_eq!(fd(2), self.bundle().join("shim.log"));
    }

    fn options(&self, runtime: &str) -> MessageField<Any> {
        let options = Options {
            binary_name: runtime.into(),
            root: self.root().display().to_string(),
            ..Default::default()
        };
        MessageField::some(Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: options.write_to_bytes().expect("encode options"),
            ..Default::default()
        })
    }

    fn create_request(&self, runtime: &str) -> CreateTaskRequest {
        let log = format!("file://{}", self.log().display());
        CreateTaskRequest {
            id: self.id.clone(),
            bundle: self.bundle().display().to_string(),
            stdout: log.clone(),
            stderr: log,
            options: self.options(runtime),
            ..Default::default()
        }
    }

    fn runc_list(&self) -> String {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.root())
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = self.cgroup().trim_start_matches('/').to_string();
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|dirs| {
                dirs.filter_map(|d| d.ok())
                    .map(|d| d.path().join(&rel))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn state(&self) -> StateRequest {
        StateRequest {
            id: self.id.clone(),
            ..Default::default()
        }
    }

    async fn create_start(&self, client: &TaskClient, req: &CreateTaskRequest) -> u32 {
        let created = client.create(ctx(), req).await.expect("create");
        assert!(created.pid > 0);
        let state = client.state(ctx(), &self.state()).await.expect("state");
        assert_eq!(state.status.enum_value(), Ok(Status::CREATED));
        let started = client
            .start(
                ctx(),
                &StartRequest {
                    id: self.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("start");
        assert_eq!(started.pid, created.pid);
        created.pid
    }

    async fn wait(&self, client: &TaskClient, exec_id: &str) -> u32 {
        let req = WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            client.wait(ttrpc::context::Context::default(), &req),
        )
        .await
        .expect("wait in time")
        .expect("wait");
        assert!(resp.exited_at.is_some());
        resp.exit_status
    }

    async fn delete(&self, client: &TaskClient) -> DeleteResponse {
        client
            .delete(
                ctx(),
                &DeleteRequest {
                    id: self.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("delete")
    }

    /// Shuts the shim down; checks that no process, container, cgroup or
    /// socket is left.
    async fn shutdown_and_check(&self, client: &TaskClient) {
        client
            .shutdown(
                ctx(),
                &ShutdownRequest {
                    id: self.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("shutdown");
        wait_gone(self.shim_pid.expect("connected")).await;
        self.check_nothing_left();
    }

    fn check_nothing_left(&self) {
        assert!(
            !self.runc_list().contains(&self.id),
            "runc still lists {}",
            self.id
        );
        assert_eq!(self.cgroup_dirs(), Vec::<PathBuf>::new(), "cgroups left");
        let sockets: Vec<_> = std::fs::read_dir(self.socket_dir())
            .expect("socket dir")
            .collect();
        assert!(sockets.is_empty(), "sockets left: {sockets:?}");
        let rootfs = self.bundle().join("rootfs");
        let table = berth_mount::mountinfo::read_self().expect("mountinfo");
        assert_eq!(
            berth_mount::mountinfo::under(&table, &rootfs).count(),
            0,
            "rootfs still mounted"
        );
    }

    fn log_records(&self) -> Vec<(String, String, String)> {
        parse_log(&std::fs::read_to_string(self.log()).expect("read log"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.bundle().join("shim.log")).unwrap_or_default();
            eprintln!("--- shim.log of {}:\n{log}---", self.id);
        }
        if let Some(pid) = self.shim_pid.filter(|&p| alive(p)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = Command::new("runc")
            .arg("--root")
            .arg(self.root())
            .args(["delete", "--force", &self.id])
            .output();
        let rootfs = self.bundle().join("rootfs");
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        for dir in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn make_rootfs(rootfs: &Path) {
    let busybox = Path::new("/bin/busybox");
    let ldd = Command::new("ldd").arg(busybox).output().expect("run ldd");
    assert!(
        busybox.exists() && !ldd.status.success(),
        "the tests need a static /bin/busybox: apt-get install busybox-static"
    );
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs/bin");
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    for name in BUSYBOX_LINKS {
        symlink("busybox", bin.join(name)).expect("busybox link");
    }
    let mut long = vec![b'x'; LONG_LINE];
    long.push(b'\n');
    std::fs::write(rootfs.join("long.txt"), long).expect("long.txt");
}

/// `runc spec`, edited: our args, terminal, a unique cgroup, no network
/// namespace.
fn write_config(bundle: &Path, args: &[&str], terminal: bool, cgroup: &str) {
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(bundle)
        .output()
        .expect("run runc spec");
    assert!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read config")).expect("parse config");
    config["process"]["args"] = serde_json::json!(args);
    config["process"]["terminal"] = serde_json::json!(terminal);
    config["linux"]["cgroupsPath"] = serde_json::json!(cgroup);
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.retain(|n| n["type"] != "network");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("encode"))
        .expect("write config");
}

/// Splits CRI log lines into (stream, tag, content), checking timestamps.
fn parse_log(text: &str) -> Vec<(String, String, String)> {
    assert!(text.is_empty() || text.ends_with('\n'), "log ends mid-line");
    text.lines()
        .map(|line| {
            let mut f = line.splitn(4, ' ');
            let ts = f.next().expect("timestamp");
            OffsetDateTime::parse(ts, &Rfc3339).unwrap_or_else(|e| panic!("timestamp {ts:?}: {e}"));
            let stream = f.next().expect("stream").to_string();
            let tag = f.next().expect("tag").to_string();
            let content = f.next().expect("content").to_string();
            assert!(stream == "stdout" || stream == "stderr", "{line}");
            assert!(tag == "P" || tag == "F", "{line}");
            (stream, tag, content)
        })
        .collect()
}

fn record(stream: &str, tag: &str, content: &str) -> (String, String, String) {
    (stream.to_string(), tag.to_string(), content.to_string())
}

/// Whether any thread of `pid` runs. A process whose leader is a zombie
/// may still have threads that hold its fds.
fn alive(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(|t| t.ok()).any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
        })
    })
}

async fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// Collects the events the shim forwards, as the agent's event server.
#[derive(Default)]
struct EventSink(Mutex<Vec<(String, Any)>>);

#[async_trait]
impl Events for EventSink {
    async fn forward(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let envelope = req.envelope.into_option().expect("envelope");
        assert_eq!(envelope.namespace, NS);
        self.0
            .lock()
            .expect("events lock")
            .push((envelope.topic, envelope.event.into_option().expect("event")));
        Ok(Empty::new())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_status_logs_exit_file_and_events() {
    let mut f = Fixture::new(
        "logs",
        &[
            "sh",
            "-c",
            "echo hello; echo err >&2; cat /long.txt; exit 3",
        ],
        false,
    );
    let sink = Arc::new(EventSink::default());
    let events = f.dir.path().join("events.sock");
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", events.display()))
        .expect("bind events")
        .register_service(create_events(sink.clone()));
    server.start().await.expect("events server");

    let address = f.start_shim(Some(&events));
    let client = f.connect(&address).await;
    let pid = f.create_start(&client, &f.create_request("runc")).await;
    assert_eq!(f.wait(&client, "").await, 3);

    let records = f.log_records();
    assert!(
        records.contains(&record("stdout", "F", "hello")),
        "{records:?}"
    );
    assert!(
        records.contains(&record("stderr", "F", "err")),
        "{records:?}"
    );
    let long: Vec<(&str, usize)> = records
        .iter()
        .filter(|r| r.2.starts_with('x'))
        .map(|r| (r.1.as_str(), r.2.len()))
        .collect();
    assert_eq!(
        long,
        vec![("P", CHUNK), ("P", CHUNK), ("F", LONG_LINE - 2 * CHUNK)]
    );

    let exit: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.bundle().join("exit.json")).expect("exit.json persisted"),
    )
    .expect("exit.json is JSON");
    assert_eq!(exit["version"], 1);
    assert_eq!(exit["id"], f.id.as_str());
    assert_eq!(exit["pid"], pid);
    assert_eq!(exit["exit_status"], 3);
    OffsetDateTime::parse(exit["exited_at"].as_str().expect("exited_at"), &Rfc3339)
        .expect("RFC 3339");

    let state = client.state(ctx(), &f.state()).await.expect("state");
    assert_eq!(state.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!((state.exit_status, state.pid), (3, pid));

    // Not deleted yet: the shim stays.
    let early = client
        .shutdown(
            ctx(),
            &ShutdownRequest {
                id: f.id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect_err("shutdown before delete");
    assert!(early.to_string().contains("not deleted"), "{early}");

    let deleted = f.delete(&client).await;
    assert_eq!((deleted.exit_status, deleted.pid), (3, pid));
    f.shutdown_and_check(&client).await;
    // A restarted agent still finds the exit with the shim gone.
    assert!(f.bundle().join("exit.json").exists());

    let exits = wait_for("TaskExit event", || {
        let got = sink.0.lock().expect("events lock");
        let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        if !topics.contains(&"/tasks/delete") {
            return None;
        }
        assert_eq!(
            topics,
            vec![
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete"
            ]
        );
        Some(
            got.iter()
                .find(|(t, _)| t == "/tasks/exit")
                .map(|(_, e)| e.clone()),
        )
    })
    .await
    .expect("exit event");
    let exit = TaskExit::parse_from_bytes(&exits.value).expect("TaskExit");
    assert_eq!(
        (exit.exit_status, exit.pid, exit.id.as_str()),
        (3, pid, f.id.as_str())
    );
    server.shutdown().await.expect("stop events server");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_exec_pids_stats_and_update() {
    let mut f = Fixture::new("kill", &["sleep", "1000"], false);
    let address = f.start_shim(None);
    let client = f.connect(&address).await;
    let pid = f.create_start(&client, &f.create_request("runc")).await;

    // An exec whose stdout is a FIFO, as the agent reads ExecSync output.
    let fifo = f.dir.path().join("exec-out");
    mkfifo(&fifo);
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            let mut out = String::new();
            std::fs::File::open(fifo)
                .expect("open fifo")
                .read_to_string(&mut out)
                .expect("read fifo");
            out
        }
    });
    let process = serde_json::json!({
        "args": ["sh", "-c", "echo inside; exit 7"],
        "cwd": "/",
        "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0},
    });
    client
        .exec(
            ctx(),
            &ExecProcessRequest {
                id: f.id.clone(),
                exec_id: "e1".into(),
                stdout: fifo.display().to_string(),
                spec: MessageField::some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&process).expect("encode process"),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let started = client
        .start(
            ctx(),
            &StartRequest {
                id: f.id.clone(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("start exec");
    assert!(started.pid > 0 && started.pid != pid);
    assert_eq!(f.wait(&client, "e1").await, 7);
    assert_eq!(reader.join().expect("reader"), "inside\n");
    let exec_state = client
        .state(
            ctx(),
            &StateRequest {
                id: f.id.clone(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("exec state");
    assert_eq!(exec_state.status.enum_value(), Ok(Status::STOPPED));
    let deleted = client
        .delete(
            ctx(),
            &DeleteRequest {
                id: f.id.clone(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("delete exec");
    assert_eq!(deleted.exit_status, 7);

    let pids = client
        .pids(
            ctx(),
            &PidsRequest {
                id: f.id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("pids");
    let pids: Vec<u32> = pids.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![pid]);

    // Resources: a pids limit, then seen in the stats.
    client
        .update(
            ctx(),
            &UpdateTaskRequest {
                id: f.id.clone(),
                resources: MessageField::some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .into(),
                    value: br#"{"pids":{"limit":123}}"#.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    let stats = client
        .stats(
            ctx(),
            &StatsRequest {
                id: f.id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("stats");
    let any = stats.stats.into_option().expect("stats any");
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let metrics = Metrics::parse_from_bytes(&any.value).expect("metrics");
    assert_eq!((metrics.pids.current, metrics.pids.limit), (1, 123));
    assert!(metrics.memory.usage.usage > 0);
    assert!(metrics.cpu.usage.total > 0);

    // Deleting a running container is refused.
    let refused = client
        .delete(
            ctx(),
            &DeleteRequest {
                id: f.id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect_err("delete while running");
    assert!(refused.to_string().contains("running"), "{refused}");

    client
        .kill(
            ctx(),
            &KillRequest {
                id: f.id.clone(),
                signal: 9,
                ..Default::default()
            },
        )
        .await
        .expect("kill");
    assert_eq!(f.wait(&client, "").await, 137);
    let again = client
        .kill(
            ctx(),
            &KillRequest {
                id: f.id.clone(),
                signal: 9,
                ..Default::default()
            },
        )
        .await
        .expect_err("kill after exit");
    assert!(again.to_string().contains("already finished"), "{again}");
    assert_eq!(f.delete(&client).await.exit_status, 137);
    f.shutdown_and_check(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_reopen_log_and_close_io() {
    let mut f = Fixture::new("stdin", &["cat"], false);
    let stdin = f.dir.path().join("stdin");
    mkfifo(&stdin);
    let address = f.start_shim(None);
    let client = f.connect(&address).await;
    let mut req = f.create_request("runc");
    req.stdin = stdin.display().to_string();
    f.create_start(&client, &req).await;

    // The agent keeps the FIFO open for writing, as CRI does without
    // stdin_once.
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&stdin)
        .expect("open stdin fifo");
    writer.write_all(b"before\n").expect("write stdin");
    wait_for("first line", || {
        f.log_records()
            .contains(&record("stdout", "F", "before"))
            .then_some(())
    })
    .await;

    let rotated = f.dir.path().join("c.log.1");
    std::fs::rename(f.log(), &rotated).expect("rotate log");
    client
        .update(
            ctx(),
            &UpdateTaskRequest {
                id: f.id.clone(),
                annotations: [("io.berth.shim.reopen-log".to_string(), String::new())].into(),
                ..Default::default()
            },
        )
        .await
        .expect("reopen log");
    writer.write_all(b"after\n").expect("write stdin");
    wait_for("line in the new log", || {
        std::fs::read_to_string(f.log())
            .ok()
            .filter(|t| t.contains(" stdout F after\n"))
    })
    .await;
    let old = std::fs::read_to_string(&rotated).expect("old log");
    assert!(!old.contains("after"), "{old}");

    // CloseIO: cat sees EOF and exits 0 while our writer is still open.
    client
        .close_io(
            ctx(),
            &CloseIORequest {
                id: f.id.clone(),
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .expect("close io");
    assert_eq!(f.wait(&client, "").await, 0);
    drop(writer);
    f.delete(&client).await;
    f.shutdown_and_check(&client).await;
}

/// CRI's stdin_once: the agent closes its end of the FIFO, and the
/// container's stdin reaches EOF.
#[tokio::test(flavor = "multi_thread")]
async fn stdin_fifo_eof_closes_stdin() {
    let mut f = Fixture::new("stdin-once", &["cat"], false);
    let stdin = f.dir.path().join("stdin");
    mkfifo(&stdin);
    let address = f.start_shim(None);
    let client = f.connect(&address).await;
    let mut req = f.create_request("runc");
    req.stdin = stdin.display().to_string();
    f.create_start(&client, &req).await;
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&stdin)
        .expect("open stdin fifo");
    writer.write_all(b"once\n").expect("write stdin");
    drop(writer);
    assert_eq!(f.wait(&client, "").await, 0);
    assert_eq!(f.log_records(), vec![record("stdout", "F", "once")]);
    f.delete(&client).await;
    f.shutdown_and_check(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_output_and_resize() {
    // The container waits (up to 30 s) until it sees the resize, instead
    // of hoping that the resize lands within a fixed sleep.
    let mut f = Fixture::new(
        "tty",
        &[
            "sh",
            "-c",
            "i=0; while [ \"$(stty size 2>/dev/null)\" != '30 100' ] && [ $i -lt 600 ]; \
             do sleep 0.05; i=$((i + 1)); done; stty size; echo tty-out",
        ],
        true,
    );
    let address = f.start_shim(None);
    let client = f.connect(&address).await;
    let mut req = f.create_request("runc");
    req.terminal = true;
    req.stderr = String::new();
    f.create_start(&client, &req).await;
    client
        .resize_pty(
            ctx(),
            &ResizePtyRequest {
                id: f.id.clone(),
                width: 100,
                height: 30,
                ..Default::default()
            },
        )
        .await
        .expect("resize");
    assert_eq!(f.wait(&client, "").await, 0);
    // runc clears ONLCR on the pty: lines end in "\n" alone.
    let records = f.log_records();
    assert_eq!(
        records,
        vec![
            record("stdout", "F", "30 100"),
            record("stdout", "F", "tty-out")
        ]
    );
    f.delete(&client).await;
    f.shutdown_and_check(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rootfs_mounts_are_mounted_and_unmounted() {
    let mut f = Fixture::new("mounts", &["cat", "/marker"], false);
    // The real rootfs lives elsewhere and comes as a bind mount, as
    // snapshotter mounts come in CreateTaskRequest.rootfs.
    let source = f.dir.path().join("lower");
    std::fs::rename(f.bundle().join("rootfs"), &source).expect("move rootfs");
    std::fs::write(source.join("marker"), "from the mount\n").expect("marker");
    let address = f.start_shim(None);
    let client = f.connect(&address).await;
    let mut req = f.create_request("runc");
    req.rootfs = vec![Mount {
        type_: "bind".into(),
        source: source.display().to_string(),
        options: vec!["rbind".into(), "rw".into()],
        ..Default::default()
    }];
    f.create_start(&client, &req).await;
    assert_eq!(f.wait(&client, "").await, 0);
    assert!(f
        .log_records()
        .contains(&record("stdout", "F", "from the mount")));
    f.delete(&client).await;
    f.shutdown_and_check(&client).await;
    let options: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.bundle().join("options.json")).expect("options.json"),
    )
    .expect("options JSON");
    assert_eq!(options["mounted_rootfs"], true);
    assert_eq!(options["binary_name"], "runc");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_action_cleans_up_after_a_dead_shim() {
    let mut f = Fixture::new("dead", &["sleep", "1000"], false);
    let address = f.start_shim(None);
    let client = f.connect(&address).await;
    let pid = f.create_start(&client, &f.create_request("runc")).await;
    drop(client);

    // A second start (an agent that restarted) finds the running shim.
    assert_eq!(f.start_shim(None), address);
    let client = f.connect(&address).await;
    let state = client.state(ctx(), &f.state()).await.expect("state");
    assert_eq!(
        (state.status.enum_value(), state.pid),
        (Ok(Status::RUNNING), pid)
    );
    drop(client);

    // While the shim serves, delete refuses.
    let out = f.launcher("delete").output().expect("run delete");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("still serves"));

    let shim = f.shim_pid.expect("connected");
    kill(Pid::from_raw(shim), Signal::SIGKILL).expect("kill the shim");
    wait_gone(shim).await;
    assert!(alive(pid as i32), "the container outlives its shim");

    let out = f.launcher("delete").output().expect("run delete");
    assert!(
        out.status.success(),
        "delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).expect("DeleteResponse");
    assert_eq!(resp.exit_status, 137);
    assert!(resp.exited_at.is_some());
    wait_gone(pid as i32).await;
    f.check_nothing_left();
}

/// crun runs containers like runc, also on this machine's hybrid cgroup
/// layout that crun 1.8.1 refuses by itself (the shim hides the v2 mount
/// from it): the container lands in its v1 cgroups.
#[tokio::test(flavor = "multi_thread")]
async fn crun_is_selectable() {
    let mut f = Fixture::new(
        "crun",
        &["sh", "-c", "grep memory /proc/self/cgroup; exit 4"],
        false,
    );
    let address = f.start_shim(None);
    let client = f.connect(&address).await;
    let created = client
        .create(ctx(), &f.create_request("crun"))
        .await
        .expect("crun creates the container");
    assert!(created.pid > 0);
    client
        .start(
            ctx(),
            &StartRequest {
                id: f.id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("start");
    assert_eq!(f.wait(&client, "").await, 4);
    let records = f.log_records();
    assert!(
        records
            .iter()
            .any(|(stream, _, line)| stream == "stdout" && line.contains(&f.id)),
        "the container's memory cgroup names it: {records:?}"
    );
    f.delete(&client).await;
    let crun_list = Command::new("crun")
        .arg("--root")
        .arg(f.root())
        .args(["list", "-q"])
        .output()
        .expect("crun list");
    assert!(!String::from_utf8_lossy(&crun_list.stdout).contains(&f.id));
    f.shutdown_and_check(&client).await;
}
