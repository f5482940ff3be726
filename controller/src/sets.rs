//! The declared inventory (SPEC C1): replication sets and their members, as
//! `controller.toml` first declares them and `tandemctl set` changes them.
//!
//! Pure logic, no I/O: the rules a set must follow ([`check`]), what changed
//! between two versions of a set ([`differences`]), and the import rule
//! applied at start ([`plan_import`]):
//!
//! - a set in `controller.toml` that the store has never seen is imported;
//! - after that the store is the truth: a set the file declares differently
//!   keeps the store's members, and the difference is logged with how to
//!   apply the file (`tandemctl set add SET --from-config --replace`);
//! - a set removed with `tandemctl set remove` stays removed even if the file
//!   still declares it (logged, with when, by whom and what to do);
//! - a set deleted from the file stays in force (logged) until `tandemctl set
//!   remove`.
//!
//! Sets stored by a controller from before the inventory moved to the store
//! (schema < 5) were only a mirror of the file; they count as never seen.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use tandem_proto::identity::{IdentityError, validate_name};

use crate::config::SetConfig;

/// One member of a set: a database server and the agent on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDecl {
    pub name: String,
    /// The agent on this member's host (its certificate name).
    pub agent: String,
    /// The host the member runs on, for the per-host limit; `None`: the host
    /// part of the address its agent registered with.
    pub host: Option<String>,
}

/// A replication set as declared: its name and members, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDecl {
    pub name: String,
    pub members: Vec<MemberDecl>,
}

impl SetDecl {
    pub fn member(&self, name: &str) -> Option<&MemberDecl> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn member_of_agent(&self, agent: &str) -> Option<&MemberDecl> {
        self.members.iter().find(|m| m.agent == agent)
    }

    /// "db1 (agent db1), db2 (agent x on host h)", for history and logs.
    pub fn describe_members(&self) -> String {
        self.members
            .iter()
            .map(describe_member)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn describe_member(m: &MemberDecl) -> String {
    match &m.host {
        Some(h) => format!("{} (agent {} on host {h})", m.name, m.agent),
        None => format!("{} (agent {})", m.name, m.agent),
    }
}

impl From<&SetConfig> for SetDecl {
    fn from(s: &SetConfig) -> SetDecl {
        SetDecl {
            name: s.name.clone(),
            members: s
                .members
                .iter()
                .map(|m| MemberDecl {
                    name: m.name.clone(),
                    agent: m.agent().to_owned(),
                    host: m.host.clone(),
                })
                .collect(),
        }
    }
}

/// The sets in force, with an index by agent (one snapshot; a change to the
/// inventory makes a new one).
#[derive(Debug, Default)]
pub struct Declared {
    pub sets: Vec<SetDecl>,
    by_agent: HashMap<String, (usize, usize)>,
}

impl Declared {
    pub fn new(sets: Vec<SetDecl>) -> Declared {
        let mut by_agent = HashMap::new();
        for (i, s) in sets.iter().enumerate() {
            for (j, m) in s.members.iter().enumerate() {
                by_agent.insert(m.agent.clone(), (i, j));
            }
        }
        Declared { sets, by_agent }
    }

    pub fn set(&self, name: &str) -> Option<&SetDecl> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// The set and member an agent serves.
    pub fn member_of(&self, agent: &str) -> Option<(&SetDecl, &MemberDecl)> {
        let &(i, j) = self.by_agent.get(agent)?;
        Some((&self.sets[i], &self.sets[i].members[j]))
    }
}

/// Why a set cannot be declared as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("bad {what} name: {error}")]
    BadName {
        what: &'static str,
        error: IdentityError,
    },
    #[error("member `{member}` of set `{set}` has an empty host; leave the host out or name it")]
    EmptyHost { set: String, member: String },
    #[error(
        "set `{set}` would have no members; a set needs at least one (to drop the set: `tandemctl set remove {set}`)"
    )]
    NoMembers { set: String },
    #[error("member `{member}` appears twice in set `{set}`; member names are unique in a set")]
    DuplicateMember { set: String, member: String },
    #[error("agent `{agent}` serves two members of set `{set}`; one agent serves one server")]
    DuplicateAgent { set: String, agent: String },
    #[error(
        "agent `{agent}` is already member `{other_member}` of set `{other_set}`; one agent serves one server (`tandemctl set change {other_set} --remove-member {other_member}` frees it)"
    )]
    AgentInOtherSet {
        agent: String,
        other_set: String,
        other_member: String,
    },
}

