//! berthd's Prometheus endpoint and trace export against a real berthd: a
//! pull, a pod and a container through crictl move the pull counters, the
//! start-up phase histogram and the state gauges, each read from
//! `/metrics` between the steps; and the same calls arrive as spans (ids
//! as attributes, the phases as children) at an OTLP/gRPC collector the
//! test runs on loopback. berthd must be built with `--features
//! berth-agent/otlp` (as `hack/test.sh` builds it).

use berth_e2e::{ensure, write_json, Berthd, BerthdOptions, Registry, Suite, TestResult};

/// The image of the container, served by the loopback registry.
const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn main() {
    let mut suite = Suite::new();
    let registry = Registry::start_or_report(Some("e2e-test-images/busybox"));
    let mirrors = registry.as_ref().map(Registry::mirrors_dir);
    suite.run("a_pod_moves_the_phase_histogram_and_state_gauges", || {
        let mirrors = mirrors.clone().ok_or("no registry")?;
        let mut berthd = Berthd::start(BerthdOptions {
            registry_config_path: Some(mirrors),
            ..BerthdOptions::default()
        })?;
        let outcome = pod_moves_the_metrics(&mut berthd);
        let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
        let stopped = berthd.stop();
        outcome.and(cleaned).and(stopped)
    });
    suite.run("spans_reach_an_otlp_collector", || {
        spans_reach_an_otlp_collector(mirrors.clone().ok_or("no registry")?)
    });
    drop(registry);
    suite.finish();
}

/// One scrape of `/metrics`.
struct Scrape(String);

impl Scrape {
    fn of(berthd: &Berthd) -> Result<Self, String> {
        berthd.metrics().map(Scrape)
    }

    /// The value of the series `name{labels}` (labels in name order, as
    /// the endpoint renders them); 0 when the series is not there yet.
    fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    fn phases(&self, phase: &str) -> f64 {
        self.value(&format!(
            "berth_pod_startup_phase_seconds_count{{outcome=\"success\",phase=\"{phase}\"}}"
        ))
    }

    fn containers(&self, state: &str) -> f64 {
        self.value(&format!("berth_containers{{state=\"{state}\"}}"))
    }

    fn pods(&self, state: &str) -> f64 {
        self.value(&format!("berth_pod_sandboxes{{state=\"{state}\"}}"))
    }

    fn shims(&self) -> f64 {
        self.value("berth_shims_running")
    }
}

/// Checks that `after` moved each phase of `grown` by one and no other.
fn phases_grew(before: &Scrape, after: &Scrape, grown: &[&str]) -> TestResult {
    for phase in [
        "image_pull",
        "snapshot_prepare",
        "network_setup",
        "shim_start",
        "oci_create",
        "start",
    ] {
        let expected = before.phases(phase) + if grown.contains(&phase) { 1.0 } else { 0.0 };
        ensure(after.phases(phase) == expected, || {
            format!(
                "phase {phase}: {} then {}, expected {expected}:\n{}",
                before.phases(phase),
                after.phases(phase),
                after.0
            )
        })?;
    }
    Ok(())
}

