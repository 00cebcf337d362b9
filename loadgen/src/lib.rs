//! berth-load: a load generator for any CRI runtime (berthd, containerd).
//!
//! Layout: [`run`] connects to the runtime's socket (`client.rs`), pulls the
//! image, then runs [`Options::pods`] pod lifecycles (`pod.rs`), at most
//! [`Options::concurrency`] at once, while [`Options::hammer`] tasks make
//! List/Status calls back to back (`hammer.rs`); every call's latency and
//! every error go to one recorder (`stats.rs`). Once the pods are done it
//! removes whatever of the run the runtime still lists (each such object
//! is an error: a lifecycle that finished must leave nothing) and returns
//! a [`Report`]: throughput, latency percentiles per CRI method and per
//! whole pod, and the errors.
//!
//! Every object of a run carries the label [`RUN_LABEL`] with the run's id,
//! so the List calls and the final clean-up see this run's objects only,
//! whatever else the runtime runs.
#![forbid(unsafe_code)]

mod client;
mod hammer;
mod pod;
mod report;
mod stats;

pub use report::Report;
pub use stats::{Percentiles, Samples};

use berth_proto::cri::v1 as cri;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The label every pod and container of a run carries; its value is the
/// run's id.
pub const RUN_LABEL: &str = "io.berth.load.run";
/// The CRI namespace of the pods.
pub const NAMESPACE: &str = "berth-load";
/// The CRI version the Version calls ask for.
const CRI_VERSION: &str = "v1";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `unix:///path/to/socket` or the socket's path.
    pub endpoint: String,
    /// The image of every container; it must have `sh`, `echo` and `sleep`.
    pub image: String,
    /// Pod lifecycles in all.
    pub pods: usize,
    /// Pod lifecycles at once.
    pub concurrency: usize,
    /// Tasks making List/Status calls while the pods run.
    pub hammer: usize,
    /// Where the pods' log directories go; `None`: a temporary directory,
    /// removed afterwards.
    pub log_dir: Option<PathBuf>,
    /// The RuntimeClass handler of the pods ("" is the default).
    pub runtime_handler: String,
    /// Deadline of each CRI call.
    pub rpc_timeout: Duration,
}

/// berth-load's failures to run at all; what goes wrong during the run is
/// counted in the [`Report`] instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {endpoint:?} is neither unix:///PATH nor an absolute socket path")]
    Endpoint { endpoint: String },
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{what} failed before the run: {}", pod::format_status(.source))]
    Prepare {
        what: String,
        #[source]
        source: tonic::Status,
    },
    #[error("log directory {path}")]
    LogDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
}

/// berth-load's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What every task of a run shares.
#[derive(Debug)]
struct Run {
    options: Options,
    id: String,
    cri: client::Cri,
    log_dir: PathBuf,
    recorder: stats::Recorder,
}

/// Runs the load described by `options` and reports what it measured.
pub async fn run(options: Options) -> Result<Report> {
    if options.pods == 0 {
        return Err(Error::Zero { what: "pods" });
    }
    if options.concurrency == 0 {
        return Err(Error::Zero {
            what: "concurrency",
        });
    }
    let cri = client::connect(&options.endpoint, options.rpc_timeout).await?;
    let runtime = cri
        .runtime
        .clone()
        .version(cri::VersionRequest {
            version: CRI_VERSION.to_owned(),
        })
        .await
        .map_err(|source| Error::Prepare {
            what: "Version".to_owned(),
            source,
        })?
        .into_inner();
    let pull = cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: options.image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    cri.image
        .clone()
        .pull_image(pull)
        .await
        .map_err(|source| Error::Prepare {
            what: format!("PullImage {}", options.image),
            source,
        })?;
    let (log_dir, _temp_log_dir) = match &options.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| Error::LogDir {
                path: dir.clone(),
                source,
            })?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("berth-load-")
                .tempdir()
                .map_err(|source| Error::LogDir {
                    path: std::env::temp_dir(),
                    source,
                })?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let run = Arc::new(Run {
        id: run_id(),
        cri,
        log_dir,
        recorder: stats::Recorder::default(),
        options,
    });

    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let hammers: Vec<_> = (0..run.options.hammer)
        .map(|task| {
            let run = Arc::clone(&run);
            let done = done_rx.clone();
            tokio::spawn(async move { hammer::hammer(&run, task, done).await })
        })
        .collect();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..run.options.concurrency.min(run.options.pods))
        .map(|_| {
            let run = Arc::clone(&run);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= run.options.pods {
                        break;
                    }
                    pod::lifecycle(&run, index).await;
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(e) = worker.await {
            run.recorder.error(format!("a pod task panicked: {e}"));
        }
    }
    let wall = started.elapsed();
    // The receivers only read the flag; none may be gone before this.
    let _ = done_tx.send(true);
    for task in hammers {
        if let Err(e) = task.await {
            run.recorder.error(format!("a hammer task panicked: {e}"));
        }
    }
    remove_leftovers(&run).await;
    Ok(Report {
        endpoint: run.options.endpoint.clone(),
        runtime: format!("{} {}", runtime.runtime_name, runtime.runtime_version),
        pods: run.options.pods,
        concurrency: run.options.concurrency,
        hammer: run.options.hammer,
        wall,
        samples: run.recorder.take(),
    })
}

/// Removes every pod and container of the run that the runtime still lists:
/// each is an error, since every lifecycle removes what it made.
async fn remove_leftovers(run: &Run) {
    let mut rt = run.cri.runtime.clone();
    let selector = HashMap::from([(RUN_LABEL.to_owned(), run.id.clone())]);
    let request = cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            label_selector: selector.clone(),
            ..Default::default()
        }),
    };
    match rt.list_pod_sandbox(request).await {
        Ok(pods) => {
            for pod in pods.into_inner().items {
                run.recorder.error(format!(
                    "pod {} ({:?}) is still listed after the run",
                    pod.id,
                    pod.metadata.map(|m| m.name).unwrap_or_default()
                ));
                let stop = cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                };
                let removed = match rt.stop_pod_sandbox(stop).await {
                    Ok(_) => rt
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                            pod_sandbox_id: pod.id.clone(),
                        })
                        .await
                        .map(drop),
                    Err(status) => Err(status),
                };
                if let Err(status) = removed {
                    run.recorder.error(format!(
                        "clean-up of pod {}: {}",
                        pod.id,
                        pod::format_status(&status)
                    ));
                }
            }
        }
        Err(status) => run.recorder.error(format!(
            "clean-up: ListPodSandbox: {}",
            pod::format_status(&status)
        )),
    }
    let request = cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            label_selector: selector,
            ..Default::default()
        }),
    };
    match rt.list_containers(request).await {
        Ok(list) => {
            for container in list.into_inner().containers {
                run.recorder.error(format!(
                    "container {} is still listed after its pod was removed",
                    container.id
                ));
            }
        }
        Err(status) => run.recorder.error(format!(
            "clean-up: ListContainers: {}",
            pod::format_status(&status)
        )),
    }
}

/// A run id unique on the machine: the time and the process id.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{}", nanos, std::process::id())
}
