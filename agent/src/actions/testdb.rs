//! testdb on a standby (SPEC T2, T3, T5, T8, R11), and the copy alone (T9).
//!
//! Steps, each a span and a journal update. The copy, in cold mode:
//! `stop_standby` → `copy` → `start_standby` (always, even when the copy
//! failed, so the standby is never left down; waits until it streams); in
//! online mode: `start_backup` → `copy` → `stop_backup` (the standby keeps
//! streaming; the backup on it makes the copy consistent). Then `manifest`
//! (hash what the copy did not read) → `open_private` → `checks` →
//! `stop_private` → `lost_rows` → `checksums`. A backup packs the copy
//! (`pack`) before `open_private`; on engines whose backups are logical
//! dumps (Firebird), `backup` (after `checks`) and `verify_backup` (its
//! restore, validated) come instead, then `pack` of the dump.
//!
//! The steps run on the operation's [`Run`]: each records its undo before
//! it changes anything (`start_standby` before the stop, the copy's unusable
//! mark while it is made or opened, the private instance's kill while it may
//! run, the `.partial` backup file's removal). When the steps fail, are
//! cancelled or the agent stops, the running tool is SIGKILLed
//! (`kill_on_drop`) and the undos run last first; after a crash the
//! restarted agent runs the same undos from the journal. The journal says
//! failed, cancelled or interrupted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use jiff::Timestamp;
use tandem_proto::model::{Facts, Lsn, Role, TestMode};
use tracing::{error, info};

use crate::backup;
use crate::config::AgentConfig;
use crate::engine::copy::{default_workers, finish_manifest};
use crate::engine::{CopyDone, CopyRequest, Engine, EngineError};
use crate::files::{copy_dir, mark_copy_unusable, output_path, unusable_marker, write_state_file};
use crate::journal::{OpRecord, OpState, Undo};
use crate::steps::{Ending, Run, StepFailed};

const MIB: u64 = 1024 * 1024;

/// Why a test may not start (checked before anything is written).
#[derive(Debug, thiserror::Error)]
pub enum TestdbError {
    #[error(
        "member `{member}` is not a standby (role: {role}); testdb copies a standby's database, never the primary's; run it on the set's standby"
    )]
    NotStandby { member: String, role: Role },
    #[error(
        "member `{member}` does not answer ({problem}); testdb copies the database while its server serves it: start the server, or fix the engine's table in agent.toml"
    )]
    NotServing { member: String, problem: String },
    #[error(
        "member `{member}` is copied only while its database serves (online mode), never stopped by the agent; ask for mode online, or set [testdb] mode = \"online\""
    )]
    NoColdCopy { member: String },
    #[error(
        "standby `{member}` is not streaming (state: {state}); a test needs the whole database from the primary; wait until it streams"
    )]
    NotStreaming { member: String, state: String },
    #[error(
        "safe mode: the archive filesystem of {dir} has {avail} MiB free (+{reclaim} MiB from the previous copy); a copy of {data} MiB plus the reserve of {reserve} MiB needs {need} MiB. Nothing was written; free space, or move the archive_dir of the engine's table in agent.toml, or lower testdb.free_space_reserve_mib"
    )]
    NoSpace {
        dir: PathBuf,
        avail: u64,
        reclaim: u64,
        data: u64,
        reserve: u64,
        need: u64,
    },
    #[error("cannot read the free space of {dir}: {message}")]
    Statvfs { dir: PathBuf, message: String },
}

/// What the checks before a test learned.
pub struct Preconditions {
    pub data_bytes: u64,
}

impl Preconditions {
    pub async fn check<E: Engine>(
        cfg: &AgentConfig,
        engine: &E,
        mode: TestMode,
    ) -> Result<Preconditions, TestdbError> {
        if mode == TestMode::Cold && !engine.can_copy_cold() {
            return Err(TestdbError::NoColdCopy {
                member: cfg.member().to_owned(),
            });
        }
        let facts = engine.facts().await;
        preconditions(
            cfg,
            &facts,
            engine.needs_streaming_standby(),
            free_bytes(cfg.archive_dir())?,
            dir_size(&copy_dir(cfg)),
        )
    }
}

