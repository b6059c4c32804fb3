//! What a valid file must still never do to this host, checked against
//! the live host before anything is planned: configure the namespace
//! netloom itself runs in, put two containers in one namespace, or take
//! an address the host already has. Each is a refusal (nothing changed,
//! the object named). Softer findings are warnings printed with the plan:
//! a subnet that overlaps a route of the host, a `host_ip` the host does
//! not have.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ipnetwork::IpNetwork;

use crate::core::model::{NsRef, State};
use crate::host::netlink::Route;
use crate::host::observe::NsView;

/// The namespace file of the calling thread (netloom's own namespace):
/// `/proc/thread-self` where the kernel has it, else `/proc/self`. Never
/// `/proc/1`, which inside a container or a test sandbox is another
/// namespace than netloom's.
fn own_netns() -> Option<(u64, u64)> {
    ["/proc/thread-self/ns/net", "/proc/self/ns/net"]
        .iter()
        .find_map(|p| ns_id(Path::new(p)))
}

/// Device and inode of a namespace file: equal for the same namespace.
fn ns_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Refusals: each names the object and what to change. `known` holds
/// namespaces' identities the caller took a moment ago (the agent checks
/// each watched namespace's before it plans: at 1,000 containers a
/// thousand stat calls need not be made twice); the others are taken
/// here.
pub fn refusals(
    desired: &State,
    host: &NsView,
    known: Option<&HashMap<NsRef, (u64, u64)>>,
) -> Vec<String> {
    let mut out = Vec::new();
    let own = own_netns();
    // Namespace identity -> first container that uses it.
    let mut seen: HashMap<(u64, u64), &str> = HashMap::new();
    for (c, ns) in desired.namespaces.iter() {
        let id = known
            .and_then(|k| k.get(&ns.netns).copied())
            .or_else(|| ns_id(&ns.netns.path()));
        let Some(id) = id else {
            // Not there yet (a named namespace netloom will create) or
            // missing (reported as a vanished namespace elsewhere).
            continue;
        };
        if Some(id) == own {
            out.push(format!(
                "container `{c}`: {} is the network namespace netloom runs in (the host's own); netloom never configures it. Point netns_path at the container's namespace",
                describe(&ns.netns)
            ));
            continue;
        }
        if let Some(other) = seen.insert(id, c.as_str()) {
            out.push(format!(
                "container `{c}`: {} is the network namespace of container `{other}`; each container needs a namespace of its own (use network_mode = \"container:{other}\" to share it)",
                describe(&ns.netns)
            ));
        }
    }
    // Addresses the host already has, except on netloom's own bridge for
    // the same network (which holds the gateway once applied).
    let name_of: HashMap<u32, &str> = host
        .links
        .iter()
        .map(|l| (l.index, l.name.as_str()))
        .collect();
    // The interfaces holding each address, in the host's order, built
    // once: each of a thousand endpoints' addresses looked up in a list of
    // the host's thousands of addresses is quadratic.
    let mut holders: HashMap<IpAddr, Vec<&str>> = HashMap::new();
    for a in &host.addrs {
        let ifname = name_of.get(&a.index).copied().unwrap_or("?");
        holders.entry(a.ip).or_default().push(ifname);
    }
    let host_addr = |ip: IpAddr, except: Option<&str>| -> Option<String> {
        holders
            .get(&ip)?
            .iter()
            .find(|ifname| Some(**ifname) != except)
            .map(|ifname| ifname.to_string())
    };
    for (net, b) in &desired.bridges {
        for addr in &b.addrs {
            let Some(ip) = addr_ip(addr) else { continue };
            if let Some(ifname) = host_addr(ip, Some(b.name.as_str())) {
                out.push(format!(
                    "network `{net}`: gateway {ip} is already an address of the host (interface {ifname}); choose a subnet or gateway the host does not use"
                ));
            }
        }
    }
    for (key, e) in desired.endpoints.iter() {
        for addr in &e.addrs {
            let Some(ip) = addr_ip(addr) else { continue };
            if let Some(ifname) = host_addr(ip, None) {
                out.push(format!(
                    "container.{key}: address {ip} is already an address of the host (interface {ifname}); give the container another address"
                ));
            }
        }
    }
    out
}

