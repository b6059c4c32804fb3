//! Cluster mode: the desired state, the allocations and each host's status
//! in etcd (key layout: [`crate::core::store`]).
//!
//! Writes of the desired state are transactions guarded by the
//! `mod_revision` the writer read, so two concurrent `push`es never mix:
//! one commits, the other sees [`Written::Conflict`] and starts over from
//! what the first wrote. Every request has a deadline, so an unreachable
//! etcd is an error the caller can retry, never a hang.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};

use crate::core::cluster::TlsFiles;
use crate::core::store::{self, DesiredDoc, HostStatus};

/// Deadline of one request (and of connecting).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to etcd for one key prefix.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

/// The desired state as read, with the revision that guards a write.
#[derive(Clone, Debug)]
pub struct Read {
    pub doc: Option<DesiredDoc>,
    /// `mod_revision` of the desired key; 0 when absent.
    pub revision: i64,
}

/// The outcome of a guarded write.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed at this revision.
    Committed(i64),
    /// The desired state changed since it was read; nothing was written.
    Conflict,
}

impl Store {
    /// Connects to `endpoints` (comma-separated lists allowed).
    pub async fn connect(endpoints: &[String], prefix: &str, tls: &TlsFiles) -> Result<Store> {
        let eps: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if eps.is_empty() {
            return Err(anyhow!(
                "no etcd endpoint: give --etcd URL[,URL], NETLOOM_ETCD or [cluster] etcd in the file"
            ));
        }
        let mut opts = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let Some(t) = tls_options(tls)? {
            opts = opts.with_tls(t);
        }
        let client = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&eps, Some(opts)))
            .await
            .map_err(|_| anyhow!("connect to etcd at {}: timed out", eps.join(",")))?
            .with_context(|| format!("connect to etcd at {}", eps.join(",")))?;
        Ok(Store {
            client,
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Reads the desired state and its revision.
    pub async fn read(&self) -> Result<Read> {
        let key = store::desired_key(&self.prefix);
        let mut kv = self.client.kv_client();
        let resp = deadline(kv.get(key.clone(), None), "read the desired state").await?;
        match resp.kvs().first() {
            None => Ok(Read {
                doc: None,
                revision: 0,
            }),
            Some(kv) => {
                let doc: DesiredDoc = serde_json::from_slice(kv.value())
                    .with_context(|| format!("parse {key} in etcd"))?;
                if doc.format != store::FORMAT {
                    return Err(anyhow!(
                        "{key} has format {}, this netloom reads format {}",
                        doc.format,
                        store::FORMAT
                    ));
                }
                Ok(Read {
                    doc: Some(doc),
                    revision: kv.mod_revision(),
                })
            }
        }
    }

    /// Writes `doc` if the desired state is still at `revision` (0: absent).
    pub async fn write_if(&self, doc: &DesiredDoc, revision: i64) -> Result<Written> {
        let key = store::desired_key(&self.prefix);
        let value = serde_json::to_vec(doc).context("serialize the desired state")?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let mut kv = self.client.kv_client();
        let resp = deadline(kv.txn(txn), "write the desired state").await?;
        if !resp.succeeded() {
            return Ok(Written::Conflict);
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Written::Committed(rev))
    }

    /// Watches the desired key from `after + 1`: each new value (and its
    /// revision) is sent on `tx` until the watch fails.
    pub async fn watch_desired(
        &self,
        after: i64,
        tx: &tokio::sync::mpsc::UnboundedSender<(DesiredDoc, i64)>,
    ) -> Result<()> {
        let key = store::desired_key(&self.prefix);
        let mut w = self.client.watch_client();
        let opts = WatchOptions::new().with_start_revision(after + 1);
        let mut stream =
            deadline(w.watch(key.clone(), Some(opts)), "watch the desired state").await?;
        loop {
            let Some(resp) = stream.message().await.context("watch the desired state")? else {
                return Err(anyhow!("etcd closed the watch"));
            };
            if resp.canceled() {
                return Err(anyhow!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                ));
            }
            for ev in resp.events() {
                if ev.event_type() != EventType::Put {
                    continue;
                }
                let Some(kv) = ev.kv() else { continue };
                match serde_json::from_slice::<DesiredDoc>(kv.value()) {
                    Ok(doc) => {
                        if tx.send((doc, kv.mod_revision())).is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::error!("ignoring an unreadable {key}: {e}"),
                }
            }
        }
    }

    /// Grants a lease of `ttl` seconds.
    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        let mut l = self.client.lease_client();
        Ok(deadline(l.grant(ttl, None), "grant a lease").await?.id())
    }

    /// Renews a lease once; an error when it expired or etcd is away.
    pub async fn keep_alive(&self, lease: i64) -> Result<()> {
        let mut l = self.client.lease_client();
        let (mut keeper, mut stream) = deadline(l.keep_alive(lease), "renew the lease").await?;
        deadline(keeper.keep_alive(), "renew the lease").await?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, stream.message())
            .await
            .map_err(|_| anyhow!("renew the lease: timed out"))?
            .context("renew the lease")?;
        match resp {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(anyhow!("lease {lease:x} expired")),
        }
    }

    /// Publishes a host's status under `lease`.
    pub async fn put_status(&self, status: &HostStatus, lease: i64) -> Result<()> {
        let key = store::status_key(&self.prefix, &status.host);
        let value = serde_json::to_vec(status).context("serialize the status")?;
        let mut kv = self.client.kv_client();
        deadline(
            kv.put(key, value, Some(PutOptions::new().with_lease(lease))),
            "publish the status",
        )
        .await?;
        Ok(())
    }

    /// Every host's published status.
    pub async fn statuses(&self) -> Result<Vec<HostStatus>> {
        let mut kv = self.client.kv_client();
        let resp = deadline(
            kv.get(
                store::status_prefix(&self.prefix),
                Some(GetOptions::new().with_prefix()),
            ),
            "read the hosts' status",
        )
        .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            match serde_json::from_slice::<HostStatus>(kv.value()) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!("ignoring an unreadable status: {e}"),
            }
        }
        Ok(out)
    }
}

async fn deadline<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    what: &str,
) -> Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| anyhow!("{what}: etcd did not answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| what.to_string())
}

fn tls_options(t: &TlsFiles) -> Result<Option<TlsOptions>> {
    if t.ca_file.is_none() && t.cert_file.is_none() {
        return Ok(None);
    }
    let mut o = TlsOptions::new();
    if let Some(ca) = &t.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
        o = o.ca_certificate(Certificate::from_pem(pem));
    }
    if let (Some(c), Some(k)) = (&t.cert_file, &t.key_file) {
        let cert = std::fs::read(c).with_context(|| format!("read {}", c.display()))?;
        let key = std::fs::read(k).with_context(|| format!("read {}", k.display()))?;
        o = o.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(o))
}
