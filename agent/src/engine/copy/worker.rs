//! The workers of one copy phase: each takes the next file of the phase,
//! clones it (`FICLONE`) or copies it byte by byte while hashing it, and
//! hands it to the one syncer thread, which fsyncs it and only then records
//! it as copied. The first refused clone switches the whole copy to bytes.

use super::*;

/// Whether cloning is still tried: not yet known, known to work, refused.
const CLONE_UNTRIED: u8 = 0;
const CLONE_WORKS: u8 = 1;
const CLONE_REFUSED: u8 = 2;

pub(super) struct Shared<'a> {
    pub(super) plan: &'a CopyPlan,
    pub(super) src: &'a Path,
    pub(super) dst: &'a Path,
    pub(super) owner: Option<(u32, u32)>,
    pub(super) live: bool,
    pub(super) cancel: &'a CancellationToken,
    /// Set on the first error so that the other workers stop too.
    pub(super) stop: AtomicBool,
    pub(super) first_error: Mutex<Option<CopyError>>,
    /// Per plan entry, once fsynced: the size copied and the hash (none for
    /// a clone, which is never read).
    pub(super) done: Vec<OnceLock<(u64, Option<blake3::Hash>)>>,
    pub(super) progress: Progress<'a>,
    pub(super) observe: &'a (dyn Fn(Step) + Sync),
    /// One of `CLONE_*`; starts refused for [`CopyMethod::Bytes`].
    pub(super) clone: AtomicU8,
    /// Why cloning was refused (the first refusal), and how many files had
    /// been cloned by then.
    pub(super) refusal: Mutex<Option<(io::Error, usize)>>,
    pub(super) cloned: AtomicUsize,
    pub(super) byte_copied: AtomicUsize,
}

impl<'a> Shared<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        plan: &'a CopyPlan,
        src: &'a Path,
        dst: &'a Path,
        opts: &CopyOptions,
        progress: &'a (dyn Fn(u64) + Sync),
        cancel: &'a CancellationToken,
        observe: &'a (dyn Fn(Step) + Sync),
    ) -> Self {
        Shared {
            plan,
            src,
            dst,
            owner: opts.owner,
            live: opts.live_source,
            cancel,
            stop: AtomicBool::new(false),
            first_error: Mutex::new(None),
            done: plan.entries.iter().map(|_| OnceLock::new()).collect(),
            progress: Progress::new(progress),
            observe,
            clone: AtomicU8::new(match opts.method {
                CopyMethod::Bytes => CLONE_REFUSED,
                CopyMethod::Auto | CopyMethod::Clone => CLONE_UNTRIED,
            }),
            refusal: Mutex::new(None),
            cloned: AtomicUsize::new(0),
            byte_copied: AtomicUsize::new(0),
        }
    }

    /// Record the first error and make every worker stop.
    fn fail(&self, e: CopyError) {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }

    /// Cloning was refused: no file after this one is cloned.
    fn refuse(&self, e: io::Error) {
        self.clone.store(CLONE_REFUSED, Ordering::Relaxed);
        let mut r = self.refusal.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some((e, self.cloned.load(Ordering::Relaxed)));
        }
    }

    /// What ran, and the note that says why when it is not what was asked.
    pub(super) fn outcome(&self, asked: CopyMethod) -> (CopyMethod, Option<String>) {
        let bytes = self.byte_copied.load(Ordering::Relaxed);
        let refusal = self.refusal.lock().unwrap_or_else(|p| p.into_inner());
        let method = if asked != CopyMethod::Bytes && bytes == 0 && refusal.is_none() {
            CopyMethod::Clone
        } else {
            CopyMethod::Bytes
        };
        let note = refusal.as_ref().map(|(e, before)| {
            let asked = match asked {
                CopyMethod::Clone => "copy_method is clone, but ",
                CopyMethod::Auto | CopyMethod::Bytes => "",
            };
            let rest = if *before == 0 {
                "the files were copied byte by byte".to_owned()
            } else {
                format!("{before} files had been cloned, the others were copied byte by byte")
            };
            format!(
                "{asked}cloning was refused by the filesystem of {} ({}); {rest}",
                self.dst.display(),
                errno_text(e)
            )
        });
        (method, note)
    }
}

/// An OS error's text without Rust's " (os error N)".
fn errno_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

