//! One backup file: a stopped copy of a data directory as a tar stream,
//! compressed with zstd on several threads, a BLAKE3 manifest inside.
//!
//! Layout of the tar stream, in order:
//! 1. `tandem-backup.json` ([`BackupMeta`]: kind, time, LSN range, unpacked
//!    size), first, so a listing or a free-space check reads only the
//!    beginning of the file ([`read_meta`]);
//! 2. `data/<dir>/` for every directory (PostgreSQL needs its empty ones);
//! 3. `data/<file>` in the copy's plan order (`engine::copy::plan`: oldest
//!    data first, then WAL, then `global/pg_control`), without the WAL
//!    segments a restore cannot need (before the redo point, or recycled);
//! 4. `MANIFEST.blake3`, last: `<blake3>  <size>  <path>` per file, the same
//!    format as the copy's manifest.
//!
//! Packing runs two stages at once, as `tar | zstd -T0` does: a reader
//! thread reads and hashes the files in 1 MiB chunks and hands them over a
//! bounded channel; the calling thread writes the tar stream into libzstd's
//! multi-threaded encoder, whose own workers compress. The file is written as
//! `.<name>.partial` and fsynced; [`Packed::commit`] renames it into place
//! (and fsyncs the directory), [`Packed::discard`] deletes it.
//!
//! Unpacking also runs two stages (this thread decompresses and makes the
//! files, a writer thread hashes and writes their data). It refuses anything but the layout above, any path that is not
//! plain and relative, and any file whose size or hash differs from the
//! manifest; it fsyncs the unpacked tree (one `syncfs`) before it returns.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::libc;
use serde::{Deserialize, Serialize};
use tandem_proto::model::Lsn;
use tokio_util::sync::CancellationToken;

use super::name::{BackupKind, BackupName};
use crate::engine::copy::{self, CopyError};

pub const META_ENTRY: &str = "tandem-backup.json";
pub const MANIFEST_ENTRY: &str = "MANIFEST.blake3";
const DATA_PREFIX: &str = "data";
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reader and the compressor.
const QUEUE: usize = 16;
const PROGRESS_BYTES: u64 = 64 << 20;

/// What a backup is, stored first in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    pub format: u32,
    pub kind: BackupKind,
    pub taken_at: Timestamp,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub set: String,
    pub member: String,
    /// Files and bytes once unpacked (SPEC R11 needs this before unpacking).
    pub files: u64,
    pub unpacked_bytes: u64,
    /// The copy passed testdb before this file was kept (a backup whose
    /// test found errors is never kept).
    #[serde(default)]
    pub verified: bool,
}

impl BackupMeta {
    pub fn name(&self) -> BackupName {
        BackupName {
            kind: self.kind,
            taken_at: self.taken_at,
            start_lsn: self.start_lsn,
            end_lsn: self.end_lsn,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// zstd worker threads (0: compress on the calling thread); default
    /// twice the host's cores, at least 4.
    pub threads: u32,
    /// zstd level (3 is zstd's own default, as `zstd -T0`).
    pub level: i32,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            // More compression jobs than cores keep the feeding thread from
            // waiting on a full job queue: on the 2-core bench host, 4
            // threads packed 1.2-1.6x as fast as `tar | zstd -T0`, 2
            // threads 0.94-0.99x (`benches/pack.rs`).
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32 * 2)
                .unwrap_or(4)
                .max(4),
            level: 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("the operation was cancelled")]
    Cancelled,
    #[error("{path} is not a Tandem backup: {what}")]
    NotABackup { path: PathBuf, what: String },
    #[error("{path} is damaged: {file}: expected {expected}, found {found}; use another backup")]
    Mismatch {
        path: PathBuf,
        file: String,
        expected: String,
        found: String,
    },
    #[error(
        "{path} changed while it was packed ({expected} bytes planned, {found} read); is the copy really stopped?"
    )]
    Changed {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path} already exists")]
    Exists { path: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A packed backup waiting to be committed (renamed into place) or discarded.
#[derive(Debug)]
pub struct Packed {
    pub partial: PathBuf,
    pub path: PathBuf,
    pub meta: BackupMeta,
    /// Size of the backup file.
    pub packed_bytes: u64,
    pub elapsed: Duration,
}

impl Packed {
    /// Rename the fsynced file into its backup name and fsync the directory.
    pub fn commit(&self) -> Result<PathBuf, BackupError> {
        fs::rename(&self.partial, &self.path).map_err(io_err("rename into place", &self.path))?;
        sync_dir(parent(&self.path))?;
        Ok(self.path.clone())
    }

    /// Delete the partial file (a copy that failed its test is not kept).
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.partial);
    }
}

