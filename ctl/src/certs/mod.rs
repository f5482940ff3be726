//! `tandemctl certs init`: a development CA and the certificates a Tandem
//! installation needs, written as PEM files into one directory; `tandemctl
//! certs renew` ([`renew`]): one of them made again from that CA.
//!
//! | file | holder | SAN |
//! |------|--------|-----|
//! | `ca.pem`, `ca-key.pem` | the CA ("Tandem development CA") | — |
//! | `controller.pem`, `controller-key.pem` | tandem-controller | `spiffe://tandem/controller` + hosts |
//! | `agent-<name>.pem`, `agent-<name>-key.pem` | tandem-agent | `spiffe://tandem/agent/<name>` + hosts |
//! | `user-<name>.pem`, `user-<name>-key.pem` | tandemctl (client only) | `spiffe://tandem/user/<name>` |
//!
//! [`init`] is idempotent: an existing CA is reused and only missing files are
//! made; existing files are kept unless [`CertsPlan::force`] is set, which
//! remakes everything, the CA included. Keys are written `0600`, certificates
//! `0644`, each through a temporary file renamed into place. Real deployments
//! bring their own PKI (DESIGN "Security").
//!
//! [`renew`] (`renew.rs`) makes one holder's key and certificate again
//! from the CA in the directory, keeping the current files as `*.old`.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tandem_proto::identity::{Identity, IdentityError, validate_name};

mod renew;
pub use renew::{Holder, RenewReport, renew};

/// Leaves are valid for a year, the CA for ten.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Certificates start an hour in the past, so a host whose clock is a little
/// behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
const CA_NAME: &str = "Tandem development CA";
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// What `tandemctl certs init` should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsPlan {
    /// Where the files go; created (0755) if missing.
    pub dir: PathBuf,
    /// Each gets `agent-<name>.pem` / `agent-<name>-key.pem`, SAN URI
    /// `spiffe://tandem/agent/<name>` plus the hosts (agents are servers too).
    pub agents: Vec<String>,
    /// Each gets `user-<name>.pem` / `user-<name>-key.pem`, SAN URI
    /// `spiffe://tandem/user/<name>`; client only.
    pub users: Vec<String>,
    /// Server names put into the controller and agent certificates; an entry
    /// that parses as an IP address becomes an IP SAN, any other a DNS SAN.
    pub hosts: Vec<String>,
    /// Remake every file, the CA included, even those that exist.
    pub force: bool,
}

impl CertsPlan {
    /// The defaults: no agents, user `operator`, hosts `localhost` and `127.0.0.1`.
    pub fn new(dir: impl Into<PathBuf>) -> CertsPlan {
        CertsPlan {
            dir: dir.into(),
            agents: Vec::new(),
            users: vec!["operator".to_owned()],
            hosts: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            force: false,
        }
    }
}

