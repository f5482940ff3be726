//! Restore a server from a backup (SPEC R1-R11; R12 is the controller's).
//!
//! Before anything is written ([`Plan::check`], when the order arrives):
//! R1 the backup is found (the newest of a kind, a file, a remote key, or a
//! file on another member's host, the last two fetched as the first step),
//! R11 the data directory's filesystem must hold the unpacked size plus
//! `[restore] free_space_reserve_mib` (for a file on another member's host,
//! known from the grant: also the rest of the file to fetch), and R2's
//! prepare directory (`<data_dir>.prepare`, beside the data directory) must
//! not exist unless `replace`.
//!
//! Steps, each a journal update and a progress message:
//! `R1 fetch` (remote only) or `R1 fetch_peer` (from another member's agent
//! under the controller's grant, resuming a partial file: `backup::peer`) →
//! `R2 unpack` (verified against the manifest) →
//! `R2 restore` (engines whose backups are logical: the prepared database
//! made from what was unpacked into a scratch directory, `gbak -c` for
//! Firebird) → `R2 fetch_wal` (with a [remote] store: the WAL files from the backup's
//! start that the WAL archive lacks) → `R3 stop` (already stopped is fine) → `R4 move_aside`
//! (`<data_dir>.before-restore-<UTC time>`, never deleted) → `R5 swap` →
//! `R7 fetch_wal` (what was archived since) → `R7 roll_forward` (recovery settings, server on a private socket only,
//! replay the WAL archive to the target time or its end, promote) →
//! `R6 upgrade_hook` (clients still out) → `R7 roll_forward_hook`
//! (`[restore] roll_forward_hook`: application-level replays, written for
//! the upgraded schema) → `R8 sequences` → `R9 start`
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

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tandem_proto::order::{BackupSource, PeerSource, RestoreOrder, RestoreStage};
use tracing::{error, info};

use crate::backup::{self, BackupKind};
use crate::config::AgentConfig;
use crate::engine::Engine;
use crate::journal::{OpRecord, OpState, Undo};
use crate::steps::{Ending, Run, StepFailed};

mod space;

use space::{free_bytes, peer_space_ok, space_ok};

const MIB: u64 = 1024 * 1024;

