//! A set's verdict: what its last test says about the whole set. The
//! controller keeps it with history; windows carry the testdb that closed
//! them; tandemctl shows it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::{Finding, ModelError, timestamp_from_wire, timestamp_to_wire};
use crate::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Clean,
    Errors,
    FailedToRun,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Clean => "clean",
            VerdictKind::Errors => "errors",
            VerdictKind::FailedToRun => "failed_to_run",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub kind: VerdictKind,
    pub lsn: Option<String>,
    pub at: Timestamp,
    /// The member whose copy was tested (empty when none could be chosen).
    pub member: String,
    pub findings: Vec<Finding>,
    pub reason: Option<String>,
    pub trace_id: String,
    pub operation_id: String,
    pub output_path: String,
    pub warnings: Vec<String>,
    pub standby_downtime_seconds: Option<f64>,
    pub duration_seconds: Option<f64>,
    /// When the agent's operation started (none when it never did).
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// A backup run: the backup file kept on the member's host.
    #[serde(default)]
    pub backup_path: Option<String>,
    /// What the test's checks covered, by method and how much.
    #[serde(default)]
    pub coverage: Vec<String>,
    /// The mode that ran (`online`, `cold`), when known.
    #[serde(default)]
    pub mode: Option<String>,
    /// How the files were copied (`clone`, `bytes`, ...), when known.
    #[serde(default)]
    pub copy_method: Option<String>,
    /// A line about the copy worth a person's attention.
    #[serde(default)]
    pub copy_note: Option<String>,
    /// What the agent did besides the test (a backup run: the push, the
    /// rotation, the old WAL removed), one line each.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Verdict {
    /// A test that could not run, with the reason.
    pub fn failed_to_run(member: &str, reason: String, trace_id: String) -> Verdict {
        Verdict {
            kind: VerdictKind::FailedToRun,
            lsn: None,
            at: Timestamp::now(),
            member: member.to_owned(),
            findings: vec![],
            reason: Some(reason),
            trace_id,
            operation_id: String::new(),
            output_path: String::new(),
            warnings: vec![],
            standby_downtime_seconds: None,
            duration_seconds: None,
            started_at: None,
            backup_path: None,
            coverage: vec![],
            mode: None,
            copy_method: None,
            copy_note: None,
            notes: vec![],
        }
    }

    /// The verdict an agent's final operation result gives.
    pub fn from_result(member: &str, r: &pb::OperationResult, trace_id: String) -> Verdict {
        let at = timestamp_from_wire("finished_at", r.finished_at)
            .ok()
            .flatten()
            .unwrap_or_else(Timestamp::now);
        let started = timestamp_from_wire("started_at", r.started_at)
            .ok()
            .flatten();
        let kind = match pb::OperationState::try_from(r.state) {
            Ok(pb::OperationState::Succeeded) => VerdictKind::Clean,
            Ok(pb::OperationState::ErrorsFound) => VerdictKind::Errors,
            _ => VerdictKind::FailedToRun,
        };
        let reason = match kind {
            VerdictKind::FailedToRun if r.reason.is_empty() => Some(format!(
                "the test ended {:?} without a reason",
                pb::OperationState::try_from(r.state).unwrap_or_default()
            )),
            _ => (!r.reason.is_empty()).then(|| r.reason.clone()),
        };
        Verdict {
            kind,
            lsn: (!r.tested_lsn.is_empty()).then(|| r.tested_lsn.clone()),
            at,
            member: member.to_owned(),
            findings: r.findings.iter().cloned().map(Finding::from).collect(),
            reason,
            trace_id,
            operation_id: r.operation_id.clone(),
            output_path: r.output_path.clone(),
            warnings: r.warnings.clone(),
            standby_downtime_seconds: r.standby_downtime_seconds,
            duration_seconds: started.map(|s| (at - s).total(jiff::Unit::Second).unwrap_or(0.0)),
            started_at: started,
            backup_path: (!r.backup_path.is_empty()).then(|| r.backup_path.clone()),
            coverage: r.coverage.clone(),
            mode: non_empty(r.mode.clone()),
            copy_method: non_empty(r.copy_method.clone()),
            copy_note: non_empty(r.copy_note.clone()),
            notes: r.notes.clone(),
        }
    }
}

impl From<VerdictKind> for pb::VerdictKind {
    fn from(k: VerdictKind) -> Self {
        match k {
            VerdictKind::Clean => pb::VerdictKind::Clean,
            VerdictKind::Errors => pb::VerdictKind::Errors,
            VerdictKind::FailedToRun => pb::VerdictKind::FailedToRun,
        }
    }
}

