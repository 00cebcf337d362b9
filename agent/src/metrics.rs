//! Prometheus metrics: the CRI request layer and the `/metrics` endpoint.
//!
//! Every CRI call passes through [`CriMetricsLayer`], one tower layer in
//! front of both services, so handlers never count or log themselves. A
//! call is recorded when its response body ends: unary errors carry
//! `grpc-status` in the headers (a "trailers-only" response), successes and
//! stream ends carry it in the trailers.
//!
//! The same layer logs every failed call once, with its method, code and
//! message ([`failure_level`]): at `warn` when the node is at fault, at
//! `debug` when the answer is the caller's business alone.

use http_body::{Body, Frame};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// berth's metrics and the registry that exports them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "berth_cri_requests_total",
                "CRI requests by method and gRPC status code",
            ),
            &["method", "code"],
        )
        .expect("static metric options are valid");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "berth_cri_request_duration_seconds",
                "CRI request latency by method, until the response ends",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 120.0,
            ]),
            &["method"],
        )
        .expect("static metric options are valid");
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        Self {
            registry,
            requests,
            duration,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
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
}

/// The streaming server's metrics (`crate::streaming`), registered once
/// at start-up: `berth_streaming_sessions{kind}`, the sessions open now by
/// kind (`exec`, `attach`, `portforward`), and
/// `berth_streaming_bytes_total{kind,direction}`, the bytes of the
/// upgraded connections (`in` from clients, `out` to them).
impl Metrics {
    pub fn register_streaming(&self) -> (prometheus::IntGaugeVec, IntCounterVec) {
        let sessions = prometheus::IntGaugeVec::new(
            Opts::new(
                "berth_streaming_sessions",
                "Open streaming sessions by kind",
            ),
            &["kind"],
        )
        .expect("static metric options are valid");
        let bytes = IntCounterVec::new(
            Opts::new(
                "berth_streaming_bytes_total",
                "Bytes copied by streaming sessions, by kind and direction",
            ),
            &["kind", "direction"],
        )
        .expect("static metric options are valid");
        for metric in [
            Box::new(sessions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bytes.clone()),
        ] {
            self.registry.register(metric).expect("registered once");
        }
        (sessions, bytes)
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
        let recorder = Recorder {
            metrics: self.metrics.clone(),
            method: method_of(request.uri().path()),
            started: Instant::now(),
            done: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let mut recorder = recorder;
            if let Some((code, message)) = status_header(response.headers()) {
                // A trailers-only response: the call ended here.
                recorder.finish(code, &message);
            }
            Ok(response.map(|inner| RecordedBody { inner, recorder }))
        })
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

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
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
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(metrics_response(&request, &metrics)) }
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
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            http::StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
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
        let text = metrics.render();
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
        let text = metrics.render();
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
