//! A SIMULATED engine, for scale benchmarks of the controller only.
//!
//! [`SimulatedEngine`] answers the [`Engine`] trait without any database:
//! every step sleeps for a fixed, configured time ([`SimulatedDurations`]),
//! the facts describe a healthy server (a streaming standby, or a primary),
//! the "copy" writes a marker file and no data, the "checks" run no tool and
//! find nothing. It exists so that one machine can run a thousand agents
//! (`tests/benches/fleet_sim.rs`) and measure what the controller costs per
//! test dispatched; the agents themselves run their real code (gRPC server,
//! mTLS, registration and heartbeats, operations, journal, the testdb step
//! list and its preconditions) on top of it.
//!
//! It never stands in for a feature in a test that claims the feature works:
//! nothing is stopped, copied or checked here. Every claim about testdb is
//! proven on [`super::postgres::PostgresEngine`] with real PostgreSQL.
//!
//! The simulation is honest towards the code above it: the testdb
//! preconditions are not skipped but satisfied through the facts (role
//! standby, WAL receiver streaming, a declared data size that the real free
//! space check of the archive directory must accommodate); while "stopped"
//! the facts say the server is stopped, as `pg_ctl status` would; the
//! private instance is opened on the directory the copy step created, and
//! refused when it is missing. It needs no `postgres` OS user and runs no
//! process.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tandem_proto::model::{Facts, Lsn, Role, ServerState};
use tokio_util::sync::CancellationToken;

use super::{
    BackupEnd, CheckReport, CopyDone, CopyRequest, Engine, EngineError, PrivateInstance,
    ProgressFn, copy,
};

/// The name of the marker file a simulated copy holds instead of data.
pub const MARKER: &str = "SIMULATED_COPY";

/// How long each simulated step takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedDurations {
    /// Reading the facts (`pg_ctl status` + one query for PostgreSQL).
    pub facts: Duration,
    pub stop: Duration,
    pub copy: Duration,
    pub start: Duration,
    pub open_private: Duration,
    pub checks: Duration,
    pub close_private: Duration,
    /// The offline checks on the stopped copy (`pg_checksums`).
    pub checksums: Duration,
}

impl SimulatedDurations {
    /// Every step instantaneous.
    pub const ZERO: SimulatedDurations = SimulatedDurations {
        facts: Duration::ZERO,
        stop: Duration::ZERO,
        copy: Duration::ZERO,
        start: Duration::ZERO,
        open_private: Duration::ZERO,
        checks: Duration::ZERO,
        close_private: Duration::ZERO,
        checksums: Duration::ZERO,
    };

    /// A test of `total`, spread over the steps roughly as a real one is
    /// (copy and checks dominate); facts instantaneous.
    pub fn spread(total: Duration) -> SimulatedDurations {
        let part = |percent: u32| total * percent / 100;
        let parts = SimulatedDurations {
            facts: Duration::ZERO,
            stop: part(5),
            copy: part(40),
            start: part(5),
            open_private: part(10),
            checks: part(30),
            close_private: part(5),
            checksums: Duration::ZERO,
        };
        // Whatever integer division lost goes to the last step.
        SimulatedDurations {
            checksums: total.saturating_sub(parts.test_total()),
            ..parts
        }
    }

    /// The time of one whole test: every step, facts not included.
    pub fn test_total(&self) -> Duration {
        self.stop
            + self.copy
            + self.start
            + self.open_private
            + self.checks
            + self.close_private
            + self.checksums
    }
}

/// A simulated database server; see the module documentation. Only for
/// scale benchmarks.
#[derive(Debug)]
pub struct SimulatedEngine {
    data_dir: PathBuf,
    role: Role,
    data_dir_bytes: u64,
    durations: SimulatedDurations,
    born: Instant,
    state: Mutex<SimState>,
}

#[derive(Debug)]
struct SimState {
    running: bool,
    /// The log position when the server was last stopped: what a copy holds.
    stopped_at: Option<Lsn>,
}

/// Where the simulated log starts (PostgreSQL's first segment).
const FIRST_LSN: u64 = 0x0300_0000;
/// How fast the simulated log grows.
const LOG_BYTES_PER_SEC: u64 = 64 * 1024;

impl SimulatedEngine {
    /// A running streaming standby at `data_dir` (which need not exist) of
    /// 16 MiB, with every step instantaneous.
    pub fn new(data_dir: impl Into<PathBuf>) -> SimulatedEngine {
        SimulatedEngine {
            data_dir: data_dir.into(),
            role: Role::Standby,
            data_dir_bytes: 16 * 1024 * 1024,
            durations: SimulatedDurations::ZERO,
            born: Instant::now(),
            state: Mutex::new(SimState {
                running: true,
                stopped_at: None,
            }),
        }
    }

