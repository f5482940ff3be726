//! A whole Tandem fleet for end-to-end tests: real PostgreSQL sets
//! ([`crate::pg::PgPair`]), certificates from the real `tandemctl certs init`,
//! and the real `tandem-controller` and `tandem-agent` processes on free
//! loopback ports, talking mutual TLS.
//!
//! Layout of the fleet's private directory: `certs/`, `controller.toml`,
//! `controller.db`, `agents/<name>/{agent.toml,home/,archive/}`, `logs/`.
//! Members are named `<set>-p` (primary) and `<set>-s1`, `<set>-s2`, ...
//! (standbys); each member's agent has the member's name. Sets in
//! `undeclared_sets` are made and their agents started, but they are left
//! out of controller.toml (to add with `tandemctl set add`).
//! A set over
//! servers that already exist ([`FleetSpec::existing_set`], e.g. run by
//! Patroni) keeps the member names it is given, and its servers stay the
//! caller's.
//!
//! The controller's store is an SQLite file, or with
//! [`FleetSpec::on`]`(StoreKind::Postgresql)` a database on a private
//! PostgreSQL server the fleet makes ([`crate::store::PgStore`]).
//!
//! Dropping a [`Fleet`] kills its processes (then stops its store's
//! server); its directory and logs are kept (and their paths printed) when
//! the test panicked or `TANDEM_KEEP_TEST_DIRS=1`, and removed otherwise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::pg::{PgPair, PgServer};
use crate::procs::{Proc, bin_path};
use crate::store::{PgStore, StoreKind};
use crate::wait::{free_port, wait_for};

/// How a fleet is made.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Set names and how many standbys each has.
    pub sets: Vec<(String, usize)>,
    /// Sets made like `sets`, whose agents start too, but that are not in
    /// controller.toml (to add at run time with `tandemctl set add`); their
    /// agents keep trying to register until then.
    pub undeclared_sets: Vec<(String, usize)>,
    pub heartbeat_interval: Duration,
    pub offline_after: Duration,
    /// Extra environment for the controller and agents (e.g. OTEL_*).
    pub env: Vec<(String, String)>,
    /// Extra top-level lines for every agent.toml (e.g. `event_hook = ...`).
    pub agent_top: String,
    /// Extra lines for every agent.toml's `[testdb]` table.
    pub agent_testdb: String,
    /// Extra top-level lines for controller.toml (before its tables).
    pub controller_top: String,
    /// The controller's `[limits]`: tests at once in the fleet, per host
    /// (every member of a test fleet is on 127.0.0.1).
    pub limits: (u32, u32),
    /// Turn on every process's Prometheus endpoint (`metrics_listen` on a
    /// free port; [`Fleet::metrics`] has the addresses).
    pub metrics: bool,
    /// Give every agent a `[backup]` table: its own backup directory
    /// ([`Fleet::agent_backups`]) and the set's WAL archive
    /// ([`Fleet::wal_archive`]), plus these extra lines.
    pub backups: Option<String>,
    /// Sets over servers that already exist and that the caller owns (e.g.
    /// run by Patroni): set name, and each member's name (its agent's too)
    /// with its server. They are not in [`Fleet::sets`].
    pub existing: Vec<(String, Vec<(String, PgServer)>)>,
    /// Extra tables for controller.toml, after the sets (e.g. `[ha.<set>]`).
    pub controller_tables: String,
    /// The controllers' store: a `postgresql://` URI (default: an SQLite
    /// file in the fleet's directory).
    pub store: Option<String>,
    /// When `store` is not given: which store the harness makes.
    pub store_kind: StoreKind,
    /// More controllers on the same store (it must be PostgreSQL), each on
    /// its own port, with `[leader] lease` of `lease`; agents and tandemctl
    /// get every controller's address.
    pub more_controllers: usize,
    pub lease: Duration,
    /// Firebird sets of one member: set name, member name (its agent's
    /// too), and the agent's `[firebird]` table without `archive_dir`
    /// ([`crate::firebird::FbServer::agent_table`]). The caller owns the
    /// servers.
    pub firebird: Vec<(String, String, String)>,
}

