//! The inventory: which sets and members are declared, which agents exist,
//! where they are, and whether they live.
//!
//! Declared sets live in the store (SPEC C1): `controller.toml`'s sets are
//! imported at start when the store has never seen them (the rule is in
//! `crate::sets`), and `tandemctl set add/change/remove` changes them at run
//! time ([`Inventory::add_set`], [`Inventory::change_set`],
//! [`Inventory::remove_set`]; one change at a time, the store first, then
//! the in-memory snapshot that every reader uses: fleet, scheduler,
//! `show`, registration). Registrations and heartbeats come from agents. The
//! in-memory map is the observed truth; every change of an agent's
//! registration or liveness is written to the store so a restarted
//! controller knows where its agents are. After a restart, agents that were
//! online get one `offline_after` of grace to heartbeat before they are
//! marked offline. An agent no longer declared (its set removed, its member
//! changed) is asked to register again, which tells it why it is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tandem_proto::identity::Identity;
use tandem_proto::model::{AgentState, Facts, Registration, Role};
use tracing::{error, info, warn};

use crate::config::ControllerConfig;
use crate::error::ServiceError;
use crate::sets::{Declared, MemberDecl, SetDecl, StoredState, check, plan_import};
use crate::store::{AgentRow, SetRow, Store};

/// One agent as the controller sees it now.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub row: AgentRow,
    pub facts: Option<Facts>,
    /// When the agent's certificate expires, as it last said (in memory:
    /// known again at the first heartbeat after a controller restart).
    pub cert_not_after: Option<Timestamp>,
}

struct Entry {
    row: AgentRow,
    facts: Option<Facts>,
    /// The last role seen other than `Unknown` (a stopped server's role is
    /// unknown; a change is judged against the last one known).
    role: Option<Role>,
    seen_at: Instant,
    cert_not_after: Option<Timestamp>,
}

fn known(role: Role) -> Option<Role> {
    (role != Role::Unknown).then_some(role)
}

/// What `tandemctl set change` asks.
#[derive(Debug, Clone, Default)]
pub struct MemberChanges {
    pub add: Vec<MemberDecl>,
    /// Members (by name) given a new agent or host.
    pub change: Vec<MemberEdit>,
    pub remove: Vec<String>,
}

/// A member's new agent and/or host; what is `None` stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEdit {
    pub name: String,
    pub agent: Option<String>,
    pub host: Option<String>,
}

pub struct Inventory {
    cfg: Arc<ControllerConfig>,
    store: Store,
    agents: Mutex<HashMap<String, Entry>>,
    /// The sets in force; replaced whole on each change.
    declared: RwLock<Arc<Declared>>,
    /// One inventory change at a time (store, then snapshot).
    edits: tokio::sync::Mutex<()>,
    /// Agents refused at registration, with the refusal, so an agent that
    /// retries every few seconds is audited once per distinct refusal.
    refused: Mutex<HashMap<String, String>>,
}

/// Import the sets controller.toml declares that the store has never
/// seen (`sets::plan_import`), and log what the file and the store say
/// differently.
async fn import_file_sets(cfg: &ControllerConfig, store: &Store) -> Result<(), ServiceError> {
    let file: Vec<SetDecl> = cfg.sets.iter().map(SetDecl::from).collect();
    let stored: Vec<_> = store.sets().await?.into_iter().map(|r| r.stored).collect();
    let plan = plan_import(&file, &stored);
    for (set, at, by) in &plan.removed {
        warn!(
            set = %set,
            removed_at = %at,
            removed_by = %by,
            "set `{set}` is in controller.toml but was removed with `tandemctl set remove` at {at} by {by}; it stays removed: delete it from controller.toml, or bring it back with `tandemctl set add {set} --from-config`"
        );
    }
    for (set, diff) in &plan.differs {
        warn!(
            set = %set,
            "set `{set}` in controller.toml differs from the inventory in the store, which wins (it was changed with `tandemctl set`): {}; to apply the file: `tandemctl set add {set} --from-config --replace`; to see the store's: `tandemctl set list {set}`",
            diff.join("; ")
        );
    }
    for (set, why) in &plan.conflicts {
        error!(set = %set, "set `{set}` in controller.toml is not imported: {why}");
    }
    for set in &plan.not_in_file {
        info!(
            set = %set,
            "set `{set}` is in the inventory but not in controller.toml (added with tandemctl, or deleted from the file since): it stays; `tandemctl set remove {set}` removes it"
        );
    }
    for set in &plan.import {
        info!(set = %set.name, members = %set.describe_members(), "set imported from controller.toml");
    }
    if !plan.import.is_empty() {
        store.import_sets(plan.import).await?;
    }
    Ok(())
}

