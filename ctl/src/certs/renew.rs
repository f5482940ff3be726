//! `tandemctl certs renew`: one holder's key and certificate made again
//! from the development CA in the directory, with the identity and server
//! names of its current certificate; the current files kept as
//! `<file>.old`. The key is written before the certificate (each through a
//! temporary file renamed into place); a daemon that reads the pair in
//! between sees a mismatch and looks again (`tandem_proto::tls::LiveTls`).

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::SanType;
use tandem_proto::identity::{Identity, validate_name};

use super::{
    CERT_MODE, CertsError, KEY_MODE, Leaf, Pair, exists, load_ca, make_leaf, pair, read, write_file,
};

/// Whose certificate [`renew`] makes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Controller,
    Agent(String),
    User(String),
}

/// What [`renew`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewReport {
    pub identity: Identity,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The previous certificate and key, kept.
    pub old_cert: PathBuf,
    pub old_key: PathBuf,
    /// The new certificate's serial number (hex, `:`-separated) and end.
    pub serial: String,
    pub not_after: String,
}

/// Makes `holder`'s certificate and key in `dir` again from the CA there;
/// see the module doc. Nothing is written unless everything checks.
pub fn renew(dir: &Path, holder: &Holder) -> Result<RenewReport, CertsError> {
    let (identity, stem, kind) = match holder {
        Holder::Controller => (Identity::Controller, "controller".to_owned(), "controller"),
        Holder::Agent(name) => {
            validate_name(name).map_err(|error| CertsError::InvalidName {
                kind: "agent",
                error,
            })?;
            (
                Identity::Agent(name.clone()),
                format!("agent-{name}"),
                "agent",
            )
        }
        Holder::User(name) => {
            validate_name(name).map_err(|error| CertsError::InvalidName {
                kind: "user",
                error,
            })?;
            (Identity::User(name.clone()), format!("user-{name}"), "user")
        }
    };
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    for path in [&ca_key, &ca_cert] {
        if !exists(path)? {
            return Err(CertsError::CaMissing {
                missing: path.clone(),
            });
        }
    }
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    match pair(&cert, &key)? {
        Pair::Present => {}
        Pair::Missing => {
            return Err(CertsError::UnknownHolder {
                kind,
                name: match holder {
                    Holder::Controller => "controller".to_owned(),
                    Holder::Agent(n) | Holder::User(n) => n.clone(),
                },
                dir: dir.to_owned(),
                cert,
                known: known_holders(dir, kind)?,
            });
        }
        Pair::Partial { present, missing } => {
            return Err(CertsError::PairIncomplete { present, missing });
        }
    }
    let issuer = load_ca(&ca_cert, &ca_key)?;
    let old_pem = read(&cert)?;
    let (server, hosts) = current_names(&cert, &old_pem, &identity)?;

    let old_cert = dir.join(format!("{stem}.pem.old"));
    let old_key = dir.join(format!("{stem}-key.pem.old"));
    let old_key_pem = read(&key)?;
    write_file(&old_key, &old_key_pem, KEY_MODE)?;
    write_file(&old_cert, &old_pem, CERT_MODE)?;
    let leaf = Leaf {
        identity: identity.clone(),
        cert: cert.clone(),
        key: key.clone(),
        server,
    };
    make_leaf(&leaf, &hosts, &issuer)?;
    let new_pem = read(&cert)?;
    let (serial, not_after) = serial_and_end(&cert, &new_pem)?;
    Ok(RenewReport {
        identity,
        cert,
        key,
        old_cert,
        old_key,
        serial,
        not_after,
    })
}

/// The names of the holders of `kind` with a certificate in `dir`.
fn known_holders(dir: &Path, kind: &str) -> Result<Vec<String>, CertsError> {
    let entries = fs::read_dir(dir).map_err(|error| CertsError::Read {
        path: dir.to_owned(),
        error,
    })?;
    let prefix = format!("{kind}-");
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_prefix(&prefix)?.strip_suffix(".pem")?;
            (!stem.ends_with("-key")).then(|| stem.to_owned())
        })
        .collect();
    names.sort();
    Ok(names)
}

fn parse_pem(path: &Path, pem: &str) -> Result<Vec<u8>, CertsError> {
    let bad = |what: &str| CertsError::Read {
        path: path.to_owned(),
        error: io::Error::new(io::ErrorKind::InvalidData, what.to_owned()),
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| bad("not a PEM certificate"))?;
    Ok(pem.contents)
}

