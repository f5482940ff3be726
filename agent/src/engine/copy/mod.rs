//! The ordered copy of a PostgreSQL data directory (SPEC T2 step 2,
//! DESIGN "The engine boundary": `copy_to`).
//!
//! The copy is made in the order the data was added, so that the newest data
//! lands last: first every relation and other file, oldest-modified first
//! (phase 1), then the `pg_wal` segments in log order (phase 2), then
//! `global/pg_control` alone (phase 3). Phases run strictly one after another:
//! every file of a phase and every directory written to is fsynced before the
//! next phase starts. Inside a phase, `workers` threads take files in plan
//! order from a shared queue (`worker`).
//!
//! **How a file is copied** ([`CopyMethod`]). Where the filesystem can
//! clone (XFS with reflink, Btrfs, ...), a file is cloned whole with the
//! `FICLONE` ioctl: the copy shares the source's blocks until either is
//! written, takes almost no time and no space. Otherwise it is read in
//! chunks, hashed with BLAKE3 and written. The first refused clone (the
//! filesystem does not support it, or source and copy are on different
//! filesystems) switches the rest of the copy to bytes, and the report says
//! so ([`CopyReport::note`]). Either way files and directories are fsynced
//! and get the source's mode, times and the given owner.
//!
//! **The manifest** (`<dst>.manifest`, one `<hex>  <size>  <path>` line per
//! file in copy order) is what [`verify`] checks later. A byte copy knows
//! every hash when it ends; a clone is never read, so its hashes come from
//! reading the copy afterwards. [`copy`] writes the manifest before it
//! returns when [`CopyOptions::manifest_now`] is set (hashing any clone by
//! reading it back); otherwise the caller calls [`finish_manifest`] when it
//! likes, for example after restarting the standby, and after adding files
//! of its own (a `backup_label`, WAL segments). What the hash proves: that
//! the copy read later (tested, packed, verified) is the copy that was made.
//! For a byte copy it was computed from the bytes read from the source; for
//! a clone it was computed from the copy, so it does not prove again that
//! source and copy were equal at the moment of cloning: that is the
//! filesystem's clone's own guarantee.
//!
//! **A stopped or a live source.** By default the source is a stopped
//! server: a planned file that vanished or changed size is an error. With
//! [`CopyOptions::live_source`] (a running standby under PostgreSQL's
//! non-exclusive backup, made consistent by replaying WAL afterwards, where
//! torn pages are fine) a vanished file or directory is skipped and a file
//! is copied at the size found; [`plan_live`] leaves out what PostgreSQL's
//! base backup leaves out, WAL included (the caller adds the WAL it needs).
//!
//! The source is only ever read (DESIGN "Data safety rules" 1), and no
//! symlink is followed inside it: a symlink (a tablespace under `pg_tblspc`)
//! makes [`plan`] fail with [`CopyError::Unsupported`], and every file is
//! opened with `O_NOFOLLOW`. This module is blocking; callers run it in
//! `tokio::task::spawn_blocking`.
//!
//! Speed (`cargo bench -p tandem-agent --bench copy`): workers read, hash
//! and write in 256 KiB chunks (they stay in the L2 cache) and start each
//! file's writeback every 8 MiB; a syncer thread fsyncs finished files while
//! the workers go on with the next ones. A file counts as copied only once
//! fsynced.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use nix::libc;
use tokio_util::sync::CancellationToken;

mod manifest;
mod plan;
mod worker;
pub use manifest::{CopiedFile, finish_manifest, verify};
#[cfg(test)]
use plan::PG_CONTROL;
use plan::check_name;
pub use plan::{CopyPlan, PlanEntry, plan, plan_live};
use worker::{Progress, Shared, run_phase};

