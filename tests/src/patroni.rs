//! A real Patroni cluster for end-to-end tests: Debian's `patroni` with a
//! private `etcd` (etcd3 API), both on free loopback ports, in a private
//! temporary directory ([`PatroniCluster`]).
//!
//! etcd runs as the test's user; Patroni and the PostgreSQL servers it makes
//! run as the `postgres` OS user when the test is root (PostgreSQL refuses
//! root). The first node bootstraps the cluster (initdb, data checksums) and
//! is the leader; the others are replicas made by Patroni's base backup.
//! Every node's server listens on 127.0.0.1 and on its own socket directory,
//! and every setting is in its `postgresql.conf` (Patroni 3 writes them
//! there too), so a plain `pg_ctl start` by a Tandem agent starts the same
//! server Patroni would.
//!
//! `loop_wait` is Patroni's default, 10 s: Patroni 3.0.2, even paused,
//! restarts a replica whose server stops while its HA loop runs ("PAUSE:
//! changing primary_conninfo and restarting"); a shorter loop makes that
//! likelier for every stop a test makes (see [`PatroniCluster::set_pause`]).
//! Dropping the cluster kills Patroni first (so nothing restarts a
//! server), then stops the servers ([`PgPair`]) and etcd; the directory is
//! kept on panic or `TANDEM_KEEP_TEST_DIRS=1`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::pg::{PgPair, PgServer};
use crate::procs::Proc;
use crate::wait::{free_port, wait_for};

/// How long etcd, a Patroni bootstrap or a replica may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const POLL_EVERY: Duration = Duration::from_millis(200);
/// One REST request to Patroni or etcd.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// One Patroni node: its REST URL and the PostgreSQL server it runs.
pub struct PatroniNode {
    pub name: String,
    pub rest_url: String,
    pub config: PathBuf,
    proc: Option<Proc>,
}

pub struct PatroniCluster {
    pub scope: String,
    pub dir: PathBuf,
    pub etcd_url: String,
    pub nodes: Vec<PatroniNode>,
    /// The servers: the first node's is the primary.
    pub pair: PgPair,
    etcd: Option<Proc>,
}

/// Whether `patroni` and `etcd` are installed (tests/run.sh installs them).
pub fn installed() -> anyhow::Result<()> {
    for tool in ["patroni", "etcd"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        ensure!(
            found,
            "`{tool}` is not installed; tests/run.sh installs it (Debian: apt-get install patroni etcd-server)"
        );
    }
    Ok(())
}

/// A blocking HTTP/1.1 request (`Connection: close`): status and body.
pub fn http(method: &str, url: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .parse::<std::net::SocketAddr>()
        .with_context(|| format!("{url}: host must be ip:port"))?;
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("{method} {url}: connect"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .with_context(|| format!("{method} {url}: read the answer"))?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {url}: no HTTP answer: {text}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} {url}: bad status line: {head}"))?;
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{method} {url}: chunked answers are not read by this helper"
    );
    Ok((status, body.to_owned()))
}

/// `GET <url>/cluster` as JSON.
pub fn cluster_at(url: &str) -> anyhow::Result<Value> {
    let (status, body) = http("GET", &format!("{url}/cluster"), None)?;
    ensure!(status == 200, "GET {url}/cluster: HTTP {status}: {body}");
    serde_json::from_str(&body).with_context(|| format!("GET {url}/cluster: {body}"))
}

