//! A fake kernel for plan tests: a [`Runner`] that carries out plan
//! operations on an in-memory model of links, namespaces, routes, sysctls,
//! files and netloom's nft table, and an `observe` that reads that model
//! back into a [`State`] the way `netloom::host::observe` reads the real host.
//!
//! The recording `Runner` of `src/apply.rs` only records operation texts,
//! which is not enough to observe anything afterwards, so this one keeps
//! the state. It follows the same rules as the real reader:
//!
//! - links carry the alias netloom writes; bridges and host veths are
//!   found by it (`model::parse_alias`), exactly as `observe` does;
//! - a veth's other end lives in a namespace; deleting either end deletes
//!   both, deleting a namespace deletes the veths with an end inside it;
//! - an endpoint's MAC, addresses and default routes are read from the end
//!   inside the namespace, its MTU is the smaller of both ends;
//! - a device left without IPv4 addresses loses its IPv4 routes;
//! - namespaces attached by path (`netns_path`) exist already: the fake
//!   makes them on first use.
//!
//! The firewall is the one part not modelled element by element: the nft
//! transaction's script cannot be read back into a `Firewall` without nft
//! itself. [`FakeKernel::nft`] therefore treats a successful transaction
//! as installing the firewall the test planned it from
//! ([`FakeKernel::nft_target`]), with an intact skeleton; without a
//! transaction the table stays as it was.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Result, anyhow, bail};
use netloom::core::firewall::Transaction;
use netloom::core::model::{
    self, AliasMark, Bridge, Endpoint, FileText, FirewallState, Namespace, NsRef, State,
};
use netloom::core::plan::Op;
use netloom::host::apply::Runner;
use netloom::host::netlink::Counters;
use netloom::host::state::Owned;

#[derive(Clone, Debug)]
pub struct Link {
    pub kind: &'static str,
    pub alias: Option<String>,
    pub mtu: u32,
    pub mac: String,
    pub up: bool,
    pub master: Option<String>,
    pub hairpin: bool,
    pub addrs: BTreeSet<String>,
    /// The other end of a veth: (namespace, name); `None` namespace is the
    /// host.
    pub peer: Option<(Option<NsRef>, String)>,
}

