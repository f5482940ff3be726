//! testdb on a standby (SPEC T2, T3, T5, T8, R11), and the copy alone (T9).
//!
//! Steps, each a span and a journal update:
//! `stop_standby` → `copy` → `start_standby` (always, even when the copy
//! failed, so the standby is never left down; waits until it streams) →
//! `open_private` → `checks` → `stop_private` → `checksums`.
//!
//! The whole step list runs inside one `select!` against the operation's
//! cancellation token. When the token fires (agent shutdown or Cancel), the
//! step future is dropped, which SIGKILLs the running tool (`kill_on_drop`),
//! the private instance is SIGKILLed through its pid file, the copy is marked
//! unusable, the standby is started again if it was stopped, and the journal
//! says interrupted (shutdown) or cancelled.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::json;
use tandem_proto::model::{Facts, Role};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::backup;
use crate::config::AgentConfig;
use crate::engine::{Engine, EngineError, copy::default_workers};
use crate::ops::Progress;
use crate::ops::journal::{Journal, OpKind, OpRecord, OpState, StepTime, write_atomic};

const MIB: u64 = 1024 * 1024;

/// Why a test may not start (checked before anything is written).
#[derive(Debug, thiserror::Error)]
pub enum TestdbError {
    #[error(
        "member `{member}` is not a standby (role: {role}); testdb copies a standby's database (SPEC T2); run it on the set's standby"
    )]
    NotStandby { member: String, role: Role },
    #[error(
        "standby `{member}` is not streaming (state: {state}); a test needs the whole database from the primary (SPEC T8); wait until it streams"
    )]
    NotStreaming { member: String, state: String },
    #[error(
        "safe mode: the archive filesystem of {dir} has {avail} MiB free (+{reclaim} MiB from the previous copy); a copy of {data} MiB plus the reserve of {reserve} MiB needs {need} MiB. Nothing was written (SPEC R11); free space, or move postgres.archive_dir, or lower testdb.free_space_reserve_mib"
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
    ) -> Result<Preconditions, TestdbError> {
        let facts = engine.facts().await;
        preconditions(
            cfg,
            &facts,
            free_bytes(&cfg.postgres.archive_dir)?,
            dir_size(&copy_dir(cfg)),
        )
    }
}

