//! Logging and tracing set-up shared by every Tandem process.
//!
//! [`init`] installs one global `tracing` subscriber with two layers:
//!
//! - logs to stderr, human-readable or JSON lines ([`LogFormat`]), filtered by
//!   `RUST_LOG` (or the caller's default filter when it is unset);
//! - an OpenTelemetry layer. A tracer provider is always installed, so spans
//!   always have trace ids (printed by `tandemctl`, stored with audit records,
//!   carried to the controller and agents). Spans are *exported* only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//!   set: OTLP over gRPC, through a batch processor.
//!
//! The OpenTelemetry layer has its own filter, independent of `RUST_LOG`: spans
//! at `INFO` and above are exported even when `tandemctl` only logs warnings,
//! and the transport crates the exporter itself uses (`h2`, `hyper`, `tonic`,
//! `tower`, `opentelemetry*`) are never turned into spans, which would feed the
//! exporter its own traffic.
//!
//! Standard `OTEL_*` variables keep working: anything this module sets in code
//! overrides the environment in the OpenTelemetry SDK, so it only sets a value
//! when the corresponding variable is absent (`OTEL_SERVICE_NAME`,
//! `OTEL_BSP_SCHEDULE_DELAY`). `OTEL_TRACES_EXPORTER=none` or
//! `OTEL_SDK_DISABLED=true` turn the export off.
//!
//! An endpoint that is unreachable or never answers never blocks or crashes a
//! process: export happens on the SDK's own thread, failed batches are dropped
//! with a logged error from the SDK, and [`TelemetryGuard::shutdown`] gives up
//! after a few seconds with a warning.

use std::io::IsTerminal as _;
use std::str::FromStr;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector as _};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

/// How long [`TelemetryGuard::shutdown`] lets the SDK flush and shut down.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Batch processor delay when `OTEL_BSP_SCHEDULE_DELAY` is unset (SDK default: 5 s).
const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_millis(500);
/// Instrumentation scope name of the spans Tandem produces.
const SCOPE: &str = "tandem";

/// Format of the log lines written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (ANSI colours when stderr is a terminal).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected one of \"human\", \"json\""
            )),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Human => "human",
            Self::Json => "json",
        })
    }
}

/// Why [`init`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` (or the default filter) is not a valid filter.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The filter text.
        filter: String,
        /// The parser's complaint.
        source: tracing_subscriber::filter::ParseError,
    },
    /// [`init`] was called outside a tokio runtime (the OTLP exporter needs one).
    #[error("telemetry::init must be called inside a tokio runtime")]
    NoRuntime,
    /// The OTLP exporter could not be built from the configuration
    /// (for example an endpoint that is not a URL).
    #[error("OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber (or `log` logger) was already installed.
    #[error("installing the tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the tracer provider that exports spans; call [`TelemetryGuard::shutdown`]
/// before the process exits so the last spans are sent.
#[derive(Debug)]
#[must_use = "call `shutdown().await` before exiting, or the last spans are lost"]
pub struct TelemetryGuard {
    /// The provider, when spans are exported.
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flush and shut the exporter down: runs the blocking shutdown in
    /// `spawn_blocking` with a ~3 s timeout (never hangs the process when the
    /// endpoint is unreachable; logs a warning instead).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let task =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
        // The SDK's own timeout normally fires first; this one guards against an
        // exporter call that ignores it.
        match tokio::time::timeout(SHUTDOWN_TIMEOUT + Duration::from_millis(500), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "trace export shutdown failed; some spans may be lost");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "trace export shutdown task failed; some spans may be lost");
            }
            Err(_) => tracing::warn!(
                timeout_ms = SHUTDOWN_TIMEOUT.as_millis() as u64,
                "trace export shutdown timed out; some spans may be lost"
            ),
        }
    }
}