fn parent(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory", dir))
}

enum Msg {
    File {
        rel: PathBuf,
        size: u64,
        mode: u32,
        mtime: u64,
    },
    /// A buffer and how many of its bytes are data.
    Chunk(Vec<u8>, usize),
    Failed(BackupError),
}

/// Pack the stopped copy `src` into `<dir>/.<name>.partial`; see the module
/// documentation. `meta.files` and `meta.unpacked_bytes` are filled in from
/// the plan. Calls `progress(bytes read)` about every 64 MiB and at the end.
pub fn pack(
    src: &Path,
    dir: &Path,
    mut meta: BackupMeta,
    opts: PackOptions,
    progress: &dyn Fn(u64),
    cancel: &CancellationToken,
) -> Result<Packed, BackupError> {
    let t0 = Instant::now();
    let plan = packed_plan(src, meta.start_lsn)?;
    meta.files = plan.entries.len() as u64;
    meta.unpacked_bytes = plan.total_bytes;
    let path = dir.join(meta.name().file_name());
    if path.exists() {
        return Err(BackupError::Exists { path });
    }
    let partial = dir.join(format!(".{}.partial", meta.name().file_name()));
    let _ = fs::remove_file(&partial);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io_err("create", &partial))?;
    let written = write_stream(src, &plan, &meta, file, &partial, opts, progress, cancel);
    match written {
        Ok(packed_bytes) => Ok(Packed {
            partial,
            path,
            meta,
            packed_bytes,
            elapsed: t0.elapsed(),
        }),
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// What [`pack`] puts into a backup of the copy `src` whose redo point is
/// `start` (0: unknown): the copy's plan without the WAL it cannot need.
pub fn packed_plan(src: &Path, start: Lsn) -> Result<copy::CopyPlan, BackupError> {
    let mut plan = copy::plan(src)?;
    let skipped = leave_out_unneeded_wal(src, &mut plan, start);
    if skipped > 0 {
        tracing::info!(
            segments = skipped,
            "WAL segments the backup cannot need are left out"
        );
    }
    Ok(plan)
}

/// Leave out the `pg_wal` segments a restore of this copy cannot need, as
/// PostgreSQL's own base backup does: those before the segment of the
/// copy's redo point `start` (when known), and recycled or pre-allocated
/// ones, whose first page header is not for their own position. Returns
/// how many were left out. The check reads each segment's first 16 bytes
/// (`xlp_pageaddr` at offset 8, in the host's byte order, as PostgreSQL
/// wrote it on this host).
fn leave_out_unneeded_wal(src: &Path, plan: &mut copy::CopyPlan, start: Lsn) -> usize {
    let before = plan.entries.len();
    plan.entries.retain(|e| {
        let Some(name) = e.rel.strip_prefix("pg_wal").ok().and_then(|r| r.to_str()) else {
            return true;
        };
        let Some((_, log, seg)) = super::wal::parse_segment(name) else {
            return true;
        };
        let size = e.size;
        if !size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&size) {
            return true;
        }
        let segno = u64::from(log) * (0x1_0000_0000 / size) + u64::from(seg);
        if start.0 > 0 && segno < start.0 / size {
            return false;
        }
        let mut head = [0u8; 16];
        let read = File::open(src.join(&e.rel)).and_then(|mut f| f.read_exact(&mut head));
        if read.is_err() {
            // Unreadable here: the packing itself will say so.
            return true;
        }
        let pageaddr = u64::from_ne_bytes(head[8..16].try_into().expect("8 bytes"));
        pageaddr == segno * size
    });
    plan.total_bytes = plan.entries.iter().map(|e| e.size).sum();
    before - plan.entries.len()
}

