//! A maintenance window and its plan, as the controller keeps them, sends
//! them and tandemctl shows them: the plan's steps and what became of each,
//! the triage on the primary, a restore's orders, the closing verdict.
//! Conversions to and from the wire are at the end.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::{Finding, ModelError, timestamp_from_wire, timestamp_to_wire};
use crate::order::MaintenanceStep;
use crate::pb;
use crate::verdict::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Repair {
    /// A replicated error: repaired on the primary, whole set halted.
    Primary,
    /// Standby-local damage: the standby is re-seeded from the primary.
    Reseed,
    /// A restore from a backup (SPEC R12): the set halted standbys first,
    /// the member restored, every standby re-seeded from it.
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Triage,
    FenceStop,
    Isolate,
    Reindex,
    ExecRepair,
    Check,
    Serve,
    Reseed,
    UnfenceStart,
    WaitStreaming,
    Testdb,
    /// The set's HA manager paused (the controller, not an agent).
    PauseHa,
    /// The set's HA manager resumed: the very last step.
    ResumeHa,
    /// A restore's first order (R1, R11, R2), the set still serving.
    RestorePrepare,
    /// A restore's second order (R3 to R10), standbys halted.
    Restore,
}

impl Action {
    /// The agent's step, when an agent runs it.
    pub fn agent_step(self) -> Option<MaintenanceStep> {
        Some(match self {
            Action::Triage => MaintenanceStep::Triage,
            Action::FenceStop => MaintenanceStep::FenceStop,
            Action::Isolate => MaintenanceStep::Isolate,
            Action::Reindex => MaintenanceStep::Reindex,
            Action::ExecRepair => MaintenanceStep::ExecRepair,
            Action::Check => MaintenanceStep::Check,
            Action::Serve => MaintenanceStep::Serve,
            Action::Reseed => MaintenanceStep::Reseed,
            Action::UnfenceStart => MaintenanceStep::UnfenceStart,
            Action::WaitStreaming
            | Action::Testdb
            | Action::PauseHa
            | Action::ResumeHa
            | Action::RestorePrepare
            | Action::Restore => {
                return None;
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::WaitStreaming => "wait_streaming",
            Action::Testdb => "testdb",
            Action::PauseHa => "pause_ha",
            Action::ResumeHa => "resume_ha",
            Action::RestorePrepare => "restore_prepare",
            Action::Restore => "restore",
            a => a.agent_step().map_or("?", MaintenanceStep::as_str),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    #[default]
    Pending,
    Running,
    Done,
    Failed,
}

/// One step of a plan, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub action: Action,
    /// The member it acts on (empty: the set, e.g. testdb).
    pub member: String,
    /// What it touches, for a person reading the plan.
    pub touches: String,
    /// The findings it is about (triage, reindex, exec_repair, check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Finding>,
    pub estimate_seconds: f64,
    /// Whether the set is (partly) out of service during it.
    pub downtime: bool,
    #[serde(default)]
    pub state: StepState,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
}

impl Step {
    pub fn new(
        action: Action,
        member: &str,
        touches: String,
        estimate: f64,
        downtime: bool,
    ) -> Step {
        Step {
            action,
            member: member.to_owned(),
            touches,
            targets: vec![],
            estimate_seconds: estimate,
            downtime,
            state: StepState::Pending,
            message: String::new(),
            started_at: None,
            finished_at: None,
        }
    }

    pub fn with_targets(mut self, t: Vec<Finding>) -> Step {
        self.targets = t;
        self
    }

    /// "3 isolate on billing-db1", for reports.
    pub fn label(&self, index: usize) -> String {
        if self.member.is_empty() {
            format!("step {} {}", index + 1, self.action.name())
        } else {
            format!(
                "step {} {} on {}",
                index + 1,
                self.action.name(),
                self.member
            )
        }
    }
}

/// A relation the triage checked on the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    pub database: String,
    pub relation: String,
    pub is_index: bool,
    pub bytes: u64,
}

/// What the re-check on the primary found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Triage {
    pub findings: Vec<Finding>,
    pub relations: Vec<Relation>,
    pub unresolved: Vec<String>,
}

/// The set's HA manager (`[ha.<set>]`), as seen when the plan was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ha {
    /// `patroni`.
    pub manager: String,
    /// Its REST URLs, tried in order.
    pub urls: Vec<String>,
    /// Whether it was paused already (by someone else) when the plan was
    /// made; then the window leaves it paused. None: it did not answer.
    pub paused_before: Option<bool>,
    /// The leader it named, or why it could not be asked.
    pub seen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub set: String,
    pub repair: Repair,
    /// Why this path, from the triage.
    pub why: String,
    /// The other path, and when it would have been taken.
    pub alternative: String,
    pub primary: String,
    pub standbys: Vec<String>,
    /// The member whose copy had the findings.
    pub tested_member: String,
    /// The verdict's findings.
    pub findings: Vec<Finding>,
    pub triage: Triage,
    /// The set's HA manager, paused first and resumed last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<Ha>,
    pub steps: Vec<Step>,
    /// First member stopped to last member streaming, as estimated.
    pub expected_downtime_seconds: f64,
    /// What a restore window restores (`Repair::Restore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreOrder>,
}

