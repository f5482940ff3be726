//! Packing a stopped copy into one backup file (see the `archive` module
//! for the layout): a reader thread reads and hashes, this thread writes
//! the tar stream into libzstd's multi-threaded encoder.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::libc;
use tandem_proto::model::Lsn;
use tokio_util::sync::CancellationToken;

use super::{
    BackupError, BackupMeta, CHUNK, DATA_PREFIX, MANIFEST_ENTRY, META_ENTRY, PROGRESS_BYTES, QUEUE,
    io_err,
};
use crate::engine::copy;

#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// zstd worker threads (0: compress on the calling thread); default
    /// twice the host's cores, at least 4.
    pub threads: u32,
    /// zstd level (3 is zstd's own default, as `zstd -T0`).
    pub level: i32,
    /// The source is a directory of dump files (a logical backup: Firebird's
    /// `gbak` file), packed as they are, not a PostgreSQL data directory.
    pub dump: bool,
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
            dump: false,
        }
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
    let plan = if opts.dump {
        dump_plan(src)?
    } else {
        packed_plan(src, meta.start_lsn)?
    };
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

/// The regular files directly in the dump directory `src`, by name.
pub fn dump_plan(src: &Path) -> Result<copy::CopyPlan, BackupError> {
    let io = |source| BackupError::Io {
        op: "list the dump directory",
        path: src.to_owned(),
        source,
    };
    let mut entries = Vec::new();
    for item in std::fs::read_dir(src).map_err(io)? {
        let item = item.map_err(io)?;
        let meta = item.metadata().map_err(io)?;
        if meta.is_file() {
            entries.push(copy::PlanEntry {
                rel: PathBuf::from(item.file_name()),
                size: meta.len(),
                phase: 1,
            });
        }
    }
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(copy::CopyPlan {
        total_bytes: entries.iter().map(|e| e.size).sum(),
        entries,
        dirs: vec![],
    })
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
        let Some((_, log, seg)) = crate::backup::wal::parse_segment(name) else {
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