impl Inventory {
    /// Load what the store knows, importing the sets controller.toml
    /// declares that the store has never seen (the leader's start).
    pub async fn load(cfg: Arc<ControllerConfig>, store: Store) -> Result<Inventory, ServiceError> {
        Self::load_with(cfg, store, true).await
    }

    /// Load what the store knows and write nothing: a follower's view,
    /// kept fresh by [`Inventory::follow_store`].
    pub async fn load_following(
        cfg: Arc<ControllerConfig>,
        store: Store,
    ) -> Result<Inventory, ServiceError> {
        Self::load_with(cfg, store, false).await
    }

    async fn load_with(
        cfg: Arc<ControllerConfig>,
        store: Store,
        import: bool,
    ) -> Result<Inventory, ServiceError> {
        if import {
            import_file_sets(&cfg, &store).await?;
        }
        let inv = Inventory {
            cfg,
            store,
            agents: Mutex::new(HashMap::new()),
            declared: RwLock::new(Arc::new(Declared::new(vec![]))),
            edits: tokio::sync::Mutex::new(()),
            refused: Mutex::new(HashMap::new()),
        };
        inv.refresh_from_store().await?;
        Ok(inv)
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// The sets in force now (a snapshot: a later change makes a new one).
    pub fn declared(&self) -> Arc<Declared> {
        self.declared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A set in force.
    pub fn set(&self, name: &str) -> Option<SetDecl> {
        self.declared().set(name).cloned()
    }

    /// The sets in force as stored (generation, who changed them), in order;
    /// only `names` when not empty.
    pub async fn set_rows(&self, names: &[String]) -> Result<Vec<SetRow>, ServiceError> {
        let declared = self.declared();
        for n in names {
            if declared.set(n).is_none() {
                return Err(ServiceError::UnknownSet { set: n.clone() });
            }
        }
        Ok(self
            .store
            .sets()
            .await?
            .into_iter()
            .filter(|r| r.stored.state == StoredState::Active)
            .filter(|r| names.is_empty() || names.contains(&r.stored.decl.name))
            .collect())
    }

    /// Whether the store has ever known `set` (in force or removed): its
    /// history can be read.
    pub async fn ever_known(&self, set: &str) -> Result<bool, ServiceError> {
        Ok(self.declared().set(set).is_some()
            || self
                .store
                .sets()
                .await?
                .iter()
                .any(|r| r.stored.decl.name == set && r.stored.state != StoredState::Legacy))
    }

    /// Add a set (`tandemctl set add`), or replace an existing one's members
    /// when `replace`. A removed set may be added again.
    pub async fn add_set(
        &self,
        set: SetDecl,
        replace: bool,
        who: &Identity,
    ) -> Result<SetRow, ServiceError> {
        let _edit = self.edits.lock().await;
        let declared = self.declared();
        let old = declared.set(&set.name);
        if old.is_some() && !replace {
            return Err(ServiceError::SetExists { set: set.name });
        }
        check(&set, &declared.sets)?;
        let event = match old {
            Some(old) if crate::sets::same_members(old, &set) => {
                return self.row(&set.name).await;
            }
            Some(old) => format!(
                "members replaced by {}: {} (were {})",
                who.uri(),
                set.describe_members(),
                old.describe_members()
            ),
            None => format!("added by {}: members {}", who.uri(), set.describe_members()),
        };
        self.commit(set, who, event).await
    }

    /// Add, change and remove members of a set (`tandemctl set change`).
    pub async fn change_set(
        &self,
        name: &str,
        changes: MemberChanges,
        who: &Identity,
    ) -> Result<SetRow, ServiceError> {
        let _edit = self.edits.lock().await;
        let declared = self.declared();
        let old = declared.set(name).ok_or_else(|| ServiceError::UnknownSet {
            set: name.to_owned(),
        })?;
        let mut set = old.clone();
        let mut said = Vec::new();
        for m in &changes.remove {
            let before = set.members.len();
            set.members.retain(|x| &x.name != m);
            if set.members.len() == before {
                return Err(ServiceError::UnknownMember {
                    set: name.to_owned(),
                    member: m.clone(),
                });
            }
            said.push(format!("removed member {m}"));
        }
        for m in changes.change {
            let Some(x) = set.members.iter_mut().find(|x| x.name == m.name) else {
                return Err(ServiceError::UnknownMember {
                    set: name.to_owned(),
                    member: m.name,
                });
            };
            let before = crate::sets::describe_member(x);
            if let Some(agent) = m.agent {
                x.agent = agent;
            }
            if let Some(host) = m.host {
                x.host = Some(host);
            }
            said.push(format!(
                "changed member {before} to {}",
                crate::sets::describe_member(x)
            ));
        }
        for m in changes.add {
            said.push(format!("added member {}", crate::sets::describe_member(&m)));
            set.members.push(m);
        }
        check(&set, &declared.sets)?;
        if crate::sets::same_members(old, &set) {
            return Err(ServiceError::NothingChanges {
                set: name.to_owned(),
            });
        }
        let event = format!("members changed by {}: {}", who.uri(), said.join(", "));
        self.commit(set, who, event).await
    }

    /// Remove a set (`tandemctl set remove`). `busy` says which run has a
    /// test of the set waiting or running (then the set stays).
    pub async fn remove_set(
        &self,
        name: &str,
        who: &Identity,
        busy: impl Fn(&str) -> Option<String>,
    ) -> Result<SetRow, ServiceError> {
        let _edit = self.edits.lock().await;
        let row = self.row(name).await?;
        if let Some(run) = busy(name) {
            return Err(ServiceError::SetBusy {
                set: name.to_owned(),
                run,
            });
        }
        let event = format!(
            "removed by {}; its members were {}",
            who.uri(),
            row.stored.decl.describe_members()
        );
        self.store
            .remove_set(name.to_owned(), who.uri(), event)
            .await?;
        self.reload().await?;
        warn!(set = name, by = %who.uri(), "set removed from the inventory");
        Ok(row)
    }

    /// Store `set` as in force, then make it the snapshot.
    async fn commit(
        &self,
        set: SetDecl,
        who: &Identity,
        event: String,
    ) -> Result<SetRow, ServiceError> {
        let name = set.name.clone();
        let generation = self.store.put_set(set, who.uri(), event.clone()).await?;
        self.reload().await?;
        info!(set = %name, generation, "inventory changed: {event}");
        self.row(&name).await
    }

    /// The sets and the agents as the store has them (states and facts as
    /// of their last change): the leader's start, and a follower's view,
    /// read again every renewal.
    async fn refresh_from_store(&self) -> Result<(), ServiceError> {
        self.reload().await?;
        let now = Instant::now();
        let rows = self.store.agents().await?;
        let mut agents = self.lock();
        agents.clear();
        for row in rows {
            let facts: Option<Facts> = row
                .facts
                .as_deref()
                .and_then(|f| serde_json::from_str(f).ok());
            agents.insert(
                row.name.clone(),
                Entry {
                    role: facts.as_ref().and_then(|f| known(f.role)),
                    row,
                    facts,
                    seen_at: now,
                    cert_not_after: None,
                },
            );
        }
        Ok(())
    }

    /// While following: read the store again every `every`, until `stop`.
    pub async fn follow_store(
        self: Arc<Self>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.refresh_from_store().await {
                warn!(error = %e, "cannot read the inventory from the store");
            }
        }
    }

    async fn reload(&self) -> Result<(), ServiceError> {
        let sets = active_sets(&self.store.sets().await?);
        *self.declared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Declared::new(sets));
        Ok(())
    }

