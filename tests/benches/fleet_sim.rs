//! Scale benchmark of the controller: one real `tandem-controller` process
//! and a fleet of SIMULATED agents (by default 1,000: 500 sets of a primary
//! and a standby), timing `tandemctl testdb --all` against the ideal wall
//! time the fleet limits allow.
//!
//! ```text
//! cargo build --release -p tandem-controller -p tandem-ctl
//! cargo bench -p tandem-tests --bench fleet_sim
//! TANDEM_BENCH_AGENTS=20 cargo bench -p tandem-tests --bench fleet_sim   # CI smoke
//! ```
//!
//! What is real: the certificates (`tandemctl certs init`), the controller
//! binary (its own process, so its peak memory is its own), `tandemctl`, and
//! in every agent everything above the engine: the gRPC server with mTLS on
//! its own loopback port, registration and heartbeats, operations, the
//! journal and the testdb step list with its preconditions. What is
//! simulated: the database, through
//! `tandem_agent::engine::simulated::SimulatedEngine`, whose steps sleep for
//! fixed times and which always finds a clean copy. The agents run as
//! tasks of one tokio runtime per process, at most
//! `TANDEM_BENCH_AGENTS_PER_PROCESS` in each (this benchmark's own binary,
//! started again for them), which is what makes ten thousand of them fit
//! on one machine. This measures the controller; it proves nothing about
//! testdb itself.
//!
//! Settings (environment):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TANDEM_BENCH_AGENTS` | 1000 | agents (even: a primary and a standby per set) |
//! | `TANDEM_BENCH_HOSTS` | 50 | host names the members are spread over |
//! | `TANDEM_BENCH_TEST_MS` | 2000 | simulated duration D of one test, all steps |
//! | `TANDEM_BENCH_FLEET_LIMIT` | 100 | `[limits] fleet` |
//! | `TANDEM_BENCH_PER_HOST_LIMIT` | 2 | `[limits] per_host` |
//! | `TANDEM_BENCH_HEARTBEAT_MS` | 2000 | heartbeat interval (controller and agents) |
//! | `TANDEM_BENCH_IDLE_SECS` | 10 | how long to watch the idle controller's CPU |
//! | `TANDEM_BENCH_RUNS` | 2 | runs of `testdb --all`; the first opens a channel to every agent it tests, the next reuse them |
//! | `TANDEM_BENCH_AGENTS_PER_PROCESS` | 2500 | simulated agents per process (each holds about 3 open files; a process may hold only its open-files limit) |
//! | `TANDEM_BENCH_CONTROLLER_NOFILE` | (inherit) | soft RLIMIT_NOFILE for the controller process, e.g. 1024 to see whether it needs more |
//! | `TANDEM_BENCH_AGENT_DIR` | `/dev/shm` | where the agents' homes go (see below) |
//! | `TANDEM_BENCH_STORE_DIR` | a temporary directory | where the controller's SQLite store goes (e.g. `/dev/shm` to see what its fsyncs cost) |
//! | `TANDEM_BENCH_STORE` | `sqlite` | `postgresql`: the controller's store is a PostgreSQL database on a private server made like the tests' own (its files in a temporary directory), and the rows it writes per second are measured from `pg_stat_user_tables` |
//! | `TANDEM_KEEP_TEST_DIRS` | 0 | 1: keep the directories and the controller's log |
//!
//! The binaries are those beside the benchmark: `target/release/` under
//! `cargo bench`, never a debug build (override with
//! `CARGO_BIN_EXE_tandem-controller` and `CARGO_BIN_EXE_tandemctl`). A
//! warning is printed when a binary is older than its sources.
//!
//! The agents' homes and archive directories go to tmpfs (`/dev/shm`) when
//! it exists: every step of every test writes and fsyncs the agent's
//! journal, and a thousand agents sharing this machine's one disk would
//! measure that disk, where real agents each have their own. The
//! controller's store stays on disk (a temporary directory): it is part of
//! what is measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use tandem_agent::config::AgentConfig;
use tandem_agent::engine::simulated::{SimulatedDurations, SimulatedEngine};
use tandem_proto::model::Role;
use tandem_tests::fleet::{CtlRun, run_ctl_at};
use tandem_tests::procs::{Proc, workspace_root};
use tandem_tests::scale::{
    Ideal, Member, ProcSample, Sampler, ideal, layout, proc_sample, raise_nofile, summary,
    turnarounds,
};
use tandem_tests::wait::free_port;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;

/// The benchmark's knobs; see the module documentation.
#[derive(Debug, Clone)]
struct Settings {
    agents: usize,
    hosts: usize,
    test: Duration,
    fleet_limit: usize,
    per_host_limit: usize,
    heartbeat: Duration,
    idle: Duration,
    runs: usize,
    /// Simulated agents per process.
    per_process: usize,
    controller_nofile: Option<u64>,
    agent_dir: PathBuf,
    store_dir: Option<PathBuf>,
    /// The store is PostgreSQL (`TANDEM_BENCH_STORE=postgresql`).
    postgres: bool,
    keep: bool,
}

