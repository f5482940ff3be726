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
//!
//! The packing is in `archive/pack.rs`, the unpacking and verifying in
//! `archive/unpack.rs`; this file holds what both know: the layout's names,
//! [`BackupMeta`] and [`BackupError`].

use std::io;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tandem_proto::model::Lsn;

use super::name::{BackupKind, BackupName};
use crate::engine::copy::CopyError;

mod pack;
mod unpack;

pub use pack::{PackOptions, Packed, pack, packed_plan};
pub use unpack::{Unpacked, read_meta, unpack};

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

#[cfg(test)]
mod tests;
