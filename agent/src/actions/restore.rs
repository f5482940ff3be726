//! Restore a server from a backup (SPEC R1-R11; R12 is the controller's).
//!
//! Before anything is written ([`Plan::check`], when the order arrives):
//! R1 the backup is found (the newest of a kind, a file, or a remote key,
//! fetched as the first step), R11 the data directory's filesystem must hold
//! the unpacked size plus `[restore] free_space_reserve_mib`, and R2's
//! prepare directory (`<data_dir>.prepare`, beside the data directory) must
//! not exist unless `replace`.
//!
//! Steps, each a journal update and a progress message:
//! `R1 fetch` (remote only) → `R2 unpack` (verified against the manifest) →
//! `R2 fetch_wal` (with a [remote] store: the WAL files from the backup's
//! start that the WAL archive lacks) → `R3 stop` (already stopped is fine) → `R4 move_aside`
//! (`<data_dir>.before-restore-<UTC time>`, never deleted) → `R5 swap` →
//! `R7 fetch_wal` (what was archived since) → `R7 roll_forward` (recovery settings, server on a private socket only,
//! replay the WAL archive to the target time or its end, promote) →
//! `R6 upgrade_hook` (clients still out) → `R8 sequences` → `R9 start`
//! (for clients) → `R10 health` (twice in a row).
//!
//! The controller runs a restore in two orders inside a window that halts
//! the set (R12): `stage=prepare` (R1, R11, R2, the server untouched) while
//! the set still serves, then, with the standbys fenced, `stage=swap` (R3
//! to R10 on the prepared directory). Without `stage` one order does both.
//!
//! Any failure (or cancel) before R9 puts the saved data directory back and
//! starts it: the restored directory goes to
//! `<data_dir>.failed-restore-<UTC time>`, the saved one back into place,
//! and the record's reason names the step that failed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::backup::{self, BackupKind};
use crate::config::AgentConfig;
use crate::engine::Engine;
use crate::ops::Progress;
use crate::ops::journal::{Journal, OpRecord, OpState, StepTime};

const MIB: u64 = 1024 * 1024;

/// Why a restore may not start (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "this agent has no [backup] section with a wal_archive in its agent.toml; a restore needs both (see deploy/agent.example.toml)"
    )]
    NoBackupConfig,
    #[error("restore needs `from`: daily, weekly, monthly, a backup file, or remote:KEY")]
    NoSource,
    #[error("no {kind} backup in {dir}; `tandemctl backups SET` lists them")]
    NoBackupOfKind { kind: BackupKind, dir: PathBuf },
    #[error("{path}: no such backup file")]
    NoFile { path: PathBuf },
    #[error("{0}")]
    Backup(#[from] backup::BackupError),
    #[error("target time {value:?} is not a time like 2026-11-21T12:30:00Z: {why}")]
    BadTarget { value: String, why: String },
    #[error(
        "the prepare directory {path} exists (a previous restore?); remove it, or restore with --replace to overwrite it (SPEC R2)"
    )]
    PrepareExists { path: PathBuf },
    #[error(
        "safe mode: the filesystem of {dir} has {avail} MiB free; the backup unpacks to {data} MiB, plus the reserve of {reserve} MiB: {need} MiB needed. Nothing was written (SPEC R11); free space, or lower restore.free_space_reserve_mib"
    )]
    NoSpace {
        dir: PathBuf,
        avail: u64,
        data: u64,
        reserve: u64,
        need: u64,
    },
    #[error("cannot read the free space of {dir}: {message}")]
    Statvfs { dir: PathBuf, message: String },
    #[error("remote:KEY needs a [remote] store in agent.toml (see deploy/agent.example.toml)")]
    NoRemote,
    #[error(
        "nothing is prepared at {path}: the swap stage needs the directory the prepare stage unpacked; restore again from the start"
    )]
    NotPrepared { path: PathBuf },
    #[error("unknown restore stage {0:?}: prepare, swap, or none for both")]
    BadStage(String),
}

/// Which part of the restore one order runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// R1, R11, R2: the backup unpacked and verified; the server untouched.
    Prepare,
    /// R3 to R10 on the directory a prepare stage left.
    Swap,
    /// Both, in one order.
    All,
}

impl Stage {
    fn parse(v: Option<&String>) -> Result<Stage, RestoreError> {
        match v.map(String::as_str) {
            None | Some("") => Ok(Stage::All),
            Some("prepare") => Ok(Stage::Prepare),
            Some("swap") => Ok(Stage::Swap),
            Some(o) => Err(RestoreError::BadStage(o.to_owned())),
        }
    }
}

