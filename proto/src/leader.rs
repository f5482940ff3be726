//! Several controllers, one leader: how a client finds the one that leads.
//!
//! Controllers share one store and exactly one of them leads (it holds a
//! lease in the store). A follower answers mutating calls, and agents'
//! registrations and heartbeats, with [`not_leader`]: `Unavailable`, a
//! message a person can read, and the leader's URL in the metadata key
//! [`LEADER_KEY`] when it knows one. Clients (tandemctl, agents) are given a
//! list of controller addresses ([`parse_addresses`]) and go to the leader:
//! [`Controllers`] is the pure choice of where the next call goes, and
//! [`channel::LeaderChannel`] a gRPC channel that makes that choice for every
//! call, retrying a call a follower turned away on the leader it named.

pub mod channel;

pub use channel::LeaderChannel;

/// A client of the leading controller, traced: what tandemctl and the
/// agents call the controller with.
pub type LeaderClient = crate::pb::controller_client::ControllerClient<
    tonic::service::interceptor::InterceptedService<
        LeaderChannel,
        crate::propagation::InjectTraceContext,
    >,
>;

/// The gRPC metadata key (ASCII) carrying the leader's URL, e.g.
/// `https://10.0.0.2:7700`.
pub const LEADER_KEY: &str = "tandem-leader";

/// How every "not the leader" message starts.
const NOT_LEADER: &str = "not the leader";

/// A follower's answer to a call only the leader may take: `Unavailable`,
/// naming the leader (message and metadata) when it knows one.
pub fn not_leader(leader: Option<&str>) -> tonic::Status {
    let Some(url) = leader else {
        return tonic::Status::unavailable(format!(
            "{NOT_LEADER}, and no controller leads at the moment (a takeover takes up to the lease length); try again shortly"
        ));
    };
    let mut status = tonic::Status::unavailable(format!("{NOT_LEADER}; the leader is {url}"));
    // A URL that is not a valid ASCII header value is left out of the
    // metadata; the message still names it for a person.
    if let Ok(value) = url.parse() {
        status.metadata_mut().insert(LEADER_KEY, value);
    }
    status
}

/// Whether `status` is a follower's "not the leader" answer.
pub fn is_not_leader(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().starts_with(NOT_LEADER)
}

/// The leader's URL a follower named in `status`, if it named one.
pub fn leader_of(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let url = status.metadata().get(LEADER_KEY)?.to_str().ok()?.trim();
    (!url.is_empty()).then(|| url.to_owned())
}

/// A comma-separated list of controller addresses
/// (`https://c1:7700,https://c2:7700`), each trimmed, empty ones dropped.
pub fn parse_addresses(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The same address, written with or without `https://` and a final `/`.
fn same_address(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim().trim_end_matches('/');
        s.strip_prefix("https://").unwrap_or(s).to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

/// What one call to a controller came to, as far as choosing the next
/// controller goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It answered (yes or no): the next call goes there again.
    Answered,
    /// It did not answer (no connection, a broken one, no answer in time).
    Unreachable,
    /// A follower turned the call away, naming the leader when it knows one.
    NotLeader(Option<String>),
}

impl Answer {
    /// The answer a failed call's status means: a follower's "not the
    /// leader", a controller that could not be reached (`Unavailable`
    /// without that message, or a connection reset: `Cancelled`, `Unknown`,
    /// `DeadlineExceeded`), or any other answer.
    pub fn of_status(status: &tonic::Status) -> Answer {
        use tonic::Code::*;
        if is_not_leader(status) {
            Answer::NotLeader(leader_of(status))
        } else if matches!(
            status.code(),
            Unavailable | Cancelled | Unknown | DeadlineExceeded
        ) {
            Answer::Unreachable
        } else {
            Answer::Answered
        }
    }
}

/// The controller addresses a client was given and the one its calls go to
/// now. Pure: [`Controllers::next`] says where the next call goes after an
/// answer; connecting there is the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controllers {
    addresses: Vec<String>,
    /// The address in the list the client is at, or was at last (a leader
    /// named by a follower may be outside the list): the next one after it
    /// is tried when the current one fails.
    index: usize,
    current: String,
}

impl Controllers {
    /// Starting at the first address; `None` when there is none.
    pub fn new(addresses: Vec<String>) -> Option<Controllers> {
        let current = addresses.first()?.clone();
        Some(Controllers {
            addresses,
            index: 0,
            current,
        })
    }

