//! The fence: the one thing that outlives an operation.
//!
//! A file, `<home>/fence`, naming the maintenance window that holds it.
//! While it is there the agent starts no operation but the steps of that
//! window, and never starts or promotes its server except by such a step
//! (`serve`, `unfence_start`). It survives an agent restart; only the
//! window's `unfence_start` or `unfence` step removes it. Every operation
//! that holds or releases it says so in its journal record's notes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::info;

/// Who holds the fence, and since when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fence {
    pub window: String,
    pub since: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} the fence {path}")]
pub struct FenceError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn fence_path(home: &Path) -> PathBuf {
    home.join("fence")
}

/// The fence on this agent, if any.
pub fn fence(home: &Path) -> Option<Fence> {
    let text = std::fs::read_to_string(fence_path(home)).ok()?;
    Some(serde_json::from_str(&text).unwrap_or(Fence {
        window: "(unreadable fence file)".into(),
        since: String::new(),
    }))
}

/// Hold the fence for `window` (already held: nothing changes).
pub fn hold(home: &Path, window: &str) -> Result<(), FenceError> {
    if fence(home).is_some() {
        return Ok(());
    }
    let path = fence_path(home);
    let f = Fence {
        window: window.to_owned(),
        since: jiff::Timestamp::now().to_string(),
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&f).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| FenceError {
            op: "write",
            path: path.clone(),
            source,
        })?;
    info!(
        window,
        "fence held: this server is not started or promoted until the window releases it"
    );
    Ok(())
}

/// Release the fence (none held: nothing changes).
pub fn release(home: &Path) -> Result<(), FenceError> {
    let path = fence_path(home);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            info!("fence released");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FenceError {
            op: "remove",
            path,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_file_names_its_window_and_is_released() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(fence(dir.path()), None);
        hold(dir.path(), "w-1").unwrap();
        assert_eq!(fence(dir.path()).unwrap().window, "w-1");
        // Held already: the first window keeps it.
        hold(dir.path(), "w-2").unwrap();
        assert_eq!(fence(dir.path()).unwrap().window, "w-1");
        release(dir.path()).unwrap();
        assert_eq!(fence(dir.path()), None);
        release(dir.path()).unwrap();
    }
}
