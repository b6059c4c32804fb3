//! The state dir: IPAM allocations, what netloom owns, the last applied
//! state (to tell drift from change), and the agent's last runs.
//!
//! One run at a time holds an exclusive `flock` on `STATE_DIR/lock` for its
//! whole duration; every record is written atomically (temp file, fsync,
//! rename, fsync of the directory) so a crash leaves the old or the new
//! record, never half of one.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::core::ipam::Allocations;
use crate::core::model::State;

const RECORD: &str = "state.json";
const RECORD_VERSION: u32 = 1;

/// What netloom created and may therefore change or delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// Bridge interface names.
    #[serde(default)]
    pub bridges: BTreeSet<String>,
    /// Named namespaces netloom created in /run/netns.
    #[serde(default)]
    pub netns: BTreeSet<String>,
    /// Namespaces attached by path (never deleted, but observed).
    #[serde(default)]
    pub netns_paths: BTreeSet<PathBuf>,
    /// Files written.
    #[serde(default)]
    pub files: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    #[serde(default)]
    pub allocations: Allocations,
    #[serde(default)]
    pub owned: Owned,
    /// The desired state of the last apply that converged.
    #[serde(default)]
    pub applied: Option<State>,
}

/// An open, locked state dir.
pub struct StateDir {
    path: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates the dir if needed and takes the lock, waiting up to `wait`
    /// for another run (e.g. the agent's reconcile) to finish.
    pub fn open(path: &Path, wait: Duration) -> Result<StateDir> {
        fs::create_dir_all(path).with_context(|| format!("create state dir {}", path.display()))?;
        let lock_path = path.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("open {}", lock_path.display()))?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a valid, owned descriptor has no memory effects.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("lock {}", lock_path.display()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "another netloom run holds {} (waited {}s)",
                    lock_path.display(),
                    wait.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(StateDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<Record> {
        let p = self.path.join(RECORD);
        match fs::read(&p) {
            Ok(bytes) => {
                let r: Record = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a netloom state record", p.display()))?;
                if r.version > RECORD_VERSION {
                    bail!(
                        "{} was written by a newer netloom (version {})",
                        p.display(),
                        r.version
                    );
                }
                Ok(r)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record {
                version: RECORD_VERSION,
                ..Default::default()
            }),
            Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
        }
    }

    pub fn save(&self, r: &Record) -> Result<()> {
        let mut r = r.clone();
        r.version = RECORD_VERSION;
        let json = serde_json::to_vec_pretty(&r).context("serialize state record")?;
        write_atomic(&self.path.join(RECORD), &json)
    }

    /// Removes the record (for `down`); the lock file goes with the dir.
    pub fn remove_all(self) -> Result<()> {
        let p = self.path.clone();
        drop(self);
        match fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", p.display())),
        }
    }
}

/// Writes `data` to `path` atomically: temp file in the same dir, fsync,
/// rename over, fsync the dir.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.netloom-tmp.{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path(), Duration::from_secs(1)).unwrap();
        let mut r = sd.load().unwrap();
        r.owned.bridges.insert("docker0".into());
        sd.save(&r).unwrap();
        assert_eq!(sd.load().unwrap().owned, r.owned);
        // A second opener times out while the first holds the lock.
        let err = StateDir::open(dir.path(), Duration::from_millis(100))
            .err()
            .unwrap();
        assert!(err.to_string().contains("another netloom run"));
        drop(sd);
        assert!(StateDir::open(dir.path(), Duration::from_millis(100)).is_ok());
    }
}

/// Where the agent keeps the outcome of its last runs, in the state dir.
pub const AGENT_FILE: &str = "agent.json";

/// One reconcile, as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub time: String,
    pub trigger: String,
    pub added: usize,
    pub changed: usize,
    pub destroyed: usize,
    pub millis: u64,
    pub error: Option<String>,
    /// Objects that failed and were left as they are (the rest was applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<crate::core::plan::Failure>,
}

/// The agent's status file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub started: String,
    pub summary: String,
    pub config_error: Option<String>,
    pub runs: Vec<Run>,
}

impl AgentStatus {
    /// Writes `STATE_DIR/agent.json` atomically.
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join(AGENT_FILE);
        let json = serde_json::to_vec_pretty(self).context("serialize the agent status")?;
        write_atomic(&path, &json).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The last status an agent wrote in this state dir, if any readable.
    pub fn read(state_dir: &Path) -> Option<AgentStatus> {
        let bytes = fs::read(state_dir.join(AGENT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether the agent that wrote this status still runs (signal 0). An
    /// agent that exited but was not yet reaped by its parent (a zombie)
    /// serves nothing and does not count.
    pub fn alive(&self) -> bool {
        let signalled = i32::try_from(self.pid).is_ok_and(|p| {
            p > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
        });
        signalled && !is_zombie(self.pid)
    }
}

/// Whether /proc says `pid` has exited and waits to be reaped (state `Z`).
/// The state follows the command name, which is in parentheses and may
/// itself contain spaces or parentheses.
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}
