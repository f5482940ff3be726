//! The controller's gRPC server (`tandem.v1.Controller`).
//!
//! Every handler first learns who calls from the peer certificate: agents
//! may only register, heartbeat and report events (for their own name);
//! people (`spiffe://tandem/user/...`) use the rest. Every mutating call is
//! written to the audit log with the caller's identity and the trace id.

use std::sync::Arc;

use tandem_proto::identity::{Identity, peer_identity};
use tandem_proto::model::{AgentState, Facts, Registration, timestamp_to_wire};
use tandem_proto::pb;
use tandem_proto::propagation::current_trace_id;
use tokio::task::JoinSet;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span, warn};

use crate::agents::AgentClients;
use crate::config::{Access, UserRole};
use crate::error::ServiceError;
use crate::fleet::Fleet;
use crate::inventory::{AgentView, Inventory};
use crate::scheduler::{Policies, Scheduler};
use crate::sets::{MemberDecl, SetDecl};
use crate::store::{SetRow, Store};

pub struct ControllerService {
    pub inventory: Arc<Inventory>,
    pub store: Store,
    pub agents: Arc<AgentClients>,
    pub fleet: Arc<Fleet>,
    pub scheduler: Arc<Scheduler>,
    pub maintenance: Arc<crate::maintenance::Maintenance>,
}

