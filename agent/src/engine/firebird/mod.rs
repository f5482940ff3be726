//! The Firebird 3 engine: one database file served by a Firebird server.
//!
//! Firebird 3 has no physical replication, so a set has one member, which
//! reports itself as the primary, and testdb copies the live database while
//! it serves ([`Engine::needs_streaming_standby`] is false):
//!
//! - `start_backup`: `nbackup -L` locks the main file (the server writes
//!   to `<file>.delta` meanwhile); the lock outlives the agent, so the
//!   action records its release as an undo before it locks
//!   ([`Engine::backup_outlives_agent`], [`Engine::end_backup_left_behind`]);
//! - `copy_to`: the main file alone, with the ordered, hashed, fsynced copy;
//! - `stop_backup`: `nbackup -N` merges the delta back;
//! - `open_private`: `nbackup -F` on the copy (it is still marked locked)
//!   with a lock directory of its own (`<copy>.fblock`), so the tools that
//!   follow open it embedded, never through the live server;
//! - `check_private`: `gfix -v -full` (every page and record; the tables
//!   are named only in the server log, see [`findings`]) and the logical
//!   read `gbak -b` to nowhere;
//! - `check_files`: rows lost where validation does not look
//!   ([`lost_rows`]: the copy swept, each table counted through an index
//!   against the index's entries);
//! - backups are logical ([`Engine::backup_is_logical`]): `make_backup`
//!   is `gbak -b` of the opened copy, `verify_backup` its `gbak -c` into a
//!   scratch database, held to the rows `gbak -b` wrote, then validated.
//!
//! The checks themselves (validation, a backup's verification, the
//! lost-rows count) are in `checks`; the restore runbook's steps in
//! `restore`.
//!
//! Tools run as `firebird.os_user` (when the agent is root) with
//! `FIREBIRD` (the root whose `firebird.conf` they read), `ISC_USER` and
//! `ISC_PASSWORD` in their environment, never on their command line.

mod checks;
use checks::Sweep;
pub mod findings;
pub mod lost_rows;
mod restore;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tandem_proto::model::{Facts, Lsn, Role, ServerState};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{
    BackupEnd, CheckReport, CopyDone, CopyRequest, Engine, EngineError, PrivateInstance,
    ProgressFn, copy,
};
use crate::config::FirebirdConfig;
use crate::runner::{RunError, Runner};

const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// `nbackup -L`/`-N`/`-F`: quick, but `-N` merges the delta.
const NBACKUP_TIMEOUT: Duration = Duration::from_secs(3600);
/// `gfix -v -full` and `gbak -b` read the whole database.
const CHECK_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The facts query (`set list on`: one `NAME value` line per column).
const FACTS_SQL: &str = "set list on;\n\
    select rdb$get_context('SYSTEM', 'ENGINE_VERSION') as engine_version,\n\
    mon$ods_major || '.' || mon$ods_minor as ods,\n\
    mon$backup_state as backup_state from mon$database;\n";

#[derive(Debug, Clone)]
pub struct FirebirdEngine {
    cfg: FirebirdConfig,
    runner: Runner,
}

/// What the facts query read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveState {
    version: String,
    ods: String,
    /// `mon$backup_state`: 0 normal, 1 stalled (locked by `nbackup -L`),
    /// 2 merge.
    backup_state: u8,
}

impl FirebirdEngine {
    pub fn new(cfg: FirebirdConfig, runner: Runner) -> FirebirdEngine {
        FirebirdEngine { cfg, runner }
    }

