//! WAL retention: which archived WAL files no kept backup can need, and
//! removing them from the local archive and the remote store.
//!
//! The rule ([`plan`], pure, shared by both places):
//! - a roll-forward from a backup reads the segments from the one holding
//!   its start LSN on, so every segment (of every timeline) from the one
//!   holding the start of the oldest backup that rotation keeps is kept;
//!   older segments, and the `.partial` and `.backup` files of older
//!   segments, may go;
//! - nothing goes unless at least one kept backup is verified (its copy
//!   passed testdb): until then an older backup may still be wanted, and
//!   its WAL with it. With no kept backup at all nothing goes either;
//! - timeline `.history` files always stay (they are small, and a
//!   roll-forward across a promotion reads them);
//! - a file written within the recovery window (`backup.wal_keep_days`)
//!   stays, whatever the backups; one whose time is unknown stays too.
//!
//! Backups do not record their timeline, so the rule keeps every timeline
//! from the boundary on; that may keep a little more than needed, never less.
//!
//! Deletion goes oldest segment first, so an interrupted prune leaves the
//! archive without new holes.

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use tracing::{info, warn};

use super::remote::Remote;
use super::wal::{self, WalError, WalFile};
use crate::config::AgentConfig;
use tandem_proto::model::Lsn;

/// A backup that rotation keeps, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptBackup {
    /// Its file, or `remote:<key>`.
    pub file: String,
    pub start_lsn: Lsn,
    pub verified: bool,
}

/// One file the plan removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doomed {
    pub name: String,
    pub bytes: u64,
}

/// What [`plan`] decided for one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The files to remove, oldest segment first.
    pub delete: Vec<Doomed>,
    /// The oldest kept backup, whose start segment is the first one kept
    /// (none when nothing may go).
    pub boundary: Option<Boundary>,
    /// Older than the boundary but kept: written within the window.
    pub kept_in_window: u64,
    /// The rule that decided, for people.
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Boundary {
    pub backup: String,
    pub start_lsn: Lsn,
    /// The first segment kept (the one holding `start_lsn`, named on the
    /// lowest timeline the archive has it on): every segment with its
    /// number or a higher one stays, on every timeline.
    pub first_kept_segment: String,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.delete.iter().map(|d| d.bytes).sum()
    }
}

/// The segment number a WAL file belongs to: a segment's own, a
/// `.partial` segment's, a `.backup` label's; `None` for `.history` files
/// and any other name (kept).
fn segment_of_file(name: &str, segment_bytes: u64) -> Option<u64> {
    if !wal::valid_name(name) {
        return None;
    }
    let seg = if let Some(s) = name.strip_suffix(".partial") {
        s
    } else if name.ends_with(".backup") {
        name.split_once('.')?.0
    } else {
        name
    };
    wal::segment_number(seg, segment_bytes).map(|(_, n)| n)
}

/// Which of `files` (one archive) may go, given the backups rotation keeps,
/// the time `now` and the recovery window; see the module documentation.
pub fn plan(
    files: &[WalFile],
    kept: &[KeptBackup],
    now: Timestamp,
    window: SignedDuration,
) -> Plan {
    let nothing = |why: String| Plan {
        delete: vec![],
        boundary: None,
        kept_in_window: 0,
        why,
    };
    let Some(oldest) = kept.iter().min_by_key(|b| b.start_lsn) else {
        return nothing("no backup is kept, so every WAL file is kept".into());
    };
    if !kept.iter().any(|b| b.verified) {
        return nothing(
            "no kept backup is verified (tested clean), so every WAL file is kept".into(),
        );
    }
    // The segment size comes from a segment's size: without one, the
    // other files' segment numbers are not known.
    if !files.iter().any(|f| wal::parse_segment(&f.name).is_some()) {
        return nothing("the archive holds no segment, so every WAL file is kept".into());
    }
    let segment_bytes = wal::continuity(files.iter().cloned()).segment_bytes;
    let first_kept = oldest.start_lsn.0 / segment_bytes;
    let cutoff = now - window;
    let mut doomed: Vec<(u64, &WalFile)> = Vec::new();
    let mut kept_in_window = 0;
    for f in files {
        let Some(n) = segment_of_file(&f.name, segment_bytes) else {
            continue;
        };
        if n >= first_kept {
            continue;
        }
        let old_enough = window.is_zero() || f.modified.is_some_and(|m| m < cutoff);
        if old_enough {
            doomed.push((n, f));
        } else {
            kept_in_window += 1;
        }
    }
    doomed.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    let first_kept_tl = files
        .iter()
        .filter_map(|f| wal::segment_number(&f.name, segment_bytes))
        .filter(|&(_, n)| n >= first_kept)
        .min_by_key(|&(tl, n)| (n, tl))
        .map_or(1, |(tl, _)| tl);
    let first_kept_segment = wal::segment_name(first_kept_tl, first_kept, segment_bytes);
    let mut why = format!(
        "every segment from {first_kept_segment} (of any timeline) on is kept: it holds {}, the start of the oldest kept backup {}",
        oldest.start_lsn, oldest.file
    );
    if kept_in_window > 0 {
        why.push_str(&format!(
            "; {kept_in_window} older file(s) are kept as written within the last {} day(s)",
            window.as_hours() / 24
        ));
    }
    Plan {
        delete: doomed
            .into_iter()
            .map(|(_, f)| Doomed {
                name: f.name.clone(),
                bytes: f.bytes,
            })
            .collect(),
        boundary: Some(Boundary {
            backup: oldest.file.clone(),
            start_lsn: oldest.start_lsn,
            first_kept_segment,
        }),
        kept_in_window,
        why,
    }
}