fn policies_pb(p: &Policies) -> pb::Policies {
    pb::Policies {
        test: p.test.to_string(),
        archive_copy: p.archive_copy.to_string(),
        archive_file: p.archive_file,
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

/// A person's call: refused unless their role (controller.toml `[access]`)
/// is at least `needed` (SPEC O1).
fn require_role(
    access: &Access,
    who: &Identity,
    needed: UserRole,
    action: &'static str,
) -> Result<(), ServiceError> {
    let Identity::User(name) = who else {
        return Err(ServiceError::Forbidden {
            identity: who.clone(),
            action,
            why: "only people (spiffe://tandem/user/...) may",
        });
    };
    let has = access.role_of(name);
    if has >= needed {
        Ok(())
    } else {
        Err(ServiceError::NeedsRole {
            identity: who.clone(),
            action,
            needed,
            has,
        })
    }
}

/// `--repair`: "" or "auto" (REINDEX for index findings), or "exec".
fn exec_only(r: &pb::MaintenanceRequest) -> Result<bool, ServiceError> {
    match r.repair.as_str() {
        "" | "auto" => Ok(false),
        "exec" => Ok(true),
        other => Err(ServiceError::Maintenance(format!(
            "unknown repair `{other}`: use auto (REINDEX for index findings, the exec repair for the rest) or exec (the exec repair for everything)"
        ))),
    }
}

fn require_agent(who: &Identity, claimed: &str, action: &'static str) -> Result<(), ServiceError> {
    match who {
        Identity::Agent(name) if name == claimed => Ok(()),
        Identity::Agent(_) => Err(ServiceError::NotYourName {
            identity: who.clone(),
            claimed: claimed.to_owned(),
        }),
        _ => Err(ServiceError::Forbidden {
            identity: who.clone(),
            action,
            why: "only agents may",
        }),
    }
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
        let result = async {
            self.require(&who, UserRole::Admin, action)?;
            self.maintenance.end(&r.set, ending, &who.uri()).await
        }
        .await;
        self.audit(&who, action, args, &result).await;
        Ok(Response::new(pb::MaintenanceResponse {
            json: serde_json::to_string(&result?).expect("windows serialize"),
        }))
    }

    fn require(
        &self,
        who: &Identity,
        needed: UserRole,
        action: &'static str,
    ) -> Result<(), ServiceError> {
        require_role(&self.inventory.config().access, who, needed, action)
    }

    /// Write an audit record for a mutating call; a failure to audit is logged
    /// loudly but does not change the call's outcome.
    async fn audit<T>(
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

/// The sets are in the inventory, and so is `member` in the one set it needs.
fn check_sets(
    inventory: &Inventory,
    sets: &[String],
    member: Option<&str>,
) -> Result<(), ServiceError> {
    if sets.is_empty() {
        return Err(ServiceError::NoSets);
    }
    for name in sets {
        if inventory.set(name).is_none() {
            return Err(ServiceError::UnknownSet { set: name.clone() });
        }
    }
    if let Some(m) = member {
        let [set] = sets else {
            return Err(ServiceError::MemberNeedsOneSet);
        };
        if inventory
            .set(set)
            .and_then(|s| s.member(m).cloned())
            .is_none()
        {
            return Err(ServiceError::UnknownMember {
                set: set.clone(),
                member: m.to_owned(),
            });
        }
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
impl pb::controller_server::Controller for ControllerService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let who = caller(&req)?;
        let raw = req.into_inner();
        let args = serde_json::json!({"agent": raw.agent, "address": raw.address, "set": raw.set, "member": raw.member, "version": raw.agent_version});
        let agent = raw.agent.clone();
        let result = async {
            require_agent(&who, &raw.agent, "Register")?;
            let reg = Registration::try_from(raw)?;
            self.inventory.register(reg).await
        }
        .await;
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        if self.inventory.registration_news(&agent, outcome) {
            self.audit(&who, "Register", args, &result).await;
        }
        let generation = result?;
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_interval_ms: self.inventory.config().heartbeat_interval.as_millis() as u64,
            set_generation: generation,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let who = caller(&req)?;
        let hb = req.into_inner();
        require_agent(&who, &hb.agent, "Heartbeat")?;
        let facts = Facts::try_from(
            hb.facts
                .ok_or(tandem_proto::model::ModelError::Missing { field: "facts" })
                .map_err(ServiceError::from)?,
        )
        .map_err(ServiceError::from)?;
        let known = self.inventory.heartbeat(&hb.agent, facts).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            register_again: !known,
        }))
    }

    async fn report_event(
        &self,
        req: Request<pb::ReportEventRequest>,
    ) -> Result<Response<pb::ReportEventResponse>, Status> {
        let who = caller(&req)?;
        let ev = req.into_inner();
        let args = serde_json::json!({"agent": ev.agent, "event": ev.event, "code": ev.code, "operation_id": ev.operation_id, "message": ev.message});
        let result = require_agent(&who, &ev.agent, "ReportEvent");
        if result.is_ok() {
            info!(agent = %ev.agent, event = %ev.event, code = %ev.code, operation = %ev.operation_id, message = %ev.message, "agent event");
        }
        self.audit(&who, "ReportEvent", args, &result).await;
        result?;
        Ok(Response::new(pb::ReportEventResponse {}))
    }

    async fn request_test(
        &self,
        req: Request<pb::RequestTestRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"agent": r.agent, "signal": r.signal});
        let result = async {
            require_agent(&who, &r.agent, "RequestTest")?;
            let set = self
                .inventory
                .declared()
                .member_of(&r.agent)
                .map(|(s, _)| s.name.clone())
                .ok_or_else(|| ServiceError::NotDeclared {
                    agent: r.agent.clone(),
                })?;
            let policy = self.scheduler.policies(&set).await?.test;
            if policy.signal().map(|s| s.name()) != Some(r.signal.as_str()) {
                return Err(ServiceError::NotSignalPolicy {
                    set,
                    policy: policy.to_string(),
                    signal: r.signal.clone(),
                });
            }
            Ok(self
                .fleet
                .start_run(
                    vec![set],
                    None,
                    "signal",
                    current_trace_id().unwrap_or_default(),
                )
                .await?)
        }
        .await;
        self.audit(&who, "RequestTest", args, &result).await;
        Ok(Response::new(pb::StartRunResponse {
            run_id: result?,
            skipped: vec![],
        }))
    }

    async fn report_local_result(
        &self,
        req: Request<pb::ReportLocalResultRequest>,
    ) -> Result<Response<pb::ReportLocalResultResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let op = r
            .result
            .as_ref()
            .map(|x| x.operation_id.clone())
            .unwrap_or_default();
        let args = serde_json::json!({"agent": r.agent, "operation_id": op});
        let result = async {
            require_agent(&who, &r.agent, "ReportLocalResult")?;
            let declared = self.inventory.declared();
            let (set, member) =
                declared
                    .member_of(&r.agent)
                    .ok_or_else(|| ServiceError::NotDeclared {
                        agent: r.agent.clone(),
                    })?;
            let result = r
                .result
                .as_ref()
                .ok_or(tandem_proto::model::ModelError::Missing { field: "result" })?;
            let cx = self.local_context(&set.name, &member.agent).await?;
            crate::verdicts::check_local_result(&set.name, &member.name, result, &cx)?;
            let v = crate::verdicts::Verdict::from_result(&member.name, result, String::new());
            let message = format!(
                "agent {} tested member {} by itself while the controller was unreachable (operation {}): {}",
                r.agent,
                member.name,
                result.operation_id,
                v.kind.as_str()
            );
            crate::metrics::verdict(&set.name, &v);
            self.store.record_verdict(set.name.clone(), v).await?;
            self.store
                .set_event(set.name.clone(), "signal", message)
                .await?;
            Ok(())
        }
        .await;
        self.audit(&who, "ReportLocalResult", args, &result).await;
        result?;
        Ok(Response::new(pb::ReportLocalResultResponse {}))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "ListAgents")?;
        let agents = self.inventory.list().into_iter().map(agent_info).collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn show_sets(
        &self,
        req: Request<pb::ShowSetsRequest>,
    ) -> Result<Response<pb::ShowSetsResponse>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "ShowSets")?;
        let wanted = req.into_inner().sets;
        let cfg = self.inventory.config();
        let declared = self.inventory.declared();
        for name in &wanted {
            if declared.set(name).is_none() {
                return Err(ServiceError::UnknownSet { set: name.clone() }.into());
            }
        }
        let mut sets = Vec::new();
        for set in declared
            .sets
            .iter()
            .filter(|s| wanted.is_empty() || wanted.contains(&s.name))
        {
            let generation = self
                .store
                .generation(set.name.clone())
                .await
                .map_err(ServiceError::from)?
                .unwrap_or(1);
            let last = self
                .store
                .verdicts(set.name.clone(), 1)
                .await
                .map_err(ServiceError::from)?;
            let policies = self
                .scheduler
                .policies(&set.name)
                .await
                .map_err(ServiceError::from)?;
            let next_test = if self.fleet.set_active_since(&set.name).is_some() {
                None
            } else {
                policies.test.next_due(
                    &cfg.tz(),
                    jiff::Timestamp::now(),
                    last.first().map(|v| v.at),
                )
            };
            sets.push(pb::SetView {
                name: set.name.clone(),
                generation,
                members: self.member_views(set).await,
                verdict: Some(last.first().map(|v| v.to_pb()).unwrap_or(pb::Verdict {
                    kind: pb::VerdictKind::NeverTested as i32,
                    ..Default::default()
                })),
                policies: Some(policies_pb(&policies)),
                next_test: next_test.map(timestamp_to_wire),
            });
        }
        // Sets needing a repair first (SPEC C3), then in inventory order.
        sets.sort_by_key(|s| {
            s.verdict
                .as_ref()
                .is_none_or(|v| v.kind != pb::VerdictKind::Errors as i32)
        });
        Ok(Response::new(pb::ShowSetsResponse { sets }))
    }

    async fn start_testdb(
        &self,
        req: Request<pb::StartTestdbRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"sets": r.sets, "all": r.all, "member": r.member});
        let result = async {
            self.require(&who, UserRole::Operator, "StartTestdb")?;
            let declared = self.inventory.declared();
            let sets: Vec<String> = if r.all {
                declared.sets.iter().map(|s| s.name.clone()).collect()
            } else {
                r.sets.clone()
            };
            if sets.is_empty() {
                return Err(ServiceError::NoSets);
            }
            for name in &sets {
                if declared.set(name).is_none() {
                    return Err(ServiceError::UnknownSet { set: name.clone() });
                }
            }
            // A set held by a maintenance window: refused when named, left
            // out of --all with the reason.
            let mut skipped = Vec::new();
            let mut runnable = Vec::new();
            for name in sets {
                match self.fleet.held(&name) {
                    Some(why) if !r.all => return Err(ServiceError::Maintenance(why)),
                    Some(why) => skipped.push(pb::SkippedSet {
                        set: name,
                        reason: why,
                    }),
                    None => runnable.push(name),
                }
            }
            let sets = runnable;
            if sets.is_empty() {
                return Ok((String::new(), skipped));
            }
            let member = (!r.member.is_empty()).then(|| r.member.clone());
            if let Some(m) = &member {
                let [set] = &sets[..] else {
                    return Err(ServiceError::MemberNeedsOneSet);
                };
                if declared.set(set).and_then(|s| s.member(m)).is_none() {
                    return Err(ServiceError::UnknownMember {
                        set: set.clone(),
                        member: m.clone(),
                    });
                }
            }
            let run_id = self
                .fleet
                .start_run(
                    sets,
                    member,
                    "manual",
                    current_trace_id().unwrap_or_default(),
                )
                .await?;
            Ok((run_id, skipped))
        }
        .await;
        self.audit(&who, "StartTestdb", args, &result).await;
        let (run_id, skipped) = result?;
        Ok(Response::new(pb::StartRunResponse { run_id, skipped }))
    }

    type WatchRunStream = Stream<pb::RunProgress>;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "WatchRun")?;
        let id = req.into_inner().run_id;
        let run = self
            .fleet
            .get(&id)
            .await
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::UnknownRun { run: id })?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut seen = 0;
            let mut changes = run.subscribe();
            loop {
                let (events, done) = run.events_from(seen);
                seen += events.len();
                for ev in events {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
                // Cancel-safe: changed() only waits for the next event count.
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"run_id": r.run_id});
        let result = async {
            self.require(&who, UserRole::Operator, "CancelRun")?;
            let by = match &who {
                tandem_proto::identity::Identity::User(name) => name.clone(),
                other => other.uri(),
            };
            match self.fleet.cancel_run(&r.run_id, &by).await {
                Some(c) => Ok(c),
                None => match self.store.run(r.run_id.clone()).await? {
                    Some(_) => Err(ServiceError::RunFinished {
                        run: r.run_id.clone(),
                    }),
                    None => Err(ServiceError::UnknownRun {
                        run: r.run_id.clone(),
                    }),
                },
            }
        }
        .await;
        self.audit(&who, "CancelRun", args, &result).await;
        let c = result?;
        Ok(Response::new(pb::CancelRunResponse {
            queued: c.queued,
            stopping: c.stopping,
        }))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "History")?;
        let r = req.into_inner();
        let set = r.set.clone();
        if !self.inventory.ever_known(&set).await? {
            return Err(ServiceError::UnknownSet { set }.into());
        }
        let verdicts = self
            .store
            .verdicts(set.clone(), r.limit)
            .await
            .map_err(ServiceError::from)?;
        let events = self
            .store
            .set_events(set, r.limit)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::HistoryResponse {
            verdicts: verdicts.iter().map(|v| v.to_pb()).collect(),
            events: events
                .into_iter()
                .map(|e| pb::SetEvent {
                    at: Some(timestamp_to_wire(e.at)),
                    kind: e.kind,
                    message: e.message,
                })
                .collect(),
        }))
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "test": r.test, "archive_copy": r.archive_copy, "archive_file": r.archive_file, "reset": r.reset});
        let result = async {
            self.require(&who, UserRole::Admin, "SetPolicy")?;
            let cfg = self.inventory.config();
            if self.inventory.set(&r.set).is_none() {
                return Err(ServiceError::UnknownSet { set: r.set.clone() });
            }
            let parse = |what: &str, text: &Option<String>| -> Result<Option<crate::schedule::Policy>, ServiceError> {
                let Some(text) = text else { return Ok(None) };
                let p: crate::schedule::Policy = text
                    .parse()
                    .map_err(|e: crate::schedule::PolicyError| ServiceError::BadPolicy(format!("{what}: {e}")))?;
                if p.is_calendar() && cfg.time_zone.is_none() {
                    return Err(ServiceError::BadPolicy(format!(
                        "{what}: `{p}` is a calendar policy and controller.toml has no `time_zone`; set one (e.g. \"UTC\") and restart the controller, or use interval=SECONDS"
                    )));
                }
                Ok(Some(p))
            };
            let test = parse("test policy", &r.test)?;
            let archive_copy = parse("archive-copy policy", &r.archive_copy)?;
            if r.reset {
                return Ok(self.scheduler.set_policies(&r.set, None).await?);
            }
            let mut p = self.scheduler.policies(&r.set).await?;
            if let Some(t) = test {
                p.test = t;
            }
            if let Some(a) = archive_copy {
                p.archive_copy = a;
            }
            if let Some(f) = r.archive_file {
                p.archive_file = f;
            }
            Ok(self.scheduler.set_policies(&r.set, Some(&p)).await?)
        }
        .await;
        self.audit(&who, "SetPolicy", args, &result).await;
        Ok(Response::new(pb::SetPolicyResponse {
            policies: Some(policies_pb(&result?)),
        }))
    }

    async fn limits(
        &self,
        req: Request<pb::LimitsRequest>,
    ) -> Result<Response<pb::LimitsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let changing = r.reset || r.fleet.is_some() || r.per_host.is_some();
        if changing {
            let args =
                serde_json::json!({"fleet": r.fleet, "per_host": r.per_host, "reset": r.reset});
            let result = async {
                self.require(&who, UserRole::Admin, "Limits")?;
                let new = if r.reset {
                    None
                } else {
                    let cur = self.fleet.limits();
                    let l = crate::config::Limits {
                        fleet: r.fleet.unwrap_or(cur.fleet),
                        per_host: r.per_host.unwrap_or(cur.per_host),
                    };
                    if l.fleet == 0 || l.per_host == 0 {
                        return Err(ServiceError::BadLimits);
                    }
                    Some(l)
                };
                Ok(self.fleet.set_limits(new).await?)
            }
            .await;
            self.audit(&who, "Limits", args, &result).await;
            result?;
        } else {
            self.require(&who, UserRole::Viewer, "Limits")?;
        }
        let l = self.fleet.limits();
        let (waiting, running) = self.fleet.queue_lengths();
        Ok(Response::new(pb::LimitsResponse {
            fleet: l.fleet,
            per_host: l.per_host,
            overridden: self
                .fleet
                .limits_overridden()
                .await
                .map_err(ServiceError::from)?,
            running: running as u32,
            waiting: waiting as u32,
        }))
    }

    async fn maintenance_plan(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        self.require(&who, UserRole::Operator, "MaintenancePlan")?;
        let plan = self.maintenance.plan(&r.set, exec_only(&r)?).await?;
        Ok(Response::new(pb::MaintenanceResponse {
            json: serde_json::to_string(&plan).expect("plans serialize"),
        }))
    }

    async fn maintenance_open(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "reason": r.reason, "repair": r.repair});
        let result = async {
            self.require(&who, UserRole::Admin, "MaintenanceOpen")?;
            self.maintenance
                .open(
                    &r.set,
                    &r.reason,
                    exec_only(&r)?,
                    &who.uri(),
                    current_trace_id().unwrap_or_default(),
                )
                .await
        }
        .await;
        self.audit(&who, "MaintenanceOpen", args, &result).await;
        Ok(Response::new(pb::MaintenanceResponse {
            json: serde_json::to_string(&result?).expect("windows serialize"),
        }))
    }

    async fn maintenance_close(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        self.end_window(req, crate::maintenance::Ending::Close, "MaintenanceClose")
            .await
    }

    async fn maintenance_abort(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        self.end_window(req, crate::maintenance::Ending::Abort, "MaintenanceAbort")
            .await
    }

    async fn maintenance_show(
        &self,
        req: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::MaintenanceResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        self.require(&who, UserRole::Viewer, "MaintenanceShow")?;
        if self.inventory.set(&r.set).is_none() {
            return Err(ServiceError::UnknownSet { set: r.set }.into());
        }
        let w = self.maintenance.latest(&r.set).await?;
        Ok(Response::new(pb::MaintenanceResponse {
            json: w
                .map(|w| serde_json::to_string(&w).expect("windows serialize"))
                .unwrap_or_default(),
        }))
    }

    async fn audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "Audit")?;
        let rows = self
            .store
            .audit_log(req.into_inner().limit)
            .await
            .map_err(ServiceError::from)?;
        let entries = rows
            .into_iter()
            .map(|r| pb::AuditEntry {
                id: r.id,
                at: Some(timestamp_to_wire(r.at)),
                identity: r.identity,
                action: r.action,
                arguments: r.arguments,
                outcome: r.outcome,
                trace_id: r.trace_id,
            })
            .collect();
        Ok(Response::new(pb::AuditResponse { entries }))
    }

    async fn list_inventory(
        &self,
        req: Request<pb::ListInventoryRequest>,
    ) -> Result<Response<pb::ListInventoryResponse>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "ListInventory")?;
        let rows = self.inventory.set_rows(&req.into_inner().sets).await?;
        Ok(Response::new(pb::ListInventoryResponse {
            sets: rows.into_iter().map(inventory_set).collect(),
        }))
    }

    async fn add_set(
        &self,
        req: Request<pb::AddSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "members": members_json(&r.members), "replace": r.replace, "from_config": r.from_config});
        let result = async {
            self.require(&who, UserRole::Admin, "AddSet")?;
            let set = if r.from_config {
                let cfg = self.inventory.config();
                let declared = cfg
                    .sets
                    .iter()
                    .find(|s| s.name == r.set)
                    .ok_or_else(|| ServiceError::NotInConfig { set: r.set.clone() })?;
                SetDecl::from(declared)
            } else {
                if r.members.is_empty() {
                    return Err(ServiceError::NoMembersGiven);
                }
                SetDecl {
                    name: r.set.clone(),
                    members: r.members.iter().cloned().map(member_decl).collect(),
                }
            };
            let row = self.inventory.add_set(set, r.replace, &who).await?;
            // A set added again starts with the policies of controller.toml.
            self.scheduler.forget(&r.set);
            Ok(row)
        }
        .await;
        self.audit(&who, "AddSet", args, &result).await;
        Ok(Response::new(pb::InventorySetResponse {
            set: Some(inventory_set(result?)),
        }))
    }

    async fn change_set(
        &self,
        req: Request<pb::ChangeSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "add": members_json(&r.add), "change": members_json(&r.change), "remove": r.remove});
        let result = async {
            self.require(&who, UserRole::Admin, "ChangeSet")?;
            let changes = crate::inventory::MemberChanges {
                add: r.add.iter().cloned().map(member_decl).collect(),
                change: r
                    .change
                    .iter()
                    .map(|m| crate::inventory::MemberEdit {
                        name: m.name.clone(),
                        agent: (!m.agent.is_empty()).then(|| m.agent.clone()),
                        host: (!m.host.is_empty()).then(|| m.host.clone()),
                    })
                    .collect(),
                remove: r.remove.clone(),
            };
            if changes.add.is_empty() && changes.change.is_empty() && changes.remove.is_empty() {
                return Err(ServiceError::NothingChanges { set: r.set.clone() });
            }
            self.inventory.change_set(&r.set, changes, &who).await
        }
        .await;
        self.audit(&who, "ChangeSet", args, &result).await;
        Ok(Response::new(pb::InventorySetResponse {
            set: Some(inventory_set(result?)),
        }))
    }

    async fn remove_set(
        &self,
        req: Request<pb::RemoveSetRequest>,
    ) -> Result<Response<pb::InventorySetResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set});
        let result = async {
            self.require(&who, UserRole::Admin, "RemoveSet")?;
            if let Some(why) = self.fleet.held(&r.set) {
                return Err(ServiceError::Maintenance(format!(
                    "cannot remove it: {why}; close or abort the window first"
                )));
            }
            let row = self
                .inventory
                .remove_set(&r.set, &who, |set| self.fleet.active_run(set))
                .await?;
            // Its policies set with tandemctl go with it.
            self.scheduler.set_policies(&r.set, None).await?;
            Ok(row)
        }
        .await;
        self.audit(&who, "RemoveSet", args, &result).await;
        Ok(Response::new(pb::InventorySetResponse {
            set: Some(inventory_set(result?)),
        }))
    }

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "member": r.member,
            "archive_copy": r.archive_copy, "archive_file": r.archive_file});
        let result = async {
            self.require(&who, UserRole::Operator, "Backup")?;
            let sets = vec![r.set.clone()];
            let member = (!r.member.is_empty()).then(|| r.member.clone());
            check_sets(&self.inventory, &sets, member.as_deref())?;
            if let Some(why) = self.fleet.held(&r.set) {
                return Err(ServiceError::BadRequest(why));
            }
            let origin = match (r.archive_copy, r.archive_file) {
                (false, _) => crate::fleet::BACKUP_ORIGIN,
                (true, false) => crate::fleet::ARCHIVE_ORIGIN,
                (true, true) => crate::fleet::ARCHIVE_FILE_ORIGIN,
            };
            Ok(self
                .fleet
                .start_run(sets, member, origin, current_trace_id().unwrap_or_default())
                .await?)
        }
        .await;
        self.audit(&who, "Backup", args, &result).await;
        Ok(Response::new(pb::StartRunResponse {
            run_id: result?,
            skipped: vec![],
        }))
    }

    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "ListBackups")?;
        let set_name = req.into_inner().set;
        let Some(set) = self.inventory.set(&set_name) else {
            return Err(ServiceError::UnknownSet { set: set_name }.into());
        };
        let timeout = self.inventory.config().status_timeout;
        let mut tasks = JoinSet::new();
        for m in &set.members {
            let view = self.inventory.get(&m.agent);
            let client = view
                .as_ref()
                .filter(|v| !v.row.address.is_empty())
                .map(|v| self.agents.client(&v.row.address));
            let member = m.name.clone();
            let agent = m.agent.clone();
            tasks.spawn(async move {
                let answer = match client {
                    None => Err(format!("{member}: agent `{agent}` never registered")),
                    Some(Err(e)) => Err(format!("{member}: {e}")),
                    Some(Ok(mut c)) => {
                        match tokio::time::timeout(
                            timeout,
                            c.list_backups(pb::ListBackupsRequest::default()),
                        )
                        .await
                        {
                            Ok(Ok(r)) => Ok(r.into_inner()),
                            Ok(Err(e)) => {
                                Err(format!("{member}: agent `{agent}`: {}", e.message()))
                            }
                            Err(_) => Err(format!(
                                "{member}: agent `{agent}` did not answer within {timeout:?}"
                            )),
                        }
                    }
                };
                (member, answer)
            });
        }
        let mut out = pb::ListBackupsResponse {
            set: set.name.clone(),
            ..Default::default()
        };
        while let Some(joined) = tasks.join_next().await {
            let Ok((member, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(r) => {
                    for mut b in r.backups {
                        // A remote backup is listed by every member that
                        // shares the store: keep one, named by its key.
                        if b.file.starts_with("remote:") {
                            if out.backups.iter().any(|o| o.file == b.file) {
                                continue;
                            }
                        } else {
                            b.member = member.clone();
                        }
                        out.backups.push(b);
                    }
                    out.problems
                        .extend(r.problems.into_iter().map(|p| format!("{member}: {p}")));
                }
                Err(p) => out.problems.push(p),
            }
        }
        out.backups.sort_by(|a, b| {
            let t = |x: &pb::BackupInfo| x.taken_at.map(|t| (t.seconds, t.nanos));
            t(b).cmp(&t(a)).then_with(|| a.file.cmp(&b.file))
        });
        out.problems.sort();
        Ok(Response::new(out))
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "member": r.member, "from": r.from,
            "target_time": r.target_time, "replace": r.replace});
        let result = async {
            self.require(&who, UserRole::Admin, "Restore")?;
            let w = self
                .maintenance
                .open_restore(
                    &r.set,
                    (!r.member.is_empty()).then_some(r.member.as_str()),
                    crate::maintenance::plan::RestoreOrder {
                        from: r.from.clone(),
                        target_time: (!r.target_time.is_empty()).then(|| r.target_time.clone()),
                        replace: r.replace,
                    },
                    &who.uri(),
                    current_trace_id().unwrap_or_default(),
                )
                .await?;
            let o = w.restore.clone().unwrap_or_default();
            Ok::<_, ServiceError>(pb::RestoreResponse {
                set: w.set.clone(),
                member: o.member,
                agent: o.agent,
                operation_id: o.operation_id,
                window: serde_json::to_string(&w).expect("windows serialize"),
            })
        }
        .await;
        self.audit(&who, "Restore", args, &result).await;
        Ok(Response::new(result?))
    }

    type WatchOperationStream = Stream<pb::Progress>;

    async fn watch_operation(
        &self,
        req: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "WatchOperation")?;
        let r = req.into_inner();
        let t = crate::restore::target(&self.inventory, &r.set, Some(&r.member))?;
        let mut client =
            self.agents
                .client(&t.address)
                .map_err(|e| ServiceError::AgentUnreachable {
                    agent: t.agent.clone(),
                    why: e.to_string(),
                })?;
        let stream = client
            .watch(pb::WatchRequest {
                operation_id: r.operation_id,
            })
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}