#[allow(clippy::too_many_arguments)]
fn write_stream(
    src: &Path,
    plan: &copy::CopyPlan,
    meta: &BackupMeta,
    file: File,
    partial: &Path,
    opts: PackOptions,
    progress: &dyn Fn(u64),
    cancel: &CancellationToken,
) -> Result<u64, BackupError> {
    let werr = |source: io::Error| BackupError::Io {
        op: "write",
        path: partial.to_owned(),
        source,
    };
    let mut enc =
        zstd::stream::write::Encoder::new(BufWriter::with_capacity(CHUNK, file), opts.level)
            .map_err(werr)?;
    enc.multithread(opts.threads).map_err(werr)?;
    enc.include_checksum(true).map_err(werr)?;
    let mut tar = tar::Builder::new(enc);
    let now = Timestamp::now().as_second().max(0) as u64;

    let meta_json = serde_json::to_vec_pretty(meta).expect("meta serializes");
    append_bytes(&mut tar, META_ENTRY, &meta_json, now).map_err(werr)?;
    for d in &plan.dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        h.set_mtime(now);
        tar.append_data(&mut h, Path::new(DATA_PREFIX).join(d), io::empty())
            .map_err(werr)?;
    }

    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    // Buffers go back to the reader once written: no allocation per chunk.
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..QUEUE + 2 {
        free_tx.send(vec![0u8; CHUNK]).expect("receiver alive");
    }
    let manifest = std::thread::scope(|s| -> Result<String, BackupError> {
        let reader = s.spawn(|| read_files(src, plan, tx, free_rx, cancel));
        let mut done: u64 = 0;
        let mut reported: u64 = 0;
        let mut failed: Option<BackupError> = None;
        // The tar header goes through the builder (long names, checksum);
        // the data is written straight into the encoder in whole chunks
        // (the builder would copy it 8 KiB at a time), then padded to 512.
        let mut remaining: u64 = 0;
        while let Ok(msg) = rx.recv() {
            let written = match msg {
                Msg::File {
                    rel,
                    size,
                    mode,
                    mtime,
                } => {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(mode & 0o7777);
                    h.set_size(size);
                    h.set_mtime(mtime);
                    remaining = size;
                    tar.append_data(&mut h, Path::new(DATA_PREFIX).join(&rel), io::empty())
                }
                Msg::Chunk(buf, len) => {
                    let w = tar.get_mut().write_all(&buf[..len]);
                    let _ = free_tx.send(buf);
                    remaining -= len as u64;
                    done += len as u64;
                    if done - reported >= PROGRESS_BYTES {
                        progress(done);
                        reported = done;
                    }
                    match w {
                        Ok(()) if remaining == 0 => pad_entry(tar.get_mut(), len),
                        other => other,
                    }
                }
                Msg::Failed(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if let Err(e) = written {
                failed = Some(werr(e));
                break;
            }
        }
        // Unblocks the reader if we stopped early.
        drop(rx);
        drop(free_tx);
        let read = reader.join().expect("the reader thread does not panic");
        if let Some(e) = failed {
            return Err(e);
        }
        progress(done);
        read
    })?;
    append_bytes(&mut tar, MANIFEST_ENTRY, manifest.as_bytes(), now).map_err(werr)?;
    let enc = tar.into_inner().map_err(werr)?;
    let buf = enc.finish().map_err(werr)?;
    let file = buf.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", partial))?;
    let len = file.metadata().map_err(io_err("stat", partial))?.len();
    Ok(len)
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    mtime: u64,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(bytes.len() as u64);
    h.set_mtime(mtime);
    tar.append_data(&mut h, name, bytes)
}

/// Zeros after a file's data up to the next 512-byte block. Chunks are
/// whole multiples of 512 except a file's last, so the last one's length
/// says how much is missing.
fn pad_entry<W: Write>(w: &mut W, last_len: usize) -> io::Result<()> {
    let rest = last_len % 512;
    if rest == 0 {
        return Ok(());
    }
    w.write_all(&[0u8; 512][..512 - rest])
}

/// The reader thread: every planned file, read and hashed in chunks, sent in
/// order. Returns the manifest.
fn read_files(
    src: &Path,
    plan: &copy::CopyPlan,
    tx: mpsc::SyncSender<Msg>,
    free: mpsc::Receiver<Vec<u8>>,
    cancel: &CancellationToken,
) -> Result<String, BackupError> {
    let mut manifest = String::new();
    let fail = |e: BackupError| {
        let _ = tx.send(Msg::Failed(e));
    };
    for entry in &plan.entries {
        let path = src.join(&entry.rel);
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .and_then(|f| f.metadata().map(|m| (f, m)));
        let (mut f, m) = match opened {
            Ok(x) => x,
            Err(e) => {
                fail(io_err("open", &path)(e));
                return Ok(manifest);
            }
        };
        if m.len() != entry.size {
            fail(BackupError::Changed {
                path,
                expected: entry.size,
                found: m.len(),
            });
            return Ok(manifest);
        }
        let header = Msg::File {
            rel: entry.rel.clone(),
            size: entry.size,
            mode: m.mode(),
            mtime: m.mtime().max(0) as u64,
        };
        if tx.send(header).is_err() {
            return Ok(manifest);
        }
        let mut hasher = blake3::Hasher::new();
        let mut read: u64 = 0;
        while read < entry.size {
            if cancel.is_cancelled() {
                fail(BackupError::Cancelled);
                return Ok(manifest);
            }
            let Ok(mut buf) = free.recv() else {
                return Ok(manifest);
            };
            let want = CHUNK.min((entry.size - read) as usize);
            if let Err(e) = f.read_exact(&mut buf[..want]) {
                if e.kind() == ErrorKind::UnexpectedEof {
                    fail(BackupError::Changed {
                        path,
                        expected: entry.size,
                        found: read,
                    });
                } else {
                    fail(io_err("read", &path)(e));
                }
                return Ok(manifest);
            }
            hasher.update(&buf[..want]);
            read += want as u64;
            if tx.send(Msg::Chunk(buf, want)).is_err() {
                return Ok(manifest);
            }
        }
        let rel = entry.rel.to_str().expect("plan names are UTF-8");
        manifest.push_str(&format!(
            "{}  {}  {rel}\n",
            hasher.finalize().to_hex(),
            entry.size
        ));
    }
    Ok(manifest)
}

fn not_backup(path: &Path, what: impl Into<String>) -> BackupError {
    BackupError::NotABackup {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn open_archive(path: &Path) -> Result<tar::Archive<impl Read>, BackupError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let dec = zstd::stream::read::Decoder::new(f)
        .map_err(|e| not_backup(path, format!("not zstd ({e})")))?;
    Ok(tar::Archive::new(dec))
}

fn read_meta_entry(path: &Path, entry: &mut impl Read) -> Result<BackupMeta, BackupError> {
    let mut text = Vec::new();
    entry
        .take(1 << 20)
        .read_to_end(&mut text)
        .map_err(|e| not_backup(path, format!("cannot read {META_ENTRY} ({e})")))?;
    serde_json::from_slice(&text).map_err(|e| not_backup(path, format!("bad {META_ENTRY}: {e}")))
}

/// Read a backup's [`BackupMeta`] (the first entry only).
pub fn read_meta(path: &Path) -> Result<BackupMeta, BackupError> {
    let mut ar = open_archive(path)?;
    let mut entries = ar
        .entries()
        .map_err(|e| not_backup(path, format!("not a tar stream ({e})")))?;
    let mut first = entries
        .next()
        .ok_or_else(|| not_backup(path, "empty"))?
        .map_err(|e| not_backup(path, format!("not a tar stream ({e})")))?;
    let name = first.path().map(|p| p.into_owned()).unwrap_or_default();
    if name != Path::new(META_ENTRY) {
        return Err(not_backup(
            path,
            format!("its first entry is {name:?}, not {META_ENTRY}"),
        ));
    }
    read_meta_entry(path, &mut first)
}

/// What [`unpack`] produced.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub meta: BackupMeta,
    pub files: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Unpack the backup `archive` into `dest` (which must not exist; it is
/// created 0700), verify every file against the manifest, and fsync. Files
/// and directories get `owner` (uid, gid) when given. On error the partial
/// `dest` is left for the caller to remove.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    progress: &dyn Fn(u64),
    cancel: &CancellationToken,
) -> Result<Unpacked, BackupError> {
    let t0 = Instant::now();
    if fs::symlink_metadata(dest).is_ok() {
        return Err(BackupError::Exists {
            path: dest.to_owned(),
        });
    }
    make_dir(dest, owner)?;
    // Two stages, as `zstd -dc | tar -x` has: this thread decompresses and
    // creates files, a writer thread hashes and writes their data.
    let (tx, rx) = mpsc::sync_channel::<ToWriter>(QUEUE);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..QUEUE + 2 {
        free_tx.send(vec![0u8; CHUNK]).expect("receiver alive");
    }
    let (read, written) = std::thread::scope(|s| {
        let writer = s.spawn(move || write_files(rx, free_tx));
        let read = read_entries(archive, dest, owner, progress, cancel, tx, free_rx);
        (
            read,
            writer.join().expect("the writer thread does not panic"),
        )
    });
    // A writer error first: the reader then only saw the writer gone.
    let found = written?;
    let (meta, manifest, bytes) = read?;
    check_manifest(archive, &manifest, &found)?;
    let d = File::open(dest).map_err(io_err("open", dest))?;
    // SAFETY: syncfs on an open descriptor we own.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io_err("fsync the filesystem of", dest)(
            io::Error::last_os_error(),
        ));
    }
    progress(bytes);
    Ok(Unpacked {
        files: found.len() as u64,
        meta,
        bytes,
        elapsed: t0.elapsed(),
    })
}

