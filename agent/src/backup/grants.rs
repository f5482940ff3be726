//! Grants: another member's agent may read one backup file of this agent's
//! `[backup] dir` for a limited time (a restore of that member from a backup
//! kept here).
//!
//! Only the controller makes a grant (`Agent.GrantBackup`, controller-only
//! like every `Agent` call); it names the peer agent, the file and a
//! lifetime, and answers a random grant id. The fetch
//! (`AgentPeer.FetchBackup`) names the grant id; it is served only when a
//! live grant with that id names exactly the calling agent's certificate
//! identity. Grants live in memory: an agent restart revokes them all (the
//! controller asks again when the restore runs again).
//!
//! Before granting, [`checked_file`] makes sure the file is a backup in the
//! backup directory: an absolute path whose parent is the directory itself
//! (no `..`, no symlinked directory), a backup's name, a regular file (not
//! a symlink). The fetch opens it again without following symlinks.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

use super::BackupName;

/// A grant's lifetime when the controller names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);
/// The longest grant: a day.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    /// The agent that may fetch (its certificate's name).
    pub peer: String,
    pub file: PathBuf,
    /// The file's size when granted.
    pub bytes: u64,
    pub expires_at: Timestamp,
}

/// Why a file may not be granted.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("this agent has no [backup] section: it holds no backups to grant")]
    NoBackupDir,
    #[error(
        "{path} is not an absolute path in this agent's backup directory {dir}; name a file `tandemctl backups SET` lists"
    )]
    OutsideDir { path: PathBuf, dir: PathBuf },
    #[error("{path} is not named as a backup (<kind>-<time>-<lsn>-<lsn>.tar.zst)")]
    NotABackupName { path: PathBuf },
    #[error("{path} is a symbolic link or not a regular file; only backup files are granted")]
    NotAFile { path: PathBuf },
    #[error("{path}: no such backup file on this member's host")]
    Missing { path: PathBuf },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's first entry (its description) cannot be read.
    #[error(transparent)]
    Backup(#[from] super::BackupError),
    #[error("`{peer}` is not an agent name: {why}")]
    BadPeer { peer: String, why: String },
}

/// Why a fetch is refused (said to the caller and logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no grant {id} on this agent (never made, or revoked by a restart of this agent); the controller grants a fetch when a restore needs it: run the restore again"
    )]
    NoGrant { id: String },
    #[error(
        "grant {id} expired at {at}; the controller grants a new one when the restore runs again"
    )]
    Expired { id: String, at: Timestamp },
    #[error("grant {id} is for agent `{peer}`, not for `{caller}`")]
    WrongPeer {
        id: String,
        peer: String,
        caller: String,
    },
}

/// The backup file `path` names, if it is one in `dir` (see the module
/// documentation); its size.
pub fn checked_file(dir: &Path, path: &Path) -> Result<u64, GrantError> {
    let outside = || GrantError::OutsideDir {
        path: path.to_owned(),
        dir: dir.to_owned(),
    };
    if !path.is_absolute()
        || path.components().any(|c| {
            !matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
    {
        return Err(outside());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(outside)?;
    if BackupName::parse(name).is_none() {
        return Err(GrantError::NotABackupName {
            path: path.to_owned(),
        });
    }
    // The parent must be the backup directory itself, symlinks resolved on
    // both sides (a directory reached through a symlink is the same place).
    let canon = |p: &Path| {
        std::fs::canonicalize(p).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => GrantError::Missing {
                path: path.to_owned(),
            },
            _ => GrantError::Io {
                path: p.to_owned(),
                source,
            },
        })
    };
    let parent = path.parent().ok_or_else(outside)?;
    if canon(parent)? != canon(dir)? {
        return Err(outside());
    }
    let meta = std::fs::symlink_metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => GrantError::Missing {
            path: path.to_owned(),
        },
        _ => GrantError::Io {
            path: path.to_owned(),
            source,
        },
    })?;
    if !meta.file_type().is_file() {
        return Err(GrantError::NotAFile {
            path: path.to_owned(),
        });
    }
    Ok(meta.len())
}

/// 128 random bits from the kernel, as hex.
fn random_id() -> Result<String, std::io::Error> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The grants this agent gave, in memory.
#[derive(Debug, Default)]
pub struct Grants {
    live: Mutex<HashMap<String, Grant>>,
}