fn env_num(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        _ => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let agents = env_num("TANDEM_BENCH_AGENTS", 1000)? as usize;
        ensure!(
            agents >= 2 && agents.is_multiple_of(2),
            "TANDEM_BENCH_AGENTS must be even and at least 2 (a primary and a standby per set)"
        );
        let hosts = env_num("TANDEM_BENCH_HOSTS", 50)? as usize;
        ensure!(hosts >= 1, "TANDEM_BENCH_HOSTS must be at least 1");
        let fleet_limit = env_num("TANDEM_BENCH_FLEET_LIMIT", 100)? as usize;
        let per_host_limit = env_num("TANDEM_BENCH_PER_HOST_LIMIT", 2)? as usize;
        ensure!(
            fleet_limit >= 1 && per_host_limit >= 1,
            "the limits must be at least 1"
        );
        let default_dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        Ok(Settings {
            agents,
            hosts,
            test: Duration::from_millis(env_num("TANDEM_BENCH_TEST_MS", 2000)?),
            fleet_limit,
            per_host_limit,
            heartbeat: Duration::from_millis(env_num("TANDEM_BENCH_HEARTBEAT_MS", 2000)?.max(1)),
            idle: Duration::from_secs(env_num("TANDEM_BENCH_IDLE_SECS", 10)?),
            runs: env_num("TANDEM_BENCH_RUNS", 2)?.max(1) as usize,
            per_process: env_num("TANDEM_BENCH_AGENTS_PER_PROCESS", 2500)?.max(2) as usize,
            controller_nofile: std::env::var("TANDEM_BENCH_CONTROLLER_NOFILE")
                .ok()
                .map(|v| v.parse())
                .transpose()
                .context("TANDEM_BENCH_CONTROLLER_NOFILE is not a number")?,
            agent_dir: std::env::var_os("TANDEM_BENCH_AGENT_DIR")
                .map(PathBuf::from)
                .unwrap_or(default_dir),
            store_dir: std::env::var_os("TANDEM_BENCH_STORE_DIR").map(PathBuf::from),
            postgres: match std::env::var("TANDEM_BENCH_STORE").as_deref() {
                Ok("postgresql") => true,
                Ok("sqlite") | Ok("") | Err(_) => false,
                Ok(other) => anyhow::bail!(
                    "TANDEM_BENCH_STORE={other:?}: give sqlite (the default) or postgresql"
                ),
            },
            keep: std::env::var("TANDEM_KEEP_TEST_DIRS").is_ok_and(|v| v == "1"),
        })
    }

    fn sets(&self) -> usize {
        self.agents / 2
    }
}

/// The binaries measured.
struct Bins {
    controller: PathBuf,
    ctl: PathBuf,
}

/// `CARGO_BIN_EXE_<name>`, or the binary beside this benchmark's executable
/// (`target/<profile>/deps/` -> `target/<profile>/`): under `cargo bench`
/// the release build, as the figures must be.
fn find_bin(name: &str) -> anyhow::Result<PathBuf> {
    let build = "build them first: cargo build --release -p tandem-controller -p tandem-ctl";
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        let p = PathBuf::from(p);
        ensure!(
            p.is_file(),
            "CARGO_BIN_EXE_{name}: {} does not exist",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .with_context(|| {
            format!(
                "{} is not in target/<profile>/deps; set CARGO_BIN_EXE_{name}",
                exe.display()
            )
        })?;
    let p = profile.join(name);
    ensure!(p.is_file(), "{} does not exist; {build}", p.display());
    Ok(p)
}

/// Warn when `bin` is older than a source file of the crates it is built
/// from: the figures would be those of an old build.
fn warn_if_stale(bin: &Path, crates: &[&str]) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let root = workspace_root();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = crates.iter().map(|c| root.join(c)).collect();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "rs" || x == "proto" || x == "toml")
                && let Ok(m) = e.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(t, _)| m > *t)
            {
                newest = Some((m, p));
            }
        }
    }
    if let Some((t, p)) = newest
        && t > built
    {
        eprintln!(
            "WARNING: {} is older than {}; rebuild: cargo build --release -p tandem-controller -p tandem-ctl",
            bin.display(),
            p.display()
        );
    }
}

fn ctl_env(certs: &Path, url: &str) -> Vec<(String, String)> {
    let c = certs.display();
    vec![
        ("TANDEM_CONTROLLER".into(), url.to_owned()),
        ("TANDEM_CA".into(), format!("{c}/ca.pem")),
        ("TANDEM_CERT".into(), format!("{c}/user-operator.pem")),
        ("TANDEM_KEY".into(), format!("{c}/user-operator-key.pem")),
    ]
}

fn controller_toml(
    s: &Settings,
    members: &[Member],
    certs: &Path,
    store: &str,
    port: u16,
) -> String {
    let hb = s.heartbeat.as_millis();
    let mut t = format!(
        "# Written by tests/benches/fleet_sim.rs: {agents} simulated agents.\n\
         listen = \"127.0.0.1:{port}\"\n\
         store = \"{store}\"\n\
         heartbeat_interval = \"{hb}ms\"\n\
         offline_after = \"{offline}ms\"\n\
         status_timeout = \"10s\"\n\n\
         [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/controller.pem\"\nkey = \"{c}/controller-key.pem\"\n\n\
         [limits]\nfleet = {fleet}\nper_host = {per_host}\n\n\
         [access]\nusers = {{ operator = \"operator\" }}\n",
        agents = s.agents,
        offline = (hb * 5).max(10_000),
        c = certs.display(),
        fleet = s.fleet_limit,
        per_host = s.per_host_limit,
    );
    for pair in members.chunks(2) {
        let ms: Vec<String> = pair
            .iter()
            .map(|m| {
                format!(
                    "{{ name = \"{}\", agent = \"{}\", host = \"{}\" }}",
                    m.member, m.agent, m.host
                )
            })
            .collect();
        let _ = write!(
            t,
            "\n[[sets]]\nname = \"{}\"\nmembers = [{}]\n",
            pair[0].set,
            ms.join(", ")
        );
    }
    t
}

