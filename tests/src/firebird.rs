//! Private Firebird 3 servers for end-to-end tests.
//!
//! What works on Debian's `firebird3.0-server`/`firebird3.0-utils` (Firebird
//! 3.0.11), found by trying, without touching the package's own service:
//!
//! - **A private root.** Every Firebird tool and the server read
//!   `firebird.conf`, `databases.conf` and `plugins.conf` from the directory
//!   in `FIREBIRD`. [`FbServer::start`] makes one in `<dir>/root`: symlinks to
//!   the package's `intl`, `lib`, `plugins`, `UDF` and `firebird.msg`
//!   (`/usr/lib/x86_64-linux-gnu/firebird/3.0`), and its own `firebird.conf`:
//!   `RemoteServicePort` (a free port), `RemoteBindAddress = 127.0.0.1`,
//!   `SecurityDatabase` (a private copy of the package's `security3.fdb`),
//!   `AuthServer = Srp`, `UserManager = Srp`.
//! - **A private lock directory** (`FIREBIRD_LOCK`), so its lock tables are
//!   nobody else's.
//! - **The SYSDBA password** is set in the private security database with
//!   the embedded `isql-fb` (no server yet; embedded trusts the OS user):
//!   `create or alter user SYSDBA password '...' using plugin Srp`.
//! - **The server** is `/usr/sbin/firebird` (SuperServer) run in the
//!   foreground as the `firebird` OS user (when the tests run as root), with
//!   `FIREBIRD` and `FIREBIRD_LOCK` set; it is ready when `isql-fb` on
//!   `127.0.0.1/<port>:<db>` answers.
//! - **`nbackup` needs local access** ("nbackup needs local access to
//!   database file" with a `host/port:` name): it is given the file's path,
//!   with the same `FIREBIRD` root, and reaches the server through that
//!   root's `RemoteServicePort`.
//! - **The server log** is not per server: Debian builds Firebird with
//!   `/var/log/firebird/firebird3.0.log`, shared by every process on the host
//!   (the agent reads the blocks that name its own copy's path).
//! - `gstat` is `fbstat` in Debian.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use nix::sys::signal::Signal;

use crate::procs::Proc;
use crate::wait::{free_port, wait_for};

/// Where Debian installs Firebird 3's root (messages, plugins, intl).
pub const FB_ROOT: &str = "/usr/lib/x86_64-linux-gnu/firebird/3.0";
/// The package's security database, copied for each private server.
const SECURITY_DB: &str = "/var/lib/firebird/3.0/system/security3.fdb";
/// The server log every Firebird process on the host writes (Debian).
pub const SERVER_LOG: &str = "/var/log/firebird/firebird3.0.log";
const SERVER: &str = "/usr/sbin/firebird";

