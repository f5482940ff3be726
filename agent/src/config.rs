//! `agent.toml`: what one agent serves and where its database lives.
//!
//! Every field is documented in `deploy/agent.example.toml`; unknown fields are
//! refused so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tandem_proto::config::{self, ConfigError};
use tandem_proto::model::TestMode;
use tandem_proto::tls::TlsFiles;

use crate::engine::copy::CopyMethod;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's name; its certificate must say `spiffe://tandem/agent/<name>`.
    pub name: String,
    /// The replication set this server belongs to, and its member name there.
    pub set: String,
    /// Defaults to the agent's name.
    #[serde(default)]
    pub member: Option<String>,
    /// Where the agent's gRPC server listens for the controller's orders.
    pub listen: SocketAddr,
    /// The address the controller dials ("host:port"); defaults to `listen`.
    /// The host must be a name in the agent's certificate.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The controllers' URLs, e.g. "https://controller.example:7700", or a
    /// list of them (`["https://c1:7700", "https://c2:7700"]`): the agent
    /// registers and heartbeats with the one that leads.
    #[serde(deserialize_with = "one_or_more")]
    pub controller: Vec<String>,
    /// The agent's home: state file, testdb.out, operation journal.
    pub home: PathBuf,
    /// Where Prometheus scrapes the agent's metrics (`http://<addr>/metrics`);
    /// off when absent. `--metrics-listen` overrides it.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// How often to tell the controller the agent is alive.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A command run on events (E_TESTDB: interrupted tests, errors found),
    /// with TANDEM_EVENT, TANDEM_EVENT_CODE, TANDEM_SET, TANDEM_MEMBER,
    /// TANDEM_OPERATION_ID and TANDEM_EVENT_MESSAGE in its environment.
    #[serde(default)]
    pub event_hook: Option<PathBuf>,
    pub tls: TlsFiles,
    /// The database engine: `postgres` (the default) or `firebird`; its
    /// table (`[postgres]` or `[firebird]`) must be present.
    #[serde(default)]
    pub engine: EngineKind,
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    #[serde(default)]
    pub firebird: Option<FirebirdConfig>,
    #[serde(default)]
    pub testdb: TestdbConfig,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// Backup files from verified copies (SPEC R1, T9); off when absent.
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    #[serde(default)]
    pub restore: RestoreConfig,
    /// A remote object store for backup files (SPEC R1); off when absent.
    #[serde(default)]
    pub remote: Option<RemoteConfig>,
}

/// Where backups are pushed to and fetched from (S3-compatible, or a
/// directory for tests and shared filesystems: the same code path).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `s3://bucket/prefix` or `file:///absolute/path`. S3 credentials and
    /// region also come from the usual AWS_* environment variables.
    pub url: String,
    /// Store options, e.g. `aws_endpoint = "http://127.0.0.1:9000"`,
    /// `aws_region`, `aws_allow_http = "true"`, `aws_access_key_id`.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

/// How a restore runs (SPEC R2-R11).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// The schema-upgrade hook run after the roll-forward, while the server
    /// serves no clients (SPEC R6); PGHOST, PGPORT, PGDATA and PGUSER in its
    /// environment, run as postgres.os_user (Firebird: TANDEM_FB_DSN,
    /// FIREBIRD, ISC_USER, ISC_PASSWORD, as firebird.os_user). A non-zero exit fails the
    /// restore and puts the old data directory back.
    #[serde(default)]
    pub upgrade_hook: Option<PathBuf>,
    /// Application-level replays after the upgrade hook (SPEC R7: the
    /// billing's payments made after the backup), run the same way; a
    /// non-zero exit fails the restore and puts the old database back.
    #[serde(default)]
    pub roll_forward_hook: Option<PathBuf>,
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// Free space (MiB) to keep on the data directory's filesystem beyond
    /// the unpacked backup (SPEC R11).
    #[serde(default = "default_reserve_mib")]
    pub free_space_reserve_mib: u64,
    /// How long replaying the WAL archive may take.
    #[serde(default = "default_roll_forward_timeout", with = "humantime_serde")]
    pub roll_forward_timeout: Duration,
    /// Time between the two health checks after the start (SPEC R10).
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            upgrade_hook: None,
            roll_forward_hook: None,
            hook_timeout: default_hook_timeout(),
            free_space_reserve_mib: default_reserve_mib(),
            roll_forward_timeout: default_roll_forward_timeout(),
            health_interval: default_health_interval(),
        }
    }
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_roll_forward_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}

