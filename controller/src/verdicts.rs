//! Verdicts (SPEC C3, T4, T6): what a set's last test says about the whole
//! set, kept with history in the store.
//!
//! A clean test of a standby's copy speaks for the copy, the standby and the
//! primary up to the tested log position (T6). Errors found there are the
//! primary's errors too (T4): the set needs a repair on the primary with the
//! whole set halted. A test that could not run says why.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tandem_proto::model::{Finding, timestamp_from_wire, timestamp_to_wire};
use tandem_proto::pb;

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
            standby_downtime_seconds: (r.standby_downtime_seconds > 0.0)
                .then_some(r.standby_downtime_seconds),
            duration_seconds: started.map(|s| (at - s).total(jiff::Unit::Second).unwrap_or(0.0)),
            started_at: started,
            backup_path: (!r.backup_path.is_empty()).then(|| r.backup_path.clone()),
        }
    }

    pub fn to_pb(&self) -> pb::Verdict {
        pb::Verdict {
            kind: match self.kind {
                VerdictKind::Clean => pb::VerdictKind::Clean,
                VerdictKind::Errors => pb::VerdictKind::Errors,
                VerdictKind::FailedToRun => pb::VerdictKind::FailedToRun,
            } as i32,
            lsn: self.lsn.clone().unwrap_or_default(),
            at: Some(timestamp_to_wire(self.at)),
            member: self.member.clone(),
            findings: self.findings.iter().cloned().map(Into::into).collect(),
            reason: self.reason.clone().unwrap_or_default(),
            trace_id: self.trace_id.clone(),
            operation_id: self.operation_id.clone(),
            output_path: self.output_path.clone(),
            warnings: self.warnings.clone(),
            standby_downtime_seconds: self.standby_downtime_seconds.unwrap_or(0.0),
            duration_seconds: self.duration_seconds.unwrap_or(0.0),
            started_at: self.started_at.map(timestamp_to_wire),
            backup_path: self.backup_path.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(state: pb::OperationState, findings: usize) -> pb::OperationResult {
        pb::OperationResult {
            operation_id: "testdb-1".into(),
            kind: pb::OperationKind::Testdb as i32,
            state: state as i32,
            started_at: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            finished_at: Some(prost_types::Timestamp {
                seconds: 160,
                nanos: 0,
            }),
            tested_lsn: "0/3000148".into(),
            findings: (0..findings)
                .map(|i| pb::Finding {
                    database: "postgres".into(),
                    relation: format!("public.idx{i}"),
                    kind: "index".into(),
                    message: "lacks matching index tuple".into(),
                })
                .collect(),
            reason: String::new(),
            output_path: "/var/lib/tandem/agent/testdb.out".into(),
            standby_downtime_seconds: 4.5,
            warnings: vec!["data checksums are off".into()],
            request_id: String::new(),
            backup_path: String::new(),
            notes: vec![],
            maintenance: None,
        }
    }

    #[test]
    fn a_clean_result_is_a_clean_verdict_with_its_lsn() {
        let v = Verdict::from_result("db2", &result(pb::OperationState::Succeeded, 0), "t".into());
        assert_eq!(v.kind, VerdictKind::Clean);
        assert_eq!(v.lsn.as_deref(), Some("0/3000148"));
        assert_eq!(v.duration_seconds, Some(60.0));
        assert_eq!(v.standby_downtime_seconds, Some(4.5));
        assert_eq!(v.warnings, vec!["data checksums are off"]);
    }

    #[test]
    fn findings_make_an_errors_verdict() {
        let v = Verdict::from_result(
            "db2",
            &result(pb::OperationState::ErrorsFound, 2),
            "t".into(),
        );
        assert_eq!(v.kind, VerdictKind::Errors);
        assert_eq!(v.findings.len(), 2);
        assert_eq!(v.to_pb().kind, pb::VerdictKind::Errors as i32);
    }

    #[test]
    fn an_interrupted_test_could_not_run_and_says_why() {
        let mut r = result(pb::OperationState::Interrupted, 0);
        r.reason = "the agent was stopped during step `copy`".into();
        let v = Verdict::from_result("db2", &r, "t".into());
        assert_eq!(v.kind, VerdictKind::FailedToRun);
        assert!(v.reason.unwrap().contains("during step `copy`"));
        let r = result(pb::OperationState::Failed, 0);
        assert!(
            Verdict::from_result("db2", &r, "t".into())
                .reason
                .unwrap()
                .contains("without a reason")
        );
    }

    #[test]
    fn verdicts_round_trip_through_json() {
        let v = Verdict::failed_to_run("db2", "not streaming".into(), "abc".into());
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<Verdict>(&s).unwrap(), v);
    }
}
