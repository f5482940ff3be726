//! The WAL archive for roll-forward (SPEC R7): the primary's
//! `archive_command` puts every finished log segment here with
//! `tandem-agent archive-push %p %f`, and a restore reads it back with a
//! plain copy (`restore_command = 'cp <dir>/%f %p'`).
//!
//! [`push`] writes `<dir>/.<name>.tmp`, fsyncs, renames and fsyncs the
//! directory, so PostgreSQL never recycles a segment that is not durably
//! archived. Pushing a name that is already there succeeds only when the
//! bytes are the same (PostgreSQL may retry after a crash); different bytes
//! are an error, and the archive keeps the first. [`check`] reads the names
//! and reports the gaps between the first and last segment of each
//! timeline, and whether a backup's start is covered ([`Continuity`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use tandem_proto::wal::{
    Continuity, Coverage, TimelineSpan, WalFile, continuity, parse_segment, segment_name,
    segment_number, segment_of,
};

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{name:?} is not a WAL file name (a segment, .history, .backup or .partial file); archive_command must pass %f"
    )]
    BadName { name: String },
    #[error(
        "{path} is already archived with different contents; the archive keeps the first. Is another server archiving into the same directory?"
    )]
    Conflict { path: PathBuf },
    /// Roll-forward cannot read what it needs from the archive.
    #[error(transparent)]
    Coverage(#[from] Coverage),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn is_hex(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
}

/// Whether `name` may be archived: a segment, a timeline history file, a
/// backup label or a partial segment.
pub fn valid_name(name: &str) -> bool {
    if parse_segment(name).is_some() {
        return true;
    }
    if let Some(tl) = name.strip_suffix(".history") {
        return tl.len() == 8 && is_hex(tl);
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return parse_segment(seg).is_some();
    }
    // A backup history file: `<segment>.<8 hex digits of the start offset>.backup`.
    if let Some((seg, rest)) = name.split_once('.') {
        return parse_segment(seg).is_some()
            && rest
                .strip_suffix(".backup")
                .is_some_and(|off| off.len() == 8 && is_hex(off));
    }
    false
}

/// `name` when it may be archived ([`valid_name`]), else [`WalError::BadName`].
pub fn checked_name(name: &str) -> Result<&str, WalError> {
    if valid_name(name) {
        Ok(name)
    } else {
        Err(WalError::BadName {
            name: name.to_owned(),
        })
    }
}

/// What [`push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Archived,
    AlreadyThere,
}

/// Archive the file `src` as `<dir>/<name>`; see the module documentation.
pub fn push(src: &Path, name: &str, dir: &Path) -> Result<Pushed, WalError> {
    let dst = dir.join(checked_name(name)?);
    if dst.exists() {
        return if same_bytes(src, &dst)? {
            Ok(Pushed::AlreadyThere)
        } else {
            Err(WalError::Conflict { path: dst })
        };
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut input = File::open(src).map_err(io_err("open", src))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    io::copy(&mut input, &mut out).map_err(io_err("copy into", &tmp))?;
    out.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, &dst).map_err(io_err("rename into place", &dst))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory", dir))?;
    Ok(Pushed::Archived)
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool, WalError> {
    let hash = |p: &Path| -> Result<(u64, blake3::Hash), WalError> {
        let mut f = File::open(p).map_err(io_err("open", p))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf).map_err(io_err("read", p))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        Ok((n, h.finalize()))
    };
    Ok(hash(a)? == hash(b)?)
}

/// Read the archive `dir` (segment size from the first segment's size).
pub fn check(dir: &Path) -> Result<Continuity, WalError> {
    Ok(continuity(list(dir)?))
}

/// The WAL files in the archive `dir` (any name [`valid_name`] takes), with
/// their sizes and modification times, by name.
pub fn list(dir: &Path) -> Result<Vec<WalFile>, WalError> {
    let mut files = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let item = item.map_err(io_err("list", dir))?;
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !valid_name(&name) {
            continue;
        }
        let meta = item.metadata().map_err(io_err("stat", &item.path()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| jiff::Timestamp::try_from(m).ok());
        files.push(WalFile {
            name,
            bytes: meta.len(),
            modified,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::valid_name as valid;

    #[test]
    fn a_backup_history_name_has_an_eight_digit_offset() {
        assert!(valid("000000010000000000000002.00000028.backup"));
        // Found by the wal_name fuzzer: an empty offset was taken.
        assert!(!valid("000000010000000000000002..backup"));
        assert!(!valid("000000010000000000000002.028.backup"));
        assert!(!valid("000000010000000000000002.00000028.backup.backup"));
    }

    use super::*;
    use tandem_proto::model::Lsn;

    #[test]
    fn names() {
        assert!(valid_name("000000010000000000000003"));
        assert!(valid_name("00000002.history"));
        assert!(valid_name("000000010000000000000003.partial"));
        assert!(valid_name("000000010000000000000003.00000028.backup"));
        for bad in [
            "",
            "../x",
            "00000001000000000000000g",
            "000000010000000000000003.gz",
            "0000000100000000000000031",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn push_is_durable_idempotent_and_refuses_a_different_file() {
        let tmp = tempfile::tempdir().unwrap();
        let arch = tmp.path().join("wal");
        fs::create_dir(&arch).unwrap();
        let src = tmp.path().join("seg");
        fs::write(&src, b"abc").unwrap();
        let name = "000000010000000000000001";
        assert_eq!(push(&src, name, &arch).unwrap(), Pushed::Archived);
        assert_eq!(fs::read(arch.join(name)).unwrap(), b"abc");
        assert_eq!(push(&src, name, &arch).unwrap(), Pushed::AlreadyThere);
        fs::write(&src, b"abd").unwrap();
        let e = push(&src, name, &arch).unwrap_err();
        assert!(matches!(e, WalError::Conflict { .. }), "{e}");
        assert_eq!(fs::read(arch.join(name)).unwrap(), b"abc");
        let e = push(&src, "../../etc/passwd", &arch).unwrap_err();
        assert!(matches!(e, WalError::BadName { .. }), "{e}");
    }

    #[test]
    fn gaps_are_found_and_coverage_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let seg = 16u64 << 20;
        for n in [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000007",
            "000000010000000100000000",
            "00000002.history",
        ] {
            let f = File::create(tmp.path().join(n)).unwrap();
            f.set_len(seg).unwrap();
        }
        let c = check(tmp.path()).unwrap();
        let t = &c.timelines[&1];
        assert_eq!(t.first, "000000010000000000000003");
        assert_eq!(t.last, "000000010000000100000000");
        assert_eq!(
            t.gaps,
            vec![
                (
                    "000000010000000000000005".into(),
                    "000000010000000000000006".into()
                ),
                (
                    "000000010000000000000008".into(),
                    "0000000100000000000000FF".into()
                ),
            ]
        );
        assert!(c.has_gaps());
        let e = c.covers_from(1, Lsn(2 * seg + 40)).unwrap_err().to_string();
        assert!(e.contains("archiving began after the backup"), "{e}");
        let e = c.covers_from(1, Lsn(3 * seg + 40)).unwrap_err().to_string();
        assert!(e.contains("misses 000000010000000000000005"), "{e}");
        assert!(c.covers_from(2, Lsn(0)).is_err());
    }
}
