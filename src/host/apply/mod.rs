//! Executing a plan: netlink operations in plan order, the firewall as one
//! nft transaction, files written atomically.
//!
//! A failing change fails its object (a container, a network): the
//! object's other changes and the changes that need it wait, every
//! independent change still runs. The report says what was and
//! was not done; ownership of everything created so far is recorded by the
//! caller either way, so the next `apply` converges from there.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

use crate::core::firewall;
use crate::core::model::{NsRef, State};
use crate::core::plan::{Change, Failure, Op, Plan};
use crate::core::spec::parse_mac;
use crate::host::netlink::{self, Counters, LinkChange, Netlink};
use crate::host::state::Owned;
use crate::host::{fault, interrupt, marks, netns};

mod lanes;

/// Runs operations against the kernel, caching netlink sockets and
/// interface indexes per namespace.
pub struct Executor {
    host: Netlink,
    ns: HashMap<PathBuf, Netlink>,
    /// (namespace or host, name) -> ifindex
    index: HashMap<(Option<PathBuf>, String), u32>,
    retired: Counters,
    /// Files rewritten in place and not yet flushed to disk (see
    /// [`Executor::sync_files`]).
    unsynced: Vec<String>,
}

/// What an apply did, for the report.
#[derive(Debug, Default)]
pub struct Outcome {
    pub done: Vec<String>,
    /// Changes that failed (their address), each failing its object.
    pub failed: Vec<(String, Failure)>,
    /// Changes not run because an object they belong to or need failed.
    pub not_done: Vec<String>,
    pub nft_transactions: u32,
    pub nft_elements: usize,
    pub counters: Counters,
    /// The signal (SIGINT, SIGTERM) that stopped the run, if one did.
    pub interrupted: Option<i32>,
}

/// The error of an operation not started because a signal asked to stop.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {} before this change", interrupt::name(*.0))]
pub struct Interrupted(pub i32);

impl Executor {
    pub fn new() -> Result<Executor> {
        Ok(Executor {
            host: netlink::open_host_blocking()
                .context("open netlink socket in the host namespace")?,
            ns: HashMap::new(),
            index: HashMap::new(),
            retired: Counters::default(),
            unsynced: Vec::new(),
        })
    }

    fn handle(&mut self, ns: Option<&NsRef>) -> Result<&Netlink> {
        match ns {
            None => Ok(&self.host),
            Some(ns) => {
                let p = ns.path();
                if !self.ns.contains_key(&p) {
                    let nl = netlink::open_in_blocking(&p)
                        .with_context(|| format!("open netlink socket in {ns}"))?;
                    self.ns.insert(p.clone(), nl);
                }
                Ok(&self.ns[&p])
            }
        }
    }

    /// ifindex of `name`, from the cache or one lookup of that name. Not a
    /// dump of the namespace: in the host namespace that costs in
    /// proportion to every container's veth (tens of milliseconds at a
    /// thousand), where one lookup costs the same at any size.
    async fn index_of(&mut self, ns: Option<&NsRef>, name: &str) -> Result<Option<u32>> {
        let key = (ns.map(NsRef::path), name.to_string());
        if let Some(i) = self.index.get(&key) {
            return Ok(Some(*i));
        }
        let link = self.handle(ns)?.link(name).await?;
        if let Some(l) = &link {
            self.index.insert(key, l.index);
        }
        Ok(link.map(|l| l.index))
    }

    async fn require_index(&mut self, ns: Option<&NsRef>, name: &str) -> Result<u32> {
        self.index_of(ns, name).await?.ok_or_else(|| {
            anyhow!(
                "interface {name} not found in {}",
                ns.map(|n| n.to_string())
                    .unwrap_or_else(|| "the host namespace".into())
            )
        })
    }

    fn forget(&mut self, ns: Option<&NsRef>, name: &str) {
        self.index.remove(&(ns.map(NsRef::path), name.to_string()));
    }