impl FleetSpec {
    pub fn new(sets: &[(&str, usize)]) -> FleetSpec {
        FleetSpec {
            sets: sets.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
            undeclared_sets: vec![],
            heartbeat_interval: Duration::from_millis(300),
            offline_after: Duration::from_secs(2),
            env: vec![],
            agent_top: String::new(),
            agent_testdb: String::new(),
            controller_top: String::new(),
            limits: (4, 4),
            metrics: false,
            backups: None,
            existing: vec![],
            controller_tables: String::new(),
            store: None,
            store_kind: StoreKind::Sqlite,
            more_controllers: 0,
            lease: Duration::from_secs(3),
            firebird: vec![],
        }
    }

    /// A Firebird set whose one member `member` serves `server`'s database.
    pub fn firebird_set(
        mut self,
        set: &str,
        member: &str,
        server: &crate::firebird::FbServer,
    ) -> FleetSpec {
        self.firebird
            .push((set.to_owned(), member.to_owned(), server.agent_table()));
        self
    }

    /// [`FleetSpec::firebird_set`] with more lines for the `[firebird]`
    /// table (e.g. `generators = { ... }`).
    pub fn firebird_set_with(
        mut self,
        set: &str,
        member: &str,
        server: &crate::firebird::FbServer,
        more: &str,
    ) -> FleetSpec {
        self.firebird.push((
            set.to_owned(),
            member.to_owned(),
            format!("{}{more}", server.agent_table()),
        ));
        self
    }

    /// A set over existing servers: `members` are (member name, server).
    pub fn existing_set(mut self, set: &str, members: &[(&str, &PgServer)]) -> FleetSpec {
        self.existing.push((
            set.to_owned(),
            members
                .iter()
                .map(|(m, s)| ((*m).to_owned(), (*s).clone()))
                .collect(),
        ));
        self
    }

