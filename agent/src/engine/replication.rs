//! The replication facts the controller needs to know whether stopping a
//! standby would make the primary's commits wait: on a primary,
//! `synchronous_standby_names` and the rows of `pg_stat_replication`; on a
//! standby, the application name its WAL receiver gives the primary.
//!
//! PostgreSQL's WAL receiver connects with `primary_conninfo` and a
//! `fallback_application_name` of `cluster_name` when that is set, else
//! `walreceiver` (`walreceiver.c`, `libpqwalreceiver.c`), so the name is
//! `primary_conninfo`'s `application_name` when it has one, else
//! `cluster_name`, else `walreceiver`. (A `PGAPPNAME` in the standby
//! server's own environment would also win over the fallback; it is not
//! visible from SQL and is not looked at.)
//!
//! One query, as one JSON document, read after the facts row; when it
//! fails (a role without the rights to read `primary_conninfo`), the fields
//! stay unknown and the controller treats them so.

use serde::Deserialize;
use tandem_proto::model::{Facts, ReplicationPeer, Role};

use super::postgres::PostgresEngine;

/// Everything in one JSON row, so names with `|` or newlines survive.
const REPLICATION_SQL: &str = "SELECT json_build_object(\
     'synchronous_standby_names', CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE current_setting('synchronous_standby_names') END, \
     'replication', CASE WHEN pg_is_in_recovery() THEN '[]'::json ELSE COALESCE(\
        (SELECT json_agg(json_build_object('application_name', application_name, \
            'state', state, 'sync_state', sync_state, 'sync_priority', sync_priority)) \
         FROM pg_stat_replication), '[]'::json) END, \
     'primary_conninfo', CASE WHEN pg_is_in_recovery() \
        THEN current_setting('primary_conninfo', true) ELSE NULL END, \
     'cluster_name', current_setting('cluster_name', true))";