/// Read, hash and write in chunks of this size. Large enough for few system
/// calls, small enough to stay in a core's L2 cache between the read, the hash
/// and the write: on the 2-core test host, 1 MiB chunks made the whole copy
/// about twice as slow as 128-256 KiB ones (`benches/copy.rs`).
const CHUNK: usize = 256 << 10;
/// Start the writeback of a file's new data every this many bytes, so that
/// its fsync finds little left to write (see `worker::start_writeback`).
const FLUSH_EVERY: u64 = 8 << 20;
/// Copied files waiting for their fsync; a worker waits when this many are.
const SYNC_QUEUE: usize = 64;
/// Call `progress` after at least this many bytes...
const PROGRESS_BYTES: u64 = 64 << 20;
/// ...or at least this much time since the last call.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Suffix of files this module writes before renaming them into place; such
/// files in a source are never copied.
const TMP_SUFFIX: &str = ".tandem-tmp";

/// How files are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// Clone where the filesystem can, else bytes (with a note).
    #[default]
    Auto,
    /// Asked to clone; still copies bytes if the filesystem refuses (with a
    /// note that says cloning was asked).
    Clone,
    /// Never clone: read, hash and write every byte.
    Bytes,
}

impl CopyMethod {
    pub const ALL: [CopyMethod; 3] = [CopyMethod::Auto, CopyMethod::Clone, CopyMethod::Bytes];

    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Auto => "auto",
            CopyMethod::Clone => "clone",
            CopyMethod::Bytes => "bytes",
        }
    }
}

impl std::fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CopyMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        CopyMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a copy method (auto, clone or bytes)"))
    }
}

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Worker threads per phase, at least 1; see [`default_workers`].
    pub workers: usize,
    /// Owner (uid, gid) of every created file and directory (the agent runs
    /// as root, the copy must belong to `postgres`); `None` leaves them as
    /// created.
    pub owner: Option<(u32, u32)>,
    /// Clone or copy bytes; default [`CopyMethod::Auto`].
    pub method: CopyMethod,
    /// Write the manifest before [`copy`] returns (default). When false the
    /// caller writes it later with [`finish_manifest`].
    pub manifest_now: bool,
    /// The source is a running server (default false, a stopped one): see
    /// the module documentation.
    pub live_source: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            workers: default_workers(),
            owner: None,
            method: CopyMethod::Auto,
            manifest_now: true,
            live_source: false,
        }
    }
}

/// Workers for this host: its available parallelism, clamped to 2..=8 (the
/// copy waits on I/O, so two workers pay off even on one core).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Files copied (`files_copied.len()`).
    pub files: usize,
    /// Bytes copied (cloned or written).
    pub bytes: u64,
    /// The manifest, when [`copy`] wrote it ([`CopyOptions::manifest_now`]).
    pub manifest: Option<PathBuf>,
    pub elapsed: Duration,
    /// What ran: [`CopyMethod::Clone`] when every file was cloned, else
    /// [`CopyMethod::Bytes`].
    pub method: CopyMethod,
    /// Why the method that ran is not the one asked for, for people.
    pub note: Option<String>,
    /// Every file copied, in copy order, with its hash when it was read;
    /// what [`finish_manifest`] takes as `known`.
    pub files_copied: Vec<CopiedFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot {op} {path}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists; the previous copy must be deleted first")]
    Exists { path: PathBuf },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path} is not a PostgreSQL data directory (it has no global/pg_control)")]
    NotDataDir { path: PathBuf },
    #[error("{path} vanished after the copy was planned; is the server really stopped?")]
    Vanished { path: PathBuf },
    #[error(
        "{path} changed size after the copy was planned ({expected} bytes planned, {found} found); is the server really stopped?"
    )]
    Changed {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("the copy was cancelled")]
    Cancelled,
    #[error("{path} does not match the manifest: expected {expected}, found {found}")]
    Mismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("manifest {path} line {line}: {what}")]
    BadManifest {
        path: PathBuf,
        line: usize,
        what: String,
    },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// Where the manifest of the copy `dst` lives: beside it, named
/// `<dst>.manifest`.
pub fn manifest_path(dst: &Path) -> Result<PathBuf, CopyError> {
    let name = dst.file_name().ok_or_else(|| CopyError::Unsupported {
        path: dst.to_owned(),
        what: "a destination without a final name".into(),
    })?;
    let mut m: OsString = name.to_owned();
    m.push(".manifest");
    Ok(parent_of(dst).join(m))
}

