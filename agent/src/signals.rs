//! Signal-started tests (SPEC T1): SIGALRM, SIGUSR1 or SIGUSR2 sent to the
//! agent asks for a test of its set.
//!
//! The agent forwards the request to the controller (`RequestTest`), which
//! runs it under the usual limits when the set's policy is `signal=` that
//! signal, and refuses it (said in the agent's log) otherwise. When the
//! controller cannot be reached, the agent runs the test itself, with the
//! last set generation it accepted and a request id starting `local/`, and
//! reports the result (`ReportLocalResult`) as soon as the controller
//! answers again; a marker file `<home>/reported/<operation>` records that
//! it did, so a restarted agent reports what it had not.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tandem_proto::leader::LeaderChannel;
use tandem_proto::pb;
use tandem_proto::pb::controller_client::ControllerClient;
use tandem_proto::propagation::traced;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::engine::Engine;
use crate::ops::Operations;
use tandem_proto::order::{Order, StartOrder};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often results of local tests not yet reported are offered again.
const REPORT_EVERY: Duration = Duration::from_secs(5);
const LOCAL_PREFIX: &str = "local/";

struct Signals<E: Engine> {
    cfg: Arc<AgentConfig>,
    ops: Arc<Operations<E>>,
    controller: tandem_proto::leader::LeaderClient,
}

/// Listen for the test signals until `shutdown`.
pub async fn run<E: Engine>(
    cfg: Arc<AgentConfig>,
    ops: Arc<Operations<E>>,
    controller: LeaderChannel,
    shutdown: CancellationToken,
) {
    let (Ok(mut alrm), Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::alarm()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) else {
        warn!("cannot install the SIGALRM/SIGUSR1/SIGUSR2 handlers; signal-started tests are off");
        return;
    };
    let s = Signals {
        cfg,
        ops,
        controller: ControllerClient::new(traced(controller)),
    };
    let mut report = tokio::time::interval(REPORT_EVERY);
    loop {
        // Cancel-safe: every branch only waits.
        let name = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = alrm.recv() => "SIGALRM",
            _ = usr1.recv() => "SIGUSR1",
            _ = usr2.recv() => "SIGUSR2",
            _ = report.tick() => {
                s.report_pending().await;
                continue;
            }
        };
        s.requested(name).await;
    }
}

/// Whether a failed call means the controller did not answer (rather than
/// answered "no"). A controller killed while the call is in flight resets
/// the connection, which tonic reports as `Cancelled` or `Unknown`.
fn unreachable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | Cancelled | Unknown | DeadlineExceeded)
}

impl<E: Engine> Signals<E> {
    async fn requested(&self, name: &str) {
        info!(signal = name, "a test of this set was asked for by signal");
        let mut client = self.controller.clone();
        let call = client.request_test(pb::RequestTestRequest {
            agent: self.cfg.name.clone(),
            signal: name.to_owned(),
        });
        let unreachable = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => {
                info!(signal = name, run = %r.into_inner().run_id, "the controller runs the test");
                return;
            }
            Ok(Err(s)) if unreachable(s.code()) => s.message().to_owned(),
            Ok(Err(s)) => {
                warn!(signal = name, error = %s.message(), "the controller refused the signal's test");
                return;
            }
            Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
        };
        let generation = self.ops.journal().generation().unwrap_or(0);
        let request = format!("{LOCAL_PREFIX}{}", jiff::Timestamp::now());
        let order = StartOrder {
            set_generation: generation,
            request_id: request,
            join: false,
            order: Order::Testdb {
                skip_logical_read: false,
                copy: Default::default(),
            },
        };
        match crate::orders::start(&self.ops, order).await {
            Ok(id) => {
                warn!(signal = name, operation = %id, reason = %unreachable, "the controller is unreachable: testing locally; the result is reported when it answers")
            }
            Err(e) => {
                warn!(signal = name, error = %e, reason = %unreachable, "the controller is unreachable and the local test cannot start")
            }
        }
    }

    fn marker(&self, op: &str) -> PathBuf {
        self.cfg.home.join("reported").join(op)
    }

    /// Report every finished local test the controller has not heard of.
    async fn report_pending(&self) {
        let Ok(records) = self.ops.journal().list() else {
            return;
        };
        for rec in records.iter().filter(|r| {
            r.request_id.starts_with(LOCAL_PREFIX)
                && r.state.is_final()
                && !self.marker(&r.id).exists()
        }) {
            let mut client = self.controller.clone();
            let call = client.report_local_result(pb::ReportLocalResultRequest {
                agent: self.cfg.name.clone(),
                result: Some(crate::service::result_of(rec)),
            });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => {
                    let marker = self.marker(&rec.id);
                    if let Some(dir) = marker.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    if let Err(e) = std::fs::write(&marker, b"") {
                        warn!(path = %marker.display(), error = %e, "cannot record that a local result was reported");
                    }
                    info!(operation = %rec.id, "local test result reported to the controller");
                }
                // Still unreachable, or refused: offered again later.
                Ok(Err(e)) => {
                    tracing::debug!(operation = %rec.id, error = %e.message(), "local result not reported yet");
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unreachable;
    use tonic::Code;

    #[test]
    fn a_reset_connection_is_unreachable_and_a_refusal_is_not() {
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::Unknown,
            Code::DeadlineExceeded,
        ] {
            assert!(unreachable(code), "{code:?}");
        }
        for code in [
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::InvalidArgument,
        ] {
            assert!(!unreachable(code), "{code:?}");
        }
    }
}
