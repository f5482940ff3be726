//! The controller's gRPC server (`tandem.v1.Controller`).
//!
//! Every handler first learns who calls from the peer certificate: agents
//! may only register, heartbeat and report events (for their own name);
//! people (`spiffe://tandem/user/...`) use the rest. Every mutating call is
//! written to the audit log with the caller's identity and the trace id.

use std::sync::Arc;

use tandem_proto::identity::{Identity, peer_identity};
use tandem_proto::model::{AgentState, Facts, Heartbeat, Registration, timestamp_to_wire};
use tandem_proto::pb;
use tandem_proto::propagation::current_trace_id;
use tandem_proto::request::{
    self, BackupCall, BackupKind, LimitsCall, RepairChoice, RestoreCall, Sets, TestdbCall,
    WatchOperationCall, WindowCall,
};
use tokio::task::JoinSet;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span, warn};

use crate::agents::AgentClients;
use crate::error::ServiceError;
use crate::fleet::Fleet;
use crate::inventory::{AgentView, Inventory};
use crate::scheduler::{Policies, Scheduler};
use crate::sets::{MemberDecl, SetDecl};
use crate::store::{SetRow, Store};

mod access;
pub use access::FOLLOWER_CALLS;
mod agents;
mod inventory;
mod maintenance;
mod restore;
mod runs;
mod sets;

pub struct ControllerService {
    pub inventory: Arc<Inventory>,
    pub store: Store,
    pub agents: Arc<AgentClients>,
    pub fleet: Arc<Fleet>,
    pub scheduler: Arc<Scheduler>,
    pub maintenance: Arc<crate::maintenance::Maintenance>,
    pub election: Arc<crate::leader::Election>,
}

fn policies_pb(p: &Policies) -> pb::Policies {
    pb::Policies {
        test: p.test.to_string(),
        archive_copy: p.archive_copy.to_string(),
        archive_file: p.archive_file,
        mode: p.mode.map(|m| m.to_string()).unwrap_or_default(),
        source: if p.overridden {
            "tandemctl"
        } else {
            "controller.toml"
        }
        .into(),
    }
}

type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[allow(clippy::result_large_err)]
fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    peer_identity(req)
}

/// `--repair`: "" or "auto" (REINDEX for index findings), or "exec".
/// A window call's repair, as the plan takes it.
fn exec_only(c: &WindowCall) -> bool {
    c.repair == RepairChoice::Exec
}

impl ControllerService {
    /// What a local result is checked against: the set's test policy, the
    /// member's last known role, the newest verdict, the set's log position.
    async fn local_context(
        &self,
        set: &str,
        agent: &str,
    ) -> Result<crate::verdicts::LocalContext, ServiceError> {
        let policy = self.scheduler.policies(set).await?.test;
        let newest = self.store.verdicts(set.to_owned(), 1).await?;
        let declared = self.inventory.declared();
        let set_lsn = declared
            .set(set)
            .into_iter()
            .flat_map(|s| s.members.iter())
            .filter_map(|m| self.inventory.get(&m.agent).and_then(|v| v.facts))
            .flat_map(|f| [f.current_lsn, f.received_lsn, f.replayed_lsn])
            .flatten()
            .max();
        Ok(crate::verdicts::LocalContext {
            policy_forbids: policy.signal().is_none().then(|| policy.to_string()),
            role: self
                .inventory
                .get(agent)
                .and_then(|v| v.facts)
                .map(|f| f.role),
            newest: newest.first().map(|v| v.at),
            set_lsn,
            now: jiff::Timestamp::now(),
        })
    }

    async fn end_window(
        &self,
        req: Request<pb::MaintenanceRequest>,
        ending: crate::maintenance::Ending,
        action: &'static str,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set});
        let result = self
            .audited(&who, action, args, async {
                self.require(&who, action)?;
                self.maintenance.end(&r.set, ending, &who.uri()).await
            })
            .await;
        Ok(Response::new(pb::MaintenanceResponse {
            plan: None,
            window: Some(result?.into()),
        }))
    }

    /// A person's call: refused unless `access::CALLS` lets their role
    /// (controller.toml `[access]`) make it.
    fn require(&self, who: &Identity, call: &'static str) -> Result<(), ServiceError> {
        access::allowed(&self.inventory.config().access, who, call, None)
    }

    /// An agent's call, for its own name only (the rule in `access::CALLS`).
    fn require_agent(
        &self,
        who: &Identity,
        claimed: &str,
        call: &'static str,
    ) -> Result<(), ServiceError> {
        access::allowed(&self.inventory.config().access, who, call, Some(claimed))
    }

