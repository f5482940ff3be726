//! The TLS configs in force, swapped when the files change.
//!
//! [`LiveTls`] holds the server and client configs built from the
//! [`TlsFiles`] and the facts of the certificate presented. [`LiveTls::reload`]
//! reads the three files again: the same bytes change nothing; new bytes
//! that load (PEM, a usable CA, a key that belongs to the certificate)
//! replace the configs for every connection made from then on; new bytes
//! that do not load are refused with an error naming the file, once per
//! content, and the configs in force stay (a failure is looked at twice
//! first, as a pair replaced file by file can be read half-way). [`LiveTls::watch`] (one task per
//! daemon, owned by `run`) reloads every [`RELOAD_EVERY`] and on SIGHUP,
//! and keeps the `tandem_tls_cert_days_left` gauge current.
//!
//! Connections already open keep the certificate they were made with;
//! rotation needs no restart and no downtime: the old certificate stays
//! valid until the new one is in force.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::{Contents, Loaded, TlsError, TlsFiles};

/// How often [`LiveTls::watch`] looks at the files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

const SECONDS_PER_DAY: f64 = 86_400.0;

/// What a process's own certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial number, as hex bytes separated by `:`.
    pub serial: String,
    /// The end of its validity.
    pub not_after: Timestamp,
}

/// A certificate whose serial or validity cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CertInfoError {
    #[error("not an X.509 certificate: {0}")]
    Der(#[from] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("its end of validity is out of range: {0}")]
    NotAfter(#[from] jiff::Error),
}

impl CertInfo {
    /// The serial and end of validity of a DER certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Result<CertInfo, CertInfoError> {
        let (_, x509) = X509Certificate::from_der(cert.as_ref())?;
        let not_after = Timestamp::from_second(x509.validity().not_after.timestamp())?;
        Ok(CertInfo {
            serial: x509.raw_serial_as_string(),
            not_after,
        })
    }

    /// Days from `now` to the end of validity (negative once expired).
    pub fn days_left(&self, now: Timestamp) -> f64 {
        (self.not_after.as_second() - now.as_second()) as f64 / SECONDS_PER_DAY
    }
}

/// What one [`LiveTls::reload`] did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what is in force.
    Unchanged,
    /// New files are in force: the certificate now presented.
    Reloaded(CertInfo),
    /// New files that do not load; what was in force stays.
    Refused(TlsError),
}

/// The TLS configs in force; see the module doc.
pub struct LiveTls {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
    /// The contents last refused, so one bad file is logged once.
    refused: Mutex<Option<Contents>>,
}

