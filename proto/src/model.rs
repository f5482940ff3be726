//! Domain types that travel over the wire, and their conversions.
//!
//! Prost types (`crate::pb`) stop at the gRPC layer: handlers convert what
//! they receive into these types with `TryFrom`, which fails with a typed
//! [`ModelError`] that becomes `invalid_argument`, and convert back with `From`
//! when they answer (STYLE 3).

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;

use crate::pb;

/// A value received over the wire that does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error(
        "field `{field}`: {value:?} is not a log position (expected PostgreSQL's form `X/Y` in hex, e.g. `0/3000060`)"
    )]
    Lsn { field: &'static str, value: String },
    #[error("field `{field}`: unknown enum value {value}")]
    Enum { field: &'static str, value: i32 },
    #[error("field `{field}` is required")]
    Missing { field: &'static str },
    #[error("field `{field}`: timestamp out of range")]
    Timestamp { field: &'static str },
    #[error("field `{field}`: {why}")]
    Invalid { field: &'static str, why: String },
}

impl From<ModelError> for tonic::Status {
    fn from(e: ModelError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// The `member` of what `ListBackups` lists from the remote store (a
/// backup, the set's WAL): any member with the same store can use it.
pub const REMOTE_MEMBER: &str = "(remote)";

/// A position in the write-ahead log (PostgreSQL's `pg_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (hi, lo) = s.split_once('/').ok_or(())?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| ())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| ())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|()| serde::de::Error::custom(format!("{s:?} is not a log position")))
    }
}

/// An optional LSN on the wire is a string, empty when absent.
fn lsn_from_wire(field: &'static str, value: &str) -> Result<Option<Lsn>, ModelError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|()| ModelError::Lsn {
        field,
        value: value.to_owned(),
    })
}

fn lsn_to_wire(lsn: Option<Lsn>) -> String {
    lsn.map(|l| l.to_string()).unwrap_or_default()
}

/// A member's role in its set, as observed on the server itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
    Unknown,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        })
    }
}

impl TryFrom<i32> for Role {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        match pb::Role::try_from(v) {
            Ok(pb::Role::Primary) => Ok(Role::Primary),
            Ok(pb::Role::Standby) => Ok(Role::Standby),
            Ok(pb::Role::Unknown | pb::Role::Unspecified) => Ok(Role::Unknown),
            Err(_) => Err(ModelError::Enum {
                field: "role",
                value: v,
            }),
        }
    }
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Primary => pb::Role::Primary,
            Role::Standby => pb::Role::Standby,
            Role::Unknown => pb::Role::Unknown,
        }
    }
}

/// Whether the member's database server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    Running,
    Stopped,
    Missing,
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerState::Running => "running",
            ServerState::Stopped => "stopped",
            ServerState::Missing => "missing",
        })
    }
}

impl TryFrom<i32> for ServerState {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        match pb::ServerState::try_from(v) {
            Ok(pb::ServerState::Running) => Ok(ServerState::Running),
            Ok(pb::ServerState::Stopped | pb::ServerState::Unspecified) => Ok(ServerState::Stopped),
            Ok(pb::ServerState::Missing) => Ok(ServerState::Missing),
            Err(_) => Err(ModelError::Enum {
                field: "server_state",
                value: v,
            }),
        }
    }
}

impl From<ServerState> for pb::ServerState {
    fn from(s: ServerState) -> Self {
        match s {
            ServerState::Running => pb::ServerState::Running,
            ServerState::Stopped => pb::ServerState::Stopped,
            ServerState::Missing => pb::ServerState::Missing,
        }
    }
}

/// How a copy-making order copies a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestMode {
    /// The standby keeps streaming; the copy comes from a non-exclusive
    /// base backup on the standby and the WAL it needs.
    Online,
    /// The standby is stopped for the copy and started again after it.
    Cold,
}

impl TestMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TestMode::Online => "online",
            TestMode::Cold => "cold",
        }
    }

    /// An optional mode on the wire (unspecified: none), refused by `field`
    /// when the value is unknown.
    pub fn from_wire(field: &'static str, v: i32) -> Result<Option<TestMode>, ModelError> {
        match pb::TestMode::try_from(v) {
            Ok(pb::TestMode::Unspecified) => Ok(None),
            Ok(pb::TestMode::Online) => Ok(Some(TestMode::Online)),
            Ok(pb::TestMode::Cold) => Ok(Some(TestMode::Cold)),
            Err(_) => Err(ModelError::Enum { field, value: v }),
        }
    }

    /// The wire value of an optional mode.
    pub fn to_wire(m: Option<TestMode>) -> i32 {
        (match m {
            None => pb::TestMode::Unspecified,
            Some(TestMode::Online) => pb::TestMode::Online,
            Some(TestMode::Cold) => pb::TestMode::Cold,
        }) as i32
    }
}