/// Where backup files go and how many are kept (SPEC R1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The member's backup directory (`<kind>-<time>-<lsn>-<lsn>.tar.zst`).
    pub dir: PathBuf,
    /// Backups kept of each kind (the newest ones).
    #[serde(default = "default_daily")]
    pub daily: usize,
    #[serde(default = "default_weekly")]
    pub weekly: usize,
    #[serde(default = "default_monthly")]
    pub monthly: usize,
    /// zstd compression threads (default: twice the host's cores, at least 4).
    #[serde(default)]
    pub zstd_threads: Option<u32>,
    /// zstd level, 1-19 (default 3, as the `zstd` tool).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// The WAL archive that `tandem-agent archive-push` fills (the primary's
    /// `archive_command`) and a restore rolls forward from (SPEC R7).
    #[serde(default)]
    pub wal_archive: Option<PathBuf>,
    /// The recovery window for WAL retention, in days: an archived WAL
    /// file written within it is never removed, whatever the backups. Older
    /// WAL goes once no kept backup needs it (`tandem-agent wal-prune`, and
    /// after each kept backup). 0: no window.
    #[serde(default = "default_wal_keep_days")]
    pub wal_keep_days: u32,
}

fn default_wal_keep_days() -> u32 {
    7
}

fn default_daily() -> usize {
    7
}
fn default_weekly() -> usize {
    4
}
fn default_monthly() -> usize {
    6
}
fn default_zstd_level() -> i32 {
    3
}

impl BackupConfig {
    pub fn retention(&self) -> crate::backup::rotation::Retention {
        crate::backup::rotation::Retention {
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
        }
    }

    /// The recovery window of WAL retention.
    pub fn wal_keep_window(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_hours(24 * i64::from(self.wal_keep_days))
    }

    pub fn pack_options(&self) -> crate::backup::archive::PackOptions {
        let mut o = crate::backup::archive::PackOptions::default();
        if let Some(t) = self.zstd_threads {
            o.threads = t;
        }
        o.level = self.zstd_level;
        o
    }
}

/// What a maintenance window may run on this server (SPEC T4).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// The `exec` repair: a command (argv) run as the database's OS user
    /// for findings REINDEX cannot repair, with TANDEM_WINDOW, TANDEM_SET,
    /// TANDEM_MEMBER, TANDEM_FINDINGS (a JSON file of the findings), PGDATA,
    /// PGHOST, PGPORT and PGUSER in its environment. Exit 0 means repaired.
    #[serde(default)]
    pub repair_command: Option<Vec<String>>,
    /// How long the repair command may run.
    #[serde(default = "default_repair_timeout", with = "humantime_serde")]
    pub repair_timeout: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            repair_command: None,
            repair_timeout: default_repair_timeout(),
        }
    }
}

fn default_repair_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// How testdb copies and checks (SPEC T2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestdbConfig {
    /// Parallel copy workers (default: the host's cores, 2 to 8).
    #[serde(default)]
    pub copy_workers: Option<usize>,
    /// How the copy is made: `auto` (clone where the archive filesystem can,
    /// e.g. XFS with reflink, else copy bytes), `clone` (the same, but the
    /// report notes it when cloning was refused) or `bytes` (never clone).
    #[serde(default, deserialize_with = "copy_method")]
    pub copy_method: CopyMethod,
    /// Read every row with `pg_dumpall` to nowhere after pg_amcheck.
    #[serde(default = "yes")]
    pub logical_read: bool,
    /// Free space to keep on the archive filesystem beyond the copy itself,
    /// in MiB (SPEC R11: too little is refused before anything is written).
    #[serde(default = "default_reserve_mib")]
    pub free_space_reserve_mib: u64,
    /// How long the restarted standby may take to stream again.
    #[serde(default = "default_streaming_timeout", with = "humantime_serde")]
    pub streaming_timeout: Duration,
    /// How long the private instance may take to replay the log and open.
    #[serde(default = "default_private_timeout", with = "humantime_serde")]
    pub private_start_timeout: Duration,
    /// The mode of a copy-making order that names none: `online` (the
    /// standby keeps streaming; the copy comes from a non-exclusive base
    /// backup and its WAL) or `cold` (the standby is stopped for the copy).
    #[serde(default = "default_mode")]
    pub mode: TestMode,
}