    /// Takes over the sockets, indexes and counts of an executor that ran
    /// some of the same plan (see [`lanes`]).
    fn adopt(&mut self, other: Executor) {
        self.retire(&other.host);
        self.retired.dumps += other.retired.dumps;
        self.retired.writes += other.retired.writes;
        for (p, nl) in other.ns {
            if let Some(old) = self.ns.insert(p, nl) {
                self.retire(&old);
            }
        }
        self.index.extend(other.index);
        self.unsynced.extend(other.unsynced);
    }

    /// Flushes the files this executor rewrote in place, all after all the
    /// writes (see [`crate::host::inplace::write_in_place_unsynced`]): a
    /// file that cannot be flushed fails its change, as a failed write
    /// would. Runs before the apply's record is written.
    fn sync_files(&mut self, plan: &Plan, out: &mut Outcome) {
        for path in std::mem::take(&mut self.unsynced) {
            let Err(e) = crate::host::inplace::sync_file(std::path::Path::new(&path)) else {
                continue;
            };
            let change = plan.changes.iter().find(|c| {
                c.ops
                    .iter()
                    .any(|o| matches!(o, Op::WriteFile { path: p, .. } if *p == path))
            });
            let (address, object) = match change {
                Some(c) => (c.address.clone(), c.object.clone()),
                None => (format!("file.{path}"), format!("file.{path}")),
            };
            out.done.retain(|d| *d != address);
            out.failed
                .push((address, Failure::new(object, format!("{e:#}"))));
        }
    }

    /// Keeps the counts of a connection about to be dropped.
    fn retire(&mut self, nl: &Netlink) {
        let c = nl.counters();
        self.retired.dumps += c.dumps;
        self.retired.writes += c.writes;
    }

    /// Netlink requests sent so far.
    pub fn counters(&self) -> Counters {
        let mut c = self.host.counters();
        for n in self.ns.values() {
            let x = n.counters();
            c.dumps += x.dumps;
            c.writes += x.writes;
        }
        c.dumps += self.retired.dumps;
        c.writes += self.retired.writes;
        c
    }

