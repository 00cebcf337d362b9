//! Prometheus metrics: the CRI request layer, what berthd does and holds,
//! and the `/metrics` endpoint.
//!
//! Every CRI call passes through [`CriMetricsLayer`], one tower layer in
//! front of both services, so handlers never count or log themselves. A
//! call is recorded when its response body ends: unary errors carry
//! `grpc-status` in the headers (a "trailers-only" response), successes and
//! stream ends carry it in the trailers. The layer also opens the call's
//! `cri` tracing span (field `method`), under which the domain code opens
//! its own (`run_pod_sandbox`, `create_container`, … with the ids as
//! fields) and one span per start-up [`Phase`].
//!
//! The same layer logs every failed call once, with its method, code and
//! message ([`failure_level`]): at `warn` when the node is at fault, at
//! `debug` when the answer is the caller's business alone.
//!
//! What berthd holds (pods and containers by state, running shims) are
//! gauges set from the store at each scrape ([`Metrics::render`] takes the
//! [`ObjectCounts`]), so they cannot drift from the records. Everything
//! else counts as it happens: image pulls ([`Metrics::record_pull`]), shim
//! start failures, and the start-up phases of pods and containers
//! ([`Metrics::timed`], [`Metrics::timed_blocking`]). Labels are kept to
//! small fixed sets (method, code, state, phase, outcome): never an id or
//! an image name. `docs/metrics.md` lists every metric.

use http_body::{Body, Frame};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::Instrument;

/// Latency buckets, in seconds, from half a millisecond to two minutes:
/// CRI calls and start-up phases range from a cached status to a pull.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];
/// Image pull buckets, in seconds: a cached manifest to a large image.
const PULL_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A step of starting a pod or a container, timed by
/// `berth_pod_startup_phase_seconds{phase}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// PullImage: resolving, downloading and unpacking an image.
    ImagePull,
    /// CreateContainer: the container's rootfs snapshot.
    SnapshotPrepare,
    /// RunPodSandbox: pinning the pod's network namespace, then CNI ADD.
    NetworkSetup,
    /// CreateContainer: launching the container's shim until it serves.
    ShimStart,
    /// CreateContainer: the shim's task create (`runc create`).
    OciCreate,
    /// StartContainer: the shim's task start (`runc start`).
    Start,
}

impl Phase {
    /// Every phase, in start-up order.
    pub const ALL: [Phase; 6] = [
        Phase::ImagePull,
        Phase::SnapshotPrepare,
        Phase::NetworkSetup,
        Phase::ShimStart,
        Phase::OciCreate,
        Phase::Start,
    ];

    /// The `phase` label, also the name of the phase's tracing span.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ImagePull => "image_pull",
            Phase::SnapshotPrepare => "snapshot_prepare",
            Phase::NetworkSetup => "network_setup",
            Phase::ShimStart => "shim_start",
            Phase::OciCreate => "oci_create",
            Phase::Start => "start",
        }
    }

    fn span(self) -> tracing::Span {
        tracing::debug_span!("phase", phase = self.name(), otel.name = self.name())
    }
}

/// The values of every `outcome` label.
const OUTCOMES: [&str; 2] = ["success", "failure"];
/// The values of the streaming metrics' `kind` label.
pub const STREAMING_KINDS: [&str; 3] = ["exec", "attach", "port_forward"];

/// The `outcome` label of a result.
fn outcome<T, E>(result: &Result<T, E>) -> &'static str {
    match result {
        Ok(_) => "success",
        Err(_) => "failure",
    }
}