    /// Write an audit record for a mutating call; a failure to audit is logged
    /// loudly but does not change the call's outcome.
    /// Run one mutating call's work and audit it (identity, arguments,
    /// outcome, trace id) before the answer goes back, refusals included.
    async fn audited<T>(
        &self,
        who: &Identity,
        action: &'static str,
        args: serde_json::Value,
        work: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let result = work.await;
        self.record_audit(who, action, args, &result).await;
        result
    }

    async fn record_audit<T>(
        &self,
        who: &Identity,
        action: &'static str,
        args: serde_json::Value,
        outcome: &Result<T, ServiceError>,
    ) {
        let outcome = match outcome {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        if let Err(e) = self
            .store
            .audit(
                who.uri(),
                action,
                args.to_string(),
                outcome,
                current_trace_id().unwrap_or_default(),
            )
            .await
        {
            warn!(error = %e, action, "cannot write the audit record");
        }
    }

    /// Ask each registered member's agent for live facts, in parallel.
    async fn member_views(&self, set: &SetDecl) -> Vec<pb::MemberView> {
        let timeout = self.inventory.config().status_timeout;
        let mut tasks = JoinSet::new();
        for (i, m) in set.members.iter().enumerate() {
            let view = self.inventory.get(&m.agent);
            let client = view
                .as_ref()
                .filter(|v| !v.row.address.is_empty())
                .map(|v| self.agents.client(&v.row.address));
            let span = info_span!("agent.status", agent = %m.agent, member = %m.name);
            tasks.spawn(
                async move {
                    let live = match client {
                        Some(Ok(mut c)) => {
                            match tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await {
                                Ok(Ok(r)) => r.into_inner().facts.and_then(|f| Facts::try_from(f).ok()),
                                Ok(Err(e)) => {
                                    warn!(code = ?e.code(), error = %e.message(), "agent status failed");
                                    None
                                }
                                Err(_) => {
                                    warn!(?timeout, "agent status timed out");
                                    None
                                }
                            }
                        }
                        Some(Err(e)) => {
                            warn!(error = %e, "cannot make a channel to the agent");
                            None
                        }
                        None => None,
                    };
                    (i, view, live)
                }
                .instrument(span),
            );
        }
        let mut out: Vec<Option<pb::MemberView>> = vec![None; set.members.len()];
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, view, live)) = joined else {
                continue;
            };
            let m = &set.members[i];
            let state = view
                .as_ref()
                .map(|v| v.row.state)
                .unwrap_or(AgentState::NeverSeen);
            let is_live = live.is_some();
            let facts = live.or_else(|| view.and_then(|v| v.facts));
            out[i] = Some(pb::MemberView {
                name: m.name.clone(),
                agent: m.agent.clone(),
                agent_state: pb::AgentState::from(state) as i32,
                facts: facts.map(Into::into),
                live: is_live,
            });
        }
        out.into_iter().flatten().collect()
    }
}

/// The set is in the inventory, and so is `member` in it.
fn check_member(
    inventory: &Inventory,
    set: &str,
    member: Option<&str>,
) -> Result<(), ServiceError> {
    if inventory.set(set).is_none() {
        return Err(ServiceError::UnknownSet {
            set: set.to_owned(),
        });
    }
    if let Some(m) = member
        && inventory
            .set(set)
            .and_then(|s| s.member(m).cloned())
            .is_none()
    {
        return Err(ServiceError::UnknownMember {
            set: set.to_owned(),
            member: m.to_owned(),
        });
    }
    Ok(())
}

fn agent_info(v: AgentView) -> pb::AgentInfo {
    pb::AgentInfo {
        name: v.row.name,
        set: v.row.set,
        member: v.row.member,
        address: v.row.address,
        state: pb::AgentState::from(v.row.state) as i32,
        last_seen: (v.row.state != AgentState::NeverSeen)
            .then(|| timestamp_to_wire(v.row.last_seen)),
        agent_version: v.row.agent_version,
        facts: v.facts.map(Into::into),
        cert_not_after: v.cert_not_after.map(timestamp_to_wire),
    }
}

/// A member as sent; names are checked with the whole set (`sets::check`).
fn member_decl(m: pb::MemberDecl) -> MemberDecl {
    MemberDecl {
        agent: if m.agent.is_empty() {
            m.name.clone()
        } else {
            m.agent
        },
        host: (!m.host.is_empty()).then_some(m.host),
        name: m.name,
    }
}