impl From<&Verdict> for pb::Verdict {
    fn from(v: &Verdict) -> Self {
        pb::Verdict {
            kind: pb::VerdictKind::from(v.kind) as i32,
            lsn: v.lsn.clone().unwrap_or_default(),
            at: Some(timestamp_to_wire(v.at)),
            member: v.member.clone(),
            findings: v.findings.iter().cloned().map(Into::into).collect(),
            reason: v.reason.clone().unwrap_or_default(),
            trace_id: v.trace_id.clone(),
            operation_id: v.operation_id.clone(),
            output_path: v.output_path.clone(),
            warnings: v.warnings.clone(),
            standby_downtime_seconds: v.standby_downtime_seconds,
            duration_seconds: v.duration_seconds.unwrap_or(0.0),
            started_at: v.started_at.map(timestamp_to_wire),
            backup_path: v.backup_path.clone().unwrap_or_default(),
            coverage: v.coverage.clone(),
            mode: v.mode.clone().unwrap_or_default(),
            copy_method: v.copy_method.clone().unwrap_or_default(),
            copy_note: v.copy_note.clone().unwrap_or_default(),
            notes: v.notes.clone(),
        }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn positive(x: f64) -> Option<f64> {
    (x > 0.0).then_some(x)
}

/// A verdict as sent (a window's closing testdb); "never tested" is not a
/// verdict a test gives, so it is refused here.
impl TryFrom<pb::Verdict> for Verdict {
    type Error = ModelError;
    fn try_from(v: pb::Verdict) -> Result<Self, ModelError> {
        let kind = match pb::VerdictKind::try_from(v.kind) {
            Ok(pb::VerdictKind::Clean) => VerdictKind::Clean,
            Ok(pb::VerdictKind::Errors) => VerdictKind::Errors,
            Ok(pb::VerdictKind::FailedToRun) => VerdictKind::FailedToRun,
            Ok(_) => {
                return Err(ModelError::Missing {
                    field: "verdict.kind",
                });
            }
            Err(_) => {
                return Err(ModelError::Enum {
                    field: "verdict.kind",
                    value: v.kind,
                });
            }
        };
        Ok(Verdict {
            kind,
            lsn: non_empty(v.lsn),
            at: timestamp_from_wire("verdict.at", v.at)?.ok_or(ModelError::Missing {
                field: "verdict.at",
            })?,
            member: v.member,
            findings: v.findings.into_iter().map(Finding::from).collect(),
            reason: non_empty(v.reason),
            trace_id: v.trace_id,
            operation_id: v.operation_id,
            output_path: v.output_path,
            warnings: v.warnings,
            standby_downtime_seconds: v.standby_downtime_seconds.filter(|d| *d >= 0.0),
            duration_seconds: positive(v.duration_seconds),
            started_at: timestamp_from_wire("verdict.started_at", v.started_at)?,
            backup_path: non_empty(v.backup_path),
            coverage: v.coverage,
            mode: non_empty(v.mode),
            copy_method: non_empty(v.copy_method),
            copy_note: non_empty(v.copy_note),
            notes: v.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_survives_the_wire() {
        let mut v = Verdict::failed_to_run("db2", "no standby".into(), "t1".into());
        v.kind = VerdictKind::Errors;
        v.lsn = Some("0/3000060".into());
        v.findings = vec![Finding {
            database: "app".into(),
            relation: "public.t_pkey".into(),
            kind: "index".into(),
            message: "m".into(),
        }];
        v.duration_seconds = Some(2.5);
        v.started_at = Some(v.at);
        v.mode = Some("online".into());
        v.copy_method = Some("clone".into());
        v.copy_note = Some("reflinked".into());
        assert_eq!(Verdict::try_from(pb::Verdict::from(&v)).unwrap(), v);
    }

    #[test]
    fn a_measured_zero_downtime_is_not_an_unknown_one() {
        let mut v = Verdict::failed_to_run("db2", "r".into(), "t".into());
        v.kind = VerdictKind::Clean;
        v.standby_downtime_seconds = Some(0.0);
        let p = pb::Verdict::from(&v);
        assert_eq!(p.standby_downtime_seconds, Some(0.0));
        assert_eq!(
            Verdict::try_from(p).unwrap().standby_downtime_seconds,
            Some(0.0)
        );
        v.standby_downtime_seconds = None;
        assert_eq!(pb::Verdict::from(&v).standby_downtime_seconds, None);
        let result = pb::OperationResult {
            state: pb::OperationState::Succeeded as i32,
            standby_downtime_seconds: Some(0.0),
            mode: "online".into(),
            ..Default::default()
        };
        let v = Verdict::from_result("db2", &result, "t".into());
        assert_eq!(v.standby_downtime_seconds, Some(0.0));
        assert_eq!(v.mode.as_deref(), Some("online"));
        assert_eq!(v.copy_method, None);
    }

    #[test]
    fn a_verdict_without_kind_or_time_is_refused_by_field() {
        let v = Verdict::failed_to_run("db2", "r".into(), "t".into());
        let mut p = pb::Verdict::from(&v);
        p.kind = pb::VerdictKind::NeverTested as i32;
        assert_eq!(
            Verdict::try_from(p.clone()).unwrap_err().to_string(),
            "field `verdict.kind` is required"
        );
        p.kind = pb::VerdictKind::Clean as i32;
        p.at = None;
        assert_eq!(
            Verdict::try_from(p).unwrap_err().to_string(),
            "field `verdict.at` is required"
        );
    }
}
