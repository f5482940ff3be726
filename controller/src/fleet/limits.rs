//! The fleet's load rules (SPEC T7), pure: may a job start now, and if
//! not, why it waits.

use std::collections::{HashMap, HashSet};

use crate::config::Limits;

/// Why a queued job does not start yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Another operation runs on a member of the same set.
    Set {
        set: String,
    },
    Fleet {
        running: u32,
        limit: u32,
    },
    Host {
        host: String,
        running: u32,
        limit: u32,
    },
}

impl Wait {
    /// The reason's label in the fleet's wait metrics: `set`, `fleet` or
    /// `host` (the labels `metrics.rs` starts at zero).
    pub fn reason(&self) -> &'static str {
        match self {
            Wait::Set { .. } => "set",
            Wait::Fleet { .. } => "fleet",
            Wait::Host { .. } => "host",
        }
    }
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Set { set } => write!(f, "waiting: another operation runs on set {set}"),
            Wait::Fleet { running, limit } => write!(f, "waiting: fleet limit {running}/{limit}"),
            Wait::Host {
                host,
                running,
                limit,
            } => write!(f, "waiting: host {host} limit {running}/{limit}"),
        }
    }
}

/// A running job's claim on the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub set: String,
    pub host: String,
}

/// The places taken by running jobs, indexed: which sets are busy, how
/// many jobs run on each host, how many in all. The dispatcher looks at
/// every waiting job against them, so each question is one lookup, not a
/// walk over the running jobs (ten thousand agents: a thousand running,
/// thousands waiting).
#[derive(Debug, Default)]
pub struct Places {
    sets: HashSet<String>,
    hosts: HashMap<String, u32>,
    running: u32,
}

impl Places {
    pub fn of<'a>(busy: impl IntoIterator<Item = &'a Busy>) -> Places {
        let mut p = Places::default();
        for b in busy {
            p.take(b);
        }
        p
    }

    /// A job starts on `b`.
    pub fn take(&mut self, b: &Busy) {
        self.sets.insert(b.set.clone());
        *self.hosts.entry(b.host.clone()).or_insert(0) += 1;
        self.running += 1;
    }

    /// Whether an operation runs on `set`.
    pub fn set_busy(&self, set: &str) -> bool {
        self.sets.contains(set)
    }

    /// Whether the fleet limit leaves no place, whatever the set and host.
    pub fn full(&self, limits: &Limits) -> bool {
        self.running >= limits.fleet
    }

    /// Why a job waits when the fleet is full.
    pub fn fleet_wait(&self, limits: &Limits) -> Wait {
        Wait::Fleet {
            running: self.running,
            limit: limits.fleet,
        }
    }
}

/// May a job on `set`, testing a member on `host`, start while the jobs
/// of `places` run?
pub fn admit(limits: &Limits, places: &Places, set: &str, host: &str) -> Result<(), Wait> {
    if places.set_busy(set) {
        return Err(Wait::Set {
            set: set.to_owned(),
        });
    }
    if places.full(limits) {
        return Err(places.fleet_wait(limits));
    }
    let on_host = places.hosts.get(host).copied().unwrap_or(0);
    if on_host >= limits.per_host {
        return Err(Wait::Host {
            host: host.to_owned(),
            running: on_host,
            limit: limits.per_host,
        });
    }
    Ok(())
}

/// The host part of "host:port" (brackets of an IPv6 address removed).
pub(super) fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(set: &str, host: &str) -> Busy {
        Busy {
            set: set.into(),
            host: host.into(),
        }
    }

    const LIMITS: Limits = Limits {
        fleet: 2,
        per_host: 1,
    };

    #[test]
    fn an_idle_fleet_admits() {
        assert_eq!(admit(&LIMITS, &Places::default(), "a", "h1"), Ok(()));
    }

    #[test]
    fn one_operation_per_set_whatever_the_limits() {
        let big = Limits {
            fleet: 100,
            per_host: 100,
        };
        let w = admit(&big, &Places::of(&[busy("a", "h1")]), "a", "h2").unwrap_err();
        assert_eq!(w.to_string(), "waiting: another operation runs on set a");
    }

    #[test]
    fn the_fleet_limit_counts_every_running_test() {
        let w = admit(
            &LIMITS,
            &Places::of(&[busy("a", "h1"), busy("b", "h2")]),
            "c",
            "h3",
        )
        .unwrap_err();
        assert_eq!(w.to_string(), "waiting: fleet limit 2/2");
    }

    #[test]
    fn the_host_limit_counts_tests_on_that_host_only() {
        let w = admit(&LIMITS, &Places::of(&[busy("a", "h1")]), "b", "h1").unwrap_err();
        assert_eq!(w.to_string(), "waiting: host h1 limit 1/1");
        assert_eq!(
            admit(&LIMITS, &Places::of(&[busy("a", "h1")]), "b", "h2"),
            Ok(())
        );
    }

    #[test]
    fn the_set_rule_is_said_before_the_limits() {
        let w = admit(
            &LIMITS,
            &Places::of(&[busy("a", "h1"), busy("b", "h2")]),
            "a",
            "h1",
        )
        .unwrap_err();
        assert!(matches!(w, Wait::Set { .. }));
    }

    #[test]
    fn hosts_come_from_addresses() {
        assert_eq!(host_of("10.0.0.7:7701"), "10.0.0.7");
        assert_eq!(host_of("[::1]:7701"), "::1");
        assert_eq!(host_of("db7.example:7701"), "db7.example");
    }

    #[test]
    fn each_wait_has_its_metric_label() {
        let set = admit(&LIMITS, &Places::of(&[busy("a", "h1")]), "a", "h2").unwrap_err();
        let fleet = admit(
            &LIMITS,
            &Places::of(&[busy("a", "h1"), busy("b", "h2")]),
            "c",
            "h3",
        )
        .unwrap_err();
        let host = admit(&LIMITS, &Places::of(&[busy("a", "h1")]), "b", "h1").unwrap_err();
        assert_eq!(
            [set.reason(), fleet.reason(), host.reason()],
            ["set", "fleet", "host"]
        );
    }
}
