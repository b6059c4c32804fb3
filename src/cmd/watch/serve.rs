//! The agent answers `plan` and `status` over its socket
//! ([`crate::host::agentsock`]) from its view of the host (the last
//! reading, by a reconcile, an answer or a refresh), reading again only
//! what may have changed since ([`Agent::fresh`]):
//!
//! - a container namespace: unless its event watch is running, saw no
//!   event since the view was read, and has no event left unread (proved
//!   under the watch's lock: see [`crate::host::events::watch_in`]), and
//!   its path still names the namespace the watch listens to;
//! - the host namespace: likewise, by its own watch
//!   ([`crate::host::events::watch_here`]);
//! - nft: unless the ruleset's generation moved;
//! - a file: unless its identity (inode, size, times) is the one taken
//!   before it was read;
//! - sysctls, /run/netns and host ports held by processes: always (no
//!   event tells of them).
//!
//! When nothing changed at all, the last answer is rendered again. The
//! answer is computed by the same functions the command runs, with the
//! command's file, state dir and host settings, so that it is the
//! command's own output. The agent declines (and the command reads the
//! kernel itself) for another file than its own or another version of it,
//! another state dir, in cluster mode, or while the state dir is locked.
//! `apply` of its file is a reconcile whose output goes to the command
//! (unless the command was run with `NETLOOM_AGENT_APPLIES=0`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::witness::Touched;
use super::{Agent, Trigger};
use crate::cmd::agent_client::format_of;
use crate::cmd::steps::{self, Exit, Loaded, Out};
use crate::core::ipam::Allocations;
use crate::core::model::{Desired, FileText, HostInfo, NsRef, State};
use crate::core::plan::{Failure, Plan};
use crate::host::agentsock::{Answer, Listener, Request};
use crate::host::events::Watched;
use crate::host::observe::{Observation, Reuse};
use crate::host::state::{Pending, Record, StateDir};

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
    /// The file as resolved for that reading, and what it was resolved
    /// from.
    pub resolved: Option<Resolved>,
    /// The rest of an answer computed from this reading: reused whole
    /// while every input is provably unchanged.
    pub settled: Option<Settled>,
}

impl View {
    /// The view as the agent keeps it between readings: a file that held
    /// the desired text is known by that text's digest, in the desired
    /// state and in the reading alike (at 1,000 containers the hosts and
    /// resolv.conf texts are 3 MB, the largest part of the view). A
    /// reading that reuses such a file takes the text desired then if it
    /// has that digest, or keeps the digest when only it is desired
    /// ([`crate::host::observe::observe_with`]); a plan takes the digests,
    /// and resolves the file again only for a file to write
    /// ([`Agent::plan_fresh`]). Files that held anything else keep their
    /// text: they are drift, or about to be written.
    ///
    /// A desired state that is the applied state of `record` (the record
    /// the agent keeps, as it was saved or read) is not kept a second
    /// time: the view takes it from that record ([`Resolved::state`]).
    pub fn kept(mut self, record: Option<&Arc<Record>>) -> View {
        if let Some(r) = &mut self.resolved {
            digest_converged_files(&mut self.obs.state, &mut r.desired.state);
            if let Some(rec) = record
                && r.recorded.is_none()
                && rec
                    .applied()
                    .is_some_and(|a| crate::core::model::same_as_recorded(a, &r.desired.state))
            {
                r.desired.state = State::default();
                r.recorded = Some(rec.clone());
            }
        }
        self
    }
}

/// Replaces the text of each file `obs` holds as `desired` wants it with
/// its digest, in both (one shared string).
fn digest_converged_files(obs: &mut State, desired: &mut State) {
    let converged: Vec<(&String, &FileText)> = desired
        .files
        .iter()
        .filter(|(_, want)| !crate::core::model::is_digest(want))
        .filter(|(path, want)| obs.files.get(*path).is_some_and(|seen| seen == *want))
        .collect();
    // Hashed together: every file of a large host.
    let texts: Vec<&FileText> = converged.iter().map(|(_, want)| *want).collect();
    let digests = crate::core::model::file_digests(&texts);
    let paths: Vec<String> = converged.into_iter().map(|(p, _)| p.clone()).collect();
    for (path, digest) in paths.into_iter().zip(digests) {
        let digest: FileText = digest.into();
        obs.files_mut().insert(path.clone(), digest.clone());
        desired.files_mut().insert(path, digest);
    }
}

/// The agent's file resolved against a record's allocations and a host.
pub struct Resolved {
    /// Hash of the file's content.
    pub config: u64,
    pub host: HostInfo,
    pub allocations: Allocations,
    /// Without its state when `recorded` holds it.
    pub desired: Desired,
    /// The record whose applied state is the desired state, as the record
    /// keeps it (files by digest): set by [`View::kept`].
    pub recorded: Option<Arc<Record>>,
}

impl Resolved {
    fn fits(&self, config: u64, host: &HostInfo, record: &Record) -> bool {
        self.config == config && self.host == *host && self.allocations == record.allocations
    }

    /// The desired state (files that held it known by digest).
    fn state(&self) -> &State {
        self.recorded
            .as_ref()
            .and_then(|r| r.applied())
            .unwrap_or(&self.desired.state)
    }