/// Remove the plan's files from the archive `dir`, oldest first, and fsync
/// the directory; one already gone is fine. Returns how many were removed.
pub fn prune_dir(dir: &Path, plan: &Plan) -> Result<u64, WalError> {
    let mut n = 0;
    for d in &plan.delete {
        let path = dir.join(wal::checked_name(&d.name)?);
        match std::fs::remove_file(&path) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WalError::Io {
                    op: "remove the old WAL file",
                    path,
                    source,
                });
            }
        }
    }
    if n > 0 {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|source| WalError::Io {
                op: "fsync the directory",
                path: dir.to_owned(),
                source,
            })?;
        info!(
            archive = %dir.display(),
            removed = n,
            bytes = plan.bytes(),
            first = plan.delete.first().map(|d| d.name.as_str()).unwrap_or(""),
            last = plan.delete.last().map(|d| d.name.as_str()).unwrap_or(""),
            "old WAL removed from the archive"
        );
    }
    Ok(n)
}

/// What retention found (and did) in one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlaceReport {
    /// The archive directory, or `remote:<set>/wal`.
    pub location: String,
    /// None when the place could not be read (see `problem`).
    pub plan: Option<Plan>,
    /// Files removed (0 in a dry run).
    pub removed: u64,
    pub problem: Option<String>,
}

