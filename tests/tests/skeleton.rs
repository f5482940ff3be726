//! The walking skeleton end to end: real PostgreSQL, the real binaries, mTLS.
//! Agents register and show real roles; a killed agent goes offline and comes
//! back; peers without the right certificate are refused.

use std::time::Duration;

use tandem_tests::fleet::{Fleet, FleetSpec, run_ctl_raw};

fn member<'a>(show: &'a serde_json::Value, set: &str, name: &str) -> &'a serde_json::Value {
    show["sets"]
        .as_array()
        .and_then(|sets| sets.iter().find(|s| s["name"] == set))
        .and_then(|s| s["members"].as_array())
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no member {name} of set {set} in {show:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_and_show_real_roles() {
    let fleet = Fleet::start(FleetSpec::new(&[("alpha", 1)])).await.unwrap();

    let run = fleet.ctl(&["show", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "show: {run:?}\n{}", fleet.logs());
    let show = run.json();
    let p = member(&show, "alpha", "alpha-p");
    let s = member(&show, "alpha", "alpha-s1");
    assert_eq!(p["role"], "primary", "{show:#}");
    assert_eq!(p["state"], "running");
    assert_eq!(s["role"], "standby");
    assert_eq!(s["state"], "streaming");
    assert_eq!(s["live"], true);
    let major: u32 = s["server_version"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(major >= 15, "{major}");
    assert!(p["current_lsn"].as_str().unwrap().contains('/'));
    assert!(s["replayed_lsn"].as_str().unwrap().contains('/'));
    assert!(s["data_dir_bytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(show["sets"][0]["verdict"]["kind"], "never_tested");

    // The same facts, for people.
    let human = fleet.ctl(&["show"]).unwrap();
    assert_eq!(human.code, 0);
    assert!(
        human.stdout.contains("alpha-s1") && human.stdout.contains("streaming"),
        "{}",
        human.stdout
    );

    let agents = fleet.ctl(&["agents", "--output", "json"]).unwrap();
    assert_eq!(agents.code, 0);
    let agents = agents.json();
    let roles: Vec<(String, String)> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            ("alpha-p".into(), "primary".into()),
            ("alpha-s1".into(), "standby".into())
        ]
    );

    // Registrations are audited with the agent's identity.
    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    let registered: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "Register" && e["outcome"] == "ok")
        .map(|e| e["identity"].as_str().unwrap())
        .collect();
    assert!(
        registered.contains(&"spiffe://tandem/agent/alpha-s1"),
        "{audit:#}"
    );

    // The agent reads the same facts locally, without the controller.
    let local = std::process::Command::new(tandem_tests::procs::bin_path("tandem-agent").unwrap())
        .args(["status", "--config"])
        .arg(&fleet.agents["alpha-s1"].config)
        .output()
        .unwrap();
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let local: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(local["role"], "standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_goes_offline_and_comes_back() {
    let mut fleet = Fleet::start(FleetSpec::new(&[("beta", 1)])).await.unwrap();
    // A second agent for the same instance refuses to start.
    let second = std::process::Command::new(tandem_tests::procs::bin_path("tandem-agent").unwrap())
        .arg("--config")
        .arg(&fleet.agents["beta-s1"].config)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another tandem-agent holds"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    fleet.kill_agent("beta-s1");
    fleet
        .wait_agents_state(&["beta-s1".into()], "offline")
        .await
        .unwrap();

    let run = fleet.ctl(&["show", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "an offline agent is a bad state: {run:?}");
    assert_eq!(
        member(&run.json(), "beta", "beta-s1")["state"],
        "agent offline"
    );
    assert_eq!(fleet.ctl(&["agents"]).unwrap().code, 1);

    fleet.start_agent("beta-s1").unwrap();
    fleet
        .wait_agents_state(&["beta-s1".into()], "online")
        .await
        .unwrap();
    let run = fleet.ctl(&["show", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(member(&run.json(), "beta", "beta-s1")["state"], "streaming");

    // A reader that goes away (`tandemctl show | head`) ends tandemctl
    // with its own exit code, not a broken-pipe panic.
    let mut child = fleet.spawn_ctl("operator", &["show"]).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_right_certificate_are_refused() {
    let fleet = Fleet::start(FleetSpec::new(&[("gamma", 1)])).await.unwrap();
    let certs = fleet.certs.display().to_string();

    // A certificate from another CA, with our CA to trust the controller.
    let other = fleet.dir.join("other-ca");
    let made = run_ctl_raw(
        &[],
        &[
            "certs",
            "init",
            "--dir",
            other.to_str().unwrap(),
            "--agents",
            "gamma-p",
        ],
    )
    .unwrap();
    assert_eq!(made.code, 0, "{made:?}");
    let foreign = vec![
        ("TANDEM_CONTROLLER".to_owned(), fleet.controller_url.clone()),
        ("TANDEM_CA".to_owned(), format!("{certs}/ca.pem")),
        (
            "TANDEM_CERT".to_owned(),
            format!("{}/user-operator.pem", other.display()),
        ),
        (
            "TANDEM_KEY".to_owned(),
            format!("{}/user-operator-key.pem", other.display()),
        ),
    ];
    let run = run_ctl_raw(&foreign, &["show"]).unwrap();
    assert_eq!(
        run.code, 2,
        "a foreign certificate must be refused: {run:?}"
    );
    assert!(run.stdout.is_empty());
    // Said plainly: the certificate, not a bare "transport error".
    assert!(
        run.stderr.contains("does not accept this certificate")
            && run.stderr.contains("signed by the fleet's CA"),
        "{}",
        run.stderr
    );

    // An agent's certificate may not act as an operator.
    let as_agent = vec![
        ("TANDEM_CONTROLLER".to_owned(), fleet.controller_url.clone()),
        ("TANDEM_CA".to_owned(), format!("{certs}/ca.pem")),
        (
            "TANDEM_CERT".to_owned(),
            format!("{certs}/agent-gamma-p.pem"),
        ),
        (
            "TANDEM_KEY".to_owned(),
            format!("{certs}/agent-gamma-p-key.pem"),
        ),
    ];
    let run = run_ctl_raw(&as_agent, &["show"]).unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("spiffe://tandem/agent/gamma-p"),
        "{}",
        run.stderr
    );

    // No certificate at all: tandemctl says what is missing.
    let run = run_ctl_raw(&foreign[..2], &["show"]).unwrap();
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("TANDEM_CERT"), "{}", run.stderr);

    // A TLS client that presents no certificate gets no answer from the controller...
    let ca = std::fs::read(format!("{certs}/ca.pem")).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("127.0.0.1");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let call = async {
        let ch = tonic::transport::Endpoint::from_shared(fleet.controller_url.clone())?
            .tls_config(tls.clone())?
            .connect()
            .await?;
        let mut c = tandem_proto::pb::controller_client::ControllerClient::new(ch);
        c.list_agents(tandem_proto::pb::ListAgentsRequest {})
            .await?;
        anyhow::Ok(())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap()
            .is_err()
    );

    // ...nor from an agent; and an agent refuses an operator's certificate.
    let agent_addr = std::fs::read_to_string(&fleet.agents["gamma-s1"].config)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("listen = \"")
                .map(|r| r.trim_end_matches('"').to_owned())
        })
        .unwrap();
    let files = tandem_proto::tls::TlsFiles {
        ca: format!("{certs}/ca.pem").into(),
        cert: format!("{certs}/user-operator.pem").into(),
        key: format!("{certs}/user-operator-key.pem").into(),
    };
    let ch = tandem_proto::tls::connect(&format!("https://{agent_addr}"), &files)
        .await
        .unwrap();
    let mut agent = tandem_proto::pb::agent_client::AgentClient::new(ch);
    let err = agent
        .status(tandem_proto::pb::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("only from spiffe://tandem/controller"),
        "{}",
        err.message()
    );

    // The servers say what they refused: the agent the operator's call, the
    // controller the handshake without a client certificate.
    let agent_proc = fleet.agents["gamma-s1"].proc.as_ref().unwrap();
    let controller = fleet.controller.as_ref().unwrap();
    tandem_tests::wait::wait_for(
        "the refusals in the agent's and the controller's logs",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let agent_log = agent_proc.log_text();
            let controller_log = controller.log_text();
            async move {
                let agent_said = agent_log.lines().any(|l| {
                    l.contains("call refused") && l.contains("spiffe://tandem/user/operator")
                });
                let controller_said = controller_log.lines().any(|l| {
                    l.contains("TLS handshake refused") && l.contains("presented no certificate")
                });
                Ok((agent_said && controller_said).then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", fleet.logs()));
}
