//! Orders: what the controller asks an agent to do, as typed values.
//!
//! Every piece of agent work is one [`Order`] inside a [`StartOrder`] (the
//! request id, the join flag, the set generation). The agent converts the
//! wire form with `TryFrom` on receipt, so a missing or malformed field is
//! `invalid_argument` naming the field before anything is journaled; the
//! controller builds orders as these values and converts them with `From`.
//! [`MaintenanceStep`] is the one vocabulary of a window's agent steps, used
//! by the controller's plans and the agent's steps alike.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Finding, ModelError, TestMode};
use crate::pb;

/// One order and what makes it idempotent and current.
#[derive(Debug, Clone, PartialEq)]
pub struct StartOrder {
    /// The controller's generation for the set; older than one the agent
    /// already accepted is refused.
    pub set_generation: u64,
    /// The caller's id for the order: asked again, the agent answers with
    /// the operation it started (empty: none).
    pub request_id: String,
    /// Join the running copy-making operation of the other purpose if it
    /// can still serve this order (one copy serves a test and an archive copy).
    pub join: bool,
    pub order: Order,
}

/// How a copy-making order copies the standby.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// `None`: the agent's configured default (`[testdb] mode`).
    pub mode: Option<TestMode>,
    /// A cold copy may stop a standby the primary's commits wait for (the
    /// person asked for it; the controller refuses such a test otherwise).
    pub allow_commit_stall: bool,
}

impl CopyOptions {
    fn from_wire(
        field: &'static str,
        mode: i32,
        allow_commit_stall: bool,
    ) -> Result<CopyOptions, ModelError> {
        Ok(CopyOptions {
            mode: TestMode::from_wire(field, mode)?,
            allow_commit_stall,
        })
    }
}

/// The work itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    /// Copy the standby, open a private instance on the copy, check it.
    Testdb {
        skip_logical_read: bool,
        copy: CopyOptions,
    },
    /// Copy the standby's database aside, no test.
    Copy {
        copy: CopyOptions,
    },
    /// Copy, pack into a backup file, keep it when the test is clean (or
    /// at once, untested).
    Backup {
        untested: bool,
        copy: CopyOptions,
    },
    Restore(RestoreOrder),
    Maintenance(MaintenanceOrder),
}

impl Order {
    /// The order's kind, as journals, metrics and spans name it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Order::Testdb { .. } => "testdb",
            Order::Copy { .. } => "copy",
            Order::Backup { .. } => "backup",
            Order::Restore(_) => "restore",
            Order::Maintenance(_) => "maintenance",
        }
    }

    /// Whether the order makes a copy of the standby (and may be joined).
    pub fn makes_copy(&self) -> bool {
        self.copy_options().is_some()
    }

    /// How a copy-making order copies the standby (`None` for the others).
    pub fn copy_options(&self) -> Option<CopyOptions> {
        match self {
            Order::Testdb { copy, .. } | Order::Copy { copy } | Order::Backup { copy, .. } => {
                Some(*copy)
            }
            Order::Restore(_) | Order::Maintenance(_) => None,
        }
    }
}

/// Which part of a restore one order runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreStage {
    /// Fetch, free space, unpack and verify; the server untouched.
    Prepare,
    /// Stop to health check, on the directory a prepare stage left.
    Swap,
    /// Both, in one order.
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestoreOrder {
    /// `daily`, `weekly`, `monthly`, a backup file on the agent's host,
    /// `remote:KEY`, or `MEMBER:/path` ([`BackupSource`]).
    pub from: String,
    /// RFC 3339; `None`: to the end of the WAL archive.
    pub target_time: Option<String>,
    pub replace: bool,
    pub stage: RestoreStage,
    /// `from` is a file on another member's host: fetch it from there first.
    pub peer: Option<PeerSource>,
}

/// A backup file on another member's host, and the grant its agent gave
/// for this agent to fetch it (`AgentPeer.FetchBackup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSource {
    /// The holding member and its agent.
    pub member: String,
    pub agent: String,
    /// The holder agent's address, `host:port`.
    pub address: String,
    /// The file on the holder's host.
    pub file: String,
    pub grant_id: String,
    /// The file's size and its unpacked size, as the grant answered.
    pub bytes: u64,
    pub unpacked_bytes: u64,
}