impl fmt::Display for TestMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode that is neither `online` nor `cold`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown test mode `{0}`: use online (the standby keeps streaming; the copy comes from a non-exclusive base backup and its WAL) or cold (the standby is stopped for the copy)"
)]
pub struct UnknownTestMode(pub String);

impl FromStr for TestMode {
    type Err = UnknownTestMode;
    fn from_str(s: &str) -> Result<Self, UnknownTestMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "online" => Ok(TestMode::Online),
            "cold" => Ok(TestMode::Cold),
            _ => Err(UnknownTestMode(s.to_owned())),
        }
    }
}

/// One row of a primary's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicationPeer {
    pub application_name: String,
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    /// 0: not a synchronous candidate.
    pub sync_priority: i32,
}

/// What an agent reads from its local instance (DESIGN "The engine boundary").
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    pub engine: String,
    pub server_version: String,
    pub server_state: ServerState,
    pub role: Role,
    pub data_dir: String,
    pub data_dir_bytes: u64,
    pub current_lsn: Option<Lsn>,
    pub received_lsn: Option<Lsn>,
    pub replayed_lsn: Option<Lsn>,
    pub wal_receiver_status: Option<String>,
    pub fully_received: bool,
    pub replay_lag_bytes: u64,
    pub problem: Option<String>,
    pub observed_at: Timestamp,
    /// Primary: `synchronous_standby_names` (`Some("")`: commits wait for
    /// no standby); `None` on a standby or when it could not be read.
    #[serde(default)]
    pub synchronous_standby_names: Option<String>,
    /// Primary: the rows of `pg_stat_replication`.
    #[serde(default)]
    pub replication: Vec<ReplicationPeer>,
    /// Standby: the application name its WAL receiver gives the primary.
    #[serde(default)]
    pub wal_receiver_application_name: Option<String>,
    /// The set's only member by nature (an engine without physical
    /// replication): testdb tests it itself, while it serves.
    #[serde(default)]
    pub single_member: bool,
}

impl Facts {
    /// Facts for an instance that could not be asked, with the reason.
    pub fn unreachable(engine: &str, data_dir: &str, state: ServerState, problem: String) -> Facts {
        Facts {
            engine: engine.to_owned(),
            server_version: String::new(),
            server_state: state,
            role: Role::Unknown,
            data_dir: data_dir.to_owned(),
            data_dir_bytes: 0,
            current_lsn: None,
            received_lsn: None,
            replayed_lsn: None,
            wal_receiver_status: None,
            fully_received: false,
            replay_lag_bytes: 0,
            problem: Some(problem),
            observed_at: Timestamp::now(),
            synchronous_standby_names: None,
            replication: vec![],
            wal_receiver_application_name: None,
            single_member: false,
        }
    }

    /// A short word for tables: "streaming", "running", "stopped", ...
    pub fn state_word(&self) -> String {
        match (self.server_state, self.role) {
            (ServerState::Running, Role::Standby) => match &self.wal_receiver_status {
                Some(s) => s.clone(),
                None => "not streaming".to_owned(),
            },
            (ServerState::Running, _) => "running".to_owned(),
            (s, _) => s.to_string(),
        }
    }

    /// Is this member healthy for its role (running; a standby streams)?
    pub fn healthy(&self) -> bool {
        match (self.server_state, self.role) {
            (ServerState::Running, Role::Primary) => true,
            (ServerState::Running, Role::Standby) => self.fully_received,
            _ => false,
        }
    }
}

pub fn timestamp_from_wire(
    field: &'static str,
    t: Option<prost_types::Timestamp>,
) -> Result<Option<Timestamp>, ModelError> {
    match t {
        None => Ok(None),
        Some(t) => Timestamp::new(t.seconds, t.nanos)
            .map(Some)
            .map_err(|_| ModelError::Timestamp { field }),
    }
}

