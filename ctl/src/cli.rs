//! The command line: every `tandemctl` command and flag, with its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tandem_proto::telemetry::LogFormat;

use crate::output::OutputFormat;

/// The operator's command line for Tandem.
///
/// Every command except `certs` is a call to the controller, over mutual TLS
/// with your operator certificate. Exit codes: 0 success, 1 when a verdict
/// or a state is bad (errors found, an agent offline, a standby not
/// streaming), 2 when the command could not run (usage, unreachable
/// controller, refused).
#[derive(Parser, Debug)]
#[command(name = "tandemctl", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Connection,
    /// Output for people (human) or for scripts (json; stable shapes).
    #[arg(
        long,
        short,
        global = true,
        default_value = "human",
        env = "TANDEM_OUTPUT"
    )]
    pub output: OutputFormat,
    /// Log format on stderr (logs are quiet unless RUST_LOG says otherwise).
    #[arg(long, global = true, default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the controller is, and which certificate to present.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The controller's URL, e.g. https://127.0.0.1:7700, or a comma-separated
    /// list of the controllers' URLs (https://c1:7700,https://c2:7700):
    /// tandemctl goes to the one that leads.
    #[arg(long, global = true, env = "TANDEM_CONTROLLER")]
    pub controller: Option<String>,
    /// The CA certificate that signed the controller's certificate (PEM).
    #[arg(long, global = true, env = "TANDEM_CA")]
    pub ca: Option<PathBuf>,
    /// Your operator certificate (PEM), made by `tandemctl certs init`.
    #[arg(long, global = true, env = "TANDEM_CERT")]
    pub cert: Option<PathBuf>,
    /// The key of your operator certificate (PEM).
    #[arg(long, global = true, env = "TANDEM_KEY")]
    pub key: Option<PathBuf>,
}

/// How a test, backup or copy copies the standby.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct CopyFlags {
    /// How the standby is copied (default: the set's policy, else the
    /// agent's `[testdb] mode`).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Run a cold copy even when stopping the standby would make the
    /// primary's commits wait (it is a synchronous standby the primary
    /// cannot do without); refused otherwise.
    #[arg(long)]
    pub allow_commit_stall: bool,
}

/// The modes, as `--mode` takes them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    /// The standby keeps streaming; the copy comes from a non-exclusive base
    /// backup and its WAL.
    Online,
    /// The standby is stopped for the copy, as in the standby manual.
    Cold,
}

impl From<ModeArg> for tandem_proto::model::TestMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Online => tandem_proto::model::TestMode::Online,
            ModeArg::Cold => tandem_proto::model::TestMode::Cold,
        }
    }
}

