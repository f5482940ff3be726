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
            roots.iter().any(|root| {
                let services: HashSet<&str> = spans
                    .iter()
                    .filter(|s| s.trace_id == root.trace_id)
                    .map(|s| s.service.as_str())
                    .collect();
                services.contains("tandem-controller") && services.contains("tandem-agent")
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