/// The rules of SPEC T8 and R11 on what was observed (pure, unit-tested).
fn preconditions(
    cfg: &AgentConfig,
    facts: &Facts,
    free: u64,
    previous_copy: u64,
) -> Result<Preconditions, TestdbError> {
    if facts.role != Role::Standby {
        return Err(TestdbError::NotStandby {
            member: cfg.member().to_owned(),
            role: facts.role,
        });
    }
    if !facts.fully_received {
        return Err(TestdbError::NotStreaming {
            member: cfg.member().to_owned(),
            state: facts.state_word(),
        });
    }
    let reserve = cfg.testdb.free_space_reserve_mib.saturating_mul(MIB);
    let need = facts.data_dir_bytes.saturating_add(reserve);
    if free.saturating_add(previous_copy) < need {
        return Err(TestdbError::NoSpace {
            dir: cfg.postgres.archive_dir.clone(),
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
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| TestdbError::Statvfs {
        dir: dir.to_owned(),
        message: e.to_string(),
    })?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

fn dir_size(dir: &Path) -> u64 {
    crate::engine::postgres::dir_size(dir)
}

/// Where the copy goes: `<archive_dir>/copy` (manifest: `copy.manifest`).
pub fn copy_dir(cfg: &AgentConfig) -> PathBuf {
    cfg.postgres.archive_dir.join("copy")
}

fn unusable_marker(cfg: &AgentConfig) -> PathBuf {
    cfg.postgres.archive_dir.join("copy.UNUSABLE")
}

/// Mark the copy unusable (SPEC T3), saying why.
pub fn mark_copy_unusable(cfg: &AgentConfig, why: &str) {
    if let Err(e) = std::fs::write(unusable_marker(cfg), format!("{why}\n")) {
        warn!(error = %e, "cannot mark the copy unusable");
    }
}

pub fn state_file_path(cfg: &AgentConfig) -> PathBuf {
    cfg.home.join("testdb.state.json")
}

pub fn output_path(cfg: &AgentConfig) -> PathBuf {
    cfg.home.join("testdb.out")
}

/// The state file (SPEC T5): the last result, kept across restarts.
pub fn state_json(rec: &OpRecord) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for f in &rec.findings {
        let n = counts.get(&f.kind).and_then(|v| v.as_u64()).unwrap_or(0);
        counts.insert(f.kind.clone(), json!(n + 1));
    }
    let result = match rec.state {
        OpState::Succeeded => "clean",
        OpState::ErrorsFound => "errors_found",
        OpState::Failed => "failed",
        OpState::Cancelled => "cancelled",
        OpState::Interrupted => "interrupted",
        OpState::Running => "running",
    };
    json!({
        "operation_id": rec.id,
        "kind": rec.kind,
        "result": result,
        "errors": rec.state == OpState::ErrorsFound,
        "started_at": rec.started_at,
        "finished_at": rec.finished_at,
        "tested_lsn": rec.tested_lsn,
        "finding_counts": counts,
        "findings": rec.findings,
        "reason": rec.reason,
        "warnings": rec.warnings,
        "steps": rec.steps,
        "standby_downtime_seconds": rec.standby_downtime_seconds,
        "bytes_copied": rec.bytes_copied,
        "output": rec.output_path,
    })
}

/// The state file for people (`tandem-agent show`).
pub fn state_human(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let mut out = match v["result"].as_str() {
        Some("clean") => format!(
            "clean: primary, standby and copy verified clean up to LSN {} (finished {})\n",
            s("tested_lsn"),
            s("finished_at")
        ),
        Some("errors_found") => format!(
            "errors found on the standby's copy (finished {}): repair on the primary with the whole set halted (SPEC T4)\n",
            s("finished_at")
        ),
        Some(other) => format!("{other}: {}\n", s("reason")),
        None => "unknown state file\n".to_owned(),
    };
    if let Some(f) = v["findings"].as_array() {
        for f in f.iter().take(10) {
            out.push_str(&format!(
                "  {} {} {}: {}\n",
                f["kind"].as_str().unwrap_or(""),
                f["database"].as_str().unwrap_or(""),
                f["relation"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(w) = v["warnings"].as_array() {
        for w in w {
            out.push_str(&format!("  warning: {}\n", w.as_str().unwrap_or("")));
        }
    }
    out.push_str(&format!(
        "operation {}, started {}, standby down {} s, output {}\n",
        s("operation_id"),
        s("started_at"),
        v["standby_downtime_seconds"]
            .as_f64()
            .map_or("-".into(), |d| format!("{d:.1}")),
        s("output")
    ));
    out
}

pub fn write_state_file(cfg: &AgentConfig, rec: &OpRecord) {
    let bytes = serde_json::to_vec_pretty(&state_json(rec)).expect("json serializes");
    if let Err(e) = write_atomic(&state_file_path(cfg), &bytes) {
        error!(error = %e, "cannot write the state file");
    }
}

/// Everything one run needs.
pub struct Job<E> {
    pub cfg: Arc<AgentConfig>,
    pub engine: Arc<E>,
    pub journal: Arc<Journal>,
    pub progress: watch::Sender<Progress>,
    pub cancel: CancellationToken,
    /// The copy only (SPEC T9), no test.
    pub only_copy: bool,
    /// Pack the copy into a backup file before the test (SPEC T9: the test
    /// starts after the archive file is written); kept only when the test
    /// is clean, or at once when there is no test.
    pub pack: bool,
    pub logical_read: bool,
    /// Cancelled when the agent stops: tells an interruption from a Cancel.
    pub shutting_down: CancellationToken,
    /// Orders that joined this one (SPEC T9), closed once the copy is made.
    pub join: Arc<Mutex<crate::ops::Join>>,
}

/// State the steps share with the clean-up that may follow them.
struct Shared {
    rec: Mutex<OpRecord>,
    standby_stopped: AtomicBool,
    stopped_at: Mutex<Option<Instant>>,
    packed: Mutex<Option<crate::backup::Packed>>,
    /// Whether the copy is tested: known once the copy is made (a test may
    /// join an archive copy until then).
    tested: AtomicBool,
}

impl Shared {
    fn rec(&self) -> std::sync::MutexGuard<'_, OpRecord> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("step `{step}` failed: {source}")]
    Engine {
        step: &'static str,
        #[source]
        source: EngineError,
    },
    #[error(
        "the standby was started again but is not streaming after {0:?}; check its log and the primary"
    )]
    NotStreamingAgain(Duration),
}

impl<E: Engine> Job<E> {
    fn publish(&self, sh: &Shared, message: &str) {
        let rec = sh.rec().clone();
        if let Err(e) = self.journal.write(&rec) {
            error!(error = %e, "cannot write the journal");
        }
        self.progress.send_modify(|p| {
            p.record = rec;
            p.message = message.to_owned();
        });
    }

    /// Run one named step: journal, progress, span, timing.
    async fn step<T>(
        &self,
        sh: &Shared,
        name: &'static str,
        fut: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, StepError> {
        sh.rec().step = name.to_owned();
        self.publish(sh, &format!("step {name}"));
        let t0 = Instant::now();
        let kind = if self.only_copy {
            OpKind::Copy
        } else {
            OpKind::Testdb
        };
        // Step-specific fields are recorded by the step itself
        // (`Span::current().record(...)`).
        let span = info_span!(
            "testdb.step",
            otel.name = %format_args!("{} {name}", crate::metrics::kind_label(kind)),
            step = name,
            set = %self.cfg.set,
            member = %self.cfg.member(),
            operation.id = %sh.rec().id,
            bytes = tracing::field::Empty,
            bytes_per_second = tracing::field::Empty,
            lsn = tracing::field::Empty,
            findings = tracing::field::Empty,
        );
        let r = fut.instrument(span).await;
        let seconds = t0.elapsed().as_secs_f64();
        crate::metrics::step(kind, name, seconds);
        sh.rec().steps.push(StepTime {
            step: name.to_owned(),
            seconds,
        });
        match &r {
            Ok(_) => info!(step = name, seconds, "step done"),
            Err(e) => warn!(step = name, seconds, error = %e, "step failed"),
        }
        r.map_err(|source| StepError::Engine { step: name, source })
    }

    async fn wait_streaming(&self) -> Result<(), StepError> {
        let limit = self.cfg.testdb.streaming_timeout;
        let t0 = Instant::now();
        loop {
            let f = self.engine.facts().await;
            if f.role == Role::Standby && f.fully_received {
                return Ok(());
            }
            if t0.elapsed() > limit {
                return Err(StepError::NotStreamingAgain(limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start the standby and wait until it streams; records the downtime.
    async fn restart_standby(&self, sh: &Shared) -> Result<(), StepError> {
        let r = self.step(sh, "start_standby", self.engine.start()).await;
        if r.is_ok() {
            sh.standby_stopped.store(false, Ordering::SeqCst);
        }
        let down = sh
            .stopped_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64());
        sh.rec().standby_downtime_seconds = down;
        info!(downtime_seconds = down, "standby running again");
        r?;
        self.wait_streaming().await
    }

    async fn steps(&self, sh: &Shared) -> Result<(), StepError> {
        let copy = copy_dir(&self.cfg);
        self.step(sh, "stop_standby", self.engine.stop()).await?;
        sh.standby_stopped.store(true, Ordering::SeqCst);
        *sh.stopped_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());

        let copied = self
            .step(sh, "copy", async {
                mark_copy_unusable(&self.cfg, "a copy is being made");
                remove_previous_copy(&copy)?;
                let tx = self.progress.clone();
                let progress = Arc::new(move |n: u64| tx.send_modify(|p| p.bytes_done = n));
                let workers = self.cfg.testdb.copy_workers.unwrap_or_else(default_workers);
                let t0 = Instant::now();
                let n = self
                    .engine
                    .copy_to(&copy, workers, progress, self.cancel.clone())
                    .await?;
                let span = tracing::Span::current();
                span.record("bytes", n);
                span.record(
                    "bytes_per_second",
                    (n as f64 / t0.elapsed().as_secs_f64().max(1e-3)).round() as u64,
                );
                Ok(n)
            })
            .await;
        // The standby comes back whatever happened to the copy.
        let restarted = self.restart_standby(sh).await;
        let bytes = copied?;
        sh.rec().bytes_copied = bytes;
        restarted?;
        let _ = std::fs::remove_file(unusable_marker(&self.cfg));
        // From here on the copy is what it is: nothing joins any more.
        let (pack, tested) = {
            let mut j = self.join.lock().unwrap_or_else(|p| p.into_inner());
            j.open = false;
            sh.rec().notes.append(&mut j.notes);
            (self.pack || j.pack, !self.only_copy || j.test)
        };
        sh.tested.store(tested, Ordering::SeqCst);
        if pack {
            self.step(sh, "pack", self.pack_copy(sh, &copy)).await?;
        }
        if !tested {
            return Ok(());
        }

        let out = output_path(&self.cfg);
        sh.rec().output_path = Some(out.clone());
        let inst = self
            .step(sh, "open_private", async {
                let inst = self
                    .engine
                    .open_private(&copy, self.cfg.testdb.private_start_timeout)
                    .await?;
                if let Some(lsn) = &inst.lsn {
                    tracing::Span::current().record("lsn", lsn.to_string());
                }
                Ok(inst)
            })
            .await?;
        sh.rec().tested_lsn = inst.lsn.map(|l| l.to_string());
        let checked = self
            .step(sh, "checks", async {
                let r = self
                    .engine
                    .check_private(&inst, self.logical_read, &out)
                    .await?;
                tracing::Span::current().record("findings", r.findings.len() as u64);
                Ok(r)
            })
            .await;
        self.step(sh, "stop_private", self.engine.close_private(&inst))
            .await?;
        sh.rec().findings.extend(checked?.findings);
        if inst.data_checksums {
            let offline = self
                .step(sh, "checksums", async {
                    let r = self.engine.check_offline(&copy, &out).await?;
                    tracing::Span::current().record("findings", r.findings.len() as u64);
                    Ok(r)
                })
                .await?;
            sh.rec().findings.extend(offline.findings);
        } else {
            sh.rec().warnings.push(
                "data checksums are off: damaged pages cannot be detected offline; enable them (pg_checksums --enable on a stopped server, or initdb --data-checksums)".into(),
            );
        }
        Ok(())
    }
}

impl<E: Engine> Job<E> {
    /// Pack the copy into `<backup.dir>/.<name>.partial` (the kind from
    /// rotation, the LSN range from the copy); [`run`] keeps or drops it.
    async fn pack_copy(&self, sh: &Shared, copy: &Path) -> Result<(), EngineError> {
        let Some(bcfg) = self.cfg.backup.clone() else {
            return Err(EngineError::Io {
                op: "find the backup directory (no [backup] in agent.toml) for",
                path: copy.to_owned(),
                source: std::io::Error::other("no [backup] section"),
            });
        };
        let (start_lsn, end_lsn) = self.engine.copy_lsns(copy).await?;
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
            set: self.cfg.set.clone(),
            member: self.cfg.member().to_owned(),
            files: 0,
            unpacked_bytes: 0,
            verified: !self.only_copy,
        };
        let tx = self.progress.clone();
        let cancel = self.cancel.clone();
        let src = copy.to_owned();
        let opts = bcfg.pack_options();
        let packed = tokio::task::spawn_blocking(move || {
            let progress = move |n: u64| tx.send_modify(|p| p.bytes_done = n);
            backup::pack(&src, &bcfg.dir, meta, opts, &progress, &cancel)
        })
        .await
        .map_err(|e| EngineError::Io {
            op: "run the packing of",
            path: copy.to_owned(),
            source: std::io::Error::other(e),
        })??;
        info!(file = %packed.path.display(), bytes = packed.packed_bytes, seconds = packed.elapsed.as_secs_f64(), "backup packed");
        *sh.packed.lock().unwrap_or_else(|p| p.into_inner()) = Some(packed);
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

/// Run a testdb (or copy) to its end, whatever happens, and return the
/// final journal record.
pub async fn run<E: Engine>(job: Job<E>, rec: OpRecord) -> OpRecord {
    let sh = Shared {
        rec: Mutex::new(rec),
        standby_stopped: AtomicBool::new(false),
        stopped_at: Mutex::new(None),
        packed: Mutex::new(None),
        tested: AtomicBool::new(!job.only_copy),
    };
    if !job.only_copy {
        let _ = std::fs::write(output_path(&job.cfg), b"");
    }
    // Cancel-safe by design: dropping `steps` kills the running tool
    // (kill_on_drop); the clean-up below puts back what it changed.
    let result = tokio::select! {
        biased;
        _ = job.cancel.cancelled() => None,
        r = job.steps(&sh) => Some(r),
    };
    let (mut state, mut reason) = match result {
        Some(Ok(())) => {
            let failed = sh.rec().findings.iter().any(|f| f.kind == "check_failed");
            if failed {
                (
                    OpState::Failed,
                    Some("a check tool failed; see testdb.out".to_owned()),
                )
            } else if sh.rec().findings.is_empty() {
                (OpState::Succeeded, None)
            } else {
                (OpState::ErrorsFound, None)
            }
        }
        Some(Err(e)) => {
            job.engine.kill_private(&copy_dir(&job.cfg));
            (OpState::Failed, Some(e.to_string()))
        }
        None => {
            let step = sh.rec().step.clone();
            job.engine.kill_private(&copy_dir(&job.cfg));
            let shutdown = job.shutting_down.is_cancelled();
            let why = if shutdown {
                "the agent was stopped"
            } else {
                "the operation was cancelled"
            };
            mark_copy_unusable(&job.cfg, &format!("{why} during step `{step}`"));
            if sh.standby_stopped.load(Ordering::SeqCst) {
                warn!("bringing the standby back after the interruption");
                if let Err(e) = job.restart_standby(&sh).await {
                    error!(error = %e, "the standby could not be brought back; start it by hand");
                }
            }
            // The record names the step that was interrupted, not the clean-up.
            sh.rec().step = step.clone();
            let state = if shutdown {
                OpState::Interrupted
            } else {
                OpState::Cancelled
            };
            (
                state,
                Some(format!("{why} during step `{step}`; the copy is unusable")),
            )
        }
    };
    let packed = sh.packed.lock().unwrap_or_else(|p| p.into_inner()).take();
    match backup::keep::keep_or_drop(&job.cfg, packed, state == OpState::Succeeded) {
        Ok(kept) => {
            if let (Some(k), Some(remote)) = (&kept, &job.cfg.remote) {
                let note = backup::keep::push(&job.cfg, remote, &k.path, &k.meta).await;
                sh.rec().notes.push(note);
            }
            sh.rec().backup_path = kept.map(|k| k.path);
        }
        Err(why) => {
            state = OpState::Failed;
            reason = Some(why);
        }
    }
    let rec = {
        let mut r = sh.rec();
        r.state = state;
        r.reason = reason;
        r.finished_at = Some(Timestamp::now());
        r.clone()
    };
    // The operation's span (see `ops::Operations::start`).
    let span = tracing::Span::current();
    span.record("result", crate::metrics::result_label(rec.state));
    span.record("findings", rec.findings.len() as u64);
    span.record("bytes", rec.bytes_copied);
    if let Some(lsn) = &rec.tested_lsn {
        span.record("lsn", lsn.as_str());
    }
    match rec.state {
        OpState::ErrorsFound => {
            for f in &rec.findings {
                error!(kind = %f.kind, database = %f.database, relation = %f.relation, message = %f.message, "testdb finding");
            }
        }
        OpState::Succeeded => info!(lsn = ?rec.tested_lsn, "testdb clean"),
        _ => warn!(state = ?rec.state, reason = ?rec.reason, "operation ended"),
    }
    if let Err(e) = job.journal.write(&rec) {
        error!(error = %e, "cannot write the journal");
    }
    if sh.tested.load(Ordering::SeqCst) {
        write_state_file(&job.cfg, &rec);
    }
    job.progress.send_modify(|p| {
        p.record = rec.clone();
        p.message = "finished".into();
    });
    rec
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
        let p = preconditions(&cfg(10), &standby(true), 200 * MIB, 0).unwrap();
        assert_eq!(p.data_bytes, 100 * MIB);
    }

    #[test]
    fn a_primary_is_refused() {
        let mut f = standby(true);
        f.role = Role::Primary;
        let e = preconditions(&cfg(10), &f, u64::MAX / 2, 0).err().unwrap();
        assert!(
            e.to_string().contains("is not a standby (role: primary)"),
            "{e}"
        );
    }

    #[test]
    fn a_standby_not_streaming_is_refused_with_its_state() {
        let e = preconditions(&cfg(10), &standby(false), u64::MAX / 2, 0)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("not streaming (state: catchup)"),
            "{e}"
        );
    }

    #[test]
    fn too_little_space_is_safe_mode_with_the_numbers() {
        let e = preconditions(&cfg(50), &standby(true), 120 * MIB, 0)
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("safe mode"), "{msg}");
        assert!(msg.contains("120 MiB free"), "{msg}");
        assert!(msg.contains("needs 150 MiB"), "{msg}");
        // The previous copy's space counts: it is replaced.
        assert!(preconditions(&cfg(50), &standby(true), 120 * MIB, 40 * MIB).is_ok());
    }
}
