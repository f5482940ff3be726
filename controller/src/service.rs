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
use crate::store::Store;

pub struct ControllerService {
    pub inventory: Arc<Inventory>,
    pub store: Store,
    pub agents: Arc<AgentClients>,
    pub fleet: Arc<Fleet>,
    pub scheduler: Arc<Scheduler>,
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
    async fn member_views(&self, set: &crate::config::SetConfig) -> Vec<pb::MemberView> {
        let timeout = self.inventory.config().status_timeout;
        let mut tasks = JoinSet::new();
        for (i, m) in set.members.iter().enumerate() {
            let view = self.inventory.get(m.agent());
            let client = view
                .as_ref()
                .filter(|v| !v.row.address.is_empty())
                .map(|v| self.agents.client(&v.row.address));
            let span = info_span!("agent.status", agent = %m.agent(), member = %m.name);
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
                agent: m.agent().to_owned(),
                agent_state: pb::AgentState::from(state) as i32,
                facts: facts.map(Into::into),
                live: is_live,
            });
        }
        out.into_iter().flatten().collect()
    }
}

/// The sets are declared, and so is `member` in the one set it needs.
fn check_sets(
    cfg: &crate::config::ControllerConfig,
    sets: &[String],
    member: Option<&str>,
) -> Result<(), ServiceError> {
    if sets.is_empty() {
        return Err(ServiceError::NoSets);
    }
    for name in sets {
        if !cfg.sets.iter().any(|s| &s.name == name) {
            return Err(ServiceError::UnknownSet { set: name.clone() });
        }
    }
    if let Some(m) = member {
        let [set] = sets else {
            return Err(ServiceError::MemberNeedsOneSet);
        };
        let declared = cfg
            .sets
            .iter()
            .find(|s| &s.name == set)
            .is_some_and(|s| s.members.iter().any(|x| x.name == m));
        if !declared {
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

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let who = caller(&req)?;
        let raw = req.into_inner();
        let args = serde_json::json!({"agent": raw.agent, "address": raw.address, "set": raw.set, "member": raw.member, "version": raw.agent_version});
        let result = async {
            require_agent(&who, &raw.agent, "Register")?;
            let reg = Registration::try_from(raw)?;
            self.inventory.register(reg).await
        }
        .await;
        self.audit(&who, "Register", args, &result).await;
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
            let (set, _) = self.inventory.config().member_of(&r.agent).ok_or_else(|| {
                ServiceError::NotDeclared {
                    agent: r.agent.clone(),
                }
            })?;
            let set = set.name.clone();
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
        Ok(Response::new(pb::StartRunResponse { run_id: result? }))
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
            let (set, member) = self
                .inventory
                .config()
                .member_of(&r.agent)
                .ok_or_else(|| ServiceError::NotDeclared {
                    agent: r.agent.clone(),
                })?;
            let result = r
                .result
                .as_ref()
                .ok_or(tandem_proto::model::ModelError::Missing { field: "result" })?;
            let v = crate::verdicts::Verdict::from_result(&member.name, result, String::new());
            let message = format!(
                "agent {} tested member {} by itself while the controller was unreachable (operation {}): {}",
                r.agent,
                member.name,
                result.operation_id,
                v.kind.as_str()
            );
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
        for name in &wanted {
            if !cfg.sets.iter().any(|s| &s.name == name) {
                return Err(ServiceError::UnknownSet { set: name.clone() }.into());
            }
        }
        let mut sets = Vec::new();
        for set in cfg
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
        // Sets needing a repair first (SPEC C3), then in config order.
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
            let cfg = self.inventory.config();
            let sets: Vec<String> = if r.all {
                cfg.sets.iter().map(|s| s.name.clone()).collect()
            } else {
                r.sets.clone()
            };
            let member = (!r.member.is_empty()).then(|| r.member.clone());
            check_sets(cfg, &sets, member.as_deref())?;
            Ok(self
                .fleet
                .start_run(
                    sets,
                    member,
                    "manual",
                    current_trace_id().unwrap_or_default(),
                )
                .await?)
        }
        .await;
        self.audit(&who, "StartTestdb", args, &result).await;
        Ok(Response::new(pb::StartRunResponse { run_id: result? }))
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
        self.require(&caller(&req)?, UserRole::Operator, "CancelRun")?;
        Err(ServiceError::NotYet { what: "CancelRun" }.into())
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "History")?;
        let r = req.into_inner();
        let set = r.set.clone();
        if !self.inventory.config().sets.iter().any(|s| s.name == set) {
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
            if !cfg.sets.iter().any(|s| s.name == r.set) {
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

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let args = serde_json::json!({"set": r.set, "member": r.member});
        let result = async {
            self.require(&who, UserRole::Operator, "Backup")?;
            let sets = vec![r.set.clone()];
            let member = (!r.member.is_empty()).then(|| r.member.clone());
            check_sets(self.inventory.config(), &sets, member.as_deref())?;
            Ok(self
                .fleet
                .start_run(
                    sets,
                    member,
                    crate::fleet::BACKUP_ORIGIN,
                    current_trace_id().unwrap_or_default(),
                )
                .await?)
        }
        .await;
        self.audit(&who, "Backup", args, &result).await;
        Ok(Response::new(pb::StartRunResponse { run_id: result? }))
    }

    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.require(&caller(&req)?, UserRole::Viewer, "ListBackups")?;
        let set_name = req.into_inner().set;
        let cfg = self.inventory.config();
        let Some(set) = cfg.sets.iter().find(|s| s.name == set_name) else {
            return Err(ServiceError::UnknownSet { set: set_name }.into());
        };
        let timeout = cfg.status_timeout;
        let mut tasks = JoinSet::new();
        for m in &set.members {
            let view = self.inventory.get(m.agent());
            let client = view
                .as_ref()
                .filter(|v| !v.row.address.is_empty())
                .map(|v| self.agents.client(&v.row.address));
            let member = m.name.clone();
            let agent = m.agent().to_owned();
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
                    out.backups.extend(r.backups.into_iter().map(|mut b| {
                        b.member = member.clone();
                        b
                    }));
                    out.problems
                        .extend(r.problems.into_iter().map(|p| format!("{member}: {p}")));
                }
                Err(p) => out.problems.push(p),
            }
        }
        out.backups.sort_by(|a, b| {
            let t = |x: &pb::BackupInfo| x.taken_at.map(|t| (t.seconds, t.nanos));
            t(b).cmp(&t(a))
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
            if self.fleet.set_active_since(&r.set).is_some() {
                return Err(ServiceError::BadRequest(format!(
                    "a test or backup runs or waits on set `{}`; restore when it is done",
                    r.set
                )));
            }
            crate::restore::start(&self.inventory, &self.store, &self.agents, &r).await
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
