//! Backups (SPEC R1, T9 archive files): a copy of a data directory packed
//! into one file, and the rules that keep a few of them.
//!
//! - `archive`: pack a stopped copy into `<name>.tar.zst` (tar, zstd with
//!   several compression threads, a BLAKE3 manifest inside) and unpack it
//!   again, verifying every file. Blocking; callers use `spawn_blocking`.
//! - `name`: the file name, which carries the kind, the time and the LSN
//!   range, so a listing needs no other index.
//! - `rotation`: which kind a new backup is and which old ones go (pure).
//! - `keep`: at the end of an operation, keep or drop the packed file,
//!   rotate, push to the remote store and rotate it.
//! - `wal`, `remote`: the WAL archive, and the object store.
//! - `wal_retention`: which archived WAL no kept backup needs (pure), and
//!   removing it from the archive and the store (`tandem-agent wal-prune`,
//!   and at the end of each kept backup).
//! - `grants`: another member's agent may read one backup file here for a
//!   while (the controller asks); `peer`: a backup fetched from another
//!   member's agent under such a grant, resumable.
//!
//! A backup file is written under a temporary name, fsynced, and renamed
//! into place only when complete ([`archive::Packed::commit`]); a reader
//! never sees a half-written backup under a backup name.

pub mod archive;
pub mod grants;
pub mod keep;
pub mod name;
pub mod peer;
pub mod remote;
pub mod rotation;
pub mod wal;
pub mod wal_retention;

pub use archive::{BackupError, BackupMeta, Packed, Unpacked, pack, read_meta, unpack};
pub use name::{BackupKind, BackupName};

use std::path::{Path, PathBuf};

/// The backups in `dir` (files named as [`BackupName`]), newest first. A
/// missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<(BackupName, PathBuf)>, BackupError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(BackupError::Io {
                op: "list the backup directory",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for item in read.flatten() {
        if let Some(name) = item.file_name().to_str().and_then(BackupName::parse) {
            out.push((name, item.path()));
        }
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.0.taken_at));
    Ok(out)
}

/// Delete the backups in `dir` that rotation no longer keeps; returns them.
pub fn rotate(dir: &Path, keep: &rotation::Retention) -> Result<Vec<PathBuf>, BackupError> {
    let have = list(dir)?;
    let names: Vec<BackupName> = have.iter().map(|(n, _)| n.clone()).collect();
    let mut gone = Vec::new();
    for n in rotation::to_delete(&names, keep) {
        let path = dir.join(n.file_name());
        std::fs::remove_file(&path).map_err(|source| BackupError::Io {
            op: "delete the rotated backup",
            path: path.clone(),
            source,
        })?;
        gone.push(path);
    }
    Ok(gone)
}

/// One backup file as listed (`tandem-agent backups`, `tandemctl backups`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BackupInfo {
    pub file: PathBuf,
    pub kind: BackupKind,
    pub taken_at: jiff::Timestamp,
    /// Size of the file.
    pub bytes: u64,
    /// Size once unpacked (0 when the file could not be read).
    pub unpacked_bytes: u64,
    pub start_lsn: tandem_proto::model::Lsn,
    pub end_lsn: tandem_proto::model::Lsn,
    /// Kept only after testdb found the copy clean.
    pub verified: bool,
    /// Why the file's own description could not be read, if it could not.
    pub problem: Option<String>,
}

/// Every backup in `dir`, newest first, with what its first entry says.
pub fn describe_all(dir: &Path) -> Result<Vec<BackupInfo>, BackupError> {
    let mut out = Vec::new();
    for (name, path) in list(dir)? {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let (unpacked_bytes, verified, problem) = match read_meta(&path) {
            Ok(m) => (m.unpacked_bytes, m.verified, None),
            Err(e) => (0, false, Some(e.to_string())),
        };
        out.push(BackupInfo {
            file: path,
            kind: name.kind,
            taken_at: name.taken_at,
            bytes,
            unpacked_bytes,
            start_lsn: name.start_lsn,
            end_lsn: name.end_lsn,
            verified,
            problem,
        });
    }
    Ok(out)
}

/// A table of backups for people.
pub fn describe_human(list: &[BackupInfo]) -> String {
    if list.is_empty() {
        return "no backups\n".into();
    }
    let mut s = format!(
        "{:<8} {:<21} {:>10} {:>10} {:<25} {:<8} {}\n",
        "KIND", "TAKEN", "SIZE", "UNPACKED", "LSN RANGE", "VERIFIED", "FILE"
    );
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    for b in list {
        s.push_str(&format!(
            "{:<8} {:<21} {:>10} {:>10} {:<25} {:<8} {}{}\n",
            b.kind.as_str(),
            b.taken_at.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
            mib(b.bytes),
            mib(b.unpacked_bytes),
            format!("{}..{}", b.start_lsn, b.end_lsn),
            if b.verified { "yes" } else { "no" },
            b.file.display(),
            b.problem
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
        ));
    }
    s
}