pub fn timestamp_to_wire(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl TryFrom<pb::InstanceFacts> for Facts {
    type Error = ModelError;
    fn try_from(f: pb::InstanceFacts) -> Result<Self, ModelError> {
        Ok(Facts {
            server_state: ServerState::try_from(f.server_state)?,
            role: Role::try_from(f.role)?,
            current_lsn: lsn_from_wire("current_lsn", &f.current_lsn)?,
            received_lsn: lsn_from_wire("received_lsn", &f.received_lsn)?,
            replayed_lsn: lsn_from_wire("replayed_lsn", &f.replayed_lsn)?,
            observed_at: timestamp_from_wire("observed_at", f.observed_at)?.ok_or(
                ModelError::Missing {
                    field: "observed_at",
                },
            )?,
            engine: f.engine,
            server_version: f.server_version,
            data_dir: f.data_dir,
            data_dir_bytes: f.data_dir_bytes,
            wal_receiver_status: non_empty(f.wal_receiver_status),
            fully_received: f.fully_received,
            replay_lag_bytes: f.replay_lag_bytes,
            problem: non_empty(f.problem),
            synchronous_standby_names: f.synchronous_standby_names,
            replication: f
                .replication
                .into_iter()
                .map(|p| ReplicationPeer {
                    application_name: p.application_name,
                    state: p.state,
                    sync_state: p.sync_state,
                    sync_priority: p.sync_priority,
                })
                .collect(),
            wal_receiver_application_name: non_empty(f.wal_receiver_application_name),
            single_member: f.single_member,
        })
    }
}

impl From<Facts> for pb::InstanceFacts {
    fn from(f: Facts) -> Self {
        pb::InstanceFacts {
            engine: f.engine,
            server_version: f.server_version,
            server_state: pb::ServerState::from(f.server_state) as i32,
            role: pb::Role::from(f.role) as i32,
            data_dir: f.data_dir,
            data_dir_bytes: f.data_dir_bytes,
            current_lsn: lsn_to_wire(f.current_lsn),
            received_lsn: lsn_to_wire(f.received_lsn),
            replayed_lsn: lsn_to_wire(f.replayed_lsn),
            wal_receiver_status: f.wal_receiver_status.unwrap_or_default(),
            fully_received: f.fully_received,
            replay_lag_bytes: f.replay_lag_bytes,
            problem: f.problem.unwrap_or_default(),
            observed_at: Some(timestamp_to_wire(f.observed_at)),
            synchronous_standby_names: f.synchronous_standby_names,
            replication: f
                .replication
                .into_iter()
                .map(|p| pb::ReplicationPeer {
                    application_name: p.application_name,
                    state: p.state,
                    sync_state: p.sync_state,
                    sync_priority: p.sync_priority,
                })
                .collect(),
            wal_receiver_application_name: f.wal_receiver_application_name.unwrap_or_default(),
            single_member: f.single_member,
        }
    }
}

/// An agent as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    NeverSeen,
    Online,
    Offline,
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentState::NeverSeen => "never_seen",
            AgentState::Online => "online",
            AgentState::Offline => "offline",
        })
    }
}

impl TryFrom<i32> for AgentState {
    type Error = ModelError;
    fn try_from(v: i32) -> Result<Self, ModelError> {
        match pb::AgentState::try_from(v) {
            Ok(pb::AgentState::NeverSeen | pb::AgentState::Unspecified) => {
                Ok(AgentState::NeverSeen)
            }
            Ok(pb::AgentState::Online) => Ok(AgentState::Online),
            Ok(pb::AgentState::Offline) => Ok(AgentState::Offline),
            Err(_) => Err(ModelError::Enum {
                field: "agent_state",
                value: v,
            }),
        }
    }
}

impl From<AgentState> for pb::AgentState {
    fn from(s: AgentState) -> Self {
        match s {
            AgentState::NeverSeen => pb::AgentState::NeverSeen,
            AgentState::Online => pb::AgentState::Online,
            AgentState::Offline => pb::AgentState::Offline,
        }
    }
}

/// A registration as received by the controller, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub agent: String,
    pub address: String,
    pub set: String,
    pub member: String,
    pub agent_version: String,
    pub facts: Facts,
    /// When the certificate the agent presents expires (absent from agents
    /// that do not say).
    pub cert_not_after: Option<Timestamp>,
}