    /// Runs one operation. Removals of what is already gone succeed.
    pub async fn run(&mut self, op: &Op, owned: &mut Owned) -> Result<()> {
        match op {
            Op::Sysctl { key, value } => crate::host::sysctl::write_sysctl(None, key, value)?,
            Op::CreateBridge { name, mtu, alias } => {
                let idx = self.host.create_bridge(name, Some(*mtu), alias).await?;
                owned.bridges.insert(name.clone());
                self.index.insert((None, name.clone()), idx);
            }
            Op::DeleteLink { netns, name } => {
                if let Some(idx) = self.index_of(netns.as_ref(), name).await? {
                    let r = self.handle(netns.as_ref())?.delete_link(idx).await;
                    ignore_errno(r, libc::ENODEV)?;
                }
                // A veth's peer goes with it: drop cached indexes wholesale.
                self.index.clear();
                if netns.is_none() {
                    owned.bridges.remove(name);
                }
            }
            Op::LinkUp { netns, name } => {
                let idx = self.require_index(netns.as_ref(), name).await?;
                let ch = LinkChange {
                    up: Some(true),
                    ..Default::default()
                };
                self.handle(netns.as_ref())?.set_link(idx, &ch).await?;
            }
            Op::SetMtu { netns, name, mtu } => {
                let idx = self.require_index(netns.as_ref(), name).await?;
                let ch = LinkChange {
                    mtu: Some(*mtu),
                    ..Default::default()
                };
                self.handle(netns.as_ref())?.set_link(idx, &ch).await?;
            }
            Op::SetMaster { name, bridge } => {
                let idx = self.require_index(None, name).await?;
                let br = self.require_index(None, bridge).await?;
                let ch = LinkChange {
                    master: Some(br),
                    ..Default::default()
                };
                self.host.set_link(idx, &ch).await?;
            }
            Op::SetIpv6 { netns: ns, dev, on } => {
                // A kernel without IPv6 has no such key anywhere: the
                // interface has IPv6 off already (and cannot have it on,
                // which the AddAddr of an IPv6 address then reports).
                if *on || std::path::Path::new("/proc/sys/net/ipv6").exists() {
                    let key = format!("net.ipv6.conf.{}.disable_ipv6", dev.replace('.', "/"));
                    let value = if *on { "0" } else { "1" };
                    crate::host::sysctl::write_sysctl(Some(&ns.path()), &key, value)?;
                }
            }
            Op::SetHairpin { name } => {
                let idx = self.require_index(None, name).await?;
                let ch = LinkChange {
                    hairpin: Some(true),
                    ..Default::default()
                };
                self.host.set_link(idx, &ch).await?;
            }
            Op::SetMac { netns, name, mac } => {
                let idx = self.require_index(netns.as_ref(), name).await?;
                let m = parse_mac(mac).ok_or_else(|| anyhow!("invalid MAC {mac}"))?;
                let ch = LinkChange {
                    mac: Some(m),
                    ..Default::default()
                };
                self.handle(netns.as_ref())?.set_link(idx, &ch).await?;
            }
            Op::AddAddr { netns, dev, addr } => {
                let idx = self.require_index(netns.as_ref(), dev).await?;
                let (ip, prefix) = parse_cidr(addr)?;
                let r = self
                    .handle(netns.as_ref())?
                    .add_address(idx, ip, prefix)
                    .await;
                ignore_errno(r, libc::EEXIST)?;
            }
            Op::DelAddr { netns, dev, addr } => {
                if let Some(idx) = self.index_of(netns.as_ref(), dev).await? {
                    let (ip, prefix) = parse_cidr(addr)?;
                    let r = self
                        .handle(netns.as_ref())?
                        .delete_address(idx, ip, prefix)
                        .await;
                    ignore_errno(r, libc::EADDRNOTAVAIL)?;
                }
            }
            Op::CreateNetns { name } => {
                // The mark goes first: whatever instant a crash comes at,
                // the namespace it leaves is recognisably netloom's.
                marks::netns_intent(name)?;
                let p = netns::named_path(name);
                if p.exists() && !crate::host::observe::is_netns(&p) {
                    // The file of a creation interrupted before its mount
                    // (this name is marked as ours): finish by starting over.
                    netns::delete_named(name)?;
                }
                // The thread that makes the namespace opens the socket
                // for the operations inside it and reads lo's index, which
                // saves a thread joining it and a links dump.
                let (nl, lo) = netns::create_named_with(name, || {
                    let nl = netlink::open_host_blocking()?;
                    let lo = nix::net::if_::if_nametoindex("lo")
                        .context("index of lo in a new namespace")?;
                    Ok((nl, lo))
                })?;
                marks::netns_seal(name)?;
                owned.netns.insert(name.clone());
                self.index.retain(|(n, _), _| n.as_ref() != Some(&p));
                self.index.insert((Some(p.clone()), "lo".into()), lo);
                if let Some(old) = self.ns.insert(p, nl) {
                    self.retire(&old);
                }
            }
            Op::DeleteNetns { name } => {
                let p = netns::named_path(name);
                if let Some(nl) = self.ns.remove(&p) {
                    self.retire(&nl);
                }
                self.index.clear();
                if p.exists() {
                    netns::delete_named(name)?;
                }
                marks::netns_unmark(name)?;
                owned.netns.remove(name);
            }
            Op::CreateVeth {
                host,
                peer,
                netns: ns,
                mac,
                mtu,
                alias,
            } => {
                let fd = netns::open(&ns.path())?;
                let m = parse_mac(mac).ok_or_else(|| anyhow!("invalid MAC {mac}"))?;
                use std::os::fd::AsFd;
                let (index, peer_index) = self
                    .host
                    .create_veth(host, peer, fd.as_fd(), Some(*mtu), Some(m), alias)
                    .await?;
                // The echoed indexes save a dump of the host's links and
                // one of the namespace's before the next operations on
                // this pair.
                self.index.insert((None, host.clone()), index);
                match peer_index {
                    Some(i) => {
                        self.index.insert((Some(ns.path()), peer.clone()), i);
                    }
                    None => self.forget(Some(ns), peer),
                }
            }
            Op::AddDefaultRoute {
                netns: ns,
                dev,
                gateway,
            } => {
                let idx = self.require_index(Some(ns), dev).await?;
                let dst = match gateway {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                let r = self
                    .handle(Some(ns))?
                    .add_route(dst, 0, Some(*gateway), Some(idx))
                    .await;
                ignore_errno(r, libc::EEXIST)?;
            }
            Op::DelDefaultRoute { netns: ns, gateway } => {
                let nl = self.handle(Some(ns))?;
                let routes = nl.routes().await?;
                for r in routes
                    .iter()
                    .filter(|r| r.prefix == 0 && r.gateway == Some(*gateway))
                {
                    let res = nl.delete_route(r).await;
                    ignore_errno(res, libc::ESRCH)?;
                }
            }
            Op::CreateVxlan {
                name,
                vni,
                local,
                port,
                mtu,
                alias,
            } => {
                let idx = self
                    .host
                    .create_vxlan(name, *vni, *local, *port, *mtu, alias)
                    .await?;
                // Host interfaces netloom made: the same record as bridges,
                // which `DeleteLink` in the host namespace clears.
                owned.bridges.insert(name.clone());
                self.index.insert((None, name.clone()), idx);
            }
            Op::AddFdb { dev, mac, dst } => {
                let idx = self.require_index(None, dev).await?;
                let m = parse_mac(mac).ok_or_else(|| anyhow!("invalid MAC {mac}"))?;
                let r = self.host.add_fdb(idx, m, *dst).await;
                ignore_errno(r, libc::EEXIST)?;
            }
            Op::DelFdb { dev, mac, dst } => {
                if let Some(idx) = self.index_of(None, dev).await? {
                    let m = parse_mac(mac).ok_or_else(|| anyhow!("invalid MAC {mac}"))?;
                    let r = self.host.delete_fdb(idx, m, *dst).await;
                    ignore_errno(r, libc::ENOENT)?;
                }
            }
            Op::AddNeigh { dev, ip, mac } => {
                let idx = self.require_index(None, dev).await?;
                let m = parse_mac(mac).ok_or_else(|| anyhow!("invalid MAC {mac}"))?;
                self.host.replace_neigh(idx, *ip, m).await?;
            }
            Op::DelNeigh { dev, ip } => {
                if let Some(idx) = self.index_of(None, dev).await? {
                    let r = self.host.delete_neigh(idx, *ip).await;
                    ignore_errno(r, libc::ENOENT)?;
                }
            }
            Op::Nft { .. } => bail!("nft operations run as one transaction, not one by one"),
            Op::WriteFile { path, content } => {
                // The record keeps digests, never texts: writing one would
                // replace a container's names with a hash.
                if crate::core::model::is_digest(content) {
                    bail!("{path}: only a digest of its content is known; not written");
                }
                // In place: a runtime's bind mount of the file keeps its
                // inode and must see the change.
                let unsynced = crate::host::inplace::write_in_place_unsynced(
                    std::path::Path::new(path),
                    content.as_bytes(),
                )?;
                if unsynced {
                    self.unsynced.push(path.clone());
                }
                owned.files.insert(path.clone());
            }
            Op::RemoveFile { path } => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("remove {path}")),
                }
                owned.files.remove(path);
                // Leave /etc/netns/NAME behind only if someone else put files there.
                if let Some(dir) = std::path::Path::new(path).parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
        }
        Ok(())
    }
}

