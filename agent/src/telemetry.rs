//! Exporting berthd's tracing spans over OTLP (`[tracing] otlp_endpoint`).
//!
//! berthd's spans are at `debug`, so the log at its default `info` level
//! stays as it was: `cri` for every CRI call (field `method`), under it
//! `run_pod_sandbox`, `create_container` and `start_container` (fields
//! `pod_id`, `container_id`), `image_pull` (field `image`) and one `phase`
//! span per start-up phase (field `phase`, named after it in OTLP), the
//! same phases as `berth_pod_startup_phase_seconds`
//! ([`crate::metrics::Phase`]). The exporter gets those spans whatever the
//! log level, with the events at `info` and above as span events (a failed
//! call's warning among them), and sends them in batches to an OTLP/gRPC
//! collector from a thread of its own; a collector that is down costs
//! dropped spans, never a CRI call.
//!
//! The export is built only with the cargo feature `otlp` (the
//! OpenTelemetry SDK and its OTLP exporter, over the tonic and prost
//! berthd already links; `docs/metrics.md` gives its cost). A berthd
//! without it refuses a configured endpoint at start-up rather than
//! ignore it.

use crate::config::TracingConfig;

/// What the export needs at shutdown: [`Export::shutdown`] sends the
/// spans still queued.
#[derive(Debug)]
pub struct Export {
    #[cfg(feature = "otlp")]
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Export {
    /// Flushes the queued spans and stops the exporter's thread.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Err(e) = self.provider.shutdown() {
            eprintln!("berthd: cannot flush the last trace spans: {e}");
        }
    }
}

/// A subscriber layer of berthd, boxed.
pub type BoxedLayer<S> = Box<dyn tracing_subscriber::Layer<S> + Send + Sync>;

/// The export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot export trace spans to {endpoint}: {message}")]
pub struct ExportError {
    pub endpoint: String,
    pub message: String,
}

/// Checks `tracing.otlp_endpoint`: empty, or `http://host:port` in a berthd
/// built with the `otlp` feature.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.is_empty() {
        return Ok(());
    }
    if !cfg!(feature = "otlp") {
        return Err(format!(
            "`{endpoint}`: this berthd is built without OTLP export (cargo feature `otlp`)"
        ));
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "`{endpoint}` must be http://host:port (OTLP over plain gRPC)"
        ));
    }
    Ok(())
}

/// The layer that exports berthd's spans, if an endpoint is configured
/// (valid: see [`check_endpoint`]). Call it inside the tokio runtime: the
/// gRPC channel is made there.
pub fn layer<S>(config: &TracingConfig) -> Result<Option<(BoxedLayer<S>, Export)>, ExportError>
where
    S: tracing::Subscriber
        + for<'span> tracing_subscriber::registry::LookupSpan<'span>
        + Send
        + Sync,
{
    if config.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    otlp::layer(&config.otlp_endpoint).map(Some)
}

#[cfg(feature = "otlp")]
mod otlp {
    use super::{BoxedLayer, Export, ExportError};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::Layer as _;

    /// The service name spans are exported under.
    const SERVICE_NAME: &str = "berthd";

    pub(super) fn layer<S>(endpoint: &str) -> Result<(BoxedLayer<S>, Export), ExportError>
    where
        S: tracing::Subscriber
            + for<'span> tracing_subscriber::registry::LookupSpan<'span>
            + Send
            + Sync,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| ExportError {
                endpoint: endpoint.to_owned(),
                message: e.to_string(),
            })?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(SERVICE_NAME)
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(SERVICE_NAME);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::filter_fn(exported));
        Ok((Box::new(layer), Export { provider }))
    }

    /// berth's spans at `debug` and above, its events at `info` and above.
    fn exported(meta: &tracing::Metadata<'_>) -> bool {
        let level = if meta.is_span() {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        };
        meta.target().starts_with("berth") && *meta.level() <= level
    }
}

#[cfg(not(feature = "otlp"))]
mod otlp {
    use super::{BoxedLayer, Export, ExportError};

    pub(super) fn layer<S>(endpoint: &str) -> Result<(BoxedLayer<S>, Export), ExportError> {
        Err(ExportError {
            endpoint: endpoint.to_owned(),
            message: "this berthd is built without OTLP export (cargo feature `otlp`)".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(check_endpoint(""), Ok(()));
        if cfg!(feature = "otlp") {
            assert_eq!(check_endpoint("http://127.0.0.1:4317"), Ok(()));
            for bad in [
                "127.0.0.1:4317",
                "https://collector:4317",
                "http://",
                "not a url",
            ] {
                let message = check_endpoint(bad).expect_err(bad);
                assert!(message.contains(bad), "{bad}: {message}");
            }
        } else {
            let message = check_endpoint("http://127.0.0.1:4317").expect_err("no otlp");
            assert!(message.contains("built without OTLP"), "{message}");
        }
    }
}
