//! The engine boundary (DESIGN "The engine boundary").
//!
//! The agent's actions never run database tools themselves; they call an
//! [`Engine`]. PostgreSQL ([`postgres::PostgresEngine`]) is the first engine
//! and the one every claim is proven on: `postgres` (facts, live stop/start),
//! `private` (a throwaway instance on a copy, and the checks), `copy` (the
//! ordered, hashed copy of a stopped data directory), `findings` (reading the
//! check tools' output). [`simulated::SimulatedEngine`] answers the trait
//! without a database, for the controller's scale benchmark only.

pub mod copy;
pub mod findings;
pub mod firebird;
mod live;
pub mod lost_rows;
pub mod online;
pub mod pages;
pub mod postgres;
pub mod postmaster;
pub mod private;
mod replication;
pub mod restore;
pub mod simulated;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem_proto::model::{Facts, Finding, Lsn};
use tokio_util::sync::CancellationToken;

use crate::runner::RunError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{tool} failed (exit {code:?}): {stderr}")]
    Tool {
        tool: &'static str,
        code: Option<i32>,
        stderr: String,
    },
    #[error("unexpected output from {tool}: {output:?}")]
    Output { tool: &'static str, output: String },
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
    #[error("{0} is not supported by this engine")]
    Unsupported(&'static str),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A throwaway server running on a copy (SPEC T2.4): socket only, private
/// directory, archiving and replication off.
#[derive(Debug, Clone)]
pub struct PrivateInstance {
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    /// The log position the instance reached after replaying the copy's log.
    pub lsn: Option<Lsn>,
    pub data_checksums: bool,
}

/// What the checks on a private instance found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// What was checked, by which method, and how much (one line each).
    pub coverage: Vec<String>,
    /// What no check covered (one line each; empty when everything was).
    pub not_covered: Vec<String>,
    /// What a check warned about without calling it damage (one line each).
    pub warnings: Vec<String>,
}

/// A relation that findings name, as the live server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRelation {
    pub database: String,
    /// `schema.name`.
    pub relation: String,
    pub is_index: bool,
    /// Its size on the live server (0 when it could not be read).
    pub bytes: u64,
}

/// What a read-only check of named relations on the live server found.
#[derive(Debug, Clone, Default)]
pub struct LiveCheck {
    /// The relations checked.
    pub relations: Vec<LiveRelation>,
    /// What the checks found there (empty: the live server is clean there).
    pub findings: Vec<Finding>,
    /// Findings that name nothing the live server can check, with why.
    pub unresolved: Vec<String>,
}

/// `<dir>.<what>-<UTC time>` beside `dir`: where a data directory is moved
/// aside (never deleted) by a restore or a re-seed.
pub fn dated_beside(dir: &Path, what: &str) -> PathBuf {
    let stamp = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%dT%H%M%SZ");
    let mut s = dir.as_os_str().to_owned();
    s.push(format!(".{what}-{stamp}"));
    PathBuf::from(s)
}

/// How the caller wants a copy of the live data directory made.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    pub workers: usize,
    pub method: copy::CopyMethod,
    /// The live server runs, under the backup [`Engine::start_backup`]
    /// began (online mode): files may change while they are copied, and the
    /// WAL is added by [`Engine::stop_backup`], not copied with them.
    pub online: bool,
}

/// What a copy made.
#[derive(Debug, Clone)]
pub struct CopyDone {
    pub bytes: u64,
    /// What ran: `Clone` or `Bytes`.
    pub method: copy::CopyMethod,
    /// Why the method asked for did not run (cloning refused), if it did not.
    pub note: Option<String>,
    /// The files, with their hashes where the copy read them.
    pub files: Vec<copy::CopiedFile>,
}

/// How an online copy ended on the standby.
#[derive(Debug, Clone)]
pub struct BackupEnd {
    /// Where the copy's replay starts (the backup label's position) and
    /// where it is consistent (the backup's stop); None for engines whose
    /// copies have no log position (Firebird).
    pub lsns: Option<(Lsn, Lsn)>,
    /// Files the stop added to the copy (the label, the WAL segments),
    /// relative to it.
    pub added: Vec<PathBuf>,
    pub wal_bytes: u64,
}

