//! `controller.toml`: where the controller listens, its store, its
//! certificates, liveness timing, and the declared replication sets.
//!
//! Every field is documented in `deploy/controller.example.toml`; unknown
//! fields are refused.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tandem_proto::config::{self, ConfigError};
use tandem_proto::tls::TlsFiles;

use crate::schedule::Policy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Where tandemctl and the agents reach the controller.
    pub listen: SocketAddr,
    /// The store: the path of an SQLite file (one controller), or a
    /// `postgresql://` URI of a database several controllers share, one of
    /// them leading (`[leader]`).
    pub store: crate::store::StoreLocation,
    /// The lease by which one controller leads, on a PostgreSQL store.
    #[serde(default)]
    pub leader: LeaderConfig,
    /// How often agents are asked to heartbeat.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An agent silent for this long is marked offline.
    #[serde(default = "default_offline_after", with = "humantime_serde")]
    pub offline_after: Duration,
    /// How long `show` waits for an agent's live status.
    #[serde(default = "default_status_timeout", with = "humantime_serde")]
    pub status_timeout: Duration,
    pub tls: TlsFiles,
    /// How many tests may run at once (SPEC T7); changeable at run time with
    /// `tandemctl limits`, which overrides these until changed again.
    #[serde(default)]
    pub limits: Limits,
    /// The time zone calendar policies (`AT...`, `testdb`, `cron=`) are in,
    /// e.g. "Europe/Moscow" or "UTC"; required when a set has one.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Which people (certificate names) have which role (SPEC O1).
    #[serde(default)]
    pub access: Access,
    /// Where Prometheus scrapes the controller's metrics
    /// (`http://<addr>/metrics`); off when absent. `--metrics-listen`
    /// overrides it.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// The replication sets and their members. Imported into the store
    /// when the store has never seen them; after that the store is the
    /// truth (`tandemctl set`), see `crate::sets`.
    #[serde(default)]
    pub sets: Vec<SetConfig>,
    /// Recurring maintenance windows, by set name (SPEC T4): when a set
    /// whose last verdict found errors gets its repair.
    #[serde(default)]
    pub windows: std::collections::BTreeMap<String, WindowConfig>,
    /// The HA manager of a set, by set name (`[ha.<set>]`): a maintenance
    /// window pauses it before anything stops and resumes it last.
    #[serde(default)]
    pub ha: std::collections::BTreeMap<String, HaConfig>,
}

/// `[leader]`: the lease on a shared (PostgreSQL) store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    /// How long a lease lasts without renewal: a leader that dies is
    /// replaced this long after its last renewal (plus one `renew`).
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How often the leader renews its lease, and a follower tries to take
    /// it.
    #[serde(default = "default_renew", with = "humantime_serde")]
    pub renew: Duration,
    /// The URL tandemctl and the agents use to reach this controller
    /// ("https://c1.example.net:7700"); followers name it to send clients
    /// to the leader. Default: https:// and `listen`.
    #[serde(default)]
    pub address: Option<String>,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            lease: default_lease(),
            renew: default_renew(),
            address: None,
        }
    }
}

fn default_lease() -> Duration {
    Duration::from_secs(15)
}
fn default_renew() -> Duration {
    Duration::from_secs(5)
}

/// A recurring maintenance window: `[windows.<set>]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// When the window opens, a calendar policy of the policy grammar
    /// (`ATsun0300`, `AT*0300`, `testdb`, `cron=...`), in `time_zone`.
    pub schedule: Policy,
    /// How long it lasts: a repair whose plan expects more downtime than
    /// is left of the window is not started (and says so in the history).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// A set's HA manager (`[ha.<set>]`). Patroni only for now.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// REST API URLs of the set's Patroni nodes (`http://host:8008`); they
    /// are tried in order and the first that answers is enough.
    pub patroni: Vec<String>,
    /// How long one Patroni request, and the wait for the pause to show in
    /// `GET /cluster`, may take.
    #[serde(default = "default_ha_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_ha_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Load limits (SPEC T7). Members of one set never run two operations at
