//! One `tandemctl` call is one trace: spans from tandemctl, the controller and
//! the agents, exported over OTLP to a real (in-test) OTLP/gRPC receiver,
//! with one trace id and the agent's span a descendant of the controller's.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::otlp::{OtlpReceiver, ReceivedSpan};

/// Does `span` descend from a span of `service` (following parent ids)?
fn descends_from(span: &ReceivedSpan, service: &str, by_id: &HashMap<&str, &ReceivedSpan>) -> bool {
    let mut cur = span;
    for _ in 0..32 {
        match by_id.get(cur.parent_span_id.as_str()) {
            Some(p) if p.service == service => return true,
            Some(p) => cur = p,
            None => return false,
        }
    }
    false
}

/// Have all of `span`'s ancestors arrived (up to a span with no parent)?
fn ancestors_arrived(span: &ReceivedSpan, by_id: &HashMap<&str, &ReceivedSpan>) -> bool {
    let mut cur = span;
    for _ in 0..32 {
        if cur.parent_span_id.is_empty() {
            return true;
        }
        match by_id.get(cur.parent_span_id.as_str()) {
            Some(p) => cur = p,
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tandemctl_call_is_one_trace_across_three_processes() {
    let otlp = OtlpReceiver::start().await.unwrap();
    let spec = FleetSpec::new(&[("delta", 1)])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let fleet = Fleet::start(spec).await.unwrap();

    let run = fleet.ctl(&["show", "delta"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}");

    let spans = otlp
        .wait_for(Duration::from_secs(20), |spans| {
            let roots: Vec<&ReceivedSpan> = spans
                .iter()
                .filter(|s| s.service == "tandemctl" && s.name == "tandemctl show")
                .collect();
            // The controller's server span ends after its children, so it
            // may come in a later batch than they do: wait for it by name.
            roots.iter().any(|root| {
                let in_trace = |service: &str, name: &str| {
                    spans.iter().any(|s| {
                        s.trace_id == root.trace_id && s.service == service && s.name.contains(name)
                    })
                };
                // A server span ends after its children, so a parent may
                // come in a later batch: wait until every agent span's
                // ancestors have all arrived (the asserts below then say
                // whether they lead to the controller).
                let by_id: HashMap<&str, &ReceivedSpan> =
                    spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
                let ancestors_in = spans
                    .iter()
                    .filter(|s| s.trace_id == root.trace_id && s.service == "tandem-agent")
                    .all(|s| ancestors_arrived(s, &by_id));
                in_trace("tandem-controller", "ShowSets")
                    && in_trace("tandem-agent", "")
                    && ancestors_in
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));

    let root = spans
        .iter()
        .find(|s| s.service == "tandemctl" && s.name == "tandemctl show")
        .unwrap();
    assert!(
        root.parent_span_id.is_empty(),
        "the tandemctl span is the root"
    );
    let trace: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let by_id: HashMap<&str, &ReceivedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let controller = trace
        .iter()
        .find(|s| s.service == "tandem-controller" && s.name.contains("ShowSets"))
        .unwrap_or_else(|| panic!("no controller ShowSets span in {trace:#?}"));
    assert_eq!(
        controller.parent_span_id, root.span_id,
        "the controller continues tandemctl's span"
    );
    let agent_spans: Vec<&&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.service == "tandem-agent")
        .collect();
    assert!(!agent_spans.is_empty());
    for s in &agent_spans {
        assert!(
            descends_from(s, "tandem-controller", &by_id),
            "agent span {s:?} is not under the controller"
        );
    }
    // Both members' agents answered within the same trace.
    let agents: HashSet<&str> = trace
        .iter()
        .filter(|s| s.service == "tandem-controller" && s.name == "agent.status")
        .filter_map(|s| s.attr("agent"))
        .collect();
    assert_eq!(agents, HashSet::from(["delta-p", "delta-s1"]));
}

use tandem_tests::TESTDB_STEPS as STEPS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_testdb_is_one_trace_with_every_agent_step_under_the_controller() {
    let otlp = OtlpReceiver::start().await.unwrap();
    let spec = FleetSpec::new(&[("omicron", 1)])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let fleet = Fleet::start(spec).await.unwrap();

    let run = fleet
        .ctl(&["testdb", "omicron", "--output", "json"])
        .unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let verdict = &run.json()["sets"][0]["verdict"];
    let trace_id = verdict["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(trace_id.len(), 32, "{verdict}");
    // The trace id a person pastes into Grafana is the one the verdict keeps.
    let history = fleet
        .ctl(&["history", "omicron", "--output", "json"])
        .unwrap();
    assert_eq!(history.json()["verdicts"][0]["trace_id"], trace_id.as_str());

    let spans = otlp
        .wait_for(Duration::from_secs(30), |spans| {
            let steps: HashSet<&str> = spans
                .iter()
                .filter(|s| s.trace_id == trace_id && s.name.starts_with("testdb "))
                .filter_map(|s| s.attr("step"))
                .collect();
            STEPS.iter().all(|s| steps.contains(s))
                && spans
                    .iter()
                    .any(|s| s.trace_id == trace_id && s.name == "testdb.set")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let by_id: HashMap<&str, &ReceivedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();

    // Rooted at tandemctl; the controller's job span continues it.
    let root = trace
        .iter()
        .find(|s| s.service == "tandemctl")
        .unwrap_or_else(|| panic!("no tandemctl span in {trace:#?}"));
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    let job = trace
        .iter()
        .find(|s| s.service == "tandem-controller" && s.name == "testdb.set")
        .unwrap();
    assert!(descends_from(job, "tandemctl", &by_id), "{job:?}");
    assert_eq!(job.attr("set"), Some("omicron"));
    assert_eq!(job.attr("member"), Some("omicron-s1"));
    assert_eq!(job.attr("verdict"), Some("clean"));
    assert_eq!(job.attr("findings"), Some("0"));
    assert!(job.attr("lsn").is_some_and(|l| l.contains('/')), "{job:?}");

    // Every step is a span of the agent, under the controller's job span.
    let under_job = |s: &ReceivedSpan| {
        let mut cur = s;
        for _ in 0..32 {
            match by_id.get(cur.parent_span_id.as_str()) {
                Some(p) if p.span_id == job.span_id => return true,
                Some(p) => cur = p,
                None => return false,
            }
        }
        false
    };
    for step in STEPS {
        let s = trace
            .iter()
            .find(|s| s.name == format!("testdb {step}"))
            .unwrap_or_else(|| panic!("no span for step {step}"));
        assert_eq!(s.service, "tandem-agent", "{s:?}");
        assert!(
            under_job(s),
            "step {step} is not under the controller's job span: {s:?}"
        );
        assert_eq!(s.attr("set"), Some("omicron"));
        assert_eq!(s.attr("member"), Some("omicron-s1"));
        assert_eq!(s.attr("operation.id"), job.attr("operation.id"));
    }
    let copy = trace.iter().find(|s| s.name == "testdb copy").unwrap();
    let bytes: u64 = copy.attr("bytes").unwrap().parse().unwrap();
    assert!(bytes > 1_000_000, "{copy:?}");
    assert!(copy.attr("bytes_per_second").is_some(), "{copy:?}");
    let open = trace
        .iter()
        .find(|s| s.name == "testdb open_private")
        .unwrap();
    assert!(open.attr("lsn").is_some(), "{open:?}");
    let checks = trace.iter().find(|s| s.name == "testdb checks").unwrap();
    assert_eq!(checks.attr("findings"), Some("0"));

    // Each tool the agent ran is a child span with its exit status.
    let tools: HashSet<(&str, &str)> = trace
        .iter()
        .filter(|s| s.service == "tandem-agent")
        .filter_map(|s| {
            Some((
                s.attr("process.executable.name")?,
                s.attr("process.exit.code")?,
            ))
        })
        .collect();
    for tool in ["pg_ctl", "pg_amcheck", "pg_checksums"] {
        assert!(tools.contains(&(tool, "0")), "{tool} exit 0 in {tools:?}");
    }
    let operation = trace
        .iter()
        .find(|s| s.service == "tandem-agent" && s.name == "operation testdb")
        .unwrap();
    assert_eq!(operation.attr("result"), Some("clean"));
    assert_eq!(operation.attr("db.system"), Some("postgresql"));
}