/// `tandemctl restore`'s order, as the agent's restore operation takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreOrder {
    /// daily, weekly, monthly, a file on the member's host, remote:KEY.
    pub from: String,
    /// RFC 3339; None: to the end of the WAL archive.
    #[serde(default)]
    pub target_time: Option<String>,
    #[serde(default)]
    pub replace: bool,
    /// `from` names a file on another member's host: where it is and the
    /// grant its agent gave (the controller's own; not sent to tandemctl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<crate::order::PeerSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreState {
    /// An order is running on the member's agent.
    #[default]
    Running,
    /// The backup is unpacked and rolled forward aside; the set still serves.
    Prepared,
    /// The member runs the restored database.
    Restored,
    Failed,
}

/// What became of a restore window's agent orders, for the report and
/// `tandemctl restore`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreProgress {
    pub member: String,
    pub agent: String,
    /// The agent's operation of the order running or last run.
    pub operation_id: String,
    pub state: RestoreState,
    /// The agent's step (R1 .. R10) that failed.
    #[serde(default)]
    pub failed_step: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// What each order did (where the old directory went, sequences fixed).
    #[serde(default)]
    pub notes: Vec<String>,
}

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
    pub restore: Option<RestoreProgress>,
    /// How many times the resume steps were built (abort, close, a failed
    /// restore): part of each agent step's request id, so a step of a new
    /// resume list is ordered anew.
    #[serde(default)]
    pub phase: u32,
}

