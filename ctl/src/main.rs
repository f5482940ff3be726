//! `tandemctl`: parse flags, start tracing, run one command in a root span.

use std::process::ExitCode;

use clap::Parser;
use tandem_ctl::cli::{Cli, Command, SetCommand};
use tandem_ctl::commands;
use tandem_ctl::outcome::Outcome;
use tandem_proto::telemetry;
use tracing::Instrument;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tandem_proto::process::start("tandemctl") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let telemetry = match telemetry::init("tandemctl", cli.log_format, "warn") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("tandemctl: {e}");
                return ExitCode::from(2);
            }
        };
        let name = command_name(&cli.command);
        let span = tracing::info_span!("tandemctl", otel.name = %format!("tandemctl {name}"), command = name);
        let result = commands::run(&cli.conn, cli.output, cli.command).instrument(span).await;
        telemetry.shutdown().await;
        match result {
            Ok(Outcome::Ok) => ExitCode::SUCCESS,
            Ok(Outcome::Bad) => ExitCode::from(1),
            Ok(Outcome::CouldNotRun) => ExitCode::from(2),
            Err(e) => {
                eprintln!("tandemctl: {e}");
                ExitCode::from(2)
            }
        }
    })
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Agents => "agents",
        Command::Controllers => "controllers",
        Command::Show { .. } => "show",
        Command::Audit { .. } => "audit",
        Command::Testdb { .. } => "testdb",
        Command::Backup { .. } => "backup",
        Command::Copy { .. } => "copy",
        Command::Backups { .. } => "backups",
        Command::WalPrune { .. } => "wal-prune",
        Command::Restore { .. } => "restore",
        Command::History { .. } => "history",
        Command::Limits { .. } => "limits",
        Command::Watch { .. } => "watch",
        Command::Cancel { .. } => "cancel",
        Command::Set(SetCommand::Policy { .. }) => "set policy",
        Command::Set(SetCommand::List { .. }) => "set list",
        Command::Set(SetCommand::Add { .. }) => "set add",
        Command::Set(SetCommand::Change { .. }) => "set change",
        Command::Set(SetCommand::Remove { .. }) => "set remove",
        Command::Maintenance(_) => "maintenance",
        Command::Certs(_) => "certs init",
    }
}
