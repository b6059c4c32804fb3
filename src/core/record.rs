//! The compact form of a recorded [`State`] (state record version 2).
//!
//! The state record keeps the state of the last apply to tell drift from
//! change. Most of an endpoint or namespace follows from its key, the
//! allocations kept beside it and its network's bridge (a veth's name,
//! addresses, MAC, MTU, gateways), so the record leaves out every field
//! whose value equals the one derived that way: a container on one
//! network costs a few bytes (`"c1.eth0":{}`) instead of half a kilobyte.
//! Leaving out only what equals the derived value keeps the form lossless
//! for any state, including objects held back as they were observed:
//! [`expand`] of [`compact_text`] gives the state back, with files as
//! digests (the record never keeps file contents, see
//! [`model::for_record`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::core::ipam::Allocations;
use crate::core::model::{self, Endpoint, Namespace, NsRef, State};

/// What every recorded file digest starts with, left out in the compact
/// form (every recorded file is a digest).
const DIGEST_PREFIX: &str = "netloom-digest:";

/// `st` in the record's compact form as a JSON tree, given the
/// allocations recorded with it. Files are kept as digests. The reference
/// that [`compact_text`] is tested against.
#[cfg(test)]
pub fn compact(st: &State, alloc: &Allocations) -> Result<Value, serde_json::Error> {
    let st = model::for_record(st);
    let index = NetworksOf::new(alloc);
    let mut v = serde_json::to_value(&st)?;
    let Some(obj) = v.as_object_mut() else {
        return Ok(v);
    };
    if let Some(Value::Object(nss)) = obj.get_mut("namespaces") {
        for (name, ns) in nss.iter_mut() {
            strip(ns, &derived_namespace(name))?;
        }
    }
    if let Some(Value::Object(eps)) = obj.get_mut("endpoints") {
        for (key, ep) in eps.iter_mut() {
            let Some(e) = st.endpoints.get(key) else {
                continue;
            };
            let (container, ifname) = key_parts(key);
            let mut d = derived_endpoint(&e.container, &e.network, &e.ifname, &st, alloc);
            // The fields the others are derived from, as `expand` finds
            // them when they are left out.
            d.container = container.to_string();
            d.ifname = ifname.to_string();
            d.network = index.only(&e.container).unwrap_or_default().to_string();
            strip(ep, &d)?;
        }
    }
    if let Some(Value::Object(files)) = obj.get_mut("files") {
        for f in files.values_mut() {
            if let Value::String(s) = f {
                if let Some(rest) = s.strip_prefix(DIGEST_PREFIX) {
                    *s = rest.to_string();
                }
            }
        }
    }
    Ok(v)
}

/// `st` in the record's compact form, given the allocations recorded with
/// it, as JSON text. Files are kept as digests. Written field by field,
/// without building a JSON tree first. A save compacts the whole applied
/// state, so this is most of what a save costs on a large host.
pub fn compact_text(st: &State, alloc: &Allocations) -> Result<String, serde_json::Error> {
    compact_text_with(st, &compact_parts(st, alloc)?)
}

/// The parts of [`compact_text`] that grow with the host: the namespaces,
/// the endpoints and the files, each as its JSON text. They depend on the
/// state's namespaces, endpoints, bridges (an endpoint's derivation reads
/// its bridge) and files and on the addresses of the allocations only, so
/// a state that differs from another in nothing else (a port more: only
/// its firewall, its sysctls and its allocated host ports differ) is
/// written with the other's parts.
pub struct CompactParts {
    namespaces: Box<RawValue>,
    endpoints: Box<RawValue>,
    files: Box<RawValue>,
}

