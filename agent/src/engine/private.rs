//! A private PostgreSQL instance on a copy, and the integrity checks
//! (SPEC T2 steps 4-6; DESIGN data-safety rule 1).
//!
//! The copy is a throwaway, so the instance is configured by appending to
//! the copy's own `postgresql.auto.conf` (read last, so it wins): socket only
//! in a private 0700 directory beside the copy, archiving, replication and
//! synchronous commit waits off, its own `pg_hba.conf` trusting that private
//! socket only, SSL off. Without `standby.signal` it replays the log the
//! standby had not yet applied and opens in normal mode. Checks:
//! `pg_amcheck --all --heapallindexed --parent-check --install-missing`, an
//! optional full logical read (`pg_dumpall` to nowhere), then offline
//! `pg_checksums --check` once the instance is stopped. Every tool's full
//! output is appended to the `testdb.out` given by the caller.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use tandem_proto::model::{Finding, Lsn};

use super::postgres::PostgresEngine;
use super::{CheckReport, EngineError, PrivateInstance, findings, lost_rows};

/// The private instance's port (it listens on a private socket directory
/// only, so the number only names the socket file).
const PRIVATE_PORT: u16 = 5432;
pub(super) const CHECK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

pub(super) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_owned();
    move |source| EngineError::Io { op, path, source }
}

/// Append a tool's run to `out`: a header, stdout, stderr.
pub(super) fn append_output(out: &Path, title: &str, o: &Output) -> Result<String, EngineError> {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .map_err(io("append to", out))?;
    write!(
        f,
        "==== {title} (exit {}) ====\n{stdout}{}{stderr}{}\n",
        o.status
            .code()
            .map_or("signal".to_owned(), |c| c.to_string()),
        if stdout.is_empty() || stdout.ends_with('\n') {
            ""
        } else {
            "\n"
        },
        if stderr.is_empty() || stderr.ends_with('\n') {
            ""
        } else {
            "\n"
        },
    )
    .map_err(io("write", out))?;
    Ok(format!("{stdout}{stderr}"))
}

