//! Verdicts (SPEC C3, T4, T6): what a set's last test says about the whole
//! set, kept with history in the store.
//!
//! A clean test of a standby's copy speaks for the copy, the standby and the
//! primary up to the tested log position (T6). Errors found there are the
//! primary's errors too (T4): the set needs a repair on the primary with the
//! whole set halted. A test that could not run says why.

use jiff::Timestamp;
use tandem_proto::model::{Lsn, Role, timestamp_from_wire};
use tandem_proto::pb;
pub use tandem_proto::verdict::{Verdict, VerdictKind};

/// What the controller knows when an agent offers a result it got by
/// itself (a test it ran while the controller was unreachable).
#[derive(Debug, Clone)]
pub struct LocalContext {
    /// The set's test policy, when it does not let agents test by
    /// themselves (it names no signal); `None`: it does.
    pub policy_forbids: Option<String>,
    /// The reporting member's last known role.
    pub role: Option<Role>,
    /// The set's newest stored verdict.
    pub newest: Option<Timestamp>,
    /// The highest log position the set's members reported.
    pub set_lsn: Option<Lsn>,
    pub now: Timestamp,
}

/// How far a clock may be ahead, and how far a tested position may be past
/// what the set reported (the private instance writes its end-of-recovery
/// checkpoint; one WAL segment).
const CLOCK_SKEW_SECONDS: i64 = 60;
const LSN_SLACK: u64 = 16 * 1024 * 1024;

/// Why a local result is not taken as the set's verdict.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LocalRefusal {
    #[error(
        "set `{set}`'s test policy is `{policy}`: its agents may not test by themselves, so no local result is taken"
    )]
    NotAllowed { set: String, policy: String },
    #[error(
        "member `{member}` is the set's {role}, not its standby: only a standby's agent tests its copy"
    )]
    NotStandby { member: String, role: String },
    #[error(
        "operation {operation} was not a test the agent started by itself (its request id is {request:?}); tests the controller ordered report through their run"
    )]
    NotLocal { operation: String, request: String },
    #[error("operation {operation} is a {kind}, not a test")]
    NotATest { operation: String, kind: String },
    #[error("operation {operation} has not ended ({state}); report it when it has")]
    NotFinal { operation: String, state: String },
    #[error("operation {operation} has no valid end time")]
    NoTime { operation: String },
    #[error(
        "operation {operation} ended at {at}, in the future (now {now}); check the agent host's clock"
    )]
    Future {
        operation: String,
        at: Timestamp,
        now: Timestamp,
    },
    #[error(
        "operation {operation} ended at {at}, before the set's newest verdict ({newest}): an older result does not replace a newer one"
    )]
    Older {
        operation: String,
        at: Timestamp,
        newest: Timestamp,
    },
    #[error(
        "operation {operation} says it tested up to LSN {lsn:?}, which is not a log position the set has reached (its members reported {set_lsn})"
    )]
    BadLsn {
        operation: String,
        lsn: String,
        set_lsn: String,
    },
}

