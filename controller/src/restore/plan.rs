//! What a restore would use, asked before anything is ordered: every
//! backup of a set gathered from its members' agents ([`list_backups`]),
//! the backup `--from` means ([`super::choose`]), the free space
//! ([`space_check`], pure) and the WAL ([`wal_check`], pure), put together
//! by [`plan`] for `RestorePlan` and as `Restore`'s first check.

use tandem_proto::model::REMOTE_MEMBER;
use tandem_proto::pb;

use super::{choose, target};
use crate::agents::AgentClients;
use crate::error::ServiceError;
use crate::inventory::Inventory;

/// Every backup of a set: each member's files (named by member) and the
/// remote store's (once), newest first; what each WAL archive holds (the
/// store's once); each host's free space; the members that could not be
/// asked.
pub async fn list_backups(
    inventory: &Inventory,
    agents: &AgentClients,
    set_name: &str,
) -> Result<pb::ListBackupsResponse, ServiceError> {
    let Some(set) = inventory.set(set_name) else {
        return Err(ServiceError::UnknownSet {
            set: set_name.to_owned(),
        });
    };
    let answers = crate::agents::ask_members(inventory, agents, &set, |mut c| async move {
        c.list_backups(pb::ListBackupsRequest::default()).await
    })
    .await;
    let mut out = pb::ListBackupsResponse {
        set: set.name.clone(),
        ..Default::default()
    };
    for (member, answer) in answers {
        match answer {
            Ok(r) => {
                for mut b in r.backups {
                    // A remote backup is listed by every member that
                    // shares the store: keep one, named by its key.
                    if b.file.starts_with("remote:") {
                        if out.backups.iter().any(|o| o.file == b.file) {
                            continue;
                        }
                    } else {
                        b.member = member.clone();
                    }
                    out.backups.push(b);
                }
                for mut w in r.wal_archives {
                    // The remote store's WAL is the set's, listed by
                    // every member that shares the store: keep one.
                    if w.member == REMOTE_MEMBER {
                        if out.wal_archives.iter().any(|o| o.location == w.location) {
                            continue;
                        }
                    } else {
                        w.member = member.clone();
                    }
                    out.wal_archives.push(w);
                }
                out.hosts.extend(r.hosts.into_iter().map(|mut h| {
                    h.member = member.clone();
                    h
                }));
                out.problems
                    .extend(r.problems.into_iter().map(|p| format!("{member}: {p}")));
            }
            Err(p) => out.problems.push(p),
        }
    }
    out.backups.sort_by(|a, b| {
        let t = |x: &pb::BackupInfo| x.taken_at.map(|t| (t.seconds, t.nanos));
        t(b).cmp(&t(a)).then_with(|| a.file.cmp(&b.file))
    });
    out.wal_archives.sort_by(|a, b| {
        (a.member == REMOTE_MEMBER, &a.member, &a.location).cmp(&(
            b.member == REMOTE_MEMBER,
            &b.member,
            &b.location,
        ))
    });
    out.hosts.sort_by(|a, b| a.member.cmp(&b.member));
    out.problems.sort();
    Ok(out)
}

