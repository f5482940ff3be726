//! Before a copy-making order goes out: which mode it runs in, and, for a
//! cold copy, whether stopping the standby would make the primary's commits
//! wait.
//!
//! The mode is the one the request named, else the set's policy's, else
//! the standby agent's `[testdb] mode` ([`choose_mode`]); the order carries
//! it, so what was checked is what runs. A cold copy of a standby the
//! primary's commits wait for (its only synchronous standby, or one a
//! quorum cannot do without) is refused unless the request allows it
//! (`--allow-commit-stall`): the job ends could-not-run and nothing is sent
//! to the agent. The primary's agent is asked live (its `Status`); when it
//! cannot be asked, a cold copy is refused too. Online copies keep the
//! standby streaming and are not checked.

use tandem_proto::model::{Role, TestMode};
use tandem_proto::order::CopyOptions;
use tracing::{info, warn};

use super::fresh::Live;
use super::{Fleet, Job, Target};
use crate::syncrep::{StallWhy, StopEffect, stop_effect};

/// The mode a job runs in: the request's, else the set policy's, else the
/// agent's default; `None` when none is known (the agent then uses its own).
pub(super) fn choose_mode(
    requested: Option<TestMode>,
    policy: Option<TestMode>,
    agent_default: Option<TestMode>,
) -> Option<TestMode> {
    requested.or(policy).or(agent_default)
}

/// The escape hatches, said at the end of every refusal.
const HATCH: &str = "Test it online (--mode online), or allow it with --allow-commit-stall";

impl Fleet {
    /// The copy options of `job`'s order on `t`, or why it may not be sent.
    pub(super) async fn copy_options(&self, job: &Job, t: &Target) -> Result<CopyOptions, String> {
        let policy = match crate::scheduler::load_policies(&self.inventory, &self.store, &job.set)
            .await
        {
            Ok(p) => p.mode,
            Err(e) => {
                warn!(set = %job.set, error = %e, "cannot read the set's policies; the mode follows the request and the agent");
                None
            }
        };
        let allow = job.copy.allow_commit_stall;
        let named = choose_mode(job.copy.mode, policy, None);
        if named == Some(TestMode::Online) {
            return Ok(CopyOptions {
                mode: named,
                allow_commit_stall: allow,
            });
        }
        let live = self.ask_set(&job.set).await;
        let standby = live
            .iter()
            .find(|(agent, _)| *agent == t.agent)
            .and_then(|(_, r)| r.as_ref().ok());
        let mode = choose_mode(named, None, standby.and_then(|s| s.default_mode));
        let copy = CopyOptions {
            mode,
            allow_commit_stall: allow,
        };
        if mode == Some(TestMode::Online) {
            return Ok(copy);
        }
        // A set's only member has no primary to stall: its agent says
        // itself whether it can be copied cold.
        if standby.is_some_and(|s| s.facts.single_member) {
            return Ok(copy);
        }
        // Cold, or the standby's agent did not say its default: checked as cold.
        let noun = job.kind.noun();
        let primary = live
            .iter()
            .find_map(|(_, r)| r.as_ref().ok().filter(|l| l.facts.role == Role::Primary));
        let verdict = match primary {
            None => {
                let why: Vec<String> = live
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().err().cloned())
                    .collect();
                Err(format!(
                    "cannot ask the primary of set `{}` whether its commits wait for {}{}: a cold {noun} stops the standby, so it is refused while that is not known. {HATCH}",
                    job.set,
                    t.member,
                    if why.is_empty() {
                        " (no member says it is the primary)".to_owned()
                    } else {
                        format!(" ({})", why.join("; "))
                    }
                ))
            }
            Some(p) => judge(p, standby, t, noun),
        };
        match verdict {
            Ok(()) => Ok(copy),
            Err(why) if allow => {
                warn!(set = %job.set, member = %t.member, "{why} (allowed with --allow-commit-stall)");
                Ok(copy)
            }
            Err(why) => {
                info!(set = %job.set, member = %t.member, "cold copy refused: {why}");
                Err(why)
            }
        }
    }
}

