//! `tandemctl set list/add/change/remove`: the inventory of sets and
//! members (SPEC C1). The member spec `NAME[=AGENT][@HOST]` they take is
//! parsed in `member.rs` (where the flags take it from).

use std::io::{BufRead, IsTerminal, Write};

use tandem_proto::pb;

use crate::cli::Connection;
use crate::outcome::{CtlError, Outcome, print, refused};
use crate::output::{self, OutputFormat};

pub use crate::member::parse_member;

pub async fn list(
    conn: &Connection,
    format: OutputFormat,
    sets: Vec<String>,
) -> Result<Outcome, CtlError> {
    let sets = conn
        .connect()
        .await?
        .list_inventory(pb::ListInventoryRequest { sets })
        .await
        .map_err(refused("ListInventory"))?
        .into_inner()
        .sets;
    print(
        format,
        serde_json::json!({"sets": sets.iter().map(output::inventory_set_json).collect::<Vec<_>>()}),
        output::inventory_human(&sets),
    );
    Ok(Outcome::Ok)
}

/// Print the set a change left, and say what was done.
fn done(format: OutputFormat, what: &str, set: Option<pb::InventorySet>) -> Outcome {
    let set = set.unwrap_or_default();
    let human = format!(
        "set {} {what}; generation {}\n\n{}",
        set.name,
        set.generation,
        output::inventory_human(std::slice::from_ref(&set))
    );
    print(
        format,
        serde_json::json!({"set": output::inventory_set_json(&set)}),
        human,
    );
    Outcome::Ok
}

pub async fn add(
    conn: &Connection,
    format: OutputFormat,
    req: pb::AddSetRequest,
) -> Result<Outcome, CtlError> {
    let what = if req.replace { "in force" } else { "added" };
    let set = conn
        .connect()
        .await?
        .add_set(req)
        .await
        .map_err(refused("AddSet"))?
        .into_inner()
        .set;
    Ok(done(format, what, set))
}

pub async fn change(
    conn: &Connection,
    format: OutputFormat,
    req: pb::ChangeSetRequest,
) -> Result<Outcome, CtlError> {
    if let Some(m) = req
        .change
        .iter()
        .find(|m| m.agent.is_empty() && m.host.is_empty())
    {
        return Err(CtlError::Usage(format!(
            "--change-member {} changes nothing: give NAME=AGENT, NAME@HOST or NAME=AGENT@HOST",
            m.name
        )));
    }
    if req.add.is_empty() && req.change.is_empty() && req.remove.is_empty() {
        return Err(CtlError::Usage(format!(
            "say what changes: --add-member, --change-member or --remove-member (`tandemctl set list {}` shows the members)",
            req.set
        )));
    }
    let set = conn
        .connect()
        .await?
        .change_set(req)
        .await
        .map_err(refused("ChangeSet"))?
        .into_inner()
        .set;
    Ok(done(format, "changed", set))
}

pub async fn remove(
    conn: &Connection,
    format: OutputFormat,
    set: String,
    yes: bool,
) -> Result<Outcome, CtlError> {
    if !yes && !confirm(&set)? {
        return Err(CtlError::Usage(format!("set `{set}` not removed")));
    }
    let row = conn
        .connect()
        .await?
        .remove_set(pb::RemoveSetRequest { set: set.clone() })
        .await
        .map_err(refused("RemoveSet"))?
        .into_inner()
        .set
        .unwrap_or_default();
    print(
        format,
        serde_json::json!({"removed": output::inventory_set_json(&row)}),
        format!(
            "set {set} removed from the inventory (its history stays: `tandemctl history {set}`); it stays removed even if controller.toml declares it, until `tandemctl set add {set} ...`"
        ),
    );
    Ok(Outcome::Ok)
}

/// Ask on the terminal; without one, say to pass --yes.
fn confirm(set: &str) -> Result<bool, CtlError> {
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::Usage(format!(
            "removing set `{set}` needs --yes when tandemctl is not on a terminal"
        )));
    }
    eprint!(
        "remove set `{set}` from the inventory? Its agents will be refused and it will no longer be tested. Type the set's name to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CtlError::Usage(format!("cannot read the answer: {e}")))?;
    Ok(line.trim() == set)
}
