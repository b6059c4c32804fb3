//! Reading the live host into a [`State`]: one netlink dump per kind per
//! namespace, `nft -j list table`, and the files netloom owns.
//!
//! Only netloom's objects become part of the observed state: bridges and
//! veths carrying its `ifalias` mark, links under its temporary names, the
//! namespaces the file or the state record name, its nft table and its
//! files. Everything else is read only
//! to detect clashes ([`Observation::foreign_conflicts`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::core::firewall;
use crate::core::model::{
    self, AliasMark, Bridge, Endpoint, FileText, FirewallState, Namespace, NsRef, State,
};
use crate::core::plan::{Failure, Op};
use crate::host::netlink::{self, Addr, Counters, Link, Route};
use crate::host::netns;
use crate::host::state::Record;

/// What a namespace holds, from one dump of each kind.
#[derive(Clone, Debug, Default)]
pub struct NsView {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
}

impl NsView {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
    fn addrs_of(&self, index: u32) -> BTreeSet<String> {
        self.addrs
            .iter()
            .filter(|a| a.index == index)
            .filter(|a| !is_link_local(&a.ip))
            .map(|a| format!("{}/{}", a.ip, a.prefix))
            .collect()
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

/// The observed state and the raw readings behind it.
pub struct Observation {
    pub state: State,
    pub host: NsView,
    /// Raw nft reading, input of the minimal transaction. Shared: a
    /// reading that knows the ruleset unchanged since an earlier one
    /// takes that one's listing (thousands of elements at a thousand
    /// containers) without copying it.
    pub firewall: Option<Arc<firewall::Observed>>,
    /// Named namespaces present in /run/netns.
    pub named_netns: BTreeSet<String>,
    /// Tables named `netloom` that netloom did not make (no mark, not in
    /// the record), e.g. `["inet"]`: never read as netloom's, never changed.
    pub foreign_tables: Vec<String>,
    /// The nftables ruleset generation the firewall was read at; `None`
    /// when unknown (the ruleset moved during the listing, or the kernel
    /// did not say).
    pub nft_generation: Option<u32>,
    /// Netlink requests this observation sent.
    pub counters: Counters,
    /// What each container namespace held.
    /// Shared: a reading that reuses an earlier one's namespaces takes
    /// them without copying what they hold.
    pub views: HashMap<NsRef, Arc<NsView>>,
}

/// The firewall of the observed state, from netloom's tables as listed.
fn firewall_state(o: &firewall::Observed) -> FirewallState {
    FirewallState {
        fw: o.fw.clone(),
        skeleton_ok: o.skeleton_ok,
        bridge_table: o.bridge_present(),
        problems: o.problems.clone(),
        strays: o.strays.clone(),
    }
}

impl Observation {
    /// Takes in the firewall that an apply's transactions made from this
    /// observation's tables, known at ruleset `generation` (see
    /// [`firewall::Observed::after`]): the tables as the next listing
    /// would find them, while the generation stays there.
    pub fn firewall_made(&mut self, made: Option<&FirewallState>, generation: u32) {
        self.firewall =
            made.map(|m| Arc::new(firewall::Observed::after(self.firewall.as_deref(), &m.fw)));
        self.state.firewall = self.firewall.as_deref().map(firewall_state);
        self.nft_generation = Some(generation);
    }
}

/// A file's `text` as the observed state holds it: `want`, the desired
/// text, when it is the same, so that a file netloom wrote is held once,
/// not once per state.
fn shared(want: Option<&FileText>, text: &FileText) -> FileText {
    match want {
        Some(want) if want == text => want.clone(),
        _ => text.clone(),
    }
}

/// The value `map` holds at each of `paths` (in order, each once), found
/// in one walk of both.
fn aligned<'a, V>(paths: &[&String], map: &'a BTreeMap<String, V>) -> Vec<Option<&'a V>> {
    let mut entries = map.iter().peekable();
    paths
        .iter()
        .map(|p| {
            while entries.next_if(|(k, _)| k < p).is_some() {}
            entries.next_if(|(k, _)| k == p).map(|(_, v)| v)
        })
        .collect()
}

