//! Address and host-port allocation.
//!
//! Fixed addresses come from the file; every other endpoint gets the lowest
//! free host address of its subnet (never network, gateway or broadcast).
//! What was given once is kept: the previous [`Allocations`] (persisted in
//! the state dir by `host::state`) win over "lowest free", so addresses stay
//! stable across applies, restarts and reordering of the file. New
//! allocations are made in file order, so a fresh host numbers containers
//! the way `docker run` in that order would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::core::ports;
use crate::core::spec::{NetworkSpec, Spec};

/// What IPAM handed out; keyed by network then container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    /// Network -> container -> IPv4 address, fixed or allocated.
    #[serde(default)]
    pub ipv4: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
    /// Network -> container -> IPv6 address, for dual-stack networks only.
    #[serde(default)]
    pub ipv6: BTreeMap<String, BTreeMap<String, Ipv6Addr>>,
    /// Auto-published host ports: `container/spec` -> first host port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

/// Why allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the subnet is taken.
    #[error("network `{network}` ({subnet}) has no free address left for container `{container}`")]
    SubnetFull {
        /// The full network.
        network: String,
        /// Its subnet (IPv4 or IPv6).
        subnet: String,
        /// The first container left without an address.
        container: String,
    },
    /// No run of free host ports in `settings.port_range` is long enough
    /// for an auto-published mapping.
    #[error("no free host port range of {len} in port_range {first}-{last} for `{key}`")]
    PortsExhausted {
        /// The mapping's key, `container/raw`.
        key: String,
        /// Consecutive host ports it needs.
        len: u16,
        /// First port of `port_range`.
        first: u16,
        /// Last port of `port_range`.
        last: u16,
    },
}

/// Key of an auto-published port in [`Allocations::ports`].
pub fn port_key(container: &str, raw: &str) -> String {
    ports::port_key(container, raw)
}

/// Computes the allocations for `spec`, keeping what `prev` gave where it is
/// still valid and releasing what belongs to containers no longer declared.
pub fn allocate(spec: &Spec, prev: &Allocations) -> Result<Allocations, IpamError> {
    let mut out = Allocations::default();
    // Each network's members in file order, in one pass over the file
    // (not one pass per network).
    type Member<'a> = (&'a str, Option<Ipv4Addr>, Option<Ipv6Addr>);
    let mut by_network: HashMap<&str, Vec<Member>> = HashMap::new();
    for c in &spec.containers {
        for e in &c.endpoints {
            by_network
                .entry(e.network.as_str())
                .or_default()
                .push((c.name.as_str(), e.ip, e.ip6));
        }
    }
    for net in spec.networks.values() {
        let Some(members) = by_network.get(net.name.as_str()) else {
            continue;
        };
        out.ipv4
            .insert(net.name.clone(), allocate_v4(net, members, prev)?);
        if net.subnet6.is_some() {
            out.ipv6
                .insert(net.name.clone(), allocate_v6(net, members, prev)?);
        }
    }
    out.ports = allocate_ports(spec, prev)?;
    Ok(out)
}

fn allocate_v4(
    net: &NetworkSpec,
    members: &[(&str, Option<Ipv4Addr>, Option<Ipv6Addr>)],
    prev: &Allocations,
) -> Result<BTreeMap<String, Ipv4Addr>, IpamError> {
    let wanted: Vec<(&str, Option<Ipv4Addr>)> =
        members.iter().map(|(c, ip, _)| (*c, *ip)).collect();
    let usable = |ip: Ipv4Addr| {
        net.subnet.contains(ip)
            && ip != net.gateway
            && ip != net.subnet.network()
            && ip != net.subnet.broadcast()
    };
    let hosts = (u32::from(net.subnet.network()) + 1..u32::from(net.subnet.broadcast()))
        .map(Ipv4Addr::from);
    assign(&wanted, prev.ipv4.get(&net.name), usable, hosts).map_err(|c| IpamError::SubnetFull {
        network: net.name.clone(),
        subnet: net.subnet.to_string(),
        container: c.to_string(),
    })
}

fn allocate_v6(
    net: &NetworkSpec,
    members: &[(&str, Option<Ipv4Addr>, Option<Ipv6Addr>)],
    prev: &Allocations,
) -> Result<BTreeMap<String, Ipv6Addr>, IpamError> {
    let Some(sub) = net.subnet6 else {
        return Ok(BTreeMap::new());
    };
    let wanted: Vec<(&str, Option<Ipv6Addr>)> =
        members.iter().map(|(c, _, ip6)| (*c, *ip6)).collect();
    let usable = |ip: Ipv6Addr| sub.contains(ip) && Some(ip) != net.gateway6 && ip != sub.network();
    let hosts = (u128::from(sub.network()) + 1..=u128::from(sub.broadcast())).map(Ipv6Addr::from);
    assign(&wanted, prev.ipv6.get(&net.name), usable, hosts).map_err(|c| IpamError::SubnetFull {
        network: net.name.clone(),
        subnet: sub.to_string(),
        container: c.to_string(),
    })
}