impl Default for TestdbConfig {
    fn default() -> Self {
        TestdbConfig {
            copy_workers: None,
            copy_method: CopyMethod::Auto,
            logical_read: true,
            free_space_reserve_mib: default_reserve_mib(),
            streaming_timeout: default_streaming_timeout(),
            private_start_timeout: default_private_timeout(),
            mode: default_mode(),
        }
    }
}

fn default_mode() -> TestMode {
    TestMode::Online
}

/// `testdb.copy_method`, with an error that names the field.
fn copy_method<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CopyMethod, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "testdb.copy_method must be \"auto\", \"clone\" or \"bytes\", not {s:?}"
        ))
    })
}

fn yes() -> bool {
    true
}
fn default_reserve_mib() -> u64 {
    256
}
fn default_streaming_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_private_timeout() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The live data directory (PGDATA).
    pub data_dir: PathBuf,
    /// Directory of pg_ctl, psql, pg_basebackup, ...; found from the data
    /// directory's PG_VERSION (`/usr/lib/postgresql/<v>/bin`) or PATH when unset.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// The OS user that owns the data directory; server commands run as it when
    /// the agent runs as root (PostgreSQL refuses to run as root).
    #[serde(default = "default_os_user")]
    pub os_user: String,
    /// Unix socket directory of the live server.
    #[serde(default = "default_socket_dir")]
    pub socket_dir: PathBuf,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database role used for status queries.
    #[serde(default = "default_os_user")]
    pub user: String,
    #[serde(default = "default_dbname")]
    pub dbname: String,
    /// Where copies for testdb go (the seed's archive directory). Same host.
    pub archive_dir: PathBuf,
    /// The live server's log when the agent starts it (`pg_ctl start -l`);
    /// default `<home>/postgres.log`.
    #[serde(default)]
    pub server_log: Option<PathBuf>,
}

/// A URL, or a list of URLs.
fn one_or_more<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Urls;
    impl<'de> serde::de::Visitor<'de> for Urls {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a controller URL or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut urls = Vec::new();
            while let Some(url) = seq.next_element::<String>()? {
                urls.push(url);
            }
            Ok(urls)
        }
    }
    d.deserialize_any(Urls)
}

/// Which engine an agent serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Postgres,
    Firebird,
}

/// A Firebird 3 database (`engine = "firebird"`): one file served by a
/// Firebird server; testdb copies it under `nbackup -L` while it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirebirdConfig {
    /// The database file (its main file; `nbackup -L` writes beside it as
    /// `<file>.delta` while a copy is made).
    pub database: PathBuf,
    /// The server that serves it (for facts and `nbackup`).
    #[serde(default = "default_fb_host")]
    pub host: String,
    #[serde(default = "default_fb_port")]
    pub port: u16,
    #[serde(default = "default_fb_user")]
    pub user: String,
    /// The user's password; prefer `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (its first line), readable by the agent.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Directory of gbak, gfix, nbackup, isql-fb, fbstat (default: PATH).
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// The Firebird root whose `firebird.conf` the tools read (the
    /// `FIREBIRD` environment variable; default: the system's). The
    /// server's `RemoteServicePort` must be `port`: `nbackup` reaches the
    /// server through it.
    #[serde(default)]
    pub root_dir: Option<PathBuf>,
    /// The OS user that owns the database file; tools run as it when the
    /// agent runs as root.
    #[serde(default = "default_fb_os_user")]
    pub os_user: String,
    /// The server's log, where `gfix -v` writes what it found (Debian:
    /// `/var/log/firebird/firebird3.0.log`).
    #[serde(default = "default_fb_log")]
    pub server_log: PathBuf,
    /// Where copies for testdb go. Same host.
    pub archive_dir: PathBuf,
    /// Generators a restore sets to the maximum of the column they fill
    /// (`GEN_NAME = "TABLE.COLUMN"`, names as the catalog stores them),
    /// beside those of identity columns, which it finds itself. Generators
    /// that triggers use cannot be found safely: name them here.
    #[serde(default)]
    pub generators: std::collections::BTreeMap<String, String>,
}

