//! The Firebird engine's checks of a copy and of a restored backup:
//! `gfix -v -full` with the tables named from the server log, a backup's
//! `gbak -c` into a scratch database held to the rows `gbak -b` wrote,
//! and the lost-rows count (`lost_rows`).

use std::path::{Path, PathBuf};

use super::{
    CHECK_TIMEOUT, CheckReport, EngineError, FirebirdEngine, append, findings, log_since,
    lost_rows, output_text,
};

impl FirebirdEngine {
    /// `gfix -v -full` of the database file `file` (embedded, lock
    /// directory `lock`): its findings, from the server log's blocks
    /// naming `file`, and its warnings.
    pub(super) async fn validate(
        &self,
        file: &Path,
        lock: &Path,
        out: &Path,
    ) -> Result<(Vec<tandem_proto::model::Finding>, Vec<String>), EngineError> {
        let file_s = file.to_string_lossy().into_owned();
        let db = self.db_name();
        let log = &self.cfg.server_log;
        append(
            out,
            format!("==== gfix -v -full {file_s} ====\n").as_bytes(),
        )?;
        let log_before = std::fs::metadata(log).map_or(0, |m| m.len());
        let mut cmd = self.embedded("gfix", lock);
        cmd.args(["-v", "-full"]).arg(file);
        let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
        let text = output_text(&o);
        append(out, text.as_bytes())?;
        let tail = log_since(log, log_before);
        let from_log = findings::parse_validation_log(&tail, &file_s, &db);
        let warnings = findings::validation_warnings(&tail, &file_s);
        append(
            out,
            format!(
                "==== {} (what validation wrote there) ====\n{tail}\n",
                log.display()
            )
            .as_bytes(),
        )?;
        let found = findings::gfix_findings(
            o.status.success(),
            &text,
            from_log,
            &db,
            &log.to_string_lossy(),
        );
        Ok((found, warnings))
    }

    /// The backup file in a backup directory.
    pub(super) fn backup_file(&self, dst: &Path) -> PathBuf {
        dst.join(Path::new(&self.db_name()).with_extension("fbk"))
    }

    /// `gbak -b`'s output for the backup in `dst` (beside it, not packed).
    pub(super) fn dump_log(dst: &Path) -> PathBuf {
        let mut s = dst.as_os_str().to_owned();
        s.push(".gbak.log");
        PathBuf::from(s)
    }

    /// Where a backup in `dst` is restored to be validated.
    pub(super) fn scratch_dir(dst: &Path) -> PathBuf {
        let mut s = dst.as_os_str().to_owned();
        s.push(".verify");
        PathBuf::from(s)
    }

    pub(super) async fn verify_in(
        &self,
        dst: &Path,
        scratch: &Path,
        lock: &Path,
        out: &Path,
    ) -> Result<CheckReport, EngineError> {
        let fbk = self.backup_file(dst);
        let file = scratch.join(self.db_name());
        let db = self.db_name();
        let mut report = CheckReport::default();
        append(
            out,
            format!(
                "==== gbak -c -v {} {} (the backup restored) ====\n",
                fbk.display(),
                file.display()
            )
            .as_bytes(),
        )?;
        let mut cmd = self.embedded("gbak", lock);
        cmd.args(["-c", "-v", "-user"])
            .arg(&self.cfg.user)
            .arg(&fbk)
            .arg(&file);
        let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
        let text = output_text(&o);
        append(out, text.as_bytes())?;
        report
            .findings
            .extend(findings::parse_gbak_restore(o.status.success(), &text, &db));
        if report.findings.is_empty() {
            // gbak -c may exit 0 on a damaged file with rows missing.
            let written = std::fs::read_to_string(Self::dump_log(dst)).unwrap_or_default();
            report
                .findings
                .extend(findings::restored_rows_findings(&written, &text, &db));
        }
        if !report.findings.is_empty() {
            return Ok(report);
        }
        let (found, warnings) = self.validate(&file, lock, out).await?;
        // No sweep: gbak -c wrote each row once, in transactions that
        // committed, and built each index after its table's rows, so there
        // is no garbage and each index has one entry per row already (the
        // sweep was 15 s of a 73 s backup of a 1.2 GB database).
        let rows = self
            .lost_rows_check(&file, lock, out, Sweep::NotNeeded)
            .await?;
        let restored = |mut f: tandem_proto::model::Finding| {
            f.message = format!(
                "in the backup restored by gbak -c: {}; it is not kept",
                f.message
            );
            f
        };
        report
            .findings
            .extend(found.into_iter().chain(rows.findings).map(restored));
        report.warnings.extend(
            warnings
                .into_iter()
                .map(|w| format!("in the backup restored by gbak -c: {w}")),
        );
        report.coverage.push(
            "the backup restored by gbak -c into a scratch database, validated by gfix -v -full and the lost-rows check"
                .into(),
        );
        Ok(report)
    }

