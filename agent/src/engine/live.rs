//! Maintenance on the live PostgreSQL server (SPEC T4, C4): the steps a
//! maintenance window asks of an agent.
//!
//! - `check_live`: `pg_amcheck --heapallindexed` (no `--parent-check`, so
//!   only `AccessShareLock`: read-only and online) of exactly the relations
//!   the findings name; a checksum finding names a file (`base/<db
//!   oid>/<filenode>`), resolved to its relation with `pg_filenode_relation`.
//!   `--install-missing` creates the amcheck extension where it is missing:
//!   the only write.
//! - `isolate`: the server restarted with `listen_addresses = ''` and its
//!   socket in a private 0700 directory of the agent's home
//!   (`<home>/isolated.sock`), so no client reaches it, over TCP or its
//!   usual socket; a marker (`<home>/isolated`) says so and the agent talks
//!   to the server through the private socket while it is there. `serve`
//!   restarts it normally and removes the marker. `pg_ctl start` does not
//!   reuse the options of an earlier start, so a plain start always serves
//!   clients again.
//! - `reindex`: `REINDEX INDEX` as the OS user, through the socket.
//! - `reseed`: the standby's data directory moved aside (never deleted), a
//!   fresh `pg_basebackup -R -X stream -c fast` from the `primary_conninfo`
//!   it had, and its own `postgresql.conf`, `postgresql.auto.conf`,
//!   `pg_hba.conf` and `pg_ident.conf` put back (its port, socket, name and
//!   settings are its own, not the primary's). A failed base backup puts the
//!   old directory back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tandem_proto::model::Finding;

use super::findings::{KIND_CHECKSUM, KIND_HEAP, KIND_INDEX, KIND_LOGICAL_READ};
use super::postgres::{LIVE_TIMEOUT, PostgresEngine, STATUS_TIMEOUT, check_tool};
use super::private::{CHECK_TIMEOUT, append_output, io, tool_failed};
use super::{EngineError, LiveCheck, LiveRelation, findings};

/// How long a base backup for a re-seed may take.
const RESEED_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The configuration files a re-seeded standby keeps from its old directory.
const OWN_CONFIG: [&str; 4] = [
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
];

/// `schema.name` as a quoted SQL identifier pair.
pub(crate) fn quote_relation(rel: &str) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    match rel.split_once('.') {
        Some((schema, name)) => format!("{}.{}", q(schema), q(name)),
        None => q(rel),
    }
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `base/<db oid>/<filenode>[.<segment>|_fsm|_vm]` → (db oid, filenode).
pub(crate) fn parse_relation_file(path: &str) -> Option<(u32, u32)> {
    let mut parts = path.split('/');
    if parts.next()? != "base" {
        return None;
    }
    let db = parts.next()?.parse().ok()?;
    let file = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let node = file.split(['.', '_']).next().and_then(|n| n.parse().ok())?;
    Some((db, node))
}

/// The last `primary_conninfo = '...'` in a `postgresql.auto.conf`.
pub(crate) fn primary_conninfo(auto_conf: &str) -> Option<String> {
    auto_conf
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "primary_conninfo").then(|| v.trim())
        })
        .next_back()
        .and_then(|v| v.strip_prefix('\'')?.strip_suffix('\''))
        .map(|v| v.replace("''", "'"))
        .filter(|v| !v.is_empty())
}

/// Why a finding names no relation the live server can check again; the
/// reason goes into the check's `unresolved` list.
#[derive(Debug, thiserror::Error)]
enum Unresolved {
    #[error("file {file:?} is not a relation file")]
    NotARelationFile { file: String },
    #[error(transparent)]
    Query(#[from] EngineError),
    #[error("no database with oid {db_oid} for file {file}")]
    NoDatabase { db_oid: u32, file: String },
    #[error("no relation has file {file} now")]
    NoRelation { file: String },
    #[error("a {kind} finding names no relation to re-check: {first_line}")]
    NamesNoRelation { kind: String, first_line: String },
}

impl PostgresEngine {
    /// The relation a finding names on the live server, or why none.
    async fn resolve(&self, f: &Finding) -> Result<(String, String, bool), Unresolved> {
        match f.kind.as_str() {
            KIND_INDEX | KIND_HEAP | KIND_LOGICAL_READ
                if !f.database.is_empty() && !f.relation.is_empty() =>
            {
                Ok((f.database.clone(), f.relation.clone(), f.kind == KIND_INDEX))
            }
            KIND_CHECKSUM => {
                let (db_oid, node) = parse_relation_file(&f.relation).ok_or_else(|| {
                    Unresolved::NotARelationFile {
                        file: f.relation.clone(),
                    }
                })?;
                let q = |db: String, sql: String| async move {
                    self.query_in(
                        &self.live_socket_dir(),
                        self.cfg.port,
                        &db,
                        &sql,
                        STATUS_TIMEOUT,
                    )
                    .await
                };
                let db = q(
                    self.cfg.dbname.clone(),
                    format!("SELECT datname FROM pg_database WHERE oid = {db_oid}"),
                )
                .await?;
                if db.is_empty() {
                    return Err(Unresolved::NoDatabase {
                        db_oid,
                        file: f.relation.clone(),
                    });
                }
                let row = q(
                    db.clone(),
                    format!(
                        "SELECT n.nspname || '.' || c.relname, c.relkind FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.oid = pg_filenode_relation(0, {node})"
                    ),
                )
                .await?;
                let (rel, kind) = row.split_once('|').ok_or_else(|| Unresolved::NoRelation {
                    file: f.relation.clone(),
                })?;
                Ok((db, rel.to_owned(), kind == "i"))
            }
            _ => Err(Unresolved::NamesNoRelation {
                kind: f.kind.clone(),
                first_line: f.message.lines().next().unwrap_or("").to_owned(),
            }),
        }
    }