impl Link {
    fn new(kind: &'static str) -> Link {
        Link {
            kind,
            alias: None,
            mtu: 1500,
            mac: String::new(),
            up: false,
            master: None,
            hairpin: false,
            addrs: BTreeSet::new(),
            peer: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Ns {
    pub links: BTreeMap<String, Link>,
    /// Default routes: (gateway, device).
    pub routes: Vec<(IpAddr, String)>,
}

impl Ns {
    fn with_lo() -> Ns {
        let mut ns = Ns::default();
        ns.links.insert("lo".into(), Link::new("loopback"));
        ns
    }
}

#[derive(Clone, Debug, Default)]
pub struct FakeKernel {
    pub host: Ns,
    pub netns: BTreeMap<NsRef, Ns>,
    pub sysctls: BTreeMap<String, String>,
    pub files: BTreeMap<String, FileText>,
    pub firewall: Option<FirewallState>,
    /// What a successful nft transaction installs (see the module docs).
    pub nft_target: Option<FirewallState>,
    /// The state record's namespaces: container -> namespace.
    pub record: BTreeMap<String, NsRef>,
    pub ops_run: usize,
    pub nft_calls: usize,
}

impl FakeKernel {
    /// A host holding `st` (an observed state, e.g. a golden
    /// `observed.json`), built by the same rules `observe` reads it back by.
    pub fn holding(st: &State) -> FakeKernel {
        let mut k = FakeKernel {
            sysctls: st.sysctls.clone(),
            files: (*st.files).clone(),
            firewall: st.firewall.clone(),
            ..Default::default()
        };
        for (net, b) in &st.bridges {
            let mut l = Link::new("bridge");
            l.alias = Some(model::bridge_alias(net));
            l.mtu = b.mtu;
            l.mac = b.mac.clone();
            l.up = b.up;
            l.addrs = b.addrs.clone();
            k.host.links.insert(b.name.clone(), l);
        }
        for (container, ns) in st.namespaces.iter() {
            k.record.insert(container.clone(), ns.netns.clone());
            let mut n = Ns::with_lo();
            n.links.get_mut("lo").unwrap().up = ns.lo_up;
            k.netns.insert(ns.netns.clone(), n);
        }
        for e in st.endpoints.values() {
            let mut h = Link::new("veth");
            h.alias = Some(model::veth_alias(&e.container, &e.network, &e.ifname));
            h.mtu = e.mtu;
            h.up = e.up;
            h.master = e.bridge.clone();
            h.hairpin = e.hairpin;
            if !e.ifname.is_empty() {
                let mut p = Link::new("veth");
                p.mtu = e.mtu;
                p.mac = e.mac.clone();
                p.up = e.up;
                p.addrs = e.addrs.clone();
                p.peer = Some((None, e.host_veth.clone()));
                h.peer = Some((Some(e.netns.clone()), e.ifname.clone()));
                let ns = k.netns.entry(e.netns.clone()).or_insert_with(Ns::with_lo);
                ns.links.insert(e.ifname.clone(), p);
                if let Some(g) = e.gateway {
                    ns.routes.push((IpAddr::V4(g), e.ifname.clone()));
                }
                if let Some(g) = e.gateway6 {
                    ns.routes.push((IpAddr::V6(g), e.ifname.clone()));
                }
            }
            k.host.links.insert(e.host_veth.clone(), h);
        }
        k
    }

    fn ns(&mut self, r: &Option<NsRef>) -> Result<&mut Ns> {
        match r {
            None => Ok(&mut self.host),
            Some(NsRef::Path(p)) => Ok(self
                .netns
                .entry(NsRef::Path(p.clone()))
                .or_insert_with(Ns::with_lo)),
            Some(r) => self.netns.get_mut(r).ok_or_else(|| anyhow!("no {r}")),
        }
    }

    fn link(&mut self, r: &Option<NsRef>, name: &str) -> Result<&mut Link> {
        self.ns(r)?
            .links
            .get_mut(name)
            .ok_or_else(|| anyhow!("no link {name} in {r:?}"))
    }

    fn delete_link(&mut self, r: &Option<NsRef>, name: &str) -> Result<()> {
        let ns = self.ns(r)?;
        let l = ns
            .links
            .remove(name)
            .ok_or_else(|| anyhow!("no link {name} in {r:?}"))?;
        ns.routes.retain(|(_, d)| d != name);
        if let Some((pns, pname)) = l.peer {
            if let Ok(p) = self.ns(&pns) {
                p.links.remove(&pname);
                p.routes.retain(|(_, d)| *d != pname);
            }
        }
        Ok(())
    }

    fn apply_op(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::Sysctl { key, value } => {
                self.sysctls.insert(key.clone(), value.clone());
            }
            Op::CreateBridge { name, mtu, alias } => {
                if self.host.links.contains_key(name) {
                    bail!("{name} exists");
                }
                let mut l = Link::new("bridge");
                l.mtu = *mtu;
                l.alias = Some(alias.clone());
                self.host.links.insert(name.clone(), l);
            }
            Op::DeleteLink { netns, name } => self.delete_link(netns, name)?,
            Op::LinkUp { netns, name } => self.link(netns, name)?.up = true,
            Op::SetMtu { netns, name, mtu } => self.link(netns, name)?.mtu = *mtu,
            Op::SetMaster { name, bridge } => {
                if self.host.links.get(bridge).map(|b| b.kind) != Some("bridge") {
                    bail!("no bridge {bridge}");
                }
                self.link(&None, name)?.master = Some(bridge.clone());
            }
            Op::SetHairpin { name } => self.link(&None, name)?.hairpin = true,
            // The fake kernel keeps no IPv6 state; the interface must exist.
            Op::SetIpv6 { netns, dev, .. } => {
                self.link(&Some(netns.clone()), dev)?;
            }
            // Cluster mode is covered by its kernel tests; the configs
            // generated here are single-host, so meeting one is a bug.
            Op::CreateVxlan { name, .. } => bail!("the fake kernel has no VXLAN ({name})"),
            Op::AddFdb { dev, .. } | Op::DelFdb { dev, .. } => {
                bail!("the fake kernel has no forwarding database ({dev})")
            }
            Op::AddNeigh { dev, .. } | Op::DelNeigh { dev, .. } => {
                bail!("the fake kernel has no neighbour table ({dev})")
            }
            Op::SetMac { netns, name, mac } => self.link(netns, name)?.mac = mac.clone(),
            Op::AddAddr { netns, dev, addr } => {
                if !self.link(netns, dev)?.addrs.insert(addr.clone()) {
                    bail!("{addr} exists on {dev}");
                }
            }
            Op::DelAddr { netns, dev, addr } => {
                let l = self.link(netns, dev)?;
                if !l.addrs.remove(addr) {
                    bail!("{addr} not on {dev}");
                }
                // As the kernel does (fib_disable_ip): a device left without
                // IPv4 addresses loses its IPv4 routes.
                if !l.addrs.iter().any(|a| !a.contains(':')) {
                    let dev = dev.clone();
                    self.ns(netns)?
                        .routes
                        .retain(|(g, d)| *d != dev || g.is_ipv6());
                }
            }
            Op::CreateNetns { name } => {
                let r = NsRef::Named(name.clone());
                if self.netns.contains_key(&r) {
                    bail!("netns {name} exists");
                }
                self.netns.insert(r.clone(), Ns::with_lo());
                self.record.insert(name.clone(), r);
            }
            Op::DeleteNetns { name } => {
                let r = NsRef::Named(name.clone());
                let ns = self
                    .netns
                    .remove(&r)
                    .ok_or_else(|| anyhow!("no netns {name}"))?;
                self.record.retain(|_, x| *x != r);
                for l in ns.links.values() {
                    if let Some((None, host)) = &l.peer {
                        self.host.links.remove(host);
                    }
                }
            }
            Op::CreateVeth {
                host,
                peer,
                netns,
                mac,
                mtu,
                alias,
            } => {
                if self.host.links.contains_key(host) {
                    bail!("{host} exists");
                }
                let target = Some(netns.clone());
                let ns = self.ns(&target)?;
                if ns.links.contains_key(peer) {
                    bail!("{peer} exists in {netns}");
                }
                let mut p = Link::new("veth");
                p.mtu = *mtu;
                p.mac = mac.clone();
                p.peer = Some((None, host.clone()));
                ns.links.insert(peer.clone(), p);
                let mut h = Link::new("veth");
                h.mtu = *mtu;
                h.alias = Some(alias.clone());
                h.peer = Some((target, peer.clone()));
                self.host.links.insert(host.clone(), h);
            }
            Op::AddDefaultRoute {
                netns,
                dev,
                gateway,
            } => {
                let r = Some(netns.clone());
                self.link(&r, dev)?;
                let ns = self.ns(&r)?;
                if ns
                    .routes
                    .iter()
                    .any(|(g, _)| g.is_ipv6() == gateway.is_ipv6())
                {
                    bail!("default route exists in {netns}");
                }
                ns.routes.push((*gateway, dev.clone()));
            }
            Op::DelDefaultRoute { netns, gateway } => {
                let ns = self.ns(&Some(netns.clone()))?;
                let before = ns.routes.len();
                ns.routes.retain(|(g, _)| g != gateway);
                if ns.routes.len() == before {
                    bail!("no default route via {gateway} in {netns}");
                }
            }
            Op::Nft { .. } => unreachable!("execute_with runs nft ops as one transaction"),
            Op::WriteFile { path, content } => {
                self.files.insert(path.clone(), content.as_str().into());
            }
            Op::RemoveFile { path } => {
                self.files
                    .remove(path)
                    .ok_or_else(|| anyhow!("no file {path}"))?;
            }
        }
        Ok(())
    }

    /// Reads the fake host back, as `netloom::host::observe::observe` reads the
    /// real one: the namespaces of `desired` and of the state record.
    pub fn observe(&self, desired: &State) -> State {
        let mut st = State::default();
        for (name, l) in &self.host.links {
            if l.kind != "bridge" {
                continue;
            }
            if let Some(AliasMark::Network(net)) = l.alias.as_deref().and_then(model::parse_alias) {
                st.bridges.insert(
                    net,
                    Bridge {
                        name: name.clone(),
                        addrs: l.addrs.clone(),
                        mtu: l.mtu,
                        mac: l.mac.clone(),
                        up: l.up,
                    },
                );
            }
        }
        // The namespaces of interest: the file's, then those the state
        // record knows (as `observe` does with the applied state and the
        // owned namespaces).
        let mut of_interest: BTreeMap<String, NsRef> = self.record.clone();
        for (container, ns) in desired.namespaces.iter() {
            of_interest.retain(|_, r| *r != ns.netns);
            of_interest.insert(container.clone(), ns.netns.clone());
        }
        for (container, r) in of_interest {
            if let Some(n) = self.netns.get(&r) {
                let lo_up = n.links.get("lo").is_some_and(|l| l.up);
                st.namespaces_mut()
                    .insert(container, Namespace { netns: r, lo_up });
            }
        }
        for (name, l) in &self.host.links {
            if l.kind != "veth" {
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
            let ns = st.namespaces.get(&container).map(|n| n.netns.clone());
            let peer = ns.as_ref().and_then(|r| {
                let v = self.netns.get(r)?;
                let p = v.links.get(&ifname)?;
                (l.peer.as_ref() == Some(&(Some(r.clone()), ifname.clone()))).then_some((v, p))
            });
            let ep = match (ns, peer) {
                (Some(ns), Some((v, p))) => {
                    let via = |v6: bool| {
                        v.routes
                            .iter()
                            .find(|(g, d)| *d == ifname && g.is_ipv6() == v6)
                            .map(|(g, _)| *g)
                    };
                    Endpoint {
                        container: container.clone(),
                        network,
                        netns: ns,
                        ifname: ifname.clone(),
                        host_veth: name.clone(),
                        bridge: l.master.clone(),
                        addrs: p.addrs.clone(),
                        mac: p.mac.clone(),
                        mtu: l.mtu.min(p.mtu),
                        gateway: via(false).and_then(|g| match g {
                            IpAddr::V4(g) => Some(g),
                            IpAddr::V6(_) => None,
                        }),
                        gateway6: via(true).and_then(|g| match g {
                            IpAddr::V6(g) => Some(g),
                            IpAddr::V4(_) => None,
                        }),
                        up: l.up && p.up,
                        hairpin: l.hairpin,
                    }
                }
                (ns, _) => Endpoint {
                    container: container.clone(),
                    network,
                    netns: ns.unwrap_or_else(|| NsRef::Named(container.clone())),
                    ifname: String::new(),
                    host_veth: name.clone(),
                    bridge: l.master.clone(),
                    addrs: BTreeSet::new(),
                    mac: String::new(),
                    mtu: l.mtu,
                    gateway: None,
                    gateway6: None,
                    up: false,
                    hairpin: false,
                },
            };
            st.endpoints_mut()
                .insert(format!("{container}.{ifname}"), ep);
        }
        // Every sysctl and file in the fake is one netloom set or wrote
        // (the state record's keys and paths, for `observe`).
        st.sysctls = self.sysctls.clone();
        st.firewall = self.firewall.clone();
        st.files = self.files.clone().into();
        st
    }
}

impl Runner for FakeKernel {
    async fn run(&mut self, op: &Op, _owned: &mut Owned) -> Result<()> {
        self.ops_run += 1;
        self.apply_op(op)
    }
    fn nft(&mut self, _tx: &Transaction) -> Result<()> {
        self.nft_calls += 1;
        self.firewall = self.nft_target.clone();
        Ok(())
    }
    fn counters(&self) -> Counters {
        Counters::default()
    }
}
