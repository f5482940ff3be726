//! The manifest beside a copy (`<dst>.manifest`, one `<blake3>  <size>
//! <path>` line per file): written by [`finish_manifest`] from the hashes the
//! copy already has plus the files it reads back, checked by [`verify`].

use super::*;

/// One file of a copy, as copied: its path relative to the copy, the bytes
/// copied and, when the copy read it, their BLAKE3 hash (a clone has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedFile {
    pub rel: PathBuf,
    pub size: u64,
    pub hash: Option<blake3::Hash>,
}

/// Write the manifest `<dst>.manifest` of the copy `dst` as it is now.
///
/// Lists every regular file under `dst`. A file in `known` with a hash and
/// the size it has now takes that hash; every other file is hashed by
/// reading it from `dst`, with `workers` threads, biggest first. The lines
/// are in `known`'s order, then the other files sorted by path. The manifest
/// is written aside, fsynced and renamed into place, then the directory
/// holding it is fsynced; it belongs to the owner of `dst`.
///
/// `progress(bytes hashed so far)` is called as in [`copy`]; `cancel` is
/// checked between chunks ([`CopyError::Cancelled`], no manifest written).
/// A symbolic link or special file under `dst` is [`CopyError::Unsupported`]
/// (a copy never makes one).
pub fn finish_manifest(
    dst: &Path,
    known: &[CopiedFile],
    workers: usize,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &CancellationToken,
) -> Result<PathBuf, CopyError> {
    check_cancel(cancel)?;
    let manifest = manifest_path(dst)?;
    let found = list_files(dst)?;
    let mut lines: Vec<(PathBuf, u64, Option<blake3::Hash>)> = Vec::with_capacity(found.len());
    let mut seen: BTreeSet<&Path> = BTreeSet::new();
    for k in known {
        if let Some(&size) = found.get(&k.rel)
            && seen.insert(&k.rel)
        {
            lines.push((k.rel.clone(), size, k.hash.filter(|_| k.size == size)));
        }
    }
    for (rel, &size) in &found {
        if !seen.contains(rel.as_path()) {
            lines.push((rel.clone(), size, None));
        }
    }

    // Hash what has no hash, biggest first so that the workers end together.
    let mut todo: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].2.is_none()).collect();
    todo.sort_by_key(|&i| std::cmp::Reverse(lines[i].1));
    let hashed: Vec<OnceLock<(u64, blake3::Hash)>> = todo.iter().map(|_| OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<CopyError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let progress = Progress::new(progress);
    let worker = || {
        let mut buf = vec![0u8; CHUNK];
        while !stop.load(Ordering::Relaxed) {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = todo.get(k) else { return };
            match hash_file(&dst.join(&lines[i].0), &mut buf, &progress, cancel, &stop) {
                Ok(h) => {
                    let _ = hashed[k].set(h);
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert(e);
                    return;
                }
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers.clamp(1, todo.len().max(1)) {
            s.spawn(worker);
        }
        worker();
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    check_cancel(cancel)?;
    for (k, &i) in todo.iter().enumerate() {
        let Some(&(size, h)) = hashed[k].get() else {
            return Err(CopyError::Cancelled);
        };
        lines[i].1 = size;
        lines[i].2 = Some(h);
    }
    progress.finish();

    let mut text = String::new();
    for (rel, size, h) in &lines {
        let h = h.expect("every file is hashed by now");
        text.push_str(&format!("{}  {size}  {}\n", h.to_hex(), check_name(rel)?));
    }
    let root = fs::symlink_metadata(dst).map_err(io_err(dst, "read the metadata of"))?;
    write_atomically(&manifest, text.as_bytes(), (root.uid(), root.gid()))?;
    // Makes the manifest's directory entry (and the copy's) durable.
    fsync_dir(&parent_of(dst))?;
    Ok(manifest)
}

/// Every regular file under `dst` (relative path → size).
fn list_files(dst: &Path) -> Result<BTreeMap<PathBuf, u64>, CopyError> {
    let mut found = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let abs_dir = under(dst, &rel_dir);
        for item in fs::read_dir(&abs_dir).map_err(io_err(&abs_dir, "list the directory"))? {
            let item = item.map_err(io_err(&abs_dir, "list the directory"))?;
            let rel = rel_dir.join(item.file_name());
            let abs = dst.join(&rel);
            let meta = fs::symlink_metadata(&abs).map_err(io_err(&abs, "read the metadata of"))?;
            if meta.is_dir() {
                stack.push(rel);
            } else if meta.is_file() {
                check_name(&rel)?;
                found.insert(rel, meta.len());
            } else {
                return Err(CopyError::Unsupported {
                    path: abs,
                    what: "a symbolic link or special file in a copy".into(),
                });
            }
        }
    }
    Ok(found)
}

/// Read `path` to its end: the bytes read and their hash.
fn hash_file(
    path: &Path,
    buf: &mut [u8],
    progress: &Progress<'_>,
    cancel: &CancellationToken,
    stop: &AtomicBool,
) -> Result<(u64, blake3::Hash), CopyError> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path, "open"))?;
    let _ = nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    let mut hasher = blake3::Hasher::new();
    let mut size: u64 = 0;
    loop {
        check_cancel(cancel)?;
        if stop.load(Ordering::Relaxed) {
            // Another worker failed; its error is the one reported.
            return Err(CopyError::Cancelled);
        }
        let n = match f.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path, "read")(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
        progress.add(n as u64);
    }
    Ok((size, hasher.finalize()))
}

