//! The controller's Prometheus metrics (SPEC O3): every name and label is
//! here, recorded by one-line calls at the points where things happen.
//! [`serve`] turns them on (`metrics_listen`); without it the calls do
//! nothing.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `tandem_set_verdict` | gauge | set, verdict | 1 for the kind of the set's last verdict (`never_tested`, `clean`, `errors`, `failed_to_run`), 0 for the others |
//! | `tandem_set_verdict_timestamp_seconds` | gauge | set | unix time of the last verdict (age: `time() - ...`); absent when never tested |
//! | `tandem_set_clean_timestamp_seconds` | gauge | set | unix time of the set's last clean verdict (at start-up: among its last 100) |
//! | `tandem_verdicts_total` | counter | set, verdict | verdicts given since the controller started |
//! | `tandem_test_duration_seconds` | histogram | set | duration of each test, from the agent's start to its result |
//! | `tandem_test_standby_downtime_seconds` | histogram | set, mode | how long the standby was stopped for each test whose downtime was measured (`online` tests: 0; mode `unknown` when the agent did not say) |
//! | `tandem_fleet_queue_length` | gauge | | tests waiting for their turn |
//! | `tandem_fleet_running_operations` | gauge | | tests running |
//! | `tandem_fleet_waiting` | gauge | reason | waiting tests by reason (`set`, `fleet`, `host`) |
//! | `tandem_fleet_waits_total` | counter | reason | times a test was told to wait, by reason |
//! | `tandem_fleet_queue_wait_seconds` | histogram | | time from queued to started |
//! | `tandem_agents` | gauge | state | declared agents by state (`online`, `offline`, `never_seen`) |
//! | `tandem_controller_build_info` | gauge | version | 1 |
//! | `tandem_tls_cert_days_left` | gauge | | days until the controller's own certificate expires (`tandem_proto::tls`, shared with the agent) |
//! | `tandem_tls_reloads_total` | counter | result | TLS file changes `reloaded` or `refused` |
//! | `tandem_tls_handshake_failures_total` | counter | | handshakes the server refused |
//! | `tandem_leader_leading` | gauge | | 1 while this controller leads, 0 while it follows (an SQLite store: always 1) |
//! | `tandem_leader_generation` | gauge | | the lease generation: the one it leads under, or on a follower the one it last read (0: none yet; SQLite: 0) |
//! | `tandem_leader_lease_renewed_timestamp_seconds` | gauge | | unix time the lease was last renewed: on the leader, its last successful renewal; on a follower, as it last read it from the store (absent on SQLite) |
//! | `tandem_leader_lease_expires_timestamp_seconds` | gauge | | unix time the lease runs out: on the leader, its own deadline (before the store's); on a follower, as it last read it (absent on SQLite) |
//! | `tandem_leader_acquired_total` | counter | | times this controller took the lease (became the leader) |
//! | `tandem_leader_changes_total` | counter | | times this controller saw the lease change hands (a generation other than the one it knew) |
//!
//! The leader metrics are set by the election (`leader::Election`); a
//! controller that loses the lease exits, so its counters start again at 0
//! with the process (`increase()` takes that in its stride).
//!
//! Verdict gauges are set from the store at start-up ([`load_verdicts`]),
//! so ages stay right across restarts. Maintenance windows are not
//! measured yet (they are not built).

use std::collections::HashMap;
use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tandem_proto::metrics::MetricsError;
use tandem_proto::model::AgentState;

use crate::store::{Store, StoreError};
use crate::verdicts::{Verdict, VerdictKind};

/// How many verdicts back the start-up looks for a set's last clean one.
const CLEAN_LOOKBACK: u32 = 100;
const VERDICT_KINDS: [&str; 4] = ["never_tested", "clean", "errors", "failed_to_run"];
const WAIT_REASONS: [&str; 3] = ["set", "fleet", "host"];
const AGENT_STATES: [AgentState; 3] = [
    AgentState::Online,
    AgentState::Offline,
    AgentState::NeverSeen,
];

/// Serve the metrics on `addr` and describe them; `setting` names where
/// the address came from, for the error.
pub fn serve(addr: SocketAddr, setting: &str) -> Result<(), MetricsError> {
    tandem_proto::metrics::serve(addr, setting, &[])?;
    describe();
    gauge!("tandem_controller_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for reason in WAIT_REASONS {
        counter!("tandem_fleet_waits_total", "reason" => reason).absolute(0);
        gauge!("tandem_fleet_waiting", "reason" => reason).set(0.0);
    }
    gauge!("tandem_fleet_queue_length").set(0.0);
    gauge!("tandem_fleet_running_operations").set(0.0);
    counter!("tandem_leader_acquired_total").absolute(0);
    counter!("tandem_leader_changes_total").absolute(0);
    Ok(())
}