/// once whatever the limits say.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// At most this many tests at once in the whole fleet.
    #[serde(default = "default_fleet_limit")]
    pub fleet: u32,
    /// At most this many tests at once on one host.
    #[serde(default = "default_per_host_limit")]
    pub per_host: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fleet: default_fleet_limit(),
            per_host: default_per_host_limit(),
        }
    }
}

fn default_fleet_limit() -> u32 {
    4
}
fn default_per_host_limit() -> u32 {
    1
}

/// What a person may do (SPEC O1). Each role includes the ones before it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    /// Nothing: the certificate is refused everywhere.
    None,
    /// Read: agents, sets, verdicts, history, audit.
    Viewer,
    /// Viewer, plus start copies and tests, cancel runs.
    Operator,
    /// Operator, plus set changes, limits, restore and maintenance.
    Admin,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::None => "none",
            UserRole::Viewer => "viewer",
            UserRole::Operator => "operator",
            UserRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for UserRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// The role of a person whose certificate name is not in `users`.
    #[serde(default = "default_role")]
    pub default_role: UserRole,
    /// Certificate name (spiffe://tandem/user/<name>) to role.
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, UserRole>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            default_role: default_role(),
            users: Default::default(),
        }
    }
}

fn default_role() -> UserRole {
    UserRole::Viewer
}

impl Access {
    pub fn role_of(&self, user: &str) -> UserRole {
        self.users.get(user).copied().unwrap_or(self.default_role)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    pub name: String,
    pub members: Vec<MemberConfig>,
    /// When the set is tested (SPEC T1; grammar in `schedule`): `off`,
    /// `interval=SECONDS`, `ATwed0500,sun0300`, `signal`, `testdb`, `cron=...`.
    #[serde(default)]
    pub test: Policy,
    /// When an archive copy (a copy without a test, SPEC T9) is made; same grammar.
    #[serde(default)]
    pub archive_copy: Policy,
    /// Pack each copy into one archive file (SPEC T9).
    #[serde(default)]
    pub archive_file: bool,
    /// The mode of the set's tests and copies when a request names none:
    /// `online` or `cold`; absent: each agent's `[testdb] mode`.
    #[serde(default)]
    pub mode: Option<tandem_proto::model::TestMode>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub name: String,
    /// The agent on this member's host; defaults to the member's name.
    #[serde(default)]
    pub agent: Option<String>,
    /// The host the member runs on, for the per-host limit; defaults to the
    /// host part of the address its agent registered with.
    #[serde(default)]
    pub host: Option<String>,
}

impl MemberConfig {
    pub fn agent(&self) -> &str {
        self.agent.as_deref().unwrap_or(&self.name)
    }
}

/// Why a Patroni REST URL will not do.
///
/// Messages are whole sentences that embed their cause (as
/// `tandem_proto::identity::IdentityError`'s do): they are printed alone,
/// in a config check and in a maintenance step's message, without walking
/// `source()`.
#[derive(Debug, thiserror::Error)]
pub enum PatroniUrlError {
    #[error("not a URL ({error}); write it as \"http://host:8008\"")]
    NotAUrl { error: http::uri::InvalidUri },
    #[error(
        "https is not supported yet: give Patroni's plain HTTP REST address (restapi.listen), e.g. \"http://db1:8008\""
    )]
    Https,
    #[error("needs the http:// scheme, e.g. \"http://db1:8008\"")]
    NotHttp,
    #[error("has no host, e.g. \"http://db1:8008\"")]
    NoHost,
    #[error("must not have a query string")]
    Query,
}

/// A Patroni REST URL the controller can reach: `http://host:port` with
/// an optional path prefix (plain HTTP; the controller speaks no TLS to
/// Patroni).
pub fn check_patroni_url(url: &str) -> Result<http::Uri, PatroniUrlError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|error| PatroniUrlError::NotAUrl { error })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(PatroniUrlError::Https),
        _ => return Err(PatroniUrlError::NotHttp),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(PatroniUrlError::NoHost);
    }
    if uri.query().is_some() {
        return Err(PatroniUrlError::Query);
    }
    Ok(uri)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}
