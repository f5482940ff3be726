//! [`LeaderChannel`]: a gRPC channel to whichever of several controllers
//! leads, for tandemctl (connected eagerly, [`LeaderChannel::connect`]) and
//! agents (connected on first use, [`LeaderChannel::lazy`]).
//!
//! Every call goes to the current controller. A call a follower turns away
//! ([`super::is_not_leader`], told in the response headers before any
//! message) was not taken, so it is sent again: at once to a leader the
//! follower named for the first time in this call; else (no leader named,
//! or the named one was already tried: it is down, or no longer leads)
//! after a wait that doubles from [`FIRST_WAIT`] to [`LONGEST_WAIT`], to the
//! leader named or the next address. That goes on for at most the
//! channel's bound ([`RETRY_FOR`] for tandemctl, [`LAZY_RETRY_FOR`] for
//! agents) and [`MOST_TRIES`] tries, then the last answer is the call's. A
//! call that finds no controller (a transport error, or no answer within
//! the channel's time limit) fails as it is, since it may have been taken,
//! and the next call goes to the next address. Each change of controller
//! is logged once.
//!
//! Why tandemctl waits that long: when the leader dies, the followers name
//! it until its lease runs out and then name none, until one of them takes
//! the lease at its next try (a renewal later) and starts leading. That is
//! up to the lease plus a renewal plus the new leader's start: 15 s + 5 s
//! and a little with the default `[leader]` table, well within
//! [`RETRY_FOR`]. A command given in that time waits for the new leader
//! instead of failing with "try again shortly". Agents keep a short bound:
//! their heartbeat loop asks again anyway, and their shutdown waits for the
//! call in flight.
//!
//! The request body is buffered to be sent again; every Tandem call sends
//! one message, so that is one small buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tonic::body::Body;
use tonic::codegen::{Service, StdError};
use tonic::transport::Channel;
use tracing::{info, warn};

use super::{Answer, Controllers, is_not_leader, leader_of};
use crate::tls::{LiveTls, TlsError, TlsFiles};

/// How long a call followers turn away is retried, in all, on a channel
/// made by [`LeaderChannel::connect`] (tandemctl): a takeover with the
/// default lease (15 s) and renewal (5 s), and a margin.
pub const RETRY_FOR: Duration = Duration::from_secs(30);
/// The same for a channel made by [`LeaderChannel::lazy`] (agents).
pub const LAZY_RETRY_FOR: Duration = Duration::from_secs(3);
/// The first wait before a call turned away is sent again (unless it goes
/// to a leader named for the first time); each next wait is twice as long.
pub const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two tries.
pub const LONGEST_WAIT: Duration = Duration::from_secs(2);
/// The most times one call is sent.
pub const MOST_TRIES: u32 = 40;

type Connecting = Pin<Box<dyn Future<Output = Result<Channel, TlsError>> + Send>>;
type Connect = Box<dyn Fn(String) -> Connecting + Send + Sync>;

/// A channel to the leading controller. Cloning it shares the choice.
#[derive(Clone)]
pub struct LeaderChannel {
    shared: Arc<Shared>,
}

struct Shared {
    connect: Connect,
    /// A time limit for the response's headers (not a stream's messages),
    /// after which the controller counts as unreachable.
    answer_within: Option<Duration>,
    /// How long a call followers turn away is retried, in all.
    retry_for: Duration,
    state: Mutex<State>,
}

struct State {
    controllers: Controllers,
    channel: Channel,
}

/// No controller address was given, or none of them could be reached.
#[derive(Debug, thiserror::Error)]
pub enum NoController {
    #[error("no controller address")]
    NoAddress,
    /// Each address with why it could not be reached, in order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Unreachable(Vec<TlsError>),
}

