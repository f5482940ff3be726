//! `tandem-controller`: parse flags, load `controller.toml`, start tracing, call `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tandem_controller::config::ControllerConfig;
use tandem_proto::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

/// Tandem's controller: knows every replication set as a whole, and drives
/// the agents on their servers.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Path of the controller's config file (see deploy/controller.example.toml).
    #[arg(
        long,
        short,
        env = "TANDEM_CONTROLLER_CONFIG",
        default_value = "/etc/tandem/controller.toml"
    )]
    config: PathBuf,
    /// Log format on stderr: human or json.
    #[arg(long, default_value = "human")]
    log_format: LogFormat,
    /// Check the config file and exit.
    #[arg(long)]
    check_config: bool,
    /// Serve Prometheus metrics on this address ("127.0.0.1:9464"),
    /// overriding `metrics_listen` in the config.
    #[arg(long, env = "TANDEM_CONTROLLER_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Run without a command, the controller serves until SIGTERM.
#[derive(clap::Subcommand)]
enum Command {
    /// Create or bring the store named in the config (`store`) to this
    /// version's schema, then exit. Controllers also do it when they start;
    /// with several controllers on one PostgreSQL store, run it once before
    /// upgrading them.
    Migrate,
    /// Move a fleet's SQLite store into the (empty) PostgreSQL store named
    /// in the config, once, every row kept; then point the controllers at
    /// it. Stop the controller that used FILE first.
    ImportSqlite {
        /// The SQLite store to move (the old `store` path).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tandem_proto::process::start("tandem-controller") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-controller: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = ControllerConfig::load(&cli.config)?;
    if cli.check_config {
        cfg.tls.server_config()?;
        println!("{}: ok ({} sets)", cli.config.display(), cfg.sets.len());
        return Ok(());
    }
    let telemetry = telemetry::init("tandem-controller", cli.log_format, "info")?;
    match &cli.command {
        Some(Command::Migrate) => {
            tandem_controller::store::Store::open_async(cfg.store.clone()).await?;
            println!("{}: the store is at this version's schema", cfg.store);
            telemetry.shutdown().await;
            return Ok(());
        }
        Some(Command::ImportSqlite { file }) => {
            let counts = tandem_controller::store::import_sqlite(file, &cfg.store).await?;
            let total: usize = counts.iter().map(|(_, n)| n).sum();
            for (table, n) in &counts {
                println!("{table:<12} {n:>8} rows");
            }
            println!(
                "imported {total} rows from {} into {}; point every controller's `store` at it",
                file.display(),
                cfg.store
            );
            telemetry.shutdown().await;
            return Ok(());
        }
        None => {}
    }
    let setting = match cli.metrics_listen {
        Some(addr) => {
            cfg.metrics_listen = Some(addr);
            "--metrics-listen"
        }
        None => "field `metrics_listen`",
    };
    if let Some(addr) = cfg.metrics_listen {
        tandem_controller::metrics::serve(addr, setting)?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let result = tandem_controller::run(cfg, shutdown).await;
    telemetry.shutdown().await;
    result
}

/// Cancel `shutdown` on the first SIGTERM or SIGINT.
async fn on_signal(shutdown: CancellationToken) {
    let sig = tandem_proto::process::shutdown_signal().await;
    tracing::info!(signal = sig, "shutdown signal received");
    shutdown.cancel();
}
