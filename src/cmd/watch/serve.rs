//! The agent answers `plan` and `status` over its socket
//! ([`crate::host::agentsock`]) from the host as its last reconcile read
//! it, reading again only what may have changed since:
//!
//! - the host namespace, the nft table, sysctls and /run/netns: always
//!   (a few requests, not one per container);
//! - a container namespace: unless its event watch is running, saw no
//!   event since the view was read, and has no event left unread (proved
//!   under the watch's lock: see [`crate::host::events::watch_in`]), and
//!   its path still names the namespace the watch listens to;
//! - a file: unless its identity (inode, size, times) is the one taken
//!   before it was read.
//!
//! The answer is computed by the same functions the command runs, with
//! the command's file, state dir and host settings, so that it is the
//! command's own output. The agent declines (and the command reads the
//! kernel itself) for another file than its own or another version of it,
//! another state dir, in cluster mode, or while the state dir is locked.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{Agent, Trigger};
use crate::cmd::agent_client::format_of;
use crate::cmd::steps::{self, Exit, Loaded, Out};
use crate::core::model::{HostInfo, NsRef};
use crate::host::agentsock::{Answer, Listener, Request};
use crate::host::events::Watched;
use crate::host::observe::{Observation, Reuse};
use crate::host::state::{Record, StateDir};

/// How long an answer waits for the state dir (held by an `apply`): the
/// command then reads the kernel itself, after waiting for the lock.
const LOCK_WAIT: Duration = Duration::from_millis(200);

/// The event watch of one container's namespace.
pub struct NsWatch {
    pub netns: NsRef,
    /// (dev, inode) of the namespace the watch listens to.
    pub id: (u64, u64),
    pub watched: Watched,
}

/// A file's identity: any write, rename or removal changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The host as a reconcile (or an answer) read it.
pub struct View {
    pub obs: Observation,
    /// Identities of the files taken before they were read (None: absent).
    pub files: HashMap<String, Option<FileId>>,
}

/// A question and where its answer goes.
type Asked = (Request, oneshot::Sender<Answer>);

/// One question from a command, taken once by the agent's loop.
#[derive(Clone, Debug)]
pub struct Query(Arc<Mutex<Option<Asked>>>);

impl PartialEq for Query {
    fn eq(&self, other: &Query) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Query {}

impl Query {
    fn take(&self) -> Option<Asked> {
        self.0.lock().ok()?.take()
    }
}

/// The paths observation reads files at, as far as the agent knows them.
pub fn file_paths(record: &Record, expected: &HashSet<PathBuf>) -> BTreeSet<String> {
    record
        .owned
        .files
        .iter()
        .cloned()
        .chain(record.applied.iter().flat_map(|a| a.files.keys().cloned()))
        .chain(expected.iter().map(|p| p.display().to_string()))
        .collect()
}

/// The identity of each file now.
pub fn file_ids(paths: BTreeSet<String>) -> HashMap<String, Option<FileId>> {
    paths
        .into_iter()
        .map(|p| {
            let id = std::fs::symlink_metadata(&p).ok().map(|m| FileId {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            });
            (p, id)
        })
        .collect()
}

/// Accepts commands on the socket and hands their questions to the
/// agent's loop.
pub fn spawn_listener(listener: tokio::net::UnixListener, tx: mpsc::UnboundedSender<Trigger>) {
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(req) = Listener::request(&mut stream).await else {
                    return;
                };
                let (answer_tx, answer_rx) = oneshot::channel();
                let q = Query(Arc::new(Mutex::new(Some((req, answer_tx)))));
                if tx.send(Trigger::Query(q)).is_err() {
                    return;
                }
                if let Ok(answer) = answer_rx.await {
                    Listener::reply(&mut stream, answer).await;
                }
            });
        }
    });
}

impl Agent {
    /// Answers one question (or declines it).
    pub(super) async fn answer(&mut self, q: Query, rx: &mut mpsc::UnboundedReceiver<Trigger>) {
        let Some((req, reply)) = q.take() else {
            return;
        };
        let answer = match self.answer_inner(&req, rx).await {
            Ok(a) => a,
            Err(why) => {
                debug!("declined a `{}` query: {why}", req.command);
                Answer::Declined(why)
            }
        };
        let _ = reply.send(answer);
        crate::host::memory::trim();
    }

