//! Who is calling: the Tandem identity carried in a certificate's SAN URI.
//!
//! Every Tandem certificate names its holder with one URI SAN:
//! `spiffe://tandem/controller`, `spiffe://tandem/agent/<name>` or
//! `spiffe://tandem/user/<name>`. [`Identity`] is that URI parsed;
//! [`peer_identity`] reads it from the client certificate of a tonic server
//! request (the TLS layer has already checked that the certificate was issued
//! by the configured CA). Authorisation (which identity may call what) belongs
//! to the servers, not to this module.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The prefix shared by all Tandem identity URIs.
pub const URI_PREFIX: &str = "spiffe://tandem/";

/// Who is calling, from the SAN URI of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The controller: `spiffe://tandem/controller`.
    Controller,
    /// An agent, by its name: `spiffe://tandem/agent/<name>`.
    Agent(String),
    /// A person or script using `tandemctl`: `spiffe://tandem/user/<name>`.
    User(String),
}

/// A name or URI that is not a valid Tandem identity.
///
/// Messages are whole sentences that embed their cause: they are often
/// printed alone (a config check, a gRPC status), without walking `source()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("a name must not be empty; use letters, digits, '.', '_' and '-'")]
    EmptyName,
    #[error("name `{name}` contains {ch:?}; use only letters, digits, '.', '_' and '-'")]
    BadCharacter { name: String, ch: char },
    #[error(
        "`{uri}` is not a Tandem identity; expected spiffe://tandem/controller, \
         spiffe://tandem/agent/<name> or spiffe://tandem/user/<name>"
    )]
    NotTandem { uri: String },
    #[error("`{uri}` has an invalid name: {error}")]
    BadName {
        uri: String,
        error: Box<IdentityError>,
    },
}

/// Why the peer of a request has no usable Tandem identity.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error(
        "no client certificate; Tandem servers require mutual TLS: make certificates \
         with `tandemctl certs init` and configure the client with them"
    )]
    NoCertificate,
    #[error("client certificate cannot be parsed as X.509: {error}")]
    Unparsable { error: X509Error },
    #[error(
        "client certificate has no spiffe://tandem/ URI SAN; make certificates with \
         `tandemctl certs init`"
    )]
    NoTandemUri,
    #[error("client certificate names no valid Tandem identity: {error}")]
    BadUri { error: IdentityError },
}

impl From<PeerIdentityError> for tonic::Status {
    fn from(e: PeerIdentityError) -> Self {
        let message = e.to_string();
        match e {
            PeerIdentityError::NoCertificate
            | PeerIdentityError::Unparsable { .. }
            | PeerIdentityError::NoTandemUri
            | PeerIdentityError::BadUri { .. } => tonic::Status::unauthenticated(message),
        }
    }
}