fn agent_toml(
    m: &Member,
    port: u16,
    controller_url: &str,
    certs: &Path,
    home: &Path,
    heartbeat: Duration,
) -> String {
    format!(
        "name = \"{agent}\"\nset = \"{set}\"\nmember = \"{member}\"\nlisten = \"127.0.0.1:{port}\"\n\
         controller = \"{controller_url}\"\nhome = \"{home}\"\nheartbeat_interval = \"{hb}ms\"\n\n\
         [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/agent-{agent}.pem\"\nkey = \"{c}/agent-{agent}-key.pem\"\n\n\
         [postgres]\ndata_dir = \"/simulated/{agent}\"\narchive_dir = \"{archive}\"\n\n\
         [testdb]\nfree_space_reserve_mib = 64\n",
        agent = m.agent,
        set = m.set,
        member = m.member,
        home = home.join("home").display(),
        archive = home.join("archive").display(),
        hb = heartbeat.as_millis(),
        c = certs.display(),
    )
}

/// Count the agents in each state in `tandemctl agents --output json`.
fn agent_states(run: &CtlRun) -> anyhow::Result<BTreeMap<String, usize>> {
    let v: Value = serde_json::from_str(&run.stdout)
        .with_context(|| format!("tandemctl agents printed no JSON: {}", run.stderr.trim()))?;
    let mut out = BTreeMap::new();
    for a in v["agents"].as_array().into_iter().flatten() {
        *out.entry(a["state"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    Ok(out)
}

fn main() -> ExitCode {
    let rt = match tandem_proto::process::start("fleet_sim") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let work = match std::env::var("TANDEM_BENCH_SHARD") {
        Ok(range) => rt.block_on(shard(&range)),
        Err(_) => rt.block_on(bench()),
    };
    match work {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet_sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn bench() -> anyhow::Result<()> {
    let s = Settings::from_env()?;
    let _log = tandem_proto::telemetry::init(
        "fleet_sim",
        tandem_proto::telemetry::LogFormat::Human,
        "warn",
    )?;
    let (soft, hard) = raise_nofile()?;
    eprintln!(
        "fleet_sim: {} agents, {} sets, {} hosts, test {} ms; this process's RLIMIT_NOFILE soft limit {soft} raised to the hard limit {hard}",
        s.agents,
        s.sets(),
        s.hosts,
        s.test.as_millis()
    );
    let bins = Bins {
        controller: find_bin("tandem-controller")?,
        ctl: find_bin("tandemctl")?,
    };
    eprintln!(
        "fleet_sim: {} and {}",
        bins.controller.display(),
        bins.ctl.display()
    );
    warn_if_stale(&bins.controller, &["controller", "proto"]);
    warn_if_stale(&bins.ctl, &["ctl", "proto"]);

    let dir = tempfile::Builder::new()
        .prefix("tandem-fleet-sim-")
        .tempdir()?;
    let agent_root = tempfile::Builder::new()
        .prefix("tandem-fleet-sim-agents-")
        .tempdir_in(&s.agent_dir)
        .with_context(|| format!("create a directory in {}", s.agent_dir.display()))?;
    let store_dir = match &s.store_dir {
        Some(d) => Some(
            tempfile::Builder::new()
                .prefix("tandem-fleet-sim-store-")
                .tempdir_in(d)
                .with_context(|| format!("create a directory in {}", d.display()))?,
        ),
        None => None,
    };
    let sqlite = store_dir
        .as_ref()
        .map_or(dir.path(), |d| d.path())
        .join("controller.db");
    let pg = if s.postgres {
        Some(tandem_tests::store::PgStore::create().await?)
    } else {
        None
    };
    let store = match &pg {
        Some(pg) => Store::Postgres {
            uri: pg.uri.clone(),
            server: pg.server.primary.clone(),
        },
        None => Store::Sqlite(sqlite.clone()),
    };
    let result = run_bench(&s, &bins, dir.path(), agent_root.path(), &store).await;
    let store = sqlite;
    if s.keep || result.is_err() {
        eprintln!(
            "fleet_sim: kept {} (controller log in logs/), {} and {}",
            dir.keep().display(),
            agent_root.keep().display(),
            store.display()
        );
        if let Some(d) = store_dir {
            let _ = d.keep();
        }
    }
    result
}

/// The controller's store.
enum Store {
    Sqlite(PathBuf),
    Postgres {
        uri: String,
        server: tandem_tests::pg::PgServer,
    },
}

impl Store {
    fn location(&self) -> String {
        match self {
            Store::Sqlite(p) => p.display().to_string(),
            Store::Postgres { uri, .. } => uri.clone(),
        }
    }

    /// Rows the store's database has written so far (PostgreSQL only).
    fn rows_written(&self) -> anyhow::Result<Option<u64>> {
        let Store::Postgres { server, .. } = self else {
            return Ok(None);
        };
        let n = server.psql(
            "tandem",
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables",
        )?;
        Ok(Some(n.trim().parse().context("pg_stat_user_tables")?))
    }
}

/// The controller process and how to reach it.
struct Controller {
    proc: Proc,
    url: String,
    /// `tandemctl`, and its environment as the operator.
    ctl: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Controller {
    fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

async fn run_bench(
    s: &Settings,
    bins: &Bins,
    dir: &Path,
    agent_root: &Path,
    store: &Store,
) -> anyhow::Result<()> {
    let members = layout(s.sets(), s.hosts);
    let certs = dir.join("certs");
    let certs_time = make_certs(&bins.ctl, &members, &certs)?;
    eprintln!(
        "fleet_sim: tandemctl certs init for the controller, {} agents and 1 user: {:.2} s",
        s.agents,
        certs_time.as_secs_f64()
    );

    let mut controller = start_controller(s, bins, &members, dir, &certs, store).await?;
    let pid = controller.pid();
    let sampler = Sampler::start(pid);
    let at_start = proc_sample(pid)?;

    let t_agents = Instant::now();
    let agents = start_agents(
        s,
        &members,
        agent_root,
        &certs,
        &controller.url,
        &dir.join("logs"),
    )?;
    wait_online(s, &controller, &agents).await?;
    let registration = t_agents.elapsed();
    eprintln!(
        "fleet_sim: all {} agents online after {:.2} s",
        s.agents,
        registration.as_secs_f64()
    );

    // The idle controller: heartbeats only. PostgreSQL's statistics reach
    // `pg_stat_user_tables` up to 10 s after a backend's writes: the
    // registrations must be counted in before the idle window opens.
    if s.postgres {
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    let idle0 = proc_sample(pid)?;
    let rows0 = store.rows_written()?;
    tokio::time::sleep(s.idle).await;
    let idle1 = proc_sample(pid)?;
    let rows1 = store.rows_written()?;
    let idle_cpu = (idle1.cpu_secs - idle0.cpu_secs) / s.idle.as_secs_f64().max(0.001);
    let idle_store_writes = rows0
        .zip(rows1)
        .map(|(a, b)| (b.saturating_sub(a)) as f64 / s.idle.as_secs_f64().max(0.001));

    // The run.
    let mut tests_per_host: BTreeMap<String, usize> = BTreeMap::new();
    for m in members.iter().filter(|m| m.member == "s") {
        *tests_per_host.entry(m.host.clone()).or_insert(0) += 1;
    }
    let ideal = ideal(&tests_per_host, s.fleet_limit, s.per_host_limit, s.test);
    eprintln!(
        "fleet_sim: tandemctl testdb --all: {} tests, at most {} at once, {} rounds, ideal {:.1} s",
        s.sets(),
        ideal.at_once,
        ideal.rounds,
        ideal.wall.as_secs_f64()
    );
    let mut runs = Vec::new();
    for n in 1..=s.runs {
        if n > 1 {
            // The controller picks the standby from the agents' last
            // heartbeats, which the previous run left saying "stopped".
            let t = Instant::now();
            wait_standbys(s, &controller).await?;
            eprintln!(
                "fleet_sim: every standby streaming again in the controller's view after {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
        let before = store.rows_written()?;
        let mut r = one_run(&controller, &agents, dir, &members, &ideal, n).await?;
        r.store_rows = before
            .zip(store.rows_written()?)
            .map(|(a, b)| b.saturating_sub(a));
        eprintln!(
            "fleet_sim: run {n}: {:.3} s (ideal {:.3} s)",
            r.wall.as_secs_f64(),
            ideal.wall.as_secs_f64()
        );
        runs.push(r);
    }
    let (max_fds, max_threads) = sampler.peaks();
    drop(sampler);
    let figures = Figures {
        certs_time,
        registration,
        idle_cpu,
        idle_store_writes,
        ideal,
        runs,
        at_start,
        online: idle0,
        end: proc_sample(pid)?,
        max_fds,
        max_threads,
    };
    figures.print(s);

    stop(agents, &mut controller).await?;
    figures.check(s, dir, &controller.log)
}

/// Stop the agents (while the controller still answers, so they stop
/// quietly), then the controller.
async fn stop(mut agents: Agents, controller: &mut Controller) -> anyhow::Result<()> {
    for p in &agents.procs {
        p.signal(nix::sys::signal::Signal::SIGTERM)?;
    }
    for p in &mut agents.procs {
        match p.wait_exit(Duration::from_secs(90)).await {
            Ok(st) if st.success() => {}
            Ok(st) => eprintln!(
                "fleet_sim: a process of agents ended {st}: {}",
                tail(&p.log)
            ),
            Err(e) => eprintln!("fleet_sim: {e:#}"),
        }
    }
    controller.proc.signal(nix::sys::signal::Signal::SIGTERM)?;
    controller.proc.wait_exit(Duration::from_secs(30)).await?;
    Ok(())
}

/// One `tandemctl testdb --all`, timed; its output goes to
/// `logs/testdb-<n>.json` and `.stderr`.
async fn one_run(
    c: &Controller,
    agents: &Agents,
    dir: &Path,
    members: &[Member],
    ideal: &Ideal,
    n: usize,
) -> anyhow::Result<RunFigures> {
    let pid = c.pid();
    let before = proc_sample(pid)?;
    let agents_before = agents.cpu_secs()?;
    let started = SystemTime::now();
    let t_run = Instant::now();
    let run = ctl(c, &["testdb", "--all", "--output", "json"]).await?;
    let wall = t_run.elapsed();
    let after = proc_sample(pid)?;
    let agents_after = agents.cpu_secs()?;
    std::fs::write(dir.join(format!("logs/testdb-{n}.json")), &run.stdout)?;
    std::fs::write(dir.join(format!("logs/testdb-{n}.stderr")), &run.stderr)?;
    Ok(RunFigures {
        wall,
        tests: Tests::read(&run, members, started, wall, ideal.at_once)?,
        controller_cpu: after.cpu_secs - before.cpu_secs,
        agents_cpu: agents_after - agents_before,
        rss_after_kib: after.rss_kib,
        store_rows: None,
    })
}

/// Certificates for the controller, every agent and the operator, through
/// the real `tandemctl certs init`; returns how long it took.
fn make_certs(ctl: &Path, members: &[Member], certs: &Path) -> anyhow::Result<Duration> {
    let names: Vec<&str> = members.iter().map(|m| m.agent.as_str()).collect();
    let t0 = Instant::now();
    let run = run_ctl_at(
        ctl,
        &[],
        &[
            "certs",
            "init",
            "--dir",
            certs.to_str().context("the certs path is not UTF-8")?,
            "--agents",
            &names.join(","),
            "--users",
            "operator",
        ],
    )?;
    ensure!(run.code == 0, "tandemctl certs init failed: {}", run.stderr);
    Ok(t0.elapsed())
}

/// Write controller.toml and start the controller; wait until it answers.
async fn start_controller(
    s: &Settings,
    bins: &Bins,
    members: &[Member],
    dir: &Path,
    certs: &Path,
    store: &Store,
) -> anyhow::Result<Controller> {
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        controller_toml(s, members, certs, &store.location(), port),
    )?;
    let mut cmd = Command::new(&bins.controller);
    cmd.arg("--config").arg(&config).env("RUST_LOG", "info");
    if let Some(n) = s.controller_nofile {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        // SAFETY: runs in the child between fork and exec and only makes
        // two system calls.
        unsafe {
            cmd.pre_exec(move || {
                let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard)?;
                Ok(())
            });
        }
    }
    let log = dir.join("logs/controller.log");
    let proc = Proc::spawn("tandem-controller", cmd, &log)?;
    let c = Controller {
        ctl: bins.ctl.clone(),
        env: ctl_env(certs, &url),
        proc,
        url,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = exited(c.pid()) {
            bail!("the controller exited ({st}); log:\n{}", tail(&c.log));
        }
        if ctl(&c, &["agents", "--output", "json"]).await?.code != 2 {
            return Ok(c);
        }
        ensure!(
            Instant::now() < deadline,
            "the controller did not answer within 30 s; log:\n{}",
            tail(&c.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The processes the simulated agents run in.
struct Agents {
    procs: Vec<Proc>,
}

impl Agents {
    /// CPU seconds the agents' processes used so far.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        let mut cpu = 0.0;
        for p in &self.procs {
            cpu += proc_sample(p.pid())?.cpu_secs;
        }
        Ok(cpu)
    }

    /// Fail when a process of agents ended: its agents will never be online.
    fn check_running(&self) -> anyhow::Result<()> {
        for p in &self.procs {
            if let Some(st) = exited(p.pid()) {
                bail!(
                    "the process of simulated agents {} {st}; its log:\n{}",
                    p.pid(),
                    tail(&p.log)
                );
            }
        }
        Ok(())
    }
}

/// Listening ports for `n` agents, below the kernel's ephemeral range
/// (from 12000 up), which the agents' and the controller's own outgoing
/// connections draw from: ten thousand listeners picked from that range
/// would collide with them. A port some other process holds is skipped.
fn listen_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut out = Vec::with_capacity(n);
    let mut port: u16 = 12000;
    while out.len() < n {
        ensure!(
            port < 32768,
            "fewer than {n} free ports between 12000 and 32767 on 127.0.0.1"
        );
        if std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).is_ok() {
            out.push(port);
        }
        port += 1;
    }
    Ok(out)
}

/// Write every agent's agent.toml and start the agents in processes of
/// at most `TANDEM_BENCH_AGENTS_PER_PROCESS` each: this benchmark run
/// again with `TANDEM_BENCH_SHARD=FROM:TO` ([`shard`]). Each simulated
/// agent holds about three file descriptors (its listener, its
/// connection to the controller, the controller's to it), and one
/// process may not hold more than its open-files limit.
fn start_agents(
    s: &Settings,
    members: &[Member],
    root: &Path,
    certs: &Path,
    url: &str,
    logs: &Path,
) -> anyhow::Result<Agents> {
    let ports = listen_ports(members.len())?;
    for (m, port) in members.iter().zip(ports) {
        let home = root.join(&m.agent);
        std::fs::create_dir_all(&home)?;
        let text = agent_toml(m, port, url, certs, &home, s.heartbeat);
        std::fs::write(home.join("agent.toml"), text)?;
    }
    let exe = std::env::current_exe()?;
    let mut procs = Vec::new();
    let per = s.per_process.max(2);
    for (i, from) in (0..members.len()).step_by(per).enumerate() {
        let to = (from + per).min(members.len());
        let mut cmd = Command::new(&exe);
        cmd.env("TANDEM_BENCH_SHARD", format!("{from}:{to}"))
            .env("TANDEM_BENCH_SHARD_ROOT", root);
        procs.push(Proc::spawn(
            &format!("simulated agents {from}..{to}"),
            cmd,
            &logs.join(format!("agents-{i}.log")),
        )?);
    }
    eprintln!(
        "fleet_sim: {} simulated agents in {} processes of at most {per}",
        members.len(),
        procs.len()
    );
    Ok(Agents { procs })
}

/// One process of simulated agents (`TANDEM_BENCH_SHARD=FROM:TO`): the
/// members FROM..TO of the layout, each from the agent.toml the
/// benchmark wrote in its home, as tasks of one tokio runtime, until
/// SIGTERM; then they stop, and the exit code says whether all stopped
/// cleanly.
async fn shard(range: &str) -> anyhow::Result<()> {
    let s = Settings::from_env()?;
    let _log = tandem_proto::telemetry::init(
        "fleet_sim_agents",
        tandem_proto::telemetry::LogFormat::Human,
        "warn",
    )?;
    raise_nofile()?;
    let (from, to) = range
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .with_context(|| format!("TANDEM_BENCH_SHARD={range:?} is not FROM:TO"))?;
    let root = PathBuf::from(
        std::env::var_os("TANDEM_BENCH_SHARD_ROOT")
            .context("TANDEM_BENCH_SHARD_ROOT is not set")?,
    );
    let members = layout(s.sets(), s.hosts);
    let mine = members
        .get(from..to)
        .with_context(|| format!("{from}..{to} is outside the {} agents", members.len()))?;
    let durations = SimulatedDurations::spread(s.test);
    let shutdown = CancellationToken::new();
    let mut agents = JoinSet::new();
    for m in mine {
        let path = root.join(&m.agent).join("agent.toml");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let cfg = AgentConfig::parse(&path, &text)?;
        let role = if m.member == "p" {
            Role::Primary
        } else {
            Role::Standby
        };
        let engine = SimulatedEngine::new(&cfg.pg().expect("a [postgres] table").data_dir)
            .with_role(role)
            .with_durations(durations)
            .with_data_dir_bytes(16 * MIB);
        let name = m.agent.clone();
        let token = shutdown.clone();
        agents.spawn(async move {
            let r = tandem_agent::run_with_engine(Arc::new(cfg), Arc::new(engine), token).await;
            (name, r)
        });
    }
    // An agent that ends before it is told to is a failure at once.
    let early = tokio::select! {
        _ = tandem_proto::process::shutdown_signal() => None,
        Some(r) = agents.join_next() => Some(r),
    };
    if let Some(r) = early {
        let (name, r) = r?;
        bail!("agent {name} stopped before the benchmark ended: {r:?}");
    }
    shutdown.cancel();
    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        let mut failed = Vec::new();
        while let Some(r) = agents.join_next().await {
            match r {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => failed.push(format!("{name}: {e:#}")),
                Err(e) => failed.push(e.to_string()),
            }
        }
        failed
    })
    .await
    .map_err(|_| anyhow::anyhow!("agents {from}..{to} did not stop within 60 s"))?;
    ensure!(failed.is_empty(), "agents that failed: {failed:?}");
    Ok(())
}

/// Poll `tandemctl agents` until every agent is online.
async fn wait_online(s: &Settings, c: &Controller, agents: &Agents) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120 + s.agents as u64 / 10);
    loop {
        agents.check_running()?;
        // Ten thousand agents registering at once can keep the controller
        // from answering one tandemctl in time: that is a "not yet" (the
        // deadline below still ends the wait), not a failure.
        let states = match agent_states(&ctl(c, &["agents", "--output", "json"]).await?) {
            Ok(states) => states,
            Err(e) => {
                eprintln!("fleet_sim: waiting for the agents: {e:#}");
                BTreeMap::new()
            }
        };
        if states.get("online").copied().unwrap_or(0) == s.agents {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "not all {} agents online in time: {states:?}; controller log tail:\n{}",
            s.agents,
            tail(&c.log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Poll `tandemctl agents` until every set's standby is seen as one.
async fn wait_standbys(s: &Settings, c: &Controller) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60) + s.heartbeat * 3;
    loop {
        let run = ctl(c, &["agents", "--output", "json"]).await?;
        let v: Value = serde_json::from_str(&run.stdout)
            .with_context(|| format!("tandemctl agents printed no JSON: {}", run.stderr.trim()))?;
        let standbys = v["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["role"] == "standby" && a["state"] == "online")
            .count();
        if standbys == s.sets() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {standbys} of {} standbys are seen as such; controller log tail:\n{}",
            s.sets(),
            tail(&c.log)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the run's verdicts say.
struct Tests {
    total: usize,
    clean: usize,
    /// tandemctl's exit code.
    exit: i32,
    /// Sets of the run without a verdict in the output.
    missing: Vec<String>,
    not_clean: Vec<String>,
    /// The agents' own test time (accepting the order to the result), mean.
    agent_mean: f64,
    /// From the command's start to the first test's start on its agent.
    first_start: f64,
    /// Slot turnarounds (see `scale::turnarounds`).
    turnaround: Vec<f64>,
    /// From the last test's end on its agent to the command's end.
    last_end: f64,
}

fn parse_time(v: &Value) -> Option<f64> {
    let t: jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(t.as_millisecond() as f64 / 1000.0)
}

impl Tests {
    fn read(
        run: &CtlRun,
        members: &[Member],
        started: SystemTime,
        wall: Duration,
        at_once: usize,
    ) -> anyhow::Result<Tests> {
        let out: Value = serde_json::from_str(&run.stdout).with_context(|| {
            let tail: Vec<&str> = run.stderr.lines().rev().take(20).collect();
            format!(
                "tandemctl testdb printed no JSON (exit {}): {}",
                run.code,
                tail.join("\n")
            )
        })?;
        let sets: Vec<&Value> = out["sets"].as_array().into_iter().flatten().collect();
        let verdicts: Vec<&Value> = sets.iter().map(|v| &v["verdict"]).collect();
        let starts: Vec<f64> = verdicts
            .iter()
            .filter_map(|v| parse_time(&v["started_at"]))
            .collect();
        let ends: Vec<f64> = verdicts
            .iter()
            .filter_map(|v| parse_time(&v["at"]))
            .collect();
        let durations: Vec<f64> = verdicts
            .iter()
            .filter_map(|v| v["duration_seconds"].as_f64())
            .collect();
        let t0 = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let min = |xs: &[f64]| xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = |xs: &[f64]| xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let named: std::collections::HashSet<&str> =
            sets.iter().filter_map(|v| v["name"].as_str()).collect();
        let mut missing: Vec<String> = members
            .iter()
            .filter(|m| m.member == "s" && !named.contains(m.set.as_str()))
            .map(|m| m.set.clone())
            .collect();
        missing.dedup();
        Ok(Tests {
            total: sets.len(),
            exit: run.code,
            missing,
            clean: verdicts.iter().filter(|v| v["kind"] == "clean").count(),
            not_clean: sets
                .iter()
                .filter(|v| v["verdict"]["kind"] != "clean")
                .take(5)
                .map(|v| {
                    format!(
                        "{}: {} {}",
                        v["name"].as_str().unwrap_or("?"),
                        v["verdict"]["kind"].as_str().unwrap_or("?"),
                        v["verdict"]["reason"].as_str().unwrap_or("")
                    )
                })
                .collect(),
            agent_mean: summary(&durations).0,
            first_start: if starts.is_empty() {
                0.0
            } else {
                min(&starts) - t0
            },
            turnaround: turnarounds(&starts, &ends, at_once),
            last_end: if ends.is_empty() {
                0.0
            } else {
                t0 + wall.as_secs_f64() - max(&ends)
            },
        })
    }
}

/// One run of `testdb --all`.
struct RunFigures {
    wall: Duration,
    tests: Tests,
    /// CPU time of the controller during the run, in seconds.
    controller_cpu: f64,
    /// CPU time of this process (the agents) during the run, in seconds.
    agents_cpu: f64,
    /// The controller's resident memory after the run.
    rss_after_kib: u64,
    /// Rows the store wrote during the run (PostgreSQL).
    store_rows: Option<u64>,
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn ms(x: f64) -> f64 {
    round(x * 1000.0, 1)
}

fn mb(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 1)
}

impl RunFigures {
    /// Overhead per dispatched test when a test takes `d` seconds. With at
    /// most `at_once` tests running at once, the run is `at_once` lanes
    /// each doing about T / at_once tests one after another. If the
    /// controller added a delay δ to every test it dispatched (relaying the
    /// result, storing the verdict, choosing and ordering the next test),
    /// each lane would take (T / at_once)·δ longer, so
    /// wall - ideal ≈ δ·T / at_once, and δ ≈ (wall - ideal)·at_once / T.
    fn per_test(&self, ideal: &Ideal, d: f64) -> f64 {
        let ideal_wall = d * ideal.rounds as f64;
        (self.wall.as_secs_f64() - ideal_wall).max(0.0) * ideal.at_once as f64
            / self.tests.total.max(1) as f64
    }

    fn ratio(&self, ideal: &Ideal) -> f64 {
        self.wall.as_secs_f64() / ideal.wall.as_secs_f64().max(1e-9)
    }

    fn json(&self, ideal: &Ideal) -> Value {
        let t = &self.tests;
        let (mean, p50, p90, max) = summary(&t.turnaround);
        let ratio = self.ratio(ideal);
        json!({
            "verdicts": t.total,
            "clean": t.clean,
            "wall_seconds": round(self.wall.as_secs_f64(), 3),
            "wall_over_ideal": round(ratio, 4),
            "overhead_percent_of_ideal": round((ratio - 1.0) * 100.0, 2),
            "overhead_per_test_ms": ms(self.per_test(ideal, ideal.wall.as_secs_f64() / ideal.rounds.max(1) as f64)),
            "agent_test_mean_seconds": round(t.agent_mean, 3),
            "overhead_per_test_vs_agent_time_ms": ms(self.per_test(ideal, t.agent_mean)),
            "first_start_ms": ms(t.first_start),
            "turnaround_ms": {"mean": ms(mean), "p50": ms(p50), "p90": ms(p90), "max": ms(max)},
            "last_end_ms": ms(t.last_end),
            "controller_cpu_seconds": round(self.controller_cpu, 2),
            "agents_cpu_seconds": round(self.agents_cpu, 2),
            "controller_rss_after_mb": mb(self.rss_after_kib),
            "store_rows_written": self.store_rows,
        })
    }

    fn print(&self, n: usize, ideal: &Ideal) {
        let t = &self.tests;
        let d = ideal.wall.as_secs_f64() / ideal.rounds.max(1) as f64;
        let ratio = self.ratio(ideal);
        let what = if n == 1 {
            "first contact: a new channel to every agent tested"
        } else {
            "channels to the agents already open"
        };
        println!("run {n}        {what}");
        println!(
            "  verdicts   {} of {} sets, {} clean; a test took {:.3} s on its agent (D = {d:.3} s)",
            t.total,
            t.total + t.missing.len(),
            t.clean,
            t.agent_mean
        );
        println!(
            "  wall       {:.3} s; ideal {:.3} s; wall/ideal {ratio:.4} (goal <= 1.01: {})",
            self.wall.as_secs_f64(),
            ideal.wall.as_secs_f64(),
            if ratio <= 1.01 { "met" } else { "NOT met" }
        );
        println!(
            "  overhead   {:.1} ms per dispatched test; {:.1} ms against the agents' own test time",
            self.per_test(ideal, d) * 1000.0,
            self.per_test(ideal, t.agent_mean) * 1000.0
        );
        let refill = if t.turnaround.is_empty() {
            "no place was refilled (one round)".to_owned()
        } else {
            let (mean, p50, p90, max) = summary(&t.turnaround);
            format!(
                "a freed place refilled after {:.0} ms (median {:.0}, p90 {:.0}, max {:.0})",
                mean * 1000.0,
                p50 * 1000.0,
                p90 * 1000.0,
                max * 1000.0
            )
        };
        println!(
            "  where      first test started {:.0} ms after the command; {refill}; the command ended {:.0} ms after the last test",
            t.first_start * 1000.0,
            t.last_end * 1000.0
        );
        println!(
            "  controller {:.2} s of CPU (the simulated agents {:.2} s); RSS {:.1} MB after the run",
            self.controller_cpu,
            self.agents_cpu,
            mb(self.rss_after_kib)
        );
    }
}

/// Everything measured.
struct Figures {
    certs_time: Duration,
    registration: Duration,
    idle_cpu: f64,
    /// Rows the store wrote per second while the fleet was idle (PostgreSQL).
    idle_store_writes: Option<f64>,
    ideal: Ideal,
    runs: Vec<RunFigures>,
    at_start: ProcSample,
    online: ProcSample,
    end: ProcSample,
    max_fds: u64,
    max_threads: u64,
}

impl Figures {
    /// Fail unless every run printed a clean verdict for every set.
    fn check(&self, s: &Settings, dir: &Path, log: &Path) -> anyhow::Result<()> {
        for (i, t) in self.runs.iter().map(|r| &r.tests).enumerate() {
            let n = i + 1;
            ensure!(
                t.missing.is_empty(),
                "run {n}: tandemctl testdb printed {} verdicts for {} sets (exit {}); no verdict for {:?}; its output is in {}",
                t.total,
                s.sets(),
                t.exit,
                t.missing,
                dir.join("logs").display()
            );
            ensure!(
                t.clean == t.total && t.exit == 0,
                "run {n}: {} of {} tests were not clean (tandemctl exit {}); first ones: {:#?}; controller log: {}",
                t.total - t.clean,
                t.total,
                t.exit,
                t.not_clean,
                log.display()
            );
        }
        Ok(())
    }

    fn print(&self, s: &Settings) {
        let hwm = self.end.hwm_kib;
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let json = json!({
            "bench": "fleet_sim",
            "agents": s.agents,
            "sets": s.sets(),
            "hosts": s.hosts,
            "limits": {"fleet": s.fleet_limit, "per_host": s.per_host_limit},
            "heartbeat_ms": s.heartbeat.as_millis() as u64,
            "test_seconds": round(s.test.as_secs_f64(), 3),
            "at_once": self.ideal.at_once,
            "rounds": self.ideal.rounds,
            "ideal_seconds": round(self.ideal.wall.as_secs_f64(), 3),
            "certs_init_seconds": round(self.certs_time.as_secs_f64(), 2),
            "all_online_seconds": round(self.registration.as_secs_f64(), 2),
            "runs": self.runs.iter().map(|r| r.json(&self.ideal)).collect::<Vec<_>>(),
            "controller_vmhwm_mb": mb(hwm),
            "controller_rss_mb": {"start": mb(self.at_start.rss_kib), "online": mb(self.online.rss_kib), "end": mb(self.end.rss_kib)},
            "controller_max_fds": self.max_fds,
            "controller_max_threads": self.max_threads,
            "controller_idle_cpu_percent": round(self.idle_cpu * 100.0, 1),
            "cpus": cpus,
            "store": if s.postgres { "postgresql" } else if s.store_dir.is_some() { "sqlite, custom dir" } else { "sqlite" },
            "idle_store_rows_per_second": self.idle_store_writes.map(|w| round(w, 2)),
        });
        println!();
        println!(
            "==== fleet_sim: tandem-controller with {} simulated agents ====",
            s.agents
        );
        println!(
            "fleet        {} agents: {} sets of 2 on {} hosts; heartbeat {} ms; {cpus} CPUs shared by the controller and the agents",
            s.agents,
            s.sets(),
            s.hosts,
            s.heartbeat.as_millis()
        );
        println!(
            "limits       fleet {}, per host {}: at most {} tests at once, {} rounds of D = {:.3} s: ideal {:.3} s",
            s.fleet_limit,
            s.per_host_limit,
            self.ideal.at_once,
            self.ideal.rounds,
            s.test.as_secs_f64(),
            self.ideal.wall.as_secs_f64()
        );
        println!(
            "setup        certs init {:.2} s; all agents online {:.2} s after they started",
            self.certs_time.as_secs_f64(),
            self.registration.as_secs_f64()
        );
        for (i, r) in self.runs.iter().enumerate() {
            r.print(i + 1, &self.ideal);
        }
        // The goals: under 200 MB with 1,000 agents, under 1 GB with 10,000.
        let goal_mb = if s.agents > 1000 { 1024 } else { 200 };
        println!(
            "memory       controller VmHWM {:.1} MB (goal < {goal_mb}: {}); RSS {:.1} MB at start, {:.1} MB all online, {:.1} MB at the end",
            mb(hwm),
            if hwm < goal_mb * 1024 {
                "met"
            } else {
                "NOT met"
            },
            mb(self.at_start.rss_kib),
            mb(self.online.rss_kib),
            mb(self.end.rss_kib)
        );
        println!(
            "controller   at most {} open files and {} threads; CPU {:.1}% of one CPU when idle (heartbeats)",
            self.max_fds,
            self.max_threads,
            self.idle_cpu * 100.0
        );
        if let Some(w) = self.idle_store_writes {
            println!(
                "store        PostgreSQL: {w:.2} rows written per second while idle (heartbeats of {} agents; the lease's renewal included); during the runs: {}",
                s.agents,
                self.runs
                    .iter()
                    .map(|r| r.store_rows.map_or("-".into(), |n| format!("{n} rows")))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!("json {json}");
        println!();
    }
}

/// Whether the process has exited (a zombie counts: `Proc` reaps it later).
fn exited(pid: u32) -> Option<&'static str> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => Some("gone"),
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .filter(|state| *state == "Z")
            .map(|_| "exited"),
    }
}

/// Run `tandemctl` off the runtime's workers, which the agents need.
async fn ctl(c: &Controller, args: &[&str]) -> anyhow::Result<CtlRun> {
    let (bin, env) = (c.ctl.clone(), c.env.clone());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ctl_at(&bin, &env, &args)
    })
    .await?
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