/// A set policy's mode: one of the modes, or each agent's default.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyMode {
    /// The standby keeps streaming; the copy comes from a non-exclusive base
    /// backup and its WAL.
    Online,
    /// The standby is stopped for the copy, as in the standby manual.
    Cold,
    /// Each agent's `[testdb] mode`.
    Agent,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Online => "online",
            PolicyMode::Cold => "cold",
            PolicyMode::Agent => "agent",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the agents: set, member, role, online or offline, last heartbeat.
    /// Exit 1 when any declared agent is not online.
    Agents,
    /// List the controllers sharing the store: which one leads, since
    /// when, under which lease generation and until when. Exit 1 when none
    /// leads.
    Controllers,
    /// Show sets with their members, live roles and states, and verdicts.
    /// Exit 1 when a member is unhealthy or a verdict found errors.
    Show {
        /// Only these sets (default: all).
        sets: Vec<String>,
    },
    /// Test a set's standby: copy its database aside, bring the copy up so it
    /// replays its log, and run the integrity checks on it. Shows a
    /// progress bar per set and ends with the verdicts. Exit 0 clean, 1 errors
    /// found, 2 a test could not run.
    ///
    /// The run is the controller's: Ctrl-C stops watching it, not the run
    /// (`tandemctl watch RUN` follows it again, `tandemctl cancel RUN`
    /// cancels it); the run id is printed on stderr at the start.
    Testdb {
        /// The sets to test.
        #[arg(required_unless_present = "all")]
        sets: Vec<String>,
        /// Test every set.
        #[arg(long, conflicts_with = "sets")]
        all: bool,
        /// Test this member instead of the set's streaming standby (one set only).
        #[arg(long)]
        member: Option<String>,
        #[command(flatten)]
        copy: CopyFlags,
    },
    /// Follow a run started earlier (by `testdb`, a schedule or a signal)
    /// to its verdicts; exit codes as for `testdb`.
    Watch {
        /// The run id (printed by `testdb`, in `tandemctl audit`).
        run: String,
    },
    /// Cancel a run (operator role): its queued sets end as could-not-run
    /// ("cancelled by <you>"), and the agents running its tests are asked to
    /// cancel them (they put the standby back). `tandemctl watch RUN` shows
    /// the verdicts.
    Cancel {
        /// The run id.
        run: String,
    },
    /// Take a backup of a set now: copy its standby, pack the copy into one
    /// backup file (tar, zstd, BLAKE3 manifest inside) on that member's host,
    /// test the copy, and keep the file only when the test is clean.
    /// Progress per step, then the verdict and the file. Exit 0 kept,
    /// 1 errors found (nothing kept), 2 could not run.
    Backup {
        /// The set.
        set: String,
        /// Copy this member instead of the set's streaming standby.
        #[arg(long)]
        member: Option<String>,
        #[command(flatten)]
        copy: CopyFlags,
    },
    /// Make an archive copy of a set's standby: the copy only, no
    /// test, kept in the agent's archive_dir; with --archive-file also packed
    /// into one backup file. When a test of the set is copying right now, the
    /// archive copy rides on it (one copy serves both; the file is written
    /// before the test opens the copy). Exit 0 made, 1 the copy that served
    /// it had errors, 2 could not be made.
    Copy {
        /// The set.
        set: String,
        /// Copy this member instead of the set's streaming standby.
        #[arg(long)]
        member: Option<String>,
        /// Pack the copy into one archive file in the member's backup dir.
        #[arg(long)]
        archive_file: bool,
        #[command(flatten)]
        copy: CopyFlags,
    },
    /// List a set's backup files on every member, and in the remote store
    /// (member "(remote)", file "remote:KEY" as `restore --from` takes it):
    /// kind, time, size, LSN range, verified. Exit 1 when a member or the
    /// remote store could not be asked.
    Backups {
        /// The set.
        set: String,
        /// Also say whether a restore can get back to this time (RFC 3339):
        /// which verified backup and WAL would reach it, and where the WAL
        /// archive has gaps. Exit 1 when it cannot.
        #[arg(long)]
        target_time: Option<String>,
        /// With --target-time: the member to restore (default: the primary).
        #[arg(long, requires = "target_time")]
        member: Option<String>,
    },
    /// List the archived WAL that retention would remove now, on each
    /// member's WAL archive and in the remote store: a dry run, nothing is
    /// removed. Kept: every segment (of any timeline) from the one holding
    /// the start of the oldest kept backup, timeline history files, files
    /// written within the agent's `backup.wal_keep_days`, and everything
    /// while no kept backup is verified. The agents remove old WAL after
    /// each kept backup, and with `tandem-agent wal-prune --yes`. Exit 1
    /// when a member or a place could not be asked.
    WalPrune {
        /// The set.
        set: String,
        /// Accepted for clarity: this command never removes anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a set's primary (or --member) from a backup, admin only, as
    /// a maintenance window. While the set still serves: pick the backup
    /// (fetch it from the remote store or another member's host), check
    /// free space, unpack and verify it beside the data directory. Then the
    /// set halted, standbys fenced and stopped first; on the member: stop,
    /// move the current data directory aside (dated, never deleted), swap,
    /// roll forward from the WAL archive (socket only), upgrade hook, fix
    /// sequences, start for clients, health twice. Then each standby
    /// re-seeded from it, streaming, and a testdb. A failure before the
    /// start for clients puts the old data directory back, starts it and
    /// resumes the standbys. Exit 0 restored and tested clean, 1 a step
    /// failed (the report names it), 2 could not start (nothing was
    /// written).
    Restore {
        /// The set.
        set: String,
        /// Which backup: latest (the default: the newest verified backup
        /// taken at or before the target time, on any member's host or in
        /// the remote store); daily, weekly or monthly (the newest of that
        /// kind, anywhere); /abs/path/FILE.tar.zst (a file on the restored
        /// member's host); MEMBER:/abs/path/FILE.tar.zst (a file on another
        /// member's host, e.g. the standby that took it: the controller has
        /// that member's agent grant the restored member's agent a 30-minute
        /// fetch of exactly that file; with free space checked first, it is
        /// copied over mutual TLS into the restored member's backup
        /// directory, a cut transfer resumes when the restore runs again,
        /// and every file is verified against the backup's manifest); or
        /// remote:KEY (the remote store, recommended but not required).
        /// `tandemctl backups SET` lists them; --dry-run says which is used.
        #[arg(
            long,
            default_value = "latest",
            value_name = "latest|daily|weekly|monthly|FILE|MEMBER:FILE|remote:KEY"
        )]
        from: String,
        /// Roll forward to this time (RFC 3339, e.g. 2026-11-21T12:30:00Z).
        #[arg(long, conflicts_with = "latest")]
        target_time: Option<String>,
        /// Roll forward to the end of the WAL archive (the default).
        #[arg(long)]
        latest: bool,
        /// Overwrite a prepare directory left by an earlier restore.
        #[arg(long)]
        replace: bool,
        /// Confirm: the member's database is replaced (the old one is kept aside).
        #[arg(long)]
        yes: bool,
        /// Say what the restore would use and whether it would go ahead (the
        /// backup and where it is, the WAL, what would be moved, the free
        /// space check, whether the target time is reachable); nothing is
        /// stopped or written. Exit 0 when it would go ahead, 1 when not.
        #[arg(long)]
        dry_run: bool,
        /// Restore this member instead of the set's primary.
        #[arg(long)]
        member: Option<String>,
    },
    /// A set's history, newest first: its verdicts, and what else happened
    /// to it (role changes seen, scheduled tests skipped, inventory changes).
    History {
        set: String,
        /// How many verdicts (0: all).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show the fleet's load limits and how many tests run and wait; with a
    /// flag, change them now (admin role; persisted, they override
    /// controller.toml's [limits] until --reset).
    Limits {
        /// At most this many tests at once in the fleet.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        fleet: Option<u32>,
        /// At most this many tests at once on one host.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        per_host: Option<u32>,
        /// Go back to the limits in controller.toml.
        #[arg(long, conflicts_with_all = ["fleet", "per_host"])]
        reset: bool,
    },
    /// Show the audit log of mutating calls, newest first.
    Audit {
        /// How many entries (0: all).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The inventory of sets and members, and changes to it (admin role to
    /// change), and a set's policies.
    #[command(subcommand)]
    Set(SetCommand),
    /// Maintenance windows: repair what a testdb found, on the primary with
    /// the whole set halted (replicated errors) or by re-seeding the standby
    /// (standby-local damage), then prove the set clean with a fresh testdb.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Certificates for a development fleet.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Subcommand, Debug)]
pub enum SetCommand {
    /// Change when a set is tested and archive-copied (persisted; overrides
    /// controller.toml until --reset). Policies: `off`, `interval=SECONDS`
    /// (from the previous test's end), `ATwed0500,sun0300` (weekly, in the
    /// controller's time_zone; `AT*0300` every day), `testdb` (daily at
    /// midnight), `signal` or `signal=SIGUSR1` (a signal to an agent starts
    /// a test), `cron=MIN HOUR DOM MON DOW`.
    Policy {
        /// The set.
        set: String,
        /// The test policy.
        #[arg(long)]
        test: Option<String>,
        /// The archive-copy policy (a copy without a test).
        #[arg(long)]
        archive_copy: Option<String>,
        /// Pack each copy into one archive file: on or off.
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        archive_file: Option<bool>,
        /// The mode of the set's tests and copies when a request names
        /// none (scheduled ones too).
        #[arg(long, value_enum)]
        mode: Option<PolicyMode>,
        /// Go back to the policies in controller.toml.
        #[arg(long, conflicts_with_all = ["test", "archive_copy", "archive_file", "mode"])]
        reset: bool,
    },
    /// List the sets in the inventory with their members as declared
    /// (agent, host), generation, and who changed them last. `tandemctl
    /// show` gives their live state.
    List {
        /// Only these sets (default: all).
        sets: Vec<String>,
    },
    /// Add a set to the inventory (admin role; persisted and audited; it
    /// wins over controller.toml). Its agents are accepted at once.
    Add {
        /// The new set's name.
        set: String,
        /// A member: NAME[=AGENT][@HOST] (repeat for each). The agent
        /// defaults to NAME; the host (for the per-host limit) to the host of
        /// the agent's address.
        #[arg(long = "member", value_name = "NAME[=AGENT][@HOST]", value_parser = crate::member::parse_member, required_unless_present = "from_config")]
        members: Vec<tandem_proto::pb::MemberDecl>,
        /// Take the members from controller.toml, as the controller loaded
        /// it when it started (to apply the file's version of a set).
        #[arg(long, conflicts_with = "members")]
        from_config: bool,
        /// Replace the members of an existing set (a new generation).
        #[arg(long)]
        replace: bool,
    },
    /// Add, change or remove members of a set (admin role; a new generation,
    /// so agents refuse orders made before; recorded in `tandemctl history`).
    Change {
        /// The set.
        set: String,
        /// Add a member: NAME[=AGENT][@HOST] (repeatable).
        #[arg(long, value_name = "NAME[=AGENT][@HOST]", value_parser = crate::member::parse_member)]
        add_member: Vec<tandem_proto::pb::MemberDecl>,
        /// Give a member (by NAME) a new agent and/or host:
        /// NAME=AGENT, NAME@HOST or NAME=AGENT@HOST; what is left out stays
        /// (repeatable).
        #[arg(long, value_name = "NAME[=AGENT][@HOST]", value_parser = crate::member::parse_member)]
        change_member: Vec<tandem_proto::pb::MemberDecl>,
        /// Remove a member by name (repeatable).
        #[arg(long, value_name = "NAME")]
        remove_member: Vec<String>,
    },
    /// Remove a set from the inventory (admin role): it is no longer shown,
    /// tested or scheduled, and its agents are refused; its history stays.
    /// Refused while a test of the set waits or runs. It stays removed even
    /// if controller.toml still declares it.
    Remove {
        /// The set.
        set: String,
        /// Do not ask for confirmation (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MaintenanceCommand {
    /// Print the repair plan for a set whose last verdict found errors: the
    /// triage on the primary (read-only, online: amcheck of exactly the
    /// relations the findings name), the ordered steps, what each touches,
    /// and the expected downtime. Changes nothing (operator role).
    Plan {
        set: String,
        /// auto: REINDEX for index findings, the agent's exec repair
        /// (maintenance.repair_command) for the rest; exec: the exec repair
        /// for everything.
        #[arg(long, default_value = "auto", value_parser = ["auto", "exec"])]
        repair: String,
    },
    /// Open a window now and run the plan (admin role): standbys fenced and
    /// stopped, primary out of client service, REINDEX / exec repair, check,
    /// resume in order, testdb. A clean testdb closes the window; a failed
    /// step stops it and leaves the set halted (exit 1).
    Open {
        set: String,
        /// Why (goes into the set's history and the audit log).
        #[arg(long)]
        reason: String,
        /// auto or exec, as for `plan`.
        #[arg(long, default_value = "auto", value_parser = ["auto", "exec"])]
        repair: String,
        /// Return once the window is open; do not follow it.
        #[arg(long)]
        detach: bool,
    },
    /// Resume a window's set (primary serving, standbys unfenced, started
    /// and streaming) and run the testdb that closes it; e.g. after a
    /// repair made by hand (admin role).
    Close {
        set: String,
        #[arg(long)]
        detach: bool,
    },
    /// Stop a window and put its set back as it was before (admin role).
    Abort {
        set: String,
        #[arg(long)]
        detach: bool,
    },
    /// Show the set's current or last window: plan, steps, report.
    Show { set: String },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a development CA and certificates for the controller, agents and
    /// operators. Existing files are kept (and an existing CA reused) unless
    /// --force. Real deployments bring their own PKI.
    Init {
        /// Directory for the PEM files.
        #[arg(long)]
        dir: PathBuf,
        /// Agent names, comma-separated (e.g. db1,db2).
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// Operator names, comma-separated; each gets user-<name>.pem.
        #[arg(long, value_delimiter = ',', default_value = "operator")]
        users: Vec<String>,
        /// Host names and IP addresses the controller's and agents' certificates are valid for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
        /// Overwrite existing files, including the CA.
        #[arg(long)]
        force: bool,
    },
    /// Renew one certificate from the development CA that `certs init` made
    /// in DIR: a new key and a certificate with the same identity and server
    /// names, valid for a year. The current files are kept as `*.pem.old`.
    /// A running agent or controller uses the new files for new connections
    /// within seconds (at once on SIGHUP), with no restart; `tandemctl
    /// agents` warns about agent certificates with under 30 days left.
    ///
    /// Examples: `tandemctl certs renew --dir /etc/tandem/certs agent db1`,
    /// `... controller`, `... user alice`.
    Renew {
        /// Directory of the PEM files (with ca.pem and ca-key.pem).
        #[arg(long)]
        dir: PathBuf,
        /// Whose certificate: `controller` (controller.pem), `agent NAME`
        /// (agent-NAME.pem) or `user NAME` (user-NAME.pem).
        holder: HolderKind,
        /// The agent's or user's name.
        name: Option<String>,
    },
}

/// Whose certificate `certs renew` makes again.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderKind {
    Controller,
    Agent,
    User,
}