impl LeaderChannel {
    /// Connect to the first of `addresses` that accepts a TLS connection
    /// (tandemctl). A malformed address fails at once.
    pub async fn connect(addresses: Vec<String>, tls: &TlsFiles) -> Result<Self, NoController> {
        let files = tls.clone();
        let connect: Connect = Box::new(move |url: String| {
            let files = files.clone();
            Box::pin(async move { crate::tls::connect(&url, &files).await })
        });
        let mut controllers = Controllers::new(addresses).ok_or(NoController::NoAddress)?;
        let mut failed = Vec::new();
        for _ in 0..controllers.addresses().len() {
            match connect(controllers.current().to_owned()).await {
                Ok(channel) => {
                    return Ok(Self::new(connect, None, RETRY_FOR, controllers, channel));
                }
                Err(e @ TlsError::Connect { .. }) => failed.push(e),
                Err(e) => return Err(NoController::Unreachable(vec![e])),
            }
            controllers.next(&Answer::Unreachable);
        }
        Err(NoController::Unreachable(failed))
    }

    /// A channel that connects on first use and again after a failure, with
    /// the TLS files in force (agents). A call with no response headers
    /// within `answer_within` counts as unreachable.
    pub fn lazy(
        addresses: Vec<String>,
        tls: Arc<LiveTls>,
        answer_within: Duration,
    ) -> Result<Self, NoController> {
        let controllers = Controllers::new(addresses).ok_or(NoController::NoAddress)?;
        // Every address is checked now, so a typo fails at start.
        for a in controllers.addresses() {
            crate::tls::connect_lazy_live(a, tls.clone())
                .map_err(|e| NoController::Unreachable(vec![e]))?;
        }
        let channel = crate::tls::connect_lazy_live(controllers.current(), tls.clone())
            .map_err(|e| NoController::Unreachable(vec![e]))?;
        let connect: Connect = Box::new(move |url: String| {
            let ready = crate::tls::connect_lazy_live(&url, tls.clone());
            Box::pin(async move { ready })
        });
        Ok(Self::new(
            connect,
            Some(answer_within),
            LAZY_RETRY_FOR,
            controllers,
            channel,
        ))
    }

    fn new(
        connect: Connect,
        answer_within: Option<Duration>,
        retry_for: Duration,
        controllers: Controllers,
        channel: Channel,
    ) -> Self {
        LeaderChannel {
            shared: Arc::new(Shared {
                connect,
                answer_within,
                retry_for,
                state: Mutex::new(State {
                    controllers,
                    channel,
                }),
            }),
        }
    }

    /// The controller calls go to now.
    pub fn current(&self) -> String {
        self.shared.lock().controllers.current().to_owned()
    }