    /// The controller's store: an SQLite file (the default), or a private
    /// PostgreSQL server made for this fleet (one controller, leading
    /// under a lease of `lease`).
    pub fn on(mut self, store: StoreKind) -> FleetSpec {
        self.store_kind = store;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> FleetSpec {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
}

/// One member's agent: its config path and, while it runs, its process.
pub struct AgentHandle {
    pub name: String,
    pub set: String,
    pub config: PathBuf,
    pub proc: Option<Proc>,
}

/// The output of one `tandemctl` run.
#[derive(Debug)]
pub struct CtlRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "tandemctl printed no JSON ({e}); stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A controller besides the first (on a shared store).
pub struct MoreController {
    pub config: PathBuf,
    pub url: String,
    pub proc: Option<Proc>,
}

pub struct Fleet {
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub controller_url: String,
    pub controller_config: PathBuf,
    pub controller: Option<Proc>,
    /// The other controllers ([`FleetSpec::more_controllers`]).
    pub more_controllers: Vec<MoreController>,
    pub agents: BTreeMap<String, AgentHandle>,
    pub sets: BTreeMap<String, PgPair>,
    /// `metrics_listen` of the controller (key "controller"), of each
    /// other controller ("controller-2", ...) and of each agent (its name),
    /// when [`FleetSpec::metrics`] is on.
    pub metrics: BTreeMap<String, String>,
    spec: FleetSpec,
    keep: bool,
    /// The store's server ([`FleetSpec::store_kind`] PostgreSQL); dropped
    /// after the processes are killed.
    store_server: Option<PgStore>,
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

impl Fleet {
    /// Make the sets, certificates and configs, start the controller and
    /// every agent, and wait until all agents are online.
    pub async fn start(mut spec: FleetSpec) -> anyhow::Result<Fleet> {
        let store_server = match (spec.store_kind, &spec.store) {
            (StoreKind::Postgresql, None) => Some(PgStore::create().await?),
            _ => None,
        };
        if let Some(s) = &store_server {
            spec.store = Some(s.uri.clone());
        }
        let dir = tempfile::Builder::new()
            .prefix("tandem-fleet-")
            .tempdir()?
            .keep();
        let certs = dir.join("certs");
        let mut sets = BTreeMap::new();
        let mut members: Vec<(String, String, PgServer)> = Vec::new();
        for (set, standbys) in spec.sets.iter().chain(&spec.undeclared_sets) {
            let pair = PgPair::create(set, *standbys).await?;
            members.push((set.clone(), format!("{set}-p"), pair.primary.clone()));
            for (i, s) in pair.standbys.iter().enumerate() {
                members.push((set.clone(), format!("{set}-s{}", i + 1), s.clone()));
            }
            sets.insert(set.clone(), pair);
        }
        for (set, existing) in &spec.existing {
            for (member, server) in existing {
                members.push((set.clone(), member.clone(), server.clone()));
            }
        }
        let agent_names: Vec<&str> = members
            .iter()
            .map(|(_, m, _)| m.as_str())
            .chain(spec.firebird.iter().map(|(_, m, _)| m.as_str()))
            .collect();
        let certs_run = run_ctl_raw(
            &[],
            &[
                "certs",
                "init",
                "--dir",
                certs.to_str().unwrap(),
                "--agents",
                &agent_names.join(","),
                "--users",
                "operator,viewer,admin",
            ],
        )?;
        if certs_run.code != 0 {
            bail!("tandemctl certs init failed: {}", certs_run.stderr);
        }

        let mut metrics = BTreeMap::new();
        let mut metrics_line = |name: &str| {
            if !spec.metrics {
                return String::new();
            }
            let addr = format!("127.0.0.1:{}", free_port());
            metrics.insert(name.to_owned(), addr.clone());
            format!("metrics_listen = \"{addr}\"\n")
        };
        let controller_metrics = metrics_line("controller");
        let ports: Vec<u16> = (0..=spec.more_controllers).map(|_| free_port()).collect();
        let port = ports[0];
        let controller_url = format!("https://127.0.0.1:{port}");
        let controller_urls: Vec<String> = ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect();
        let store = spec
            .store
            .clone()
            .unwrap_or_else(|| dir.join("controller.db").display().to_string());
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\nstore = \"{store}\"\nheartbeat_interval = \"{}ms\"\noffline_after = \"{}ms\"\nstatus_timeout = \"3s\"\n{controller_metrics}{top}\n\n[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/controller.pem\"\nkey = \"{c}/controller-key.pem\"\n\n[limits]\nfleet = {fleet}\nper_host = {per_host}\n\n[access]\ndefault_role = \"viewer\"\nusers = {{ operator = \"operator\", admin = \"admin\" }}\n",
            spec.heartbeat_interval.as_millis(),
            spec.offline_after.as_millis(),
            c = certs.display(),
            top = spec.controller_top,
            fleet = spec.limits.0,
            per_host = spec.limits.1,
        );
        let set_names = spec
            .sets
            .iter()
            .map(|(s, _)| s)
            .chain(spec.existing.iter().map(|(s, _)| s))
            .chain(spec.firebird.iter().map(|(s, _, _)| s));
        for set in set_names {
            let names: Vec<String> = members
                .iter()
                .map(|(s, m, _)| (s, m))
                .chain(spec.firebird.iter().map(|(s, m, _)| (s, m)))
                .filter(|(s, _)| *s == set)
                .map(|(_, m)| format!("{{ name = \"{m}\" }}"))
                .collect();
            write!(
                toml,
                "\n[[sets]]\nname = \"{set}\"\nmembers = [{}]\n",
                names.join(", ")
            )?;
        }
        toml.push_str(&spec.controller_tables);
        if spec.backups.is_some() {
            // The server's OS user runs archive_command and restore_command:
            // it must reach and write the sets' WAL archives.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
            for (set, _) in &spec.sets {
                let wal = dir.join("wal").join(set);
                std::fs::create_dir_all(&wal)?;
                std::fs::set_permissions(dir.join("wal"), std::fs::Permissions::from_mode(0o711))?;
                if let Some(u) = crate::pg::OsUser::for_server() {
                    u.chown(&wal)?;
                }
            }
        }
        let controller_config = dir.join("controller.toml");
        let leader_table = |url: &str| {
            format!(
                "\n[leader]\nlease = \"{}ms\"\nrenew = \"{}ms\"\naddress = \"{url}\"\n",
                spec.lease.as_millis(),
                spec.lease.as_millis() / 3
            )
        };
        if spec.store.is_some() {
            write(
                &controller_config,
                &(toml.clone() + &leader_table(&controller_url)),
            )?;
        } else {
            write(&controller_config, &toml)?;
        }
        let mut more_controllers = Vec::new();
        for (i, (p, url)) in ports.iter().zip(&controller_urls).enumerate().skip(1) {
            let config = dir.join(format!("controller-{}.toml", i + 1));
            let mut text = toml.replacen(
                &format!("listen = \"127.0.0.1:{port}\""),
                &format!("listen = \"127.0.0.1:{p}\""),
                1,
            ) + &leader_table(url);
            if !controller_metrics.is_empty() {
                let own = metrics_line(&format!("controller-{}", i + 1));
                text = text.replacen(&controller_metrics, &own, 1);
            }
            write(&config, &text)?;
            more_controllers.push(MoreController {
                config,
                url: url.clone(),
                proc: None,
            });
        }
        let controller_line = if controller_urls.len() > 1 {
            format!(
                "[{}]",
                controller_urls
                    .iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!("\"{controller_url}\"")
        };

        let mut agents = BTreeMap::new();
        if !spec.firebird.is_empty() {
            // Firebird's tools run as its OS user on the agents' copies.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        }
        // One agent.toml: what every agent has, then its engine's table
        // (`engine_line` names a non-default engine) and its `[backup]`
        // table's extra lines (`wal_archive` for PostgreSQL).
        let mut agent_toml = |member: &str,
                              set: &str,
                              engine_line: &str,
                              engine_table: String,
                              backup_extra: String| {
            let adir = dir.join("agents").join(member);
            let backup = spec
                .backups
                .as_ref()
                .map(|extra| {
                    format!(
                        "\n[backup]\ndir = \"{}\"\n{backup_extra}{extra}\n",
                        adir.join("backups").display(),
                    )
                })
                .unwrap_or_default();
            format!(
                "name = \"{member}\"\nset = \"{set}\"\n{engine_line}listen = \"127.0.0.1:{aport}\"\ncontroller = {controller_line}\nhome = \"{home}\"\nheartbeat_interval = \"{hb}ms\"\n{agent_metrics}{top}\n\n[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/agent-{member}.pem\"\nkey = \"{c}/agent-{member}-key.pem\"\n\n{engine_table}\n[testdb]\n{testdb}\n{backup}",
                aport = free_port(),
                agent_metrics = metrics_line(member),
                home = adir.join("home").display(),
                hb = spec.heartbeat_interval.as_millis(),
                c = certs.display(),
                top = spec.agent_top,
                testdb = spec.agent_testdb,
            )
        };
        let mut written: Vec<(String, String, String)> = Vec::new();
        for (set, member, table) in &spec.firebird {
            let archive = dir.join("agents").join(member).join("archive");
            // No WAL archive: a Firebird backup is a gbak file.
            let text = agent_toml(
                member,
                set,
                "engine = \"firebird\"\n",
                format!(
                    "[firebird]\n{table}archive_dir = \"{}\"\n",
                    archive.display()
                ),
                String::new(),
            );
            written.push((set.clone(), member.clone(), text));
        }
        for (set, member, server) in &members {
            let archive = dir.join("agents").join(member).join("archive");
            let text = agent_toml(
                member,
                set,
                "",
                format!(
                    "[postgres]\ndata_dir = \"{}\"\nsocket_dir = \"{}\"\nport = {}\narchive_dir = \"{}\"\n",
                    server.data_dir.display(),
                    server.socket_dir.display(),
                    server.port,
                    archive.display()
                ),
                format!(
                    "wal_archive = \"{}\"\n",
                    dir.join("wal").join(set).display()
                ),
            );
            written.push((set.clone(), member.clone(), text));
        }
        for (set, member, text) in written {
            let config = dir.join("agents").join(&member).join("agent.toml");
            write(&config, &text)?;
            agents.insert(
                member.clone(),
                AgentHandle {
                    name: member,
                    set,
                    config,
                    proc: None,
                },
            );
        }

        let mut fleet = Fleet {
            dir,
            certs,
            controller_url,
            controller_config,
            controller: None,
            more_controllers,
            agents,
            sets,
            metrics,
            spec,
            keep: false,
            store_server,
        };
        fleet.start_controller()?;
        for i in 0..fleet.more_controllers.len() {
            fleet.start_more_controller(i)?;
        }
        let names: Vec<String> = fleet.agents.keys().cloned().collect();
        for name in &names {
            fleet.start_agent(name)?;
        }
        let declared: Vec<String> = fleet
            .agents
            .values()
            .filter(|a| {
                // Every set in controller.toml: made here, or over existing servers.
                fleet.spec.sets.iter().any(|(s, _)| s == &a.set)
                    || fleet.spec.existing.iter().any(|(s, _)| s == &a.set)
                    || fleet.spec.firebird.iter().any(|(s, _, _)| s == &a.set)
            })
            .map(|a| a.name.clone())
            .collect();
        fleet.wait_agents_state(&declared, "online").await?;
        Ok(fleet)
    }

    /// The agents (= member names) of `set`: `<set>-p`, `<set>-s1`, ...
    pub fn members(&self, set: &str) -> Vec<String> {
        self.agents
            .values()
            .filter(|a| a.set == set)
            .map(|a| a.name.clone())
            .collect()
    }

    /// Wait until every standby of `set` has replayed the primary's WAL.
    pub async fn replicated(&self, set: &str) -> anyhow::Result<()> {
        let pair = self.set(set);
        for s in &pair.standbys {
            crate::corrupt::wait_replayed(&pair.primary, s).await?;
        }
        Ok(())
    }

    fn command(&self, bin: &str) -> anyhow::Result<Command> {
        let mut cmd = Command::new(bin_path(bin)?);
        cmd.env("RUST_LOG", "info");
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        self.start_controller_with(&[])
    }

    /// Start the controller with extra environment (e.g. a crash test's
    /// `TANDEM_TEST_PAUSE_AFTER_WINDOW_STEP`).
    pub fn start_controller_with(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut cmd = self.command("tandem-controller")?;
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("--config").arg(&self.controller_config);
        // In the fleet's directory: a crash test's pause marker is written
        // beside an SQLite store, else in the working directory.
        cmd.current_dir(&self.dir);
        let log = self.dir.join("logs/controller.log");
        self.controller = Some(Proc::spawn("tandem-controller", cmd, &log)?);
        Ok(())
    }

    /// Start controller number `i + 2` (see [`FleetSpec::more_controllers`]).
    pub fn start_more_controller(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = self.command("tandem-controller")?;
        cmd.arg("--config").arg(&self.more_controllers[i].config);
        let log = self.dir.join(format!("logs/controller-{}.log", i + 2));
        self.more_controllers[i].proc = Some(Proc::spawn("tandem-controller", cmd, &log)?);
        Ok(())
    }

    /// Every controller's URL, the first one first.
    pub fn controller_urls(&self) -> Vec<String> {
        std::iter::once(self.controller_url.clone())
            .chain(self.more_controllers.iter().map(|c| c.url.clone()))
            .collect()
    }

    /// The agent's home directory (state file, testdb.out, journal).
    pub fn agent_home(&self, name: &str) -> PathBuf {
        self.dir.join("agents").join(name).join("home")
    }

    pub fn agent_archive(&self, name: &str) -> PathBuf {
        self.dir.join("agents").join(name).join("archive")
    }

    /// An agent's backup directory (with `FleetSpec::backups`).
    pub fn agent_backups(&self, name: &str) -> PathBuf {
        self.dir.join("agents").join(name).join("backups")
    }

    /// An agent's config file.
    pub fn agent_config(&self, name: &str) -> PathBuf {
        self.dir.join("agents").join(name).join("agent.toml")
    }

    /// The address an agent listens on (`listen` in its agent.toml).
    pub fn agent_address(&self, name: &str) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(self.agent_config(name))?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix("listen = \"")
                    .map(|r| r.trim_end_matches('"').to_owned())
            })
            .with_context(|| format!("no listen in {name}'s agent.toml"))
    }

    /// The TLS files of a certificate of the fleet's CA, by its stem:
    /// `controller`, `agent-<name>`, `user-<name>`.
    pub fn tls_files(&self, stem: &str) -> tandem_proto::tls::TlsFiles {
        tandem_proto::tls::TlsFiles {
            ca: self.certs.join("ca.pem"),
            cert: self.certs.join(format!("{stem}.pem")),
            key: self.certs.join(format!("{stem}-key.pem")),
        }
    }

    /// A set's WAL archive (with `FleetSpec::backups`).
    pub fn wal_archive(&self, set: &str) -> PathBuf {
        self.dir.join("wal").join(set)
    }

    pub fn start_agent(&mut self, name: &str) -> anyhow::Result<()> {
        self.start_agent_with(name, &[])
    }

    /// Start an agent with extra environment variables (e.g. a crash
    /// test's `TANDEM_TEST_PAUSE_AFTER_STEP`).
    pub fn start_agent_with(&mut self, name: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut cmd = self.command("tandem-agent")?;
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = self.dir.join(format!("logs/agent-{name}.log"));
        let a = self
            .agents
            .get_mut(name)
            .with_context(|| format!("no agent {name}"))?;
        cmd.arg("--config").arg(&a.config);
        a.proc = Some(Proc::spawn(&format!("tandem-agent {name}"), cmd, &log)?);
        Ok(())
    }

    /// Wait until the controller paused after window step `step`, SIGKILL
    /// it there, and start it again (paused after `next`, when given).
    pub async fn kill_controller_when_paused(
        &mut self,
        step: &str,
        next: Option<&str>,
    ) -> anyhow::Result<()> {
        let marker = self.dir.join(format!("paused-after-{step}"));
        wait_for(
            &format!("the controller to pause after window step {step}"),
            Duration::from_secs(180),
            Duration::from_millis(50),
            || async { Ok(marker.exists().then_some(())) },
        )
        .await?;
        self.kill_controller();
        std::fs::remove_file(&marker)?;
        match next {
            Some(n) => self.start_controller_with(&[("TANDEM_TEST_PAUSE_AFTER_WINDOW_STEP", n)]),
            None => self.start_controller(),
        }
    }

    /// SIGKILL the controller (a crash).
    pub fn kill_controller(&mut self) {
        if let Some(mut p) = self.controller.take() {
            p.kill();
        }
    }

    /// Wait until the running controller leads: `tandemctl controllers`
    /// names its process leader. On SQLite at once; on PostgreSQL a
    /// controller started again after a kill follows (and answers reads
    /// from the store) until the lease its killed self held runs out.
    pub async fn wait_leading(&self) -> anyhow::Result<()> {
        let pid = self
            .controller
            .as_ref()
            .context("the controller is not running")?
            .pid();
        let holder = format!(" pid {pid} at ");
        wait_for(
            "the controller to lead",
            Duration::from_secs(30) + self.spec.lease,
            Duration::from_millis(100),
            || async {
                let run = self.ctl_as("viewer", &["controllers", "--output", "json"])?;
                let v: Value = match serde_json::from_str(&run.stdout) {
                    Ok(v) => v,
                    Err(_) => bail!("no JSON yet: {}", run.stderr.trim()),
                };
                let leads = v["controllers"].as_array().is_some_and(|all| {
                    all.iter().any(|c| {
                        c["leader"] == true
                            && c["holder"].as_str().is_some_and(|h| h.contains(&holder))
                    })
                });
                Ok(leads.then_some(()))
            },
        )
        .await
    }

    /// SIGKILL an agent (a crash, as far as the controller can tell).
    pub fn kill_agent(&mut self, name: &str) {
        if let Some(mut p) = self.agents.get_mut(name).and_then(|a| a.proc.take()) {
            p.kill();
        }
    }

    pub fn set(&self, name: &str) -> &PgPair {
        &self.sets[name]
    }

    /// The environment `tandemctl` needs to reach this fleet as `user`.
    pub fn ctl_env(&self, user: &str) -> Vec<(String, String)> {
        let c = self.certs.display();
        vec![
            ("TANDEM_CONTROLLER".into(), self.controller_urls().join(",")),
            ("TANDEM_CA".into(), format!("{c}/ca.pem")),
            ("TANDEM_CERT".into(), format!("{c}/user-{user}.pem")),
            ("TANDEM_KEY".into(), format!("{c}/user-{user}-key.pem")),
        ]
    }

    /// Run `tandemctl` as the operator.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<CtlRun> {
        self.ctl_as("operator", args)
    }