/// Why a restore may not start (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "this agent has no [backup] section with a wal_archive in its agent.toml; a restore needs both (see deploy/agent.example.toml)"
    )]
    NoBackupConfig,
    #[error(
        "this agent has no [backup] section in its agent.toml; a restore takes its backups from [backup] dir (see deploy/agent.example.toml, or deploy/agent.firebird.example.toml for Firebird)"
    )]
    NoBackupDir,
    #[error(
        "this database cannot be restored to a target time: its backups are logical (gbak) and no log of the changes after them is kept; restore without --target-time, and replay later changes with [restore] roll_forward_hook"
    )]
    NoTargetTime,
    #[error(
        "restore needs `from`: latest, daily, weekly, monthly, a backup file, remote:KEY or MEMBER:/path"
    )]
    NoSource,
    #[error(transparent)]
    BadSource(#[from] tandem_proto::order::BadBackupSource),
    #[error(
        "{from}: a backup on another member's host is fetched under a grant the controller asks that member's agent for; restore through `tandemctl restore`"
    )]
    PeerWithoutGrant { from: String },
    #[error(
        "no verified backup in {dir}{}; `tandemctl backups SET` lists the set's backups on every host",
        .target.as_ref().map(|t| format!(" taken at or before {t}")).unwrap_or_default()
    )]
    NoVerified {
        dir: PathBuf,
        target: Option<String>,
    },
    #[error("no {kind} backup in {dir}; `tandemctl backups SET` lists them")]
    NoBackupOfKind { kind: BackupKind, dir: PathBuf },
    #[error("{path}: no such backup file")]
    NoFile { path: PathBuf },
    #[error(
        "{path} is a relative path; a backup file is named by its absolute path on the member's host (`tandemctl backups SET` lists them)"
    )]
    RelativeFile { path: PathBuf },
    #[error("{0}")]
    Backup(#[from] backup::BackupError),
    #[error("target time {value:?} is not a time like 2026-11-21T12:30:00Z: {why}")]
    BadTarget { value: String, why: String },
    #[error(
        "the prepare directory {path} exists (a previous restore?); remove it, or restore with --replace to overwrite it"
    )]
    PrepareExists { path: PathBuf },
    #[error(
        "safe mode: the filesystem of {dir} has {avail} MiB free; the backup unpacks to {data} MiB, plus the reserve of {reserve} MiB: {need} MiB needed. Nothing was written; free space, or lower restore.free_space_reserve_mib"
    )]
    NoSpace {
        dir: PathBuf,
        avail: u64,
        data: u64,
        reserve: u64,
        need: u64,
    },
    #[error(
        "safe mode: the filesystem of {dir} has {avail} MiB free; the backup file still to fetch is {file} MiB and it unpacks to {data} MiB, plus the reserve of {reserve} MiB: {need} MiB needed. Nothing was written; free space, or lower restore.free_space_reserve_mib"
    )]
    NoSpaceForFetch {
        dir: PathBuf,
        avail: u64,
        file: u64,
        data: u64,
        reserve: u64,
        need: u64,
    },
    #[error(transparent)]
    Peer(#[from] backup::peer::PeerError),
    #[error("cannot read the free space of {dir}: {message}")]
    Statvfs { dir: PathBuf, message: String },
    #[error("remote:KEY needs a [remote] store in agent.toml (see deploy/agent.example.toml)")]
    NoRemote,
    #[error(
        "nothing is prepared at {path}: the swap stage needs the directory the prepare stage unpacked; restore again from the start"
    )]
    NotPrepared { path: PathBuf },
    #[error(
        "the target time {target} is before the backup {file} was taken ({taken}): a roll-forward cannot go back in time; choose an older backup (`tandemctl backups SET` lists them) or a later target time"
    )]
    TargetBeforeBackup {
        target: String,
        taken: Timestamp,
        file: PathBuf,
    },
}

/// What the order asks for, checked before anything is written.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The backup file (for a remote key: where it will be fetched to).
    pub file: PathBuf,
    /// `remote:KEY`: fetch this key first (R1), then check space (R11).
    pub remote_key: Option<String>,
    /// A file on another member's host: fetch it from its agent first (R1).
    pub peer: Option<PeerSource>,
    /// PostgreSQL's `recovery_target_time` (UTC), or `None`: to the end.
    pub target_time: Option<String>,
    pub replace: bool,
    /// The prepared database beside the live one (R2).
    pub prepare: PathBuf,
    /// Where the backup is unpacked: `prepare` itself, or a scratch
    /// directory the engine restores `prepare` from.
    pub unpack: PathBuf,
    /// The archive of the log to roll forward from (engines that have one).
    pub wal_archive: Option<PathBuf>,
    pub unpacked_bytes: u64,
    pub stage: RestoreStage,
}

/// `2026-11-21T12:30:00.5+01:00` → `2026-11-21 11:30:00.5+00` (UTC, as
/// PostgreSQL reads it whatever its TimeZone).
pub fn parse_target(value: &str) -> Result<String, RestoreError> {
    Ok(for_postgres(target_timestamp(value)?))
}

fn target_timestamp(value: &str) -> Result<Timestamp, RestoreError> {
    value
        .parse()
        .map_err(|e: jiff::Error| RestoreError::BadTarget {
            value: value.to_owned(),
            why: e.to_string(),
        })
}

