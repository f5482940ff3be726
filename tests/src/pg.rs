//! Real PostgreSQL for end-to-end tests: the server binaries ([`PgBin`]), the
//! OS user servers run as ([`OsUser`]), one server ([`PgServer`]) and a
//! replication set of a primary and streaming standbys in a private temporary
//! directory ([`PgPair`]).
//!
//! PostgreSQL refuses to run as root, so when the test process is root every
//! server command (initdb, pg_ctl, pg_basebackup, psql, ...) runs as the
//! `postgres` OS user from `/`, and the parts of the temporary directory the
//! servers write (data dirs, socket dirs, log files) are owned by that user.
//! Otherwise commands run as the current user.
//!
//! Servers listen on their own Unix socket directory only
//! (`listen_addresses = ''`); the port only names the socket. Commands are
//! blocking (`std::process`); a psql call takes a few milliseconds.
//!
//! [`PgPair`] owns its servers and the directory: dropping it stops every
//! server (`pg_ctl stop -m immediate`) and removes the directory, unless the
//! thread is panicking, [`PgPair::keep`] was called or
//! `TANDEM_KEEP_TEST_DIRS=1`; then the directory and logs stay and their paths
//! are printed.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::wait::{free_port, wait_for};

/// libpq environment variables that would redirect the harness's commands.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGSSLMODE",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
    "PGTARGETSESSIONATTRS",
];

/// How long starting a server or waiting for streaming may take.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often conditions on servers are polled.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The directory of the PostgreSQL server binaries (initdb, pg_ctl, postgres,
/// pg_basebackup, psql, ...).
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    /// Env `TANDEM_PG_BIN` if set; else `pg_config --bindir` if that directory
    /// has `initdb`; else the newest `/usr/lib/postgresql/<version>/bin`.
    pub fn find() -> anyhow::Result<PgBin> {
        if let Some(dir) = std::env::var_os("TANDEM_PG_BIN") {
            let dir = PathBuf::from(dir);
            ensure!(
                dir.join("initdb").is_file(),
                "TANDEM_PG_BIN={} has no `initdb`; point it at the PostgreSQL server bin directory",
                dir.display()
            );
            return Ok(PgBin { dir });
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").is_file() {
                return Ok(PgBin { dir });
            }
        }
        let mut newest: Option<(u32, PathBuf)> = None;
        if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
            for e in entries.flatten() {
                let version = e.file_name().to_string_lossy().parse::<u32>().ok();
                let bin = e.path().join("bin");
                if let Some(v) = version
                    && bin.join("initdb").is_file()
                    && newest.as_ref().is_none_or(|(best, _)| v > *best)
                {
                    newest = Some((v, bin));
                }
            }
        }
        match newest {
            Some((_, dir)) => Ok(PgBin { dir }),
            None => bail!(
                "PostgreSQL server binaries not found: no TANDEM_PG_BIN, no `initdb` in \
                 `pg_config --bindir`, nothing in /usr/lib/postgresql/*/bin; install the \
                 PostgreSQL server (Debian: `apt-get install postgresql`) or set TANDEM_PG_BIN"
            ),
        }
    }

    /// The path of one tool, e.g. `path("pg_ctl")`.
    pub fn path(&self, tool: &str) -> PathBuf {
        self.dir.join(tool)
    }

    /// A command for `tool`, run as `user` (from `/`) when given, with the
    /// libpq environment cleared and `LC_ALL=C` (stable messages), stdin null.
    pub fn command(&self, tool: &str, user: Option<&OsUser>) -> Command {
        let mut cmd = Command::new(self.path(tool));
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C").stdin(Stdio::null());
        if let Some(u) = user {
            cmd.uid(u.uid).gid(u.gid).current_dir("/");
        }
        cmd
    }
}

