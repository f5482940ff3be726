//! A run's events (what `WatchRun` replays and follows) and the kinds of
//! run, by origin: tests, backups and archive copies.

use std::sync::{Arc, Mutex};

use tandem_proto::order::{CopyOptions, Order};
use tandem_proto::pb;

use crate::verdicts::Verdict;
use tokio::sync::watch;

/// One run's events, for `WatchRun`.
pub struct Run {
    events: Mutex<Vec<pb::RunProgress>>,
    count: watch::Sender<usize>,
}

impl Run {
    pub(super) fn new() -> Arc<Run> {
        Arc::new(Run {
            events: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        })
    }

    pub(super) fn push(&self, ev: pb::RunProgress) {
        let n = {
            let mut evs = self.events.lock().unwrap_or_else(|p| p.into_inner());
            evs.push(ev);
            evs.len()
        };
        self.count.send_replace(n);
    }

    /// Events from index `from` on, and whether the run is done.
    pub fn events_from(&self, from: usize) -> (Vec<pb::RunProgress>, bool) {
        let evs = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let done = evs.last().is_some_and(|e| e.done);
        (
            evs.get(from..).map(|s| s.to_vec()).unwrap_or_default(),
            done,
        )
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

/// What a run orders on each set's standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// testdb (SPEC T2).
    Testdb,
    /// A backup: the testdb steps plus a pack step; the file is kept only
    /// when the test is clean (SPEC R1, T9).
    Backup,
    /// An archive copy (SPEC T9): the copy only, packed into an archive
    /// file with `file`. Its outcome is stored apart from the set's
    /// verdicts (it tests nothing).
    Archive { file: bool },
}

/// The origin of backup runs started by `tandemctl backup`.
pub const BACKUP_ORIGIN: &str = "backup";
/// The origins of archive-copy runs (SPEC T9): a copy, no test; packed into
/// an archive file with the archive-file option.
pub const ARCHIVE_ORIGIN: &str = "archive";
pub const ARCHIVE_FILE_ORIGIN: &str = "archive+file";

impl RunKind {
    /// The kind of a stored run. It is carried by the run's origin (no
    /// store migration needed): runs whose origin starts with `backup` are
    /// backups, `archive` and `archive+file` archive copies.
    pub fn of_origin(origin: &str) -> RunKind {
        if origin.starts_with(BACKUP_ORIGIN) {
            RunKind::Backup
        } else if origin == ARCHIVE_FILE_ORIGIN {
            RunKind::Archive { file: true }
        } else if origin == ARCHIVE_ORIGIN {
            RunKind::Archive { file: false }
        } else {
            RunKind::Testdb
        }
    }

    /// The agent's order for a job of this kind, copying as `copy` says.
    pub(super) fn order(self, copy: CopyOptions) -> Order {
        match self {
            RunKind::Testdb => Order::Testdb {
                skip_logical_read: false,
                copy,
            },
            RunKind::Backup => Order::Backup {
                untested: false,
                copy,
            },
            RunKind::Archive { file: false } => Order::Copy { copy },
            RunKind::Archive { file: true } => Order::Backup {
                untested: true,
                copy,
            },
        }
    }

    /// What a person calls a job of this kind ("a cold test").
    pub(super) fn noun(self) -> &'static str {
        match self {
            RunKind::Testdb => "test",
            RunKind::Backup => "backup",
            RunKind::Archive { .. } => "copy",
        }
    }

    /// Whether its copy is tested (and its outcome a verdict).
    pub fn tests(self) -> bool {
        !matches!(self, RunKind::Archive { .. })
    }

    /// Whether one copy can serve a job of this kind and one of `other`
    /// (SPEC T9): a test and an archive copy.
    pub(super) fn serves_with(self, other: RunKind) -> bool {
        self.tests() != other.tests()
    }
}

pub(super) fn verdict_event(run_id: &str, set: &str, v: &Verdict) -> pb::RunProgress {
    pb::RunProgress {
        run_id: run_id.to_owned(),
        set: set.to_owned(),
        member: v.member.clone(),
        verdict: Some(pb::Verdict::from(v)),
        ..Default::default()
    }
}

pub(super) fn done_event(run_id: &str) -> pb::RunProgress {
    pb::RunProgress {
        run_id: run_id.to_owned(),
        done: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_kind_comes_from_its_origin_and_a_test_and_an_archive_copy_share_a_copy() {
        assert_eq!(RunKind::of_origin("manual"), RunKind::Testdb);
        assert_eq!(RunKind::of_origin("schedule"), RunKind::Testdb);
        assert_eq!(RunKind::of_origin(BACKUP_ORIGIN), RunKind::Backup);
        assert_eq!(
            RunKind::of_origin(ARCHIVE_ORIGIN),
            RunKind::Archive { file: false }
        );
        assert_eq!(
            RunKind::of_origin(ARCHIVE_FILE_ORIGIN),
            RunKind::Archive { file: true }
        );
        let archive = RunKind::Archive { file: true };
        assert!(archive.serves_with(RunKind::Testdb));
        assert!(RunKind::Backup.serves_with(RunKind::Archive { file: false }));
        assert!(!RunKind::Testdb.serves_with(RunKind::Backup));
        assert!(!archive.serves_with(RunKind::Archive { file: false }));
        // An archive file is an untested backup; a plain archive copy a copy.
        let copy = CopyOptions::default();
        assert_eq!(
            archive.order(copy),
            Order::Backup {
                untested: true,
                copy
            }
        );
        assert_eq!(
            RunKind::Archive { file: false }.order(copy),
            Order::Copy { copy }
        );
    }
}