    /// The [`lost_rows`] check of the database file `file`, opened
    /// embedded with the lock directory `lock`; outputs appended to `out`.
    pub(super) async fn lost_rows_check(
        &self,
        file: &Path,
        lock: &Path,
        out: &Path,
        sweep: Sweep,
    ) -> Result<CheckReport, EngineError> {
        let db = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut report = CheckReport::default();
        let failed = |message: String| tandem_proto::model::Finding {
            database: db.clone(),
            relation: String::new(),
            kind: crate::engine::findings::KIND_CHECK_FAILED.to_owned(),
            message,
        };

        // Garbage (deleted rows, old versions, the inserts of transactions
        // cut by the copy) goes with its index entries: one entry per row.
        if sweep == Sweep::Needed {
            append(
                out,
                format!("==== gfix -sweep {} ====\n", file.display()).as_bytes(),
            )?;
            let mut cmd = self.embedded("gfix", lock);
            cmd.arg("-sweep").arg(file);
            let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
            let text = output_text(&o);
            append(out, text.as_bytes())?;
            if !o.status.success() {
                report.findings.push(lost_rows::sweep_failed(&text, &db));
                return Ok(report);
            }
        } else {
            append(
                out,
                format!(
                    "==== no gfix -sweep of {}: just restored by gbak -c, it has no garbage ====\n",
                    file.display()
                )
                .as_bytes(),
            )?;
        }

        append(out, b"==== the tables and their indexes (isql-fb) ====\n")?;
        let mut cmd = self.embedded("isql-fb", lock);
        cmd.args(["-q", "-b"]).arg(file);
        let o = self
            .with_input(cmd, lost_rows::CATALOG_SQL, CHECK_TIMEOUT)
            .await?;
        let text = output_text(&o);
        append(out, text.as_bytes())?;
        if !o.status.success() {
            report.findings.push(failed(format!(
                "the copy's catalog could not be read, so lost rows are not ruled out: {}",
                text.trim()
            )));
            return Ok(report);
        }
        let (tables, indexes) = lost_rows::parse_catalog(&text);
        let (chosen, uncovered) = lost_rows::choose(&tables, &indexes);
        report.not_covered.extend(uncovered.iter().map(|t| {
            format!("table {t} has no index on columns: rows lost from it would not be noticed")
        }));
        if chosen.is_empty() {
            return Ok(report);
        }

        append(
            out,
            format!("==== fbstat -i {} ====\n", file.display()).as_bytes(),
        )?;
        let mut cmd = self.embedded("fbstat", lock);
        cmd.arg("-i").arg(file);
        let o = self.runner.output(cmd, CHECK_TIMEOUT).await?;
        let text = output_text(&o);
        append(out, text.as_bytes())?;
        if !o.status.success() {
            report.findings.push(failed(format!(
                "fbstat -i of the copy failed, so lost rows are not ruled out: {}",
                text.trim()
            )));
            return Ok(report);
        }
        let nodes = lost_rows::parse_fbstat_nodes(&text);

        let sql = lost_rows::count_sql(&chosen);
        append(
            out,
            format!("==== rows counted through an index (isql-fb) ====\n{sql}").as_bytes(),
        )?;
        let mut cmd = self.embedded("isql-fb", lock);
        cmd.args(["-q", "-b"]).arg(file);
        let o = self.with_input(cmd, &sql, CHECK_TIMEOUT).await?;
        let text = output_text(&o);
        append(out, text.as_bytes())?;
        let counts = lost_rows::parse_counts(&text, chosen.len());
        let (found, coverage) = lost_rows::findings(&chosen, &counts, &nodes, &db);
        report.findings.extend(found);
        report.coverage.extend(coverage);
        Ok(report)
    }
}

/// Whether the lost-rows check sweeps the database first: a copy of a
/// serving database holds garbage and the inserts of transactions the copy
/// cut, whose index entries would count as rows; a database gbak -c just
/// wrote has neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sweep {
    Needed,
    NotNeeded,
}
