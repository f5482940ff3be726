//! The agent's gRPC server (`tandem.v1.Agent`).
//!
//! Only the controller may call it: [`require_controller`] runs before every
//! handler and refuses any other certificate identity, saying so in the log
//! (caller, address, reason; once per caller and address every 10 s,
//! [`log_refusal`], which `crate::peer` uses too). The one service other
//! agents may call is `AgentPeer` (`crate::peer`), and only with a grant
//! this service's `GrantBackup` gave at the controller's request. Long
//! operations never run inside a handler: `StartOperation` hands them to
//! [`Operations`] and returns the id; `Watch` streams the operation's
//! `watch` channel (a task per watcher, ending when the client goes away or
//! the operation ends).

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use tandem_proto::identity::{Identity, identity_of_certificate, peer_identity};
use tandem_proto::model::timestamp_to_wire;
use tandem_proto::pb;
use tandem_proto::tls::Quiet;
use tonic::{Request, Response, Status};
use tracing::warn;

use tandem_proto::order::StartOrder;

use crate::engine::Engine;
use crate::journal::{OpKind, OpRecord, OpState, StepOutcome};
use crate::ops::{AdmitError, Operations, Watched};
use crate::orders::StartError;
use crate::steps::Progress;

/// What the service needs to answer.
pub struct AgentService<E> {
    pub agent: String,
    pub set: String,
    pub member: String,
    pub engine: Arc<E>,
    pub ops: Arc<Operations<E>>,
    /// The fetches of backup files granted to other agents (`crate::peer`).
    pub grants: Arc<crate::backup::grants::Grants>,
}

/// Interceptor: the caller must present the controller's certificate.
#[allow(clippy::result_large_err)]
pub fn require_controller(req: Request<()>) -> Result<Request<()>, Status> {
    let refusal = match peer_identity(&req) {
        Ok(Identity::Controller) => return Ok(req),
        Ok(other) => Status::permission_denied(format!(
            "{other} may not call an agent: agents take orders only from {}",
            Identity::Controller
        )),
        Err(status) => status,
    };
    log_refusal(
        &req,
        &refusal,
        "call refused: only the controller may call an agent",
    );
    Err(refusal)
}

/// Say a refused call in the log (caller, address, reason), once per
/// caller and address every 10 s.
pub fn log_refusal<T>(req: &Request<T>, refusal: &Status, what: &'static str) {
    /// Refusals said in the log, once per caller and address every 10 s.
    static REFUSED: LazyLock<Quiet<(String, Option<IpAddr>)>> = LazyLock::new(Quiet::default);
    let peer = req.remote_addr();
    let caller = req
        .peer_certs()
        .and_then(|c| {
            c.first()
                .map(|leaf| identity_of_certificate(leaf).map(|i| i.to_string()))
        })
        .map(|r| r.unwrap_or_else(|e| e.to_string()))
        .unwrap_or_else(|| "no certificate".to_owned());
    if let Some(unlogged) = REFUSED.log((caller.clone(), peer.map(|p| p.ip())), Instant::now()) {
        warn!(
            caller = %caller,
            peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
            reason = %refusal.message(),
            not_logged_since = unlogged,
            "{what}"
        );
    }
}

type ProgressStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Progress, Status>> + Send>>;

fn start_status(e: StartError) -> Status {
    let msg = e.to_string();
    match e {
        StartError::Admit(AdmitError::ShuttingDown) => Status::unavailable(msg),
        StartError::Admit(AdmitError::Journal(_)) => Status::internal(msg),
        StartError::Admit(_)
        | StartError::Refused(_)
        | StartError::RestoreRefused(_)
        | StartError::NoBackupConfig => Status::failed_precondition(msg),
    }
}

fn op_state(s: OpState) -> pb::OperationState {
    match s {
        OpState::Running => pb::OperationState::Running,
        OpState::Succeeded => pb::OperationState::Succeeded,
        OpState::ErrorsFound => pb::OperationState::ErrorsFound,
        OpState::Failed => pb::OperationState::Failed,
        OpState::Cancelled => pb::OperationState::Cancelled,
        OpState::Interrupted => pb::OperationState::Interrupted,
    }
}

