//! Client channels whose every new connection uses the TLS config in force.
//!
//! tonic's own client TLS fixes its config when the endpoint is made. Here
//! the endpoint speaks plain `http://host:port` to tonic and a connector
//! ([`LiveConnector`]) makes the TCP connection and the TLS handshake with
//! [`LiveTls::client`] at that moment, verifying the URL's host. A lazy
//! channel that reconnects after a failure therefore presents the
//! certificate in force and trusts the CA bundle in force.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

use super::{CONNECT_TIMEOUT, LiveTls, TlsError, TlsFiles, cause_chain};
use crate::identity::{Identity, identity_of_certificate};

/// Opens a TLS channel to `url` (`https://host:port`, or `host:port`) and
/// connects now, so an unreachable address fails here with an error naming it.
/// The server's certificate must name the URL's host. No request timeout is
/// set: streams are long-lived.
pub async fn connect(url: &str, tls: &TlsFiles) -> Result<Channel, TlsError> {
    let (full, endpoint, connector) = endpoint(url, LiveTls::load(tls.clone())?)?;
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| TlsError::Connect {
            url: full,
            cause: cause_chain(&e),
        })
}

/// Like [`connect`], and the server's certificate must also name `expect`
/// (its SAN URI identity), so a client talking to one particular agent
/// (another member's agent serving a granted backup) knows it is that one.
pub async fn connect_to(url: &str, tls: &TlsFiles, expect: &Identity) -> Result<Channel, TlsError> {
    let (full, endpoint, mut connector) = endpoint(url, LiveTls::load(tls.clone())?)?;
    connector.expect = Some(expect.clone());
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| TlsError::Connect {
            url: full,
            cause: cause_chain(&e),
        })
}

/// Like [`connect`], but connects on first use (and again after a failure):
/// for background loops that retry. Must be called inside a tokio runtime.
pub fn connect_lazy(url: &str, tls: &TlsFiles) -> Result<Channel, TlsError> {
    connect_lazy_live(url, LiveTls::load(tls.clone())?)
}

/// Like [`connect_lazy`], with the configs of a [`LiveTls`]: each new
/// connection uses the files in force.
pub fn connect_lazy_live(url: &str, tls: Arc<LiveTls>) -> Result<Channel, TlsError> {
    let (_, endpoint, connector) = endpoint(url, tls)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// The normalised URL, a plain endpoint for it and the TLS connector.
fn endpoint(url: &str, tls: Arc<LiveTls>) -> Result<(String, Endpoint, LiveConnector), TlsError> {
    let bad = |reason: &str| TlsError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    };
    let uri: http::Uri = full
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("Tandem speaks only TLS, so the scheme must be https"));
    }
    let host = uri.host().ok_or_else(|| bad("it has no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    // IPv6 literals come bracketed ("[::1]"); TLS wants the bare address.
    let domain = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let server_name =
        ServerName::try_from(domain.to_owned()).map_err(|_| TlsError::BadServerName {
            domain: domain.to_owned(),
        })?;
    // tonic sees plain HTTP/2; the connector below makes it TLS.
    let plain = format!("http://{host}:{port}");
    let endpoint = Endpoint::from_shared(plain)
        .map_err(|e| bad(&cause_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT);
    let connector = LiveConnector {
        tls,
        server_name,
        host: domain.to_owned(),
        port,
        expect: None,
    };
    Ok((full, endpoint, connector))
}

/// Connects TCP to the URL's host and port and shakes hands with the client
/// config in force, verifying `server_name`.
#[derive(Clone)]
pub struct LiveConnector {
    tls: Arc<LiveTls>,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
    /// The identity the server's certificate must name, when one must.
    expect: Option<Identity>,
}

impl Service<http::Uri> for LiveConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(this.tls.client())
                .connect(this.server_name, tcp)
                .await?;
            if let Some(want) = &this.expect {
                let got = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|leaf| identity_of_certificate(leaf));
                match got {
                    Some(Ok(id)) if &id == want => {}
                    other => {
                        let said = match other {
                            Some(Ok(id)) => id.to_string(),
                            Some(Err(e)) => e.to_string(),
                            None => "no certificate".to_owned(),
                        };
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("the server is not {want}: its certificate says {said}"),
                        ));
                    }
                }
            }
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::write_certs;
    use crate::tls::{CertInfo, Reload, incoming};
    use tokio_stream::StreamExt;

    /// A client that expects one identity refuses a server whose
    /// certificate names another (here: none); without one it connects.
    #[tokio::test]
    async fn a_server_that_is_not_the_expected_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        let server_tls = LiveTls::load(files.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut accepted = incoming(listener, server_tls);
        tokio::spawn(async move { while accepted.next().await.is_some() {} });
        let url = format!("https://127.0.0.1:{port}");
        let e = connect_to(&url, &files, &Identity::Agent("db2".into()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not spiffe://tandem/agent/db2"), "{e}");
        assert!(e.contains("no spiffe://tandem/ URI SAN"), "{e}");
        connect(&url, &files).await.unwrap();
    }

    /// Each new connection of a client made once presents the client
    /// certificate in force, and the server's `incoming` accepts it with
    /// the server config in force.
    #[tokio::test]
    async fn new_connections_use_the_files_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        let server_tls = LiveTls::load(files.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut accepted = incoming(listener, server_tls.clone());

        // The client: its own copy of the files, renewed between connections.
        let client_dir = tempfile::tempdir().unwrap();
        let client_files = TlsFiles {
            ca: files.ca.clone(),
            cert: client_dir.path().join("c.pem"),
            key: client_dir.path().join("c-key.pem"),
        };
        std::fs::copy(&files.cert, &client_files.cert).unwrap();
        std::fs::copy(&files.key, &client_files.key).unwrap();
        let client_tls = LiveTls::load(client_files.clone()).unwrap();
        let url = format!("https://127.0.0.1:{port}");
        let (_, _, mut connector) = endpoint(&url, client_tls.clone()).unwrap();

        let peer_serial = |s: &tokio_rustls::server::TlsStream<TcpStream>| {
            CertInfo::of(&s.get_ref().1.peer_certificates().unwrap()[0])
                .unwrap()
                .serial
        };
        let first = client_tls.leaf().serial;
        let _c1 = connector.call(url.parse().unwrap()).await.unwrap();
        let s1 = accepted.next().await.unwrap().unwrap();
        assert_eq!(peer_serial(&s1), first);

        // A second CA appended to the bundle (both sides) and a client pair
        // it signed: the server's next handshake trusts it, the client's
        // next connection presents it; nothing is made again.
        let other_dir = tempfile::tempdir().unwrap();
        let other = write_certs(other_dir.path());
        let mut bundle = std::fs::read(&files.ca).unwrap();
        bundle.extend(std::fs::read(&other.ca).unwrap());
        std::fs::write(&files.ca, bundle).unwrap();
        std::fs::copy(&other.cert, &client_files.cert).unwrap();
        std::fs::copy(&other.key, &client_files.key).unwrap();
        assert!(matches!(server_tls.reload(), Reload::Reloaded(_)));
        let Reload::Reloaded(second) = client_tls.reload() else {
            panic!("the client's new files were not put in force");
        };
        assert_ne!(second.serial, first);
        let _c2 = connector.call(url.parse().unwrap()).await.unwrap();
        let s2 = accepted.next().await.unwrap().unwrap();
        assert_eq!(peer_serial(&s2), second.serial);
    }
}
