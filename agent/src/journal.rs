//! The operation journal: one JSON file per operation under `<home>/journal/`,
//! written atomically (temporary file, fsync, rename, fsync of the directory)
//! before an operation acts and at every change of its state.
//!
//! A crash or SIGKILL leaves the last record saying "running"; at the next
//! start [`Journal::recover`] marks such records interrupted, so an operation
//! is never silently forgotten (SPEC C5). The highest set generation the agent
//! has accepted is kept in `<home>/generation` the same way (STYLE 8).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tandem_proto::model::{Facts, Finding};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal record {path} is not valid JSON")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Copy,
    Testdb,
    /// Restore the server from a backup (SPEC R1-R11).
    Restore,
    /// Copy, pack into a backup file, test unless told not to (SPEC R1, T9).
    Backup,
    /// One step of a maintenance window (fence, isolate, triage, ...).
    Maintenance,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Copy => "copy",
            OpKind::Testdb => "testdb",
            OpKind::Backup => "backup",
            OpKind::Restore => "restore",
            OpKind::Maintenance => "maintenance",
        }
    }

    /// Whether the operation copies the standby (and leaves a copy).
    pub fn copies(self) -> bool {
        matches!(self, OpKind::Copy | OpKind::Testdb | OpKind::Backup)
    }
}

/// What a finished step changed that a failure, a cancel or a crash must
/// put back. Recorded in the journal as soon as the change is made, so an
/// agent restarted after a SIGKILL runs the same undos as a cancel would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "undo")]
pub enum Undo {
    /// The standby is being stopped: start it again (when it is down) and
    /// wait until it streams; `since` gives its downtime.
    StartStandby { since: Timestamp },
    /// The server is being stopped: start it again when it is down.
    StartServer { since: Timestamp },
    /// The copy is incomplete or untested: mark it unusable.
    MarkCopyUnusable,
    /// An online backup that outlives the agent may be in force on the
    /// live database (Firebird's `nbackup -L` lock): end it.
    EndBackup,
    /// A private instance may run on the copy: kill it.
    KillPrivate { copy: PathBuf },
    /// A file being written (a backup's `.partial`): remove it.
    RemoveFile { path: PathBuf },
    /// The server may run isolated on a restored directory: stop it.
    CloseIsolated,
    /// The restored directory is in the data directory's place: move it
    /// aside as `failed-restore`.
    MoveRestoredAside,
    /// The live data directory was moved to `saved`: put it back and start it.
    PutBack { saved: PathBuf },
}

/// What a maintenance step did and found.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepOutcome {
    pub message: String,
    #[serde(default)]
    pub findings: Vec<Finding>,
    #[serde(default)]
    pub relations: Vec<RelationSize>,
    #[serde(default)]
    pub unresolved: Vec<String>,
    #[serde(default)]
    pub facts: Option<Facts>,
    #[serde(default)]
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationSize {
    pub database: String,
    pub relation: String,
    pub is_index: bool,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Running,
    Succeeded,
    ErrorsFound,
    Failed,
    Cancelled,
    Interrupted,
}

impl OpState {
    pub fn is_final(self) -> bool {
        self != OpState::Running
    }
}

/// How long one step took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    pub step: String,
    pub seconds: f64,
}

/// One operation as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRecord {
    pub id: String,
    pub kind: OpKind,
    pub set_generation: u64,
    pub state: OpState,
    /// The step running now, or the last one that ran.
    pub step: String,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub tested_lsn: Option<String>,
    pub findings: Vec<Finding>,
    pub reason: Option<String>,
    pub output_path: Option<PathBuf>,
    /// Seconds the standby was down for the copy, as measured (an online
    /// copy: `Some(0.0)`); `None` when not known.
    pub standby_downtime_seconds: Option<f64>,
    /// Copy-making operations: the mode that ran (`online`, `cold`).
    #[serde(default)]
    pub mode: Option<String>,
    /// How the files were copied (`clone`, `bytes`, ...).
    #[serde(default)]
    pub copy_method: Option<String>,
    /// A line about the copy worth a person's attention (e.g. why a clone
    /// fell back to copying bytes).
    #[serde(default)]
    pub copy_note: Option<String>,
    pub steps: Vec<StepTime>,
    pub bytes_copied: u64,
    /// Warnings worth a person's attention (e.g. data checksums are off).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// A test: what its checks covered (one line each).
    #[serde(default)]
    pub coverage: Vec<String>,
    /// The controller's request id for this operation (empty when none).
    #[serde(default)]
    pub request_id: String,
    /// The backup file this operation wrote and kept (backup operations).
    #[serde(default)]
    pub backup_path: Option<PathBuf>,
    /// What a restore did, step by step, for the person who asked.
    #[serde(default)]
    pub notes: Vec<String>,
    /// What the finished steps changed and a failure must put back, in the
    /// order they were made (undone last first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undo: Vec<Undo>,
    /// Maintenance steps: what the step did and found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<StepOutcome>,
}

