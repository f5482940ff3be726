//! A set's HA manager during a maintenance window (`[ha.<set>]` in
//! controller.toml). Patroni only: its REST API, plain HTTP/1.1.
//!
//! - `PATCH /config` with `{"pause": true}` (or `false`) turns Patroni's
//!   maintenance mode on (off): paused, it neither fails over nor promotes
//!   nor (normally) starts a stopped server.
//! - `GET /cluster` confirms it: its `pause` is the cluster's state as
//!   stored in the DCS (absent means not paused), and it names the leader.
//!
//! - `GET /patroni` on every member (its `api_url` in `/cluster`) then
//!   shows that member's HA loop has taken the change in. Waiting for it
//!   matters: the change wakes every member's loop at once, and Patroni
//!   3.0.2, even paused, restarts a replica whose server stops while that
//!   loop runs ("PAUSE: changing primary_conninfo and restarting"), which
//!   is exactly what the window's first step does next.
//!
//! The URLs are tried in order; the first node that answers is enough (the
//! pause is cluster-wide). Every request is bounded by the set's timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::config::{HaConfig, check_patroni_url};

/// How often `GET /cluster` is asked while waiting for the pause to show.
const CONFIRM_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Deserialize)]
struct Cluster {
    #[serde(default)]
    members: Vec<ClusterMember>,
    #[serde(default)]
    pause: bool,
}

#[derive(Debug, Deserialize)]
struct ClusterMember {
    name: String,
    /// The member's own REST endpoint (`.../patroni`).
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
}

impl Cluster {
    fn leader(&self) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.role == "leader" || m.role == "standby_leader")
            .map(|m| m.name.as_str())
    }

    fn describe(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{} {} {}", m.name, m.role, m.state))
            .collect();
        format!(
            "pause={}, leader {}, members: {}",
            self.pause,
            self.leader().unwrap_or("none"),
            members.join(", ")
        )
    }
}

/// What the plan records of the HA manager, read before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub paused: bool,
    pub leader: Option<String>,
}

/// What went wrong talking to Patroni's REST API.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error(transparent)]
    Url(#[from] crate::config::PatroniUrlError),
    #[error("{method} {target}: {what}: {detail}")]
    Http {
        method: http::Method,
        target: String,
        what: &'static str,
        detail: String,
    },
    #[error("{method} {target}: no answer within {within}")]
    Timeout {
        method: http::Method,
        target: String,
        within: String,
    },
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: &'static str,
        status: http::StatusCode,
        body: String,
    },
    #[error("GET /cluster: not Patroni's cluster document ({error}): {body}")]
    NotCluster { error: String, body: String },
    #[error(
        "PATCH /config accepted but GET /cluster did not show pause={pause} within {within}: {last}"
    )]
    NotShown {
        pause: bool,
        within: String,
        last: String,
    },
    /// Every node tried, each with what went wrong there.
    #[error("{}", .0.iter().map(|(url, e)| format!("{url}: {e}")).collect::<Vec<_>>().join("; "))]
    Nodes(Vec<(String, HaError)>),
}