/// The wire form of a journal record.
pub fn result_of(r: &OpRecord) -> pb::OperationResult {
    pb::OperationResult {
        operation_id: r.id.clone(),
        kind: match r.kind {
            OpKind::Copy => pb::OperationKind::Copy,
            OpKind::Testdb => pb::OperationKind::Testdb,
            OpKind::Backup => pb::OperationKind::Backup,
            OpKind::Restore => pb::OperationKind::Restore,
            OpKind::Maintenance => pb::OperationKind::Maintenance,
        } as i32,
        state: op_state(r.state) as i32,
        started_at: Some(timestamp_to_wire(r.started_at)),
        finished_at: r.finished_at.map(timestamp_to_wire),
        tested_lsn: r.tested_lsn.clone().unwrap_or_default(),
        findings: r.findings.iter().cloned().map(Into::into).collect(),
        reason: r.reason.clone().unwrap_or_default(),
        output_path: r
            .output_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        standby_downtime_seconds: r.standby_downtime_seconds,
        mode: r.mode.clone().unwrap_or_default(),
        copy_method: r.copy_method.clone().unwrap_or_default(),
        copy_note: r.copy_note.clone().unwrap_or_default(),
        warnings: r.warnings.clone(),
        coverage: r.coverage.clone(),
        request_id: r.request_id.clone(),
        notes: r.notes.clone(),
        backup_path: r
            .backup_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        maintenance: r.outcome.as_ref().map(outcome_of),
    }
}

fn outcome_of(o: &StepOutcome) -> pb::MaintenanceOutcome {
    pb::MaintenanceOutcome {
        message: o.message.clone(),
        findings: o.findings.iter().cloned().map(Into::into).collect(),
        relations: o
            .relations
            .iter()
            .map(|r| pb::RelationSize {
                database: r.database.clone(),
                relation: r.relation.clone(),
                is_index: r.is_index,
                bytes: r.bytes,
            })
            .collect(),
        unresolved: o.unresolved.clone(),
        facts: o.facts.clone().map(Into::into),
        fenced: o.fenced,
    }
}

fn progress_of(p: &Progress) -> pb::Progress {
    let done = p.record.state.is_final();
    pb::Progress {
        operation_id: p.record.id.clone(),
        state: op_state(p.record.state) as i32,
        step: p.record.step.clone(),
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        message: p.message.clone(),
        at: Some(timestamp_to_wire(jiff::Timestamp::now())),
        result: done.then(|| result_of(&p.record)),
    }
}

