//! Mutual TLS from PEM files, for every Tandem connection.
//!
//! [`TlsFiles`] is the `[tls]` table of the agent's and the controller's TOML
//! configs: the CA a process trusts, and the certificate and key it presents.
//! [`TlsFiles::server_config`] and [`TlsFiles::client_config`] read and check
//! the files (PEM that parses, a CA that can be a trust anchor, a key that
//! belongs to the certificate) so a mistake shows at start-up with the path
//! and the config field in the message, not as a handshake failure later.
//!
//! The daemons do not hand the files to tonic: [`LiveTls`] (`live.rs`) holds
//! the configs built from them and swaps them when the files change (every
//! [`RELOAD_EVERY`] and on SIGHUP; a file that does not load is refused, the
//! old configs stay), and records the certificate's days left as a metric.
//! Servers accept TCP and run the handshake themselves ([`incoming`],
//! `serve.rs`) with the config current at that moment, logging refused
//! handshakes with the peer and the reason; clients connect through
//! [`connect`], [`connect_lazy`] or [`connect_lazy_live`] (`connect.rs`),
//! whose connector does the same on every new connection, so a connection
//! made after a reload presents the new certificate and trusts the new CA.
//!
//! The rustls crypto provider is chosen by the binaries (`main` installs
//! ring, DEPENDENCIES "Gotchas"); nothing here installs one (configs are
//! built with the installed provider, or ring when none is).

mod connect;
mod live;
mod serve;

pub use connect::{connect, connect_lazy, connect_lazy_live, connect_to};
pub(crate) use live::describe_metrics;
pub use live::{CertInfo, CertInfoError, LiveTls, RELOAD_EVERY, Reload};
pub use serve::{HandshakeRefusals, QUIET_FOR, Quiet, Refusal, handshake_reason, incoming};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long [`connect`] and [`connect_lazy`] wait for a TCP + TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The ALPN protocol of gRPC (HTTP/2), offered by clients and servers.
const ALPN_H2: &[u8] = b"h2";

const MAKE_CERTS: &str = "make certificates with `tandemctl certs init --dir DIR`";

/// Paths of the PEM files a process presents and trusts. Used in the agent's
/// and controller's TOML configs as a `[tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate(s) that issued the peers' certificates.
    pub ca: PathBuf,
    /// This process's certificate (chain), leaf first.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
}

/// A TLS file that cannot be used, or a connection that cannot be made.
///
/// The messages embed the underlying cause (an OS error, a PEM error) before
/// the advice, so the causes are not also exposed as `source`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {what} {} ({field}): {error}; {MAKE_CERTS}", path.display())]
    Read {
        what: &'static str,
        field: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("TLS {what} {} ({field}) is not valid PEM: {error}; {MAKE_CERTS}", path.display())]
    NotPem {
        what: &'static str,
        field: &'static str,
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    #[error(
        "TLS {what} {} ({field}) holds no PEM certificate (`BEGIN CERTIFICATE`); {MAKE_CERTS}",
        path.display()
    )]
    NoCertificate {
        what: &'static str,
        field: &'static str,
        path: PathBuf,
    },
    #[error(
        "TLS private key {} ({field}) holds no PEM private key (PKCS#8, PKCS#1 or SEC1); {MAKE_CERTS}",
        path.display()
    )]
    NoKey { field: &'static str, path: PathBuf },
    #[error("TLS private key {} ({field}) cannot be used: {error}; {MAKE_CERTS}", path.display())]
    BadKey {
        field: &'static str,
        path: PathBuf,
        error: rustls::Error,
    },
    #[error(
        "TLS CA certificate {} (tls.ca) cannot be used to verify peers: {reason}; \
         give the PEM certificate(s) of the CA that issued the peers' certificates",
        path.display()
    )]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "TLS private key {} (tls.key) does not belong to certificate {} (tls.cert); \
         use the key that was made with the certificate",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS certificate {} (tls.cert) cannot be read as X.509: {reason}; {MAKE_CERTS}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("`{domain}` is not a server name TLS can verify; use a DNS name or an IP address")]
    BadServerName { domain: String },
    #[error("`{url}` is not a usable server address: {reason}; use https://host:port")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach {url}: {cause}; is tandem-controller (or tandem-agent) running there?")]
    Connect { url: String, cause: String },
}

/// The three files' bytes, as read (a reload compares them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contents {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The three files, read, checked and turned into configs.
pub(crate) struct Loaded {
    pub(crate) contents: Contents,
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    pub(crate) leaf: CertInfo,
}