#[derive(Debug, Deserialize)]
struct Row {
    synchronous_standby_names: Option<String>,
    #[serde(default)]
    replication: Vec<Peer>,
    primary_conninfo: Option<String>,
    cluster_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Peer {
    application_name: Option<String>,
    state: Option<String>,
    sync_state: Option<String>,
    sync_priority: Option<i32>,
}

impl PostgresEngine {
    /// Add the replication facts to `facts` (a running server's).
    pub(super) async fn add_replication_facts(&self, facts: &mut Facts) {
        match self.query(REPLICATION_SQL).await {
            Ok(json) => {
                if let Err(e) = apply(facts, &json) {
                    tracing::warn!(error = %e, "cannot read the replication facts");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the replication facts"),
        }
    }
}

/// Put what the query's JSON says into `facts` (pure, unit-tested).
fn apply(facts: &mut Facts, json: &str) -> Result<(), serde_json::Error> {
    let row: Row = serde_json::from_str(json)?;
    match facts.role {
        Role::Primary => {
            facts.synchronous_standby_names = row.synchronous_standby_names;
            facts.replication = row
                .replication
                .into_iter()
                .map(|p| ReplicationPeer {
                    application_name: p.application_name.unwrap_or_default(),
                    state: p.state.unwrap_or_default(),
                    sync_state: p.sync_state.unwrap_or_default(),
                    sync_priority: p.sync_priority.unwrap_or(0),
                })
                .collect();
        }
        Role::Standby => {
            facts.wal_receiver_application_name = Some(receiver_name(
                row.primary_conninfo.as_deref().unwrap_or(""),
                row.cluster_name.as_deref().unwrap_or(""),
            ));
        }
        Role::Unknown => {}
    }
    Ok(())
}

/// The application name a WAL receiver with this `primary_conninfo` and
/// `cluster_name` gives the primary.
pub(crate) fn receiver_name(conninfo: &str, cluster_name: &str) -> String {
    conninfo_application_name(conninfo)
        .filter(|n| !n.is_empty())
        .or_else(|| (!cluster_name.is_empty()).then(|| cluster_name.to_owned()))
        .unwrap_or_else(|| "walreceiver".to_owned())
}

/// `application_name` of a libpq connection string, in either form
/// (`key=value ...` with single quotes and backslash escapes, or a
/// `postgresql://` URI with percent-encoding); the last one wins, as in
/// libpq.
pub(crate) fn conninfo_application_name(conninfo: &str) -> Option<String> {
    let c = conninfo.trim();
    if c.starts_with("postgresql://") || c.starts_with("postgres://") {
        let query = c.split_once('?')?.1;
        return query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == "application_name")
            .map(|(_, v)| percent_decode(v))
            .next_back();
    }
    let mut found = None;
    let mut chars = c.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return found;
        }
        let mut key = String::new();
        while let Some(&ch) = chars.peek() {
            if ch == '=' || ch.is_whitespace() {
                break;
            }
            key.push(ch);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return found;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(ch) = chars.next() {
                match ch {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => break,
                    _ => value.push(ch),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                chars.next();
                if ch == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(ch);
                }
            }
        }
        if key == "application_name" {
            found = Some(value);
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::model::ServerState;

    #[test]
    fn the_receiver_is_named_by_conninfo_then_cluster_name_then_walreceiver() {
        assert_eq!(
            receiver_name("host=/tmp port=5432 application_name=db2", "main"),
            "db2"
        );
        assert_eq!(
            receiver_name("host=/tmp application_name = 'my standby'", ""),
            "my standby"
        );
        assert_eq!(receiver_name("host=/tmp port=5432", "main"), "main");
        assert_eq!(receiver_name("host=/tmp port=5432", ""), "walreceiver");
        assert_eq!(receiver_name("application_name=''", ""), "walreceiver");
        assert_eq!(
            receiver_name(
                "postgresql://rep@db1:5432/x?sslmode=require&application_name=db%202",
                ""
            ),
            "db 2"
        );
        assert_eq!(receiver_name("postgresql://db1/", "c"), "c");
    }

    #[test]
    fn conninfo_quotes_and_escapes_are_undone_and_the_last_key_wins() {
        assert_eq!(
            conninfo_application_name(r"password='a\'b c' application_name='x\\y'").as_deref(),
            Some(r"x\y")
        );
        assert_eq!(
            conninfo_application_name("application_name=a application_name=b").as_deref(),
            Some("b")
        );
        assert_eq!(conninfo_application_name("host=a user=b"), None);
        assert_eq!(conninfo_application_name(""), None);
    }

    fn running(role: Role) -> Facts {
        let mut f = Facts::unreachable("postgres", "/d", ServerState::Running, String::new());
        f.problem = None;
        f.role = role;
        f
    }

    #[test]
    fn a_primary_reads_its_standbys_and_a_standby_its_name() {
        let json = r#"{"synchronous_standby_names": "FIRST 1 (db2, db3)",
            "replication": [{"application_name": "db2", "state": "streaming",
              "sync_state": "sync", "sync_priority": 1}],
            "primary_conninfo": null, "cluster_name": ""}"#;
        let mut p = running(Role::Primary);
        apply(&mut p, json).unwrap();
        assert_eq!(
            p.synchronous_standby_names.as_deref(),
            Some("FIRST 1 (db2, db3)")
        );
        assert_eq!(p.replication.len(), 1);
        assert_eq!(p.replication[0].sync_state, "sync");
        assert_eq!(p.wal_receiver_application_name, None);

        let json = r#"{"synchronous_standby_names": null, "replication": [],
            "primary_conninfo": "host=/tmp port=1", "cluster_name": "db2"}"#;
        let mut s = running(Role::Standby);
        apply(&mut s, json).unwrap();
        assert_eq!(s.wal_receiver_application_name.as_deref(), Some("db2"));
        assert_eq!(s.synchronous_standby_names, None);
        assert!(apply(&mut s, "not json").is_err());
    }
}