fn default_offline_after() -> Duration {
    Duration::from_secs(10)
}
fn default_status_timeout() -> Duration {
    Duration::from_secs(3)
}

impl ControllerConfig {
    /// The URL clients reach this controller at (`leader.address`, or
    /// https:// and `listen`).
    pub fn advertised_address(&self) -> String {
        self.leader
            .address
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.listen))
    }

    pub fn load(path: &Path) -> Result<ControllerConfig, ConfigError> {
        Self::check(path, config::load(path)?)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ControllerConfig, ConfigError> {
        Self::check(path, config::parse(path, text)?)
    }

    fn check(path: &Path, cfg: ControllerConfig) -> Result<ControllerConfig, ConfigError> {
        let invalid = |field: String, message: String| ConfigError::invalid(path, field, message);
        if cfg.offline_after <= cfg.heartbeat_interval {
            return Err(invalid(
                "offline_after".into(),
                format!(
                    "{} must be longer than heartbeat_interval ({})",
                    humantime::format_duration(cfg.offline_after),
                    humantime::format_duration(cfg.heartbeat_interval)
                ),
            ));
        }
        if cfg.leader.renew.is_zero() || cfg.leader.renew * 2 > cfg.leader.lease {
            return Err(invalid(
                "leader.renew".into(),
                format!(
                    "{} must be more than zero and at most half of leader.lease ({}), so a leader renews at least twice before its lease runs out",
                    humantime::format_duration(cfg.leader.renew),
                    humantime::format_duration(cfg.leader.lease)
                ),
            ));
        }
        if cfg.limits.fleet == 0 || cfg.limits.per_host == 0 {
            return Err(invalid(
                "limits".into(),
                "limits must be at least 1 (a limit of 0 would never run a test; use the set's policy `off` instead)".into(),
            ));
        }
        for user in cfg.access.users.keys() {
            tandem_proto::identity::validate_name(user)
                .map_err(|e| invalid(format!("access.users.{user}"), e.to_string()))?;
        }
        if let Some(tz) = &cfg.time_zone {
            jiff::tz::TimeZone::get(tz).map_err(|e| {
                invalid(
                    "time_zone".into(),
                    format!("unknown time zone `{tz}` ({e}); use an IANA name such as \"Europe/Moscow\" or \"UTC\""),
                )
            })?;
        }
        for (set, w) in &cfg.windows {
            let field = format!("windows.{set}");
            if !w.schedule.is_calendar() {
                return Err(invalid(
                    format!("{field}.schedule"),
                    format!(
                        "`{}` is not a calendar policy; a window opens at wall-clock times: ATsun0300, AT*0300, testdb or cron=...",
                        w.schedule
                    ),
                ));
            }
            if cfg.time_zone.is_none() {
                return Err(invalid(
                    format!("{field}.schedule"),
                    "a window's schedule needs the time zone it is in: set `time_zone` (e.g. \"UTC\") at the top of the file".into(),
                ));
            }
            if w.duration.is_zero() {
                return Err(invalid(
                    format!("{field}.duration"),
                    "a window must last longer than 0 s (e.g. \"2h\")".into(),
                ));
            }
        }
        let mut sets = HashSet::new();
        let mut agents = HashSet::new();
        for (i, set) in cfg.sets.iter().enumerate() {
            let field = format!("sets[{i}]");
            tandem_proto::identity::validate_name(&set.name)
                .map_err(|e| invalid(format!("{field}.name"), e.to_string()))?;
            if !sets.insert(set.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("set `{}` is declared twice", set.name),
                ));
            }
            for (what, p) in [("test", &set.test), ("archive_copy", &set.archive_copy)] {
                if p.is_calendar() && cfg.time_zone.is_none() {
                    return Err(invalid(
                        format!("{field}.{what}"),
                        format!(
                            "`{p}` is a calendar policy and needs the time zone it is in: set `time_zone` (e.g. \"UTC\") at the top of the file"
                        ),
                    ));
                }
            }
            if set.members.is_empty() {
                return Err(invalid(
                    format!("{field}.members"),
                    format!("set `{}` has no members", set.name),
                ));
            }
            let mut members = HashSet::new();
            for (j, m) in set.members.iter().enumerate() {
                let field = format!("{field}.members[{j}]");
                tandem_proto::identity::validate_name(&m.name)
                    .map_err(|e| invalid(format!("{field}.name"), e.to_string()))?;
                tandem_proto::identity::validate_name(m.agent())
                    .map_err(|e| invalid(format!("{field}.agent"), e.to_string()))?;
                if !members.insert(m.name.as_str()) {
                    return Err(invalid(
                        format!("{field}.name"),
                        format!("member `{}` appears twice in set `{}`", m.name, set.name),
                    ));
                }
                if !agents.insert(m.agent()) {
                    return Err(invalid(
                        format!("{field}.agent"),
                        format!(
                            "agent `{}` is a member of two sets; one agent serves one server",
                            m.agent()
                        ),
                    ));
                }
            }
        }
        for (set, ha) in &cfg.ha {
            let field = format!("ha.{set}");
            if !sets.contains(set.as_str()) {
                return Err(invalid(
                    field,
                    format!(
                        "set `{set}` is not declared in [[sets]]; name a declared set (a misspelt name would leave its HA manager running during a window)"
                    ),
                ));
            }
            if ha.patroni.is_empty() {
                return Err(invalid(
                    format!("{field}.patroni"),
                    "no Patroni REST URL; give at least one, e.g. [\"http://db1:8008\"]".into(),
                ));
            }
            for url in &ha.patroni {
                check_patroni_url(url)
                    .map_err(|m| invalid(format!("{field}.patroni"), format!("`{url}`: {m}")))?;
            }
            if ha.timeout.is_zero() {
                return Err(invalid(
                    format!("{field}.timeout"),
                    "must be longer than 0s (e.g. \"10s\")".into(),
                ));
            }
        }
        Ok(cfg)
    }

    /// The time zone of calendar policies (UTC when none is configured, which
    /// `check` allows only when no set has a calendar policy).
    pub fn tz(&self) -> jiff::tz::TimeZone {
        self.time_zone
            .as_deref()
            .and_then(|t| jiff::tz::TimeZone::get(t).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        listen = "127.0.0.1:7700"
        store = "/var/lib/tandem/controller.db"
        [tls]
        ca = "ca.pem"
        cert = "controller.pem"
        key = "controller-key.pem"
        [[sets]]
        name = "billing"
        members = [{ name = "db1" }, { name = "db2", agent = "agent-db2" }]
    "#;

    #[test]
    fn parses_sets_and_defaults() {
        let c = ControllerConfig::parse(Path::new("c.toml"), BASE).unwrap();
        assert_eq!(c.offline_after, Duration::from_secs(10));
        let billing = &c.sets[0];
        assert_eq!(billing.members[1].agent(), "agent-db2");
        assert_eq!(billing.members[0].agent(), "db1");
    }

    #[test]
    fn an_agent_in_two_sets_is_refused() {
        let text = format!(
            "{BASE}\n[[sets]]\nname = \"crm\"\nmembers = [{{ name = \"x\", agent = \"db1\" }}]\n"
        );
        let err = ControllerConfig::parse(Path::new("c.toml"), &text).unwrap_err();
        assert!(
            err.to_string().contains("sets[1].members[0].agent"),
            "{err}"
        );
    }

    #[test]
    fn offline_after_must_exceed_heartbeat() {
        let text = BASE.replace(
            "[tls]",
            "heartbeat_interval = \"5s\"\noffline_after = \"5s\"\n[tls]",
        );
        let err = ControllerConfig::parse(Path::new("c.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("offline_after"), "{err}");
    }

    #[test]
    fn policies_parse_and_calendar_ones_need_a_time_zone() {
        let text = BASE.replace(
            "name = \"billing\"",
            "name = \"billing\"\ntest = \"ATwed0500\"\narchive_copy = \"interval=3600\"",
        );
        let err = ControllerConfig::parse(Path::new("c.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("sets[0].test"), "{err}");
        assert!(err.to_string().contains("time_zone"), "{err}");
        let text = format!("time_zone = \"Europe/Moscow\"\n{text}");
        let c = ControllerConfig::parse(Path::new("c.toml"), &text).unwrap();
        assert_eq!(c.sets[0].test.to_string(), "ATwed0500");
        assert_eq!(c.sets[0].archive_copy.to_string(), "interval=3600");
        let bad = text.replace("ATwed0500", "ATwed2500");
        let err = ControllerConfig::parse(Path::new("c.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("expected an hour"), "{err}");
        let bad = text.replace("Europe/Moscow", "Mars/Olympus");
        let err = ControllerConfig::parse(Path::new("c.toml"), &bad).unwrap_err();
        assert!(err.to_string().contains("unknown time zone"), "{err}");
    }

    #[test]
    fn recurring_windows_need_a_calendar_schedule_a_time_zone_and_a_duration() {
        let with = |w: &str| format!("{BASE}\n[windows.billing]\n{w}\n");
        let ok = format!(
            "time_zone = \"UTC\"\n{}",
            with("schedule = \"ATsun0300\"\nduration = \"2h\"")
        );
        let c = ControllerConfig::parse(Path::new("c.toml"), &ok).unwrap();
        assert_eq!(c.windows["billing"].duration, Duration::from_secs(7200));
        let err = ControllerConfig::parse(
            Path::new("c.toml"),
            &with("schedule = \"ATsun0300\"\nduration = \"2h\""),
        )
        .unwrap_err();
        assert!(err.to_string().contains("time_zone"), "{err}");
        let err =
            ControllerConfig::parse(Path::new("c.toml"), &ok.replace("ATsun0300", "interval=60"))
                .unwrap_err();
        assert!(err.to_string().contains("not a calendar policy"), "{err}");
        let err =
            ControllerConfig::parse(Path::new("c.toml"), &ok.replace("2h", "0s")).unwrap_err();
        assert!(
            err.to_string().contains("windows.billing.duration"),
            "{err}"
        );
    }

    #[test]
    fn ha_tables_name_declared_sets_and_plain_http_patroni_urls() {
        let text = format!(
            "{BASE}\n[ha.billing]\npatroni = [\"http://db1:8008\", \"http://[::1]:8008/\"]\ntimeout = \"3s\"\n"
        );
        let c = ControllerConfig::parse(Path::new("c.toml"), &text).unwrap();
        let ha = &c.ha["billing"];
        assert_eq!(ha.patroni.len(), 2);
        assert_eq!(ha.timeout, Duration::from_secs(3));
        let text = format!("{BASE}\n[ha.billing]\npatroni = [\"http://db1:8008\"]\n");
        let c = ControllerConfig::parse(Path::new("c.toml"), &text).unwrap();
        assert_eq!(c.ha["billing"].timeout, Duration::from_secs(10));
        for (bad, says) in [
            (
                "[ha.biling]\npatroni = [\"http://db1:8008\"]",
                "not declared",
            ),
            ("[ha.billing]\npatroni = []", "at least one"),
            (
                "[ha.billing]\npatroni = [\"https://db1:8008\"]",
                "https is not supported",
            ),
            ("[ha.billing]\npatroni = [\"db1:8008\"]", "http://"),
            (
                "[ha.billing]\npatroni = [\"http://db1:8008\"]\nconsul = 1",
                "consul",
            ),
        ] {
            let err = ControllerConfig::parse(Path::new("c.toml"), &format!("{BASE}\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = BASE.replace("[tls]", "listen_addr = \"x\"\n[tls]");
        let err = ControllerConfig::parse(Path::new("c.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }
}

#[cfg(test)]
mod shipped_examples {
    use super::*;

    /// Every controller config shipped in deploy/ parses, so examples never rot.
    #[test]
    fn every_controller_config_in_deploy_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let files = config::examples(&dir, "controller");
        assert!(
            !files.is_empty(),
            "no controller*.toml in {}",
            dir.display()
        );
        for path in files {
            ControllerConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