impl TlsFiles {
    /// Server side: present cert/key, require a client certificate signed by
    /// `ca` (mutual TLS), offer HTTP/2.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(self.load()?.server)
    }

    /// Client side: trust `ca`, present cert/key, offer HTTP/2. The server
    /// name to verify is given per connection.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        Ok(self.load()?.client)
    }

    /// The files' bytes, each read once.
    pub(crate) fn read_all(&self) -> Result<Contents, TlsError> {
        Ok(Contents {
            ca: read(&self.ca, "CA certificate", "tls.ca")?,
            cert: read(&self.cert, "certificate", "tls.cert")?,
            key: read(&self.key, "private key", "tls.key")?,
        })
    }

    pub(crate) fn load(&self) -> Result<Loaded, TlsError> {
        self.build(self.read_all()?)
    }

    /// Checks `contents` (read from these files) and builds the configs.
    pub(crate) fn build(&self, contents: Contents) -> Result<Loaded, TlsError> {
        let cas = certificates(&contents.ca, &self.ca, "CA certificate", "tls.ca")?;
        let chain = certificates(&contents.cert, &self.cert, "certificate", "tls.cert")?;
        let private_key = match PrivateKeyDer::from_pem_slice(&contents.key) {
            Ok(k) => k,
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NoKey {
                    field: "tls.key",
                    path: self.key.clone(),
                });
            }
            Err(error) => {
                return Err(TlsError::NotPem {
                    what: "private key",
                    field: "tls.key",
                    path: self.key.clone(),
                    error,
                });
            }
        };
        let bad_key = |error| TlsError::BadKey {
            field: "tls.key",
            path: self.key.clone(),
            error,
        };
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&private_key).map_err(bad_key)?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            certified.keys_match()
        {
            return Err(TlsError::KeyMismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            });
        }
        let leaf = CertInfo::of(&chain[0]).map_err(|e| TlsError::BadCertificate {
            path: self.cert.clone(),
            reason: e.to_string(),
        })?;

        let bad_ca = |reason: String| TlsError::BadCa {
            path: self.ca.clone(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        let (_, ignored) = roots.add_parsable_certificates(cas);
        if ignored > 0 {
            return Err(bad_ca(format!(
                "{ignored} of its certificates cannot be a trust anchor"
            )));
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad_ca(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(bad_key)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private_key.clone_key())
            .map_err(bad_key)?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(bad_key)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private_key)
            .map_err(bad_key)?;
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Loaded {
            contents,
            server: Arc::new(server),
            client: Arc::new(client),
            leaf,
        })
    }
}

/// The process's crypto provider (ring, installed by `main`), or ring when
/// none is installed (unit tests).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn read(path: &Path, what: &'static str, field: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        field,
        path: path.to_owned(),
        error,
    })
}

/// The certificates in `pem`; at least one.
fn certificates(
    pem: &[u8],
    path: &Path,
    what: &'static str,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::NotPem {
            what,
            field,
            path: path.to_owned(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            field,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The messages of `e` and its sources joined with ": ", skipping a message
/// that its parent already contains.
pub(crate) fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and a leaf signed by it, written to `dir` as ca.pem, leaf.pem, leaf-key.pem.
    pub(crate) fn write_certs(dir: &Path) -> TlsFiles {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&leaf_key, &issuer)
                .unwrap();
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("leaf.pem"),
            key: dir.join("leaf-key.pem"),
        };
        std::fs::write(&files.ca, ca_cert.pem()).unwrap();
        std::fs::write(&files.cert, leaf.pem()).unwrap();
        std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn good_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        files.server_config().unwrap();
        files.client_config().unwrap();
    }

    #[test]
    fn a_missing_file_is_named_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = write_certs(dir.path());
        files.cert = dir.path().join("agent.pem");
        let msg = files.server_config().unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot read TLS certificate {} (tls.cert): ",
                files.cert.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("tandemctl certs init"), "{msg}");
    }

    #[test]
    fn a_file_without_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        std::fs::write(&files.ca, "not a certificate\n").unwrap();
        let err = files.client_config().unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&files.ca.display().to_string()),
            "{err}"
        );

        let files = write_certs(dir.path());
        std::fs::write(&files.key, std::fs::read(&files.cert).unwrap()).unwrap();
        let err = files.server_config().unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        assert!(err.to_string().contains("(tls.key)"), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        let other = tempfile::tempdir().unwrap();
        let other_files = write_certs(other.path());
        let files = TlsFiles {
            key: other_files.key,
            ..files
        };
        let err = files.server_config().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn config_table_refuses_unknown_fields() {
        let ok: Result<TlsFiles, _> = toml::from_str("ca = 'a'\ncert = 'b'\nkey = 'c'\n");
        assert!(ok.is_ok());
        let bad: Result<TlsFiles, _> =
            toml::from_str("ca = 'a'\ncert = 'b'\nkey = 'c'\ncrt = 'd'\n");
        assert!(bad.is_err());
    }

    #[tokio::test]
    async fn bad_urls_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        for url in ["http://localhost:7700", "https://", "host name:1"] {
            let err = connect_lazy(url, &files).unwrap_err();
            assert!(matches!(err, TlsError::BadUrl { .. }), "{url}: {err:?}");
            assert!(err.to_string().contains(url), "{err}");
        }
        // Without a scheme, https is assumed; IPv6 literals are verified bare.
        let _ = connect_lazy("localhost:7700", &files).unwrap();
        let _ = connect_lazy("https://[::1]:7700", &files).unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_address_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        // A port that was just free: bind, read the port, release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("https://127.0.0.1:{port}");
        let err = connect(&url, &files).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("cannot reach {url}: ")), "{msg}");
        assert!(msg.contains("running there?"), "{msg}");
    }
}
