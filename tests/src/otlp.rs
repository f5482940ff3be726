//! An in-process OTLP trace receiver for end-to-end tests.
//!
//! [`OtlpReceiver::start`] serves opentelemetry-proto's collector
//! `TraceService` over plain-text gRPC on `127.0.0.1:0`; point a process at it
//! with `OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.endpoint()>` and read what it
//! exported with [`OtlpReceiver::spans`] or [`OtlpReceiver::wait_for`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// One span as received, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name` (empty if absent).
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// The span name.
    pub name: String,
    /// Span attributes, values rendered as text (strings unquoted).
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

type Store = Arc<Mutex<Vec<ReceivedSpan>>>;

/// A running OTLP/gRPC trace receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    store: Store,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Bind `127.0.0.1:0` and serve the trace collector service.
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let store = Store::default();
        let service = TraceServiceServer::new(Collector {
            store: store.clone(),
        });
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("OTLP receiver on {addr} stopped: {e}");
            }
        });
        Ok(OtlpReceiver {
            addr,
            store,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Poll (every 100 ms) until `pred(&spans)` holds or `timeout` passes; returns the spans or an error listing what was received.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= deadline {
                let listing: Vec<String> = spans
                    .iter()
                    .map(|s| {
                        format!(
                            "  {} {:?} trace={} span={} parent={} {:?}",
                            s.service,
                            s.name,
                            s.trace_id,
                            s.span_id,
                            if s.parent_span_id.is_empty() {
                                "-"
                            } else {
                                &s.parent_span_id
                            },
                            s.attributes
                        )
                    })
                    .collect();
                anyhow::bail!(
                    "OTLP receiver: condition not met within {timeout:?}; received {} span(s):\n{}",
                    spans.len(),
                    listing.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The gRPC service: flattens each export request into the store.
struct Collector {
    store: Store,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(render)
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    attributes: span.attributes.iter().map(attribute).collect(),
                });
            }
        }
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(kv: &KeyValue) -> (String, String) {
    (
        kv.key.clone(),
        kv.value.as_ref().map(render).unwrap_or_default(),
    )
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(any_value::Value::ArrayValue(a)) => format!(
            "[{}]",
            a.values.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
        Some(any_value::Value::KvlistValue(l)) => format!(
            "{{{}}}",
            l.values
                .iter()
                .map(|kv| {
                    let (k, v) = attribute(kv);
                    format!("{k}: {v}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
