//! The agent's Prometheus metrics (SPEC O3): every name and label is here,
//! recorded by one-line calls where operations start, step and end.
//! [`serve`] turns them on (`metrics_listen`); every series then carries
//! the agent's `set`, `member` and `agent` labels. Without it the calls do
//! nothing.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `tandem_agent_operations_total` | counter | kind, result | finished operations (`testdb`, `copy`; `clean`, `errors_found`, `failed`, `cancelled`, `interrupted`) |
//! | `tandem_agent_operations_running` | gauge | | 1 while an operation runs |
//! | `tandem_agent_operation_duration_seconds` | histogram | kind | duration of each operation |
//! | `tandem_agent_step_duration_seconds` | histogram | kind, step | duration of each step (`stop_standby`, `copy`, ...) |
//! | `tandem_agent_copied_bytes_total` | counter | | bytes copied from the standby |
//! | `tandem_agent_standby_downtime_seconds` | histogram | mode | how long the standby was stopped, per copy-making operation whose downtime was measured (`online`: 0; mode `unknown` when the operation did not say) |
//! | `tandem_agent_findings_total` | counter | kind | findings of the checks (`index`, `heap`, `checksum`, ...) |
//! | `tandem_agent_build_info` | gauge | version | 1 |
//! | `tandem_tls_cert_days_left`, `tandem_tls_reloads_total`, `tandem_tls_handshake_failures_total` | | | the agent's own certificate, reloads and refused handshakes (recorded by `tandem_proto::tls`, as on the controller) |

use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tandem_proto::metrics::MetricsError;

use crate::config::AgentConfig;
use crate::journal::{OpRecord, OpState};

/// Serve the metrics on `addr`; `setting` names where the address came
/// from, for the error.
pub fn serve(addr: SocketAddr, setting: &str, cfg: &AgentConfig) -> Result<(), MetricsError> {
    tandem_proto::metrics::serve(
        addr,
        setting,
        &[
            ("set", &cfg.set),
            ("member", cfg.member()),
            ("agent", &cfg.name),
        ],
    )?;
    describe();
    gauge!("tandem_agent_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!("tandem_agent_operations_running").set(0.0);
    counter!("tandem_agent_copied_bytes_total").absolute(0);
    use crate::engine::findings::{
        KIND_CHECK_FAILED, KIND_CHECKSUM, KIND_HEAP, KIND_INDEX, KIND_LOGICAL_READ,
    };
    let tools = [
        KIND_INDEX,
        KIND_HEAP,
        KIND_CHECKSUM,
        KIND_LOGICAL_READ,
        KIND_CHECK_FAILED,
    ];
    for kind in tools.into_iter().chain(tandem_proto::model::FILE_KINDS) {
        counter!("tandem_agent_findings_total", "kind" => kind).absolute(0);
    }
    Ok(())
}

fn describe() {
    describe_counter!(
        "tandem_agent_operations_total",
        "Finished operations by kind and result"
    );
    describe_gauge!(
        "tandem_agent_operations_running",
        "1 while an operation runs on this instance"
    );
    describe_histogram!(
        "tandem_agent_operation_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of each operation"
    );
    describe_histogram!(
        "tandem_agent_step_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of each step of an operation"
    );
    describe_counter!(
        "tandem_agent_copied_bytes_total",
        metrics::Unit::Bytes,
        "Bytes copied from the standby"
    );
    describe_histogram!(
        "tandem_agent_standby_downtime_seconds",
        metrics::Unit::Seconds,
        "How long the standby was stopped, per operation"
    );
    describe_counter!(
        "tandem_agent_findings_total",
        "Findings of the checks, by kind"
    );
    describe_gauge!("tandem_agent_build_info", "The agent's version");
}

pub fn result_label(state: OpState) -> &'static str {
    match state {
        OpState::Running => "running",
        OpState::Succeeded => "clean",
        OpState::ErrorsFound => "errors_found",
        OpState::Failed => "failed",
        OpState::Cancelled => "cancelled",
        OpState::Interrupted => "interrupted",
    }
}

/// An operation started.
pub fn operation_started() {
    gauge!("tandem_agent_operations_running").set(1.0);
}

/// One step took `seconds`.
pub fn step(kind: &'static str, step: &'static str, seconds: f64) {
    histogram!("tandem_agent_step_duration_seconds", "kind" => kind, "step" => step)
        .record(seconds);
}

/// An operation ended with `rec`.
pub fn operation_finished(rec: &OpRecord) {
    let kind = rec.kind.as_str();
    gauge!("tandem_agent_operations_running").set(0.0);
    counter!("tandem_agent_operations_total", "kind" => kind, "result" => result_label(rec.state))
        .increment(1);
    if let Some(end) = rec.finished_at {
        let seconds = (end - rec.started_at)
            .total(jiff::Unit::Second)
            .unwrap_or(0.0);
        histogram!("tandem_agent_operation_duration_seconds", "kind" => kind).record(seconds);
    }
    counter!("tandem_agent_copied_bytes_total").increment(rec.bytes_copied);
    if let Some(d) = rec.standby_downtime_seconds {
        let mode = rec.mode.clone().unwrap_or_else(|| "unknown".into());
        histogram!("tandem_agent_standby_downtime_seconds", "mode" => mode).record(d);
    }
    for f in &rec.findings {
        counter!("tandem_agent_findings_total", "kind" => f.kind.clone()).increment(1);
    }
}