pub(super) struct Progress<'a> {
    done: AtomicU64,
    /// When and at what count `report` was last called.
    last: Mutex<(Instant, u64)>,
    report: &'a (dyn Fn(u64) + Sync),
}

impl<'a> Progress<'a> {
    pub(super) fn new(report: &'a (dyn Fn(u64) + Sync)) -> Self {
        Progress {
            done: AtomicU64::new(0),
            last: Mutex::new((Instant::now(), 0)),
            report,
        }
    }

    pub(super) fn add(&self, n: u64) {
        let total = self.done.fetch_add(n, Ordering::Relaxed) + n;
        // Whoever holds the lock reports; the others go on copying.
        if let Ok(mut last) = self.last.try_lock()
            && (total.saturating_sub(last.1) >= PROGRESS_BYTES
                || last.0.elapsed() >= PROGRESS_EVERY)
        {
            let now = self.done.load(Ordering::Relaxed);
            *last = (Instant::now(), now);
            (self.report)(now);
        }
    }

    pub(super) fn finish(&self) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.done.load(Ordering::Relaxed);
        *last = (Instant::now(), now);
        (self.report)(now);
        now
    }
}

/// A copied file waiting for its fsync.
struct Written {
    index: usize,
    file: File,
    path: PathBuf,
    size: u64,
    hash: Option<blake3::Hash>,
}

/// Copy the entries `indices` (in that order) with up to `workers` threads;
/// returns when all are written and fsynced, or with the first error.
///
/// The workers hand each written file to a syncer thread that fsyncs it, so
/// that a worker goes on copying the next file while the previous one is
/// flushed; a file counts as done (its size and hash recorded) only once
/// fsynced.
pub(super) fn run_phase(
    shared: &Shared<'_>,
    indices: &[usize],
    workers: usize,
) -> Result<(), CopyError> {
    let next = AtomicUsize::new(0);
    let (to_sync, synced) = std::sync::mpsc::sync_channel::<Written>(SYNC_QUEUE);
    let worker = |to_sync: std::sync::mpsc::SyncSender<Written>| {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = indices.get(k) else {
                return;
            };
            match copy_file(shared, i, &mut buf) {
                Ok(Some(w)) => {
                    if to_sync.send(w).is_err() {
                        return;
                    }
                }
                // Vanished from a live source: not copied, not an error.
                Ok(None) => {}
                Err(e) => {
                    shared.fail(e);
                    return;
                }
            }
        }
    };
    let syncer = move || {
        // Runs until every worker is gone; after a failure it only drains.
        for w in synced {
            if shared.stop.load(Ordering::Relaxed) || shared.cancel.is_cancelled() {
                continue;
            }
            match w.file.sync_all() {
                Ok(()) => {
                    let _ = shared.done[w.index].set((w.size, w.hash));
                    (shared.observe)(Step::FileDone(w.index));
                }
                Err(e) => shared.fail(io_err(&w.path, "fsync")(e)),
            }
        }
    };
    let threads = workers.clamp(1, indices.len().max(1));
    std::thread::scope(|s| {
        s.spawn(syncer);
        for _ in 1..threads {
            let tx = to_sync.clone();
            s.spawn(move || worker(tx));
        }
        worker(to_sync);
    });
    let first = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match first {
        Some(e) => Err(e),
        None => check_cancel(shared.cancel),
    }
}

/// Errors with which a filesystem says it cannot clone these files (rather
/// than that something broke): the copy goes on byte by byte.
pub(super) fn clone_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EOPNOTSUPP
                | libc::EXDEV
                | libc::EINVAL
                | libc::ENOTTY
                | libc::EPERM
                | libc::ENOSYS
        )
    )
}

