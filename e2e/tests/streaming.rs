//! Exec, attach and port-forward through berth's streaming server, with
//! the real crictl: piped stdin, exit codes, a terminal (through
//! `script`), 100 MB through stdout with a checksum, a port-forward to
//! busybox `httpd`, and no descriptor or process left by interrupted
//! sessions. Each test runs over both transports crictl speaks where
//! berth has them.

use berth_e2e::{
    ensure, http_get, tool, wait_until, Berthd, BerthdOptions, Registry, Suite, TestResult,
};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The image of the tests, served by the loopback registry.
const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// crictl's transports that berth serves.
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];
/// crictl's `--transport=websocket` port-forward tunnels SPDY through a
/// WebSocket (`SPDY/3.1+portforward.k8s.io`), which berth does not serve
/// yet: SPDY only.
const PORT_FORWARD_TRANSPORTS: [&str; 1] = ["spdy"];

/// Runs the tests whose names contain the first argument (all without).
struct Filtered {
    suite: Suite,
    only: Option<String>,
}

impl Filtered {
    fn run(&mut self, name: &str, test: impl FnMut() -> TestResult) {
        if self.only.as_deref().is_none_or(|only| name.contains(only)) {
            self.suite.run(name, test);
        }
    }
}

fn main() {
    let mut suite = Filtered {
        suite: Suite::new(),
        only: std::env::args().skip(1).find(|a| !a.starts_with('-')),
    };
    suite.run("unknown_tokens_get_404", unknown_tokens_get_404);
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    let with_container = |test: fn(&Berthd, &str, &str) -> TestResult| {
        let mirrors = mirrors.clone();
        move || {
            let mirrors = mirrors.clone().ok_or("no registry")?;
            let berthd = Berthd::start(BerthdOptions {
                registry_config_path: Some(mirrors),
                ..BerthdOptions::default()
            })?;
            let outcome = berthd
                .crictl_ok(&["pull", BUSYBOX])
                .and_then(|_| run_container(&berthd, "web"))
                .and_then(|(pod, id)| test(&berthd, &pod, &id));
            let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
            let stopped = berthd.stop();
            outcome.and(cleaned).and(stopped)
        }
    };
    suite.run(
        "exec_with_piped_stdin",
        with_container(exec_with_piped_stdin),
    );
    suite.run("exec_exit_codes", with_container(exec_exit_codes));
    suite.run("exec_with_a_terminal", with_container(exec_with_a_terminal));
    suite.run(
        "exec_streams_100_mb_intact",
        with_container(exec_streams_100_mb_intact),
    );
    suite.run(
        "interrupted_execs_leave_nothing",
        with_container(interrupted_execs_leave_nothing),
    );
    suite.run(
        "port_forward_to_httpd_in_the_pod",
        with_container(port_forward_to_httpd_in_the_pod),
    );
    suite.run(
        "exec_requests_are_validated",
        with_container(exec_requests_are_validated),
    );
    drop(registry);
    suite.suite.finish();
}

