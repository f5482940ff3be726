//! What tandemctl asks the controller, as the controller reads it: the calls
//! whose fields mean more than a name, converted with `TryFrom` at the gRPC
//! layer. A field that is missing, contradicts another or cannot be read is
//! refused here, naming the field, before the controller looks anything up.
//! (Calls that carry only names, like `ShowSets` or `RemoveSet`, are read
//! as they are: the inventory checks the names.)

use jiff::Timestamp;

use crate::model::{ModelError, TestMode};
use crate::order::CopyOptions;
use crate::pb;

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn required(field: &'static str, s: String) -> Result<String, ModelError> {
    non_empty(s).ok_or(ModelError::Missing { field })
}

/// Which sets a fleet run is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sets {
    /// Every set in the inventory.
    All,
    /// These sets (at least one).
    Named(Vec<String>),
}

/// `StartTestdb`: test these sets, or one member of one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestdbCall {
    pub sets: Sets,
    /// Test this member instead of the set's streaming standby.
    pub member: Option<String>,
    /// The mode asked for (`None`: the set's policy, else the agent's
    /// default) and whether a cold test may stall the primary's commits.
    pub copy: CopyOptions,
}

impl TryFrom<pb::StartTestdbRequest> for TestdbCall {
    type Error = ModelError;
    fn try_from(r: pb::StartTestdbRequest) -> Result<Self, ModelError> {
        let sets = match (r.all, r.sets.is_empty()) {
            (true, true) => Sets::All,
            (false, false) => Sets::Named(r.sets),
            (true, false) => {
                return Err(ModelError::Invalid {
                    field: "sets",
                    why: "name the sets to test or ask for all, not both".into(),
                });
            }
            (false, true) => {
                return Err(ModelError::Invalid {
                    field: "sets",
                    why: "name the sets to test, or --all".into(),
                });
            }
        };
        let member = non_empty(r.member);
        if member.is_some() && !matches!(&sets, Sets::Named(s) if s.len() == 1) {
            return Err(ModelError::Invalid {
                field: "member",
                why: "--member needs exactly one set".into(),
            });
        }
        Ok(TestdbCall {
            sets,
            member,
            copy: CopyOptions {
                mode: TestMode::from_wire("mode", r.mode)?,
                allow_commit_stall: r.allow_commit_stall,
            },
        })
    }
}

/// What a `Backup` call makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    /// A tested backup: the copy, its test, then it is kept.
    Tested,
    /// An archive copy: the copy only, no test.
    ArchiveCopy,
    /// An archive copy packed into one backup file.
    ArchiveFile,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupCall {
    pub set: String,
    /// Copy this member instead of the set's streaming standby.
    pub member: Option<String>,
    pub kind: BackupKind,
    /// As in [`TestdbCall::copy`].
    pub copy: CopyOptions,
}

impl TryFrom<pb::BackupRequest> for BackupCall {
    type Error = ModelError;
    fn try_from(r: pb::BackupRequest) -> Result<Self, ModelError> {
        let kind = match (r.archive_copy, r.archive_file) {
            (false, false) => BackupKind::Tested,
            (true, false) => BackupKind::ArchiveCopy,
            (true, true) => BackupKind::ArchiveFile,
            (false, true) => {
                return Err(ModelError::Invalid {
                    field: "archive_file",
                    why: "packs an archive copy into a file, so it needs archive_copy".into(),
                });
            }
        };
        Ok(BackupCall {
            copy: CopyOptions {
                mode: TestMode::from_wire("mode", r.mode)?,
                allow_commit_stall: r.allow_commit_stall,
            },
            set: required("set", r.set)?,
            member: non_empty(r.member),
            kind,
        })
    }
}

/// `Restore`: restore a member (the primary unless named) from a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreCall {
    pub set: String,
    pub member: Option<String>,
    /// latest (when left empty), daily, weekly, monthly, a backup file on
    /// the member's host, MEMBER:/path, remote:KEY.
    pub from: String,
    /// Roll forward to this time (as given: RFC 3339, checked); `None`: to the
    /// end of the WAL archive.
    pub target_time: Option<String>,
    pub replace: bool,
}

impl TryFrom<pb::RestoreRequest> for RestoreCall {
    type Error = ModelError;
    fn try_from(r: pb::RestoreRequest) -> Result<Self, ModelError> {
        let target_time = non_empty(r.target_time);
        if let Some(t) = &target_time {
            t.parse::<Timestamp>().map_err(|e| ModelError::Invalid {
                field: "target_time",
                why: format!(
                    "{t:?} is not an RFC 3339 time with an offset (e.g. 2026-11-21T12:30:00Z): {e}"
                ),
            })?;
        }
        Ok(RestoreCall {
            set: required("set", r.set)?,
            member: non_empty(r.member),
            from: non_empty(r.from).unwrap_or_else(|| "latest".to_owned()),
            target_time,
            replace: r.replace,
        })
    }
}