/// What [`run`] found and did, per place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// The backups the rule counted (local and remote).
    pub kept_backups: usize,
    pub places: Vec<PlaceReport>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.places.iter().all(|p| p.problem.is_none())
    }

    /// One line for the operation's result (and so the controller's record).
    pub fn note(&self) -> String {
        let parts: Vec<String> = self
            .places
            .iter()
            .map(|p| match (&p.plan, &p.problem) {
                (_, Some(e)) => format!(
                    "{}: pruning failed after {} file(s) ({e}); older WAL is kept",
                    p.location, p.removed
                ),
                (Some(plan), None) if self.dry_run => format!(
                    "{}: {} old file(s), {}, would be removed ({})",
                    p.location,
                    plan.delete.len(),
                    mib(plan.bytes()),
                    plan.why
                ),
                (Some(plan), None) => format!(
                    "{}: {} old file(s), {}, removed ({})",
                    p.location,
                    p.removed,
                    mib(plan.bytes()),
                    plan.why
                ),
                (None, None) => format!("{}: not read", p.location),
            })
            .collect();
        if parts.is_empty() {
            return "WAL retention: no WAL archive is configured".into();
        }
        format!("WAL retention: {}", parts.join("; "))
    }

    /// For people (`tandem-agent wal-prune`).
    pub fn human(&self) -> String {
        let mut out = String::new();
        for p in &self.places {
            match (&p.plan, &p.problem) {
                (_, Some(e)) => out.push_str(&format!(
                    "{}: cannot prune ({} file(s) removed before): {e}\n",
                    p.location, p.removed
                )),
                (Some(plan), None) => {
                    let verb = if self.dry_run {
                        "would be removed"
                    } else {
                        "removed"
                    };
                    let n = if self.dry_run {
                        plan.delete.len() as u64
                    } else {
                        p.removed
                    };
                    out.push_str(&format!(
                        "{}: {n} file(s), {}, {verb}\n  {}\n",
                        p.location,
                        mib(plan.bytes()),
                        plan.why
                    ));
                    for d in &plan.delete {
                        out.push_str(&format!("  {}\n", d.name));
                    }
                }
                (None, None) => {}
            }
        }
        if self.places.is_empty() {
            out.push_str("no WAL archive is configured (backup.wal_archive, [remote])\n");
        }
        if self.dry_run {
            out.push_str("dry run: nothing was removed; pass --yes to remove them\n");
        }
        out
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn kept_of(b: super::BackupInfo) -> KeptBackup {
    KeptBackup {
        file: b.file.display().to_string(),
        start_lsn: b.start_lsn,
        verified: b.verified,
    }
}

/// Apply the rule to the local WAL archive and to the set's WAL in the
/// remote store, counting the backups of the backup directory and of the
/// store; with `dry_run`, only say what would go. When the backups cannot
/// all be listed, nothing is removed anywhere.
pub async fn run(cfg: &AgentConfig, now: Timestamp, dry_run: bool) -> Report {
    let mut report = Report {
        dry_run,
        kept_backups: 0,
        places: vec![],
    };
    let Some(b) = &cfg.backup else {
        return report;
    };
    let window = b.wal_keep_window();
    let remote_wal = cfg
        .remote
        .as_ref()
        .map(|_| format!("remote:{}/wal", cfg.set));
    let local_wal = b.wal_archive.clone();
    let places = || {
        local_wal
            .iter()
            .map(|d| d.display().to_string())
            .chain(remote_wal.clone())
    };
    let fail_all = |report: &mut Report, why: String| {
        report.places = places()
            .map(|location| PlaceReport {
                location,
                plan: None,
                removed: 0,
                problem: Some(why.clone()),
            })
            .collect();
    };
    // The backups first, from every place that has them.
    let dir = b.dir.clone();
    let mut kept: Vec<KeptBackup> =
        match tokio::task::spawn_blocking(move || super::describe_all(&dir)).await {
            Ok(Ok(list)) => list.into_iter().map(kept_of).collect(),
            Ok(Err(e)) => {
                fail_all(&mut report, format!("the backups could not be listed: {e}"));
                return report;
            }
            Err(e) => {
                fail_all(&mut report, e.to_string());
                return report;
            }
        };
    let store = match &cfg.remote {
        None => None,
        Some(r) => {
            let listed = async {
                let store = Remote::open(r)?;
                let list = store.describe(&cfg.set).await?;
                Ok::<_, super::remote::RemoteError>((store, list))
            };
            match listed.await {
                Ok((store, list)) => {
                    kept.extend(list.into_iter().map(|b| kept_of(b.info())));
                    Some(store)
                }
                Err(e) => {
                    fail_all(
                        &mut report,
                        format!("the remote store's backups could not be listed: {e}"),
                    );
                    return report;
                }
            }
        }
    };
    report.kept_backups = kept.len();

    if let Some(dir) = local_wal {
        let location = dir.display().to_string();
        let kept = kept.clone();
        let done = tokio::task::spawn_blocking(move || {
            let files = wal::list(&dir)?;
            let plan = plan(&files, &kept, now, window);
            let removed = if dry_run { 0 } else { prune_dir(&dir, &plan)? };
            Ok::<_, WalError>((plan, removed))
        })
        .await;
        report.places.push(match done {
            Ok(Ok((plan, removed))) => PlaceReport {
                location,
                plan: Some(plan),
                removed,
                problem: None,
            },
            Ok(Err(e)) => PlaceReport {
                location,
                plan: None,
                removed: 0,
                problem: Some(e.to_string()),
            },
            Err(e) => PlaceReport {
                location,
                plan: None,
                removed: 0,
                problem: Some(e.to_string()),
            },
        });
    }
    if let (Some(store), Some(location)) = (store, remote_wal) {
        let mut place = PlaceReport {
            location,
            plan: None,
            removed: 0,
            problem: None,
        };
        match store.wal_files(&cfg.set).await {
            Err(e) => place.problem = Some(e.to_string()),
            Ok(files) => {
                let plan = plan(&files, &kept, now, window);
                if !dry_run {
                    for d in &plan.delete {
                        if let Err(e) = store.delete_wal(&cfg.set, &d.name).await {
                            place.problem = Some(e.to_string());
                            break;
                        }
                        place.removed += 1;
                    }
                    if place.removed > 0 {
                        info!(
                            store = %place.location,
                            removed = place.removed,
                            bytes = plan.bytes(),
                            first = plan.delete.first().map(|d| d.name.as_str()).unwrap_or(""),
                            last = plan.delete[place.removed as usize - 1].name.as_str(),
                            "old WAL removed from the remote store"
                        );
                    }
                }
                place.plan = Some(plan);
            }
        }
        report.places.push(place);
    }
    report
}

/// Retention at the end of a kept backup: prune, log what was kept and
/// why, and return the note for the operation's result (none when no WAL
/// archive is configured).
pub async fn after_backup(cfg: &AgentConfig) -> Option<String> {
    let report = run(cfg, Timestamp::now(), false).await;
    if report.places.is_empty() {
        return None;
    }
    for p in &report.places {
        match (&p.plan, &p.problem) {
            (_, Some(e)) => {
                warn!(place = %p.location, error = %e, "WAL retention failed; old WAL is kept")
            }
            (Some(plan), None) => info!(
                place = %p.location,
                removed = p.removed,
                kept_in_window = plan.kept_in_window,
                why = %plan.why,
                "WAL retention done"
            ),
            (None, None) => {}
        }
    }
    Some(report.note())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;
    const NOW: &str = "2026-12-03T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn days(n: i64) -> SignedDuration {
        SignedDuration::from_hours(24 * n)
    }

    /// Files written `age_days` before [`NOW`].
    fn files(names: &[&str], age_days: i64) -> Vec<WalFile> {
        names
            .iter()
            .map(|n| WalFile {
                name: (*n).to_owned(),
                bytes: if n.len() == 24 { SEG } else { 300 },
                modified: Some(now() - days(age_days)),
            })
            .collect()
    }

    fn seg(tl: u32, n: u64) -> String {
        wal::segment_name(tl, n, SEG)
    }

    /// Segments `range` of timeline `tl`, written 30 days ago.
    fn segs(tl: u32, range: std::ops::RangeInclusive<u64>) -> Vec<WalFile> {
        let names: Vec<String> = range.map(|n| seg(tl, n)).collect();
        files(&names.iter().map(String::as_str).collect::<Vec<_>>(), 30)
    }

    fn backup(file: &str, start_segment: u64, verified: bool) -> KeptBackup {
        KeptBackup {
            file: file.into(),
            start_lsn: Lsn(start_segment * SEG + 0x28),
            verified,
        }
    }

    fn names(p: &Plan) -> Vec<String> {
        p.delete.iter().map(|d| d.name.clone()).collect()
    }

    #[test]
    fn with_no_backup_kept_nothing_goes() {
        let p = plan(&segs(1, 1..=10), &[], now(), days(0));
        assert!(p.delete.is_empty());
        assert_eq!(p.boundary, None);
        assert!(p.why.contains("no backup is kept"), "{}", p.why);
    }

    #[test]
    fn with_no_verified_backup_nothing_goes() {
        let kept = [backup("a", 5, false), backup("b", 8, false)];
        let p = plan(&segs(1, 1..=10), &kept, now(), days(0));
        assert!(p.delete.is_empty());
        assert!(p.why.contains("no kept backup is verified"), "{}", p.why);
    }

    #[test]
    fn segments_before_the_oldest_kept_backup_go_and_its_roll_forward_stays_covered() {
        let all = segs(1, 1..=10);
        let kept = [backup("newer", 8, true), backup("older", 5, true)];
        let p = plan(&all, &kept, now(), days(0));
        assert_eq!(names(&p), (1..=4).map(|n| seg(1, n)).collect::<Vec<_>>());
        assert_eq!(p.bytes(), 4 * SEG);
        let b = p.boundary.as_ref().unwrap();
        assert_eq!(b.backup, "older");
        assert_eq!(b.first_kept_segment, seg(1, 5));
        assert!(p.why.contains("the oldest kept backup older"), "{}", p.why);
        // What stays still carries both backups forward to the end.
        let left: Vec<WalFile> = all
            .into_iter()
            .filter(|f| !names(&p).contains(&f.name))
            .collect();
        let c = wal::continuity(left);
        for k in &kept {
            assert_eq!(c.covers_from(1, k.start_lsn), Ok(()));
        }
    }

    #[test]
    fn a_start_on_a_segment_boundary_keeps_that_segment() {
        let kept = [KeptBackup {
            file: "b".into(),
            start_lsn: Lsn(5 * SEG),
            verified: true,
        }];
        let p = plan(&segs(1, 1..=6), &kept, now(), days(0));
        assert_eq!(names(&p), (1..=4).map(|n| seg(1, n)).collect::<Vec<_>>());
    }

    #[test]
    fn an_unverified_newest_backup_moves_nothing_past_the_oldest_kept_one() {
        // The newest is not verified: the WAL from the older, verified one
        // stays, so a restore can fall back to it.
        let kept = [backup("new", 8, false), backup("old", 3, true)];
        let p = plan(&segs(1, 1..=10), &kept, now(), days(0));
        assert_eq!(names(&p), vec![seg(1, 1), seg(1, 2)]);
        // An unverified oldest one is still kept, and its WAL with it.
        let kept = [backup("new", 8, true), backup("old", 3, false)];
        let p = plan(&segs(1, 1..=10), &kept, now(), days(0));
        assert_eq!(names(&p), vec![seg(1, 1), seg(1, 2)]);
    }

    #[test]
    fn every_timeline_is_kept_from_the_boundary_on_and_history_files_stay() {
        // Timeline 2 forked in segment 6.
        let mut all = segs(1, 1..=6);
        all.extend(files(&["00000002.history"], 30));
        all.extend(segs(2, 6..=9));
        let p = plan(&all, &[backup("b", 7, true)], now(), days(0));
        let mut want: Vec<String> = (1..=6).map(|n| seg(1, n)).collect();
        want.push(seg(2, 6));
        assert_eq!(names(&p), want);
        // A backup before the fork keeps both timelines from its start.
        let p = plan(&all, &[backup("b", 5, true)], now(), days(0));
        assert_eq!(names(&p), (1..=4).map(|n| seg(1, n)).collect::<Vec<_>>());
    }

    #[test]
    fn gaps_before_the_boundary_do_not_matter() {
        let mut all = segs(1, 1..=2);
        all.extend(segs(1, 5..=8));
        let p = plan(&all, &[backup("b", 6, true)], now(), days(0));
        assert_eq!(names(&p), vec![seg(1, 1), seg(1, 2), seg(1, 5)]);
    }

    #[test]
    fn backup_labels_and_partial_segments_go_with_their_segment() {
        let mut all = segs(1, 1..=6);
        let old_label = format!("{}.00000028.backup", seg(1, 2));
        let new_label = format!("{}.00000028.backup", seg(1, 5));
        let old_partial = format!("{}.partial", seg(1, 3));
        all.extend(files(
            &[&old_label, &new_label, &old_partial, "notes.txt"],
            30,
        ));
        let p = plan(&all, &[backup("b", 5, true)], now(), days(0));
        assert_eq!(
            names(&p),
            vec![
                seg(1, 1),
                seg(1, 2),
                old_label.clone(),
                seg(1, 3),
                old_partial.clone(),
                seg(1, 4)
            ]
        );
        assert!(!names(&p).contains(&new_label));
        // Without a segment the segment size is not known: nothing goes.
        let labels = files(&[&old_label, &old_partial], 30);
        let p = plan(&labels, &[backup("b", 5, true)], now(), days(0));
        assert!(p.delete.is_empty());
        assert!(p.why.contains("no segment"), "{}", p.why);
    }

    #[test]
    fn files_written_within_the_window_stay() {
        let mut all = files(&[&seg(1, 1), &seg(1, 2)], 10);
        all.extend(files(&[&seg(1, 3), &seg(1, 4)], 2));
        all.extend(segs(1, 5..=6));
        all.push(WalFile {
            name: seg(1, 0),
            bytes: SEG,
            modified: None,
        });
        let p = plan(&all, &[backup("b", 5, true)], now(), days(7));
        assert_eq!(names(&p), vec![seg(1, 1), seg(1, 2)]);
        assert_eq!(p.kept_in_window, 3);
        assert!(p.why.contains("within the last 7 day"), "{}", p.why);
        // No window: the time does not matter.
        let p = plan(&all, &[backup("b", 5, true)], now(), days(0));
        assert_eq!(p.delete.len(), 5);
    }

    #[test]
    fn pruning_a_directory_removes_the_plan_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        for n in 1..=6 {
            let f = std::fs::File::create(tmp.path().join(seg(1, n))).unwrap();
            f.set_len(SEG).unwrap();
        }
        std::fs::write(tmp.path().join("00000002.history"), b"1\t0/5000000\tx\n").unwrap();
        let listed = wal::list(tmp.path()).unwrap();
        assert_eq!(listed.len(), 7);
        let p = plan(&listed, &[backup("b", 4, true)], now(), days(0));
        assert_eq!(prune_dir(tmp.path(), &p).unwrap(), 3);
        let left: Vec<String> = wal::list(tmp.path())
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(
            left,
            vec![
                seg(1, 4),
                seg(1, 5),
                seg(1, 6),
                "00000002.history".to_owned(),
            ]
        );
        // Again: nothing left to remove, and that is fine.
        assert_eq!(prune_dir(tmp.path(), &p).unwrap(), 0);
    }
}