/// Whether stopping `t` is safe for the primary `p`, as a refusal if not.
fn judge(p: &Live, standby: Option<&Live>, t: &Target, noun: &str) -> Result<(), String> {
    let name = standby.and_then(|s| s.facts.wal_receiver_application_name.as_deref());
    let (x, primary) = (&t.member, &p.member);
    match stop_effect(&p.facts, name) {
        StopEffect::NoWait => Ok(()),
        StopEffect::CommitsWait(StallWhy {
            setting,
            needed,
            others,
        }) => Err(if needed == 1 && others == 0 {
            format!(
                "{x} is the only synchronous standby of {primary} (synchronous_standby_names = '{setting}'): stopping it for a cold {noun} would make every commit on {primary} wait. {HATCH}"
            )
        } else {
            format!(
                "{x} is one of the {needed} synchronous standbys {primary} needs (synchronous_standby_names = '{setting}') and only {others} other would still stream: stopping it for a cold {noun} would make every commit on {primary} wait. {HATCH}"
            )
        }),
        StopEffect::Unknown(why) => Err(format!(
            "cannot tell whether stopping {x} would make the commits on {primary} wait ({why}): a cold {noun} is refused while that is not known. {HATCH}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TestMode::{Cold, Online};

    #[test]
    fn the_request_wins_then_the_policy_then_the_agent() {
        assert_eq!(
            choose_mode(Some(Cold), Some(Online), Some(Online)),
            Some(Cold)
        );
        assert_eq!(
            choose_mode(Some(Online), Some(Cold), Some(Cold)),
            Some(Online)
        );
        assert_eq!(choose_mode(None, Some(Cold), Some(Online)), Some(Cold));
        assert_eq!(choose_mode(None, None, Some(Online)), Some(Online));
        assert_eq!(choose_mode(None, None, Some(Cold)), Some(Cold));
        assert_eq!(choose_mode(None, None, None), None);
    }

    fn live(member: &str, role: Role, setting: Option<&str>, name: Option<&str>) -> Live {
        let mut f = tandem_proto::model::Facts::unreachable(
            "postgres",
            "/d",
            tandem_proto::model::ServerState::Running,
            String::new(),
        );
        f.role = role;
        f.synchronous_standby_names = setting.map(str::to_owned);
        f.wal_receiver_application_name = name.map(str::to_owned);
        if role == Role::Primary {
            f.replication = vec![tandem_proto::model::ReplicationPeer {
                application_name: "walreceiver".into(),
                state: "streaming".into(),
                sync_state: "sync".into(),
                sync_priority: 1,
            }];
        }
        Live {
            member: member.into(),
            facts: f,
            default_mode: Some(Cold),
        }
    }

    fn target() -> Target {
        Target {
            member: "db2".into(),
            agent: "db2".into(),
            address: "127.0.0.1:1".into(),
            host: "127.0.0.1".into(),
        }
    }

    #[test]
    fn the_refusal_says_who_waits_and_what_to_do() {
        let p = live("db1", Role::Primary, Some("*"), None);
        let s = live("db2", Role::Standby, None, Some("walreceiver"));
        let e = judge(&p, Some(&s), &target(), "test").unwrap_err();
        assert_eq!(
            e,
            "db2 is the only synchronous standby of db1 (synchronous_standby_names = '*'): stopping it for a cold test would make every commit on db1 wait. Test it online (--mode online), or allow it with --allow-commit-stall"
        );
        let p = live("db1", Role::Primary, Some(""), None);
        assert_eq!(judge(&p, Some(&s), &target(), "test"), Ok(()));
        let p = live("db1", Role::Primary, Some("*"), None);
        let e = judge(&p, None, &target(), "backup").unwrap_err();
        assert!(e.starts_with("cannot tell whether stopping db2"), "{e}");
        assert!(e.contains("a cold backup is refused"), "{e}");
    }
}
