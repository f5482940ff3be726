//! `tandemctl testdb` (and `tandemctl backup`, a run of the same shape):
//! start a run, show each set's progress, end with the verdicts and an exit
//! code (0 clean, 1 errors found, 2 could not run).
//!
//! On a terminal each set gets a progress bar (step, bytes, rate); otherwise
//! each step change is one line on stderr, so logs of scripted runs stay
//! readable. The JSON output (stdout) is one document at the end.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tandem_proto::pb;

use crate::cli::Connection;
use crate::commands::{CtlError, Outcome, print, refused};
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

    fn verdict(&mut self, set: &str, v: &pb::Verdict) {
        let summary = output::verdict_json(&Some(v.clone()))["summary"]
            .as_str()
            .unwrap_or("")
            .to_owned();
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
) -> Result<Outcome, CtlError> {
    let mut client = conn.connect().await?;
    let run_id = client
        .start_testdb(pb::StartTestdbRequest {
            sets,
            all,
            member: member.unwrap_or_default(),
        })
        .await
        .map_err(refused("StartTestdb"))?
        .into_inner()
        .run_id;
    follow(&mut client, format, run_id).await
}

/// `tandemctl backup SET`: a backup run, followed like a test.
pub async fn backup(
    conn: &Connection,
    format: OutputFormat,
    set: String,
    member: Option<String>,
) -> Result<Outcome, CtlError> {
    let mut client = conn.connect().await?;
    let run_id = client
        .backup(pb::BackupRequest {
            set,
            member: member.unwrap_or_default(),
        })
        .await
        .map_err(refused("Backup"))?
        .into_inner()
        .run_id;
    follow(&mut client, format, run_id).await
}

/// Follow a run to its end: progress on stderr, verdicts on stdout.
async fn follow(
    client: &mut crate::commands::Client,
    format: OutputFormat,
    run_id: String,
) -> Result<Outcome, CtlError> {
    let mut stream = client
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .map_err(refused("WatchRun"))?
        .into_inner();
    let mut display = Display::new(format == OutputFormat::Human);
    let mut results: Vec<(String, pb::Verdict)> = Vec::new();
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(s) => {
                return Err(CtlError::Refused {
                    call: "WatchRun",
                    message: format!(
                        "the progress stream of run {run_id} broke ({}); `tandemctl history SET` will show the verdicts",
                        s.message()
                    ),
                });
            }
        };
        if !ev.waiting.is_empty() {
            display.waiting(&ev.set, &ev.waiting);
        }
        if let Some(p) = &ev.progress {
            display.progress(&ev.set, &ev.member, p);
        }
        if let Some(v) = ev.verdict {
            display.verdict(&ev.set, &v);
            results.push((ev.set.clone(), v));
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
    });
    print(format, json, output::verdicts_human(&results));
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
