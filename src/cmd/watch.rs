//! `netloom watch`: the agent.
//!
//! It applies at start, then whenever the file changes (debounced, by
//! content hash, atomic renames included), on drift, every resync period
//! (with jitter; a safety net), and at once on SIGHUP. Drift is what the
//! kernel and the filesystem report, judged against what the last
//! reconcile made (`expect`), with no polling of the host: rtnetlink link
//! and address events in the host and in every container namespace
//! (removed, down, MAC, MTU, bridge port, an extra or missing address or
//! route), nftables notifications for netloom's tables (an element, a
//! table, a flushed ruleset), inotify on the directories of netloom's
//! files and on /run/netns (an edited or deleted hosts file, `ip netns
//! del`), and a 250 ms timer comparing the few sysctls netloom sets. One reconcile runs at a time; triggers that arrive
//! during one coalesce into one more. It serves the embedded DNS of the
//! DNS-enabled networks and updates its records in the same reconcile that
//! changes an address. SIGTERM/SIGINT stop it and leave the network up.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::cmd::cli::Cli;
use crate::cmd::cluster_agent::{self, Etcd, FromEtcd};
use crate::cmd::steps::{self, Exit, LOCK_WAIT, Loaded};
use crate::core::ipam::Allocations;
use crate::core::store::{DesiredDoc, HostStatus};
use crate::host::agentlock::AgentLock;
use crate::host::dns::DnsServer;
use crate::host::events::{self, KernelEvent};
use crate::host::sdnotify;
use crate::host::state::{AgentStatus, Record, Run, StateDir};

mod early;
mod expect;
mod serve;
mod witness;
use expect::Expect;

/// Editors write a file in several steps; wait this long for the last one.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long a change waits for the writer of the file to close it before
/// the file is read anyway.
const WRITER_WAIT: Duration = Duration::from_secs(5);
/// How often the sysctls netloom sets are compared with their values.
const SYSCTL_TICK: Duration = Duration::from_millis(250);
/// How long after a reconcile the view is brought up to date.
const REFRESH_AFTER: Duration = Duration::from_secs(1);
/// Runs kept in the agent's status file.
const KEPT_RUNS: usize = 20;

/// Why a reconcile runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Trigger {
    Start,
    File,
    Kernel(KernelEvent),
    /// An event inside a container's namespace.
    NsKernel(String, KernelEvent),
    /// A file or directory changed in a directory netloom watches (its
    /// files' directories, /run/netns).
    Fs(PathBuf),
    /// A change to netloom's nft tables (an nftables notification).
    Nft(String),
    /// A sysctl netloom sets no longer has its value.
    Sysctl(String),
    /// The kernel events of one batch that are drift, described.
    Drift(String),
    /// Drift-like events right after the agent's own changes: maybe its
    /// echo, maybe real drift; checked by one more reconcile.
    Echo(String),
    Resync,
    Reload,
    Stop,
    /// Cluster mode: news from etcd.
    Etcd(FromEtcd),
    /// `plan`, `status` or `apply` asks over the agent's socket.
    Query(serve::Query),
    /// `apply` of the agent's file, applied by the agent for the command.
    Apply,
    /// Time to bring the view up to date after a reconcile.
    Refresh,
}

impl Trigger {
    /// An `apply` asked over the socket.
    fn is_apply(&self) -> bool {
        matches!(self, Trigger::Query(q) if q.is_apply())
    }

    fn name(&self) -> String {
        match self {
            Trigger::Start => "start".into(),
            Trigger::File => "file".into(),
            Trigger::Kernel(ev) => format!("kernel ({})", describe(ev)),
            Trigger::NsKernel(c, ev) => format!("kernel ({c}: {})", describe(ev)),
            Trigger::Fs(p) => format!("file ({})", p.display()),
            Trigger::Nft(what) => format!("kernel ({what})"),
            Trigger::Sysctl(what) => format!("kernel (sysctl {what})"),
            Trigger::Drift(what) => format!("kernel ({what})"),
            Trigger::Echo(what) => format!("check after own changes ({what})"),
            Trigger::Resync => "resync".into(),
            Trigger::Reload => "SIGHUP".into(),
            Trigger::Stop => "stop".into(),
            Trigger::Etcd(FromEtcd::Desired(_, rev)) => format!("etcd (revision {rev})"),
            Trigger::Etcd(FromEtcd::Unreachable(_)) => "etcd unreachable".into(),
            Trigger::Query(_) => "query".into(),
            Trigger::Apply => "apply (command)".into(),
            Trigger::Refresh => "refresh".into(),
        }
    }
}

struct Agent {
    config: PathBuf,
    state_dir: PathBuf,
    loaded: Loaded,
    /// Hash of the file content last seen (valid or not).
    seen: u64,
    dns: DnsServer,
    /// What the host should look like, to judge events between reconciles.
    expect: Expect,
    /// The sysctls the ticker compares, shared with it.
    sysctls: Arc<Mutex<Vec<(String, String)>>>,
    /// Watches the directories of netloom's files and /run/netns.
    fs_watch: FsWatch,
    /// Event subscriptions inside container namespaces, by container, with
    /// the identity (dev, inode) of the namespace they watch.
    ns_watch: HashMap<String, serve::NsWatch>,
    /// The host as last read, for answering `plan` and `status`.
    view: Option<serve::View>,
    /// The state record as this agent last read or wrote it, with the
    /// identity of its file and the namespace marks then.
    record: Option<(serve::RecordId, Arc<Record>)>,
    /// Containers whose namespace reported an event since `view` was
    /// read: marked by the namespace's watch as it hands the event over.
    dirty: Arc<Mutex<HashSet<String>>>,
    /// The host namespace's events, followed to prove that nothing there
    /// changed since `view` was read (None: it could not be watched, and
    /// every answer reads the host namespace again).
    host_watch: Option<events::Watched>,
    /// Whether an event since the host was read may have changed it.
    host_seen: Arc<witness::HostWitness>,
    /// The nft ruleset generation right after the agent's last apply, when
    /// only its own transactions moved it: notifications up to it are the
    /// echo of that apply, not drift.
    nft_own: Option<u32>,
    tx: mpsc::UnboundedSender<Trigger>,
    status: AgentStatus,
    /// Cluster mode: the desired state comes from etcd, not the file.
    cluster: Option<ClusterMode>,
    /// Moves whenever the desired state in force may have changed (a new
    /// file or etcd document, a reload, an apply).
    epoch: u64,
    /// The epoch and allocations that `expect`, the file watches and the
    /// DNS zones were last made for.
    kept_for: Option<(u64, Allocations)>,
    /// The file parsed as soon as its writer is done with it, taken by
    /// the reload that reads the same bytes (None in cluster mode: no
    /// file is watched).
    early: Option<early::EarlyParse>,
    /// The view's resolution of the file before the one in force, with
    /// that file's parse, until the view holds a resolution of the file in
    /// force: a change of published ports only is resolved from it
    /// ([`crate::core::model::with_ports`]).
    before: Option<(crate::core::spec::Spec, serve::Resolved)>,
    /// Whether `expect`, the file watches and the DNS zones were made for
    /// the resolution in `before`.
    before_kept: bool,
}

