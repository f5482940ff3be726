//! Backup file names: `<kind>-<UTC time>-<start LSN>-<end LSN>.tar.zst`,
//! e.g. `daily-20261121T043000Z-0_3000028-0_5A0F1B8.tar.zst` (an LSN
//! `0/3000028` is written `0_3000028`: no slash in a file name). The name is
//! the index: listing a directory lists the backups.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use tandem_proto::model::Lsn;

pub const SUFFIX: &str = ".tar.zst";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Daily,
    Weekly,
    Monthly,
}

impl BackupKind {
    pub const ALL: [BackupKind; 3] = [BackupKind::Daily, BackupKind::Weekly, BackupKind::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Daily => "daily",
            BackupKind::Weekly => "weekly",
            BackupKind::Monthly => "monthly",
        }
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no backup kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backup kind {kind:?}; expected daily, weekly or monthly")]
pub struct UnknownBackupKind {
    pub kind: String,
}

impl FromStr for BackupKind {
    type Err = UnknownBackupKind;
    fn from_str(s: &str) -> Result<Self, UnknownBackupKind> {
        match s {
            "daily" => Ok(BackupKind::Daily),
            "weekly" => Ok(BackupKind::Weekly),
            "monthly" => Ok(BackupKind::Monthly),
            other => Err(UnknownBackupKind {
                kind: other.to_owned(),
            }),
        }
    }
}

/// What a backup's file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupName {
    pub kind: BackupKind,
    /// When the copy was taken (whole seconds, UTC).
    pub taken_at: Timestamp,
    /// Replay starts here (the copy's last checkpoint's redo position).
    pub start_lsn: Lsn,
    /// The copy holds the log up to here.
    pub end_lsn: Lsn,
}

fn lsn_part(l: Lsn) -> String {
    format!("{:X}_{:X}", l.0 >> 32, l.0 & 0xFFFF_FFFF)
}

fn parse_lsn_part(s: &str) -> Option<Lsn> {
    let (hi, lo) = s.split_once('_')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some(Lsn((hi << 32) | lo))
}

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl BackupName {
    pub fn file_name(&self) -> String {
        let t = self.taken_at.to_zoned(TimeZone::UTC).strftime(TIME_FORMAT);
        format!(
            "{}-{t}-{}-{}{SUFFIX}",
            self.kind,
            lsn_part(self.start_lsn),
            lsn_part(self.end_lsn)
        )
    }

    /// Read a file name; `None` for any file that is not a backup.
    pub fn parse(file_name: &str) -> Option<BackupName> {
        let stem = file_name.strip_suffix(SUFFIX)?;
        let mut parts = stem.split('-');
        let kind = parts.next()?.parse().ok()?;
        let time = parts.next()?;
        let start_lsn = parse_lsn_part(parts.next()?)?;
        let end_lsn = parse_lsn_part(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        let taken_at = jiff::civil::DateTime::strptime(
            TIME_FORMAT.trim_end_matches('Z'),
            time.strip_suffix('Z')?,
        )
        .ok()?
        .to_zoned(TimeZone::UTC)
        .ok()?
        .timestamp();
        Some(BackupName {
            kind,
            taken_at,
            start_lsn,
            end_lsn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = BackupName {
            kind: BackupKind::Weekly,
            taken_at: "2026-11-21T04:30:07Z".parse().unwrap(),
            start_lsn: "0/3000028".parse().unwrap(),
            end_lsn: "1/5A0F1B8".parse().unwrap(),
        };
        let f = n.file_name();
        assert_eq!(f, "weekly-20261121T043007Z-0_3000028-1_5A0F1B8.tar.zst");
        assert_eq!(BackupName::parse(&f), Some(n));
    }

    #[test]
    fn other_files_are_not_backups() {
        for f in [
            "daily-20261121T043007Z-0_1-0_2.tar",
            "hourly-20261121T043007Z-0_1-0_2.tar.zst",
            "daily-2026-0_1-0_2.tar.zst",
            "daily-20261121T043007Z-0_1.tar.zst",
            ".daily-20261121T043007Z-0_1-0_2.tar.zst.partial",
        ] {
            assert_eq!(BackupName::parse(f), None, "{f}");
        }
    }
}