/// What the store holds at a scrape: the values of the state gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    /// Pod sandboxes by state label (`creating`, `ready`, `not_ready`).
    pub pods: Vec<(&'static str, i64)>,
    /// Containers by state label (`creating`, `created`, `running`,
    /// `exited`).
    pub containers: Vec<(&'static str, i64)>,
    /// Containers whose shim is up (created or running: a shim is released
    /// once its container exited).
    pub shims: i64,
}

/// berth's metrics and the registry that exports them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    pull_duration: HistogramVec,
    pull_bytes: IntCounterVec,
    pods: IntGaugeVec,
    containers: IntGaugeVec,
    shims: IntGauge,
    shim_start_failures: IntCounter,
    phases: HistogramVec,
    // Set by the streaming server (`Metrics::streaming`).
    streaming_sessions: IntGaugeVec,
    streaming_bytes: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn register<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            collector: prometheus::Result<C>,
        ) -> C {
            let collector = collector.expect("static metric options are valid");
            registry
                .register(Box::new(collector.clone()))
                .expect("each metric is registered once");
            collector
        }
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help).buckets(buckets.to_vec())
        };
        let r = &registry;
        let requests = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "berth_cri_requests_total",
                    "CRI requests by method and gRPC status code",
                ),
                &["method", "code"],
            ),
        );
        let duration = register(
            r,
            HistogramVec::new(
                histogram(
                    "berth_cri_request_duration_seconds",
                    "CRI request latency by method, until the response ends",
                    &LATENCY_BUCKETS,
                ),
                &["method"],
            ),
        );
        let pull_duration = register(
            r,
            HistogramVec::new(
                histogram(
                    "berth_image_pull_duration_seconds",
                    "Image pulls by outcome: time from PullImage's start to the image record",
                    &PULL_BUCKETS,
                ),
                &["outcome"],
            ),
        );
        let pull_bytes = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "berth_image_pull_bytes_total",
                    "Bytes received from registries by image pulls, by the pull's outcome",
                ),
                &["outcome"],
            ),
        );
        let pods = register(
            r,
            IntGaugeVec::new(
                Opts::new("berth_pod_sandboxes", "Pod sandboxes by state"),
                &["state"],
            ),
        );
        let containers = register(
            r,
            IntGaugeVec::new(
                Opts::new("berth_containers", "Containers by state"),
                &["state"],
            ),
        );
        let shims = register(
            r,
            IntGauge::new(
                "berth_shims_running",
                "Container shims running (containers created or running)",
            ),
        );
        let shim_start_failures = register(
            r,
            IntCounter::new(
                "berth_shim_start_failures_total",
                "Shims that failed to start or to answer during CreateContainer",
            ),
        );
        let phases = register(
            r,
            HistogramVec::new(
                histogram(
                    "berth_pod_startup_phase_seconds",
                    "Time spent in each phase of starting pods and containers, by outcome",
                    &LATENCY_BUCKETS,
                ),
                &["phase", "outcome"],
            ),
        );
        let streaming_sessions = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "berth_streaming_sessions",
                    "Streaming sessions open, by kind (exec, attach, port_forward)",
                ),
                &["kind"],
            ),
        );
        let streaming_bytes = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "berth_streaming_bytes_total",
                    "Bytes carried by streaming sessions, by kind and direction (in: from the client, out: to it)",
                ),
                &["kind", "direction"],
            ),
        );
        // Every series of a fixed label set exists from the start, at zero,
        // so that rates and alerts see the first event.
        for outcome in OUTCOMES {
            pull_duration.with_label_values(&[outcome]);
            pull_bytes.with_label_values(&[outcome]);
            for phase in Phase::ALL {
                phases.with_label_values(&[phase.name(), outcome]);
            }
        }
        for kind in STREAMING_KINDS {
            streaming_sessions.with_label_values(&[kind]);
            for direction in ["in", "out"] {
                streaming_bytes.with_label_values(&[kind, direction]);
            }
        }
        Self {
            registry,
            requests,
            duration,
            pull_duration,
            pull_bytes,
            pods,
            containers,
            shims,
            shim_start_failures,
            phases,
            streaming_sessions,
            streaming_bytes,
        }
    }

    /// The Prometheus text exposition of every metric, with the state
    /// gauges set from `objects`.
    pub fn render(&self, objects: &ObjectCounts) -> String {
        for (state, count) in &objects.pods {
            self.pods.with_label_values(&[state]).set(*count);
        }
        for (state, count) in &objects.containers {
            self.containers.with_label_values(&[state]).set(*count);
        }
        self.shims.set(objects.shims);
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("text encoding of gathered metrics cannot fail")
    }

    fn record(&self, method: &str, code: tonic::Code, started: Instant) {
        self.requests
            .with_label_values(&[method, code_name(code)])
            .inc();
        self.duration
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records one image pull that began at `started`, received `bytes`
    /// from registries and ended with `result`; also its `image_pull` phase.
    pub fn record_pull<T, E>(&self, started: Instant, bytes: u64, result: &Result<T, E>) {
        let outcome = outcome(result);
        let took = started.elapsed();
        self.pull_duration
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
        self.pull_bytes.with_label_values(&[outcome]).inc_by(bytes);
        self.observe_phase(Phase::ImagePull, took, outcome);
    }

    /// Counts a shim that did not start or did not answer.
    pub fn shim_start_failed(&self) {
        self.shim_start_failures.inc();
    }

    fn observe_phase(&self, phase: Phase, took: Duration, outcome: &str) {
        self.phases
            .with_label_values(&[phase.name(), outcome])
            .observe(took.as_secs_f64());
    }

    /// Runs `work` as `phase`: timed, by outcome, in the phase's span.
    pub async fn timed<T, E>(
        &self,
        phase: Phase,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.timed_after(phase, Duration::ZERO, work).await
    }

    /// Like [`Metrics::timed`], for a phase of which `earlier` was spent
    /// before (in another task).
    pub async fn timed_after<T, E>(
        &self,
        phase: Phase,
        earlier: Duration,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = work.instrument(phase.span()).await;
        self.observe_phase(phase, earlier + started.elapsed(), outcome(&result));
        result
    }

    /// Runs blocking `work` as `phase`, in the phase's span.
    pub fn timed_blocking<T, E>(
        &self,
        phase: Phase,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = phase.span().in_scope(work);
        self.observe_phase(phase, started.elapsed(), outcome(&result));
        result
    }
}