/// Whether an agent's own result may become `set`'s verdict (pure): the
/// policy lets agents test by themselves, the member is a standby, the
/// result is a finished test the agent started itself, its time is neither
/// in the future nor older than the set's newest verdict, and its log
/// position is one the set has reached.
pub fn check_local_result(
    set: &str,
    member: &str,
    r: &pb::OperationResult,
    cx: &LocalContext,
) -> Result<(), LocalRefusal> {
    let operation = r.operation_id.clone();
    if let Some(policy) = &cx.policy_forbids {
        return Err(LocalRefusal::NotAllowed {
            set: set.to_owned(),
            policy: policy.clone(),
        });
    }
    if cx.role != Some(Role::Standby) {
        return Err(LocalRefusal::NotStandby {
            member: member.to_owned(),
            role: cx.role.map_or("unknown".to_owned(), |r| r.to_string()),
        });
    }
    if !r.request_id.starts_with("local/") {
        return Err(LocalRefusal::NotLocal {
            operation,
            request: r.request_id.clone(),
        });
    }
    match pb::OperationKind::try_from(r.kind) {
        Ok(pb::OperationKind::Testdb | pb::OperationKind::Backup) => {}
        k => {
            return Err(LocalRefusal::NotATest {
                operation,
                kind: k.map_or(format!("kind {}", r.kind), |k| k.as_str_name().to_owned()),
            });
        }
    }
    match pb::OperationState::try_from(r.state) {
        Ok(
            pb::OperationState::Succeeded
            | pb::OperationState::ErrorsFound
            | pb::OperationState::Failed
            | pb::OperationState::Cancelled
            | pb::OperationState::Interrupted,
        ) => {}
        s => {
            return Err(LocalRefusal::NotFinal {
                operation,
                state: s.map_or(format!("state {}", r.state), |s| s.as_str_name().to_owned()),
            });
        }
    }
    let Some(at) = timestamp_from_wire("finished_at", r.finished_at)
        .ok()
        .flatten()
    else {
        return Err(LocalRefusal::NoTime { operation });
    };
    if at > cx.now + jiff::SignedDuration::from_secs(CLOCK_SKEW_SECONDS) {
        return Err(LocalRefusal::Future {
            operation,
            at,
            now: cx.now,
        });
    }
    if let Some(newest) = cx.newest
        && at < newest
    {
        return Err(LocalRefusal::Older {
            operation,
            at,
            newest,
        });
    }
    if !r.tested_lsn.is_empty() {
        let lsn: Option<Lsn> = r.tested_lsn.parse().ok();
        let reached = match (lsn, cx.set_lsn) {
            (Some(l), Some(set)) => l.0 <= set.0.saturating_add(LSN_SLACK),
            _ => false,
        };
        if !reached {
            return Err(LocalRefusal::BadLsn {
                operation,
                lsn: r.tested_lsn.clone(),
                set_lsn: cx
                    .set_lsn
                    .map_or("no log position".to_owned(), |l| l.to_string()),
            });
        }
    }
    Ok(())
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
            standby_downtime_seconds: Some(4.5),
            warnings: vec!["data checksums are off".into()],
            request_id: String::new(),
            backup_path: String::new(),
            notes: vec![],
            maintenance: None,
            coverage: vec!["lost rows: 1 B-tree indexes of 1 tables".into()],
            mode: "cold".into(),
            copy_method: "bytes".into(),
            copy_note: String::new(),
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
        assert_eq!(v.mode.as_deref(), Some("cold"));
        assert_eq!(v.copy_method.as_deref(), Some("bytes"));
        assert_eq!(v.copy_note, None);
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
        assert_eq!(pb::Verdict::from(&v).kind, pb::VerdictKind::Errors as i32);
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

    fn local(state: pb::OperationState, at: i64, lsn: &str) -> pb::OperationResult {
        pb::OperationResult {
            request_id: "local/2026-12-01T10:00:00Z".into(),
            finished_at: Some(prost_types::Timestamp {
                seconds: at,
                nanos: 0,
            }),
            tested_lsn: lsn.into(),
            ..result(state, 0)
        }
    }

    fn cx() -> LocalContext {
        LocalContext {
            policy_forbids: None,
            role: Some(Role::Standby),
            newest: Some(Timestamp::from_second(1_000).unwrap()),
            set_lsn: Some("0/5000000".parse().unwrap()),
            now: Timestamp::from_second(2_000).unwrap(),
        }
    }

    fn refused(r: &pb::OperationResult, cx: &LocalContext) -> String {
        check_local_result("billing", "db1", r, cx)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_agents_own_test_is_taken_when_every_rule_holds() {
        let ok = local(pb::OperationState::Succeeded, 1_500, "0/4000000");
        assert_eq!(check_local_result("billing", "db2", &ok, &cx()), Ok(()));
        // Its end-of-recovery checkpoint may be a little past the set.
        let just_past = local(pb::OperationState::ErrorsFound, 1_500, "0/5000100");
        assert_eq!(
            check_local_result("billing", "db2", &just_past, &cx()),
            Ok(())
        );
    }

    #[test]
    fn a_forged_local_result_is_refused_saying_which_rule_it_broke() {
        let ok = local(pb::OperationState::Succeeded, 1_500, "0/4000000");
        let mut c = cx();
        c.policy_forbids = Some("off".into());
        assert!(refused(&ok, &c).contains("test policy is `off`"));
        let mut c = cx();
        c.role = Some(Role::Primary);
        assert!(refused(&ok, &c).contains("is the set's primary, not its standby"));
        c.role = None;
        assert!(refused(&ok, &c).contains("set's unknown"));
        let mut ordered = ok.clone();
        ordered.request_id = "run-1/billing".into();
        assert!(refused(&ordered, &cx()).contains("not a test the agent started by itself"));
        let mut restore = ok.clone();
        restore.kind = pb::OperationKind::Restore as i32;
        assert!(refused(&restore, &cx()).contains("not a test"));
        let running = local(pb::OperationState::Running, 1_500, "0/4000000");
        assert!(refused(&running, &cx()).contains("has not ended"));
        let future = local(pb::OperationState::Succeeded, 2_100, "0/4000000");
        assert!(refused(&future, &cx()).contains("in the future"));
        let back_dated = local(pb::OperationState::Succeeded, 900, "0/4000000");
        assert!(refused(&back_dated, &cx()).contains("before the set's newest verdict"));
        let ahead = local(pb::OperationState::Succeeded, 1_500, "0/FFFFFFFF");
        assert!(refused(&ahead, &cx()).contains("not a log position the set has reached"));
        let garbage = local(pb::OperationState::Succeeded, 1_500, "zzz");
        assert!(refused(&garbage, &cx()).contains("not a log position"));
        let mut none = cx();
        none.set_lsn = None;
        assert!(refused(&ok, &none).contains("no log position"));
    }
}