fn for_postgres(t: Timestamp) -> String {
    t.to_zoned(TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M:%S%.f+00")
        .to_string()
}

/// The newest verified backup in `dir` taken at or before `target`.
fn latest_verified(dir: &Path, target: Option<Timestamp>) -> Result<PathBuf, RestoreError> {
    backup::describe_all(dir)?
        .into_iter()
        .filter(|b| b.verified && b.problem.is_none())
        .find(|b| target.is_none_or(|t| b.taken_at <= t))
        .map(|b| b.file)
        .ok_or_else(|| RestoreError::NoVerified {
            dir: dir.to_owned(),
            target: target.map(|t| t.to_string()),
        })
}

/// A target time before the backup was taken cannot be reached (pure).
fn reachable(target: Option<Timestamp>, taken: Timestamp, file: &Path) -> Result<(), RestoreError> {
    match target {
        Some(t) if t < taken => Err(RestoreError::TargetBeforeBackup {
            target: t.to_string(),
            taken,
            file: file.to_owned(),
        }),
        _ => Ok(()),
    }
}

impl Plan {
    /// R1 (local), R2 (prepare exists), R11 (free space), and the target
    /// time against the backup, before anything is written.
    pub fn check<E: Engine>(
        cfg: &AgentConfig,
        engine: &E,
        o: &RestoreOrder,
    ) -> Result<Plan, RestoreError> {
        let data_dir = engine.data_dir();
        let wal_archive = if engine.restores_from_log() {
            let b = cfg.backup.as_ref().ok_or(RestoreError::NoBackupConfig)?;
            Some(b.wal_archive.clone().ok_or(RestoreError::NoBackupConfig)?)
        } else {
            if o.target_time.is_some() {
                return Err(RestoreError::NoTargetTime);
            }
            None
        };
        let b = cfg.backup.as_ref().ok_or(RestoreError::NoBackupDir)?;
        let from = o.from.as_str();
        if from.is_empty() {
            return Err(RestoreError::NoSource);
        }
        let target = o.target_time.as_deref().map(target_timestamp).transpose()?;
        let prepare = engine.prepare_path();
        let unpack = engine.unpack_path(&prepare);
        let source = BackupSource::parse(from)?;
        let mut plan = Plan {
            file: PathBuf::from(from),
            remote_key: None,
            peer: None,
            target_time: target.map(for_postgres),
            replace: o.replace,
            prepare,
            unpack,
            wal_archive,
            unpacked_bytes: 0,
            stage: o.stage,
        };
        if o.stage == RestoreStage::Swap {
            if !engine.is_prepared(&plan.prepare) {
                return Err(RestoreError::NotPrepared { path: plan.prepare });
            }
            return Ok(plan);
        }
        if !o.replace && std::fs::symlink_metadata(&plan.prepare).is_ok() {
            return Err(RestoreError::PrepareExists { path: plan.prepare });
        }
        if let Some(peer) = &o.peer {
            let (dst, partial) = backup::peer::destination(peer, &b.dir)?;
            let name = dst.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let parsed = backup::BackupName::parse(name).ok_or_else(|| RestoreError::NoFile {
                path: PathBuf::from(&peer.file),
            })?;
            reachable(target, parsed.taken_at, Path::new(&peer.file))?;
            let have = if std::fs::metadata(&dst).is_ok_and(|m| m.len() == peer.bytes) {
                peer.bytes
            } else {
                backup::peer::resume_offset(&partial, peer.bytes)
            };
            peer_space_ok(
                &b.dir,
                data_dir.parent().unwrap_or(Path::new("/")),
                peer.bytes - have,
                engine.restore_bytes(peer.unpacked_bytes),
                cfg.restore.free_space_reserve_mib,
            )?;
            plan.file = dst;
            plan.unpacked_bytes = peer.unpacked_bytes;
            plan.peer = Some(peer.clone());
            return Ok(plan);
        }
        if let BackupSource::Member { .. } = source {
            return Err(RestoreError::PeerWithoutGrant {
                from: from.to_owned(),
            });
        }
        if let BackupSource::Remote(key) = source {
            if cfg.remote.is_none() {
                return Err(RestoreError::NoRemote);
            }
            let name = key.rsplit('/').next().unwrap_or_default();
            let Some(parsed) = backup::BackupName::parse(name) else {
                return Err(RestoreError::NoFile {
                    path: PathBuf::from(from),
                });
            };
            reachable(target, parsed.taken_at, Path::new(from))?;
            plan.file = b.dir.join(name);
            plan.remote_key = Some(key.to_owned());
            return Ok(plan);
        }
        plan.file = if from == "latest" {
            latest_verified(&b.dir, target)?
        } else if let Ok(kind) = from.parse::<BackupKind>() {
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
            if !p.is_absolute() {
                return Err(RestoreError::RelativeFile { path: p });
            }
            if !p.is_file() {
                return Err(RestoreError::NoFile { path: p });
            }
            p
        };
        let meta = backup::read_meta(&plan.file)?;
        reachable(target, meta.taken_at, &plan.file)?;
        plan.unpacked_bytes = meta.unpacked_bytes;
        let parent = data_dir.parent().unwrap_or(Path::new("/"));
        space_ok(
            parent,
            free_bytes(parent)?,
            engine.restore_bytes(plan.unpacked_bytes),
            cfg.restore.free_space_reserve_mib,
        )?;
        Ok(plan)
    }
}

/// A restore from a backup, checked by [`Plan::check`].
pub struct Restore {
    pub plan: Plan,
}

/// A failure of blocking work inside a restore step.
#[derive(Debug, thiserror::Error)]
pub enum RestoreStepError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    #[error(transparent)]
    Refused(#[from] RestoreError),
    #[error("the blocking task did not finish")]
    Join(#[from] tokio::task::JoinError),
    #[error("health check {round}: {problem}")]
    Unhealthy { round: u32, problem: String },
    #[error("health check {round}: errors in the server log grew from {before} to {after}")]
    LogErrors { round: u32, before: u64, after: u64 },
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RestoreStepError> + Send + 'static,
) -> Result<T, RestoreStepError> {
    tokio::task::spawn_blocking(f).await?
}

impl Restore {
    async fn steps<E: Engine>(&self, run: &Run<E>) -> Result<(), StepFailed> {
        let data_dir = run.engine.data_dir().to_owned();
        let plan = &self.plan;
        if plan.stage != RestoreStage::Swap {
            self.prepare(run, &data_dir).await?;
        }
        if plan.stage == RestoreStage::Prepare {
            run.note(format!(
                "prepared in {}; the server was not touched",
                plan.prepare.display()
            ));
            return Ok(());
        }
        self.swap(run, &data_dir).await
    }

    /// R1 (remote, or another member's host), R11, R2: the backup unpacked
    /// and verified beside the data directory.
    async fn prepare<E: Engine>(&self, run: &Run<E>, data_dir: &Path) -> Result<(), StepFailed> {
        let plan = &self.plan;
        let file = plan.file.clone();
        let dir = file.parent().unwrap_or(Path::new("/")).to_owned();
        if let Some(key) = &plan.remote_key {
            let (cfg, key, dir) = (run.cfg.clone(), key.clone(), dir.clone());
            run.step("R1 fetch", async move {
                let remote = cfg.remote.as_ref().expect("checked at start");
                backup::remote::Remote::open(remote)?
                    .fetch(&key, &dir)
                    .await
            })
            .await?;
        }
        if let Some(src) = &plan.peer {
            run.set_bytes_total(src.bytes);
            let (tls, s, progress, cancel) = (
                run.cfg.tls.clone(),
                src.clone(),
                run.bytes_progress(),
                run.cancel.clone(),
            );
            let fetched = run
                .step("R1 fetch_peer", async move {
                    backup::peer::fetch(&tls, &s, &dir, &progress, &cancel).await
                })
                .await?;
            run.note(match fetched.resumed_at {
                _ if fetched.already_here => format!(
                    "{} was fetched from member {} before; not fetched again",
                    fetched.file.display(),
                    src.member
                ),
                Some(at) => format!(
                    "resumed the transfer of {} from member {} at byte {at} of {}",
                    src.file, src.member, src.bytes
                ),
                None => format!(
                    "fetched {} from member {}'s host ({} bytes)",
                    src.file, src.member, src.bytes
                ),
            });
        }
        if plan.remote_key.is_some() || plan.peer.is_some() {
            let (cfg, dd, f) = (run.cfg.clone(), data_dir.to_owned(), file.clone());
            let engine = run.engine.clone();
            run.step(
                "R11 free_space",
                blocking(move || {
                    let meta = backup::read_meta(&f)?;
                    let parent = dd.parent().unwrap_or(Path::new("/")).to_owned();
                    let free = free_bytes(&parent)?;
                    space_ok(
                        &parent,
                        free,
                        engine.restore_bytes(meta.unpacked_bytes),
                        cfg.restore.free_space_reserve_mib,
                    )?;
                    Ok(())
                }),
            )
            .await?;
        }
        run.note(format!("backup: {}", file.display()));

        // R2: unpack beside the data directory, verified.
        run.set_bytes_total(plan.unpacked_bytes);
        let unpack = plan.unpack.clone();
        let scratch = plan.unpack != plan.prepare;
        let (replace, progress, cancel, owner) = (
            plan.replace,
            run.bytes_progress(),
            run.cancel.clone(),
            run.cfg.os_user().to_owned(),
        );
        let f = file.clone();
        run.step(
            "R2 unpack",
            blocking(move || {
                // A scratch directory is ours (left by a failed restore);
                // the prepare directory is removed only when asked to.
                if (replace || scratch) && std::fs::symlink_metadata(&unpack).is_ok() {
                    std::fs::remove_dir_all(&unpack).map_err(|source| RestoreStepError::Io {
                        op: "remove the old prepare directory",
                        path: unpack.clone(),
                        source,
                    })?;
                }
                let owner = nix::unistd::User::from_name(&owner)
                    .ok()
                    .flatten()
                    .filter(|_| nix::unistd::geteuid().is_root())
                    .map(|u| (u.uid.as_raw(), u.gid.as_raw()));
                backup::unpack(&f, &unpack, owner, &progress, &cancel)?;
                Ok(())
            }),
        )
        .await?;
        if scratch {
            let notes = run
                .step(
                    "R2 restore",
                    run.engine
                        .restore_unpacked(&plan.unpack, &plan.prepare, plan.replace),
                )
                .await?;
            for n in notes {
                run.note(n);
            }
        }
        self.fetch_wal(run, "R2 fetch_wal").await
    }

    /// With a [remote] store: fetch into the WAL archive the WAL files a
    /// roll-forward from the backup's start needs and the archive lacks.
    /// Run while the set serves (after R2) and again just before R7 for
    /// what was archived since; each run fetches only what is missing.
    async fn fetch_wal<E: Engine>(
        &self,
        run: &Run<E>,
        step: &'static str,
    ) -> Result<(), StepFailed> {
        let (Some(remote), Some(dir)) = (run.cfg.remote.clone(), self.plan.wal_archive.clone())
        else {
            return Ok(());
        };
        let name = self.plan.file.file_name().and_then(|n| n.to_str());
        let Some(start) = name
            .and_then(backup::BackupName::parse)
            .map(|n| n.start_lsn)
        else {
            return Ok(());
        };
        let set = run.cfg.set.clone();
        let fetched = run
            .step(step, async move {
                backup::remote::Remote::open(&remote)?
                    .fetch_wal_since(&set, start, &dir)
                    .await
            })
            .await?;
        if let (Some(first), Some(last)) = (fetched.first(), fetched.last()) {
            run.note(format!(
                "{} WAL files fetched from the remote store into {} ({first} .. {last})",
                fetched.len(),
                self.plan
                    .wal_archive
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
            ));
        }
        Ok(())
    }

    /// R3 to R10 on the prepared directory.
    async fn swap<E: Engine>(&self, run: &Run<E>, data_dir: &Path) -> Result<(), StepFailed> {
        let plan = &self.plan;
        let data_dir = data_dir.to_owned();
        // R3: stop; a server that is already down (or a directory too damaged
        // for pg_ctl) is fine once no postmaster runs on it. Recorded first:
        // a failure before the swap starts it again.
        run.did(Undo::StartServer {
            since: Timestamp::now(),
        });
        let stopped = run.step("R3 stop", run.engine.stop()).await;
        if let Err(e) = stopped {
            if run.engine.still_serves().await {
                return Err(e);
            }
            run.note(format!(
                "the server was not running normally ({}); carrying on",
                e.cause
            ));
        }

        // R4: move the current data directory aside, never delete it.
        let saved = crate::engine::dated_beside(&data_dir, "before-restore");
        let bad = data_dir
            .parent()
            .map(|p| p.join("bad"))
            .filter(|b| b.exists());
        if let Some(bad) = bad {
            run.note(format!(
                "a crash left data in {}; it stays there",
                bad.display()
            ));
        }
        run.did(Undo::PutBack {
            saved: saved.clone(),
        });
        let (dd, sv) = (data_dir.clone(), saved.clone());
        let moved = run
            .step(
                "R4 move_aside",
                blocking(move || match std::fs::rename(&dd, &sv) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(source) => Err(RestoreStepError::Io {
                        op: "move the data directory aside to",
                        path: sv,
                        source,
                    }),
                }),
            )
            .await;
        // A failed move may still have moved (a failure reported after the
        // rename): the undo looks at the disk, not at the step's result.
        let moved = moved?;
        if moved {
            // The engine's data: a data directory or a database file.
            run.note(format!(
                "the current {} was moved to {}",
                data_dir.display(),
                saved.display()
            ));
        } else {
            run.undone(&Undo::PutBack {
                saved: saved.clone(),
            });
            run.note(format!(
                "there was no data directory at {}; carrying on",
                data_dir.display()
            ));
        }

        // R5: the prepared directory into place, with the server's own config.
        let (pp, dd) = (plan.prepare.clone(), data_dir.clone());
        run.did(Undo::MoveRestoredAside);
        run.step(
            "R5 swap",
            blocking(move || {
                std::fs::rename(&pp, &dd).map_err(|source| RestoreStepError::Io {
                    op: "move the prepared directory into place at",
                    path: dd,
                    source,
                })
            }),
        )
        .await?;

        // R7: roll forward with the server on a private socket only, from
        // the WAL archive completed from the remote store.
        self.fetch_wal(run, "R7 fetch_wal").await?;
        let notes = run
            .step("R7 roll_forward", async {
                run.engine.prepare_recovery(
                    &data_dir,
                    moved.then_some(saved.as_path()),
                    plan.wal_archive.as_deref(),
                    plan.target_time.as_deref(),
                )
            })
            .await?;
        for n in notes {
            run.note(n);
        }
        run.did(Undo::CloseIsolated);
        let inst = run
            .step(
                "R7 roll_forward",
                run.engine
                    .roll_forward(run.cfg.restore.roll_forward_timeout),
            )
            .await?;
        if let Some(lsn) = inst.lsn {
            run.note(format!("rolled forward and promoted at LSN {lsn}"));
        }

        // R6: the upgrade hook, clients still out.
        if let Some(hook) = &run.cfg.restore.upgrade_hook {
            let out = run
                .step(
                    "R6 upgrade_hook",
                    run.engine
                        .run_hook(hook, &inst, run.cfg.restore.hook_timeout),
                )
                .await?;
            run.note(format!(
                "upgrade hook {} ran{}",
                hook.display(),
                if out.is_empty() {
                    String::new()
                } else {
                    format!(": {out}")
                }
            ));
        }

        // R7: application-level replays (the seed's payments), after the
        // upgrade: they are written for the upgraded schema.
        if let Some(hook) = &run.cfg.restore.roll_forward_hook {
            let out = run
                .step(
                    "R7 roll_forward_hook",
                    run.engine
                        .run_hook(hook, &inst, run.cfg.restore.hook_timeout),
                )
                .await?;
            run.note(format!(
                "roll-forward hook {} ran{}",
                hook.display(),
                if out.is_empty() {
                    String::new()
                } else {
                    format!(": {out}")
                }
            ));
        }

        // R8: sequences behind their column.
        let changes = run
            .step("R8 sequences", run.engine.fix_sequences(&inst))
            .await?;
        if changes.is_empty() {
            run.note("no sequence was behind its column".into());
        }
        for c in changes {
            run.note(c);
        }
        run.step("R8 sequences", run.engine.close_isolated())
            .await?;
        run.undone(&Undo::CloseIsolated);

        // R9: start for clients. From here on there is no way back.
        run.no_way_back();
        run.step("R9 start", run.engine.start()).await?;

        // R10: healthy twice in a row, errors in the log not growing.
        run.step("R10 health", health(run)).await?;
        run.note("healthy twice in a row".into());
        Ok(())
    }
}

async fn health<E: Engine>(run: &Run<E>) -> Result<(), RestoreStepError> {
    let mut errors_before = None;
    for round in 1..=2 {
        let f = run.engine.facts().await;
        if let Some(problem) = f.problem {
            return Err(RestoreStepError::Unhealthy { round, problem });
        }
        let errors = run.engine.log_errors();
        if let Some(before) = errors_before
            && errors > before
        {
            return Err(RestoreStepError::LogErrors {
                round,
                before,
                after: errors,
            });
        }
        errors_before = Some(errors);
        if round == 1 {
            tokio::time::sleep(run.cfg.restore.health_interval).await;
        }
    }
    Ok(())
}

impl<E: Engine> crate::steps::Action<E> for Restore {
    /// Run a restore to its end, whatever happens; the final journal record.
    async fn run(self, run: Run<E>) -> OpRecord {
        let (ending, put_back) = run.steps(self.steps(&run)).await;
        let (state, reason) = match ending {
            Ending::Done => (OpState::Succeeded, None),
            ending => {
                let step = run.rec().step.clone();
                let back = if run.passed_no_way_back() {
                    "the restored server was started; no way back after R9".to_owned()
                } else if put_back.is_empty() {
                    "nothing was changed in the data directory".to_owned()
                } else {
                    put_back.join("; ")
                };
                run.rec().notes.extend(put_back);
                let (state, message) = match ending {
                    Ending::Failed(e) => (OpState::Failed, e.cause.to_string()),
                    Ending::Interrupted => {
                        (OpState::Interrupted, "the agent was stopped".to_owned())
                    }
                    _ => (OpState::Cancelled, "the restore was cancelled".to_owned()),
                };
                (
                    state,
                    Some(format!("restore failed at {step}: {message}; {back}")),
                )
            }
        };
        let rec = run.finish(state, reason);
        match &rec.reason {
            None => info!(notes = ?rec.notes, "restore finished"),
            Some(r) => error!(reason = %r, "restore failed"),
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_time_before_the_backup_is_refused() {
        let taken: Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        let file = Path::new("/b/daily.tar.zst");
        let before = Some("2020-01-01T00:00:00Z".parse().unwrap());
        let e = reachable(before, taken, file).unwrap_err().to_string();
        assert!(e.contains("before the backup"), "{e}");
        assert!(e.contains("choose an older backup"), "{e}");
        assert!(reachable(Some(taken), taken, file).is_ok());
        assert!(reachable(None, taken, file).is_ok());
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
}