    /// The whole desired state, for rendering an answer: the state taken
    /// from the record when it is there. The rest moves out of `self`
    /// until [`Resolved::put_back`].
    fn take_desired(&mut self) -> Desired {
        let state = match &self.recorded {
            Some(_) => self.state().clone(),
            None => std::mem::take(&mut self.desired.state),
        };
        Desired {
            state,
            allocations: std::mem::take(&mut self.desired.allocations),
            networks: std::mem::take(&mut self.desired.networks),
            zones: std::mem::take(&mut self.desired.zones),
            dns_clients: std::mem::take(&mut self.desired.dns_clients),
            external_files: std::mem::take(&mut self.desired.external_files),
        }
    }

    /// A copy of the whole desired state (files that held it known by
    /// digest).
    fn desired_copy(&self) -> Desired {
        Desired {
            state: self.state().clone(),
            allocations: self.desired.allocations.clone(),
            networks: self.desired.networks.clone(),
            zones: self.desired.zones.clone(),
            dns_clients: self.desired.dns_clients.clone(),
            external_files: self.desired.external_files.clone(),
        }
    }

    /// Gives back what [`Resolved::take_desired`] took.
    fn put_back(&mut self, mut desired: Desired) {
        if self.recorded.is_some() {
            desired.state = State::default();
        }
        self.desired = desired;
    }

    /// Whether it holds every file's text, not a digest of some (see
    /// [`View::kept`]): only then does a plan take it as it is; otherwise
    /// the plan holds only while those files are as desired
    /// ([`digested_files_hold`]).
    fn has_texts(&self) -> bool {
        self.recorded.is_none()
            && !self
                .desired
                .state
                .files
                .values()
                .any(|t| crate::core::model::is_digest(t))
    }
}

/// Whether the host holds every file `p` desires by digest only as
/// desired. A plan skips such files (it has no text to write), so a plan
/// made from a desired state kept with digests ([`View::kept`]) holds only
/// then; else the file is resolved again for its texts.
fn digested_files_hold(p: &steps::Planned) -> bool {
    let mut pairs: Vec<(&str, &FileText)> = Vec::new();
    for (path, want) in p.desired.state.files.iter() {
        if !crate::core::model::is_digest(want) {
            continue;
        }
        match p.observation.state.files.get(path) {
            // Taken from the view as that same digest.
            Some(have) if have == want => {}
            Some(have) => pairs.push((want, have)),
            None => return false,
        }
    }
    crate::core::model::files_match(&pairs)
        .into_iter()
        .all(|m| m)
}

/// What an answer computed besides its reading ([`View::obs`]) and the
/// resolved file, with what else it was computed from.
pub struct Settled {
    /// The record it was planned against (the record file's identity and
    /// the namespace marks adopted into it).
    record: RecordId,
    /// None when it is the desired state itself (nothing held back): a
    /// second copy of every file text is not kept for that.
    held_target: Option<State>,
    plan: Plan,
    held: Vec<Failure>,
    warnings: Vec<String>,
    interrupted: Option<Pending>,
    /// The host ports found taken by processes (no kernel event says when
    /// a process binds a port: probed again for every answer).
    probes: Vec<Failure>,
    /// The sysctls it read (their values are in the view), read again for
    /// every answer: no event says when one changes.
    sysctls: Vec<String>,
}

impl Settled {
    /// The answer `p` is, planned against `record` (whose file and marks
    /// are `id`) by an answer or a reconcile that changed nothing: what it
    /// needs besides the reading and the desired state is taken out of
    /// `p`.
    pub(super) fn of(id: RecordId, record: &Record, p: &mut steps::Planned) -> Settled {
        Settled {
            record: id,
            probes: crate::host::portprobe::conflicts(&p.desired.state, &p.observation.state),
            sysctls: sysctl_keys(&p.desired.state, record),
            held_target: p.held_target.take(),
            plan: std::mem::take(&mut p.plan),
            held: std::mem::take(&mut p.held),
            warnings: std::mem::take(&mut p.warnings),
            interrupted: p.interrupted.take(),
        }
    }
}

/// A state record as [`StateDir::load`] reads it: the record file and the
/// namespace marks it adopts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RecordId {
    file: Option<FileId>,
    marks: Vec<String>,
}

impl RecordId {
    pub(super) fn now(sd: &StateDir) -> RecordId {
        RecordId {
            file: file_id(&sd.record_path()),
            marks: crate::host::marks::marked_netns(),
        }
    }
}

/// What of the agent's view is still the host ([`Agent::fresh`]).
pub struct Fresh {
    /// Container namespaces to read again.
    pub stale: BTreeSet<NsRef>,
    /// The host namespace is as the view read it.
    pub host_same: bool,
    /// The host's events say what changed in it since the view read it:
    /// its watch lost none, and no VXLAN device's forwarding entries (which
    /// it does not follow) are in the view.
    pub host_by_events: bool,
    /// The nft ruleset generation now.
    pub nft_now: Option<u32>,
    /// The nft ruleset is the one the view read.
    pub nft_same: bool,
    /// The identity (dev, inode) of each watched namespace, taken just
    /// now: the clash checks need not take it a second time.
    pub ns_ids: HashMap<NsRef, (u64, u64)>,
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

    /// Whether it asks for an `apply`.
    pub fn is_apply(&self) -> bool {
        self.0
            .lock()
            .is_ok_and(|q| q.as_ref().is_some_and(|(r, _)| r.command == "apply"))
    }
}

/// How `apply`'s output is asked for, and where it goes.
pub struct ApplyAsk<'a> {
    pub format: crate::cmd::cli::Format,
    pub detailed: bool,
    pub verbose: bool,
    pub color: bool,
    /// The command waiting for the output: answered by the reconcile as
    /// soon as the apply is done ([`ApplyAsk::reply`]).
    pub waiting: &'a Reply,
}