    /// Run `tandemctl` as `user` (operator, viewer or admin).
    pub fn ctl_as(&self, user: &str, args: &[&str]) -> anyhow::Result<CtlRun> {
        let mut env = self.ctl_env(user);
        env.extend(self.spec.env.iter().cloned());
        run_ctl_raw(&env, args)
    }

    /// The messages of `set`'s maintenance events in
    /// `tandemctl history SET --output json`, oldest first.
    pub fn maintenance_events(&self, set: &str) -> anyhow::Result<Vec<String>> {
        let h = self
            .ctl_as("viewer", &["history", set, "--output", "json"])?
            .json();
        Ok(h["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "maintenance")
            .filter_map(|e| e["message"].as_str().map(str::to_owned))
            .collect())
    }

    /// Start `tandemctl` as `user` without waiting for it (stdout and
    /// stderr piped): for a command something is done to while it runs.
    pub fn spawn_ctl(&self, user: &str, args: &[&str]) -> anyhow::Result<std::process::Child> {
        let mut cmd = Command::new(bin_path("tandemctl")?);
        cmd.args(args)
            .envs(self.ctl_env(user))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Ok(cmd.spawn()?)
    }

    /// Wait until `agent` (started with [`Fleet::start_agent_held`]) holds
    /// after `step`; the marker file to remove to let it go on.
    pub async fn wait_held(&self, agent: &str, step: &str) -> anyhow::Result<PathBuf> {
        let held = self.agent_home(agent).join(format!("held-after-{step}"));
        wait_for(
            &format!("{agent} to hold after step {step}"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                let held = held.clone();
                async move { Ok(held.exists().then_some(())) }
            },
        )
        .await?;
        Ok(held)
    }

    /// Restart `agent` held after `step` of its operations
    /// (`TANDEM_TEST_HOLD_AFTER_STEP`: it waits there until the test removes
    /// `<home>/held-after-<step>`), until it is online.
    pub async fn start_agent_held(&mut self, agent: &str, step: &str) -> anyhow::Result<()> {
        self.kill_agent(agent);
        self.start_agent_with(agent, &[("TANDEM_TEST_HOLD_AFTER_STEP", step)])?;
        self.wait_agents_state(&[agent.into()], "online").await?;
        Ok(())
    }

    /// A crash test's kill: start `agent` paused after `step` of its next
    /// operation (`TANDEM_TEST_PAUSE_AFTER_STEP`), until it is online.
    pub async fn start_agent_paused(&mut self, agent: &str, step: &str) -> anyhow::Result<()> {
        self.kill_agent(agent);
        self.start_agent_with(agent, &[("TANDEM_TEST_PAUSE_AFTER_STEP", step)])?;
        self.wait_agents_state(&[agent.into()], "online").await?;
        Ok(())
    }

    /// Wait until `agent` paused after `step`, SIGKILL it there, and start
    /// it again (paused after `next`, when given).
    pub async fn kill_when_paused(
        &mut self,
        agent: &str,
        step: &str,
        next: Option<&str>,
    ) -> anyhow::Result<()> {
        let marker = self.agent_home(agent).join(format!("paused-after-{step}"));
        wait_for(
            &format!("{agent} to pause after {step}"),
            Duration::from_secs(120),
            Duration::from_millis(20),
            || async { Ok(marker.exists().then_some(())) },
        )
        .await?;
        self.kill_agent(agent);
        std::fs::remove_file(&marker)?;
        match next {
            Some(n) => self.start_agent_with(agent, &[("TANDEM_TEST_PAUSE_AFTER_STEP", n)]),
            None => self.start_agent(agent),
        }
    }

    /// Wait until every named agent has `state` in `tandemctl agents`.
    pub async fn wait_agents_state(&self, names: &[String], state: &str) -> anyhow::Result<Value> {
        wait_for(
            &format!("agents {names:?} to be {state}"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let run = self.ctl(&["agents", "--output", "json"])?;
                let v: Value = match serde_json::from_str(&run.stdout) {
                    Ok(v) => v,
                    Err(_) => bail!("no JSON yet: {}", run.stderr.trim()),
                };
                let all = v["agents"]
                    .as_array()
                    .map(|agents| {
                        names.iter().all(|n| {
                            agents
                                .iter()
                                .any(|a| a["name"] == n.as_str() && a["state"] == state)
                        })
                    })
                    .unwrap_or(false);
                Ok(all.then_some(v))
            },
        )
        .await
    }

    /// Wait until `agent`'s heartbeat reports its server streaming: the
    /// controller picks the member a test copies from the heartbeats, not
    /// from the live status `show` reads.
    pub async fn wait_heartbeat_streaming(&self, agent: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("agent {agent}'s heartbeat to report its server streaming"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                let agents = self.ctl(&["agents", "--output", "json"])?.json();
                Ok(agents["agents"]
                    .as_array()
                    .is_some_and(|all| {
                        all.iter()
                            .any(|a| a["name"] == agent && a["server_state"] == "streaming")
                    })
                    .then_some(()))
            },
        )
        .await
    }

