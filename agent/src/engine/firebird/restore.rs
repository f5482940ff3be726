//! Firebird's part of a restore (the runbook the billing's own manual
//! gives, on the database it was written for).
//!
//! "The service" is the database, not the server: the Firebird server on
//! the host may serve other databases, so the agent never stops it. A
//! database-level shutdown does what the runbook needs of a stop:
//!
//! - stop: `gfix -shut full -force 0` (every attachment closed, its
//!   transaction rolled back, every page written; nobody, SYSDBA included,
//!   can attach until it is brought online; the server then holds no handle
//!   on the file, so it can be moved aside and replaced);
//! - the prepared database (`gbak -c`, `-rep` to replace one, through the
//!   server) is shut down the same way before it is moved into place, so
//!   it never serves a client by accident;
//! - isolated: `gfix -online multi`: SYSDBA and the database's owner
//!   only (not `single`: its one attachment was seen taken by the agent's
//!   own facts query while a hook needed it); the hooks and the generator
//!   fix run so;
//! - start: `gfix -online` (normal), then wait until it answers.
//!
//! Generators (R8): those behind an identity column are found in the
//! catalog (`RDB$RELATION_FIELDS.RDB$GENERATOR_NAME`); others are set only
//! when `[firebird] generators` names their column: a trigger that fills a
//! column from a generator cannot be read safely from its source. Every
//! other generator is named in the notes as left alone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{FirebirdEngine, check_tool};
use crate::engine::{EngineError, PrivateInstance};

const GFIX_TIMEOUT: Duration = Duration::from_secs(600);
/// `gbak -c` writes the whole database and builds its indexes.
const GBAK_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
const QUERY_TIMEOUT: Duration = Duration::from_secs(3600);
const ONLINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Identity columns and their generators (`set list on`).
const IDENTITY_SQL: &str = "set list on;\n\
    select trim(rdb$generator_name) as gen, trim(rdb$relation_name) as tbl,\n\
    trim(rdb$field_name) as col from rdb$relation_fields\n\
    where rdb$generator_name is not null order by 1;\n";
/// Every generator that is not the system's own.
const GENERATORS_SQL: &str = "set list on;\n\
    select trim(rdb$generator_name) as gen from rdb$generators\n\
    where coalesce(rdb$system_flag, 0) = 0 order by 1;\n";

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_owned();
    move |source| EngineError::Io { op, path, source }
}