fn describe(ns: &NsRef) -> String {
    match ns {
        NsRef::Named(n) => format!("netns `{n}`"),
        NsRef::Path(p) => format!("netns_path {}", p.display()),
    }
}

fn addr_ip(addr: &str) -> Option<IpAddr> {
    addr.split('/').next()?.parse().ok()
}

/// Warnings: subnets overlapping a route of the host that is not
/// netloom's, `host_ip`s the host does not have.
pub fn warnings(desired: &State, host: &NsView, routes: &[Route]) -> Vec<String> {
    let mut out = Vec::new();
    let name_of: HashMap<u32, &str> = host
        .links
        .iter()
        .map(|l| (l.index, l.name.as_str()))
        .collect();
    for (net, b) in &desired.bridges {
        for addr in &b.addrs {
            let Ok(subnet) = addr.parse::<IpNetwork>() else {
                continue;
            };
            let Ok(subnet) = IpNetwork::new(subnet.network(), subnet.prefix()) else {
                continue;
            };
            for r in routes {
                // The default route overlaps everything; a route by the
                // network's own bridge is netloom's.
                if r.prefix == 0 {
                    continue;
                }
                let dev = r.oif.and_then(|i| name_of.get(&i).copied());
                if dev == Some(b.name.as_str()) {
                    continue;
                }
                let Ok(dst) = IpNetwork::new(r.dst, r.prefix) else {
                    continue;
                };
                if overlaps(subnet, dst) {
                    let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                    out.push(format!(
                        "network `{net}`: subnet {subnet} overlaps the host's route to {dst}{via} dev {}: the host will send some of these addresses the wrong way",
                        dev.unwrap_or("?")
                    ));
                }
            }
        }
    }
    if let Some(fw) = &desired.firewall {
        for (key, p) in fw.fw.ports.iter() {
            let Some(ip) = p.host_ip else { continue };
            if ip.is_unspecified() || ip.is_loopback() {
                continue;
            }
            if !host.addrs.iter().any(|a| a.ip == ip) {
                out.push(format!(
                    "port.{key}: host_ip {ip} is not an address of this host; the port is published but unreachable until the host has it"
                ));
            }
        }
    }
    out
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(x), IpNetwork::V4(y)) => x.overlaps(y),
        (IpNetwork::V6(x), IpNetwork::V6(y)) => x.overlaps(y),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Namespace;

    /// Two containers in named namespaces that do not exist here.
    fn two_containers() -> State {
        let mut st = State::default();
        for c in ["a", "b"] {
            let netns = NsRef::Named(format!("netloom-test-absent-{c}"));
            st.namespaces_mut()
                .insert(c.into(), Namespace { netns, lo_up: true });
        }
        st
    }

    #[test]
    fn identities_the_caller_took_are_judged_as_those_taken_here() {
        let st = two_containers();
        let host = NsView::default();
        // Absent, and nothing known of them: nothing to judge.
        assert!(refusals(&st, &host, None).is_empty());
        // One identity for both, as the caller took it: one namespace
        // for two containers.
        let known: HashMap<NsRef, (u64, u64)> = st
            .namespaces
            .values()
            .map(|n| (n.netns.clone(), (1, 2)))
            .collect();
        let out = refusals(&st, &host, Some(&known));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].starts_with("container `b`") && out[0].contains("container `a`"));
        // The namespace netloom runs in, as the caller took it.
        let own = own_netns().expect("own namespace");
        let known: HashMap<NsRef, (u64, u64)> =
            [(NsRef::Named("netloom-test-absent-a".into()), own)].into();
        let out = refusals(&st, &host, Some(&known));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].contains("the host's own"), "{out:?}");
    }
}