    /// Where calls go now.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// Every address the client was given, in order.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Where calls go after `answer` from the current controller: the
    /// leader a follower named; else, when it did not answer or named no
    /// leader (or named itself), the next address in the list (round the
    /// end). `Some(address)` when that is a change.
    pub fn next(&mut self, answer: &Answer) -> Option<String> {
        let named = match answer {
            Answer::Answered => return None,
            Answer::NotLeader(Some(leader)) if !same_address(leader, &self.current) => {
                Some(leader.clone())
            }
            Answer::NotLeader(_) | Answer::Unreachable => None,
        };
        let to = match named {
            Some(leader) => {
                if let Some(i) = self.addresses.iter().position(|a| same_address(a, &leader)) {
                    self.index = i;
                }
                leader
            }
            None => {
                // Back at the current list entry when the client had
                // followed a leader outside the list; else the next one.
                if same_address(&self.addresses[self.index], &self.current) {
                    self.index = (self.index + 1) % self.addresses.len();
                }
                self.addresses[self.index].clone()
            }
        };
        if same_address(&to, &self.current) {
            return None;
        }
        self.current = to.clone();
        Some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Controllers {
        Controllers::new(parse_addresses(s)).unwrap()
    }

    #[test]
    fn a_named_leader_goes_round_trip_through_a_status() {
        let s = not_leader(Some("https://10.0.0.2:7700"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.message(),
            "not the leader; the leader is https://10.0.0.2:7700"
        );
        assert!(is_not_leader(&s));
        assert_eq!(leader_of(&s).as_deref(), Some("https://10.0.0.2:7700"));
        // Through the wire's headers, as a client receives it.
        let mut headers = http::HeaderMap::new();
        s.add_header(&mut headers).unwrap();
        let back = tonic::Status::from_header_map(&headers).unwrap();
        assert!(is_not_leader(&back));
        assert_eq!(leader_of(&back).as_deref(), Some("https://10.0.0.2:7700"));
    }

    #[test]
    fn no_leader_says_to_try_again_and_names_none() {
        let s = not_leader(None);
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(is_not_leader(&s));
        assert_eq!(leader_of(&s), None);
        assert!(s.message().contains("try again shortly"), "{}", s.message());
        assert!(s.metadata().get(LEADER_KEY).is_none());
    }

    #[test]
    fn other_statuses_are_not_a_followers_answer() {
        let mut s = tonic::Status::unavailable("cannot reach agent `db1`");
        assert!(!is_not_leader(&s));
        s.metadata_mut()
            .insert(LEADER_KEY, "https://c2:7700".parse().unwrap());
        // The metadata counts only on an Unavailable status.
        assert_eq!(leader_of(&s).as_deref(), Some("https://c2:7700"));
        let mut other = tonic::Status::permission_denied("not the leader of anything");
        other
            .metadata_mut()
            .insert(LEADER_KEY, "https://c2:7700".parse().unwrap());
        assert!(!is_not_leader(&other));
        assert_eq!(leader_of(&other), None);
    }

    #[test]
    fn an_address_list_is_trimmed_and_empties_dropped() {
        assert_eq!(
            parse_addresses(" https://c1:7700 ,,https://c2:7700, "),
            ["https://c1:7700", "https://c2:7700"]
        );
        assert_eq!(parse_addresses("https://c1:7700"), ["https://c1:7700"]);
        assert!(parse_addresses(" , ").is_empty());
        assert!(Controllers::new(parse_addresses("")).is_none());
    }

    #[test]
    fn statuses_become_answers() {
        use tonic::Status;
        assert_eq!(
            Answer::of_status(&not_leader(Some("https://c2:7700"))),
            Answer::NotLeader(Some("https://c2:7700".into()))
        );
        assert_eq!(
            Answer::of_status(&not_leader(None)),
            Answer::NotLeader(None)
        );
        assert_eq!(
            Answer::of_status(&Status::unavailable("connection refused")),
            Answer::Unreachable
        );
        assert_eq!(
            Answer::of_status(&Status::cancelled("")),
            Answer::Unreachable
        );
        assert_eq!(
            Answer::of_status(&Status::failed_precondition("not in the inventory")),
            Answer::Answered
        );
    }

    #[test]
    fn an_answer_keeps_the_client_where_it_is() {
        let mut c = list("https://c1:7700,https://c2:7700");
        assert_eq!(c.next(&Answer::Answered), None);
        assert_eq!(c.current(), "https://c1:7700");
    }

    #[test]
    fn a_named_leader_is_followed_even_outside_the_list() {
        let mut c = list("https://c1:7700,https://c2:7700,https://c3:7700");
        assert_eq!(
            c.next(&Answer::NotLeader(Some("https://c3:7700".into())))
                .as_deref(),
            Some("https://c3:7700")
        );
        // c3 is in the list: when it fails, the one after it is next.
        assert_eq!(
            c.next(&Answer::Unreachable).as_deref(),
            Some("https://c1:7700")
        );

        let mut c = list("https://c1:7700,https://c2:7700");
        assert_eq!(
            c.next(&Answer::NotLeader(Some("https://c9:7700".into())))
                .as_deref(),
            Some("https://c9:7700")
        );
        // A leader outside the list that fails: back to the list, after c1.
        assert_eq!(
            c.next(&Answer::Unreachable).as_deref(),
            Some("https://c1:7700")
        );
        assert_eq!(
            c.next(&Answer::Unreachable).as_deref(),
            Some("https://c2:7700")
        );
    }

    #[test]
    fn no_answer_or_no_leader_goes_round_the_list() {
        let mut c = list("https://c1:7700,https://c2:7700,https://c3:7700");
        assert_eq!(
            c.next(&Answer::Unreachable).as_deref(),
            Some("https://c2:7700")
        );
        assert_eq!(
            c.next(&Answer::NotLeader(None)).as_deref(),
            Some("https://c3:7700")
        );
        assert_eq!(
            c.next(&Answer::Unreachable).as_deref(),
            Some("https://c1:7700")
        );
        // A follower that names itself is no leader to follow.
        assert_eq!(
            c.next(&Answer::NotLeader(Some("c1:7700/".into())))
                .as_deref(),
            Some("https://c2:7700")
        );
    }

    #[test]
    fn one_address_is_never_left() {
        let mut c = list("https://c1:7700");
        assert_eq!(c.next(&Answer::Unreachable), None);
        assert_eq!(c.next(&Answer::NotLeader(None)), None);
        assert_eq!(c.current(), "https://c1:7700");
        // A leader it names is still followed.
        assert_eq!(
            c.next(&Answer::NotLeader(Some("https://c2:7700".into())))
                .as_deref(),
            Some("https://c2:7700")
        );
    }
}
