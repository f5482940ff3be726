//! A maintenance window as the store keeps it: one document with its
//! plan, its state, the steps done, and what became of a restore's orders.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::plan::{Action, Plan, Step};
use crate::verdicts::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowState {
    /// The plan's steps are running.
    Running,
    /// A step failed: the set stays as the failed step left it (halted,
    /// fenced) until `abort` or `close`.
    Failed,
    /// `abort` or `close` is putting the set back.
    Resuming,
    /// Over: the repair was proven by a clean testdb.
    Closed,
    /// Over: the set was put back as it was before the window.
    Aborted,
}

impl WindowState {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowState::Running => "running",
            WindowState::Failed => "failed",
            WindowState::Resuming => "resuming",
            WindowState::Closed => "closed",
            WindowState::Aborted => "aborted",
        }
    }

    pub fn is_over(self) -> bool {
        matches!(self, WindowState::Closed | WindowState::Aborted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Put the set back, then a testdb that closes the window when clean.
    Close,
    /// Put the set back as it was before the window.
    Abort,
}

/// One window: its plan, what became of each step, and the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub id: String,
    pub set: String,
    pub reason: String,
    pub opened_by: String,
    pub opened_at: Timestamp,
    #[serde(default)]
    pub closed_at: Option<Timestamp>,
    pub state: WindowState,
    pub plan: Plan,
    /// The steps of `abort` or `close`, once asked for.
    #[serde(default)]
    pub ending: Option<Ending>,
    #[serde(default)]
    pub resume: Vec<Step>,
    /// Which step failed and why.
    #[serde(default)]
    pub failure: Option<String>,
    /// The primary's log position once back in service: standbys must
    /// replay past it.
    #[serde(default)]
    pub repair_lsn: Option<String>,
    /// The testdb that closed (or did not close) the window.
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// First member stopped to last member streaming, as measured.
    #[serde(default)]
    pub downtime_seconds: Option<f64>,
    #[serde(default)]
    pub trace_id: String,
    /// Whether the window asked the set's HA manager to pause (then
    /// `resume_ha` ends abort and close too).
    #[serde(default)]
    pub ha_pause_sent: bool,
    /// A restore window's agent orders and what became of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::restore::Outcome>,
    /// How many times the resume steps were built (abort, close, a failed
    /// restore): part of each agent step's request id, so a step of a new
    /// resume list is ordered anew.
    #[serde(default)]
    pub phase: u32,
}

/// Whether a failed step of a restore window left the set as it was
/// before: the prepare order changes nothing, and the agent's restore puts
/// the old data directory back on a failure before R9 (its undo).
pub(super) fn restore_undone(w: &Window, step: &Step) -> bool {
    match step.action {
        Action::RestorePrepare => true,
        Action::Restore => w.restore.as_ref().is_some_and(|o| {
            o.failed_step
                .as_deref()
                .is_some_and(|s| !s.starts_with("R9") && !s.starts_with("R10"))
        }),
        _ => false,
    }
}

/// The request id of a restore window's agent order: asked again after a
/// controller restart, the agent returns the operation it started.
pub(super) fn restore_request(window: &str, action: Action) -> String {
    format!("{window}/{}", action.name())
}

impl Window {
    pub(super) fn new(
        id: String,
        set: &str,
        reason: &str,
        who: &str,
        trace_id: String,
        plan: Plan,
    ) -> Window {
        Window {
            id,
            set: set.to_owned(),
            reason: reason.to_owned(),
            opened_by: who.to_owned(),
            opened_at: Timestamp::now(),
            closed_at: None,
            state: WindowState::Running,
            plan,
            ending: None,
            resume: vec![],
            failure: None,
            repair_lsn: None,
            verdict: None,
            downtime_seconds: None,
            trace_id,
            ha_pause_sent: false,
            restore: None,
            phase: 0,
        }
    }

    pub(super) fn phase_steps(&mut self) -> &mut Vec<Step> {
        if self.state == WindowState::Resuming {
            &mut self.resume
        } else {
            &mut self.plan.steps
        }
    }

    /// The sentence the fleet gives for a held set.
    pub(super) fn hold_reason(&self) -> String {
        format!(
            "set `{}` is in maintenance window {} ({}, {}); tests resume when it closes",
            self.set,
            self.id,
            self.reason,
            self.state.as_str()
        )
    }
}
