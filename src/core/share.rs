//! Cluster mode, the functions of the cluster allocation and of one host's
//! share, kept apart from [`crate::core::cluster`] (the keys and
//! their checks, which the validator uses) so that imports point one way.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::cluster::{
    FIRST_AUTO_VNI, MAX_VNI, RemoteMember, Share, VXLAN_OVERHEAD, VxlanShare,
};
use crate::core::ipam::{self, Allocations};
use crate::core::model::docker_mac;
use crate::core::spec::{ContainerSpec, Spec};

/// What `push` allocates cluster-wide and keeps in etcd: VNIs and the
/// addresses of cluster networks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAllocations {
    /// Network -> VNI.
    #[serde(default)]
    pub vni: BTreeMap<String, u32>,
    /// Addresses of members of cluster networks (no ports: those are local).
    #[serde(default)]
    pub addrs: Allocations,
}

/// Why a host's share cannot be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareError {
    /// The host asked for is not a key of `[hosts]`.
    #[error("host `{0}` is not declared in [hosts]")]
    UnknownHost(String),
    /// A container placed on a cluster network has no address in the
    /// stored allocation: the file changed since the last `push`.
    #[error(
        "the cluster allocation has no address for container `{container}` on network `{network}`; run `netloom push`"
    )]
    Unallocated {
        /// The container's name.
        container: String,
        /// The cluster network it joins.
        network: String,
    },
    /// A cluster network has no VNI in the stored allocation (not pushed
    /// since it was added).
    #[error("the cluster allocation has no VNI for network `{0}`; run `netloom push`")]
    NoVni(String),
}

/// Computes the allocations of the cluster: VNIs (fixed ones from the
/// file, then what `prev` gave, then the lowest free from
/// [`FIRST_AUTO_VNI`]) and the addresses of cluster networks (through the
/// single-host IPAM, so the same rules and the same stability hold).
pub fn allocate(spec: &Spec, prev: &ClusterAllocations) -> Result<ClusterAllocations, String> {
    let Some(cl) = &spec.cluster else {
        return Ok(ClusterAllocations::default());
    };
    let mut out = ClusterAllocations::default();
    let mut taken: BTreeSet<u32> = cl.networks.values().filter_map(|n| n.vni).collect();
    for (name, n) in &cl.networks {
        if let Some(v) = n.vni {
            out.vni.insert(name.clone(), v);
        } else if let Some(&v) = prev.vni.get(name) {
            if taken.insert(v) {
                out.vni.insert(name.clone(), v);
            }
        }
    }
    for name in cl.networks.keys() {
        if out.vni.contains_key(name) {
            continue;
        }
        let v = (FIRST_AUTO_VNI..=MAX_VNI)
            .find(|v| !taken.contains(v))
            .ok_or_else(|| "no free VNI left".to_string())?;
        taken.insert(v);
        out.vni.insert(name.clone(), v);
    }
    // Only cluster networks, and no ports: those are each host's own.
    let mut only = spec.clone();
    only.networks.retain(|n, _| cl.networks.contains_key(n));
    for c in &mut only.containers {
        c.ports.clear();
    }
    out.addrs = ipam::allocate(&only, &prev.addrs).map_err(|e| e.to_string())?;
    out.addrs.ports.clear();
    Ok(out)
}