enum ToWriter {
    Open {
        file: File,
        path: PathBuf,
        rel: String,
    },
    Data(Vec<u8>, usize),
    Close,
}

type Found = BTreeMap<String, (blake3::Hash, u64)>;

/// The writer thread: hash and write each file's chunks; what it wrote.
fn write_files(
    rx: mpsc::Receiver<ToWriter>,
    free: mpsc::Sender<Vec<u8>>,
) -> Result<Found, BackupError> {
    let mut found = Found::new();
    let mut cur: Option<(File, PathBuf, String, blake3::Hasher, u64)> = None;
    while let Ok(msg) = rx.recv() {
        match msg {
            ToWriter::Open { file, path, rel } => {
                cur = Some((file, path, rel, blake3::Hasher::new(), 0));
            }
            ToWriter::Data(buf, n) => {
                let (file, path, _, hasher, size) = cur.as_mut().expect("data follows open");
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(io_err("write", path))?;
                *size += n as u64;
                let _ = free.send(buf);
            }
            ToWriter::Close => {
                let (_, _, rel, hasher, size) = cur.take().expect("close follows open");
                found.insert(rel, (hasher.finalize(), size));
            }
        }
    }
    Ok(found)
}

/// This thread's stage: read the tar stream, check names, make directories
/// and files, hand the data to the writer. The meta, manifest and bytes.
fn read_entries(
    archive: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    progress: &dyn Fn(u64),
    cancel: &CancellationToken,
    tx: mpsc::SyncSender<ToWriter>,
    free: mpsc::Receiver<Vec<u8>>,
) -> Result<(BackupMeta, String, u64), BackupError> {
    let mut ar = open_archive(archive)?;
    let bad_tar = |e: io::Error| not_backup(archive, format!("a damaged tar stream ({e})"));
    // The writer stopped: it says why when joined.
    let writer_gone = || BackupError::Io {
        op: "write into",
        path: dest.to_owned(),
        source: io::Error::other("the writer stopped"),
    };
    let mut meta: Option<BackupMeta> = None;
    let mut manifest: Option<String> = None;
    let mut bytes: u64 = 0;
    let mut reported: u64 = 0;
    let mut spare: Option<Vec<u8>> = None;
    for entry in ar.entries().map_err(bad_tar)? {
        if cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        let mut entry = entry.map_err(bad_tar)?;
        let name = entry.path().map_err(bad_tar)?.into_owned();
        if meta.is_none() {
            if name != Path::new(META_ENTRY) {
                return Err(not_backup(
                    archive,
                    format!("its first entry is {name:?}, not {META_ENTRY}"),
                ));
            }
            meta = Some(read_meta_entry(archive, &mut entry)?);
            continue;
        }
        if manifest.is_some() {
            return Err(not_backup(archive, format!("{name:?} after the manifest")));
        }
        if name == Path::new(MANIFEST_ENTRY) {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(bad_tar)?;
            manifest = Some(text);
            continue;
        }
        let rel = name
            .strip_prefix(DATA_PREFIX)
            .map_err(|_| not_backup(archive, format!("an unexpected entry {name:?}")))?
            .to_owned();
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(not_backup(
                archive,
                format!("a path that is not plain: {name:?}"),
            ));
        }
        let rel_str = rel
            .to_str()
            .ok_or_else(|| not_backup(archive, format!("a name that is not UTF-8: {name:?}")))?
            .to_owned();
        let out_path = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => make_dir(&out_path, owner)?,
            tar::EntryType::Regular => {
                let mode = entry.header().mode().map_err(bad_tar)? & 0o7777;
                let out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&out_path)
                    .map_err(io_err("create", &out_path))?;
                if let Some((uid, gid)) = owner {
                    nix::unistd::fchown(&out, Some(uid.into()), Some(gid.into()))
                        .map_err(|e| io_err("chown", &out_path)(e.into()))?;
                }
                tx.send(ToWriter::Open {
                    file: out,
                    path: out_path,
                    rel: rel_str,
                })
                .map_err(|_| writer_gone())?;
                loop {
                    let mut buf = match spare.take() {
                        Some(b) => b,
                        None => free.recv().map_err(|_| writer_gone())?,
                    };
                    let k = loop {
                        match entry.read(&mut buf) {
                            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                            r => break r.map_err(bad_tar)?,
                        }
                    };
                    if k == 0 {
                        // Not sent: keep it for the next file.
                        spare = Some(buf);
                        break;
                    }
                    bytes += k as u64;
                    tx.send(ToWriter::Data(buf, k)).map_err(|_| writer_gone())?;
                }
                tx.send(ToWriter::Close).map_err(|_| writer_gone())?;
                if bytes - reported >= PROGRESS_BYTES {
                    progress(bytes);
                    reported = bytes;
                    if cancel.is_cancelled() {
                        return Err(BackupError::Cancelled);
                    }
                }
            }
            other => {
                return Err(not_backup(
                    archive,
                    format!("{name:?} is a {other:?}, not a file or directory"),
                ));
            }
        }
    }
    let meta = meta.ok_or_else(|| not_backup(archive, "empty"))?;
    let manifest = manifest.ok_or_else(|| {
        not_backup(
            archive,
            format!("no {MANIFEST_ENTRY} at its end: the file is truncated"),
        )
    })?;
    Ok((meta, manifest, bytes))
}