fn describe() {
    describe_gauge!(
        "tandem_maintenance_window_open",
        "1 while a maintenance window holds the set"
    );
    describe_histogram!(
        "tandem_maintenance_downtime_seconds",
        metrics::Unit::Seconds,
        "Set downtime of each maintenance window, first member stopped to last streaming"
    );
    describe_gauge!(
        "tandem_set_verdict",
        "1 for the kind of the set's last verdict, 0 for the other kinds"
    );
    describe_gauge!(
        "tandem_set_verdict_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time of the set's last verdict"
    );
    describe_gauge!(
        "tandem_set_clean_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time of the set's last clean verdict"
    );
    describe_counter!("tandem_verdicts_total", "Verdicts given, by set and kind");
    describe_histogram!(
        "tandem_test_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of each test (testdb), from the agent's start to its result"
    );
    describe_histogram!(
        "tandem_test_standby_downtime_seconds",
        metrics::Unit::Seconds,
        "How long the standby was stopped for each test"
    );
    describe_gauge!(
        "tandem_fleet_queue_length",
        "Tests waiting for their turn under the load limits"
    );
    describe_gauge!("tandem_fleet_running_operations", "Tests running now");
    describe_gauge!("tandem_fleet_waiting", "Waiting tests by reason");
    describe_counter!(
        "tandem_fleet_waits_total",
        "Times a test was told to wait, by reason"
    );
    describe_histogram!(
        "tandem_fleet_queue_wait_seconds",
        metrics::Unit::Seconds,
        "Time from a test's queueing to its start"
    );
    describe_gauge!("tandem_agents", "Declared agents by state");
    describe_gauge!("tandem_controller_build_info", "The controller's version");
    describe_gauge!(
        "tandem_leader_leading",
        "1 while this controller leads, 0 while it follows"
    );
    describe_gauge!(
        "tandem_leader_generation",
        "The lease generation this controller leads under, or last read as a follower"
    );
    describe_gauge!(
        "tandem_leader_lease_renewed_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time the lease was last renewed, as this controller knows"
    );
    describe_gauge!(
        "tandem_leader_lease_expires_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time the lease runs out, as this controller knows"
    );
    describe_counter!(
        "tandem_leader_acquired_total",
        "Times this controller took the lease"
    );
    describe_counter!(
        "tandem_leader_changes_total",
        "Times this controller saw the lease change hands"
    );
}

/// Set each declared set's verdict gauges from the store (at start-up,
/// when metrics are on).
pub async fn load_verdicts(store: &Store, sets: &[String]) -> Result<(), StoreError> {
    for set in sets {
        let last = store.verdicts(set.clone(), 1).await?;
        let Some(last) = last.first() else {
            set_kind(set, "never_tested");
            continue;
        };
        set_verdict_gauges(set, last);
        let clean = if last.kind == VerdictKind::Clean {
            Some(last.clone())
        } else {
            let recent = store.verdicts(set.clone(), CLEAN_LOOKBACK).await?;
            recent.into_iter().find(|v| v.kind == VerdictKind::Clean)
        };
        if let Some(clean) = clean {
            gauge!("tandem_set_clean_timestamp_seconds", "set" => set.clone())
                .set(unix_seconds(clean.at));
        }
    }
    Ok(())
}

/// A new verdict for `set` (a fleet job's, or one an agent reported).
pub fn verdict(set: &str, v: &Verdict) {
    set_verdict_gauges(set, v);
    counter!("tandem_verdicts_total", "set" => set.to_owned(), "verdict" => v.kind.as_str())
        .increment(1);
    if v.kind == VerdictKind::Clean {
        gauge!("tandem_set_clean_timestamp_seconds", "set" => set.to_owned())
            .set(unix_seconds(v.at));
    }
    if let Some(d) = v.duration_seconds {
        histogram!("tandem_test_duration_seconds", "set" => set.to_owned()).record(d);
    }
    if let Some(d) = v.standby_downtime_seconds {
        let mode = v.mode.clone().unwrap_or_else(|| "unknown".into());
        histogram!("tandem_test_standby_downtime_seconds", "set" => set.to_owned(), "mode" => mode)
            .record(d);
    }
}

fn set_verdict_gauges(set: &str, v: &Verdict) {
    set_kind(set, v.kind.as_str());
    gauge!("tandem_set_verdict_timestamp_seconds", "set" => set.to_owned()).set(unix_seconds(v.at));
}

fn set_kind(set: &str, kind: &str) {
    for k in VERDICT_KINDS {
        gauge!("tandem_set_verdict", "set" => set.to_owned(), "verdict" => k).set(if k == kind {
            1.0
        } else {
            0.0
        });
    }
}