/// What a restore's `from` names. The one parser of `--from`: the
/// controller uses it to see whether a backup is on another member's host,
/// the agent to refuse that form without a peer source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupSource<'a> {
    /// `daily`, `weekly`, `monthly`, or an absolute file on the restored
    /// member's host (the agent tells them apart).
    Local(&'a str),
    /// `remote:KEY`: a key in the agents' remote store.
    Remote(&'a str),
    /// `MEMBER:/abs/path`: a backup file on the host of member `member`.
    Member { member: &'a str, file: &'a str },
}

/// A `from` that names a member but no absolute file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{from:?}: a backup on another member's host is named MEMBER:/absolute/path/file.tar.zst (`tandemctl backups SET` lists them)"
)]
pub struct BadBackupSource {
    pub from: String,
}

impl<'a> BackupSource<'a> {
    /// `remote:` first (a member named `remote` is reached by its file
    /// path); then `NAME:/...` where NAME is a valid member name; anything
    /// else is local. `NAME:relative` is refused.
    pub fn parse(from: &'a str) -> Result<BackupSource<'a>, BadBackupSource> {
        if let Some(key) = from.strip_prefix("remote:") {
            return Ok(BackupSource::Remote(key));
        }
        match from.split_once(':') {
            Some((member, file)) if crate::identity::validate_name(member).is_ok() => {
                if file.starts_with('/') {
                    Ok(BackupSource::Member { member, file })
                } else {
                    Err(BadBackupSource {
                        from: from.to_owned(),
                    })
                }
            }
            _ => Ok(BackupSource::Local(from)),
        }
    }
}

/// The agent steps of a maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaintenanceStep {
    FenceStop,
    Isolate,
    Triage,
    Reindex,
    ExecRepair,
    Check,
    Serve,
    Reseed,
    UnfenceStart,
    Unfence,
}

impl MaintenanceStep {
    pub const ALL: [MaintenanceStep; 10] = [
        MaintenanceStep::FenceStop,
        MaintenanceStep::Isolate,
        MaintenanceStep::Triage,
        MaintenanceStep::Reindex,
        MaintenanceStep::ExecRepair,
        MaintenanceStep::Check,
        MaintenanceStep::Serve,
        MaintenanceStep::Reseed,
        MaintenanceStep::UnfenceStart,
        MaintenanceStep::Unfence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceStep::FenceStop => "fence_stop",
            MaintenanceStep::Isolate => "isolate",
            MaintenanceStep::Triage => "triage",
            MaintenanceStep::Reindex => "reindex",
            MaintenanceStep::ExecRepair => "exec_repair",
            MaintenanceStep::Check => "check",
            MaintenanceStep::Serve => "serve",
            MaintenanceStep::Reseed => "reseed",
            MaintenanceStep::UnfenceStart => "unfence_start",
            MaintenanceStep::Unfence => "unfence",
        }
    }
}

impl fmt::Display for MaintenanceStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceOrder {
    /// The window the step belongs to; the fence names it.
    pub window_id: String,
    pub step: MaintenanceStep,
    /// The findings the step is about (triage, check, reindex, exec_repair).
    pub targets: Vec<Finding>,
}

impl TryFrom<i32> for MaintenanceStep {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        use pb::MaintenanceStep as P;
        let field = "maintenance.step";
        Ok(match P::try_from(v) {
            Ok(P::FenceStop) => MaintenanceStep::FenceStop,
            Ok(P::Isolate) => MaintenanceStep::Isolate,
            Ok(P::Triage) => MaintenanceStep::Triage,
            Ok(P::Reindex) => MaintenanceStep::Reindex,
            Ok(P::ExecRepair) => MaintenanceStep::ExecRepair,
            Ok(P::Check) => MaintenanceStep::Check,
            Ok(P::Serve) => MaintenanceStep::Serve,
            Ok(P::Reseed) => MaintenanceStep::Reseed,
            Ok(P::UnfenceStart) => MaintenanceStep::UnfenceStart,
            Ok(P::Unfence) => MaintenanceStep::Unfence,
            Ok(P::Unspecified) => return Err(ModelError::Missing { field }),
            Err(_) => return Err(ModelError::Enum { field, value: v }),
        })
    }
}

