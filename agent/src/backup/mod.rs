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

pub use archive::{BackupMeta, Packed, Unpacked, pack, read_meta, unpack};
pub use name::{BackupKind, BackupName};
