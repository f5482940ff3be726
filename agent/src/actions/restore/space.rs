//! Free space before a restore writes anything (safe mode): the unpacked
//! size plus `[restore] free_space_reserve_mib` beside the data directory,
//! and for a file fetched from another member also the rest of that file
//! in the backup directory. The rules are pure ([`space_ok`],
//! [`fetch_space_ok`]); [`free_bytes`] reads `statvfs`.

use std::path::Path;

use super::{MIB, RestoreError};

/// The bytes free for an unprivileged writer on `dir`'s filesystem.
pub(super) fn free_bytes(dir: &Path) -> Result<u64, RestoreError> {
    crate::files::free_bytes(dir).map_err(|e| RestoreError::Statvfs {
        dir: dir.to_owned(),
        message: e.to_string(),
    })
}

/// R11 for a fetch and an unpack on one filesystem (pure).
pub(super) fn fetch_space_ok(
    dir: &Path,
    free: u64,
    file_rest: u64,
    unpacked: u64,
    reserve_mib: u64,
) -> Result<(), RestoreError> {
    let need = file_rest
        .saturating_add(unpacked)
        .saturating_add(reserve_mib.saturating_mul(MIB));
    if free < need {
        return Err(RestoreError::NoSpaceForFetch {
            dir: dir.to_owned(),
            avail: free / MIB,
            file: file_rest.div_ceil(MIB),
            data: unpacked.div_ceil(MIB),
            reserve: reserve_mib,
            need: need.div_ceil(MIB),
        });
    }
    Ok(())
}

/// `p`, or its nearest ancestor that exists (a directory not made yet).
fn existing(p: &Path) -> &Path {
    p.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"))
}

/// R11 before a file is fetched from another member: the rest of the file
/// in the backup directory, the unpacked size beside the data directory
/// (one sum when both are on one filesystem), each with the reserve.
pub(super) fn peer_space_ok(
    backup_dir: &Path,
    data_parent: &Path,
    file_rest: u64,
    unpacked: u64,
    reserve_mib: u64,
) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let (b, d) = (existing(backup_dir), existing(data_parent));
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if dev(b).is_some() && dev(b) == dev(d) {
        return fetch_space_ok(d, free_bytes(d)?, file_rest, unpacked, reserve_mib);
    }
    fetch_space_ok(b, free_bytes(b)?, file_rest, 0, reserve_mib)?;
    space_ok(d, free_bytes(d)?, unpacked, reserve_mib)
}

/// R11 on what was observed (pure).
pub(super) fn space_ok(
    dir: &Path,
    free: u64,
    unpacked: u64,
    reserve_mib: u64,
) -> Result<(), RestoreError> {
    let need = unpacked.saturating_add(reserve_mib.saturating_mul(MIB));
    if free < need {
        return Err(RestoreError::NoSpace {
            dir: dir.to_owned(),
            avail: free / MIB,
            data: unpacked.div_ceil(MIB),
            reserve: reserve_mib,
            need: need.div_ceil(MIB),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_space_is_refused_with_the_numbers() {
        let e = space_ok(Path::new("/d"), 100 * MIB, 90 * MIB, 20).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("100 MiB free"), "{msg}");
        assert!(msg.contains("110 MiB needed"), "{msg}");
        assert!(msg.contains("Nothing was written"), "{msg}");
        assert!(space_ok(Path::new("/d"), 200 * MIB, 90 * MIB, 20).is_ok());
    }

    #[test]
    fn a_fetch_needs_room_for_the_rest_of_the_file_and_the_unpacked_data() {
        let e = fetch_space_ok(Path::new("/d"), 100 * MIB, 30 * MIB, 60 * MIB, 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("100 MiB free"), "{e}");
        assert!(e.contains("still to fetch is 30 MiB"), "{e}");
        assert!(e.contains("unpacks to 60 MiB"), "{e}");
        assert!(e.contains("110 MiB needed"), "{e}");
        assert!(e.contains("Nothing was written"), "{e}");
        assert!(fetch_space_ok(Path::new("/d"), 100 * MIB, 10 * MIB, 60 * MIB, 20).is_ok());
    }
}
