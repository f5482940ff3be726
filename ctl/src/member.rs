//! The member spec `NAME[=AGENT][@HOST]` that `set add` and `set change`
//! take, parsed as clap reads the flags.

use tandem_proto::identity::validate_name;
use tandem_proto::pb;

/// Parse a member spec: `NAME`, `NAME=AGENT`, `NAME@HOST` or
/// `NAME=AGENT@HOST`. What is left out is sent empty: for a new member the
/// controller takes the member's name as the agent and the host of the
/// agent's address as the host; for `--change-member` it keeps the value.
pub fn parse_member(spec: &str) -> Result<pb::MemberDecl, String> {
    let shape = "expected NAME[=AGENT][@HOST], e.g. db2=agent-db2@db2.example.net";
    let (left, host) = match spec.split_once('@') {
        Some((l, h)) => (l, Some(h)),
        None => (spec, None),
    };
    let (name, agent) = match left.split_once('=') {
        Some((n, a)) => (n, Some(a)),
        None => (left, None),
    };
    let name_ok = |what: &str, v: &str| {
        validate_name(v).map_err(|e| format!("member `{spec}`: {what}: {e}; {shape}"))
    };
    name_ok("member name", name)?;
    if let Some(a) = agent {
        name_ok("agent name", a)?;
    }
    if let Some(h) = host
        && (h.is_empty() || h.contains(['@', '=']) || h.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "member `{spec}`: bad host `{h}` (a host name or address, without spaces, '@' or '='); {shape}"
        ));
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
            let e = parse_member(spec).unwrap_err();
            assert!(e.contains(says), "{spec:?}: {e}");
            assert!(e.contains("NAME[=AGENT][@HOST]"), "{spec:?}: {e}");
        }
    }
}
