//! Marks that make netloom's objects recognisable without the state record.
//!
//! Interfaces carry an `ifalias` (see [`crate::core::model::parse_alias`]),
//! files a header line ([`crate::core::model::FILE_MARK`]) and nft tables a
//! comment ([`crate::core::firewall::TABLE_MARK`]). A namespace has no field
//! of its own to carry a mark, so netloom keeps one beside it:
//! `/run/netloom/netns/NAME`, written *before* the namespace is created and
//! completed with the namespace's inode right after. Both live on `/run`,
//! so a reboot wipes marks and namespaces together.
//!
//! A mark without inode (a crash between writing it and creating the
//! namespace, or right after creating it) claims whatever namespace of that
//! name exists; a mark with an inode claims only that very namespace, so a
//! namespace someone else made later under the same name stays theirs.
//!
//! `/run/netloom/owner` names the state dir of the one netloom instance
//! that owns this host's networking (see [`Owner`]).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::core::model::{ETC_NETNS, FILE_MARK, named_path};

/// Where netloom keeps host-wide marks.
pub const RUN_DIR: &str = "/run/netloom";

fn netns_dir() -> PathBuf {
    Path::new(RUN_DIR).join("netns")
}

fn netns_mark_path(name: &str) -> PathBuf {
    netns_dir().join(name)
}

/// Writes the mark of namespace `name` before it is created (the intent).
pub fn netns_intent(name: &str) -> Result<()> {
    let p = netns_mark_path(name);
    write_small(&p, &format!("netloom netns {name}\n"))
}

/// Completes the mark with the inode of the namespace just created.
pub fn netns_seal(name: &str) -> Result<()> {
    let ino = fs::metadata(named_path(name))
        .with_context(|| format!("stat {}", named_path(name).display()))?
        .ino();
    write_small(
        &netns_mark_path(name),
        &format!("netloom netns {name}\ninode {ino}\n"),
    )
}

/// Removes the mark after the namespace is gone.
pub fn netns_unmark(name: &str) -> Result<()> {
    remove_if_present(&netns_mark_path(name))
}

/// Whether the namespace `/run/netns/NAME` that exists now carries
/// netloom's mark.
pub fn netns_marked(name: &str) -> bool {
    let Ok(text) = fs::read_to_string(netns_mark_path(name)) else {
        return false;
    };
    let inode = text
        .lines()
        .find_map(|l| l.strip_prefix("inode "))
        .and_then(|i| i.trim().parse::<u64>().ok());
    match inode {
        // Intent only: the crash came before or right after the creation.
        None => true,
        Some(ino) => fs::metadata(named_path(name)).is_ok_and(|m| m.ino() == ino),
    }
}

/// Names of namespaces carrying a mark (whether or not they still exist).
pub fn marked_netns() -> Vec<String> {
    let Ok(entries) = fs::read_dir(netns_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// Files under `/etc/netns` and `STATE_DIR/files` whose first line is
/// netloom's header: what netloom wrote, found without the record.
pub fn marked_files(state_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for root in [PathBuf::from(ETC_NETNS), state_dir.join("files")] {
        let Ok(dirs) = fs::read_dir(&root) else {
            continue;
        };
        for d in dirs.filter_map(|e| e.ok()) {
            for name in ["hosts", "resolv.conf"] {
                let p = d.path().join(name);
                if file_marked(&p) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether the file at `p` starts with netloom's header.
pub fn file_marked(p: &Path) -> bool {
    fs::read_to_string(p).is_ok_and(|t| t.starts_with(FILE_MARK))
}

/// The netloom instance that owns this host: `/run/netloom/owner` holds its
/// state dir. One owner per host: a second instance with another state dir
/// would fight the first over bridges, addresses and the nft table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub state_dir: PathBuf,
}

fn owner_path() -> PathBuf {
    Path::new(RUN_DIR).join("owner")
}

impl Owner {
    /// Where the owner is recorded (for messages).
    pub fn path() -> PathBuf {
        owner_path()
    }

    /// The recorded owner, if any.
    pub fn read() -> Option<Owner> {
        let text = fs::read_to_string(owner_path()).ok()?;
        let dir = text.lines().find_map(|l| l.strip_prefix("state_dir "))?;
        Some(Owner {
            state_dir: PathBuf::from(dir),
        })
    }

    /// The owner as recorded, or `None` when it is `state_dir` or nobody.
    pub fn other_than(state_dir: &Path) -> Option<Owner> {
        let o = Owner::read()?;
        (!same_dir(&o.state_dir, state_dir)).then_some(o)
    }

    /// Records `state_dir` as the owner (before anything is created).
    pub fn claim(state_dir: &Path) -> Result<()> {
        let dir = canonical(state_dir);
        write_small(
            &owner_path(),
            &format!("netloom owner\nstate_dir {}\n", dir.display()),
        )
    }

    /// Forgets the owner (after `down`), if it is `state_dir`.
    pub fn release(state_dir: &Path) -> Result<()> {
        match Owner::read() {
            Some(o) if !same_dir(&o.state_dir, state_dir) => Ok(()),
            _ => remove_if_present(&owner_path()),
        }
    }
}

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether two paths name the same directory.
pub fn same_dir(a: &Path, b: &Path) -> bool {
    canonical(a) == canonical(b)
}

/// Writes a small file under `/run/netloom` (a tmpfs: its life is the
/// boot's, like the namespaces it marks; no fsync needed).
fn write_small(p: &Path, text: &str) -> Result<()> {
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // A dot name: never mistaken for a mark while it is being written.
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("mark");
    let tmp = p.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let mut f = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, p).with_context(|| format!("rename {} to {}", tmp.display(), p.display()))
}

fn remove_if_present(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", p.display())),
    }
}