/// The agent's cluster-mode state.
struct ClusterMode {
    host: String,
    /// The desired state in force (none yet: nothing is reconciled, so a
    /// first start without etcd changes nothing).
    doc: Option<(DesiredDoc, i64)>,
    /// What is published to etcd.
    published: tokio::sync::watch::Sender<HostStatus>,
    /// Why etcd cannot be reached, while it cannot.
    etcd_error: Option<String>,
}

pub async fn watch(cli: &Cli, resync: Duration, host: Option<&str>) -> Result<Exit> {
    steps::require_root("watch")?;
    let (mut loaded, cluster) = match host {
        Some(h) => {
            let (l, c) = cluster_start(cli, h).await?;
            (l, Some(c))
        }
        None => {
            let Some(l) = steps::load(cli)? else {
                return Ok(Exit::Error);
            };
            steps::refuse_cluster(&l)?;
            (l, None)
        }
    };
    // One agent per host: refuse before binding DNS or writing the status
    // of the running one.
    let started = now_rfc3339();
    let _agent_lock = AgentLock::acquire(&loaded.host.state_dir, std::process::id(), &started)?;
    // `plan` and `status` ask this agent over its socket (root only).
    let socket = match crate::host::agentsock::Listener::bind() {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("no agent socket ({e:#}); commands read the kernel themselves");
            None
        }
    };
    // This agent serves the embedded DNS: resolv.conf files name the
    // gateways from its first reconcile on.
    loaded.host.agent_dns = true;
    let text = steps::read_config(&cli.config).unwrap_or_default();
    let dns = DnsServer::new(upstreams(&loaded));
    let state_dir = loaded.host.state_dir.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();
    let mut agent = Agent {
        config: cli.config.clone(),
        state_dir,
        loaded,
        seen: crate::core::hash::fnv64(&text),
        dns,
        expect: Expect::default(),
        sysctls: Arc::new(Mutex::new(Vec::new())),
        fs_watch: FsWatch::new(tx.clone())?,
        ns_watch: HashMap::new(),
        view: None,
        record: None,
        dirty: Arc::default(),
        host_watch: None,
        host_seen: Arc::new(witness::HostWitness::new()),
        nft_own: None,
        tx: tx.clone(),
        status: AgentStatus {
            pid: std::process::id(),
            started,
            config: std::fs::canonicalize(&cli.config).ok(),
            ..Default::default()
        },
        cluster: None,
        epoch: 0,
        kept_for: None,
        early: cluster
            .is_none()
            .then(|| early::EarlyParse::new(cli.config.clone())),
        before: None,
        before_kept: false,
    };

    // Set while a writer has the file open after writing to it.
    let writing = Arc::new(AtomicBool::new(false));
    let _watcher = match &cluster {
        None => Some(watch_file(
            &cli.config,
            tx.clone(),
            writing.clone(),
            agent.early.clone(),
        )?),
        Some((_, etcd)) => {
            let (etx, mut erx) = mpsc::unbounded_channel();
            let after = 0;
            cluster_agent::spawn_desired(etcd.clone(), after, etx);
            let fwd = tx.clone();
            tokio::spawn(async move {
                while let Some(m) = erx.recv().await {
                    if fwd.send(Trigger::Etcd(m)).is_err() {
                        break;
                    }
                }
            });
            None
        }
    };
    if let Some((mode, etcd)) = cluster {
        cluster_agent::spawn_status(etcd, mode.published.subscribe());
        agent.cluster = Some(mode);
        // The kept desired state, if any, is in force until etcd says more.
        if let Some(c) = crate::host::cluster::load_cache(&agent.state_dir)? {
            agent.take_desired(c.doc, c.revision).await;
        }
    }
    let _socket_file = socket.map(|(listener, file)| {
        serve::spawn_listener(listener, tx.clone());
        file
    });
    spawn_kernel_events(tx.clone())?;
    let seen = agent.host_seen.clone();
    agent.host_watch = match events::watch_here(move |ev| {
        seen.see(&ev);
        true
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!("no proof of an unchanged host namespace ({e:#}); every answer reads it");
            None
        }
    };
    spawn_nft_events(tx.clone())?;
    spawn_sysctl_ticker(tx.clone(), agent.sysctls.clone());
    spawn_signals(tx.clone())?;
    spawn_resync(tx.clone(), resync);

    // The pid first: a command run during the first reconcile must already
    // see an agent serving DNS, or it would render resolv.conf without it.
    agent.write_status();
    agent.reconcile(&Trigger::Start).await;
    sdnotify::notify(&format!("READY=1\nSTATUS={}", agent.status.summary));
    schedule_refresh(&tx);

    while let Some(first) = rx.recv().await {
        let batch = next_batch(first, &mut rx, &writing).await;
        if batch.contains(&Trigger::Stop) {
            break;
        }
        let (queries, batch): (Vec<Trigger>, Vec<Trigger>) = batch
            .into_iter()
            .partition(|t| matches!(t, Trigger::Query(_)));
        let reload = batch.contains(&Trigger::Reload);
        if reload {
            sdnotify::notify(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                sdnotify::monotonic_usec()
            ));
        }
        // The file is read when it changed (once its writer is done, see
        // above), on SIGHUP and on resync; not on other events: one that
        // came between a writer's truncating the file and writing it would
        // read an empty or half file, and an empty file is valid (nothing
        // wanted), so the agent would tear the host down.
        let file_event = batch
            .iter()
            .any(|t| matches!(t, Trigger::File | Trigger::Resync));
        let file_changed = if agent.cluster.is_some() {
            agent.take_etcd_news(&batch).await || reload
        } else if file_event || reload {
            agent.reload_file(reload)
        } else {
            false
        };
        // Every drift event of the batch, for the log line.
        let mut drift: Vec<String> = Vec::new();
        for t in &batch {
            let Some(d) = agent.drift_of(t) else {
                continue;
            };
            if !drift.contains(&d) {
                drift.push(d);
            }
        }
        // An `apply` waiting converges the host itself (and says what it
        // did): a reconcile for the same file change or drift before it
        // would leave it nothing to show.
        let applying = queries.iter().any(Trigger::is_apply);
        let trigger = if reload {
            Some(Trigger::Reload)
        } else if file_changed {
            Some(Trigger::File)
        } else if !drift.is_empty() {
            Some(Trigger::Drift(summarize(&drift)))
        } else if batch.contains(&Trigger::Resync) {
            Some(Trigger::Resync)
        } else {
            None
        };
        let trigger =
            trigger.filter(|t| !applying || matches!(t, Trigger::Reload | Trigger::Resync));
        let reconciled = trigger.is_some() || applying;
        if let Some(t) = trigger {
            let changed = agent.reconcile(&t).await;
            if changed {
                // Our own changes echo back as kernel, nft and file events;
                // they are not drift. But real drift may hide among them
                // (it happened during or just after the reconcile), so if
                // any of them looks like drift, one more reconcile checks:
                // it finds nothing to do unless something really changed.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut echoed = Vec::new();
                while let Ok(t) = rx.try_recv() {
                    match t {
                        Trigger::Kernel(_)
                        | Trigger::NsKernel(..)
                        | Trigger::Fs(_)
                        | Trigger::Nft(_) => {
                            if let Some(d) = agent.drift_of(&t)
                                && !echoed.contains(&d)
                            {
                                echoed.push(d);
                            }
                        }
                        other => {
                            let _ = tx.send(other);
                            break;
                        }
                    }
                }
                if !echoed.is_empty() {
                    let _ = tx.send(Trigger::Echo(summarize(&echoed)));
                }
            }
        }
        if reload {
            sdnotify::notify(&format!("READY=1\nSTATUS={}", agent.status.summary));
        }
        let answered = !queries.is_empty();
        for q in queries {
            if let Trigger::Query(q) = q {
                agent.answer(q).await;
            }
        }
        if reconciled {
            schedule_refresh(&tx);
        } else if batch.contains(&Trigger::Refresh) && !answered {
            agent.refresh().await;
        }
    }
    sdnotify::notify("STOPPING=1");
    info!("stopping; the network stays as it is");
    // Nobody will answer on the gateways any more: point resolv.conf at
    // the upstream servers only, while the DNS server still answers.
    agent.loaded.host.agent_dns = false;
    agent.reconcile(&Trigger::Stop).await;
    agent.dns.shutdown().await;
    Ok(Exit::Ok)
}