impl OpRecord {
    /// A new operation, running, before its first step.
    pub fn new(id: String, kind: OpKind, set_generation: u64) -> OpRecord {
        OpRecord {
            id,
            kind,
            set_generation,
            state: OpState::Running,
            step: "pending".into(),
            started_at: Timestamp::now(),
            finished_at: None,
            tested_lsn: None,
            findings: vec![],
            reason: None,
            output_path: None,
            standby_downtime_seconds: None,
            mode: None,
            copy_method: None,
            copy_note: None,
            steps: vec![],
            bytes_copied: 0,
            warnings: vec![],
            coverage: vec![],
            request_id: String::new(),
            backup_path: None,
            notes: vec![],
            undo: vec![],
            outcome: None,
        }
    }
}

pub struct Journal {
    dir: PathBuf,
    generation_file: PathBuf,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.to_owned();
    move |source| JournalError::Io { op, path, source }
}

/// Write `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let tmp = path.with_extension("tandem-tmp");
    let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))?;
    }
    Ok(())
}

impl Journal {
    pub fn open(home: &Path) -> Result<Journal, JournalError> {
        let dir = home.join("journal");
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(Journal {
            dir,
            generation_file: home.join("generation"),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn write(&self, rec: &OpRecord) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(rec).expect("records serialize");
        write_atomic(&self.path(&rec.id), &bytes)
    }

    pub fn read(&self, id: &str) -> Result<Option<OpRecord>, JournalError> {
        let path = self.path(id);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| JournalError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Every record, newest first.
    pub fn list(&self) -> Result<Vec<OpRecord>, JournalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let path = entry.map_err(io("list", &self.dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let b = fs::read(&path).map_err(io("read", &path))?;
                match serde_json::from_slice::<OpRecord>(&b) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping a damaged journal record")
                    }
                }
            }
        }
        out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        Ok(out)
    }

    /// Mark records a previous run left "running" as interrupted.
    pub fn recover(&self) -> Result<Vec<OpRecord>, JournalError> {
        let mut recovered = Vec::new();
        for mut rec in self.list()? {
            if rec.state == OpState::Running {
                rec.state = OpState::Interrupted;
                rec.finished_at = Some(Timestamp::now());
                rec.reason = Some(format!(
                    "the agent stopped (crash or kill) during step `{}`",
                    rec.step
                ));
                self.write(&rec)?;
                recovered.push(rec);
            }
        }
        Ok(recovered)
    }

    /// The highest set generation accepted so far (0 when none).
    pub fn generation(&self) -> Result<u64, JournalError> {
        match fs::read_to_string(&self.generation_file) {
            Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io("read", &self.generation_file)(e)),
        }
    }

    pub fn set_generation(&self, g: u64) -> Result<(), JournalError> {
        write_atomic(&self.generation_file, g.to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: OpState, at: i64) -> OpRecord {
        OpRecord {
            state,
            step: "copy".into(),
            started_at: Timestamp::from_second(at).unwrap(),
            ..OpRecord::new(id.into(), OpKind::Testdb, 1)
        }
    }

    #[test]
    fn records_survive_and_running_ones_become_interrupted() {
        let home = tempfile::tempdir().unwrap();
        let j = Journal::open(home.path()).unwrap();
        j.write(&rec("a", OpState::Succeeded, 100)).unwrap();
        j.write(&rec("b", OpState::Running, 200)).unwrap();
        drop(j);
        let j = Journal::open(home.path()).unwrap();
        let recovered = j.recover().unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].id, "b");
        let b = j.read("b").unwrap().unwrap();
        assert_eq!(b.state, OpState::Interrupted);
        assert!(b.reason.unwrap().contains("during step `copy`"));
        let ids: Vec<String> = j.list().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec!["b", "a"], "newest first");
        assert!(j.recover().unwrap().is_empty(), "recovery is idempotent");
    }

    #[test]
    fn generation_is_kept() {
        let home = tempfile::tempdir().unwrap();
        let j = Journal::open(home.path()).unwrap();
        assert_eq!(j.generation().unwrap(), 0);
        j.set_generation(7).unwrap();
        assert_eq!(Journal::open(home.path()).unwrap().generation().unwrap(), 7);
    }
}