/// The rules of SPEC T8 and R11 on what was observed (pure, unit-tested).
fn preconditions(
    cfg: &AgentConfig,
    facts: &Facts,
    needs_standby: bool,
    free: u64,
    previous_copy: u64,
) -> Result<Preconditions, TestdbError> {
    if !needs_standby {
        // The set's only member, copied while it serves: it must answer.
        if facts.role == Role::Unknown {
            return Err(TestdbError::NotServing {
                member: cfg.member().to_owned(),
                problem: facts.problem.clone().unwrap_or_default(),
            });
        }
    } else if facts.role != Role::Standby {
        return Err(TestdbError::NotStandby {
            member: cfg.member().to_owned(),
            role: facts.role,
        });
    }
    if needs_standby && !facts.fully_received {
        return Err(TestdbError::NotStreaming {
            member: cfg.member().to_owned(),
            state: facts.state_word(),
        });
    }
    let reserve = cfg.testdb.free_space_reserve_mib.saturating_mul(MIB);
    let need = facts.data_dir_bytes.saturating_add(reserve);
    if free.saturating_add(previous_copy) < need {
        return Err(TestdbError::NoSpace {
            dir: cfg.archive_dir().to_owned(),
            avail: free / MIB,
            reclaim: previous_copy / MIB,
            data: facts.data_dir_bytes.div_ceil(MIB),
            reserve: cfg.testdb.free_space_reserve_mib,
            need: need.div_ceil(MIB),
        });
    }
    Ok(Preconditions {
        data_bytes: facts.data_dir_bytes,
    })
}

fn free_bytes(dir: &Path) -> Result<u64, TestdbError> {
    crate::files::free_bytes(dir).map_err(|e| TestdbError::Statvfs {
        dir: dir.to_owned(),
        message: e.to_string(),
    })
}

fn dir_size(dir: &Path) -> u64 {
    crate::engine::postgres::dir_size(dir)
}

/// A testdb, a copy, or a backup (a copy packed before its test).
pub struct Testdb {
    /// The copy only (SPEC T9), no test.
    pub only_copy: bool,
    /// Pack the copy into a backup file before the test (SPEC T9: the test
    /// starts after the archive file is written); kept only when the test
    /// is clean, or at once when there is no test.
    pub pack: bool,
    pub logical_read: bool,
    /// Online (the standby keeps streaming) or cold (it is stopped for the
    /// copy): the order's mode, else `[testdb] mode` (resolved in `orders.rs`).
    pub mode: TestMode,
}

/// What the steps hand on to the end of the operation.
#[derive(Default)]
struct Made {
    packed: Option<backup::Packed>,
    /// Whether the copy is tested: known once the copy is made (a test may
    /// join an archive copy until then).
    tested: bool,
    /// An online copy's log range: its backup's start and stop.
    lsns: Option<(Lsn, Lsn)>,
}

impl Testdb {
    /// Start the standby and wait until it streams; records the downtime.
    async fn start_standby<E: Engine>(
        &self,
        run: &Run<E>,
        since: Timestamp,
    ) -> Result<(), StepFailed> {
        let r = run.step("start_standby", run.engine.start()).await;
        let down = (Timestamp::now() - since).total(jiff::Unit::Second).ok();
        run.rec().standby_downtime_seconds = down;
        r?;
        run.undone(&Undo::StartStandby { since });
        info!(downtime_seconds = down, "standby running again");
        run.wait_streaming().await.map_err(|e| StepFailed {
            step: "start_standby",
            cause: e.into(),
        })
    }

    /// Cold mode (the standby manual's procedure): stop the standby, copy,
    /// start it again whatever happened to the copy.
    async fn copy_cold<E: Engine>(
        &self,
        run: &Run<E>,
        copy: &Path,
        req: CopyRequest,
    ) -> Result<CopyDone, StepFailed> {
        let since = Timestamp::now();
        // Recorded before the stop: a crash while it stops still starts it again.
        run.did(Undo::StartStandby { since });
        run.step("stop_standby", run.engine.stop()).await?;
        run.did(Undo::MarkCopyUnusable);
        let copied = run.step("copy", self.copy_files(run, copy, req)).await;
        // The standby comes back whatever happened to the copy.
        let restarted = self.start_standby(run, since).await;
        let done = copied?;
        restarted?;
        Ok(done)
    }