/// `first` and the triggers that come with it. Everything already queued
/// is taken first, so that a file change queued behind another trigger
/// waits for its writer like one that came first (it did not: under load
/// the agent read a file a writer had just truncated, empty, which wants
/// nothing, and tore the host down).
///
/// When the file is about to be read (a change, SIGHUP, a resync), this
/// waits for a writer that still has it open to close it, up to
/// [`WRITER_WAIT`]; after a change also for the editor's last step
/// ([`DEBOUNCE`]). An `apply` says the file is ready; a stop does not
/// wait.
async fn next_batch(
    first: Trigger,
    rx: &mut mpsc::UnboundedReceiver<Trigger>,
    writing: &AtomicBool,
) -> Vec<Trigger> {
    let mut batch = vec![first];
    while let Ok(t) = rx.try_recv() {
        batch.push(t);
    }
    let edited = batch.contains(&Trigger::File);
    if edited || batch.contains(&Trigger::Reload) || batch.contains(&Trigger::Resync) {
        let now = tokio::time::Instant::now();
        let until = if edited { now + DEBOUNCE } else { now };
        let give_up = now + WRITER_WAIT;
        while !batch.iter().any(|t| t.is_apply() || *t == Trigger::Stop) {
            let deadline = match writing.load(Ordering::SeqCst) {
                true => give_up,
                false => until,
            };
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(t)) => batch.push(t),
                _ => break,
            }
        }
    }
    while let Ok(t) = rx.try_recv() {
        batch.push(t);
    }
    batch
}

/// Once things settle after a reconcile, read again what its own changes
/// made stale, so that the next question finds the view current. Once per
/// reconcile; nothing is polled.
fn schedule_refresh(tx: &mpsc::UnboundedSender<Trigger>) {
    let tx = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(REFRESH_AFTER).await;
        let _ = tx.send(Trigger::Refresh);
    });
}

/// Cluster mode: the agent's state dir and etcd, without the file.
async fn cluster_start(cli: &Cli, host: &str) -> Result<(Loaded, (ClusterMode, Etcd))> {
    // The file, when there is one, may name etcd and the prefix; the
    // desired state itself always comes from etcd (or the kept copy).
    let file_spec = steps::read_config(&cli.config)
        .ok()
        .and_then(|b| crate::core::spec::load_bytes(&cli.config.display().to_string(), &b).ok())
        .and_then(|s| s.cluster);
    let etcd = Etcd {
        endpoints: cluster_agent::endpoints(cli, file_spec.as_ref()),
        prefix: file_spec
            .as_ref()
            .map(|c| c.prefix.clone())
            .unwrap_or_else(|| crate::core::cluster::DEFAULT_PREFIX.to_string()),
        tls: file_spec.map(|c| c.tls).unwrap_or_default(),
    };
    if etcd.endpoints.is_empty() {
        return Err(anyhow!(
            "cluster mode needs etcd: give --etcd URL[,URL], NETLOOM_ETCD or [cluster] etcd in {}",
            cli.config.display()
        ));
    }
    let empty = crate::core::spec::load("(none)", "")
        .map_err(|d| anyhow!("the empty configuration does not validate: {d}"))?;
    let mut host_info = steps::host_info(cli, &empty);
    // Fixed for the agent's lifetime, whatever a push says.
    host_info.state_dir = steps::state_dir(cli, None);
    let loaded = Loaded {
        path: cli.config.clone(),
        spec: empty,
        host: host_info,
    };
    let (published, _) = tokio::sync::watch::channel(HostStatus::default());
    Ok((
        loaded,
        (
            ClusterMode {
                host: host.to_string(),
                doc: None,
                published,
                etcd_error: None,
            },
            etcd,
        ),
    ))
}

