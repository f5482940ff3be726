//! PostgreSQL's part of a restore (SPEC R2-R10): recovery settings for a
//! prepared data directory, roll-forward from the WAL archive with the
//! server on a private socket only, the upgrade hook, sequences behind
//! their column, and the server log's errors.
//!
//! Recovery settings go into `postgresql.auto.conf` between two marker
//! lines and are removed when the roll-forward is done
//! ([`PostgresEngine::close_isolated`]); the socket-only settings are
//! command-line options (`pg_ctl -o`), which do not outlive that start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use tandem_proto::model::Lsn;

use super::postgres::{PostgresEngine, check_tool};
use super::{EngineError, PrivateInstance};

const BEGIN: &str = "# tandem restore begin (removed when the restore ends)";
const END: &str = "# tandem restore end";
/// Config files taken from the data directory that was moved aside: the
/// server keeps its own settings, not the backed-up standby's.
const CONFIG_FILES: &[&str] = &[
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
];

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_owned();
    move |source| EngineError::Io { op, path, source }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Remove the marked block from an auto.conf text.
fn without_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == BEGIN {
            inside = true;
        } else if line == END {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The SQL that sets every sequence that is behind the maximum of the column
/// it feeds (owned-by or identity) past that maximum, and says each change
/// in a NOTICE `tandem-seq|<sequence>|<next before>|<max>|<table>.<column>`.
const FIX_SEQUENCES_SQL: &str = r#"DO $tandem$
DECLARE r record; mx numeric; nxt numeric;
BEGIN
FOR r IN
  SELECT s.oid::regclass::text AS seq, c.oid::regclass::text AS tbl, a.attname AS col,
         q.seqincrement AS inc
  FROM pg_class s
  JOIN pg_sequence q ON q.seqrelid = s.oid
  JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
       AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  JOIN pg_class c ON c.oid = d.refobjid
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
  WHERE s.relkind = 'S' AND q.seqincrement > 0
LOOP
  EXECUTE format('SELECT max(%I)::numeric FROM %s', r.col, r.tbl) INTO mx;
  EXECUTE format('SELECT CASE WHEN is_called THEN last_value + %s ELSE last_value END FROM %s',
                 r.inc, r.seq) INTO nxt;
  IF mx IS NOT NULL AND nxt <= mx THEN
    PERFORM setval(r.seq, mx::bigint, true);
    RAISE NOTICE 'tandem-seq|%|%|%|%.%', r.seq, nxt, mx, r.tbl, r.col;
  END IF;
END LOOP;
END
$tandem$;"#;

impl PostgresEngine {
    /// Make the prepared directory `dir` (now in place as the data
    /// directory) recover from `wal_archive` up to `target_time` (or to the
    /// end) and then promote; take the config files from `saved` (the data
    /// directory moved aside) when it has them. Returns what was done.
    pub(super) fn prepare_recovery(
        &self,
        dir: &Path,
        saved: Option<&Path>,
        wal_archive: &Path,
        target_time: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let mut notes = Vec::new();
        if let Some(saved) = saved {
            let mut taken = Vec::new();
            for name in CONFIG_FILES {
                let from = saved.join(name);
                if from.is_file() {
                    let to = dir.join(name);
                    std::fs::copy(&from, &to).map_err(io("copy the config file", &from))?;
                    self.runner.prepare_file(&to).map_err(io("chown", &to))?;
                    taken.push(*name);
                }
            }
            if !taken.is_empty() {
                notes.push(format!(
                    "config files kept from the server's own data directory: {}",
                    taken.join(", ")
                ));
            }
        }
        for name in ["standby.signal", "postmaster.pid", "postmaster.opts"] {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &dir.join(name))(e)),
            }
        }
        let signal = dir.join("recovery.signal");
        std::fs::write(&signal, b"").map_err(io("write", &signal))?;
        self.runner
            .prepare_file(&signal)
            .map_err(io("chown", &signal))?;
        let auto = dir.join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&auto).unwrap_or_default();
        let mut text = without_block(&old);
        let archive = wal_archive.display().to_string();
        text.push_str(&format!(
            "{BEGIN}\nrestore_command = {}\nrecovery_target_action = 'promote'\nrecovery_target_timeline = 'latest'\n",
            sql_literal(&format!("cp '{archive}/%f' '%p'"))
        ));
        if let Some(t) = target_time {
            text.push_str(&format!(
                "recovery_target_time = {}\nrecovery_target_inclusive = on\n",
                sql_literal(t)
            ));
        }
        text.push_str(END);
        text.push('\n');
        let mut f = std::fs::File::create(&auto).map_err(io("write", &auto))?;
        f.write_all(text.as_bytes()).map_err(io("write", &auto))?;
        f.sync_all().map_err(io("fsync", &auto))?;
        self.runner
            .prepare_file(&auto)
            .map_err(io("chown", &auto))?;
        notes.push(match target_time {
            Some(t) => format!("roll-forward from {archive} to {t}"),
            None => format!("roll-forward from {archive} to its end"),
        });
        Ok(notes)
    }

    /// Socket directory and log of the server while it serves no clients.
    fn isolated_paths(&self) -> (PathBuf, PathBuf) {
        let d = &self.cfg.data_dir;
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        (
            d.with_file_name(format!("{name}.restore.sock")),
            d.with_file_name(format!("{name}.restore.log")),
        )
    }

    /// Start the live data directory on a private socket only (no TCP) and
    /// wait until it has replayed the archive and promoted (R7).
    pub(super) async fn roll_forward(
        &self,
        timeout: Duration,
    ) -> Result<PrivateInstance, EngineError> {
        let (sock, log) = self.isolated_paths();
        self.runner
            .prepare_dir(&sock)
            .map_err(io("prepare", &sock))?;
        self.runner
            .prepare_file(&log)
            .map_err(io("prepare", &log))?;
        let opts = super::postgres::no_clients_options(&sock, self.cfg.port);
        let t = timeout.as_secs().max(1).to_string();
        let log_s = log.to_string_lossy().into_owned();
        self.pg_ctl(
            "pg_ctl start (roll-forward, socket only)",
            &["start", "-w", "-t", &t, "-l", &log_s, "-o", &opts],
            &self.cfg.data_dir,
            timeout + Duration::from_secs(5),
        )
        .await
        .map_err(|e| with_log(e, &log))?;
        let t0 = Instant::now();
        loop {
            match self
                .query_at(
                    &sock,
                    self.cfg.port,
                    "SELECT pg_is_in_recovery(), pg_current_wal_lsn()",
                )
                .await
            {
                Ok(row) if row.starts_with("f|") => {
                    let lsn = row[2..].parse::<Lsn>().ok();
                    return Ok(PrivateInstance {
                        data_dir: self.cfg.data_dir.clone(),
                        socket_dir: sock,
                        port: self.cfg.port,
                        lsn,
                        data_checksums: false,
                    });
                }
                // In recovery, or reading WAL: poll again.
                Ok(_) | Err(EngineError::Tool { .. }) => {}
                Err(e) => return Err(e),
            }
            if t0.elapsed() > timeout {
                return Err(EngineError::Tool {
                    tool: "roll-forward",
                    code: None,
                    stderr: format!(
                        "the server did not finish recovery within {timeout:?} (server log: {})",
                        log.display()
                    ),
                });
            }
            if self.server_state_of(&self.cfg.data_dir).await?
                != tandem_proto::model::ServerState::Running
            {
                return Err(with_log(
                    EngineError::Tool {
                        tool: "roll-forward",
                        code: None,
                        stderr: "the server stopped during recovery".into(),
                    },
                    &log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Run the upgrade hook with the isolated server's address in its
    /// environment (PGHOST, PGPORT, PGDATA, PGUSER), as the server's OS user.
    pub(super) async fn run_hook(
        &self,
        hook: &Path,
        inst: &PrivateInstance,
        timeout: Duration,
    ) -> Result<String, EngineError> {
        let mut cmd = self.runner.command(hook);
        cmd.env("PGHOST", &inst.socket_dir)
            .env("PGPORT", inst.port.to_string())
            .env("PGDATA", &inst.data_dir)
            .env("PGUSER", &self.cfg.user)
            .env("TANDEM_RESTORE", "1");
        let out = self.runner.output(cmd, timeout).await?;
        check_tool("upgrade hook", &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    async fn psql_output(
        &self,
        inst: &PrivateInstance,
        db: &str,
        sql: &str,
    ) -> Result<Output, EngineError> {
        let mut cmd = self.runner.command(self.tool("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(&inst.socket_dir)
            .arg("-p")
            .arg(inst.port.to_string())
            .arg("-U")
            .arg(&self.cfg.user)
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .env("PGAPPNAME", "tandem-agent");
        let out = self.runner.output(cmd, Duration::from_secs(3600)).await?;
        check_tool("psql", &out)?;
        Ok(out)
    }

    /// Set every sequence behind its column's maximum past it, in every
    /// database (R8); one line per change.
    pub(super) async fn fix_sequences(
        &self,
        inst: &PrivateInstance,
    ) -> Result<Vec<String>, EngineError> {
        let dbs = self
            .psql_output(
                inst,
                &self.cfg.dbname,
                "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1",
            )
            .await?;
        let mut changes = Vec::new();
        for db in String::from_utf8_lossy(&dbs.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let out = self.psql_output(inst, db, FIX_SEQUENCES_SQL).await?;
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                let Some(rest) = line.split("tandem-seq|").nth(1) else {
                    continue;
                };
                let f: Vec<&str> = rest.split('|').collect();
                if let [seq, before, max, col] = f[..] {
                    changes.push(format!(
                        "{db}: sequence {seq} was behind {col} (next {before}, max {max}); set to {max}"
                    ));
                }
            }
        }
        Ok(changes)
    }

    /// Stop the isolated server and remove the recovery settings.
    pub(super) async fn close_isolated(&self) -> Result<(), EngineError> {
        let state = self.server_state_of(&self.cfg.data_dir).await?;
        if state == tandem_proto::model::ServerState::Running {
            self.pg_ctl(
                "pg_ctl stop (after roll-forward)",
                &["stop", "-m", "fast", "-w", "-t", "300"],
                &self.cfg.data_dir,
                Duration::from_secs(305),
            )
            .await?;
        }
        self.remove_recovery_settings(&self.cfg.data_dir)
    }

    pub(super) fn remove_recovery_settings(&self, dir: &Path) -> Result<(), EngineError> {
        let auto = dir.join("postgresql.auto.conf");
        if let Ok(old) = std::fs::read_to_string(&auto)
            && old.contains(BEGIN)
        {
            std::fs::write(&auto, without_block(&old)).map_err(io("write", &auto))?;
        }
        let _ = std::fs::remove_file(dir.join("recovery.signal"));
        let (sock, _) = self.isolated_paths();
        let _ = std::fs::remove_dir_all(sock);
        Ok(())
    }

    /// Lines with ERROR, FATAL or PANIC in the live server's log (R10).
    pub(super) fn log_errors(&self) -> u64 {
        std::fs::read_to_string(&self.server_log)
            .map(|t| {
                t.lines()
                    .filter(|l| {
                        l.contains("ERROR:") || l.contains("FATAL:") || l.contains("PANIC:")
                    })
                    .count() as u64
            })
            .unwrap_or(0)
    }
}

fn with_log(e: EngineError, log: &Path) -> EngineError {
    let tail = std::fs::read_to_string(log)
        .map(|t| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n")
        })
        .unwrap_or_default();
    match e {
        EngineError::Tool { tool, code, stderr } => EngineError::Tool {
            tool,
            code,
            stderr: format!("{stderr} (server log {}:\n{tail})", log.display()),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_block_is_removed_whole() {
        let text = format!("a = 1\n{BEGIN}\nrestore_command = 'x'\n{END}\nb = 2\n");
        assert_eq!(without_block(&text), "a = 1\nb = 2\n");
        assert_eq!(sql_literal("it's"), "'it''s'");
    }
}