impl TryFrom<pb::RegisterRequest> for Registration {
    type Error = ModelError;
    fn try_from(r: pb::RegisterRequest) -> Result<Self, ModelError> {
        for (field, v) in [
            ("agent", &r.agent),
            ("address", &r.address),
            ("set", &r.set),
            ("member", &r.member),
        ] {
            if v.is_empty() {
                return Err(ModelError::Missing { field });
            }
        }
        Ok(Registration {
            facts: r
                .facts
                .ok_or(ModelError::Missing { field: "facts" })?
                .try_into()?,
            cert_not_after: timestamp_from_wire("cert_not_after", r.cert_not_after)?,
            agent: r.agent,
            address: r.address,
            set: r.set,
            member: r.member,
            agent_version: r.agent_version,
        })
    }
}

/// Finding kinds read from a stopped copy's own files: `lost_rows` (index
/// entries that point at rows the table no longer has),
/// `truncated_relation`, `missing_segment`, `unreadable_page`. A running
/// server's files change under a reader, so these cannot be re-checked
/// online, and no REINDEX brings lost rows back.
pub const FILE_KINDS: [&str; 4] = [
    "lost_rows",
    "truncated_relation",
    "missing_segment",
    "unreadable_page",
];

impl Finding {
    /// Read from a stopped copy's files (see [`FILE_KINDS`]).
    pub fn is_from_files(&self) -> bool {
        FILE_KINDS.contains(&self.kind.as_str())
    }
}

/// A heartbeat as received by the controller, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub agent: String,
    pub facts: Facts,
    /// The operation running on the agent.
    pub running_operation_id: Option<String>,
    /// As in [`Registration::cert_not_after`].
    pub cert_not_after: Option<Timestamp>,
}

impl TryFrom<pb::HeartbeatRequest> for Heartbeat {
    type Error = ModelError;
    fn try_from(h: pb::HeartbeatRequest) -> Result<Self, ModelError> {
        if h.agent.is_empty() {
            return Err(ModelError::Missing { field: "agent" });
        }
        Ok(Heartbeat {
            facts: h
                .facts
                .ok_or(ModelError::Missing { field: "facts" })?
                .try_into()?,
            cert_not_after: timestamp_from_wire("cert_not_after", h.cert_not_after)?,
            running_operation_id: non_empty(h.running_operation_id),
            agent: h.agent,
        })
    }
}

/// One integrity problem a check found in a database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    /// The database it was found in (empty when a check cannot tell).
    pub database: String,
    /// The relation, e.g. `public.pgbench_accounts_pkey`, or a file path
    /// (`base/5/16384`) for checks that work on files.
    pub relation: String,
    /// Machine-readable kind: `index` (an index disagrees with its table),
    /// `heap` (a table's own structure), `checksum` (a page's checksum),
    /// `logical_read` (a full read failed), `check_failed` (a tool failed),
    /// and the kinds read from a stopped copy's files ([`FILE_KINDS`]).
    pub kind: String,
    /// The tool's own message.
    pub message: String,
}

impl From<pb::Finding> for Finding {
    fn from(f: pb::Finding) -> Self {
        Finding {
            database: f.database,
            relation: f.relation,
            kind: f.kind,
            message: f.message,
        }
    }
}

impl From<Finding> for pb::Finding {
    fn from(f: Finding) -> Self {
        pb::Finding {
            database: f.database,
            relation: f.relation,
            kind: f.kind,
            message: f.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            engine: "postgres".into(),
            server_version: "15.18".into(),
            server_state: ServerState::Running,
            role: Role::Standby,
            data_dir: "/var/lib/postgresql/15/main".into(),
            data_dir_bytes: 1234,
            current_lsn: None,
            received_lsn: Some(Lsn(0x1_0000_0060)),
            replayed_lsn: Some(Lsn(0x3000060)),
            wal_receiver_status: Some("streaming".into()),
            fully_received: true,
            replay_lag_bytes: 0,
            problem: None,
            observed_at: Timestamp::from_second(1_700_000_000).unwrap(),
            synchronous_standby_names: None,
            replication: vec![],
            wal_receiver_application_name: Some("db2".into()),
            single_member: false,
        }
    }