impl Agent {
    /// Cluster mode: takes the newest desired state of the batch; returns
    /// whether a new one is in force.
    async fn take_etcd_news(&mut self, batch: &[Trigger]) -> bool {
        let mut newest: Option<(DesiredDoc, i64)> = None;
        for t in batch {
            match t {
                Trigger::Etcd(FromEtcd::Desired(doc, rev))
                    if newest.as_ref().is_none_or(|(_, r)| rev > r) =>
                {
                    newest = Some(((**doc).clone(), *rev));
                }
                Trigger::Etcd(FromEtcd::Unreachable(e)) => {
                    if let Some(c) = &mut self.cluster {
                        c.etcd_error = Some(e.clone());
                    }
                    self.status.summary = format!(
                        "etcd unreachable ({e}); serving the last desired state and retrying"
                    );
                    self.write_status();
                }
                _ => {}
            }
        }
        let Some((doc, rev)) = newest else {
            return false;
        };
        if let Some(c) = &mut self.cluster {
            c.etcd_error = None;
            if c.doc.as_ref().is_some_and(|(_, r)| *r >= rev) {
                return false;
            }
        }
        let cached = crate::host::cluster::Cached {
            revision: rev,
            doc: doc.clone(),
        };
        if let Err(e) = crate::host::cluster::save_cache(&self.state_dir, &cached) {
            warn!("cannot keep the desired state on disk: {e:#}");
        }
        self.take_desired(doc, rev).await
    }

    /// Cluster mode: puts `doc` in force as this host's share.
    async fn take_desired(&mut self, doc: DesiredDoc, rev: i64) -> bool {
        let Some(c) = &mut self.cluster else {
            return false;
        };
        let host = c.host.clone();
        let spec = match crate::core::spec::load(&doc.source, &doc.file) {
            Ok(s) => s,
            Err(d) => {
                for l in &d.lines {
                    error!("{l}");
                }
                error!(
                    "the desired state of revision {rev} does not validate here; the last good one stays in force"
                );
                self.status.config_error = Some(d.to_string());
                c.doc = Some((doc, rev));
                self.write_status();
                return false;
            }
        };
        let address = spec
            .cluster
            .as_ref()
            .and_then(|cl| cl.hosts.get(&host))
            .copied();
        let mtu = match address {
            Some(a) => match crate::host::cluster::underlay_mtu(a).await {
                Ok(m) => m,
                Err(e) => {
                    error!("{e:#}");
                    self.status.config_error = Some(format!("{e:#}"));
                    self.write_status();
                    return false;
                }
            },
            None => 1500,
        };
        match crate::core::share::share(&spec, &host, &doc.allocations, mtu) {
            Ok(share) => {
                c.doc = Some((doc, rev));
                self.loaded.spec = share;
                // The file's hash does not change with etcd's desired
                // state: what was resolved from the old one goes.
                self.forget_resolved();
                self.status.config_error = None;
                self.dns.set_upstreams(upstreams(&self.loaded));
                true
            }
            Err(e) => {
                error!("revision {rev}: {e}; the last good desired state stays in force");
                self.status.config_error = Some(e.to_string());
                self.write_status();
                false
            }
        }
    }

    /// Cluster mode: what etcd hears about this host after a reconcile.
    fn publish(&self, error: Option<String>, failed: Vec<String>) {
        let Some(c) = &self.cluster else {
            return;
        };
        let rev = c.doc.as_ref().map(|(_, r)| *r).unwrap_or(0);
        let prev = c.published.borrow().clone();
        let ok = error.is_none() && self.status.config_error.is_none();
        let s = HostStatus {
            host: c.host.clone(),
            applied_revision: if ok { rev } else { prev.applied_revision },
            seen_revision: rev,
            converged: ok && failed.is_empty(),
            failed,
            last_error: error.or_else(|| self.status.config_error.clone()),
            time: now_rfc3339(),
        };
        c.published.send_replace(s);
    }

    /// Re-reads the file; returns whether a new valid config is in force.
    fn reload_file(&mut self, force: bool) -> bool {
        let text = match steps::read_config(&self.config) {
            Ok(t) => t,
            Err(e) => {
                warn!(
                    "cannot read {}: {e}; keeping the last good configuration",
                    self.config.display()
                );
                return false;
            }
        };
        let h = crate::core::hash::fnv64(&text);
        if h == self.seen && !force {
            if let Some(early) = &self.early {
                early.forget(h);
            }
            return false;
        }
        let was_seen = self.seen;
        self.seen = h;
        let shown = self.config.display().to_string();
        let parsed = match self.early.as_ref().and_then(|e| e.take(h)) {
            Some(parsed) => {
                debug!("the file was parsed as soon as it changed");
                parsed
            }
            None => crate::core::spec::load_bytes(&shown, &text),
        };
        match parsed {
            Ok(spec) => {
                // The state dir stays the agent's for its lifetime: moving
                // it under a running agent would orphan the ownership record.
                let host = self.loaded.host.clone();
                let was = std::mem::replace(
                    &mut self.loaded,
                    Loaded {
                        path: self.config.clone(),
                        spec,
                        host,
                    },
                );
                // A resolution of an earlier file stays (it is checked
                // against the file in force when used).
                if let Some(r) = self
                    .view
                    .as_mut()
                    .and_then(|v| v.resolved.take())
                    .filter(|r| r.config == was_seen)
                {
                    self.before_kept = self.kept_for.as_ref()
                        == Some(&(self.epoch, r.desired.allocations.clone()));
                    self.before = Some((was.spec, r));
                }
                self.forget_resolved();
                self.status.config_error = None;
                self.dns.set_upstreams(upstreams(&self.loaded));
                true
            }
            Err(d) => {
                for l in &d.lines {
                    error!("{l}");
                }
                error!("invalid configuration; the last good one stays in force");
                self.status.config_error = Some(d.to_string());
                self.write_status();
                false
            }
        }
    }

