//! What the benchmarks share: where PostgreSQL's tools are, and running one
//! as the `postgres` OS user (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// `PG_BIN/program`, run as `postgres` when we are root, from `/`; and the
/// tool's path, for messages. (The restore bench runs its tools through a
/// shell and uses only [`PG_BIN`].)
#[allow(dead_code)]
pub fn postgres_tool(program: &str) -> (Command, PathBuf) {
    let path = Path::new(PG_BIN).join(program);
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    cmd.current_dir("/");
    (cmd, path)
}