/// The OS user PostgreSQL servers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    /// Some(`postgres`) when running as root (PostgreSQL refuses root), None
    /// otherwise (commands run as the current user). Also None when root and
    /// no `postgres` user exists; server commands then fail with
    /// PostgreSQL's own "cannot be run as root".
    pub fn for_server() -> Option<OsUser> {
        if !nix::unistd::Uid::effective().is_root() {
            return None;
        }
        let u = nix::unistd::User::from_name("postgres").ok().flatten()?;
        Some(OsUser {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    }

    /// Make `path` owned by this user.
    pub fn chown(&self, path: &Path) -> anyhow::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to {}", path.display(), self.name))
    }
}

/// One PostgreSQL server made by the harness.
#[derive(Debug, Clone)]
pub struct PgServer {
    pub name: String,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log_file: PathBuf,
    bin: PgBin,
    user: Option<OsUser>,
}

impl PgServer {
    /// Lay out `<dir>/<name>/` (data, 0700), `<dir>/<name>.sock/` and
    /// `<dir>/<name>.log`, owned by the server user; pick a port.
    fn prepare(dir: &Path, name: &str, bin: &PgBin, user: Option<&OsUser>) -> anyhow::Result<Self> {
        let server = PgServer {
            name: name.to_string(),
            data_dir: dir.join(name),
            socket_dir: dir.join(format!("{name}.sock")),
            port: free_port(),
            log_file: dir.join(format!("{name}.log")),
            bin: bin.clone(),
            user: user.cloned(),
        };
        let socket = server.socket_dir.join(format!(".s.PGSQL.{}", server.port));
        ensure!(
            socket.as_os_str().len() < 100,
            "socket path {} is too long for a Unix socket (limit ~107 bytes); use a shorter \
             name or a shorter TMPDIR",
            socket.display()
        );
        for (path, mode) in [(&server.data_dir, 0o700), (&server.socket_dir, 0o755)] {
            fs::create_dir(path).with_context(|| format!("create {}", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
        fs::write(&server.log_file, "")
            .with_context(|| format!("create {}", server.log_file.display()))?;
        if let Some(u) = user {
            for path in [&server.data_dir, &server.socket_dir, &server.log_file] {
                u.chown(path)?;
            }
        }
        Ok(server)
    }

    /// Lay out a server's files in `dir` for a server something else
    /// makes and runs (e.g. Patroni): `<dir>/<name>/` (empty data dir,
    /// 0700), `<dir>/<name>.sock/`, `<dir>/<name>.log`, owned by the server
    /// user, and a free port. Nothing is initialised or started.
    pub fn layout(dir: &Path, name: &str) -> anyhow::Result<PgServer> {
        let bin = PgBin::find()?;
        PgServer::prepare(dir, name, &bin, OsUser::for_server().as_ref())
    }

    /// The OS user server commands run as (None: the current user).
    pub fn os_user(&self) -> Option<&OsUser> {
        self.user.as_ref()
    }

    /// The PostgreSQL server binaries this server uses.
    pub fn bin_dir(&self) -> &Path {
        &self.bin.dir
    }

    /// A command for a PostgreSQL tool, run as this server's OS user.
    pub fn command(&self, tool: &str) -> Command {
        self.bin.command(tool, self.user.as_ref())
    }

    /// A libpq connection string for this server as `postgres` to `db`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Run `sql` with `psql -X -A -t -v ON_ERROR_STOP=1` as `postgres` on
    /// `db`; trimmed stdout. The error includes psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string()])
            .args(["-d", db, "-c", sql]);
        let out = run(&mut cmd).with_context(|| format!("psql on {} ({db}): {sql}", self.name))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `pgbench -i -q -s SCALE` on the `postgres` database.
    pub fn pgbench_init(&self, scale: u32) -> anyhow::Result<()> {
        let mut cmd = self.command("pgbench");
        cmd.args(["-i", "-q", "-s", &scale.to_string(), "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"]);
        run(&mut cmd).with_context(|| format!("pgbench -i on {}", self.name))?;
        Ok(())
    }

    /// `pgbench` writing to this server (two clients) until killed, or for
    /// `seconds` at most.
    pub fn pgbench_load(&self, seconds: u32) -> std::process::Child {
        self.command("pgbench")
            .args(["-n", "-c", "2", "-T", &seconds.to_string(), "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pgbench starts")
    }

    /// `pg_ctl start -w -l log_file`; on failure the error has the log's tail.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut cmd = self.pg_ctl("start");
        cmd.arg("-w")
            .args(["-t", &SERVER_TIMEOUT.as_secs().to_string()])
            .arg("-l")
            .arg(&self.log_file);
        run(&mut cmd).with_context(|| {
            format!(
                "start {}; log {}:\n{}",
                self.name,
                self.log_file.display(),
                log_tail(&self.log_file, 30)
            )
        })?;
        Ok(())
    }

    /// `pg_ctl stop -m fast -w`; Ok if the server was not running.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.stop_mode("fast")
    }

    /// `pg_ctl stop -m immediate -w` (a crash, as far as the server can tell);
    /// Ok if the server was not running.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        self.stop_mode("immediate")
    }

    fn stop_mode(&self, mode: &str) -> anyhow::Result<()> {
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-m", mode, "-w"]);
        match run(&mut cmd) {
            Ok(_) => Ok(()),
            Err(_) if !self.is_running() => Ok(()),
            Err(e) => Err(e.context(format!("stop {} ({mode})", self.name))),
        }
    }

    /// Whether `pg_ctl status` sees a running server.
    pub fn is_running(&self) -> bool {
        self.pg_ctl("status")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `select pg_is_in_recovery()`: true on a standby.
    pub fn is_in_recovery(&self) -> anyhow::Result<bool> {
        match self
            .psql("postgres", "select pg_is_in_recovery()")?
            .as_str()
        {
            "t" => Ok(true),
            "f" => Ok(false),
            other => bail!("pg_is_in_recovery() on {} returned {other:?}", self.name),
        }
    }

    /// `pg_ctl promote -w`: the standby becomes a primary.
    pub fn promote(&self) -> anyhow::Result<()> {
        let mut cmd = self.pg_ctl("promote");
        cmd.arg("-w")
            .args(["-t", &SERVER_TIMEOUT.as_secs().to_string()]);
        run(&mut cmd).with_context(|| format!("promote {}", self.name))?;
        Ok(())
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg(action).arg("-D").arg(&self.data_dir);
        cmd
    }

    /// Append settings to this server's `postgresql.conf`.
    fn append_conf(&self, settings: &[(&str, String)]) -> anyhow::Result<()> {
        let path = self.data_dir.join("postgresql.conf");
        let mut text =
            fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.push_str("\n# tandem test harness\n");
        for (key, value) in settings {
            let _ = writeln!(text, "{key} = {value}");
        }
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    /// The settings that give this server its own socket, port and name.
    fn identity_conf(&self) -> Vec<(&'static str, String)> {
        vec![
            ("port", self.port.to_string()),
            (
                "unix_socket_directories",
                quote(&self.socket_dir.to_string_lossy()),
            ),
            ("cluster_name", quote(&self.name)),
        ]
    }
}

/// A replication set for tests: a primary and `standbys` streaming standbys,
/// each with its own port, socket dir and log, in a private temp directory.
#[derive(Debug)]
pub struct PgPair {
    /// The private temporary directory holding every server's files.
    pub dir: PathBuf,
    pub primary: PgServer,
    pub standbys: Vec<PgServer>,
    /// Servers on other data directories, e.g. on a copy
    /// ([`PgPair::add_server_on`]); stopped first when the pair is dropped.
    pub others: Vec<PgServer>,
    keep: bool,
}

impl PgPair {
    /// initdb a primary (data checksums, trust auth, wal_level replica) and
    /// make `standbys` standbys with `pg_basebackup -R -X stream -c fast`;
    /// returns when every standby streams. Files are named
    /// `<name>-primary{/,.sock/,.log}`, `<name>-standby1{...}`, ...
    ///
    /// `name` is short (at most 16 of `[A-Za-z0-9_-]`) to keep socket paths
    /// under the Unix limit. On error the directory is kept and named in the
    /// error.
    pub async fn create(name: &str, standbys: usize) -> anyhow::Result<PgPair> {
        Self::create_in(&tempfile::env::temp_dir(), name, standbys).await
    }

    /// [`PgPair::create`] with the private directory made in `parent` (for
    /// example on a filesystem of the test's own) instead of TMPDIR.
    pub async fn create_in(parent: &Path, name: &str, standbys: usize) -> anyhow::Result<PgPair> {
        ensure!(
            !name.is_empty()
                && name.len() <= 16
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "pair name {name:?} must be 1-16 characters of [A-Za-z0-9_-]"
        );
        let owned = name.to_string();
        let parent = parent.to_owned();
        let mut pair =
            tokio::task::spawn_blocking(move || PgPair::build(&parent, &owned, standbys))
                .await
                .context("the task building the replication set panicked")??;
        for i in 0..pair.standbys.len() {
            if let Err(e) = pair.wait_streaming(&pair.standbys[i]).await {
                pair.keep();
                return Err(e.context(format!("files kept in {}", pair.dir.display())));
            }
        }
        Ok(pair)
    }

    /// Wait until `standby` streams from the primary: its
    /// `pg_stat_wal_receiver.status` is `streaming` and the primary's
    /// `pg_stat_replication` shows it (by application name = cluster name)
    /// as `streaming`.
    pub async fn wait_streaming(&self, standby: &PgServer) -> anyhow::Result<()> {
        let what = format!("{} to stream from {}", standby.name, self.primary.name);
        let app = standby.name.replace('\'', "''");
        let replication =
            format!("select state from pg_stat_replication where application_name = '{app}'");
        let (replication, primary) = (&replication, &self.primary);
        wait_for(&what, SERVER_TIMEOUT, POLL_EVERY, move || async move {
            let receiver = standby.psql("postgres", "select status from pg_stat_wal_receiver")?;
            ensure!(
                receiver == "streaming",
                "wal receiver status on {} is {receiver:?}",
                standby.name
            );
            let sender = primary.psql("postgres", replication)?;
            ensure!(
                sender == "streaming",
                "pg_stat_replication on {} shows {} as {sender:?}",
                primary.name,
                standby.name
            );
            Ok(Some(()))
        })
        .await
        .with_context(|| {
            format!(
                "logs: {} and {}",
                self.primary.log_file.display(),
                standby.log_file.display()
            )
        })
    }

    /// A set whose servers something else made and runs (e.g. Patroni), in
    /// `dir`: dropping it stops them and removes `dir` like any pair.
    pub fn adopt(dir: PathBuf, primary: PgServer, standbys: Vec<PgServer>) -> PgPair {
        PgPair {
            dir,
            primary,
            standbys,
            others: Vec::new(),
            keep: false,
        }
    }

    /// Keep this directory (logs) even after drop, e.g. when a test failed.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The blocking part of [`PgPair::create`]: everything but the wait.
    fn build(parent: &Path, name: &str, standbys: usize) -> anyhow::Result<PgPair> {
        let bin = PgBin::find()?;
        let user = OsUser::for_server();
        let dir = tempfile::Builder::new()
            .prefix("tandem-test-")
            .tempdir_in(parent)
            .context("create the test's temporary directory")?
            .keep();
        // From here on, dropping `pair` cleans up.
        let primary = PgServer::prepare(&dir, &format!("{name}-primary"), &bin, user.as_ref());
        let primary = match primary {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut pair = PgPair {
            dir,
            primary,
            standbys: Vec::new(),
            others: Vec::new(),
            keep: false,
        };
        if let Err(e) = pair.populate(name, standbys, &bin, user.as_ref()) {
            pair.keep();
            return Err(e.context(format!("files kept in {}", pair.dir.display())));
        }
        Ok(pair)
    }

    fn populate(
        &mut self,
        name: &str,
        standbys: usize,
        bin: &PgBin,
        user: Option<&OsUser>,
    ) -> anyhow::Result<()> {
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", self.dir.display()))?;
        let primary = &self.primary;
        let mut initdb = primary.command("initdb");
        initdb
            .arg("-D")
            .arg(&primary.data_dir)
            .args(["-U", "postgres", "-A", "trust", "--data-checksums"])
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        run(&mut initdb).with_context(|| format!("initdb {}", primary.name))?;
        let mut conf = primary.identity_conf();
        conf.extend([
            ("listen_addresses", "''".to_string()),
            ("wal_level", "replica".to_string()),
            ("max_wal_senders", "10".to_string()),
            ("max_replication_slots", "10".to_string()),
            // A stopped standby can catch up from the primary's pg_wal.
            ("wal_keep_size", "'256MB'".to_string()),
            ("hot_standby", "on".to_string()),
            // Only skips flushes to disk; pg_basebackup reads files, unaffected.
            ("fsync", "off".to_string()),
            ("shared_buffers", "'16MB'".to_string()),
            ("max_connections", "40".to_string()),
            ("log_line_prefix", "'%m [%p] %q%a '".to_string()),
        ]);
        primary.append_conf(&conf)?;
        primary.start()?;

        for i in 1..=standbys {
            let standby = PgServer::prepare(&self.dir, &format!("{name}-standby{i}"), bin, user)?;
            self.standbys.push(standby);
            let (primary, standby) = (&self.primary, &self.standbys[i - 1]);
            let mut backup = standby.command("pg_basebackup");
            backup
                .arg("-D")
                .arg(&standby.data_dir)
                .arg("-h")
                .arg(&primary.socket_dir)
                .args(["-p", &primary.port.to_string(), "-U", "postgres"])
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-w"]);
            run(&mut backup)
                .with_context(|| format!("pg_basebackup {} from {}", standby.name, primary.name))?;
            standby.append_conf(&standby.identity_conf())?;
            standby.start()?;
        }
        Ok(())
    }

    /// A server named `name` on the existing data directory `data_dir` (a
    /// copy of one of this pair's servers, owned by the server user): its
    /// own socket directory, log and port in the pair's directory, appended
    /// to its `postgresql.conf`. Not started; stopped when the pair drops.
    pub fn add_server_on(&mut self, name: &str, data_dir: &Path) -> anyhow::Result<&PgServer> {
        let server = PgServer {
            name: name.to_string(),
            data_dir: data_dir.to_owned(),
            socket_dir: self.dir.join(format!("{name}.sock")),
            port: free_port(),
            log_file: self.dir.join(format!("{name}.log")),
            bin: self.primary.bin.clone(),
            user: self.primary.user.clone(),
        };
        fs::create_dir(&server.socket_dir)
            .with_context(|| format!("create {}", server.socket_dir.display()))?;
        fs::set_permissions(&server.socket_dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", server.socket_dir.display()))?;
        fs::write(&server.log_file, "")
            .with_context(|| format!("create {}", server.log_file.display()))?;
        if let Some(u) = &server.user {
            u.chown(&server.socket_dir)?;
            u.chown(&server.log_file)?;
        }
        server.append_conf(&server.identity_conf())?;
        self.others.push(server);
        Ok(self.others.last().expect("just pushed"))
    }

    fn servers(&self) -> impl Iterator<Item = &PgServer> {
        // Others and standbys first so they do not log a lost primary.
        self.others
            .iter()
            .chain(&self.standbys)
            .chain(std::iter::once(&self.primary))
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for s in self.servers() {
            if s.data_dir.join("postmaster.pid").exists()
                && let Err(e) = s.stop_immediate()
            {
                eprintln!("tandem-tests: {e:#}");
            }
        }
        let env_keep = std::env::var("TANDEM_KEEP_TEST_DIRS").is_ok_and(|v| v == "1");
        if self.keep || env_keep || std::thread::panicking() {
            let mut msg = format!("tandem-tests: kept test directory {}", self.dir.display());
            for s in self.servers() {
                let _ = write!(msg, "\n  {} log: {}", s.name, s.log_file.display());
            }
            eprintln!("{msg}");
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "tandem-tests: cannot remove test directory {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// Run `cmd` to completion; error (with stdout and stderr) unless it succeeds.
fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("run {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

/// The program and its arguments, without the environment.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` lines of a file, or why it could not be read.
fn log_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// A postgresql.conf string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