/// Make `output` share `input`'s blocks (a reflink): the whole file, in one
/// call, without reading it.
pub(super) fn ficlone(input: &File, output: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the duration of the call.
    let r = unsafe { libc::ioctl(output.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copy one file: clone it, or read in chunks, hash and write; then owner,
/// mode and times. The caller fsyncs the returned file. `None`: the file
/// vanished from a live source.
fn copy_file(shared: &Shared<'_>, i: usize, buf: &mut [u8]) -> Result<Option<Written>, CopyError> {
    let entry = &shared.plan.entries[i];
    let sp = shared.src.join(&entry.rel);
    let dp = shared.dst.join(&entry.rel);
    check_cancel(shared.cancel)?;
    let mut input = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&sp)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound && shared.live => return Ok(None),
        Err(e) => {
            return Err(match e.kind() {
                ErrorKind::NotFound => CopyError::Vanished { path: sp.clone() },
                _ if e.raw_os_error() == Some(libc::ELOOP) => CopyError::Unsupported {
                    path: sp.clone(),
                    what: "a symbolic link".into(),
                },
                _ => io_err(&sp, "open")(e),
            });
        }
    };
    let meta = input
        .metadata()
        .map_err(io_err(&sp, "read the metadata of"))?;
    if !meta.is_file() {
        return Err(CopyError::Unsupported {
            path: sp,
            what: "a file that is no longer a regular file".into(),
        });
    }
    let changed = |found: u64| CopyError::Changed {
        path: sp.clone(),
        expected: entry.size,
        found,
    };
    if meta.len() != entry.size && !shared.live {
        return Err(changed(meta.len()));
    }
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dp)
        .map_err(io_err(&dp, "create"))?;
    let mut cloned = false;
    if shared.clone.load(Ordering::Relaxed) != CLONE_REFUSED {
        match ficlone(&input, &output) {
            Ok(()) => {
                cloned = true;
                shared.clone.store(CLONE_WORKS, Ordering::Relaxed);
            }
            Err(e) if clone_refused(&e) => shared.refuse(e),
            Err(e) => return Err(io_err(&dp, "clone into")(e)),
        }
    }
    let (size, hash) = if cloned {
        let size = output
            .metadata()
            .map_err(io_err(&dp, "read the metadata of"))?
            .len();
        if size != entry.size && !shared.live {
            return Err(changed(size));
        }
        shared.cloned.fetch_add(1, Ordering::Relaxed);
        shared.progress.add(size);
        (size, None)
    } else {
        let (size, hash) = copy_bytes(shared, &mut input, &sp, &output, &dp, buf)?;
        if size != entry.size && !shared.live {
            return Err(changed(size));
        }
        shared.byte_copied.fetch_add(1, Ordering::Relaxed);
        (size, Some(hash))
    };
    if let Some((uid, gid)) = shared.owner {
        std::os::unix::fs::fchown(&output, Some(uid), Some(gid))
            .map_err(io_err(&dp, "change the owner of"))?;
    }
    output
        .set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err(&dp, "set the mode of"))?;
    output
        .set_times(times_of(&meta))
        .map_err(io_err(&dp, "set the times of"))?;
    Ok(Some(Written {
        index: i,
        file: output,
        path: dp,
        size,
        hash,
    }))
}

/// Read `input` to its end in chunks, hashing and writing each; the bytes
/// copied and their hash.
fn copy_bytes(
    shared: &Shared<'_>,
    input: &mut File,
    sp: &Path,
    mut output: &File,
    dp: &Path,
    buf: &mut [u8],
) -> Result<(u64, blake3::Hash), CopyError> {
    let _ = nix::fcntl::posix_fadvise(
        &*input,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    let mut hasher = blake3::Hasher::new();
    let mut copied: u64 = 0;
    let mut flushed: u64 = 0;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            // Another worker failed; its error is the one reported.
            return Err(CopyError::Cancelled);
        }
        check_cancel(shared.cancel)?;
        let n = match input.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(sp, "read")(e)),
        };
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(io_err(dp, "write"))?;
        copied += n as u64;
        shared.progress.add(n as u64);
        if copied - flushed >= FLUSH_EVERY {
            start_writeback(output, flushed, copied - flushed);
            flushed = copied;
        }
    }
    Ok((copied, hasher.finalize()))
}

/// Start writing `len` bytes at `offset` of a copied file to disk without
/// waiting: on Linux, `POSIX_FADV_DONTNEED` starts the writeback of the dirty
/// range and drops the pages already clean, so the file's fsync at the end
/// has little left to do (measured: the fsync of a 670 MB relation file went
/// from about 200 ms to nothing) and the copy does not crowd the page cache.
/// Only a hint: errors are ignored, the fsync reports real ones.
fn start_writeback(file: &File, offset: u64, len: u64) {
    if let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) {
        let _ = nix::fcntl::posix_fadvise(
            file,
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
}