#[tonic::async_trait]
impl<E: Engine> pb::agent_server::Agent for AgentService<E> {
    #[tracing::instrument(skip_all, fields(agent = %self.agent))]
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let facts = self.engine.facts().await;
        tracing::debug!(role = %facts.role, state = %facts.state_word(), "status read");
        Ok(Response::new(pb::StatusResponse {
            agent: self.agent.clone(),
            set: self.set.clone(),
            member: self.member.clone(),
            facts: Some(facts.into()),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            default_mode: tandem_proto::model::TestMode::to_wire(Some(
                self.ops.config().testdb.mode,
            )),
        }))
    }

    #[tracing::instrument(skip_all, fields(agent = %self.agent))]
    async fn start_operation(
        &self,
        req: Request<pb::StartOperationRequest>,
    ) -> Result<Response<pb::StartOperationResponse>, Status> {
        let order = StartOrder::try_from(req.into_inner())?;
        let id = crate::orders::start(&self.ops, order)
            .await
            .map_err(start_status)?;
        Ok(Response::new(pb::StartOperationResponse {
            operation_id: id,
        }))
    }

    type WatchStream = ProgressStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = req.into_inner().operation_id;
        let watched = self
            .ops
            .watch(&id)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("no operation `{id}` on this agent")))?;
        let stream: ProgressStream = match watched {
            Watched::Finished(rec) => {
                let p = Progress {
                    bytes_done: rec.bytes_copied,
                    bytes_total: rec.bytes_copied,
                    message: "finished".into(),
                    record: *rec,
                };
                Box::pin(tokio_stream::once(Ok(progress_of(&p))))
            }
            Watched::Live(mut rx) => Box::pin(async_stream(move |tx| async move {
                loop {
                    let p = rx.borrow_and_update().clone();
                    let done = p.record.state.is_final();
                    if tx.send(Ok(progress_of(&p))).await.is_err() || done {
                        return;
                    }
                    // Cancel-safe: changed() only waits for the next value.
                    if rx.changed().await.is_err() {
                        return;
                    }
                    // Throttle: at most ~10 messages a second per watcher,
                    // but the result goes out as soon as it is there.
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(100),
                        rx.wait_for(|p| p.record.state.is_final()),
                    )
                    .await;
                }
            })),
        };
        Ok(Response::new(stream))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let id = req.into_inner().operation_id;
        if self.ops.cancel(&id) {
            return Ok(Response::new(pb::CancelResponse {
                state: pb::OperationState::Running as i32,
            }));
        }
        match self
            .ops
            .journal()
            .read(&id)
            .map_err(|e| Status::internal(e.to_string()))?
        {
            Some(rec) => Ok(Response::new(pb::CancelResponse {
                state: op_state(rec.state) as i32,
            })),
            None => Err(Status::not_found(format!(
                "no operation `{id}` on this agent"
            ))),
        }
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let limit = req.into_inner().limit as usize;
        let mut ops = self
            .ops
            .journal()
            .list()
            .map_err(|e| Status::internal(e.to_string()))?;
        if limit > 0 {
            ops.truncate(limit);
        }
        Ok(Response::new(pb::ListOperationsResponse {
            operations: ops.iter().map(result_of).collect(),
        }))
    }

    async fn list_backups(
        &self,
        _req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let hosts = vec![self.host_space()];
        let Some(b) = self.ops.config().backup.clone() else {
            return Ok(Response::new(pb::ListBackupsResponse {
                set: self.set.clone(),
                backups: vec![],
                problems: vec![format!(
                    "agent `{}` has no [backup] section: it takes no backups",
                    self.agent
                )],
                hosts,
                wal_archives: vec![],
            }));
        };
        let wal_dir = b.wal_archive.clone();
        let list = tokio::task::spawn_blocking(move || crate::backup::describe_all(&b.dir))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut wal_archives = vec![];
        if let Some(dir) = wal_dir {
            let location = dir.display().to_string();
            let read = tokio::task::spawn_blocking(move || crate::backup::wal::check(&dir))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            wal_archives.push(match read {
                Ok(c) => c.to_wire(&location),
                Err(e) => pb::WalArchive {
                    location,
                    problem: e.to_string(),
                    ..Default::default()
                },
            });
        }
        let wire = |b: crate::backup::BackupInfo, member: &str| pb::BackupInfo {
            file: b.file.display().to_string(),
            kind: b.kind.as_str().to_owned(),
            taken_at: Some(timestamp_to_wire(b.taken_at)),
            bytes: b.bytes,
            unpacked_bytes: b.unpacked_bytes,
            start_lsn: b.start_lsn.to_string(),
            end_lsn: b.end_lsn.to_string(),
            verified: b.verified,
            problem: b.problem.unwrap_or_default(),
            member: member.to_owned(),
        };
        let mut backups: Vec<pb::BackupInfo> =
            list.into_iter().map(|b| wire(b, &self.member)).collect();
        let mut problems = vec![];
        // The set's backups in the remote store, named as `--from` takes them.
        if let Some(r) = &self.ops.config().remote {
            let location = format!("remote:{}/wal", self.set);
            let listed = tokio::time::timeout(REMOTE_LIST_BUDGET, async {
                let store = crate::backup::remote::Remote::open(r).map_err(|e| e.to_string())?;
                let (backups, wal) =
                    tokio::join!(store.describe(&self.set), store.wal_continuity(&self.set));
                Ok::<_, String>((
                    backups.map_err(|e| e.to_string())?,
                    wal.map_err(|e| e.to_string()),
                ))
            })
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "it did not answer within {REMOTE_LIST_BUDGET:?}; its backups are not listed"
                ))
            });
            match listed {
                Ok((list, wal)) => {
                    backups.extend(list.into_iter().map(|b| wire(b.info(), REMOTE_MEMBER)));
                    let mut w = match wal {
                        Ok(c) => c.to_wire(&location),
                        Err(e) => pb::WalArchive {
                            location,
                            problem: e,
                            ..Default::default()
                        },
                    };
                    w.member = REMOTE_MEMBER.to_owned();
                    wal_archives.push(w);
                }
                Err(e) => problems.push(format!("the remote store could not be listed: {e}")),
            }
        }
        Ok(Response::new(pb::ListBackupsResponse {
            set: self.set.clone(),
            backups,
            problems,
            hosts,
            wal_archives,
        }))
    }

    async fn plan_wal_prune(
        &self,
        _req: Request<pb::WalPruneRequest>,
    ) -> Result<Response<pb::WalPruneResponse>, Status> {
        let cfg = self.ops.config();
        if cfg.backup.is_none() {
            return Ok(Response::new(pb::WalPruneResponse {
                set: self.set.clone(),
                plans: vec![],
                problems: vec![format!(
                    "agent `{}` has no [backup] section: it keeps no WAL archive",
                    self.agent
                )],
            }));
        }
        // Read-only: lists the backups and the WAL, removes nothing.
        let report = tokio::time::timeout(
            REMOTE_LIST_BUDGET,
            crate::backup::wal_retention::run(cfg, jiff::Timestamp::now(), true),
        )
        .await;
        let (plans, problems) = match report {
            Ok(r) => (r.places.into_iter().map(wal_plan_to_wire).collect(), vec![]),
            Err(_) => (
                vec![],
                vec![format!(
                    "the plan took longer than {REMOTE_LIST_BUDGET:?} (is the remote store slow?)"
                )],
            ),
        };
        Ok(Response::new(pb::WalPruneResponse {
            set: self.set.clone(),
            plans,
            problems,
        }))
    }

    #[tracing::instrument(skip_all, fields(agent = %self.agent))]
    async fn grant_backup(
        &self,
        req: Request<pb::GrantBackupRequest>,
    ) -> Result<Response<pb::GrantBackupResponse>, Status> {
        self.grant(req.into_inner()).await.map(Response::new)
    }
}

