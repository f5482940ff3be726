//! The inventory: which agents exist, where they are, and whether they live.
//!
//! Declared sets come from `controller.toml` (mirrored into the store);
//! registrations and heartbeats come from agents. The in-memory map is the
//! observed truth; every change of an agent's registration or liveness is
//! written to the store so a restarted controller knows where its agents are.
//! After a restart, agents that were online get one `offline_after` of grace
//! to heartbeat before they are marked offline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tandem_proto::model::{AgentState, Facts, Registration, Role};
use tracing::{info, warn};

use crate::config::ControllerConfig;
use crate::error::ServiceError;
use crate::store::{AgentRow, Store};

/// One agent as the controller sees it now.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub row: AgentRow,
    pub facts: Option<Facts>,
}

struct Entry {
    row: AgentRow,
    facts: Option<Facts>,
    /// The last role seen other than `Unknown` (a stopped server's role is
    /// unknown; a change is judged against the last one known).
    role: Option<Role>,
    seen_at: Instant,
}

fn known(role: Role) -> Option<Role> {
    (role != Role::Unknown).then_some(role)
}

pub struct Inventory {
    cfg: Arc<ControllerConfig>,
    store: Store,
    agents: Mutex<HashMap<String, Entry>>,
}

impl Inventory {
    /// Load what the store knows.
    pub async fn load(cfg: Arc<ControllerConfig>, store: Store) -> Result<Inventory, ServiceError> {
        store.sync_sets(cfg.sets.clone()).await?;
        let now = Instant::now();
        let agents = store
            .agents()
            .await?
            .into_iter()
            .map(|row| {
                let facts: Option<Facts> = row
                    .facts
                    .as_deref()
                    .and_then(|f| serde_json::from_str(f).ok());
                (
                    row.name.clone(),
                    Entry {
                        row,
                        role: facts.as_ref().and_then(|f| known(f.role)),
                        facts,
                        seen_at: now,
                    },
                )
            })
            .collect();
        Ok(Inventory {
            cfg,
            store,
            agents: Mutex::new(agents),
        })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accept a registration from the agent named in it (already checked
    /// against the caller's certificate). Returns the set's generation.
    pub async fn register(&self, reg: Registration) -> Result<u64, ServiceError> {
        let (set, member) =
            self.cfg
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
        let (first_seen, prev_role) = self
            .lock()
            .get(&reg.agent)
            .map(|e| (e.row.first_seen, e.role))
            .unwrap_or((now, None));
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

    /// A heartbeat. Returns false when the agent is unknown and must register.
    pub async fn heartbeat(&self, agent: &str, facts: Facts) -> Result<bool, ServiceError> {
        let new_role = facts.role;
        let mut role_change = None;
        let came_back = {
            let mut agents = self.lock();
            let Some(e) = agents.get_mut(agent) else {
                return Ok(false);
            };
            if let Some(new) = known(new_role) {
                if e.role != Some(new) {
                    role_change = Some((e.row.set.clone(), e.row.member.clone(), e.role));
                }
                e.role = Some(new);
            }
            e.seen_at = Instant::now();
            e.row.last_seen = Timestamp::now();
            e.facts = Some(facts);
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

    /// Every declared agent, registered or not, in config order.
    pub fn list(&self) -> Vec<AgentView> {
        let agents = self.lock();
        let mut out = Vec::new();
        for set in &self.cfg.sets {
            for m in &set.members {
                out.push(match agents.get(m.agent()) {
                    Some(e) => AgentView {
                        row: e.row.clone(),
                        facts: e.facts.clone(),
                    },
                    None => AgentView {
                        row: AgentRow {
                            name: m.agent().to_owned(),
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
        })
    }
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
        crate::metrics::agents(&inv.list());
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
            },
        )
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