/// [`CompactParts`] of `st`, against `alloc`.
pub fn compact_parts(st: &State, alloc: &Allocations) -> Result<CompactParts, serde_json::Error> {
    let index = NetworksOf::new(alloc);
    let namespaces: std::collections::BTreeMap<&str, CompactNamespace> = st
        .namespaces
        .iter()
        .map(|(name, ns)| {
            let Namespace { netns, lo_up } = ns;
            let d = derived_namespace(name);
            let c = CompactNamespace {
                netns: (*netns != d.netns).then_some(netns),
                lo_up: (*lo_up != d.lo_up).then_some(lo_up),
            };
            (name.as_str(), c)
        })
        .collect();
    let endpoints: std::collections::BTreeMap<&str, CompactEndpoint> = st
        .endpoints
        .iter()
        .map(|(key, e)| {
            let (container, ifname) = key_parts(key);
            let mut d = derived_endpoint(&e.container, &e.network, &e.ifname, st, alloc);
            // The fields the others are derived from, as `expand` finds
            // them when they are left out.
            d.container = container.to_string();
            d.ifname = ifname.to_string();
            d.network = index.only(&e.container).unwrap_or_default().to_string();
            (key.as_str(), CompactEndpoint::new(e, &d))
        })
        .collect();
    let files: std::collections::BTreeMap<&str, String> = st
        .files
        .iter()
        .map(|(path, text)| {
            let digest = match text.strip_prefix(DIGEST_PREFIX) {
                Some(rest) => rest.to_string(),
                None => {
                    let d = model::text_digest(text);
                    d.strip_prefix(DIGEST_PREFIX).unwrap_or(&d).to_string()
                }
            };
            (path.as_str(), digest)
        })
        .collect();
    Ok(CompactParts {
        namespaces: serde_json::value::to_raw_value(&namespaces)?,
        endpoints: serde_json::value::to_raw_value(&endpoints)?,
        files: serde_json::value::to_raw_value(&files)?,
    })
}

/// [`compact_text`] of `st` with `parts` ([`compact_parts`] of `st`, or of
/// a state with the same namespaces, endpoints, files and addresses).
pub fn compact_text_with(st: &State, parts: &CompactParts) -> Result<String, serde_json::Error> {
    // Every field by name: a field added to `State` must be written here.
    let State {
        sysctls,
        bridges,
        namespaces: _,
        endpoints: _,
        firewall,
        files: _,
        vxlans,
        half_made,
    } = st;
    serde_json::to_string(&CompactState {
        sysctls,
        bridges,
        namespaces: &parts.namespaces,
        endpoints: &parts.endpoints,
        firewall,
        files: &parts.files,
        vxlans,
        half_made,
    })
}

/// [`State`] as [`compact_text`] writes it: the same fields, with the
/// namespaces and endpoints stripped of what is derived and files as
/// digests without their prefix.
#[derive(Serialize)]
struct CompactState<'a> {
    sysctls: &'a std::collections::BTreeMap<String, String>,
    bridges: &'a std::collections::BTreeMap<String, model::Bridge>,
    namespaces: &'a RawValue,
    endpoints: &'a RawValue,
    firewall: &'a Option<model::FirewallState>,
    files: &'a RawValue,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    vxlans: &'a std::collections::BTreeMap<String, model::Vxlan>,
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    half_made: &'a std::collections::BTreeSet<String>,
}

/// A [`Namespace`] without the fields equal to its derivation.
#[derive(Serialize)]
struct CompactNamespace<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<&'a NsRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lo_up: Option<&'a bool>,
}

/// An [`Endpoint`] without the fields equal to its derivation.
#[derive(Serialize)]
struct CompactEndpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<&'a NsRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ifname: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_veth: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge: Option<&'a Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addrs: Option<&'a std::collections::BTreeSet<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<&'a u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<&'a Option<std::net::Ipv4Addr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway6: Option<&'a Option<std::net::Ipv6Addr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    up: Option<&'a bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hairpin: Option<&'a bool>,
}

impl<'a> CompactEndpoint<'a> {
    /// `e`'s fields that differ from `d`'s.
    fn new(e: &'a Endpoint, d: &Endpoint) -> Self {
        // Every field by name: a field added to `Endpoint` must be here.
        let Endpoint {
            container,
            network,
            netns,
            ifname,
            host_veth,
            bridge,
            addrs,
            mac,
            mtu,
            gateway,
            gateway6,
            up,
            hairpin,
        } = e;
        fn unless<'a, T: PartialEq>(v: &'a T, derived: &T) -> Option<&'a T> {
            (v != derived).then_some(v)
        }
        CompactEndpoint {
            container: unless(container, &d.container),
            network: unless(network, &d.network),
            netns: unless(netns, &d.netns),
            ifname: unless(ifname, &d.ifname),
            host_veth: unless(host_veth, &d.host_veth),
            bridge: unless(bridge, &d.bridge),
            addrs: unless(addrs, &d.addrs),
            mac: unless(mac, &d.mac),
            mtu: unless(mtu, &d.mtu),
            gateway: unless(gateway, &d.gateway),
            gateway6: unless(gateway6, &d.gateway6),
            up: unless(up, &d.up),
            hairpin: unless(hairpin, &d.hairpin),
        }
    }
}