/// Check `set` alone and against `others` (the other sets in force; a set of
/// the same name among them is ignored: it is the one being replaced).
pub fn check(set: &SetDecl, others: &[SetDecl]) -> Result<(), SetError> {
    let bad = |what| move |error| SetError::BadName { what, error };
    validate_name(&set.name).map_err(bad("set"))?;
    if set.members.is_empty() {
        return Err(SetError::NoMembers {
            set: set.name.clone(),
        });
    }
    let mut names = HashSet::new();
    let mut agents = HashSet::new();
    for m in &set.members {
        validate_name(&m.name).map_err(bad("member"))?;
        validate_name(&m.agent).map_err(bad("agent"))?;
        if m.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Err(SetError::EmptyHost {
                set: set.name.clone(),
                member: m.name.clone(),
            });
        }
        if !names.insert(m.name.as_str()) {
            return Err(SetError::DuplicateMember {
                set: set.name.clone(),
                member: m.name.clone(),
            });
        }
        if !agents.insert(m.agent.as_str()) {
            return Err(SetError::DuplicateAgent {
                set: set.name.clone(),
                agent: m.agent.clone(),
            });
        }
    }
    for other in others.iter().filter(|o| o.name != set.name) {
        if let Some(m) = other
            .members
            .iter()
            .find(|m| agents.contains(m.agent.as_str()))
        {
            return Err(SetError::AgentInOtherSet {
                agent: m.agent.clone(),
                other_set: other.name.clone(),
                other_member: m.name.clone(),
            });
        }
    }
    Ok(())
}

/// What differs from `from` to `to`, one phrase per member, in words
/// (`from_what`/`to_what` name the two sides, e.g. "controller.toml").
pub fn differences(from: &SetDecl, to: &SetDecl, from_what: &str, to_what: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in &from.members {
        match to.member(&m.name) {
            None => out.push(format!("member {} only in {from_what}", describe_member(m))),
            Some(t) => {
                if t.agent != m.agent {
                    out.push(format!(
                        "member {}: agent {} in {from_what}, {} in {to_what}",
                        m.name, m.agent, t.agent
                    ));
                }
                if t.host != m.host {
                    let h = |h: &Option<String>| {
                        h.clone().unwrap_or_else(|| "(from its address)".into())
                    };
                    out.push(format!(
                        "member {}: host {} in {from_what}, {} in {to_what}",
                        m.name,
                        h(&m.host),
                        h(&t.host)
                    ));
                }
            }
        }
    }
    for t in &to.members {
        if from.member(&t.name).is_none() {
            out.push(format!("member {} only in {to_what}", describe_member(t)));
        }
    }
    out
}

/// Whether two versions of a set have the same members (order aside).
pub fn same_members(a: &SetDecl, b: &SetDecl) -> bool {
    a.members.len() == b.members.len() && differences(a, b, "a", "b").is_empty()
}

/// A set's row in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredState {
    /// In force.
    Active,
    /// Removed with `tandemctl set remove`.
    Removed { at: Timestamp, by: String },
    /// Written by a controller from before the inventory moved to the store:
    /// a mirror of its file, never changed with tandemctl.
    Legacy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSet {
    pub decl: SetDecl,
    pub state: StoredState,
}

/// What the start of the controller does with the sets in its file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportPlan {
    /// Sets the store has never seen: written to the store as the file says.
    pub import: Vec<SetDecl>,
    /// In the file, removed with tandemctl: (set, when, by whom). They stay removed.
    pub removed: Vec<(String, Timestamp, String)>,
    /// In the file and in force, declared differently: (set, differences).
    /// The store's version stays.
    pub differs: Vec<(String, Vec<String>)>,
    /// In the file, never seen, but cannot be imported: (set, why).
    pub conflicts: Vec<(String, SetError)>,
    /// In force but not in the file (added with tandemctl, or deleted from
    /// the file since it was imported): they stay.
    pub not_in_file: Vec<String>,
}