/// The leader `/cluster` names, if any.
pub fn leader_of(cluster: &Value) -> Option<String> {
    cluster["members"].as_array()?.iter().find_map(|m| {
        (m["role"] == "leader")
            .then(|| m["name"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// Whether `/cluster` says the cluster is paused (absent: not paused).
pub fn paused(cluster: &Value) -> bool {
    cluster["pause"].as_bool().unwrap_or(false)
}

impl PatroniCluster {
    /// Start etcd and `nodes` Patroni nodes named `<scope>-n1`, `-n2`, ...;
    /// returns once `-n1` is the leader and every other node's server
    /// streams from it. `scope` is short (socket paths).
    pub async fn start(scope: &str, nodes: usize) -> anyhow::Result<PatroniCluster> {
        installed()?;
        ensure!(nodes >= 1, "a cluster has at least one node");
        let dir = tempfile::Builder::new()
            .prefix("tandem-patroni-")
            .tempdir()?
            .keep();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let mut servers = Vec::new();
        for i in 1..=nodes {
            servers.push(PgServer::layout(&dir, &format!("{scope}-n{i}"))?);
        }
        let primary = servers.remove(0);
        let mut cluster = PatroniCluster {
            scope: scope.to_owned(),
            dir: dir.clone(),
            etcd_url: String::new(),
            nodes: Vec::new(),
            pair: PgPair::adopt(dir, primary, servers),
            etcd: None,
        };
        cluster.start_etcd().await?;
        let all: Vec<PgServer> = std::iter::once(cluster.pair.primary.clone())
            .chain(cluster.pair.standbys.iter().cloned())
            .collect();
        for (i, server) in all.iter().enumerate() {
            cluster.start_node(server)?;
            if i == 0 {
                let url = cluster.nodes[0].rest_url.clone();
                let name = server.name.clone();
                cluster
                    .wait_cluster(&format!("{name} to lead"), |c| {
                        leader_of(c).as_deref() == Some(name.as_str())
                    })
                    .await
                    .with_context(|| format!("node {name} ({url})"))?;
                // Patroni answers before the server takes connections.
                wait_for(
                    &format!("{name} to accept connections"),
                    START_TIMEOUT,
                    POLL_EVERY,
                    || async { Ok(server.psql("postgres", "select 1").ok()) },
                )
                .await?;
            }
        }
        for s in &cluster.pair.standbys {
            cluster
                .pair
                .wait_streaming(s)
                .await
                .with_context(|| format!("Patroni logs in {}", cluster.dir.display()))?;
        }
        Ok(cluster)
    }

    async fn start_etcd(&mut self) -> anyhow::Result<()> {
        let (client, peer) = (free_port(), free_port());
        let data = self.dir.join("etcd");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "tandem-test"])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("tandem-test=http://127.0.0.1:{peer}"),
            ]);
        self.etcd = Some(Proc::spawn("etcd", cmd, &self.dir.join("etcd.log"))?);
        self.etcd_url = format!("http://127.0.0.1:{client}");
        let health = format!("{}/health", self.etcd_url);
        let log = self.dir.join("etcd.log");
        wait_for("etcd to be healthy", START_TIMEOUT, POLL_EVERY, || async {
            let (status, body) = http("GET", &health, None)?;
            Ok((status == 200 && body.contains("true")).then_some(()))
        })
        .await
        .with_context(|| format!("etcd log {}", log.display()))
    }

    fn start_node(&mut self, server: &PgServer) -> anyhow::Result<()> {
        let rest_port = free_port();
        let home = self.dir.join(format!("{}.patroni", server.name));
        std::fs::create_dir_all(&home)?;
        let pglog = home.join("pglog");
        std::fs::create_dir_all(&pglog)?;
        if let Some(u) = server.os_user() {
            u.chown(&home)?;
            u.chown(&pglog)?;
        }
        let config = self.dir.join(format!("{}.yml", server.name));
        let etcd_host = self.etcd_url.trim_start_matches("http://");
        let yaml = format!(
            r#"scope: {scope}
name: {name}
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd3:
  hosts: {etcd_host}
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    postgresql:
      use_pg_rewind: false
      parameters:
        wal_keep_size: 256MB
        fsync: "off"
        shared_buffers: 16MB
        max_connections: 40
  initdb:
    - encoding: UTF8
    - locale: C
    - data-checksums
postgresql:
  listen: 127.0.0.1:{port}
  connect_address: 127.0.0.1:{port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {home}/pgpass
  use_unix_socket: true
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: '{sock}'
    logging_collector: 'on'
    log_directory: '{pglog}'
    log_filename: 'postgresql.log'
    log_line_prefix: '%m [%p] %q%a '
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - local replication all trust
    - host replication all 127.0.0.1/32 trust
"#,
            scope = self.scope,
            name = server.name,
            port = server.port,
            data = server.data_dir.display(),
            bin = server.bin_dir().display(),
            home = home.display(),
            sock = server.socket_dir.display(),
            pglog = pglog.display(),
        );
        std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
        let mut cmd = Command::new("patroni");
        cmd.arg(&config).env("HOME", &home).current_dir("/");
        if let Some(u) = server.os_user() {
            use std::os::unix::process::CommandExt;
            cmd.uid(u.uid).gid(u.gid);
        }
        let log = self.dir.join(format!("{}.patroni.log", server.name));
        let proc = Proc::spawn(&format!("patroni {}", server.name), cmd, &log)?;
        self.nodes.push(PatroniNode {
            name: server.name.clone(),
            rest_url: format!("http://127.0.0.1:{rest_port}"),
            config,
            proc: Some(proc),
        });
        Ok(())
    }

    /// Every node's REST URL.
    pub fn rest_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.rest_url.clone()).collect()
    }

    /// `GET /cluster` from the first node that answers.
    pub fn cluster(&self) -> anyhow::Result<Value> {
        let mut errors = Vec::new();
        for n in &self.nodes {
            match cluster_at(&n.rest_url) {
                Ok(v) => return Ok(v),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("no Patroni node answered: {}", errors.join("; "))
    }

    /// Pause (true) or resume Patroni (`PATCH /config`) and wait until
    /// `/cluster` shows it and every node's own `/patroni` does (its HA
    /// loop, woken by the change, has taken it in: a server stopped while
    /// that loop runs would be restarted).
    pub async fn set_pause(&self, pause: bool) -> anyhow::Result<()> {
        let url = &self.nodes[0].rest_url;
        let (status, body) = http(
            "PATCH",
            &format!("{url}/config"),
            Some(&format!("{{\"pause\": {pause}}}")),
        )?;
        ensure!(status == 200, "PATCH {url}/config: HTTP {status}: {body}");
        self.wait_cluster(&format!("pause={pause}"), |c| paused(c) == pause)
            .await?;
        for n in &self.nodes {
            let url = format!("{}/patroni", n.rest_url);
            let url = &url;
            wait_for(
                &format!("{} to take pause={pause} in", n.name),
                START_TIMEOUT,
                POLL_EVERY,
                || async move {
                    let (status, body) = http("GET", url, None)?;
                    let v: Value = serde_json::from_str(&body)
                        .with_context(|| format!("GET {url}: HTTP {status}: {body}"))?;
                    Ok((v["pause"].as_bool().unwrap_or(false) == pause).then_some(()))
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Wait until `/cluster` satisfies `cond`; the last document.
    pub async fn wait_cluster(
        &self,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let logs = self.dir.display().to_string();
        let cond = &cond;
        wait_for(
            &format!("Patroni: {what}"),
            START_TIMEOUT,
            POLL_EVERY,
            || async move {
                let c = self.cluster()?;
                if cond(&c) { Ok(Some(c)) } else { bail!("{c}") }
            },
        )
        .await
        .with_context(|| format!("logs in {logs}"))
    }

    /// Keep the directory (logs) after drop.
    pub fn keep(&mut self) {
        self.pair.keep();
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Patroni first: a running Patroni would start what is stopped.
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill();
            }
        }
        // Then the servers (the pair, dropped after this), then etcd.
        if let Some(mut e) = self.etcd.take() {
            e.kill();
        }
    }
}