impl LiveTls {
    /// Loads the files; an error here is a start-up error (the messages of
    /// [`TlsFiles::server_config`]).
    pub fn load(files: TlsFiles) -> Result<Arc<LiveTls>, TlsError> {
        let loaded = files.load()?;
        record_days_left(&loaded.leaf);
        Ok(Arc::new(LiveTls {
            files,
            current: RwLock::new(Arc::new(loaded)),
            refused: Mutex::new(None),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server config for the next handshake.
    pub fn server(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The client config for the next connection.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    /// The certificate presented now.
    pub fn leaf(&self) -> CertInfo {
        self.current().leaf.clone()
    }

    /// Reads the files again and puts them in force if they changed and
    /// load; logs what it did (a refusal once per content).
    pub fn reload(&self) -> Reload {
        let contents = match self.files.read_all() {
            Ok(c) => c,
            Err(e) => return self.refuse(None, e),
        };
        if contents == self.current().contents {
            *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Reload::Unchanged;
        }
        // A pair replaced file by file (`tandemctl certs renew` writes the
        // key, then the certificate) can be read half-way: look once more
        // before refusing.
        let built = self.files.build(contents.clone()).or_else(|_| {
            let again = self.files.read_all()?;
            self.files.build(again)
        });
        match built {
            Ok(loaded) => {
                let leaf = loaded.leaf.clone();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
                record_days_left(&leaf);
                metrics::counter!("tandem_tls_reloads_total", "result" => "reloaded").increment(1);
                info!(
                    cert = %self.files.cert.display(),
                    ca = %self.files.ca.display(),
                    serial = %leaf.serial,
                    not_after = %leaf.not_after,
                    "TLS files reloaded; new connections use them"
                );
                Reload::Reloaded(leaf)
            }
            Err(e) => {
                let contents = self.files.read_all().unwrap_or(contents);
                self.refuse(Some(contents), e)
            }
        }
    }

    fn refuse(&self, contents: Option<Contents>, e: TlsError) -> Reload {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        // A file that cannot be read has no contents to compare: said once
        // until the files read again.
        let key = contents.unwrap_or(Contents {
            ca: Vec::new(),
            cert: Vec::new(),
            key: Vec::new(),
        });
        if refused.as_ref() != Some(&key) {
            metrics::counter!("tandem_tls_reloads_total", "result" => "refused").increment(1);
            let leaf = self.leaf();
            error!(
                error = %e,
                serial = %leaf.serial,
                "new TLS files refused; the certificate in force stays in use"
            );
            *refused = Some(key);
        }
        Reload::Refused(e)
    }

    /// Reloads every [`RELOAD_EVERY`] and on SIGHUP until `shutdown`
    /// resolves, and keeps the days-left gauge current.
    pub async fn watch(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot install the SIGHUP handler; TLS files are reloaded every {RELOAD_EVERY:?} only");
                None
            }
        };
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            // Cancel-safe: every arm only waits; the reload runs after the
            // select, never half-way.
            let by_signal = tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => false,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let outcome = self.reload();
            if by_signal && matches!(outcome, Reload::Unchanged) {
                info!(cert = %self.files.cert.display(), "SIGHUP: TLS files unchanged");
            }
            record_days_left(&self.leaf());
        }
    }
}

fn record_days_left(leaf: &CertInfo) {
    metrics::gauge!("tandem_tls_cert_days_left").set(leaf.days_left(Timestamp::now()));
}

/// Describes the TLS metrics (called where the recorder is installed).
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        "tandem_tls_cert_days_left",
        "Days until this process's own TLS certificate expires"
    );
    metrics::describe_counter!(
        "tandem_tls_reloads_total",
        "TLS file reloads by result (reloaded, refused)"
    );
    metrics::describe_counter!(
        "tandem_tls_handshake_failures_total",
        "TLS handshakes this server refused or that failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::write_certs;

    #[test]
    fn new_files_are_put_in_force_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        let live = LiveTls::load(files.clone()).unwrap();
        let first = live.leaf();
        assert!(first.days_left(Timestamp::now()) > 0.0);
        assert!(matches!(live.reload(), Reload::Unchanged));

        // A key that does not belong to the certificate: refused, naming
        // the file; the certificate in force stays.
        let other = tempfile::tempdir().unwrap();
        let other_files = write_certs(other.path());
        std::fs::copy(&other_files.key, &files.key).unwrap();
        match live.reload() {
            Reload::Refused(e) => {
                assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
                assert!(
                    e.to_string().contains(&files.key.display().to_string()),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(live.leaf(), first);
        std::fs::write(&files.cert, "garbage\n").unwrap();
        assert!(matches!(
            live.reload(),
            Reload::Refused(TlsError::NoCertificate { .. })
        ));
        assert_eq!(live.leaf(), first);

        // The whole new pair (and CA): in force for what comes next.
        for (from, to) in [
            (&other_files.ca, &files.ca),
            (&other_files.cert, &files.cert),
        ] {
            std::fs::copy(from, to).unwrap();
        }
        match live.reload() {
            Reload::Reloaded(leaf) => assert_ne!(leaf.serial, first.serial),
            other => panic!("{other:?}"),
        }
        assert_ne!(live.leaf(), first);
        assert!(matches!(live.reload(), Reload::Unchanged));
    }
}