/// What a restore of `member` (the primary unless named) from `from` to
/// `target_time` would use and whether it would go ahead: the answer of
/// `tandemctl restore --dry-run` and `tandemctl backups --target-time`,
/// and the check a restore passes before anything is ordered.
pub async fn plan(
    inventory: &Inventory,
    agents: &AgentClients,
    set: &str,
    member: Option<&str>,
    from: &str,
    target_time: Option<&str>,
) -> Result<(pb::RestorePlanResponse, Option<choose::Choice>), ServiceError> {
    let t = target(inventory, set, member)?;
    let mut out = pb::RestorePlanResponse {
        set: set.to_owned(),
        member: t.member.clone(),
        agent: t.agent.clone(),
        target_time: target_time.unwrap_or_default().to_owned(),
        ..Default::default()
    };
    let when = match target_time.map(str::parse::<jiff::Timestamp>).transpose() {
        Ok(w) => w,
        Err(e) => {
            return Err(ServiceError::BadRequest(format!(
                "target time {:?} is not a time like 2026-11-21T12:30:00Z: {e}",
                target_time.unwrap_or_default()
            )));
        }
    };
    let list = list_backups(inventory, agents, set).await?;
    out.unreachable = list.problems.clone();
    let choice = match choose::choose(&list.backups, &t.member, from, when) {
        Ok(c) => c,
        Err(why) => {
            out.problems.push(why);
            return Ok((out, None));
        }
    };
    if let choose::Holder::Member(m) = &choice.holder {
        let set_cfg = inventory.set(set);
        if !set_cfg.is_some_and(|s| s.members.iter().any(|x| &x.name == m)) {
            out.problems.push(format!(
                "set `{set}` has no member `{m}`; `tandemctl backups {set}` lists where each backup is"
            ));
        }
    }
    out.from = choice.from.clone();
    out.notes = choice.notes.clone();
    out.location = match &choice.holder {
        choose::Holder::Target => {
            format!("on member {} (the restored member's own host)", t.member)
        }
        choose::Holder::Member(m) => format!("on member {m}'s host"),
        choose::Holder::Remote => "in the remote store".to_owned(),
    };
    let Some(b) = choice.backup.clone() else {
        // A file put there by hand, or a key not listed: the member's agent
        // checks it (and the space) when the restore starts.
        out.notes.push(format!(
            "{} is not among the backups the set's agents list: its size, the free space and the target time are checked by member {}'s agent when the restore starts",
            choice.from, t.member
        ));
        out.reachable = out.problems.is_empty();
        return Ok((out, Some(choice)));
    };
    if !b.problem.is_empty() {
        out.problems
            .push(format!("{} cannot be read: {}", b.file, b.problem));
    }
    if let (Some(w), Some(at)) = (when, b.taken_at)
        && w.as_second() < at.seconds
    {
        out.problems.push(format!(
            "the target time is before {} was taken: a roll-forward cannot go back in time; choose an older backup or a later target time",
            b.file
        ));
    }
    out.transfer_bytes = if choice.holder == choose::Holder::Target {
        0
    } else {
        b.bytes
    };
    match list.hosts.iter().find(|h| h.member == t.member) {
        None => out.problems.push(format!(
            "member {}'s agent did not say how much space its host has free",
            t.member
        )),
        Some(h) => {
            let (need, free, ok) = space_check(h, b.unpacked_bytes, out.transfer_bytes);
            out.space_needed_bytes = need;
            out.space_free_bytes = free;
            out.space_ok = ok;
            if !ok {
                out.problems.push(format!(
                    "too little space on member {}'s host: {} MiB needed (the backup unpacked{}, plus the reserve), {} MiB free; nothing would be written: free space first",
                    t.member,
                    need.div_ceil(1 << 20),
                    if out.transfer_bytes > 0 { " and the file fetched" } else { "" },
                    free >> 20
                ));
            }
        }
    }
    let w = wal_check(&list.wal_archives, &t.member, &b, when);
    out.wal_from_segment = w.from;
    out.wal_through_segment = w.through;
    out.wal_location = w.location;
    out.problems.extend(w.problems);
    out.notes.extend(w.notes);
    out.reachable = out.problems.is_empty();
    out.backup = Some(b);
    Ok((out, Some(choice)))
}

/// Whether a backup names a log position to roll forward from: a base
/// backup's start and end; a logical backup's are both `0/0`.
pub fn has_log_position(b: &pb::BackupInfo) -> bool {
    let zero = |l: &str| {
        l.parse::<tandem_proto::model::Lsn>()
            .is_ok_and(|l| l.0 == 0)
    };
    !(zero(&b.start_lsn) && zero(&b.end_lsn))
}