fn ignore_errno(r: Result<()>, errno: i32) -> Result<()> {
    match r {
        Err(e) if netlink::is_errno(&e, errno) => Ok(()),
        other => other,
    }
}

/// Parses `address/prefix`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("{s} is not address/prefix"))?;
    Ok((
        a.parse().with_context(|| format!("{s}: bad address"))?,
        p.parse().with_context(|| format!("{s}: bad prefix"))?,
    ))
}

/// What carries out plan operations: the kernel ([`Executor`]) or, in the
/// tests of plan and apply order, a recorder.
#[allow(async_fn_in_trait)] // awaited on the caller's task; no Send bound needed
pub trait Runner {
    /// One netlink, namespace, sysctl or file operation.
    async fn run(&mut self, op: &Op, owned: &mut Owned) -> Result<()>;
    /// The apply's one nft transaction.
    fn nft(&mut self, tx: &firewall::Transaction) -> Result<()>;
    /// Netlink requests sent so far.
    fn counters(&self) -> Counters;
    /// Runs `batch`, changes of several objects that only create (see
    /// `lanes::batchable`): each object's changes in plan order, the
    /// objects independently of each other. The result of each change,
    /// `None` when it did not run (its object failed earlier in the batch,
    /// or a signal stopped the run). One after the other by default; the
    /// kernel executor runs objects at once.
    async fn run_batch(&mut self, batch: &[&Change], owned: &mut Owned) -> Vec<Option<Result<()>>> {
        lanes::one_by_one(self, batch, owned).await
    }
}