fn pod_moves_the_metrics(berthd: &mut Berthd) -> TestResult {
    let berthd = &*berthd;
    let start = Scrape::of(berthd)?;
    for state in ["creating", "ready", "not_ready"] {
        ensure(
            start
                .0
                .contains(&format!("berth_pod_sandboxes{{state=\"{state}\"}} 0")),
            || format!("a fresh berthd reports 0 {state} pods:\n{}", start.0),
        )?;
    }
    ensure(
        start.shims() == 0.0 && start.0.contains("berth_shims_running 0"),
        || start.0.clone(),
    )?;
    ensure(
        start.0.contains("berth_shim_start_failures_total 0"),
        || start.0.clone(),
    )?;
    for reserved in ["berth_streaming_sessions", "berth_streaming_bytes_total"] {
        ensure(start.0.contains(&format!("# TYPE {reserved} ")), || {
            format!("{reserved} is declared:\n{}", start.0)
        })?;
    }

    berthd.crictl_ok(&["pull", BUSYBOX])?;
    let pulled = Scrape::of(berthd)?;
    phases_grew(&start, &pulled, &["image_pull"])?;
    let pulls = "berth_image_pull_duration_seconds_count{outcome=\"success\"}";
    ensure(pulled.value(pulls) == start.value(pulls) + 1.0, || {
        pulled.0.clone()
    })?;
    // The bytes received are at least the image's size (config and
    // compressed layers), plus its manifests.
    let image: serde_json::Value = serde_json::from_str(&berthd.crictl_ok(&["inspecti", BUSYBOX])?)
        .map_err(|e| format!("inspecti is not JSON: {e}"))?;
    let size = &image["status"]["size"];
    let size: f64 = (size.as_str().and_then(|s| s.parse().ok()))
        .or_else(|| size.as_f64())
        .ok_or_else(|| format!("no image size: {image}"))?;
    let bytes = "berth_image_pull_bytes_total{outcome=\"success\"}";
    let received = pulled.value(bytes) - start.value(bytes);
    ensure(received >= size && received < size + 1_048_576.0, || {
        format!(
            "{received} bytes received for an image of {size}:\n{}",
            pulled.0
        )
    })?;

    let pod_config = write_json(
        berthd,
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "metrics", "namespace": "berth-e2e", "uid": "uid-metrics", "attempt": 0},
            "log_directory": berthd.dir().join("logs"),
            "linux": {}
        }),
    )?;
    let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();
    let ran = Scrape::of(berthd)?;
    phases_grew(&pulled, &ran, &["network_setup"])?;
    ensure(
        ran.pods("ready") == 1.0 && ran.pods("creating") == 0.0,
        || ran.0.clone(),
    )?;

    let container_config = write_json(
        berthd,
        "container.json",
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "linux": {}
        }),
    )?;
    let id = berthd
        .crictl_ok(&["create", &pod, &container_config, &pod_config])?
        .trim()
        .to_owned();
    let created = Scrape::of(berthd)?;
    phases_grew(
        &ran,
        &created,
        &["snapshot_prepare", "shim_start", "oci_create"],
    )?;
    ensure(created.containers("created") == 1.0, || created.0.clone())?;
    ensure(created.shims() == 1.0, || created.0.clone())?;

    berthd.crictl_ok(&["start", &id])?;
    let started = Scrape::of(berthd)?;
    phases_grew(&created, &started, &["start"])?;
    ensure(
        started.containers("running") == 1.0 && started.containers("created") == 0.0,
        || started.0.clone(),
    )?;
    ensure(started.shims() == 1.0, || started.0.clone())?;

    berthd.crictl_ok(&["stop", "--timeout", "0", &id])?;
    let stopped = Scrape::of(berthd)?;
    ensure(
        stopped.containers("exited") == 1.0 && stopped.containers("running") == 0.0,
        || stopped.0.clone(),
    )?;
    ensure(stopped.shims() == 0.0, || stopped.0.clone())?;

    berthd.crictl_ok(&["stopp", &pod])?;
    let not_ready = Scrape::of(berthd)?;
    ensure(
        not_ready.pods("not_ready") == 1.0 && not_ready.pods("ready") == 0.0,
        || not_ready.0.clone(),
    )?;
    berthd.crictl_ok(&["rmp", &pod])?;
    let removed = Scrape::of(berthd)?;
    ensure(
        removed.pods("not_ready") == 0.0 && removed.containers("exited") == 0.0,
        || removed.0.clone(),
    )?;
    ensure(
        removed.value("berth_shim_start_failures_total") == 0.0,
        || removed.0.clone(),
    )?;
    // Every CRI call of the way was counted.
    for method in [
        "PullImage",
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
    ] {
        let series = format!("berth_cri_requests_total{{code=\"OK\",method=\"{method}\"}}");
        ensure(removed.value(&series) == 1.0, || {
            format!("{series}:\n{}", removed.0)
        })?;
    }
    Ok(())
}

/// A span as the loopback collector received it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Vec<(String, String)>,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny OTLP/gRPC trace collector on a loopback port, run on a thread of
/// its own; it keeps every span it is sent.
struct Collector {
    address: std::net::SocketAddr,
    spans: std::sync::Arc<std::sync::Mutex<Vec<Exported>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Default)]
struct TraceSink(std::sync::Arc<std::sync::Mutex<Vec<Exported>>>);

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