    /// `Role::Standby` (streaming) or `Role::Primary`.
    pub fn with_role(mut self, role: Role) -> SimulatedEngine {
        self.role = role;
        self
    }

    pub fn with_durations(mut self, durations: SimulatedDurations) -> SimulatedEngine {
        self.durations = durations;
        self
    }

    /// The size the facts report; testdb's free space check needs this much
    /// (plus its reserve) free on the real archive filesystem.
    pub fn with_data_dir_bytes(mut self, bytes: u64) -> SimulatedEngine {
        self.data_dir_bytes = bytes;
        self
    }

    pub fn durations(&self) -> SimulatedDurations {
        self.durations
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log position now: it grows with time while the server runs.
    fn lsn_now(&self) -> Lsn {
        let ms = self.born.elapsed().as_millis() as u64;
        Lsn(FIRST_LSN + ms * LOG_BYTES_PER_SEC / 1000)
    }

    fn io(op: &'static str, path: &Path, source: std::io::Error) -> EngineError {
        EngineError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Sleep `d` unless `cancel` fires first (then the copy is cancelled).
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> Result<(), EngineError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(copy::CopyError::Cancelled.into()),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

/// Append a note to the check output, as the real checks append the tools'.
fn append(out: &Path, text: &str) -> Result<(), EngineError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| SimulatedEngine::io("append to", out, e))
}

impl Engine for SimulatedEngine {
    async fn facts(&self) -> Facts {
        tokio::time::sleep(self.durations.facts).await;
        let (running, stopped_at) = {
            let s = self.lock();
            (s.running, s.stopped_at)
        };
        let data_dir = self.data_dir.to_string_lossy();
        if !running {
            let mut f = Facts::unreachable(
                "simulated",
                &data_dir,
                ServerState::Stopped,
                format!(
                    "the simulated server at {data_dir} is stopped (a simulated test is running)"
                ),
            );
            f.data_dir_bytes = self.data_dir_bytes;
            f.server_version = "simulated".into();
            f.received_lsn = stopped_at;
            f.replayed_lsn = stopped_at;
            return f;
        }
        let lsn = self.lsn_now();
        let standby = self.role == Role::Standby;
        Facts {
            engine: "simulated".into(),
            server_version: "simulated".into(),
            server_state: ServerState::Running,
            role: if standby {
                Role::Standby
            } else {
                Role::Primary
            },
            data_dir: data_dir.into_owned(),
            data_dir_bytes: self.data_dir_bytes,
            current_lsn: (!standby).then_some(lsn),
            received_lsn: standby.then_some(lsn),
            replayed_lsn: standby.then_some(lsn),
            wal_receiver_status: standby.then(|| "streaming".to_owned()),
            fully_received: standby,
            replay_lag_bytes: 0,
            problem: None,
            observed_at: jiff::Timestamp::now(),
            // A simulated primary replicates asynchronously.
            synchronous_standby_names: (!standby).then(String::new),
            replication: vec![],
            wal_receiver_application_name: standby.then(|| "walreceiver".to_owned()),
            single_member: false,
        }
    }

    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn no_offline_check(&self, inst: &PrivateInstance) -> Option<String> {
        (!inst.data_checksums).then(|| super::postgres::NO_CHECKSUMS.to_owned())
    }

    async fn stop(&self) -> Result<(), EngineError> {
        if !self.lock().running {
            return Ok(());
        }
        tokio::time::sleep(self.durations.stop).await;
        let lsn = self.lsn_now();
        let mut s = self.lock();
        s.running = false;
        s.stopped_at = Some(lsn);
        Ok(())
    }

    async fn start(&self) -> Result<(), EngineError> {
        if self.lock().running {
            return Ok(());
        }
        tokio::time::sleep(self.durations.start).await;
        self.lock().running = true;
        Ok(())
    }

