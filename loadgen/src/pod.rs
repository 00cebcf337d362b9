//! One pod's lifecycle, in the order kubelet drives it: RunPodSandbox, then
//! for each container CreateContainer and StartContainer, one ExecSync and
//! one read of a container's CRI log file, then StopContainer for each,
//! StopPodSandbox, RemoveContainer for each and RemovePodSandbox.

use crate::client::timed;
use crate::Run;
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The containers of every pod, by CRI name.
pub(crate) const CONTAINERS: [&str; 2] = ["first", "second"];
/// How long a container's first line may take to reach its log file.
const LOG_WAIT: Duration = Duration::from_secs(30);
/// ExecSync's own timeout, in seconds.
const EXEC_TIMEOUT_S: i64 = 30;

/// Runs pod `index` through its lifecycle; every failed step is recorded as
/// an error, and what was made is removed whatever failed.
pub(crate) async fn lifecycle(run: &Run, index: usize) {
    let started = Instant::now();
    let name = format!("load-{index}");
    let log_dir = run.log_dir.join(&name);
    // kubelet makes the pod's log directory before RunPodSandbox.
    if let Err(e) = tokio::fs::create_dir_all(&log_dir).await {
        run.recorder
            .error(format!("{name}: log directory {}: {e}", log_dir.display()));
        return;
    }
    let mut pod = Pod {
        run,
        name,
        config: pod_config(run, index, &log_dir),
        id: None,
        containers: Vec::new(),
        failed: false,
    };
    pod.body().await;
    pod.teardown().await;
    if !pod.failed {
        run.recorder.pod(started.elapsed());
    }
}

struct Pod<'a> {
    run: &'a Run,
    name: String,
    config: cri::PodSandboxConfig,
    id: Option<String>,
    containers: Vec<String>,
    failed: bool,
}

impl Pod<'_> {
    fn fail(&mut self, what: &str, message: impl std::fmt::Display) {
        self.failed = true;
        self.run
            .recorder
            .error(format!("{}: {what}: {message}", self.name));
    }

    /// `Some(T)` when the call succeeded, else the error is recorded.
    fn ok<T>(&mut self, what: &str, outcome: Result<T, tonic::Status>) -> Option<T> {
        match outcome {
            Ok(value) => Some(value),
            Err(status) => {
                self.fail(what, format_status(&status));
                None
            }
        }
    }

    async fn body(&mut self) {
        let run = self.run;
        let mut rt = run.cri.runtime.clone();
        let request = cri::RunPodSandboxRequest {
            config: Some(self.config.clone()),
            runtime_handler: run.options.runtime_handler.clone(),
        };
        let outcome = timed(&run.recorder, "RunPodSandbox", rt.run_pod_sandbox(request)).await;
        let Some(response) = self.ok("RunPodSandbox", outcome) else {
            return;
        };
        let pod_id = response.pod_sandbox_id;
        self.id = Some(pod_id.clone());
        for container in CONTAINERS {
            let request = cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container_config(run, &self.name, container)),
                sandbox_config: Some(self.config.clone()),
            };
            let outcome = timed(
                &run.recorder,
                "CreateContainer",
                rt.create_container(request),
            )
            .await;
            let Some(response) = self.ok("CreateContainer", outcome) else {
                return;
            };
            let id = response.container_id;
            self.containers.push(id.clone());
            let request = cri::StartContainerRequest { container_id: id };
            let outcome = timed(&run.recorder, "StartContainer", rt.start_container(request)).await;
            if self.ok("StartContainer", outcome).is_none() {
                return;
            }
        }
        let expected = format!("exec {}", self.name);
        let request = cri::ExecSyncRequest {
            container_id: self.containers[0].clone(),
            cmd: vec!["echo".to_owned(), expected.clone()],
            timeout: EXEC_TIMEOUT_S,
        };
        let outcome = timed(&run.recorder, "ExecSync", rt.exec_sync(request)).await;
        let Some(response) = self.ok("ExecSync", outcome) else {
            return;
        };
        let stdout = String::from_utf8_lossy(&response.stdout);
        if response.exit_code != 0 || stdout != format!("{expected}\n") {
            self.fail(
                "ExecSync",
                format!(
                    "exit code {}, stdout {stdout:?} (expected 0 and {expected:?}), stderr {:?}",
                    response.exit_code,
                    String::from_utf8_lossy(&response.stderr)
                ),
            );
            return;
        }
        let container = CONTAINERS[CONTAINERS.len() - 1];
        let path = Path::new(&self.config.log_directory).join(log_path(container));
        let line = marker(&self.name, container);
        if let Err(e) = wait_for_log_line(&path, &line).await {
            self.fail("log read", e);
        }
    }

    /// Stops and removes what `body` made, as far as it got.
    async fn teardown(&mut self) {
        let run = self.run;
        let Some(pod_id) = self.id.clone() else {
            return;
        };
        let mut rt = run.cri.runtime.clone();
        for id in self.containers.clone() {
            let request = cri::StopContainerRequest {
                container_id: id,
                timeout: 0,
            };
            let outcome = timed(&run.recorder, "StopContainer", rt.stop_container(request)).await;
            self.ok("StopContainer", outcome);
        }
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        };
        let outcome = timed(
            &run.recorder,
            "StopPodSandbox",
            rt.stop_pod_sandbox(request),
        )
        .await;
        self.ok("StopPodSandbox", outcome);
        for id in self.containers.clone() {
            let request = cri::RemoveContainerRequest { container_id: id };
            let outcome = timed(
                &run.recorder,
                "RemoveContainer",
                rt.remove_container(request),
            )
            .await;
            self.ok("RemoveContainer", outcome);
        }
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        };
        let outcome = timed(
            &run.recorder,
            "RemovePodSandbox",
            rt.remove_pod_sandbox(request),
        )
        .await;
        self.ok("RemovePodSandbox", outcome);
    }
}

