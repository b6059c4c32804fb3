//! Confirmed applies (`apply --confirm-timeout`, `confirm`): the
//! checkpoint a confirmed apply leaves behind and the record of a rolled
//! back file content. Pure data and decisions; the shell keeps them in the
//! state dir (`checkpoint.json`, `rejected.json`).

use serde::{Deserialize, Serialize};

use crate::core::ipam::Allocations;
use crate::core::model::State;

/// Where a confirmed apply stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Applied, waiting for `netloom confirm` until the deadline.
    Pending,
    /// `netloom confirm` kept the change.
    Confirmed,
    /// No confirmation in time: the host was put back.
    RolledBack,
}

/// What netloom owned before a confirmed apply, and until when the change
/// may be confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Where the apply stands.
    pub phase: Phase,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds after which an unconfirmed change is rolled back.
    pub deadline: u64,
    /// The process that applied and waits.
    pub pid: u32,
    /// The file applied (marked rejected when rolled back).
    pub config_path: String,
    /// SHA-256 of the content applied, hex.
    pub config_sha256: String,
    /// The state of the last apply before this one (`None`: netloom owned
    /// nothing), and its allocations: what a rollback plans back to.
    pub previous: Option<State>,
    /// The allocations of that apply.
    pub previous_allocations: Allocations,
}

impl Checkpoint {
    /// Whether a pending change ran out of time at `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.phase == Phase::Pending && now >= self.deadline
    }
    /// Whether a change is waiting for confirmation at `now`.
    pub fn awaiting(&self, now: u64) -> bool {
        self.phase == Phase::Pending && now < self.deadline
    }
}

/// A file content that was rolled back: not applied again (by `apply` or
/// the agent) until the file changes or it is applied with
/// `--confirm-timeout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The file whose content was rolled back.
    pub config_path: String,
    /// SHA-256 of that content, hex.
    pub config_sha256: String,
    /// Unix seconds of the rollback.
    pub at: u64,
    /// Why it was rolled back (e.g. not confirmed in time).
    pub reason: String,
}

impl Rejected {
    /// Whether the file at `path` with content digest `sha256` is the
    /// rejected content.
    pub fn matches(&self, path: &str, sha256: &str) -> bool {
        self.config_path == path && self.config_sha256 == sha256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(phase: Phase) -> Checkpoint {
        Checkpoint {
            phase,
            created: 100,
            deadline: 130,
            pid: 1,
            config_path: "/etc/netloom.toml".into(),
            config_sha256: "ab".into(),
            previous: None,
            previous_allocations: Allocations::default(),
        }
    }

    #[test]
    fn only_a_pending_change_expires() {
        assert!(!cp(Phase::Pending).expired(129));
        assert!(cp(Phase::Pending).awaiting(129));
        assert!(cp(Phase::Pending).expired(130));
        assert!(!cp(Phase::Pending).awaiting(130));
        assert!(!cp(Phase::Confirmed).expired(1000));
        assert!(!cp(Phase::RolledBack).expired(1000));
    }

    #[test]
    fn rejected_matches_path_and_content() {
        let r = Rejected {
            config_path: "/a".into(),
            config_sha256: "1".into(),
            at: 0,
            reason: String::new(),
        };
        assert!(r.matches("/a", "1"));
        assert!(!r.matches("/a", "2"));
        assert!(!r.matches("/b", "1"));
    }

    #[test]
    fn serde_round_trip() {
        let c = cp(Phase::Pending);
        let s = serde_json::to_string(&c).expect("json");
        assert!(s.contains("\"phase\":\"pending\""));
        assert_eq!(serde_json::from_str::<Checkpoint>(&s).expect("back"), c);
    }
}
