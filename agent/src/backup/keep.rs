//! Keeping a packed backup at the end of its operation: committed when the
//! copy was verified clean (or not tested), discarded otherwise; then the
//! backup directory rotated, and with a [remote] store the file pushed
//! there and the store rotated by the same rule. The caller then runs WAL
//! retention (`wal_retention::after_backup`), which needs the rotated lists.

use std::path::Path;

use tracing::{info, warn};

use crate::backup::{self, BackupMeta, Packed};
use crate::config::{AgentConfig, RemoteConfig};

/// Keep the packed backup when the operation ended well, drop it otherwise;
/// then rotate. Returns the kept backup, or why it could not be kept.
pub fn keep_or_drop(
    cfg: &AgentConfig,
    packed: Option<Packed>,
    ok: bool,
) -> Result<Option<Packed>, String> {
    let Some(p) = packed else {
        return Ok(None);
    };
    if !ok {
        p.discard();
        warn!(file = %p.path.display(), "backup not kept: the copy was not verified clean");
        return Ok(None);
    }
    p.commit()
        .map_err(|e| format!("the backup could not be kept: {e}"))?;
    info!(file = %p.path.display(), kind = %p.meta.kind, "backup kept");
    if let Some(b) = &cfg.backup {
        match backup::rotate(&b.dir, &b.retention()) {
            Ok(gone) => {
                for g in gone {
                    info!(file = %g.display(), "rotated backup deleted");
                }
            }
            Err(e) => warn!(error = %e, "rotation failed; old backups are kept"),
        }
    }
    Ok(Some(p))
}

/// Push a kept backup (and its description `meta`) to the remote store,
/// then rotate the store by the same rule as the directory; what happened,
/// for the record. A failed push keeps the local file and says so (the
/// backup still counts).
pub async fn push(
    cfg: &AgentConfig,
    remote: &RemoteConfig,
    path: &Path,
    meta: &BackupMeta,
) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let key = backup::remote::Remote::backup_key(&cfg.set, &name);
    let pushed = async {
        let store = backup::remote::Remote::open(remote)?;
        let bytes = store.push_backup(path, &key, meta).await?;
        Ok::<_, backup::remote::RemoteError>((store, bytes))
    };
    let (store, bytes) = match pushed.await {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, "backup not pushed to the remote store; kept locally");
            return format!("not pushed to the remote store ({e}); the backup is kept locally");
        }
    };
    info!(key = %key, bytes, "backup pushed to the remote store");
    let mut note = format!("pushed to the remote store as {key}");
    let keep = cfg
        .backup
        .as_ref()
        .map(|b| b.retention())
        .unwrap_or_default();
    match store.rotate(&cfg.set, &keep).await {
        Ok(gone) if gone.is_empty() => {}
        Ok(gone) => {
            for g in &gone {
                info!(key = %g, "rotated backup deleted from the remote store");
            }
            note.push_str(&format!("; rotated out of it: {}", gone.join(", ")));
        }
        Err(e) => {
            warn!(error = %e, "remote rotation failed; old remote backups are kept");
            note.push_str(&format!(
                "; its rotation failed ({e}), old backups there are kept"
            ));
        }
    }
    note
}