/// One HTTP/1.1 request to `base` + `path`; the status and the body.
async fn request(
    base: &str,
    method: http::Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(http::StatusCode, String), HaError> {
    let uri = check_patroni_url(base)?;
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let prefix = uri.path().trim_end_matches('/');
    let target = match format!("{prefix}{path}") {
        t if t.is_empty() => "/".to_owned(),
        t => t,
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let http = |what: &'static str| {
        let (method, target) = (method.clone(), target.clone());
        move |e: &dyn std::fmt::Display| HaError::Http {
            method,
            target,
            what,
            detail: e.to_string(),
        }
    };
    let send = async {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| http("cannot connect")(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http("HTTP handshake failed")(&e))?;
        let conn = tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(&target)
            .header(http::header::HOST, &authority)
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
            .map_err(|e| http("bad request")(&e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http("no answer")(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http("the answer was cut")(&e))?
            .to_bytes();
        drop(sender);
        conn.abort();
        Ok::<_, HaError>((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(r) => r,
        Err(_) => Err(HaError::Timeout {
            method,
            target,
            within: humantime::format_duration(timeout).to_string(),
        }),
    }
}

async fn cluster(base: &str, timeout: Duration) -> Result<Cluster, HaError> {
    let (status, body) = request(base, http::Method::GET, "/cluster", None, timeout).await?;
    if !status.is_success() {
        return Err(HaError::Status {
            what: "GET /cluster",
            status,
            body: body.trim().to_owned(),
        });
    }
    serde_json::from_str(&body).map_err(|e| HaError::NotCluster {
        error: e.to_string(),
        body: body.trim().to_owned(),
    })
}

/// Wait (bounded by `deadline`) until every member's own REST endpoint
/// reports `pause` as asked: its HA loop has taken the change in. A member
/// whose endpoint does not answer is named in the message, not a failure
/// (its Patroni is down, or not reachable from here; the pause is in the
/// DCS for it all the same).
async fn members_took_it(
    c: &Cluster,
    pause: bool,
    timeout: Duration,
    deadline: tokio::time::Instant,
) -> String {
    let mut took = Vec::new();
    let mut not = Vec::new();
    for m in &c.members {
        let Some(api) = m.api_url.as_deref() else {
            not.push(format!("{} (no api_url)", m.name));
            continue;
        };
        let mut last;
        loop {
            match request(api, http::Method::GET, "", None, timeout).await {
                Ok((status, body)) if status.is_success() => {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let seen = v["pause"].as_bool().unwrap_or(false);
                    if seen == pause {
                        took.push(m.name.clone());
                        break;
                    }
                    last = format!("its pause is still {seen}");
                }
                Ok((status, _)) => last = format!("HTTP {status}"),
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                not.push(format!("{} ({api}: {last})", m.name));
                break;
            }
            tokio::time::sleep(CONFIRM_EVERY).await;
        }
    }
    let mut msg = format!("taken in by {}", took.join(", "));
    if !not.is_empty() {
        msg.push_str(&format!("; not confirmed by {}", not.join(", ")));
    }
    msg
}

/// The cluster as the first node that answers sees it (for the plan).
pub async fn look(cfg: &HaConfig) -> Result<Seen, HaError> {
    let mut errors = Vec::new();
    for url in &cfg.patroni {
        match cluster(url, cfg.timeout).await {
            Ok(c) => {
                return Ok(Seen {
                    paused: c.pause,
                    leader: c.leader().map(str::to_owned),
                });
            }
            Err(e) => errors.push((url.clone(), e)),
        }
    }
    Err(HaError::Nodes(errors))
}

/// Pause (or resume) Patroni and confirm it with `GET /cluster`. `sent`
/// becomes true once a node accepted the `PATCH`. Ok is the message for
/// the window's report: which node, and what `/cluster` said.
pub async fn set_pause(cfg: &HaConfig, pause: bool, sent: &mut bool) -> Result<String, HaError> {
    let mut errors = Vec::new();
    let body = serde_json::json!({ "pause": pause }).to_string();
    for url in &cfg.patroni {
        match request(
            url,
            http::Method::PATCH,
            "/config",
            Some(body.clone()),
            cfg.timeout,
        )
        .await
        {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, text)) => {
                errors.push((
                    url.clone(),
                    HaError::Status {
                        what: "PATCH /config",
                        status,
                        body: text.trim().to_owned(),
                    },
                ));
                continue;
            }
            Err(e) => {
                errors.push((url.clone(), e));
                continue;
            }
        }
        *sent = true;
        // The pause is in the DCS once PATCH answered; wait (bounded) until
        // this node's view of the cluster shows it.
        let deadline = tokio::time::Instant::now() + cfg.timeout;
        let mut last;
        loop {
            match cluster(url, cfg.timeout).await {
                Ok(c) if c.pause == pause => {
                    let members = members_took_it(&c, pause, cfg.timeout, deadline).await;
                    return Ok(format!(
                        "Patroni {} through {url} (PATCH /config {body}); GET /cluster: {}; {members}",
                        if pause { "paused" } else { "resumed" },
                        c.describe()
                    ));
                }
                Ok(c) => last = c.describe(),
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(CONFIRM_EVERY).await;
        }
        errors.push((
            url.clone(),
            HaError::NotShown {
                pause,
                within: humantime::format_duration(cfg.timeout).to_string(),
                last,
            },
        ));
    }
    Err(HaError::Nodes(errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fake Patroni REST server (not Patroni): answers `PATCH /config`
    /// and `GET /cluster` from one shared `pause` flag, and records every
    /// request line and body.
    async fn fake_patroni() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let me = url.clone();
        tokio::spawn(async move {
            let mut paused = false;
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                // Read the head, then as much body as Content-Length says.
                let (head, body) = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len = text[..i]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len || n == 0 {
                            break (text[..i].to_owned(), text[i + 4..].to_owned());
                        }
                    } else if n == 0 {
                        break (text, String::new());
                    }
                };
                let line = head.lines().next().unwrap_or("").to_owned();
                if line.starts_with("PATCH /config") {
                    paused = body.contains("\"pause\":true");
                }
                log.lock().unwrap().push(format!("{line} {body}"));
                let pause = if paused { ",\"pause\":true" } else { "" };
                let answer = if line.starts_with("GET /cluster") {
                    format!(
                        "{{\"members\":[{{\"name\":\"n1\",\"role\":\"leader\",\"state\":\"running\",\"api_url\":\"{me}/patroni\"}}]{pause}}}"
                    )
                } else if line.starts_with("GET /patroni") {
                    format!("{{\"state\":\"running\"{pause}}}")
                } else {
                    "{}".to_owned()
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                            answer.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        (url, seen)
    }

    fn cfg(urls: Vec<String>) -> HaConfig {
        HaConfig {
            patroni: urls,
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn pause_and_resume_go_to_the_first_node_that_answers() {
        let (url, seen) = fake_patroni().await;
        // Nothing listens on a port just freed.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let c = cfg(vec![dead.clone(), url.clone()]);
        let mut sent = false;
        let msg = set_pause(&c, true, &mut sent).await.unwrap();
        assert!(sent);
        assert!(msg.contains("paused"), "{msg}");
        assert!(msg.contains("pause=true, leader n1"), "{msg}");
        assert!(msg.contains("taken in by n1"), "{msg}");
        assert_eq!(
            look(&c).await.unwrap(),
            Seen {
                paused: true,
                leader: Some("n1".into())
            }
        );
        let msg = set_pause(&c, false, &mut sent).await.unwrap();
        assert!(msg.contains("resumed"), "{msg}");
        let log = seen.lock().unwrap().clone();
        assert_eq!(log[0], "PATCH /config HTTP/1.1 {\"pause\":true}", "{log:?}");
        assert!(log[1].starts_with("GET /cluster"), "{log:?}");
        assert!(log[2].starts_with("GET /patroni"), "{log:?}");
        assert!(
            log.iter()
                .any(|l| l == "PATCH /config HTTP/1.1 {\"pause\":false}"),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn no_node_answering_is_a_clear_error_and_nothing_was_sent() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let mut sent = false;
        let err = set_pause(&cfg(vec![dead.clone()]), true, &mut sent)
            .await
            .unwrap_err()
            .to_string();
        assert!(!sent);
        assert!(err.contains(&dead), "{err}");
        assert!(err.contains("cannot connect"), "{err}");
    }
}