fn unix_seconds(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The fleet's queue after a dispatch: running, and one item per waiting
/// test: its wait reason's label (`set`, `fleet`, `host`), or `None` while
/// it has not been told to wait.
pub fn queue(running: usize, waiting: impl Iterator<Item = Option<&'static str>>) {
    let mut by_reason: HashMap<&'static str, usize> = HashMap::new();
    let mut total = 0;
    for reason in waiting {
        total += 1;
        if let Some(reason) = reason {
            *by_reason.entry(reason).or_default() += 1;
        }
    }
    gauge!("tandem_fleet_queue_length").set(total as f64);
    gauge!("tandem_fleet_running_operations").set(running as f64);
    for r in WAIT_REASONS {
        gauge!("tandem_fleet_waiting", "reason" => r)
            .set(by_reason.get(r).copied().unwrap_or(0) as f64);
    }
}

/// A queued test was told to wait (once per change of reason), with the
/// reason's label (`set`, `fleet`, `host`).
pub fn wait(reason: &'static str) {
    counter!("tandem_fleet_waits_total", "reason" => reason).increment(1);
}

/// A queued test started after waiting `seconds`.
pub fn admitted(seconds: f64) {
    histogram!("tandem_fleet_queue_wait_seconds").record(seconds.max(0.0));
}

/// Whether a maintenance window holds `set` now (1) or not (0).
pub fn window_open(set: &str, open: bool) {
    gauge!("tandem_maintenance_window_open", "set" => set.to_owned()).set(if open {
        1.0
    } else {
        0.0
    });
}

/// A window's measured set downtime (first member stopped to last streaming).
pub fn window_downtime(seconds: f64) {
    histogram!("tandem_maintenance_downtime_seconds").record(seconds.max(0.0));
}

/// The declared agents' states, one item per agent.
pub fn agents(states: impl IntoIterator<Item = AgentState>) {
    let states: Vec<AgentState> = states.into_iter().collect();
    for state in AGENT_STATES {
        let n = states.iter().filter(|s| **s == state).count();
        gauge!("tandem_agents", "state" => state.to_string()).set(n as f64);
    }
}

/// Where the election stands: whether this controller leads, and the
/// lease generation it leads under or last read.
pub fn leader(leading: bool, generation: i64) {
    gauge!("tandem_leader_leading").set(if leading { 1.0 } else { 0.0 });
    gauge!("tandem_leader_generation").set(generation as f64);
}

/// The lease as this controller knows it: last renewed at `renewed`, runs
/// out at `expires`.
pub fn lease(renewed: jiff::Timestamp, expires: jiff::Timestamp) {
    gauge!("tandem_leader_lease_renewed_timestamp_seconds").set(unix_seconds(renewed));
    gauge!("tandem_leader_lease_expires_timestamp_seconds").set(unix_seconds(expires));
}

/// This controller took the lease.
pub fn leader_acquired() {
    counter!("tandem_leader_acquired_total").increment(1);
}

/// The lease changed hands: a generation other than the one last seen.
pub fn leader_changed() {
    counter!("tandem_leader_changes_total").increment(1);
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// The value of the series `name` with exactly these `labels`.
    fn get<'a>(
        snap: &'a [(metrics_util::CompositeKey, DebugValue)],
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'a DebugValue> {
        snap.iter()
            .find(|(k, _)| {
                let key = k.key();
                key.name() == name
                    && key.labels().count() == labels.len()
                    && labels
                        .iter()
                        .all(|(l, v)| key.labels().any(|x| x.key() == *l && x.value() == *v))
            })
            .map(|(_, v)| v)
    }

    #[test]
    fn the_queue_is_counted_by_reason_and_verdicts_are_one_hot() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            queue(
                1,
                [Some("fleet"), Some("fleet"), Some("host"), None].into_iter(),
            );
            wait("fleet");
            let mut v = Verdict::failed_to_run("db2", "x".into(), String::new());
            v.kind = VerdictKind::Errors;
            v.duration_seconds = Some(12.5);
            verdict("billing", &v);
        });
        let snap: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k, v))
            .collect();
        let g = |n: &str, l: &[(&str, &str)]| match get(&snap, n, l) {
            Some(DebugValue::Gauge(x)) => x.0,
            other => panic!("{n} {l:?}: {other:?}"),
        };
        assert_eq!(g("tandem_fleet_queue_length", &[]), 4.0);
        assert_eq!(g("tandem_fleet_running_operations", &[]), 1.0);
        assert_eq!(g("tandem_fleet_waiting", &[("reason", "fleet")]), 2.0);
        assert_eq!(g("tandem_fleet_waiting", &[("reason", "host")]), 1.0);
        assert_eq!(g("tandem_fleet_waiting", &[("reason", "set")]), 0.0);
        assert!(matches!(
            get(&snap, "tandem_fleet_waits_total", &[("reason", "fleet")]),
            Some(DebugValue::Counter(1))
        ));
        let kind = |k: &str| g("tandem_set_verdict", &[("set", "billing"), ("verdict", k)]);
        assert_eq!(
            (kind("errors"), kind("clean"), kind("never_tested")),
            (1.0, 0.0, 0.0)
        );
        assert!(
            g(
                "tandem_set_verdict_timestamp_seconds",
                &[("set", "billing")]
            ) > 1.7e9,
            "unix seconds"
        );
        assert!(matches!(
            get(&snap, "tandem_test_duration_seconds", &[("set", "billing")]),
            Some(DebugValue::Histogram(h)) if h.len() == 1
        ));
        assert!(
            get(
                &snap,
                "tandem_set_clean_timestamp_seconds",
                &[("set", "billing")]
            )
            .is_none()
        );
    }
}