/// What the roll-forward from a backup would read (see [`wal_check`]).
#[derive(Debug, Default, PartialEq)]
pub struct WalReach {
    /// The segment holding the backup's start, and the last one readable
    /// from it without a gap.
    pub from: String,
    pub through: String,
    pub location: String,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Whether the WAL archives the restored member reads (its own and the
/// remote store's, which fills what its own lacks) take a roll-forward
/// from the backup's start to the target time (pure). Without a target
/// the restore replays what there is, so a shortfall is a note; with
/// one, a target after the newest archived segment was written cannot be
/// reached (PostgreSQL stops with "recovery ended before configured
/// recovery target was reached").
pub fn wal_check(
    archives: &[pb::WalArchive],
    member: &str,
    b: &pb::BackupInfo,
    target: Option<jiff::Timestamp>,
) -> WalReach {
    use tandem_proto::wal::{Continuity, segment_of};
    let mut r = WalReach::default();
    if !has_log_position(b) {
        // A logical backup (a Firebird gbak file): nothing to roll forward.
        if target.is_some() {
            r.problems.push(format!(
                "{} has no log position (a logical backup): nothing can be rolled forward to a target time; restore without --target-time, or choose a backup with a log",
                b.file
            ));
        } else {
            r.notes.push(format!(
                "{} has no log position (a logical backup): nothing is rolled forward, the restore ends where the backup was taken; later changes come back only through the member's roll-forward hook",
                b.file
            ));
        }
        return r;
    }
    let Ok(start) = b.start_lsn.parse::<tandem_proto::model::Lsn>() else {
        r.notes.push(format!(
            "{} names no start LSN: its WAL is not checked",
            b.file
        ));
        return r;
    };
    let mine: Vec<&pb::WalArchive> = archives
        .iter()
        .filter(|w| w.member == member || w.member == REMOTE_MEMBER)
        .collect();
    let mut why = Vec::new();
    let mut newest: Option<jiff::Timestamp> = None;
    for w in &mine {
        if !w.problem.is_empty() {
            why.push(format!("{}: {}", w.location, w.problem));
            continue;
        }
        let c = match Continuity::try_from(*w) {
            Ok(c) => c,
            Err(e) => {
                why.push(format!("{}: {e}", w.location));
                continue;
            }
        };
        newest = newest.max(c.newest_modified);
        // The backup's timeline is not in its name: the newest timeline
        // that reads through from its start.
        let found =
            c.timelines
                .iter()
                .rev()
                .find_map(|(tl, span)| match c.covers(*tl, start, None) {
                    Ok(()) => Some((segment_of(*tl, start, c.segment_bytes), span.last.clone())),
                    Err(e) => {
                        why.push(format!("{}: {e}", w.location));
                        None
                    }
                });
        if let Some((from, through)) = found
            && (r.through.is_empty() || through > r.through)
        {
            (r.from, r.through, r.location) = (from, through, w.location.clone());
        }
    }
    if mine.is_empty() {
        why.push(format!("member {member}'s agent lists no WAL archive"));
    }
    if r.from.is_empty() {
        r.location = mine
            .iter()
            .map(|w| w.location.clone())
            .collect::<Vec<_>>()
            .join(", ");
        let what = format!(
            "no WAL archive of member {member} reads through from the backup's start {start}: {}",
            why.join("; ")
        );
        if target.is_some() {
            r.problems.push(format!(
                "{what}; the roll-forward cannot reach the target time: choose another backup, or archive the WAL it needs"
            ));
        } else {
            r.notes.push(format!(
                "{what}; the restore would end at the backup's own end ({})",
                b.end_lsn
            ));
        }
        return r;
    }
    if let (Some(t), Some(n)) = (target, newest)
        && t > n
    {
        r.problems.push(format!(
            "the target time {} is after the newest archived WAL (written at {}): the roll-forward could not reach it; archive the current WAL first (SELECT pg_switch_wal() on the primary) or choose an earlier time",
            t.strftime("%Y-%m-%d %H:%M:%S%.fZ"),
            n.strftime("%Y-%m-%d %H:%M:%S%.fZ")
        ));
    }
    r
}

/// The free space a restore needs on the restored member's host (pure):
/// the unpacked data plus the reserve beside the data directory, and a
/// fetched file where backups land (on the same filesystem: added up).
/// Returns (needed, free, enough); with two filesystems, the tighter one.
pub fn space_check(h: &pb::HostSpace, unpacked: u64, fetched: u64) -> (u64, u64, bool) {
    let data_need = unpacked.saturating_add(h.reserve_bytes);
    if fetched == 0 || !h.backup_same_fs {
        let data_ok = h.data_free_bytes >= data_need;
        let file_ok = fetched == 0 || h.backup_free_bytes >= fetched;
        if !file_ok && data_ok {
            return (fetched, h.backup_free_bytes, false);
        }
        return (data_need, h.data_free_bytes, data_ok && file_ok);
    }
    let need = data_need.saturating_add(fetched);
    (need, h.data_free_bytes, h.data_free_bytes >= need)
}

#[cfg(test)]
mod space_tests {
    use super::*;

    fn archive(
        member: &str,
        tls: &[(u32, &str, &str)],
        gaps: &[(&str, &str)],
        at: &str,
    ) -> pb::WalArchive {
        let t: jiff::Timestamp = at.parse().unwrap();
        pb::WalArchive {
            member: member.into(),
            location: format!("/{member}/wal"),
            segment_bytes: 16 << 20,
            timelines: tls
                .iter()
                .map(|(tl, first, last)| pb::WalTimeline {
                    timeline: *tl,
                    first: (*first).into(),
                    last: (*last).into(),
                    segments: 1,
                    gaps: gaps
                        .iter()
                        .map(|(a, b)| pb::WalGap {
                            from: (*a).into(),
                            to: (*b).into(),
                        })
                        .collect(),
                })
                .collect(),
            newest_modified: Some(tandem_proto::model::timestamp_to_wire(t)),
            problem: String::new(),
        }
    }

    fn backup(start: &str) -> pb::BackupInfo {
        pb::BackupInfo {
            file: "/b/daily.tar.zst".into(),
            start_lsn: start.into(),
            end_lsn: "0/5000100".into(),
            ..Default::default()
        }
    }

    fn at(s: &str) -> Option<jiff::Timestamp> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_wal_from_the_backups_start_reaches_the_target() {
        let a = [archive(
            "db1",
            &[(1, "000000010000000000000002", "000000010000000000000009")],
            &[],
            "2026-12-02T12:00:00Z",
        )];
        let r = wal_check(&a, "db1", &backup("0/4000028"), at("2026-12-02T11:00:00Z"));
        assert_eq!(r.from, "000000010000000000000004");
        assert_eq!(r.through, "000000010000000000000009");
        assert_eq!(r.location, "/db1/wal");
        assert!(r.problems.is_empty() && r.notes.is_empty(), "{r:?}");
        // Later than the newest archived segment: not reachable.
        let r = wal_check(&a, "db1", &backup("0/4000028"), at("2026-12-02T13:00:00Z"));
        assert!(
            r.problems[0].contains("after the newest archived WAL"),
            "{r:?}"
        );
        // Another member's archive is not read by this member.
        let r = wal_check(&a, "db2", &backup("0/4000028"), at("2026-12-02T11:00:00Z"));
        assert!(r.problems[0].contains("lists no WAL archive"), "{r:?}");
    }

    #[test]
    fn a_backup_without_a_log_position_rolls_nothing_forward() {
        // A Firebird gbak file is named with LSNs 0/0: no WAL is looked
        // for, a target time cannot be reached, and neither is about WAL.
        let b = pb::BackupInfo {
            file: "/b/monthly-0_0-0_0.tar.zst".into(),
            start_lsn: "0/0".into(),
            end_lsn: "0/0".into(),
            ..Default::default()
        };
        assert!(!has_log_position(&b));
        assert!(has_log_position(&backup("0/4000028")));
        let r = wal_check(&[], "carbon-db", &b, None);
        assert!(r.problems.is_empty() && r.from.is_empty(), "{r:?}");
        assert!(r.notes[0].contains("nothing is rolled forward"), "{r:?}");
        assert!(!r.notes[0].contains("WAL"), "{r:?}");
        let r = wal_check(&[], "carbon-db", &b, at("2026-12-02T11:00:00Z"));
        assert!(r.problems[0].contains("without --target-time"), "{r:?}");
    }

    #[test]
    fn a_gap_or_a_late_start_blocks_a_target_and_is_a_note_without_one() {
        let gap = [archive(
            "db1",
            &[(1, "000000010000000000000002", "000000010000000000000009")],
            &[("000000010000000000000005", "000000010000000000000006")],
            "2026-12-02T12:00:00Z",
        )];
        let r = wal_check(
            &gap,
            "db1",
            &backup("0/4000028"),
            at("2026-12-02T11:00:00Z"),
        );
        assert!(
            r.problems[0].contains("misses 000000010000000000000005"),
            "{r:?}"
        );
        let r = wal_check(&gap, "db1", &backup("0/4000028"), None);
        assert!(r.problems.is_empty(), "{r:?}");
        assert!(r.notes[0].contains("the backup's own end"), "{r:?}");
        // The remote store fills what the member's own archive lacks.
        let mut both = gap.to_vec();
        both.push(archive(
            REMOTE_MEMBER,
            &[(1, "000000010000000000000001", "00000001000000000000000A")],
            &[],
            "2026-12-02T12:30:00Z",
        ));
        let r = wal_check(
            &both,
            "db1",
            &backup("0/4000028"),
            at("2026-12-02T12:10:00Z"),
        );
        assert!(r.problems.is_empty(), "{r:?}");
        assert_eq!(r.through, "00000001000000000000000A");
        assert_eq!(r.location, "/(remote)/wal");
    }

    #[test]
    fn the_newest_timeline_that_reads_through_is_taken() {
        let a = [archive(
            "db1",
            &[
                (1, "000000010000000000000002", "000000010000000000000006"),
                (2, "000000020000000000000006", "000000020000000000000008"),
            ],
            &[],
            "2026-12-02T12:00:00Z",
        )];
        let r = wal_check(&a, "db1", &backup("0/4000028"), None);
        assert_eq!(r.from, "000000010000000000000004", "{r:?}");
        let r = wal_check(&a, "db1", &backup("0/7000028"), None);
        assert_eq!(r.from, "000000020000000000000007", "{r:?}");
    }

    fn host(data: u64, backup: u64, same: bool) -> pb::HostSpace {
        pb::HostSpace {
            data_free_bytes: data,
            reserve_bytes: 10,
            backup_free_bytes: backup,
            backup_same_fs: same,
            ..Default::default()
        }
    }

    #[test]
    fn the_fetched_file_counts_where_it_lands() {
        assert_eq!(space_check(&host(110, 0, true), 100, 0), (110, 110, true));
        assert_eq!(space_check(&host(109, 0, true), 100, 0), (110, 109, false));
        // Fetched onto the data filesystem: both add up.
        assert_eq!(
            space_check(&host(150, 150, true), 100, 50),
            (160, 150, false)
        );
        assert_eq!(
            space_check(&host(160, 160, true), 100, 50),
            (160, 160, true)
        );
        // Another filesystem: each on its own.
        assert_eq!(
            space_check(&host(110, 50, false), 100, 50),
            (110, 110, true)
        );
        assert_eq!(space_check(&host(110, 49, false), 100, 50), (50, 49, false));
    }
}
