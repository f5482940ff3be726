//! Events (SPEC T2.7, T3): the configured event hook and the controller hear
//! of interrupted tests and of errors found.
//!
//! The hook is a command run with the event in its environment
//! (`TANDEM_EVENT=E_TESTDB`, `TANDEM_EVENT_CODE`, `TANDEM_EVENT_STEP`,
//! `TANDEM_SET`, `TANDEM_MEMBER`, `TANDEM_OPERATION_ID`,
//! `TANDEM_EVENT_MESSAGE`), with a time limit. The controller gets the same
//! event through `ReportEvent` when it is reachable; neither failing stops
//! the agent.

use std::sync::Arc;
use std::time::Duration;

use tandem_proto::leader::LeaderChannel;
use tandem_proto::model::timestamp_to_wire;
use tandem_proto::pb;
use tandem_proto::pb::controller_client::ControllerClient;
use tandem_proto::propagation::traced;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::journal::{OpRecord, OpState};

const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// What an interrupted step means for the event code (SPEC T3).
pub fn interrupted_code(step: &str) -> &'static str {
    match step {
        "pending" | "stop_standby" | "copy" => "COPY_INTERRUPTED",
        "start_standby" => "STANDBY_RESTART_INTERRUPTED",
        _ => "TEST_INTERRUPTED",
    }
}

#[derive(Clone)]
pub struct Events {
    cfg: Arc<AgentConfig>,
    controller: Option<tandem_proto::leader::LeaderClient>,
}

impl Events {
    pub fn new(cfg: Arc<AgentConfig>, controller: Option<LeaderChannel>) -> Events {
        Events {
            cfg,
            controller: controller.map(|c| ControllerClient::new(traced(c))),
        }
    }

    /// Raise the events an operation's end calls for.
    pub async fn operation_finished(&self, rec: &OpRecord) {
        match rec.state {
            OpState::Interrupted if rec.kind.copies() => {
                let code = interrupted_code(&rec.step);
                let msg = rec.reason.clone().unwrap_or_default();
                self.emit("E_TESTDB", code, &rec.step, &rec.id, &msg).await;
            }
            OpState::ErrorsFound => {
                let msg = format!(
                    "{} finding(s); first: {}",
                    rec.findings.len(),
                    rec.findings
                        .first()
                        .map(|f| format!("{} {}: {}", f.kind, f.relation, f.message))
                        .unwrap_or_default()
                );
                self.emit("E_TESTDB", "ERRORS_FOUND", &rec.step, &rec.id, &msg)
                    .await;
            }
            _ => {}
        }
    }

    pub async fn emit(&self, event: &str, code: &str, step: &str, op: &str, message: &str) {
        info!(event, code, step, operation = op, message, "event");
        if let Some(hook) = &self.cfg.event_hook {
            let mut cmd = tokio::process::Command::new(hook);
            cmd.env("TANDEM_EVENT", event)
                .env("TANDEM_EVENT_CODE", code)
                .env("TANDEM_EVENT_STEP", step)
                .env("TANDEM_SET", &self.cfg.set)
                .env("TANDEM_MEMBER", self.cfg.member())
                .env("TANDEM_AGENT", &self.cfg.name)
                .env("TANDEM_OPERATION_ID", op)
                .env("TANDEM_EVENT_MESSAGE", message)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            match tokio::time::timeout(HOOK_TIMEOUT, cmd.output()).await {
                Ok(Ok(out)) if out.status.success() => {}
                Ok(Ok(out)) => {
                    warn!(hook = %hook.display(), status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "event hook failed")
                }
                Ok(Err(e)) => {
                    warn!(hook = %hook.display(), error = %e, "cannot run the event hook (field `event_hook`)")
                }
                Err(_) => {
                    warn!(hook = %hook.display(), ?HOOK_TIMEOUT, "event hook did not finish in time; killed")
                }
            }
        }
        if let Some(c) = &self.controller {
            let req = pb::ReportEventRequest {
                agent: self.cfg.name.clone(),
                event: event.to_owned(),
                code: code.to_owned(),
                operation_id: op.to_owned(),
                message: message.to_owned(),
                at: Some(timestamp_to_wire(jiff::Timestamp::now())),
            };
            match tokio::time::timeout(REPORT_TIMEOUT, c.clone().report_event(req)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e.message(), "cannot report the event to the controller")
                }
                Err(_) => warn!("controller did not take the event in time"),
            }
        }
    }
}
