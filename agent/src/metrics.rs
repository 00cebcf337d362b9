//! Prometheus metrics: the CRI request layer and the `/metrics` endpoint.
//!
//! Every CRI call passes through [`CriMetricsLayer`], one tower layer in
//! front of both services, so handlers never count themselves. A call is
//! recorded when its response body ends: unary errors carry `grpc-status`
//! in the headers, successes and stream ends carry it in the trailers.

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

fn status_header(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
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
            if let Some(code) = status_header(response.headers()) {
                // A trailers-only response: the call ended here.
                recorder.finish(code);
            }
            Ok(response.map(|inner| RecordedBody { inner, recorder }))
        })
    }
}

/// Records one call exactly once: at the status, or at drop if the client
/// went away before any status was sent.
#[derive(Debug)]
struct Recorder {
    metrics: Arc<Metrics>,
    method: String,
    started: Instant,
    done: bool,
}

impl Recorder {
    fn finish(&mut self, code: tonic::Code) {
        if !self.done {
            self.done = true;
            self.metrics.record(&self.method, code, self.started);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
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
                if let Some(code) = frame.trailers_ref().and_then(status_header) {
                    this.recorder.finish(code);
                }
            }
            Some(Err(_)) => this.recorder.finish(tonic::Code::Internal),
            None => this.recorder.finish(tonic::Code::Ok),
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
            recorder.finish(tonic::Code::NotFound);
            recorder.finish(tonic::Code::Ok);
        }
        let text = metrics.render();
        assert!(
            text.contains("code=\"NOT_FOUND\",method=\"Status\"} 1"),
            "{text}"
        );
        assert!(!text.contains("code=\"OK\",method=\"Status\""), "{text}");
        assert!(!text.contains("CANCELLED"), "{text}");
    }
}