impl Window {
    pub fn new(
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

    pub fn phase_steps(&mut self) -> &mut Vec<Step> {
        if self.state == WindowState::Resuming {
            &mut self.resume
        } else {
            &mut self.plan.steps
        }
    }

    /// The sentence the fleet gives for a held set.
    pub fn hold_reason(&self) -> String {
        format!(
            "set `{}` is in maintenance window {} ({}, {}); tests resume when it closes",
            self.set,
            self.id,
            self.reason,
            self.state.as_str()
        )
    }
}

/// A domain enum and its wire enum, both ways (the variants share their
/// names); the wire's unspecified value, or one this build does not know, is
/// refused naming the field.
macro_rules! wire_enum {
    ($domain:ident, $wire:ident, $field:literal, { $($v:ident),+ $(,)? }) => {
        impl From<$domain> for pb::$wire {
            fn from(v: $domain) -> Self {
                match v {
                    $($domain::$v => pb::$wire::$v,)+
                }
            }
        }

        impl $domain {
            fn from_wire(v: i32) -> Result<Self, ModelError> {
                match pb::$wire::try_from(v) {
                    $(Ok(pb::$wire::$v) => Ok($domain::$v),)+
                    Ok(_) => Err(ModelError::Missing { field: $field }),
                    Err(_) => Err(ModelError::Enum { field: $field, value: v }),
                }
            }
        }
    };
}

wire_enum!(Repair, Repair, "plan.repair", { Primary, Reseed, Restore });
wire_enum!(Action, PlanAction, "step.action", {
    Triage, FenceStop, Isolate, Reindex, ExecRepair, Check, Serve, Reseed,
    UnfenceStart, WaitStreaming, Testdb, PauseHa, ResumeHa, RestorePrepare, Restore,
});
wire_enum!(StepState, StepState, "step.state", { Pending, Running, Done, Failed });
wire_enum!(WindowState, WindowState, "window.state", {
    Running, Failed, Resuming, Closed, Aborted,
});
wire_enum!(Ending, WindowEnding, "window.ending", { Close, Abort });
wire_enum!(RestoreState, RestoreState, "restore.state", {
    Running, Prepared, Restored, Failed,
});

fn findings_to_wire(f: Vec<Finding>) -> Vec<pb::Finding> {
    f.into_iter().map(Into::into).collect()
}

fn findings_from_wire(f: Vec<pb::Finding>) -> Vec<Finding> {
    f.into_iter().map(Into::into).collect()
}

impl From<Step> for pb::PlanStep {
    fn from(s: Step) -> Self {
        pb::PlanStep {
            action: pb::PlanAction::from(s.action) as i32,
            member: s.member,
            touches: s.touches,
            targets: findings_to_wire(s.targets),
            estimate_seconds: s.estimate_seconds,
            downtime: s.downtime,
            state: pb::StepState::from(s.state) as i32,
            message: s.message,
            started_at: s.started_at.map(timestamp_to_wire),
            finished_at: s.finished_at.map(timestamp_to_wire),
        }
    }
}

impl TryFrom<pb::PlanStep> for Step {
    type Error = ModelError;
    fn try_from(s: pb::PlanStep) -> Result<Self, ModelError> {
        Ok(Step {
            action: Action::from_wire(s.action)?,
            member: s.member,
            touches: s.touches,
            targets: findings_from_wire(s.targets),
            estimate_seconds: s.estimate_seconds,
            downtime: s.downtime,
            state: StepState::from_wire(s.state)?,
            message: s.message,
            started_at: timestamp_from_wire("step.started_at", s.started_at)?,
            finished_at: timestamp_from_wire("step.finished_at", s.finished_at)?,
        })
    }
}

fn steps_from_wire(steps: Vec<pb::PlanStep>) -> Result<Vec<Step>, ModelError> {
    steps.into_iter().map(Step::try_from).collect()
}

impl From<Triage> for pb::Triage {
    fn from(t: Triage) -> Self {
        pb::Triage {
            findings: findings_to_wire(t.findings),
            relations: t
                .relations
                .into_iter()
                .map(|r| pb::TriageRelation {
                    database: r.database,
                    relation: r.relation,
                    is_index: r.is_index,
                    bytes: r.bytes,
                })
                .collect(),
            unresolved: t.unresolved,
        }
    }
}

impl From<pb::Triage> for Triage {
    fn from(t: pb::Triage) -> Self {
        Triage {
            findings: findings_from_wire(t.findings),
            relations: t
                .relations
                .into_iter()
                .map(|r| Relation {
                    database: r.database,
                    relation: r.relation,
                    is_index: r.is_index,
                    bytes: r.bytes,
                })
                .collect(),
            unresolved: t.unresolved,
        }
    }
}

impl From<Plan> for pb::Plan {
    fn from(p: Plan) -> Self {
        pb::Plan {
            set: p.set,
            repair: pb::Repair::from(p.repair) as i32,
            why: p.why,
            alternative: p.alternative,
            primary: p.primary,
            standbys: p.standbys,
            tested_member: p.tested_member,
            findings: findings_to_wire(p.findings),
            triage: Some(p.triage.into()),
            ha: p.ha.map(|h| pb::HaManager {
                manager: h.manager,
                urls: h.urls,
                paused_before: h.paused_before,
                seen: h.seen,
            }),
            steps: p.steps.into_iter().map(Into::into).collect(),
            expected_downtime_seconds: p.expected_downtime_seconds,
            restore: p.restore.map(|r| pb::WindowRestoreOrder {
                from: r.from,
                target_time: r.target_time,
                replace: r.replace,
            }),
        }
    }
}

impl TryFrom<pb::Plan> for Plan {
    type Error = ModelError;
    fn try_from(p: pb::Plan) -> Result<Self, ModelError> {
        Ok(Plan {
            set: p.set,
            repair: Repair::from_wire(p.repair)?,
            why: p.why,
            alternative: p.alternative,
            primary: p.primary,
            standbys: p.standbys,
            tested_member: p.tested_member,
            findings: findings_from_wire(p.findings),
            triage: p
                .triage
                .ok_or(ModelError::Missing {
                    field: "plan.triage",
                })?
                .into(),
            ha: p.ha.map(|h| Ha {
                manager: h.manager,
                urls: h.urls,
                paused_before: h.paused_before,
                seen: h.seen,
            }),
            steps: steps_from_wire(p.steps)?,
            expected_downtime_seconds: p.expected_downtime_seconds,
            restore: p.restore.map(|r| RestoreOrder {
                from: r.from,
                target_time: r.target_time,
                replace: r.replace,
                peer: None,
            }),
        })
    }
}

impl From<RestoreProgress> for pb::RestoreProgress {
    fn from(r: RestoreProgress) -> Self {
        pb::RestoreProgress {
            member: r.member,
            agent: r.agent,
            operation_id: r.operation_id,
            state: pb::RestoreState::from(r.state) as i32,
            failed_step: r.failed_step,
            reason: r.reason,
            notes: r.notes,
        }
    }
}

impl TryFrom<pb::RestoreProgress> for RestoreProgress {
    type Error = ModelError;
    fn try_from(r: pb::RestoreProgress) -> Result<Self, ModelError> {
        Ok(RestoreProgress {
            member: r.member,
            agent: r.agent,
            operation_id: r.operation_id,
            state: RestoreState::from_wire(r.state)?,
            failed_step: r.failed_step,
            reason: r.reason,
            notes: r.notes,
        })
    }
}

impl From<Window> for pb::Window {
    fn from(w: Window) -> Self {
        pb::Window {
            id: w.id,
            set: w.set,
            reason: w.reason,
            opened_by: w.opened_by,
            opened_at: Some(timestamp_to_wire(w.opened_at)),
            closed_at: w.closed_at.map(timestamp_to_wire),
            state: pb::WindowState::from(w.state) as i32,
            plan: Some(w.plan.into()),
            ending: w
                .ending
                .map_or(pb::WindowEnding::Unspecified, pb::WindowEnding::from)
                as i32,
            resume: w.resume.into_iter().map(Into::into).collect(),
            failure: w.failure,
            repair_lsn: w.repair_lsn,
            verdict: w.verdict.as_ref().map(pb::Verdict::from),
            downtime_seconds: w.downtime_seconds,
            trace_id: w.trace_id,
            ha_pause_sent: w.ha_pause_sent,
            restore: w.restore.map(Into::into),
            phase: w.phase,
        }
    }
}

impl TryFrom<pb::Window> for Window {
    type Error = ModelError;
    fn try_from(w: pb::Window) -> Result<Self, ModelError> {
        Ok(Window {
            id: w.id,
            set: w.set,
            reason: w.reason,
            opened_by: w.opened_by,
            opened_at: timestamp_from_wire("window.opened_at", w.opened_at)?.ok_or(
                ModelError::Missing {
                    field: "window.opened_at",
                },
            )?,
            closed_at: timestamp_from_wire("window.closed_at", w.closed_at)?,
            state: WindowState::from_wire(w.state)?,
            plan: w
                .plan
                .ok_or(ModelError::Missing {
                    field: "window.plan",
                })?
                .try_into()?,
            ending: match w.ending {
                0 => None,
                e => Some(Ending::from_wire(e)?),
            },
            resume: steps_from_wire(w.resume)?,
            failure: w.failure,
            repair_lsn: w.repair_lsn,
            verdict: w.verdict.map(Verdict::try_from).transpose()?,
            downtime_seconds: w.downtime_seconds,
            trace_id: w.trace_id,
            ha_pause_sent: w.ha_pause_sent,
            restore: w.restore.map(RestoreProgress::try_from).transpose()?,
            phase: w.phase,
        })
    }
}

#[cfg(test)]
mod tests;
