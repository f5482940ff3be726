//! Which backup a restore uses (pure): `--from` as the operator gave it,
//! against every backup of the set (each member's host and the remote
//! store, as [`super::list_backups`] gathers them).
//!
//! - `latest` (or nothing): the newest *verified* backup taken at or
//!   before the target time, wherever it is; on a tie (the same backup
//!   pushed to the remote store), the restored member's own copy first,
//!   then the remote store's, then another member's.
//! - `daily`, `weekly`, `monthly`: the newest of that kind, anywhere.
//! - an absolute path: a file on the restored member's host.
//! - `MEMBER:/path`: a file on another member's host.
//! - `remote:KEY`: a key in the remote store.

use jiff::Timestamp;
use tandem_proto::order::BackupSource;
use tandem_proto::pb;

pub use tandem_proto::model::REMOTE_MEMBER as REMOTE;

/// Where the chosen backup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// On the restored member's own host.
    Target,
    /// On another member's host.
    Member(String),
    /// In the remote store.
    Remote,
}

/// The backup chosen, and `from` as the restore orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// What the listing says of it (absent: a file or key it did not list).
    pub backup: Option<pb::BackupInfo>,
    /// For the agent's order: a local path, `MEMBER:/path` or `remote:KEY`.
    pub from: String,
    pub holder: Holder,
    /// What was passed over and why.
    pub notes: Vec<String>,
}

fn taken(b: &pb::BackupInfo) -> Option<Timestamp> {
    b.taken_at
        .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
}

fn holder_of(b: &pb::BackupInfo, target: &str) -> Holder {
    if b.member == REMOTE || b.file.starts_with("remote:") {
        Holder::Remote
    } else if b.member == target {
        Holder::Target
    } else {
        Holder::Member(b.member.clone())
    }
}

fn order_from(b: &pb::BackupInfo, holder: &Holder) -> String {
    match holder {
        Holder::Target | Holder::Remote => b.file.clone(),
        Holder::Member(m) => format!("{m}:{}", b.file),
    }
}

fn file_name(b: &pb::BackupInfo) -> &str {
    b.file.rsplit('/').next().unwrap_or_default()
}

fn rank(h: &Holder) -> u8 {
    match h {
        Holder::Target => 0,
        Holder::Remote => 1,
        Holder::Member(_) => 2,
    }
}

fn when(t: Option<Timestamp>) -> String {
    t.map_or("an unknown time".to_owned(), |t| {
        t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
    })
}

fn place(b: &pb::BackupInfo) -> String {
    if b.member == REMOTE {
        "in the remote store".to_owned()
    } else {
        format!("on member {}", b.member)
    }
}

