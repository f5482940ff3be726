//! Waiting without sleeping: poll a condition until it holds or a deadline
//! passes ([`wait_for`]), and hand out free TCP ports ([`free_port`]).
//!
//! The polling interval is the only pause in the harness; a test waits for
//! what it needs (a row, a streaming standby, a process exit), never for a
//! fixed time. Timing uses the tokio clock, so a paused clock advances it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::bail;

/// Ports already handed out by [`free_port`] in this process.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Poll `cond` every `every` until it returns Ok(Some(v)) or `timeout` passes;
/// the error says what was awaited (`what`) and the last Err/None seen.
///
/// `cond` is always called at least once. Return `Err` (rather than
/// `Ok(None)`) from `cond` to have the reason in the timeout message, e.g.
/// "wal receiver status is `stopping`".
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    let mut tries = 0u64;
    loop {
        tries += 1;
        let last = match cond().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "the condition did not hold yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            bail!(
                "timed out after {elapsed:.1?} ({tries} tries) waiting for {what}; last seen: {last}"
            );
        }
        tokio::time::sleep(every.min(timeout - elapsed)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bind :0, read, drop). Never hands the same
/// port twice within one process.
///
/// Another process may still take the port before the caller binds it; that
/// race is inherent to picking a port for a child process.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind a TCP port on 127.0.0.1: {e}"));
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!(
        "no free TCP port on 127.0.0.1 after 1000 tries ({} already handed out)",
        handed_out.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[tokio::test]
    async fn wait_for_returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let v = wait_for(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || {
                n += 1;
                let now = n;
                async move { Ok((now >= 3).then_some(now)) }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn wait_for_times_out_with_what_and_the_last_error() {
        let err = wait_for::<(), _, _>(
            "the moon",
            Duration::from_millis(100),
            Duration::from_millis(10),
            || async { anyhow::bail!("still dark") },
        )
        .await
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("the moon"), "{msg}");
        assert!(msg.contains("still dark"), "{msg}");
    }
}