/// The share of `host`: the spec it reconciles (its containers, the
/// networks they use, addresses of cluster networks fixed from `alloc`,
/// cluster MTUs defaulting to `underlay_mtu` - [`VXLAN_OVERHEAD`]) with the
/// rest of the cluster in `cluster.share`.
pub fn share(
    spec: &Spec,
    host: &str,
    alloc: &ClusterAllocations,
    underlay_mtu: u32,
) -> Result<Spec, ShareError> {
    let Some(cl) = &spec.cluster else {
        return Ok(spec.clone());
    };
    let address = *cl
        .hosts
        .get(host)
        .ok_or_else(|| ShareError::UnknownHost(host.to_string()))?;
    let on = |c: &ContainerSpec| cl.placement.get(&c.name).map(String::as_str) == Some(host);
    let mut out = spec.clone();
    out.containers.retain(|c| on(c));
    let addr4 = |net: &str, c: &str| alloc.addrs.ipv4.get(net).and_then(|m| m.get(c)).copied();
    let addr6 = |net: &str, c: &str| alloc.addrs.ipv6.get(net).and_then(|m| m.get(c)).copied();
    for c in &mut out.containers {
        for e in &mut c.endpoints {
            if !cl.networks.contains_key(&e.network) {
                continue;
            }
            let ip = addr4(&e.network, &c.name).ok_or_else(|| ShareError::Unallocated {
                container: c.name.clone(),
                network: e.network.clone(),
            })?;
            e.ip = Some(ip);
            if spec
                .networks
                .get(&e.network)
                .is_some_and(|n| n.subnet6.is_some())
            {
                e.ip6 = addr6(&e.network, &c.name);
            }
        }
    }
    let used: BTreeSet<String> = out
        .containers
        .iter()
        .flat_map(|c| c.endpoints.iter().map(|e| e.network.clone()))
        .collect();
    out.networks.retain(|n, _| used.contains(n));
    let mut vxlans = BTreeMap::new();
    for (name, net) in out.networks.iter_mut() {
        let Some(cn) = cl.networks.get(name) else {
            continue;
        };
        if !cn.mtu_set {
            net.mtu = underlay_mtu.saturating_sub(VXLAN_OVERHEAD).max(68);
        }
        let vni = *alloc
            .vni
            .get(name)
            .ok_or_else(|| ShareError::NoVni(name.clone()))?;
        let mut remote = Vec::new();
        let mut peers = BTreeSet::new();
        for c in &spec.containers {
            let Some(h) = cl.placement.get(&c.name) else {
                continue;
            };
            if h == host {
                continue;
            }
            let Some(e) = c.endpoints.iter().find(|e| &e.network == name) else {
                continue;
            };
            let Some(&underlay) = cl.hosts.get(h) else {
                continue;
            };
            let ipv4 = addr4(name, &c.name).ok_or_else(|| ShareError::Unallocated {
                container: c.name.clone(),
                network: name.clone(),
            })?;
            peers.insert(underlay);
            remote.push(RemoteMember {
                name: c.name.clone(),
                host: h.clone(),
                underlay,
                ipv4,
                ipv6: addr6(name, &c.name),
                mac: e.mac.unwrap_or_else(|| docker_mac(ipv4)),
                aliases: e.aliases.clone(),
            });
        }
        vxlans.insert(name.clone(), VxlanShare { vni, peers, remote });
    }
    if let Some(c) = &mut out.cluster {
        c.share = Some(Share {
            host: host.to_string(),
            address,
            vxlans,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cluster::DEFAULT_PREFIX;
    use crate::core::spec::load;
    use std::net::Ipv4Addr;

    const BASE: &str = r#"
[hosts.a]
address = "10.0.0.11"
[hosts.b]
address = "10.0.0.12"
[hosts.c]
address = "10.0.0.13"
[networks.app]
subnet = "10.200.0.0/24"
scope = "cluster"
[networks.loc]
subnet = "10.201.0.0/24"
[containers.web]
host = "a"
networks = { app = { aliases = ["www"] } }
[containers.api]
host = "b"
networks = ["app", "loc"]
[containers.db]
host = "b"
networks = ["loc"]
"#;

    fn errors(text: &str) -> Vec<String> {
        match load("f.toml", text) {
            Ok(_) => Vec::new(),
            Err(d) => d.lines,
        }
    }

    #[track_caller]
    fn assert_err(text: &str, line_col: &str, needle: &str) {
        let errs = errors(text);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("f.toml:{line_col}: ")) && e.contains(needle)),
            "expected {needle:?} at {line_col}, got {errs:#?}"
        );
    }

    #[test]
    fn a_valid_cluster_file_gives_hosts_networks_and_placement() {
        let spec = load("f.toml", BASE).unwrap();
        let cl = spec.cluster.unwrap();
        assert_eq!(cl.prefix, DEFAULT_PREFIX);
        assert_eq!(cl.hosts["b"], Ipv4Addr::new(10, 0, 0, 12));
        assert!(cl.networks.contains_key("app") && !cl.networks.contains_key("loc"));
        assert_eq!(cl.placement["db"], "b");
    }

    #[test]
    fn a_single_host_file_has_no_cluster() {
        let spec = load("f.toml", "[containers.x]\n").unwrap();
        assert!(spec.cluster.is_none());
    }

    #[test]
    fn unknown_host_is_an_error_at_its_value() {
        let t = BASE.replace(
            "host = \"b\"\nnetworks = [\"loc\"]",
            "host = \"bb\"\nnetworks = [\"loc\"]",
        );
        assert_err(&t, "20:8", "unknown host `bb`; did you mean `b`?");
    }

    #[test]
    fn host_is_required_once_hosts_exist() {
        let t = format!("{BASE}[containers.lost]\nnetworks = [\"app\"]\n");
        assert_err(&t, "22:13", "needs host");
    }

    #[test]
    fn local_network_on_two_hosts_is_an_error() {
        let t = format!("{BASE}[containers.other]\nhost = \"c\"\nnetworks = [\"loc\"]\n");
        assert_err(&t, "23:8", "network `loc` is local");
    }

    #[test]
    fn cluster_network_without_hosts_is_an_error() {
        let t = "[networks.app]\nsubnet = \"10.200.0.0/24\"\nscope = \"cluster\"\n";
        assert_err(t, "3:9", "declares no [hosts.NAME]");
    }

    #[test]
    fn vni_clash_and_range_are_errors() {
        let t = BASE.replace("scope = \"cluster\"", "scope = \"cluster\"\nvni = 7")
            + "[networks.two]\nsubnet = \"10.202.0.0/24\"\nscope = \"cluster\"\nvni = 7\n[networks.big]\nsubnet = \"10.203.0.0/24\"\nscope = \"cluster\"\nvni = 16777216\n";
        assert_err(
            &t,
            "26:7",
            "vni 7 of network `two` is already network `app`'s",
        );
        assert_err(&t, "30:7", "out of range");
    }

    #[test]
    fn overlapping_subnets_across_scopes_are_errors() {
        let t = BASE.replace("subnet = \"10.201.0.0/24\"", "subnet = \"10.200.0.128/25\"");
        assert_err(
            &t,
            "12:10",
            "overlaps subnet 10.200.0.0/24 of network `app`",
        );
    }

    #[test]
    fn ports_are_per_host() {
        let t = BASE.replace("networks = { app", "ports = [\"80:80\"]\nnetworks = { app")
            + "[containers.other]\nhost = \"c\"\nnetworks = [\"app\"]\nports = [\"80:80\"]\n";
        assert!(errors(&t).is_empty(), "{:?}", errors(&t));
        let same = t.replace("host = \"c\"", "host = \"a\"");
        assert!(
            errors(&same)
                .iter()
                .any(|e| e.contains("already published"))
        );
    }

    #[test]
    fn allocation_is_stable_and_never_gives_one_address_twice() {
        let spec = load("f.toml", BASE).unwrap();
        let a = allocate(&spec, &ClusterAllocations::default()).unwrap();
        assert_eq!(a.vni["app"], FIRST_AUTO_VNI);
        let web = a.addrs.ipv4["app"]["web"];
        let api = a.addrs.ipv4["app"]["api"];
        assert_ne!(web, api);
        assert!(
            !a.addrs.ipv4.contains_key("loc"),
            "local networks are each host's"
        );
        // Removing web and adding two keeps api's address and reuses none twice.
        let t = BASE.replace(
            "[containers.web]\nhost = \"a\"",
            "[containers.web2]\nhost = \"a\"",
        ) + "[containers.x]\nhost = \"c\"\nnetworks = [\"app\"]\n";
        let b = allocate(&load("f.toml", &t).unwrap(), &a).unwrap();
        assert_eq!(b.addrs.ipv4["app"]["api"], api);
        let all: BTreeSet<_> = b.addrs.ipv4["app"].values().collect();
        assert_eq!(all.len(), b.addrs.ipv4["app"].len());
        assert_eq!(b.vni["app"], a.vni["app"]);
    }

    #[test]
    fn share_of_a_host_has_its_containers_and_the_remote_members() {
        let spec = load("f.toml", BASE).unwrap();
        let alloc = allocate(&spec, &ClusterAllocations::default()).unwrap();
        let s = share(&spec, "b", &alloc, 1500).unwrap();
        let names: Vec<&str> = s.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["api", "db"]);
        assert_eq!(s.networks["app"].mtu, 1450);
        assert_eq!(s.networks["loc"].mtu, 1500);
        let api = &s.containers[0];
        assert_eq!(api.endpoints[0].ip, Some(alloc.addrs.ipv4["app"]["api"]));
        let sh = s.cluster.as_ref().unwrap().share.as_ref().unwrap();
        assert_eq!(sh.address, Ipv4Addr::new(10, 0, 0, 12));
        let vx = &sh.vxlans["app"];
        assert_eq!(vx.peers, BTreeSet::from([Ipv4Addr::new(10, 0, 0, 11)]));
        assert_eq!(vx.remote.len(), 1);
        assert_eq!(vx.remote[0].name, "web");
        assert_eq!(vx.remote[0].aliases, ["www"]);
        // Host c has no member: no network, no VXLAN.
        let c = share(&spec, "c", &alloc, 1500).unwrap();
        assert!(c.networks.is_empty() && c.containers.is_empty());
        assert_eq!(
            share(&spec, "zz", &alloc, 1500).err(),
            Some(ShareError::UnknownHost("zz".into()))
        );
    }

    #[test]
    fn the_resolved_share_holds_vxlan_entries_and_remote_names() {
        let spec = load("f.toml", BASE).unwrap();
        let alloc = allocate(&spec, &ClusterAllocations::default()).unwrap();
        let s = share(&spec, "b", &alloc, 1500).unwrap();
        let d = crate::core::model::resolve(&s, &Default::default(), &Default::default()).unwrap();
        let vx = &d.state.vxlans["app"];
        assert_eq!(vx.vni, FIRST_AUTO_VNI);
        assert_eq!(vx.local, Ipv4Addr::new(10, 0, 0, 12));
        let web_ip = alloc.addrs.ipv4["app"]["web"];
        let web_mac = docker_mac(web_ip);
        assert!(vx.fdb.contains(&crate::core::model::fdb_entry(
            &[0; 6],
            Ipv4Addr::new(10, 0, 0, 11)
        )));
        assert!(vx.fdb.contains(&crate::core::model::fdb_entry(
            &web_mac,
            Ipv4Addr::new(10, 0, 0, 11)
        )));
        let hosts = &d.state.files["/etc/netns/api/hosts"];
        assert!(
            hosts.contains(&format!("{web_ip}\tweb web.app www\n")),
            "{hosts}"
        );
        let zone = d.zones.iter().find(|z| z.network == "app").unwrap();
        assert!(
            zone.members
                .iter()
                .any(|m| m.name == "web" && m.ipv4 == web_ip)
        );
        // The local network's member on the same host is there; nothing of
        // host a's local networks.
        assert!(!d.state.bridges.contains_key("bridge"));
    }
}
