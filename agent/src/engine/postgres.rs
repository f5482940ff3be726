//! The PostgreSQL engine: facts from a real server through `pg_ctl status`
//! and `psql`, run as the database's OS user.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tandem_proto::model::{Facts, Lsn, Role, ServerState};

use tokio_util::sync::CancellationToken;

use super::{
    BackupEnd, CheckReport, CopyDone, CopyRequest, Engine, EngineError, PrivateInstance,
    ProgressFn, copy,
};
use crate::config::PostgresConfig;
use crate::runner::Runner;

/// testdb's warning for a copy without data checksums.
pub(super) const NO_CHECKSUMS: &str = "data checksums are off: damaged pages cannot be detected offline; enable them (pg_checksums --enable on a stopped server, or initdb --data-checksums)";

pub(super) const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// One query reads everything `facts()` needs, as one `|`-separated row.
const FACTS_SQL: &str = "SELECT current_setting('server_version'), \
     pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END, \
     COALESCE(pg_last_wal_receive_lsn()::text, ''), \
     COALESCE(pg_last_wal_replay_lsn()::text, ''), \
     COALESCE((SELECT status FROM pg_stat_wal_receiver LIMIT 1), ''), \
     COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint";

#[derive(Debug, Clone)]
pub struct PostgresEngine {
    pub(super) cfg: PostgresConfig,
    bin_dir: PathBuf,
    pub(super) runner: Runner,
    /// The live server's log when the agent starts it.
    pub(super) server_log: PathBuf,
    /// Present while the agent keeps the live server out of client service
    /// (socket only) for a maintenance window.
    pub(super) isolated_marker: PathBuf,
}

/// How long the live server may take to stop or start.
pub(super) const LIVE_TIMEOUT: Duration = Duration::from_secs(300);

impl PostgresEngine {
    /// `home` is the agent's home; the live server's log defaults to
    /// `<home>/postgres.log`.
    pub fn new(cfg: PostgresConfig, runner: Runner, home: &Path) -> PostgresEngine {
        let bin_dir = cfg
            .bin_dir
            .clone()
            .unwrap_or_else(|| find_bin_dir(&cfg.data_dir));
        let server_log = cfg
            .server_log
            .clone()
            .unwrap_or_else(|| home.join("postgres.log"));
        PostgresEngine {
            cfg,
            bin_dir,
            runner,
            server_log,
            isolated_marker: home.join("isolated"),
        }
    }

    /// The private socket directory of an isolated server.
    pub(super) fn isolated_socket_dir(&self) -> PathBuf {
        self.isolated_marker.with_extension("sock")
    }