/// The state whose compact form is `v` (see [`compact_text`]).
pub fn expand(mut v: Value, alloc: &Allocations) -> Result<State, String> {
    let index = NetworksOf::new(alloc);
    let obj = v
        .as_object_mut()
        .ok_or("the recorded state is not an object")?;
    if let Some(Value::Object(files)) = obj.get_mut("files") {
        for f in files.values_mut() {
            if let Value::String(s) = f {
                if !s.starts_with(DIGEST_PREFIX) {
                    *s = format!("{DIGEST_PREFIX}{s}");
                }
            }
        }
    }
    if let Some(Value::Object(nss)) = obj.get_mut("namespaces") {
        for (name, ns) in nss.iter_mut() {
            fill(ns, &derived_namespace(name)).map_err(|e| format!("namespace {name}: {e}"))?;
        }
    }
    // Endpoints are derived from the bridges and namespaces, which are
    // complete by now.
    let endpoints = obj.remove("endpoints");
    let mut st: State = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if let Some(Value::Object(eps)) = endpoints {
        for (key, mut ep) in eps {
            let field = |name: &str| ep.get(name).and_then(Value::as_str).map(str::to_string);
            let (kc, ki) = key_parts(&key);
            let container = field("container").unwrap_or_else(|| kc.to_string());
            let ifname = field("ifname").unwrap_or_else(|| ki.to_string());
            let network = field("network")
                .or_else(|| index.only(&container).map(str::to_string))
                .ok_or_else(|| format!("endpoint {key}: no network"))?;
            let d = derived_endpoint(&container, &network, &ifname, &st, alloc);
            fill(&mut ep, &d).map_err(|e| format!("endpoint {key}: {e}"))?;
            let e: Endpoint =
                serde_json::from_value(ep).map_err(|e| format!("endpoint {key}: {e}"))?;
            st.endpoints_mut().insert(key, e);
        }
    }
    Ok(st)
}

/// Removes from the object `v` every field equal to that of `derived`.
#[cfg(test)]
fn strip<T: Serialize>(v: &mut Value, derived: &T) -> Result<(), serde_json::Error> {
    let Value::Object(d) = serde_json::to_value(derived)? else {
        return Ok(());
    };
    if let Value::Object(o) = v {
        o.retain(|k, val| d.get(k) != Some(val));
    }
    Ok(())
}

/// Adds to the object `v` every field of `derived` it lacks.
fn fill<T: Serialize>(v: &mut Value, derived: &T) -> Result<(), String> {
    let Value::Object(d) = serde_json::to_value(derived).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let o: &mut Map<String, Value> = v.as_object_mut().ok_or("not an object")?;
    for (k, val) in d {
        o.entry(k).or_insert(val);
    }
    Ok(())
}

/// Whether [`compact_parts`] of `st` is the same against `a` as against
/// `b`. An endpoint's derivation reads only the addresses of its own
/// container (and from them on which networks it has one), so
/// addresses given to or taken from containers without an endpoint in
/// `st` make no difference: an apply that adds a container records its
/// allocations beside the applied state before it, whose text then
/// stays as it was.
pub fn same_derivation(st: &State, a: &Allocations, b: &Allocations) -> bool {
    if a.ipv4 == b.ipv4 && a.ipv6 == b.ipv6 {
        return true;
    }
    let mut moved = HashSet::new();
    containers_moved(&a.ipv4, &b.ipv4, &mut moved);
    containers_moved(&a.ipv6, &b.ipv6, &mut moved);
    !st.endpoints
        .values()
        .any(|e| moved.contains(e.container.as_str()))
}

/// Adds to `out` every container whose address on some network differs
/// between `a` and `b` (one of them without it included).
fn containers_moved<'a, V: PartialEq>(
    a: &'a BTreeMap<String, BTreeMap<String, V>>,
    b: &'a BTreeMap<String, BTreeMap<String, V>>,
    out: &mut HashSet<&'a str>,
) {
    let empty = BTreeMap::new();
    for (net, ma) in a {
        let mb = b.get(net).unwrap_or(&empty);
        out.extend(
            ma.iter()
                .filter(|(c, v)| mb.get(*c) != Some(*v))
                .map(|(c, _)| c.as_str()),
        );
    }
    for (net, mb) in b {
        let ma = a.get(net).unwrap_or(&empty);
        out.extend(
            mb.keys()
                .filter(|c| !ma.contains_key(*c))
                .map(String::as_str),
        );
    }
}

/// `container.ethN` split at its last dot (container names have none).
fn key_parts(key: &str) -> (&str, &str) {
    key.rsplit_once('.').unwrap_or((key, ""))
}