    /// The drift a trigger reports, described; None when it is not drift
    /// (the kernel's housekeeping, another program's objects).
    fn drift_of(&mut self, t: &Trigger) -> Option<String> {
        match t {
            Trigger::Kernel(ev) => self.expect.host_drift(ev),
            Trigger::NsKernel(c, ev) => {
                // Whatever it is, what the view holds of this namespace
                // may be out of date (its watch marked it already).
                self.mark_dirty(c);
                self.expect.ns_drift(c, ev).map(|d| format!("{c}: {d}"))
            }
            Trigger::Fs(p) => self.expect.fs_drift(p),
            // The notification of the agent's own last transaction, when
            // no other change to the ruleset came after it.
            Trigger::Nft(d) => {
                let now = crate::host::nft::generation::generation().ok();
                (self.nft_own.is_none() || now != self.nft_own).then(|| d.clone())
            }
            Trigger::Sysctl(d) | Trigger::Echo(d) => Some(d.clone()),
            _ => None,
        }
    }

    /// One reconcile; returns whether it changed anything.
    async fn reconcile(&mut self, trigger: &Trigger) -> bool {
        self.reconcile_with(trigger, None).await.0
    }

    /// [`Agent::reconcile`]; with `ask`, the reconcile also answers the
    /// command that asked for it, and the `Err` says why it did not (the
    /// reconcile failed or was held back).
    async fn reconcile_with(
        &mut self,
        trigger: &Trigger,
        ask: Option<&serve::ApplyAsk<'_>>,
    ) -> (bool, Result<(), String>) {
        if self.cluster.as_ref().is_some_and(|c| c.doc.is_none()) {
            // Cluster mode before any desired state: nothing to converge
            // to, and nothing is torn down for want of one.
            info!("waiting for the desired state from etcd");
            return (false, Err("no desired state yet".into()));
        }
        let start = Instant::now();
        let full = matches!(
            trigger,
            Trigger::Start | Trigger::Resync | Trigger::Reload | Trigger::Stop
        );
        let result = self.reconcile_inner(full, ask).await;
        let millis = start.elapsed().as_millis() as u64;
        let (summary, failed) = match result {
            Ok((s, f)) => ((s, Ok(())), f),
            Err(e) => ((Default::default(), Err(e)), Vec::new()),
        };
        let (summary, result): (crate::core::plan::Summary, Result<()>) = summary;
        let changed = summary.add + summary.change + summary.destroy > 0;
        let run = Run {
            time: now_rfc3339(),
            trigger: trigger.name(),
            added: summary.add,
            changed: summary.change,
            destroyed: summary.destroy,
            millis,
            // One line per record: log parsers split on newlines.
            error: result.err().map(|e| one_line(&format!("{e:#}"))),
            failed,
        };
        self.publish(
            run.error.clone(),
            run.failed
                .iter()
                .map(|f| format!("{}: {}", f.object, f.error))
                .collect(),
        );
        for f in &run.failed {
            error!(
                trigger = %run.trigger,
                object = %f.object,
                "{}: {} (left as it is; everything else was applied)",
                f.object,
                f.error
            );
        }
        match &run.error {
            None => info!(
                trigger = %run.trigger,
                "reconciled in {millis} ms: {} added, {} changed, {} destroyed{}",
                run.added,
                run.changed,
                run.destroyed,
                failed_note(&run.failed)
            ),
            Some(e) => error!(trigger = %run.trigger, "reconcile failed after {millis} ms: {e}"),
        }
        self.status.summary = match &run.error {
            None => format!(
                "last reconcile {} ({}): {} added, {} changed, {} destroyed{}",
                run.time,
                run.trigger,
                run.added,
                run.changed,
                run.destroyed,
                failed_note(&run.failed)
            ),
            Some(e) => format!("last reconcile {} ({}) failed: {e}", run.time, run.trigger),
        };
        sdnotify::notify(&format!("STATUS={}", self.status.summary));
        // The reconcile's reading is dropped (its view is kept): give the
        // pages back.
        crate::host::memory::trim();
        let done = match &run.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        };
        self.status.runs.push(run);
        let n = self.status.runs.len();
        if n > KEPT_RUNS {
            self.status.runs.drain(..n - KEPT_RUNS);
        }
        self.write_status();
        (changed, done)
    }

    /// Plans and applies; returns what was made and the objects that
    /// failed (left as they are). With `ask`, sends the command what
    /// `apply` prints, as soon as the apply is done.
    async fn reconcile_inner(
        &mut self,
        full: bool,
        ask: Option<&serve::ApplyAsk<'_>>,
    ) -> Result<(crate::core::plan::Summary, Vec<crate::core::plan::Failure>)> {
        let t0 = Instant::now();
        let sd = StateDir::open(&self.loaded.host.state_dir, LOCK_WAIT)?;
        let mut record = self.take_record(&sd)?;
        // Confirmed applies: an unconfirmed change whose time ran out is
        // rolled back; a change awaiting confirmation is not reconciled
        // away, and a rolled-back content is not applied again (the last
        // good state stays, as for an invalid file).
        if let Some(cp) = crate::cmd::confirm::expired_checkpoint(&sd)? {
            crate::cmd::confirm::roll_back_expired(&sd, Arc::make_mut(&mut record), &cp).await?;
            warn!("rolled back a change that was not confirmed in time");
        }
        let bytes = steps::read_config(&self.config).unwrap_or_default();
        if let Some(why) =
            crate::cmd::confirm::refusal(sd.path(), &self.loaded.path, &bytes, false)?
        {
            return Err(anyhow::anyhow!("held back: {why}"));
        }
        // A start, a resync (the safety net) and SIGHUP read everything;
        // other reconciles read again what the view does not vouch for.
        let fresh = self.fresh().filter(|_| !full);
        let (mut p, files) = match fresh {
            Some(fresh) => self.plan_fresh(&self.loaded, &record, &fresh).await?,
            None => {
                // Identities of the files before they are read: a change
                // after this moment shows in a later comparison.
                let files = serve::file_ids(serve::file_paths(&record, &self.expect.files, None));
                // Events from here on are news to this reading.
                if let Ok(mut d) = self.dirty.lock() {
                    d.clear();
                }
                self.host_seen.reading();
                match steps::plan_live(&self.loaded, &record).await {
                    Ok(p) => (p, files),
                    Err(e) => {
                        // Everything, as this reading was to read.
                        let all = witness::Touched {
                            all: true,
                            ..Default::default()
                        };
                        self.give_back(Some(all), None);
                        return Err(e);
                    }
                }
            }
        };
        let mut summary = crate::core::plan::Summary::default();
        let mut failures = p.held.clone();
        let mut rerecorded = false;
        // Decided before the record changes: the resolution of the file
        // before, which it reads, shares the record when it came from a
        // converged view ([`serve::Resolved::recorded`]), and is let go
        // below so that changing the record does not copy it whole (1.4%
        // of the agent's CPU in a profile of +1 port and back at 1,000
        // containers, on the command's wait).
        let ports_only = !full && self.kept_but_ports(&p);
        let applied = if !p.plan.is_empty() {
            self.let_go_of_record();
            let applied = steps::apply_planned(&sd, Arc::make_mut(&mut record), &p).await?;
            self.nft_own = p
                .observation
                .nft_generation
                .map(|g| g.wrapping_add(applied.nft_transactions))
                .filter(|g| crate::host::nft::generation::generation().ok() == Some(*g));
            summary = applied.made(&p.plan);
            log_changes(&p.plan, &applied.done);
            failures.extend(applied.failed_objects().into_iter().cloned());
            Some(applied)
        } else {
            if steps::record_outdated(&record, &p) {
                rerecorded = true;
                self.let_go_of_record();
                steps::record_converged(&sd, Arc::make_mut(&mut record), &p)?;
            }
            None
        };
        // The record as saved: the next reconcile or answer starts from it.
        let record_id = serve::RecordId::now(&sd);
        // The allocations the next reconcile resolves against: the desired
        // state, resolved against those before this apply, is the one it
        // would resolve (addresses once given stay), so the view's
        // resolution fits it.
        let allocations = record.allocations.clone();
        drop(sd);
        let printed = ask.map(|a| {
            use crate::cmd::plan_apply::{apply_head, apply_tail};
            let mut out = apply_head(&p, a.format, a.verbose, a.color);
            let (tail, exit) = apply_tail(&p, applied.as_ref(), a.format, a.detailed);
            out.stdout.push_str(&tail.stdout);
            out.stderr.push_str(&tail.stderr);
            (out, exit)
        });
        // What judges events and serves names follows the desired state:
        // made again unless this reconcile changed nothing and the desired
        // state is the one they were made for (an echo of the agent's own
        // changes, or drift that healed itself), which at 1,000
        // containers spares a few tens of milliseconds per event.
        let kept_for = (self.epoch, p.desired.allocations.clone());
        if ports_only {
            // Only published ports changed: what judges events and serves
            // names is as it was but for the sysctls the ports need.
            self.expect.sysctls = p.desired.state.sysctls.clone().into_iter().collect();
            self.share_sysctls();
            self.kept_for = Some(kept_for);
            debug!("expectations and names kept: only published ports changed");
        } else if full || applied.is_some() || self.kept_for.as_ref() != Some(&kept_for) {
            self.kept_for = None;
            // Made for another resolution from here on.
            self.before_kept = false;
            self.expect = Expect::new(
                &p.desired.state,
                p.observation
                    .host
                    .links
                    .iter()
                    .map(|l| (l.name.as_str(), l.index)),
            );
            self.share_sysctls();
            self.fs_watch.update(&self.expect);
            self.dns
                .update_with(p.desired.zones.clone(), &p.desired.dns_clients)
                .await
                .context("update the embedded DNS server")?;
            self.kept_for = Some(kept_for);
        }
        // The apply is done for the command that asked for it: recorded,
        // verified, its files watched and its names served. It need not
        // wait for the agent's own bookkeeping below.
        if let (Some(a), Some((out, exit))) = (ask, printed) {
            a.reply(out, exit);
            debug!("answered the command's apply after {:?}", t0.elapsed());
        }
        // A reconcile that changed nothing planned what `plan` would
        // now: its answer, unless the record it planned against changed.
        let settled = (applied.is_none() && !rerecorded)
            .then(|| serve::Settled::of(record_id.clone(), &record, &mut p));
        self.keep_record(record_id, record);
        // The namespace watches are checked every time: a namespace
        // deleted since is held back without any change, and its watch
        // must not keep it alive. A namespace not yet watched is read
        // again by the next reconcile (`fresh`), as before its watch.
        self.watch_namespaces(&p.desired.state);
        // The observation before this reconcile's changes: the events of
        // those changes mark what they touched as out of date, and the
        // files' identities change with them. But nft's tables are those
        // the transaction made, when the generation shows that only it
        // changed them: the next apply need not list them again.
        let mut obs = p.observation;
        if let Some((made, generation)) = applied.and_then(|a| a.nft_made) {
            obs.firewall_made(made.as_ref(), generation);
        }
        self.view = Some(serve::View {
            obs,
            files,
            resolved: Some(serve::Resolved {
                config: self.seen,
                host: self.loaded.host.clone(),
                allocations,
                desired: p.desired,
                recorded: None,
            }),
            // After changes, planned before them: not an answer to reuse.
            settled,
        });
        self.keep_view();
        Ok((summary, failures))
    }

    /// Hands the sysctls `expect` holds to the ticker that compares them.
    fn share_sysctls(&self) {
        if let Ok(mut s) = self.sysctls.lock() {
            s.clone_from(&self.expect.sysctls);
        }
    }

    /// Whether `expect`, the file watches and the DNS zones, made for the
    /// resolution before the file in force, hold for `p` but for the
    /// sysctls: the file changed in published ports only and the
    /// addresses stayed (then everything they are made of is the same:
    /// see [`crate::core::model::with_ports`]), and `p` changed nothing
    /// but the firewall (a link made again would have a new index).
    fn kept_but_ports(&self, p: &steps::Planned) -> bool {
        use crate::core::plan::Op;
        let Some((spec, r)) = self.before.as_ref().filter(|_| self.before_kept) else {
            return false;
        };
        r.host == self.loaded.host
            && r.desired.allocations.ipv4 == p.desired.allocations.ipv4
            && r.desired.allocations.ipv6 == p.desired.allocations.ipv6
            && crate::core::model::only_ports_differ(spec, &self.loaded.spec)
            && p.plan
                .changes
                .iter()
                .all(|c| c.ops.iter().all(|o| matches!(o, Op::Nft { .. })))
    }

    /// Keeps one event subscription per container namespace. A subscription
    /// holds its namespace alive, so one whose namespace was replaced (the
    /// path now names another inode) or dropped is closed, not kept.
    fn watch_namespaces(&mut self, desired: &crate::core::model::State) {
        use std::os::unix::fs::MetadataExt;
        let mut keep = HashSet::new();
        for (container, ns) in desired.namespaces.iter() {
            let path = ns.netns.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            if self
                .ns_watch
                .get(container)
                .is_some_and(|w| w.id == id && w.netns == ns.netns)
            {
                keep.insert(container.clone());
                continue;
            }
            let tx = self.tx.clone();
            let c = container.clone();
            let dirty = self.dirty.clone();
            let sink = move |ev| {
                if let Ok(mut d) = dirty.lock() {
                    d.insert(c.clone());
                }
                tx.send(Trigger::NsKernel(c.clone(), ev)).is_ok()
            };
            match events::watch_in(&path, sink) {
                Ok(watched) => {
                    // A new watch saw nothing of what happened before it.
                    self.mark_dirty(container);
                    self.ns_watch.insert(
                        container.clone(),
                        serve::NsWatch {
                            netns: ns.netns.clone(),
                            id,
                            watched,
                        },
                    );
                    keep.insert(container.clone());
                }
                Err(e) => warn!(
                    "no kernel events from {}: {e:#}; the resync covers it",
                    ns.netns
                ),
            }
        }
        self.ns_watch.retain(|c, _| keep.contains(c));
    }

    /// Before the record changes: lets go of the shares of it held by the
    /// view and by the resolution of the file before (both made again
    /// after the change), so that `Arc::make_mut` changes it in place
    /// instead of copying it whole.
    fn let_go_of_record(&mut self) {
        self.forget_resolved();
        self.before = None;
    }

    /// Drops what the view holds that was computed from the desired state
    /// in force until now.
    fn forget_resolved(&mut self) {
        self.epoch += 1;
        if let Some(v) = &mut self.view {
            v.resolved = None;
            v.settled = None;
        }
    }

    fn mark_dirty(&self, container: &str) {
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(container.to_string());
        }
    }

    fn write_status(&self) {
        if let Err(e) = self.status.write(&self.state_dir) {
            warn!("{e:#}");
        }
    }
}