impl FirebirdConfig {
    /// The password: `password`, else the first line of `password_file`.
    pub fn password(&self) -> Result<String, String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let Some(file) = &self.password_file else {
            return Err("no password: set firebird.password or firebird.password_file".to_owned());
        };
        std::fs::read_to_string(file)
            .map(|t| t.lines().next().unwrap_or("").trim().to_owned())
            .map_err(|e| {
                format!(
                    "cannot read firebird.password_file {}: {e}; make it readable by the agent",
                    file.display()
                )
            })
    }
}

fn default_fb_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_fb_port() -> u16 {
    3050
}
fn default_fb_user() -> String {
    "SYSDBA".to_owned()
}
fn default_fb_os_user() -> String {
    "firebird".to_owned()
}
fn default_fb_log() -> PathBuf {
    PathBuf::from("/var/log/firebird/firebird3.0.log")
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}
fn default_os_user() -> String {
    "postgres".to_owned()
}
fn default_socket_dir() -> PathBuf {
    PathBuf::from("/var/run/postgresql")
}
fn default_port() -> u16 {
    5432
}
fn default_dbname() -> String {
    "postgres".to_owned()
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        Self::check(path, config::load(path)?)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        Self::check(path, config::parse(path, text)?)
    }

    fn check(path: &Path, cfg: AgentConfig) -> Result<AgentConfig, ConfigError> {
        let invalid = |field, message: String| ConfigError::invalid(path, field, message);
        tandem_proto::identity::validate_name(&cfg.name)
            .map_err(|e| invalid("name", e.to_string()))?;
        if cfg.set.is_empty() {
            return Err(invalid("set", "must not be empty".into()));
        }
        if cfg.controller.is_empty() {
            return Err(invalid(
                "controller",
                "lists no controller; give its URL, e.g. \"https://controller.example:7700\", or a list of them".into(),
            ));
        }
        if cfg.controller.iter().any(|u| u.trim().is_empty()) {
            return Err(invalid(
                "controller",
                "has an empty URL; give each controller's URL, e.g. \"https://controller.example:7700\"".into(),
            ));
        }
        if cfg.heartbeat_interval.is_zero() {
            return Err(invalid("heartbeat_interval", "must be above zero".into()));
        }
        match cfg.engine {
            EngineKind::Postgres => {
                let Some(pg) = &cfg.postgres else {
                    return Err(invalid(
                        "postgres",
                        "is missing: the postgres engine needs a [postgres] table (data_dir, archive_dir); or set engine = \"firebird\" with a [firebird] table".into(),
                    ));
                };
                if !pg.data_dir.is_absolute() {
                    return Err(invalid(
                        "postgres.data_dir",
                        "must be an absolute path".into(),
                    ));
                }
                if cfg.firebird.is_some() {
                    return Err(invalid(
                        "firebird",
                        "is for engine = \"firebird\"; this agent's engine is postgres: remove the table or set the engine".into(),
                    ));
                }
            }
            EngineKind::Firebird => {
                let Some(fb) = &cfg.firebird else {
                    return Err(invalid(
                        "firebird",
                        "is missing: engine = \"firebird\" needs a [firebird] table (database, archive_dir, password_file)".into(),
                    ));
                };
                if !fb.database.is_absolute() {
                    return Err(invalid(
                        "firebird.database",
                        "must be an absolute path".into(),
                    ));
                }
                if cfg.postgres.is_some() {
                    return Err(invalid(
                        "postgres",
                        "is for the postgres engine; this agent's engine is firebird: remove the table".into(),
                    ));
                }
            }
        }
        if let Some(r) = &cfg.remote
            && let Err(e) = url::Url::parse(&r.url)
        {
            return Err(invalid(
                "remote.url",
                format!("{:?} is not a URL: {e}", r.url),
            ));
        }
        if let Some(b) = &cfg.backup {
            if !b.dir.is_absolute() {
                return Err(invalid("backup.dir", "must be an absolute path".into()));
            }
            if !(1..=19).contains(&b.zstd_level) {
                return Err(invalid("backup.zstd_level", "must be 1 to 19".into()));
            }
        }
        Ok(cfg)
    }

    /// The PostgreSQL table (the postgres engine's agents always have one).
    pub fn pg(&self) -> Option<&PostgresConfig> {
        self.postgres.as_ref()
    }

    /// Where copies for testdb go: the engine table's `archive_dir`.
    pub fn archive_dir(&self) -> &Path {
        match (&self.postgres, &self.firebird) {
            (Some(pg), _) => &pg.archive_dir,
            (None, Some(fb)) => &fb.archive_dir,
            (None, None) => unreachable!("AgentConfig::check requires the engine's table"),
        }
    }

    /// The OS user engine commands run as when the agent runs as root.
    pub fn os_user(&self) -> &str {
        match (&self.postgres, &self.firebird) {
            (Some(pg), _) => &pg.os_user,
            (None, Some(fb)) => &fb.os_user,
            (None, None) => unreachable!("AgentConfig::check requires the engine's table"),
        }
    }

    pub fn member(&self) -> &str {
        self.member.as_deref().unwrap_or(&self.name)
    }

    pub fn advertise(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "db1"
        set = "billing"
        listen = "127.0.0.1:7701"
        controller = "https://127.0.0.1:7700"
        home = "/var/lib/tandem/agent"
        [tls]
        ca = "/etc/tandem/ca.pem"
        cert = "/etc/tandem/agent-db1.pem"
        key = "/etc/tandem/agent-db1-key.pem"
        [postgres]
        data_dir = "/var/lib/postgresql/15/main"
        archive_dir = "/var/lib/tandem/archive"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = AgentConfig::parse(Path::new("agent.toml"), MINIMAL).unwrap();
        assert_eq!(c.member(), "db1");
        assert_eq!(c.advertise(), "127.0.0.1:7701");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.engine, EngineKind::Postgres);
        assert_eq!(c.pg().unwrap().port, 5432);
        assert_eq!(c.os_user(), "postgres");
        assert_eq!(c.testdb.mode, TestMode::Online);
    }

    #[test]
    fn the_controller_is_one_url_or_a_list() {
        let c = AgentConfig::parse(Path::new("agent.toml"), MINIMAL).unwrap();
        assert_eq!(c.controller, ["https://127.0.0.1:7700"]);
        let two = MINIMAL.replace(
            "controller = \"https://127.0.0.1:7700\"",
            "controller = [\"https://c1:7700\", \"https://c2:7700\"]",
        );
        let c = AgentConfig::parse(Path::new("agent.toml"), &two).unwrap();
        assert_eq!(c.controller, ["https://c1:7700", "https://c2:7700"]);
        for (bad, says) in [
            ("controller = []", "field `controller`"),
            ("controller = [\"https://c1:7700\", \" \"]", "empty URL"),
            ("controller = 7700", "a controller URL or a list of them"),
        ] {
            let text = MINIMAL.replace("controller = \"https://127.0.0.1:7700\"", bad);
            let err = AgentConfig::parse(Path::new("agent.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_test_mode_is_online_or_cold() {
        let cold = format!("{MINIMAL}\n[testdb]\nmode = \"cold\"\n");
        let c = AgentConfig::parse(Path::new("agent.toml"), &cold).unwrap();
        assert_eq!(c.testdb.mode, TestMode::Cold);
        let warm = format!("{MINIMAL}\n[testdb]\nmode = \"warm\"\n");
        let err = AgentConfig::parse(Path::new("agent.toml"), &warm).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `warm`, expected `online` or `cold`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_the_field_name() {
        let text = MINIMAL.replace("[postgres]", "[postgres]\ndatadir = \"/x\"");
        let err = AgentConfig::parse(Path::new("agent.toml"), &text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("agent.toml"), "{msg}");
        assert!(msg.contains("datadir"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let text = MINIMAL.replace("name = \"db1\"", "name = \"db 1\"");
        let err = AgentConfig::parse(Path::new("a.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("field `name`"), "{err}");
        let text = MINIMAL.replace("/var/lib/postgresql/15/main", "relative/main");
        let err = AgentConfig::parse(Path::new("a.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("postgres.data_dir"), "{err}");
        let text = format!("{MINIMAL}\n[testdb]\ncopy_method = \"reflink\"\n");
        let err = AgentConfig::parse(Path::new("a.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("testdb.copy_method"), "{err}");
        assert!(err.to_string().contains("\"reflink\""), "{err}");
    }

    #[test]
    fn copy_method_defaults_to_auto_and_parses_each_value() {
        let c = AgentConfig::parse(Path::new("a.toml"), MINIMAL).unwrap();
        assert_eq!(c.testdb.copy_method, CopyMethod::Auto);
        for m in CopyMethod::ALL {
            let text = format!("{MINIMAL}\n[testdb]\ncopy_method = \"{m}\"\n");
            let c = AgentConfig::parse(Path::new("a.toml"), &text).unwrap();
            assert_eq!(c.testdb.copy_method, m);
        }
    }

    fn firebird(table: &str) -> String {
        let top = MINIMAL.split("[postgres]").next().unwrap();
        let top = top.replacen("name = \"db1\"", "name = \"db1\"\nengine = \"firebird\"", 1);
        format!("{top}[firebird]\n{table}")
    }

    #[test]
    fn a_firebird_agent_needs_its_table_and_gets_defaults() {
        let text = firebird(
            "database = \"/var/lib/firebird/data/billing.fdb\"\narchive_dir = \"/var/lib/tandem/archive\"\npassword_file = \"/etc/tandem/fb.pw\"\n",
        );
        let c = AgentConfig::parse(Path::new("a.toml"), &text).unwrap();
        assert_eq!(c.engine, EngineKind::Firebird);
        let fb = c.firebird.as_ref().unwrap();
        assert_eq!((fb.host.as_str(), fb.port), ("127.0.0.1", 3050));
        assert_eq!(fb.user, "SYSDBA");
        assert_eq!(c.os_user(), "firebird");
        assert_eq!(c.archive_dir(), Path::new("/var/lib/tandem/archive"));

        let text = firebird("database = \"billing.fdb\"\narchive_dir = \"/a\"\n");
        let err = AgentConfig::parse(Path::new("a.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("firebird.database"), "{err}");
        let no_table = MINIMAL.split("[postgres]").next().unwrap().replacen(
            "name = \"db1\"",
            "name = \"db1\"\nengine = \"firebird\"",
            1,
        );
        let err = AgentConfig::parse(Path::new("a.toml"), &no_table).unwrap_err();
        assert!(err.to_string().contains("[firebird] table"), "{err}");
        let pg_without_table = MINIMAL.split("[postgres]").next().unwrap().to_owned();
        let err = AgentConfig::parse(Path::new("a.toml"), &pg_without_table).unwrap_err();
        assert!(err.to_string().contains("[postgres] table"), "{err}");
    }

    #[test]
    fn the_password_comes_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let text = firebird(&format!(
            "database = \"/d/b.fdb\"\narchive_dir = \"/a\"\npassword_file = \"{}\"\n",
            file.display()
        ));
        let c = AgentConfig::parse(Path::new("a.toml"), &text).unwrap();
        assert_eq!(c.firebird.unwrap().password().unwrap(), "s3cret");
    }

    #[test]
    fn missing_file_says_which() {
        let err = AgentConfig::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
    }
}

#[cfg(test)]
mod shipped_examples {
    use super::*;

    /// Every agent config shipped in deploy/ parses, so examples never rot.
    #[test]
    fn every_agent_config_in_deploy_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let files = config::examples(&dir, "agent");
        assert!(!files.is_empty(), "no agent*.toml in {}", dir.display());
        for path in files {
            AgentConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
