//! Would stopping a standby make its primary's commits wait? (Pure logic,
//! unit-tested; the fleet asks it before a cold copy.)
//!
//! PostgreSQL's `synchronous_standby_names` (`syncrep_gram.y`,
//! `syncrep_scanner.l`): empty means no commit waits for a standby; else
//! `FIRST n (a, b, ...)` (priority: the first `n` streaming candidates in
//! list order are synchronous), `n (...)` (the same), a plain list `a, b`
//! (`FIRST 1`), or `ANY n (...)` (quorum: any `n` of them). `FIRST` and
//! `ANY` are keywords in any case; a name is an identifier, a number, `*`
//! (every standby) or a double-quoted name (`""` is a quote); names match a
//! standby's `application_name` without regard to case.
//!
//! Only streaming standbys count (`pg_stat_replication.state`), so when a
//! synchronous standby stops, a streaming potential one takes over: a
//! commit waits only when fewer than `n` candidates other than the stopped
//! one would still stream.

use std::fmt;

use tandem_proto::model::Facts;

/// How the synchronous standbys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `FIRST n`: the first `n` streaming candidates in list order.
    Priority,
    /// `ANY n`: any `n` of the candidates.
    Quorum,
}

/// A parsed `synchronous_standby_names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub method: Method,
    pub num_sync: u32,
    pub names: Vec<String>,
}

impl SyncConfig {
    /// Parse the setting; `Ok(None)`: empty, commits wait for no standby.
    pub fn parse(text: &str) -> Result<Option<SyncConfig>, String> {
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Ok(None);
        }
        let mut t = tokens.as_slice();
        let (method, num) = match t {
            [Tok::Any, Tok::Num(n), Tok::Open, ..] => {
                t = &t[2..];
                (Method::Quorum, Some(n.clone()))
            }
            [Tok::First, Tok::Num(n), Tok::Open, ..] => {
                t = &t[2..];
                (Method::Priority, Some(n.clone()))
            }
            [Tok::Num(n), Tok::Open, ..] => {
                t = &t[1..];
                (Method::Priority, Some(n.clone()))
            }
            _ => (Method::Priority, None),
        };
        let names = match (num.is_some(), t) {
            (true, [Tok::Open, inner @ .., Tok::Close]) => list(inner)?,
            (true, _) => return Err(format!("{text:?}: expected a list in parentheses")),
            (false, _) => list(t)?,
        };
        let num_sync = match num {
            Some(n) => n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("{text:?}: the number of synchronous standbys must be at least 1")
            })?,
            None => 1,
        };
        Ok(Some(SyncConfig {
            method,
            num_sync,
            names,
        }))
    }

    /// Whether a standby of this application name is a candidate.
    pub fn lists(&self, application_name: &str) -> bool {
        self.names
            .iter()
            .any(|n| n == "*" || n.eq_ignore_ascii_case(application_name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Any,
    First,
    Num(String),
    Name(String),
    Open,
    Close,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' | '*' => {
                chars.next();
                out.push(match c {
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    ',' => Tok::Comma,
                    _ => Tok::Name("*".into()),
                });
            }
            '"' => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        Some('"') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("{text:?}: unterminated quoted name")),
                    }
                }
                out.push(Tok::Name(name));
            }
            c if c.is_ascii_digit() => {
                let mut n = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(d);
                    chars.next();
                }
                out.push(Tok::Num(n));
            }
            c if c.is_alphabetic() || c == '_' || !c.is_ascii() => {
                let mut w = String::new();
                while let Some(&d) = chars
                    .peek()
                    .filter(|d| d.is_alphanumeric() || **d == '_' || **d == '$' || !d.is_ascii())
                {
                    w.push(d);
                    chars.next();
                }
                out.push(if w.eq_ignore_ascii_case("any") {
                    Tok::Any
                } else if w.eq_ignore_ascii_case("first") {
                    Tok::First
                } else {
                    Tok::Name(w)
                });
            }
            other => return Err(format!("{text:?}: unexpected {other:?}")),
        }
    }
    Ok(out)
}