impl Grants {
    /// Grant `peer` the backup file `path` of `dir` for `ttl` (0: the
    /// default, at most [`MAX_TTL`]). Expired grants are forgotten here.
    pub fn grant(
        &self,
        dir: &Path,
        path: &Path,
        peer: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Grant, GrantError> {
        tandem_proto::identity::validate_name(peer).map_err(|e| GrantError::BadPeer {
            peer: peer.to_owned(),
            why: e.to_string(),
        })?;
        let bytes = checked_file(dir, path)?;
        let ttl = if ttl.is_zero() { DEFAULT_TTL } else { ttl }.min(MAX_TTL);
        let id = random_id().map_err(|source| GrantError::Io {
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
        let g = Grant {
            id: format!("g-{id}"),
            peer: peer.to_owned(),
            file: path.to_owned(),
            bytes,
            expires_at: now
                .checked_add(jiff::SignedDuration::try_from(ttl).unwrap_or_default())
                .unwrap_or(now),
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, g| g.expires_at > now);
        live.insert(g.id.clone(), g.clone());
        Ok(g)
    }

    /// Forget the grant `id`.
    pub fn revoke(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The grant `id`, when it is live and names `caller`.
    pub fn check(&self, id: &str, caller: &str, now: Timestamp) -> Result<Grant, Refusal> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let g = live
            .get(id)
            .ok_or_else(|| Refusal::NoGrant { id: id.to_owned() })?;
        if g.expires_at <= now {
            return Err(Refusal::Expired {
                id: id.to_owned(),
                at: g.expires_at,
            });
        }
        if g.peer != caller {
            return Err(Refusal::WrongPeer {
                id: id.to_owned(),
                peer: g.peer.clone(),
                caller: caller.to_owned(),
            });
        }
        Ok(g.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "daily-20261121T043007Z-0_1000028-0_2000000.tar.zst";

    fn dir_with_backup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("backups");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join(NAME);
        std::fs::write(&file, b"0123456789").unwrap();
        (tmp, dir, file)
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_grant_serves_its_peer_until_it_expires() {
        let (_tmp, dir, file) = dir_with_backup();
        let g = Grants::default();
        let now = t("2026-12-01T10:00:00Z");
        let a = g.grant(&dir, &file, "db1", Duration::ZERO, now).unwrap();
        assert_eq!(a.bytes, 10);
        assert_eq!(a.expires_at, t("2026-12-01T10:30:00Z"));
        assert!(a.id.len() > 30, "{}", a.id);
        let b = g
            .grant(&dir, &file, "db1", Duration::from_secs(60), now)
            .unwrap();
        assert_ne!(a.id, b.id, "every grant has its own random id");

        assert_eq!(
            g.check(&a.id, "db1", t("2026-12-01T10:29:59Z")),
            Ok(a.clone())
        );
        let e = g
            .check(&a.id, "db1", t("2026-12-01T10:30:00Z"))
            .unwrap_err();
        assert!(matches!(e, Refusal::Expired { .. }), "{e}");
        assert!(e.to_string().contains("expired at"), "{e}");
        let e = g.check(&a.id, "db3", now).unwrap_err();
        assert!(matches!(e, Refusal::WrongPeer { .. }), "{e}");
        assert!(e.to_string().contains("not for `db3`"), "{e}");
        let e = g.check("g-guessed", "db1", now).unwrap_err();
        assert!(matches!(e, Refusal::NoGrant { .. }), "{e}");
        // A grant never outlives a day, whatever is asked.
        let c = g
            .grant(&dir, &file, "db1", Duration::from_secs(9 * 86400), now)
            .unwrap();
        assert_eq!(c.expires_at, t("2026-12-02T10:00:00Z"));
        // Expired grants are forgotten at the next grant.
        let later = t("2026-12-01T11:00:00Z");
        g.grant(&dir, &file, "db1", Duration::ZERO, later).unwrap();
        assert!(matches!(
            g.check(&b.id, "db1", later),
            Err(Refusal::NoGrant { .. })
        ));
    }

    #[test]
    fn only_a_backup_file_in_the_backup_directory_is_granted() {
        let (tmp, dir, file) = dir_with_backup();
        let g = Grants::default();
        let now = t("2026-12-01T10:00:00Z");
        let refused = |p: &Path| g.grant(&dir, p, "db1", Duration::ZERO, now).unwrap_err();
        // Outside the directory, by a plain path or by `..`.
        let other = tmp.path().join(NAME);
        std::fs::write(&other, b"x").unwrap();
        assert!(matches!(refused(&other), GrantError::OutsideDir { .. }));
        let escape = dir.join("..").join(NAME);
        assert!(matches!(refused(&escape), GrantError::OutsideDir { .. }));
        assert!(matches!(
            refused(Path::new(NAME)),
            GrantError::OutsideDir { .. }
        ));
        // In the directory but not a backup's name.
        std::fs::write(dir.join("agent.toml"), b"x").unwrap();
        assert!(matches!(
            refused(&dir.join("agent.toml")),
            GrantError::NotABackupName { .. }
        ));
        let partial = dir.join(format!(".{NAME}.partial"));
        std::fs::write(&partial, b"x").unwrap();
        assert!(matches!(
            refused(&partial),
            GrantError::NotABackupName { .. }
        ));
        // A symlink named as a backup, pointing anywhere.
        let link = dir.join("weekly-20261121T043007Z-0_1000028-0_2000000.tar.zst");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert!(matches!(refused(&link), GrantError::NotAFile { .. }));
        // A directory reached through a symlink that is not the backup dir.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join(NAME), b"x").unwrap();
        let via = dir.join("via");
        std::os::unix::fs::symlink(&elsewhere, &via).unwrap();
        assert!(matches!(
            refused(&via.join(NAME)),
            GrantError::OutsideDir { .. }
        ));
        let missing = dir.join("monthly-20261121T043007Z-0_1000028-0_2000000.tar.zst");
        assert!(matches!(refused(&missing), GrantError::Missing { .. }));
        assert!(matches!(
            g.grant(&dir, &file, "no/such", Duration::ZERO, now),
            Err(GrantError::BadPeer { .. })
        ));
        // The backup directory reached through a symlink is the same place.
        let alias = tmp.path().join("alias");
        std::os::unix::fs::symlink(&dir, &alias).unwrap();
        assert!(g.grant(&alias, &file, "db1", Duration::ZERO, now).is_ok());
    }
}