/// Apply the import rule (see the module doc) to the file's sets and the
/// store's rows.
pub fn plan_import(file: &[SetDecl], stored: &[StoredSet]) -> ImportPlan {
    let by_name: HashMap<&str, &StoredSet> =
        stored.iter().map(|s| (s.decl.name.as_str(), s)).collect();
    // Sets in force after the import, to check new ones against.
    let mut in_force: Vec<SetDecl> = stored
        .iter()
        .filter(|s| s.state == StoredState::Active)
        .map(|s| s.decl.clone())
        .collect();
    let mut plan = ImportPlan::default();
    for set in file {
        match by_name.get(set.name.as_str()).map(|s| &s.state) {
            Some(StoredState::Active) => {
                let stored = &by_name[set.name.as_str()].decl;
                let diff = differences(set, stored, "controller.toml", "the store");
                if !diff.is_empty() {
                    plan.differs.push((set.name.clone(), diff));
                }
            }
            Some(StoredState::Removed { at, by }) => {
                plan.removed.push((set.name.clone(), *at, by.clone()));
            }
            Some(StoredState::Legacy) | None => match check(set, &in_force) {
                Ok(()) => {
                    in_force.push(set.clone());
                    plan.import.push(set.clone());
                }
                Err(e) => plan.conflicts.push((set.name.clone(), e)),
            },
        }
    }
    plan.not_in_file = stored
        .iter()
        .filter(|s| s.state == StoredState::Active && !file.iter().any(|f| f.name == s.decl.name))
        .map(|s| s.decl.name.clone())
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, members: &[(&str, &str)]) -> SetDecl {
        SetDecl {
            name: name.into(),
            members: members
                .iter()
                .map(|(m, a)| MemberDecl {
                    name: (*m).into(),
                    agent: (*a).into(),
                    host: None,
                })
                .collect(),
        }
    }

    fn stored(decl: SetDecl, state: StoredState) -> StoredSet {
        StoredSet { decl, state }
    }

    #[test]
    fn check_refuses_what_a_set_cannot_be() {
        let ok = set("billing", &[("db1", "db1"), ("db2", "db2")]);
        assert_eq!(check(&ok, &[]), Ok(()));
        let e = check(&set("billing", &[]), &[]).unwrap_err();
        assert!(matches!(e, SetError::NoMembers { .. }), "{e}");
        let e = check(&set("billing", &[("db1", "a"), ("db1", "b")]), &[]).unwrap_err();
        assert!(e.to_string().contains("member `db1` appears twice"), "{e}");
        let e = check(&set("billing", &[("db1", "a"), ("db2", "a")]), &[]).unwrap_err();
        assert!(
            e.to_string().contains("agent `a` serves two members"),
            "{e}"
        );
        let e = check(&set("bil ling", &[("db1", "a")]), &[]).unwrap_err();
        assert!(e.to_string().starts_with("bad set name"), "{e}");
        let other = set("crm", &[("c1", "db2")]);
        let e = check(&ok, std::slice::from_ref(&other)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "agent `db2` is already member `c1` of set `crm`; one agent serves one server (`tandemctl set change crm --remove-member c1` frees it)"
        );
        // The set being replaced does not count against itself.
        assert_eq!(check(&ok, std::slice::from_ref(&ok)), Ok(()));
        let mut hosted = ok.clone();
        hosted.members[0].host = Some(" ".into());
        assert!(matches!(
            check(&hosted, &[]),
            Err(SetError::EmptyHost { .. })
        ));
    }

    #[test]
    fn differences_name_each_member() {
        let a = set("s", &[("db1", "db1"), ("db2", "db2")]);
        let mut b = set("s", &[("db1", "x"), ("db3", "db3")]);
        b.members[0].host = Some("h1".into());
        let d = differences(&a, &b, "controller.toml", "the store");
        assert_eq!(
            d,
            vec![
                "member db1: agent db1 in controller.toml, x in the store",
                "member db1: host (from its address) in controller.toml, h1 in the store",
                "member db2 (agent db2) only in controller.toml",
                "member db3 (agent db3) only in the store",
            ]
        );
        assert!(!same_members(&a, &b));
        let reordered = set("s", &[("db2", "db2"), ("db1", "db1")]);
        assert!(same_members(&a, &reordered));
    }

    #[test]
    fn import_rule_new_sets_in_store_wins_removed_stay_removed() {
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let file = vec![
            set("new", &[("n1", "n1")]),
            set("same", &[("s1", "s1")]),
            set("changed", &[("c1", "c1"), ("c2", "c2")]),
            set("gone", &[("g1", "g1")]),
            set("legacy", &[("l1", "l1"), ("l2", "l2")]),
        ];
        let store = vec![
            stored(set("same", &[("s1", "s1")]), StoredState::Active),
            stored(set("changed", &[("c1", "c1")]), StoredState::Active),
            stored(
                set("gone", &[]),
                StoredState::Removed {
                    at,
                    by: "spiffe://tandem/user/admin".into(),
                },
            ),
            stored(set("legacy", &[("l1", "l1")]), StoredState::Legacy),
            // Added with tandemctl, not in the file: stays.
            stored(set("extra", &[("e1", "e1")]), StoredState::Active),
        ];
        let plan = plan_import(&file, &store);
        assert_eq!(
            plan.import,
            vec![file[0].clone(), file[4].clone()],
            "never seen (or only mirrored by an old controller): imported"
        );
        assert_eq!(
            plan.removed,
            vec![("gone".into(), at, "spiffe://tandem/user/admin".into())]
        );
        assert_eq!(
            plan.differs,
            vec![(
                "changed".into(),
                vec!["member c2 (agent c2) only in controller.toml".to_owned()]
            )]
        );
        assert!(plan.conflicts.is_empty());
        assert_eq!(plan.not_in_file, ["extra"]);
    }

    #[test]
    fn a_new_set_whose_agent_serves_a_stored_set_is_not_imported() {
        let file = vec![set("new", &[("n1", "shared")])];
        let store = vec![stored(set("old", &[("o1", "shared")]), StoredState::Active)];
        let plan = plan_import(&file, &store);
        assert!(plan.import.is_empty());
        assert_eq!(plan.conflicts.len(), 1);
        assert!(matches!(
            &plan.conflicts[0].1,
            SetError::AgentInOtherSet { other_set, .. } if other_set == "old"
        ));
    }
}
