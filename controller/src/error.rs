//! The controller service's errors, and their one mapping to `tonic::Status`.

use tandem_proto::identity::Identity;
use tandem_proto::model::ModelError;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{identity} may not call {action}: {why}")]
    Forbidden {
        identity: Identity,
        action: &'static str,
        why: &'static str,
    },
    #[error(
        "{identity} may not call {action}: it needs the {needed} role and has {has}; roles are granted in controller.toml [access.users]"
    )]
    NeedsRole {
        identity: Identity,
        action: &'static str,
        needed: crate::config::UserRole,
        has: crate::config::UserRole,
    },
    #[error("certificate says {identity} but the request is for agent `{claimed}`")]
    NotYourName { identity: Identity, claimed: String },
    #[error(
        "agent `{agent}` is not a member of any set in the inventory; an admin adds it with `tandemctl set add SET --member NAME={agent}` or `tandemctl set change SET --add-member NAME={agent}` (`tandemctl set list` shows the sets)"
    )]
    NotDeclared { agent: String },
    #[error(
        "agent `{agent}` says it serves member `{member}` of set `{set}`, but the inventory declares it as member `{declared_member}` of set `{declared_set}`; fix `set`/`member` in its agent.toml, or change the set with `tandemctl set change`"
    )]
    WrongMembership {
        agent: String,
        set: String,
        member: String,
        declared_set: String,
        declared_member: String,
    },
    #[error("no set named `{set}`; `tandemctl show` lists the sets")]
    UnknownSet { set: String },
    #[error("the inventory has no sets to test; add one with `tandemctl set add`")]
    NoSetsDeclared,
    #[error("{0}")]
    BadPolicy(String),
    #[error(
        "set `{set}`'s test policy is `{policy}`, so {signal} starts no test; an admin sets `tandemctl set policy {set} --test signal={signal}`"
    )]
    NotSignalPolicy {
        set: String,
        policy: String,
        signal: String,
    },
    #[error("set `{set}` has no member `{member}`; `tandemctl show {set}` lists them")]
    UnknownMember { set: String, member: String },
    #[error("no run `{run}` on this controller")]
    UnknownRun { run: String },
    #[error(
        "set `{set}` exists; `tandemctl set change {set}` changes its members, `tandemctl set add {set} --replace ...` replaces them"
    )]
    SetExists { set: String },
    #[error("nothing changes in set `{set}`; `tandemctl set list {set}` shows its members")]
    NothingChanges { set: String },
    #[error(
        "set `{set}` has a test in run {run} waiting or running; wait for it to end or `tandemctl cancel {run}`, then remove the set"
    )]
    SetBusy { set: String, run: String },
    #[error(
        "controller.toml (as loaded when the controller started) does not declare set `{set}`; name its members with --member NAME=AGENT[@HOST]"
    )]
    NotInConfig { set: String },
    #[error("give the set's members: --member NAME[=AGENT][@HOST] (repeatable) or --from-config")]
    NoMembersGiven,
    #[error(
        "run {run} has finished; nothing to cancel (`tandemctl history SET` shows its verdicts)"
    )]
    RunFinished { run: String },
    #[error(transparent)]
    Set(#[from] crate::sets::SetError),
    #[error("{what} is not available in this version of tandem-controller")]
    NotYet { what: &'static str },
    #[error("{0}")]
    Maintenance(String),
    #[error(
        "no member of set `{set}` is known as its primary (is it down?); name the member to restore with --member"
    )]
    NoPrimary { set: String },
    #[error("cannot reach agent `{agent}`: {why}")]
    AgentUnreachable { agent: String, why: String },
    #[error("agent `{agent}` refused: {message}")]
    AgentRefused { agent: String, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Invalid(#[from] ModelError),
    #[error("controller store failed: {0}")]
    Store(#[from] StoreError),
    #[error("local result refused: {0}")]
    LocalResult(#[from] crate::verdicts::LocalRefusal),
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        let msg = e.to_string();
        match e {
            ServiceError::Forbidden { .. }
            | ServiceError::NeedsRole { .. }
            | ServiceError::NotYourName { .. } => tonic::Status::permission_denied(msg),
            ServiceError::NotDeclared { .. }
            | ServiceError::WrongMembership { .. }
            | ServiceError::NotSignalPolicy { .. }
            | ServiceError::LocalResult(_)
            | ServiceError::Maintenance(_)
            | ServiceError::NoPrimary { .. }
            | ServiceError::AgentRefused { .. } => tonic::Status::failed_precondition(msg),
            ServiceError::AgentUnreachable { .. } => tonic::Status::unavailable(msg),
            ServiceError::BadRequest(_) => tonic::Status::invalid_argument(msg),
            ServiceError::UnknownSet { .. }
            | ServiceError::UnknownMember { .. }
            | ServiceError::UnknownRun { .. } => tonic::Status::not_found(msg),
            ServiceError::BadPolicy(_) => tonic::Status::invalid_argument(msg),
            ServiceError::NoSetsDeclared => tonic::Status::failed_precondition(msg),
            ServiceError::SetExists { .. } => tonic::Status::already_exists(msg),
            ServiceError::SetBusy { .. }
            | ServiceError::NotInConfig { .. }
            | ServiceError::RunFinished { .. } => tonic::Status::failed_precondition(msg),
            ServiceError::NothingChanges { .. } | ServiceError::NoMembersGiven => {
                tonic::Status::invalid_argument(msg)
            }
            ServiceError::Set(e) => match e {
                crate::sets::SetError::AgentInOtherSet { .. } => {
                    tonic::Status::failed_precondition(msg)
                }
                crate::sets::SetError::BadName { .. }
                | crate::sets::SetError::EmptyHost { .. }
                | crate::sets::SetError::NoMembers { .. }
                | crate::sets::SetError::DuplicateMember { .. }
                | crate::sets::SetError::DuplicateAgent { .. } => {
                    tonic::Status::invalid_argument(msg)
                }
            },
            ServiceError::NotYet { .. } => tonic::Status::unimplemented(msg),
            ServiceError::Invalid(_) => tonic::Status::invalid_argument(msg),
            ServiceError::Store(_) => tonic::Status::internal(msg),
        }
    }
}