/// Run the ordered, hashed copy of what `plan` lists (made on the blocking
/// pool too: it may read a whole directory tree) from `src` to `dst`.
/// `what` names the source in an error. Every engine's `copy_to` ends here.
pub(crate) async fn copy_on_blocking_pool(
    plan: impl FnOnce() -> Result<copy::CopyPlan, EngineError> + Send + 'static,
    src: PathBuf,
    dst: PathBuf,
    opts: copy::CopyOptions,
    progress: ProgressFn,
    cancel: CancellationToken,
    what: PathBuf,
) -> Result<CopyDone, EngineError> {
    tokio::task::spawn_blocking(move || {
        let plan = plan()?;
        let progress = move |n: u64| progress(n);
        let report = copy::copy(&plan, &src, &dst, &opts, &progress, &cancel)?;
        Ok::<_, EngineError>(CopyDone {
            bytes: report.bytes,
            method: report.method,
            note: report.note,
            files: report.files_copied,
        })
    })
    .await
    .map_err(|e| EngineError::Io {
        op: "run the copy of",
        path: what,
        source: std::io::Error::other(e),
    })?
}

/// Called from the copy's worker threads with the bytes copied so far.
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

/// A local database instance the agent looks after.
pub trait Engine: Send + Sync + 'static {
    /// Read the instance's facts now: role, log positions, replication state,
    /// sizes, version. Never fails: what could not be read is said in
    /// `Facts::problem` and the role is `Unknown`.
    fn facts(&self) -> impl Future<Output = Facts> + Send;

    /// The live data directory (Firebird: the database file).
    fn data_dir(&self) -> &Path;

    /// Whether testdb copies a streaming standby (PostgreSQL: never the
    /// primary), or the set's only member while it serves (engines
    /// without physical replication: Firebird).
    fn needs_streaming_standby(&self) -> bool {
        true
    }

    /// Whether testdb may stop the live server for a cold copy. Firebird:
    /// no (its server is the host's service, copied while it serves).
    fn can_copy_cold(&self) -> bool {
        true
    }

    /// Whether an online backup begun by [`Engine::start_backup`] stays
    /// in force when the agent dies (Firebird's `nbackup -L` lock), so the
    /// action records [`Engine::end_backup_left_behind`] as an undo before
    /// it begins one. PostgreSQL's ends with its session.
    fn backup_outlives_agent(&self) -> bool {
        false
    }

    /// End an online backup a failed, cancelled or killed operation left in
    /// force; Ok (with a note for the record, or empty) when none is.
    fn end_backup_left_behind(&self) -> impl Future<Output = Result<String, EngineError>> + Send {
        async { Ok(String::new()) }
    }

    /// Whether this engine's backup is a logical dump made from the opened
    /// copy and proven by restoring it ([`Engine::make_backup`],
    /// [`Engine::verify_backup`]; Firebird: `gbak`), rather than the copy
    /// itself, packed before the test opens it (PostgreSQL).
    fn backup_is_logical(&self) -> bool {
        false
    }

    /// Dump the opened copy into the directory `dst` (which must not
    /// exist); output appended to `out`. A dump that fails is a finding
    /// (the table it was reading), not an error.
    fn make_backup(
        &self,
        _inst: &PrivateInstance,
        _dst: &Path,
        _out: &Path,
    ) -> impl Future<Output = Result<CheckReport, EngineError>> + Send {
        async { Err(EngineError::Unsupported("logical backups")) }
    }

    /// Restore the dump in `dst` into a scratch database and validate that
    /// (its findings say why the backup is no good); the scratch database
    /// is removed. Output appended to `out`.
    fn verify_backup(
        &self,
        _dst: &Path,
        _out: &Path,
    ) -> impl Future<Output = Result<CheckReport, EngineError>> + Send {
        async { Err(EngineError::Unsupported("logical backups")) }
    }

    /// What testdb's report says when the copy's pages cannot be checked
    /// offline (`inst.data_checksums` false), if anything.
    fn no_offline_check(&self, _inst: &PrivateInstance) -> Option<String> {
        None
    }

    /// Stop the live server (fast shutdown) and wait; Ok when already stopped.
    fn stop(&self) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Start the live server in the mode its data directory says (a standby
    /// stays a standby) and wait until it accepts connections.
    fn start(&self) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Copy the live data directory into `dst` (which must not exist),
    /// fsynced: stopped (cold mode), in the order the data was added; or
    /// running under [`Engine::start_backup`] (online mode). Files are
    /// hashed as they are read; the caller writes the manifest
    /// (`copy::finish_manifest`) once the copy is complete.
    fn copy_to(
        &self,
        dst: &Path,
        req: CopyRequest,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<CopyDone, EngineError>> + Send;

    /// An online backup in progress on the running standby.
    type Backup: Send + 'static;

    /// Begin an online backup on the running standby: from here until
    /// [`Engine::stop_backup`] a copy of the live directory can be made
    /// consistent, and the WAL it needs is kept.
    fn start_backup(&self) -> impl Future<Output = Result<Self::Backup, EngineError>> + Send;

    /// End the backup and add to the copy `dst` what makes it consistent
    /// (its label, the WAL from the backup's start to its stop). Refused
    /// when the standby stopped following its primary meanwhile.
    fn stop_backup(
        &self,
        backup: Self::Backup,
        dst: &Path,
    ) -> impl Future<Output = Result<BackupEnd, EngineError>> + Send;

    /// Start a private instance on the copy in `dir` (no standby mode), wait
    /// until it has replayed the log and accepts connections.
    fn open_private(
        &self,
        dir: &Path,
        timeout: Duration,
    ) -> impl Future<Output = Result<PrivateInstance, EngineError>> + Send;

    /// Integrity checks on the private instance; the tools' full output is
    /// appended to `out`.
    fn check_private(
        &self,
        inst: &PrivateInstance,
        logical_read: bool,
        out: &Path,
    ) -> impl Future<Output = Result<CheckReport, EngineError>> + Send;

    /// Stop the private instance.
    fn close_private(
        &self,
        inst: &PrivateInstance,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Offline checks on the stopped copy (page checksums); output to `out`.
    fn check_offline(
        &self,
        dir: &Path,
        out: &Path,
    ) -> impl Future<Output = Result<CheckReport, EngineError>> + Send;

    /// Checks of the stopped copy's own files with the relation map that
    /// [`Engine::check_private`] took from the catalogs: every index entry
    /// points at a row its table has, every relation is as long as it was
    /// written. Engines without such checks report nothing.
    fn check_files(
        &self,
        _dir: &Path,
        _out: &Path,
    ) -> impl Future<Output = Result<CheckReport, EngineError>> + Send {
        async { Ok(CheckReport::default()) }
    }

    /// The log range of the stopped copy in `dir`: where replay must start
    /// (its last checkpoint's redo position) and where it is consistent
    /// (the minimum recovery point, or the checkpoint itself). A backup's
    /// file name carries this range.
    fn copy_lsns(&self, dir: &Path)
    -> impl Future<Output = Result<(Lsn, Lsn), EngineError>> + Send;

    // Restore (SPEC R2-R10), step by step; engines that cannot restore
    // keep the defaults of the steps, which refuse.

    /// Where a restore prepares the database beside the live one (R2):
    /// `<data_dir>.prepare`.
    fn prepare_path(&self) -> PathBuf {
        let mut s = self.data_dir().as_os_str().to_owned();
        s.push(".prepare");
        PathBuf::from(s)
    }

    /// Where the backup file is unpacked: the prepare location itself
    /// (a physical copy), or a scratch directory that
    /// [`Engine::restore_unpacked`] turns into the prepared database.
    fn unpack_path(&self, prepare: &Path) -> PathBuf {
        prepare.to_owned()
    }

    /// Make the prepared database `prepare` from what was unpacked into
    /// `unpacked` (a logical backup is restored; a physical copy already
    /// is the prepared directory); `replace` overwrites a prepared database
    /// that exists. One line per thing done.
    fn restore_unpacked(
        &self,
        _unpacked: &Path,
        _prepare: &Path,
        _replace: bool,
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send {
        async { Ok(vec![]) }
    }

    /// Whether `prepare` holds a prepared database (the swap stage of a
    /// restore run in two orders).
    fn is_prepared(&self, prepare: &Path) -> bool {
        prepare.join("PG_VERSION").is_file()
    }

    /// Whether a restore rolls forward from an archive of the log (and so
    /// needs `[backup] wal_archive`, and can stop at a target time).
    fn restores_from_log(&self) -> bool {
        true
    }

    /// The bytes a restore writes beside the live database for a backup
    /// that unpacks to `unpacked` bytes (free-space check before anything
    /// is written).
    fn restore_bytes(&self, unpacked: u64) -> u64 {
        unpacked
    }

    /// Whether the live server still serves the database after a stop
    /// that failed: a restore carries on only when it does not.
    fn still_serves(&self) -> impl Future<Output = bool> + Send {
        let runs = postmaster::runs(self.data_dir());
        async move { runs }
    }

    /// Make the prepared data directory `dir` recover from `wal_archive`
    /// to `target_time` (or the end), with the config files of `saved`
    /// (the directory moved aside). One line per thing done.
    fn prepare_recovery(
        &self,
        _dir: &Path,
        _saved: Option<&Path>,
        _wal_archive: Option<&Path>,
        _target_time: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        Err(EngineError::Unsupported("restore"))
    }

    /// Start the live data directory serving no clients (PostgreSQL: a
    /// private socket only; Firebird: multi-user shutdown), wait until it
    /// has rolled forward and promoted (R7).
    fn roll_forward(
        &self,
        _timeout: Duration,
    ) -> impl Future<Output = Result<PrivateInstance, EngineError>> + Send {
        async { Err(EngineError::Unsupported("restore")) }
    }

    /// Run a hook (the upgrade hook, R6; the roll-forward hook, R7) against
    /// the isolated server.
    fn run_hook(
        &self,
        _hook: &Path,
        _inst: &PrivateInstance,
        _timeout: Duration,
    ) -> impl Future<Output = Result<String, EngineError>> + Send {
        async { Err(EngineError::Unsupported("restore")) }
    }

    /// Fix counters the roll-forward left behind (R8); one line per change.
    fn fix_sequences(
        &self,
        _inst: &PrivateInstance,
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send {
        async { Err(EngineError::Unsupported("restore")) }
    }

    /// Stop the isolated server and remove the recovery settings.
    fn close_isolated(&self) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::Unsupported("restore")) }
    }

    /// Remove the recovery settings from `dir` (after a failed restore).
    fn remove_recovery_settings(&self, _dir: &Path) -> Result<(), EngineError> {
        Ok(())
    }

    /// Error lines in the live server's log so far (R10).
    fn log_errors(&self) -> u64 {
        0
    }

    /// Kill a private instance on `dir` at once (SIGKILL), whatever state it
    /// is in. Used when the agent stops in the middle of a test (SPEC T3).
    fn kill_private(&self, dir: &Path);

    // Maintenance on the live server (SPEC T4, C4): the steps of a window.
    // Each is idempotent, so a window re-run after a crash can repeat it.

    /// Re-check, read-only and online, exactly the relations `targets` name
    /// (amcheck of those indexes and tables); output appended to `out`.
    fn check_live(
        &self,
        _targets: &[Finding],
        _out: &Path,
    ) -> impl Future<Output = Result<LiveCheck, EngineError>> + Send {
        async { Err(EngineError::Unsupported("checking the live server")) }
    }

    /// Take the live server out of client service (restart it listening on
    /// its socket only); Ok when it already is.
    fn isolate(&self) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::Unsupported("isolating the server")) }
    }

    /// Put the live server back in client service (undo [`Engine::isolate`],
    /// or start it); Ok when it already serves.
    fn serve(&self) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::Unsupported("serving clients")) }
    }

    /// Rebuild one index (`schema.name`) in `database` on the live server.
    fn reindex(
        &self,
        _database: &str,
        _index: &str,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::Unsupported("reindex")) }
    }

    /// Re-seed the stopped standby from its primary: the data directory is
    /// moved to `aside` (never deleted), a fresh base backup takes its
    /// place, and the standby's own configuration files are kept.
    fn reseed(&self, _aside: &Path) -> impl Future<Output = Result<(), EngineError>> + Send {
        async { Err(EngineError::Unsupported("re-seeding a standby")) }
    }
}
