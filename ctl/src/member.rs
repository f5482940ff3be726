//! The member spec `NAME[=AGENT][@HOST]` that `set add` and `set change`
//! take, parsed as clap reads the flags.

use tandem_proto::identity::{IdentityError, validate_name};
use tandem_proto::pb;

/// A member spec that does not parse.
///
/// Messages are whole sentences that embed their cause (as
/// [`IdentityError`]'s do) and end with the shape expected: clap prints
/// them alone, without walking `source()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberSpecError {
    #[error("member `{spec}`: {what}: {error}; {SHAPE}")]
    BadName {
        spec: String,
        /// `member name` or `agent name`.
        what: &'static str,
        error: IdentityError,
    },
    #[error(
        "member `{spec}`: bad host `{host}` (a host name or address, without spaces, '@' or '='); {SHAPE}"
    )]
    BadHost { spec: String, host: String },
}

const SHAPE: &str = "expected NAME[=AGENT][@HOST], e.g. db2=agent-db2@db2.example.net";

/// Parse a member spec: `NAME`, `NAME=AGENT`, `NAME@HOST` or
/// `NAME=AGENT@HOST`. What is left out is sent empty: for a new member the
/// controller takes the member's name as the agent and the host of the
/// agent's address as the host; for `--change-member` it keeps the value.
pub fn parse_member(spec: &str) -> Result<pb::MemberDecl, MemberSpecError> {
    let (left, host) = match spec.split_once('@') {
        Some((l, h)) => (l, Some(h)),
        None => (spec, None),
    };
    let (name, agent) = match left.split_once('=') {
        Some((n, a)) => (n, Some(a)),
        None => (left, None),
    };
    let name_ok = |what: &'static str, v: &str| {
        validate_name(v).map_err(|error| MemberSpecError::BadName {
            spec: spec.to_owned(),
            what,
            error,
        })
    };
    name_ok("member name", name)?;
    if let Some(a) = agent {
        name_ok("agent name", a)?;
    }
    if let Some(h) = host
        && (h.is_empty() || h.contains(['@', '=']) || h.chars().any(char::is_whitespace))
    {
        return Err(MemberSpecError::BadHost {
            spec: spec.to_owned(),
            host: h.to_owned(),
        });
    }
    Ok(pb::MemberDecl {
        name: name.to_owned(),
        agent: agent.unwrap_or_default().to_owned(),
        host: host.unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, agent: &str, host: &str) -> pb::MemberDecl {
        pb::MemberDecl {
            name: name.into(),
            agent: agent.into(),
            host: host.into(),
        }
    }

    #[test]
    fn member_specs_parse() {
        assert_eq!(parse_member("db1"), Ok(m("db1", "", "")));
        assert_eq!(parse_member("db2=a-db2"), Ok(m("db2", "a-db2", "")));
        assert_eq!(parse_member("db2@10.0.0.5"), Ok(m("db2", "", "10.0.0.5")));
        assert_eq!(
            parse_member("db2=a-db2@db2.example.net"),
            Ok(m("db2", "a-db2", "db2.example.net"))
        );
    }

    #[test]
    fn malformed_member_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("", "member name"),
            ("=a", "member name"),
            ("db1=", "agent name"),
            ("db1=a=b", "agent name"),
            ("db 1", "member name"),
            ("db1@", "bad host"),
            ("db1@h@i", "bad host"),
            ("db1@h=x", "bad host"),
        ] {
            let e = parse_member(spec).unwrap_err().to_string();
            assert!(e.contains(says), "{spec:?}: {e}");
            assert!(e.contains("NAME[=AGENT][@HOST]"), "{spec:?}: {e}");
        }
    }
}