    pub(super) async fn check_live_relations(
        &self,
        targets: &[Finding],
        out: &Path,
    ) -> Result<LiveCheck, EngineError> {
        let mut check = LiveCheck::default();
        // database -> (relation -> is_index), in a stable order.
        let mut by_db: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
        for f in targets {
            // Read from a stopped copy's files: a running server's files
            // change under a reader, so the window's closing testdb judges
            // them, not this re-check.
            if f.is_from_files() {
                continue;
            }
            match self.resolve(f).await {
                Ok((db, rel, is_index)) => {
                    by_db.entry(db).or_default().insert(rel, is_index);
                }
                Err(why) => check.unresolved.push(why.to_string()),
            }
        }
        for (db, rels) in by_db {
            let mut cmd = self.runner.command(self.tool("pg_amcheck"));
            cmd.args(["--heapallindexed", "--install-missing"])
                .arg("-h")
                .arg(self.live_socket_dir())
                .arg("-p")
                .arg(self.cfg.port.to_string())
                .arg("-U")
                .arg(&self.cfg.user)
                .arg("-d")
                .arg(&db);
            for (rel, is_index) in &rels {
                cmd.arg(if *is_index { "-i" } else { "-t" }).arg(rel);
            }
            let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
            let names: Vec<&str> = rels.keys().map(String::as_str).collect();
            let text = append_output(
                out,
                &format!(
                    "pg_amcheck --heapallindexed on the live server: {db}: {}",
                    names.join(", ")
                ),
                &o,
            )?;
            let mut found = findings::parse_amcheck(&text);
            if !o.status.success() && found.is_empty() {
                found.push(tool_failed("pg_amcheck", &o));
            }
            check.findings.extend(found);
            for (rel, is_index) in rels {
                let bytes = self
                    .query_in(
                        &self.live_socket_dir(),
                        self.cfg.port,
                        &db,
                        &format!(
                            "SELECT COALESCE(pg_relation_size(to_regclass({})), 0)",
                            literal(&quote_relation(&rel))
                        ),
                        STATUS_TIMEOUT,
                    )
                    .await
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                check.relations.push(LiveRelation {
                    database: db.clone(),
                    relation: rel,
                    is_index,
                    bytes,
                });
            }
        }
        Ok(check)
    }

