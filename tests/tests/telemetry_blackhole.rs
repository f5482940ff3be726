//! An OTLP endpoint that accepts TCP connections but never answers neither
//! blocks nor crashes: `TelemetryGuard::shutdown` gives up within a few
//! seconds and the tokio runtime then shuts down promptly.
//!
//! One test in this file: it sets environment variables before `init`.

use std::time::{Duration, Instant};

use tandem_proto::telemetry::{self, LogFormat};

#[test]
fn silent_endpoint_does_not_hang_shutdown() -> anyhow::Result<()> {
    // Accept and hold connections without ever reading or writing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    // SAFETY: the only test in this binary; the thread above does not touch the environment.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
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
        let guard = telemetry::init("test-blackhole", LogFormat::Human, "info")?;
        for i in 0..50 {
            tracing::info_span!("work", i).in_scope(|| ());
        }
        // The batch processor starts an export that never gets an answer.
        tokio::time::sleep(Duration::from_millis(1000)).await;
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