impl PostgresEngine {
    pub(super) async fn open_private_instance(
        &self,
        dir: &Path,
        timeout: Duration,
    ) -> Result<PrivateInstance, EngineError> {
        let socket_dir = dir.with_file_name("private.sock");
        let log = dir.with_file_name("private.log");
        self.runner
            .prepare_dir(&socket_dir)
            .map_err(io("prepare", &socket_dir))?;
        super::postmaster::clear_stale_socket_locks(&socket_dir);
        self.runner
            .prepare_file(&log)
            .map_err(io("prepare", &log))?;
        for signal in ["standby.signal", "recovery.signal"] {
            match std::fs::remove_file(dir.join(signal)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &dir.join(signal))(e)),
            }
        }
        // Debian keeps postgresql.conf in /etc; the copy then has none.
        let conf = dir.join("postgresql.conf");
        if !conf.exists() {
            std::fs::write(&conf, "# written by tandem for a private instance\n")
                .map_err(io("write", &conf))?;
            self.runner
                .prepare_file(&conf)
                .map_err(io("chown", &conf))?;
        }
        let hba = dir.join("tandem_hba.conf");
        std::fs::write(&hba, "local all all trust\n").map_err(io("write", &hba))?;
        self.runner.prepare_file(&hba).map_err(io("chown", &hba))?;
        let auto = dir.join("postgresql.auto.conf");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&auto)
            .map_err(io("append to", &auto))?;
        write!(
            f,
            "\n# tandem: a private instance on a copy (socket only, no archiving, no replication)\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{sock}'\n\
             port = {PRIVATE_PORT}\n\
             hba_file = '{hba}'\n\
             archive_mode = off\n\
             synchronous_standby_names = ''\n\
             primary_conninfo = ''\n\
             max_wal_senders = 0\n\
             ssl = off\n\
             autovacuum = off\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             cluster_name = 'tandem-private'\n",
            sock = socket_dir.display(),
            hba = hba.display(),
        )
        .map_err(io("write", &auto))?;
        drop(f);
        self.runner
            .prepare_file(&auto)
            .map_err(io("chown", &auto))?;

        let t = timeout.as_secs().max(1).to_string();
        let log_s = log.to_string_lossy().into_owned();
        self.pg_ctl(
            "pg_ctl start (private instance)",
            &["start", "-w", "-t", &t, "-l", &log_s],
            dir,
            timeout + Duration::from_secs(5),
        )
        .await
        .map_err(|e| match e {
            EngineError::Tool { tool, code, stderr } => EngineError::Tool {
                tool,
                code,
                stderr: format!("{stderr} (server log: {})", log.display()),
            },
            other => other,
        })?;
        let row = self
            .query_at(
                &socket_dir,
                PRIVATE_PORT,
                "SELECT pg_current_wal_lsn(), current_setting('data_checksums')",
            )
            .await?;
        let (lsn, checksums) = row.split_once('|').ok_or_else(|| EngineError::Output {
            tool: "psql",
            output: row.clone(),
        })?;
        Ok(PrivateInstance {
            data_dir: dir.to_owned(),
            socket_dir,
            port: PRIVATE_PORT,
            lsn: lsn.parse::<Lsn>().ok(),
            data_checksums: checksums == "on",
        })
    }

    pub(super) async fn check_private_instance(
        &self,
        inst: &PrivateInstance,
        logical_read: bool,
        out: &Path,
    ) -> Result<CheckReport, EngineError> {
        let conn = |cmd: &mut tokio::process::Command| {
            cmd.arg("-h")
                .arg(&inst.socket_dir)
                .arg("-p")
                .arg(inst.port.to_string())
                .arg("-U")
                .arg(&self.cfg.user);
        };
        let mut report = CheckReport::default();

        let mut cmd = self.runner.command(self.tool("pg_amcheck"));
        cmd.args([
            "--all",
            "--heapallindexed",
            "--parent-check",
            "--install-missing",
        ]);
        conn(&mut cmd);
        let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
        let text = append_output(out, "pg_amcheck --all --heapallindexed --parent-check", &o)?;
        let mut found = findings::parse_amcheck(&text);
        if !o.status.success() && found.is_empty() {
            found.push(tool_failed("pg_amcheck", &o));
        }
        report.findings.extend(found);

        if logical_read {
            let mut cmd = self.runner.command(self.tool("pg_dumpall"));
            cmd.args(["--no-sync", "-f", "/dev/null"]);
            conn(&mut cmd);
            let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
            let text = append_output(out, "pg_dumpall -f /dev/null (full logical read)", &o)?;
            if !o.status.success() {
                let mut found = findings::parse_dump_errors(&text);
                if found.is_empty() {
                    found.push(tool_failed("pg_dumpall", &o));
                }
                report.findings.extend(found);
            }
        }
        // The map the offline file checks need, while the catalogs can be
        // read; a failure is a finding (those checks then cannot run).
        if let Err(e) = self.write_relation_map(inst).await {
            report.findings.push(Finding {
                database: String::new(),
                relation: String::new(),
                kind: "check_failed".into(),
                message: format!("cannot read the relation map from the catalogs: {e}"),
            });
        }
        Ok(report)
    }

    /// Write the copy's [`lost_rows::RelationMap`] beside it.
    async fn write_relation_map(&self, inst: &PrivateInstance) -> Result<(), EngineError> {
        let q = |db: String, sql: &'static str| async move {
            self.query_in(&inst.socket_dir, inst.port, &db, sql, CHECK_TIMEOUT)
                .await
        };
        let path = lost_rows::map_path(&inst.data_dir);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove the previous", &path)(e));
            }
            _ => {}
        }
        let sizes = q(self.cfg.dbname.clone(), lost_rows::LAYOUT_SQL).await?;
        let output = |o: &str| EngineError::Output {
            tool: "psql",
            output: o.to_owned(),
        };
        let (bs, seg) = sizes.trim().split_once('|').ok_or_else(|| output(&sizes))?;
        let mut map = lost_rows::RelationMap {
            block_size: bs.parse().map_err(|_| output(&sizes))?,
            segment_blocks: seg.parse().map_err(|_| output(&sizes))?,
            ..Default::default()
        };
        let dbs = q(self.cfg.dbname.clone(), lost_rows::DATABASES_SQL).await?;
        for line in dbs.lines().filter(|l| !l.is_empty()) {
            let (allow, name) = line.split_once('|').ok_or_else(|| output(line))?;
            if allow != "t" {
                map.not_connectable.push(name.to_owned());
                continue;
            }
            let json = q(name.to_owned(), lost_rows::RELATIONS_SQL).await?;
            let relations = serde_json::from_str(json.trim()).map_err(|e| EngineError::Output {
                tool: "psql",
                output: format!("{e}: {}", json.chars().take(200).collect::<String>()),
            })?;
            map.databases.push(lost_rows::DatabaseRelations {
                database: name.to_owned(),
                relations,
            });
        }
        let bytes = serde_json::to_vec(&map).expect("the map serialises");
        std::fs::write(&path, bytes).map_err(io("write", &path))
    }

    /// The lost-rows and relation-length checks on the stopped copy.
    pub(super) async fn check_copy_files(
        &self,
        dir: &Path,
        out: &Path,
    ) -> Result<CheckReport, EngineError> {
        let path = lost_rows::map_path(dir);
        let bytes = std::fs::read(&path).map_err(io("read the relation map", &path))?;
        let map: lost_rows::RelationMap =
            serde_json::from_slice(&bytes).map_err(|e| EngineError::Output {
                tool: "the relation map",
                output: e.to_string(),
            })?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        // Dropping this future (a cancel) stops the reading threads.
        struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stop = StopOnDrop(Default::default());
        let (flag, dir2) = (stop.0.clone(), dir.to_owned());
        let t0 = std::time::Instant::now();
        let o = tokio::task::spawn_blocking(move || lost_rows::check(&dir2, &map, workers, &flag))
            .await
            .map_err(|e| EngineError::Io {
                op: "run the file checks on",
                path: dir.to_owned(),
                source: std::io::Error::other(e),
            })?;
        drop(stop);
        let mut text = format!(
            "==== lost rows and relation files (offline, {:.1}s) ====\n",
            t0.elapsed().as_secs_f64()
        );
        for f in &o.findings {
            text.push_str(&format!(
                "{} {} {}: {}\n",
                f.kind, f.database, f.relation, f.message
            ));
        }
        for c in &o.coverage {
            text.push_str(&format!("covered: {c}\n"));
        }
        for c in &o.not_covered {
            text.push_str(&format!("not covered: {c}\n"));
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .map_err(io("append to", out))?;
        writeln!(f, "{text}").map_err(io("write", out))?;
        Ok(CheckReport {
            findings: o.findings,
            coverage: o.coverage,
            not_covered: o.not_covered,
            warnings: vec![],
        })
    }

    pub(super) async fn close_private_instance(
        &self,
        inst: &PrivateInstance,
    ) -> Result<(), EngineError> {
        self.pg_ctl(
            "pg_ctl stop (private instance)",
            &["stop", "-m", "fast", "-w", "-t", "300"],
            &inst.data_dir,
            Duration::from_secs(305),
        )
        .await
        .map(|_| ())
    }

    /// `pg_checksums --check` on a stopped copy.
    pub(super) async fn checksums(
        &self,
        dir: &Path,
        out: &Path,
    ) -> Result<CheckReport, EngineError> {
        let mut cmd = self.runner.command(self.tool("pg_checksums"));
        cmd.arg("--check").arg("-D").arg(dir);
        let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
        let text = append_output(out, "pg_checksums --check (offline)", &o)?;
        let mut found = findings::parse_checksums(&text, dir);
        if !o.status.success() && found.is_empty() {
            found.push(tool_failed("pg_checksums", &o));
        }
        Ok(CheckReport {
            findings: found,
            ..CheckReport::default()
        })
    }
}

/// A tool that failed without saying what it found.
pub(super) fn tool_failed(tool: &str, o: &Output) -> Finding {
    let stderr = String::from_utf8_lossy(&o.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Finding {
        database: String::new(),
        relation: String::new(),
        kind: "check_failed".into(),
        message: format!(
            "{tool} exited with {} and reported no finding: {last}",
            o.status
                .code()
                .map_or("a signal".to_owned(), |c| format!("code {c}"))
        ),
    }
}
