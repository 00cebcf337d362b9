//! Pod sandboxes through the real CRI socket of an in-process berthd, with
//! real namespaces and CNI plugins. Needs root and the CNI plugins in
//! /usr/lib/cni; every test uses its own bridge and subnet and checks that
//! nothing is left mounted.

mod common;

use berth_proto::cri::v1 as cri;
use common::{
    inside, pod_config, pod_status, remove_pod, run_pod, stop_pod, with_namespaces, Daemon, Options,
};
use nix::sched::CloneFlags;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn is_pinned(path: &Path) -> bool {
    let table = berth_mount::mountinfo::read_self().expect("mountinfo");
    table.iter().any(|m| m.mount_point == path)
}

/// A TCP server inside the network namespace at `netns` that answers
/// "hello" to every connection, until the returned sender is dropped.
fn serve_hello(netns: &Path, port: u16) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready, is_ready) = std::sync::mpsc::channel::<()>();
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).expect("netns");
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        ready.send(()).expect("ready");
        loop {
            if let Err(std::sync::mpsc::TryRecvError::Disconnected) = stopped.try_recv() {
                return;
            }
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.write_all(b"hello");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    is_ready.recv().expect("server ready");
    stop
}

fn read_hello(address: &str) -> Result<String, String> {
    let mut stream = std::net::TcpStream::connect_timeout(
        &address.parse().map_err(|e| format!("{address}: {e}"))?,
        Duration::from_secs(3),
    )
    .map_err(|e| format!("connect {address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_lifecycle_with_network_files_and_sysctls() {
    let mut daemon = Daemon::start(1, Options::default()).await;
    let host_port = free_port();
    let mut config = pod_config("web");
    config.labels = [("app".to_owned(), "web".to_owned())].into();
    config.annotations = [("note".to_owned(), "kept as given".to_owned())].into();
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["berth.svc".into()],
        options: vec!["ndots:5".into()],
    });
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(host_port),
        host_ip: "127.0.0.1".into(),
    }];
    config.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [
            ("kernel.shm_rmid_forced".to_owned(), "1".to_owned()),
            (
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                "80".to_owned(),
            ),
        ]
        .into(),
        ..Default::default()
    });
    let client = &mut daemon.client.clone();
    let id = run_pod(client, config).await.expect("run pod");
    assert_eq!(id.len(), 64);

    let status = pod_status(client, &id).await.expect("status");
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(status.created_at > 0);
    assert_eq!(status.labels["app"], "web");
    assert_eq!(status.annotations["note"], "kept as given");
    let ip = status.network.expect("network").ip;
    assert!(ip.starts_with("10.252.1."), "pod ip {ip}");

    let dir = daemon.state_dir().join("sandboxes").join(&id);
    for ns in ["netns", "ipcns", "utsns"] {
        assert!(is_pinned(&dir.join(ns)), "{ns} is pinned");
    }
    assert!(is_pinned(&dir.join("shm")), "/dev/shm is mounted");
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).expect("resolv.conf"),
        "search berth.svc\nnameserver 10.0.0.10\noptions ndots:5\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).expect("hostname"),
        "web\n"
    );
    let hostname = inside(&dir.join("utsns"), CloneFlags::CLONE_NEWUTS, || {
        nix::unistd::gethostname().expect("hostname")
    });
    assert_eq!(hostname, "web");
    let port_start = inside(&dir.join("netns"), CloneFlags::CLONE_NEWNET, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").expect("read")
    });
    assert_eq!(port_start.trim(), "80");
    let rmid = inside(&dir.join("ipcns"), CloneFlags::CLONE_NEWIPC, || {
        std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").expect("read")
    });
    assert_eq!(rmid.trim(), "1");
    // lo is up (the loopback plugin ran) and eth0 has the pod's IP.
    let (lo_up, addresses) = inside(&dir.join("netns"), CloneFlags::CLONE_NEWNET, || {
        (
            std::fs::read_to_string("/sys/class/net/lo/operstate").unwrap_or_default(),
            std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default(),
        )
    });
    assert_ne!(lo_up.trim(), "down");
    assert!(addresses.contains(&ip), "{addresses}");

    // The pod is reachable on its IP and through the host port.
    let server = serve_hello(&dir.join("netns"), 8080);
    assert_eq!(read_hello(&format!("{ip}:8080")).expect("pod ip"), "hello");
    assert_eq!(
        read_hello(&format!("127.0.0.1:{host_port}")).expect("host port"),
        "hello"
    );
    drop(server);

    // Listing and filters.
    let lister = daemon.client.clone();
    let list = |filter: cri::PodSandboxFilter| {
        let mut client = lister.clone();
        async move {
            client
                .list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .expect("list")
                .into_inner()
                .items
        }
    };
    assert_eq!(list(cri::PodSandboxFilter::default()).await.len(), 1);
    let by_label = list(cri::PodSandboxFilter {
        label_selector: [("app".to_owned(), "web".to_owned())].into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, id);
    assert!(list(cri::PodSandboxFilter {
        label_selector: [("app".to_owned(), "db".to_owned())].into(),
        ..Default::default()
    })
    .await
    .is_empty());
    assert_eq!(
        list(cri::PodSandboxFilter {
            id: id[..8].to_owned(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    let not_ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxNotready as i32,
        }),
        ..Default::default()
    };
    assert!(list(not_ready.clone()).await.is_empty());
    let mut stream = daemon
        .client
        .stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: None })
        .await
        .expect("stream")
        .into_inner();
    let page = stream.message().await.expect("page").expect("one page");
    assert_eq!(page.pod_sandboxes.len(), 1);

    // Stop: no IP, network and namespaces gone, the IP is free again.
    assert_eq!(daemon.reserved_ips(1).len(), 1);
    let client = &mut daemon.client.clone();
    stop_pod(client, &id).await;
    let status = pod_status(client, &id).await.expect("status");
    assert_eq!(status.state, cri::PodSandboxState::SandboxNotready as i32);
    assert_eq!(status.network.expect("network").ip, "");
    assert!(
        common::mounts_under(&dir).is_empty(),
        "stop released every mount"
    );
    assert!(daemon.reserved_ips(1).is_empty(), "the IP is released");
    assert!(read_hello(&format!("127.0.0.1:{host_port}")).is_err());
    let client = &mut daemon.client.clone();
    stop_pod(client, &id).await;
    assert_eq!(list(not_ready).await.len(), 1);

    // Remove: everything gone; twice is fine, and so is an unknown pod.
    let client = &mut daemon.client.clone();
    remove_pod(client, &id).await;
    let err = pod_status(client, &id).await.expect_err("removed");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(!dir.exists());
    remove_pod(client, &id).await;
    stop_pod(client, "0123456789abcdef").await;
    remove_pod(client, "0123456789abcdef").await;
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_are_unique_and_released_on_remove() {
    let daemon = Daemon::start(2, Options::default()).await;
    let client = &mut daemon.client.clone();
    let id = run_pod(client, pod_config("dup")).await.expect("run");
    let err = run_pod(client, pod_config("dup"))
        .await
        .expect_err("same name");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    let mut next = pod_config("dup");
    next.metadata.as_mut().expect("metadata").attempt = 1;
    let second = run_pod(client, next)
        .await
        .expect("a new attempt is a new name");
    remove_pod(client, &id).await;
    let third = run_pod(client, pod_config("dup"))
        .await
        .expect("the name is free after remove");
    for id in [second, third] {
        remove_pod(client, &id).await;
    }
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_name_the_field() {
    let daemon = Daemon::start(3, Options::default()).await;
    let client = &mut daemon.client.clone();
    let mut no_name = pod_config("x");
    no_name.metadata.as_mut().expect("metadata").name.clear();
    let cases: Vec<(cri::RunPodSandboxRequest, &str)> = vec![
        (cri::RunPodSandboxRequest::default(), "config"),
        (
            cri::RunPodSandboxRequest {
                config: Some(no_name),
                runtime_handler: String::new(),
            },
            "config.metadata.name",
        ),
        (
            cri::RunPodSandboxRequest {
                config: Some(pod_config("x")),
                runtime_handler: "kata".into(),
            },
            "runtime_handler",
        ),
        (
            cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig {
                    linux: Some(cri::LinuxPodSandboxConfig {
                        sysctls: [("vm.swappiness".to_owned(), "1".to_owned())].into(),
                        ..Default::default()
                    }),
                    ..pod_config("x")
                }),
                runtime_handler: String::new(),
            },
            "config.linux.sysctls",
        ),
        (
            cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig {
                    dns_config: Some(cri::DnsConfig {
                        servers: vec!["not-an-ip".into()],
                        ..Default::default()
                    }),
                    ..pod_config("x")
                }),
                runtime_handler: String::new(),
            },
            "dns_config.servers",
        ),
    ];
    for (request, field) in cases {
        let err = client.run_pod_sandbox(request).await.expect_err("invalid");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    // The default handler by name works.
    let id = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("x")),
            runtime_handler: "runc".into(),
        })
        .await
        .expect("runc handler")
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(
        pod_status(client, &id)
            .await
            .expect("status")
            .runtime_handler,
        "runc"
    );
    remove_pod(client, &id).await;
    let err = pod_status(client, "nope").await.expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_cni_add_rolls_back_everything() {
    // portmap refuses a host port that is out of range... so use a bridge
    // whose IPAM range is invalid: ADD fails after the namespaces exist.
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "berth-it-4",
        "plugins": [{"type": "bridge", "bridge": format!("bit{}x4", std::process::id() % 10000),
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": "not-a-subnet"}]]}}]
    })
    .to_string();
    let mut daemon = Daemon::start(
        4,
        Options {
            conflist: Some(conflist),
            ..Options::default()
        },
    )
    .await;
    let client = &mut daemon.client.clone();
    let err = run_pod(client, pod_config("broken"))
        .await
        .expect_err("ADD fails");
    assert_eq!(err.code(), tonic::Code::Internal, "{err}");
    assert!(err.message().contains("bridge"), "{err}");
    let sandboxes = daemon.state_dir().join("sandboxes");
    let left: Vec<PathBuf> = std::fs::read_dir(&sandboxes)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(common::mounts_under(daemon.dir.path()).is_empty());
    let listed = daemon
        .client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert!(listed.is_empty());
    // The name was released: the retry fails for the same reason, not
    // because the name is taken.
    let err = run_pod(&mut daemon.client, pod_config("broken"))
        .await
        .expect_err("ADD fails again");
    assert_ne!(err.code(), tonic::Code::AlreadyExists, "{err}");
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_pid_namespace_has_an_init_as_pid_one() {
    let daemon = Daemon::start(5, Options::default()).await;
    let config = with_namespaces(
        pod_config("pidpod"),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        },
    );
    let client = &mut daemon.client.clone();
    let id = run_pod(client, config).await.expect("run");
    let dir = daemon.state_dir().join("sandboxes").join(&id);
    assert!(is_pinned(&dir.join("pidns")));
    let pid: u32 = std::fs::read_to_string(dir.join("init.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("init runs");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    // A container-mode pod has none.
    let other = with_namespaces(
        pod_config("nopid"),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        },
    );
    let client = &mut daemon.client.clone();
    let other = run_pod(client, other).await.expect("run");
    let other_dir = daemon.state_dir().join("sandboxes").join(&other);
    assert!(!other_dir.join("pidns").exists());

    let client = &mut daemon.client.clone();
    stop_pod(client, &id).await;
    let gone = (0..100).any(|_| {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false);
        if alive {
            std::thread::sleep(Duration::from_millis(20));
        }
        !alive
    });
    assert!(gone, "the init is stopped with the pod");
    remove_pod(client, &id).await;
    remove_pod(client, &other).await;
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_pods_have_no_network_namespace() {
    let daemon = Daemon::start(6, Options::default()).await;
    let config = with_namespaces(
        pod_config("hostnet"),
        cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ipc: cri::NamespaceMode::Node as i32,
            pid: cri::NamespaceMode::Node as i32,
            ..Default::default()
        },
    );
    let client = &mut daemon.client.clone();
    let id = run_pod(client, config).await.expect("run");
    let status = pod_status(client, &id).await.expect("status");
    assert!(status.network.is_none());
    let options = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .expect("options");
    assert_eq!(options.network, cri::NamespaceMode::Node as i32);
    let dir = daemon.state_dir().join("sandboxes").join(&id);
    for absent in ["netns", "ipcns", "utsns", "pidns", "shm"] {
        assert!(!dir.join(absent).exists(), "{absent}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("hosts")).expect("hosts"),
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    );
    assert!(daemon.reserved_ips(6).is_empty());
    remove_pod(client, &id).await;
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_plugin_does_not_block_stop_and_remove() {
    // A bin dir whose bridge fails every DEL, as a plugin broken after ADD.
    let bins = tempfile::tempdir().expect("tempdir");
    for plugin in ["loopback", "host-local", "portmap"] {
        std::os::unix::fs::symlink(
            Path::new("/usr/lib/cni").join(plugin),
            bins.path().join(plugin),
        )
        .expect("symlink");
    }
    let bridge = bins.path().join("bridge");
    std::fs::write(
        &bridge,
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = DEL ] && [ -e \"$0.broken\" ]; then\n  \
         echo '{\"code\":999,\"msg\":\"broken on purpose\"}'; exit 1\nfi\nexec /usr/lib/cni/bridge\n",
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bridge, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let daemon = Daemon::start(
        7,
        Options {
            bin_dirs: Some(vec![bins.path().to_owned()]),
            ..Options::default()
        },
    )
    .await;
    let client = &mut daemon.client.clone();
    let id = run_pod(client, pod_config("victim")).await.expect("run");
    assert_eq!(daemon.reserved_ips(7).len(), 1);
    std::fs::write(bins.path().join("bridge.broken"), b"").expect("break");
    let started = std::time::Instant::now();
    let client = &mut daemon.client.clone();
    stop_pod(client, &id).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        daemon.reserved_ips(7).is_empty(),
        "forced cleanup freed the IP"
    );
    let client = &mut daemon.client.clone();
    remove_pod(client, &id).await;
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_survive_a_restart_and_dead_ones_are_stopped() {
    let mut daemon = Daemon::start(8, Options::default()).await;
    let client = &mut daemon.client.clone();
    let alive = run_pod(client, pod_config("alive")).await.expect("run");
    let shared = with_namespaces(
        pod_config("dies"),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        },
    );
    let dies = run_pod(client, shared).await.expect("run");
    daemon.shutdown().await;

    // While berthd is down the init of one pod is killed.
    let dies_dir = daemon.state_dir().join("sandboxes").join(&dies);
    let pid: i32 = std::fs::read_to_string(dies_dir.join("init.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the init");
    std::thread::sleep(Duration::from_millis(200));
    // And a creation was interrupted: a Creating record whose namespaces
    // and /dev/shm exist.
    let half = "f".repeat(64);
    let half_dir = daemon.state_dir().join("sandboxes").join(&half);
    std::fs::create_dir(&half_dir).expect("dir");
    let netns = half_dir.join("netns");
    berth_agent::network::netns::create(
        berth_agent::network::netns::NamespaceKind::Network,
        &netns,
    )
    .expect("netns");
    berth_agent::sandbox::files::mount_shm(&half_dir.join("shm"), 1 << 20).expect("shm");
    {
        use berth_agent::sandbox::{NamespacePaths, SandboxRecord, SandboxState};
        let store = berth_agent::store::Store::open(&daemon.config.root).expect("store");
        let record = SandboxRecord {
            version: 1,
            id: half.clone(),
            name: "half_berth-it_uid_0".into(),
            config: pod_config("half"),
            runtime_handler: String::new(),
            state: SandboxState::Creating,
            created_at: 1,
            dir: half_dir.clone(),
            namespaces: NamespacePaths {
                net: Some(netns),
                ..Default::default()
            },
            init_pid: None,
            network: None,
            resources: Default::default(),
        };
        store
            .put(berth_agent::store::Table::Sandboxes, &half, &record)
            .expect("put");
    }
    daemon.restart().await;
    assert!(
        !half_dir.exists(),
        "the interrupted sandbox was rolled back"
    );
    let err = pod_status(&mut daemon.client, &half)
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let client = &mut daemon.client.clone();
    let status = pod_status(client, &alive).await.expect("alive");
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(status.network.expect("network").ip.starts_with("10.252.8."));
    let status = pod_status(client, &dies).await.expect("dies");
    assert_eq!(status.state, cri::PodSandboxState::SandboxNotready as i32);
    assert_eq!(
        daemon.reserved_ips(8).len(),
        1,
        "only the live pod holds an IP"
    );
    // The names survive a restart too.
    let err = run_pod(&mut daemon.client, pod_config("alive"))
        .await
        .expect_err("name kept");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let client = &mut daemon.client.clone();
    remove_pod(client, &alive).await;
    remove_pod(client, &dies).await;
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_run_pod_sandbox_is_rolled_back_and_can_be_retried() {
    // A bridge plugin that takes 2 s for ADD while a marker file exists.
    let bins = tempfile::tempdir().expect("tempdir");
    for plugin in ["loopback", "host-local", "portmap"] {
        std::os::unix::fs::symlink(
            Path::new("/usr/lib/cni").join(plugin),
            bins.path().join(plugin),
        )
        .expect("symlink");
    }
    let bridge = bins.path().join("bridge");
    std::fs::write(
        &bridge,
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ] && [ -e \"$0.slow\" ]; then sleep 2; fi\n\
         exec /usr/lib/cni/bridge\n",
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bridge, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(bins.path().join("bridge.slow"), b"").expect("slow");
    let daemon = Daemon::start(
        9,
        Options {
            bin_dirs: Some(vec![bins.path().to_owned()]),
            ..Options::default()
        },
    )
    .await;
    let mut request = tonic::Request::new(cri::RunPodSandboxRequest {
        config: Some(pod_config("slow")),
        runtime_handler: String::new(),
    });
    request.set_timeout(Duration::from_millis(500));
    let err = daemon
        .client
        .clone()
        .run_pod_sandbox(request)
        .await
        .expect_err("the client gives up");
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err}"
    );
    // The creation finishes in the background, sees its client gone and
    // rolls everything back.
    let sandboxes = daemon.state_dir().join("sandboxes");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = std::fs::read_dir(&sandboxes)
            .map(|d| d.count())
            .unwrap_or(0);
        if left == 0 && daemon.reserved_ips(9).is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not rolled back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(common::mounts_under(daemon.dir.path()).is_empty());
    // kubelet's retry succeeds: the name was released.
    std::fs::remove_file(bins.path().join("bridge.slow")).expect("fast again");
    let client = &mut daemon.client.clone();
    let id = run_pod(client, pod_config("slow")).await.expect("retry");
    remove_pod(client, &id).await;
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_resources_are_recorded_and_survive_a_restart() {
    let mut daemon = Daemon::start(10, Options::default()).await;
    let client = &mut daemon.client.clone();
    let id = run_pod(client, pod_config("resized")).await.expect("run");
    let resources = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        memory_limit_in_bytes: 256 << 20,
        ..Default::default()
    };
    client
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: id[..12].to_owned(),
            overhead: Some(cri::LinuxContainerResources {
                cpu_shares: 10,
                ..Default::default()
            }),
            resources: Some(resources),
        })
        .await
        .expect("update by id prefix");

    let err = client
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "0123456789abcdef".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("unknown pod");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let err = client
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest::default())
        .await
        .expect_err("no id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("pod_sandbox_id"), "{err}");

    daemon.shutdown().await;
    daemon.restart().await;
    let client = &mut daemon.client.clone();
    let response = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(&response.info["info"]).expect("verbose info is JSON");
    assert_eq!(info["resources"]["cpuQuota"], 50_000, "{info}");
    assert_eq!(info["resources"]["memoryLimitInBytes"], 256 << 20, "{info}");
    assert_eq!(info["overhead"]["cpuShares"], 10, "{info}");
    remove_pod(client, &id).await;
    daemon.finish().await;
}

/// A sandbox directory that a crash left without a record, with mounts
/// whose paths hold a space, a tab and a backslash (mountinfo writes them
/// as `\040`, `\011`, `\134`): start-up recovery finds the mounts, unmounts
/// them and removes the directory, without deleting through a mount.
#[tokio::test(flavor = "multi_thread")]
async fn orphan_sandbox_dirs_with_escaped_paths_are_unmounted_and_removed() {
    use berth_agent::sandbox::{files, teardown};
    let mut daemon = Daemon::start(11, Options::default()).await;
    daemon.shutdown().await;
    let orphan = daemon
        .state_dir()
        .join("sandboxes")
        .join("orphan with space");
    let shm = orphan.join("shm");
    files::mount_shm(&shm, 1024 * 1024).expect("mount");
    let nested = shm.join("tab\tand\\backslash");
    files::mount_shm(&nested, 1024 * 1024).expect("mount");
    std::fs::write(nested.join("keep"), b"x").expect("write");
    let mounted = || {
        let table = berth_mount::mountinfo::read_self().expect("mountinfo");
        berth_mount::mountinfo::under(&table, &orphan)
            .map(|m| m.mount_point.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(mounted(), [shm.clone(), nested.clone()]);

    // The safety check of teardown sees the mounts too.
    let err = teardown::remove_dir(&orphan)
        .await
        .expect_err("refuses while mounted");
    assert!(err.to_string().contains("still mounted"), "{err}");
    assert!(
        nested.join("keep").exists(),
        "nothing deleted through a mount"
    );

    daemon.restart().await;
    assert_eq!(mounted(), Vec::<PathBuf>::new());
    assert!(!orphan.exists(), "recovery removed the orphan directory");
    daemon.finish().await;
}

/// Pod options this host cannot honour, and hostnames that are no
/// hostname, are refused before anything is made (issue 10, holes 5, 6).
#[tokio::test(flavor = "multi_thread")]
async fn unenforceable_security_and_bad_hostnames_are_refused() {
    use berth_agent::container::SecurityModules;
    let daemon = Daemon::start(13, Options::default()).await;
    let client = &mut daemon.client.clone();
    let with_sc = |sc: cri::LinuxSandboxSecurityContext| cri::PodSandboxConfig {
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(sc),
            ..Default::default()
        }),
        ..pod_config("lsm")
    };
    let host = SecurityModules::detect();
    let mut cases: Vec<(cri::PodSandboxConfig, &str, &str)> = vec![
        (
            cri::PodSandboxConfig {
                hostname: "two\nlines".into(),
                ..pod_config("lsm")
            },
            "config.hostname",
            "is not a valid hostname",
        ),
        (
            cri::PodSandboxConfig {
                hostname: "a b".into(),
                ..pod_config("lsm")
            },
            "config.hostname",
            "is not a valid hostname",
        ),
    ];
    if host.apparmor.is_none() {
        cases.push((
            with_sc(cri::LinuxSandboxSecurityContext {
                apparmor: Some(cri::SecurityProfile::default()),
                ..Default::default()
            }),
            "config.linux.security_context.apparmor",
            "apparmor is not supported",
        ));
    } else {
        eprintln!("AppArmor is enabled here: its refusal is not checked");
    }
    if !host.selinux {
        cases.push((
            with_sc(cri::LinuxSandboxSecurityContext {
                selinux_options: Some(cri::SeLinuxOption {
                    level: "s0:c1,c2".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "config.linux.security_context.selinux_options",
            "selinux is not supported",
        ));
    } else {
        eprintln!("SELinux is enabled here: its refusal is not checked");
    }
    for (config, field, reason) in cases {
        let err = run_pod(client, config).await.expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
        assert!(err.message().contains(reason), "{field}: {}", err.message());
    }
    let pods = client
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("list")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "nothing was made: {pods:?}");

    // Unconfined is fine anywhere, and a legal name still works.
    let id = run_pod(
        client,
        cri::PodSandboxConfig {
            hostname: "web-0.web".into(),
            ..with_sc(cri::LinuxSandboxSecurityContext {
                apparmor: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            })
        },
    )
    .await
    .expect("unconfined pod");
    remove_pod(client, &id).await;
    daemon.finish().await;
}

/// One HTTP/2 frame: (type, flags, stream, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).expect("small").to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_h2_frame(stream: &mut tokio::net::UnixStream) -> std::io::Result<Frame> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await?;
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    Ok((header[3], header[4], id, payload))
}

/// grpc core (grpc-python) sends a `unix:` target's socket path as the
/// `:authority`, which h2 alone resets with PROTOCOL_ERROR (issue 10,
/// hole 6). Spoken here frame by frame, since no Rust client sends it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_the_socket_path_as_authority_is_served() {
    use prost::Message;
    use tokio::io::AsyncWriteExt;
    let daemon = Daemon::start(12, Options::default()).await;
    let socket = daemon.config.grpc.socket.clone();
    let path = socket.to_string_lossy().into_owned();
    let encoded_path = path.replace('/', "%2F");
    for authority in [path.as_str(), encoded_path.as_str(), "localhost"] {
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]);
        let request = cri::VersionRequest {
            version: "0.1.0".into(),
        }
        .encode_to_vec();
        let mut message = vec![0u8];
        message.extend_from_slice(&u32::try_from(request.len()).expect("small").to_be_bytes());
        message.extend_from_slice(&request);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(h2_frame(0x4, 0, 0, &[]));
        bytes.extend(h2_frame(0x1, 0x4, 1, &block));
        bytes.extend(h2_frame(0x0, 0x1, 1, &message));
        stream.write_all(&bytes).await.expect("write");

        let mut decoder = loona_hpack::Decoder::new();
        let mut headers = Vec::new();
        let mut data = Vec::new();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (kind, flags, id, payload) = read_h2_frame(&mut stream).await?;
                match kind {
                    0x4 if flags & 0x1 == 0 => {
                        stream.write_all(&h2_frame(0x4, 0x1, 0, &[])).await?;
                    }
                    0x3 => return Ok::<_, std::io::Error>(Err(format!("RST_STREAM {payload:?}"))),
                    0x7 => return Ok(Err(format!("GOAWAY {payload:?}"))),
                    0x1 if id == 1 => {
                        headers.extend(decoder.decode(&payload).expect("hpack"));
                        if flags & 0x1 != 0 {
                            return Ok(Ok(()));
                        }
                    }
                    0x0 if id == 1 => data.extend_from_slice(&payload),
                    _ => {}
                }
            }
        })
        .await
        .expect("an answer in time")
        .expect("read");
        answer.unwrap_or_else(|e| panic!("authority {authority:?}: {e}"));
        let header = |name: &[u8]| {
            headers
                .iter()
                .find(|(n, _)| n.as_slice() == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(b":status").as_deref(), Some("200"), "{authority}");
        assert_eq!(header(b"grpc-status").as_deref(), Some("0"), "{authority}");
        assert!(data.len() > 5, "{authority}: a message");
        let version = cri::VersionResponse::decode(&data[5..]).expect("VersionResponse");
        assert_eq!(version.runtime_name, "berth", "{authority}");
    }
    daemon.finish().await;
}