/// One log line per change made, with its address (`+ container.web`).
fn log_changes(plan: &crate::core::plan::Plan, done: &[String]) {
    let done: HashSet<&str> = done.iter().map(String::as_str).collect();
    for c in plan
        .changes
        .iter()
        .filter(|c| done.contains(c.address.as_str()))
    {
        match &c.reason {
            Some(r) => {
                info!(address = %c.address, "{} {} ({})", c.action.symbol(), c.address, one_line(r))
            }
            None => info!(address = %c.address, "{} {}", c.action.symbol(), c.address),
        }
    }
}

/// The drift events of a batch for one log line: a flushed host can send
/// hundreds, so the first few and a count.
fn summarize(drift: &[String]) -> String {
    const SHOWN: usize = 5;
    if drift.len() <= SHOWN {
        return drift.join("; ");
    }
    format!(
        "{}; and {} more",
        drift[..SHOWN].join("; "),
        drift.len() - SHOWN
    )
}

/// `; failed: container.a, container.b` when objects failed.
fn failed_note(failed: &[crate::core::plan::Failure]) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = failed.iter().map(|f| f.object.as_str()).collect();
    format!("; failed: {}", names.join(", "))
}

/// A message on one line: log records never span lines.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Upstream servers for the embedded DNS: the file's, else the host's
/// resolv.conf (loopback resolvers included: the agent runs on the host).
fn upstreams(l: &Loaded) -> Vec<std::net::SocketAddr> {
    if let Some(u) = &l.spec.upstream_dns {
        return u.clone();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| crate::host::dns::parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// Watches the file's directory (editors replace files by rename) and
/// sends [`Trigger::File`] for events on the file's name.
fn watch_file(
    config: &Path,
    tx: mpsc::UnboundedSender<Trigger>,
    writing: Arc<AtomicBool>,
    early: Option<early::EarlyParse>,
) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let abs =
        std::path::absolute(config).with_context(|| format!("resolve {}", config.display()))?;
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent directory", abs.display()))?;
    let name = abs
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or_else(|| anyhow!("{} has no file name", abs.display()))?;
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        use notify::EventKind as K;
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        let Ok(ev) = res else {
            return;
        };
        if !ev
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
        {
            return;
        }
        match ev.kind {
            // Written to in place: the writer may not be done.
            K::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                writing.store(true, Ordering::SeqCst);
            }
            // The writer closed it, or it was replaced (renamed over,
            // created, removed): whole.
            K::Access(AccessKind::Close(AccessMode::Write))
            | K::Create(_)
            | K::Remove(_)
            | K::Modify(ModifyKind::Name(_)) => {
                writing.store(false, Ordering::SeqCst);
                if let Some(early) = &early {
                    early.changed();
                }
            }
            // Opening and reading the file (by `plan`, by this agent's own
            // reload) changes nothing: reacting to it made every read
            // trigger the next, one debounce apart, and delayed every
            // answer by a debounce.
            K::Access(_) => return,
            _ => {}
        }
        let _ = tx.send(Trigger::File);
    })
    .context("start the file watcher")?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watch {}", dir.display()))?;
    Ok(w)
}

