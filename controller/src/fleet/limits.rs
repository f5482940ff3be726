//! The fleet's load rules (SPEC T7), pure: may a job start now, and if
//! not, why it waits.

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

/// May a job on `set`, testing a member on `host`, start while `busy` run?
pub fn admit(limits: &Limits, busy: &[Busy], set: &str, host: &str) -> Result<(), Wait> {
    if busy.iter().any(|b| b.set == set) {
        return Err(Wait::Set {
            set: set.to_owned(),
        });
    }
    let running = busy.len() as u32;
    if running >= limits.fleet {
        return Err(Wait::Fleet {
            running,
            limit: limits.fleet,
        });
    }
    let on_host = busy.iter().filter(|b| b.host == host).count() as u32;
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
        assert_eq!(admit(&LIMITS, &[], "a", "h1"), Ok(()));
    }

    #[test]
    fn one_operation_per_set_whatever_the_limits() {
        let big = Limits {
            fleet: 100,
            per_host: 100,
        };
        let w = admit(&big, &[busy("a", "h1")], "a", "h2").unwrap_err();
        assert_eq!(w.to_string(), "waiting: another operation runs on set a");
    }

    #[test]
    fn the_fleet_limit_counts_every_running_test() {
        let w = admit(&LIMITS, &[busy("a", "h1"), busy("b", "h2")], "c", "h3").unwrap_err();
        assert_eq!(w.to_string(), "waiting: fleet limit 2/2");
    }

    #[test]
    fn the_host_limit_counts_tests_on_that_host_only() {
        let w = admit(&LIMITS, &[busy("a", "h1")], "b", "h1").unwrap_err();
        assert_eq!(w.to_string(), "waiting: host h1 limit 1/1");
        assert_eq!(admit(&LIMITS, &[busy("a", "h1")], "b", "h2"), Ok(()));
    }

    #[test]
    fn the_set_rule_is_said_before_the_limits() {
        let w = admit(&LIMITS, &[busy("a", "h1"), busy("b", "h2")], "a", "h1").unwrap_err();
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
        let set = admit(&LIMITS, &[busy("a", "h1")], "a", "h2").unwrap_err();
        let fleet = admit(&LIMITS, &[busy("a", "h1"), busy("b", "h2")], "c", "h3").unwrap_err();
        let host = admit(&LIMITS, &[busy("a", "h1")], "b", "h1").unwrap_err();
        assert_eq!(
            [set.reason(), fleet.reason(), host.reason()],
            ["set", "fleet", "host"]
        );
    }
}