/// `name (, name)*`.
fn list(t: &[Tok]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut want_name = true;
    for tok in t {
        match (want_name, tok) {
            (true, Tok::Name(n) | Tok::Num(n)) => names.push(n.clone()),
            (false, Tok::Comma) => {}
            _ => return Err("synchronous_standby_names: expected a list of names".into()),
        }
        want_name = !want_name;
    }
    if want_name {
        return Err("synchronous_standby_names: a name is missing in the list".into());
    }
    Ok(names)
}

/// What stopping the standby would do to the primary's commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopEffect {
    /// Commits do not wait for it (asynchronous replication, the standby
    /// is not listed, or enough other candidates stream).
    NoWait,
    /// Every commit would wait until the standby streams again.
    CommitsWait(StallWhy),
    /// The primary's facts do not say (an older agent, or it could not
    /// read them).
    Unknown(String),
}

/// Why commits would wait, for the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallWhy {
    pub setting: String,
    pub needed: u32,
    /// Other candidates that would still stream.
    pub others: u32,
}

impl fmt::Display for StallWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synchronous_standby_names = '{}' needs {} synchronous standby(s) and {} other would still stream",
            self.setting, self.needed, self.others
        )
    }
}

/// Would stopping the standby that calls itself `standby_name` (its WAL
/// receiver's application name) make the commits on `primary` wait?
pub fn stop_effect(primary: &Facts, standby_name: Option<&str>) -> StopEffect {
    let Some(setting) = &primary.synchronous_standby_names else {
        return StopEffect::Unknown("its agent did not say its synchronous_standby_names".into());
    };
    let cfg = match SyncConfig::parse(setting) {
        Ok(None) => return StopEffect::NoWait,
        Ok(Some(c)) => c,
        Err(e) => return StopEffect::Unknown(e),
    };
    let Some(name) = standby_name else {
        return StopEffect::Unknown(
            "the standby's agent did not say the application name it streams under".into(),
        );
    };
    if !cfg.lists(name) {
        return StopEffect::NoWait;
    }
    let streaming: Vec<_> = primary
        .replication
        .iter()
        .filter(|p| p.state == "streaming" && cfg.lists(&p.application_name))
        .collect();
    // The standby itself streams (it is tested only then); several
    // standbys may share its name (the default `walreceiver`): one row is it.
    let own = streaming
        .iter()
        .any(|p| p.application_name.eq_ignore_ascii_case(name));
    let others = streaming.len() as u32 - u32::from(own);
    if others >= cfg.num_sync {
        StopEffect::NoWait
    } else {
        StopEffect::CommitsWait(StallWhy {
            setting: setting.clone(),
            needed: cfg.num_sync,
            others,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::model::{ReplicationPeer, Role, ServerState};

    fn cfg(text: &str) -> SyncConfig {
        SyncConfig::parse(text).unwrap().unwrap()
    }

    #[test]
    fn the_setting_parses_as_postgresql_reads_it() {
        assert_eq!(SyncConfig::parse("").unwrap(), None);
        assert_eq!(SyncConfig::parse("   ").unwrap(), None);
        let star = cfg("*");
        assert_eq!((star.method, star.num_sync), (Method::Priority, 1));
        assert!(star.lists("anything"));
        let first = cfg("FIRST 2 (db2, db3, db4)");
        assert_eq!(first.method, Method::Priority);
        assert_eq!(first.num_sync, 2);
        assert_eq!(first.names, ["db2", "db3", "db4"]);
        let any = cfg("any 1 (db2,db3)");
        assert_eq!((any.method, any.num_sync), (Method::Quorum, 1));
        let bare = cfg("2 (a, b)");
        assert_eq!((bare.method, bare.num_sync), (Method::Priority, 2));
        let plain = cfg("db2, db3");
        assert_eq!((plain.method, plain.num_sync), (Method::Priority, 1));
        assert_eq!(plain.names, ["db2", "db3"]);
        let quoted = cfg(r#"FIRST 1 ("My ""Standby""", "first")"#);
        assert_eq!(quoted.names, [r#"My "Standby""#, "first"]);
        assert!(quoted.lists("my \"standby\""), "names match without case");
        assert!(!quoted.lists("db2"));
        assert!(SyncConfig::parse("FIRST 0 (a)").is_err());
        assert!(SyncConfig::parse("FIRST 1 a").is_err());
        assert!(SyncConfig::parse("a,,b").is_err());
        assert!(SyncConfig::parse("\"a").is_err());
    }

    fn primary(setting: Option<&str>, peers: &[(&str, &str)]) -> Facts {
        let mut f = Facts::unreachable("postgres", "/d", ServerState::Running, String::new());
        f.problem = None;
        f.role = Role::Primary;
        f.synchronous_standby_names = setting.map(str::to_owned);
        f.replication = peers
            .iter()
            .map(|(name, state)| ReplicationPeer {
                application_name: (*name).into(),
                state: (*state).into(),
                sync_state: String::new(),
                sync_priority: 0,
            })
            .collect();
        f
    }

    fn waits(e: StopEffect) -> bool {
        matches!(e, StopEffect::CommitsWait(_))
    }

    #[test]
    fn empty_is_asynchronous() {
        let p = primary(Some(""), &[("db2", "streaming")]);
        assert_eq!(stop_effect(&p, Some("db2")), StopEffect::NoWait);
    }

    #[test]
    fn the_only_standby_under_star_stalls() {
        let p = primary(Some("*"), &[("walreceiver", "streaming")]);
        let e = stop_effect(&p, Some("walreceiver"));
        assert_eq!(
            e,
            StopEffect::CommitsWait(StallWhy {
                setting: "*".into(),
                needed: 1,
                others: 0
            })
        );
    }

    #[test]
    fn a_streaming_potential_standby_takes_over() {
        let p = primary(
            Some("FIRST 1 (db2, db3)"),
            &[("db2", "streaming"), ("db3", "streaming")],
        );
        assert_eq!(stop_effect(&p, Some("db2")), StopEffect::NoWait);
        // Not streaming (catching up), it cannot take over.
        let p = primary(
            Some("FIRST 1 (db2, db3)"),
            &[("db2", "streaming"), ("db3", "catchup")],
        );
        assert!(waits(stop_effect(&p, Some("db2"))));
        // Two needed, two listed: stopping either stalls.
        let p = primary(
            Some("2 (db2, db3, db4)"),
            &[("db2", "streaming"), ("db3", "streaming")],
        );
        assert!(waits(stop_effect(&p, Some("db3"))));
    }

    #[test]
    fn a_quorum_with_enough_others_does_not_wait() {
        let peers = [
            ("db2", "streaming"),
            ("db3", "streaming"),
            ("db4", "streaming"),
        ];
        let p = primary(Some("ANY 2 (db2, db3, db4)"), &peers);
        assert_eq!(stop_effect(&p, Some("db4")), StopEffect::NoWait);
        let p = primary(Some("ANY 3 (db2, db3, db4)"), &peers);
        assert!(waits(stop_effect(&p, Some("db4"))));
    }

    #[test]
    fn a_standby_not_listed_never_stalls() {
        let p = primary(Some("db3"), &[("db2", "streaming"), ("db3", "streaming")]);
        assert_eq!(stop_effect(&p, Some("db2")), StopEffect::NoWait);
        // A plain list is FIRST 1: the first listed is the synchronous one.
        assert!(waits(stop_effect(&p, Some("DB3"))));
    }

    #[test]
    fn shared_names_count_each_standby() {
        // Two standbys both named by the default: one can stop.
        let p = primary(
            Some("*"),
            &[("walreceiver", "streaming"), ("walreceiver", "streaming")],
        );
        assert_eq!(stop_effect(&p, Some("walreceiver")), StopEffect::NoWait);
    }

    #[test]
    fn what_is_not_known_is_said() {
        let p = primary(None, &[]);
        assert!(matches!(
            stop_effect(&p, Some("db2")),
            StopEffect::Unknown(_)
        ));
        let p = primary(Some("*"), &[]);
        assert!(matches!(stop_effect(&p, None), StopEffect::Unknown(_)));
        // Asynchronous replication needs no name.
        let p = primary(Some(""), &[]);
        assert_eq!(stop_effect(&p, None), StopEffect::NoWait);
    }
}