/// The files [`init`] wrote and those it left as they were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertsReport {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// Why `certs init` could not do what was asked.
///
/// Messages are whole sentences that embed their cause and say what to do:
/// `tandemctl` prints them alone, without walking `source()`.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("invalid {kind} name: {error}")]
    InvalidName {
        kind: &'static str,
        error: IdentityError,
    },
    #[error(
        "host `{host}` is neither an IP address nor a DNS name; give names like \
         `db1.example.com` or `10.0.0.5`"
    )]
    InvalidHost { host: String },
    #[error(
        "no hosts given; the controller and agent certificates need at least one server name \
         (for example `localhost`)"
    )]
    NoHosts,
    #[error(
        "cannot create certificate directory {}: {error}; check that its parent is writable",
        dir.display()
    )]
    CreateDir { dir: PathBuf, error: io::Error },
    #[error("cannot look at {}: {error}; check the directory's permissions", path.display())]
    Stat { path: PathBuf, error: io::Error },
    #[error("cannot read {}: {error}; check its permissions", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot write {}: {error}; check that the directory is writable", path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error(
        "cannot use the CA in {} with key {}: {error}; fix or remove them, or use --force to \
         make a new CA (every certificate is then remade)",
        cert.display(),
        key.display()
    )]
    LoadCa {
        cert: PathBuf,
        key: PathBuf,
        error: rcgen::Error,
    },
    #[error(
        "{} exists but {} does not; restore it, or use --force to make a new CA and every \
         certificate",
        present.display(),
        missing.display()
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },
    #[error(
        "{} holds certificates ({}) but no CA (ca.pem, ca-key.pem), so nothing new could be \
         trusted with them; use --force to make a new CA and every certificate",
        dir.display(),
        example.display()
    )]
    NoCa { dir: PathBuf, example: PathBuf },
    #[error(
        "{} exists but {} does not; remove {} to have both made again, or use --force",
        present.display(),
        missing.display(),
        present.display()
    )]
    PairIncomplete { present: PathBuf, missing: PathBuf },
    #[error("cannot make {what}: {error}")]
    Generate { what: String, error: rcgen::Error },
    #[error(
        "cannot renew: the CA's {} is missing; only certificates of the development CA \
         made by `tandemctl certs init` in this directory can be renewed here (with your own \
         PKI, have it issue the new certificate and key, then replace the files)",
        missing.display()
    )]
    CaMissing { missing: PathBuf },
    #[error(
        "there is no {kind} `{name}` in {}: {} does not exist{}; make it with `tandemctl certs \
         init --dir {} --{kind}s {name}`",
        dir.display(),
        cert.display(),
        known_list(known),
        dir.display()
    )]
    UnknownHolder {
        kind: &'static str,
        name: String,
        dir: PathBuf,
        cert: PathBuf,
        known: Vec<String>,
    },
    #[error(
        "{} names {found}, not {expected}; it cannot be renewed as {expected}",
        cert.display()
    )]
    WrongHolder {
        cert: PathBuf,
        expected: Identity,
        found: String,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

/// One certificate to make, and its files.
struct Leaf {
    identity: Identity,
    cert: PathBuf,
    key: PathBuf,
    /// Servers get the hosts as SANs and may also act as clients.
    server: bool,
}

/// Whether a certificate and its key exist.
enum Pair {
    Missing,
    Present,
    Partial { present: PathBuf, missing: PathBuf },
}

/// Makes the CA and certificates `plan` asks for; see the module doc.
/// Everything is validated before anything is written.
pub fn init(plan: &CertsPlan) -> Result<CertsReport, CertsError> {
    let agents = names("agent", &plan.agents)?;
    let users = names("user", &plan.users)?;
    let hosts = hosts(&plan.hosts)?;
    let dir = &plan.dir;
    let leaf = |identity: Identity, stem: String, server: bool| Leaf {
        identity,
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
        server,
    };
    let mut leaves = vec![leaf(Identity::Controller, "controller".into(), true)];
    leaves.extend(
        agents
            .into_iter()
            .map(|n| leaf(Identity::Agent(n.clone()), format!("agent-{n}"), true)),
    );
    leaves.extend(
        users
            .into_iter()
            .map(|n| leaf(Identity::User(n.clone()), format!("user-{n}"), false)),
    );

    create_dir(dir)?;
    let mut report = CertsReport::default();
    let issuer = ca(plan, &leaves, &mut report)?;
    for leaf in &leaves {
        if !plan.force {
            match pair(&leaf.cert, &leaf.key)? {
                Pair::Present => {
                    report.kept.extend([leaf.cert.clone(), leaf.key.clone()]);
                    continue;
                }
                Pair::Partial { present, missing } => {
                    return Err(CertsError::PairIncomplete { present, missing });
                }
                Pair::Missing => {}
            }
        }
        make_leaf(leaf, &hosts, &issuer)?;
        report.created.extend([leaf.cert.clone(), leaf.key.clone()]);
    }
    Ok(report)
}

/// Validated names, duplicates dropped, order kept.
fn names(kind: &'static str, names: &[String]) -> Result<Vec<String>, CertsError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in names {
        validate_name(name).map_err(|error| CertsError::InvalidName { kind, error })?;
        if seen.insert(name.as_str()) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// The hosts as SANs: IP addresses as IP SANs, the rest as DNS names.
fn hosts(hosts: &[String]) -> Result<Vec<SanType>, CertsError> {
    if hosts.is_empty() {
        return Err(CertsError::NoHosts);
    }
    hosts
        .iter()
        .map(|host| {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(SanType::IpAddress(ip));
            }
            let invalid = || CertsError::InvalidHost { host: host.clone() };
            rustls::pki_types::DnsName::try_from(host.as_str()).map_err(|_| invalid())?;
            Ok(SanType::DnsName(
                host.as_str().try_into().map_err(|_| invalid())?,
            ))
        })
        .collect()
}

/// The CA to sign with: reloaded from `ca.pem`/`ca-key.pem`, or made.
fn ca(
    plan: &CertsPlan,
    leaves: &[Leaf],
    report: &mut CertsReport,
) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let cert = plan.dir.join("ca.pem");
    let key = plan.dir.join("ca-key.pem");
    if !plan.force {
        match pair(&cert, &key)? {
            Pair::Present => {
                let issuer = load_ca(&cert, &key)?;
                report.kept.extend([cert, key]);
                return Ok(issuer);
            }
            Pair::Partial { present, missing } => {
                return Err(CertsError::CaIncomplete { present, missing });
            }
            Pair::Missing => {
                // Certificates signed by a CA that is gone cannot be kept
                // next to a new one; refuse rather than silently remake them.
                for leaf in leaves {
                    for path in [&leaf.cert, &leaf.key] {
                        if exists(path)? {
                            return Err(CertsError::NoCa {
                                dir: plan.dir.clone(),
                                example: path.clone(),
                            });
                        }
                    }
                }
            }
        }
    }

    let generate = |error| CertsError::Generate {
        what: format!("the CA for {}", cert.display()),
        error,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    let key_pair = KeyPair::generate().map_err(generate)?;
    let ca_cert = params.self_signed(&key_pair).map_err(generate)?;
    write_file(&key, &key_pair.serialize_pem(), KEY_MODE)?;
    write_file(&cert, &ca_cert.pem(), CERT_MODE)?;
    report.created.extend([cert, key]);
    Ok(Issuer::new(params, key_pair))
}

fn load_ca(cert: &Path, key: &Path) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let load_error = |error| CertsError::LoadCa {
        cert: cert.to_owned(),
        key: key.to_owned(),
        error,
    };
    let key_pem = read(key)?;
    let cert_pem = read(cert)?;
    let key_pair = KeyPair::from_pem(&key_pem).map_err(load_error)?;
    Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(load_error)
}

