//! Certificates rotated under a running fleet: `tandemctl certs renew` for an
//! agent and the controller, a second CA appended to the bundle, SIGHUP (and
//! for one agent only its own look at the files), and no process restarted. New TLS connections present the new
//! certificates (read from a raw rustls handshake), the CA bundle in force
//! accepts the second CA's operator, a foreign certificate is still refused
//! and the controller's log says why, a bad key is refused and the old
//! certificate stays, a test still runs clean, and the days-left metric and
//! `tandemctl agents` show the new certificate's expiry.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tandem_proto::tls::{CertInfo, TlsFiles};
use tandem_tests::fleet::{Fleet, FleetSpec, run_ctl_raw};
use tandem_tests::prom;
use tandem_tests::wait::wait_for;

const WAIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(200);

/// The certificate the TLS server at `addr` presents to a new connection,
/// from a plain rustls handshake as `files`' holder.
fn server_leaf(addr: &str, files: &TlsFiles) -> anyhow::Result<CertInfo> {
    let config: Arc<rustls::ClientConfig> = files.client_config()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let mut conn = rustls::ClientConnection::new(config, name)?;
    let mut sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow::anyhow!("{addr} presented no certificate"))?;
    CertInfo::of(leaf).map_err(anyhow::Error::msg)
}

fn files(dir: &Path, stem: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    }
}

/// Replaces `path` in one rename, as a careful operator would.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("https://").to_owned()
}

fn certs_init(dir: &Path) {
    let made = run_ctl_raw(
        &[],
        &[
            "certs",
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--agents",
            "x",
        ],
    )
    .unwrap();
    assert_eq!(made.code, 0, "{made:?}");
}

/// A CA of another name than the development CA's, and an operator
/// certificate it signed, as `user-operator{,-key}.pem` in `dir`.
fn foreign_operator(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Someone else's CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://tandem/user/operator".try_into().unwrap(),
    ));
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("user-operator.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("user-operator-key.pem"), key.serialize_pem()).unwrap();
}

/// tandemctl's environment with the fleet's CA bundle and another operator
/// certificate.
fn ctl_env_with(fleet: &Fleet, cert_dir: &Path) -> Vec<(String, String)> {
    vec![
        ("TANDEM_CONTROLLER".into(), fleet.controller_url.clone()),
        (
            "TANDEM_CA".into(),
            fleet.certs.join("ca.pem").display().to_string(),
        ),
        (
            "TANDEM_CERT".into(),
            cert_dir.join("user-operator.pem").display().to_string(),
        ),
        (
            "TANDEM_KEY".into(),
            cert_dir.join("user-operator-key.pem").display().to_string(),
        ),
    ]
}