/// `"NAME"`, with quotes doubled.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `NAME value` records of `set list on` output, a new record at each
/// `first` column.
fn list_records(text: &str, first: &str) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        if k == first {
            out.push(Vec::new());
        }
        if let Some(r) = out.last_mut() {
            r.push((k.to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn field<'a>(r: &'a [(String, String)], name: &str) -> Option<&'a str> {
    r.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A generator to set to the maximum of the column it fills.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Feeds {
    generator: String,
    table: String,
    column: String,
    identity: bool,
}

/// The generators to check: identity columns first, then the configured
/// mapping (`TABLE.COLUMN`, upper-cased as Firebird stores unquoted names);
/// and the generators neither covers.
fn generator_plan(
    identity: &[Vec<(String, String)>],
    all: &[String],
    mapping: &std::collections::BTreeMap<String, String>,
) -> Result<(Vec<Feeds>, Vec<String>), EngineError> {
    let mut feeds = Vec::new();
    for r in identity {
        if let (Some(g), Some(t), Some(c)) = (field(r, "GEN"), field(r, "TBL"), field(r, "COL")) {
            feeds.push(Feeds {
                generator: g.to_owned(),
                table: t.to_owned(),
                column: c.to_owned(),
                identity: true,
            });
        }
    }
    for (g, target) in mapping {
        let Some((t, c)) = target.split_once('.') else {
            return Err(EngineError::Refused(format!(
                "[firebird] generators: {g} = {target:?} is not \"TABLE.COLUMN\"; fix agent.toml"
            )));
        };
        feeds.push(Feeds {
            generator: g.to_uppercase(),
            table: t.trim().to_uppercase(),
            column: c.trim().to_uppercase(),
            identity: false,
        });
    }
    let left: Vec<String> = all
        .iter()
        .filter(|g| !feeds.iter().any(|f| &f.generator == *g))
        .cloned()
        .collect();
    Ok((feeds, left))
}

/// Error blocks in a Firebird server log that name `db` (the log is the
/// host's, shared by every database; a block starts at a line that does
/// not begin with white space).
fn count_errors(log: &str, db: &str) -> u64 {
    let mut count = 0;
    let mut block = String::new();
    let mut flush = |b: &str| {
        let lower = b.to_lowercase();
        if b.contains(db)
            && ["error", "bugcheck", "corrupt"]
                .iter()
                .any(|w| lower.contains(w))
        {
            count += 1;
        }
    };
    for line in log.lines() {
        if !line.starts_with(char::is_whitespace) && !line.is_empty() {
            flush(&block);
            block.clear();
        }
        block.push_str(line);
        block.push('\n');
    }
    flush(&block);
    count
}

impl FirebirdEngine {
    fn dsn_of(&self, file: &Path) -> String {
        format!("{}/{}:{}", self.cfg.host, self.cfg.port, file.display())
    }

    async fn gfix(
        &self,
        what: &'static str,
        args: &[&str],
        file: &Path,
    ) -> Result<(), EngineError> {
        let mut cmd = self.command("gfix");
        cmd.args(args)
            .arg(self.dsn_of(file))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = self.runner.output(cmd, GFIX_TIMEOUT).await?;
        check_tool(what, &out)
    }

    /// Whether the server answers for the live database.
    pub(super) async fn serves(&self) -> bool {
        self.live_state().await.is_ok()
    }

    /// `<dir>/<name>_prepare.<ext>`, as the billing's runbook names it.
    pub(super) fn prepare_file(&self) -> PathBuf {
        let db = &self.cfg.database;
        let stem = db
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match db.extension() {
            Some(e) => format!("{stem}_prepare.{}", e.to_string_lossy()),
            None => format!("{stem}_prepare"),
        };
        db.with_file_name(name)
    }

    /// R2: `gbak -c` (`-rep` with `replace`) the gbak file unpacked in
    /// `unpacked` into `prepare` through the server, shut it down, and
    /// remove the unpacked file.
    pub(super) async fn restore_backup(
        &self,
        unpacked: &Path,
        prepare: &Path,
        replace: bool,
    ) -> Result<Vec<String>, EngineError> {
        let files: Vec<PathBuf> = std::fs::read_dir(unpacked)
            .map_err(io("read the unpacked backup", unpacked))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        let [fbk] = &files[..] else {
            return Err(EngineError::Refused(format!(
                "the backup holds {} files ({}); a Firebird backup holds one gbak file: use a backup made by tandemctl backup on this set",
                files.len(),
                unpacked.display()
            )));
        };
        let existed = std::fs::symlink_metadata(prepare).is_ok();
        let mut cmd = self.command("gbak");
        cmd.arg(if replace { "-rep" } else { "-c" })
            .arg(fbk)
            .arg(self.dsn_of(prepare))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = self.runner.output(cmd, GBAK_TIMEOUT).await?;
        check_tool(if replace { "gbak -rep" } else { "gbak -c" }, &out)?;
        let mut notes = vec![format!(
            "gbak {} restored {} into {}{}",
            if replace { "-rep" } else { "-c" },
            fbk.display(),
            prepare.display(),
            if existed {
                " (the prepare database that was there was replaced)"
            } else {
                ""
            }
        )];
        self.gfix(
            "gfix -shut full",
            &["-shut", "full", "-force", "0"],
            prepare,
        )
        .await?;
        notes.push(format!(
            "{} is shut down (gfix -shut full): it serves no client until the restore brings it online",
            prepare.display()
        ));
        std::fs::remove_dir_all(unpacked).map_err(io("remove", unpacked))?;
        Ok(notes)
    }

    /// R3: shut the live database down; Ok when it serves nobody already
    /// (shut down, or its server down).
    pub(super) async fn shut_down(&self) -> Result<(), EngineError> {
        match self
            .gfix(
                "gfix -shut full",
                &["-shut", "full", "-force", "0"],
                &self.cfg.database,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(_) if !self.serves().await => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// R9: bring the live database online and wait until it answers.
    pub(super) async fn bring_online(&self) -> Result<(), EngineError> {
        let online = self
            .gfix("gfix -online", &["-online"], &self.cfg.database)
            .await;
        let t0 = Instant::now();
        loop {
            let state = self.live_state().await;
            match (&online, state) {
                (_, Ok(_)) => return Ok(()),
                (Err(e), Err(_)) => {
                    return Err(EngineError::Refused(format!(
                        "the database {} cannot be brought online ({e}); is its Firebird server at {}:{} running?",
                        self.cfg.database.display(),
                        self.cfg.host,
                        self.cfg.port
                    )));
                }
                (Ok(()), Err(e)) if t0.elapsed() > ONLINE_TIMEOUT => return Err(e),
                (Ok(()), Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// R7: no log to replay; refused with a target time.
    pub(super) fn recovery_notes(
        &self,
        target_time: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        if target_time.is_some() {
            return Err(EngineError::Refused(
                "a Firebird database cannot be restored to a target time: restore without one"
                    .into(),
            ));
        }
        Ok(vec![
            "no log was replayed: a gbak backup ends where it was taken, and no nbackup increments were applied (Tandem does not take them); changes made after the backup come back only through [restore] roll_forward_hook".into(),
        ])
    }

    /// R6/R7: the database in multi-user shutdown (SYSDBA or its owner
    /// only): no application user is served.
    pub(super) async fn isolate_restored(&self) -> Result<PrivateInstance, EngineError> {
        self.gfix(
            "gfix -online multi",
            &["-online", "multi"],
            &self.cfg.database,
        )
        .await?;
        Ok(PrivateInstance {
            data_dir: self.cfg.database.clone(),
            socket_dir: self
                .cfg
                .database
                .parent()
                .unwrap_or(Path::new("/"))
                .to_owned(),
            port: self.cfg.port,
            lsn: None,
            data_checksums: false,
        })
    }

    /// Run a hook as the OS user with the database's address and the
    /// credentials in its environment.
    pub(super) async fn run_restore_hook(
        &self,
        hook: &Path,
        timeout: Duration,
    ) -> Result<String, EngineError> {
        let mut cmd = self.runner.command(hook);
        cmd.env("TANDEM_RESTORE", "1")
            .env("TANDEM_FB_DSN", self.live_dsn())
            .env("TANDEM_FB_DATABASE", &self.cfg.database)
            .env("ISC_USER", &self.cfg.user)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(root) = &self.cfg.root_dir {
            cmd.env("FIREBIRD", root);
        }
        if let Ok(p) = self.cfg.password() {
            cmd.env("ISC_PASSWORD", p);
        }
        let out = self.runner.output(cmd, timeout).await?;
        check_tool("hook", &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    async fn isql(&self, sql: &str) -> Result<String, EngineError> {
        let mut cmd = self.command("isql-fb");
        cmd.args(["-q", "-b"]).arg(self.live_dsn());
        let out = self.with_input(cmd, sql, QUERY_TIMEOUT).await?;
        check_tool("isql-fb", &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// R8: every generator behind the maximum of its column set to it; one
    /// line per change, and one for the generators left alone.
    pub(super) async fn fix_generators(&self) -> Result<Vec<String>, EngineError> {
        let identity = list_records(&self.isql(IDENTITY_SQL).await?, "GEN");
        let all: Vec<String> = list_records(&self.isql(GENERATORS_SQL).await?, "GEN")
            .iter()
            .filter_map(|r| field(r, "GEN").map(str::to_owned))
            .collect();
        let (feeds, left) = generator_plan(&identity, &all, &self.cfg.generators)?;
        let mut notes = Vec::new();
        for f in &feeds {
            let out = self
                .isql(&format!(
                    "set list on;\nselect gen_id({}, 0) as cur, (select max({}) from {}) as mx from rdb$database;\n",
                    quoted(&f.generator),
                    quoted(&f.column),
                    quoted(&f.table)
                ))
                .await?;
            let r = list_records(&out, "CUR");
            let num = |k| {
                r.first()
                    .and_then(|r| field(r, k))
                    .and_then(|v| v.parse::<i64>().ok())
            };
            let (Some(cur), Some(max)) = (num("CUR"), num("MX")) else {
                continue;
            };
            if cur >= max {
                continue;
            }
            let sql = if f.identity {
                format!(
                    "alter table {} alter column {} restart with {max};\ncommit;\n",
                    quoted(&f.table),
                    quoted(&f.column)
                )
            } else {
                format!(
                    "alter sequence {} restart with {max};\ncommit;\n",
                    quoted(&f.generator)
                )
            };
            self.isql(&sql).await?;
            notes.push(format!(
                "generator {} ({} {}.{}) was at {cur}, behind the column's maximum {max}; set to {max}",
                f.generator,
                if f.identity {
                    "identity of"
                } else {
                    "[firebird] generators:"
                },
                f.table,
                f.column
            ));
        }
        if !left.is_empty() {
            notes.push(format!(
                "generators left as the backup had them: {}; they fill no identity column and [firebird] generators does not name them. A trigger may fill a column from one, which cannot be found safely: name each with its \"TABLE.COLUMN\" in [firebird] generators",
                left.join(", ")
            ));
        }
        Ok(notes)
    }

    /// Error blocks for this database in the server's log.
    pub(super) fn log_error_count(&self) -> u64 {
        std::fs::read(&self.cfg.server_log)
            .map(|b| {
                count_errors(
                    &String::from_utf8_lossy(&b),
                    &self.cfg.database.to_string_lossy(),
                )
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_mapped_generators_are_planned_and_the_rest_named() {
        // Verbatim isql-fb -q output of IDENTITY_SQL (Firebird 3.0.11).
        let text = "\nGEN                             RDB$1\nTBL                             PAYMENTS\nCOL                             ID\n\n";
        let identity = list_records(text, "GEN");
        let all = vec!["GEN_CLIENTS".to_owned(), "GEN_OTHER".to_owned()];
        let mapping = [("gen_clients".to_owned(), "clients.id".to_owned())]
            .into_iter()
            .collect();
        let (feeds, left) = generator_plan(&identity, &all, &mapping).unwrap();
        assert_eq!(
            feeds,
            vec![
                Feeds {
                    generator: "RDB$1".into(),
                    table: "PAYMENTS".into(),
                    column: "ID".into(),
                    identity: true
                },
                Feeds {
                    generator: "GEN_CLIENTS".into(),
                    table: "CLIENTS".into(),
                    column: "ID".into(),
                    identity: false
                }
            ]
        );
        assert_eq!(left, vec!["GEN_OTHER".to_owned()]);
        let bad = [("G".to_owned(), "nodot".to_owned())].into_iter().collect();
        let e = generator_plan(&[], &[], &bad).unwrap_err().to_string();
        assert!(e.contains("TABLE.COLUMN"), "{e}");
    }

    #[test]
    fn log_errors_count_only_this_databases_blocks() {
        let log = "host\tSat Dec  6 21:47:00 2025\n\tDatabase: /db/a.fdb\n\tError while trying to read from file\n\n\
            host\tSat Dec  6 21:48:00 2025\n\tDatabase: /db/b.fdb\n\tError while trying to read\n\n\
            host\tSat Dec  6 21:49:00 2025\n\tDatabase: /db/a.fdb\n\tshutdown\n";
        assert_eq!(count_errors(log, "/db/a.fdb"), 1);
        assert_eq!(count_errors(log, "/db/c.fdb"), 0);
        assert_eq!(quoted("A\"B"), "\"A\"\"B\"");
    }
}