impl Runner for Executor {
    async fn run(&mut self, op: &Op, owned: &mut Owned) -> Result<()> {
        Executor::run(self, op, owned).await
    }
    fn nft(&mut self, tx: &firewall::Transaction) -> Result<()> {
        crate::host::nft::apply(tx)
    }
    fn counters(&self) -> Counters {
        Executor::counters(self)
    }
    async fn run_batch(&mut self, batch: &[&Change], owned: &mut Owned) -> Vec<Option<Result<()>>> {
        // The batch blocks this thread for as long as it runs: on a
        // multi-thread runtime (the agent's DNS server shares it) the
        // runtime first hands this worker's other tasks to another one.
        let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
            tokio::task::block_in_place(|| lanes::at_once(self, batch, owned))
        } else {
            lanes::at_once(self, batch, owned)
        }
    }
}

/// The apply's nft transaction, given the objects that failed before it
/// runs (their ports and networks are left as they are).
pub type FwTx<'a> = &'a dyn Fn(&BTreeSet<String>) -> Option<firewall::Transaction>;

/// Executes `plan` against the kernel. The firewall part runs as one
/// transaction, from `fw_tx`, at the position of the first change that
/// needs it.
pub async fn execute(plan: &Plan, fw_tx: FwTx<'_>, owned: &mut Owned) -> Outcome {
    match Executor::new() {
        Ok(mut exec) => {
            let mut out = execute_with(&mut exec, plan, fw_tx, owned).await;
            exec.sync_files(plan, &mut out);
            out
        }
        Err(e) => Outcome {
            failed: vec![("(start)".into(), Failure::new("(start)", format!("{e:#}")))],
            not_done: plan.changes.iter().map(|c| c.address.clone()).collect(),
            ..Default::default()
        },
    }
}

/// Executes `plan` in order with `runner`. A failed change fails its
/// object; what belongs to or needs a failed object is skipped, the rest
/// runs.
pub async fn execute_with<R: Runner>(
    runner: &mut R,
    plan: &Plan,
    fw_tx: FwTx<'_>,
    owned: &mut Owned,
) -> Outcome {
    let mut out = Outcome::default();
    let mut fw_done = false;
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut n = 0;
    while n < plan.changes.len() {
        let c = &plan.changes[n];
        if failed.contains(&c.object) || c.needs.iter().any(|n| failed.contains(n)) {
            out.not_done.push(c.address.clone());
            n += 1;
            continue;
        }
        let batch = lanes::batch_at(&plan.changes[n..], &failed);
        if batch.objects > 1 {
            let ran = runner.run_batch(&batch.changes, owned).await;
            let stop = lanes::merge(&batch.changes, ran, &mut failed, &mut out);
            n += batch.len;
            if let Some(sig) = stop {
                out.interrupted = Some(sig);
                out.not_done
                    .extend(plan.changes[n..].iter().map(|c| c.address.clone()));
                break;
            }
            continue;
        }
        n += 1;
        match run_change(runner, c, fw_tx, &failed, &mut fw_done, owned, &mut out).await {
            Ok(()) => out.done.push(c.address.clone()),
            Err(e) => {
                if let Some(i) = e.downcast_ref::<Interrupted>() {
                    // Stop here: this change and every later one are not done.
                    out.interrupted = Some(i.0);
                    out.not_done
                        .extend(plan.changes[n - 1..].iter().map(|c| c.address.clone()));
                    break;
                }
                let object = if e.is::<NftFailed>() {
                    crate::core::plan::NFT_TABLE.to_string()
                } else {
                    c.object.clone()
                };
                failed.insert(object.clone());
                out.failed
                    .push((c.address.clone(), Failure::new(object, format!("{e:#}"))));
            }
        }
    }
    out.counters = runner.counters();
    out
}