/// The OS user the server runs as: `firebird` when the tests run as root.
#[derive(Debug, Clone)]
pub struct FbUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl FbUser {
    fn for_server() -> Option<FbUser> {
        if !nix::unistd::Uid::effective().is_root() {
            return None;
        }
        let u = nix::unistd::User::from_name("firebird").ok().flatten()?;
        Some(FbUser {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    }
}

/// One private Firebird 3 server and its database.
pub struct FbServer {
    pub dir: PathBuf,
    /// The private `FIREBIRD` root (its `firebird.conf`).
    pub root: PathBuf,
    pub lock_dir: PathBuf,
    pub database: PathBuf,
    pub port: u16,
    pub password: String,
    pub password_file: PathBuf,
    user: Option<FbUser>,
    proc: Option<Proc>,
}

impl FbServer {
    /// Lay out `<dir>/` (root, lock, data, security database), set the
    /// SYSDBA password, start the server and create an empty database
    /// `<dir>/data/<name>.fdb`.
    pub async fn start(dir: &Path, name: &str) -> anyhow::Result<FbServer> {
        ensure!(
            Path::new(SERVER).exists(),
            "Firebird 3 is not installed ({SERVER} is missing): apt-get install firebird3.0-server firebird3.0-utils"
        );
        let root = dir.join("root");
        let data = dir.join("data");
        let lock_dir = dir.join("lock");
        for d in [dir, &root, &data, &lock_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        for link in ["intl", "lib", "plugins", "UDF", "firebird.msg"] {
            std::os::unix::fs::symlink(Path::new(FB_ROOT).join(link), root.join(link))
                .with_context(|| format!("link {link} into {}", root.display()))?;
        }
        std::fs::copy(
            Path::new(FB_ROOT).join("plugins.conf"),
            root.join("plugins.conf"),
        )
        .context("copy plugins.conf")?;
        std::fs::write(root.join("databases.conf"), "")?;
        let security = dir.join("security3.fdb");
        std::fs::copy(SECURITY_DB, &security).with_context(|| format!("copy {SECURITY_DB}"))?;
        let port = free_port();
        std::fs::write(
            root.join("firebird.conf"),
            format!(
                "RemoteServicePort = {port}\nRemoteBindAddress = 127.0.0.1\nSecurityDatabase = {}\nAuthServer = Srp\nAuthClient = Srp\nUserManager = Srp\nWireCrypt = Enabled\n",
                security.display()
            ),
        )?;
        let password = format!("pw{port}");
        let password_file = dir.join("sysdba.password");
        std::fs::write(&password_file, format!("{password}\n"))?;
        let user = FbUser::for_server();
        if let Some(u) = &user {
            // The server's user must reach its files (and the agent's copies
            // below the fleet's directory).
            for d in [dir, &root, &data, &lock_dir, &security] {
                std::os::unix::fs::chown(d, Some(u.uid), Some(u.gid))?;
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let database = data.join(format!("{name}.fdb"));
        let mut server = FbServer {
            dir: dir.to_owned(),
            root,
            lock_dir,
            database,
            port,
            password,
            password_file,
            user,
            proc: None,
        };
        // Embedded (no server yet): the OS user is trusted.
        server.isql_embedded(
            &security,
            &format!(
                "create or alter user SYSDBA password '{}' using plugin Srp;\ncommit;\n",
                server.password
            ),
        )?;
        server.start_server().await?;
        server.isql_raw(
            None,
            &format!(
                "create database '{}' page_size 8192;\ncommit;\n",
                server.dsn()
            ),
        )?;
        Ok(server)
    }

    /// A server in a directory of its own (below the temporary directory,
    /// reachable by the server's OS user), removed when the server is
    /// dropped unless the test panicked or `TANDEM_KEEP_TEST_DIRS=1`.
    pub async fn start_temp(name: &str) -> anyhow::Result<FbServer> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-fb-")
            .tempdir()?
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        FbServer::start(&dir.join(name), name).await
    }

    /// `127.0.0.1/<port>:<database>`.
    pub fn dsn(&self) -> String {
        format!("127.0.0.1/{}:{}", self.port, self.database.display())
    }

    /// A Firebird tool with this server's root and credentials, as its OS user.
    pub fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.env("FIREBIRD", &self.root)
            .env("ISC_USER", "SYSDBA")
            .env("ISC_PASSWORD", &self.password)
            .env("LC_ALL", "C")
            .current_dir("/");
        if let Some(u) = &self.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    /// The `[firebird]` table of an agent for this server (without
    /// `archive_dir`).
    pub fn agent_table(&self) -> String {
        format!(
            "database = \"{}\"\nport = {}\npassword_file = \"{}\"\nroot_dir = \"{}\"\n",
            self.database.display(),
            self.port,
            self.password_file.display(),
            self.root.display()
        )
    }

    /// Start the server and wait until it answers.
    pub async fn start_server(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.command(SERVER);
        cmd.env("FIREBIRD_LOCK", &self.lock_dir);
        self.proc = Some(Proc::spawn("firebird", cmd, &self.dir.join("server.log"))?);
        let security = self.dir.join("security3.fdb");
        let dsn = format!("127.0.0.1/{}:{}", self.port, security.display());
        wait_for(
            "the Firebird server to answer",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let r = self.isql_raw(Some(&dsn), "select 1 from rdb$database;\n");
                async move { Ok(r.ok().map(|_| ())) }
            },
        )
        .await?;
        if self.database.exists() {
            // Online again after [`Self::stop`] shut it down (a no-op otherwise).
            let mut cmd = self.command("gfix");
            cmd.arg("-online").arg(self.dsn());
            run_with_input(cmd, "").context("bring the database online")?;
        }
        Ok(())
    }

    /// Stop the server and wait until it is gone: the database is shut
    /// down first (`gfix -shut full -force 0`: every attachment closed,
    /// every page written), then the server gets SIGTERM. [`Self::start_server`]
    /// brings the database back online.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.command("gfix");
        cmd.args(["-shut", "full", "-force", "0"]).arg(self.dsn());
        run_with_input(cmd, "").context("shut the database down")?;
        if let Some(mut p) = self.proc.take() {
            p.signal(Signal::SIGTERM)?;
            // Usually gone within a second; with other servers starting on
            // the host it has been seen to ignore SIGTERM for over a minute.
            // The database is shut down already (every page written), so
            // SIGKILL then loses nothing.
            if let Err(e) = p.wait_exit(Duration::from_secs(15)).await {
                eprintln!("firebird did not stop on SIGTERM ({e:#}); killing it");
                p.kill();
            }
        }
        Ok(())
    }

    /// Run `sql` on the database through the server; its output.
    pub fn isql(&self, sql: &str) -> anyhow::Result<String> {
        self.isql_raw(Some(&self.dsn()), sql)
    }

    /// isql-fb (quiet, stops at the first error) on `dsn`, or on none
    /// (`create database` names it itself).
    fn isql_raw(&self, dsn: Option<&str>, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.command("isql-fb");
        cmd.args(["-q", "-b"]);
        if let Some(d) = dsn {
            cmd.arg(d);
        }
        run_with_input(cmd, sql)
    }

    fn isql_embedded(&self, db: &Path, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.command("isql-fb");
        cmd.env_remove("ISC_PASSWORD")
            .env("FIREBIRD_LOCK", &self.lock_dir)
            .args(["-q", "-b"])
            .arg(db);
        run_with_input(cmd, sql)
    }

    /// One number from a query (`select count(*) ...`).
    pub fn count(&self, sql: &str) -> anyhow::Result<u64> {
        let out = self.isql(&format!("set list on;\n{sql}\n"))?;
        out.lines()
            .find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .with_context(|| format!("no number in the output of {sql:?}: {out}"))
    }

    /// `fbstat -h` (Debian's `gstat -h`) of the database: its header page.
    pub fn header(&self) -> anyhow::Result<String> {
        let mut cmd = self.command("fbstat");
        cmd.arg("-h").arg(&self.database);
        let out = cmd.output().context("run fbstat -h")?;
        ensure!(
            out.status.success(),
            "fbstat -h failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the header says the database is locked by `nbackup -L`.
    pub fn is_locked(&self) -> anyhow::Result<bool> {
        let h = self.header()?;
        Ok(h.contains("backup lock") || h.contains("stalled") || h.contains("merge"))
    }

    /// `table`'s id in `RDB$RELATIONS` (the server running), for
    /// [`FbServer::data_pages`].
    pub fn relation_id(&self, table: &str) -> anyhow::Result<u16> {
        let id = self.count(&format!(
            "select rdb$relation_id from rdb$relations where rdb$relation_name = '{}';",
            table.to_uppercase()
        ))?;
        Ok(u16::try_from(id)?)
    }

    /// The data pages of `table` in the stopped database's file: the pages
    /// whose type is 5 (data) and whose relation is the table's
    /// (`RDB$RELATIONS`), read from the page headers (ODS 12: type at byte
    /// 0, relation at byte 20).
    pub fn data_pages(&self, relation_id: u16) -> anyhow::Result<Vec<u64>> {
        let bytes = std::fs::read(&self.database)?;
        let page_size = 8192;
        Ok((0..bytes.len() / page_size)
            .filter(|&i| {
                let p = &bytes[i * page_size..(i + 1) * page_size];
                p[0] == 5 && u16::from_le_bytes([p[20], p[21]]) == relation_id
            })
            .map(|i| i as u64)
            .collect())
    }

    /// Overwrite the line index of data page `page` (the offset and length
    /// of its first 16 records, from byte 24) with 0xFF, in the stopped
    /// database's file: validation then says "Data page N {sequence S},
    /// line 0 is bad in table T". (Overwriting the records themselves
    /// instead may leave only a warning, "orphan backversions", with the
    /// rows silently gone.)
    pub fn damage_page(&self, page: u64) -> anyhow::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.database)?;
        f.seek(SeekFrom::Start(page * 8192 + 24))?;
        f.write_all(&[0xFF; 64])?;
        f.sync_all()?;
        Ok(())
    }

    /// Overwrite the records of data page `page` (from the lowest record
    /// its line index points at to the page's end) with `fill`, in the
    /// stopped database's file; returns how many records the page held.
    /// Measured on Firebird 3.0.11: with 0xFF, `gfix -v -full` says only
    /// "Relation has N orphan backversions" (a warning) and `gbak -b` reads
    /// the table without those rows; with zeros, neither says anything.
    pub fn damage_records(&self, page: u64, fill: u8) -> anyhow::Result<u16> {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.database)?;
        let mut p = vec![0u8; 8192];
        f.seek(SeekFrom::Start(page * 8192))?;
        f.read_exact(&mut p)?;
        // ODS 12 data page: record count at byte 22, then (offset, length)
        // pairs from byte 24.
        let count = u16::from_le_bytes([p[22], p[23]]);
        let lowest = (0..usize::from(count))
            .map(|k| {
                let o = 24 + 4 * k;
                (
                    u16::from_le_bytes([p[o], p[o + 1]]),
                    u16::from_le_bytes([p[o + 2], p[o + 3]]),
                )
            })
            .filter(|&(_, len)| len > 0)
            .map(|(off, _)| usize::from(off))
            .min()
            .context("the page has no records")?;
        ensure!(
            lowest > 24 + 4 * usize::from(count) && lowest < 8192,
            "odd page {page}"
        );
        p[lowest..].fill(fill);
        f.seek(SeekFrom::Start(page * 8192))?;
        f.write_all(&p)?;
        f.sync_all()?;
        Ok(count)
    }

    /// A client inserting one row at a time (each committed) into `table`
    /// (a column `v`) until the returned guard is dropped or `limit` rows
    /// are in; the guard counts them.
    pub fn insert_load(&self, table: &str, limit: u64) -> InsertLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let inserted = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), inserted.clone());
        let sql = format!("insert into {table} (v) values ('concurrent');\ncommit;\n");
        let cmd = {
            let mut c = self.command("isql-fb");
            c.args(["-q", "-b"]).arg(self.dsn());
            c
        };
        let thread = std::thread::spawn(move || {
            let mut cmd = cmd;
            while !s.load(Ordering::Relaxed) && n.load(Ordering::Relaxed) < limit {
                if run_with_input_ref(&mut cmd, &sql).is_ok() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        InsertLoad {
            stop,
            inserted,
            thread: Some(thread),
        }
    }
}

impl Drop for FbServer {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        if std::thread::panicking() || std::env::var_os("TANDEM_KEEP_TEST_DIRS").is_some() {
            eprintln!("Firebird server kept in {}", self.dir.display());
        } else if let Some(parent) = self.dir.parent()
            && parent
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tandem-fb-"))
        {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// A client inserting rows (see [`FbServer::insert_load`]).
pub struct InsertLoad {
    stop: Arc<AtomicBool>,
    inserted: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InsertLoad {
    /// Rows inserted so far.
    pub fn inserted(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed)
    }
}

impl Drop for InsertLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_with_input(mut cmd: Command, input: &str) -> anyhow::Result<String> {
    run_with_input_ref(&mut cmd, input)
}

fn run_with_input_ref(cmd: &mut Command, input: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input.as_bytes());
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{:?} failed ({}): {text}", cmd.get_program(), out.status);
    }
    Ok(text)
}