    async fn start_with(&self, options: Option<&str>) -> Result<(), EngineError> {
        self.runner
            .prepare_file(&self.server_log)
            .map_err(io("prepare the server log", &self.server_log))?;
        let t = LIVE_TIMEOUT.as_secs().to_string();
        let log = self.server_log.to_string_lossy().into_owned();
        let mut args = vec!["start", "-w", "-t", &t, "-l", &log];
        if let Some(o) = options {
            args.extend(["-o", o]);
        }
        self.pg_ctl(
            "pg_ctl start",
            &args,
            &self.cfg.data_dir,
            LIVE_TIMEOUT + Duration::from_secs(5),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn isolate_live(&self) -> Result<(), EngineError> {
        use super::Engine;
        let running = self.is_running().await?;
        if running && self.isolated_marker.exists() {
            return Ok(());
        }
        let sock = self.isolated_socket_dir();
        self.runner
            .prepare_dir(&sock)
            .map_err(io("create", &sock))?;
        std::fs::write(
            &self.isolated_marker,
            b"out of client service for a maintenance window\n",
        )
        .map_err(io("write", &self.isolated_marker))?;
        self.stop().await?;
        let opts = super::postgres::no_clients_options(&sock, self.cfg.port);
        self.start_with(Some(&opts)).await
    }

    pub(super) async fn serve_live(&self) -> Result<(), EngineError> {
        use super::Engine;
        if self.isolated_marker.exists() {
            self.stop().await?;
            self.start_with(None).await?;
            std::fs::remove_file(&self.isolated_marker)
                .map_err(io("remove", &self.isolated_marker))?;
            return Ok(());
        }
        self.start().await
    }

    pub(super) async fn reindex_live(
        &self,
        database: &str,
        index: &str,
    ) -> Result<(), EngineError> {
        self.query_in(
            &self.live_socket_dir(),
            self.cfg.port,
            database,
            &format!("REINDEX INDEX {}", quote_relation(index)),
            CHECK_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn reseed_standby(&self, aside: &Path) -> Result<(), EngineError> {
        let data = self.cfg.data_dir.clone();
        if self.is_running().await? {
            return Err(EngineError::Refused(format!(
                "the server on {} is running; a re-seed needs it stopped (and fenced)",
                data.display()
            )));
        }
        // A crash after the move and before the base backup finished left
        // the old directory aside: carry on from there.
        let old = if aside.join("PG_VERSION").exists() {
            if data.exists() {
                let failed = super::dated_beside(&data, "tandem-failed-reseed");
                std::fs::rename(&data, &failed).map_err(io("move aside", &data))?;
            }
            aside.to_owned()
        } else {
            data.clone()
        };
        let auto = old.join("postgresql.auto.conf");
        let conninfo = std::fs::read_to_string(&auto)
            .ok()
            .as_deref()
            .and_then(primary_conninfo)
            .ok_or_else(|| {
                EngineError::Refused(format!(
                    "{} has no primary_conninfo: this is not a standby Tandem can re-seed",
                    auto.display()
                ))
            })?;
        if old == data {
            std::fs::rename(&data, aside).map_err(io("move aside", &data))?;
        }
        self.runner
            .prepare_dir(&data)
            .map_err(io("create", &data))?;
        let mut cmd = self.runner.command(self.tool("pg_basebackup"));
        cmd.arg("-D").arg(&data).arg("-d").arg(&conninfo).args([
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-password",
        ]);
        let result = match self.runner.output(cmd, RESEED_TIMEOUT).await {
            Ok(o) => check_tool("pg_basebackup", &o),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            // Put the old directory back; keep the failed attempt aside too.
            let failed = super::dated_beside(&data, "tandem-failed-reseed");
            let _ = std::fs::rename(&data, &failed);
            std::fs::rename(aside, &data).map_err(io("put back", aside))?;
            return Err(e);
        }
        for name in OWN_CONFIG {
            let from = aside.join(name);
            if from.exists() {
                let to = data.join(name);
                std::fs::copy(&from, &to).map_err(io("keep", &from))?;
                self.runner.prepare_file(&to).map_err(io("chown", &to))?;
            }
        }
        let signal = data.join("standby.signal");
        self.runner
            .prepare_file(&signal)
            .map_err(io("create", &signal))?;
        Ok(())
    }

    async fn is_running(&self) -> Result<bool, EngineError> {
        Ok(self.server_state_of(&self.cfg.data_dir).await?
            == tandem_proto::model::ServerState::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_name_their_database_and_filenode() {
        assert_eq!(parse_relation_file("base/5/16384"), Some((5, 16384)));
        assert_eq!(parse_relation_file("base/5/16384.2"), Some((5, 16384)));
        assert_eq!(parse_relation_file("base/5/16384_fsm"), Some((5, 16384)));
        assert_eq!(parse_relation_file("global/1262"), None);
        assert_eq!(parse_relation_file("base/x/1"), None);
    }

    #[test]
    fn the_last_primary_conninfo_wins_and_quotes_are_undone() {
        let conf = "# Do not edit\nprimary_conninfo = 'host=a port=1'\n\
                    primary_conninfo = 'user=postgres host=''/tmp/x'' port=5433'\n";
        assert_eq!(
            primary_conninfo(conf).as_deref(),
            Some("user=postgres host='/tmp/x' port=5433")
        );
        assert_eq!(primary_conninfo("port = 1\n"), None);
    }

    #[test]
    fn relations_are_quoted_as_identifiers() {
        assert_eq!(quote_relation("public.t_idx"), "\"public\".\"t_idx\"");
        assert_eq!(quote_relation("s.we\"ird"), "\"s\".\"we\"\"ird\"");
    }
}