fn inventory_set(r: SetRow) -> pb::InventorySet {
    pb::InventorySet {
        name: r.stored.decl.name,
        generation: r.generation,
        members: r
            .stored
            .decl
            .members
            .into_iter()
            .map(|m| pb::MemberDecl {
                name: m.name,
                agent: m.agent,
                host: m.host.unwrap_or_default(),
            })
            .collect(),
        source: r.source,
        changed_at: r.changed_at.map(timestamp_to_wire),
        changed_by: r.changed_by,
    }
}

fn members_json(ms: &[pb::MemberDecl]) -> serde_json::Value {
    ms.iter()
        .map(|m| serde_json::json!({"name": m.name, "agent": m.agent, "host": m.host}))
        .collect()
}

#[tonic::async_trait]
/// The tonic service: each call hands on to its area's method of the same
/// name (`agents`, `sets`, `runs`, `maintenance`, `inventory`, `restore`);
/// inherent methods take precedence, so `ControllerService::x(self, ..)`
/// is the area's.
impl pb::controller_server::Controller for ControllerService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        ControllerService::register(self, req).await
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        ControllerService::heartbeat(self, req).await
    }

    async fn report_event(
        &self,
        req: Request<pb::ReportEventRequest>,
    ) -> Result<Response<pb::ReportEventResponse>, Status> {
        ControllerService::report_event(self, req).await
    }

    async fn request_test(
        &self,
        req: Request<pb::RequestTestRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        ControllerService::request_test(self, req).await
    }

    async fn report_local_result(
        &self,
        req: Request<pb::ReportLocalResultRequest>,
    ) -> Result<Response<pb::ReportLocalResultResponse>, Status> {
        ControllerService::report_local_result(self, req).await
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        ControllerService::list_agents(self, req).await
    }

    async fn show_sets(
        &self,
        req: Request<pb::ShowSetsRequest>,
    ) -> Result<Response<pb::ShowSetsResponse>, Status> {
        ControllerService::show_sets(self, req).await
    }

    async fn controllers(
        &self,
        req: Request<pb::ControllersRequest>,
    ) -> Result<Response<pb::ControllersResponse>, Status> {
        self.require(&caller(&req)?, "Controllers")?;
        let answer = self.election.describe().await.map_err(ServiceError::from)?;
        Ok(Response::new(answer))
    }

    async fn start_testdb(
        &self,
        req: Request<pb::StartTestdbRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        ControllerService::start_testdb(self, req).await
    }

    type WatchRunStream = Stream<pb::RunProgress>;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        ControllerService::watch_run(self, req).await
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        ControllerService::cancel_run(self, req).await
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        ControllerService::history(self, req).await
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        ControllerService::set_policy(self, req).await
    }

    async fn limits(
        &self,
        req: Request<pb::LimitsRequest>,
    ) -> Result<Response<pb::LimitsResponse>, Status> {
        ControllerService::limits(self, req).await
    }

    async fn maintenance_plan(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        ControllerService::maintenance_plan(self, req).await
    }

    async fn maintenance_open(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        ControllerService::maintenance_open(self, req).await
    }

    async fn maintenance_close(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        ControllerService::maintenance_close(self, req).await
    }

    async fn maintenance_abort(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        ControllerService::maintenance_abort(self, req).await
    }

    async fn maintenance_show(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        ControllerService::maintenance_show(self, req).await
    }

    async fn audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        ControllerService::audit(self, req).await
    }

    async fn list_inventory(
        &self,
        req: Request<pb::ListInventoryRequest>,
    ) -> Result<Response<pb::ListInventoryResponse>, Status> {
        ControllerService::list_inventory(self, req).await
    }

    async fn add_set(
        &self,
        req: Request<pb::AddSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        ControllerService::add_set(self, req).await
    }

    async fn change_set(
        &self,
        req: Request<pb::ChangeSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        ControllerService::change_set(self, req).await
    }

    async fn remove_set(
        &self,
        req: Request<pb::RemoveSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        ControllerService::remove_set(self, req).await
    }

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        ControllerService::backup(self, req).await
    }

    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        ControllerService::list_backups(self, req).await
    }

    async fn plan_wal_prune(
        &self,
        req: Request<pb::WalPruneRequest>,
    ) -> Result<Response<pb::WalPruneResponse>, Status> {
        ControllerService::plan_wal_prune(self, req).await
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        ControllerService::restore(self, req).await
    }

    async fn restore_plan(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestorePlanResponse>, Status> {
        ControllerService::restore_plan(self, req).await
    }

    type WatchOperationStream = Stream<pb::Progress>;

    async fn watch_operation(
        &self,
        req: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        ControllerService::watch_operation(self, req).await
    }
}
