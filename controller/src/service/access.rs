//! Who may make each call: one table every handler checks against, and the
//! rules that apply it. A call that is not in the table is refused, and a
//! unit test holds the table against `controller.proto`, so a new RPC
//! cannot ship without a rule.

use tandem_proto::identity::Identity;

use super::ServiceError;
use crate::config::{Access, UserRole};

/// Who a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Who {
    /// A person (`spiffe://tandem/user/...`) with at least this role.
    Person(UserRole),
    /// An agent, speaking only for its own name.
    OwnAgent,
}

/// Every call, and who may make it. `Limits` reads for viewers and
/// changes for admins: the change is the separate rule `Limits.change`.
pub(super) const CALLS: &[(&str, Who)] = &[
    ("Register", Who::OwnAgent),
    ("Heartbeat", Who::OwnAgent),
    ("ReportEvent", Who::OwnAgent),
    ("RequestTest", Who::OwnAgent),
    ("ReportLocalResult", Who::OwnAgent),
    ("ListAgents", Who::Person(UserRole::Viewer)),
    ("ShowSets", Who::Person(UserRole::Viewer)),
    ("StartTestdb", Who::Person(UserRole::Operator)),
    ("WatchRun", Who::Person(UserRole::Viewer)),
    ("CancelRun", Who::Person(UserRole::Operator)),
    ("History", Who::Person(UserRole::Viewer)),
    ("Audit", Who::Person(UserRole::Viewer)),
    ("SetPolicy", Who::Person(UserRole::Admin)),
    ("Limits", Who::Person(UserRole::Viewer)),
    ("Limits.change", Who::Person(UserRole::Admin)),
    ("MaintenancePlan", Who::Person(UserRole::Operator)),
    ("MaintenanceOpen", Who::Person(UserRole::Admin)),
    ("MaintenanceClose", Who::Person(UserRole::Admin)),
    ("MaintenanceAbort", Who::Person(UserRole::Admin)),
    ("MaintenanceShow", Who::Person(UserRole::Viewer)),
    ("ListInventory", Who::Person(UserRole::Viewer)),
    ("AddSet", Who::Person(UserRole::Admin)),
    ("ChangeSet", Who::Person(UserRole::Admin)),
    ("RemoveSet", Who::Person(UserRole::Admin)),
    ("Backup", Who::Person(UserRole::Operator)),
    ("ListBackups", Who::Person(UserRole::Viewer)),
    ("PlanWalPrune", Who::Person(UserRole::Viewer)),
    ("Restore", Who::Person(UserRole::Admin)),
    ("RestorePlan", Who::Person(UserRole::Viewer)),
    ("WatchOperation", Who::Person(UserRole::Viewer)),
    ("Controllers", Who::Person(UserRole::Viewer)),
];

/// The calls a follower answers itself, from the store and the agents:
/// reads whose answer does not live in the leader's memory. Every other
/// call (changes, agents' calls, live progress, `Limits`, which may
/// change) a follower refuses, naming the leader.
pub const FOLLOWER_CALLS: &[&str] = &[
    "ListAgents",
    "ShowSets",
    "History",
    "Audit",
    "MaintenanceShow",
    "ListInventory",
    "ListBackups",
    "PlanWalPrune",
    "RestorePlan",
    "Controllers",
];

fn rule(call: &str) -> Option<Who> {
    CALLS.iter().find(|(c, _)| *c == call).map(|(_, w)| *w)
}

/// Whether `who` may make `call`; `claimed` is the agent name an agent's
/// call speaks for.
pub(super) fn allowed(
    access: &Access,
    who: &Identity,
    call: &'static str,
    claimed: Option<&str>,
) -> Result<(), ServiceError> {
    match rule(call) {
        None => Err(ServiceError::Forbidden {
            identity: who.clone(),
            action: call,
            why: "no rule says who may make this call, so nobody",
        }),
        Some(Who::Person(needed)) => {
            let Identity::User(name) = who else {
                return Err(ServiceError::Forbidden {
                    identity: who.clone(),
                    action: call,
                    why: "only people (spiffe://tandem/user/...) may",
                });
            };
            let has = access.role_of(name);
            if has >= needed {
                Ok(())
            } else {
                Err(ServiceError::NeedsRole {
                    identity: who.clone(),
                    action: call,
                    needed,
                    has,
                })
            }
        }
        Some(Who::OwnAgent) => match who {
            Identity::Agent(name) if Some(name.as_str()) == claimed => Ok(()),
            Identity::Agent(_) => Err(ServiceError::NotYourName {
                identity: who.clone(),
                claimed: claimed.unwrap_or_default().to_owned(),
            }),
            _ => Err(ServiceError::Forbidden {
                identity: who.clone(),
                action: call,
                why: "only agents may",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_controller_has_a_rule_and_every_rule_an_rpc() {
        let proto = include_str!("../../../proto/tandem/v1/controller.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap().trim())
            .collect();
        assert!(rpcs.len() > 20, "{rpcs:?}");
        for rpc in &rpcs {
            assert!(rule(rpc).is_some(), "RPC {rpc} has no rule in CALLS");
        }
        for (call, _) in CALLS {
            let base = call.split('.').next().unwrap();
            assert!(rpcs.contains(&base), "rule {call} names no RPC");
        }
    }

    #[test]
    fn followers_answer_only_reads_that_need_not_the_leaders_memory() {
        for call in FOLLOWER_CALLS {
            assert_eq!(
                rule(call),
                Some(Who::Person(UserRole::Viewer)),
                "{call} is not a viewer's call"
            );
            assert!(!call.starts_with("Watch") && *call != "Limits", "{call}");
        }
    }

    /// The matrix: every call with each kind of identity.
    #[test]
    fn each_identity_may_make_exactly_the_calls_its_rule_allows() {
        let mut access = Access {
            default_role: UserRole::None,
            ..Access::default()
        };
        for (user, role) in [
            ("viewer", UserRole::Viewer),
            ("operator", UserRole::Operator),
            ("admin", UserRole::Admin),
        ] {
            access.users.insert(user.into(), role);
        }
        let people = [
            ("nobody", UserRole::None),
            ("viewer", UserRole::Viewer),
            ("operator", UserRole::Operator),
            ("admin", UserRole::Admin),
        ];
        for (call, who) in CALLS {
            for (user, role) in people {
                let id = Identity::User(user.into());
                let ok = allowed(&access, &id, call, Some("db1")).is_ok();
                let want = matches!(who, Who::Person(needed) if role >= *needed);
                assert_eq!(ok, want, "{user} ({role:?}) calling {call}");
            }
            let own = allowed(&access, &Identity::Agent("db1".into()), call, Some("db1"));
            assert_eq!(
                own.is_ok(),
                *who == Who::OwnAgent,
                "agent db1 calling {call}"
            );
            let other = allowed(&access, &Identity::Agent("db2".into()), call, Some("db1"));
            assert!(other.is_err(), "agent db2 speaking for db1 in {call}");
            let ctl = allowed(&access, &Identity::Controller, call, Some("db1"));
            assert!(ctl.is_err(), "the controller identity calling {call}");
        }
        let unknown = allowed(&access, &Identity::User("admin".into()), "Nope", None);
        assert!(unknown.unwrap_err().to_string().contains("no rule"));
    }
}