/// Which namespaces to look into: container name -> namespace. Borrowed
/// from `desired` and `record` (a namespace netloom created that neither
/// names any more is made up): a reading at a thousand containers would
/// otherwise copy every name three times to build it.
fn namespaces_of_interest<'a>(
    desired: &'a State,
    record: &'a Record,
) -> BTreeMap<&'a str, Cow<'a, NsRef>> {
    let mut out: BTreeMap<&str, Cow<NsRef>> = BTreeMap::new();
    if let Some(applied) = record.applied() {
        for (c, n) in applied.namespaces.iter() {
            out.insert(c.as_str(), Cow::Borrowed(&n.netns));
        }
    }
    for (c, n) in desired.namespaces.iter() {
        // The file's view wins for a container it declares, but a namespace
        // netloom created under another name is still looked at (below).
        out.insert(c.as_str(), Cow::Borrowed(&n.netns));
    }
    // All borrowed so far: the names outlive `out`'s borrow.
    let known: BTreeSet<&str> = out
        .values()
        .filter_map(|r| match r {
            Cow::Borrowed(NsRef::Named(n)) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    for n in &record.owned.netns {
        if !known.contains(n.as_str()) {
            out.entry(n.as_str())
                .or_insert_with(|| Cow::Owned(NsRef::Named(n.clone())));
        }
    }
    out
}

/// Reads the host. `desired` says which namespaces and files to look at,
/// together with the state record.
pub async fn observe(desired: &State, record: &Record) -> Result<Observation> {
    observe_with(desired, record, None, None).await
}

/// Parts of an earlier observation that the caller knows are unchanged:
/// the verification after an apply re-reads only what the apply touched.
pub struct Reuse<'a> {
    pub earlier: &'a Observation,
    /// Namespaces to read again.
    pub stale: BTreeSet<NsRef>,
    /// Files to read again.
    pub stale_files: BTreeSet<String>,
    /// Read the host namespace's links and addresses again, all of them.
    pub host: bool,
    /// When `host` is false: the host links to read again, by name (one
    /// lookup each, see [`HostTouch`]); the others are as `earlier` saw
    /// them.
    pub host_links: BTreeSet<String>,
    /// When `host` is false: host links to read again, by index (those an
    /// event reported: a new link has no name in `earlier`, a gone one
    /// none to look up).
    pub host_indexes: BTreeSet<u32>,
    /// When `host` is false: read the host's addresses again.
    pub host_addrs: bool,
    /// Read the sysctls again.
    pub sysctls: bool,
    /// The firewall as it is known to be without reading it (the
    /// generation counter showed that only the apply's own transaction
    /// changed the ruleset since the earlier reading); `None`: read it.
    /// Borrowed when the caller keeps it (the agent's view): the reading
    /// copies it once, not twice (thousands of elements at a thousand
    /// containers).
    pub firewall: Option<Cow<'a, Option<FirewallState>>>,
    /// The identity (dev, inode) of namespaces, taken by the caller a
    /// moment ago (see [`crate::host::guard::refusals`]).
    pub ns_ids: Option<&'a HashMap<NsRef, (u64, u64)>>,
}

impl Reuse<'_> {
    /// Whether the firewall is all there is to read again, and it is known
    /// without reading: the rest of the host is as `earlier` saw it.
    pub fn firewall_only(&self) -> bool {
        self.firewall.is_some()
            && self.stale.is_empty()
            && self.stale_files.is_empty()
            && !self.host
            && self.host_links.is_empty()
            && self.host_indexes.is_empty()
            && !self.host_addrs
            && !self.sysctls
    }
}

/// What of the host namespace an apply's operations can have changed: the
/// links they name, and those the kernel changes along with them (the
/// host end of a veth whose namespace or peer goes, the ports of a bridge
/// that goes, the bridge of a port). The verification after an apply reads
/// these again, one lookup each, instead of dumping every link of the
/// host: a dump costs in proportion to all containers, a lookup does not.
/// Whatever this cannot name (VXLAN forwarding and neighbour entries) asks
/// for everything.
#[derive(Debug, Default)]
pub struct HostTouch {
    /// Read the whole host namespace again.
    pub all: bool,
    /// Links to read again, by name.
    pub links: BTreeSet<String>,
    /// Read the host's addresses again.
    pub addrs: bool,
}

impl HostTouch {
    /// Adds what `op` can change in the host namespace; `earlier` is the
    /// observation the plan was made from.
    pub fn add(&mut self, op: &Op, earlier: &Observation) {
        match op {
            Op::CreateBridge { name, .. }
            | Op::SetHairpin { name }
            | Op::LinkUp { netns: None, name }
            | Op::SetMtu {
                netns: None, name, ..
            }
            | Op::SetMac {
                netns: None, name, ..
            } => {
                self.links.insert(name.clone());
            }
            Op::CreateVeth { host, .. } => {
                self.links.insert(host.clone());
            }
            Op::SetMaster { name, bridge } => {
                self.links.insert(name.clone());
                self.links.insert(bridge.clone());
            }
            Op::AddAddr {
                netns: None, dev, ..
            }
            | Op::DelAddr {
                netns: None, dev, ..
            } => {
                self.links.insert(dev.clone());
                self.addrs = true;
            }
            Op::DeleteLink { netns: None, name } => {
                self.links.insert(name.clone());
                // A bridge that goes releases its ports.
                if let Some(l) = earlier.host.link(name) {
                    self.links.extend(
                        earlier
                            .host
                            .links
                            .iter()
                            .filter(|p| p.master == Some(l.index))
                            .map(|p| p.name.clone()),
                    );
                }
            }
            // A veth whose container end goes takes its host end along.
            Op::DeleteLink {
                netns: Some(ns),
                name,
            } => self.host_ends(earlier, ns, Some(name)),
            // So does every veth with an end in a namespace that goes.
            Op::DeleteNetns { name } => {
                self.host_ends(earlier, &NsRef::Named(name.clone()), None);
            }
            Op::CreateVxlan { .. }
            | Op::AddFdb { .. }
            | Op::DelFdb { .. }
            | Op::AddNeigh { .. }
            | Op::DelNeigh { .. } => self.all = true,
            // Inside a container's namespace, or not netlink at all.
            Op::LinkUp { netns: Some(_), .. }
            | Op::SetMtu { netns: Some(_), .. }
            | Op::SetMac { netns: Some(_), .. }
            | Op::AddAddr { netns: Some(_), .. }
            | Op::DelAddr { netns: Some(_), .. }
            | Op::AddDefaultRoute { .. }
            | Op::DelDefaultRoute { .. }
            | Op::SetIpv6 { .. }
            | Op::CreateNetns { .. }
            | Op::Sysctl { .. }
            | Op::Nft { .. }
            | Op::WriteFile { .. }
            | Op::RemoveFile { .. } => {}
        }
    }

    /// The host ends of the veths `earlier` saw with their other end in
    /// `ns` (called `ifname`, when given). A host link netloom did not
    /// mark is not an endpoint; should one go with the namespace, the
    /// verification still sees it (only netloom's objects are compared).
    fn host_ends(&mut self, earlier: &Observation, ns: &NsRef, ifname: Option<&String>) {
        self.links.extend(
            earlier
                .state
                .endpoints
                .values()
                .filter(|e| e.netns == *ns && ifname.is_none_or(|i| *i == e.ifname))
                .map(|e| e.host_veth.clone()),
        );
    }
}