    #[test]
    fn lsn_parses_and_prints_postgres_form() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "0", "/1", "1/", "x/1", "123456789/0", "0/1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn facts_round_trip_through_the_wire() {
        let f = facts();
        let wire = pb::InstanceFacts::from(f.clone());
        assert_eq!(wire.received_lsn, "1/60");
        assert_eq!(wire.current_lsn, "");
        assert_eq!(Facts::try_from(wire).unwrap(), f);
    }

    #[test]
    fn bad_lsn_on_the_wire_is_a_typed_error() {
        let mut wire = pb::InstanceFacts::from(facts());
        wire.replayed_lsn = "garbage".into();
        let err = Facts::try_from(wire).unwrap_err();
        assert_eq!(
            err,
            ModelError::Lsn {
                field: "replayed_lsn",
                value: "garbage".into()
            }
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let mut wire = pb::InstanceFacts::from(facts());
        wire.role = 42;
        assert!(matches!(
            Facts::try_from(wire),
            Err(ModelError::Enum { field: "role", .. })
        ));
    }

    #[test]
    fn registration_requires_its_fields() {
        let req = pb::RegisterRequest {
            agent: "db1".into(),
            address: "127.0.0.1:7701".into(),
            set: "".into(),
            member: "db1".into(),
            agent_version: "0.1.0".into(),
            facts: Some(facts().into()),
            cert_not_after: None,
        };
        assert_eq!(
            Registration::try_from(req.clone()).unwrap_err(),
            ModelError::Missing { field: "set" }
        );
        let bad_time = pb::RegisterRequest {
            set: "billing".into(),
            cert_not_after: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..req
        };
        assert_eq!(
            Registration::try_from(bad_time).unwrap_err(),
            ModelError::Timestamp {
                field: "cert_not_after"
            }
        );
    }

    #[test]
    fn heartbeat_carries_the_certificate_expiry() {
        let at = Timestamp::from_second(1_900_000_000).unwrap();
        let hb = Heartbeat::try_from(pb::HeartbeatRequest {
            agent: "db1".into(),
            facts: Some(facts().into()),
            running_operation_id: String::new(),
            cert_not_after: Some(timestamp_to_wire(at)),
        })
        .unwrap();
        assert_eq!(hb.cert_not_after, Some(at));
        assert_eq!(hb.running_operation_id, None);
        let err = Heartbeat::try_from(pb::HeartbeatRequest {
            agent: "db1".into(),
            facts: None,
            running_operation_id: String::new(),
            cert_not_after: None,
        })
        .unwrap_err();
        assert_eq!(err, ModelError::Missing { field: "facts" });
    }

    #[test]
    fn a_primarys_replication_survives_the_wire() {
        let mut f = facts();
        f.role = Role::Primary;
        f.wal_receiver_application_name = None;
        f.synchronous_standby_names = Some(String::new());
        f.replication = vec![ReplicationPeer {
            application_name: "db2".into(),
            state: "streaming".into(),
            sync_state: "async".into(),
            sync_priority: 0,
        }];
        let wire = pb::InstanceFacts::from(f.clone());
        assert_eq!(Facts::try_from(wire).unwrap(), f);
        // Stored facts from before these fields still read.
        let mut old = serde_json::to_value(facts()).unwrap();
        for k in [
            "synchronous_standby_names",
            "replication",
            "wal_receiver_application_name",
        ] {
            old.as_object_mut().unwrap().remove(k);
        }
        let back: Facts = serde_json::from_value(old).unwrap();
        assert_eq!(back.replication, vec![]);
    }

    #[test]
    fn test_modes_read_print_and_travel() {
        for m in [TestMode::Online, TestMode::Cold] {
            assert_eq!(m.to_string().parse::<TestMode>().unwrap(), m);
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
            assert_eq!(
                TestMode::from_wire("mode", TestMode::to_wire(Some(m))).unwrap(),
                Some(m)
            );
        }
        assert_eq!(" Cold ".parse::<TestMode>().unwrap(), TestMode::Cold);
        let e = "warm".parse::<TestMode>().unwrap_err().to_string();
        assert!(e.starts_with("unknown test mode `warm`: use online"), "{e}");
        assert_eq!(TestMode::from_wire("mode", 0).unwrap(), None);
        assert_eq!(
            TestMode::from_wire("testdb.mode", 9)
                .unwrap_err()
                .to_string(),
            "field `testdb.mode`: unknown enum value 9"
        );
    }

    #[test]
    fn health_follows_role() {
        let mut f = facts();
        assert!(f.healthy());
        f.fully_received = false;
        f.wal_receiver_status = Some("catchup".into());
        assert!(!f.healthy());
        assert_eq!(f.state_word(), "catchup");
        f.server_state = ServerState::Stopped;
        assert_eq!(f.state_word(), "stopped");
    }
}