impl From<MaintenanceStep> for pb::MaintenanceStep {
    fn from(s: MaintenanceStep) -> Self {
        use pb::MaintenanceStep as P;
        match s {
            MaintenanceStep::FenceStop => P::FenceStop,
            MaintenanceStep::Isolate => P::Isolate,
            MaintenanceStep::Triage => P::Triage,
            MaintenanceStep::Reindex => P::Reindex,
            MaintenanceStep::ExecRepair => P::ExecRepair,
            MaintenanceStep::Check => P::Check,
            MaintenanceStep::Serve => P::Serve,
            MaintenanceStep::Reseed => P::Reseed,
            MaintenanceStep::UnfenceStart => P::UnfenceStart,
            MaintenanceStep::Unfence => P::Unfence,
        }
    }
}

impl TryFrom<pb::StartOperationRequest> for StartOrder {
    type Error = ModelError;
    fn try_from(r: pb::StartOperationRequest) -> Result<Self, ModelError> {
        use pb::start_operation_request::Order as P;
        let order = match r.order.ok_or(ModelError::Missing { field: "order" })? {
            P::Testdb(t) => Order::Testdb {
                skip_logical_read: t.skip_logical_read,
                copy: CopyOptions::from_wire("testdb.mode", t.mode, t.allow_commit_stall)?,
            },
            P::Copy(c) => Order::Copy {
                copy: CopyOptions::from_wire("copy.mode", c.mode, c.allow_commit_stall)?,
            },
            P::Backup(b) => Order::Backup {
                untested: b.untested,
                copy: CopyOptions::from_wire("backup.mode", b.mode, b.allow_commit_stall)?,
            },
            P::Restore(o) => {
                if o.from.is_empty() {
                    return Err(ModelError::Missing {
                        field: "restore.from",
                    });
                }
                let stage = match pb::RestoreStage::try_from(o.stage) {
                    Ok(pb::RestoreStage::All) => RestoreStage::All,
                    Ok(pb::RestoreStage::Prepare) => RestoreStage::Prepare,
                    Ok(pb::RestoreStage::Swap) => RestoreStage::Swap,
                    Err(_) => {
                        return Err(ModelError::Enum {
                            field: "restore.stage",
                            value: o.stage,
                        });
                    }
                };
                let peer = o.peer.map(PeerSource::try_from).transpose()?;
                Order::Restore(RestoreOrder {
                    from: o.from,
                    target_time: Some(o.target_time).filter(|t| !t.is_empty()),
                    replace: o.replace,
                    stage,
                    peer,
                })
            }
            P::Maintenance(m) => {
                if m.window_id.is_empty() {
                    return Err(ModelError::Missing {
                        field: "maintenance.window_id",
                    });
                }
                Order::Maintenance(MaintenanceOrder {
                    step: MaintenanceStep::try_from(m.step)?,
                    window_id: m.window_id,
                    targets: m.targets.into_iter().map(Into::into).collect(),
                })
            }
        };
        Ok(StartOrder {
            set_generation: r.set_generation,
            request_id: r.request_id,
            join: r.join,
            order,
        })
    }
}

impl TryFrom<pb::PeerSource> for PeerSource {
    type Error = ModelError;
    fn try_from(p: pb::PeerSource) -> Result<Self, ModelError> {
        let required = |field: &'static str, v: String| {
            if v.is_empty() {
                Err(ModelError::Missing { field })
            } else {
                Ok(v)
            }
        };
        Ok(PeerSource {
            member: required("restore.peer.member", p.member)?,
            agent: required("restore.peer.agent", p.agent)?,
            address: required("restore.peer.address", p.address)?,
            file: required("restore.peer.file", p.file)?,
            grant_id: required("restore.peer.grant_id", p.grant_id)?,
            bytes: p.bytes,
            unpacked_bytes: p.unpacked_bytes,
        })
    }
}