impl ApplyAsk<'_> {
    /// Sends the command what `apply` prints. The reconcile calls it once
    /// the apply is recorded and the embedded DNS serves its names, before
    /// the agent's own bookkeeping (its view and status), which the
    /// command does not wait for: a question after it is answered after
    /// that bookkeeping anyway, since the agent takes one at a time.
    pub fn reply(&self, out: steps::Out, exit: Exit) {
        self.waiting.send(Answer::Output {
            stdout: out.stdout,
            stderr: out.stderr,
            exit: exit as u8,
        });
    }
}

/// Where the answer to one question goes, sent at most once.
pub struct Reply(Mutex<Option<oneshot::Sender<Answer>>>);

impl Reply {
    fn new(tx: oneshot::Sender<Answer>) -> Reply {
        Reply(Mutex::new(Some(tx)))
    }

    /// Sends `a` unless an answer went out already.
    fn send(&self, a: Answer) {
        if let Some(tx) = self.0.lock().ok().and_then(|mut t| t.take()) {
            // The command may have given up waiting.
            let _ = tx.send(a);
        }
    }
}

/// The paths observation reads files at, as far as the agent knows them,
/// and those of `seen` (a view's identities), each once. Gathered by
/// reference and copied once: at 1,000 containers the record, the applied
/// state, the expectations and the view name the same 2,000 paths, and
/// copying each of them into ordered sets took about 2 ms, a third of an
/// answer's resolving and file identities together (measured).
pub fn file_paths(
    record: &Record,
    expected: &HashSet<PathBuf>,
    seen: Option<&HashMap<String, Option<FileId>>>,
) -> Vec<String> {
    let mut paths: HashSet<&str> = HashSet::with_capacity(expected.len());
    paths.extend(record.owned.files.iter().map(String::as_str));
    paths.extend(
        record
            .applied()
            .into_iter()
            .flat_map(|a| a.files.keys().map(String::as_str)),
    );
    paths.extend(seen.into_iter().flat_map(|s| s.keys().map(String::as_str)));
    // Expected paths come from the desired state's (UTF-8) paths; one
    // that is not UTF-8 is named as before, lossily.
    let mut lossy = Vec::new();
    for p in expected {
        match p.to_str() {
            Some(s) => {
                paths.insert(s);
            }
            None => lossy.push(p.display().to_string()),
        }
    }
    lossy.retain(|p| !paths.contains(p.as_str()));
    lossy.sort_unstable();
    lossy.dedup();
    paths.into_iter().map(str::to_owned).chain(lossy).collect()
}

/// The identity of each file now, taken on both cores
/// ([`file_ids_beside`] with nothing beside).
pub fn file_ids(paths: Vec<String>) -> HashMap<String, Option<FileId>> {
    file_ids_beside(paths, || ()).1
}

/// `work` done on this thread while a helper thread takes the identity
/// of each file of `paths`; this thread then takes a share of what is
/// left. Thousands of stat calls (about 5 ms for the 2,000 files of 1,000
/// containers, measured) are the longer part when `work` is short, and
/// are then shared by both cores.
pub fn file_ids_beside<T>(
    paths: Vec<String>,
    work: impl FnOnce() -> T,
) -> (T, HashMap<String, Option<FileId>>) {
    let (done, ids) = map_beside(&paths, |p| file_id(std::path::Path::new(p)), work);
    // The paths are moved into the map, not copied.
    (done, paths.into_iter().zip(ids).collect())
}

/// `f` of each item, in order, with `work` done on this thread while a
/// helper thread starts on the items; this thread then takes its share.
/// For system calls by the thousand (stat calls above all), whose cost is
/// the calls themselves: the paths' length makes little difference
/// (measured), their number on one core does. A few items are done on
/// this thread alone.
pub fn map_beside<I: Sync, R: Send, T>(
    items: &[I],
    f: impl Fn(&I) -> R + Sync,
    work: impl FnOnce() -> T,
) -> (T, Vec<R>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CHUNK: usize = 64;
    if items.len() <= CHUNK {
        let done = work();
        return (done, items.iter().map(f).collect());
    }
    let next = AtomicUsize::new(0);
    // Each thread takes chunks of items and returns results by index.
    let take = || {
        let mut out = Vec::new();
        loop {
            let start = next.fetch_add(CHUNK, Ordering::Relaxed);
            let end = items.len().min(start + CHUNK);
            if start >= end {
                return out;
            }
            out.extend((start..end).map(|i| (i, f(&items[i]))));
        }
    };
    let (done, mut out) = std::thread::scope(|s| {
        let helper = s.spawn(take);
        let done = work();
        let mut out = take();
        out.extend(
            helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        );
        (done, out)
    });
    out.sort_unstable_by_key(|(i, _)| *i);
    (done, out.into_iter().map(|(_, r)| r).collect())
}

