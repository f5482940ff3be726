//! Rotation (SPEC R1): which kind a new backup is, and which old ones go.
//!
//! A new backup is `monthly` when no monthly backup was taken in the same
//! calendar month (UTC), else `weekly` when none was taken in the same ISO
//! week, else `daily`. Each kind then keeps its newest `N` backups (counts
//! from `[backup]` in agent.toml); older ones of that kind are deleted. A
//! count of 0 keeps none of that kind, so it is never chosen for a new one.
//! Pure: the caller lists the directory and deletes.

use super::name::{BackupKind, BackupName};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How many backups of each kind to keep (`[backup]` in agent.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            daily: 7,
            weekly: 4,
            monthly: 6,
        }
    }
}

impl Retention {
    pub fn keep(&self, kind: BackupKind) -> usize {
        match kind {
            BackupKind::Daily => self.daily,
            BackupKind::Weekly => self.weekly,
            BackupKind::Monthly => self.monthly,
        }
    }
}

fn month(t: Timestamp) -> (i16, i8) {
    let z = t.to_zoned(TimeZone::UTC);
    (z.year(), z.month())
}

fn iso_week(t: Timestamp) -> (i16, i8) {
    let w = t.to_zoned(TimeZone::UTC).date().iso_week_date();
    (w.year(), w.week())
}

/// The kind of a backup taken at `now`, given the backups there are.
pub fn kind_for(now: Timestamp, existing: &[BackupName], keep: &Retention) -> BackupKind {
    let any = |kind: BackupKind, same: &dyn Fn(Timestamp) -> bool| {
        existing.iter().any(|b| b.kind == kind && same(b.taken_at))
    };
    if keep.monthly > 0 && !any(BackupKind::Monthly, &|t| month(t) == month(now)) {
        return BackupKind::Monthly;
    }
    if keep.weekly > 0 && !any(BackupKind::Weekly, &|t| iso_week(t) == iso_week(now)) {
        return BackupKind::Weekly;
    }
    BackupKind::Daily
}

/// The backups to delete: of each kind, all but the newest `keep` ones.
pub fn to_delete(existing: &[BackupName], keep: &Retention) -> Vec<BackupName> {
    let mut out = Vec::new();
    for kind in BackupKind::ALL {
        let mut of_kind: Vec<&BackupName> = existing.iter().filter(|b| b.kind == kind).collect();
        of_kind.sort_by_key(|b| std::cmp::Reverse(b.taken_at));
        out.extend(of_kind.into_iter().skip(keep.keep(kind)).cloned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::model::Lsn;

    fn b(kind: BackupKind, at: &str) -> BackupName {
        BackupName {
            kind,
            taken_at: at.parse().unwrap(),
            start_lsn: Lsn(1),
            end_lsn: Lsn(2),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_backup_of_a_month_is_monthly_then_weekly_then_daily() {
        let keep = Retention::default();
        let mut have = vec![];
        assert_eq!(
            kind_for(t("2026-11-02T03:00:00Z"), &have, &keep),
            BackupKind::Monthly
        );
        have.push(b(BackupKind::Monthly, "2026-11-02T03:00:00Z"));
        // Same ISO week (Mon 2 Nov): the monthly does not count as weekly.
        assert_eq!(
            kind_for(t("2026-11-03T03:00:00Z"), &have, &keep),
            BackupKind::Weekly
        );
        have.push(b(BackupKind::Weekly, "2026-11-03T03:00:00Z"));
        assert_eq!(
            kind_for(t("2026-11-04T03:00:00Z"), &have, &keep),
            BackupKind::Daily
        );
        // Next week: weekly again; next month: monthly again.
        assert_eq!(
            kind_for(t("2026-11-09T03:00:00Z"), &have, &keep),
            BackupKind::Weekly
        );
        assert_eq!(
            kind_for(t("2026-12-01T03:00:00Z"), &have, &keep),
            BackupKind::Monthly
        );
    }

    #[test]
    fn a_kind_kept_zero_times_is_never_chosen() {
        let keep = Retention {
            daily: 3,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(
            kind_for(t("2026-11-02T03:00:00Z"), &[], &keep),
            BackupKind::Daily
        );
    }

    #[test]
    fn iso_weeks_cross_years() {
        let keep = Retention::default();
        // Thu 31 Dec 2026 and Fri 1 Jan 2027 are in ISO week 53 of 2026.
        let have = vec![
            b(BackupKind::Monthly, "2026-12-01T00:00:00Z"),
            b(BackupKind::Weekly, "2026-12-31T00:00:00Z"),
            b(BackupKind::Monthly, "2027-01-01T00:00:00Z"),
        ];
        assert_eq!(
            kind_for(t("2027-01-02T00:00:00Z"), &have, &keep),
            BackupKind::Daily
        );
        assert_eq!(
            kind_for(t("2027-01-04T00:00:00Z"), &have, &keep),
            BackupKind::Weekly
        );
    }

    #[test]
    fn each_kind_keeps_its_newest() {
        let keep = Retention {
            daily: 2,
            weekly: 1,
            monthly: 1,
        };
        let have = vec![
            b(BackupKind::Daily, "2026-11-04T00:00:00Z"),
            b(BackupKind::Daily, "2026-11-06T00:00:00Z"),
            b(BackupKind::Daily, "2026-11-05T00:00:00Z"),
            b(BackupKind::Weekly, "2026-11-03T00:00:00Z"),
            b(BackupKind::Weekly, "2026-10-27T00:00:00Z"),
            b(BackupKind::Monthly, "2026-11-02T00:00:00Z"),
        ];
        let gone = to_delete(&have, &keep);
        assert_eq!(
            gone,
            vec![
                b(BackupKind::Daily, "2026-11-04T00:00:00Z"),
                b(BackupKind::Weekly, "2026-10-27T00:00:00Z"),
            ]
        );
        let none = Retention {
            daily: 0,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(to_delete(&have, &none).len(), have.len());
    }
}