/// The host namespace as `earlier` saw it, with the links `names` (and the
/// bridges those are or were ports of) read again by lookup, and the
/// addresses read again when `addrs` says so. A link no longer there is
/// dropped, with its addresses.
async fn reread_host(
    nl: &netlink::Netlink,
    earlier: &NsView,
    names: &BTreeSet<String>,
    indexes: &BTreeSet<u32>,
    addrs: bool,
) -> Result<NsView> {
    if names.is_empty() && indexes.is_empty() && !addrs {
        return Ok(earlier.clone());
    }
    let mut fresh: Vec<Link> = Vec::new();
    for name in names {
        if let Some(l) = nl
            .link(name)
            .await
            .with_context(|| format!("read host link {name}"))?
        {
            fresh.push(l);
        }
    }
    // The earlier entries of the links asked for: replaced by what the
    // lookups found, or gone.
    let mut gone: BTreeSet<u32> = earlier
        .links
        .iter()
        .filter(|l| names.contains(&l.name))
        .map(|l| l.index)
        .collect();
    for &index in indexes {
        reread_at(nl, index, &mut fresh, &mut gone).await?;
    }
    // Bridges whose ports changed, read again in case the kernel adjusted
    // them along (by index: a bridge's name is not in the port's reply).
    let masters: BTreeSet<u32> = fresh
        .iter()
        .filter_map(|l| l.master)
        .chain(
            earlier
                .links
                .iter()
                .filter(|l| names.contains(&l.name) || indexes.contains(&l.index))
                .filter_map(|l| l.master),
        )
        .collect();
    for index in masters {
        reread_at(nl, index, &mut fresh, &mut gone).await?;
    }
    let fresh_index: BTreeSet<u32> = fresh.iter().map(|l| l.index).collect();
    let fresh_name: BTreeSet<&str> = fresh.iter().map(|l| l.name.as_str()).collect();
    let mut links: Vec<Link> = earlier
        .links
        .iter()
        .filter(|l| {
            !gone.contains(&l.index)
                && !fresh_index.contains(&l.index)
                && !fresh_name.contains(l.name.as_str())
        })
        .cloned()
        .collect();
    links.extend(fresh);
    links.sort_by_key(|l| l.index);
    let addrs = if addrs {
        nl.addresses().await.context("dump host addresses")?
    } else {
        let present: BTreeSet<u32> = links.iter().map(|l| l.index).collect();
        earlier
            .addrs
            .iter()
            .filter(|a| present.contains(&a.index))
            .cloned()
            .collect()
    };
    Ok(NsView {
        links,
        addrs,
        routes: earlier.routes.clone(),
    })
}

/// Host link `index` read again into `fresh` (one request; none when
/// `fresh` holds it already), or marked `gone` when there is none.
async fn reread_at(
    nl: &netlink::Netlink,
    index: u32,
    fresh: &mut Vec<Link>,
    gone: &mut BTreeSet<u32>,
) -> Result<()> {
    if fresh.iter().any(|l| l.index == index) {
        return Ok(());
    }
    match nl
        .link_at(index)
        .await
        .with_context(|| format!("read host link {index}"))?
    {
        Some(l) => fresh.push(l),
        None => {
            gone.insert(index);
        }
    }
    Ok(())
}

/// Readings that need only the state record, not the file: taken by
/// [`read_early`] while the file is being resolved.
pub struct Early {
    /// nft's tables, and the generation they were read at.
    firewall: Result<(Option<firewall::Observed>, Option<u32>)>,
    /// The namespaces the record names that could be read.
    views: HashMap<NsRef, Arc<NsView>>,
}

/// Reads, on helper threads, what does not depend on the file: nft's
/// tables and the namespaces the state record names (those the file adds
/// are read later, by [`observe_with`]). Blocks the caller.
pub fn read_early(record: &Record) -> Early {
    let named: BTreeSet<String> = netns::list_named()
        .map(|v| v.into_iter().collect())
        .unwrap_or_default();
    let mut list: Vec<NsRef> = namespaces_of_interest(&State::default(), record)
        .into_values()
        .filter(|ns| ns_exists(ns, &named, record, false))
        .map(Cow::into_owned)
        .collect();
    list.sort();
    list.dedup();
    std::thread::scope(|s| {
        // nft is another process: its listing runs beside the dumps.
        let fw = s.spawn(read_firewall);
        let paths: Vec<PathBuf> = list.iter().map(NsRef::path).collect();
        let mut views = HashMap::with_capacity(list.len());
        // A namespace that cannot be read now is read again later, which
        // reports the error in its place.
        if let Ok(dumps) = netlink::sync::dump_each(paths, READ_THREADS) {
            for (ns, d) in list.into_iter().zip(dumps) {
                if let Ok((links, addrs, routes)) = d {
                    views.insert(
                        ns,
                        Arc::new(NsView {
                            links,
                            addrs,
                            routes,
                        }),
                    );
                }
            }
        }
        let firewall = match fw.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        Early { firewall, views }
    })
}

/// netloom's nft tables and the ruleset generation they were read at
/// (`None` when the ruleset moved during the listing).
fn read_firewall() -> Result<(Option<firewall::Observed>, Option<u32>)> {
    let before = crate::host::nft::generation::generation().ok();
    let fw = crate::host::nft::observe().context("read netloom's nft table")?;
    let after = crate::host::nft::generation::generation().ok();
    Ok((fw, before.filter(|b| Some(*b) == after)))
}

/// Whether `ns` is a namespace netloom may observe as its own: a named
/// one it created (and that is mounted), or an attached path. `vouched`:
/// an earlier reading whose view of it is reused found it mounted, and
/// nothing since says otherwise (see [`Reuse::stale`]), which spares a
/// `statfs` per namespace when little changed.
fn ns_exists(ns: &NsRef, named: &BTreeSet<String>, record: &Record, vouched: bool) -> bool {
    let mounted = || vouched || is_netns(&ns.path());
    match ns {
        // A named namespace netloom did not create is foreign: never
        // part of the observed state (a clash, reported as such). A
        // file without a namespace mounted on it (a creation cut short)
        // is not a namespace yet.
        NsRef::Named(n) => named.contains(n) && record.owned.netns.contains(n) && mounted(),
        NsRef::Path(_) => mounted(),
    }
}