    fn tool(&self, name: &str) -> PathBuf {
        match &self.cfg.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// `tool` as the OS user, with the Firebird root and the credentials
    /// in its environment.
    fn command(&self, tool: &str) -> tokio::process::Command {
        let mut cmd = self.runner.command(self.tool(tool));
        cmd.env("LC_ALL", "C").env("ISC_USER", &self.cfg.user);
        if let Some(root) = &self.cfg.root_dir {
            cmd.env("FIREBIRD", root);
        }
        if let Ok(p) = self.cfg.password() {
            cmd.env("ISC_PASSWORD", p);
        }
        cmd
    }

    /// A tool on the copy, embedded: its own lock directory, no password.
    fn embedded(&self, tool: &str, lock_dir: &Path) -> tokio::process::Command {
        let mut cmd = self.command(tool);
        cmd.env_remove("ISC_PASSWORD")
            .env("FIREBIRD_LOCK", lock_dir);
        cmd
    }

    /// `host/port:file`: the live database through its server.
    fn live_dsn(&self) -> String {
        format!(
            "{}/{}:{}",
            self.cfg.host,
            self.cfg.port,
            self.cfg.database.display()
        )
    }

    /// The database file's name (what findings call the database).
    fn db_name(&self) -> String {
        self.cfg
            .database
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn delta(&self) -> PathBuf {
        let mut s = self.cfg.database.clone().into_os_string();
        s.push(".delta");
        PathBuf::from(s)
    }

    /// The copy of the database file in the copy directory `dir`.
    fn copy_file(&self, dir: &Path) -> PathBuf {
        dir.join(self.db_name())
    }

    /// The private lock directory of the copy `dir`.
    fn lock_dir(dir: &Path) -> PathBuf {
        let mut s = dir.as_os_str().to_owned();
        s.push(".fblock");
        PathBuf::from(s)
    }

    /// Ask the server: version, ODS, backup state.
    async fn live_state(&self) -> Result<LiveState, EngineError> {
        let mut cmd = self.command("isql-fb");
        cmd.args(["-q", "-b"]).arg(self.live_dsn());
        let out = self.with_input(cmd, FACTS_SQL, STATUS_TIMEOUT).await?;
        check_tool("isql-fb", &out)?;
        parse_facts(&String::from_utf8_lossy(&out.stdout))
    }

    /// Run `cmd` with `input` on its stdin, bounded by `timeout`.
    async fn with_input(
        &self,
        mut cmd: tokio::process::Command,
        input: &str,
        timeout: Duration,
    ) -> Result<Output, EngineError> {
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A tool that exits early closes its stdin: its output says why.
            let _ = stdin.write_all(input.as_bytes()).await;
        }
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(source)) => Err(RunError::Spawn { program, source }.into()),
            Err(_) => Err(RunError::Timeout { program, timeout }.into()),
        }
    }

    async fn nbackup(
        &self,
        tool: &'static str,
        mut cmd: tokio::process::Command,
    ) -> Result<(), EngineError> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = self.runner.output(cmd, NBACKUP_TIMEOUT).await?;
        check_tool(tool, &out)
    }

    async fn unlock(&self) -> Result<(), EngineError> {
        let mut cmd = self.command("nbackup");
        cmd.arg("-N").arg(&self.cfg.database);
        self.nbackup("nbackup -N", cmd).await
    }

    fn unreachable(&self, state: ServerState, problem: String) -> Facts {
        let mut f = Facts::unreachable(
            "firebird",
            &self.cfg.database.to_string_lossy(),
            state,
            problem,
        );
        f.single_member = true;
        f
    }
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn check_tool(tool: &'static str, out: &Output) -> Result<(), EngineError> {
    if out.status.success() {
        return Ok(());
    }
    // Firebird's tools print their errors on stdout as often as on stderr.
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stdout.trim());
    }
    Err(EngineError::Tool {
        tool,
        code: out.status.code(),
        stderr: text,
    })
}

/// Parse the facts query's `set list on` output.
fn parse_facts(text: &str) -> Result<LiveState, EngineError> {
    let get = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(char::is_whitespace)?;
            (k == name).then(|| v.trim().to_owned())
        })
    };
    let bad = || EngineError::Output {
        tool: "isql-fb",
        output: text.to_owned(),
    };
    Ok(LiveState {
        version: get("ENGINE_VERSION").ok_or_else(bad)?,
        ods: get("ODS").ok_or_else(bad)?,
        backup_state: get("BACKUP_STATE")
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?,
    })
}

fn append(out: &Path, text: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .and_then(|mut f| f.write_all(text))
        .map_err(|source| EngineError::Io {
            op: "append to",
            path: out.to_owned(),
            source,
        })
}

/// What was added to `log` after its first `from` bytes (all of it when it
/// is shorter: it was rotated); empty when it cannot be read.
fn log_since(log: &Path, from: u64) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return String::new();
    };
    let from = usize::try_from(from).unwrap_or(usize::MAX);
    let tail = if from <= bytes.len() {
        &bytes[from..]
    } else {
        &bytes[..]
    };
    String::from_utf8_lossy(tail).into_owned()
}