/// The nft transaction failed: every firewall change fails with it.
#[derive(Debug)]
struct NftFailed(anyhow::Error);

impl std::fmt::Display for NftFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "nft transaction: {:#}", self.0)
    }
}

impl std::error::Error for NftFailed {}

async fn run_change<R: Runner>(
    runner: &mut R,
    c: &Change,
    fw_tx: FwTx<'_>,
    failed: &BTreeSet<String>,
    fw_done: &mut bool,
    owned: &mut Owned,
    out: &mut Outcome,
) -> Result<()> {
    for op in &c.ops {
        // A signal stops the run between operations, never inside one.
        if let Some(sig) = interrupt::requested() {
            return Err(Interrupted(sig).into());
        }
        if let Op::Nft { .. } = op {
            if !*fw_done {
                if let Some(tx) = fw_tx(failed).filter(|t| !t.is_empty()) {
                    tracing::debug!(
                        address = %c.address,
                        "nft transaction: {} element(s) added, {} removed",
                        tx.elements_added(),
                        tx.elements_removed()
                    );
                    runner.nft(&tx).map_err(NftFailed)?;
                    fault::point();
                    out.nft_transactions += 1;
                    out.nft_elements += tx.elements_added() + tx.elements_removed();
                }
                *fw_done = true;
            }
            continue;
        }
        run_op(runner, c, op, owned).await?;
    }
    Ok(())
}

/// One operation of change `c`, then the fault point after it.
async fn run_op<R: Runner + ?Sized>(
    runner: &mut R,
    c: &Change,
    op: &Op,
    owned: &mut Owned,
) -> Result<()> {
    tracing::debug!(address = %c.address, "{op}");
    if fault::skipped(op) {
        return Ok(());
    }
    runner
        .run(op, owned)
        .await
        .with_context(|| format!("{op}"))?;
    fault::point();
    Ok(())
}

/// Every operation of `c` (which has no nft operation), stopping between
/// two when a signal asked to.
async fn run_ops<R: Runner + ?Sized>(runner: &mut R, c: &Change, owned: &mut Owned) -> Result<()> {
    for op in &c.ops {
        if let Some(sig) = interrupt::requested() {
            return Err(Interrupted(sig).into());
        }
        run_op(runner, c, op, owned).await?;
    }
    Ok(())
}

