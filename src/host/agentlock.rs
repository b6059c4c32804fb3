//! One agent per host: the agent holds an exclusive `flock` on
//! `STATE_DIR/agent.lock` for its whole life. A second `watch` fails to
//! take it and names the running agent instead of starting a second DNS
//! server and overwriting the first one's status.
//!
//! The lock file holds the holder's pid and start time; the kernel drops
//! the lock when the holder exits, however it exits, so a stale file never
//! blocks a new agent.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The lock file's name in the state dir.
pub const AGENT_LOCK: &str = "agent.lock";

/// Held for the agent's life; dropping it releases the lock.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

impl AgentLock {
    /// Takes the agent lock in `state_dir`, or fails naming the agent that
    /// holds it (pid, since when).
    pub fn acquire(state_dir: &Path, pid: u32, started: &str) -> Result<AgentLock> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("create state dir {}", state_dir.display()))?;
        let path = state_dir.join(AGENT_LOCK);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        // SAFETY: flock on a valid, owned descriptor has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("lock {}", path.display()));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = describe_holder(&text);
            bail!(
                "another netloom agent is running for state dir {} ({holder}); only one agent runs per host: stop it first (e.g. `systemctl stop netloom`)",
                state_dir.display()
            );
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| writeln!(file, "{pid} {started}"))
            .with_context(|| format!("write {}", path.display()))?;
        Ok(AgentLock { _file: file })
    }
}

/// `pid 4242, running since 2026-01-01T00:00:00Z` from the lock file's text.
fn describe_holder(text: &str) -> String {
    let mut w = text.split_whitespace();
    match (w.next(), w.next()) {
        (Some(pid), Some(since)) => format!("pid {pid}, running since {since}"),
        (Some(pid), None) => format!("pid {pid}"),
        _ => "pid unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_is_refused_and_told_who_runs() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentLock::acquire(dir.path(), 4242, "2026-01-01T00:00:00Z").unwrap();
        let err = AgentLock::acquire(dir.path(), 4243, "2026-01-02T00:00:00Z").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("pid 4242, running since 2026-01-01T00:00:00Z"),
            "{msg}"
        );
        drop(first);
        // Released on drop (as on exit): the next agent starts.
        AgentLock::acquire(dir.path(), 4243, "2026-01-02T00:00:00Z").unwrap();
    }
}
