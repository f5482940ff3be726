//! Online copies of a running standby: PostgreSQL's non-exclusive base
//! backup, taken on the standby itself (allowed during recovery).
//!
//! One `psql` session holds the backup open from start to stop (a
//! non-exclusive backup belongs to its session) and, in the same session, a
//! temporary physical replication slot. The slot is created *before*
//! `pg_backup_start`: on a standby it reserves WAL from the last restartpoint's
//! redo position, which is at or before the backup's start, so no
//! restartpoint during a long copy can recycle a segment the copy needs.
//! After `pg_backup_stop` the segments from the backup's start to its stop
//! are copied into the copy's `pg_wal`, still under the slot's protection,
//! and only then is the session closed (which drops the slot).
//!
//! If the agent dies at any point, `psql` reads end-of-file on its input
//! and exits: the server aborts the backup and drops the temporary slot by
//! itself. Nothing is left on the standby to undo.
//!
//! The copy's consistency comes from the `backup_label` written into it and
//! the WAL, not from the order files were copied in: PostgreSQL replays
//! from the label's checkpoint and, for a backup taken on a standby, is
//! consistent at the `minRecoveryPoint` of the copied `pg_control` (which
//! is why `global/pg_control` is still copied last). A private instance that
//! opens the copy replays to that point and on to the end of the copied
//! WAL; it refuses to open ("WAL ends before end of online backup") when
//! the WAL does not reach it, and the copy is then marked unusable.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tandem_proto::model::Lsn;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tracing::info;

use super::postgres::PostgresEngine;
use super::private::io;
use super::{BackupEnd, EngineError};

/// What ends every answer in the session (psql echoes it after the query).
const END: &str = "__tandem_end_of_answer__";
/// The temporary slot's name (one copy at a time per agent).
const SLOT: &str = "tandem_online_copy";
/// How long one statement of the session may take (`pg_backup_start` waits
/// for a restartpoint).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// A backup in progress on the standby, held by its session.
pub struct OnlineBackup {
    session: Session,
    pub start_lsn: Lsn,
    /// The WAL receiver's process at the start (it must be the same one,
    /// still streaming, at the stop).
    receiver_pid: String,
    wal_segment_size: u64,
}