/// crictl against `berthd`, with piped stdio.
fn crictl(berthd: &Berthd, args: &[&str]) -> Result<Command, String> {
    let endpoint = berthd.endpoint();
    let mut command = Command::new(tool("crictl")?);
    command
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "60s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

/// Runs crictl with `input` on its stdin.
fn crictl_with_input(berthd: &Berthd, args: &[&str], input: &[u8]) -> Result<Output, String> {
    let mut child = crictl(berthd, args)?
        .spawn()
        .map_err(|e| format!("cannot run crictl: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    writer
        .join()
        .map_err(|_| "stdin writer panicked".to_owned())?
        .map_err(|e| format!("writing crictl's stdin: {e}"))?;
    Ok(output)
}

fn describe(output: &Output) -> String {
    format!(
        "{}; stdout {:?}; stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout[..output.stdout.len().min(2000)]),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A pod and a running busybox container that sleeps; returns (pod, container).
fn run_container(berthd: &Berthd, name: &str) -> Result<(String, String), String> {
    let pod = serde_json::json!({
        "metadata": {"name": name, "namespace": "berth-e2e", "uid": format!("uid-{name}"), "attempt": 0},
        "log_directory": berthd.dir().join("logs").join(name),
        "linux": {}
    });
    let pod_path = berthd.dir().join(format!("pod-{name}.json"));
    std::fs::write(&pod_path, pod.to_string()).map_err(|e| e.to_string())?;
    let container = serde_json::json!({
        "metadata": {"name": "main"},
        "image": {"image": BUSYBOX},
        "command": ["sh", "-c", "echo ready; exec sleep 100000"],
        "log_path": "main.log",
        "linux": {}
    });
    let container_path = berthd.dir().join(format!("container-{name}.json"));
    std::fs::write(&container_path, container.to_string()).map_err(|e| e.to_string())?;
    let pod_path = pod_path.to_string_lossy().into_owned();
    let container_path = container_path.to_string_lossy().into_owned();
    let pod_id = berthd.crictl_ok(&["runp", &pod_path])?.trim().to_owned();
    let id = berthd
        .crictl_ok(&["create", &pod_id, &container_path, &pod_path])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["start", &id])?;
    Ok((pod_id, id))
}

fn streaming_address(berthd: &Berthd) -> Result<String, String> {
    std::fs::read_to_string(berthd.state_dir().join("streaming-address"))
        .map(|a| a.trim().to_owned())
        .map_err(|e| format!("streaming-address: {e}"))
}

fn unknown_tokens_get_404() -> TestResult {
    let berthd = Berthd::start(BerthdOptions::default())?;
    let address = streaming_address(&berthd)?;
    for path in ["/exec/nope", "/portforward/0123", "/attach/", "/"] {
        let got = http_get(&address, path);
        ensure(matches!(&got, Err(e) if e.contains("404")), || {
            format!("GET {path}: {got:?}")
        })?;
    }
    berthd.stop()
}

fn exec_with_piped_stdin(berthd: &Berthd, _pod: &str, id: &str) -> TestResult {
    for transport in TRANSPORTS {
        let flag = format!("--transport={transport}");
        // Several rounds: stdin that arrives (and ends) before the process
        // opened it must not be lost.
        for round in 0..5 {
            let output = crictl_with_input(
                berthd,
                &[
                    "exec",
                    "-i",
                    &flag,
                    id,
                    "sh",
                    "-c",
                    "tr a-z A-Z; echo done >&2",
                ],
                b"hello through stdin\n",
            )?;
            let context = || format!("{transport}, round {round}: {}", describe(&output));
            ensure(output.status.success(), context)?;
            ensure(output.stdout == b"HELLO THROUGH STDIN\n", context)?;
            ensure(
                String::from_utf8_lossy(&output.stderr).contains("done"),
                context,
            )?;
        }
    }
    Ok(())
}

fn exec_exit_codes(berthd: &Berthd, _pod: &str, id: &str) -> TestResult {
    for transport in TRANSPORTS {
        let transport = format!("--transport={transport}");
        for code in [0, 3, 42] {
            let script = format!("echo out; exit {code}");
            let output = crictl(berthd, &["exec", &transport, id, "sh", "-c", &script])?
                .stdin(Stdio::null())
                .output()
                .map_err(|e| e.to_string())?;
            // crictl reports a streamed exec's code in its error (and
            // exits 1), as client-go decoded it from the error stream.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reported = stderr.contains(&format!("command terminated with exit code {code}"));
            ensure(output.status.success() == (code == 0), || describe(&output))?;
            ensure(code == 0 || reported, || describe(&output))?;
            ensure(output.stdout == b"out\n", || describe(&output))?;
        }
        let output = crictl(berthd, &["exec", &transport, id, "/no/such/binary"])?
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        ensure(!output.status.success(), || describe(&output))?;
    }
    Ok(())
}

fn exec_with_a_terminal(berthd: &Berthd, _pod: &str, id: &str) -> TestResult {
    let crictl = tool("crictl")?;
    for transport in TRANSPORTS {
        // `script` gives crictl a terminal of 37 rows and 123 columns;
        // crictl sends its size, the exec's terminal takes it.
        let inner = format!(
            "stty rows 37 cols 123; {crictl} --runtime-endpoint {endpoint} exec -it --transport={transport} {id} sh -c 'tty; stty size; echo typed:; read line; echo got $line'",
            crictl = crictl.display(),
            endpoint = berthd.endpoint(),
        );
        // `timeout`: a lost line must fail the test, not hang it.
        let mut child = Command::new("timeout")
            .args(["60", "script", "-qfec", &inner, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run script: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        // Typed once the shell waits for it; an early line is kept by the
        // terminal's buffer too.
        stdin.write_all(b"berth\n").map_err(|e| e.to_string())?;
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        drop(stdin);
        let text = String::from_utf8_lossy(&output.stdout);
        ensure(output.status.success(), || describe(&output))?;
        ensure(text.contains("/dev/pts/"), || describe(&output))?;
        ensure(text.contains("37 123"), || describe(&output))?;
        ensure(text.contains("got berth"), || describe(&output))?;
    }
    Ok(())
}

fn exec_streams_100_mb_intact(berthd: &Berthd, _pod: &str, id: &str) -> TestResult {
    berthd.crictl_ok(&[
        "exec",
        "-s",
        id,
        "sh",
        "-c",
        "head -c 104857600 /dev/urandom > /tmp/big",
    ])?;
    let sum = berthd.crictl_ok(&["exec", "-s", id, "md5sum", "/tmp/big"])?;
    let want = sum.split_whitespace().next().unwrap_or_default().to_owned();
    for transport in TRANSPORTS {
        let transport = format!("--transport={transport}");
        let mut child = crictl(berthd, &["exec", &transport, id, "cat", "/tmp/big"])?
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut md5 = Command::new("md5sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut md5_in = md5.stdin.take().expect("piped");
        let copied = std::io::copy(&mut stdout, &mut md5_in).map_err(|e| e.to_string())?;
        drop(md5_in);
        let status = child.wait().map_err(|e| e.to_string())?;
        let got = md5.wait_with_output().map_err(|e| e.to_string())?;
        let got = String::from_utf8_lossy(&got.stdout);
        ensure(status.success(), || format!("crictl exec cat: {status}"))?;
        ensure(copied == 104_857_600, || format!("{copied} bytes arrived"))?;
        ensure(got.starts_with(&want), || format!("md5 {got} != {want}"))?;
    }
    // The metrics saw the bytes go out, and no session is left open.
    let metrics = berthd.metrics()?;
    let sample = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let out = sample("berth_streaming_bytes_total{direction=\"out\",kind=\"exec\"}");
    ensure(out.is_some_and(|n| n >= 2.0 * 104_857_600.0), || {
        format!("exec bytes out: {out:?}")
    })?;
    let settled = wait_until(Duration::from_secs(10), || {
        berthd
            .metrics()
            .is_ok_and(|m| m.contains("berth_streaming_sessions{kind=\"exec\"} 0"))
    });
    ensure(settled, || {
        "exec sessions still open in the metrics".to_owned()
    })
}

/// The number of open descriptors of berthd.
fn open_fds(berthd: &Berthd) -> Result<usize, String> {
    let pid = berthd.pid().ok_or("berthd is not running")?;
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| e.to_string())?
        .count())
}

/// How many `sleep 7777` processes run in the container.
fn sleepers(berthd: &Berthd, id: &str) -> Result<usize, String> {
    let out = berthd.crictl_ok(&["exec", "-s", id, "ps", "-o", "args"])?;
    Ok(out.lines().filter(|l| l.trim() == "sleep 7777").count())
}

fn interrupted_execs_leave_nothing(berthd: &Berthd, _pod: &str, id: &str) -> TestResult {
    // One complete exec first, so lazily opened descriptors (the shim
    // connection) are in the baseline.
    berthd.crictl_ok(&["exec", "--transport=websocket", id, "true"])?;
    let before = open_fds(berthd)?;
    let rounds = 200;
    for round in 0..rounds {
        let transport = TRANSPORTS[round % TRANSPORTS.len()];
        let transport = format!("--transport={transport}");
        let mut child = crictl(berthd, &["exec", "-i", &transport, id, "sleep", "7777"])?
            .spawn()
            .map_err(|e| e.to_string())?;
        // Interrupt at different points: before, during and after the
        // upgrade.
        std::thread::sleep(Duration::from_millis((round % 10) as u64 * 30));
        let _ = child.kill();
        let _ = child.wait();
    }
    let settled = wait_until(Duration::from_secs(60), || {
        sleepers(berthd, id) == Ok(0) && open_fds(berthd).is_ok_and(|n| n <= before)
    });
    let after = open_fds(berthd)?;
    let left = sleepers(berthd, id)?;
    ensure(settled, || {
        format!("after {rounds} interrupted execs: {before} fds before, {after} after, {left} exec processes left")
    })?;
    let exec_dirs = std::fs::read_dir(berthd.state_dir().join("exec"))
        .map(|d| d.count())
        .unwrap_or(0);
    ensure(exec_dirs == 0, || {
        format!("{exec_dirs} exec FIFO dirs left")
    })
}

fn exec_requests_are_validated(berthd: &Berthd, _pod: &str, _id: &str) -> TestResult {
    for (args, want) in [
        (
            vec!["exec", "--transport=websocket", "nosuchcontainer", "true"],
            "NotFound",
        ),
        (vec!["port-forward", "nosuchpod", "8080:80"], "NotFound"),
        (vec!["attach", "nosuchcontainer"], "NotFound"),
    ] {
        let output = crictl(berthd, &args)?
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure(!output.status.success() && stderr.contains(want), || {
            format!("crictl {args:?}: want {want}: {}", describe(&output))
        })?;
    }
    Ok(())
}

/// A free loopback port (free when asked; crictl binds it next).
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn port_forward_to_httpd_in_the_pod(berthd: &Berthd, pod: &str, id: &str) -> TestResult {
    berthd.crictl_ok(&[
        "exec",
        "-s",
        id,
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo hello from the pod > /tmp/www/index.html \
         && head -c 104857600 /dev/urandom > /tmp/www/big && httpd -p 8080 -h /tmp/www",
    ])?;
    let sum = berthd.crictl_ok(&["exec", "-s", id, "md5sum", "/tmp/www/big"])?;
    let want = sum.split_whitespace().next().unwrap_or_default().to_owned();
    for transport in PORT_FORWARD_TRANSPORTS {
        let port = free_port()?;
        let mut child = crictl(
            berthd,
            &[
                "port-forward",
                &format!("--transport={transport}"),
                pod,
                &format!("{port}:8080"),
            ],
        )?
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(berthd.dir().join("port-forward.err"))
                .map_err(|e| e.to_string())?,
        )
        .spawn()
        .map_err(|e| e.to_string())?;
        let address = format!("127.0.0.1:{port}");
        let listening = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(&address).is_ok()
        });
        let outcome = (|| -> TestResult {
            ensure(listening, || {
                format!("crictl port-forward ({transport}) never listened on {address}")
            })?;
            // Several connections, one after another and at once.
            for _ in 0..3 {
                let page = http_get(&address, "/index.html")?;
                ensure(page == "hello from the pod\n", || format!("page {page:?}"))?;
            }
            let pages: Vec<_> = (0..4)
                .map(|_| {
                    let address = address.clone();
                    std::thread::spawn(move || http_get(&address, "/index.html"))
                })
                .collect();
            for page in pages {
                let page = page.join().map_err(|_| "GET panicked")??;
                ensure(page == "hello from the pod\n", || format!("page {page:?}"))?;
            }
            let got = Command::new("sh")
                .args(["-c", &format!("curl -sf http://{address}/big | md5sum")])
                .output()
                .map_err(|e| e.to_string())?;
            let got = String::from_utf8_lossy(&got.stdout);
            ensure(got.starts_with(&want), || {
                format!("100 MB through port-forward ({transport}): md5 {got} != {want}")
            })
        })();
        let _ = child.kill();
        let _ = child.wait();
        outcome.map_err(|e| {
            let log = berthd.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("stream") || l.contains("forward"))
                .collect();
            let client =
                std::fs::read_to_string(berthd.dir().join("port-forward.err")).unwrap_or_default();
            format!(
                "{transport}: {e}\ncrictl: {client}\nberthd's streaming log:\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            )
        })?;
    }
    Ok(())
}