/// The identity of the file at `p` now (None: absent).
fn file_id(p: &std::path::Path) -> Option<FileId> {
    std::fs::symlink_metadata(p).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The record in `sd`, whose file and namespace marks are `id` now: the
/// one in `kept` (what the agent last read or wrote) while they are still
/// what they were then (a record file is only ever replaced by rename, and
/// `sd` holds the lock), else read and kept.
fn record_now(
    kept: &mut Option<(RecordId, Arc<Record>)>,
    sd: &StateDir,
    id: &RecordId,
) -> anyhow::Result<Arc<Record>> {
    if let Some((k, r)) = kept.as_ref()
        && k == id
    {
        return Ok(r.clone());
    }
    let r = Arc::new(sd.load()?);
    *kept = Some((id.clone(), r.clone()));
    Ok(r)
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
    /// Brings the view into the form it is kept in ([`View::kept`]),
    /// against the record the agent keeps.
    pub(super) fn keep_view(&mut self) {
        // The view holds a resolution of the file in force now.
        self.before = None;
        let record = self.record.as_ref().map(|(_, r)| r);
        self.view = self.view.take().map(|v| v.kept(record));
        if let Some(v) = &self.view {
            self.host_seen.holds(&v.obs.host.links);
        }
    }

    /// [`record_now`] to change and save: the agent's copy is taken
    /// (given back by [`Agent::keep_record`] once saved), so that no
    /// half-changed record is ever kept. Still shared with the view
    /// ([`Resolved::recorded`]), and with the resolution of the file
    /// before when it came from the view: a reconcile that changes it
    /// copies it then, or drops those shares first, which spares the copy
    /// of every object (`Arc::make_mut`).
    pub(super) fn take_record(&mut self, sd: &StateDir) -> anyhow::Result<Arc<Record>> {
        let id = RecordId::now(sd);
        let r = record_now(&mut self.record, sd, &id)?;
        self.record = None;
        Ok(r)
    }

    /// Keeps `r`, as the state dir now holds it (`id`), for the next
    /// [`record_now`].
    pub(super) fn keep_record(&mut self, id: RecordId, r: Arc<Record>) {
        self.record = Some((id, r));
    }

    /// Answers one question (or declines it).
    pub(super) async fn answer(&mut self, q: Query) {
        let Some((req, reply)) = q.take() else {
            return;
        };
        let reply = Reply::new(reply);
        match self.answer_inner(&req, Some(&reply)).await {
            Ok(Some(a)) => reply.send(a),
            // An `apply`, answered by its reconcile.
            Ok(None) => {}
            Err(why) => {
                debug!("declined a `{}` query: {why}", req.command);
                reply.send(Answer::Declined(why));
            }
        }
        crate::host::memory::trim();
    }

    /// The answer to `req`, for the command waiting at `reply` (`None`
    /// once sent: an `apply`'s reconcile answers itself); without `reply`,
    /// nobody asked (see [`Agent::refresh`]), and the log says so.
    async fn answer_inner(
        &mut self,
        req: &Request,
        reply: Option<&Reply>,
    ) -> Result<Option<Answer>, String> {
        let refresh = reply.is_none();
        let asked = if refresh {
            "refreshing the view".to_string()
        } else {
            format!("answering `{}`", req.command)
        };
        let format = format_of(&req.format).ok_or("unknown format")?;
        if !["plan", "status", "apply"].contains(&req.command.as_str()) {
            return Err(format!("unknown command {}", req.command));
        }
        if self.cluster.is_some() {
            return Err("a cluster agent".into());
        }
        if std::fs::canonicalize(&req.config).ok() != self.status.config {
            return Err("another file".into());
        }
        let text = req.config_text.as_bytes();
        if req.command == "apply" && crate::core::hash::fnv64(text) != self.seen {
            // The command read the file after the agent last did.
            self.reload_file(false);
        }
        if crate::core::hash::fnv64(text) != self.seen || self.status.config_error.is_some() {
            return Err("another version of the file than the one in force".into());
        }
        // The command did not parse the file; the agent parsed these very
        // bytes. A cluster file is not the command's to plan or apply.
        if self.loaded.spec.cluster.is_some() {
            return Err("a cluster file".into());
        }
        // The state dir as the command would have taken it.
        let state_dir = steps::state_dir_of(req.state_dir.as_deref(), Some(&self.loaded.spec));
        let same_dir = std::fs::canonicalize(&state_dir).ok()
            == std::fs::canonicalize(&self.loaded.host.state_dir).ok();
        if !same_dir {
            return Err("another state dir".into());
        }
        if req.command == "apply" {
            let Some(waiting) = reply else {
                return Err("nobody waits for this apply".into());
            };
            let ask = ApplyAsk {
                format,
                detailed: req.detailed,
                verbose: req.verbose,
                color: req.color,
                waiting,
            };
            // Answered by the reconcile itself when it applied; an error
            // says why it did not.
            let (_, done) = self.reconcile_with(&Trigger::Apply, Some(&ask)).await;
            return done.map(|()| None);
        }
        let Some(fresh) = self.fresh() else {
            return Err("nothing read yet".into());
        };
        let Some(view) = &self.view else {
            return Err("nothing read yet".into());
        };
        let Fresh {
            stale,
            host_same,
            host_by_events,
            nft_now,
            nft_same,
            ns_ids,
        } = fresh;
        let sd = StateDir::open(&self.loaded.host.state_dir, LOCK_WAIT)
            .map_err(|e| format!("the state dir is busy: {e:#}"))?;
        let host = HostInfo {
            upstream_dns: req.upstream_dns.clone(),
            agent_dns: steps::agent_serves_dns(&state_dir),
            state_dir,
        };
        let record_id = RecordId::now(&sd);
        let same_inputs = view.settled.as_ref().is_some_and(|s| s.record == record_id)
            && view
                .resolved
                .as_ref()
                .is_some_and(|r| r.config == self.seen && r.host == host);
        // The record is read only when it may have changed.
        let record = match same_inputs {
            true => None,
            false => {
                Some(record_now(&mut self.record, &sd, &record_id).map_err(|e| format!("{e:#}"))?)
            }
        };
        let unread = Record::default();
        let paths = file_paths(
            record.as_deref().unwrap_or(&unread),
            &self.expect.files,
            Some(&view.files),
        );
        let files_now = file_ids(paths);
        let stale_files = stale_files(view, &files_now);
        if same_inputs
            && stale.is_empty()
            && stale_files.is_empty()
            && host_same
            && nft_same
            && self.unchanged_besides_events()
        {
            debug!("{asked} from the view: nothing changed since it was read");
            return self.answer_from_view(req, format, &sd).map(Some);
        }
        let record = match record {
            Some(r) => r,
            None => record_now(&mut self.record, &sd, &record_id).map_err(|e| format!("{e:#}"))?,
        };
        // The agent's own file: parsed already.
        let spec = self.loaded.spec.clone();
        let l = Loaded {
            path: req.config.clone(),
            spec,
            host: host.clone(),
        };
        debug!(
            "{asked}: {} of {} namespaces and {} of {} files read again{}{}",
            stale.len(),
            view.obs.views.len(),
            stale_files.len(),
            files_now.len(),
            if host_same {
                ""
            } else {
                ", the host namespace"
            },
            if nft_same { "" } else { ", nft" },
        );
        let fresh = Fresh {
            stale,
            host_same,
            host_by_events,
            nft_now,
            nft_same,
            ns_ids,
        };
        let (mut p, files_now) = self
            .plan_fresh(&l, &record, &fresh)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let (out, exit) = render(req, format, &l.path, &sd, &p)?;
        let settled = Settled::of(record_id, &record, &mut p);
        self.view = Some(View {
            obs: p.observation,
            files: files_now,
            resolved: Some(Resolved {
                config: self.seen,
                host,
                allocations: record.allocations.clone(),
                desired: p.desired,
                recorded: None,
            }),
            settled: Some(settled),
        });
        self.keep_view();
        drop(sd);
        Ok(Some(Answer::Output {
            stdout: out.stdout,
            stderr: out.stderr,
            exit: exit as u8,
        }))
    }

    /// Reads again what changed since the view was read, as an answer to
    /// `plan` would, so that the next question finds the view current
    /// (after a reconcile, whose own changes made parts of it stale).
    pub(super) async fn refresh(&mut self) {
        let Ok(Ok(config_text)) = steps::read_config(&self.config).map(String::from_utf8) else {
            return;
        };
        let req = Request {
            version: crate::host::agentsock::VERSION,
            command: "plan".into(),
            config: self.config.clone(),
            config_text,
            state_dir: Some(self.loaded.host.state_dir.clone()),
            upstream_dns: self.loaded.host.upstream_dns.clone(),
            format: "text".into(),
            detailed: false,
            verbose: false,
            color: false,
        };
        if let Err(why) = self.answer_inner(&req, None).await {
            debug!("the view was not refreshed: {why}");
        }
        crate::host::memory::trim();
    }

    /// What of the view is provably still the host. A container
    /// namespace is when its watch says under its lock that nothing is
    /// left unread in its socket, no event came since the view was read
    /// (each marks its namespace as it is handed over), and its path still
    /// names the namespace the watch listens to; the host namespace
    /// likewise. VXLAN forwarding and neighbour entries have no watch: a
    /// view with VXLANs has its host namespace read again. nft is when the
    /// ruleset's generation, which every change to any table moves, did
    /// not move. None: nothing read yet.
    pub(super) fn fresh(&self) -> Option<Fresh> {
        let view = self.view.as_ref()?;
        let mut trusted: HashSet<&NsRef> = HashSet::new();
        let mut doubted: HashSet<&NsRef> = HashSet::new();
        let mut ns_ids = HashMap::with_capacity(self.ns_watch.len());
        // Quiet first: an event handed over until then has marked it.
        let watched: Vec<&Watched> = self.ns_watch.values().map(|w| &w.watched).collect();
        let quiet = crate::host::events::all_quiet(&watched);
        // A stat call per namespace (about 2.4 ms at 1,000, measured), on
        // both cores.
        let watches: Vec<&NsWatch> = self.ns_watch.values().collect();
        let (_, same) = map_beside(
            &watches,
            |w| std::fs::metadata(w.netns.path()).is_ok_and(|m| (m.dev(), m.ino()) == w.id),
            || (),
        );
        for (((c, w), quiet), same_ns) in self.ns_watch.iter().zip(quiet).zip(same) {
            if same_ns {
                ns_ids.insert(w.netns.clone(), w.id);
            }
            let marked = self.dirty.lock().map_or(true, |d| d.contains(c));
            if quiet && same_ns && !marked {
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
        let host_by_events =
            self.host_watch.as_ref().is_some_and(|w| w.quiet()) && view.obs.state.vxlans.is_empty();
        let host_same = host_by_events && !self.host_seen.changed();
        let nft_now = crate::host::nft::generation::generation().ok();
        let nft_same = nft_now.is_some() && nft_now == view.obs.nft_generation;
        Some(Fresh {
            stale,
            host_same,
            host_by_events,
            nft_now,
            nft_same,
            ns_ids,
        })
    }

    /// Plans `l` against the host, taking from the view what `fresh`
    /// vouches for (and the resolved file, when it was resolved from the
    /// same file, allocations and host), and reading the rest. Returns the
    /// plan and the identities of the files taken before they were read.
    pub(super) async fn plan_fresh(
        &self,
        l: &Loaded,
        record: &Record,
        fresh: &Fresh,
    ) -> anyhow::Result<(steps::Planned, HashMap<String, Option<FileId>>)> {
        let Some(view) = &self.view else {
            anyhow::bail!("nothing read yet");
        };
        let resolved = view
            .resolved
            .as_ref()
            .filter(|r| r.fits(self.seen, &l.host, record));
        // Every file the reading looks at: those known before the file
        // resolves are looked at on a helper thread while it resolves
        // (thousands of stat calls beside a resolve of some milliseconds;
        // both threads once it is done), then the ones only the
        // resolution names (new files).
        let known = file_paths(record, &self.expect.files, Some(&view.files));
        let (desired, digested, mut files_now) = match resolved {
            Some(r) if r.has_texts() => {
                let (d, ids) = file_ids_beside(known, || r.desired.clone());
                (d, false, ids)
            }
            // Planned with the digests first: only a file that is no
            // longer as desired needs the text, to write it.
            Some(r) => {
                let (d, ids) = file_ids_beside(known, || r.desired_copy());
                (d, true, ids)
            }
            None => {
                let (desired, ids) =
                    file_ids_beside(known, || match self.ports_changed(l, record) {
                        Some(d) => Ok(d),
                        None => steps::resolve(l, record).map(|d| (d, false)),
                    });
                desired.map(|(d, digested)| (d, digested, ids))?
            }
        };
        let new: Vec<String> = desired
            .state
            .files
            .keys()
            .filter(|p| !files_now.contains_key(*p))
            .cloned()
            .collect();
        files_now.extend(file_ids(new));
        // The ruleset is reused with its raw listing only: an apply's
        // minimal transaction starts from that listing.
        let nft_same =
            fresh.nft_same && (view.obs.firewall.is_some() || view.obs.state.firewall.is_none());
        // Events from here on are news to the reading below; the links
        // the events before named are looked up again, one request each,
        // unless the events cannot say what changed.
        let touched = (!fresh.host_same).then(|| {
            let mut t = self.host_seen.reading();
            t.all |= !fresh.host_by_events;
            t
        });
        let reuse = Reuse {
            earlier: &view.obs,
            stale: fresh.stale.clone(),
            stale_files: stale_files(view, &files_now),
            host: touched.as_ref().is_some_and(|t| t.all),
            host_links: BTreeSet::new(),
            host_indexes: touched
                .as_ref()
                .map(|t| t.links.clone())
                .unwrap_or_default(),
            host_addrs: touched.as_ref().is_some_and(|t| t.addrs),
            sysctls: true,
            firewall: nft_same.then_some(std::borrow::Cow::Borrowed(&view.obs.state.firewall)),
            ns_ids: Some(&fresh.ns_ids),
        };
        // Events from here on are news to the reading below: what it reads
        // again is marked again by any event during the reading. A mark
        // on a namespace that is not read again stays (it may have come
        // after `fresh` was taken).
        if let Ok(mut d) = self.dirty.lock() {
            d.retain(|c| {
                self.ns_watch
                    .get(c)
                    .is_some_and(|w| !fresh.stale.contains(&w.netns))
            });
        }
        let planned = async {
            let mut p = steps::plan_live_with(l, record, Some(&reuse), Some(desired)).await?;
            if digested && !digested_files_hold(&p) {
                // A file to write: its text is the file's, resolved again.
                let desired = steps::resolve(l, record)?;
                p = steps::plan_live_with(l, record, Some(&reuse), Some(desired)).await?;
            }
            anyhow::Ok(p)
        };
        let mut p = match planned.await {
            Ok(p) => p,
            Err(e) => {
                self.give_back(touched, Some(&fresh.stale));
                return Err(e);
            }
        };
        if nft_same {
            // The ruleset is the one the view read: its generation and its
            // raw listing.
            p.observation.nft_generation = fresh.nft_now;
            p.observation.firewall = view.obs.firewall.clone();
        }
        Ok((p, files_now))
    }

    /// A reading that took the marks of the host (`host`, None when it
    /// read none of it) and of the namespaces in `stale` (None: all) failed,
    /// and the view stays as it was: the next reading reads them again (a
    /// plan refused for a clash, for instance, must not leave drift unseen).
    pub(super) fn give_back(&self, host: Option<Touched>, stale: Option<&BTreeSet<NsRef>>) {
        if let Some(t) = host {
            self.host_seen.unread(t);
        }
        if let Ok(mut d) = self.dirty.lock() {
            d.extend(
                self.ns_watch
                    .iter()
                    .filter(|(_, w)| stale.is_none_or(|s| s.contains(&w.netns)))
                    .map(|(c, _)| c.clone()),
            );
        }
    }

    /// The file in force resolved from the resolution of the file before
    /// it, when the two differ in published ports only (the firewall and
    /// the host ports are made again, the rest is taken: at 1,000
    /// containers that spares most of a resolve, the hosts files above
    /// all); with whether its files are known by digest only.
    fn ports_changed(&self, l: &Loaded, record: &Record) -> Option<(Desired, bool)> {
        let (spec, r) = self.before.as_ref()?;
        if r.host != l.host || !crate::core::model::only_ports_differ(spec, &l.spec) {
            return None;
        }
        let t0 = std::time::Instant::now();
        let d = crate::core::model::with_ports(r.desired_copy(), &l.spec, &record.allocations)?;
        debug!(
            "resolved from the file before it in {:?}: only published ports changed",
            t0.elapsed()
        );
        Some((d, !r.has_texts()))
    }

    /// What the view says that no event reports: the named namespaces,
    /// the sysctls netloom reads and the host ports processes hold are as
    /// they were when the settled answer was computed.
    fn unchanged_besides_events(&self) -> bool {
        let Some(view) = &self.view else {
            return false;
        };
        let (Some(set), Some(resolved)) = (&view.settled, &view.resolved) else {
            return false;
        };
        let Ok(named) = crate::host::netns::list_named() else {
            return false;
        };
        if named.into_iter().collect::<BTreeSet<_>>() != view.obs.named_netns {
            return false;
        }
        for key in &set.sysctls {
            let now = crate::host::sysctl::read_sysctl(None, key)
                .ok()
                .map(|v| v.trim().to_string());
            if now.as_ref() != view.obs.state.sysctls.get(key) {
                return false;
            }
        }
        crate::host::portprobe::conflicts(resolved.state(), &view.obs.state) == set.probes
    }

    /// The settled answer again, rendered now (`status` reads the agent's
    /// status and the confirmation state as they are now).
    fn answer_from_view(
        &mut self,
        req: &Request,
        format: crate::cmd::cli::Format,
        sd: &StateDir,
    ) -> Result<Answer, String> {
        steps::refuse_if_other_owner(sd.path()).map_err(|e| format!("{e:#}"))?;
        let Some(View {
            obs,
            files,
            resolved: Some(resolved),
            settled: Some(settled),
        }) = self.view.take()
        else {
            return Err("nothing settled".into());
        };
        // Rendered from a whole desired state; the view keeps its own
        // form of it (the record's, when it was).
        let mut resolved = resolved;
        let desired = resolved.take_desired();
        let p = steps::Planned {
            desired,
            held_target: settled.held_target,
            observation: obs,
            plan: settled.plan,
            held: settled.held,
            warnings: settled.warnings,
            interrupted: settled.interrupted,
        };
        let answer = render(req, format, &req.config, sd, &p);
        resolved.put_back(p.desired);
        self.view = Some(View {
            obs: p.observation,
            files,
            resolved: Some(resolved),
            settled: Some(Settled {
                held_target: p.held_target,
                plan: p.plan,
                held: p.held,
                warnings: p.warnings,
                interrupted: p.interrupted,
                ..settled
            }),
        });
        let (out, exit) = answer?;
        Ok(Answer::Output {
            stdout: out.stdout,
            stderr: out.stderr,
            exit: exit as u8,
        })
    }
}

/// The command's output for `p`, as the command itself prints it.
fn render(
    req: &Request,
    format: crate::cmd::cli::Format,
    config: &std::path::Path,
    sd: &StateDir,
    p: &steps::Planned,
) -> Result<(Out, Exit), String> {
    Ok(if req.command == "plan" {
        crate::cmd::plan_apply::plan_out(p, format, req.detailed, req.verbose, req.color)
    } else {
        // Counters move with every packet, unseen by the events and the
        // generation the view relies on: read now, from the elements. Not
        // from tables netloom did not make (a namesake): those are not
        // netloom's, and the reading shows none of their counters.
        let counters = match (
            &p.observation.firewall,
            p.observation.foreign_tables.is_empty(),
        ) {
            (Some(_), true) => crate::host::nft::counters::port_counters()
                .map_err(|e| format!("read the port counters: {e:#}"))?,
            _ => crate::cmd::status::listed_counters(p),
        };
        crate::cmd::status::status_out(config, sd.path(), p, &counters, format)
            .map_err(|e| format!("{e:#}"))?
    })
}

/// The files of `files_now` whose reading in `view` cannot be reused.
pub fn stale_files(view: &View, files_now: &HashMap<String, Option<FileId>>) -> BTreeSet<String> {
    files_now
        .iter()
        .filter(|(p, now)| match view.files.get(*p) {
            // Present then and now, unchanged: reusable if it was read.
            Some(then) if then == *now => now.is_some() && !view.obs.state.files.contains_key(*p),
            _ => true,
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// The sysctls an observation reads for `desired` and `record`.
pub fn sysctl_keys(desired: &State, record: &Record) -> Vec<String> {
    desired
        .sysctls
        .keys()
        .chain(record.applied().into_iter().flat_map(|a| a.sysctls.keys()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_files(files: &[(&str, &str)]) -> State {
        let mut st = State::default();
        for (p, t) in files {
            st.files_mut().insert(p.to_string(), (*t).into());
        }
        st
    }

    fn view_of(desired: State, obs: State) -> View {
        View {
            obs: Observation {
                state: obs,
                host: Default::default(),
                firewall: None,
                named_netns: BTreeSet::new(),
                foreign_tables: Vec::new(),
                nft_generation: None,
                counters: Default::default(),
                views: HashMap::new(),
            },
            files: HashMap::new(),
            resolved: Some(Resolved {
                config: 1,
                host: HostInfo::default(),
                allocations: Allocations::default(),
                desired: Desired {
                    state: desired,
                    allocations: Allocations::default(),
                    networks: Default::default(),
                    zones: Vec::new(),
                    dns_clients: Vec::new(),
                    external_files: Default::default(),
                },
                recorded: None,
            }),
            settled: None,
        }
    }

    #[test]
    fn the_files_looked_at_are_each_named_once() {
        let mut record = Record::default();
        record.owned.files = ["/a".to_string(), "/b".to_string()].into();
        record.set_applied(Some(with_files(&[("/b", "x"), ("/c", "y")])));
        let expected: HashSet<PathBuf> = ["/c", "/d"].into_iter().map(PathBuf::from).collect();
        let seen: HashMap<String, Option<FileId>> =
            [("/d".to_string(), None), ("/e".to_string(), None)].into();
        let mut paths = file_paths(&record, &expected, Some(&seen));
        paths.sort();
        assert_eq!(paths, ["/a", "/b", "/c", "/d", "/e"]);
        let mut paths = file_paths(&record, &expected, None);
        paths.sort();
        assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
    }

    #[test]
    fn identities_taken_beside_other_work_are_those_taken_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths: BTreeSet<String> = (0..300)
            .map(|i| dir.path().join(format!("f{i}")).display().to_string())
            .collect();
        for p in paths.iter().step_by(3) {
            std::fs::write(p, p.as_bytes()).expect("write");
        }
        paths.insert("/nonexistent/file".into());
        let (done, ids) = file_ids_beside(paths.iter().cloned().collect(), || 42);
        assert_eq!(done, 42);
        let alone: HashMap<String, Option<FileId>> = paths
            .iter()
            .map(|p| (p.clone(), file_id(std::path::Path::new(p))))
            .collect();
        assert_eq!(ids, alone);
        assert_eq!(file_ids(paths.into_iter().collect()), alone);
        assert_eq!(ids.values().filter(|id| id.is_some()).count(), 100);
    }

    #[test]
    fn work_shared_by_two_threads_comes_back_in_order() {
        for n in [0, 1, 64, 65, 1000] {
            let items: Vec<usize> = (0..n).collect();
            let (done, out) = map_beside(&items, |i| i * 2, || "done");
            assert_eq!(done, "done");
            assert_eq!(
                out,
                items.iter().map(|i| i * 2).collect::<Vec<_>>(),
                "{n} items"
            );
        }
    }

    #[test]
    fn a_kept_view_takes_a_desired_state_that_was_applied_from_the_record() {
        let mut desired = with_files(&[("/a/hosts", "# netloom a\n")]);
        desired
            .sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
        let obs = desired.clone();
        let mut record = Record::default();
        record.set_applied(Some(crate::core::model::for_record(&desired)));
        let record = Arc::new(record);
        let kept = view_of(desired.clone(), obs.clone()).kept(Some(&record));
        let mut r = kept.resolved.expect("resolved");
        assert!(r.recorded.is_some(), "the record's state stands for it");
        assert_eq!(r.desired.state, State::default(), "not kept twice");
        assert!(!r.has_texts(), "a plan resolves the file again");
        assert!(crate::core::model::same_as_recorded(r.state(), &desired));
        // An answer renders the whole state, and the view keeps its form.
        let whole = r.take_desired();
        assert!(crate::core::model::same_as_recorded(&whole.state, &desired));
        r.put_back(whole);
        assert_eq!(r.desired.state, State::default());
        // Another applied state is not taken for it: the view keeps its own.
        let mut other = desired.clone();
        other
            .sysctls
            .insert("net.ipv4.ip_forward".into(), "0".into());
        let mut record = Record::default();
        record.set_applied(Some(crate::core::model::for_record(&other)));
        let kept = view_of(desired.clone(), obs).kept(Some(&Arc::new(record)));
        let r = kept.resolved.expect("resolved");
        assert!(r.recorded.is_none());
        assert_eq!(r.desired.state.sysctls, desired.sysctls);
        assert!(crate::core::model::same_as_recorded(r.state(), &desired));
    }

    #[test]
    fn a_kept_view_knows_converged_files_by_digest_only() {
        let mut desired = with_files(&[
            ("/a/hosts", "# netloom a\n"),
            ("/b/hosts", "# netloom b\n"),
            ("/c/hosts", "# netloom c\n"),
        ]);
        // a: shared with the desired text; b: edited; c: absent.
        let mut obs = with_files(&[("/b/hosts", "# edited b\n")]);
        obs.files_mut()
            .insert("/a/hosts".into(), desired.files["/a/hosts"].clone());
        digest_converged_files(&mut obs, &mut desired);
        let a = &desired.files["/a/hosts"];
        assert!(crate::core::model::is_digest_of(a, "# netloom a\n"));
        assert!(
            FileText::ptr_eq(a, &obs.files["/a/hosts"]),
            "one string for both"
        );
        // What differs keeps its text on both sides, and what was not
        // read keeps the desired text.
        assert_eq!(&*desired.files["/b/hosts"], "# netloom b\n");
        assert_eq!(&*obs.files["/b/hosts"], "# edited b\n");
        assert_eq!(&*desired.files["/c/hosts"], "# netloom c\n");
        assert!(!obs.files.contains_key("/c/hosts"));
        // A text equal without being shared is digested too, and digesting
        // twice changes nothing.
        let mut obs2 = with_files(&[("/c/hosts", "# netloom c\n")]);
        digest_converged_files(&mut obs2, &mut desired);
        digest_converged_files(&mut obs2, &mut desired);
        assert!(crate::core::model::is_digest_of(
            &desired.files["/c/hosts"],
            "# netloom c\n"
        ));
        assert_eq!(obs2.files["/c/hosts"], desired.files["/c/hosts"]);
    }
}