/// A `psql` session kept open, answering one statement at a time.
struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Session {
    async fn open(engine: &PostgresEngine) -> Result<Session, EngineError> {
        let mut cmd = engine.psql_command(&engine.live_socket_dir(), engine.cfg.port);
        cmd.arg("-d")
            .arg(&engine.cfg.dbname)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| {
            EngineError::Run(crate::runner::RunError::Spawn {
                program: "psql".into(),
                source,
            })
        })?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(EngineError::Output {
                tool: "psql",
                output: "no pipes to the backup session".into(),
            });
        };
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
            s
        });
        Ok(Session {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            stderr,
        })
    }

    /// Run one statement; its rows, one string each (`|` between columns).
    async fn query(&mut self, sql: &str) -> Result<Vec<String>, EngineError> {
        let text = format!("{sql};\n\\echo {END}\n");
        let asked = async {
            self.stdin.write_all(text.as_bytes()).await?;
            self.stdin.flush().await?;
            let mut rows = Vec::new();
            while let Some(line) = self.lines.next_line().await? {
                if line == END {
                    return Ok(Some(rows));
                }
                rows.push(line);
            }
            Ok::<_, std::io::Error>(None)
        };
        match tokio::time::timeout(STATEMENT_TIMEOUT, asked).await {
            Ok(Ok(Some(rows))) => Ok(rows),
            Ok(Ok(None)) | Ok(Err(_)) => Err(self.failure().await),
            Err(_) => Err(EngineError::Tool {
                tool: "psql (backup session)",
                code: None,
                stderr: format!("`{sql}` took longer than {} s", STATEMENT_TIMEOUT.as_secs()),
            }),
        }
    }

    /// The session ended: why, from psql's own words.
    async fn failure(&mut self) -> EngineError {
        let code = self.child.wait().await.ok().and_then(|s| s.code());
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        EngineError::Tool {
            tool: "psql (backup session)",
            code,
            stderr: stderr.trim().to_owned(),
        }
    }

    async fn one(&mut self, sql: &str) -> Result<String, EngineError> {
        let rows = self.query(sql).await?;
        rows.into_iter().next().ok_or_else(|| EngineError::Output {
            tool: "psql",
            output: format!("no row from `{sql}`"),
        })
    }

    /// End the session (the server drops the temporary slot).
    async fn close(mut self) {
        let _ = self.stdin.write_all(b"\\q\n").await;
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn lsn(tool: &'static str, s: &str) -> Result<Lsn, EngineError> {
    s.trim().parse().map_err(|()| EngineError::Output {
        tool,
        output: s.to_owned(),
    })
}

/// The standby's WAL receiver, as `pid|status` ("" when none runs).
const RECEIVER_SQL: &str =
    "SELECT COALESCE((SELECT pid::text || '|' || status FROM pg_stat_wal_receiver LIMIT 1), '')";

impl PostgresEngine {
    /// Start a backup on the running standby; see the module documentation.
    pub(super) async fn start_online_backup(&self) -> Result<OnlineBackup, EngineError> {
        let mut s = Session::open(self).await?;
        if s.one("SELECT pg_is_in_recovery()").await? != "t" {
            s.close().await;
            return Err(EngineError::Refused(
                "the server is not a standby (it is not in recovery); an online copy is taken on a standby only".into(),
            ));
        }
        let receiver = s.one(RECEIVER_SQL).await?;
        let Some((pid, "streaming")) = receiver.split_once('|') else {
            s.close().await;
            return Err(EngineError::Refused(format!(
                "the standby's WAL receiver is not streaming ({}); an online copy needs the standby to follow its primary",
                if receiver.is_empty() {
                    "none runs"
                } else {
                    &receiver
                }
            )));
        };
        let receiver_pid = pid.to_owned();
        let (setting, unit) = s
            .one("SELECT setting || '|' || COALESCE(unit, '') FROM pg_settings WHERE name = 'wal_segment_size'")
            .await?
            .split_once('|')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap_or_default();
        let wal_segment_size =
            segment_size(&setting, &unit).ok_or_else(|| EngineError::Output {
                tool: "psql",
                output: format!("wal_segment_size = {setting} {unit}"),
            })?;
        let slot = s
            .one(&format!(
                "SELECT lsn FROM pg_create_physical_replication_slot('{SLOT}', true, true)"
            ))
            .await?;
        let start = s
            .one("SELECT pg_backup_start('tandem online copy', true)")
            .await?;
        let start_lsn = lsn("pg_backup_start", &start)?;
        info!(slot_lsn = %slot, start_lsn = %start_lsn, "online backup started on the standby");
        Ok(OnlineBackup {
            session: s,
            start_lsn,
            receiver_pid,
            wal_segment_size,
        })
    }

    /// Stop the backup, write its label into the copy `dst` and copy the
    /// WAL from its start to its stop into `dst/pg_wal`; then end the
    /// session.
    pub(super) async fn stop_online_backup(
        &self,
        mut b: OnlineBackup,
        dst: &Path,
    ) -> Result<BackupEnd, EngineError> {
        let ended = self.stop_in_session(&mut b, dst).await;
        b.session.close().await;
        ended
    }

    async fn stop_in_session(
        &self,
        b: &mut OnlineBackup,
        dst: &Path,
    ) -> Result<BackupEnd, EngineError> {
        let row = b
            .session
            .one("SELECT lsn || '|' || encode(convert_to(labelfile, 'UTF8'), 'hex') || '|' || encode(convert_to(COALESCE(spcmapfile, ''), 'UTF8'), 'hex') FROM pg_backup_stop(false)")
            .await?;
        let mut parts = row.split('|');
        let (Some(stop), Some(label), Some(map)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(EngineError::Output {
                tool: "pg_backup_stop",
                output: row,
            });
        };
        let stop_lsn = lsn("pg_backup_stop", stop)?;
        let receiver = b.session.one(RECEIVER_SQL).await?;
        if receiver != format!("{}|streaming", b.receiver_pid) {
            return Err(EngineError::Refused(format!(
                "the standby's WAL receiver stopped during the online copy (it was process {} streaming, now: {}); the copy may lack what the primary wrote meanwhile, so it is not used. Test again once the standby streams",
                b.receiver_pid,
                if receiver.is_empty() {
                    "none runs"
                } else {
                    &receiver
                }
            )));
        }
        if !map.is_empty() {
            return Err(EngineError::Refused(
                "the standby has tablespaces (pg_backup_stop returned a tablespace map); copies of tablespaces are not supported".into(),
            ));
        }
        let label = hex_decode(label).ok_or_else(|| EngineError::Output {
            tool: "pg_backup_stop",
            output: "a backup label that is not hex".into(),
        })?;
        let owner = self.runner.owner();
        let src_wal = self.cfg.data_dir.join("pg_wal");
        let (dst, dst_path) = (dst.to_owned(), dst.to_owned());
        let (start, seg) = (b.start_lsn, b.wal_segment_size);
        let (added, wal_bytes) = tokio::task::spawn_blocking(move || {
            write_label(&dst, &label, owner)?;
            let (mut added, bytes) =
                copy_wal(&src_wal, &dst.join("pg_wal"), start, stop_lsn, seg, owner)?;
            added.insert(0, PathBuf::from("backup_label"));
            Ok::<_, EngineError>((added, bytes))
        })
        .await
        .map_err(|e| EngineError::Io {
            op: "run the WAL copy into",
            path: dst_path,
            source: std::io::Error::other(e),
        })??;
        info!(start_lsn = %b.start_lsn, stop_lsn = %stop_lsn, wal_bytes, "online backup stopped; label and WAL in the copy");
        Ok(BackupEnd {
            lsns: Some((b.start_lsn, stop_lsn)),
            added,
            wal_bytes,
        })
    }
}

/// `wal_segment_size` in bytes from `pg_settings` (`setting`, `unit`).
fn segment_size(setting: &str, unit: &str) -> Option<u64> {
    let n: u64 = setting.trim().parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1024,
        "8kB" => 8192,
        "MB" => 1 << 20,
        _ => return None,
    };
    let size = n.checked_mul(mult)?;
    (size.is_power_of_two() && size >= 1 << 20).then_some(size)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The segment number of a WAL file name (`TTTTTTTTXXXXXXXXYYYYYYYY`), or
/// `None` for anything else.
fn segment_of(name: &str, seg_size: u64) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_log = 0x1_0000_0000 / seg_size;
    (seg < per_log).then(|| log * per_log + seg)
}