    /// One set in force, as stored.
    async fn row(&self, name: &str) -> Result<SetRow, ServiceError> {
        self.set_rows(&[name.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| ServiceError::UnknownSet {
                set: name.to_owned(),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this outcome of `agent`'s registration is worth an audit
    /// record: every success (`refusal` none), and a refusal only when it
    /// differs from the agent's last one (a refused agent retries every
    /// heartbeat).
    pub fn registration_news(&self, agent: &str, refusal: Option<String>) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match refusal {
            None => {
                refused.remove(agent);
                true
            }
            Some(why) => refused.insert(agent.to_owned(), why.clone()).as_ref() != Some(&why),
        }
    }

    /// Accept a registration from the agent named in it (already checked
    /// against the caller's certificate). Returns the set's generation.
    pub async fn register(&self, reg: Registration) -> Result<u64, ServiceError> {
        let declared = self.declared();
        let (set, member) =
            declared
                .member_of(&reg.agent)
                .ok_or_else(|| ServiceError::NotDeclared {
                    agent: reg.agent.clone(),
                })?;
        if set.name != reg.set || member.name != reg.member {
            return Err(ServiceError::WrongMembership {
                agent: reg.agent,
                set: reg.set,
                member: reg.member,
                declared_set: set.name.clone(),
                declared_member: member.name.clone(),
            });
        }
        let now = Timestamp::now();
        let (first_seen, prev_role, prev_cert) = self
            .lock()
            .get(&reg.agent)
            .map(|e| (e.row.first_seen, e.role, e.cert_not_after))
            .unwrap_or((now, None, None));
        let role = reg.facts.role;
        let row = AgentRow {
            name: reg.agent.clone(),
            set: reg.set.clone(),
            member: reg.member.clone(),
            address: reg.address.clone(),
            agent_version: reg.agent_version.clone(),
            state: AgentState::Online,
            first_seen,
            last_seen: now,
            facts: serde_json::to_string(&reg.facts).ok(),
        };
        self.store.upsert_agent(row.clone()).await?;
        info!(agent = %reg.agent, set = %reg.set, address = %reg.address, role = %reg.facts.role, "agent registered");
        self.lock().insert(
            reg.agent.clone(),
            Entry {
                row,
                role: known(reg.facts.role).or(prev_role),
                facts: Some(reg.facts),
                seen_at: Instant::now(),
                cert_not_after: reg.cert_not_after.or(prev_cert),
            },
        );
        self.note_role(&reg.agent, &reg.set, &reg.member, prev_role, role)
            .await?;
        Ok(self.store.generation(reg.set).await?.unwrap_or(1))
    }

    /// Roles are learned from the agents, never trusted from config (SPEC
    /// C1): when a member's role changes (a failover, a promotion by hand, a
    /// re-seeded old primary), it goes into the set's history and the set
    /// gets a new generation, so orders based on the old roles are refused
    /// (STYLE 8).
    async fn note_role(
        &self,
        agent: &str,
        set: &str,
        member: &str,
        prev: Option<Role>,
        now: Role,
    ) -> Result<(), ServiceError> {
        let (Some(prev), Some(now)) = (prev, known(now)) else {
            return Ok(());
        };
        if prev == now {
            return Ok(());
        }
        let generation = self.store.bump_generation(set.to_owned()).await?;
        let message = format!(
            "member {member} (agent {agent}) is now the {now}, was the {prev}; set generation {generation}"
        );
        warn!(set, member, agent, %prev, %now, generation, "role change seen");
        self.store
            .set_event(set.to_owned(), "role", message)
            .await?;
        Ok(())
    }

    /// A heartbeat (`cert_not_after`: the agent's certificate expiry when it
    /// said; none keeps the last one). Returns false when the agent is
    /// unknown, or no longer declared as the member it registered for, and
    /// must register.
    pub async fn heartbeat(
        &self,
        agent: &str,
        facts: Facts,
        cert_not_after: Option<Timestamp>,
    ) -> Result<bool, ServiceError> {
        let new_role = facts.role;
        let mut role_change = None;
        let declared = self.declared();
        let came_back = {
            let mut agents = self.lock();
            let Some(e) = agents.get_mut(agent) else {
                return Ok(false);
            };
            let still = declared
                .member_of(agent)
                .is_some_and(|(s, m)| s.name == e.row.set && m.name == e.row.member);
            if !still {
                return Ok(false);
            }
            if let Some(new) = known(new_role) {
                if e.role != Some(new) {
                    role_change = Some((e.row.set.clone(), e.row.member.clone(), e.role));
                }
                e.role = Some(new);
            }
            e.seen_at = Instant::now();
            e.row.last_seen = Timestamp::now();
            e.facts = Some(facts);
            if cert_not_after.is_some() {
                e.cert_not_after = cert_not_after;
            }
            let came_back = e.row.state != AgentState::Online;
            e.row.state = AgentState::Online;
            came_back.then_some(e.row.last_seen)
        };
        if let Some(at) = came_back {
            info!(agent, "agent online again");
            self.store
                .set_agent_state(agent.to_owned(), AgentState::Online, at)
                .await?;
        }
        if let Some((set, member, prev)) = role_change {
            self.note_role(agent, &set, &member, prev, new_role).await?;
        }
        Ok(true)
    }

    /// Facts read live from an agent (the fleet asks when the heartbeats
    /// may be stale): they replace the last heartbeat's until the next one.
    /// Roles are left to the heartbeats, which record their changes.
    pub fn observe(&self, agent: &str, facts: Facts) {
        if let Some(e) = self.lock().get_mut(agent) {
            e.facts = Some(facts);
        }
    }

    /// Mark agents silent for longer than `offline_after` offline.
    pub async fn sweep(&self, now: Instant) -> Result<Vec<String>, ServiceError> {
        let went_offline: Vec<(String, Timestamp)> = {
            let mut agents = self.lock();
            silent_agents(&agents, now, self.cfg.offline_after)
                .into_iter()
                .map(|name| {
                    let e = agents.get_mut(&name).expect("listed above");
                    e.row.state = AgentState::Offline;
                    (name, e.row.last_seen)
                })
                .collect()
        };
        for (name, last_seen) in &went_offline {
            warn!(agent = %name, %last_seen, "agent missed its heartbeats; marked offline");
            self.store
                .set_agent_state(name.clone(), AgentState::Offline, *last_seen)
                .await?;
        }
        Ok(went_offline.into_iter().map(|(n, _)| n).collect())
    }

    /// The state of every declared agent (never seen when it has not
    /// registered), without copying the agents: the liveness loop counts
    /// them every second.
    pub fn states(&self) -> Vec<AgentState> {
        let declared = self.declared();
        let agents = self.lock();
        declared
            .sets
            .iter()
            .flat_map(|set| &set.members)
            .map(|m| {
                agents
                    .get(&m.agent)
                    .map_or(AgentState::NeverSeen, |e| e.row.state)
            })
            .collect()
    }

    /// Every declared agent, registered or not, in inventory order.
    pub fn list(&self) -> Vec<AgentView> {
        let declared = self.declared();
        let agents = self.lock();
        let mut out = Vec::new();
        for set in &declared.sets {
            for m in &set.members {
                out.push(match agents.get(&m.agent) {
                    Some(e) => AgentView {
                        row: e.row.clone(),
                        facts: e.facts.clone(),
                        cert_not_after: e.cert_not_after,
                    },
                    None => AgentView {
                        row: AgentRow {
                            name: m.agent.clone(),
                            set: set.name.clone(),
                            member: m.name.clone(),
                            address: String::new(),
                            agent_version: String::new(),
                            state: AgentState::NeverSeen,
                            first_seen: Timestamp::UNIX_EPOCH,
                            last_seen: Timestamp::UNIX_EPOCH,
                            facts: None,
                        },
                        facts: None,
                        cert_not_after: None,
                    },
                });
            }
        }
        out
    }

    pub fn get(&self, agent: &str) -> Option<AgentView> {
        self.lock().get(agent).map(|e| AgentView {
            row: e.row.clone(),
            facts: e.facts.clone(),
            cert_not_after: e.cert_not_after,
        })
    }
}

fn active_sets(rows: &[SetRow]) -> Vec<SetDecl> {
    rows.iter()
        .filter(|r| r.stored.state == StoredState::Active)
        .map(|r| r.stored.decl.clone())
        .collect()
}

/// Online agents whose last heartbeat is older than `offline_after`.
fn silent_agents(
    agents: &HashMap<String, Entry>,
    now: Instant,
    offline_after: Duration,
) -> Vec<String> {
    let mut out: Vec<String> = agents
        .values()
        .filter(|e| {
            e.row.state == AgentState::Online
                && now.saturating_duration_since(e.seen_at) > offline_after
        })
        .map(|e| e.row.name.clone())
        .collect();
    out.sort();
    out
}

/// Run [`Inventory::sweep`] until `shutdown`.
pub async fn liveness_loop(inv: Arc<Inventory>, shutdown: tokio_util::sync::CancellationToken) {
    let every =
        (inv.cfg.offline_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    loop {
        // Cancel-safe: tick() and cancelled() only wait.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = inv.sweep(Instant::now()).await {
            warn!(error = %e, "liveness sweep failed");
        }
        crate::metrics::agents(inv.states());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, state: AgentState, seen_at: Instant) -> (String, Entry) {
        (
            name.into(),
            Entry {
                row: AgentRow {
                    name: name.into(),
                    set: "s".into(),
                    member: name.into(),
                    address: "127.0.0.1:1".into(),
                    agent_version: "0".into(),
                    state,
                    first_seen: Timestamp::UNIX_EPOCH,
                    last_seen: Timestamp::UNIX_EPOCH,
                    facts: None,
                },
                facts: None,
                role: None,
                seen_at,
                cert_not_after: None,
            },
        )
    }

    fn config(dir: &std::path::Path, sets: &str) -> Arc<ControllerConfig> {
        let text = format!(
            "listen = \"127.0.0.1:1\"\nstore = \"{}\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n{sets}",
            dir.join("c.db").display()
        );
        Arc::new(ControllerConfig::parse(std::path::Path::new("c.toml"), &text).unwrap())
    }

    fn names(inv: &Inventory) -> Vec<String> {
        inv.declared().sets.iter().map(|s| s.name.clone()).collect()
    }

    #[tokio::test]
    async fn the_file_seeds_the_store_and_then_the_store_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            "[[sets]]\nname = \"billing\"\nmembers = [{ name = \"db1\" }, { name = \"db2\" }]\n\
             [[sets]]\nname = \"crm\"\nmembers = [{ name = \"c1\" }]\n",
        );
        let store = Store::open(&cfg.store).unwrap();
        let inv = Inventory::load(cfg.clone(), store.clone()).await.unwrap();
        assert_eq!(names(&inv), ["billing", "crm"]);
        let admin = Identity::User("admin".into());

        let remove = |m: &str| MemberChanges {
            remove: vec![m.into()],
            ..Default::default()
        };
        let row = inv
            .change_set("billing", remove("db2"), &admin)
            .await
            .unwrap();
        assert_eq!(row.generation, 2);
        assert_eq!(row.source, "tandemctl");
        let e = inv
            .change_set("billing", remove("db2"), &admin)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::UnknownMember { .. }), "{e}");
        let e = inv
            .change_set("billing", remove("db1"), &admin)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("would have no members"), "{e}");
        let taken = MemberChanges {
            add: vec![MemberDecl {
                name: "x".into(),
                agent: "c1".into(),
                host: None,
            }],
            ..Default::default()
        };
        let e = inv.change_set("billing", taken, &admin).await.unwrap_err();
        assert!(
            e.to_string().contains("already member `c1` of set `crm`"),
            "{e}"
        );
        // A change keeps what it does not name.
        let edit = |agent: Option<&str>, host: Option<&str>| MemberChanges {
            change: vec![MemberEdit {
                name: "db1".into(),
                agent: agent.map(Into::into),
                host: host.map(Into::into),
            }],
            ..Default::default()
        };
        inv.change_set("billing", edit(Some("agent-db1"), None), &admin)
            .await
            .unwrap();
        let row = inv
            .change_set("billing", edit(None, Some("h1")), &admin)
            .await
            .unwrap();
        assert_eq!(
            row.stored.decl.members[0],
            MemberDecl {
                name: "db1".into(),
                agent: "agent-db1".into(),
                host: Some("h1".into()),
            }
        );
        assert_eq!(row.generation, 4);
        let e = inv
            .remove_set("billing", &admin, |_| Some("run-1".into()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("in run run-1"), "{e}");
        inv.remove_set("crm", &admin, |_| None).await.unwrap();
        assert_eq!(names(&inv), ["billing"]);
        assert!(inv.declared().member_of("c1").is_none());
        assert!(inv.ever_known("crm").await.unwrap());
        drop(inv);

        // Started again with the same file: crm stays removed, billing keeps
        // the store's members.
        let inv = Inventory::load(cfg.clone(), store.clone()).await.unwrap();
        assert_eq!(names(&inv), ["billing"]);
        assert_eq!(inv.set("billing").unwrap().members.len(), 1);
        // Added back as the file says: a new generation.
        let crm = SetDecl::from(&cfg.sets[1]);
        let e = inv
            .add_set(SetDecl::from(&cfg.sets[0]), false, &admin)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::SetExists { .. }), "{e}");
        let row = inv.add_set(crm, false, &admin).await.unwrap();
        assert_eq!(row.generation, 2);
        assert_eq!(names(&inv), ["billing", "crm"]);
    }

    #[test]
    fn only_online_agents_past_the_limit_go_offline() {
        let t0 = Instant::now();
        let agents: HashMap<_, _> = [
            entry("fresh", AgentState::Online, t0 + Duration::from_secs(8)),
            entry("silent", AgentState::Online, t0),
            entry("already", AgentState::Offline, t0),
        ]
        .into_iter()
        .collect();
        let now = t0 + Duration::from_secs(11);
        assert_eq!(
            silent_agents(&agents, now, Duration::from_secs(10)),
            vec!["silent"]
        );
        assert!(
            silent_agents(
                &agents,
                t0 + Duration::from_secs(10),
                Duration::from_secs(10)
            )
            .is_empty()
        );
    }
}