/// The streaming server's metrics (`crate::streaming`):
/// `berth_streaming_sessions{kind}`, the sessions open now by kind
/// ([`STREAMING_KINDS`]), and `berth_streaming_bytes_total{kind,direction}`,
/// the bytes of the upgraded connections (`in` from clients, `out` to them).
impl Metrics {
    pub fn streaming(&self) -> (IntGaugeVec, IntCounterVec) {
        (
            self.streaming_sessions.clone(),
            self.streaming_bytes.clone(),
        )
    }
}

/// gRPC's canonical upper-case code names, as other runtimes label them.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The CRI method name of a gRPC path: `/runtime.v1.RuntimeService/Version`
/// is `Version`.
fn method_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

/// The status in `grpc-status` and `grpc-message`, if the headers (or
/// trailers) end the call.
fn status_header(headers: &http::HeaderMap) -> Option<(tonic::Code, String)> {
    tonic::Status::from_header_map(headers)
        .map(|status| (status.code(), status.message().to_owned()))
}

/// The level a failed call is logged at. `debug` for the codes that
/// describe the request or the object it names (kubelet asks about gone
/// containers, retries names and probes unimplemented calls as a matter of
/// course, and reads the answer itself): NotFound, InvalidArgument,
/// AlreadyExists, FailedPrecondition, OutOfRange, Unimplemented and
/// Cancelled. `warn` for everything that says the node, a shim or a
/// registry failed: Internal, Unknown, Unavailable, DataLoss,
/// DeadlineExceeded, ResourceExhausted, Aborted, and the registry's
/// Unauthenticated and PermissionDenied (a pull the operator must fix).
pub fn failure_level(code: tonic::Code) -> tracing::Level {
    use tonic::Code::*;
    match code {
        NotFound | InvalidArgument | AlreadyExists | FailedPrecondition | OutOfRange
        | Unimplemented | Cancelled | Ok => tracing::Level::DEBUG,
        Unknown | DeadlineExceeded | PermissionDenied | ResourceExhausted | Aborted | Internal
        | Unavailable | DataLoss | Unauthenticated => tracing::Level::WARN,
    }
}

