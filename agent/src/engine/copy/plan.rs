//! The copy plan: what is copied from a stopped data directory, and in
//! which order (phase 1 oldest-modified first, phase 2 `pg_wal` by name,
//! phase 3 `global/pg_control`), leaving out what PostgreSQL's own base
//! backup leaves out.

use super::*;

/// Top-level directories whose contents PostgreSQL's base backup leaves out;
/// the directories themselves are created empty.
const EMPTY_DIRS: &[&str] = &[
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];
/// Top-level files PostgreSQL's base backup leaves out.
const SKIP_FILES: &[&str] = &["postmaster.pid", "postmaster.opts"];
/// Top-level files an HA manager keeps in the data directory and rewrites
/// whenever it likes, by name prefix: Patroni's cache of its dynamic
/// configuration (`patroni.dynamic.json`, written through a temporary
/// `patroni.dynamic.json<random>` at the end of an HA loop, stopped server
/// or not). PostgreSQL never reads them.
const SKIP_PREFIXES: &[&str] = &["patroni.dynamic.json"];
pub(super) const PG_CONTROL: &str = "global/pg_control";

/// What [`copy`] will copy, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    /// Files in copy order: phase 1, then 2, then 3.
    pub entries: Vec<PlanEntry>,
    /// Every directory below the root (relative, parents first), including
    /// the ones whose contents are left out.
    pub dirs: Vec<PathBuf>,
    /// Sum of the entries' sizes.
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    /// Path relative to the data directory.
    pub rel: PathBuf,
    pub size: u64,
    /// 1 = relation and other files, 2 = `pg_wal` segments, 3 = `global/pg_control`.
    pub phase: u8,
}

/// List what will be copied from the data directory `src`, in order.
///
/// Leaves out what PostgreSQL's own base backup leaves out: `postmaster.pid`,
/// `postmaster.opts`, the contents of `pg_stat_tmp`, `pg_replslot`,
/// `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_subtrans`
/// and `pg_wal/archive_status` (the directories themselves are kept), any
/// `*.tandem-tmp` file, and Patroni's `patroni.dynamic.json*` (Patroni
/// rewrites it while the server is stopped). Phase 1 is sorted by modification time (ties by
/// path), phase 2 (regular files directly in `pg_wal`) by name, which is log
/// order; phase 3 is `global/pg_control`. A symlink anywhere below `src` (a
/// tablespace) or any other special file is [`CopyError::Unsupported`].
pub fn plan(src: &Path) -> Result<CopyPlan, CopyError> {
    let root = fs::metadata(src).map_err(io_err(src, "read the data directory"))?;
    if !root.is_dir() {
        return Err(CopyError::Unsupported {
            path: src.to_owned(),
            what: "a data directory that is not a directory".into(),
        });
    }
    let mut phase1: Vec<(SystemTime, PathBuf, u64)> = Vec::new();
    let mut phase2: Vec<(PathBuf, u64)> = Vec::new();
    let mut control: Option<u64> = None;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let abs_dir = under(src, &rel_dir);
        let read = fs::read_dir(&abs_dir).map_err(io_err(&abs_dir, "list the directory"))?;
        for item in read {
            let item = item.map_err(io_err(&abs_dir, "list the directory"))?;
            let rel = rel_dir.join(item.file_name());
            let abs = src.join(&rel);
            if item.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                continue;
            }
            check_name(&rel)?;
            let meta = fs::symlink_metadata(&abs).map_err(io_err(&abs, "read the metadata of"))?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&abs)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Err(CopyError::Unsupported {
                    path: abs,
                    what: format!(
                        "a symbolic link (to {target}; tablespaces and a pg_wal elsewhere are not supported yet)"
                    ),
                });
            }
            if ft.is_dir() {
                dirs.push(rel.clone());
                let top = rel_dir.as_os_str().is_empty();
                let skip_contents = (top && EMPTY_DIRS.iter().any(|d| rel == Path::new(d)))
                    || rel == Path::new("pg_wal/archive_status");
                if !skip_contents {
                    stack.push(rel);
                }
                continue;
            }
            if !ft.is_file() {
                return Err(CopyError::Unsupported {
                    path: abs,
                    what: "a special file (socket, fifo or device)".into(),
                });
            }
            if rel_dir.as_os_str().is_empty()
                && (SKIP_FILES.iter().any(|f| rel == Path::new(f))
                    || SKIP_PREFIXES
                        .iter()
                        .any(|p| rel.to_str().is_some_and(|r| r.starts_with(p))))
            {
                continue;
            }
            let size = meta.len();
            if rel == Path::new(PG_CONTROL) {
                control = Some(size);
            } else if rel_dir == Path::new("pg_wal") {
                phase2.push((rel, size));
            } else {
                let mtime = meta.modified().map_err(io_err(&abs, "read the mtime of"))?;
                phase1.push((mtime, rel, size));
            }
        }
    }
    let Some(control_size) = control else {
        return Err(CopyError::NotDataDir {
            path: src.to_owned(),
        });
    };
    phase1.sort();
    phase2.sort();
    dirs.sort();
    let mut entries: Vec<PlanEntry> = phase1
        .into_iter()
        .map(|(_, rel, size)| PlanEntry {
            rel,
            size,
            phase: 1,
        })
        .chain(phase2.into_iter().map(|(rel, size)| PlanEntry {
            rel,
            size,
            phase: 2,
        }))
        .collect();
    entries.push(PlanEntry {
        rel: PathBuf::from(PG_CONTROL),
        size: control_size,
        phase: 3,
    });
    let total_bytes = entries.iter().map(|e| e.size).sum();
    Ok(CopyPlan {
        entries,
        dirs,
        total_bytes,
    })
}

/// A relative path the manifest can hold: only normal components, UTF-8,
/// no line breaks.
pub(super) fn check_name(rel: &Path) -> Result<&str, CopyError> {
    let bad = |what: &str| CopyError::Unsupported {
        path: rel.to_owned(),
        what: what.into(),
    };
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("a path that is not relative and plain"));
    }
    let s = rel
        .to_str()
        .ok_or_else(|| bad("a name that is not UTF-8"))?;
    if s.contains(['\n', '\r']) {
        return Err(bad("a name with a line break"));
    }
    Ok(s)
}
