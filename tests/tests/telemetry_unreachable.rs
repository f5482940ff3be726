//! An OTLP endpoint with nothing listening neither blocks nor crashes: spans
//! are dropped, `TelemetryGuard::shutdown` returns within a few seconds, and
//! the tokio runtime then shuts down promptly (what `#[tokio::main]` does on exit).
//!
//! One test in this file: it sets environment variables before `init`.

use std::time::{Duration, Instant};

use tandem_proto::telemetry::{self, LogFormat};

#[test]
fn closed_port_endpoint_does_not_hang_shutdown() -> anyhow::Result<()> {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    }; // dropped: nothing listens there now
    // SAFETY: the only test in this binary; set before any other thread exists.
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        );
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_BSP_SCHEDULE_DELAY",
            "OTEL_SDK_DISABLED",
            "OTEL_TRACES_EXPORTER",
        ] {
            std::env::remove_var(var);
        }
    }

    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shutdown_took = runtime.block_on(async {
        let guard = telemetry::init("test-unreachable", LogFormat::Json, "info")?;
        assert!(guard.is_exporting());
        for i in 0..50 {
            tracing::info_span!("work", i).in_scope(|| tracing::info!(i, "working"));
        }
        // Let the batch processor try (and fail) to export at least once.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tracing::info_span!("after").in_scope(|| ());
        let t = Instant::now();
        guard.shutdown().await;
        anyhow::Ok(t.elapsed())
    })?;
    drop(runtime);
    let total = started.elapsed();
    eprintln!("shutdown took {shutdown_took:?}; whole run {total:?}");
    assert!(shutdown_took < Duration::from_secs(5), "{shutdown_took:?}");
    assert!(total < Duration::from_secs(9), "{total:?}");
    Ok(())
}
