//! Unpacking a backup file and verifying it (see the `archive` module for
//! the layout): this thread decompresses, checks names and makes the files,
//! a writer thread hashes and writes their data; then every file is checked
//! against the manifest and the tree is fsynced.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::libc;
use tokio_util::sync::CancellationToken;

use super::{
    BackupError, BackupMeta, CHUNK, DATA_PREFIX, MANIFEST_ENTRY, META_ENTRY, PROGRESS_BYTES, QUEUE,
    io_err,
};

fn not_backup(path: &Path, what: impl Into<String>) -> BackupError {
    BackupError::NotABackup {
        path: path.to_owned(),
        what: what.into(),
    }
}

pub(super) fn open_archive(path: &Path) -> Result<tar::Archive<impl Read>, BackupError> {
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