/// Choose the backup for `from` (see the module's rules).
pub fn choose(
    backups: &[pb::BackupInfo],
    target_member: &str,
    from: &str,
    target_time: Option<Timestamp>,
) -> Result<Choice, String> {
    let from = from.trim();
    let listed = |member: &str, file: &str| {
        backups
            .iter()
            .find(|b| b.file == file && (b.member == member || b.file.starts_with("remote:")))
            .cloned()
    };
    let from = match BackupSource::parse(from).map_err(|e| e.to_string())? {
        BackupSource::Remote(_) => {
            return Ok(Choice {
                backup: listed(REMOTE, from),
                from: from.to_owned(),
                holder: Holder::Remote,
                notes: vec![],
            });
        }
        BackupSource::Member { member, file } => {
            let holder = if member == target_member {
                Holder::Target
            } else {
                Holder::Member(member.to_owned())
            };
            return Ok(Choice {
                backup: listed(member, file),
                from: if holder == Holder::Target {
                    file.to_owned()
                } else {
                    from.to_owned()
                },
                holder,
                notes: vec![],
            });
        }
        BackupSource::Local(file) if file.starts_with('/') => {
            return Ok(Choice {
                backup: listed(target_member, file),
                from: file.to_owned(),
                holder: Holder::Target,
                notes: vec![],
            });
        }
        BackupSource::Local(other) => other,
    };
    let kind = match from {
        "" | "latest" => None,
        "daily" | "weekly" | "monthly" => Some(from),
        other => {
            return Err(format!(
                "--from {other:?} is not a backup: use latest (the default), daily, weekly, monthly, a backup file on the member's host, MEMBER:/path for a file on another member's host, or remote:KEY"
            ));
        }
    };
    let usable: Vec<&pb::BackupInfo> = backups
        .iter()
        .filter(|b| b.problem.is_empty())
        .filter(|b| kind.is_none_or(|k| b.kind == k))
        .collect();
    let what = kind.map_or("verified backup".to_owned(), |k| format!("{k} backup"));
    if usable.is_empty() {
        return Err(format!(
            "the set has no {what} on any member's host or in the remote store; `tandemctl backups SET` lists what there is, `tandemctl backup SET` takes one"
        ));
    }
    let mut notes = Vec::new();
    let mut candidates: Vec<&pb::BackupInfo> = Vec::new();
    for b in usable {
        if kind.is_none() && !b.verified {
            notes.push(format!(
                "passed over {} {}: not verified (no clean testdb of its copy)",
                file_name(b),
                place(b)
            ));
            continue;
        }
        if let (Some(t), Some(at)) = (target_time, taken(b))
            && at > t
        {
            notes.push(format!(
                "passed over {} {}: taken at {}, after the target time",
                file_name(b),
                place(b),
                when(Some(at))
            ));
            continue;
        }
        candidates.push(b);
    }
    candidates.sort_by(|a, b| {
        taken(b)
            .cmp(&taken(a))
            .then_with(|| {
                rank(&holder_of(a, target_member)).cmp(&rank(&holder_of(b, target_member)))
            })
            .then_with(|| a.member.cmp(&b.member))
    });
    let Some(best) = candidates.first() else {
        let oldest = backups
            .iter()
            .filter(|b| b.problem.is_empty() && (kind.is_some() || b.verified))
            .filter(|b| kind.is_none_or(|k| b.kind == k))
            .filter_map(taken)
            .min();
        return Err(match (target_time, oldest) {
            (Some(t), Some(o)) => format!(
                "the target time {} is before the oldest {what} (taken at {}): a roll-forward cannot go back in time; choose a later target time",
                when(Some(t)),
                when(Some(o))
            ),
            _ => format!(
                "the set has no {what}: a backup is verified when testdb found its copy clean; `tandemctl backup SET` takes one"
            ),
        });
    };
    let holder = holder_of(best, target_member);
    // The same backup elsewhere (pushed to the remote store too) is no news.
    notes.retain(|n| !n.contains(file_name(best)));
    Ok(Choice {
        from: order_from(best, &holder),
        backup: Some((*best).clone()),
        holder,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(member: &str, file: &str, kind: &str, at: &str, verified: bool) -> pb::BackupInfo {
        let t: Timestamp = at.parse().unwrap();
        pb::BackupInfo {
            file: file.into(),
            kind: kind.into(),
            taken_at: Some(prost_types::Timestamp {
                seconds: t.as_second(),
                nanos: t.subsec_nanosecond(),
            }),
            bytes: 100,
            unpacked_bytes: 400,
            verified,
            member: member.into(),
            ..Default::default()
        }
    }

    fn t(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn latest_is_the_newest_verified_backup_on_any_host() {
        let list = vec![
            b(
                "db2",
                "/b/monthly-2.tar.zst",
                "monthly",
                "2026-12-02T10:00:00Z",
                true,
            ),
            b(
                "db1",
                "/b/daily-1.tar.zst",
                "daily",
                "2026-12-01T10:00:00Z",
                true,
            ),
            b(
                "db2",
                "/b/daily-3.tar.zst",
                "daily",
                "2026-12-02T11:00:00Z",
                false,
            ),
        ];
        let c = choose(&list, "db1", "", None).unwrap();
        assert_eq!(c.from, "db2:/b/monthly-2.tar.zst");
        assert_eq!(c.holder, Holder::Member("db2".into()));
        assert!(c.notes[0].contains("daily-3.tar.zst") && c.notes[0].contains("not verified"));
        assert_eq!(choose(&list, "db1", "latest", None).unwrap(), c);
    }

    #[test]
    fn latest_reaches_back_to_the_target_time() {
        let list = vec![
            b(
                "db2",
                "/b/daily-2.tar.zst",
                "daily",
                "2026-12-02T10:00:00Z",
                true,
            ),
            b(
                "db1",
                "/b/daily-1.tar.zst",
                "daily",
                "2026-12-01T10:00:00Z",
                true,
            ),
        ];
        let c = choose(&list, "db1", "latest", t("2026-12-01T12:00:00Z")).unwrap();
        assert_eq!(
            (c.from.as_str(), c.holder),
            ("/b/daily-1.tar.zst", Holder::Target)
        );
        assert!(c.notes[0].contains("after the target time"));
        let e = choose(&list, "db1", "latest", t("2026-11-30T00:00:00Z")).unwrap_err();
        assert!(e.contains("before the oldest verified backup"), "{e}");
    }

    #[test]
    fn the_same_backup_is_taken_from_the_nearest_place() {
        let list = vec![
            b(
                "db2",
                "/b/daily-2.tar.zst",
                "daily",
                "2026-12-02T10:00:00Z",
                true,
            ),
            b(
                REMOTE,
                "remote:set/daily-2.tar.zst",
                "daily",
                "2026-12-02T10:00:00Z",
                true,
            ),
        ];
        let c = choose(&list, "db1", "latest", None).unwrap();
        assert_eq!(
            (c.from.as_str(), c.holder),
            ("remote:set/daily-2.tar.zst", Holder::Remote)
        );
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        let mut own = list.clone();
        own.push(b(
            "db1",
            "/b/daily-2.tar.zst",
            "daily",
            "2026-12-02T10:00:00Z",
            true,
        ));
        assert_eq!(
            choose(&own, "db1", "", None).unwrap().holder,
            Holder::Target
        );
    }

    #[test]
    fn a_kind_is_the_newest_of_that_kind_anywhere() {
        let list = vec![
            b(
                "db2",
                "/b/monthly-2.tar.zst",
                "monthly",
                "2026-12-02T10:00:00Z",
                true,
            ),
            b(
                "db2",
                "/b/daily-1.tar.zst",
                "daily",
                "2026-12-01T10:00:00Z",
                false,
            ),
        ];
        assert_eq!(
            choose(&list, "db1", "daily", None).unwrap().from,
            "db2:/b/daily-1.tar.zst"
        );
        let e = choose(&list, "db1", "weekly", None).unwrap_err();
        assert!(e.contains("no weekly backup"), "{e}");
    }

    #[test]
    fn nothing_verified_or_unreadable_is_refused_with_what_to_do() {
        let mut bad = b(
            "db2",
            "/b/daily-1.tar.zst",
            "daily",
            "2026-12-01T10:00:00Z",
            true,
        );
        bad.problem = "truncated".into();
        let list = vec![
            bad,
            b(
                "db2",
                "/b/daily-2.tar.zst",
                "daily",
                "2026-12-02T10:00:00Z",
                false,
            ),
        ];
        let e = choose(&list, "db1", "latest", None).unwrap_err();
        assert!(
            e.contains("no verified backup") && e.contains("tandemctl backup"),
            "{e}"
        );
        assert!(
            choose(&[], "db1", "", None)
                .unwrap_err()
                .contains("no verified backup")
        );
    }

    #[test]
    fn files_and_keys_pass_through() {
        let list = vec![b(
            "db2",
            "/b/daily-2.tar.zst",
            "daily",
            "2026-12-02T10:00:00Z",
            true,
        )];
        let c = choose(&list, "db1", "db2:/b/daily-2.tar.zst", None).unwrap();
        assert_eq!(c.holder, Holder::Member("db2".into()));
        assert_eq!(c.backup.unwrap().bytes, 100);
        let own = choose(&list, "db1", "db1:/x/f.tar.zst", None).unwrap();
        assert_eq!(
            (own.from.as_str(), own.holder),
            ("/x/f.tar.zst", Holder::Target)
        );
        assert!(own.backup.is_none());
        let r = choose(&list, "db1", "remote:k/f.tar.zst", None).unwrap();
        assert_eq!(r.holder, Holder::Remote);
        assert_eq!(
            choose(&list, "db1", "/x/f.tar.zst", None).unwrap().holder,
            Holder::Target
        );
        assert!(
            choose(&list, "db1", "yesterday", None)
                .unwrap_err()
                .contains("latest")
        );
    }
}
