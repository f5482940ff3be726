//! Mutual TLS from PEM files, for every Tandem connection.
//!
//! [`TlsFiles`] is the `[tls]` table of the agent's and the controller's TOML
//! configs: the CA a process trusts, and the certificate and key it presents.
//! [`TlsFiles::server_config`] and [`TlsFiles::client_config`] read and check
//! the files (PEM that parses, a key that belongs to the certificate) so a
//! mistake shows at start-up with the path and the config field in the
//! message, not as a handshake failure later. [`connect`] and
//! [`connect_lazy`] open a client channel with them.
//!
//! The rustls crypto provider is chosen by the binaries (`main` installs
//! ring, DEPENDENCIES "Gotchas"); nothing here installs one.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

/// How long [`connect`] and [`connect_lazy`] wait for a TCP + TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
        "TLS private key {} (tls.key) does not belong to certificate {} (tls.cert); \
         use the key that was made with the certificate",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("`{domain}` is not a server name TLS can verify; use a DNS name or an IP address")]
    BadServerName { domain: String },
    #[error("`{url}` is not a usable server address: {reason}; use https://host:port")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach {url}: {cause}; is tandem-controller (or tandem-agent) running there?")]
    Connect { url: String, cause: String },
}

/// The three files, read and checked.
struct Loaded {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl TlsFiles {
    /// Server side: present cert/key, require a client certificate signed by
    /// `ca` (mutual TLS).
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let files = self.load()?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(files.cert, files.key))
            .client_ca_root(Certificate::from_pem(files.ca))
            .client_auth_optional(false))
    }

    /// Client side: trust `ca`, present cert/key, verify that the server's
    /// certificate names `domain` (a DNS name or an IP literal).
    pub fn client_config(&self, domain: &str) -> Result<ClientTlsConfig, TlsError> {
        if ServerName::try_from(domain).is_err() {
            return Err(TlsError::BadServerName {
                domain: domain.to_owned(),
            });
        }
        let files = self.load()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(files.ca))
            .identity(Identity::from_pem(files.cert, files.key))
            .domain_name(domain))
    }

    fn load(&self) -> Result<Loaded, TlsError> {
        let ca = read(&self.ca, "CA certificate", "tls.ca")?;
        certificates(&ca, &self.ca, "CA certificate", "tls.ca")?;
        let cert = read(&self.cert, "certificate", "tls.cert")?;
        let chain = certificates(&cert, &self.cert, "certificate", "tls.cert")?;
        let key = read(&self.key, "private key", "tls.key")?;
        let private_key = match PrivateKeyDer::from_pem_slice(&key) {
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
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&private_key).map_err(|error| {
                TlsError::BadKey {
                    field: "tls.key",
                    path: self.key.clone(),
                    error,
                }
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            certified.keys_match()
        {
            return Err(TlsError::KeyMismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            });
        }
        Ok(Loaded { ca, cert, key })
    }
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

/// Opens a TLS channel to `url` (`https://host:port`, or `host:port`) and
/// connects now, so an unreachable address fails here with an error naming it.
/// The server's certificate must name the URL's host. No request timeout is
/// set: streams are long-lived.
pub async fn connect(url: &str, tls: &TlsFiles) -> Result<Channel, TlsError> {
    let (url, endpoint) = endpoint(url, tls)?;
    endpoint.connect().await.map_err(|e| TlsError::Connect {
        url,
        cause: cause_chain(&e),
    })
}

/// Like [`connect`], but connects on first use (and again after a failure):
/// for background loops that retry. Must be called inside a tokio runtime.
pub fn connect_lazy(url: &str, tls: &TlsFiles) -> Result<Channel, TlsError> {
    let (_, endpoint) = endpoint(url, tls)?;
    Ok(endpoint.connect_lazy())
}

/// The normalised URL and a TLS endpoint for it.
fn endpoint(url: &str, tls: &TlsFiles) -> Result<(String, Endpoint), TlsError> {
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
    // IPv6 literals come bracketed ("[::1]"); TLS wants the bare address.
    let domain = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let config = tls.client_config(domain)?;
    let endpoint = Endpoint::from_shared(full.clone())
        .map_err(|e| bad(&cause_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(config)
        .map_err(|e| bad(&cause_chain(&e)))?;
    Ok((full, endpoint))
}

/// The messages of `e` and its sources joined with ": ", skipping a message
/// that its parent already contains.
fn cause_chain(e: &dyn std::error::Error) -> String {
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
mod tests {
    use super::*;

    /// A CA and a leaf signed by it, written to `dir` as ca.pem, leaf.pem, leaf-key.pem.
    fn write_certs(dir: &Path) -> TlsFiles {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
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
        files.client_config("localhost").unwrap();
        files.client_config("127.0.0.1").unwrap();
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
        let err = files.client_config("localhost").unwrap_err();
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
