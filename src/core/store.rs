//! Cluster mode: the key layout in etcd and the documents stored there.
//!
//! Every key lives under `PREFIX/v1/` (the `v1` is the format: a later
//! layout moves to `v2/` and migrates, while old agents keep reading
//! `v1/`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `PREFIX/v1/desired` | [`DesiredDoc`] (JSON): the file as pushed and the cluster allocation (VNIs, addresses of cluster networks) | `netloom push`, one transaction guarded by the `mod_revision` it read |
//! | `PREFIX/v1/status/HOST` | [`HostStatus`] (JSON) | the agent of HOST, under a lease (the key vanishes when the agent stops renewing it) |
//!
//! The revision of the desired state is the `mod_revision` of
//! `PREFIX/v1/desired`; an agent reports the revision it applied.

use serde::{Deserialize, Serialize};

use crate::core::share::ClusterAllocations;

/// The format of the documents under `PREFIX/v1/`.
pub const FORMAT: u32 = 1;

/// `PREFIX/v1/desired`.
pub fn desired_key(prefix: &str) -> String {
    format!("{prefix}/v{FORMAT}/desired")
}

/// `PREFIX/v1/status/` (each host's status is below it).
pub fn status_prefix(prefix: &str) -> String {
    format!("{prefix}/v{FORMAT}/status/")
}

/// `PREFIX/v1/status/HOST`.
pub fn status_key(prefix: &str, host: &str) -> String {
    format!("{}{host}", status_prefix(prefix))
}

/// The desired state of the cluster as `push` stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredDoc {
    /// [`FORMAT`].
    pub format: u32,
    /// Where the file came from, for messages (`FILE:LINE:COL` of a stored
    /// file that a newer netloom rejects).
    pub source: String,
    /// The file's text: every agent validates it with the same checks.
    pub file: String,
    /// VNIs and addresses of cluster networks, allocated by `push`.
    pub allocations: ClusterAllocations,
    /// When it was pushed (UTC, RFC 3339).
    pub pushed_at: String,
}

/// What an agent publishes about its host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's name, a key of `[hosts]`.
    pub host: String,
    /// Revision of the desired state last applied without error (0: none).
    pub applied_revision: i64,
    /// Newest revision the agent has seen.
    pub seen_revision: i64,
    /// Whether the host matched its share after the last reconcile.
    pub converged: bool,
    /// Objects the last reconcile left as they were, each with why.
    #[serde(default)]
    pub failed: Vec<String>,
    /// The last error, if the last reconcile failed.
    pub last_error: Option<String>,
    /// When this was written (UTC, RFC 3339).
    pub time: String,
}

/// One line of `netloom status --cluster`.
pub fn status_line(host: &str, status: Option<&HostStatus>, desired_revision: i64) -> String {
    match status {
        None => format!("{host}\tunreachable\tno status (agent stopped or cut off from etcd)"),
        Some(s) => {
            let state = if s.last_error.is_some() {
                "error"
            } else if s.applied_revision == desired_revision && s.converged {
                "converged"
            } else {
                "behind"
            };
            let mut line = format!(
                "{host}\t{state}\trevision {} of {desired_revision}",
                s.applied_revision
            );
            if !s.failed.is_empty() {
                line.push_str(&format!("\tfailed: {}", s.failed.join("; ")));
            }
            if let Some(e) = &s.last_error {
                line.push_str(&format!("\terror: {}", e.lines().next().unwrap_or("")));
            }
            line.push_str(&format!("\t({})", s.time));
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_versioned_under_the_prefix() {
        assert_eq!(desired_key("/netloom"), "/netloom/v1/desired");
        assert_eq!(status_key("/x", "node1"), "/x/v1/status/node1");
        assert!(status_key("/x", "n").starts_with(&status_prefix("/x")));
    }

    #[test]
    fn status_lines_say_converged_behind_error_or_unreachable() {
        let ok = HostStatus {
            host: "a".into(),
            applied_revision: 7,
            seen_revision: 7,
            converged: true,
            time: "t".into(),
            ..Default::default()
        };
        assert!(status_line("a", Some(&ok), 7).contains("\tconverged\t"));
        assert!(status_line("a", Some(&ok), 9).contains("\tbehind\t"));
        let bad = HostStatus {
            last_error: Some("boom\nmore".into()),
            ..ok.clone()
        };
        let l = status_line("a", Some(&bad), 7);
        assert!(l.contains("\terror\t") && l.contains("error: boom") && !l.contains("more"));
        assert!(status_line("b", None, 7).contains("\tunreachable\t"));
    }
}
