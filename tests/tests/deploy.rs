//! Everything shipped in `deploy/` stays true: every TOML config parses
//! with the binaries' own config types, every systemd unit parses (and
//! passes `systemd-analyze verify` where systemd is installed), every YAML
//! file parses, the compose file passes `docker-compose config -q` where
//! docker-compose is installed (tests/run.sh installs it), every file the
//! compose file mounts exists, every dashboard is JSON whose data sources
//! are provisioned, the Prometheus alert rules are well formed (and pass
//! `promtool check rules` and their own tests where promtool is installed),
//! and the three HA controllers of `deploy/ha` share one store and lease.
//! (That the metrics the dashboards and rules query are exported is checked
//! against running fleets in `metrics.rs`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tandem_agent::config::AgentConfig;
use tandem_controller::config::ControllerConfig;
use tandem_controller::store::StoreLocation;
use tandem_tests::procs::{bin_path, workspace_root};

fn deploy() -> PathBuf {
    workspace_root().join("deploy")
}

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn with_ext(ext: &[&str]) -> Vec<PathBuf> {
    files(&deploy())
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ext.contains(&e))
        })
        .collect()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn every_toml_config_parses_with_its_binarys_config_type() {
    let tomls = with_ext(&["toml"]);
    let (mut controllers, mut agents) = (0, 0);
    for path in &tomls {
        let name = path.file_name().unwrap().to_str().unwrap();
        if name.starts_with("controller") {
            ControllerConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
            controllers += 1;
        } else if name.starts_with("agent") {
            AgentConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
            agents += 1;
        } else {
            panic!(
                "{}: a TOML file in deploy/ must be named controller*.toml or agent*.toml so it is checked",
                path.display()
            );
        }
    }
    // The examples, and the three-host set: one controller, three agents.
    assert!(controllers >= 2 && agents >= 4, "{tomls:?}");
    let three = deploy().join("three-hosts");
    let c = ControllerConfig::load(&three.join("controller.toml")).unwrap();
    assert!(c.metrics_listen.is_some());
    let declared: BTreeSet<String> = c.sets[0]
        .members
        .iter()
        .map(|m| m.agent().to_owned())
        .collect();
    let mut configured = BTreeSet::new();
    for n in 1..=3 {
        let a = AgentConfig::load(&three.join(format!("agent-db{n}.toml"))).unwrap();
        assert_eq!(a.set, c.sets[0].name);
        assert!(a.metrics_listen.is_some());
        configured.insert(a.name);
    }
    assert_eq!(
        declared, configured,
        "the agents of three-hosts/ are the members its controller declares"
    );
}

/// `[Section]` and `key=value` lines of a systemd unit; refuses anything else.
fn unit_sections(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut section = String::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not key=value: {line}", path.display(), i + 1));
        assert!(
            !section.is_empty(),
            "{}:{}: key before any section",
            path.display(),
            i + 1
        );
        out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

#[test]
fn every_systemd_unit_parses_and_verifies() {
    let units = with_ext(&["service"]);
    assert!(units.len() >= 2, "{units:?}");
    let scratch = tempfile::tempdir().unwrap();
    for path in &units {
        let entries = unit_sections(path);
        let get = |s: &str, k: &str| {
            entries
                .iter()
                .find(|(sec, key, _)| sec == s && key == k)
                .map(|(_, _, v)| v.as_str())
        };
        let exec = get("Service", "ExecStart")
            .unwrap_or_else(|| panic!("{}: no ExecStart", path.display()));
        let bin = exec.split_whitespace().next().unwrap();
        let bin_name = Path::new(bin).file_name().unwrap().to_str().unwrap();
        assert!(
            ["tandem-agent", "tandem-controller"].contains(&bin_name),
            "{}: ExecStart runs {bin}",
            path.display()
        );
        assert!(exec.contains("--config"), "{}: {exec}", path.display());
        assert_eq!(
            get("Service", "ProtectSystem"),
            Some("strict"),
            "{}",
            path.display()
        );
        assert_eq!(
            get("Service", "NoNewPrivileges"),
            Some("yes"),
            "{}",
            path.display()
        );
        assert!(get("Service", "Restart").is_some(), "{}", path.display());
        assert!(get("Install", "WantedBy").is_some(), "{}", path.display());
        if bin_name == "tandem-controller" {
            assert_eq!(get("Service", "User"), Some("tandem"), "a dedicated user");
        }
        // systemd's own check, on a copy that runs the binaries just built.
        let built = bin_path(bin_name).unwrap();
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace(bin, built.to_str().unwrap());
        std::fs::write(scratch.path().join(path.file_name().unwrap()), text).unwrap();
    }
    if have("systemd-analyze") {
        let copies: Vec<PathBuf> = files(scratch.path());
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(&copies)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("systemd-analyze is not installed: units parsed, not verified by systemd");
    }
}

#[test]
fn every_yaml_file_parses_and_the_compose_file_is_valid() {
    let yamls = with_ext(&["yaml", "yml"]);
    assert!(yamls.len() >= 6, "{yamls:?}");
    for path in &yamls {
        let text = std::fs::read_to_string(path).unwrap();
        let _: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let dir = deploy().join("observability");
    let compose = dir.join("compose.yaml");
    let c: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&compose).unwrap()).unwrap();
    let services = c["services"].as_mapping().expect("services");
    for want in ["otel-collector", "tempo", "prometheus", "grafana"] {
        assert!(
            services.contains_key(want),
            "{} has no {want}",
            compose.display()
        );
    }
    // Every file or directory it mounts from deploy/ exists.
    for (name, svc) in services {
        for vol in svc["volumes"].as_sequence().into_iter().flatten() {
            let src = vol.as_str().unwrap().split(':').next().unwrap();
            if let Some(rel) = src.strip_prefix("./") {
                assert!(
                    dir.join(rel).exists(),
                    "service {name:?} mounts {src}, which is not in {}",
                    dir.display()
                );
            }
        }
    }
    // The collector sends traces to the port Tempo receives them on.
    let col: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("otel-collector.yaml")).unwrap())
            .unwrap();
    let tempo: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("tempo.yaml")).unwrap()).unwrap();
    assert_eq!(
        col["exporters"]["otlp/tempo"]["endpoint"],
        tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    );
    if have("docker-compose") {
        let out = Command::new("docker-compose")
            .arg("-f")
            .arg(&compose)
            .args(["config", "-q"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker-compose config -q: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "docker-compose is not installed: compose file parsed as YAML, not validated by compose"
        );
    }
}

