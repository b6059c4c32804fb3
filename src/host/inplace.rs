//! Rewriting a container's hosts and resolv.conf in place.
//!
//! Runtimes (runc, crun, Podman, systemd-nspawn) bind-mount
//! `/etc/netns/NAME/hosts` and `resolv.conf` into a container. A bind
//! mount pins the inode it was made from: a file replaced by rename (a new
//! inode) is never seen inside a running container, whose names would go
//! stale. So an existing file keeps its inode and gets its new content
//! written over the old one.
//!
//! Order of the two steps, and why: the new content is written at offset 0
//! in **one** `pwrite`, and when it is shorter than the old file it is
//! padded with newlines up to the old length; only then is the file
//! truncated to the new length. A reader (glibc opens and reads the file
//! on every lookup) therefore sees, at every instant outside the one
//! `pwrite` call itself, either the old file or the complete new one —
//! followed at most by blank lines, which hosts and resolv.conf parsers
//! skip. Truncating first would instead show an empty or cut file (names
//! missing) until the write; writing without padding would leave the old
//! file's tail behind the new content until the truncate (half lines such
//! as `4 db` that glibc could read as an address). The copy done by the
//! one `pwrite` of a few KiB is the only window in which a reader can see
//! a mix, microseconds long.
//!
//! Crash safety: a crash between the steps leaves the new content plus
//! blank lines; a power loss during the write may leave pages of old and
//! new. Either way the first line, netloom's header, is the same in both,
//! so the file stays recognised as netloom's; the state record's pending
//! part (written before the apply) and the file digests make the next run
//! see the difference and write the file again. A file that does not exist
//! yet cannot be bind-mounted, so it is created atomically (temp file and
//! rename), as is anything at the path that is not a regular file.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};

use crate::host::state::write_atomic;

/// Writes `data` to `path`, keeping the inode of an existing regular file
/// (see the module docs for the order of the writes).
pub fn write_in_place(path: &Path, data: &[u8]) -> Result<()> {
    if write_in_place_unsynced(path, data)? {
        sync_file(path)?;
    }
    Ok(())
}

/// [`write_in_place`] without its last step: returns whether `path` still
/// has to be flushed to disk ([`sync_file`]), which is not the case for a
/// file created anew (created atomically, flushed before its rename). An
/// apply that rewrites many files (every member's hosts file when a
/// container joins a network) flushes them all after writing them all:
/// one flush after another costs each its own journal commit, flushes
/// after all the writes share them.
pub fn write_in_place_unsynced(path: &Path, data: &[u8]) -> Result<bool> {
    // O_NOFOLLOW: a symlink planted at the path is replaced, never
    // followed to a file elsewhere.
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => {
            return write_atomic(path, data).map(|()| false);
        }
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?;
    if !meta.file_type().is_file() {
        drop(file);
        return write_atomic(path, data).map(|()| false);
    }
    let old_len = meta.len();
    let new_len = data.len() as u64;
    let mut buf = Vec::with_capacity(data.len().max(old_len as usize));
    buf.extend_from_slice(data);
    // Padding: blank lines where the old file was longer.
    buf.resize(buf.len().max(old_len as usize), b'\n');
    file.write_all_at(&buf, 0)
        .with_context(|| format!("write {}", path.display()))?;
    if old_len > new_len {
        file.set_len(new_len)
            .with_context(|| format!("truncate {}", path.display()))?;
    }
    Ok(true)
}

/// Flushes the data of the regular file at `path` to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("open {} to flush it", path.display()))?;
    file.sync_data()
        .with_context(|| format!("fsync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn keeps_the_inode_and_ends_with_exactly_the_new_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("hosts");
        write_in_place(&p, b"# Written by netloom\n10.0.0.2\tdb\n10.0.0.3\tweb\n").expect("create");
        let ino = std::fs::metadata(&p).expect("stat").ino();
        // Shorter: the padding is truncated away.
        write_in_place(&p, b"# Written by netloom\n10.0.0.9\tdb\n").expect("shrink");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "# Written by netloom\n10.0.0.9\tdb\n"
        );
        // Longer.
        let long = "# Written by netloom\n10.0.0.9\tdb\n10.0.0.10\tweb web.n\n";
        write_in_place(&p, long.as_bytes()).expect("grow");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), long);
        assert_eq!(std::fs::metadata(&p).expect("stat").ino(), ino);
    }

    #[test]
    fn only_a_file_rewritten_in_place_is_left_to_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("hosts");
        // Created anew: atomically, flushed before its rename.
        assert!(!write_in_place_unsynced(&p, b"one\n").expect("create"));
        assert!(write_in_place_unsynced(&p, b"two\n").expect("rewrite"));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "two\n");
        sync_file(&p).expect("flush");
        let missing = dir.path().join("gone");
        assert!(sync_file(&missing).is_err());
    }

    #[test]
    fn an_open_reader_sees_the_new_content() {
        // What a bind mount sees: the same open inode.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("resolv.conf");
        write_in_place(&p, b"nameserver 10.0.0.1\nnameserver 9.9.9.9\n").expect("create");
        let held = std::fs::File::open(&p).expect("open");
        write_in_place(&p, b"nameserver 9.9.9.9\n").expect("rewrite");
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut &held, &mut seen).expect("read");
        assert_eq!(seen, "nameserver 9.9.9.9\n");
    }

    #[test]
    fn a_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "theirs\n").expect("write");
        let p = dir.path().join("hosts");
        std::os::unix::fs::symlink(&target, &p).expect("symlink");
        write_in_place(&p, b"ours\n").expect("write");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "theirs\n");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "ours\n");
        assert!(
            !std::fs::symlink_metadata(&p)
                .expect("lstat")
                .file_type()
                .is_symlink()
        );
    }
}