fn write_label(dst: &Path, label: &[u8], owner: Option<(u32, u32)>) -> Result<(), EngineError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dst.join("backup_label");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("create", &path))?;
    f.write_all(label).map_err(io("write", &path))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io("chown", &path))?;
    }
    f.sync_all().map_err(io("fsync", &path))?;
    fsync_dir(dst)
}

fn fsync_dir(dir: &Path) -> Result<(), EngineError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the directory", dir))
}

/// Copy every WAL segment from the one holding `start` to the one holding
/// `stop` (of any timeline), and every timeline history file, from `src` to
/// `dst`; in log order, each fsynced. Returns the files (relative to the
/// copy) and their bytes.
fn copy_wal(
    src: &Path,
    dst: &Path,
    start: Lsn,
    stop: Lsn,
    seg_size: u64,
    owner: Option<(u32, u32)>,
) -> Result<(Vec<PathBuf>, u64), EngineError> {
    // `stop` is the end of the last record needed: on a segment boundary
    // it is the start of a segment that may not exist yet (PostgreSQL's
    // `XLByteToPrevSeg`).
    let (first, last) = (
        start.0 / seg_size,
        stop.0.saturating_sub(1).max(start.0) / seg_size,
    );
    let mut names: Vec<String> = Vec::new();
    for item in std::fs::read_dir(src).map_err(io("list", src))? {
        let item = item.map_err(io("list", src))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let wanted = match segment_of(&name, seg_size) {
            Some(n) => (first..=last).contains(&n),
            None => name.len() == 16 && name.ends_with(".history"),
        };
        if wanted {
            names.push(name);
        }
    }
    // History files first, then segments in log order.
    names.sort_by_key(|n| (segment_of(n, seg_size), n.clone()));
    let found: std::collections::BTreeSet<u64> = names
        .iter()
        .filter_map(|n| segment_of(n, seg_size))
        .collect();
    if let Some(missing) = (first..=last).find(|n| !found.contains(n)) {
        return Err(EngineError::Refused(format!(
            "WAL segment number {missing} (between the backup's start {start} and stop {stop}) is not in {}; the copy cannot be made consistent",
            src.display()
        )));
    }
    let mut added = Vec::with_capacity(names.len());
    let mut bytes = 0;
    for name in names {
        let (s, d) = (src.join(&name), dst.join(&name));
        bytes += std::fs::copy(&s, &d).map_err(io("copy the WAL segment", &s))?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&d)
            .map_err(io("open", &d))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io("chown", &d))?;
        }
        f.sync_all().map_err(io("fsync", &d))?;
        added.push(PathBuf::from("pg_wal").join(name));
    }
    fsync_dir(dst)?;
    Ok((added, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes_from_pg_settings() {
        assert_eq!(segment_size("16777216", "B"), Some(16 << 20));
        assert_eq!(segment_size("16", "MB"), Some(16 << 20));
        assert_eq!(segment_size("2048", "8kB"), Some(16 << 20));
        assert_eq!(segment_size("1000", "B"), None);
        assert_eq!(segment_size("x", "B"), None);
    }

    #[test]
    fn wal_file_names_give_segment_numbers() {
        let seg = 16 << 20;
        assert_eq!(segment_of("000000010000000000000007", seg), Some(7));
        // 256 segments of 16 MiB per 4 GiB "log".
        assert_eq!(segment_of("000000020000000100000003", seg), Some(256 + 3));
        assert_eq!(segment_of("000000010000000000000100", seg), None);
        assert_eq!(segment_of("00000002.history", seg), None);
        assert_eq!(segment_of("archive_status", seg), None);
    }

    #[test]
    fn wal_from_start_to_stop_is_copied_and_a_gap_refused() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(src.join("archive_status")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        for n in ["06", "07", "08", "09", "0A"] {
            std::fs::write(src.join(format!("0000000100000000000000{n}")), n).unwrap();
        }
        std::fs::write(src.join("00000002.history"), "h").unwrap();
        let seg = 16u64 << 20;
        let (start, stop) = (Lsn(7 * seg + 40), Lsn(9 * seg + 5));
        let (added, bytes) = copy_wal(&src, &dst, start, stop, seg, None).unwrap();
        let names: Vec<_> = added.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "pg_wal/00000002.history",
                "pg_wal/000000010000000000000007",
                "pg_wal/000000010000000000000008",
                "pg_wal/000000010000000000000009",
            ]
        );
        assert_eq!(bytes, 7);
        assert!(!dst.join("000000010000000000000006").exists());

        // A stop on a segment boundary needs nothing of the next segment.
        let dst3 = t.path().join("dst3");
        std::fs::create_dir(&dst3).unwrap();
        std::fs::remove_file(src.join("00000001000000000000000A")).unwrap();
        let (added, _) = copy_wal(&src, &dst3, start, Lsn(10 * seg), seg, None).unwrap();
        assert_eq!(
            added.last().unwrap().display().to_string(),
            "pg_wal/000000010000000000000009"
        );

        std::fs::remove_file(src.join("000000010000000000000008")).unwrap();
        let dst2 = t.path().join("dst2");
        std::fs::create_dir(&dst2).unwrap();
        let e = copy_wal(&src, &dst2, start, stop, seg, None).unwrap_err();
        assert!(e.to_string().contains("WAL segment number 8"), "{e}");
    }
}
