//! The Prometheus endpoint shared by the controller and the agent.
//!
//! [`serve`] installs the process-wide `metrics` recorder and serves it in
//! Prometheus text format on `http://<addr>/metrics` (any path answers),
//! from a task on the current tokio runtime. Each binary records its own
//! metrics in one module (`controller/src/metrics.rs`,
//! `agent/src/metrics.rs`) through the `metrics` macros, which do nothing
//! when no recorder is installed (metrics off, tests, the scale bench).
//!
//! Every metric whose name ends in `_seconds` is a histogram with
//! [`SECONDS_BUCKETS`] (a test step takes from milliseconds to hours).

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Buckets of every `*_seconds` histogram: 10 ms to 6 h.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0, 21600.0,
];

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot serve metrics on {addr} ({setting}): {message}; is another Tandem process using it? choose another address or remove the setting to turn metrics off"
    )]
    Listen {
        addr: SocketAddr,
        /// The setting that asked for it ("field `metrics_listen`", "--metrics-listen").
        setting: String,
        message: String,
    },
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
}

/// Serve metrics on `addr` with `labels` on every series (e.g. the agent's
/// set and member). Must run inside a tokio runtime; binds at once, so an
/// address in use is an error here, not later.
pub fn serve(addr: SocketAddr, setting: &str, labels: &[(&str, &str)]) -> Result<(), MetricsError> {
    let mut builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    for (k, v) in labels {
        builder = builder.add_global_label(*k, *v);
    }
    builder.install().map_err(|e| match e {
        BuildError::FailedToCreateHTTPListener(message) => MetricsError::Listen {
            addr,
            setting: setting.to_owned(),
            message,
        },
        other => MetricsError::Install(other.to_string()),
    })?;
    crate::tls::describe_metrics();
    tracing::info!(%addr, "serving Prometheus metrics on http://{addr}/metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, "field `metrics_listen`", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.contains("field `metrics_listen`"), "{msg}");
        assert!(msg.contains("choose another address"), "{msg}");
    }
}
