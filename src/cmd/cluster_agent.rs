//! The agent's links to etcd in cluster mode: a task that follows the
//! desired state (reconnecting with backoff when etcd is away) and a task
//! that publishes this host's status under a lease.
//!
//! Neither task ever asks the agent to tear anything down: when etcd is
//! unreachable the agent keeps the last desired state it saw (on disk, see
//! [`crate::host::cluster`]) and keeps serving.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::cmd::cli::Cli;
use crate::core::cluster::{ClusterSpec, TlsFiles};
use crate::core::store::{DesiredDoc, HostStatus};
use crate::host::etcd::Store;

/// Longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Lease of a host's status key: it vanishes this long after the agent
/// stops renewing it (stopped, killed, or cut off from etcd).
const STATUS_TTL: i64 = 6;
/// How often the lease is renewed and the status rewritten.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Where etcd is.
#[derive(Clone, Debug)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: TlsFiles,
}

/// What the desired-state task reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromEtcd {
    /// A desired state and its revision.
    Desired(Box<DesiredDoc>, i64),
    /// etcd cannot be reached (or the watch broke); retrying.
    Unreachable(String),
}

/// The etcd endpoints: `--etcd`/`NETLOOM_ETCD`, else the file's.
pub fn endpoints(cli: &Cli, cluster: Option<&ClusterSpec>) -> Vec<String> {
    match &cli.etcd {
        Some(e) => vec![e.clone()],
        None => cluster.map(|c| c.etcd.clone()).unwrap_or_default(),
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5))).min(MAX_BACKOFF)
}

/// Follows the desired state: reads it (sending it if newer than
/// `after`), then watches for new revisions; on any failure reports
/// [`FromEtcd::Unreachable`] and tries again with backoff.
pub fn spawn_desired(etcd: Etcd, mut after: i64, tx: mpsc::UnboundedSender<FromEtcd>) {
    tokio::spawn(async move {
        let mut attempt = 0;
        loop {
            let result = async {
                let store = Store::connect(&etcd.endpoints, &etcd.prefix, &etcd.tls).await?;
                let read = store.read().await?;
                if let Some(doc) = read.doc {
                    if read.revision > after {
                        after = read.revision;
                        let _ = tx.send(FromEtcd::Desired(Box::new(doc), read.revision));
                    }
                }
                attempt = 0;
                let (dtx, mut drx) = mpsc::unbounded_channel();
                let fwd_tx = tx.clone();
                let fwd = tokio::spawn(async move {
                    let mut last = 0;
                    while let Some((doc, rev)) = drx.recv().await {
                        last = rev;
                        let _ = fwd_tx.send(FromEtcd::Desired(Box::new(doc), rev));
                    }
                    last
                });
                let r = store.watch_desired(after, &dtx).await;
                drop(dtx);
                if let Ok(last) = fwd.await {
                    after = after.max(last);
                }
                r
            }
            .await;
            if tx.is_closed() {
                return;
            }
            let msg = match result {
                Ok(()) => "the watch ended".to_string(),
                Err(e) => format!("{e:#}"),
            };
            warn!("etcd: {msg}; retrying");
            let _ = tx.send(FromEtcd::Unreachable(msg));
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    });
}

/// Publishes the latest value of `status` under a lease, renewing it;
/// reconnects with backoff while etcd is away.
pub fn spawn_status(etcd: Etcd, mut status: watch::Receiver<HostStatus>) {
    tokio::spawn(async move {
        let mut attempt = 0;
        loop {
            let result: anyhow::Result<()> = async {
                let store = Store::connect(&etcd.endpoints, &etcd.prefix, &etcd.tls).await?;
                let lease = store.grant(STATUS_TTL).await?;
                info!("publishing this host's status under lease {lease:x}");
                attempt = 0;
                loop {
                    let s = status.borrow_and_update().clone();
                    if !s.host.is_empty() {
                        store.put_status(&s, lease).await?;
                    }
                    tokio::select! {
                        changed = status.changed() => {
                            if changed.is_err() {
                                return Ok(());
                            }
                        }
                        _ = tokio::time::sleep(STATUS_EVERY) => {
                            store.keep_alive(lease).await?;
                        }
                    }
                }
            }
            .await;
            match result {
                Ok(()) => return,
                Err(e) => warn!("etcd: cannot publish the status: {e:#}; retrying"),
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    });
}