    /// Writes `dst/SIMULATED_COPY`; no data. Progress goes from 0 to the
    /// declared size in ten ticks.
    async fn copy_to(
        &self,
        dst: &Path,
        _req: CopyRequest,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<CopyDone, EngineError> {
        if dst.exists() {
            return Err(copy::CopyError::Exists {
                path: dst.to_owned(),
            }
            .into());
        }
        std::fs::create_dir_all(dst).map_err(|e| Self::io("create", dst, e))?;
        let marker = dst.join(MARKER);
        std::fs::write(
            &marker,
            "a simulated copy (tandem_agent::engine::simulated): no data was copied\n",
        )
        .map_err(|e| Self::io("write", &marker, e))?;
        const TICKS: u32 = 10;
        for i in 1..=TICKS {
            sleep_or_cancel(self.durations.copy / TICKS, &cancel).await?;
            progress(self.data_dir_bytes * u64::from(i) / u64::from(TICKS));
        }
        Ok(CopyDone {
            bytes: self.data_dir_bytes,
            method: copy::CopyMethod::Bytes,
            note: None,
            files: Vec::new(),
        })
    }

    type Backup = Lsn;

    async fn start_backup(&self) -> Result<Lsn, EngineError> {
        if !self.lock().running {
            return Err(EngineError::Refused(
                "the simulated standby is stopped".into(),
            ));
        }
        Ok(self.lsn_now())
    }

    async fn stop_backup(&self, start: Lsn, _dst: &Path) -> Result<BackupEnd, EngineError> {
        Ok(BackupEnd {
            lsns: Some((start, self.lsn_now())),
            added: Vec::new(),
            wal_bytes: 0,
        })
    }

    async fn open_private(
        &self,
        dir: &Path,
        _timeout: Duration,
    ) -> Result<PrivateInstance, EngineError> {
        let marker = dir.join(MARKER);
        if !marker.is_file() {
            return Err(Self::io(
                "open a private instance on",
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no simulated copy there"),
            ));
        }
        tokio::time::sleep(self.durations.open_private).await;
        let lsn = self.lock().stopped_at.unwrap_or_else(|| self.lsn_now());
        Ok(PrivateInstance {
            data_dir: dir.to_owned(),
            socket_dir: dir.with_file_name("private.sock"),
            port: 5432,
            lsn: Some(lsn),
            data_checksums: true,
        })
    }

    async fn check_private(
        &self,
        _inst: &PrivateInstance,
        logical_read: bool,
        out: &Path,
    ) -> Result<CheckReport, EngineError> {
        tokio::time::sleep(self.durations.checks).await;
        append(
            out,
            &format!(
                "==== simulated checks (no tool was run; logical read: {logical_read}) ====\n"
            ),
        )?;
        Ok(CheckReport::default())
    }

    async fn close_private(&self, _inst: &PrivateInstance) -> Result<(), EngineError> {
        tokio::time::sleep(self.durations.close_private).await;
        Ok(())
    }

    async fn check_offline(&self, _dir: &Path, out: &Path) -> Result<CheckReport, EngineError> {
        tokio::time::sleep(self.durations.checksums).await;
        append(
            out,
            "==== simulated offline checks (no tool was run) ====\n",
        )?;
        Ok(CheckReport::default())
    }

    /// Nothing to kill: no process was started.
    fn kill_private(&self, _dir: &Path) {}

    async fn copy_lsns(&self, _dir: &Path) -> Result<(Lsn, Lsn), EngineError> {
        let now = self.lsn_now();
        Ok((now, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_adds_up_to_the_total() {
        for ms in [0, 1, 7, 2000, 12345] {
            let total = Duration::from_millis(ms);
            assert_eq!(SimulatedDurations::spread(total).test_total(), total);
        }
    }

    #[tokio::test]
    async fn a_standby_streams_is_stopped_while_stopped_and_streams_again() {
        let e = SimulatedEngine::new("/simulated/db2");
        let f = e.facts().await;
        assert_eq!(f.role, Role::Standby);
        assert!(f.fully_received && f.healthy() && f.problem.is_none());
        e.stop().await.unwrap();
        let f = e.facts().await;
        assert_eq!(f.server_state, ServerState::Stopped);
        assert!(!f.healthy() && f.problem.is_some());
        e.start().await.unwrap();
        assert!(e.facts().await.fully_received);

        let p = SimulatedEngine::new("/simulated/db1").with_role(Role::Primary);
        let f = p.facts().await;
        assert_eq!(f.role, Role::Primary);
        assert!(f.healthy() && f.current_lsn.is_some() && !f.fully_received);
    }

    #[tokio::test]
    async fn the_copy_is_a_marker_and_the_private_instance_needs_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("copy");
        let e = SimulatedEngine::new("/simulated/db2").with_data_dir_bytes(1000);
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s = seen.clone();
        let progress: ProgressFn = std::sync::Arc::new(move |n| {
            s.store(n, std::sync::atomic::Ordering::SeqCst);
        });
        assert!(e.open_private(&dst, Duration::ZERO).await.is_err());
        e.stop().await.unwrap();
        let req = CopyRequest {
            workers: 1,
            method: copy::CopyMethod::Bytes,
            online: false,
        };
        let done = e
            .copy_to(
                &dst,
                req.clone(),
                progress.clone(),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(done.bytes, 1000);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1000);
        assert!(dst.join(MARKER).is_file());
        // The contract: the destination must not exist.
        assert!(
            e.copy_to(&dst, req, progress, CancellationToken::new())
                .await
                .is_err()
        );
        let inst = e.open_private(&dst, Duration::ZERO).await.unwrap();
        let out = tmp.path().join("testdb.out");
        assert!(
            e.check_private(&inst, true, &out)
                .await
                .unwrap()
                .findings
                .is_empty()
        );
        assert!(std::fs::read_to_string(&out).unwrap().contains("simulated"));
    }
}