/// [`observe`], taking what `reuse` vouches for from an earlier
/// observation and what `early` read already.
pub async fn observe_with(
    desired: &State,
    record: &Record,
    reuse: Option<&Reuse<'_>>,
    early: Option<Early>,
) -> Result<Observation> {
    let t0 = std::time::Instant::now();
    let host_nl = netlink::open_host().context("open netlink socket in the host namespace")?;
    let earlier_host = reuse.filter(|r| !r.host).map(|r| r.earlier);
    // A lookup costs a few links' worth of a dump (about four, measured
    // at a thousand): many links touched (a cold apply) are read in one.
    let by_lookup = |r: &&Reuse| {
        (r.host_links.len() + r.host_indexes.len()) * 8 <= r.earlier.host.links.len().max(64)
    };
    let host = match reuse.filter(|r| !r.host).filter(by_lookup) {
        Some(r) => {
            reread_host(
                &host_nl,
                &r.earlier.host,
                &r.host_links,
                &r.host_indexes,
                r.host_addrs,
            )
            .await?
        }
        None => NsView {
            links: host_nl.links().await.context("dump host links")?,
            addrs: host_nl.addresses().await.context("dump host addresses")?,
            routes: Vec::new(),
        },
    };
    tracing::debug!(
        "observe: host read after {:?} ({} requests)",
        t0.elapsed(),
        host_nl.counters().dumps
    );
    let mut counters = host_nl.counters();
    let by_index: HashMap<u32, &Link> = host.links.iter().map(|l| (l.index, l)).collect();
    let named_netns: BTreeSet<String> = netns::list_named()?.into_iter().collect();

    let mut st = State::default();

    // Bridges carrying netloom's mark.
    for l in &host.links {
        if l.kind.as_deref() != Some("bridge") {
            continue;
        }
        if let Some(AliasMark::Network(net)) = l.alias.as_deref().and_then(model::parse_alias) {
            st.bridges.insert(
                net,
                Bridge {
                    name: l.name.clone(),
                    addrs: host.addrs_of(l.index),
                    mtu: l.mtu,
                    mac: l.mac.map(|m| model::mac_string(&m)).unwrap_or_default(),
                    up: l.up,
                },
            );
        }
    }

    // Links under netloom's temporary name: a creation cut short before
    // its naming-and-marking request (see `model::temp_link_name`).
    st.half_made = host
        .links
        .iter()
        .filter(|l| model::is_temp_link(&l.name))
        .map(|l| l.name.clone())
        .collect();

    // VXLAN devices of cluster networks carrying netloom's mark, with
    // their forwarding and neighbour entries (one dump each, only when
    // there are any).
    let vxlans: Vec<&Link> = host
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("vxlan"))
        .filter(|l| {
            matches!(
                l.alias.as_deref().and_then(model::parse_alias),
                Some(AliasMark::Vxlan(_))
            )
        })
        .collect();
    // The earlier reading's entries hold while its VXLAN devices are all
    // there are, as it saw them (a device an event reported, or one made
    // by hand, is read with its entries).
    let vxlans_as_before = |e: &&Observation| {
        vxlans.len() == e.state.vxlans.len() && vxlans.iter().all(|l| e.host.links.contains(l))
    };
    if let Some(e) = earlier_host.filter(vxlans_as_before) {
        st.vxlans = e.state.vxlans.clone();
    } else if !vxlans.is_empty() {
        let fdb = host_nl.fdb().await.context("dump forwarding entries")?;
        let neigh = host_nl
            .neighbours()
            .await
            .context("dump neighbour entries")?;
        for l in vxlans {
            let Some(AliasMark::Vxlan(net)) = l.alias.as_deref().and_then(model::parse_alias)
            else {
                continue;
            };
            let info = l.vxlan.clone().unwrap_or_default();
            st.vxlans.insert(
                net,
                model::Vxlan {
                    name: l.name.clone(),
                    vni: info.vni,
                    local: info.local.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                    port: info.port,
                    bridge: l
                        .master
                        .and_then(|m| by_index.get(&m))
                        .map(|b| b.name.clone()),
                    mtu: l.mtu,
                    up: l.up,
                    fdb: fdb
                        .iter()
                        .filter(|f| f.index == l.index)
                        .map(|f| model::fdb_entry(&f.mac, f.dst))
                        .collect(),
                    proxy: info.proxy,
                    neigh: neigh
                        .iter()
                        .filter(|n| n.index == l.index)
                        .map(|n| model::neigh_entry(n.ip, &n.mac))
                        .collect(),
                },
            );
        }
        counters = host_nl.counters();
    }

    // Namespaces, and what is inside them: all read by helper threads in
    // one go (see `netlink::sync`).
    let interest = namespaces_of_interest(desired, record);
    let mut present: Vec<(&str, &NsRef)> = Vec::with_capacity(interest.len());
    let mut seen: BTreeSet<&NsRef> = BTreeSet::new();
    let mut to_read: Vec<NsRef> = Vec::new();
    let mut views: HashMap<NsRef, Arc<NsView>> = HashMap::with_capacity(interest.len());
    for (container, ns) in &interest {
        let ns: &NsRef = ns;
        // The earlier reading's view of it, when nothing since says it
        // changed: taken as it is, and the namespace known mounted.
        let kept = reuse.and_then(|r| r.earlier.views.get(ns).filter(|_| !r.stale.contains(ns)));
        if !ns_exists(ns, &named_netns, record, kept.is_some()) {
            continue;
        }
        if seen.insert(ns) {
            match kept {
                Some(v) => {
                    views.insert(ns.clone(), v.clone());
                }
                None => to_read.push(ns.clone()),
            }
        }
        present.push((container, ns));
    }
    // Every namespace taken from the earlier reading, none read.
    let all_taken = to_read.is_empty();
    let (early_fw, early_views) = match early {
        Some(e) => (Some(e.firewall), e.views),
        None => (None, HashMap::new()),
    };
    if !early_views.is_empty() {
        let mut early_views = early_views;
        to_read.retain(|ns| match early_views.remove(ns) {
            Some(v) => {
                counters.dumps += 3;
                views.insert(ns.clone(), v);
                false
            }
            None => true,
        });
    }
    views.extend(
        read_namespaces(to_read, &mut counters)
            .await?
            .into_iter()
            .map(|(ns, v)| (ns, Arc::new(v))),
    );
    tracing::debug!("observe: host and namespaces read after {:?}", t0.elapsed());
    // What this reading derives from the namespaces and the host's links
    // is what the earlier one derived when it finds them all as that one
    // did: the same links in the host, and the same namespaces under the
    // same containers, each taken from it unread. Taken then, not derived
    // again: at a thousand containers the derivation (an alias parsed,
    // addresses and a MAC formatted per endpoint) took 1.5-1.9 ms of a
    // 5.4-7 ms reading that read nothing again (measured); the maps are
    // now shared with the earlier reading, not copied.
    let earlier_derived = reuse
        .map(|r| r.earlier)
        .filter(|e| all_taken && derived_as_before(e, &host, &present));
    match earlier_derived {
        Some(e) => {
            st.namespaces = e.state.namespaces.clone();
            st.endpoints = e.state.endpoints.clone();
        }
        None => {
            st.namespaces = namespaces_of(&present, &views).into();
            st.endpoints = endpoints_of(&host, &by_index, &st.namespaces, &views).into();
        }
    }
    tracing::debug!(
        "observe: endpoints after {:?}{}",
        t0.elapsed(),
        if earlier_derived.is_some() {
            " (as the earlier reading derived them)"
        } else {
            ""
        }
    );

    // Sysctls netloom sets.
    // Desired and applied name mostly the same keys: read each once.
    let keys: BTreeSet<&String> = desired
        .sysctls
        .keys()
        .chain(record.applied().into_iter().flat_map(|a| a.sysctls.keys()))
        .collect();
    match reuse.filter(|r| !r.sysctls) {
        Some(r) => {
            for key in keys {
                if let Some(v) = r.earlier.state.sysctls.get(key) {
                    st.sysctls.insert(key.clone(), v.clone());
                }
            }
        }
        None => {
            for key in keys {
                if let Ok(v) = crate::host::sysctl::read_sysctl(None, key) {
                    st.sysctls.insert(key.clone(), v.trim().to_string());
                }
            }
        }
    }

    tracing::debug!("observe: sysctls after {:?}", t0.elapsed());
    // The firewall: netloom's only when the record says netloom made it or
    // the table carries netloom's mark; a hand-made namesake is foreign.
    let known = reuse.and_then(|r| r.firewall.as_deref().cloned());
    let (mut fw, nft_generation) = match (&known, early_fw) {
        (Some(_), _) => (None, None),
        (None, Some(early)) => early?,
        (None, None) => read_firewall()?,
    };
    let mut foreign_tables = Vec::new();
    let vouched = record.applied().is_some_and(|a| a.firewall.is_some());
    if fw.is_some() && !vouched {
        for (family, marked) in crate::host::nft::tables_marked()? {
            if !marked {
                foreign_tables.push(family.to_string());
            }
        }
        if !foreign_tables.is_empty() {
            fw = None;
        }
    }
    st.firewall = match known {
        Some(k) => k,
        None => fw.as_ref().map(firewall_state),
    };

    tracing::debug!("observe: nft read after {:?}", t0.elapsed());
    // Files netloom owns or will own, in order: three sorted lists
    // merged (a stable sort merges the runs it finds), not a set built
    // path by path: a reading of 1,000 containers takes 6,000 paths.
    let mut paths: Vec<&String> = desired
        .files
        .keys()
        .chain(record.owned.files.iter())
        .chain(record.applied().into_iter().flat_map(|a| a.files.keys()))
        .collect();
    paths.sort();
    paths.dedup();
    // What the desired state and the earlier reading hold at each path,
    // found in one walk beside the paths rather than a lookup per path.
    let want = aligned(&paths, &desired.files);
    let kept = match reuse {
        Some(r) => aligned(&paths, &r.earlier.state.files),
        None => vec![None; paths.len()],
    };
    let reusable = |p: &String| reuse.is_some_and(|r| !r.stale_files.contains(p));
    // The kept digests that are those of the texts desired now, checked
    // together.
    let desired_digests = model::digests_of((0..paths.len()).filter_map(|i| {
        let (kept, want) = (kept[i]?, want[i]?);
        (model::is_digest(kept) && reusable(paths[i])).then_some((i, &**kept, want))
    }));
    let mut files = Vec::with_capacity(paths.len());
    for (i, p) in paths.into_iter().enumerate() {
        let want = want[i];
        if reusable(p) {
            match kept[i] {
                // Absent (or not netloom's) when it was read.
                None => continue,
                Some(text) if !model::is_digest(text) => {
                    files.push((p.clone(), shared(want, text)));
                    continue;
                }
                // Kept as the digest of the text it held when that was
                // the desired text (a long-lived reader, the agent, keeps
                // its readings so): the text desired now if it is that
                // one (or that digest, when only it is desired), else only
                // a reading tells.
                Some(kept) => {
                    if let Some(want) = want
                        && (desired_digests.contains(&i) || want == kept)
                    {
                        files.push((p.clone(), want.clone()));
                        continue;
                    }
                }
            }
        }
        match std::fs::read_to_string(p) {
            // A file the file does not want (any more) is netloom's to
            // remove only if netloom wrote it: recorded, or with its
            // header. A user's file at such a path is not observed.
            Ok(text)
                if want.is_none()
                    && !record.owned.files.contains(p)
                    && !text.starts_with(model::FILE_MARK) => {}
            Ok(text) => files.push((p.clone(), shared(want, &text.into()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read {p}")),
        }
    }
    // In path order: the map is built at once.
    st.files = Arc::new(files.into_iter().collect());

    tracing::debug!("observe: files read after {:?}", t0.elapsed());
    Ok(Observation {
        state: st,
        host,
        firewall: fw.map(Arc::new),
        named_netns,
        foreign_tables,
        nft_generation,
        counters,
        views,
    })
}

/// The containers' namespaces: each container of `present` in its
/// namespace, whose `lo` is up or not as its view says.
fn namespaces_of(
    present: &[(&str, &NsRef)],
    views: &HashMap<NsRef, Arc<NsView>>,
) -> BTreeMap<String, Namespace> {
    present
        .iter()
        .map(|(container, ns)| {
            let lo_up = views
                .get(*ns)
                .and_then(|v| v.link("lo"))
                .is_some_and(|l| l.up);
            (
                container.to_string(),
                Namespace {
                    netns: (*ns).clone(),
                    lo_up,
                },
            )
        })
        .collect()
}

/// The endpoints: host veths carrying netloom's mark, each paired with
/// its peer in the namespace of its container (`namespaces`, whose
/// contents are in `views`).
fn endpoints_of(
    host: &NsView,
    by_index: &HashMap<u32, &Link>,
    namespaces: &BTreeMap<String, Namespace>,
    views: &HashMap<NsRef, Arc<NsView>>,
) -> BTreeMap<String, Endpoint> {
    let mut out = BTreeMap::new();
    for l in &host.links {
        if l.kind.as_deref() != Some("veth") {
            continue;
        }
        let Some(AliasMark::Endpoint {
            container,
            ifname,
            network,
        }) = l.alias.as_deref().and_then(model::parse_alias)
        else {
            continue;
        };
        let master = l
            .master
            .and_then(|m| by_index.get(&m))
            .map(|m| m.name.clone());
        let ns = namespaces.get(&container).map(|n| n.netns.clone());
        let peer = ns.as_ref().and_then(|ns| {
            let v = views.get(ns)?;
            let p = v.link(&ifname)?;
            // The peer must be this veth's other end, not a namesake.
            (l.peer_index.is_none_or(|i| i == p.index)).then_some((v, p))
        });
        let ep = match (ns, peer) {
            (Some(ns), Some((v, p))) => {
                // The gateways of the default routes out of the peer.
                let mut via = v
                    .routes
                    .iter()
                    .filter(|r| r.prefix == 0 && r.oif == Some(p.index))
                    .filter_map(|r| r.gateway);
                Endpoint {
                    container: container.clone(),
                    network,
                    netns: ns,
                    ifname: ifname.clone(),
                    host_veth: l.name.clone(),
                    bridge: master,
                    addrs: v.addrs_of(p.index),
                    mac: p.mac.map(|m| model::mac_string(&m)).unwrap_or_default(),
                    mtu: l.mtu.min(p.mtu),
                    gateway: via.clone().find_map(|g| match g {
                        IpAddr::V4(g) => Some(g),
                        IpAddr::V6(_) => None,
                    }),
                    gateway6: via.find_map(|g| match g {
                        IpAddr::V6(g) => Some(g),
                        IpAddr::V4(_) => None,
                    }),
                    up: l.up && p.up,
                    hairpin: l.hairpin.unwrap_or(false),
                }
            }
            // The other end is gone or elsewhere: an endpoint that must be
            // replaced (an empty ifname marks it).
            (ns, _) => Endpoint {
                container: container.clone(),
                network,
                netns: ns.unwrap_or_else(|| NsRef::Named(container.clone())),
                ifname: String::new(),
                host_veth: l.name.clone(),
                bridge: master,
                addrs: BTreeSet::new(),
                mac: String::new(),
                mtu: l.mtu,
                gateway: None,
                gateway6: None,
                up: false,
                hairpin: false,
            },
        };
        out.insert(format!("{container}.{ifname}"), ep);
    }
    out
}

/// Whether the namespaces and endpoints `earlier` derived are what a
/// reading that took every namespace's view from it (none read again)
/// would derive: it sees the host's links as `earlier` did, and the same
/// containers, each in the namespace `earlier` found it in. Both are
/// functions of exactly these (see [`namespaces_of`], [`endpoints_of`]),
/// and the views are `earlier`'s own.
fn derived_as_before(earlier: &Observation, host: &NsView, present: &[(&str, &NsRef)]) -> bool {
    let before = &earlier.state.namespaces;
    host.links == earlier.host.links
        && present.len() == before.len()
        && present
            .iter()
            .all(|(c, ns)| before.get(*c).is_some_and(|n| n.netns == **ns))
}

/// Helper threads reading namespaces (the machines this runs on have a
/// few cores; the work is system calls).
const READ_THREADS: usize = 2;

/// One dump of links, addresses and routes inside each namespace of `list`.
async fn read_namespaces(
    list: Vec<NsRef>,
    counters: &mut Counters,
) -> Result<HashMap<NsRef, NsView>> {
    // Nothing to read (a reading that reuses every namespace): no hand-off
    // to a blocking thread and back.
    if list.is_empty() {
        return Ok(HashMap::new());
    }
    let paths: Vec<PathBuf> = list.iter().map(NsRef::path).collect();
    let dumps = tokio::task::spawn_blocking(move || netlink::sync::dump_each(paths, READ_THREADS))
        .await
        .context("namespace reader")??;
    let mut out = HashMap::with_capacity(list.len());
    for (ns, d) in list.into_iter().zip(dumps) {
        let (links, addrs, routes) = d.with_context(|| format!("read {ns}"))?;
        counters.dumps += 3;
        out.insert(
            ns,
            NsView {
                links,
                addrs,
                routes,
            },
        );
    }
    Ok(out)
}

impl Observation {
    /// Objects the desired state needs whose names are taken by something
    /// netloom does not own: an error naming each, never a takeover.
    pub fn foreign_conflicts(&self, desired: &State, record: &Record) -> Vec<Failure> {
        let mut out = Vec::new();
        let ours: BTreeSet<&str> = self
            .state
            .bridges
            .values()
            .map(|b| b.name.as_str())
            .chain(self.state.endpoints.values().map(|e| e.host_veth.as_str()))
            .collect();
        // By name, built once (the first of a name, as `NsView::link`
        // finds it): a thousand endpoints each looked up in a list of the
        // host's thousands of links is quadratic.
        let mut link: HashMap<&str, &Link> = HashMap::new();
        for l in &self.host.links {
            link.entry(l.name.as_str()).or_insert(l);
        }
        for (net, b) in &desired.bridges {
            if let Some(l) = link.get(b.name.as_str()) {
                let marked = self
                    .state
                    .bridges
                    .get(net)
                    .is_some_and(|o| o.name == b.name);
                if !marked {
                    let what = if ours.contains(b.name.as_str()) {
                        "is netloom's but serves another network".to_string()
                    } else {
                        format!(
                            "exists and is not netloom's ({})",
                            l.kind.as_deref().unwrap_or("interface")
                        )
                    };
                    out.push(Failure::new(
                        format!("network.{net}"),
                        format!(
                            "interface `{}` {what}; remove it or set another `bridge` name",
                            b.name
                        ),
                    ));
                }
            }
        }
        for (key, e) in desired.endpoints.iter() {
            if link.contains_key(e.host_veth.as_str()) && !ours.contains(e.host_veth.as_str()) {
                out.push(Failure::new(
                    format!("container.{}", e.container),
                    format!(
                        "container.{key}: interface `{}` exists and is not netloom's",
                        e.host_veth
                    ),
                ));
            }
        }
        if desired.firewall.is_some() {
            for family in &self.foreign_tables {
                out.push(Failure::new(
                    crate::core::plan::NFT_TABLE,
                    format!(
                        "nft table `{family} {}` exists and was not created by netloom (it lacks netloom's mark); netloom never replaces it: rename or delete it (`nft delete table {family} {}`), then apply again",
                        firewall::TABLE,
                        firewall::TABLE
                    ),
                ));
            }
        }
        for path in desired.files.keys() {
            if let Some(text) = self.state.files.get(path) {
                if !model::written_by_netloom(text) && !record.owned.files.contains(path) {
                    let owner = crate::core::plan::file_owner(path, desired)
                        .map(|c| format!("container.{c}"))
                        .unwrap_or_else(|| format!("file.{path}"));
                    out.push(Failure::new(
                        owner,
                        format!(
                            "file {path} exists and was not written by netloom (its first line is not netloom's header); netloom never overwrites it: move it away (netloom writes this file for the container), then apply again"
                        ),
                    ));
                }
            }
        }
        for (c, n) in desired.namespaces.iter() {
            if let NsRef::Named(name) = &n.netns {
                let exists = self.named_netns.contains(name);
                let owned = record.owned.netns.contains(name);
                if exists && !owned {
                    out.push(Failure::new(
                        format!("container.{c}"),
                        format!(
                            "network namespace `{name}` exists in /run/netns and was not created by netloom; remove it, or attach it with netns_path = \"{}\"",
                            netns::named_path(name).display()
                        ),
                    ));
                }
            }
            if let NsRef::Path(p) = &n.netns {
                if !p.exists() {
                    out.push(Failure::new(
                        format!("container.{c}"),
                        format!(
                            "netns_path {} does not exist (has the container's process exited?)",
                            p.display()
                        ),
                    ));
                } else if !is_netns(p) {
                    out.push(Failure::new(
                        format!("container.{c}"),
                        format!(
                            "netns_path {} is not a network namespace (expected e.g. /proc/PID/ns/net or /run/netns/NAME)",
                            p.display()
                        ),
                    ));
                }
            }
        }
        out
    }
}

/// The namespace paths netloom attached (for the ownership record).
pub fn attached_paths(st: &State) -> BTreeSet<PathBuf> {
    st.namespaces
        .values()
        .filter_map(|n| match &n.netns {
            NsRef::Path(p) => Some(p.clone()),
            NsRef::Named(_) => None,
        })
        .collect()
}

/// Whether `p` is a namespace file (nsfs), as `/proc/PID/ns/net` and the
/// bind mounts in /run/netns are.
pub fn is_netns(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_namespaces(names: &[(&str, NsRef)]) -> State {
        let mut st = State::default();
        for (c, ns) in names {
            st.namespaces_mut().insert(
                c.to_string(),
                Namespace {
                    netns: ns.clone(),
                    lo_up: true,
                },
            );
        }
        st
    }

    fn link(
        index: u32,
        name: &str,
        kind: &str,
        master: Option<u32>,
        alias: Option<String>,
    ) -> Link {
        Link {
            index,
            name: name.into(),
            kind: (!kind.is_empty()).then(|| kind.into()),
            master,
            mtu: 1500,
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            up: true,
            alias,
            peer_index: None,
            link_netnsid: None,
            hairpin: None,
            vxlan: None,
        }
    }

    /// A host with the bridge of network `n` and a marked veth on it for
    /// each container of `containers`, each container's `eth0` in its own
    /// namespace.
    fn a_host(containers: &[&str]) -> (NsView, HashMap<NsRef, Arc<NsView>>) {
        let mut links = vec![link(
            2,
            "nl-n",
            "bridge",
            None,
            Some(model::bridge_alias("n")),
        )];
        let mut views = HashMap::new();
        for (i, c) in containers.iter().enumerate() {
            let index = 10 + i as u32;
            let alias = model::veth_alias(c, "n", "eth0");
            links.push(link(
                index,
                &format!("veth{i}"),
                "veth",
                Some(2),
                Some(alias),
            ));
            let inner = NsView {
                links: vec![
                    link(1, "lo", "", None, None),
                    link(2, "eth0", "veth", None, None),
                ],
                addrs: vec![Addr {
                    index: 2,
                    ip: format!("10.0.0.{}", i + 2).parse().unwrap(),
                    prefix: 24,
                }],
                routes: Vec::new(),
            };
            views.insert(NsRef::Named(c.to_string()), Arc::new(inner));
        }
        let host = NsView {
            links,
            addrs: Vec::new(),
            routes: Vec::new(),
        };
        (host, views)
    }

    fn reading(
        host: NsView,
        views: HashMap<NsRef, Arc<NsView>>,
        present: &[(&str, &NsRef)],
    ) -> Observation {
        let by_index: HashMap<u32, &Link> = host.links.iter().map(|l| (l.index, l)).collect();
        let mut state = State {
            namespaces: namespaces_of(present, &views).into(),
            ..State::default()
        };
        state.endpoints = endpoints_of(&host, &by_index, &state.namespaces, &views).into();
        drop(by_index);
        Observation {
            state,
            host,
            firewall: None,
            named_netns: BTreeSet::new(),
            foreign_tables: Vec::new(),
            nft_generation: None,
            counters: Counters::default(),
            views,
        }
    }

    #[test]
    fn what_an_earlier_reading_derived_is_taken_only_as_it_would_be_derived() {
        let (a, b) = (NsRef::Named("a".into()), NsRef::Named("b".into()));
        let (host, views) = a_host(&["a", "b"]);
        let present = [("a", &a), ("b", &b)];
        let earlier = reading(host.clone(), views.clone(), &present);
        assert_eq!(earlier.state.endpoints.len(), 2);
        assert_eq!(
            earlier.state.endpoints["a.eth0"].addrs,
            BTreeSet::from(["10.0.0.2/24".to_string()])
        );
        // The same host and containers: taken, and what would be derived.
        assert!(derived_as_before(&earlier, &host, &present));
        let again = reading(host.clone(), views.clone(), &present);
        assert_eq!(again.state.namespaces, earlier.state.namespaces);
        assert_eq!(again.state.endpoints, earlier.state.endpoints);

        // A host link changed (a veth's MTU): derived again.
        let mut changed = host.clone();
        changed.links[1].mtu = 1400;
        assert!(!derived_as_before(&earlier, &changed, &present));
        assert_ne!(
            reading(changed, views.clone(), &present).state.endpoints,
            earlier.state.endpoints
        );
        // A container in another namespace, one more, one fewer: derived
        // again.
        assert!(!derived_as_before(&earlier, &host, &[("a", &a), ("b", &a)]));
        let c = NsRef::Named("c".into());
        assert!(!derived_as_before(
            &earlier,
            &host,
            &[("a", &a), ("b", &b), ("c", &c)]
        ));
        assert!(!derived_as_before(&earlier, &host, &[("a", &a)]));
        assert!(!derived_as_before(&earlier, &host, &[("a", &a), ("c", &b)]));
    }

    #[test]
    fn the_namespaces_looked_into() {
        let named = |n: &str| NsRef::Named(n.to_string());
        let mut record = Record::default();
        // Applied: `a` in its own namespace, `b` in one the file moves.
        record.set_applied(Some(with_namespaces(&[
            ("a", named("a")),
            ("b", named("b-old")),
        ])));
        // Created by netloom: `b-old` (now nobody's), `c` and `e-ns` (the
        // file's `c` and `e` name them) and `gone` (named by nothing any
        // more).
        record.owned.netns = ["b-old", "c", "e-ns", "gone"].map(String::from).into();
        let desired = with_namespaces(&[
            ("b", named("b")),
            ("c", named("c")),
            ("d", NsRef::Path("/proc/1/ns/net".into())),
            ("e", named("e-ns")),
        ]);
        let got: Vec<(&str, NsRef)> = namespaces_of_interest(&desired, &record)
            .into_iter()
            .map(|(c, ns)| (c, ns.into_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", named("a")),
                // The file wins for a container it declares...
                ("b", named("b")),
                // ...but the namespace netloom made for it before is
                // still looked at, under its own name.
                ("b-old", named("b-old")),
                ("c", named("c")),
                ("d", NsRef::Path("/proc/1/ns/net".into())),
                // Once, as `e`'s.
                ("e", named("e-ns")),
                ("gone", named("gone")),
            ]
        );
    }

    #[test]
    fn a_file_as_desired_is_held_once() {
        let want: FileText = "10.0.0.2\ta\n".into();
        let same = shared(Some(&want), &"10.0.0.2\ta\n".into());
        assert!(FileText::ptr_eq(&same, &want));
        // Drifted, or not desired at all: the text read is kept.
        let drifted = shared(Some(&want), &"10.0.0.9\ta\n".into());
        assert_eq!(&*drifted, "10.0.0.9\ta\n");
        let read: FileText = "10.0.0.2\ta\n".into();
        assert!(FileText::ptr_eq(&shared(None, &read), &read));
    }

    #[test]
    fn each_path_finds_its_entry_in_one_walk() {
        let map: BTreeMap<String, u8> = [("/a", 1), ("/c", 3), ("/d", 4), ("/f", 6)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let paths: Vec<String> = ["/b", "/c", "/d", "/e", "/g"].map(String::from).to_vec();
        let paths: Vec<&String> = paths.iter().collect();
        assert_eq!(
            aligned(&paths, &map),
            vec![None, Some(&3), Some(&4), None, None]
        );
        assert!(aligned(&[], &map).is_empty());
    }
}