impl Engine for FirebirdEngine {
    async fn facts(&self) -> Facts {
        let meta = match std::fs::metadata(&self.cfg.database) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.unreachable(
                    ServerState::Missing,
                    format!(
                        "the database file {} does not exist; check firebird.database",
                        self.cfg.database.display()
                    ),
                );
            }
            Err(e) => {
                return self.unreachable(
                    ServerState::Missing,
                    format!("cannot read {}: {e}", self.cfg.database.display()),
                );
            }
        };
        let delta = std::fs::metadata(self.delta()).map_or(0, |m| m.len());
        match self.live_state().await {
            Ok(s) => {
                let mut f = self.unreachable(ServerState::Running, String::new());
                f.problem = None;
                f.role = Role::Primary;
                f.data_dir_bytes = meta.len() + delta;
                f.server_version = format!("Firebird {}, ODS {}", s.version, s.ods);
                if s.backup_state != 0 {
                    let what = if s.backup_state == 1 {
                        "stalled: locked by nbackup -L"
                    } else {
                        "merging its delta"
                    };
                    f.server_version.push_str(&format!(", backup state {what}"));
                }
                f
            }
            Err(e) => {
                let mut f = self.unreachable(
                    ServerState::Stopped,
                    format!(
                        "the Firebird server at {}:{} does not answer for {}: {e}",
                        self.cfg.host,
                        self.cfg.port,
                        self.cfg.database.display()
                    ),
                );
                f.data_dir_bytes = meta.len() + delta;
                f
            }
        }
    }

    fn data_dir(&self) -> &Path {
        &self.cfg.database
    }

    fn needs_streaming_standby(&self) -> bool {
        false
    }

    fn can_copy_cold(&self) -> bool {
        false
    }

    /// The database shut down (`gfix -shut full -force 0`); its server,
    /// which may serve other databases, keeps running.
    async fn stop(&self) -> Result<(), EngineError> {
        self.shut_down().await
    }

    /// The database brought online (`gfix -online`) and answering.
    async fn start(&self) -> Result<(), EngineError> {
        self.bring_online().await
    }

    fn prepare_path(&self) -> PathBuf {
        self.prepare_file()
    }

    fn unpack_path(&self, prepare: &Path) -> PathBuf {
        let mut s = prepare.as_os_str().to_owned();
        s.push(".unpacked");
        PathBuf::from(s)
    }

    async fn restore_unpacked(
        &self,
        unpacked: &Path,
        prepare: &Path,
        replace: bool,
    ) -> Result<Vec<String>, EngineError> {
        self.restore_backup(unpacked, prepare, replace).await
    }

    fn is_prepared(&self, prepare: &Path) -> bool {
        prepare.is_file()
    }

    fn restores_from_log(&self) -> bool {
        false
    }

    /// The gbak file, and the database restored from it: about as large
    /// as the live one (or as the gbak file when there is none).
    fn restore_bytes(&self, unpacked: u64) -> u64 {
        let live = std::fs::metadata(&self.cfg.database).map_or(0, |m| m.len());
        unpacked.saturating_add(live.max(unpacked))
    }

    async fn still_serves(&self) -> bool {
        self.serves().await
    }

    fn prepare_recovery(
        &self,
        _dir: &Path,
        _saved: Option<&Path>,
        _wal_archive: Option<&Path>,
        target_time: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        self.recovery_notes(target_time)
    }

    async fn roll_forward(&self, _timeout: Duration) -> Result<PrivateInstance, EngineError> {
        self.isolate_restored().await
    }

    async fn run_hook(
        &self,
        hook: &Path,
        _inst: &PrivateInstance,
        timeout: Duration,
    ) -> Result<String, EngineError> {
        self.run_restore_hook(hook, timeout).await
    }

    async fn fix_sequences(&self, _inst: &PrivateInstance) -> Result<Vec<String>, EngineError> {
        self.fix_generators().await
    }

    /// Back to a full shutdown (the start brings it online).
    async fn close_isolated(&self) -> Result<(), EngineError> {
        self.shut_down().await
    }

    fn log_errors(&self) -> u64 {
        self.log_error_count()
    }

    async fn copy_to(
        &self,
        dst: &Path,
        req: CopyRequest,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<CopyDone, EngineError> {
        let db = self.cfg.database.clone();
        let (Some(src), Some(name)) = (db.parent(), db.file_name()) else {
            return Err(EngineError::Refused(format!(
                "firebird.database {} is not a file path",
                db.display()
            )));
        };
        let size = std::fs::metadata(&db)
            .map_err(|source| EngineError::Io {
                op: "read the size of",
                path: db.clone(),
                source,
            })?
            .len();
        let plan = copy::CopyPlan {
            entries: vec![copy::PlanEntry {
                rel: PathBuf::from(name),
                size,
                phase: 1,
            }],
            dirs: vec![],
            total_bytes: size,
        };
        let opts = copy::CopyOptions {
            workers: 1,
            owner: self.runner.owner(),
            method: req.method,
            // The server may still extend the locked file: copied at the
            // size found; `nbackup -F` on the copy makes it whole.
            live_source: true,
            manifest_now: false,
        };
        super::copy_on_blocking_pool(
            move || Ok(plan),
            src.to_owned(),
            dst.to_owned(),
            opts,
            progress,
            cancel,
            db,
        )
        .await
    }

    /// Nothing to hold: the lock lives in the database until `nbackup -N`.
    type Backup = ();

    fn backup_outlives_agent(&self) -> bool {
        true
    }

    async fn start_backup(&self) -> Result<(), EngineError> {
        let mut cmd = self.command("nbackup");
        cmd.arg("-L").arg(&self.cfg.database);
        self.nbackup("nbackup -L", cmd).await
    }

    async fn stop_backup(&self, _backup: (), _dst: &Path) -> Result<BackupEnd, EngineError> {
        self.unlock().await?;
        Ok(BackupEnd {
            lsns: None,
            added: vec![],
            wal_bytes: 0,
        })
    }

    async fn end_backup_left_behind(&self) -> Result<String, EngineError> {
        match self.unlock().await {
            Ok(()) => Ok(format!(
                "the database {} was unlocked (nbackup -N)",
                self.cfg.database.display()
            )),
            // Not locked (any more): nothing to end.
            Err(e) => match self.live_state().await {
                Ok(s) if s.backup_state == 0 => Ok(String::new()),
                _ => Err(e),
            },
        }
    }

    async fn open_private(
        &self,
        dir: &Path,
        _timeout: Duration,
    ) -> Result<PrivateInstance, EngineError> {
        let lock = Self::lock_dir(dir);
        self.runner
            .prepare_dir(&lock)
            .map_err(|source| EngineError::Io {
                op: "create the copy's lock directory",
                path: lock.clone(),
                source,
            })?;
        let mut cmd = self.embedded("nbackup", &lock);
        cmd.arg("-F").arg(self.copy_file(dir));
        self.nbackup("nbackup -F", cmd).await?;
        Ok(PrivateInstance {
            data_dir: dir.to_owned(),
            socket_dir: lock,
            port: 0,
            lsn: None,
            data_checksums: false,
        })
    }

    async fn check_private(
        &self,
        inst: &PrivateInstance,
        logical_read: bool,
        out: &Path,
    ) -> Result<CheckReport, EngineError> {
        let file = self.copy_file(&inst.data_dir);
        let file_s = file.to_string_lossy().into_owned();
        let db = self.db_name();
        let mut report = CheckReport::default();

        let (findings, warnings) = self.validate(&file, &inst.socket_dir, out).await?;
        report.findings.extend(findings);
        report.warnings.extend(warnings);
        report
            .coverage
            .push("gfix -v -full: every page and record of the copy".into());

        if logical_read {
            append(
                out,
                format!("==== gbak -b -v {file_s} (to nowhere) ====\n").as_bytes(),
            )?;
            let mut cmd = self.embedded("gbak", &inst.socket_dir);
            cmd.args(["-b", "-v", "-user"])
                .arg(&self.cfg.user)
                .arg(&file)
                .arg("stdout")
                .stdout(Stdio::null());
            let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
            let stderr = String::from_utf8_lossy(&o.stderr);
            append(out, stderr.as_bytes())?;
            report
                .findings
                .extend(findings::parse_gbak(o.status.success(), &stderr, &db));
            report
                .coverage
                .push("gbak -b: every row of every table read".into());
        }
        Ok(report)
    }

    fn backup_is_logical(&self) -> bool {
        true
    }

    /// `gbak -b` of the copy (fixed up by `nbackup -F`, exactly what the
    /// test checks) into `<dst>/<db>.fbk`: every row read, as the logical
    /// read does.
    async fn make_backup(
        &self,
        inst: &PrivateInstance,
        dst: &Path,
        out: &Path,
    ) -> Result<CheckReport, EngineError> {
        self.runner
            .prepare_dir(dst)
            .map_err(|source| EngineError::Io {
                op: "create the backup directory",
                path: dst.to_owned(),
                source,
            })?;
        let file = self.copy_file(&inst.data_dir);
        let fbk = self.backup_file(dst);
        append(
            out,
            format!(
                "==== gbak -b -v {} {} ====\n",
                file.display(),
                fbk.display()
            )
            .as_bytes(),
        )?;
        let mut cmd = self.embedded("gbak", &inst.socket_dir);
        cmd.args(["-b", "-v", "-user"])
            .arg(&self.cfg.user)
            .arg(&file)
            .arg(&fbk);
        let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
        let text = output_text(&o);
        append(out, text.as_bytes())?;
        // The rows it wrote per table, for the restore to be held to.
        let log = Self::dump_log(dst);
        std::fs::write(&log, &text).map_err(|source| EngineError::Io {
            op: "write",
            path: log,
            source,
        })?;
        let mut report = CheckReport {
            findings: findings::parse_gbak(o.status.success(), &text, &self.db_name()),
            ..CheckReport::default()
        };
        report
            .coverage
            .push("gbak -b: every row of every table read into the backup".into());
        Ok(report)
    }

    /// `gbak -c` of the backup into a scratch database beside it, then
    /// `gfix -v -full` and the lost-rows check of that; the scratch
    /// database is removed.
    async fn verify_backup(&self, dst: &Path, out: &Path) -> Result<CheckReport, EngineError> {
        let scratch = Self::scratch_dir(dst);
        let _ = std::fs::remove_dir_all(&scratch);
        let lock = scratch.join("lock");
        self.runner
            .prepare_dir(&lock)
            .and_then(|()| self.runner.prepare_dir(&scratch))
            .map_err(|source| EngineError::Io {
                op: "create the scratch directory",
                path: scratch.clone(),
                source,
            })?;
        let r = self.verify_in(dst, &scratch, &lock, out).await;
        let _ = std::fs::remove_dir_all(&scratch);
        r
    }

    async fn close_private(&self, _inst: &PrivateInstance) -> Result<(), EngineError> {
        Ok(())
    }

    async fn check_offline(&self, _dir: &Path, _out: &Path) -> Result<CheckReport, EngineError> {
        Ok(CheckReport::default())
    }

    /// Rows gone that validation may not see ([`lost_rows`]): the copy
    /// swept, then each table counted through one of its indexes against
    /// the index's entries.
    async fn check_files(&self, dir: &Path, out: &Path) -> Result<CheckReport, EngineError> {
        self.lost_rows_check(
            &self.copy_file(dir),
            &Self::lock_dir(dir),
            out,
            Sweep::Needed,
        )
        .await
    }

    /// A Firebird copy (and its `gbak` backup) has no log position: 0/0.
    async fn copy_lsns(&self, _dir: &Path) -> Result<(Lsn, Lsn), EngineError> {
        Ok((Lsn(0), Lsn(0)))
    }

    /// The tools on the copy are the agent's children, killed with it.
    fn kill_private(&self, _dir: &Path) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_read_from_isql_list_output() {
        // Verbatim isql-fb -q output of FACTS_SQL (Firebird 3.0.11).
        let text = "\nENGINE_VERSION                  3.0.11\nODS                             12.0\nBACKUP_STATE                    1\n\n";
        assert_eq!(
            parse_facts(text).unwrap(),
            LiveState {
                version: "3.0.11".into(),
                ods: "12.0".into(),
                backup_state: 1
            }
        );
        assert!(parse_facts("Statement failed").is_err());
    }

    #[test]
    fn the_log_is_read_from_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("firebird.log");
        std::fs::write(&log, "old\nnew\n").unwrap();
        assert_eq!(log_since(&log, 4), "new\n");
        // Rotated (shorter than before): all of it.
        assert_eq!(log_since(&log, 100), "old\nnew\n");
        assert_eq!(log_since(&dir.path().join("none"), 0), "");
    }
}
