//! `tandem-agent`: parse flags, load `agent.toml`, start tracing, call `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_agent::config::AgentConfig;
use tandem_agent::engine::Engine;
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

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = AgentConfig::load(&cli.config)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Status => {
            let engine = tandem_agent::engine_for(&cfg)?;
            let facts = engine.facts().await;
            println!("{}", serde_json::to_string_pretty(&facts)?);
            Ok(if facts.problem.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Show { json } => {
            let path = tandem_agent::actions::testdb::state_file_path(&cfg);
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
                print!("{}", tandem_agent::actions::testdb::state_human(&v));
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