fn make_leaf(
    leaf: &Leaf,
    hosts: &[SanType],
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(), CertsError> {
    let generate = |error| CertsError::Generate {
        what: format!("{} for {}", leaf.cert.display(), leaf.identity),
        error,
    };
    let uri = leaf.identity.uri();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, uri.as_str());
    params
        .subject_alt_names
        .push(SanType::URI(uri.as_str().try_into().map_err(generate)?));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if leaf.server {
        params.subject_alt_names.extend(hosts.iter().cloned());
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    let key_pair = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key_pair, issuer).map_err(generate)?;
    write_file(&leaf.key, &key_pair.serialize_pem(), KEY_MODE)?;
    write_file(&leaf.cert, &cert.pem(), CERT_MODE)?;
    Ok(())
}

/// Valid from a little before now ([`BACKDATE`]) for `length`.
fn set_validity(params: &mut CertificateParams, length: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - BACKDATE;
    params.not_after = now + length;
}

fn pair(cert: &Path, key: &Path) -> Result<Pair, CertsError> {
    Ok(match (exists(cert)?, exists(key)?) {
        (true, true) => Pair::Present,
        (false, false) => Pair::Missing,
        (true, false) => Pair::Partial {
            present: cert.to_owned(),
            missing: key.to_owned(),
        },
        (false, true) => Pair::Partial {
            present: key.to_owned(),
            missing: cert.to_owned(),
        },
    })
}

fn exists(path: &Path) -> Result<bool, CertsError> {
    path.try_exists().map_err(|error| CertsError::Stat {
        path: path.to_owned(),
        error,
    })
}