    /// Online mode: the standby keeps running and streaming; the copy is
    /// made under a backup on the standby, which then adds the label and
    /// the WAL that make it consistent.
    async fn copy_online<E: Engine>(
        &self,
        run: &Run<E>,
        copy: &Path,
        req: CopyRequest,
        made: &mut Made,
    ) -> Result<CopyDone, StepFailed> {
        // A backup that outlives the agent (Firebird's lock) is ended by
        // an undo, recorded before it begins: a failed copy, a cancel or a
        // SIGKILL all end it. Others are dropped on any failure below:
        // the session ends, the server aborts the backup and drops its slot.
        let lasting = run.engine.backup_outlives_agent();
        if lasting {
            run.did(Undo::EndBackup);
        }
        let backup = run.step("start_backup", run.engine.start_backup()).await?;
        run.did(Undo::MarkCopyUnusable);
        let done = run.step("copy", self.copy_files(run, copy, req)).await?;
        let end = run
            .step("stop_backup", async {
                let end = run.engine.stop_backup(backup, copy).await?;
                let span = tracing::Span::current();
                if let Some((_, stop)) = end.lsns {
                    span.record("lsn", stop.to_string());
                }
                span.record("bytes", end.wal_bytes);
                Ok::<_, EngineError>(end)
            })
            .await?;
        if lasting {
            run.undone(&Undo::EndBackup);
        }
        // Measured, not assumed: the one session that held the backup
        // lived from its start to its stop, so the server never stopped.
        run.rec().standby_downtime_seconds = Some(0.0);
        run.rec().bytes_copied += end.wal_bytes;
        made.lsns = end.lsns;
        Ok(done)
    }

    /// The copy step's work: the unusable mark, the previous copy removed,
    /// the files copied.
    async fn copy_files<E: Engine>(
        &self,
        run: &Run<E>,
        copy: &Path,
        req: CopyRequest,
    ) -> Result<CopyDone, EngineError> {
        mark_copy_unusable(&run.cfg, "a copy is being made");
        remove_previous_copy(copy)?;
        let progress = std::sync::Arc::new(run.bytes_progress());
        let t0 = Instant::now();
        let done = run
            .engine
            .copy_to(copy, req, progress, run.cancel.clone())
            .await?;
        let span = tracing::Span::current();
        span.record("bytes", done.bytes);
        span.record(
            "bytes_per_second",
            (done.bytes as f64 / t0.elapsed().as_secs_f64().max(1e-3)).round() as u64,
        );
        let mut rec = run.rec();
        rec.bytes_copied = done.bytes;
        rec.copy_method = Some(done.method.to_string());
        rec.copy_note = done.note.clone();
        if let Some(note) = &done.note {
            rec.notes.push(note.clone());
        }
        Ok(done)
    }