/// `Code: message`, as one line.
pub(crate) fn format_status(status: &tonic::Status) -> String {
    format!(
        "{:?}: {}",
        status.code(),
        status.message().replace('\n', " ")
    )
}

fn labels(run: &Run) -> HashMap<String, String> {
    HashMap::from([(crate::RUN_LABEL.to_owned(), run.id.clone())])
}

fn pod_config(run: &Run, index: usize, log_dir: &Path) -> cri::PodSandboxConfig {
    let name = format!("load-{index}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("{}-{index}", run.id),
            namespace: crate::NAMESPACE.to_owned(),
            attempt: 0,
        }),
        hostname: name,
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: labels(run),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn log_path(container: &str) -> String {
    format!("{container}.log")
}

/// The line a container writes first, unique in the run.
fn marker(pod: &str, container: &str) -> String {
    format!("{pod} {container} started")
}

fn container_config(run: &Run, pod: &str, container: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: run.options.image.clone(),
            ..Default::default()
        }),
        command: vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo '{}'; exec sleep 3600", marker(pod, container)),
        ],
        log_path: log_path(container),
        labels: labels(run),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// Polls the CRI log file at `path` until it holds a full stdout line
/// `line`, or fails after [`LOG_WAIT`] with what the file held.
async fn wait_for_log_line(path: &Path, line: &str) -> Result<(), String> {
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let read = tokio::fs::read_to_string(path).await;
        if let Ok(text) = &read {
            if has_stdout_line(text, line) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(match read {
                Ok(text) => format!(
                    "{} holds no stdout line {line:?} after {} s: {text:?}",
                    path.display(),
                    LOG_WAIT.as_secs()
                ),
                Err(e) => format!("{}: {e}", path.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a CRI log (`TIMESTAMP STREAM TAG CONTENT` per line) holds a full
/// (tag `F`) stdout line whose content is `line`.
fn has_stdout_line(log: &str, line: &str) -> bool {
    log.lines().any(|entry| {
        let mut fields = entry.splitn(4, ' ');
        let _timestamp = fields.next();
        fields.next() == Some("stdout") && fields.next() == Some("F") && fields.next() == Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_counts_only_when_full_on_stdout_with_the_exact_content() {
        let log = "2026-12-04T21:00:00.000000001Z stderr F load-1 first started\n\
                   2026-12-04T21:00:00.000000002Z stdout P load-1 first\n\
                   2026-12-04T21:00:00.000000003Z stdout F load-1 first started!\n";
        assert!(!has_stdout_line(log, "load-1 first started"));
        let log = format!("{log}2026-12-04T21:00:00.000000004Z stdout F load-1 first started\n");
        assert!(has_stdout_line(&log, "load-1 first started"));
        assert!(!has_stdout_line("", "x"));
    }
}
