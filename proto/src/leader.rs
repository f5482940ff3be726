//! Which controller leads, on the wire: a follower answers `Unavailable`
//! with "not the leader; the leader is URL" and the URL in the
//! `tandem-leader` metadata, which tandemctl and the agents follow.

/// The gRPC metadata key carrying the leader's URL.
pub const LEADER_KEY: &str = "tandem-leader";

/// A follower's answer to any call.
pub fn not_leader(leader: Option<&str>) -> tonic::Status {
    match leader {
        Some(url) => {
            let mut s = tonic::Status::unavailable(format!("not the leader; the leader is {url}"));
            if let Ok(v) = url.parse() {
                s.metadata_mut().insert(LEADER_KEY, v);
            }
            s
        }
        None => tonic::Status::unavailable(
            "not the leader, and no controller leads at the moment (a takeover takes up to the lease length); try again shortly",
        ),
    }
}

/// The leader's URL a follower named, if this is such an answer.
pub fn leader_of(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    status
        .metadata()
        .get(LEADER_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether this is a follower's answer.
pub fn is_not_leader(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().starts_with("not the leader")
}

/// A comma-separated list of controller URLs.
pub fn parse_addresses(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}