    /// Every address this channel was given.
    pub fn addresses(&self) -> Vec<String> {
        self.shared.lock().controllers.addresses().to_vec()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> (String, Channel) {
        let s = self.lock();
        (s.controllers.current().to_owned(), s.channel.clone())
    }

    /// After `answer` from `from`: move to the next controller (unless
    /// another call already moved), connect to it, and log the change. A
    /// controller that cannot be connected to is passed over, at most once
    /// round the list.
    async fn moved(&self, from: &str, answer: Answer) {
        let mut answer = answer;
        let mut from = from.to_owned();
        let rounds = self.lock().controllers.addresses().len() + 1;
        for _ in 0..rounds {
            let to = {
                let mut s = self.lock();
                if s.controllers.current() != from {
                    return;
                }
                match s.controllers.next(&answer) {
                    Some(to) => to,
                    None => return,
                }
            };
            match &answer {
                Answer::NotLeader(Some(_)) => {
                    info!(controller = %from, leader = %to, "controller {from} is not the leader; following {to}")
                }
                Answer::NotLeader(None) => {
                    info!(controller = %from, next = %to, "controller {from} is not the leader and knows of none; trying {to}")
                }
                Answer::Unreachable | Answer::Answered => {
                    warn!(controller = %from, next = %to, "controller {from} does not answer; trying {to}")
                }
            }
            match (self.connect)(to.clone()).await {
                Ok(channel) => {
                    let mut s = self.lock();
                    if s.controllers.current() == to {
                        s.channel = channel;
                    }
                    return;
                }
                Err(e) => {
                    warn!(controller = %to, error = %e, "cannot connect to controller {to}");
                    answer = Answer::Unreachable;
                    from = to;
                }
            }
        }
    }
}

impl Service<http::Request<Body>> for LeaderChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, StdError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StdError>> {
        // Each call waits for the readiness of the channel it goes to.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes: Bytes = body.collect().await?.to_bytes();
            let until = tokio::time::Instant::now() + shared.retry_for;
            let mut tries = 0;
            let mut wait = FIRST_WAIT;
            // The leaders followers named in this call, each followed at
            // once the first time only.
            let mut named: Vec<String> = Vec::new();
            loop {
                tries += 1;
                let (url, mut channel) = shared.current();
                let request =
                    http::Request::from_parts(parts.clone(), Body::new(Full::new(bytes.clone())));
                let sent = async move {
                    std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                    channel.call(request).await
                };
                let response = match shared.answer_within {
                    Some(limit) => match tokio::time::timeout(limit, sent).await {
                        Ok(r) => r,
                        Err(_) => {
                            shared.moved(&url, Answer::Unreachable).await;
                            return Err(format!(
                                "controller {url} did not answer within {limit:?}"
                            )
                            .into());
                        }
                    },
                    None => sent.await,
                };
                let response = match response {
                    Ok(r) => r,
                    Err(e) => {
                        shared.moved(&url, Answer::Unreachable).await;
                        return Err(e.into());
                    }
                };
                let Some(status) =
                    tonic::Status::from_header_map(response.headers()).filter(is_not_leader)
                else {
                    return Ok(response);
                };
                let leader = leader_of(&status);
                let now = tokio::time::Instant::now();
                if tries >= MOST_TRIES || now >= until {
                    return Ok(response);
                }
                match &leader {
                    Some(l) if !named.contains(l) => named.push(l.clone()),
                    _ => {
                        tokio::time::sleep(wait.min(until - now)).await;
                        wait = (wait * 2).min(LONGEST_WAIT);
                    }
                }
                shared.moved(&url, Answer::NotLeader(leader)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::leader::not_leader;
    use crate::tls::tests::write_certs;

    /// How a fake controller answers one call: as the leader (`OK`), or
    /// as a follower naming a leader (or none).
    #[derive(Clone)]
    enum Reply {
        Lead,
        Follow(Option<String>),
    }

    /// A controller that answers its calls from a script (its last reply
    /// again once the script is spent), in the response headers. It counts
    /// calls.
    #[derive(Clone)]
    struct Fake {
        script: Arc<Vec<Reply>>,
        calls: Arc<AtomicUsize>,
    }

    impl tonic::server::NamedService for Fake {
        const NAME: &'static str = "tandem.v1.Controller";
    }

    impl Service<http::Request<Body>> for Fake {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let reply = self.script[n.min(self.script.len() - 1)].clone();
            Box::pin(async move {
                // The body arrives whole on every attempt.
                let body = request.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"\0\0\0\0\x02hi");
                Ok(match reply {
                    Reply::Lead => tonic::Status::ok("").into_http(),
                    Reply::Follow(leader) => not_leader(leader.as_deref()).into_http(),
                })
            })
        }
    }

    async fn serve(files: &TlsFiles, fake: Fake) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let incoming = crate::tls::incoming(listener, LiveTls::load(files.clone()).unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(fake)
                .serve_with_incoming(incoming),
        );
        url
    }

    fn fake(leads: bool, leader: Option<&str>) -> Fake {
        scripted(vec![if leads {
            Reply::Lead
        } else {
            Reply::Follow(leader.map(str::to_owned))
        }])
    }

    fn scripted(script: Vec<Reply>) -> Fake {
        Fake {
            script: Arc::new(script),
            calls: Arc::default(),
        }
    }

