//! Backups (SPEC R1, T9 archive files): a copy of a data directory packed
//! into one file, and the rules that keep a few of them.
//!
//! - `archive`: pack a stopped copy into `<name>.tar.zst` (tar, zstd with
//!   several compression threads, a BLAKE3 manifest inside) and unpack it
//!   again, verifying every file. Blocking; callers use `spawn_blocking`.
//! - `name`: the file name, which carries the kind, the time and the LSN
//!   range, so a listing needs no other index.
//! - `rotation`: which kind a new backup is and which old ones go (pure).
//!
//! A backup file is written under a temporary name, fsynced, and renamed
//! into place only when complete ([`archive::Packed::commit`]); a reader
//! never sees a half-written backup under a backup name.

pub mod archive;
pub mod name;
pub mod rotation;

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