    async fn steps<E: Engine>(&self, run: &Run<E>, made: &mut Made) -> Result<(), StepFailed> {
        let cfg = run.cfg.clone();
        let copy = copy_dir(&cfg);
        run.rec().mode = Some(self.mode.to_string());
        let workers = cfg.testdb.copy_workers.unwrap_or_else(default_workers);
        let req = CopyRequest {
            workers,
            method: cfg.testdb.copy_method,
            online: self.mode == TestMode::Online,
        };
        let done = match self.mode {
            TestMode::Cold => self.copy_cold(run, &copy, req).await?,
            TestMode::Online => self.copy_online(run, &copy, req, made).await?,
        };
        // Files a clone did not read, and those the backup's stop added,
        // are hashed now (the standby already runs again).
        run.step("manifest", async {
            let progress = run.bytes_progress();
            let cancel = run.cancel.clone();
            let dst = copy.clone();
            tokio::task::spawn_blocking(move || {
                finish_manifest(&dst, &done.files, workers, &progress, &cancel)
            })
            .await
            .map_err(|e| EngineError::Io {
                op: "run the hashing of",
                path: copy.clone(),
                source: std::io::Error::other(e),
            })??;
            Ok::<_, EngineError>(())
        })
        .await?;
        let _ = std::fs::remove_file(unusable_marker(&cfg));
        run.undone(&Undo::MarkCopyUnusable);
        // From here on the copy is what it is: nothing joins any more.
        let (pack, tested) = {
            let mut j = run.join.lock().unwrap_or_else(|p| p.into_inner());
            j.open = false;
            run.rec().notes.append(&mut j.notes);
            (self.pack || j.pack, !self.only_copy || j.test)
        };
        made.tested = tested;
        // A logical backup (Firebird's gbak) is made from the opened copy
        // and proven by restoring it; a physical one is the copy itself,
        // packed before the test changes it.
        let logical = pack && run.engine.backup_is_logical();
        if pack && !logical {
            run.step("pack", self.pack_copy(run, &copy, made)).await?;
        }
        if !tested && !logical {
            return Ok(());
        }
        // A copy opened for the test is changed by it: unusable until the end.
        run.did(Undo::MarkCopyUnusable);

        let out = output_path(&cfg);
        run.rec().output_path = Some(out.clone());
        run.did(Undo::KillPrivate { copy: copy.clone() });
        let inst = run
            .step("open_private", async {
                let inst = run
                    .engine
                    .open_private(&copy, cfg.testdb.private_start_timeout)
                    .await?;
                if let Some(lsn) = &inst.lsn {
                    tracing::Span::current().record("lsn", lsn.to_string());
                }
                Ok::<_, EngineError>(inst)
            })
            .await?;
        run.rec().tested_lsn = inst.lsn.map(|l| l.to_string());
        let backup_dir = PathBuf::from(format!("{}.backup", copy.display()));
        let checked = async {
            let checked = if tested {
                // The backup's dump reads every row: no second read.
                let read = self.logical_read && !logical;
                run.step("checks", async {
                    let r = run.engine.check_private(&inst, read, &out).await?;
                    tracing::Span::current().record("findings", r.findings.len() as u64);
                    Ok::<_, EngineError>(r)
                })
                .await?
            } else {
                Default::default()
            };
            let dumped = if logical {
                run.step("backup", async {
                    remove_previous_copy(&backup_dir)?;
                    let r = run.engine.make_backup(&inst, &backup_dir, &out).await?;
                    tracing::Span::current().record("findings", r.findings.len() as u64);
                    Ok::<_, EngineError>(r)
                })
                .await?
            } else {
                Default::default()
            };
            Ok::<_, StepFailed>((checked, dumped))
        }
        .await;
        run.step("stop_private", run.engine.close_private(&inst))
            .await?;
        run.undone(&Undo::KillPrivate { copy: copy.clone() });
        let (checked, dumped): (crate::engine::CheckReport, crate::engine::CheckReport) = checked?;
        run.rec().findings.extend(checked.findings);
        run.rec().warnings.extend(checked.warnings);
        let dump_ok = dumped.findings.is_empty();
        run.rec().findings.extend(dumped.findings);
        run.rec().coverage.extend(dumped.coverage);
        if logical && dump_ok {
            let verified = run
                .step("verify_backup", async {
                    let r = run.engine.verify_backup(&backup_dir, &out).await?;
                    tracing::Span::current().record("findings", r.findings.len() as u64);
                    Ok::<_, EngineError>(r)
                })
                .await?;
            let clean = verified.findings.is_empty();
            run.rec().findings.extend(verified.findings);
            run.rec().warnings.extend(verified.warnings);
            run.rec().coverage.extend(verified.coverage);
            if clean {
                run.step("pack", self.pack_copy(run, &backup_dir, made))
                    .await?;
            }
        }
        if !tested {
            run.undone(&Undo::MarkCopyUnusable);
            return Ok(());
        }
        let files = run
            .step("lost_rows", async {
                let r = run.engine.check_files(&copy, &out).await?;
                tracing::Span::current().record("findings", r.findings.len() as u64);
                Ok::<_, EngineError>(r)
            })
            .await?;
        run.rec().findings.extend(files.findings);
        run.rec().coverage.extend(files.coverage);
        run.rec().warnings.extend(files.not_covered);
        if inst.data_checksums {
            let offline = run
                .step("checksums", async {
                    let r = run.engine.check_offline(&copy, &out).await?;
                    tracing::Span::current().record("findings", r.findings.len() as u64);
                    Ok::<_, EngineError>(r)
                })
                .await?;
            run.rec().findings.extend(offline.findings);
        } else if let Some(warning) = run.engine.no_offline_check(&inst) {
            run.rec().warnings.push(warning);
        }
        run.undone(&Undo::MarkCopyUnusable);
        Ok(())
    }