/// How a window repairs findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairChoice {
    /// REINDEX for index findings, the agent's exec repair for the rest.
    Auto,
    /// The agent's exec repair for everything, indexes too.
    Exec,
}

/// The `Maintenance*` calls: a set, and for plan and open the repair; for
/// open the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCall {
    pub set: String,
    /// Why the window opens (`MaintenanceOpen` requires it).
    pub reason: String,
    pub repair: RepairChoice,
}

impl TryFrom<pb::MaintenanceRequest> for WindowCall {
    type Error = ModelError;
    fn try_from(r: pb::MaintenanceRequest) -> Result<Self, ModelError> {
        let repair = match r.repair.as_str() {
            "" | "auto" => RepairChoice::Auto,
            "exec" => RepairChoice::Exec,
            other => {
                return Err(ModelError::Invalid {
                    field: "repair",
                    why: format!(
                        "unknown repair `{other}`: use auto (REINDEX for index findings, the exec repair for the rest) or exec (the exec repair for everything)"
                    ),
                });
            }
        };
        Ok(WindowCall {
            set: required("set", r.set)?,
            reason: r.reason,
            repair,
        })
    }
}

/// `Limits`: show them, change some, or go back to controller.toml's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsCall {
    Show,
    /// Unset values keep theirs; each set one is at least 1.
    Change {
        fleet: Option<u32>,
        per_host: Option<u32>,
    },
    Reset,
}

impl TryFrom<pb::LimitsRequest> for LimitsCall {
    type Error = ModelError;
    fn try_from(r: pb::LimitsRequest) -> Result<Self, ModelError> {
        let at_least_one = |field, v: Option<u32>| match v {
            Some(0) => Err(ModelError::Invalid {
                field,
                why: "limits must be at least 1 (a limit of 0 would never run a test)".into(),
            }),
            v => Ok(v),
        };
        let fleet = at_least_one("fleet", r.fleet)?;
        let per_host = at_least_one("per_host", r.per_host)?;
        Ok(match (r.reset, fleet.is_some() || per_host.is_some()) {
            (true, true) => {
                return Err(ModelError::Invalid {
                    field: "reset",
                    why: "goes back to controller.toml's limits, so it takes no values".into(),
                });
            }
            (true, false) => LimitsCall::Reset,
            (false, true) => LimitsCall::Change { fleet, per_host },
            (false, false) => LimitsCall::Show,
        })
    }
}

/// `WatchOperation`: follow one agent operation of a set's member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOperationCall {
    pub set: String,
    pub member: String,
    pub operation_id: String,
}

impl TryFrom<pb::WatchOperationRequest> for WatchOperationCall {
    type Error = ModelError;
    fn try_from(r: pb::WatchOperationRequest) -> Result<Self, ModelError> {
        Ok(WatchOperationCall {
            set: required("set", r.set)?,
            member: required("member", r.member)?,
            operation_id: required("operation_id", r.operation_id)?,
        })
    }
}

