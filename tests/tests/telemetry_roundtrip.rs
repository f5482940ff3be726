//! End to end: `telemetry::init` exports spans over OTLP/gRPC to an in-process
//! receiver, with `service.name` set, within about a second (batch delay), and
//! trace context crosses a real gRPC call (client interceptor -> `server_span`).
//!
//! One test in this file: it sets environment variables before `init`, which
//! installs process-wide state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tandem_proto::propagation;
use tandem_proto::telemetry::{self, LogFormat};
use tandem_tests::otlp::{OtlpReceiver, ReceivedSpan};
use tracing::Instrument as _;

/// A gRPC service to call through the traced channel: records the trace id
/// its handler runs under and opens a child span, like an agent step.
#[derive(Default, Clone)]
struct Echo {
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

#[tonic::async_trait]
impl TraceService for Echo {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.seen
            .lock()
            .unwrap()
            .push(propagation::current_trace_id());
        let step = tracing::info_span!("agent.step", set = "s1", bytes = 42_u64);
        step.in_scope(|| tracing::info!("step ran"));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn find<'a>(spans: &'a [ReceivedSpan], name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.name == name)
}

const SERVER_SPAN: &str = "opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_receiver_with_service_name_and_propagated_context() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    // SAFETY: the only test in this binary; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_SERVICE_NAME",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_BSP_SCHEDULE_DELAY",
            "OTEL_SDK_DISABLED",
            "OTEL_TRACES_EXPORTER",
        ] {
            std::env::remove_var(var);
        }
    }
    let guard = telemetry::init("test-svc", LogFormat::Human, "info")?;
    assert!(guard.is_exporting());

    // A server that takes its spans' parents from the request metadata.
    let echo = Echo::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .trace_fn(propagation::server_span)
            .add_service(TraceServiceServer::new(echo.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = TraceServiceClient::new(propagation::traced(channel));

    assert_eq!(propagation::current_trace_id(), None);
    let root = tracing::info_span!("tandemctl.test", otel.kind = "client");
    let root_trace = async {
        let id = propagation::current_trace_id().expect("a trace id inside the root span");
        client.export(ExportTraceServiceRequest::default()).await?;
        anyhow::Ok(id)
    }
    .instrument(root)
    .await?;
    assert_eq!(root_trace.len(), 32);
    assert_eq!(
        echo.seen.lock().unwrap().clone(),
        vec![Some(root_trace.clone())],
        "the handler runs under the caller's trace"
    );

    // Exported by the batch processor's timer (500 ms), well before shutdown.
    let started = Instant::now();
    let spans = receiver
        .wait_for(Duration::from_millis(2500), |s| {
            find(s, "tandemctl.test").is_some()
                && find(s, SERVER_SPAN).is_some()
                && find(s, "agent.step").is_some()
        })
        .await?;
    eprintln!(
        "spans exported after {:?} without a flush",
        started.elapsed()
    );

    let root = find(&spans, "tandemctl.test").unwrap();
    let server_span = find(&spans, SERVER_SPAN).unwrap();
    let step = find(&spans, "agent.step").unwrap();
    for s in [root, server_span, step] {
        assert_eq!(s.service, "test-svc", "{s:?}");
        assert_eq!(s.trace_id, root_trace, "{s:?}");
    }
    assert_eq!(root.parent_span_id, "", "{root:?}");
    assert_eq!(server_span.parent_span_id, root.span_id);
    assert_eq!(server_span.attr("rpc.system"), Some("grpc"));
    assert_eq!(
        server_span.attr("rpc.service"),
        Some("opentelemetry.proto.collector.trace.v1.TraceService")
    );
    assert_eq!(server_span.attr("rpc.method"), Some("Export"));
    assert_eq!(step.parent_span_id, server_span.span_id);
    assert_eq!(step.attr("set"), Some("s1"));
    assert_eq!(step.attr("bytes"), Some("42"));
    // The exporter's own transport (h2, hyper, tonic) never becomes spans.
    assert!(
        spans.iter().all(|s| s.trace_id == root_trace),
        "unexpected spans: {spans:#?}"
    );

    // A span ended just before shutdown is flushed by it.
    tracing::info_span!("last").in_scope(|| ());
    let started = Instant::now();
    guard.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    receiver
        .wait_for(Duration::from_secs(2), |s| find(s, "last").is_some())
        .await?;

    server.abort();
    Ok(())
}