    /// Pack the copy into `<backup.dir>/.<name>.partial` (the kind from
    /// rotation, the LSN range from the copy); the operation's end keeps or
    /// drops it.
    async fn pack_copy<E: Engine>(
        &self,
        run: &Run<E>,
        copy: &Path,
        made: &mut Made,
    ) -> Result<(), EngineError> {
        let Some(bcfg) = run.cfg.backup.clone() else {
            return Err(EngineError::Io {
                op: "find the backup directory (no [backup] in agent.toml) for",
                path: copy.to_owned(),
                source: std::io::Error::other("no [backup] section"),
            });
        };
        // An online copy's range is its backup's; a cold copy's is in its
        // control file.
        let (start_lsn, end_lsn) = match made.lsns {
            Some(lsns) => lsns,
            None => run.engine.copy_lsns(copy).await?,
        };
        std::fs::create_dir_all(&bcfg.dir).map_err(|source| EngineError::Io {
            op: "create the backup directory",
            path: bcfg.dir.clone(),
            source,
        })?;
        let existing: Vec<_> = backup::list(&bcfg.dir)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let now = Timestamp::from_second(Timestamp::now().as_second()).expect("now is valid");
        let meta = backup::BackupMeta {
            format: 1,
            kind: backup::rotation::kind_for(now, &existing, &bcfg.retention()),
            taken_at: now,
            start_lsn,
            end_lsn,
            set: run.cfg.set.clone(),
            member: run.cfg.member().to_owned(),
            files: 0,
            unpacked_bytes: 0,
            // A logical backup is always proven by its restore.
            verified: !self.only_copy || run.engine.backup_is_logical(),
        };
        run.did(Undo::RemoveFile {
            path: bcfg
                .dir
                .join(format!(".{}.partial", meta.name().file_name())),
        });
        let progress = run.bytes_progress();
        let cancel = run.cancel.clone();
        let src = copy.to_owned();
        let mut opts = bcfg.pack_options();
        opts.dump = run.engine.backup_is_logical();
        let packed = tokio::task::spawn_blocking(move || {
            backup::pack(&src, &bcfg.dir, meta, opts, &progress, &cancel)
        })
        .await
        .map_err(|e| EngineError::Io {
            op: "run the packing of",
            path: copy.to_owned(),
            source: std::io::Error::other(e),
        })??;
        info!(file = %packed.path.display(), bytes = packed.packed_bytes, seconds = packed.elapsed.as_secs_f64(), "backup packed");
        made.packed = Some(packed);
        Ok(())
    }
}

fn remove_previous_copy(copy: &Path) -> Result<(), EngineError> {
    let manifest = PathBuf::from(format!("{}.manifest", copy.display()));
    for p in [copy.to_owned(), manifest] {
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(EngineError::Io {
                    op: "remove the previous copy",
                    path: p,
                    source,
                });
            }
        }
    }
    Ok(())
}