/// Logs a failed call once.
fn log_failure(method: &str, code: tonic::Code, message: &str) {
    let name = code_name(code);
    if failure_level(code) == tracing::Level::WARN {
        tracing::warn!(method, code = name, message, "CRI call failed");
    } else {
        tracing::debug!(method, code = name, message, "CRI call failed");
    }
}

/// The tower layer that records every CRI call.
#[derive(Debug, Clone)]
pub struct CriMetricsLayer {
    metrics: Arc<Metrics>,
}

impl CriMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for CriMetricsLayer {
    type Service = CriMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CriMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CriMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CriMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = http::Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = method_of(request.uri().path());
        let span = tracing::debug_span!("cri", method = %method, otel.name = method.as_str());
        let recorder = Recorder {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            done: false,
        };
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = response.await?;
                let mut recorder = recorder;
                if let Some((code, message)) = status_header(response.headers()) {
                    // A trailers-only response: the call ended here.
                    recorder.finish(code, &message);
                }
                Ok(response.map(|inner| RecordedBody { inner, recorder }))
            }
            .instrument(span),
        )
    }
}

/// Records (and, if it failed, logs) one call exactly once: at the status,
/// or at drop if the client went away before any status was sent.
#[derive(Debug)]
struct Recorder {
    metrics: Arc<Metrics>,
    method: String,
    started: Instant,
    done: bool,
}

impl Recorder {
    fn finish(&mut self, code: tonic::Code, message: &str) {
        if !self.done {
            self.done = true;
            self.metrics.record(&self.method, code, self.started);
            if code != tonic::Code::Ok {
                log_failure(&self.method, code, message);
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish(
            tonic::Code::Cancelled,
            "the client went away before the response ended",
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports the call's status when it ends.
    #[derive(Debug)]
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        recorder: Recorder,
    }
}

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some((code, message)) = frame.trailers_ref().and_then(status_header) {
                    this.recorder.finish(code, &message);
                }
            }
            Some(Err(_)) => this
                .recorder
                .finish(tonic::Code::Internal, "the response body failed"),
            None => this.recorder.finish(tonic::Code::Ok, ""),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Binds the `/metrics` endpoint; serving starts with [`serve`].
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// The most connections served at once; one more is closed at accept. A
/// scraper needs one; the cap keeps any local user from filling berthd's
/// file table through this port.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's headers, and how
/// long it may stay idle between requests (hyper's timer runs whenever it
/// waits for a request head).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is served, whatever it does (a client that
/// never reads its response).
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(60);

/// Serves `/metrics` until `shutdown` resolves; `objects` gives the state
/// gauges at each scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    objects: Arc<dyn Fn() -> ObjectCounts + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioIo, TokioTimer};

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = crate::accept::AcceptBackoff::new("metrics endpoint");
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(e) => {
                let delay = backoff.failed(&e);
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: the descriptor is back before the next accept.
            tracing::debug!(
                "metrics endpoint: {MAX_CONNECTIONS} connections open; closing one more"
            );
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let objects = objects.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let objects = objects.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(metrics_response(
                        &request,
                        &metrics,
                        objects.as_ref(),
                    ))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(MAX_CONNECTION_TIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
                Err(_) => tracing::debug!("metrics connection served too long; closed"),
            }
        });
    }
}

