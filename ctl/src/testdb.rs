//! `tandemctl testdb` (and `tandemctl backup`, a run of the same shape):
//! start a run, show each set's progress, end with the verdicts and an exit
//! code (0 clean, 1 errors found, 2 could not run).
//! `tandemctl watch` follows a run already started; `tandemctl cancel`
//! cancels one. The run belongs to the controller: Ctrl-C (or a lost
//! connection) stops the watching, never the run.
//!
//! On a terminal each set gets a progress bar (step, bytes, rate); otherwise
//! each step change is one line on stderr, so logs of scripted runs stay
//! readable. The JSON output (stdout) is one document at the end.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tandem_proto::pb;

use tandem_proto::model::TestMode;

use crate::cli::{Connection, CopyFlags};
use crate::client::{self, Leader};
use crate::outcome::{CtlError, Outcome, print, refused};
use crate::output::{self, OutputFormat};

struct Display {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    last_step: HashMap<String, String>,
}

impl Display {
    fn new(human: bool) -> Display {
        let tty = human && std::io::stderr().is_terminal();
        Display {
            multi: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: HashMap::new(),
            last_step: HashMap::new(),
        }
    }

    fn bar(&mut self, set: &str) -> Option<&ProgressBar> {
        let multi = self.multi.as_ref()?;
        Some(self.bars.entry(set.to_owned()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(0));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} {spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .expect("template is valid")
                .progress_chars("=> "),
            );
            b.set_prefix(set.to_owned());
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        }))
    }

    fn progress(&mut self, set: &str, member: &str, p: &pb::Progress) {
        let step_changed = self.last_step.get(set) != Some(&p.step);
        if step_changed {
            self.last_step.insert(set.to_owned(), p.step.clone());
        }
        match self.bar(set) {
            Some(b) => {
                b.set_length(p.bytes_total.max(p.bytes_done));
                b.set_position(p.bytes_done);
                b.set_message(format!("{member}: {}", p.step));
            }
            None if step_changed => eprintln!("{set} {member}: step {}", p.step),
            None => {}
        }
    }

    /// Why the set's test has not started yet ("waiting: fleet limit 4/4").
    fn waiting(&mut self, set: &str, why: &str) {
        match self.bar(set) {
            Some(b) => b.set_message(why.to_owned()),
            None => eprintln!("{set}: {why}"),
        }
    }

    /// The set's verdict line; an archive copy says what became of the copy.
    fn verdict(&mut self, set: &str, v: &pb::Verdict, archive: bool) {
        let summary = if archive {
            let line = output::archive_human(&[(set.to_owned(), v.clone())]);
            line.strip_prefix(&format!("{set}: "))
                .unwrap_or(&line)
                .to_owned()
        } else {
            output::verdict_json(&Some(v.clone()))["summary"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        match self.bar(set) {
            Some(b) => b.finish_with_message(summary),
            None => eprintln!("{set}: {summary}"),
        }
    }
}

pub async fn run(
    conn: &Connection,
    format: OutputFormat,
    sets: Vec<String>,
    all: bool,
    member: Option<String>,
    copy: CopyFlags,
) -> Result<Outcome, CtlError> {
    let mut leader = conn.leader().await?;
    let started = leader
        .client
        .start_testdb(pb::StartTestdbRequest {
            sets,
            all,
            member: member.unwrap_or_default(),
            mode: TestMode::to_wire(copy.mode.map(Into::into)),
            allow_commit_stall: copy.allow_commit_stall,
        })
        .await
        .map_err(refused("StartTestdb"))?
        .into_inner();
    let run_id = started.run_id;
    let skipped = started.skipped;
    if format == OutputFormat::Human {
        for s in &skipped {
            eprintln!("{}: skipped: {}", s.set, s.reason);
        }
    }
    if run_id.is_empty() {
        print(
            format,
            serde_json::json!({"run_id": null, "sets": [], "skipped": skipped_json(&skipped)}),
            "every set asked for is held by a maintenance window; nothing was tested".into(),
        );
        return Ok(Outcome::Ok);
    }
    eprintln!(
        "run {run_id} started; Ctrl-C stops watching, not the run (`tandemctl cancel {run_id}` cancels it)"
    );
    follow(conn, leader, format, run_id, &skipped, false).await
}

/// Sets a run left out, for the JSON output.
fn skipped_json(skipped: &[pb::SkippedSet]) -> Vec<serde_json::Value> {
    skipped
        .iter()
        .map(|s| serde_json::json!({"name": s.set, "reason": s.reason}))
        .collect()
}

/// `tandemctl backup SET` (`archive: None`) or `tandemctl copy SET`
/// (`Some(archive_file)`): a backup or archive-copy run, followed like a
/// test.
pub async fn backup(
    conn: &Connection,
    format: OutputFormat,
    set: String,
    member: Option<String>,
    archive: Option<bool>,
    copy: CopyFlags,
) -> Result<Outcome, CtlError> {
    let mut leader = conn.leader().await?;
    let run_id = leader
        .client
        .backup(pb::BackupRequest {
            set,
            member: member.unwrap_or_default(),
            archive_copy: archive.is_some(),
            archive_file: archive.unwrap_or(false),
            mode: TestMode::to_wire(copy.mode.map(Into::into)),
            allow_commit_stall: copy.allow_commit_stall,
        })
        .await
        .map_err(refused("Backup"))?
        .into_inner()
        .run_id;
    eprintln!("run {run_id} started; Ctrl-C stops watching, not the run");
    follow(conn, leader, format, run_id, &[], archive.is_some()).await
}

/// `tandemctl watch RUN`.
pub async fn watch(
    conn: &Connection,
    format: OutputFormat,
    run_id: String,
) -> Result<Outcome, CtlError> {
    let leader = conn.leader().await?;
    follow(conn, leader, format, run_id, &[], false).await
}

/// `tandemctl cancel RUN`.
pub async fn cancel(
    conn: &Connection,
    format: OutputFormat,
    run_id: String,
) -> Result<Outcome, CtlError> {
    let r = conn
        .connect()
        .await?
        .cancel_run(pb::CancelRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .map_err(refused("CancelRun"))?
        .into_inner();
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let human = format!(
        "run {run_id} cancelled: queued sets ended: {}; running tests asked to stop: {}
`tandemctl watch {run_id}` shows the verdicts",
        list(&r.queued),
        list(&r.stopping)
    );
    print(
        format,
        serde_json::json!({"run_id": run_id, "queued": r.queued, "stopping": r.stopping}),
        human,
    );
    Ok(Outcome::Ok)
}

/// Follow a run to its end: progress on stderr, the verdicts on stdout.
/// When the controller goes away under the stream (stopped, or it lost its
/// machine or its lead), the run is followed on through the controller
/// that leads next ([`Connection::reopen`]); that one replays the run from
/// its start, and a set whose verdict was shown already is skipped.
async fn follow(
    conn: &Connection,
    mut leader: Leader,
    format: OutputFormat,
    run_id: String,
    skipped: &[pb::SkippedSet],
    archive: bool,
) -> Result<Outcome, CtlError> {
    let request = || pb::WatchRunRequest {
        run_id: run_id.clone(),
    };
    let mut stream = leader
        .client
        .watch_run(request())
        .await
        .map_err(refused("WatchRun"))?
        .into_inner();
    let mut display = Display::new(format == OutputFormat::Human);
    let mut results: Vec<(String, pb::Verdict)> = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let stopped = |display: &Display| {
        if let Some(m) = &display.multi {
            let _ = m.clear();
        }
        CtlError::Usage(format!(
            "stopped watching run {run_id}; the run goes on on the controller: `tandemctl watch {run_id}` follows it again, `tandemctl cancel {run_id}` cancels it"
        ))
    };
    loop {
        // Cancel-safe: message() keeps no partial message across polls that
        // lose the race, and after Ctrl-C the stream is dropped anyway.
        let next = tokio::select! {
            m = stream.message() => m,
            _ = &mut ctrl_c => return Err(stopped(&display)),
        };
        let ev = match next {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(s) => {
                let broke = |why: String| CtlError::Unanswered {
                    call: "WatchRun",
                    message: format!(
                        "the progress stream of run {run_id} broke: {why}; `tandemctl history SET` shows the verdicts"
                    ),
                };
                if !client::went_away(&s) {
                    return Err(broke(s.message().to_owned()));
                }
                let from = leader.url();
                // Cancel-safe: a reopen cut short leaves nothing behind.
                let reopened = tokio::select! {
                    r = conn.reopen("WatchRun", |mut c| {
                        let r = request();
                        async move { c.watch_run(r).await }
                    }) => r,
                    _ = &mut ctrl_c => return Err(stopped(&display)),
                };
                let (new, s2) = reopened.map_err(|e| {
                    broke(format!(
                        "{}; no controller took it up within {:?} ({e})",
                        s.message(),
                        client::REOPEN_FOR
                    ))
                })?;
                eprintln!(
                    "controller {from} went away; following run {run_id} through {}",
                    new.url()
                );
                leader = new;
                stream = s2.into_inner();
                continue;
            }
        };
        // A set's verdict is shown once, also when a new controller
        // replays the run.
        if !results.iter().any(|(set, _)| *set == ev.set) {
            if !ev.waiting.is_empty() {
                display.waiting(&ev.set, &ev.waiting);
            }
            if let Some(p) = &ev.progress {
                display.progress(&ev.set, &ev.member, p);
            }
            if let Some(v) = ev.verdict {
                display.verdict(&ev.set, &v, archive);
                results.push((ev.set.clone(), v));
            }
        }
        if ev.done {
            break;
        }
    }
    if let Some(m) = &display.multi {
        let _ = m.clear();
    }
    let json = serde_json::json!({
        "run_id": run_id,
        "sets": results.iter().map(|(set, v)| serde_json::json!({
            "name": set,
            "member": v.member,
            "verdict": output::verdict_json(&Some(v.clone())),
        })).collect::<Vec<_>>(),
        "skipped": skipped_json(skipped),
    });
    let human = if archive {
        output::archive_human(&results)
    } else {
        output::verdicts_human(&results)
    };
    print(format, json, human);
    let errors = results
        .iter()
        .any(|(_, v)| output::verdict_bad(&Some(v.clone())));
    let failed = results
        .iter()
        .any(|(_, v)| output::verdict_failed(&Some(v.clone())));
    Ok(if errors {
        Outcome::Bad
    } else if failed {
        Outcome::CouldNotRun
    } else {
        Outcome::Ok
    })
}