/// What the order asks for, checked before anything is written.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The backup file (for a remote key: where it will be fetched to).
    pub file: PathBuf,
    /// `remote:KEY`: fetch this key first (R1), then check space (R11).
    pub remote_key: Option<String>,
    /// PostgreSQL's `recovery_target_time` (UTC), or `None`: to the end.
    pub target_time: Option<String>,
    pub replace: bool,
    pub prepare: PathBuf,
    pub wal_archive: PathBuf,
    pub unpacked_bytes: u64,
    pub stage: Stage,
}

/// `<data_dir>.prepare`, beside the data directory (R2).
pub fn prepare_dir(data_dir: &Path) -> PathBuf {
    with_suffix(data_dir, ".prepare")
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `2026-11-21T12:30:00.5+01:00` → `2026-11-21 11:30:00.5+00` (UTC, as
/// PostgreSQL reads it whatever its TimeZone).
pub fn parse_target(value: &str) -> Result<String, RestoreError> {
    let t: Timestamp = value
        .parse()
        .map_err(|e: jiff::Error| RestoreError::BadTarget {
            value: value.to_owned(),
            why: e.to_string(),
        })?;
    Ok(t.to_zoned(TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M:%S%.f+00")
        .to_string())
}

fn free_bytes(dir: &Path) -> Result<u64, RestoreError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| RestoreError::Statvfs {
        dir: dir.to_owned(),
        message: e.to_string(),
    })?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// R11 on what was observed (pure).
fn space_ok(dir: &Path, free: u64, unpacked: u64, reserve_mib: u64) -> Result<(), RestoreError> {
    let need = unpacked.saturating_add(reserve_mib.saturating_mul(MIB));
    if free < need {
        return Err(RestoreError::NoSpace {
            dir: dir.to_owned(),
            avail: free / MIB,
            data: unpacked.div_ceil(MIB),
            reserve: reserve_mib,
            need: need.div_ceil(MIB),
        });
    }
    Ok(())
}

impl Plan {
    /// R1 (local), R2 (prepare exists), R11 (free space), before anything is written.
    pub fn check(
        cfg: &AgentConfig,
        data_dir: &Path,
        params: &std::collections::HashMap<String, String>,
    ) -> Result<Plan, RestoreError> {
        let b = cfg.backup.as_ref().ok_or(RestoreError::NoBackupConfig)?;
        let wal_archive = b.wal_archive.clone().ok_or(RestoreError::NoBackupConfig)?;
        let from = params
            .get("from")
            .filter(|s| !s.is_empty())
            .ok_or(RestoreError::NoSource)?;
        let target_time = match params.get("target_time").filter(|s| !s.is_empty()) {
            Some(t) => Some(parse_target(t)?),
            None => None,
        };
        let replace = params.get("replace").is_some_and(|v| v == "true");
        let prepare = prepare_dir(data_dir);
        let stage = Stage::parse(params.get("stage"))?;
        if stage == Stage::Swap {
            if !prepare.join("PG_VERSION").is_file() {
                return Err(RestoreError::NotPrepared { path: prepare });
            }
            return Ok(Plan {
                file: PathBuf::from(from),
                remote_key: None,
                target_time,
                replace,
                prepare,
                wal_archive,
                unpacked_bytes: 0,
                stage,
            });
        }
        if !replace && std::fs::symlink_metadata(&prepare).is_ok() {
            return Err(RestoreError::PrepareExists { path: prepare });
        }
        if let Some(key) = from.strip_prefix("remote:") {
            if cfg.remote.is_none() {
                return Err(RestoreError::NoRemote);
            }
            let name = key.rsplit('/').next().unwrap_or_default();
            if backup::BackupName::parse(name).is_none() {
                return Err(RestoreError::NoFile {
                    path: PathBuf::from(from),
                });
            }
            return Ok(Plan {
                file: b.dir.join(name),
                remote_key: Some(key.to_owned()),
                target_time,
                replace,
                prepare,
                wal_archive,
                unpacked_bytes: 0,
                stage,
            });
        }
        let file = if let Ok(kind) = from.parse::<BackupKind>() {
            let newest = backup::list(&b.dir)?
                .into_iter()
                .find(|(n, _)| n.kind == kind)
                .ok_or(RestoreError::NoBackupOfKind {
                    kind,
                    dir: b.dir.clone(),
                })?;
            newest.1
        } else {
            let p = PathBuf::from(from);
            if !p.is_file() {
                return Err(RestoreError::NoFile { path: p });
            }
            p
        };
        let unpacked_bytes = backup::read_meta(&file)?.unpacked_bytes;
        let parent = data_dir.parent().unwrap_or(Path::new("/"));
        space_ok(
            parent,
            free_bytes(parent)?,
            unpacked_bytes,
            cfg.restore.free_space_reserve_mib,
        )?;
        Ok(Plan {
            file,
            remote_key: None,
            target_time,
            replace,
            prepare,
            wal_archive,
            unpacked_bytes,
            stage,
        })
    }
}

/// Everything one restore needs.
pub struct Job<E> {
    pub cfg: Arc<AgentConfig>,
    pub engine: Arc<E>,
    pub journal: Arc<Journal>,
    pub progress: watch::Sender<Progress>,
    pub cancel: CancellationToken,
    pub plan: Plan,
}

/// What the steps changed, for the way back.
#[derive(Default)]
struct Undo {
    /// Where the live data directory was moved (R4).
    saved: Option<PathBuf>,
    /// The prepared directory is in place (R5).
    swapped: bool,
    /// The server runs on the restored directory, isolated (R7).
    isolated: bool,
    /// R9 was reached: no way back.
    started: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("step `{step}` failed: {message}")]
struct StepFailed {
    step: &'static str,
    message: String,
}

impl<E: Engine> Job<E> {
    fn publish(&self, rec: &Mutex<OpRecord>, message: &str) {
        let r = rec.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(e) = self.journal.write(&r) {
            error!(error = %e, "cannot write the journal");
        }
        self.progress.send_modify(|p| {
            p.record = r;
            p.message = message.to_owned();
        });
    }

    fn note(&self, rec: &Mutex<OpRecord>, line: String) {
        info!(note = %line, "restore");
        rec.lock()
            .unwrap_or_else(|p| p.into_inner())
            .notes
            .push(line.clone());
        self.publish(rec, &line);
    }

    async fn step<T, Er: std::fmt::Display>(
        &self,
        rec: &Mutex<OpRecord>,
        name: &'static str,
        fut: impl std::future::Future<Output = Result<T, Er>>,
    ) -> Result<T, StepFailed> {
        rec.lock().unwrap_or_else(|p| p.into_inner()).step = name.to_owned();
        self.publish(rec, &format!("step {name}"));
        let t0 = Instant::now();
        let span = info_span!("restore.step", step = name, set = %self.cfg.set, member = %self.cfg.member());
        let r = fut.instrument(span).await;
        let seconds = t0.elapsed().as_secs_f64();
        rec.lock()
            .unwrap_or_else(|p| p.into_inner())
            .steps
            .push(StepTime {
                step: name.to_owned(),
                seconds,
            });
        r.map_err(|e| StepFailed {
            step: name,
            message: e.to_string(),
        })
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())?
    }

    async fn steps(&self, rec: &Mutex<OpRecord>, undo: &Mutex<Undo>) -> Result<(), StepFailed> {
        let data_dir = self.engine.data_dir().to_owned();
        let plan = &self.plan;
        if plan.stage != Stage::Swap {
            self.prepare(rec, &data_dir).await?;
        }
        if plan.stage == Stage::Prepare {
            self.note(
                rec,
                format!(
                    "prepared in {}; the server was not touched",
                    plan.prepare.display()
                ),
            );
            return Ok(());
        }
        self.swap(rec, undo, &data_dir).await
    }

    /// R1 (remote), R11, R2: the backup unpacked and verified beside the
    /// data directory.
    async fn prepare(&self, rec: &Mutex<OpRecord>, data_dir: &Path) -> Result<(), StepFailed> {
        let plan = &self.plan;
        let file = plan.file.clone();
        if let Some(key) = &plan.remote_key {
            let (cfg, key, dir) = (
                self.cfg.clone(),
                key.clone(),
                file.parent().unwrap_or(Path::new("/")).to_owned(),
            );
            self.step(rec, "R1 fetch", async move {
                let remote = cfg.remote.as_ref().expect("checked at start");
                backup::remote::Remote::open(remote)?
                    .fetch(&key, &dir)
                    .await
            })
            .await?;
            let (cfg, dd, f) = (self.cfg.clone(), data_dir.to_owned(), file.clone());
            self.step(
                rec,
                "R11 free_space",
                Self::blocking(move || {
                    let meta = backup::read_meta(&f).map_err(|e| e.to_string())?;
                    let parent = dd.parent().unwrap_or(Path::new("/")).to_owned();
                    let free = free_bytes(&parent).map_err(|e| e.to_string())?;
                    space_ok(
                        &parent,
                        free,
                        meta.unpacked_bytes,
                        cfg.restore.free_space_reserve_mib,
                    )
                    .map_err(|e| e.to_string())
                }),
            )
            .await?;
        }
        self.note(rec, format!("backup: {}", file.display()));

        // R2: unpack beside the data directory, verified.
        let prepare = plan.prepare.clone();
        let (replace, tx, cancel, owner) = (
            plan.replace,
            self.progress.clone(),
            self.cancel.clone(),
            self.cfg.postgres.os_user.clone(),
        );
        let f = file.clone();
        self.step(
            rec,
            "R2 unpack",
            Self::blocking(move || {
                if replace && std::fs::symlink_metadata(&prepare).is_ok() {
                    std::fs::remove_dir_all(&prepare).map_err(|e| {
                        format!(
                            "cannot remove the old prepare directory {}: {e}",
                            prepare.display()
                        )
                    })?;
                }
                let owner = nix::unistd::User::from_name(&owner)
                    .ok()
                    .flatten()
                    .filter(|_| nix::unistd::geteuid().is_root())
                    .map(|u| (u.uid.as_raw(), u.gid.as_raw()));
                let progress = move |n: u64| tx.send_modify(|p| p.bytes_done = n);
                backup::unpack(&f, &prepare, owner, &progress, &cancel)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        )
        .await?;
        self.fetch_wal(rec, "R2 fetch_wal").await
    }

    /// With a [remote] store: fetch into the WAL archive the WAL files a
    /// roll-forward from the backup's start needs and the archive lacks.
    /// Run while the set serves (after R2) and again just before R7 for
    /// what was archived since; each run fetches only what is missing.
    async fn fetch_wal(&self, rec: &Mutex<OpRecord>, step: &'static str) -> Result<(), StepFailed> {
        let Some(remote) = self.cfg.remote.clone() else {
            return Ok(());
        };
        let name = self.plan.file.file_name().and_then(|n| n.to_str());
        let Some(start) = name
            .and_then(backup::BackupName::parse)
            .map(|n| n.start_lsn)
        else {
            return Ok(());
        };
        let (set, dir) = (self.cfg.set.clone(), self.plan.wal_archive.clone());
        let fetched = self
            .step(rec, step, async move {
                backup::remote::Remote::open(&remote)?
                    .fetch_wal_since(&set, start, &dir)
                    .await
            })
            .await?;
        if let (Some(first), Some(last)) = (fetched.first(), fetched.last()) {
            self.note(
                rec,
                format!(
                    "{} WAL files fetched from the remote store into {} ({first} .. {last})",
                    fetched.len(),
                    self.plan.wal_archive.display()
                ),
            );
        }
        Ok(())
    }

    /// R3 to R10 on the prepared directory.
    async fn swap(
        &self,
        rec: &Mutex<OpRecord>,
        undo: &Mutex<Undo>,
        data_dir: &Path,
    ) -> Result<(), StepFailed> {
        let plan = &self.plan;
        let data_dir = data_dir.to_owned();
        // R3: stop; a server that is already down (or a directory too damaged
        // for pg_ctl) is fine once no postmaster runs on it.
        let stopped = self.step(rec, "R3 stop", self.engine.stop()).await;
        if let Err(e) = stopped {
            if postmaster_alive(&data_dir) {
                return Err(e);
            }
            self.note(
                rec,
                format!(
                    "the server was not running normally ({}); carrying on",
                    e.message
                ),
            );
        }

        // R4: move the current data directory aside, never delete it.
        let saved = crate::engine::dated_beside(&data_dir, "before-restore");
        let bad = data_dir
            .parent()
            .map(|p| p.join("bad"))
            .filter(|b| b.exists());
        if let Some(bad) = bad {
            self.note(
                rec,
                format!("a crash left data in {}; it stays there", bad.display()),
            );
        }
        let (dd, sv) = (data_dir.clone(), saved.clone());
        let moved = self
            .step(
                rec,
                "R4 move_aside",
                Self::blocking(move || match std::fs::rename(&dd, &sv) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(format!(
                        "cannot move {} to {}: {e}",
                        dd.display(),
                        sv.display()
                    )),
                }),
            )
            .await?;
        if moved {
            undo.lock().unwrap_or_else(|p| p.into_inner()).saved = Some(saved.clone());
            self.note(
                rec,
                format!(
                    "the current data directory was moved to {}",
                    saved.display()
                ),
            );
        } else {
            self.note(
                rec,
                format!(
                    "there was no data directory at {}; carrying on",
                    data_dir.display()
                ),
            );
        }

        // R5: the prepared directory into place, with the server's own config.
        let (pp, dd) = (plan.prepare.clone(), data_dir.clone());
        self.step(
            rec,
            "R5 swap",
            Self::blocking(move || {
                std::fs::rename(&pp, &dd)
                    .map_err(|e| format!("cannot move {} to {}: {e}", pp.display(), dd.display()))
            }),
        )
        .await?;
        undo.lock().unwrap_or_else(|p| p.into_inner()).swapped = true;

        // R7: roll forward with the server on a private socket only, from
        // the WAL archive completed from the remote store.
        self.fetch_wal(rec, "R7 fetch_wal").await?;
        let notes = self
            .step(rec, "R7 roll_forward", async {
                self.engine.prepare_recovery(
                    &data_dir,
                    moved.then_some(saved.as_path()),
                    &plan.wal_archive,
                    plan.target_time.as_deref(),
                )
            })
            .await?;
        for n in notes {
            self.note(rec, n);
        }
        undo.lock().unwrap_or_else(|p| p.into_inner()).isolated = true;
        let inst = self
            .step(
                rec,
                "R7 roll_forward",
                self.engine
                    .roll_forward(self.cfg.restore.roll_forward_timeout),
            )
            .await?;
        self.note(
            rec,
            format!(
                "rolled forward and promoted at LSN {}",
                inst.lsn
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
        );

        // R6: the upgrade hook, clients still out.
        if let Some(hook) = &self.cfg.restore.upgrade_hook {
            let out = self
                .step(
                    rec,
                    "R6 upgrade_hook",
                    self.engine
                        .run_hook(hook, &inst, self.cfg.restore.hook_timeout),
                )
                .await?;
            self.note(
                rec,
                format!(
                    "upgrade hook {} ran{}",
                    hook.display(),
                    if out.is_empty() {
                        String::new()
                    } else {
                        format!(": {out}")
                    }
                ),
            );
        }

        // R8: sequences behind their column.
        let changes = self
            .step(rec, "R8 sequences", self.engine.fix_sequences(&inst))
            .await?;
        if changes.is_empty() {
            self.note(rec, "no sequence was behind its column".into());
        }
        for c in changes {
            self.note(rec, c);
        }
        self.step(rec, "R8 sequences", self.engine.close_isolated())
            .await?;

        // R9: start for clients. From here on there is no way back.
        undo.lock().unwrap_or_else(|p| p.into_inner()).started = true;
        self.step(rec, "R9 start", self.engine.start()).await?;

        // R10: healthy twice in a row, errors in the log not growing.
        self.step(rec, "R10 health", self.health()).await?;
        self.note(rec, "healthy twice in a row".into());
        Ok(())
    }

    async fn health(&self) -> Result<(), String> {
        let mut errors_before = None;
        for round in 1..=2 {
            let f = self.engine.facts().await;
            if let Some(p) = f.problem {
                return Err(format!("health check {round}: {p}"));
            }
            let errors = self.engine.log_errors();
            if let Some(before) = errors_before
                && errors > before
            {
                return Err(format!(
                    "health check {round}: errors in the server log grew from {before} to {errors}"
                ));
            }
            errors_before = Some(errors);
            if round == 1 {
                tokio::time::sleep(self.cfg.restore.health_interval).await;
            }
        }
        Ok(())
    }

    /// Put the saved data directory back and start it (failure before R9).
    async fn undo(&self, undo: &Undo, rec: &Mutex<OpRecord>) -> Vec<String> {
        let mut said = Vec::new();
        let data_dir = self.engine.data_dir().to_owned();
        if undo.isolated
            && let Err(e) = self.engine.close_isolated().await
        {
            warn!(error = %e, "cannot stop the isolated server; killing it");
            crate::engine::private::kill_postmaster(&data_dir);
        }
        if undo.swapped {
            let failed = crate::engine::dated_beside(&data_dir, "failed-restore");
            match std::fs::rename(&data_dir, &failed) {
                Ok(()) => said.push(format!(
                    "the restored data directory was moved to {}",
                    failed.display()
                )),
                Err(e) => said.push(format!(
                    "cannot move the restored data directory aside: {e}"
                )),
            }
        }
        if let Some(saved) = &undo.saved {
            match std::fs::rename(saved, &data_dir) {
                Ok(()) => said.push(format!(
                    "the saved data directory {} was put back",
                    saved.display()
                )),
                Err(e) => said.push(format!(
                    "cannot put the saved data directory {} back: {e}; move it to {} by hand",
                    saved.display(),
                    data_dir.display()
                )),
            }
            let _ = self.engine.remove_recovery_settings(&data_dir);
            match self.engine.start().await {
                Ok(()) => said.push("and started".into()),
                Err(e) => said.push(format!("but it does not start: {e}")),
            }
        }
        for s in &said {
            rec.lock()
                .unwrap_or_else(|p| p.into_inner())
                .notes
                .push(s.clone());
        }
        said
    }
}

fn postmaster_alive(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("postmaster.pid")) else {
        return false;
    };
    text.lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .is_some_and(|pid| {
            pid > 1 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        })
}

/// Run a restore to its end, whatever happens; the final journal record.
pub async fn run<E: Engine>(job: Job<E>, rec: OpRecord) -> OpRecord {
    let rec = Mutex::new(rec);
    let undo = Mutex::new(Undo::default());
    // Cancel-safe: dropping the steps kills the running tool; the way back
    // below puts the saved data directory in place.
    let result = tokio::select! {
        biased;
        _ = job.cancel.cancelled() => Err(StepFailed { step: "cancelled", message: "the restore was cancelled".into() }),
        r = job.steps(&rec, &undo) => r,
    };
    let (state, reason) = match result {
        Ok(()) => (OpState::Succeeded, None),
        Err(e) => {
            let u = std::mem::take(&mut *undo.lock().unwrap_or_else(|p| p.into_inner()));
            let step = rec.lock().unwrap_or_else(|p| p.into_inner()).step.clone();
            let back = if u.started {
                "the restored server was started; no way back after R9".to_owned()
            } else if u.saved.is_some() || u.swapped {
                job.undo(&u, &rec).await.join("; ")
            } else {
                "nothing was changed in the data directory".to_owned()
            };
            let cancelled = e.step == "cancelled";
            (
                if cancelled {
                    OpState::Cancelled
                } else {
                    OpState::Failed
                },
                Some(format!("restore failed at {step}: {}; {back}", e.message)),
            )
        }
    };
    let final_rec = {
        let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
        r.state = state;
        r.reason = reason;
        r.finished_at = Some(Timestamp::now());
        r.clone()
    };
    match &final_rec.reason {
        None => info!(notes = ?final_rec.notes, "restore finished"),
        Some(r) => error!(reason = %r, "restore failed"),
    }
    if let Err(e) = job.journal.write(&final_rec) {
        error!(error = %e, "cannot write the journal");
    }
    job.progress.send_modify(|p| {
        p.record = final_rec.clone();
        p.message = "finished".into();
    });
    final_rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_prepare_swap_or_both() {
        assert_eq!(Stage::parse(None).unwrap(), Stage::All);
        assert_eq!(
            Stage::parse(Some(&"prepare".into())).unwrap(),
            Stage::Prepare
        );
        assert_eq!(Stage::parse(Some(&"swap".into())).unwrap(), Stage::Swap);
        assert!(Stage::parse(Some(&"both".into())).is_err());
    }

    #[test]
    fn target_times_are_read_as_utc_for_postgresql() {
        assert_eq!(
            parse_target("2026-11-21T12:30:00.25+01:00").unwrap(),
            "2026-11-21 11:30:00.25+00"
        );
        assert_eq!(
            parse_target("2026-11-21T12:30:00Z").unwrap(),
            "2026-11-21 12:30:00+00"
        );
        let e = parse_target("yesterday").unwrap_err();
        assert!(e.to_string().contains("is not a time like"), "{e}");
    }

    #[test]
    fn too_little_space_is_refused_with_the_numbers() {
        let e = space_ok(Path::new("/d"), 100 * MIB, 90 * MIB, 20).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("100 MiB free"), "{msg}");
        assert!(msg.contains("110 MiB needed"), "{msg}");
        assert!(msg.contains("Nothing was written"), "{msg}");
        assert!(space_ok(Path::new("/d"), 200 * MIB, 90 * MIB, 20).is_ok());
    }

    #[test]
    fn the_prepare_directory_is_beside_the_data_directory() {
        assert_eq!(
            prepare_dir(Path::new("/var/lib/pg/15/main")),
            Path::new("/var/lib/pg/15/main.prepare")
        );
    }
}