fn metrics_response<B>(
    request: &http::Request<B>,
    metrics: &Metrics,
    objects: &(dyn Fn() -> ObjectCounts + Send + Sync),
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            http::StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(&objects()),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
    };
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        assert_eq!(method_of("/runtime.v1.RuntimeService/Version"), "Version");
        assert_eq!(method_of("/runtime.v1.ImageService/PullImage"), "PullImage");
    }

    #[test]
    fn records_appear_in_text() {
        let metrics = Metrics::new();
        metrics.record("Version", tonic::Code::Ok, Instant::now());
        metrics.record("Version", tonic::Code::Ok, Instant::now());
        metrics.record("ListImages", tonic::Code::Unimplemented, Instant::now());
        let text = metrics.render(&ObjectCounts::default());
        assert!(
            text.contains("berth_cri_requests_total{code=\"OK\",method=\"Version\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_cri_requests_total{code=\"UNIMPLEMENTED\",method=\"ListImages\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("berth_cri_request_duration_seconds_count{method=\"Version\"} 2"),
            "{text}"
        );
    }

    /// The value of the sample `name{labels}` (labels as rendered, in
    /// name order), if the text has it.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().expect("a sample's value is a number"))
    }

    #[test]
    fn every_metric_is_exported_from_the_start() {
        let text = Metrics::new().render(&ObjectCounts::default());
        for name in ["berth_shims_running", "berth_shim_start_failures_total"] {
            assert_eq!(sample(&text, name), Some(0.0), "{name}: {text}");
        }
        for series in [
            "berth_image_pull_bytes_total{outcome=\"failure\"}",
            "berth_image_pull_duration_seconds_count{outcome=\"success\"}",
            "berth_pod_startup_phase_seconds_count{outcome=\"failure\",phase=\"oci_create\"}",
            "berth_pod_startup_phase_seconds_count{outcome=\"success\",phase=\"start\"}",
            "berth_streaming_sessions{kind=\"port_forward\"}",
            "berth_streaming_bytes_total{direction=\"out\",kind=\"exec\"}",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series}: {text}");
        }
        // The state gauges come with the scrape's counts.
        let counts = ObjectCounts {
            pods: vec![("ready", 0)],
            containers: vec![("running", 0)],
            shims: 0,
        };
        let text = Metrics::new().render(&counts);
        for series in [
            "berth_pod_sandboxes{state=\"ready\"}",
            "berth_containers{state=\"running\"}",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series}: {text}");
        }
    }

    #[test]
    fn state_gauges_are_what_the_scrape_says() {
        let metrics = Metrics::new();
        let counts = ObjectCounts {
            pods: vec![("creating", 0), ("ready", 2), ("not_ready", 1)],
            containers: vec![("created", 1), ("running", 3), ("exited", 4)],
            shims: 4,
        };
        let text = metrics.render(&counts);
        assert_eq!(
            sample(&text, "berth_pod_sandboxes{state=\"ready\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "berth_pod_sandboxes{state=\"not_ready\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "berth_pod_sandboxes{state=\"creating\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "berth_containers{state=\"running\"}"),
            Some(3.0)
        );
        assert_eq!(sample(&text, "berth_shims_running"), Some(4.0));
        // The next scrape sets them again: nothing accumulates.
        let fewer = ObjectCounts {
            pods: vec![("creating", 0), ("ready", 0), ("not_ready", 0)],
            containers: vec![("created", 0), ("running", 1), ("exited", 0)],
            shims: 1,
        };
        let text = metrics.render(&fewer);
        assert_eq!(
            sample(&text, "berth_pod_sandboxes{state=\"ready\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "berth_containers{state=\"running\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "berth_containers{state=\"exited\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "berth_shims_running"), Some(1.0));
    }

    #[test]
    fn pulls_are_counted_by_outcome_with_their_bytes() {
        let metrics = Metrics::new();
        metrics.record_pull(Instant::now(), 1000, &Ok::<(), ()>(()));
        metrics.record_pull(Instant::now(), 500, &Ok::<(), ()>(()));
        metrics.record_pull(Instant::now(), 20, &Err::<(), ()>(()));
        let text = metrics.render(&ObjectCounts::default());
        let value =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}: {text}"));
        assert_eq!(
            value("berth_image_pull_bytes_total{outcome=\"success\"}"),
            1500.0
        );
        assert_eq!(
            value("berth_image_pull_bytes_total{outcome=\"failure\"}"),
            20.0
        );
        assert_eq!(
            value("berth_image_pull_duration_seconds_count{outcome=\"success\"}"),
            2.0
        );
        assert_eq!(
            value("berth_image_pull_duration_seconds_count{outcome=\"failure\"}"),
            1.0
        );
        assert_eq!(
            value(
                "berth_pod_startup_phase_seconds_count{outcome=\"success\",phase=\"image_pull\"}"
            ),
            2.0
        );
    }

    #[tokio::test]
    async fn phases_are_timed_by_outcome() {
        let metrics = Metrics::new();
        let ok: Result<u32, &str> = metrics.timed(Phase::ShimStart, async { Ok(7) }).await;
        assert_eq!(ok, Ok(7));
        let failed: Result<u32, &str> =
            metrics.timed(Phase::OciCreate, async { Err("runc") }).await;
        assert_eq!(failed, Err("runc"));
        let blocking: Result<(), ()> = metrics.timed_blocking(Phase::SnapshotPrepare, || Ok(()));
        assert!(blocking.is_ok());
        let earlier = Duration::from_secs(3);
        let net: Result<(), ()> = metrics
            .timed_after(Phase::NetworkSetup, earlier, async { Ok(()) })
            .await;
        assert!(net.is_ok());
        metrics.shim_start_failed();
        let text = metrics.render(&ObjectCounts::default());
        let value =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}: {text}"));
        let count = |phase: &str, outcome: &str| {
            value(&format!(
                "berth_pod_startup_phase_seconds_count{{outcome=\"{outcome}\",phase=\"{phase}\"}}"
            ))
        };
        assert_eq!(count("shim_start", "success"), 1.0);
        assert_eq!(count("oci_create", "failure"), 1.0);
        assert_eq!(count("snapshot_prepare", "success"), 1.0);
        assert_eq!(count("network_setup", "success"), 1.0);
        assert_eq!(count("oci_create", "success"), 0.0);
        assert_eq!(count("start", "failure"), 0.0);
        // The time spent before (pinning the netns) is part of the phase.
        let sum = value(
            "berth_pod_startup_phase_seconds_sum{outcome=\"success\",phase=\"network_setup\"}",
        );
        assert!(sum >= 3.0, "{sum}");
        assert_eq!(value("berth_shim_start_failures_total"), 1.0);
    }

    #[test]
    fn phase_names_are_distinct_labels() {
        let names: std::collections::HashSet<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Phase::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn recorder_counts_once() {
        let metrics = Arc::new(Metrics::new());
        {
            let mut recorder = Recorder {
                metrics: metrics.clone(),
                method: "Status".to_owned(),
                started: Instant::now(),
                done: false,
            };
            recorder.finish(tonic::Code::NotFound, "gone");
            recorder.finish(tonic::Code::Ok, "");
        }
        let text = metrics.render(&ObjectCounts::default());
        assert!(
            text.contains("code=\"NOT_FOUND\",method=\"Status\"} 1"),
            "{text}"
        );
        assert!(!text.contains("code=\"OK\",method=\"Status\""), "{text}");
        assert!(!text.contains("CANCELLED"), "{text}");
    }

    /// What a test subscriber wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("not poisoned").clone();
            String::from_utf8(bytes)
                .expect("logs are text")
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// Sends `response` through the layer for a call of `method`, reads its
    /// body to the end, and returns what was logged meanwhile.
    async fn logged<B>(method: &str, response: http::Response<B>) -> Vec<String>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::fmt::Debug,
    {
        use http_body_util::BodyExt;
        use tower::{Layer, ServiceExt};
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let mut response = Some(response);
        let inner = tower::service_fn(move |_request: http::Request<()>| {
            let response = response.take().expect("one call");
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let service = CriMetricsLayer::new(Arc::new(Metrics::new())).layer(inner);
        let request = http::Request::builder()
            .uri(format!("/runtime.v1.RuntimeService/{method}"))
            .body(())
            .expect("valid request");
        let response = service.oneshot(request).await.expect("infallible");
        response
            .into_body()
            .collect()
            .await
            .expect("the body reads to its end");
        captured.lines()
    }

    fn trailers_only(
        code: tonic::Code,
        message: &str,
    ) -> http::Response<http_body_util::Empty<bytes::Bytes>> {
        // What tonic sends for an error a unary handler returns.
        tonic::Status::new(code, message).into_http()
    }

    #[tokio::test]
    async fn a_failed_unary_call_is_logged_once_at_warn() {
        let lines = logged(
            "CreateContainer",
            trailers_only(tonic::Code::Internal, "runc create: exit status 1"),
        )
        .await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("CRI call failed"), "{line}");
        assert!(line.contains("method=\"CreateContainer\""), "{line}");
        assert!(line.contains("code=\"INTERNAL\""), "{line}");
        assert!(line.contains("runc create: exit status 1"), "{line}");
    }

    #[tokio::test]
    async fn a_missing_object_is_logged_at_debug() {
        let lines = logged(
            "ContainerStatus",
            trailers_only(tonic::Code::NotFound, "container abc not found"),
        )
        .await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("DEBUG"), "{}", lines[0]);
        assert!(lines[0].contains("code=\"NOT_FOUND\""), "{}", lines[0]);
        assert!(lines[0].contains("container abc not found"), "{}", lines[0]);
    }

    /// A stream's status comes in its trailers: a success logs nothing, a
    /// failure one line.
    #[tokio::test]
    async fn stream_ends_are_logged_from_the_trailers() {
        use http_body::Frame;
        type Frames = tokio_stream::Iter<
            std::vec::IntoIter<Result<Frame<bytes::Bytes>, std::convert::Infallible>>,
        >;
        fn streamed(
            code: tonic::Code,
            message: &str,
        ) -> http::Response<http_body_util::StreamBody<Frames>> {
            let mut trailers = http::HeaderMap::new();
            tonic::Status::new(code, message)
                .add_header(&mut trailers)
                .expect("valid status headers");
            let frames = vec![
                Ok(Frame::data(bytes::Bytes::from_static(b"\0\0\0\0\0"))),
                Ok(Frame::trailers(trailers)),
            ];
            http::Response::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
        }
        let ok = logged("GetContainerEvents", streamed(tonic::Code::Ok, "")).await;
        assert!(ok.is_empty(), "{ok:?}");
        let failed = logged(
            "GetContainerEvents",
            streamed(tonic::Code::Unavailable, "shutting down"),
        )
        .await;
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].contains("WARN"), "{}", failed[0]);
        assert!(failed[0].contains("code=\"UNAVAILABLE\""), "{}", failed[0]);
        assert!(failed[0].contains("shutting down"), "{}", failed[0]);
    }

    #[test]
    fn levels_follow_who_is_at_fault() {
        assert_eq!(
            failure_level(tonic::Code::InvalidArgument),
            tracing::Level::DEBUG
        );
        assert_eq!(
            failure_level(tonic::Code::FailedPrecondition),
            tracing::Level::DEBUG
        );
        assert_eq!(
            failure_level(tonic::Code::DeadlineExceeded),
            tracing::Level::WARN
        );
        assert_eq!(failure_level(tonic::Code::DataLoss), tracing::Level::WARN);
    }
}