/// Checks a controller, agent or user name: one or more of `[A-Za-z0-9._-]`.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    if name.is_empty() {
        return Err(IdentityError::EmptyName);
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(ch) => Err(IdentityError::BadCharacter {
            name: name.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

impl Identity {
    /// The SAN URI that names this identity in a certificate.
    pub fn uri(&self) -> String {
        match self {
            Identity::Controller => format!("{URI_PREFIX}controller"),
            Identity::Agent(name) => format!("{URI_PREFIX}agent/{name}"),
            Identity::User(name) => format!("{URI_PREFIX}user/{name}"),
        }
    }

    /// Parses a SAN URI; the inverse of [`Identity::uri`].
    pub fn parse(uri: &str) -> Result<Identity, IdentityError> {
        let not_tandem = || IdentityError::NotTandem {
            uri: uri.to_owned(),
        };
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(not_tandem)?;
        if rest == "controller" {
            return Ok(Identity::Controller);
        }
        let (kind, name) = rest.split_once('/').ok_or_else(not_tandem)?;
        let make: fn(String) -> Identity = match kind {
            "agent" => Identity::Agent,
            "user" => Identity::User,
            _ => return Err(not_tandem()),
        };
        validate_name(name).map_err(|e| IdentityError::BadName {
            uri: uri.to_owned(),
            error: Box::new(e),
        })?;
        Ok(make(name.to_owned()))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The identity of the peer of a tonic server request: the first
/// `spiffe://tandem/...` SAN URI of the leaf certificate in
/// `request.peer_certs()`. Fails with `unauthenticated` and a message that
/// says what is wrong.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    let certs = request.peer_certs();
    let leaf = certs
        .as_deref()
        .and_then(|chain| chain.first())
        .ok_or(PeerIdentityError::NoCertificate)?;
    Ok(identity_of_certificate(leaf)?)
}

/// The identity in a DER certificate: its first `spiffe://tandem/` SAN URI.
pub fn identity_of_certificate(cert: &CertificateDer<'_>) -> Result<Identity, PeerIdentityError> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|e| {
        let error = match e {
            x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
            x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
        };
        PeerIdentityError::Unparsable { error }
    })?;
    let san = x509
        .subject_alternative_name()
        .map_err(|error| PeerIdentityError::Unparsable { error })?
        .ok_or(PeerIdentityError::NoTandemUri)?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
            _ => None,
        })
        .ok_or(PeerIdentityError::NoTandemUri)?;
    Identity::parse(uri).map_err(|error| PeerIdentityError::BadUri { error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_and_parse_round_trip() {
        for id in [
            Identity::Controller,
            Identity::Agent("db1".into()),
            Identity::Agent("pg-01.eu_west".into()),
            Identity::User("operator".into()),
        ] {
            assert_eq!(Identity::parse(&id.uri()), Ok(id.clone()));
            assert_eq!(id.to_string(), id.uri());
        }
        assert_eq!(
            Identity::Agent("db1".into()).uri(),
            "spiffe://tandem/agent/db1"
        );
        assert_eq!(Identity::Controller.uri(), "spiffe://tandem/controller");
    }

    #[test]
    fn parse_rejects_what_is_not_a_tandem_identity() {
        for uri in [
            "",
            "spiffe://tandem/",
            "spiffe://tandem/controller/",
            "spiffe://tandem/controllers",
            "spiffe://tandem/admin/x",
            "spiffe://other/agent/db1",
            "https://tandem/agent/db1",
            "spiffe://tandem/agent",
        ] {
            assert!(
                matches!(Identity::parse(uri), Err(IdentityError::NotTandem { .. })),
                "{uri:?} was accepted"
            );
        }
        for uri in [
            "spiffe://tandem/agent/",
            "spiffe://tandem/agent/a/b",
            "spiffe://tandem/user/al ice",
            "spiffe://tandem/user/é",
        ] {
            let err = Identity::parse(uri).unwrap_err();
            assert!(
                matches!(err, IdentityError::BadName { .. }),
                "{uri:?}: {err:?}"
            );
            assert!(err.to_string().contains(uri), "{err}");
            assert!(err.to_string().contains("name"), "{err}");
        }
    }

    #[test]
    fn validate_name_accepts_only_the_allowed_characters() {
        assert_eq!(validate_name("db-1.a_b"), Ok(()));
        assert_eq!(validate_name(""), Err(IdentityError::EmptyName));
        let err = validate_name("db/1").unwrap_err();
        assert_eq!(
            err,
            IdentityError::BadCharacter {
                name: "db/1".into(),
                ch: '/'
            }
        );
        assert!(err.to_string().contains("`db/1`"), "{err}");
    }

    fn cert_with_sans(sans: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for san in sans {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*san).try_into().unwrap()));
        }
        params
            .subject_alt_names
            .push(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_comes_from_the_first_tandem_uri_san() {
        let cert = cert_with_sans(&[
            "https://example.com/x",
            "spiffe://tandem/agent/db1",
            "spiffe://tandem/controller",
        ]);
        assert_eq!(
            identity_of_certificate(&cert).unwrap(),
            Identity::Agent("db1".into())
        );
    }

    #[test]
    fn certificate_without_tandem_uri_is_refused() {
        let cert = cert_with_sans(&["spiffe://other/agent/db1"]);
        assert!(matches!(
            identity_of_certificate(&cert),
            Err(PeerIdentityError::NoTandemUri)
        ));
        let cert = cert_with_sans(&["spiffe://tandem/agent/a b"]);
        let status = tonic::Status::from(identity_of_certificate(&cert).unwrap_err());
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("a b"), "{}", status.message());
    }

    #[test]
    fn request_without_tls_is_unauthenticated() {
        let status = peer_identity(&tonic::Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("tandemctl certs init"));
    }
}