    async fn call(channel: &mut LeaderChannel) -> tonic::Status {
        let request = http::Request::builder()
            .uri("http://controller/tandem.v1.Controller/ListAgents")
            .header("content-type", "application/grpc")
            .body(Body::new(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi"))))
            .unwrap();
        let response = channel.call(request).await.unwrap();
        tonic::Status::from_header_map(response.headers()).unwrap()
    }

    /// A dead address is passed over at connect; a follower's call is
    /// sent again to the leader it names, and calls stay there.
    #[tokio::test]
    async fn a_call_turned_away_goes_to_the_named_leader() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        let leader = fake(true, None);
        let leader_url = serve(&files, leader.clone()).await;
        let follower = fake(false, Some(&leader_url));
        let follower_url = serve(&files, follower.clone()).await;
        let dead = "https://127.0.0.1:1".to_owned();
        let mut channel = LeaderChannel::connect(vec![dead, follower_url.clone()], &files)
            .await
            .unwrap();
        assert_eq!(channel.current(), follower_url);
        assert_eq!(call(&mut channel).await.code(), tonic::Code::Ok);
        assert_eq!(channel.current(), leader_url);
        assert_eq!(call(&mut channel).await.code(), tonic::Code::Ok);
        assert_eq!(follower.calls.load(Ordering::SeqCst), 1);
        assert_eq!(leader.calls.load(Ordering::SeqCst), 2);
    }

    /// With no leader anywhere, a call is tried for the channel's bound,
    /// round the addresses, waiting longer each time, and ends with the
    /// follower's answer.
    #[tokio::test]
    async fn with_no_leader_a_call_ends_with_the_followers_answer() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        let (a, b) = (fake(false, None), fake(false, None));
        let urls = vec![
            serve(&files, a.clone()).await,
            serve(&files, b.clone()).await,
        ];
        let mut channel = LeaderChannel::connect(urls, &files).await.unwrap();
        let bound = Duration::from_millis(1500);
        Arc::get_mut(&mut channel.shared).unwrap().retry_for = bound;
        let started = std::time::Instant::now();
        let status = call(&mut channel).await;
        assert!(crate::leader::is_not_leader(&status), "{status:?}");
        assert!(status.message().contains("try again shortly"), "{status:?}");
        assert!(started.elapsed() >= bound, "{:?}", started.elapsed());
        // Waits of 0.1, 0.2, 0.4 and 0.8 s: five tries fit in the bound.
        let calls = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
        assert_eq!(calls, 5);
        assert!(a.calls.load(Ordering::SeqCst) >= 1 && b.calls.load(Ordering::SeqCst) >= 1);
    }

    /// A takeover as a client sees it: the follower it asks names the dead
    /// leader (which refuses connections), then, the lease run out, none;
    /// the other follower then takes the lease. The call waits it out and
    /// is taken once, by the new leader.
    #[tokio::test]
    async fn a_call_waits_for_a_takeover_and_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        let dead = "https://127.0.0.1:1".to_owned();
        let named = |l: &str| Reply::Follow(Some(l.to_owned()));
        let a = scripted(vec![
            named(&dead),
            named(&dead),
            named(&dead),
            named(&dead),
            Reply::Follow(None),
        ]);
        let b = scripted(vec![Reply::Follow(None), Reply::Lead]);
        let a_url = serve(&files, a.clone()).await;
        let b_url = serve(&files, b.clone()).await;
        let mut channel = LeaderChannel::connect(vec![a_url, b_url.clone()], &files)
            .await
            .unwrap();
        assert_eq!(call(&mut channel).await.code(), tonic::Code::Ok);
        assert_eq!(channel.current(), b_url);
        // `a` named the dead leader four times, then none; `b` knew of none
        // either at first, so the call went round to `a` once more, then
        // back to `b`, which led by then and took it.
        assert_eq!(a.calls.load(Ordering::SeqCst), 6);
        assert_eq!(b.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_reachable_address_names_each() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_certs(dir.path());
        let e = LeaderChannel::connect(
            vec!["https://127.0.0.1:1".into(), "https://127.0.0.1:2".into()],
            &files,
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("127.0.0.1:1") && e.contains("127.0.0.1:2"),
            "{e}"
        );
    }
}
