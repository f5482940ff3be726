//! A restore from a backup kept on another member's host (`--from
//! MEMBER:/path`), with no remote store: the backup is made from the
//! standby and stays in the standby agent's own backup directory; the
//! primary's agent fetches it from the standby's agent under a grant the
//! controller asked for, resuming a cut transfer, and every other caller
//! is refused.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tandem_proto::pb;
use tandem_tests::archiving::{
    enable_archiving, restore_primary, siblings, spec, switch_and_archive, take_backup,
};
use tandem_tests::corrupt;
use tandem_tests::fleet::Fleet;
use tandem_tests::wait::wait_for;

fn notes(json: &Value) -> String {
    json["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .map(|l| l.as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The backup file the standby took: in the standby agent's own backup
/// directory, not in the primary's.
fn on_the_standbys_host(fleet: &Fleet, set: &str, file: &Path) {
    let standby = format!("{set}-s1");
    assert_eq!(
        file.parent().unwrap(),
        fleet.agent_backups(&standby),
        "the backup is kept on the standby's host"
    );
    let name = file.file_name().unwrap();
    assert!(!fleet.agent_backups(&format!("{set}-p")).join(name).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_on_the_standbys_host_restores_the_primary_to_a_point_in_time() {
    let fleet = Fleet::start(spec("peer", "")).await.unwrap();
    enable_archiving(&fleet, "peer");
    let pair = fleet.set("peer");
    let p = &pair.primary;
    p.psql(
        "postgres",
        "CREATE TABLE events (note text, at timestamptz DEFAULT clock_timestamp())",
    )
    .unwrap();
    let file = take_backup(&fleet, "peer").await;
    on_the_standbys_host(&fleet, "peer", &file);
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();

    p.psql("postgres", "INSERT INTO events (note) VALUES ('kept')")
        .unwrap();
    let target = p
        .psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .unwrap();
    p.psql("postgres", "INSERT INTO events (note) VALUES ('lost')")
        .unwrap();
    switch_and_archive(&fleet, "peer").await;

    // What the restore will use, asked first: the newest verified backup
    // is the standby's, so the primary's restore fetches it from there.
    let dry = fleet
        .ctl_as(
            "viewer",
            &[
                "restore",
                "peer",
                "--dry-run",
                "--target-time",
                &target,
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(dry.code, 0, "{dry:?}");
    let plan = dry.json();
    let from = format!("peer-s1:{}", file.display());
    assert_eq!(plan["from"], from, "{plan:#}");
    assert_eq!(plan["reachable"], true, "{plan:#}");
    assert_eq!(
        plan["transfer_bytes"],
        std::fs::metadata(&file).unwrap().len(),
        "{plan:#}"
    );
    // The restore with no --from at all (latest): what the dry-run said.
    let (code, json, raw) = restore_primary(&fleet, "peer", &["--target-time", &target]);
    assert_eq!(code, 0, "{raw}\n{}", fleet.logs());
    assert_eq!(json["state"], "restored", "{json:#}");
    assert_eq!(json["window_state"], "closed", "{json:#}");
    assert_eq!(json["verdict"]["kind"], "clean", "{json:#}");
    let all = notes(&json);
    assert!(all.contains("from member peer-s1's host"), "{all}");
    // Fetched whole into the primary's own backup directory, under its name.
    let fetched = fleet.agent_backups("peer-p").join(&name);
    assert_eq!(
        std::fs::metadata(&fetched).unwrap().len(),
        std::fs::metadata(&file).unwrap().len()
    );
    assert!(
        !fleet
            .agent_backups("peer-p")
            .join(format!(".{name}.partial"))
            .exists()
    );

    // Rows up to the target are there, later ones are not.
    assert_eq!(
        p.psql(
            "postgres",
            "SELECT string_agg(note, ',' ORDER BY at) FROM events"
        )
        .unwrap(),
        "kept"
    );
    assert!(!p.is_in_recovery().unwrap());
    let standby = &pair.standbys[0];
    pair.wait_streaming(standby).await.unwrap();
    corrupt::wait_replayed(p, standby).await.unwrap();
    assert_eq!(
        standby
            .psql(
                "postgres",
                "SELECT string_agg(note, ',' ORDER BY at) FROM events"
            )
            .unwrap(),
        "kept"
    );
    let window = json["window_id"].as_str().unwrap();
    assert_eq!(
        siblings(&standby.data_dir, &format!(".tandem-reseed-{window}")).len(),
        1,
        "the standby was re-seeded from the restored primary"
    );

    // The grant is in the audit log: the holder, the file, the peer, its id.
    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    let grant = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "GrantBackup")
        .unwrap_or_else(|| panic!("no GrantBackup in {audit:#}"))
        .clone();
    assert_eq!(grant["outcome"], "ok", "{grant:#}");
    let args = grant["arguments"].to_string();
    for want in ["peer-s1", "peer-p", name.as_str(), "grant_id", "expires_at"] {
        assert!(args.contains(want), "{want} not in {grant:#}");
    }
    // And the holder logged what it granted and sent.
    let log = fleet.agents["peer-s1"].proc.as_ref().unwrap().log_text();
    assert!(log.contains("backup granted to a peer agent"), "{log}");
    assert!(log.contains("backup sent to a peer agent"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_half_way_resumes_when_the_restore_runs_again() {
    let mut fleet = Fleet::start(spec("cut", "")).await.unwrap();
    enable_archiving(&fleet, "cut");
    let p = fleet.set("cut").primary.clone();
    // Enough data for a file of a few MiB (1 MiB chunks).
    p.pgbench_init(2).unwrap();
    p.psql("postgres", "CREATE TABLE t (note text)").unwrap();
    let file = take_backup(&fleet, "cut").await;
    on_the_standbys_host(&fleet, "cut", &file);
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 2 << 20, "the backup is only {size} bytes");
    p.psql("postgres", "INSERT INTO t VALUES ('after the backup')")
        .unwrap();
    switch_and_archive(&fleet, "cut").await;

    // The holder stops sending half-way and is killed there.
    let half = (size / 2).to_string();
    fleet.kill_agent("cut-s1");
    fleet
        .start_agent_with("cut-s1", &[("TANDEM_TEST_FETCH_HOLD_AFTER_BYTES", &half)])
        .unwrap();
    fleet
        .wait_agents_state(&["cut-s1".into()], "online")
        .await
        .unwrap();
    fleet.wait_heartbeat_streaming("cut-s1").await.unwrap();
    let from = format!("cut-s1:{}", file.display());
    let args = [
        "restore", "cut", "--member", "cut-p", "--yes", "--output", "json", "--from", &from,
        "--latest",
    ];
    let ctl = fleet.spawn_ctl("admin", &args).unwrap();
    let held = fleet.agent_home("cut-s1").join("fetch-held");
    wait_for(
        "the holder to hold the transfer half-way",
        Duration::from_secs(120),
        Duration::from_millis(20),
        || async { Ok(held.exists().then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    // What the holder handed over before it held reaches the primary's
    // partial file; then the holder dies.
    let sent: u64 = std::fs::read_to_string(&held)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let partial = fleet
        .agent_backups("cut-p")
        .join(format!(".{name}.partial"));
    wait_for(
        "the primary's partial file to hold what the holder sent",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            let n = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            Ok((n == sent).then_some(()))
        },
    )
    .await
    .unwrap();
    fleet.kill_agent("cut-s1");
    std::fs::remove_file(&held).unwrap();
    fleet.start_agent("cut-s1").unwrap();

    // The prepare fails at the fetch; the window puts the set back.
    let out = ctl.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", fleet.logs());
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["state"], "failed", "{json:#}");
    assert_eq!(json["failed_step"], "R1 fetch_peer", "{json:#}");
    assert_eq!(json["window_state"], "aborted", "{json:#}");
    let reason = json["reason"].as_str().unwrap();
    assert!(reason.contains("was cut at byte"), "{reason}");
    assert!(reason.contains("run the restore again"), "{reason}");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert_eq!(kept, sent, "what was fetched is kept");
    assert!(kept > 0 && kept < size, "{kept} of {size} bytes kept");
    assert!(!fleet.agent_backups("cut-p").join(&name).exists());
    assert!(
        siblings(&p.data_dir, ".prepare").is_empty(),
        "nothing unpacked"
    );
    assert!(siblings(&p.data_dir, ".before-restore-").is_empty());
    assert!(p.is_running());
    assert!(!p.is_in_recovery().unwrap());
    {
        let pair = fleet.set("cut");
        pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    }
    fleet.wait_heartbeat_streaming("cut-s1").await.unwrap();

    // Run again: the transfer resumes where it was cut, and the restore ends.
    let (code, json, raw) = restore_primary(&fleet, "cut", &["--from", &from, "--latest"]);
    assert_eq!(code, 0, "{raw}\n{}", fleet.logs());
    assert_eq!(json["state"], "restored", "{json:#}");
    assert_eq!(json["window_state"], "closed", "{json:#}");
    let all = notes(&json);
    assert!(
        all.contains(&format!("at byte {kept} of {size}")),
        "resumed at {kept}: {all}"
    );
    assert_eq!(
        std::fs::metadata(fleet.agent_backups("cut-p").join(&name))
            .unwrap()
            .len(),
        size
    );
    assert!(!partial.exists());
    assert_eq!(
        p.psql("postgres", "SELECT note FROM t").unwrap(),
        "after the backup"
    );
    assert_eq!(
        p.psql("postgres", "SELECT count(*) FROM pgbench_accounts")
            .unwrap(),
        "200000"
    );
}

/// A `FetchBackup` call as `stem` (`agent-<name>`, `user-<name>`,
/// `controller`): the status of the refusal, or the bytes received.
async fn fetch_as(
    fleet: &Fleet,
    holder: &str,
    stem: &str,
    grant_id: &str,
) -> Result<u64, tonic::Status> {
    let addr = fleet.agent_address(holder).unwrap();
    let ch = tandem_proto::tls::connect(&format!("https://{addr}"), &fleet.tls_files(stem))
        .await
        .unwrap();
    let mut c = pb::agent_peer_client::AgentPeerClient::new(ch);
    let mut s = c
        .fetch_backup(pb::FetchBackupRequest {
            grant_id: grant_id.to_owned(),
            offset: 0,
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(chunk) = s.message().await? {
        n += chunk.data.len() as u64;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_fetch_is_refused_and_gets_no_bytes() {
    let mut fleet = Fleet::start(spec("forge", "")).await.unwrap();
    fleet
        .set("forge")
        .primary
        .psql("postgres", "CREATE TABLE t (note text)")
        .unwrap();
    let file = take_backup(&fleet, "forge").await;
    on_the_standbys_host(&fleet, "forge", &file);
    let size = std::fs::metadata(&file).unwrap().len();
    let denied = |r: Result<u64, tonic::Status>, why: &str| {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    };

    // An agent's certificate and no grant.
    denied(
        fetch_as(&fleet, "forge-s1", "agent-forge-p", "g-0123456789abcdef").await,
        "no grant g-0123456789abcdef",
    );
    // Only the controller may grant: an agent may not ask for one.
    let addr = fleet.agent_address("forge-s1").unwrap();
    let grant = |stem: &str| {
        let (addr, files, file) = (addr.clone(), fleet.tls_files(stem), file.clone());
        async move {
            let ch = tandem_proto::tls::connect(&format!("https://{addr}"), &files)
                .await
                .unwrap();
            pb::agent_client::AgentClient::new(ch)
                .grant_backup(pb::GrantBackupRequest {
                    peer_agent: "forge-p".into(),
                    file: file.display().to_string(),
                    ttl_seconds: 0,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let e = grant("agent-forge-p").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // A grant the controller's certificate asked for names forge-p only.
    let g = grant("controller").await.unwrap();
    assert_eq!(g.bytes, size);
    assert!(g.unpacked_bytes > size, "{g:?}");
    denied(
        fetch_as(&fleet, "forge-s1", "agent-forge-s1", &g.grant_id).await,
        "not for `forge-s1`",
    );
    // A person's or the controller's certificate may not fetch at all.
    denied(
        fetch_as(&fleet, "forge-s1", "user-admin", &g.grant_id).await,
        "only an agent holding a grant",
    );
    denied(
        fetch_as(&fleet, "forge-s1", "controller", &g.grant_id).await,
        "only an agent holding a grant",
    );
    // The peer the grant names gets the whole file.
    assert_eq!(
        fetch_as(&fleet, "forge-s1", "agent-forge-p", &g.grant_id)
            .await
            .unwrap(),
        size
    );
    // A file outside the backup directory is never granted, even named as
    // a backup; nor a file in it that is not one.
    let outside = fleet.agent_home("forge-s1").join(file.file_name().unwrap());
    std::fs::copy(&file, &outside).unwrap();
    let (addr2, files) = (addr.clone(), fleet.tls_files("controller"));
    let ch = tandem_proto::tls::connect(&format!("https://{addr2}"), &files)
        .await
        .unwrap();
    let mut c = pb::agent_client::AgentClient::new(ch);
    for (path, why) in [
        (outside, "backup directory"),
        (
            fleet.agent_backups("forge-s1").join("../agent.toml"),
            "backup directory",
        ),
        (
            fleet.agent_backups("forge-s1").join("notes.txt"),
            "not named as a backup",
        ),
    ] {
        let e = c
            .grant_backup(pb::GrantBackupRequest {
                peer_agent: "forge-p".into(),
                file: path.display().to_string(),
                ttl_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }
    // The holder logged the refusals with the caller.
    let log = fleet.agents["forge-s1"].proc.as_ref().unwrap().log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("fetch refused") && l.contains("spiffe://tandem/agent/forge-s1")),
        "{log}"
    );
    // The holder's agent down: the restore is refused naming the member and
    // what to do, and nothing is written on the primary's host.
    fleet.kill_agent("forge-s1");
    fleet
        .wait_agents_state(&["forge-s1".into()], "offline")
        .await
        .unwrap();
    let from = format!("forge-s1:{}", file.display());
    let (code, _, raw) = restore_primary(&fleet, "forge", &["--from", &from, "--latest"]);
    assert_eq!(code, 2, "{raw}");
    assert!(raw.contains("member forge-s1's host"), "{raw}");
    assert!(raw.contains("start it"), "{raw}");
    assert!(raw.contains("nothing was written"), "{raw}");
    let mine = fleet.agent_backups("forge-p");
    assert!(
        std::fs::read_dir(&mine).map_or(true, |mut d| d.next().is_none()),
        "nothing in {}",
        mine.display()
    );
    let p = &fleet.set("forge").primary;
    assert!(p.is_running());
    assert!(siblings(&p.data_dir, ".prepare").is_empty());
}