fn read(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|error| CertsError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Creates `dir` (0755) if it is missing; an existing directory keeps its mode.
fn create_dir(dir: &Path) -> Result<(), CertsError> {
    let error = |error| CertsError::CreateDir {
        dir: dir.to_owned(),
        error,
    };
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(error)?;
    // The umask may have taken bits away.
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(error)
}

/// Writes `path` with exactly `mode`, through a temporary file renamed into
/// place, so a reader never sees half a file and a key is never readable by
/// others, not even for a moment.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // An old temporary file keeps its mode, and the umask may take bits
        // away: set the mode explicitly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|error| {
        let _ = fs::remove_file(&tmp);
        CertsError::Write {
            path: path.to_owned(),
            error,
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    pub(crate) fn plan(dir: &Path) -> CertsPlan {
        CertsPlan {
            agents: vec!["db1".into(), "db2".into()],
            ..CertsPlan::new(dir)
        }
    }

    pub(crate) fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The SAN URIs, DNS names and IP addresses of a PEM certificate.
    pub(crate) fn sans(pem: &[u8]) -> (Vec<String>, Vec<String>, Vec<Vec<u8>>) {
        let (_, pem) = parse_x509_pem(pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let (mut uris, mut dns, mut ips) = (vec![], vec![], vec![]);
        for name in &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
        {
            match name {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                _ => {}
            }
        }
        (uris, dns, ips)
    }

    /// Checks that `leaf` was issued and signed by `ca`.
    pub(crate) fn assert_issued_by(leaf: &Path, ca: &Path) {
        let leaf_pem = fs::read(leaf).unwrap();
        let ca_pem = fs::read(ca).unwrap();
        let (_, leaf_pem) = parse_x509_pem(&leaf_pem).unwrap();
        let (_, ca_pem) = parse_x509_pem(&ca_pem).unwrap();
        let leaf_cert = leaf_pem.parse_x509().unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        assert_eq!(leaf_cert.issuer(), ca_cert.subject(), "{}", leaf.display());
        leaf_cert
            .verify_signature(Some(ca_cert.public_key()))
            .unwrap_or_else(|e| panic!("{} not signed by {}: {e}", leaf.display(), ca.display()));
    }

    const FILES: [&str; 10] = [
        "ca.pem",
        "ca-key.pem",
        "controller.pem",
        "controller-key.pem",
        "agent-db1.pem",
        "agent-db1-key.pem",
        "agent-db2.pem",
        "agent-db2-key.pem",
        "user-operator.pem",
        "user-operator-key.pem",
    ];

    #[test]
    fn init_makes_every_file_with_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let report = init(&plan(&dir)).unwrap();
        assert_eq!(mode(&dir), 0o755);
        let mut created: Vec<_> = report.created.clone();
        created.sort();
        let mut expected: Vec<_> = FILES.iter().map(|f| dir.join(f)).collect();
        expected.sort();
        assert_eq!(created, expected);
        assert!(report.kept.is_empty());
        for file in FILES {
            let want = if file.ends_with("-key.pem") {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode(&dir.join(file)), want, "{file}");
        }
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), FILES.len(), "stray files: {names:?}");
    }

    #[test]
    fn a_second_run_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        init(&plan(tmp.path())).unwrap();
        let before: Vec<_> = FILES
            .iter()
            .map(|f| fs::read(tmp.path().join(f)).unwrap())
            .collect();
        let report = init(&plan(tmp.path())).unwrap();
        assert!(report.created.is_empty(), "{:?}", report.created);
        assert_eq!(report.kept.len(), FILES.len());
        let after: Vec<_> = FILES
            .iter()
            .map(|f| fs::read(tmp.path().join(f)).unwrap())
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn certificates_name_their_holders_and_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        init(&plan(tmp.path())).unwrap();
        let (uris, dns, ips) = sans(&fs::read(tmp.path().join("agent-db1.pem")).unwrap());
        assert_eq!(uris.len(), 1);
        assert_eq!(
            Identity::parse(&uris[0]).unwrap(),
            Identity::Agent("db1".into())
        );
        assert_eq!(dns, ["localhost"]);
        assert_eq!(ips, [vec![127, 0, 0, 1]]);

        let (uris, _, _) = sans(&fs::read(tmp.path().join("controller.pem")).unwrap());
        assert_eq!(Identity::parse(&uris[0]).unwrap(), Identity::Controller);

        let (uris, dns, ips) = sans(&fs::read(tmp.path().join("user-operator.pem")).unwrap());
        assert_eq!(
            Identity::parse(&uris[0]).unwrap(),
            Identity::User("operator".into())
        );
        assert!(dns.is_empty() && ips.is_empty(), "a user cert is no server");
    }

    #[test]
    fn leaves_are_issued_by_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        init(&plan(tmp.path())).unwrap();
        let ca = tmp.path().join("ca.pem");
        for file in FILES
            .iter()
            .filter(|f| !f.starts_with("ca") && !f.ends_with("-key.pem"))
        {
            assert_issued_by(&tmp.path().join(file), &ca);
        }
        // And the files are what tandem-proto loads: PEM, key matching cert.
        tandem_proto::tls::TlsFiles {
            ca: ca.clone(),
            cert: tmp.path().join("agent-db1.pem"),
            key: tmp.path().join("agent-db1-key.pem"),
        }
        .server_config()
        .unwrap();
    }

    #[test]
    fn missing_files_are_made_with_the_existing_ca() {
        let tmp = tempfile::tempdir().unwrap();
        init(&plan(tmp.path())).unwrap();
        let ca_before = fs::read(tmp.path().join("ca.pem")).unwrap();
        fs::remove_file(tmp.path().join("agent-db2.pem")).unwrap();
        fs::remove_file(tmp.path().join("agent-db2-key.pem")).unwrap();
        let mut more = plan(tmp.path());
        more.agents.push("db3".into());
        let report = init(&more).unwrap();
        let mut created = report.created.clone();
        created.sort();
        assert_eq!(
            created,
            [
                "agent-db2-key.pem",
                "agent-db2.pem",
                "agent-db3-key.pem",
                "agent-db3.pem"
            ]
            .map(|f| tmp.path().join(f))
        );
        assert_eq!(fs::read(tmp.path().join("ca.pem")).unwrap(), ca_before);
        let ca = tmp.path().join("ca.pem");
        assert_issued_by(&tmp.path().join("agent-db2.pem"), &ca);
        assert_issued_by(&tmp.path().join("agent-db3.pem"), &ca);
    }

    #[test]
    fn force_remakes_everything() {
        let tmp = tempfile::tempdir().unwrap();
        init(&plan(tmp.path())).unwrap();
        let ca_before = fs::read(tmp.path().join("ca.pem")).unwrap();
        let report = init(&CertsPlan {
            force: true,
            ..plan(tmp.path())
        })
        .unwrap();
        assert_eq!(report.created.len(), FILES.len());
        assert!(report.kept.is_empty());
        assert_ne!(fs::read(tmp.path().join("ca.pem")).unwrap(), ca_before);
        assert_issued_by(
            &tmp.path().join("controller.pem"),
            &tmp.path().join("ca.pem"),
        );
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let mut bad = plan(&dir);
        bad.agents.push("db 4".into());
        let err = init(&bad).unwrap_err();
        assert!(
            matches!(err, CertsError::InvalidName { kind: "agent", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("`db 4`"), "{err}");
        assert!(!dir.exists());

        let mut bad = plan(&dir);
        bad.hosts.push("not a host".into());
        let err = init(&bad).unwrap_err();
        assert!(err.to_string().contains("`not a host`"), "{err}");
        assert!(!dir.exists());

        let mut ipv6 = plan(&dir);
        ipv6.hosts = vec!["::1".into(), "db1.example.com".into()];
        init(&ipv6).unwrap();
        let (_, dns, ips) = sans(&fs::read(dir.join("controller.pem")).unwrap());
        assert_eq!(dns, ["db1.example.com"]);
        assert_eq!(ips.len(), 1);
        assert_eq!(ips[0].len(), 16);
    }

    #[test]
    fn half_a_ca_or_half_a_pair_is_an_error_not_an_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        init(&plan(tmp.path())).unwrap();
        fs::remove_file(tmp.path().join("agent-db1-key.pem")).unwrap();
        let err = init(&plan(tmp.path())).unwrap_err();
        assert!(matches!(err, CertsError::PairIncomplete { .. }), "{err:?}");
        assert!(err.to_string().contains("agent-db1-key.pem"), "{err}");

        fs::remove_file(tmp.path().join("ca-key.pem")).unwrap();
        let err = init(&plan(tmp.path())).unwrap_err();
        assert!(matches!(err, CertsError::CaIncomplete { .. }), "{err:?}");

        fs::remove_file(tmp.path().join("ca.pem")).unwrap();
        let err = init(&plan(tmp.path())).unwrap_err();
        assert!(matches!(err, CertsError::NoCa { .. }), "{err:?}");
        assert!(tmp.path().join("controller.pem").exists());
    }
}