/// Write `path` through `<path>.tandem-tmp`: create (0600, owned by
/// `owner`), write, fsync, rename into place. The caller fsyncs the
/// directory.
fn write_atomically(path: &Path, data: &[u8], owner: (u32, u32)) -> Result<(), CopyError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_err(&tmp, "create the manifest"))?;
        let meta = f.metadata().map_err(io_err(&tmp, "read the metadata of"))?;
        if (meta.uid(), meta.gid()) != owner {
            std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))
                .map_err(io_err(&tmp, "change the owner of"))?;
        }
        f.write_all(data)
            .map_err(io_err(&tmp, "write the manifest"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync the manifest"))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path, "rename the manifest into"))
}

/// Re-hash the copy `dst` and compare it with its manifest `<dst>.manifest`:
/// every listed file must be there with the listed size and hash, and no
/// other file may be.
pub fn verify(dst: &Path) -> Result<(), CopyError> {
    let manifest = manifest_path(dst)?;
    let text = fs::read_to_string(&manifest).map_err(io_err(&manifest, "read the manifest"))?;
    let mut listed: BTreeSet<PathBuf> = BTreeSet::new();
    let mut buf = vec![0u8; CHUNK];
    for (n, line) in text.lines().enumerate() {
        let bad = |what: &str| CopyError::BadManifest {
            path: manifest.clone(),
            line: n + 1,
            what: what.into(),
        };
        let mut parts = line.splitn(3, "  ");
        let (Some(hex), Some(size), Some(rel)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected `<blake3>  <size>  <path>`"));
        };
        let expected = blake3::Hash::from_hex(hex).map_err(|_| bad("not a BLAKE3 hash"))?;
        let size: u64 = size.parse().map_err(|_| bad("not a size"))?;
        let rel = PathBuf::from(rel);
        check_name(&rel).map_err(|_| bad("not a plain relative path"))?;
        let path = dst.join(&rel);
        let mut f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CopyError::Mismatch {
                    path,
                    expected: format!("a file of {size} bytes"),
                    found: "no file".into(),
                });
            }
            Err(e) => return Err(io_err(&path, "open")(e)),
        };
        let mut hasher = blake3::Hasher::new();
        let mut found_size: u64 = 0;
        loop {
            let k = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&path, "read")(e)),
            };
            hasher.update(&buf[..k]);
            found_size += k as u64;
        }
        if found_size != size {
            return Err(CopyError::Mismatch {
                path,
                expected: format!("{size} bytes"),
                found: format!("{found_size} bytes"),
            });
        }
        let found = hasher.finalize();
        if found != expected {
            return Err(CopyError::Mismatch {
                path,
                expected: format!("BLAKE3 {}", expected.to_hex()),
                found: format!("BLAKE3 {}", found.to_hex()),
            });
        }
        listed.insert(rel);
    }
    // Nothing else may be in the copy.
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let abs_dir = under(dst, &rel_dir);
        for item in fs::read_dir(&abs_dir).map_err(io_err(&abs_dir, "list the directory"))? {
            let item = item.map_err(io_err(&abs_dir, "list the directory"))?;
            let rel = rel_dir.join(item.file_name());
            let ft = item
                .file_type()
                .map_err(io_err(&abs_dir, "list the directory"))?;
            if ft.is_dir() {
                stack.push(rel);
            } else if !listed.contains(&rel) {
                return Err(CopyError::Mismatch {
                    path: dst.join(&rel),
                    expected: "no such file (it is not in the manifest)".into(),
                    found: "a file".into(),
                });
            }
        }
    }
    Ok(())
}
