//! The servers' side of the handshake: accept TCP, run TLS with the config
//! in force, hand finished connections to tonic.
//!
//! [`incoming`] spawns one accept task that owns the listener; each
//! accepted connection gets its own handshake task (a slow or silent client
//! holds up no one), bounded by [`HANDSHAKE_TIMEOUT`]. Finished handshakes go
//! to tonic's `serve_with_incoming*` through a channel; when tonic drops the
//! stream (shutdown), the accept task sees the channel closed and ends,
//! closing the listener. tonic implements `Connected` for
//! `tokio_rustls::server::TlsStream<TcpStream>`, so `request.peer_certs()`
//! (and with it every identity check) works as with tonic's own TLS.
//!
//! A refused handshake is logged at `warn` with the peer and rustls's reason
//! ([`handshake_reason`]), at most once per peer address and kind of
//! refusal every [`QUIET_FOR`] ([`HandshakeRefusals`]); the next line says
//! how many were not logged. A connection closed before it sent anything (a port probe)
//! is not a refusal and is logged at `debug` only.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::LiveTls;

/// How long a client has to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a refusal is logged, more from the same address are counted only.
pub const QUIET_FOR: Duration = Duration::from_secs(10);
/// Addresses remembered at most; beyond, the quiet ones are forgotten.
const REMEMBERED: usize = 4096;

/// The TLS connections accepted on `listener`, each handshake made with the
/// server config in force when it started; for
/// `Server::builder().serve_with_incoming*`. Must be called inside a tokio
/// runtime.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<LiveTls>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<LiveTls>,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
) {
    let refusals = Arc::new(HandshakeRefusals::default());
    loop {
        // Cancel-safe: `accept` loses no connection when another arm wins,
        // and `closed` only waits.
        let (tcp, peer) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather
                    // than spin; the listener stays.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.server());
        let tx = tx.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => match handshake_reason(&e) {
                    Some(refusal) => {
                        refusals.refused(peer, &refusal, Instant::now());
                    }
                    None => debug!(%peer, error = %e, "connection closed before a TLS handshake"),
                },
                Err(_) => {
                    let refusal = Refusal {
                        kind: "no TLS handshake in time",
                        text: format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                    };
                    refusals.refused(peer, &refusal, Instant::now());
                }
            }
        });
    }
}

/// Why a handshake failed: a kind in words (what the suppression counts
/// by) and the whole text with rustls's own reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: &'static str,
    pub text: String,
}

/// Why a handshake failed; `None` for a connection closed before it sent
/// anything (a port probe).
pub fn handshake_reason(e: &io::Error) -> Option<Refusal> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => None,
            _ => Some(Refusal {
                kind: "connection failed",
                text: e.to_string(),
            }),
        };
    };
    let kind = match tls {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "client certificate signed by an unknown authority (not in tls.ca)"
        }
        // webpki finds the issuer by name: a CA of the same name with another
        // key (e.g. another `tandemctl certs init`) fails the signature.
        E::InvalidCertificate(C::BadSignature) => {
            "client certificate not signed by a CA in tls.ca (a CA of the same name, but another key)"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "client certificate expired"
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "client certificate not valid yet (check the clocks)"
        }
        E::InvalidCertificate(C::Revoked) => "client certificate revoked",
        E::InvalidCertificate(_) => "client certificate refused",
        E::NoCertificatesPresented => "the client presented no certificate (mutual TLS)",
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown) => {
            "the client refused this server's certificate"
        }
        E::AlertReceived(A::CertificateExpired) => "the client says a certificate expired",
        E::AlertReceived(_) => "the client ended the handshake",
        _ => "handshake failed",
    };
    Some(Refusal {
        kind,
        text: format!("{kind}: {tls}"),
    })
}

/// Log-line suppression by key: the first event of a key is logged, the
/// next ones within [`QUIET_FOR`] are only counted, and the first after
/// that is logged with the count. For retry storms (a client with a bad
/// certificate retrying every few hundred milliseconds).
pub struct Quiet<K> {
    seen: Mutex<HashMap<K, Seen>>,
}

struct Seen {
    logged_at: Instant,
    unlogged: u64,
}

impl<K> Default for Quiet<K> {
    fn default() -> Self {
        Quiet {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq> Quiet<K> {
    /// Whether to log an event of `key` at `now`: `Some(n)`, with the `n`
    /// events of this key not logged since the last line, or `None`.
    pub fn log(&self, key: K, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= REMEMBERED {
            seen.retain(|_, s| now.duration_since(s.logged_at) < QUIET_FOR);
        }
        let fresh = Seen {
            logged_at: now,
            unlogged: 0,
        };
        match seen.get_mut(&key) {
            Some(s) if now.duration_since(s.logged_at) < QUIET_FOR => {
                s.unlogged += 1;
                None
            }
            Some(s) => Some(std::mem::replace(s, fresh).unlogged),
            None => {
                seen.insert(key, fresh);
                Some(0)
            }
        }
    }
}

/// Refused handshakes, logged through a [`Quiet`] per peer IP address and
/// kind of refusal.
#[derive(Default)]
pub struct HandshakeRefusals {
    quiet: Quiet<(IpAddr, &'static str)>,
}

impl HandshakeRefusals {
    /// Counts a refused handshake and logs it unless the same kind from this
    /// address was logged less than [`QUIET_FOR`] before `now`. Returns
    /// whether it was logged.
    pub fn refused(&self, peer: SocketAddr, reason: &Refusal, now: Instant) -> bool {
        metrics::counter!("tandem_tls_handshake_failures_total").increment(1);
        match self.quiet.log((peer.ip(), reason.kind), now) {
            Some(unlogged) => {
                warn!(%peer, reason = %reason.text, not_logged_since = unlogged, "TLS handshake refused");
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_address_while_quiet() {
        let r = HandshakeRefusals::default();
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let a_again: SocketAddr = "10.0.0.1:4001".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let x = Refusal {
            kind: "x",
            text: "x: 1".into(),
        };
        let y = Refusal {
            kind: "y",
            text: "y: 1".into(),
        };
        assert!(r.refused(a, &x, t0));
        assert!(!r.refused(a_again, &x, t0 + Duration::from_secs(1)));
        assert!(r.refused(a_again, &y, t0 + Duration::from_secs(1)));
        assert!(r.refused(b, &x, t0 + Duration::from_secs(1)));
        assert!(!r.refused(a, &x, t0 + QUIET_FOR - Duration::from_millis(1)));
        assert!(r.refused(a, &x, t0 + QUIET_FOR));
    }

    #[test]
    fn reasons_name_the_certificate_problem() {
        let e = |err: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, err);
        let unknown = handshake_reason(&e(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )))
        .unwrap()
        .text;
        assert!(unknown.contains("unknown authority"), "{unknown}");
        assert!(unknown.contains("UnknownIssuer"), "{unknown}");
        let expired = handshake_reason(&e(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        )))
        .unwrap()
        .text;
        assert!(expired.contains("expired"), "{expired}");
        let alert = handshake_reason(&e(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        )))
        .unwrap()
        .text;
        assert!(
            alert.contains("refused this server's certificate"),
            "{alert}"
        );
        let probe = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(handshake_reason(&probe), None);
    }
}
