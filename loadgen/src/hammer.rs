//! The List/Status calls that run beside the pods, as kubelet's PLEG, its
//! status manager and monitoring agents make them: rounds of
//! ListPodSandbox, ListContainers, ContainerStatus and PodSandboxStatus of
//! one listed object each, Version and Status, back to back until the pods
//! are done.

use crate::client::timed;
use crate::pod::format_status;
use crate::Run;
use berth_proto::cri::v1 as cri;
use std::collections::HashMap;
use tokio::sync::watch;

/// Runs rounds until `done` turns true; task `task` of the hammer starts its
/// picks at a different offset than the others.
pub(crate) async fn hammer(run: &Run, task: usize, mut done: watch::Receiver<bool>) {
    let mut rt = run.cri.runtime.clone();
    let selector = HashMap::from([(crate::RUN_LABEL.to_owned(), run.id.clone())]);
    let mut round = task;
    while !*done.borrow_and_update() {
        let request = cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: selector.clone(),
                ..Default::default()
            }),
        };
        let pods = timed(
            &run.recorder,
            "ListPodSandbox",
            rt.list_pod_sandbox(request),
        )
        .await;
        let pods = expect(run, "ListPodSandbox", pods).map(|r| r.items);
        let request = cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: selector.clone(),
                ..Default::default()
            }),
        };
        let containers = timed(&run.recorder, "ListContainers", rt.list_containers(request)).await;
        let containers = expect(run, "ListContainers", containers).map(|r| r.containers);
        if let Some(container) = containers.as_deref().and_then(|c| pick(c, round)) {
            let request = cri::ContainerStatusRequest {
                container_id: container.id.clone(),
                verbose: false,
            };
            let status = timed(
                &run.recorder,
                "ContainerStatus",
                rt.container_status(request),
            )
            .await;
            expect_or_gone(run, "ContainerStatus", status);
        }
        if let Some(pod) = pods.as_deref().and_then(|p| pick(p, round)) {
            let request = cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            };
            let status = timed(
                &run.recorder,
                "PodSandboxStatus",
                rt.pod_sandbox_status(request),
            )
            .await;
            expect_or_gone(run, "PodSandboxStatus", status);
        }
        let request = cri::VersionRequest {
            version: crate::CRI_VERSION.to_owned(),
        };
        let version = timed(&run.recorder, "Version", rt.version(request)).await;
        expect(run, "Version", version);
        let request = cri::StatusRequest { verbose: false };
        let status = timed(&run.recorder, "Status", rt.status(request)).await;
        expect(run, "Status", status);
        round += 1;
        // Let a pod task that is ready run before the next round.
        tokio::task::yield_now().await;
        if done.has_changed().unwrap_or(true) {
            break;
        }
    }
}

fn pick<T>(items: &[T], round: usize) -> Option<&T> {
    (!items.is_empty()).then(|| &items[round % items.len()])
}

fn expect<T>(run: &Run, method: &str, outcome: Result<T, tonic::Status>) -> Option<T> {
    match outcome {
        Ok(value) => Some(value),
        Err(status) => {
            run.recorder
                .error(format!("hammer: {method}: {}", format_status(&status)));
            None
        }
    }
}

/// As [`expect`], but NotFound only means a pod task removed the object
/// after the List that named it.
fn expect_or_gone<T>(run: &Run, method: &str, outcome: Result<T, tonic::Status>) {
    match outcome {
        Err(status) if status.code() == tonic::Code::NotFound => run.recorder.gone(),
        other => {
            expect(run, method, other);
        }
    }
}