#[test]
fn every_dashboard_uses_provisioned_data_sources() {
    let dir = deploy().join("observability/grafana");
    let ds: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("provisioning/datasources/tandem.yaml")).unwrap(),
    )
    .unwrap();
    let provisioned: BTreeSet<String> = ds["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| d["uid"].as_str().unwrap().to_owned())
        .collect();
    let dashboards = with_ext(&["json"]);
    assert!(dashboards.len() >= 2, "{dashboards:?}");
    let mut uids = BTreeSet::new();
    for path in &dashboards {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let uid = v["uid"].as_str().expect("a dashboard uid");
        assert!(uids.insert(uid.to_owned()), "uid {uid} twice");
        assert!(v["title"].is_string());
        let panels = v["panels"].as_array().expect("panels");
        assert!(!panels.is_empty());
        let mut used = BTreeSet::new();
        datasource_uids(&v, &mut used);
        let unknown: Vec<&String> = used.difference(&provisioned).collect();
        assert!(
            unknown.is_empty(),
            "{} uses data sources that are not provisioned: {unknown:?}",
            path.display()
        );
    }
    // The overview links each set to the set's dashboard.
    let fleet = std::fs::read_to_string(dir.join("dashboards/tandem-fleet.json")).unwrap();
    assert!(uids.contains("tandem-set") && fleet.contains("/d/tandem-set/"));
}

fn datasource_uids(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(ds)) = m.get("datasource")
                && let Some(Value::String(uid)) = ds.get("uid")
            {
                out.insert(uid.clone());
            }
            m.values().for_each(|v| datasource_uids(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| datasource_uids(v, out)),
        _ => {}
    }
}

#[test]
fn the_alert_rules_are_well_formed() {
    let dir = deploy().join("observability/prometheus");
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("prometheus.yml")).unwrap())
            .unwrap();
    assert_eq!(
        config["rule_files"][0].as_str(),
        Some("/etc/prometheus/rules/*.yml"),
        "prometheus.yml loads the rules compose.yaml mounts"
    );
    let rules: Vec<PathBuf> = files(&dir.join("rules"));
    assert!(!rules.is_empty());
    for path in &rules {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let groups = doc["groups"].as_sequence().expect("groups");
        for rule in groups
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
        {
            let name = rule["alert"].as_str().expect("an alert name");
            assert!(
                rule["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{name}"
            );
            assert!(rule["annotations"]["summary"].is_string(), "{name}");
            assert!(rule["labels"]["severity"].is_string(), "{name}");
        }
    }
    if have("promtool") {
        // The rules, then their tests on made-up series (tests/*.yml).
        for (what, paths) in [("check", rules), ("test", files(&dir.join("tests")))] {
            let out = Command::new("promtool")
                .args([what, "rules"])
                .args(&paths)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool {what} rules: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        eprintln!("promtool is not installed: rules parsed, not checked by Prometheus");
    }
}

#[test]
fn the_ha_controllers_share_one_store_and_lease_and_differ_only_in_their_address() {
    let dir = deploy().join("ha");
    let mut configs: Vec<ControllerConfig> = (1..=3)
        .map(|n| ControllerConfig::load(&dir.join(format!("controller-c{n}.toml"))).unwrap())
        .collect();
    let addresses: BTreeSet<String> = configs.iter().map(|c| c.advertised_address()).collect();
    assert_eq!(addresses.len(), 3, "each its own address: {addresses:?}");
    for c in &mut configs {
        let StoreLocation::Postgres(uri) = &c.store else {
            panic!("{}: not a PostgreSQL store", c.store);
        };
        assert!(
            uri.contains("target_session_attrs=read-write"),
            "{}: the store must be reached on the Patroni leader",
            c.store
        );
        assert!(c.metrics_listen.is_some());
        c.leader.address = None;
    }
    let first = format!("{:?}", configs[0]);
    for c in &configs[1..] {
        assert_eq!(format!("{c:?}"), first);
    }
}