fn value_text(value: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for TraceSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().expect("not poisoned");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(value_text)
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                kept.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                kv.value.as_ref().map(value_text).unwrap_or_default(),
                            )
                        })
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    fn start() -> Result<Self, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let sink = TraceSink::default();
        let spans = sink.0.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the collector");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let served = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(sink))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await;
                if let Err(e) = served {
                    eprintln!("the test's OTLP collector failed: {e}");
                }
            });
        });
        Ok(Self {
            address,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().expect("not poisoned").clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The span named `name` whose `key` attribute is `value`.
fn span_with<'a>(
    spans: &'a [Exported],
    name: &str,
    key: &str,
    value: &str,
) -> Result<&'a Exported, String> {
    spans
        .iter()
        .find(|s| s.name == name && s.attribute(key) == Some(value))
        .ok_or_else(|| format!("no span {name} with {key}={value} among {spans:#?}"))
}

/// The child span of `parent` named `name`, in the same trace.
fn child<'a>(spans: &'a [Exported], parent: &Exported, name: &str) -> Result<&'a Exported, String> {
    spans
        .iter()
        .find(|s| {
            s.name == name && s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id
        })
        .ok_or_else(|| format!("no span {name} under {}: {spans:#?}", parent.name))
}

/// berthd exports its spans to the collector the test runs: per CRI call,
/// the domain span with the ids, and the phases under it.
fn spans_reach_an_otlp_collector(mirrors: std::path::PathBuf) -> TestResult {
    let collector = Collector::start()?;
    let mut berthd = Berthd::start(BerthdOptions {
        registry_config_path: Some(mirrors),
        extra_config: format!(
            "\n[tracing]\notlp_endpoint = \"http://{}\"\n",
            collector.address
        ),
        ..BerthdOptions::default()
    })
    .map_err(|e| format!("{e}\n(is berthd built with --features berth-agent/otlp?)"))?;
    let ran = run_a_container(&mut berthd);
    let cleaned = berthd.crictl_ok(&["rmp", "--all", "--force"]).map(drop);
    // SIGTERM: berthd flushes its queued spans before it exits.
    let stopped = berthd.stop();
    let (pod, container) = ran?;
    cleaned.and(stopped)?;

    let spans = collector.spans();
    ensure(spans.iter().all(|s| s.service == "berthd"), || {
        format!("service names: {spans:#?}")
    })?;
    let call = span_with(&spans, "RunPodSandbox", "method", "RunPodSandbox")?;
    let run = child(&spans, call, "run_pod_sandbox")?;
    ensure(run.attribute("pod_id") == Some(pod.as_str()), || {
        format!("{run:#?}")
    })?;
    let network = child(&spans, run, "network_setup")?;
    ensure(network.attribute("phase") == Some("network_setup"), || {
        format!("{network:#?}")
    })?;
    let create = span_with(&spans, "create_container", "container_id", &container)?;
    ensure(create.attribute("pod_id") == Some(pod.as_str()), || {
        format!("{create:#?}")
    })?;
    let call = spans
        .iter()
        .find(|s| s.span_id == create.parent_span_id)
        .ok_or("create_container has no parent")?;
    ensure(call.name == "CreateContainer", || format!("{call:#?}"))?;
    for phase in ["snapshot_prepare", "shim_start", "oci_create"] {
        child(&spans, create, phase)?;
    }
    let start = span_with(&spans, "start_container", "container_id", &container)?;
    child(&spans, start, "start")?;
    let pull = span_with(&spans, "image_pull", "image", BUSYBOX)?;
    let call = spans
        .iter()
        .find(|s| s.span_id == pull.parent_span_id)
        .ok_or("image_pull has no parent")?;
    ensure(call.name == "PullImage", || format!("{call:#?}"))
}

/// Pulls, runs a pod and starts a container in it; returns their ids.
fn run_a_container(berthd: &mut Berthd) -> Result<(String, String), String> {
    let berthd = &*berthd;
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    let pod_config = write_json(
        berthd,
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "traced", "namespace": "berth-e2e", "uid": "uid-traced", "attempt": 0},
            "log_directory": berthd.dir().join("logs"),
            "linux": {}
        }),
    )?;
    let pod = berthd.crictl_ok(&["runp", &pod_config])?.trim().to_owned();
    let container_config = write_json(
        berthd,
        "container.json",
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "linux": {}
        }),
    )?;
    let id = berthd
        .crictl_ok(&["create", &pod, &container_config, &pod_config])?
        .trim()
        .to_owned();
    berthd.crictl_ok(&["start", &id])?;
    Ok((pod, id))
}