    /// Where the live server's socket is now: its usual directory, or the
    /// private one while it is out of client service.
    pub(super) fn live_socket_dir(&self) -> PathBuf {
        if self.isolated_marker.exists() {
            self.isolated_socket_dir()
        } else {
            self.cfg.socket_dir.clone()
        }
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub(super) fn tool(&self, name: &str) -> PathBuf {
        let p = self.bin_dir.join(name);
        if p.exists() { p } else { PathBuf::from(name) }
    }

    /// `pg_ctl status`: exit 0 running, 3 not running, 4 no usable data directory.
    async fn server_state(&self) -> Result<ServerState, EngineError> {
        self.server_state_of(&self.cfg.data_dir).await
    }

    pub(super) async fn server_state_of(&self, dir: &Path) -> Result<ServerState, EngineError> {
        let mut cmd = self.runner.command(self.tool("pg_ctl"));
        cmd.arg("status").arg("-D").arg(dir);
        let out = self.runner.output(cmd, STATUS_TIMEOUT).await?;
        match out.status.code() {
            Some(0) => Ok(ServerState::Running),
            Some(3) => Ok(ServerState::Stopped),
            Some(4) => Ok(ServerState::Missing),
            code => Err(EngineError::Tool {
                tool: "pg_ctl status",
                code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }),
        }
    }

    /// Run one query on the live server through psql; returns the trimmed rows.
    pub async fn query(&self, sql: &str) -> Result<String, EngineError> {
        self.query_at(&self.live_socket_dir(), self.cfg.port, sql)
            .await
    }

    /// Run one query through psql on the server at `socket_dir`/`port`.
    pub(super) async fn query_at(
        &self,
        socket_dir: &Path,
        port: u16,
        sql: &str,
    ) -> Result<String, EngineError> {
        self.query_in(socket_dir, port, &self.cfg.dbname, sql, STATUS_TIMEOUT)
            .await
    }

    /// Run one query in database `db` through psql on the server at
    /// `socket_dir`/`port`.
    pub(super) async fn query_in(
        &self,
        socket_dir: &Path,
        port: u16,
        db: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<String, EngineError> {
        let mut cmd = self.psql_command(socket_dir, port);
        cmd.arg("-d").arg(db).arg("-c").arg(sql);
        let out = self.runner.output(cmd, timeout).await?;
        check_tool("psql", &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// psql, unaligned rows with `|` between columns, stopping at the first
    /// error, on the server at `socket_dir`/`port` as the configured user
    /// (the configured database unless `-d` follows).
    pub(super) fn psql_command(&self, socket_dir: &Path, port: u16) -> tokio::process::Command {
        let mut cmd = self.runner.command(self.tool("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "|"])
            .arg("-h")
            .arg(socket_dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-U")
            .arg(&self.cfg.user)
            .env("PGCONNECT_TIMEOUT", "5")
            .env("PGAPPNAME", "tandem-agent");
        cmd
    }

    /// `pg_ctl` with `args` on data directory `dir`, as the OS user.
    pub(super) async fn pg_ctl(
        &self,
        tool: &'static str,
        args: &[&str],
        dir: &Path,
        timeout: Duration,
    ) -> Result<Output, EngineError> {
        let mut cmd = self.runner.command(self.tool("pg_ctl"));
        cmd.args(args).arg("-D").arg(dir);
        let out = self.runner.output(cmd, timeout).await?;
        check_tool(tool, &out)?;
        Ok(out)
    }

    fn unreachable(&self, state: ServerState, problem: String) -> Facts {
        Facts::unreachable(
            "postgres",
            &self.cfg.data_dir.to_string_lossy(),
            state,
            problem,
        )
    }
}

impl Engine for PostgresEngine {
    fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    fn no_offline_check(&self, inst: &PrivateInstance) -> Option<String> {
        (!inst.data_checksums).then(|| NO_CHECKSUMS.to_owned())
    }

    async fn stop(&self) -> Result<(), EngineError> {
        if self.server_state().await? != ServerState::Running {
            return Ok(());
        }
        let t = LIVE_TIMEOUT.as_secs().to_string();
        self.pg_ctl(
            "pg_ctl stop",
            &["stop", "-m", "fast", "-w", "-t", &t],
            &self.cfg.data_dir,
            LIVE_TIMEOUT + Duration::from_secs(5),
        )
        .await
        .map(|_| ())
    }

    async fn start(&self) -> Result<(), EngineError> {
        if self.server_state().await? == ServerState::Running {
            return Ok(());
        }
        self.runner
            .prepare_file(&self.server_log)
            .map_err(|source| EngineError::Io {
                op: "prepare the server log",
                path: self.server_log.clone(),
                source,
            })?;
        let t = LIVE_TIMEOUT.as_secs().to_string();
        let log = self.server_log.to_string_lossy().into_owned();
        self.pg_ctl(
            "pg_ctl start",
            &["start", "-w", "-t", &t, "-l", &log],
            &self.cfg.data_dir,
            LIVE_TIMEOUT + Duration::from_secs(5),
        )
        .await
        .map(|_| ())
    }

    async fn copy_to(
        &self,
        dst: &Path,
        req: CopyRequest,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<CopyDone, EngineError> {
        let src = self.cfg.data_dir.clone();
        let dst = dst.to_owned();
        let opts = copy::CopyOptions {
            workers: req.workers.max(1),
            owner: self.runner.owner(),
            method: req.method,
            live_source: req.online,
            manifest_now: false,
        };
        let online = req.online;
        let what = self.cfg.data_dir.clone();
        let plan_src = src.clone();
        super::copy_on_blocking_pool(
            move || {
                Ok(if online {
                    copy::plan_live(&plan_src)?
                } else {
                    copy::plan(&plan_src)?
                })
            },
            src,
            dst,
            opts,
            progress,
            cancel,
            what,
        )
        .await
    }

    type Backup = super::online::OnlineBackup;

    async fn start_backup(&self) -> Result<Self::Backup, EngineError> {
        self.start_online_backup().await
    }

    async fn stop_backup(
        &self,
        backup: Self::Backup,
        dst: &Path,
    ) -> Result<BackupEnd, EngineError> {
        self.stop_online_backup(backup, dst).await
    }

    async fn open_private(
        &self,
        dir: &Path,
        timeout: Duration,
    ) -> Result<PrivateInstance, EngineError> {
        self.open_private_instance(dir, timeout).await
    }

    async fn check_private(
        &self,
        inst: &PrivateInstance,
        logical_read: bool,
        out: &Path,
    ) -> Result<CheckReport, EngineError> {
        self.check_private_instance(inst, logical_read, out).await
    }

    async fn close_private(&self, inst: &PrivateInstance) -> Result<(), EngineError> {
        self.close_private_instance(inst).await
    }

    async fn check_offline(&self, dir: &Path, out: &Path) -> Result<CheckReport, EngineError> {
        self.checksums(dir, out).await
    }

    async fn check_files(&self, dir: &Path, out: &Path) -> Result<CheckReport, EngineError> {
        self.check_copy_files(dir, out).await
    }

    fn kill_private(&self, dir: &Path) {
        super::postmaster::kill_postmaster(dir);
    }

    async fn check_live(
        &self,
        targets: &[tandem_proto::model::Finding],
        out: &Path,
    ) -> Result<super::LiveCheck, EngineError> {
        self.check_live_relations(targets, out).await
    }

    async fn isolate(&self) -> Result<(), EngineError> {
        self.isolate_live().await
    }

    async fn serve(&self) -> Result<(), EngineError> {
        self.serve_live().await
    }

    async fn reindex(&self, database: &str, index: &str) -> Result<(), EngineError> {
        self.reindex_live(database, index).await
    }

    async fn reseed(&self, aside: &Path) -> Result<(), EngineError> {
        self.reseed_standby(aside).await
    }

    fn prepare_recovery(
        &self,
        dir: &Path,
        saved: Option<&Path>,
        wal_archive: Option<&Path>,
        target_time: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let Some(wal_archive) = wal_archive else {
            return Err(EngineError::Refused(
                "a PostgreSQL restore needs [backup] wal_archive in agent.toml".into(),
            ));
        };
        PostgresEngine::prepare_recovery(self, dir, saved, wal_archive, target_time)
    }

    async fn roll_forward(&self, timeout: Duration) -> Result<PrivateInstance, EngineError> {
        PostgresEngine::roll_forward(self, timeout).await
    }

    async fn run_hook(
        &self,
        hook: &Path,
        inst: &PrivateInstance,
        timeout: Duration,
    ) -> Result<String, EngineError> {
        PostgresEngine::run_hook(self, hook, inst, timeout).await
    }

    async fn fix_sequences(&self, inst: &PrivateInstance) -> Result<Vec<String>, EngineError> {
        PostgresEngine::fix_sequences(self, inst).await
    }

    async fn close_isolated(&self) -> Result<(), EngineError> {
        PostgresEngine::close_isolated(self).await
    }

    fn remove_recovery_settings(&self, dir: &Path) -> Result<(), EngineError> {
        PostgresEngine::remove_recovery_settings(self, dir)
    }

    fn log_errors(&self) -> u64 {
        PostgresEngine::log_errors(self)
    }

    async fn copy_lsns(&self, dir: &Path) -> Result<(Lsn, Lsn), EngineError> {
        let mut cmd = self.runner.command(self.tool("pg_controldata"));
        cmd.arg("-D").arg(dir).env("LC_ALL", "C");
        let out = self.runner.output(cmd, STATUS_TIMEOUT).await?;
        check_tool("pg_controldata", &out)?;
        parse_control_lsns(&String::from_utf8_lossy(&out.stdout))
    }

    async fn facts(&self) -> Facts {
        let data_dir = self.cfg.data_dir.clone();
        if !data_dir.join("PG_VERSION").exists() {
            return self.unreachable(
                ServerState::Missing,
                format!(
                    "data directory {} does not exist or is not a PostgreSQL data directory; check postgres.data_dir in agent.toml",
                    data_dir.display()
                ),
            );
        }
        let bytes = tokio::task::spawn_blocking(move || dir_size(&data_dir))
            .await
            .unwrap_or(0);
        let state = match self.server_state().await {
            Ok(s) => s,
            Err(e) => return self.unreachable(ServerState::Stopped, e.to_string()),
        };
        if state != ServerState::Running {
            let mut f = self.unreachable(
                state,
                format!(
                    "PostgreSQL is not running on {}; start it (pg_ctl start -D {})",
                    self.cfg.data_dir.display(),
                    self.cfg.data_dir.display()
                ),
            );
            f.data_dir_bytes = bytes;
            return f;
        }
        let mut facts = match self.query(FACTS_SQL).await {
            Ok(row) => match parse_facts_row(&row) {
                Ok(f) => f,
                Err(e) => self.unreachable(ServerState::Running, e.to_string()),
            },
            Err(e) => self.unreachable(
                ServerState::Running,
                format!(
                    "cannot query PostgreSQL at {} port {}: {e}",
                    self.cfg.socket_dir.display(),
                    self.cfg.port
                ),
            ),
        };
        facts.data_dir = self.cfg.data_dir.to_string_lossy().into_owned();
        facts.data_dir_bytes = bytes;
        if facts.problem.is_none() {
            self.add_replication_facts(&mut facts).await;
        }
        facts
    }
}

/// The redo start and the consistent end from `pg_controldata` output.
fn parse_control_lsns(text: &str) -> Result<(Lsn, Lsn), EngineError> {
    let field = |name: &str| -> Option<Lsn> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
    };
    let bad = || EngineError::Output {
        tool: "pg_controldata",
        output: text.chars().take(400).collect(),
    };
    let redo = field("Latest checkpoint's REDO location").ok_or_else(bad)?;
    let checkpoint = field("Latest checkpoint location").ok_or_else(bad)?;
    let min_recovery = field("Minimum recovery ending location").unwrap_or(Lsn(0));
    Ok((redo, checkpoint.max(min_recovery)))
}

/// `pg_ctl -o` options that keep every client out: no TCP, and the socket in
/// a directory only the agent knows (a maintenance window's isolated
/// primary, a restore's roll-forward).
pub(super) fn no_clients_options(socket_dir: &Path, port: u16) -> String {
    format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -c port={port}",
        socket_dir.display()
    )
}

/// A tool's non-zero exit as an error with its stderr.
pub(super) fn check_tool(tool: &'static str, out: &Output) -> Result<(), EngineError> {
    if out.status.success() {
        return Ok(());
    }
    Err(EngineError::Tool {
        tool,
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Parse the row of [`FACTS_SQL`].
fn parse_facts_row(row: &str) -> Result<Facts, EngineError> {
    let bad = || EngineError::Output {
        tool: "psql",
        output: row.to_owned(),
    };
    let cols: Vec<&str> = row.split('|').collect();
    let [
        version,
        in_recovery,
        current,
        received,
        replayed,
        receiver,
        lag,
    ] = cols[..]
    else {
        return Err(bad());
    };
    let lsn = |s: &str| -> Result<Option<Lsn>, EngineError> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse().map(Some).map_err(|()| bad())
        }
    };
    let standby = match in_recovery {
        "t" => true,
        "f" => false,
        _ => return Err(bad()),
    };
    let receiver = (!receiver.is_empty()).then(|| receiver.to_owned());
    Ok(Facts {
        engine: "postgres".into(),
        server_version: version.split_whitespace().next().unwrap_or("").to_owned(),
        server_state: ServerState::Running,
        role: if standby {
            Role::Standby
        } else {
            Role::Primary
        },
        data_dir: String::new(),
        data_dir_bytes: 0,
        current_lsn: lsn(current)?,
        received_lsn: lsn(received)?,
        replayed_lsn: lsn(replayed)?,
        fully_received: standby && receiver.as_deref() == Some("streaming"),
        wal_receiver_status: receiver,
        replay_lag_bytes: lag.parse::<i64>().map_err(|_| bad())?.max(0) as u64,
        problem: None,
        observed_at: jiff::Timestamp::now(),
        synchronous_standby_names: None,
        replication: vec![],
        wal_receiver_application_name: None,
        single_member: false,
    })
}

/// `/usr/lib/postgresql/<major>/bin` from the data directory's PG_VERSION,
/// when it exists; otherwise an empty path (tools are then found on PATH).
fn find_bin_dir(data_dir: &Path) -> PathBuf {
    if let Ok(v) = std::fs::read_to_string(data_dir.join("PG_VERSION")) {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", v.trim()));
        if p.is_dir() {
            return p;
        }
    }
    PathBuf::new()
}

/// Total size of the regular files below `dir` (symlinks not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_standby_row() {
        let f =
            parse_facts_row("15.18 (Debian 15.18-0+deb12u1)|t||0/3000148|0/3000148|streaming|0")
                .unwrap();
        assert_eq!(f.role, Role::Standby);
        assert_eq!(f.server_version, "15.18");
        assert_eq!(f.received_lsn, Some(Lsn(0x3000148)));
        assert!(f.fully_received);
        assert_eq!(f.current_lsn, None);
    }

    #[test]
    fn parses_a_primary_row() {
        let f = parse_facts_row("16.4|f|0/5000060||||0").unwrap();
        assert_eq!(f.role, Role::Primary);
        assert_eq!(f.current_lsn, Some(Lsn(0x5000060)));
        assert!(!f.fully_received);
        assert_eq!(f.wal_receiver_status, None);
    }

    #[test]
    fn a_standby_in_catchup_is_not_fully_received() {
        let f = parse_facts_row("15.18|t||0/3000148|0/3000000|catchup|328").unwrap();
        assert!(!f.fully_received);
        assert_eq!(f.replay_lag_bytes, 328);
    }

    #[test]
    fn control_lsns_are_read() {
        let text = "Latest checkpoint location:           0/5000060\n\
                    Latest checkpoint's REDO location:    0/5000028\n\
                    Minimum recovery ending location:     0/6000110\n";
        let (a, b) = parse_control_lsns(text).unwrap();
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("0/5000028".into(), "0/6000110".into())
        );
        assert!(parse_control_lsns("nothing").is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_facts_row("15.18|x||||").is_err());
        assert!(parse_facts_row("").is_err());
        assert!(parse_facts_row("15|t|zz||||0").is_err());
    }

    #[test]
    fn dir_size_counts_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(d.path()), 123);
    }
}