fn days_left_metric(addr: &str) -> anyhow::Result<Option<f64>> {
    let samples = prom::parse(&prom::scrape(addr)?)?;
    Ok(samples
        .iter()
        .find(|s| s.name == "tandem_tls_cert_days_left")
        .map(|s| s.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_and_reloaded_without_a_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut spec = FleetSpec::new(&[("rot", 1)]);
    spec.metrics = true;
    let fleet = Fleet::start(spec).await.unwrap();
    let certs = fleet.certs.clone();
    let operator = files(&certs, "user-operator");
    let controller_addr = host_port(&fleet.controller_url);
    let agents = fleet.ctl(&["agents", "-o", "json"]).unwrap().json();
    let agent_addr = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "rot-s1")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let controller_pid = fleet.controller.as_ref().unwrap().pid();
    let agent_pid = fleet.agents["rot-s1"].proc.as_ref().unwrap().pid();

    let controller_before = server_leaf(&controller_addr, &operator).unwrap();
    let agent_before = server_leaf(&agent_addr, &operator).unwrap();
    for a in agents["agents"].as_array().unwrap() {
        let days = a["cert_days_left"].as_i64().unwrap_or(-1);
        assert!((364..=365).contains(&days), "{a}");
        assert_eq!(a["warnings"], Value::Array(vec![]), "{a}");
    }

    // A second CA appended to the bundle, whose operator is refused until then.
    let second = fleet.dir.join("second-ca");
    certs_init(&second);
    let run = run_ctl_raw(&ctl_env_with(&fleet, &second), &["agents"]).unwrap();
    assert_eq!(run.code, 2, "the second CA is not trusted yet: {run:?}");

    // Renew the agent's and the controller's certificates; append the CA.
    let renewed = |args: &[&str]| {
        let mut all = vec!["certs", "renew", "--dir", certs.to_str().unwrap()];
        all.extend_from_slice(args);
        let run = run_ctl_raw(&[], &[&all[..], &["-o", "json"]].concat()).unwrap();
        assert_eq!(run.code, 0, "{run:?}");
        run.json()
    };
    let agent_new = renewed(&["agent", "rot-s1"]);
    let controller_new = renewed(&["controller"]);
    assert_eq!(agent_new["identity"], "spiffe://tandem/agent/rot-s1");
    assert!(certs.join("agent-rot-s1.pem.old").is_file());
    let mut bundle = std::fs::read(certs.join("ca.pem")).unwrap();
    bundle.extend(std::fs::read(second.join("ca.pem")).unwrap());
    replace(&certs.join("ca.pem"), &bundle);

    fleet
        .controller
        .as_ref()
        .unwrap()
        .signal(Signal::SIGHUP)
        .unwrap();
    fleet.agents["rot-s1"]
        .proc
        .as_ref()
        .unwrap()
        .signal(Signal::SIGHUP)
        .unwrap();

    // New connections present the new certificates.
    for (what, addr, want) in [
        ("controller", &controller_addr, &controller_new),
        ("agent rot-s1", &agent_addr, &agent_new),
    ] {
        let want = want["serial"].as_str().unwrap().to_owned();
        wait_for(
            &format!("the {what} to present its renewed certificate"),
            WAIT,
            EVERY,
            || {
                let got = server_leaf(addr, &operator);
                let want = want.clone();
                async move {
                    let got = got?;
                    if got.serial == want {
                        Ok(Some(()))
                    } else {
                        anyhow::bail!("serial {} (want {want})", got.serial)
                    }
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
    }
    assert_ne!(controller_before.serial, controller_new["serial"]);
    assert_ne!(agent_before.serial, agent_new["serial"]);

    // The bundle in force trusts the second CA's operator now.
    let run = run_ctl_raw(&ctl_env_with(&fleet, &second), &["agents"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());

    // A certificate from a foreign CA is still refused, and the controller
    // says why in its log. (The second CA's operator refused above was
    // logged too, as "not signed by a CA in tls.ca": development CAs share
    // one name.)
    let foreign = fleet.dir.join("foreign-ca");
    foreign_operator(&foreign);
    let run = run_ctl_raw(&ctl_env_with(&fleet, &foreign), &["agents"]).unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    wait_for(
        "the controller to log the refused handshakes",
        WAIT,
        EVERY,
        || {
            let log = fleet.controller.as_ref().unwrap().log_text();
            async move {
                let refused = |why: &str| {
                    log.lines()
                        .any(|l| l.contains("TLS handshake refused") && l.contains(why))
                };
                Ok((refused("unknown authority (not in tls.ca)")
                    && refused("not signed by a CA in tls.ca"))
                .then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));

    // A bad key is refused with the file named; the certificate in force stays.
    let primary = fleet.agents["rot-p"].proc.as_ref().unwrap();
    let primary_addr = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "rot-p")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    // The primary's agent got no SIGHUP: it found the new CA bundle by
    // looking at its files (every 5 s).
    wait_for(
        "the primary's agent to reload the bundle by itself",
        WAIT,
        EVERY,
        || {
            let log = primary.log_text();
            async move { Ok(log.contains("TLS files reloaded").then_some(())) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
    let primary_before = server_leaf(&primary_addr, &operator).unwrap();
    let key = certs.join("agent-rot-p-key.pem");
    let good_key = std::fs::read(&key).unwrap();
    replace(
        &key,
        &std::fs::read(second.join("agent-x-key.pem")).unwrap(),
    );
    primary.signal(Signal::SIGHUP).unwrap();
    wait_for("the agent to refuse the bad key", WAIT, EVERY, || {
        let log = primary.log_text();
        let key = key.display().to_string();
        async move {
            Ok(log
                .lines()
                .any(|l| l.contains("new TLS files refused") && l.contains(&key))
                .then_some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
    assert_eq!(
        server_leaf(&primary_addr, &operator).unwrap(),
        primary_before
    );
    replace(&key, &good_key);

    // Everything still works: agents online, a test clean.
    let run = fleet.ctl(&["agents", "-o", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    let test = fleet.ctl(&["testdb", "rot", "-o", "json"]).unwrap();
    assert_eq!(test.code, 0, "{test:?}\n{}", fleet.logs());

    // The agent reported its new certificate; the metric follows it.
    let not_after: jiff::Timestamp = agent_new["not_after"].as_str().unwrap().parse().unwrap();
    wait_for(
        "the agent to report its renewed certificate",
        WAIT,
        EVERY,
        || {
            let run = fleet.ctl(&["agents", "-o", "json"]);
            async move {
                let v = run?.json();
                let a = v["agents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["name"] == "rot-s1")
                    .cloned()
                    .unwrap();
                let reported: jiff::Timestamp =
                    a["cert_not_after"].as_str().unwrap_or_default().parse()?;
                Ok((reported == not_after).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    for (who, addr) in [
        ("controller", &fleet.metrics["controller"]),
        ("rot-s1", &fleet.metrics["rot-s1"]),
    ] {
        let days = days_left_metric(addr).unwrap();
        assert!(
            days.is_some_and(|d| d > 364.0 && d <= 365.0),
            "{who}: {days:?}"
        );
    }

    // No process was restarted.
    assert_eq!(fleet.controller.as_ref().unwrap().pid(), controller_pid);
    assert_eq!(
        fleet.agents["rot-s1"].proc.as_ref().unwrap().pid(),
        agent_pid
    );
    let log = fleet.controller.as_ref().unwrap().log_text();
    assert_eq!(log.matches("tandem-controller started").count(), 1);
}
