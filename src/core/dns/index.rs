//! Lookup tables built from the zones, once per reconcile.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::name::{normalize, valid_target};
use super::{Client, Zone};

/// Why zones cannot be served together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    /// Two zones would listen on the same address.
    #[error("two networks use the gateway {0}")]
    DuplicateGateway(IpAddr),
}

/// The lookup tables of one zone.
#[derive(Debug)]
pub(super) struct Net {
    pub(super) network: String,
    pub(super) subnet: Ipv4Network,
    pub(super) subnet6: Option<Ipv6Network>,
    /// Lookup-form name (`web`, `web.green`) -> indexes into `addrs`.
    pub(super) names: HashMap<Box<str>, Box<[u32]>>,
    /// Addresses of each member, in the zone's order.
    pub(super) addrs: Vec<(Ipv4Addr, Option<Ipv6Addr>)>,
    /// Absolute PTR targets (`web.`) by address: the member's own name
    /// first, then its aliases, then other members sharing the address.
    pub(super) ptr4: HashMap<Ipv4Addr, Vec<Box<str>>>,
    pub(super) ptr6: HashMap<Ipv6Addr, Vec<Box<str>>>,
}

/// All zones of the host, ready to answer.
#[derive(Debug, Default)]
pub struct Index {
    pub(super) nets: Vec<Net>,
    /// Listener address (IPv4 gateway, and IPv6 gateway on dual-stack
    /// networks) -> its network in `nets`.
    by_gateway: HashMap<IpAddr, u32>,
    /// A member's address (any network) -> its container's entry in
    /// `containers`: how the asker of a query is recognised.
    sources: HashMap<IpAddr, u32>,
    /// Per container: the indexes in `nets` of its DNS-enabled networks.
    containers: Vec<Box<[u32]>>,
    /// Per container (same index as `containers`): its own names and
    /// servers, for containers that have any.
    own: HashMap<u32, Own>,
    skipped: Vec<String>,
}

/// A container's own names (`extra_hosts`) and servers (`dns`).
#[derive(Debug)]
pub(super) struct Own {
    /// Lookup-form name -> addresses, in the file's order.
    pub(super) hosts: HashMap<Box<str>, Vec<IpAddr>>,
    /// Where its unknown names are forwarded; empty: the host's upstreams.
    pub(super) servers: Arc<[SocketAddr]>,
}

/// What one asker may see: the networks whose members it resolves, the
/// listener's own network first.
#[derive(Clone, Copy, Debug)]
pub struct View<'i> {
    pub(super) first: u32,
    /// The asker's networks (may include `first`, skipped when iterating).
    others: &'i [u32],
    /// The asker's own names and servers.
    pub(super) own: Option<&'i Own>,
}

impl View<'_> {
    /// Indexes of the networks in the view, `first` first, no repeats.
    pub(super) fn nets(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.first)
            .chain(self.others.iter().copied().filter(|n| *n != self.first))
            .map(|n| n as usize)
    }
}

impl Index {
    /// Builds the tables of `zones`. Names that cannot be PTR targets are
    /// left out of the PTR tables and listed by [`Index::skipped`].
    pub fn build(zones: &[Zone]) -> Result<Index, IndexError> {
        Index::build_with(zones, &[])
    }

    /// [`Index::build`], with the own names and servers of `clients`
    /// (containers not on any of the zones are ignored: nobody asks for
    /// them).
    pub fn build_with(zones: &[Zone], clients: &[Client]) -> Result<Index, IndexError> {
        let mut index = Index::default();
        let mut container_ids: HashMap<&str, u32> = HashMap::new();
        let mut container_nets: Vec<Vec<u32>> = Vec::new();
        for (n, zone) in zones.iter().enumerate() {
            let n = n as u32;
            let gateways =
                std::iter::once(IpAddr::V4(zone.gateway)).chain(zone.gateway6.map(IpAddr::V6));
            for gateway in gateways {
                if index.by_gateway.insert(gateway, n).is_some() {
                    return Err(IndexError::DuplicateGateway(gateway));
                }
            }
            let net = index.net(zone);
            index.nets.push(net);
            for m in &zone.members {
                let next = container_ids.len() as u32;
                let id = *container_ids.entry(m.name.as_str()).or_insert(next);
                if id == next {
                    container_nets.push(Vec::new());
                }
                let nets = &mut container_nets[id as usize];
                if !nets.contains(&n) {
                    nets.push(n);
                }
                index.sources.insert(IpAddr::V4(m.ipv4), id);
                if let Some(v6) = m.ipv6 {
                    index.sources.insert(IpAddr::V6(v6), id);
                }
            }
        }
        index.containers = container_nets
            .into_iter()
            .map(Vec::into_boxed_slice)
            .collect();
        for c in clients {
            let Some(id) = container_ids.get(c.name.as_str()) else {
                continue;
            };
            let mut hosts: HashMap<Box<str>, Vec<IpAddr>> = HashMap::new();
            for (name, ip) in &c.hosts {
                let list = hosts.entry(normalize(name).into_boxed_str()).or_default();
                if !list.contains(ip) {
                    list.push(*ip);
                }
            }
            if hosts.is_empty() && c.servers.is_empty() {
                continue;
            }
            let servers = c.servers.iter().copied().collect();
            index.own.insert(*id, Own { hosts, servers });
        }
        Ok(index)
    }