/// The networks each container has an IPv4 address on.
struct NetworksOf<'a>(HashMap<&'a str, Vec<&'a str>>);

impl<'a> NetworksOf<'a> {
    fn new(alloc: &'a Allocations) -> Self {
        let mut m: HashMap<&str, Vec<&str>> = HashMap::new();
        for (net, members) in &alloc.ipv4 {
            for c in members.keys() {
                m.entry(c.as_str()).or_default().push(net.as_str());
            }
        }
        NetworksOf(m)
    }
    /// The network of a container on exactly one.
    fn only(&self, container: &str) -> Option<&'a str> {
        match self.0.get(container).map(Vec::as_slice) {
            Some([one]) => Some(one),
            _ => None,
        }
    }
}

/// A namespace as `resolve` makes it for a container of that name.
fn derived_namespace(name: &str) -> Namespace {
    Namespace {
        netns: NsRef::Named(name.to_string()),
        lo_up: true,
    }
}

/// An endpoint as `resolve` makes it from the allocations and the bridge
/// of its network (`gateway` on `eth0` only).
fn derived_endpoint(
    container: &str,
    network: &str,
    ifname: &str,
    st: &State,
    alloc: &Allocations,
) -> Endpoint {
    let bridge = st.bridges.get(network);
    // The gateways and prefixes, from the bridge's `address/prefix`es.
    let (mut gw4, mut gw6) = (None, None);
    for a in bridge.iter().flat_map(|b| &b.addrs) {
        let Some((ip, prefix)) = a.split_once('/') else {
            continue;
        };
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => gw4 = Some((ip, prefix)),
            Ok(IpAddr::V6(ip)) => gw6 = Some((ip, prefix)),
            Err(_) => {}
        }
    }
    let ip4 = alloc.ipv4.get(network).and_then(|m| m.get(container));
    let ip6 = alloc.ipv6.get(network).and_then(|m| m.get(container));
    let mut addrs = std::collections::BTreeSet::new();
    if let (Some(ip), Some((_, p))) = (ip4, gw4) {
        addrs.insert(format!("{ip}/{p}"));
    }
    if let (Some(ip), Some((_, p))) = (ip6, gw6) {
        addrs.insert(format!("{ip}/{p}"));
    }
    let first = ifname == "eth0";
    Endpoint {
        container: container.to_string(),
        network: network.to_string(),
        netns: st
            .namespaces
            .get(container)
            .map(|n| n.netns.clone())
            .unwrap_or_else(|| NsRef::Named(container.to_string())),
        ifname: ifname.to_string(),
        host_veth: model::veth_name(container, network),
        bridge: bridge.map(|b| b.name.clone()),
        addrs,
        mac: ip4
            .map(|ip| model::mac_string(&model::docker_mac(*ip)))
            .unwrap_or_default(),
        mtu: bridge.map(|b| b.mtu).unwrap_or(1500),
        gateway: gw4.filter(|_| first).map(|(g, _)| g),
        gateway6: gw6.filter(|_| first && ip6.is_some()).map(|(g, _)| g),
        up: true,
        hairpin: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{HostInfo, resolve};

    fn as_value(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn resolved(text: &str) -> (State, Allocations) {
        let spec = crate::core::spec::load("t.toml", text).unwrap();
        let d = resolve(&spec, &Allocations::default(), &HostInfo::default()).unwrap();
        (d.state, d.allocations)
    }

    #[test]
    fn a_resolved_state_comes_back_whole() {
        for text in [
            include_str!("../../examples/docker-tutorial.toml"),
            "[networks.a]\nsubnet = \"10.1.0.0/24\"\nsubnet6 = \"fd00:1::/64\"\n\
             [networks.b]\nsubnet = \"10.2.0.0/24\"\ninternal = true\n\
             [containers.x]\nnetworks = [\"a\", \"b\"]\nports = [\"8080:80\"]\n\
             [containers.y]\nnetworks = { b = { mac = \"02:00:00:00:00:09\" } }\n\
             [containers.z]\nnetworks = [\"b\", \"a\"]\n",
        ] {
            let (st, alloc) = resolved(text);
            let v = compact(&st, &alloc).unwrap();
            assert_eq!(as_value(&compact_text(&st, &alloc).unwrap()), v);
            assert_eq!(expand(v, &alloc).unwrap(), model::for_record(&st));
        }
    }

    #[test]
    fn derivable_fields_are_left_out() {
        let (st, alloc) = resolved(
            "[networks.big]\nsubnet = \"10.0.0.0/16\"\n\
             [containers.c1]\nnetworks = [\"big\"]\n\
             [containers.c2]\nnetworks = [\"big\"]\n",
        );
        let v = compact(&st, &alloc).unwrap();
        assert_eq!(as_value(&compact_text(&st, &alloc).unwrap()), v);
        assert_eq!(v["endpoints"]["c1.eth0"], serde_json::json!({}));
        assert_eq!(v["namespaces"]["c2"], serde_json::json!({}));
        let file = v["files"]["/etc/netns/c1/hosts"].as_str().unwrap();
        assert!(file.starts_with("fnv64:"), "{file}");
    }

    #[test]
    fn objects_unlike_their_derivation_keep_what_differs() {
        let (mut st, alloc) = resolved(
            "[networks.big]\nsubnet = \"10.0.0.0/16\"\n\
             [containers.c1]\nnetworks = [\"big\"]\n",
        );
        // As observed after someone changed it, and held back that way.
        let e = st.endpoints_mut().get_mut("c1.eth0").unwrap();
        e.mtu = 1400;
        e.gateway = None;
        e.bridge = None;
        e.host_veth = "vethother".into();
        e.addrs.insert("10.0.9.9/16".into());
        e.up = false;
        st.namespaces_mut().get_mut("c1").unwrap().netns = NsRef::Path("/proc/9/ns/net".into());
        // An endpoint of a container the allocations do not know.
        let mut ghost = st.endpoints["c1.eth0"].clone();
        ghost.container = "ghost".into();
        st.endpoints_mut().insert("ghost.eth3".into(), ghost);
        st.files_mut()
            .insert("/etc/netns/c1/extra".into(), "plain content".into());
        let v = compact(&st, &alloc).unwrap();
        assert_eq!(as_value(&compact_text(&st, &alloc).unwrap()), v);
        assert_eq!(v["endpoints"]["c1.eth0"]["gateway"], Value::Null);
        assert_eq!(v["endpoints"]["c1.eth0"]["mtu"], 1400);
        assert_eq!(expand(v, &alloc).unwrap(), model::for_record(&st));
    }

    #[test]
    fn only_the_state_s_own_containers_addresses_change_its_derivation() {
        let (st, alloc) = resolved(
            "[networks.a]\nsubnet = \"10.1.0.0/24\"\nsubnet6 = \"fd00:1::/64\"\n\
             [networks.b]\nsubnet = \"10.2.0.0/24\"\n\
             [containers.x]\nnetworks = [\"a\"]\n",
        );
        let same = |b: &Allocations| same_derivation(&st, &alloc, b);
        assert!(same(&alloc));
        let mut other = alloc.clone();
        other
            .ipv4
            .get_mut("a")
            .unwrap()
            .insert("y".into(), "10.1.0.9".parse().unwrap());
        other.ipv4.insert(
            "c".into(),
            [("z".to_string(), "10.3.0.2".parse().unwrap())].into(),
        );
        other.ports.insert("x/80".into(), 40000);
        assert!(same(&other));
        assert!(same_derivation(&st, &other, &alloc), "either way");
        let mut moved = alloc.clone();
        moved
            .ipv4
            .get_mut("a")
            .unwrap()
            .insert("x".into(), "10.1.0.9".parse().unwrap());
        assert!(!same(&moved));
        let mut moved6 = alloc.clone();
        moved6
            .ipv6
            .get_mut("a")
            .unwrap()
            .insert("x".into(), "fd00:1::9".parse().unwrap());
        assert!(!same(&moved6));
        // On a second network, x is no longer on only one.
        let mut second = alloc.clone();
        second.ipv4.insert(
            "b".into(),
            [("x".to_string(), "10.2.0.2".parse().unwrap())].into(),
        );
        assert!(!same(&second));
        let mut gone = alloc.clone();
        gone.ipv4.get_mut("a").unwrap().remove("x");
        assert!(!same(&gone));
        // Whenever it says so, the parts are those made against the other.
        for b in [&other, &moved, &moved6, &second, &gone] {
            let text = |a: &Allocations| compact_text(&st, a).unwrap();
            if same(b) {
                assert_eq!(text(b), text(&alloc));
            } else {
                assert_ne!(text(b), text(&alloc));
            }
        }
    }

    #[test]
    fn an_endpoint_without_network_or_allocation_is_an_error() {
        let v = serde_json::json!({ "endpoints": { "c1.eth0": {} } });
        let e = expand(v, &Allocations::default()).unwrap_err();
        assert!(e.contains("c1.eth0"), "{e}");
    }
}
