//! A real XFS filesystem with reflink (file cloning) for tests: a sparse
//! image in a private temporary directory, `mkfs.xfs -m reflink=1`, a loop
//! device (`losetup --find --show`), mounted on a private directory.
//!
//! Needs root and xfsprogs (`tests/run.sh` installs it); without either
//! [`XfsMount::new`] fails and says which, since CI runs as root and a test
//! that skips itself proves nothing. Dropping the mount unmounts it,
//! detaches the loop device and deletes the directory, also when the test
//! panicked.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted XFS filesystem with reflink, and the directory holding it.
#[derive(Debug)]
pub struct XfsMount {
    dir: PathBuf,
    mount: PathBuf,
    device: String,
}

/// Run a command; its stderr in the error.
fn run(cmd: &mut Command) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl XfsMount {
    /// Make and mount an XFS filesystem of `size_mib` MiB (at least 300:
    /// mkfs.xfs refuses smaller ones). The mount point is world-traversable
    /// (0755), so that PostgreSQL, which runs as `postgres`, reaches
    /// directories made there.
    pub fn new(size_mib: u64) -> Result<XfsMount, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "an XFS test filesystem needs root (mkfs.xfs, losetup and mount); run the \
                 tests as root, as CI does"
                    .into(),
            );
        }
        let mkfs = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .ok_or(
                "mkfs.xfs is missing: install xfsprogs (Debian: `apt-get install xfsprogs`; \
                 tests/run.sh does it)",
            )?;
        let dir = tempfile::Builder::new()
            .prefix("tandem-xfs-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?
            .keep();
        let cleanup_dir = |e: String| {
            let _ = fs::remove_dir_all(&dir);
            e
        };
        let image = dir.join("xfs.img");
        let mount = dir.join("mnt");
        let made = (|| {
            let f = fs::File::create(&image).map_err(|e| format!("create {image:?}: {e}"))?;
            f.set_len(size_mib << 20)
                .map_err(|e| format!("size {image:?}: {e}"))?;
            drop(f);
            run(Command::new(mkfs)
                .args(["-q", "-m", "reflink=1"])
                .arg(&image))?;
            fs::create_dir(&mount).map_err(|e| format!("create {mount:?}: {e}"))?;
            run(Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&image))
        })()
        .map_err(cleanup_dir)?;
        let xfs = XfsMount {
            dir,
            mount,
            device: made,
        };
        // From here on, dropping `xfs` cleans up.
        run(Command::new("mount")
            .args(["-t", "xfs"])
            .arg(&xfs.device)
            .arg(&xfs.mount))?;
        fs::set_permissions(&xfs.mount, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {:?}: {e}", xfs.mount))?;
        // The temporary directory is 0700; PostgreSQL must pass through it.
        fs::set_permissions(&xfs.dir, fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("chmod {:?}: {e}", xfs.dir))?;
        Ok(xfs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Bytes used on the filesystem (`statvfs`: blocks in use × fragment
    /// size), after a `syncfs` so that delayed allocations are counted.
    pub fn used_bytes(&self) -> Result<u64, String> {
        let f = fs::File::open(&self.mount).map_err(|e| format!("open {:?}: {e}", self.mount))?;
        nix::unistd::syncfs(&f).map_err(|e| format!("syncfs {:?}: {e}", self.mount))?;
        let s = nix::sys::statvfs::fstatvfs(&f)
            .map_err(|e| format!("statvfs {:?}: {e}", self.mount))?;
        Ok((s.blocks() - s.blocks_free()) * s.fragment_size())
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let mut mounted = true;
        for _ in 0..50 {
            match run(Command::new("umount").arg(&self.mount)) {
                Ok(_) => {
                    mounted = false;
                    break;
                }
                // Busy: a server on it may still be exiting.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
        if mounted {
            eprintln!(
                "tandem-tests: cannot unmount {}; left {} and {}",
                self.mount.display(),
                self.device,
                self.dir.display()
            );
            return;
        }
        if let Err(e) = run(Command::new("losetup").arg("-d").arg(&self.device)) {
            eprintln!("tandem-tests: {e}");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("tandem-tests: cannot remove {}: {e}", self.dir.display());
        }
    }
}
