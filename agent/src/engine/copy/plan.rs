//! The copy plan: what is copied from a data directory, and in which order
//! (phase 1 oldest-modified first, phase 2 `pg_wal` by name, phase 3
//! `global/pg_control`), leaving out what PostgreSQL's own base backup
//! leaves out. [`plan`] is for a stopped server, [`plan_live`] for a running
//! one (no WAL, and the whole of the base backup's exclusions).

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

// What a live plan leaves out besides the above: our own list of what
// PostgreSQL 15's base backup leaves out (`excludeFiles`, the temporary
// files and relations and the unlogged relations skipped in `sendDir`, and
// the contents of `pg_wal`), from src/backend/replication/basebackup.c.
// Unlike the stopped plan's lists these names count at any depth, as there.

/// Files left out wherever they are: `postgresql.auto.conf.tmp`,
/// `current_logfiles.tmp`, a `backup_label` or `tablespace_map` (the caller
/// writes the backup's own), an old `backup_manifest`, the postmaster's
/// files.
const LIVE_SKIP_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];
/// Files left out by name prefix: the relation cache `pg_internal.init`
/// (and its temporary files), rebuilt at start.
const LIVE_SKIP_FILE_PREFIXES: &[&str] = &["pg_internal.init"];
/// Files and directories left out by name prefix: temporary files.
const LIVE_SKIP_PREFIXES: &[&str] = &["pgsql_tmp"];

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
    plan_with(src, false)
}

/// List what will be copied from the data directory `src` of a running
/// server (for [`CopyOptions::live_source`]), in order.
///
/// Like [`plan`], and it leaves out all that PostgreSQL's base backup
/// leaves out: `pg_wal` and `pg_wal/archive_status` are created empty (no
/// phase 2: the caller adds the WAL it needs); `backup_label`,
/// `tablespace_map`, `backup_manifest`, `postgresql.auto.conf.tmp`,
/// `current_logfiles.tmp`, `pg_internal.init*` and anything named
/// `pgsql_tmp*`, in any directory; in a database directory (`base/<oid>`),
/// temporary relations (`t<n>_<oid>...`) and every fork but the init fork of
/// an unlogged relation (one with an `<oid>_init` file). A file or directory
/// that vanishes while it is listed is left out.
pub fn plan_live(src: &Path) -> Result<CopyPlan, CopyError> {
    plan_with(src, true)
}

/// Whether the live plan leaves out the file `name` in the directory
/// `rel_dir`, whose file names are `siblings`.
fn live_skips_file(rel_dir: &Path, name: &str, siblings: &BTreeSet<String>) -> bool {
    if LIVE_SKIP_FILES.contains(&name)
        || LIVE_SKIP_FILE_PREFIXES.iter().any(|p| name.starts_with(p))
        || LIVE_SKIP_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return true;
    }
    let mut parts = rel_dir.components();
    let in_db_dir = parts.next() == Some(Component::Normal("base".as_ref()))
        && parts
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_none();
    if !in_db_dir {
        return false;
    }
    if is_temp_relation(name) {
        return true;
    }
    match relation_fork(name) {
        Some((oid, fork)) => fork != Some("init") && siblings.contains(&format!("{oid}_init")),
        None => false,
    }
}

/// `<digits>[_<fork>][.<digits>]`: the relation's number and fork.
fn relation_fork(name: &str) -> Option<(&str, Option<&str>)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let base = match name.split_once('.') {
        Some((b, seg)) if digits(seg) => b,
        Some(_) => return None,
        None => name,
    };
    let (oid, fork) = match base.split_once('_') {
        Some((o, f)) => (o, Some(f)),
        None => (base, None),
    };
    (digits(oid) && fork.is_none_or(|f| ["fsm", "vm", "init"].contains(&f))).then_some((oid, fork))
}

/// `t<backend>_<relation>[...]`: a temporary relation's file.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, rel)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && relation_fork(rel).is_some()
}

fn plan_with(src: &Path, live: bool) -> Result<CopyPlan, CopyError> {
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
        let read = match fs::read_dir(&abs_dir) {
            Ok(r) => r,
            Err(e)
                if live && e.kind() == ErrorKind::NotFound && !rel_dir.as_os_str().is_empty() =>
            {
                dirs.retain(|d| *d != rel_dir);
                continue;
            }
            Err(e) => return Err(io_err(&abs_dir, "list the directory")(e)),
        };
        let mut names: Vec<OsString> = Vec::new();
        for item in read {
            names.push(
                item.map_err(io_err(&abs_dir, "list the directory"))?
                    .file_name(),
            );
        }
        let siblings: BTreeSet<String> = names
            .iter()
            .filter_map(|n| n.to_str().map(str::to_owned))
            .collect();
        for name in names {
            let rel = rel_dir.join(&name);
            let abs = src.join(&rel);
            let name = name.to_string_lossy();
            if name.ends_with(TMP_SUFFIX) {
                continue;
            }
            if live && LIVE_SKIP_PREFIXES.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            check_name(&rel)?;
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if live && e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&abs, "read the metadata of")(e)),
            };
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
                if live && rel == Path::new("pg_wal") {
                    // Created empty, with its archive_status if it has one.
                    if fs::symlink_metadata(src.join("pg_wal/archive_status"))
                        .is_ok_and(|m| m.is_dir())
                    {
                        dirs.push(PathBuf::from("pg_wal/archive_status"));
                    }
                } else if !skip_contents {
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
            if live && live_skips_file(&rel_dir, &name, &siblings) {
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
