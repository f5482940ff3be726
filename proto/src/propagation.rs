//! Trace context across gRPC calls: tandemctl -> controller -> agent.
//!
//! The context travels in the request metadata as a W3C `traceparent` (and
//! `tracestate`) header. Clients wrap their channel with [`traced`] (or use
//! [`InjectTraceContext`] as an interceptor), which injects the OpenTelemetry
//! context of the *current tracing span*. Servers pass [`server_span`] to
//! `tonic::transport::Server::builder().trace_fn(...)`: it builds the request's
//! span and sets its OpenTelemetry parent from the headers *before* the span is
//! first entered (setting it later, e.g. inside an `#[instrument]`ed handler,
//! silently does nothing).
//!
//! The W3C TraceContext format is used directly rather than through the global
//! propagator, so propagation does not depend on [`crate::telemetry::init`]
//! having run; it does need the `tracing-opentelemetry` layer that `init`
//! installs, otherwise spans carry no OpenTelemetry context and nothing is
//! injected.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Client side: a tonic Interceptor that injects the *current tracing span's* OpenTelemetry context into the request metadata.
///
/// Requests made outside any span (or without the OpenTelemetry layer) go out
/// unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct InjectTraceContext;

impl tonic::service::Interceptor for InjectTraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = current_context();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new()
                .inject_context(&cx, &mut MetadataInjector(request.metadata_mut()));
        }
        Ok(request)
    }
}

/// A channel whose requests carry the caller's trace context.
pub type TracedChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, InjectTraceContext>;

/// Wrap `channel` (a [`tonic::transport::Channel`], or any service like it,
/// such as [`crate::leader::LeaderChannel`]) so every request carries the
/// current span's trace context: `FooClient::new(traced(channel))`.
pub fn traced<C>(
    channel: C,
) -> tonic::service::interceptor::InterceptedService<C, InjectTraceContext> {
    tonic::service::interceptor::InterceptedService::new(channel, InjectTraceContext)
}

/// Server side: for `tonic::transport::Server::builder().trace_fn(server_span)`. Builds an `info_span!("grpc.server", otel.name = <the gRPC path like "tandem.v1.Controller/ShowSets">, rpc.system="grpc", rpc.service, rpc.method)`
/// and sets its OpenTelemetry parent from the request headers BEFORE it is entered (DEPENDENCIES.md: set_parent after entering silently fails).
///
/// The span is a tracing root (`parent: None`): its only parent is the remote
/// one from the headers, so a server running inside some other span (a test,
/// a task) does not adopt it. Without a valid `traceparent` it starts a new trace.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        parent: None,
        "grpc.server",
        otel.name = path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    // `extract` alone would start from `Context::current()` and, with no
    // `traceparent`, hand back whatever OpenTelemetry context is active here.
    let parent = TraceContextPropagator::new().extract_with_context(
        &opentelemetry::Context::new(),
        &HeaderExtractor(request.headers()),
    );
    if parent.span().span_context().is_valid() {
        // Only fails when the span is disabled or the layer is absent: then
        // there is nothing to parent anyway.
        let _ = span.set_parent(parent);
    }
    span
}

/// The trace id (32 lowercase hex) of the current span, if there is a valid one (used to print it and store it with audit records).
pub fn current_trace_id() -> Option<String> {
    let cx = current_context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A trace to continue from another task (a spawned job, a run carried on
/// after a restart), so the work it does stays in the trace of the call
/// that asked for it.
#[derive(Debug, Clone)]
pub struct TraceParent(opentelemetry::Context);

impl TraceParent {
    /// The current span, as a parent.
    pub fn current() -> TraceParent {
        TraceParent(current_context())
    }

    /// A parent in the stored trace `trace_id` (32 hex digits; anything else
    /// gives no parent). The parent span itself is gone (it was in a previous
    /// process), so its id is made up from the trace id: the continued spans
    /// land in the same trace, under a span Tempo reports as missing.
    pub fn from_trace_id(trace_id: &str) -> TraceParent {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let Ok(trace) = TraceId::from_hex(trace_id) else {
            return TraceParent(opentelemetry::Context::new());
        };
        let bytes = trace.to_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..]);
        let span = u64::from_be_bytes(low).max(1);
        let sc = SpanContext::new(
            trace,
            SpanId::from_bytes(span.to_be_bytes()),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        TraceParent(opentelemetry::Context::new().with_remote_span_context(sc))
    }

    /// Make this the OpenTelemetry parent of `span`, which must not have been
    /// entered yet (create it with `parent: None`). Does nothing when there
    /// is no valid parent.
    pub fn adopt(&self, span: &tracing::Span) {
        if self.0.span().span_context().is_valid() {
            let _ = span.set_parent(self.0.clone());
        }
    }
}

/// The OpenTelemetry context of the current tracing span or, when that span
/// has none (it is filtered out of the OpenTelemetry layer, e.g. a DEBUG span),
/// the context of the innermost entered span that has one.
fn current_context() -> opentelemetry::Context {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        opentelemetry::Context::current()
    }
}

