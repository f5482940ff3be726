//! A local S3-compatible server for the remote-store tests: moto's
//! `moto_server` (from PyPI; `tests/run.sh` installs it into a virtualenv
//! and sets `TANDEM_MOTO_SERVER`), on a free port of 127.0.0.1, with one
//! bucket. It is killed when the handle is dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::procs::Proc;
use crate::wait::{free_port, wait_for};

pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub bucket: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

/// The moto_server binary: `TANDEM_MOTO_SERVER`, or `moto_server` on PATH.
fn moto_server() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TANDEM_MOTO_SERVER") {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .context(
            "moto_server (a local S3 server) is not installed: run tests/run.sh, which installs \
             moto[server] from PyPI into a virtualenv, or set TANDEM_MOTO_SERVER",
        )
}

/// One HTTP/1.1 request without a body; the status code.
fn http(addr: &str, method: &str, path: &str) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let line = String::from_utf8_lossy(&head);
    line.get(9..12)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {line:?}"))
}

impl S3Server {
    /// Start the server and create `bucket`.
    pub async fn start(bucket: &str) -> anyhow::Result<S3Server> {
        let bin = moto_server()?;
        let dir = tempfile::Builder::new().prefix("tandem-s3-").tempdir()?;
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = Proc::spawn("moto_server", cmd, &dir.path().join("moto.log"))?;
        let addr = format!("127.0.0.1:{port}");
        let log = proc.log.clone();
        wait_for(
            "moto_server to answer",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let addr = addr.clone();
                async move { Ok(http(&addr, "GET", "/").ok()) }
            },
        )
        .await
        .with_context(|| format!("moto_server log: {}", log.display()))?;
        // Unsigned requests are accepted: moto checks no credentials.
        let code = http(&addr, "PUT", &format!("/{bucket}"))?;
        anyhow::ensure!(code == 200, "creating bucket {bucket}: HTTP {code}");
        Ok(S3Server {
            endpoint: format!("http://{addr}"),
            bucket: bucket.to_owned(),
            _proc: proc,
            _dir: dir,
        })
    }

    /// An agent.toml `[remote]` table for `s3://<bucket>/<prefix>`.
    pub fn remote_toml(&self, prefix: &str) -> String {
        format!(
            "\n[remote]\nurl = \"s3://{}/{prefix}\"\n\n[remote.options]\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\naws_region = \"us-east-1\"\naws_access_key_id = \"tandem-test\"\naws_secret_access_key = \"tandem-test\"\n",
            self.bucket, self.endpoint
        )
    }
}