impl<E: Engine> crate::steps::Action<E> for Testdb {
    /// Run a testdb (or copy, or backup) to its end, whatever happens.
    async fn run(self, run: Run<E>) -> OpRecord {
        if self.only_copy {
            run.set_label("copy");
        } else {
            let _ = std::fs::write(output_path(&run.cfg), b"");
        }
        let mut made = Made {
            tested: !self.only_copy,
            ..Made::default()
        };
        let (ending, _put_back) = run.steps(self.steps(&run, &mut made)).await;
        let (mut state, mut reason) = match ending {
            Ending::Done => {
                let findings = &run.rec().findings;
                if findings.iter().any(|f| f.kind == "check_failed") {
                    (
                        OpState::Failed,
                        Some("a check tool failed; see testdb.out".to_owned()),
                    )
                } else if findings.is_empty() {
                    (OpState::Succeeded, None)
                } else {
                    (OpState::ErrorsFound, None)
                }
            }
            Ending::Failed(e) => (OpState::Failed, Some(e.to_string())),
            Ending::Cancelled | Ending::Interrupted => {
                let step = run.rec().step.clone();
                let (state, why) = if matches!(ending, Ending::Interrupted) {
                    (OpState::Interrupted, "the agent was stopped")
                } else {
                    (OpState::Cancelled, "the operation was cancelled")
                };
                (
                    state,
                    Some(format!("{why} during step `{step}`; the copy is unusable")),
                )
            }
        };
        match backup::keep::keep_or_drop(&run.cfg, made.packed.take(), state == OpState::Succeeded)
        {
            Ok(kept) => {
                if let (Some(k), Some(remote)) = (&kept, &run.cfg.remote) {
                    let note = backup::keep::push(&run.cfg, remote, &k.path, &k.meta).await;
                    run.rec().notes.push(note);
                }
                // Rotation may have dropped the oldest backup: the WAL only
                // it needed can go now.
                if kept.is_some()
                    && let Some(note) = backup::wal_retention::after_backup(&run.cfg).await
                {
                    run.rec().notes.push(note);
                }
                run.rec().backup_path = kept.map(|k| k.path);
            }
            Err(why) => {
                state = OpState::Failed;
                reason = Some(why.to_string());
            }
        }
        let rec = run.finish(state, reason);
        match rec.state {
            OpState::ErrorsFound => {
                for f in &rec.findings {
                    error!(kind = %f.kind, database = %f.database, relation = %f.relation, message = %f.message, "testdb finding");
                }
            }
            OpState::Succeeded => info!(lsn = ?rec.tested_lsn, "testdb clean"),
            _ => tracing::warn!(state = ?rec.state, reason = ?rec.reason, "operation ended"),
        }
        if made.tested {
            write_state_file(&run.cfg, &rec);
        }
        rec
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::model::ServerState;

    fn cfg(reserve_mib: u64) -> AgentConfig {
        let text = format!(
            "name = \"db2\"\nset = \"s\"\nlisten = \"127.0.0.1:1\"\ncontroller = \"https://127.0.0.1:2\"\nhome = \"/h\"\n\
             [tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[postgres]\ndata_dir = \"/d\"\narchive_dir = \"/a\"\n\
             [testdb]\nfree_space_reserve_mib = {reserve_mib}\n"
        );
        AgentConfig::parse(Path::new("agent.toml"), &text).unwrap()
    }

    fn standby(streaming: bool) -> Facts {
        let mut f = Facts::unreachable("postgres", "/d", ServerState::Running, String::new());
        f.problem = None;
        f.role = Role::Standby;
        f.fully_received = streaming;
        f.wal_receiver_status = Some(if streaming { "streaming" } else { "catchup" }.into());
        f.data_dir_bytes = 100 * MIB;
        f
    }

    #[test]
    fn a_streaming_standby_with_room_may_be_tested() {
        let p = preconditions(&cfg(10), &standby(true), true, 200 * MIB, 0).unwrap();
        assert_eq!(p.data_bytes, 100 * MIB);
    }

    #[test]
    fn a_primary_is_refused() {
        let mut f = standby(true);
        f.role = Role::Primary;
        let e = preconditions(&cfg(10), &f, true, u64::MAX / 2, 0)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("is not a standby (role: primary)"),
            "{e}"
        );
    }

    #[test]
    fn a_standby_not_streaming_is_refused_with_its_state() {
        let e = preconditions(&cfg(10), &standby(false), true, u64::MAX / 2, 0)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("not streaming (state: catchup)"),
            "{e}"
        );
    }

    #[test]
    fn a_single_member_engine_tests_its_serving_primary() {
        let mut f = standby(false);
        f.role = Role::Primary;
        assert!(preconditions(&cfg(10), &f, false, u64::MAX / 2, 0).is_ok());
        f.role = Role::Unknown;
        f.problem = Some("the server does not answer".into());
        let e = preconditions(&cfg(10), &f, false, u64::MAX / 2, 0)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("does not answer (the server does not answer)"),
            "{e}"
        );
    }

    #[test]
    fn too_little_space_is_safe_mode_with_the_numbers() {
        let e = preconditions(&cfg(50), &standby(true), true, 120 * MIB, 0)
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("safe mode"), "{msg}");
        assert!(msg.contains("120 MiB free"), "{msg}");
        assert!(msg.contains("needs 150 MiB"), "{msg}");
        // The previous copy's space counts: it is replaced.
        assert!(preconditions(&cfg(50), &standby(true), true, 120 * MIB, 40 * MIB).is_ok());
    }
}