    async fn answer_inner(
        &mut self,
        req: &Request,
        rx: &mut mpsc::UnboundedReceiver<Trigger>,
    ) -> Result<Answer, String> {
        let format = format_of(&req.format).ok_or("unknown format")?;
        if req.command != "plan" && req.command != "status" {
            return Err(format!("unknown command {}", req.command));
        }
        if self.cluster.is_some() {
            return Err("a cluster agent".into());
        }
        let same_dir = std::fs::canonicalize(&req.state_dir).ok()
            == std::fs::canonicalize(&self.loaded.host.state_dir).ok();
        if !same_dir {
            return Err("another state dir".into());
        }
        if std::fs::canonicalize(&req.config).ok() != self.status.config {
            return Err("another file".into());
        }
        let text = req.config_text.as_bytes();
        if crate::core::hash::fnv64(text) != self.seen || self.status.config_error.is_some() {
            return Err("another version of the file than the one in force".into());
        }
        if self.view.is_none() {
            return Err("nothing read yet".into());
        }
        // Which namespaces are provably as read: first each watch says
        // under its lock that nothing is left unread in its socket, then
        // every event already forwarded is examined.
        let quiet: HashSet<String> = self
            .ns_watch
            .iter()
            .filter(|(_, w)| w.watched.quiet())
            .map(|(c, _)| c.clone())
            .collect();
        let mut later = Vec::new();
        while let Ok(t) = rx.try_recv() {
            let _ = self.drift_of(&t);
            later.push(t);
        }
        // Examined here; the loop judges them again for a reconcile.
        for t in later {
            let _ = self.tx.send(t);
        }
        let Some(view) = &self.view else {
            return Err("nothing read yet".into());
        };
        let mut trusted: HashSet<&NsRef> = HashSet::new();
        let mut doubted: HashSet<&NsRef> = HashSet::new();
        for (c, w) in &self.ns_watch {
            let same_ns =
                std::fs::metadata(w.netns.path()).is_ok_and(|m| (m.dev(), m.ino()) == w.id);
            if quiet.contains(c) && !self.dirty.contains(c) && same_ns {
                trusted.insert(&w.netns);
            } else {
                doubted.insert(&w.netns);
            }
        }
        let stale: BTreeSet<NsRef> = view
            .obs
            .views
            .keys()
            .filter(|ns| !trusted.contains(ns) || doubted.contains(ns))
            .cloned()
            .collect();

        let sd = StateDir::open(&self.loaded.host.state_dir, LOCK_WAIT)
            .map_err(|e| format!("the state dir is busy: {e:#}"))?;
        let record = sd.load().map_err(|e| format!("{e:#}"))?;
        let paths = file_paths(&record, &self.expect.files);
        let paths: BTreeSet<String> = paths
            .into_iter()
            .chain(view.files.keys().cloned())
            .collect();
        let files_now = file_ids(paths);
        let stale_files: BTreeSet<String> = files_now
            .iter()
            .filter(|(p, now)| match view.files.get(*p) {
                // Present then and now, unchanged: reusable if it was read.
                Some(then) if then == *now => {
                    now.is_some() && !view.obs.state.files.contains_key(*p)
                }
                _ => true,
            })
            .map(|(p, _)| p.clone())
            .collect();
        let spec = crate::core::spec::load_bytes(&req.config.display().to_string(), text)
            .map_err(|_| "the file does not validate".to_string())?;
        let l = Loaded {
            path: req.config.clone(),
            spec,
            host: HostInfo {
                upstream_dns: req.upstream_dns.clone(),
                state_dir: req.state_dir.clone(),
                agent_dns: req.agent_dns,
            },
        };
        debug!(
            "answering `{}`: {} of {} namespaces and {} of {} files read again",
            req.command,
            stale.len(),
            view.obs.views.len(),
            stale_files.len(),
            files_now.len()
        );
        let reuse = Reuse {
            earlier: &view.obs,
            stale,
            stale_files,
            // Events are followed for the container namespaces only.
            host: true,
            sysctls: true,
            firewall: None,
        };
        let p = steps::plan_live_with(&l, &record, Some(&reuse))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let (out, exit): (Out, Exit) = if req.command == "plan" {
            crate::cmd::plan_apply::plan_out(&p, format, req.detailed, req.verbose, req.color)
        } else {
            crate::cmd::status::status_out(&l, sd.path(), &p, format)
                .map_err(|e| format!("{e:#}"))?
        };
        drop(sd);
        // What was just read is the newest view; events examined so far
        // are in it.
        self.dirty.clear();
        self.view = Some(View {
            obs: p.observation,
            files: files_now,
        });
        Ok(Answer::Output {
            stdout: out.stdout,
            stderr: out.stderr,
            exit: exit as u8,
        })
    }
}