/// Forwards kernel events as [`Trigger::Kernel`]; [`Agent::drift_of`]
/// decides which of them are drift.
fn spawn_kernel_events(tx: mpsc::UnboundedSender<Trigger>) -> Result<()> {
    let mut rx = events::subscribe()?;
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if tx.send(Trigger::Kernel(ev)).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// A kernel event for the log line of the reconcile it triggered.
fn describe(ev: &KernelEvent) -> String {
    match ev {
        KernelEvent::Link {
            name,
            removed: true,
            ..
        } => {
            format!("{} removed", name.as_deref().unwrap_or("link"))
        }
        KernelEvent::Link {
            name, up: false, ..
        } => {
            format!("{} down", name.as_deref().unwrap_or("link"))
        }
        KernelEvent::Link {
            name, master: None, ..
        } => {
            format!("{} left its bridge", name.as_deref().unwrap_or("link"))
        }
        KernelEvent::Link { name, .. } => format!("{} changed", name.as_deref().unwrap_or("link")),
        KernelEvent::Address { index, removed, .. } => format!(
            "address {} on interface #{index}",
            if *removed { "removed" } else { "added" }
        ),
        KernelEvent::Route { removed } => {
            format!("route {}", if *removed { "removed" } else { "added" })
        }
        KernelEvent::Lost => "events lost".into(),
    }
}

/// Forwards changes of netloom's nft tables as [`Trigger::Nft`].
fn spawn_nft_events(tx: mpsc::UnboundedSender<Trigger>) -> Result<()> {
    let mut rx = crate::host::nft::monitor::subscribe()?;
    tokio::spawn(async move {
        while let Some(what) = rx.recv().await {
            if tx.send(Trigger::Nft(what)).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Sysctls have no change notification; a few small reads on a short
/// timer are cheap (microseconds) and find `ip_forward=0` within
/// [`SYSCTL_TICK`]. Reported once per change, not on every tick.
fn spawn_sysctl_ticker(
    tx: mpsc::UnboundedSender<Trigger>,
    want: Arc<Mutex<Vec<(String, String)>>>,
) {
    tokio::spawn(async move {
        let mut reported: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(SYSCTL_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let list = want.lock().map(|w| w.clone()).unwrap_or_default();
            for (k, v) in list {
                let Ok(got) = crate::host::sysctl::read_sysctl(None, &k) else {
                    continue;
                };
                let got = got.trim();
                if got == v {
                    reported.remove(&k);
                } else if reported.insert(k.clone())
                    && tx.send(Trigger::Sysctl(format!("{k} = {got}"))).is_err()
                {
                    return;
                }
            }
        }
    });
}

/// inotify on the directories of netloom's files (editors and `rm` act on
/// names, so the directory is watched, not the file) and on /run/netns
/// (`ip netns del`); events are judged by [`Expect::fs_drift`].
struct FsWatch {
    watcher: notify::RecommendedWatcher,
    /// Watched directories with the (dev, inode) they had: a directory
    /// removed and made again needs a new watch.
    dirs: HashMap<PathBuf, (u64, u64)>,
}

impl FsWatch {
    fn new(tx: mpsc::UnboundedSender<Trigger>) -> Result<FsWatch> {
        use notify::EventKind;
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            // Reads (netloom's own observation) are not changes.
            if matches!(ev.kind, EventKind::Access(_) | EventKind::Other) {
                return;
            }
            for p in ev.paths {
                let _ = tx.send(Trigger::Fs(p));
            }
        })
        .context("start the file watcher")?;
        Ok(FsWatch {
            watcher,
            dirs: HashMap::new(),
        })
    }

    /// Watches what `expect` names, and nothing else.
    fn update(&mut self, expect: &Expect) {
        use notify::Watcher;
        use std::os::unix::fs::MetadataExt;
        let mut want: HashSet<PathBuf> = expect
            .files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        want.insert(PathBuf::from(crate::core::model::NETNS_RUN_DIR));
        self.dirs.retain(|d, _| {
            let keep = want.contains(d);
            if !keep {
                let _ = self.watcher.unwatch(d);
            }
            keep
        });
        for d in want {
            let Ok(meta) = std::fs::metadata(&d) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            if self.dirs.get(&d) == Some(&id) {
                continue;
            }
            let _ = self.watcher.unwatch(&d);
            match self.watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(d, id);
                }
                Err(e) => warn!("cannot watch {}: {e}; the resync covers it", d.display()),
            }
        }
    }
}

fn spawn_signals(tx: mpsc::UnboundedSender<Trigger>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::spawn(async move {
        loop {
            let t = tokio::select! {
                _ = hup.recv() => Trigger::Reload,
                _ = term.recv() => Trigger::Stop,
                _ = int.recv() => Trigger::Stop,
            };
            if tx.send(t).is_err() {
                break;
            }
        }
    });
    Ok(())
}

fn spawn_resync(tx: mpsc::UnboundedSender<Trigger>, period: Duration) {
    if period.is_zero() {
        return;
    }
    tokio::spawn(async move {
        loop {
            // Up to 10% jitter, so that agents on many hosts do not resync
            // in lockstep.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let jitter = period.mul_f64(f64::from(nanos % 1000) / 10_000.0);
            tokio::time::sleep(period + jitter).await;
            if tx.send(Trigger::Resync).is_err() {
                break;
            }
        }
    });
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Triggers `batch` queued behind `first` while a writer has the file
    /// open; the writer closes it (the watcher's last File) after 300 ms.
    async fn batch_during_a_write(first: Trigger, queued: &[Trigger]) -> Vec<Trigger> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let writing = Arc::new(AtomicBool::new(true));
        for t in std::iter::once(first).chain(queued.iter().cloned()) {
            tx.send(t).unwrap();
        }
        let closer = {
            let (tx, writing) = (tx.clone(), writing.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                writing.store(false, Ordering::SeqCst);
                tx.send(Trigger::File).unwrap();
            })
        };
        let first = rx.recv().await.unwrap();
        let batch = next_batch(first, &mut rx, &writing).await;
        closer.await.unwrap();
        batch
    }

    #[tokio::test]
    async fn a_change_queued_behind_another_trigger_waits_for_the_writer() {
        let batch = batch_during_a_write(Trigger::Refresh, &[Trigger::File]).await;
        assert_eq!(batch, [Trigger::Refresh, Trigger::File, Trigger::File]);
        let batch = batch_during_a_write(Trigger::File, &[]).await;
        assert_eq!(batch, [Trigger::File, Trigger::File]);
    }

    #[tokio::test]
    async fn sighup_and_resync_wait_for_the_writer_and_a_stop_does_not() {
        for t in [Trigger::Reload, Trigger::Resync] {
            let batch = batch_during_a_write(t.clone(), &[]).await;
            assert_eq!(batch, [t, Trigger::File]);
        }
        let batch = batch_during_a_write(Trigger::File, &[Trigger::Stop]).await;
        assert_eq!(batch, [Trigger::File, Trigger::Stop]);
    }

    #[test]
    fn time_format() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