/// The id of a fleet run (`WatchRun`, `CancelRun`).
pub fn run_id(id: String) -> Result<String, ModelError> {
    required("run_id", id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused<T, W>(w: W) -> String
    where
        T: TryFrom<W, Error = ModelError> + std::fmt::Debug,
    {
        T::try_from(w).unwrap_err().to_string()
    }

    #[test]
    fn a_testdb_call_names_sets_or_all_and_a_member_only_with_one_set() {
        let r = |sets: &[&str], all, member: &str| pb::StartTestdbRequest {
            sets: sets.iter().map(|s| s.to_string()).collect(),
            all,
            member: member.into(),
            ..Default::default()
        };
        assert_eq!(
            TestdbCall::try_from(r(&[], true, "")).unwrap().sets,
            Sets::All
        );
        assert_eq!(
            TestdbCall::try_from(r(&["billing"], false, "db2")).unwrap(),
            TestdbCall {
                sets: Sets::Named(vec!["billing".into()]),
                member: Some("db2".into()),
                copy: CopyOptions::default(),
            }
        );
        let cold = pb::StartTestdbRequest {
            mode: pb::TestMode::Cold as i32,
            allow_commit_stall: true,
            ..r(&["billing"], false, "")
        };
        assert_eq!(
            TestdbCall::try_from(cold).unwrap().copy,
            CopyOptions {
                mode: Some(TestMode::Cold),
                allow_commit_stall: true
            }
        );
        assert_eq!(
            refused::<TestdbCall, _>(pb::StartTestdbRequest {
                mode: 5,
                ..r(&["billing"], false, "")
            }),
            "field `mode`: unknown enum value 5"
        );
        assert_eq!(
            refused::<TestdbCall, _>(r(&[], false, "")),
            "field `sets`: name the sets to test, or --all"
        );
        assert!(refused::<TestdbCall, _>(r(&["a"], true, "")).starts_with("field `sets`: "));
        assert_eq!(
            refused::<TestdbCall, _>(r(&["a", "b"], false, "db2")),
            "field `member`: --member needs exactly one set"
        );
        assert!(refused::<TestdbCall, _>(r(&[], true, "db2")).starts_with("field `member`"));
    }

    #[test]
    fn a_backup_call_needs_its_set_and_a_file_only_of_an_archive_copy() {
        let r = |set: &str, copy, file| pb::BackupRequest {
            set: set.into(),
            member: String::new(),
            archive_copy: copy,
            archive_file: file,
            ..Default::default()
        };
        assert_eq!(
            BackupCall::try_from(r("billing", true, true)).unwrap().kind,
            BackupKind::ArchiveFile
        );
        assert_eq!(
            BackupCall::try_from(r("billing", false, false))
                .unwrap()
                .kind,
            BackupKind::Tested
        );
        assert_eq!(
            refused::<BackupCall, _>(r("", false, false)),
            "field `set` is required"
        );
        assert!(
            refused::<BackupCall, _>(r("billing", false, true)).starts_with("field `archive_file`")
        );
    }

    #[test]
    fn a_restore_call_defaults_to_the_latest_backup_and_needs_a_readable_target_time() {
        let r = |from: &str, t: &str| pb::RestoreRequest {
            set: "billing".into(),
            member: String::new(),
            from: from.into(),
            target_time: t.into(),
            replace: false,
        };
        let ok = RestoreCall::try_from(r("daily", "2026-11-21T12:30:00+01:00")).unwrap();
        assert_eq!(ok.target_time.as_deref(), Some("2026-11-21T12:30:00+01:00"));
        assert_eq!(ok.member, None);
        assert_eq!(RestoreCall::try_from(r("", "")).unwrap().from, "latest");
        let e = refused::<RestoreCall, _>(r("daily", "yesterday"));
        assert!(
            e.starts_with("field `target_time`: \"yesterday\" is not an RFC 3339"),
            "{e}"
        );
        // A civil time without an offset is ambiguous: refused too.
        assert!(
            refused::<RestoreCall, _>(r("daily", "2026-11-21T12:30:00"))
                .starts_with("field `target_time`")
        );
    }

    #[test]
    fn a_window_call_knows_its_repairs() {
        let r = |repair: &str| pb::MaintenanceRequest {
            set: "billing".into(),
            reason: "r".into(),
            repair: repair.into(),
        };
        assert_eq!(
            WindowCall::try_from(r("")).unwrap().repair,
            RepairChoice::Auto
        );
        assert_eq!(
            WindowCall::try_from(r("exec")).unwrap().repair,
            RepairChoice::Exec
        );
        assert!(
            refused::<WindowCall, _>(r("magic"))
                .starts_with("field `repair`: unknown repair `magic`")
        );
    }

    #[test]
    fn limits_are_shown_changed_or_reset_and_never_zero() {
        let r = |fleet, per_host, reset| pb::LimitsRequest {
            fleet,
            per_host,
            reset,
        };
        assert_eq!(
            LimitsCall::try_from(r(None, None, false)).unwrap(),
            LimitsCall::Show
        );
        assert_eq!(
            LimitsCall::try_from(r(None, None, true)).unwrap(),
            LimitsCall::Reset
        );
        assert_eq!(
            LimitsCall::try_from(r(Some(3), None, false)).unwrap(),
            LimitsCall::Change {
                fleet: Some(3),
                per_host: None
            }
        );
        assert!(
            refused::<LimitsCall, _>(r(None, Some(0), false))
                .starts_with("field `per_host`: limits must be at least 1")
        );
        assert!(refused::<LimitsCall, _>(r(Some(2), None, true)).starts_with("field `reset`"));
    }

    #[test]
    fn watching_an_operation_names_all_three() {
        let e = refused::<WatchOperationCall, _>(pb::WatchOperationRequest {
            set: "billing".into(),
            member: "db1".into(),
            operation_id: String::new(),
        });
        assert_eq!(e, "field `operation_id` is required");
        assert_eq!(
            run_id(String::new()).unwrap_err().to_string(),
            "field `run_id` is required"
        );
    }
}