/// One subnet's allocation, for either family: fixed addresses first, then
/// what `prev` gave (if still usable and free), then the lowest free
/// candidates in member order. Fails with the first member left without.
fn assign<'a, A: Copy + Ord>(
    members: &[(&'a str, Option<A>)],
    prev: Option<&BTreeMap<String, A>>,
    usable: impl Fn(A) -> bool,
    mut candidates: impl Iterator<Item = A>,
) -> Result<BTreeMap<String, A>, &'a str> {
    let mut taken: BTreeSet<A> = members.iter().filter_map(|(_, ip)| *ip).collect();
    let mut got: BTreeMap<String, A> = members
        .iter()
        .filter_map(|(c, ip)| ip.map(|ip| (c.to_string(), ip)))
        .collect();
    for (c, ip) in members {
        if ip.is_some() {
            continue;
        }
        if let Some(&p) = prev.and_then(|o| o.get(*c)) {
            if usable(p) && taken.insert(p) {
                got.insert(c.to_string(), p);
            }
        }
    }
    for (c, _) in members {
        if got.contains_key(*c) {
            continue;
        }
        let ip = candidates
            .by_ref()
            .find(|ip| usable(*ip) && !taken.contains(ip))
            .ok_or(*c)?;
        taken.insert(ip);
        got.insert(c.to_string(), ip);
    }
    Ok(got)
}

/// Host ports for mappings without HOST_PORT, from `port_range`, avoiding
/// every explicitly published port (of any protocol, to keep it simple to
/// read) and ranges given before.
fn allocate_ports(spec: &Spec, prev: &Allocations) -> Result<BTreeMap<String, u16>, IpamError> {
    let (first, last) = spec.port_range;
    let (busy, wanted) = crate::core::spec::auto_port_inputs(spec);
    ports::allocate_auto(spec.port_range, busy, &wanted, &prev.ports).map_err(|e| {
        IpamError::PortsExhausted {
            key: e.key,
            len: e.len,
            first,
            last,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::spec::load;

    fn spec(t: &str) -> Spec {
        load("t.toml", t).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn lowest_free_in_file_order_and_stable() {
        let s = spec(
            "[containers.web]\n[containers.a]\n[containers.b]\nnetworks = { bridge = { ip = \"172.17.0.3\" } }\n",
        );
        let a = allocate(&s, &Allocations::default()).unwrap();
        let br = &a.ipv4["bridge"];
        assert_eq!(br["web"], Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(br["b"], Ipv4Addr::new(172, 17, 0, 3));
        assert_eq!(br["a"], Ipv4Addr::new(172, 17, 0, 4));
        // Reordered file: same addresses.
        let s2 = spec(
            "[containers.a]\n[containers.b]\nnetworks = { bridge = { ip = \"172.17.0.3\" } }\n[containers.web]\n",
        );
        assert_eq!(allocate(&s2, &a).unwrap(), a);
        // Removed container's address is released and reused.
        let s3 = spec("[containers.a]\n[containers.c]\n");
        let c = allocate(&s3, &a).unwrap();
        assert_eq!(c.ipv4["bridge"]["a"], Ipv4Addr::new(172, 17, 0, 4));
        assert_eq!(c.ipv4["bridge"]["c"], Ipv4Addr::new(172, 17, 0, 2));
        assert!(!c.ipv4["bridge"].contains_key("web"));
    }

    #[test]
    fn subnet_full() {
        // Validation refuses a /30 for two members; the allocator must fail
        // on its own too (a spec built in code is not validated).
        let mut s = spec(
            "[networks.n]\nsubnet = \"10.9.0.0/29\"\n[containers.a]\nnetworks = [\"n\"]\n[containers.b]\nnetworks = [\"n\"]\n",
        );
        if let Some(n) = s.networks.get_mut("n") {
            n.subnet = "10.9.0.0/30".parse().unwrap();
        }
        assert!(matches!(
            allocate(&s, &Allocations::default()),
            Err(IpamError::SubnetFull { .. })
        ));
    }

    #[test]
    fn auto_ports_avoid_fixed_and_persist() {
        let s = spec(
            "[settings]\nport_range = \"5000-5010\"\n[containers.a]\nports = [\"5000:80\", \"8080\"]\n[containers.b]\nports = [\"90-91\"]\n",
        );
        let a = allocate(&s, &Allocations::default()).unwrap();
        assert_eq!(a.ports["a/8080"], 5001);
        assert_eq!(a.ports["b/90-91"], 5002);
        let s2 = spec(
            "[settings]\nport_range = \"5000-5010\"\n[containers.b]\nports = [\"90-91\"]\n[containers.a]\nports = [\"5000:80\", \"8080\"]\n",
        );
        assert_eq!(allocate(&s2, &a).unwrap().ports, a.ports);
    }
}