/// Writes propagation fields into gRPC metadata (ASCII keys and values).
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads propagation fields from HTTP headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
    use tonic::service::Interceptor as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Keeps every finished span in memory.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Collect {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// Runs `f` with a local subscriber that has the OpenTelemetry layer; returns the finished spans.
    fn with_otel<R>(f: impl FnOnce() -> R) -> (R, Vec<SpanData>) {
        let collect = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(collect.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let r = tracing::subscriber::with_default(subscriber, f);
        let spans = collect.0.lock().unwrap().clone();
        (r, spans)
    }

    fn http_request(path: &str, metadata: MetadataMap) -> http::Request<()> {
        let mut req = http::Request::builder()
            .uri(format!("http://agent.invalid{path}"))
            .body(())
            .unwrap();
        *req.headers_mut() = metadata.into_headers();
        req
    }

    #[test]
    fn inject_then_extract_round_trips() {
        let ((client_trace, client_span, server_cx), _) = with_otel(|| {
            let client = tracing::info_span!("tandemctl");
            let _entered = client.enter();
            let client_cx = client.context();
            let client_sc = client_cx.span().span_context().clone();

            let request = InjectTraceContext.call(tonic::Request::new(())).unwrap();
            let traceparent = request
                .metadata()
                .get("traceparent")
                .expect("traceparent injected")
                .to_str()
                .unwrap()
                .to_owned();
            assert!(
                traceparent.contains(&client_sc.trace_id().to_string()),
                "{traceparent}"
            );

            let extracted = TraceContextPropagator::new().extract_with_context(
                &opentelemetry::Context::new(),
                &HeaderExtractor(&request.into_parts().0.into_headers()),
            );
            let sc = extracted.span().span_context().clone();
            (client_sc.trace_id(), client_sc.span_id(), sc)
        });
        assert_ne!(client_trace, TraceId::INVALID);
        assert_eq!(server_cx.trace_id(), client_trace);
        assert_eq!(server_cx.span_id(), client_span);
        assert!(server_cx.is_remote());
    }

    #[test]
    fn nothing_injected_without_a_span() {
        let (request, _) = with_otel(|| InjectTraceContext.call(tonic::Request::new(())).unwrap());
        assert!(request.metadata().get("traceparent").is_none());
    }

    #[test]
    fn server_span_takes_its_parent_from_traceparent() {
        let trace = "4bf92f3577b34a736a1d6b6a2c5a7e3b";
        let parent = "00f067aa0ba902b7";
        let mut md = MetadataMap::new();
        md.insert(
            "traceparent",
            format!("00-{trace}-{parent}-01").parse().unwrap(),
        );
        let req = http_request("/tandem.v1.Controller/ShowSets", md);

        let (ids, spans) = with_otel(|| {
            let span = server_span(&req);
            let ids = span.in_scope(|| {
                let child = tracing::info_span!("step");
                let _e = child.enter();
                (
                    current_trace_id(),
                    child.context().span().span_context().span_id(),
                )
            });
            drop(span);
            ids
        });
        assert_eq!(ids.0.as_deref(), Some(trace));

        let server = spans
            .iter()
            .find(|s| s.name == "tandem.v1.Controller/ShowSets")
            .unwrap_or_else(|| panic!("no server span in {spans:#?}"));
        assert_eq!(server.span_context.trace_id().to_string(), trace);
        assert_eq!(server.parent_span_id.to_string(), parent);
        assert!(server.parent_span_is_remote);
        assert_eq!(server.span_kind, opentelemetry::trace::SpanKind::Server);
        let attr = |k: &str| {
            server
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr("rpc.service").as_deref(), Some("tandem.v1.Controller"));
        assert_eq!(attr("rpc.method").as_deref(), Some("ShowSets"));

        let step = spans.iter().find(|s| s.name == "step").unwrap();
        assert_eq!(step.span_context.span_id(), ids.1);
        assert_eq!(step.parent_span_id, server.span_context.span_id());
    }

    #[test]
    fn server_span_without_traceparent_is_a_new_root() {
        let req = http_request("/tandem.v1.Agent/Ping", MetadataMap::new());
        let (_, spans) = with_otel(|| {
            let outer = tracing::info_span!("unrelated");
            let _e = outer.enter();
            drop(server_span(&req));
        });
        let server = spans
            .iter()
            .find(|s| s.name == "tandem.v1.Agent/Ping")
            .unwrap();
        assert_eq!(server.parent_span_id, SpanId::INVALID);
        let outer = spans.iter().find(|s| s.name == "unrelated").unwrap();
        assert_ne!(
            outer.span_context.trace_id(),
            server.span_context.trace_id()
        );
    }

    #[test]
    fn a_span_filtered_out_of_the_otel_layer_falls_back_to_its_ancestor() {
        use tracing_subscriber::Layer as _;
        let collect = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(collect.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
        let (outer, inner, injected) = tracing::subscriber::with_default(subscriber, || {
            let op = tracing::info_span!("op");
            let _op = op.enter();
            let outer = current_trace_id();
            let detail = tracing::debug_span!("detail");
            let _detail = detail.enter();
            let request = InjectTraceContext.call(tonic::Request::new(())).unwrap();
            (
                outer,
                current_trace_id(),
                request.metadata().get("traceparent").is_some(),
            )
        });
        assert!(outer.is_some());
        assert_eq!(inner, outer);
        assert!(injected);
    }

    #[test]
    fn a_span_adopts_a_parent_from_another_task_or_a_stored_trace_id() {
        let (parent, spans) = with_otel(|| {
            let outer = tracing::info_span!("outer");
            let parent = outer.in_scope(TraceParent::current);
            let job = tracing::info_span!(parent: None, "job");
            parent.adopt(&job);
            job.in_scope(|| {});
            drop(job);
            let resumed = tracing::info_span!(parent: None, "resumed");
            let trace = outer.in_scope(current_trace_id).unwrap();
            TraceParent::from_trace_id(&trace).adopt(&resumed);
            resumed.in_scope(|| {});
            drop(resumed);
            trace
        });
        let by = |n: &str| spans.iter().find(|s| s.name == n).unwrap().clone();
        let (outer, job, resumed) = (by("outer"), by("job"), by("resumed"));
        assert_eq!(job.span_context.trace_id(), outer.span_context.trace_id());
        assert_eq!(job.parent_span_id, outer.span_context.span_id());
        assert_eq!(resumed.span_context.trace_id().to_string(), parent);
        assert_ne!(resumed.parent_span_id, SpanId::INVALID);
        // A bad stored id gives a new trace, not a panic.
        let (_, spans) = with_otel(|| {
            let s = tracing::info_span!(parent: None, "fresh");
            TraceParent::from_trace_id("not hex").adopt(&s);
            s.in_scope(|| {});
        });
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    }

    #[test]
    fn no_trace_id_without_a_span() {
        assert_eq!(current_trace_id(), None);
        let (id, _) = with_otel(current_trace_id);
        assert_eq!(id, None);
    }

    #[test]
    fn trace_id_is_32_lowercase_hex() {
        let (id, _) = with_otel(|| {
            let span = tracing::info_span!("op");
            span.in_scope(current_trace_id)
        });
        let id = id.expect("a trace id inside a span");
        assert_eq!(id.len(), 32);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{id}"
        );
    }
}