/// Whether the certificate at `path` is a server's, and its host names;
/// its identity must be `expected`.
fn current_names(
    path: &Path,
    pem: &str,
    expected: &Identity,
) -> Result<(bool, Vec<SanType>), CertsError> {
    use x509_parser::extensions::GeneralName;
    let der = parse_pem(path, pem)?;
    let found =
        tandem_proto::identity::identity_of_certificate(&der.clone().into()).map_err(|e| {
            CertsError::WrongHolder {
                cert: path.to_owned(),
                expected: expected.clone(),
                found: e.to_string(),
            }
        })?;
    if &found != expected {
        return Err(CertsError::WrongHolder {
            cert: path.to_owned(),
            expected: expected.clone(),
            found: found.to_string(),
        });
    }
    let bad = |e: String| CertsError::Read {
        path: path.to_owned(),
        error: io::Error::new(io::ErrorKind::InvalidData, e),
    };
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    let mut hosts = Vec::new();
    if let Some(san) = x509
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => hosts.push(SanType::DnsName(
                    (*d).try_into()
                        .map_err(|e: rcgen::Error| bad(e.to_string()))?,
                )),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => hosts.push(SanType::IpAddress(IpAddr::from(
                        <[u8; 4]>::try_from(*ip).expect("length checked"),
                    ))),
                    16 => hosts.push(SanType::IpAddress(IpAddr::from(
                        <[u8; 16]>::try_from(*ip).expect("length checked"),
                    ))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let server = x509
        .extended_key_usage()
        .map_err(|e| bad(e.to_string()))?
        .is_some_and(|eku| eku.value.server_auth);
    Ok((server, hosts))
}

fn serial_and_end(path: &Path, pem: &str) -> Result<(String, String), CertsError> {
    let der = parse_pem(path, pem)?;
    let info = tandem_proto::tls::CertInfo::of(&der.into()).map_err(|e| CertsError::Read {
        path: path.to_owned(),
        error: io::Error::new(io::ErrorKind::InvalidData, e),
    })?;
    Ok((info.serial, info.not_after.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::init;
    use crate::certs::tests::{assert_issued_by, mode, plan, sans};

    #[test]
    fn renew_makes_a_new_pair_with_the_same_names_and_keeps_the_old() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = plan(tmp.path());
        p.hosts = vec!["db1.example.com".into(), "10.0.0.5".into()];
        init(&p).unwrap();
        let dir = tmp.path();
        let old_cert = fs::read(dir.join("agent-db1.pem")).unwrap();
        let old_key = fs::read(dir.join("agent-db1-key.pem")).unwrap();

        let r = renew(dir, &Holder::Agent("db1".into())).unwrap();
        assert_eq!(r.identity, Identity::Agent("db1".into()));
        assert_eq!(fs::read(&r.old_cert).unwrap(), old_cert);
        assert_eq!(fs::read(&r.old_key).unwrap(), old_key);
        assert_eq!(r.old_cert, dir.join("agent-db1.pem.old"));
        let new_cert = fs::read(dir.join("agent-db1.pem")).unwrap();
        assert_ne!(new_cert, old_cert);
        assert_ne!(fs::read(dir.join("agent-db1-key.pem")).unwrap(), old_key);
        assert_eq!(sans(&new_cert), sans(&old_cert));
        assert_issued_by(&dir.join("agent-db1.pem"), &dir.join("ca.pem"));
        assert_eq!(mode(&dir.join("agent-db1-key.pem")), 0o600);
        assert_eq!(mode(&r.old_key), 0o600);
        // The new pair is what tandem-proto loads, as a server.
        tandem_proto::tls::TlsFiles {
            ca: dir.join("ca.pem"),
            cert: r.cert.clone(),
            key: r.key.clone(),
        }
        .server_config()
        .unwrap();
        // A user's certificate stays a client's.
        let r = renew(dir, &Holder::User("operator".into())).unwrap();
        let (_, dns, ips) = sans(&fs::read(&r.cert).unwrap());
        assert!(dns.is_empty() && ips.is_empty());
        renew(dir, &Holder::Controller).unwrap();
    }

    #[test]
    fn renew_refuses_an_unknown_holder_and_a_missing_ca_key() {
        let tmp = tempfile::tempdir().unwrap();
        init(&plan(tmp.path())).unwrap();
        let err = renew(tmp.path(), &Holder::Agent("db9".into())).unwrap_err();
        assert!(matches!(err, CertsError::UnknownHolder { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("agent `db9`") && msg.contains("known: db1, db2"),
            "{msg}"
        );
        let err = renew(tmp.path(), &Holder::Agent("db 9".into())).unwrap_err();
        assert!(matches!(err, CertsError::InvalidName { .. }), "{err:?}");

        let before = fs::read(tmp.path().join("agent-db1.pem")).unwrap();
        fs::remove_file(tmp.path().join("ca-key.pem")).unwrap();
        let err = renew(tmp.path(), &Holder::Agent("db1".into())).unwrap_err();
        assert!(matches!(err, CertsError::CaMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
        assert_eq!(fs::read(tmp.path().join("agent-db1.pem")).unwrap(), before);
        assert!(!tmp.path().join("agent-db1.pem.old").exists());
    }
}