/// `base` joined with the relative `rel`; `base` itself for an empty `rel`
/// (no trailing slash in messages).
fn under(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_owned()
    } else {
        base.join(rel)
    }
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Copy `plan` from `src` into `dst`, which must not exist; see the module
/// documentation for the order and the guarantees.
///
/// Calls `progress(bytes copied so far)` at most about every 64 MiB or
/// 200 ms, and once at the end with the total. `cancel` is checked between
/// chunks: a cancelled copy stops within one chunk per worker and returns
/// [`CopyError::Cancelled`], leaving the partial `dst` for the caller to
/// delete. With [`CopyOptions::manifest_now`], writes and fsyncs the
/// manifest `<dst>.manifest` last (cloned files are read back to hash them;
/// that reading is not in `progress`).
pub fn copy(
    plan: &CopyPlan,
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &CancellationToken,
) -> Result<CopyReport, CopyError> {
    copy_observed(plan, src, dst, opts, progress, cancel, &|_| {})
}

/// Steps of a copy, for tests that check the ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Plan entry `i` is written and fsynced.
    FileDone(usize),
    /// Every file of the phase and every directory written to is fsynced.
    PhaseSynced(u8),
}

/// One directory of the copy: where, the source's mode and times, and the
/// last phase that puts a file directly in it (its mode and times are set
/// after that phase). `None` in the list: it vanished from a live source.
struct DirInfo {
    rel: PathBuf,
    mode: u32,
    times: FileTimes,
    last_phase: u8,
}

fn copy_observed(
    plan: &CopyPlan,
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &CancellationToken,
    observe: &(dyn Fn(Step) + Sync),
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    if cancel.is_cancelled() {
        return Err(CopyError::Cancelled);
    }
    manifest_path(dst)?;
    let mut by_phase: [Vec<usize>; 3] = Default::default();
    for (i, e) in plan.entries.iter().enumerate() {
        check_name(&e.rel)?;
        match e.phase {
            1..=3 => by_phase[usize::from(e.phase - 1)].push(i),
            p => {
                return Err(CopyError::Unsupported {
                    path: e.rel.clone(),
                    what: format!("plan phase {p}"),
                });
            }
        }
    }
    for d in &plan.dirs {
        check_name(d)?;
    }

    // Every entry's directory must be in the plan; checked before anything
    // is created.
    let dir_index: BTreeMap<&Path, usize> = std::iter::once(Path::new(""))
        .chain(plan.dirs.iter().map(PathBuf::as_path))
        .enumerate()
        .map(|(i, d)| (d, i))
        .collect();
    let mut last_phase = vec![1u8; dir_index.len()];
    // Directories each phase writes files into.
    let mut written: [BTreeSet<usize>; 3] = Default::default();
    for e in &plan.entries {
        let parent = e.rel.parent().unwrap_or(Path::new(""));
        let Some(&di) = dir_index.get(parent) else {
            return Err(CopyError::Unsupported {
                path: e.rel.clone(),
                what: "a plan entry whose directory is not in the plan".into(),
            });
        };
        last_phase[di] = last_phase[di].max(e.phase);
        written[usize::from(e.phase - 1)].insert(di);
    }

    let dirs = make_dirs(plan, src, dst, opts, &last_phase)?;
    let shared = Shared::new(plan, src, dst, opts, progress, cancel, observe);
    for phase in 1..=3u8 {
        let p = usize::from(phase - 1);
        run_phase(&shared, &by_phase[p], opts.workers.max(1))?;
        // Directories done receiving files get the source's mode and times,
        // then every directory written to in this phase is fsynced (in phase
        // 1, all of them: they were created).
        for d in dirs.iter().flatten().filter(|d| d.last_phase == phase) {
            finish_dir(&under(dst, &d.rel), d, opts.owner)?;
        }
        let to_sync: Vec<usize> = if phase == 1 {
            (0..dirs.len()).collect()
        } else {
            written[p].iter().copied().collect()
        };
        for di in to_sync {
            check_cancel(cancel)?;
            if let Some(d) = &dirs[di] {
                fsync_dir(&under(dst, &d.rel))?;
            }
        }
        observe(Step::PhaseSynced(phase));
    }

    let files_copied: Vec<CopiedFile> = plan
        .entries
        .iter()
        .zip(&shared.done)
        .filter_map(|(e, done)| {
            done.get().map(|&(size, hash)| CopiedFile {
                rel: e.rel.clone(),
                size,
                hash,
            })
        })
        .collect();
    let (method, note) = shared.outcome(opts.method);
    let bytes = shared.progress.finish();
    let manifest = if opts.manifest_now {
        Some(finish_manifest(
            dst,
            &files_copied,
            opts.workers.max(1),
            &|_| {},
            cancel,
        )?)
    } else {
        // Makes the copy's directory entry durable.
        fsync_dir(&parent_of(dst))?;
        None
    };
    Ok(CopyReport {
        files: files_copied.len(),
        bytes,
        manifest,
        elapsed: started.elapsed(),
        method,
        note,
        files_copied,
    })
}