fn make_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<(), BackupError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(io_err("create the directory", path)(e)),
    }
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(path, Some(uid.into()), Some(gid.into()))
            .map_err(|e| io_err("chown", path)(e.into()))?;
    }
    Ok(())
}

fn check_manifest(archive: &Path, manifest: &str, found: &Found) -> Result<(), BackupError> {
    let mismatch = |file: &str, expected: String, got: String| BackupError::Mismatch {
        path: archive.to_owned(),
        file: file.to_owned(),
        expected,
        found: got,
    };
    let mut listed = 0usize;
    for (n, line) in manifest.lines().enumerate() {
        let mut parts = line.splitn(3, "  ");
        let (Some(hex), Some(size), Some(rel)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(not_backup(
                archive,
                format!(
                    "manifest line {}: expected `<blake3>  <size>  <path>`",
                    n + 1
                ),
            ));
        };
        let expected = blake3::Hash::from_hex(hex).map_err(|_| {
            not_backup(
                archive,
                format!("manifest line {}: not a BLAKE3 hash", n + 1),
            )
        })?;
        let size: u64 = size
            .parse()
            .map_err(|_| not_backup(archive, format!("manifest line {}: not a size", n + 1)))?;
        let Some((hash, got_size)) = found.get(rel) else {
            return Err(mismatch(
                rel,
                format!("a file of {size} bytes"),
                "no file".into(),
            ));
        };
        if *got_size != size {
            return Err(mismatch(
                rel,
                format!("{size} bytes"),
                format!("{got_size} bytes"),
            ));
        }
        if *hash != expected {
            return Err(mismatch(
                rel,
                format!("BLAKE3 {}", expected.to_hex()),
                format!("BLAKE3 {}", hash.to_hex()),
            ));
        }
        listed += 1;
    }
    if listed != found.len() {
        let extra = found
            .keys()
            .find(|k| !manifest.lines().any(|l| l.ends_with(&format!("  {k}"))))
            .cloned()
            .unwrap_or_default();
        return Err(mismatch(
            &extra,
            "no such file (not in the manifest)".into(),
            "a file".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