    /// Keep the directory after drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The logs of every process, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Some(c) = &self.controller {
            let _ = write!(out, "--- controller ---\n{}\n", c.log_text());
        }
        for (i, c) in self.more_controllers.iter().enumerate() {
            if let Some(p) = &c.proc {
                let _ = write!(out, "--- controller {} ---\n{}\n", i + 2, p.log_text());
            }
        }
        for a in self.agents.values() {
            if let Some(p) = &a.proc {
                let _ = write!(out, "--- agent {} ---\n{}\n", a.name, p.log_text());
            }
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill();
        }
        for c in &mut self.more_controllers {
            if let Some(mut p) = c.proc.take() {
                p.kill();
            }
        }
        for a in self.agents.values_mut() {
            if let Some(mut p) = a.proc.take() {
                p.kill();
            }
        }
        let keep = self.keep
            || std::thread::panicking()
            || std::env::var("TANDEM_KEEP_TEST_DIRS").is_ok_and(|v| v == "1");
        if keep {
            for pair in self.sets.values_mut() {
                pair.keep();
            }
            if let Some(s) = &mut self.store_server {
                s.server.keep();
            }
            eprintln!(
                "kept fleet directory {} (logs in {}/logs)",
                self.dir.display(),
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run the real `tandemctl` with `env` and `args`.
pub fn run_ctl_raw(env: &[(String, String)], args: &[&str]) -> anyhow::Result<CtlRun> {
    run_ctl_at(&bin_path("tandemctl")?, env, args)
}

/// Run the `tandemctl` at `bin` with `env` (and no other `TANDEM_*`
/// settings from this process) and `args`.
pub fn run_ctl_at(bin: &Path, env: &[(String, String)], args: &[&str]) -> anyhow::Result<CtlRun> {
    let mut cmd = Command::new(bin);
    for k in [
        "TANDEM_CONTROLLER",
        "TANDEM_CA",
        "TANDEM_CERT",
        "TANDEM_KEY",
        "TANDEM_OUTPUT",
    ] {
        cmd.env_remove(k);
    }
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("run tandemctl")?;
    Ok(CtlRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