    fn net(&mut self, zone: &Zone) -> Net {
        let network = normalize(&zone.network);
        let mut names: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut ptr4: HashMap<Ipv4Addr, Vec<Box<str>>> = HashMap::new();
        let mut ptr6: HashMap<Ipv6Addr, Vec<Box<str>>> = HashMap::new();
        let mut addrs = Vec::with_capacity(zone.members.len());
        for (idx, member) in zone.members.iter().enumerate() {
            let idx = idx as u32;
            addrs.push((member.ipv4, member.ipv6));
            let mut targets: Vec<Box<str>> = Vec::new();
            for label in std::iter::once(&member.name).chain(&member.aliases) {
                let key = normalize(label);
                if key.is_empty() {
                    continue;
                }
                let qualified = (!network.is_empty()).then(|| format!("{key}.{network}"));
                for k in std::iter::once(key).chain(qualified) {
                    let entry = names.entry(k.into_boxed_str()).or_default();
                    if !entry.contains(&idx) {
                        entry.push(idx);
                    }
                }
                // The PTR target keeps the name as configured (case
                // included) but is made absolute so resolvers do not
                // append a search domain to it.
                if !valid_target(label) {
                    self.skipped.push(label.clone());
                    continue;
                }
                let target: Box<str> = format!("{}.", label.trim_end_matches('.')).into();
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            extend_unique(ptr4.entry(member.ipv4).or_default(), &targets);
            if let Some(v6) = member.ipv6 {
                extend_unique(ptr6.entry(v6).or_default(), &targets);
            }
        }
        Net {
            network: zone.network.clone(),
            subnet: zone.subnet,
            subnet6: zone.subnet6,
            names: names
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
            addrs,
            ptr4,
            ptr6,
        }
    }

    /// What `src` may see when it asks the listener on `gateway`; `None`
    /// when no zone listens there or `src` is outside its subnet (`subnet`
    /// for IPv4 sources, `subnet6` for IPv6 ones). Such packets are dropped
    /// without a reply: answering would make the gateway a reflector, and
    /// legitimate clients never come from outside. An IPv4-mapped IPv6
    /// source counts as its IPv4 address.
    pub fn view(&self, gateway: IpAddr, src: IpAddr) -> Option<View<'_>> {
        let first = *self.by_gateway.get(&gateway)?;
        let src = match src {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(src, IpAddr::V4),
            v4 => v4,
        };
        let net = &self.nets[first as usize];
        let inside = match src {
            IpAddr::V4(v4) => net.subnet.contains(v4),
            IpAddr::V6(v6) => net.subnet6.is_some_and(|s| s.contains(v6)),
        };
        if !inside {
            return None;
        }
        let id = self.sources.get(&src);
        let others = id.map_or(&[][..], |id| &self.containers[*id as usize]);
        let own = id.and_then(|id| self.own.get(id));
        Some(View { first, others, own })
    }

    /// The asker's own upstream servers (`dns`), when it has any: its
    /// unknown names go there instead of to the host's upstreams.
    pub fn servers(&self, view: &View<'_>) -> Option<Arc<[SocketAddr]>> {
        view.own
            .filter(|o| !o.servers.is_empty())
            .map(|o| o.servers.clone())
    }

    /// Whether a zone listens on `gateway`.
    pub fn serves(&self, gateway: IpAddr) -> bool {
        self.by_gateway.contains_key(&gateway)
    }

    /// The listeners: each gateway address (IPv4, and IPv6 where the
    /// network has it) and its network's name.
    pub fn listeners(&self) -> impl Iterator<Item = (IpAddr, &str)> {
        self.by_gateway
            .iter()
            .map(|(gw, n)| (*gw, self.nets[*n as usize].network.as_str()))
    }

    /// Configured names left out of the PTR tables (not valid DNS names).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

/// Appends the names of `more` not yet in `list`, keeping order.
fn extend_unique(list: &mut Vec<Box<str>>, more: &[Box<str>]) {
    for name in more {
        if !list.contains(name) {
            list.push(name.clone());
        }
    }
}