/// Removes everything netloom owns, given the observed state: used by
/// `down`. Foreign objects are not in `observed` and so are not touched.
pub fn teardown_plan(observed: &State) -> Plan {
    crate::core::plan::diff(&State::default(), observed, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{HostInfo, resolve};

    /// Records operations instead of running them; fails on the first
    /// operation whose text contains `fail_on`.
    #[derive(Default)]
    struct Recorder {
        ops: Vec<String>,
        nft_calls: usize,
        fail_on: Option<String>,
    }

    impl Runner for Recorder {
        async fn run(&mut self, op: &Op, _owned: &mut Owned) -> Result<()> {
            let text = op.to_string();
            if self
                .fail_on
                .as_ref()
                .is_some_and(|f| text.contains(f.as_str()))
            {
                anyhow::bail!("injected failure");
            }
            self.ops.push(text);
            Ok(())
        }
        fn nft(&mut self, _tx: &firewall::Transaction) -> Result<()> {
            self.nft_calls += 1;
            self.ops.push("NFT TRANSACTION".into());
            Ok(())
        }
        fn counters(&self) -> Counters {
            Counters::default()
        }
    }

    fn tutorial() -> State {
        let text = include_str!("../../../examples/docker-tutorial.toml");
        let spec = crate::core::spec::load("t.toml", text).unwrap();
        let host = HostInfo {
            upstream_dns: Vec::new(),
            state_dir: "/var/lib/netloom".into(),
            agent_dns: true,
        };
        resolve(&spec, &Default::default(), &host).unwrap().state
    }

    fn position(ops: &[String], needle: &str) -> usize {
        ops.iter()
            .position(|o| o.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not run: {ops:#?}"))
    }

    fn run(plan: &Plan, rec: &mut Recorder) -> Outcome {
        let fw = tutorial().firewall.unwrap().fw;
        let tx = |_: &BTreeSet<String>| Some(firewall::plan_transaction(&fw, None));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(execute_with(rec, plan, &tx, &mut Owned::default()))
    }

    #[test]
    fn creation_runs_in_dependency_order_with_one_nft_transaction() {
        let plan = crate::core::plan::diff(&tutorial(), &State::default(), None);
        let mut rec = Recorder::default();
        let out = run(&plan, &mut rec);
        assert!(out.failed.is_empty() && out.not_done.is_empty());
        assert_eq!(out.done.len(), plan.changes.len());
        assert_eq!(rec.nft_calls, 1, "one transaction for all firewall changes");
        let ops = &rec.ops;
        let bridge = position(ops, "ip link add docker0");
        let netns = position(ops, "ip netns add web");
        let veth = position(ops, "peer name eth0 netns web");
        let addr = position(ops, "ip -n web addr add 172.17.0.2/16");
        let route = position(ops, "ip -n web route add default");
        let nft = position(ops, "NFT TRANSACTION");
        let file = position(ops, "write /etc/netns/web/hosts");
        assert!(
            bridge < netns
                && netns < veth
                && veth < addr
                && addr < route
                && route < nft
                && nft < file,
            "{ops:#?}"
        );
        // route_localnet needs the bridge: set after the networks exist.
        assert!(position(ops, "route_localnet") > bridge);
    }

    #[test]
    fn a_failure_holds_back_its_container_and_nothing_else() {
        let plan = crate::core::plan::diff(&tutorial(), &State::default(), None);
        let mut rec = Recorder {
            fail_on: Some("peer name eth0 netns tomcat2".into()),
            ..Default::default()
        };
        let out = run(&plan, &mut rec);
        assert_eq!(out.failed.len(), 1, "{:?}", out.failed);
        let (failed, f) = &out.failed[0];
        assert_eq!(failed, "container.tomcat2.eth0");
        assert_eq!(f.object, "container.tomcat2");
        assert!(f.error.contains("injected failure"), "{}", f.error);
        assert!(out.done.contains(&"network.bridge".to_string()));
        assert!(out.done.contains(&"container.tomcat1.eth0".to_string()));
        // Independent changes after the failure still run.
        assert!(out.done.contains(&"port.web.8080/tcp".to_string()));
        assert!(out.done.contains(&"file./etc/netns/web/hosts".to_string()));
        // What belongs to the failed container waits.
        assert!(
            out.not_done
                .contains(&"file./etc/netns/tomcat2/hosts".to_string())
        );
        assert!(
            !out.done
                .iter()
                .any(|a| a.contains("tomcat2.") || a.contains("tomcat2/")),
            "{:?}",
            out.done
        );
        assert_eq!(out.done.len() + 1 + out.not_done.len(), plan.changes.len());
        assert_eq!(rec.nft_calls, 1);
    }

    #[test]
    fn a_failed_network_holds_back_its_members() {
        let plan = crate::core::plan::diff(&tutorial(), &State::default(), None);
        let mut rec = Recorder {
            fail_on: Some("ip link add docker0".into()),
            ..Default::default()
        };
        let out = run(&plan, &mut rec);
        assert_eq!(out.failed.len(), 1, "{:?}", out.failed);
        assert_eq!(out.failed[0].1.object, "network.bridge");
        assert!(out.not_done.contains(&"container.web.eth0".to_string()));
        assert!(out.not_done.contains(&"port.web.8080/tcp".to_string()));
        assert!(
            out.done.contains(&"container.web".to_string()),
            "the namespace does not need the bridge"
        );
    }

    #[test]
    fn a_cold_plan_creates_its_containers_in_one_batch() {
        let plan = crate::core::plan::diff(&tutorial(), &State::default(), None);
        let first = plan
            .changes
            .iter()
            .position(|c| c.object.starts_with("container."))
            .expect("no container change");
        assert!(lanes::batch_at(&plan.changes[..first], &BTreeSet::new()).len == 0);
        let batch = lanes::batch_at(&plan.changes[first..], &BTreeSet::new());
        let containers: BTreeSet<&str> = plan
            .changes
            .iter()
            .filter(|c| c.object.starts_with("container."))
            .map(|c| c.object.as_str())
            .collect();
        assert_eq!(batch.objects, containers.len());
        // The namespaces, up to the first endpoint.
        let after = &plan.changes[first + batch.len];
        assert!(!lanes::batchable(after), "{}", after.address);
        assert!(after.ops.iter().any(|o| matches!(o, Op::CreateVeth { .. })));
        assert!(batch.changes.iter().all(|c| lanes::batchable(c)));
        assert!(
            batch
                .changes
                .iter()
                .all(|c| c.ops.iter().any(|o| matches!(o, Op::CreateNetns { .. })))
        );
        // A failed container is left out: the batch ends before it.
        let failed: BTreeSet<String> = [batch.changes[1].object.clone()].into();
        let cut = lanes::batch_at(&plan.changes[first..], &failed);
        assert_eq!(cut.len, 1);
    }

    #[test]
    fn a_batch_reports_in_plan_order_and_holds_back_only_the_failed_container() {
        let plan = crate::core::plan::diff(&tutorial(), &State::default(), None);
        let mut rec = Recorder {
            fail_on: Some("ip netns add tomcat1".into()),
            ..Default::default()
        };
        let out = run(&plan, &mut rec);
        assert_eq!(out.failed.len(), 1, "{:?}", out.failed);
        assert_eq!(out.failed[0].1.object, "container.tomcat1");
        assert!(out.interrupted.is_none());
        // Its endpoint waits; the other containers are made.
        assert!(out.not_done.contains(&"container.tomcat1.eth0".to_string()));
        assert!(out.done.contains(&"container.tomcat2.eth0".to_string()));
        assert!(!rec.ops.iter().any(|o| o.contains("netns tomcat1")));
        // Reported in plan order: namespaces before endpoints.
        let done = |a: &str| out.done.iter().position(|d| d == a).expect(a);
        assert!(done("container.tomcat2") < done("container.web.eth0"));
        assert!(done("container.tomcat2") < done("container.web"));
        assert_eq!(
            out.done.len() + out.failed.len() + out.not_done.len(),
            plan.changes.len()
        );
    }

    #[test]
    fn teardown_removes_interfaces_before_namespaces_before_bridges() {
        let plan = teardown_plan(&tutorial());
        let mut rec = Recorder::default();
        let out = run(&plan, &mut rec);
        assert!(out.failed.is_empty());
        let ops = &rec.ops;
        let file = position(ops, "rm /etc/netns/web/hosts");
        let veth = position(ops, "ip link del veth");
        let netns = position(ops, "ip netns del web");
        let bridge = position(ops, "ip link del docker0");
        assert!(file < veth && veth < netns && netns < bridge, "{ops:#?}");
    }
}