impl From<PeerSource> for pb::PeerSource {
    fn from(p: PeerSource) -> Self {
        pb::PeerSource {
            member: p.member,
            agent: p.agent,
            address: p.address,
            file: p.file,
            grant_id: p.grant_id,
            bytes: p.bytes,
            unpacked_bytes: p.unpacked_bytes,
        }
    }
}

impl From<StartOrder> for pb::StartOperationRequest {
    fn from(o: StartOrder) -> Self {
        use pb::start_operation_request::Order as P;
        let order = match o.order {
            Order::Testdb {
                skip_logical_read,
                copy,
            } => P::Testdb(pb::TestdbOrder {
                skip_logical_read,
                mode: TestMode::to_wire(copy.mode),
                allow_commit_stall: copy.allow_commit_stall,
            }),
            Order::Copy { copy } => P::Copy(pb::CopyOrder {
                mode: TestMode::to_wire(copy.mode),
                allow_commit_stall: copy.allow_commit_stall,
            }),
            Order::Backup { untested, copy } => P::Backup(pb::BackupOrder {
                untested,
                mode: TestMode::to_wire(copy.mode),
                allow_commit_stall: copy.allow_commit_stall,
            }),
            Order::Restore(r) => P::Restore(pb::RestoreOrder {
                from: r.from,
                target_time: r.target_time.unwrap_or_default(),
                replace: r.replace,
                stage: match r.stage {
                    RestoreStage::All => pb::RestoreStage::All,
                    RestoreStage::Prepare => pb::RestoreStage::Prepare,
                    RestoreStage::Swap => pb::RestoreStage::Swap,
                } as i32,
                peer: r.peer.map(Into::into),
            }),
            Order::Maintenance(m) => P::Maintenance(pb::MaintenanceOrder {
                window_id: m.window_id,
                step: pb::MaintenanceStep::from(m.step) as i32,
                targets: m.targets.into_iter().map(Into::into).collect(),
            }),
        };
        pb::StartOperationRequest {
            set_generation: o.set_generation,
            request_id: o.request_id,
            join: o.join,
            order: Some(order),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(order: Order) {
        let o = StartOrder {
            set_generation: 7,
            request_id: "run-1/billing".into(),
            join: true,
            order,
        };
        let wire = pb::StartOperationRequest::from(o.clone());
        assert_eq!(StartOrder::try_from(wire).unwrap(), o);
    }

    #[test]
    fn every_order_survives_the_wire() {
        let online = CopyOptions {
            mode: Some(TestMode::Online),
            allow_commit_stall: false,
        };
        let cold = CopyOptions {
            mode: Some(TestMode::Cold),
            allow_commit_stall: true,
        };
        round_trip(Order::Testdb {
            skip_logical_read: true,
            copy: online,
        });
        round_trip(Order::Testdb {
            skip_logical_read: false,
            copy: CopyOptions::default(),
        });
        round_trip(Order::Copy { copy: cold });
        round_trip(Order::Backup {
            untested: true,
            copy: cold,
        });
        round_trip(Order::Restore(RestoreOrder {
            from: "daily".into(),
            target_time: Some("2026-11-21T12:30:00Z".into()),
            replace: true,
            stage: RestoreStage::Swap,
            peer: None,
        }));
        round_trip(Order::Restore(RestoreOrder {
            from: "db2:/var/backups/daily-20261121T043007Z-0_1-0_2.tar.zst".into(),
            target_time: None,
            replace: false,
            stage: RestoreStage::Prepare,
            peer: Some(PeerSource {
                member: "db2".into(),
                agent: "agent-db2".into(),
                address: "db2.example:7443".into(),
                file: "/var/backups/daily-20261121T043007Z-0_1-0_2.tar.zst".into(),
                grant_id: "g-0123".into(),
                bytes: 10,
                unpacked_bytes: 20,
            }),
        }));
        for step in MaintenanceStep::ALL {
            round_trip(Order::Maintenance(MaintenanceOrder {
                window_id: "w-1".into(),
                step,
                targets: vec![Finding {
                    database: "db".into(),
                    relation: "i".into(),
                    kind: "index".into(),
                    message: "m".into(),
                }],
            }));
        }
    }

    fn refused(r: pb::StartOperationRequest) -> String {
        StartOrder::try_from(r).unwrap_err().to_string()
    }

    #[test]
    fn a_missing_or_malformed_field_is_refused_with_its_name() {
        use pb::start_operation_request::Order as P;
        assert_eq!(
            refused(pb::StartOperationRequest::default()),
            "field `order` is required"
        );
        let restore = |from: &str, stage: i32| pb::StartOperationRequest {
            order: Some(P::Restore(pb::RestoreOrder {
                from: from.into(),
                stage,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(refused(restore("", 0)), "field `restore.from` is required");
        assert_eq!(
            refused(restore("daily", 9)),
            "field `restore.stage`: unknown enum value 9"
        );
        let step = |window: &str, step: i32| pb::StartOperationRequest {
            order: Some(P::Maintenance(pb::MaintenanceOrder {
                window_id: window.into(),
                step,
                targets: vec![],
            })),
            ..Default::default()
        };
        assert_eq!(
            refused(step("", 1)),
            "field `maintenance.window_id` is required"
        );
        assert_eq!(
            refused(step("w", 0)),
            "field `maintenance.step` is required"
        );
        assert_eq!(
            refused(step("w", 42)),
            "field `maintenance.step`: unknown enum value 42"
        );
        let with_mode = |order| pb::StartOperationRequest {
            order: Some(order),
            ..Default::default()
        };
        assert_eq!(
            refused(with_mode(P::Testdb(pb::TestdbOrder {
                mode: 7,
                ..Default::default()
            }))),
            "field `testdb.mode`: unknown enum value 7"
        );
        assert_eq!(
            refused(with_mode(P::Copy(pb::CopyOrder {
                mode: -1,
                allow_commit_stall: false
            }))),
            "field `copy.mode`: unknown enum value -1"
        );
        assert_eq!(
            refused(with_mode(P::Backup(pb::BackupOrder {
                mode: 3,
                ..Default::default()
            }))),
            "field `backup.mode`: unknown enum value 3"
        );
    }

    #[test]
    fn from_names_a_kind_a_file_a_remote_key_or_a_file_on_another_member() {
        use BackupSource::*;
        let p = |s| BackupSource::parse(s);
        assert_eq!(p("daily"), Ok(Local("daily")));
        assert_eq!(p("/b/daily.tar.zst"), Ok(Local("/b/daily.tar.zst")));
        // A colon inside a path is not a member.
        assert_eq!(p("/b/x:y.tar.zst"), Ok(Local("/b/x:y.tar.zst")));
        assert_eq!(
            p("remote:billing/backups/x"),
            Ok(Remote("billing/backups/x"))
        );
        assert_eq!(
            p("db2:/var/b/daily.tar.zst"),
            Ok(Member {
                member: "db2",
                file: "/var/b/daily.tar.zst"
            })
        );
        assert_eq!(
            p("pitr-s1:/a"),
            Ok(Member {
                member: "pitr-s1",
                file: "/a"
            })
        );
        let e = p("db2:daily.tar.zst").unwrap_err().to_string();
        assert!(e.contains("MEMBER:/absolute/path"), "{e}");
        // Not a member name: local, and the agent says what is wrong.
        assert_eq!(p("a b:/x"), Ok(Local("a b:/x")));
    }

    #[test]
    fn a_peer_source_without_its_grant_is_refused_naming_the_field() {
        use pb::start_operation_request::Order as P;
        let r = pb::StartOperationRequest {
            order: Some(P::Restore(pb::RestoreOrder {
                from: "db2:/x".into(),
                peer: Some(pb::PeerSource {
                    member: "db2".into(),
                    agent: "db2".into(),
                    address: "h:1".into(),
                    file: "/x".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(refused(r), "field `restore.peer.grant_id` is required");
    }

    #[test]
    fn step_names_are_the_plan_documents_names() {
        for s in MaintenanceStep::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }
}
