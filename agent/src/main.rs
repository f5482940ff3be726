//! `tandem-agent`: parse flags, load `agent.toml`, start tracing, call `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_agent::backup::remote::Remote;
use tandem_agent::backup::wal;
use tandem_agent::config::AgentConfig;
use tandem_proto::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

/// Tandem's agent: runs copy, testdb and restore on one database server, on
/// the controller's orders.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Path of the agent's config file (see deploy/agent.example.toml).
    #[arg(
        long,
        short,
        env = "TANDEM_AGENT_CONFIG",
        default_value = "/etc/tandem/agent.toml",
        global = true
    )]
    config: PathBuf,
    /// Log format on stderr: human or json.
    #[arg(long, default_value = "human", global = true)]
    log_format: LogFormat,
    /// Serve Prometheus metrics on this address ("127.0.0.1:9465"),
    /// overriding `metrics_listen` in the config (with `run`).
    #[arg(long, env = "TANDEM_AGENT_METRICS_LISTEN", global = true)]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the controller's orders (the default).
    Run,
    /// Print the local instance's facts as JSON, without the controller.
    Status,
    /// Print the last testdb result (the state file), without the controller.
    /// Exit 1 when it found errors or did not finish.
    Show {
        /// Print the state file as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Archive one WAL file (the primary's archive_command):
    /// `archive_command = 'tandem-agent archive-push --dir /var/lib/tandem/wal %p %f'`.
    /// Runs as the server's OS user, so that user must be able to write the
    /// directory (and, with --remote, read the config). Exit 0 only when the
    /// file is durably archived (or already there with the same bytes), in
    /// the directory and, with --remote, in the remote store too.
    ArchivePush {
        /// The WAL archive (default: `backup.wal_archive` from the config).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also push it to the config's [remote] store, as
        /// `<set>/wal/<name>`, before answering PostgreSQL.
        #[arg(long)]
        remote: bool,
        /// The file to archive (%p).
        path: PathBuf,
        /// Its name in the archive (%f).
        name: String,
    },
    /// Fetch one WAL file for a server's restore_command:
    /// `restore_command = 'tandem-agent archive-get --remote %f %p'`.
    /// Reads the WAL archive directory first and, with --remote, the
    /// config's [remote] store when the directory lacks it. Exit 1 when no
    /// place has the file (PostgreSQL then stops asking), 2 on errors.
    ArchiveGet {
        /// The WAL archive (default: `backup.wal_archive` from the config).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Fall back to the config's [remote] store.
        #[arg(long)]
        remote: bool,
        /// The file wanted (%f).
        name: String,
        /// Where to put it (%p).
        path: PathBuf,
    },
    /// Check the WAL archive's continuity: first and last segment per
    /// timeline, and the gaps. Exit 1 when there are gaps (with --through:
    /// gaps before that segment), or when `--from` is not covered.
    ArchiveCheck {
        /// The WAL archive (default: `backup.wal_archive` from the config).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Check the set's WAL in the config's [remote] store instead.
        #[arg(long)]
        remote: bool,
        /// Also check that roll-forward can start at this LSN (e.g. a
        /// backup's start LSN) on `--timeline`.
        #[arg(long)]
        from: Option<String>,
        #[arg(long, default_value_t = 1)]
        timeline: u32,
        /// With --from: only up to this segment (e.g. the one a target time
        /// falls in); gaps after it do not count.
        #[arg(long, requires = "from")]
        through: Option<String>,
    },
    /// List the local backup files (kind, time, size, LSN range, verified).
    Backups {
        #[arg(long)]
        json: bool,
    },
    /// Remove archived WAL that no kept backup needs, from the local WAL
    /// archive and the set's WAL in the [remote] store. Kept: every segment
    /// (of any timeline) from the one holding the start of the oldest
    /// backup in the backup directory or the store, every timeline history
    /// file, and every file written within the last `backup.wal_keep_days`
    /// days; and everything while no kept backup is verified. Without
    /// --yes it only lists what would go. Exit 1 when a place could not be
    /// read or pruned.
    WalPrune {
        /// Only list what would be removed (the default without --yes).
        #[arg(long, conflicts_with = "yes")]
        dry_run: bool,
        /// Remove the files listed.
        #[arg(long)]
        yes: bool,
        /// Print the plan and what was done as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tandem_proto::process::start("tandem-agent") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tandem-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The config file for the WAL commands: read at most once (they run once
/// per WAL file, from PostgreSQL), and only when a flag does not say it all.
struct ConfigFile<'a> {
    path: &'a std::path::Path,
    loaded: std::cell::OnceCell<AgentConfig>,
}

impl<'a> ConfigFile<'a> {
    fn new(path: &'a std::path::Path) -> Self {
        ConfigFile {
            path,
            loaded: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> anyhow::Result<&AgentConfig> {
        if self.loaded.get().is_none() {
            let cfg = AgentConfig::load(self.path)?;
            let _ = self.loaded.set(cfg);
        }
        Ok(self.loaded.get().expect("loaded above"))
    }

    /// The WAL archive from `--dir` or the config.
    fn wal_dir(&self, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        if let Some(d) = dir {
            return Ok(d);
        }
        let archive = self
            .get()?
            .backup
            .as_ref()
            .and_then(|b| b.wal_archive.clone());
        archive.ok_or_else(|| {
            anyhow::anyhow!(
                "no WAL archive: pass --dir, or set backup.wal_archive in {}",
                self.path.display()
            )
        })
    }

    /// The config's remote store and the set's name, when `wanted`
    /// (`--remote`).
    fn remote_store(&self, wanted: bool) -> anyhow::Result<Option<(Remote, String)>> {
        if !wanted {
            return Ok(None);
        }
        let cfg = self.get()?;
        let r = cfg.remote.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "--remote needs a [remote] store in {} (see deploy/agent.example.toml)",
                self.path.display()
            )
        })?;
        Ok(Some((Remote::open(r)?, cfg.set.clone())))
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = cli.command.unwrap_or(Command::Run);
    let config = ConfigFile::new(&cli.config);
    match command {
        Command::ArchivePush {
            dir,
            remote,
            path,
            name,
        } => {
            let dir = config.wal_dir(dir)?;
            let remote = config.remote_store(remote)?;
            if wal::push(&path, &name, &dir)? == wal::Pushed::AlreadyThere {
                eprintln!("{name} was already archived with the same bytes");
            }
            if let Some((r, set)) = remote
                && r.push_wal(&path, &set, &name).await? == wal::Pushed::AlreadyThere
            {
                eprintln!("{name} was already in the remote store with the same bytes");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::ArchiveGet {
            dir,
            remote,
            name,
            path,
        } => {
            wal::checked_name(&name)?;
            let dir = config.wal_dir(dir)?;
            let remote = config.remote_store(remote)?;
            let local = dir.join(&name);
            if local.is_file() {
                std::fs::copy(&local, &path).map_err(|e| {
                    anyhow::anyhow!("cannot copy {} to {}: {e}", local.display(), path.display())
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            if let Some((r, set)) = remote
                && r.fetch_wal(&set, &name, &path).await?
            {
                return Ok(ExitCode::SUCCESS);
            }
            return Ok(ExitCode::from(1));
        }
        Command::ArchiveCheck {
            dir,
            remote,
            from,
            timeline,
            through,
        } => {
            let (c, place) = if let Some((r, set)) = config.remote_store(remote)? {
                let c = r.wal_continuity(&set).await?;
                (c, format!("the remote store's WAL of set {set}"))
            } else {
                let dir = config.wal_dir(dir)?;
                let c = wal::check(&dir)?;
                (c, format!("the WAL archive {}", dir.display()))
            };
            // Up to a segment, only the gaps before it count.
            let mut ok = through.is_some() || !c.has_gaps();
            for (tl, span) in &c.timelines {
                println!(
                    "timeline {tl}: {} segments, {} .. {}",
                    span.segments, span.first, span.last
                );
                for (a, b) in &span.gaps {
                    println!("  missing {a} .. {b}");
                }
            }
            if c.timelines.is_empty() {
                println!("{place} holds no segment");
            }
            if let Some(from) = from {
                let lsn: tandem_proto::model::Lsn = from.parse().map_err(|()| {
                    anyhow::anyhow!("--from {from:?} is not an LSN like 0/3000028")
                })?;
                let upto = through
                    .as_deref()
                    .map(|s| format!(" through {s}"))
                    .unwrap_or_default();
                match c.covers(timeline, lsn, through.as_deref()) {
                    Ok(()) => {
                        println!("roll-forward from {lsn} on timeline {timeline}{upto}: covered")
                    }
                    Err(why) => {
                        println!("roll-forward from {lsn} on timeline {timeline}{upto}: {why}");
                        ok = false;
                    }
                }
            }
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        _ => {}
    }
    let cfg = AgentConfig::load(&cli.config)?;
    match command {
        Command::ArchivePush { .. } | Command::ArchiveGet { .. } | Command::ArchiveCheck { .. } => {
            unreachable!("handled above")
        }
        Command::Backups { json } => {
            let Some(b) = &cfg.backup else {
                anyhow::bail!(
                    "no [backup] section in {}: this agent takes no backups",
                    cli.config.display()
                );
            };
            let list = tandem_agent::backup::describe_all(&b.dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", tandem_agent::backup::describe_human(&list));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::WalPrune { dry_run, yes, json } => {
            if cfg.backup.is_none() {
                anyhow::bail!(
                    "no [backup] section in {}: this agent keeps no WAL archive",
                    cli.config.display()
                );
            }
            let dry_run = dry_run || !yes;
            // Removals are logged on stderr as they happen.
            let telemetry = (!dry_run)
                .then(|| telemetry::init("tandem-agent", cli.log_format, "info"))
                .transpose()?;
            let report =
                tandem_agent::backup::wal_retention::run(&cfg, jiff::Timestamp::now(), dry_run)
                    .await;
            if let Some(t) = telemetry {
                t.shutdown().await;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.human());
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Status => {
            let facts = tandem_agent::facts_for(&cfg).await?;
            println!("{}", serde_json::to_string_pretty(&facts)?);
            Ok(if facts.problem.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Show { json } => {
            let path = tandem_agent::files::state_file_path(&cfg);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("never tested: no state file {} yet", path.display());
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => anyhow::bail!("cannot read the state file {}: {e}", path.display()),
            };
            let v: serde_json::Value = serde_json::from_str(&text)?;
            if json {
                println!("{text}");
            } else {
                print!("{}", tandem_agent::files::state_human(&v));
            }
            Ok(if v["result"] == "clean" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Run => {
            let telemetry = telemetry::init("tandem-agent", cli.log_format, "info")?;
            let metrics = match cli.metrics_listen {
                Some(addr) => Some((addr, "--metrics-listen")),
                None => cfg.metrics_listen.map(|a| (a, "field `metrics_listen`")),
            };
            if let Some((addr, setting)) = metrics {
                tandem_agent::metrics::serve(addr, setting, &cfg)?;
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(on_signal(shutdown.clone()));
            let result = tandem_agent::run(cfg, shutdown).await;
            telemetry.shutdown().await;
            result.map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Cancel `shutdown` on the first SIGTERM or SIGINT.
async fn on_signal(shutdown: CancellationToken) {
    let sig = tandem_proto::process::shutdown_signal().await;
    tracing::info!(signal = sig, "shutdown signal received");
    shutdown.cancel();
}