/// Set up tracing for a Tandem process: logs to stderr (human or JSON lines), filter from RUST_LOG
/// (default `default_filter`, e.g. "info" for daemons, "warn" for tandemctl), and — only when
/// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set — an OTLP/gRPC span exporter
/// with a batch processor and resource attribute service.name = `service_name` (unless OTEL_SERVICE_NAME is set:
/// settings made in code override OTEL_* env vars, so only set what the env does not). Must be called inside a tokio runtime.
///
/// Also sets the global text-map propagator to W3C TraceContext and the
/// global tracer provider.
pub fn init(
    service_name: &'static str,
    format: LogFormat,
    default_filter: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter_text = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => default_filter.to_owned(),
    };
    let log_filter = EnvFilter::try_new(&filter_text).map_err(|source| TelemetryError::Filter {
        filter: filter_text.clone(),
        source,
    })?;

    let exporting = export_enabled();
    if exporting && tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }

    let mut builder = SdkTracerProvider::builder().with_resource(resource(service_name));
    if exporting {
        // Built inside the runtime: the tonic channel spawns its worker there.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch_config())
                .build(),
        );
    }
    let provider = builder.build();

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_filter(otel_filter());

    let writer = std::io::stderr;
    let log_layer = match format {
        LogFormat::Human => fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(writer).boxed(),
    }
    .with_filter(log_filter);

    tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init()?;

    if exporting {
        tracing::debug!(service = service_name, "exporting spans over OTLP/gRPC");
    }
    Ok(TelemetryGuard {
        provider: exporting.then_some(provider),
    })
}

/// Whether the environment asks for span export.
fn export_enabled() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED")
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER")
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    endpoint && !disabled
}

/// The resource: what the SDK detects (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, SDK attributes), plus `service.name` when the
/// environment does not name the service.
fn resource(service_name: &'static str) -> Resource {
    let env_names_service = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || EnvResourceDetector::new()
            .detect()
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some();
    let builder = Resource::builder();
    if env_names_service {
        builder.build()
    } else {
        builder
            .with_attribute(KeyValue::new("service.name", service_name))
            .build()
    }
}

/// Batch processor settings from `OTEL_BSP_*`, with a short schedule delay
/// unless `OTEL_BSP_SCHEDULE_DELAY` is set.
fn batch_config() -> opentelemetry_sdk::trace::BatchConfig {
    // `default()` reads the OTEL_BSP_* variables; `with_*` would override them.
    let builder = BatchConfigBuilder::default();
    if std::env::var_os(opentelemetry_sdk::trace::OTEL_BSP_SCHEDULE_DELAY).is_some() {
        builder.build()
    } else {
        builder.with_scheduled_delay(DEFAULT_SCHEDULE_DELAY).build()
    }
}

/// What the OpenTelemetry layer turns into spans: INFO and above, never the
/// exporter's own transport.
fn otel_filter() -> Targets {
    Targets::new().with_default(LevelFilter::INFO).with_targets(
        ["h2", "hyper", "tonic", "tower", "opentelemetry"].map(|t| (t, LevelFilter::OFF)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses() {
        assert_eq!("human".parse::<LogFormat>(), Ok(LogFormat::Human));
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        let err = "xml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("human") && err.contains("json"), "{err}");
        assert_eq!(LogFormat::default(), LogFormat::Human);
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn error_converts_to_anyhow_like_boxes() {
        fn check<T: std::error::Error + Send + Sync + 'static>() {}
        check::<TelemetryError>();
    }

    #[test]
    fn otel_filter_drops_transport_crates() {
        let f = otel_filter();
        assert!(f.would_enable("tandem_controller::run", &tracing::Level::INFO));
        assert!(!f.would_enable("tandem_controller::run", &tracing::Level::DEBUG));
        assert!(!f.would_enable("h2::proto", &tracing::Level::INFO));
        assert!(!f.would_enable("hyper_util::client", &tracing::Level::WARN));
        assert!(!f.would_enable("opentelemetry_sdk", &tracing::Level::ERROR));
        assert!(!f.would_enable("opentelemetry-otlp", &tracing::Level::ERROR));
    }
}