/// UpdateRuntimeConfig: a bad pod CIDR is refused naming the field; a good
/// one is shown by Status, survives a restart, and host-local allocates
/// from it for a network whose bridge declares the `ipRanges` capability
/// (and has no range of its own).
#[tokio::test(flavor = "multi_thread")]
async fn pod_cidr_is_validated_kept_and_given_to_cni() {
    let net = 31;
    let bridge = format!("bit{}x{net}", std::process::id() % 10000);
    let ipam = tempfile::tempdir().expect("ipam dir");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("berth-it-{net}"),
        "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
            "capabilities": {"ipRanges": true},
            "ipam": {"type": "host-local", "dataDir": ipam.path(), "routes": [{"dst": "0.0.0.0/0"}]}
        }]
    });
    let mut daemon = Daemon::start(
        net,
        Options {
            conflist: Some(conflist.to_string()),
            ..Options::default()
        },
    )
    .await;
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.to_owned(),
            }),
        }),
    };
    let client = &mut daemon.client.clone();
    let err = client
        .update_runtime_config(update("10.252.31.0/40"))
        .await
        .expect_err("bad prefix");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.message()
            .contains("runtime_config.network_config.pod_cidr"),
        "{err}"
    );
    let cidrs = |daemon: &Daemon| {
        let mut client = daemon.client.clone();
        async move {
            let status = client
                .status(cri::StatusRequest { verbose: true })
                .await
                .expect("status")
                .into_inner();
            let info: serde_json::Value =
                serde_json::from_str(&status.info["runtimeConfig"]).expect("runtimeConfig JSON");
            info["podCIDRs"].clone()
        }
    };
    assert_eq!(cidrs(&daemon).await, serde_json::json!([]));
    client
        .update_runtime_config(update("10.252.31.128/25"))
        .await
        .expect("update");
    // An empty CIDR changes nothing.
    client
        .update_runtime_config(update(""))
        .await
        .expect("empty update");
    assert_eq!(
        cidrs(&daemon).await,
        serde_json::json!(["10.252.31.128/25"])
    );

    let id = run_pod(client, pod_config("cidr")).await.expect("run");
    let status = pod_status(client, &id).await.expect("status");
    let ip: std::net::Ipv4Addr = status.network.expect("network").ip.parse().expect("IPv4");
    assert_eq!(ip.octets()[..3], [10, 252, 31], "{ip}");
    assert!(ip.octets()[3] > 128, "{ip} is not in 10.252.31.128/25");
    remove_pod(client, &id).await;

    daemon.shutdown().await;
    daemon.restart().await;
    assert_eq!(
        cidrs(&daemon).await,
        serde_json::json!(["10.252.31.128/25"])
    );
    daemon.finish().await;
}
