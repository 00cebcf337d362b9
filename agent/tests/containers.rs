//! Containers through the real CRI socket of an in-process berthd: real
//! shims, runc, snapshots and the busybox test image from a loopback
//! registry (`hack/registry.sh`, Debian's docker-registry). Needs root.
//! Each test has its own registry port, network and daemon, and checks
//! that no mount or process is left behind.

mod common;

use berth_e2e::leaks::{pids_running, process_exited};
use berth_proto::cri::v1 as cri;
use berth_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use common::{
    busybox_registry, container_config, pod_config, pod_status, pull, remove_pod, run_pod,
    stop_pod, Daemon, Options, Registry, BUSYBOX,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

async fn start_daemon(net: u8, registry: &Registry) -> Daemon {
    let daemon = Daemon::start(
        net,
        Options {
            registry_config_path: Some(registry.mirrors_dir()),
            ..Options::default()
        },
    )
    .await;
    pull(&daemon, BUSYBOX).await;
    daemon
}

async fn create(
    client: &mut Client,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn start(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .start_container(cri::StartContainerRequest {
            container_id: id.to_owned(),
        })
        .await
        .map(drop)
}

async fn status(client: &mut Client, id: &str) -> Result<cri::ContainerStatus, tonic::Status> {
    client
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner().status.expect("status"))
}

async fn exec(
    client: &mut Client,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    client
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

async fn wait_state(
    client: &mut Client,
    id: &str,
    state: cri::ContainerState,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = status(client, id).await.expect("status");
        if current.state == state as i32 {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {state:?}: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_for_file(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got {needle:?}: {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until process `pid` (`what`) has exited.
fn wait_exited(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !process_exited(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the file at `path` grows past `len` bytes.
fn wait_longer_than(path: &Path, len: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::fs::read_to_string(path).unwrap_or_default().len() > len {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod_with_logs(daemon: &Daemon, name: &str) -> cri::PodSandboxConfig {
    let mut config = pod_config(name);
    config.log_directory = daemon
        .dir
        .path()
        .join("logs")
        .join(name)
        .display()
        .to_string();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn container_lifecycle_exec_logs_and_resources() {
    let registry = busybox_registry();
    let daemon = start_daemon(21, &registry).await;
    let client = &mut daemon.client.clone();
    let pod_config = pod_with_logs(&daemon, "app");
    let pod = run_pod(client, pod_config.clone()).await.expect("run pod");

    let mut config = container_config(
        "main",
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; while true; do \
             if [ -e /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; sleep 0.1; done",
        ],
    );
    config.labels = [("tier".to_owned(), "web".to_owned())].into();
    config.annotations = [("note".to_owned(), "kept".to_owned())].into();
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(client, &pod, &pod_config, config)
        .await
        .expect("create");
    let created = status(client, &id).await.expect("status");
    assert_eq!(created.state, cri::ContainerState::ContainerCreated as i32);
    assert!(created.created_at > 0);
    assert_eq!(created.started_at, 0);
    assert_eq!(created.labels["tier"], "web");
    assert_eq!(created.annotations["note"], "kept");
    assert_eq!(created.image.as_ref().expect("image").image, BUSYBOX);
    assert!(
        created.image_ref.contains("@sha256:"),
        "{}",
        created.image_ref
    );
    assert!(created.image_id.starts_with("sha256:"));
    let log = Path::new(&pod_config.log_directory).join("main.log");
    assert_eq!(created.log_path, log.display().to_string());

    start(client, &id).await.expect("start");
    let running = status(client, &id).await.expect("status");
    assert_eq!(running.state, cri::ContainerState::ContainerRunning as i32);
    assert!(running.started_at >= running.created_at);
    let text = wait_for_file(&log, " stderr F err\n");
    assert!(text.contains(" stdout F out\n"), "{text}");
    let again = start(client, &id).await.expect_err("started twice");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);

    // Listing and filters.
    let list = |filter: cri::ContainerFilter| {
        let mut client = daemon.client.clone();
        async move {
            client
                .list_containers(cri::ListContainersRequest {
                    filter: Some(filter),
                })
                .await
                .expect("list")
                .into_inner()
                .containers
        }
    };
    assert_eq!(list(cri::ContainerFilter::default()).await.len(), 1);
    let by_pod = list(cri::ContainerFilter {
        pod_sandbox_id: pod.clone(),
        label_selector: [("tier".to_owned(), "web".to_owned())].into(),
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(by_pod.len(), 1);
    assert_eq!(by_pod[0].id, id);
    assert!(list(cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerExited as i32,
        }),
        ..Default::default()
    })
    .await
    .is_empty());

    // ExecSync: output, exit codes, and a timeout that kills only the exec.
    let out = exec(
        client,
        &id,
        &["sh", "-c", "id -u; hostname; echo oops >&2"],
        10,
    )
    .await
    .expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\napp\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.exit_code, 0);
    let failed = exec(client, &id, &["sh", "-c", "exit 3"], 10)
        .await
        .expect("exec");
    assert_eq!(failed.exit_code, 3);
    let started = Instant::now();
    let err = exec(client, &id, &["sleep", "4321"], 1)
        .await
        .expect_err("timeout");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let ps = exec(client, &id, &["ps"], 10).await.expect("ps");
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("4321"),
        "the exec was killed"
    );
    assert_eq!(
        status(client, &id).await.expect("status").state,
        cri::ContainerState::ContainerRunning as i32,
        "the container was not"
    );
    let big = exec(client, &id, &["sh", "-c", "head -c 20000000 /dev/zero"], 30)
        .await
        .expect("big output");
    assert_eq!(
        big.stdout.len(),
        16 * 1024 * 1024 - 64 * 1024,
        "capped to fit a 16 MiB message"
    );

    // The log is reopened after a rotation.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    client
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("reopen");
    exec(
        client,
        &id,
        &["sh", "-c", "echo after-rotation > /tmp/say"],
        10,
    )
    .await
    .expect("exec");
    wait_for_file(&log, " stdout F after-rotation\n");

    // Resources change in the cgroup and in the status.
    client
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("update");
    let updated = status(client, &id).await.expect("status");
    let resources = updated.resources.and_then(|r| r.linux).expect("resources");
    assert_eq!(resources.memory_limit_in_bytes, 96 << 20);
    let limit = exec(
        client,
        &id,
        &["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"],
        10,
    )
    .await
    .expect("exec");
    if limit.exit_code == 0 {
        assert_eq!(
            String::from_utf8_lossy(&limit.stdout).trim(),
            (96u64 << 20).to_string()
        );
    }

    // Stop with a grace period: sh dies of SIGTERM.
    client
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .expect("stop");
    let exited = status(client, &id).await.expect("status");
    assert_eq!(exited.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(exited.exit_code, 143);
    assert_eq!(exited.reason, "Error");
    assert!(exited.finished_at >= exited.started_at);
    let err = exec(client, &id, &["true"], 10).await.expect_err("exited");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    client
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .expect("stop twice");

    // A container that ends by itself completes.
    let done = create(
        client,
        &pod,
        &pod_config,
        container_config("done", &["true"]),
    )
    .await
    .expect("create");
    start(client, &done).await.expect("start");
    let completed = wait_state(client, &done, cri::ContainerState::ContainerExited).await;
    assert_eq!(completed.exit_code, 0);
    assert_eq!(completed.reason, "Completed");

    // A command that does not exist fails at create and leaves nothing.
    let err = create(
        client,
        &pod,
        &pod_config,
        container_config("bad", &["/no/such/binary"]),
    )
    .await
    .expect_err("no such binary");
    assert!(err.message().contains("/no/such/binary"), "{err}");
    assert_eq!(list(cri::ContainerFilter::default()).await.len(), 2);
    let bundles = std::fs::read_dir(daemon.state_dir().join("containers"))
        .expect("containers dir")
        .count();
    assert_eq!(bundles, 2, "the failed container's bundle is gone");

    // An unknown image is NotFound; so is an unknown container.
    let mut missing = container_config("missing", &["true"]);
    missing.image.as_mut().expect("image").image = "registry.k8s.io/no/such:1".into();
    let err = create(client, &pod, &pod_config, missing)
        .await
        .expect_err("no image");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let err = status(client, "0123456789").await.expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Remove one container, then the pod takes the other with it.
    client
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove");
    assert_eq!(
        status(client, &id).await.expect_err("gone").code(),
        tonic::Code::NotFound
    );
    client
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove twice");
    stop_pod(client, &pod).await;
    remove_pod(client, &pod).await;
    assert!(list(cri::ContainerFilter::default()).await.is_empty());
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_and_removing_a_pod_takes_its_running_containers() {
    let registry = busybox_registry();
    let daemon = start_daemon(22, &registry).await;
    let client = &mut daemon.client.clone();
    let pod_config = pod_with_logs(&daemon, "busy");
    let pod = run_pod(client, pod_config.clone()).await.expect("run pod");
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let id = create(
            client,
            &pod,
            &pod_config,
            container_config(name, &["sleep", "1000"]),
        )
        .await
        .expect("create");
        start(client, &id).await.expect("start");
        ids.push(id);
    }
    // A created, never started container too.
    ids.push(
        create(
            client,
            &pod,
            &pod_config,
            container_config("idle", &["sleep", "1000"]),
        )
        .await
        .expect("create"),
    );
    stop_pod(client, &pod).await;
    for id in &ids[..2] {
        let exited = status(client, id).await.expect("status");
        assert_eq!(exited.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(exited.exit_code, 137);
    }
    let err = create(
        client,
        &pod,
        &pod_config,
        container_config("late", &["true"]),
    )
    .await
    .expect_err("pod is stopped");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    // RemoveContainer of a running container kills it: none left to try;
    // RemovePodSandbox removes the created one and the exited ones.
    remove_pod(client, &pod).await;
    for id in &ids {
        assert_eq!(
            status(client, id).await.expect_err("gone").code(),
            tonic::Code::NotFound
        );
    }
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_a_restart_and_exits_meanwhile_are_reported() {
    let registry = busybox_registry();
    let mut daemon = start_daemon(23, &registry).await;
    let mut client = daemon.client.clone();
    let pod_config = pod_with_logs(&daemon, "restart");
    let pod = run_pod(&mut client, pod_config.clone())
        .await
        .expect("run pod");
    let make = |name: &'static str, command: &'static [&'static str]| {
        let mut client = client.clone();
        let pod = pod.clone();
        let pod_config = pod_config.clone();
        async move {
            let id = create(
                &mut client,
                &pod,
                &pod_config,
                container_config(name, command),
            )
            .await
            .expect("create");
            start(&mut client, &id).await.expect("start");
            id
        }
    };
    let keeps = make(
        "keeps",
        &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
    )
    .await;
    // Exits when told (by a file the test puts into its /tmp), so the exit
    // certainly falls while berthd is down.
    const EXIT_NOW: &str = "/tmp/berth-it-restart-exit-now";
    let exits = make(
        "exits",
        &[
            "sh",
            "-c",
            "until [ -e /tmp/berth-it-restart-exit-now ]; do sleep 0.05; done; exit 7",
        ],
    )
    .await;
    let orphaned = make("orphaned", &["sleep", "1000"]).await;
    let exiting = pids_running(EXIT_NOW);
    assert_eq!(
        exiting.len(),
        1,
        "the exiting container's process: {exiting:?}"
    );
    daemon.shutdown().await;

    // While berthd is down: one container exits, another's shim is killed;
    // both are seen to end before berthd comes back.
    std::fs::write(format!("/proc/{}/root{EXIT_NOW}", exiting[0]), "")
        .expect("tell the container to exit");
    wait_exited(exiting[0], "the exiting container");
    let shim = common::processes_referring_to(daemon.dir.path())
        .into_iter()
        .find(|p| p.contains(&orphaned) && p.contains("containerd-shim-berth-v2"))
        .expect("the orphaned container's shim runs");
    let pid: i32 = shim
        .trim_start_matches("pid ")
        .split(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    wait_exited(pid, "the killed shim");
    daemon.restart().await;
    let client = &mut daemon.client.clone();

    let kept = status(client, &keeps).await.expect("status");
    assert_eq!(kept.state, cri::ContainerState::ContainerRunning as i32);
    let out = exec(client, &keeps, &["echo", "still here"], 10)
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    let log = Path::new(&pod_config.log_directory).join("keeps.log");
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    assert!(wait_longer_than(&log, before), "logs keep flowing");

    let exited = wait_state(client, &exits, cri::ContainerState::ContainerExited).await;
    assert_eq!(exited.exit_code, 7);
    assert_eq!(exited.reason, "Error");
    let dead = wait_state(client, &orphaned, cri::ContainerState::ContainerExited).await;
    assert_eq!(dead.exit_code, 137);
    assert_eq!(dead.reason, "Unknown");
    assert!(dead.message.contains("shim"), "{}", dead.message);
    assert_eq!(
        pod_status(client, &pod).await.expect("pod").state,
        cri::PodSandboxState::SandboxReady as i32
    );
    remove_pod(client, &pod).await;
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_hogs_are_oom_killed() {
    let registry = busybox_registry();
    let daemon = start_daemon(24, &registry).await;
    let client = &mut daemon.client.clone();
    let pod_config = pod_with_logs(&daemon, "oom");
    let pod = run_pod(client, pod_config.clone()).await.expect("run pod");
    let mut config = container_config(
        "hog",
        &["sh", "-c", "x=0123456789; while true; do x=$x$x; done"],
    );
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(client, &pod, &pod_config, config)
        .await
        .expect("create");
    start(client, &id).await.expect("start");
    let exited = wait_state(client, &id, cri::ContainerState::ContainerExited).await;
    assert_eq!(exited.reason, "OOMKilled", "{exited:?}");
    assert_eq!(exited.exit_code, 137);
    remove_pod(client, &pod).await;
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_mount_images_read_only() {
    let registry = busybox_registry();
    let daemon = start_daemon(25, &registry).await;
    let client = &mut daemon.client.clone();
    let pod_config = pod_with_logs(&daemon, "imgvol");
    let pod = run_pod(client, pod_config.clone()).await.expect("run pod");
    let with_volume = |name: &str, sub_path: &str, readonly: bool, image: &str| {
        let mut config = container_config(name, &["sleep", "1000"]);
        config.mounts = vec![cri::Mount {
            container_path: "/mnt/image".into(),
            readonly,
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            image_sub_path: sub_path.to_owned(),
            ..Default::default()
        }];
        config
    };

    let whole = create(
        client,
        &pod,
        &pod_config,
        with_volume("whole", "", true, BUSYBOX),
    )
    .await
    .expect("create with an image volume");
    start(client, &whole).await.expect("start");
    let listed = exec(client, &whole, &["/mnt/image/bin/ls", "/mnt/image/etc"], 10)
        .await
        .expect("exec");
    assert_eq!(listed.exit_code, 0, "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("passwd"));
    let write = exec(client, &whole, &["touch", "/mnt/image/written"], 10)
        .await
        .expect("exec");
    assert_ne!(write.exit_code, 0, "the image volume is read-only");
    assert!(
        String::from_utf8_lossy(&write.stderr).contains("Read-only"),
        "{write:?}"
    );
    let reported = status(client, &whole).await.expect("status");
    let mount = reported
        .mounts
        .iter()
        .find(|m| m.container_path == "/mnt/image")
        .expect("the image volume is reported");
    assert_eq!(
        mount.image.as_ref().map(|i| i.image_ref.as_str()),
        Some(reported.image_id.as_str()),
        "the mount names the image's ID"
    );

    let sub = create(
        client,
        &pod,
        &pod_config,
        with_volume("sub", "etc", true, BUSYBOX),
    )
    .await
    .expect("create with a sub path");
    start(client, &sub).await.expect("start");
    let passwd = exec(client, &sub, &["cat", "/mnt/image/passwd"], 10)
        .await
        .expect("exec");
    assert_eq!(passwd.exit_code, 0, "{passwd:?}");
    assert!(String::from_utf8_lossy(&passwd.stdout).starts_with("root:"));

    let refused: [(cri::ContainerConfig, tonic::Code, &str); 4] = [
        (
            with_volume("rw", "", false, BUSYBOX),
            tonic::Code::InvalidArgument,
            "mounts[0].readonly",
        ),
        (
            with_volume("missing", "not-there", true, BUSYBOX),
            tonic::Code::InvalidArgument,
            "mounts[0].image_sub_path",
        ),
        (
            with_volume("escape", "../..", true, BUSYBOX),
            tonic::Code::InvalidArgument,
            "mounts[0].image_sub_path",
        ),
        (
            with_volume("unknown", "", true, "registry.k8s.io/not-pulled:1"),
            tonic::Code::NotFound,
            "not-pulled",
        ),
    ];
    for (config, code, named) in refused {
        let err = create(client, &pod, &pod_config, config)
            .await
            .expect_err(named);
        assert_eq!(err.code(), code, "{err}");
        assert!(err.message().contains(named), "{err}");
    }
    // Refused creations left no container, mount or view behind.
    let listed = client
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let volumes = common::mounts_under(daemon.dir.path())
        .into_iter()
        .filter(|m| m.contains("/volumes/"))
        .count();
    assert_eq!(volumes, 2, "one image volume mount per created container");

    remove_pod(client, &pod).await;
    assert!(
        common::mounts_under(daemon.dir.path())
            .iter()
            .all(|m| !m.contains("/volumes/")),
        "RemovePodSandbox unmounts the image volumes"
    );
    // The views are gone with their containers: nothing stands on the image.
    common::remove_image(&daemon, BUSYBOX)
        .await
        .expect("the image is removable once its containers are gone");
    daemon.finish().await;
}

/// A handler whose shim is Debian's containerd-shim-runc-v2 (containerd
/// 1.6): containers run, log in the CRI format through berth's logging
/// binary, exec, reopen their log, survive a restart of berthd and stop.
#[tokio::test(flavor = "multi_thread")]
async fn external_shim_handlers_run_containers() {
    let registry = busybox_registry();
    let mut daemon = Daemon::start(
        26,
        Options {
            registry_config_path: Some(registry.mirrors_dir()),
            handlers: vec![(
                "runc-v2".to_owned(),
                berth_agent::config::HandlerConfig {
                    runtime_path: "runc".into(),
                    // Put there by hack/install.sh, from Debian's package.
                    shim: Some("/usr/local/lib/berth/bin/containerd-shim-runc-v2".into()),
                },
            )],
            ..Options::default()
        },
    )
    .await;
    pull(&daemon, BUSYBOX).await;
    let client = &mut daemon.client.clone();
    let pod_config = pod_with_logs(&daemon, "external");
    let pod = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: "runc-v2".to_owned(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let id = create(
        client,
        &pod,
        &pod_config,
        container_config(
            "talker",
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; while true; do echo tick; sleep 0.2; done",
            ],
        ),
    )
    .await
    .expect("create");
    start(client, &id).await.expect("start");
    let running = status(client, &id).await.expect("status");
    assert_eq!(running.state, cri::ContainerState::ContainerRunning as i32);
    let shims = common::processes_referring_to(daemon.dir.path());
    assert!(
        shims.iter().any(|p| p.contains("containerd-shim-runc-v2")),
        "the external shim serves the container: {shims:?}"
    );
    let log = Path::new(&pod_config.log_directory).join("talker.log");
    let text = wait_for_file(&log, "stderr F err");
    assert!(text.contains(" stdout F out\n"), "{text}");

    let out = exec(client, &id, &["sh", "-c", "echo $((6 * 7)); exit 3"], 10)
        .await
        .expect("exec");
    assert_eq!(
        (out.exit_code, String::from_utf8_lossy(&out.stdout).as_ref()),
        (3, "42\n")
    );

    // Rotation: the old file is renamed away, the log reopened. The call
    // waits for the logging binary: while it is held stopped, the call
    // does not return.
    let logger_pid_file = berth_agent::container::record::bundle_dir(daemon.state_dir(), &id)
        .join(berth_agent::shim_client::LOGGER_PID_FILE);
    let logger = nix::unistd::Pid::from_raw(
        std::fs::read_to_string(&logger_pid_file)
            .expect("logger pid file")
            .trim()
            .parse()
            .expect("logger pid"),
    );
    let rotated = log.with_extension("log.1");
    nix::sys::signal::kill(logger, nix::sys::signal::Signal::SIGSTOP).expect("stop the logger");
    std::fs::rename(&log, &rotated).expect("rotate");
    let mut reopener = client.clone();
    let request = cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    };
    let reopen = tokio::spawn(async move { reopener.reopen_container_log(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let returned_early = reopen.is_finished();
    nix::sys::signal::kill(logger, nix::sys::signal::Signal::SIGCONT).expect("resume the logger");
    assert!(
        !returned_early,
        "ReopenContainerLog returned before the logger reopened the log"
    );
    reopen.await.expect("join").expect("reopen");
    // Once the call returns, output goes to the new file only (kubelet
    // compresses the rotated one next).
    assert!(log.exists(), "the log is reopened at its path");
    let rotated_text = std::fs::read_to_string(&rotated).expect("rotated log");
    wait_for_file(&log, "stdout F tick");
    assert_eq!(
        std::fs::read_to_string(&rotated).expect("rotated log"),
        rotated_text,
        "nothing is written to the rotated log after the reopen"
    );

    daemon.shutdown().await;
    daemon.restart().await;
    let client = &mut daemon.client.clone();
    let kept = status(client, &id).await.expect("status after restart");
    assert_eq!(kept.state, cri::ContainerState::ContainerRunning as i32);
    client
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 5,
        })
        .await
        .expect("stop");
    let exited = status(client, &id).await.expect("status");
    assert_eq!(
        exited.state,
        cri::ContainerState::ContainerExited as i32,
        "{exited:?}"
    );
    assert_eq!(exited.exit_code, 143, "SIGTERM ended the shell: {exited:?}");
    remove_pod(client, &pod).await;
    daemon.finish().await;
}

/// GetContainerEvents streams every lifecycle change of pods and
/// containers, each with the pod's status and its containers' statuses.
#[tokio::test(flavor = "multi_thread")]
async fn container_events_follow_the_lifecycle() {
    use cri::ContainerEventType as Kind;
    let registry = busybox_registry();
    let daemon = start_daemon(27, &registry).await;
    let client = &mut daemon.client.clone();
    let mut events = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let pod_config = pod_with_logs(&daemon, "evented");
    let pod = run_pod(client, pod_config.clone()).await.expect("run pod");
    let id = create(
        client,
        &pod,
        &pod_config,
        container_config("quick", &["sh", "-c", "exit 5"]),
    )
    .await
    .expect("create");
    start(client, &id).await.expect("start");
    wait_state(client, &id, cri::ContainerState::ContainerExited).await;
    client
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove container");
    stop_pod(client, &pod).await;
    remove_pod(client, &pod).await;

    let want = [
        (&pod, Kind::ContainerCreatedEvent),
        (&pod, Kind::ContainerStartedEvent),
        (&id, Kind::ContainerCreatedEvent),
        (&id, Kind::ContainerStartedEvent),
        (&id, Kind::ContainerStoppedEvent),
        (&id, Kind::ContainerDeletedEvent),
        (&pod, Kind::ContainerStoppedEvent),
        (&pod, Kind::ContainerDeletedEvent),
    ];
    let mut got = Vec::new();
    while got.len() < want.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap_or_else(|_| panic!("no event after {got:?}"))
            .expect("stream")
            .expect("an event");
        let sandbox = event.pod_sandbox_status.clone().expect("the pod's status");
        assert_eq!(sandbox.id, pod);
        assert_eq!(
            sandbox.metadata.as_ref().map(|m| m.uid.as_str()),
            Some("uid-evented")
        );
        if event.container_id == id
            && event.container_event_type == Kind::ContainerStoppedEvent as i32
        {
            let status = event
                .containers_statuses
                .iter()
                .find(|c| c.id == id)
                .expect("the container's status");
            assert_eq!(status.exit_code, 5);
        }
        got.push((event.container_id.clone(), event.container_event_type));
    }
    let want: Vec<(String, i32)> = want
        .iter()
        .map(|(id, kind)| ((*id).clone(), *kind as i32))
        .collect();
    assert_eq!(got, want);
    daemon.finish().await;
}

/// Every exit is recorded and logged once: one that comes by itself (the
/// watcher's), and ones StopContainer causes, where the watcher's `wait`
/// and StopContainer's return together.
#[tokio::test(flavor = "multi_thread")]
async fn each_exit_is_logged_once() {
    let registry = busybox_registry();
    let daemon = start_daemon(28, &registry).await;
    let client = &mut daemon.client.clone();
    let pod_config = pod_with_logs(&daemon, "exits");
    let pod = run_pod(client, pod_config.clone()).await.expect("run pod");
    let quitter = create(
        client,
        &pod,
        &pod_config,
        container_config("quitter", &["sh", "-c", "exit 3"]),
    )
    .await
    .expect("create");
    start(client, &quitter).await.expect("start");
    wait_state(client, &quitter, cri::ContainerState::ContainerExited).await;
    let mut stopped = Vec::new();
    for n in 0..4 {
        let id = create(
            client,
            &pod,
            &pod_config,
            container_config(
                &format!("stopped-{n}"),
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                ],
            ),
        )
        .await
        .expect("create");
        start(client, &id).await.expect("start");
        stopped.push(id);
    }
    for id in &stopped {
        client
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 10,
            })
            .await
            .expect("stop");
    }
    // The watchers' own ends, had they logged one, come within this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in std::iter::once(&quitter).chain(&stopped) {
        let exits = common::logged_lines(&["container exited", id]);
        assert_eq!(exits.len(), 1, "{id}: {exits:#?}");
    }
    let broken_pipes = common::logged_lines(&["ERROR", "Broken pipe"]);
    assert!(broken_pipes.is_empty(), "{broken_pipes:#?}");
    remove_pod(client, &pod).await;
    daemon.finish().await;
}

/// Requests the host cannot enforce and resources the kernel would refuse
/// are InvalidArgument naming the field, in CreateContainer and
/// UpdateContainerResources, and leave nothing behind (issue 10, holes 5, 6).
#[tokio::test(flavor = "multi_thread")]
async fn unenforceable_security_and_bad_resources_are_refused() {
    use berth_agent::container::SecurityModules;
    let registry = busybox_registry();
    let daemon = start_daemon(29, &registry).await;
    let client = &mut daemon.client.clone();
    let pod_config = pod_with_logs(&daemon, "refusals");
    let pod = run_pod(client, pod_config.clone()).await.expect("run pod");
    let host = SecurityModules::detect();

    let with_sc = |sc: cri::LinuxContainerSecurityContext| {
        let mut config = container_config("refused", &["sleep", "60"]);
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(sc),
            ..Default::default()
        });
        config
    };
    let with_resources = |r: cri::LinuxContainerResources| {
        let mut config = container_config("refused", &["sleep", "60"]);
        config.linux = Some(cri::LinuxContainerConfig {
            resources: Some(r),
            ..Default::default()
        });
        config
    };
    let mut cases: Vec<(cri::ContainerConfig, &str)> = vec![
        (
            with_resources(cri::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            }),
            "linux.resources.memory_limit_in_bytes",
        ),
        (
            with_resources(cri::LinuxContainerResources {
                memory_swap_limit_in_bytes: -2,
                ..Default::default()
            }),
            "linux.resources.memory_swap_limit_in_bytes",
        ),
        (
            with_resources(cri::LinuxContainerResources {
                cpu_shares: -1,
                ..Default::default()
            }),
            "linux.resources.cpu_shares",
        ),
        (
            with_resources(cri::LinuxContainerResources {
                cpuset_cpus: "0-".into(),
                ..Default::default()
            }),
            "linux.resources.cpuset_cpus",
        ),
        (
            with_resources(cri::LinuxContainerResources {
                cpuset_mems: "zero".into(),
                ..Default::default()
            }),
            "linux.resources.cpuset_mems",
        ),
    ];
    if host.apparmor.is_none() {
        cases.push((
            with_sc(cri::LinuxContainerSecurityContext {
                apparmor: Some(cri::SecurityProfile::default()),
                ..Default::default()
            }),
            "linux.security_context.apparmor: apparmor is not supported",
        ));
        cases.push((
            with_sc(cri::LinuxContainerSecurityContext {
                apparmor: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "localhost/my-profile".into(),
                }),
                ..Default::default()
            }),
            "linux.security_context.apparmor: apparmor is not supported",
        ));
        #[allow(deprecated)]
        cases.push((
            with_sc(cri::LinuxContainerSecurityContext {
                apparmor_profile: "runtime/default".into(),
                ..Default::default()
            }),
            "linux.security_context.apparmor_profile: apparmor is not supported",
        ));
    } else {
        eprintln!("AppArmor is enabled here: its refusal is not checked");
    }
    if !host.selinux {
        cases.push((
            with_sc(cri::LinuxContainerSecurityContext {
                selinux_options: Some(cri::SeLinuxOption {
                    r#type: "spc_t".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "linux.security_context.selinux_options: selinux is not supported",
        ));
    }
    for (config, want) in cases {
        let err = create(client, &pod, &pod_config, config)
            .await
            .expect_err(want);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{want}: {err}");
        assert!(err.message().starts_with(want), "{want}: {}", err.message());
    }
    let left = client
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert!(left.is_empty(), "refused creates leave nothing: {left:?}");

    let id = create(
        client,
        &pod,
        &pod_config,
        container_config("ok", &["sleep", "60"]),
    )
    .await
    .expect("create");
    start(client, &id).await.expect("start");
    for (resources, field) in [
        (
            cri::LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            },
            "linux.resources.memory_limit_in_bytes",
        ),
        (
            cri::LinuxContainerResources {
                cpu_quota: -7,
                ..Default::default()
            },
            "linux.resources.cpu_quota",
        ),
        (
            cri::LinuxContainerResources {
                cpuset_cpus: "3-1".into(),
                ..Default::default()
            },
            "linux.resources.cpuset_cpus",
        ),
    ] {
        let err = client
            .update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(resources),
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    client
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: 256,
                cpuset_cpus: "0".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("a valid update");
    remove_pod(client, &pod).await;
    daemon.finish().await;
}