/// A place's retention plan as `PlanWalPrune` answers it.
fn wal_plan_to_wire(p: crate::backup::wal_retention::PlaceReport) -> pb::WalPrunePlan {
    let mut w = pb::WalPrunePlan {
        location: p.location,
        problem: p.problem.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(plan) = p.plan {
        w.bytes = plan.bytes();
        w.files = plan.delete.into_iter().map(|d| d.name).collect();
        if let Some(b) = plan.boundary {
            w.boundary_backup = b.backup;
            w.boundary_start_lsn = b.start_lsn.to_string();
            w.first_kept_segment = b.first_kept_segment;
        }
        w.kept_in_window = plan.kept_in_window;
        w.why = plan.why;
    }
    w
}

impl<E: Engine> AgentService<E> {
    /// Free space where a restore would unpack (beside the data directory)
    /// and where a fetched backup would land.
    fn host_space(&self) -> pb::HostSpace {
        let cfg = self.ops.config();
        let data_parent = self
            .engine
            .data_dir()
            .parent()
            .unwrap_or(std::path::Path::new("/"))
            .to_owned();
        // A directory not made yet: the filesystem it would be made on.
        let free = |d: &std::path::Path| {
            d.ancestors()
                .find(|a| a.exists())
                .and_then(|a| crate::files::free_bytes(a).ok())
                .unwrap_or(0)
        };
        let (backup_free_bytes, backup_same_fs) = cfg.backup.as_ref().map_or((0, false), |b| {
            (
                free(&b.dir),
                crate::files::same_filesystem(&b.dir, &data_parent),
            )
        });
        pb::HostSpace {
            member: String::new(),
            data_free_bytes: free(&data_parent),
            reserve_bytes: cfg.restore.free_space_reserve_mib.saturating_mul(1 << 20),
            backup_free_bytes,
            backup_same_fs,
        }
    }

    async fn grant(&self, r: pb::GrantBackupRequest) -> Result<pb::GrantBackupResponse, Status> {
        use crate::backup::grants::GrantError;
        let refused = |e: GrantError| {
            warn!(peer = %r.peer_agent, file = %r.file, reason = %e, "backup grant refused");
            match e {
                GrantError::BadPeer { .. } => Status::invalid_argument(e.to_string()),
                GrantError::Io { .. } => Status::internal(e.to_string()),
                GrantError::NoBackupDir
                | GrantError::Backup(_)
                | GrantError::OutsideDir { .. }
                | GrantError::NotABackupName { .. }
                | GrantError::NotAFile { .. }
                | GrantError::Missing { .. } => Status::failed_precondition(e.to_string()),
            }
        };
        let dir = self
            .ops
            .config()
            .backup
            .as_ref()
            .map(|b| b.dir.clone())
            .ok_or_else(|| refused(GrantError::NoBackupDir))?;
        let (grants, file, peer) = (
            self.grants.clone(),
            std::path::PathBuf::from(&r.file),
            r.peer_agent.clone(),
        );
        let ttl = std::time::Duration::from_secs(r.ttl_seconds.into());
        let granted = tokio::task::spawn_blocking(move || {
            let g = grants.grant(&dir, &file, &peer, ttl, jiff::Timestamp::now())?;
            match crate::backup::read_meta(&g.file) {
                Ok(meta) => Ok((g, meta.unpacked_bytes)),
                Err(e) => {
                    grants.revoke(&g.id);
                    Err(GrantError::from(e))
                }
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (g, unpacked_bytes) = granted.map_err(refused)?;
        tracing::info!(
            peer = %g.peer,
            file = %g.file.display(),
            bytes = g.bytes,
            grant = %g.id,
            expires_at = %g.expires_at,
            "backup granted to a peer agent"
        );
        Ok(pb::GrantBackupResponse {
            grant_id: g.id,
            expires_at: Some(timestamp_to_wire(g.expires_at)),
            bytes: g.bytes,
            unpacked_bytes,
        })
    }
}

/// How long `ListBackups` waits for the remote store, so that the
/// controller (3 s `status_timeout` by default) still gets the local files.
const REMOTE_LIST_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

pub use tandem_proto::model::REMOTE_MEMBER;

/// A stream fed by a task through a channel (the task ends when the client goes away).
fn async_stream<F, Fut>(f: F) -> impl tokio_stream::Stream<Item = Result<pb::Progress, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::Progress, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