/// Create the copy's root (it must not exist) and its directories, parents
/// first, with the given owner; what each one gets when no more files go
/// into it. A directory that vanished from a live source is `None`.
fn make_dirs(
    plan: &CopyPlan,
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    last_phase: &[u8],
) -> Result<Vec<Option<DirInfo>>, CopyError> {
    let mut dirs: Vec<Option<DirInfo>> = Vec::with_capacity(last_phase.len());
    for (di, rel) in std::iter::once(Path::new(""))
        .chain(plan.dirs.iter().map(PathBuf::as_path))
        .enumerate()
    {
        let root = rel.as_os_str().is_empty();
        let s = under(src, rel);
        let meta = match fs::symlink_metadata(&s) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound && opts.live_source && !root => {
                dirs.push(None);
                continue;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CopyError::Vanished { path: s.clone() });
            }
            Err(e) => return Err(io_err(&s, "read the metadata of")(e)),
        };
        if !meta.is_dir() && !root {
            return Err(CopyError::Unsupported {
                path: s,
                what: "a planned directory that is no longer a directory".into(),
            });
        }
        let d = under(dst, rel);
        match DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists && root => {
                return Err(CopyError::Exists { path: d.clone() });
            }
            // Its parent vanished from the live source after all.
            Err(e) if e.kind() == ErrorKind::NotFound && opts.live_source => {
                dirs.push(None);
                continue;
            }
            Err(e) => return Err(io_err(&d, "create the directory")(e)),
        }
        if let Some((uid, gid)) = opts.owner {
            std::os::unix::fs::lchown(&d, Some(uid), Some(gid))
                .map_err(io_err(&d, "change the owner of"))?;
        }
        dirs.push(Some(DirInfo {
            rel: rel.to_owned(),
            mode: meta.mode() & 0o7777,
            times: times_of(&meta),
            last_phase: last_phase[di],
        }));
    }
    Ok(dirs)
}

fn times_of(meta: &fs::Metadata) -> FileTimes {
    let mut t = FileTimes::new();
    if let Ok(a) = meta.accessed() {
        t = t.set_accessed(a);
    }
    if let Ok(m) = meta.modified() {
        t = t.set_modified(m);
    }
    t
}

fn check_cancel(cancel: &CancellationToken) -> Result<(), CopyError> {
    if cancel.is_cancelled() {
        Err(CopyError::Cancelled)
    } else {
        Ok(())
    }
}

fn open_dir(path: &Path) -> Result<File, CopyError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path, "open the directory"))
}

fn fsync_dir(path: &Path) -> Result<(), CopyError> {
    open_dir(path)?
        .sync_all()
        .map_err(io_err(path, "fsync the directory"))
}

/// Give a copied directory the source's mode and times (and the owner again:
/// chmod as root must not be undone by a later chown).
fn finish_dir(path: &Path, d: &DirInfo, owner: Option<(u32, u32)>) -> Result<(), CopyError> {
    let f = open_dir(path)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .map_err(io_err(path, "change the owner of"))?;
    }
    f.set_permissions(fs::Permissions::from_mode(d.mode))
        .map_err(io_err(path, "set the mode of"))?;
    f.set_times(d.times)
        .map_err(io_err(path, "set the times of"))
}

#[cfg(test)]
mod clone_tests;
#[cfg(test)]
pub(crate) mod tests;
