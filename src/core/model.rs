//! The resolved state: what the kernel, the firewall and the files should
//! hold, computed with no I/O.
//!
//! [`State`] is both the desired state (from [`resolve`]) and the observed
//! state (from `host::observe`), so that a plan is a diff of two values of
//! one type. Everything in it is keyed by the plan address it belongs to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::firewall::{Firewall, FwNetwork, FwPort, FwVxlan};
use crate::core::ipam::{self, Allocations};
use crate::core::spec::{ContainerSpec, EndpointSpec, NetnsSpec, NetworkSpec, Spec};

/// Marks netloom's host-side interfaces (`ifalias`), so that observe and
/// `down` recognise them, and nothing else, as netloom's.
pub const ALIAS_PREFIX: &str = "netloom:";
/// Where `ip netns exec` finds per-namespace files.
pub const ETC_NETNS: &str = "/etc/netns";
/// Directory holding the bind-mounted namespace files (same as iproute2;
/// `/var/run` is a symlink to `/run` on every modern distribution).
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// The first line of every file netloom writes starts with this: what
/// marks a file as netloom's even when the state record is lost.
pub const FILE_MARK: &str = "# Written by netloom";
/// Everything below this line of a hosts file is the user's.
pub use crate::core::hosts::USER_MARKER;
/// Interface names starting with this are netloom's own temporary names
/// (see [`temp_link_name`]); a file may not use them. Defined beside the
/// validation that refuses them.
pub use crate::core::spec::TEMP_LINK_PREFIX;

/// The temporary name a marked interface is created under before it takes
/// its own name and its mark in one request: `nl~` + 12 hex digits of a
/// hash of `name`, 15 bytes, the longest name Linux allows.
///
/// The kernel ignores `IFLA_IFALIAS` when it creates a link, so the mark
/// can only follow the creation. Created under its final name, a link
/// would exist unmarked between the two requests, and a crash there would
/// leave an interface that no later run could tell from a user's. Under a
/// reserved name it is recognisably netloom's at every instant: first by
/// its name, then (one rename-and-alias request, atomic for the kernel) by
/// its mark. A link still under such a name is what a crash left between
/// the two: observe reports it in [`State::half_made`] and the next
/// `apply` or `down` deletes it. Deterministic, so that a run can find the
/// link it just made by name on kernels that do not echo the creation.
pub fn temp_link_name(name: &str) -> String {
    let h = crate::core::hash::fnv64(format!("netloom-temp\0{name}").as_bytes());
    format!("{TEMP_LINK_PREFIX}{:012x}", h & 0xffff_ffff_ffff)
}

/// Whether `name` is one of netloom's temporary interface names.
pub fn is_temp_link(name: &str) -> bool {
    name.starts_with(TEMP_LINK_PREFIX)
}

/// A file's text. Shared, not copied, between the states that hold the
/// same text: the observed copy of a file netloom wrote is the desired
/// one, and a clone of a state copies no file (at 1,000 containers the
/// hosts files are megabytes). Its hash is kept with it.
pub use crate::core::text::FileText;

/// The whole state of one host, desired or observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Host sysctls netloom needs, e.g. `net.ipv4.ip_forward = 1`.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// By network name.
    #[serde(default)]
    pub bridges: BTreeMap<String, Bridge>,
    /// By container name: the namespaces netloom creates or attaches.
    /// This map, the endpoints and the files are shared between copies of
    /// a state (changed through [`State::namespaces_mut`] and its kin):
    /// the agent copies its desired and observed states whole, and these
    /// hold an entry per container or per file.
    #[serde(default)]
    pub namespaces: Arc<BTreeMap<String, Namespace>>,
    /// By `container.ethN`.
    #[serde(default)]
    pub endpoints: Arc<BTreeMap<String, Endpoint>>,
    /// netloom's nft table(s); `None` when absent.
    #[serde(default)]
    pub firewall: Option<FirewallState>,
    /// Files netloom owns, by path.
    #[serde(default)]
    pub files: Arc<BTreeMap<String, FileText>>,
    /// Cluster mode: the VXLAN device of each cluster network, by network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vxlans: BTreeMap<String, Vxlan>,
    /// Observed only: host interfaces still under a temporary name
    /// ([`temp_link_name`]), left by a run cut short between creating a
    /// link and naming and marking it. Never desired: a plan deletes them
    /// (a veth's other end goes with it).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub half_made: BTreeSet<String>,
}

impl State {
    /// The namespaces to change: copied first only while another state
    /// shares them.
    pub fn namespaces_mut(&mut self) -> &mut BTreeMap<String, Namespace> {
        Arc::make_mut(&mut self.namespaces)
    }

    /// The endpoints to change (see [`State::namespaces_mut`]).
    pub fn endpoints_mut(&mut self) -> &mut BTreeMap<String, Endpoint> {
        Arc::make_mut(&mut self.endpoints)
    }

    /// The files to change (see [`State::namespaces_mut`]).
    pub fn files_mut(&mut self) -> &mut BTreeMap<String, FileText> {
        Arc::make_mut(&mut self.files)
    }
}

/// The kernel VXLAN device that extends a cluster network's bridge to the
/// other hosts: static forwarding entries only, no learning, no multicast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vxlan {
    /// Linux interface name ([`crate::core::cluster::vxlan_name`]).
    pub name: String,
    /// The network's VXLAN id (24 bits).
    pub vni: u32,
    /// This host's underlay address.
    pub local: Ipv4Addr,
    /// UDP destination port.
    pub port: u16,
    /// The bridge it is enslaved to (`None` observed: no master).
    pub bridge: Option<String>,
    /// The network's MTU (by default the underlay's minus the VXLAN
    /// overhead).
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Forwarding entries as `MAC dst ADDRESS`: the all-zero MAC once per
    /// other host with members (broadcast and unknown unicast), and each
    /// remote member's MAC to its host.
    pub fdb: BTreeSet<String>,
    /// ARP/ND proxy (`proxy`): the device answers neighbour requests from
    /// its own neighbour entries and sends none to other hosts, so ARP for
    /// the gateway (the same address on every host) never crosses.
    #[serde(default)]
    pub proxy: bool,
    /// Neighbour entries as `IP lladdr MAC`: each remote member's
    /// addresses, which the proxy answers with.
    #[serde(default)]
    pub neigh: BTreeSet<String>,
}

/// One neighbour entry of a [`Vxlan`], as kept in [`Vxlan::neigh`].
pub fn neigh_entry(ip: IpAddr, mac: &[u8; 6]) -> String {
    format!("{ip} lladdr {}", mac_string(mac))
}

/// Parses a [`neigh_entry`].
pub fn parse_neigh_entry(s: &str) -> Option<(IpAddr, [u8; 6])> {
    let (ip, mac) = s.split_once(" lladdr ")?;
    Some((ip.parse().ok()?, crate::core::spec::parse_mac(mac)?))
}

/// One forwarding entry of a [`Vxlan`], as kept in [`Vxlan::fdb`].
pub fn fdb_entry(mac: &[u8; 6], dst: Ipv4Addr) -> String {
    format!("{} dst {dst}", mac_string(mac))
}

/// Parses a [`fdb_entry`].
pub fn parse_fdb_entry(s: &str) -> Option<([u8; 6], Ipv4Addr)> {
    let (mac, dst) = s.split_once(" dst ")?;
    Some((crate::core::spec::parse_mac(mac)?, dst.parse().ok()?))
}

/// The alias that marks a VXLAN device as netloom's.
pub fn vxlan_alias(network: &str) -> String {
    format!("{ALIAS_PREFIX}vxlan {network}")
}

/// A network's bridge, holding its gateway addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    /// Linux interface name.
    pub name: String,
    /// `address/prefix`, IPv4 and IPv6.
    pub addrs: BTreeSet<String>,
    /// The network's MTU.
    pub mtu: u32,
    /// Set explicitly: a bridge without one takes the lowest MAC of its
    /// ports, so adding a container would change the gateway's MAC under
    /// every neighbour's ARP cache. Docker's scheme applied to the gateway.
    #[serde(default)]
    pub mac: String,
    /// Administratively up.
    pub up: bool,
}

/// Where a namespace lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NsRef {
    /// `/run/netns/NAME`, created (and deleted) by netloom.
    Named(String),
    /// An existing namespace at a path; never deleted.
    Path(PathBuf),
}

impl NsRef {
    /// The namespace file to open or bind-mount.
    pub fn path(&self) -> PathBuf {
        match self {
            NsRef::Named(n) => named_path(n),
            NsRef::Path(p) => p.clone(),
        }
    }
    /// How to run `ip` in it, for plan output.
    pub fn ip_cmd(&self) -> String {
        match self {
            NsRef::Named(n) => format!("ip -n {n}"),
            NsRef::Path(p) => format!("nsenter --net={} ip", p.display()),
        }
    }
}

impl fmt::Display for NsRef {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            NsRef::Named(n) => write!(f, "netns {n}"),
            NsRef::Path(p) => write!(f, "netns at {}", p.display()),
        }
    }
}

/// A container's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Where it lives.
    pub netns: NsRef,
    /// Its loopback interface is up.
    pub lo_up: bool,
}

/// One veth pair: host end on a bridge, the other end in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The container it belongs to.
    pub container: String,
    /// The network it joins.
    pub network: String,
    /// The container's namespace, where the inner end lives.
    pub netns: NsRef,
    /// Name inside the namespace: `eth0`, `eth1`, ...
    pub ifname: String,
    /// Host-side veth name.
    pub host_veth: String,
    /// Bridge the host end is enslaved to (`None` observed: no master).
    pub bridge: Option<String>,
    /// `address/prefix` inside the namespace.
    pub addrs: BTreeSet<String>,
    /// MAC of the inner end, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// MTU of both ends: the network's.
    pub mtu: u32,
    /// Default route via this gateway (first network only).
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 default route via this gateway (first network only, when it
    /// is dual-stack).
    pub gateway6: Option<Ipv6Addr>,
    /// Both ends administratively up.
    pub up: bool,
    /// Hairpin mode on the bridge port, so that a container reaching its
    /// own published port through a host address gets the reply (with
    /// br_netfilter the frame must leave by the port it came in by).
    #[serde(default)]
    pub hairpin: bool,
}

/// Whether any of `addrs` (a bridge's or an endpoint's `address/prefix`)
/// is an IPv6 address: those of a dual-stack network have one, those of
/// an IPv4-only network none (the kernel's link-local addresses are not
/// among them).
pub fn has_ipv6(addrs: &BTreeSet<String>) -> bool {
    addrs.iter().any(|a| a.contains(':'))
}

/// The firewall as netloom sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallState {
    /// Networks and published ports, the data of the sets and maps.
    pub fw: Firewall,
    /// Chains, rules and sets exactly as netloom renders them (false after
    /// someone flushed a chain, for instance).
    pub skeleton_ok: bool,
    /// Whether `table bridge netloom` exists (desired: while a network has
    /// `icc = false`).
    #[serde(default)]
    pub bridge_table: bool,
    /// Why the skeleton is not ok (observed only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Elements in netloom's sets and maps that no network or port of
    /// [`Self::fw`] explains, e.g. one added by hand (observed only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strays: Vec<crate::core::firewall::Stray>,
}

impl FirewallState {
    /// The desired firewall state for `fw`.
    pub fn desired(fw: Firewall) -> Self {
        FirewallState {
            bridge_table: crate::core::firewall::bridge_table_needed(&fw),
            fw,
            skeleton_ok: true,
            problems: Vec::new(),
            strays: Vec::new(),
        }
    }
}

/// The desired state plus what the file says that the kernel does not hold.
#[derive(Clone, Debug)]
pub struct Desired {
    /// What the host should hold.
    pub state: State,
    /// Addresses and host ports handed out, to be recorded in the state dir
    /// once applied.
    pub allocations: Allocations,
    /// The file's networks, by name.
    pub networks: BTreeMap<String, NetworkSpec>,
    /// DNS zones of the DNS-enabled networks, for the agent.
    pub zones: Vec<crate::core::dns::Zone>,
    /// Containers' own names and DNS servers (`extra_hosts`, `dns`), for
    /// the agent's DNS.
    pub dns_clients: Vec<crate::core::dns::Client>,
    /// Hosts files of `netns_path` containers, for `status` to point at.
    pub external_files: BTreeMap<String, String>,
}

/// Inputs of [`resolve`] that come from the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// Upstream DNS servers when the file names none.
    pub upstream_dns: Vec<SocketAddr>,
    /// The state dir: files of `netns_path` containers are written under
    /// it.
    pub state_dir: PathBuf,
    /// An agent serves the embedded DNS on this host: resolv.conf names
    /// the gateway of the container's first DNS-enabled network before
    /// the upstream servers. Without one, resolv.conf lists only the
    /// upstream servers, so that no lookup waits on a resolver that is not
    /// running (the agent turns it on when it starts, off when it stops).
    pub agent_dns: bool,
}

/// Above this many members, a user-defined network with DNS is no longer
/// listed in its members' hosts files (see [`crate::core::hosts`]).
pub use crate::core::hosts::HOSTS_FILE_MAX_MEMBERS;

/// Path of the named namespace `name`: `/run/netns/NAME`.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// The host-side veth name: `veth` + 7 hex digits, stable for a
/// (container, network) pair so that plans can name it before it exists.
pub fn veth_name(container: &str, network: &str) -> String {
    let h = crate::core::hash::fnv64(format!("{container}\0{network}").as_bytes());
    format!("veth{:07x}", h & 0x0fff_ffff)
}

/// Host-side veth names of every endpoint of `spec`, by (container,
/// network): [`veth_name`], except where two endpoints hash to the same
/// name (28 bits: likely somewhere among tens of thousands of endpoints)
/// or a hash equals a bridge's name. Then the endpoint whose
/// `container\0network` sorts first keeps the plain name and each other
/// one takes the first free `veth_name` of `container\0network\0K`
/// (K = 1, 2, ...). Deterministic: the same set of endpoints gives the
/// same names whatever the file's order, so plans can still name veths
/// before they exist.
pub fn veth_names(spec: &Spec) -> HashMap<(&str, &str), String> {
    let mut keys: Vec<(&str, &str)> = spec
        .containers
        .iter()
        .flat_map(|c| {
            c.endpoints
                .iter()
                .map(move |e| (c.name.as_str(), e.network.as_str()))
        })
        .collect();
    keys.sort_unstable();
    let bridges: HashSet<&str> = spec.networks.values().map(|n| n.bridge.as_str()).collect();
    let plain: Vec<String> = keys.iter().map(|(c, n)| veth_name(c, n)).collect();
    // Every plain name is reserved first, so a probe never takes the name
    // an endpoint has on its own.
    let mut taken: HashMap<&str, usize> = HashMap::new();
    for (i, name) in plain.iter().enumerate() {
        if !bridges.contains(name.as_str()) {
            taken.entry(name.as_str()).or_insert(i);
        }
    }
    let mut extra: HashSet<String> = HashSet::new();
    let mut out = HashMap::with_capacity(keys.len());
    for (i, (c, n)) in keys.iter().enumerate() {
        let name = if taken.get(plain[i].as_str()) == Some(&i) {
            plain[i].clone()
        } else {
            (1u32..)
                .map(|k| salted_veth_name(c, n, k))
                .find(|v| {
                    !taken.contains_key(v.as_str())
                        && !bridges.contains(v.as_str())
                        && !extra.contains(v)
                })
                .unwrap_or_else(|| plain[i].clone())
        };
        if name != plain[i] {
            extra.insert(name.clone());
        }
        out.insert((*c, *n), name);
    }
    out
}

fn salted_veth_name(container: &str, network: &str, k: u32) -> String {
    let h = crate::core::hash::fnv64(format!("{container}\0{network}\0{k}").as_bytes());
    format!("veth{:07x}", h & 0x0fff_ffff)
}

/// Docker's MAC scheme: `02:42:` + the four IPv4 bytes.
pub fn docker_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The alias that marks a host-side veth as netloom's.
pub fn veth_alias(container: &str, network: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX}endpoint {container}.{ifname} {network}")
}

/// The alias that marks a bridge as netloom's.
pub fn bridge_alias(network: &str) -> String {
    format!("{ALIAS_PREFIX}network {network}")
}

/// Parses an alias written by [`veth_alias`] or [`bridge_alias`].
pub fn parse_alias(alias: &str) -> Option<AliasMark> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let mut w = rest.split(' ');
    match (w.next()?, w.next()?, w.next()) {
        ("network", n, None) => Some(AliasMark::Network(n.to_string())),
        ("vxlan", n, None) => Some(AliasMark::Vxlan(n.to_string())),
        ("endpoint", key, Some(net)) => {
            let (c, ifname) = key.rsplit_once('.')?;
            Some(AliasMark::Endpoint {
                container: c.to_string(),
                ifname: ifname.to_string(),
                network: net.to_string(),
            })
        }
        _ => None,
    }
}

/// What an `ifalias` mark says an interface is; see [`parse_alias`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AliasMark {
    /// The bridge of this network.
    Network(String),
    /// A cluster network's VXLAN device.
    Vxlan(String),
    /// The host end of a container's veth.
    Endpoint {
        /// The container.
        container: String,
        /// The inner end's name, `ethN`.
        ifname: String,
        /// The network whose bridge it is on.
        network: String,
    },
}

/// Path of a container's netloom-owned file (`hosts` or `resolv.conf`).
pub fn file_path(host: &HostInfo, c: &ContainerSpec, file: &str) -> Option<String> {
    match c.netns.as_ref()? {
        NetnsSpec::Named(n) => Some(format!("{ETC_NETNS}/{n}/{file}")),
        NetnsSpec::Path(_) => Some(
            host.state_dir
                .join("files")
                .join(&c.name)
                .join(file)
                .display()
                .to_string(),
        ),
    }
}

/// Computes the desired state. Fails only when IPAM runs out of addresses.
pub fn resolve(
    spec: &Spec,
    prev: &Allocations,
    host: &HostInfo,
) -> Result<Desired, ipam::IpamError> {
    let alloc = ipam::allocate(spec, prev)?;
    let by_name: HashMap<&str, &ContainerSpec> = spec
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut st = State::default();
    let veths = veth_names(spec);

    // Bridges: only networks some container uses, like Docker's default
    // network; a declared user-defined network exists even when empty.
    let used: BTreeSet<&str> = spec
        .containers
        .iter()
        .flat_map(|c| c.endpoints.iter().map(|e| e.network.as_str()))
        .collect();
    for net in spec.networks.values() {
        if net.name == crate::core::spec::DEFAULT_NETWORK && !used.contains(net.name.as_str()) {
            continue;
        }
        let mut addrs = BTreeSet::from([format!("{}/{}", net.gateway, net.subnet.prefix())]);
        if let (Some(g6), Some(s6)) = (net.gateway6, net.subnet6) {
            addrs.insert(format!("{g6}/{}", s6.prefix()));
        }
        st.bridges.insert(
            net.name.clone(),
            Bridge {
                name: net.bridge.clone(),
                addrs,
                mtu: net.mtu,
                mac: mac_string(&docker_mac(net.gateway)),
                up: true,
            },
        );
    }
    let networks: BTreeMap<String, NetworkSpec> = spec
        .networks
        .iter()
        .filter(|(n, _)| st.bridges.contains_key(*n))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let share = spec.cluster.as_ref().and_then(|c| c.share.as_ref());
    if let Some(share) = share {
        for (net, vx) in &share.vxlans {
            let Some(n) = networks.get(net) else {
                continue;
            };
            let mut fdb: BTreeSet<String> =
                vx.peers.iter().map(|p| fdb_entry(&[0; 6], *p)).collect();
            fdb.extend(vx.remote.iter().map(|m| fdb_entry(&m.mac, m.underlay)));
            let neigh: BTreeSet<String> = vx
                .remote
                .iter()
                .flat_map(|m| {
                    let v6 = m.ipv6.filter(|_| n.subnet6.is_some()).map(IpAddr::V6);
                    std::iter::once(IpAddr::V4(m.ipv4))
                        .chain(v6)
                        .map(|ip| neigh_entry(ip, &m.mac))
                })
                .collect();
            st.vxlans.insert(
                net.clone(),
                Vxlan {
                    name: crate::core::cluster::vxlan_name(net),
                    vni: vx.vni,
                    local: share.address,
                    port: crate::core::cluster::VXLAN_PORT,
                    bridge: Some(n.bridge.clone()),
                    mtu: n.mtu,
                    up: true,
                    fdb,
                    proxy: true,
                    neigh,
                },
            );
        }
    }
    // Members of cluster networks on other hosts, for names.
    let remote_of = |net: &str| remote_members(share, net);

    // Namespaces and endpoints, built here and then shared.
    let mut namespaces = BTreeMap::new();
    let mut endpoints = BTreeMap::new();
    for c in &spec.containers {
        let Some(ns) = c.netns.as_ref().map(nsref) else {
            continue;
        };
        namespaces.insert(
            c.name.clone(),
            Namespace {
                netns: ns.clone(),
                lo_up: true,
            },
        );
        for (i, e) in c.endpoints.iter().enumerate() {
            let Some(net) = networks.get(&e.network) else {
                continue;
            };
            let ifname = format!("eth{i}");
            let ip = alloc.ipv4[&e.network][&c.name];
            let mut addrs = BTreeSet::from([format!("{ip}/{}", net.subnet.prefix())]);
            let ip6 = alloc
                .ipv6
                .get(&e.network)
                .and_then(|m| m.get(&c.name))
                .copied();
            if let (Some(ip6), Some(s6)) = (ip6, net.subnet6) {
                addrs.insert(format!("{ip6}/{}", s6.prefix()));
            }
            let first = i == 0 && !net.internal;
            endpoints.insert(
                format!("{}.{ifname}", c.name),
                Endpoint {
                    container: c.name.clone(),
                    network: e.network.clone(),
                    netns: ns.clone(),
                    ifname: ifname.clone(),
                    host_veth: veths
                        .get(&(c.name.as_str(), e.network.as_str()))
                        .cloned()
                        .unwrap_or_else(|| veth_name(&c.name, &e.network)),
                    bridge: Some(net.bridge.clone()),
                    addrs,
                    mac: mac_string(&e.mac.unwrap_or_else(|| docker_mac(ip))),
                    mtu: net.mtu,
                    gateway: first.then_some(net.gateway),
                    gateway6: if first {
                        net.gateway6.filter(|_| ip6.is_some())
                    } else {
                        None
                    },
                    up: true,
                    hairpin: true,
                },
            );
        }
    }
    st.namespaces = namespaces.into();
    st.endpoints = endpoints.into();

    // Firewall.
    let fw = firewall_of(spec, &alloc, &networks, &st.vxlans);
    put_firewall(&mut st, fw, &networks);

    // Names: hosts files, resolv.conf and DNS zones.
    let addr_on = |c: &str, net: &str| alloc.ipv4.get(net).and_then(|m| m.get(c)).copied();
    let upstream: Vec<SocketAddr> = spec
        .upstream_dns
        .clone()
        .unwrap_or_else(|| host.upstream_dns.clone());
    // Members of each network in file order, built once: a container's
    // hosts file and a zone read only their own network's list.
    let mut members: HashMap<&str, Vec<(&ContainerSpec, &EndpointSpec)>> = HashMap::new();
    for c in &spec.containers {
        for e in &c.endpoints {
            members.entry(e.network.as_str()).or_default().push((c, e));
        }
    }
    let tables =
        crate::core::hosts::HostsTables::new(&networks, &members, &by_name, &alloc, &remote_of);
    let mut external_files = BTreeMap::new();
    let mut dns_clients = Vec::new();
    let mut files = BTreeMap::new();
    for c in &spec.containers {
        let (Some(hosts_path), Some(resolv_path)) = (
            file_path(host, c, "hosts"),
            file_path(host, c, "resolv.conf"),
        ) else {
            continue;
        };
        let extra = crate::core::hosts::extra_hosts(c, &networks);
        let hosts = tables.file(c, &extra);
        let resolv = resolv_file(c, &networks, &upstream, host.agent_dns);
        if !extra.is_empty() || !c.dns.servers.is_empty() {
            dns_clients.push(crate::core::dns::Client {
                name: c.name.clone(),
                hosts: extra,
                servers: c
                    .dns
                    .servers
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, 53))
                    .collect(),
            });
        }
        if matches!(c.netns, Some(NetnsSpec::Path(_))) {
            external_files.insert(c.name.clone(), hosts_path.clone());
        }
        files.insert(hosts_path, hosts.into());
        files.insert(resolv_path, resolv.into());
    }
    st.files = files.into();
    let zones = networks
        .values()
        .filter(|n| n.dns)
        .map(|n| crate::core::dns::Zone {
            network: n.name.clone(),
            gateway: n.gateway,
            subnet: n.subnet,
            gateway6: n.gateway6,
            subnet6: n.subnet6,
            members: members
                .get(n.name.as_str())
                .into_iter()
                .flatten()
                .filter_map(|(c, e)| {
                    Some(crate::core::dns::Member {
                        name: c.name.clone(),
                        aliases: e.aliases.clone(),
                        ipv4: addr_on(&c.name, &n.name)?,
                        ipv6: alloc
                            .ipv6
                            .get(&n.name)
                            .and_then(|m| m.get(&c.name))
                            .copied(),
                    })
                })
                .chain(remote_of(&n.name).iter().map(|m| crate::core::dns::Member {
                    name: m.name.clone(),
                    aliases: m.aliases.clone(),
                    ipv4: m.ipv4,
                    ipv6: m.ipv6,
                }))
                .collect(),
        })
        .collect();
    Ok(Desired {
        state: st,
        allocations: alloc,
        networks,
        zones,
        dns_clients,
        external_files,
    })
}

/// The firewall of `spec`'s published ports on `networks` (those with a
/// bridge), with the gateways of the cluster networks' VXLANs.
fn firewall_of(
    spec: &Spec,
    alloc: &Allocations,
    networks: &BTreeMap<String, NetworkSpec>,
    vxlans: &BTreeMap<String, Vxlan>,
) -> Firewall {
    let mut fw = Firewall::default();
    let mut ports = BTreeMap::new();
    for net in networks.values() {
        fw.networks.insert(
            net.name.clone(),
            FwNetwork {
                bridge: net.bridge.clone(),
                subnet: net.subnet,
                subnet6: net.subnet6,
                masquerade: net.masquerade,
                internal: net.internal,
                icc: net.icc,
            },
        );
    }
    for c in &spec.containers {
        let Some(ep) = c.endpoints.first() else {
            continue;
        };
        let Some(net) = networks.get(&ep.network) else {
            continue;
        };
        let cip = alloc.ipv4[&ep.network][&c.name];
        let cip6 = alloc
            .ipv6
            .get(&ep.network)
            .and_then(|m| m.get(&c.name))
            .copied()
            .filter(|_| net.subnet6.is_some());
        for (raw, p) in &c.ports {
            let host_port = match p.host {
                Some(h) => h.start,
                None => alloc.ports[&ipam::port_key(&c.name, raw)],
            };
            let count = p.container.len();
            let range = if count == 1 {
                host_port.to_string()
            } else {
                format!("{host_port}-{}", host_port + (count - 1))
            };
            let ip = p
                .host_ip
                .map(crate::core::spec::host_ip_prefix)
                .unwrap_or_default();
            // Which families the port is published on (see FwPort).
            let (v4, v6) = match p.host_ip {
                Some(IpAddr::V4(_)) => (Some(cip), None),
                Some(IpAddr::V6(_)) => (None, cip6),
                None => (Some(cip), cip6),
            };
            ports.insert(
                format!("{}.{ip}{range}/{}", c.name, p.proto),
                FwPort {
                    container: c.name.clone(),
                    network: ep.network.clone(),
                    bridge: net.bridge.clone(),
                    host_ip: p.host_ip,
                    host_port,
                    container_ip: v4,
                    container_ip6: v6,
                    container_port: p.container.start,
                    count,
                    proto: p.proto,
                },
            );
        }
    }
    fw.ports = ports.into();
    // Cluster mode: the gateway of each cluster network stays on its host
    // (`table bridge netloom` drops it on the VXLAN port).
    for (net, vx) in vxlans {
        if let Some(n) = networks.get(net) {
            fw.vxlans.insert(
                net.clone(),
                FwVxlan {
                    device: vx.name.clone(),
                    gateway: n.gateway,
                    gateway_mac: mac_string(&docker_mac(n.gateway)),
                },
            );
        }
    }
    fw
}

/// Puts `fw` into `st` with the sysctls it needs, their only source
/// (nothing without a network).
fn put_firewall(st: &mut State, fw: Firewall, networks: &BTreeMap<String, NetworkSpec>) {
    st.sysctls.clear();
    st.firewall = None;
    if !networks.is_empty() {
        // required_sysctls adds net.ipv6.conf.all.forwarding for dual stack.
        st.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        for (k, v) in crate::core::firewall::required_sysctls(&fw) {
            st.sysctls.insert(k, v);
        }
        st.firewall = Some(FirewallState::desired(fw));
    }
}

/// Whether `a` and `b` differ in published ports only: the containers'
/// `ports` and `settings.port_range`, which [`resolve`] reads for the
/// firewall, its sysctls and the host ports it allocates, and for
/// nothing else.
pub fn only_ports_differ(a: &Spec, b: &Spec) -> bool {
    // Every field by name: a field added later must be compared here too.
    let Spec {
        state_dir,
        port_range: _,
        upstream_dns,
        networks,
        containers,
        cluster,
    } = a;
    *state_dir == b.state_dir
        && *upstream_dns == b.upstream_dns
        && *networks == b.networks
        && *cluster == b.cluster
        && containers.len() == b.containers.len()
        && containers.iter().zip(&b.containers).all(|(x, y)| {
            let ContainerSpec {
                name,
                hostname,
                mode,
                netns,
                endpoints,
                ports: _,
                links,
                dns,
            } = x;
            *name == y.name
                && *hostname == y.hostname
                && *mode == y.mode
                && *netns == y.netns
                && *endpoints == y.endpoints
                && *links == y.links
                && *dns == y.dns
        })
}

/// [`resolve`] of `spec` from `was`, the resolution of a file that
/// differs from `spec` in published ports only ([`only_ports_differ`]) on
/// the same host: the host ports are allocated again against `prev` and
/// the firewall and its sysctls made again; everything else is `was`'s,
/// which is what resolving would make of the same containers, networks,
/// addresses and host. `None` (resolve it whole) when the addresses
/// would not be `was`'s or the allocation fails (resolving says why).
pub fn with_ports(mut was: Desired, spec: &Spec, prev: &Allocations) -> Option<Desired> {
    let alloc = ipam::allocate(spec, prev).ok()?;
    if alloc.ipv4 != was.allocations.ipv4 || alloc.ipv6 != was.allocations.ipv6 {
        return None;
    }
    let fw = firewall_of(spec, &alloc, &was.networks, &was.state.vxlans);
    put_firewall(&mut was.state, fw, &was.networks);
    was.allocations = alloc;
    Some(was)
}

fn nsref(n: &NetnsSpec) -> NsRef {
    match n {
        NetnsSpec::Named(s) => NsRef::Named(s.clone()),
        NetnsSpec::Path(p) => NsRef::Path(p.clone()),
    }
}

/// Members of cluster network `net` on other hosts (none outside cluster
/// mode).
fn remote_members<'a>(
    share: Option<&'a crate::core::cluster::Share>,
    net: &str,
) -> &'a [crate::core::cluster::RemoteMember] {
    share
        .and_then(|s| s.vxlans.get(net))
        .map(|v| v.remote.as_slice())
        .unwrap_or(&[])
}

fn resolv_file(
    c: &ContainerSpec,
    networks: &BTreeMap<String, NetworkSpec>,
    upstream: &[SocketAddr],
    agent_dns: bool,
) -> String {
    let mut out = String::from("# Written by netloom.\n");
    // One gateway is enough: it answers for every network the container
    // is on (the server knows the asker by its source address).
    if let Some(n) = c
        .endpoints
        .iter()
        .filter_map(|e| networks.get(&e.network))
        .find(|n| n.dns && agent_dns)
    {
        out.push_str(&format!("nameserver {}\n", n.gateway));
    }
    // The container's own `dns` servers replace the host's upstreams (the
    // embedded DNS, when listed, forwards its unknown names to them too).
    if c.dns.servers.is_empty() {
        for u in upstream.iter().filter(|u| u.port() == 53) {
            out.push_str(&format!("nameserver {}\n", u.ip()));
        }
    } else {
        for ip in &c.dns.servers {
            out.push_str(&format!("nameserver {ip}\n"));
        }
    }
    if !c.dns.search.is_empty() {
        out.push_str(&format!("search {}\n", c.dns.search.join(" ")));
    }
    out.push_str(&crate::core::container_dns::options_line(&c.dns.options));
    out
}

/// Nameservers of a resolv.conf usable from inside a namespace (loopback
/// resolvers such as systemd-resolved's 127.0.0.53 are not reachable there).
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// How a file's content is kept in the state record: a digest, not the
/// text (hosts files of a large host would make the record tens of MB).
const DIGEST_PREFIX: &str = "netloom-digest:fnv64:";

/// The digest that stands for `content` in the state record.
pub fn file_digest(content: &str) -> String {
    digest_text(crate::core::hash::fnv64(content.as_bytes()), content.len())
}

/// [`file_digest`] of a text as the states hold it, from its kept hash.
pub fn text_digest(text: &FileText) -> String {
    digest_text(text.hash(), text.len())
}

/// `st` as the state record keeps it: every file's content replaced by
/// its [`file_digest`]. Drift detection compares digests
/// ([`file_matches`]); nothing else reads recorded contents.
pub fn for_record(st: &State) -> State {
    into_record_form(st.clone())
}

/// [`for_record`] of a state no longer needed as it is.
pub fn into_record_form(mut st: State) -> State {
    // Hashed together: every apply digests every file (those whose
    // hash an earlier check kept are not hashed again).
    let texts: Vec<&mut FileText> = st
        .files_mut()
        .values_mut()
        .filter(|v| !v.starts_with(DIGEST_PREFIX))
        .collect();
    let digests = file_digests(&texts.iter().map(|t| &**t).collect::<Vec<&FileText>>());
    for (v, d) in texts.into_iter().zip(digests) {
        *v = d.into();
    }
    st
}

/// The digest of a content of `len` bytes whose [`fnv64`](crate::core::hash::fnv64) is `hash`.
fn digest_text(hash: u64, len: usize) -> String {
    format!("{DIGEST_PREFIX}{hash:016x}:{len}")
}

/// Whether `a` and `b` are the same as the record keeps them, i.e.
/// `for_record(a) == for_record(b)`, without copying either.
pub fn same_as_recorded(a: &State, b: &State) -> bool {
    // Every field by name: a field added later must be compared here too.
    let State {
        sysctls,
        bridges,
        namespaces,
        endpoints,
        firewall,
        files,
        vxlans,
        half_made,
    } = a;
    *sysctls == b.sysctls
        && *bridges == b.bridges
        && *namespaces == b.namespaces
        && *endpoints == b.endpoints
        && *firewall == b.firewall
        && *vxlans == b.vxlans
        && *half_made == b.half_made
        && same_files_as_recorded(files, &b.files)
}

/// [`same_as_recorded`] of two states' files. A text stands for its
/// digest, so a digest and a text are compared as [`files_match`] does
/// (the recorded length first, then the texts hashed together), without
/// writing out a digest per file.
fn same_files_as_recorded(a: &BTreeMap<String, FileText>, b: &BTreeMap<String, FileText>) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // (recorded hash, text to hash)
    let mut to_hash: Vec<(u64, &FileText)> = Vec::new();
    for ((pa, ta), (pb, tb)) in a.iter().zip(b) {
        if pa != pb {
            return false;
        }
        if ta == tb {
            continue;
        }
        let (digest, text) = match (
            ta.strip_prefix(DIGEST_PREFIX),
            tb.strip_prefix(DIGEST_PREFIX),
        ) {
            (Some(d), None) => (d, tb),
            (None, Some(d)) => (d, ta),
            // Two different digests, or two different texts.
            _ => return false,
        };
        // A digest in any other spelling than `file_digest`'s is not
        // the text's.
        match parse_digest(digest) {
            Some((hash, len)) if len == text.len() => to_hash.push((hash, text)),
            _ => return false,
        }
    }
    let texts: Vec<&FileText> = to_hash.iter().map(|(_, t)| *t).collect();
    FileText::hashes(&texts)
        .into_iter()
        .zip(&to_hash)
        .all(|(hash, (recorded, _))| hash == *recorded)
}

/// Whether the file on disk still holds what netloom wrote: `written` is
/// the content or its digest (records before digests kept the content);
/// the user's block below the marker of a hosts file does not count.
/// `on_disk` is the file's text, or the digest a long-lived reading (the
/// agent's view) keeps of a text it read.
pub fn file_matches(written: &str, on_disk: &str) -> bool {
    files_match(&[(written, &on_disk.into())])[0]
}

/// [`file_matches`] of each `(written, on_disk)` pair, in order. The
/// length a digest records is compared before anything is hashed (an edit
/// usually changes it), and the files left are hashed together
/// ([`crate::core::hash::fnv64_many`]): a plan of a large host checks
/// thousands of files. A text without a user's block is the part that
/// counts, so its kept hash ([`FileText::hash`]) serves.
pub fn files_match(pairs: &[(&str, &FileText)]) -> Vec<bool> {
    let mut out = Vec::with_capacity(pairs.len());
    // (pair, recorded hash): whole texts, and parts before a user's block.
    let mut whole: Vec<(usize, u64, &FileText)> = Vec::new();
    let mut parts: Vec<(usize, u64, &[u8])> = Vec::new();
    for (i, (written, on_disk)) in pairs.iter().enumerate() {
        let matches = match written.strip_prefix(DIGEST_PREFIX) {
            // Read as that same digest.
            Some(_) if **on_disk == **written => true,
            Some(digest) => {
                let part = netloom_part(on_disk);
                if let Some((hash, len)) = parse_digest(digest)
                    && len == part.len()
                {
                    if part.len() == on_disk.len() {
                        whole.push((i, hash, *on_disk));
                    } else {
                        parts.push((i, hash, part.as_bytes()));
                    }
                }
                false
            }
            None => with_user_block_is(written, on_disk, on_disk),
        };
        out.push(matches);
    }
    let texts: Vec<&FileText> = whole.iter().map(|(_, _, t)| *t).collect();
    for ((i, recorded, _), hash) in whole.iter().zip(FileText::hashes(&texts)) {
        out[*i] = hash == *recorded;
    }
    let texts: Vec<&[u8]> = parts.iter().map(|(_, _, t)| *t).collect();
    let hashes = crate::core::hash::fnv64_many(&texts);
    for ((i, recorded, _), hash) in parts.iter().zip(hashes) {
        out[*i] = hash == *recorded;
    }
    out
}

/// The hash and length of a [`file_digest`] without its prefix, when it is
/// spelled exactly as [`file_digest`] spells them: comparing these with a
/// text's is comparing the digest strings, without rendering one. A digest
/// in any other spelling matches no text, as the strings would not.
fn parse_digest(digest: &str) -> Option<(u64, usize)> {
    let (hash, len) = digest.split_once(':')?;
    let canonical_hash = hash.len() == 16
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let canonical_len = !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    if !canonical_hash || !canonical_len {
        return None;
    }
    Some((u64::from_str_radix(hash, 16).ok()?, len.parse().ok()?))
}

/// Whether a file as a reading holds it was written by netloom: its text
/// starts with netloom's header, or it is the digest a long-lived reading
/// (the agent's view) keeps of a text it read that was the desired one,
/// which netloom renders with that header.
pub fn written_by_netloom(read: &str) -> bool {
    read.starts_with(FILE_MARK) || is_digest(read)
}

/// Whether `content` is a [`file_digest`] standing for a file's text
/// (what the state record keeps) rather than the text itself.
pub fn is_digest(content: &str) -> bool {
    content.starts_with(DIGEST_PREFIX)
}

/// [`is_digest_of`] of many (key, digest, text) at once: the keys of
/// those whose digest is that of their text. The texts whose length
/// matches are hashed together (see `fnv64_many`): a reading that reuses
/// a long-lived view checks every file's digest.
pub fn digests_of<'a, K: Copy + Eq + std::hash::Hash>(
    items: impl IntoIterator<Item = (K, &'a str, &'a FileText)>,
) -> std::collections::HashSet<K> {
    let candidates: Vec<(K, u64, &FileText)> = items
        .into_iter()
        .filter_map(|(k, digest, text)| {
            let (hash, len) = parse_digest(digest.strip_prefix(DIGEST_PREFIX)?)?;
            (len == text.len()).then_some((k, hash, text))
        })
        .collect();
    let texts: Vec<&FileText> = candidates.iter().map(|(_, _, t)| *t).collect();
    let hashes = FileText::hashes(&texts);
    candidates
        .iter()
        .zip(hashes)
        .filter(|((_, want, _), got)| want == got)
        .map(|((k, _, _), _)| *k)
        .collect()
}

/// [`text_digest`] of each of `texts`, those not hashed yet hashed
/// together ([`FileText::hashes`]).
pub fn file_digests(texts: &[&FileText]) -> Vec<String> {
    FileText::hashes(texts)
        .into_iter()
        .zip(texts)
        .map(|(h, t)| digest_text(h, t.len()))
        .collect()
}

/// Whether `digest` is the [`file_digest`] of `text` (the whole text, a
/// hosts file's user block included), without writing out a digest.
pub fn is_digest_of(digest: &str, text: &str) -> bool {
    digest
        .strip_prefix(DIGEST_PREFIX)
        .and_then(parse_digest)
        .is_some_and(|(hash, len)| {
            len == text.len() && hash == crate::core::hash::fnv64(text.as_bytes())
        })
}

/// The part of a file netloom writes: all of it, or for a hosts file
/// everything up to and including the user marker line.
pub fn netloom_part(on_disk: &str) -> &str {
    match find_user_marker(on_disk) {
        Some(i) => {
            let end = i + USER_MARKER.len();
            // The marker's own newline belongs to netloom's part.
            if on_disk[end..].starts_with('\n') {
                &on_disk[..end + 1]
            } else {
                &on_disk[..end]
            }
        }
        None => on_disk,
    }
}

/// Where the first [`USER_MARKER`] of `text` starts: the first `#` that
/// starts it (a byte search for `#` skips a hosts file's address lines
/// faster than a search for the whole marker).
pub fn find_user_marker(text: &str) -> Option<usize> {
    text.match_indices('#')
        .map(|(i, _)| i)
        .find(|&i| text[i..].starts_with(USER_MARKER))
}

/// The user's block of a hosts file on disk, which [`with_user_block`]
/// appends to `desired`: `None` when nothing is appended.
fn user_block<'a>(desired: &str, on_disk: Option<&'a str>) -> Option<&'a str> {
    let on_disk = on_disk?;
    // The desired text first: only a hosts file ends with the marker,
    // and a text on disk is searched only then.
    let ends_with_marker = desired
        .strip_suffix('\n')
        .is_some_and(|d| d.ends_with(USER_MARKER));
    if !ends_with_marker {
        return None;
    }
    let at = find_user_marker(on_disk)?;
    let tail = &on_disk[at + USER_MARKER.len()..];
    Some(tail.strip_prefix('\n').unwrap_or(tail))
}

/// Joins the netloom part of a hosts file with the user's block of the
/// file currently on disk.
pub fn with_user_block(desired: &str, on_disk: Option<&str>) -> String {
    match user_block(desired, on_disk) {
        Some(tail) => {
            let mut s = String::with_capacity(desired.len() + tail.len());
            s.push_str(desired);
            s.push_str(tail);
            s
        }
        None => desired.to_string(),
    }
}

/// Whether `with_user_block(desired, Some(on_disk)) == text`, without
/// building the joined text (a plan compares every file it writes).
pub fn with_user_block_is(desired: &str, on_disk: &str, text: &str) -> bool {
    let tail = user_block(desired, Some(on_disk)).unwrap_or("");
    text.len() == desired.len() + tail.len() && text.starts_with(desired) && text.ends_with(tail)
}

/// Whether `p` is a file netloom writes (used by `down`).
pub fn is_owned_file(p: &Path, state_dir: &Path) -> bool {
    p.starts_with(ETC_NETNS) || p.starts_with(state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_form_has_each_files_own_digest() {
        // More files than the hash runs side by side, of several lengths,
        // one of them a digest already.
        let mut st = State::default();
        for i in 0..11 {
            let text = format!("# netloom\n10.0.0.{i}\tc{i}\n{}", "x".repeat(i * 7));
            st.files_mut()
                .insert(format!("/etc/netns/c{i}/hosts"), text.into());
        }
        let kept = file_digest("already");
        st.files_mut().insert("/d".into(), kept.clone().into());
        let recorded = into_record_form(st.clone());
        for (path, text) in st.files.iter() {
            let want = if path == "/d" {
                kept.clone()
            } else {
                file_digest(text)
            };
            assert_eq!(*recorded.files[path], *want, "{path}");
        }
    }

    #[test]
    fn digests_checked_together_are_those_checked_alone() {
        let texts: Vec<String> = (0..13)
            .map(|i| format!("# netloom\n10.0.0.{i}\tc{i}\n{}", "y".repeat(i * 5)))
            .collect();
        // Right, wrong text of the same length, wrong length, not a digest.
        let digests: Vec<String> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| match i % 4 {
                0 => file_digest(t),
                1 => file_digest(&t.replace("c", "d")),
                2 => file_digest(&format!("{t}!")),
                _ => t.clone(),
            })
            .collect();
        let shared: Vec<FileText> = texts.iter().map(FileText::from).collect();
        let together = digests_of((0..texts.len()).map(|i| (i, digests[i].as_str(), &shared[i])));
        let alone: std::collections::HashSet<usize> = (0..texts.len())
            .filter(|&i| is_digest_of(&digests[i], &texts[i]))
            .collect();
        assert_eq!(together, alone);
        assert_eq!(alone.len(), 4);
    }

    #[test]
    fn a_digest_is_of_one_whole_text() {
        let text = "# Written by netloom\n10.0.0.2\tc1\n";
        let d = file_digest(text);
        assert!(is_digest_of(&d, text));
        // Another text of the same length, a longer one, and a text
        // that is not a digest at all.
        assert!(!is_digest_of(&d, &text.replace("c1", "c2")));
        assert!(!is_digest_of(&d, &format!("{text}# user\n")));
        assert!(!is_digest_of(text, text));
        // The digest in another spelling is not taken for it.
        assert!(!is_digest_of(&d.to_uppercase(), text));
    }

    #[test]
    fn same_as_recorded_is_equality_of_the_recorded_forms() {
        let mut a = State::default();
        a.files_mut().insert(
            "/etc/netns/web/hosts".into(),
            "127.0.0.1 localhost\n".into(),
        );
        a.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        let digested = for_record(&a);
        let cases = [
            (a.clone(), a.clone()),
            (a.clone(), digested.clone()),
            (digested.clone(), a.clone()),
            (a.clone(), {
                let mut b = a.clone();
                b.files_mut()
                    .insert("/etc/netns/web/hosts".into(), "other\n".into());
                b
            }),
            (digested.clone(), {
                let mut b = a.clone();
                b.files_mut()
                    .insert("/etc/netns/web/hosts".into(), "other\n".into());
                b
            }),
            (a.clone(), {
                let mut b = digested.clone();
                b.sysctls.clear();
                b
            }),
            (a.clone(), {
                let mut b = a.clone();
                b.files_mut()
                    .insert("/etc/netns/db/hosts".into(), "x\n".into());
                b
            }),
            // The right digest, spelled otherwise (upper-case hex).
            (a.clone(), {
                let mut b = digested.clone();
                for v in b.files_mut().values_mut() {
                    *v = v
                        .to_uppercase()
                        .replace(&DIGEST_PREFIX.to_uppercase(), DIGEST_PREFIX)
                        .into();
                }
                b
            }),
        ];
        for (x, y) in &cases {
            assert_eq!(
                same_as_recorded(x, y),
                for_record(x) == for_record(y),
                "{x:?} vs {y:?}"
            );
        }
        assert!(same_as_recorded(&a, &digested));
        assert!(!same_as_recorded(&cases[3].0, &cases[3].1));
    }

    fn resolved(text: &str) -> Desired {
        let spec = crate::core::spec::load("t.toml", text).expect("valid config");
        resolve(&spec, &Allocations::default(), &HostInfo::default()).expect("resolves")
    }

    /// A host of three networks (one dual-stack, one internal) whose
    /// containers publish `ports[i]` (TOML array items) each.
    fn ported<S: AsRef<str>>(ports: &[Vec<S>]) -> String {
        let mut t = String::from(
            "[networks.a]\nsubnet = \"10.60.0.0/24\"\n\
             [networks.b]\nsubnet = \"10.61.0.0/24\"\nsubnet6 = \"fd00:61::/64\"\n\
             [networks.c]\nsubnet = \"10.62.0.0/24\"\ninternal = true\n",
        );
        for (i, p) in ports.iter().enumerate() {
            let nets = ["[\"a\"]", "[\"b\"]", "[\"a\", \"c\"]", "[\"b\", \"a\"]"][i % 4];
            let items: Vec<String> = p.iter().map(|v| format!("\"{}\"", v.as_ref())).collect();
            t.push_str(&format!(
                "[containers.c{i}]\nnetworks = {nets}\nports = [{}]\n",
                items.join(", ")
            ));
        }
        t.push_str("[containers.l]\nnetworks = [\"a\"]\nlinks = [\"c0:zero\"]\n");
        t
    }

    /// Every part of two resolutions, compared.
    fn assert_same(a: &Desired, b: &Desired) {
        assert_eq!(a.state, b.state);
        assert_eq!(a.allocations, b.allocations);
        assert_eq!(a.networks, b.networks);
        assert_eq!(a.zones, b.zones);
        assert_eq!(a.dns_clients, b.dns_clients);
        assert_eq!(a.external_files, b.external_files);
    }

    proptest::proptest! {
        /// A file whose published ports changed resolves from the
        /// resolution before it to what resolving it whole gives: new,
        /// gone and auto-allocated host ports, ranges, loopback and IPv6
        /// host addresses (the sysctls follow), against the allocations
        /// the first one recorded.
        #[test]
        fn a_change_of_ports_only_resolves_as_the_whole_file_does(
            before in proptest::collection::vec(proptest::sample::subsequence((0..6).collect::<Vec<usize>>(), 0..4), 6),
            after in proptest::collection::vec(proptest::sample::subsequence((0..6).collect::<Vec<usize>>(), 0..4), 6),
        ) {
            // Host ports are unique per container index: files stay valid.
            let forms = |i: usize, k: usize| -> String {
                let h = 20000 + i * 100 + k * 10;
                match k {
                    0 => format!("{h}:80"),
                    1 => "81".to_string(),
                    2 => format!("127.0.0.1:{h}:82"),
                    3 => format!("{h}-{}:83-84/udp", h + 1),
                    // IPv6 host addresses need a dual-stack container.
                    4 if i % 2 == 1 => format!("[::]:{h}:85"),
                    4 => format!("{h}:85/udp"),
                    _ => format!("0.0.0.0:{h}:86/udp"),
                }
            };
            let render = |chosen: &Vec<Vec<usize>>| -> Vec<Vec<String>> {
                chosen.iter().enumerate().map(|(i, ks)| ks.iter().map(|k| forms(i, *k)).collect()).collect()
            };
            let (b, a) = (render(&before), render(&after));
            let host = HostInfo::default();
            let old = crate::core::spec::load("t.toml", &ported(&b)).expect("valid config");
            let new = crate::core::spec::load("t.toml", &ported(&a)).expect("valid config");
            let was = resolve(&old, &Allocations::default(), &host).expect("resolves");
            proptest::prop_assert!(only_ports_differ(&old, &new));
            let prev = was.allocations.clone();
            let fast = with_ports(was, &new, &prev).expect("same addresses");
            assert_same(&fast, &resolve(&new, &prev, &host).expect("resolves"));
        }
    }

    #[test]
    fn anything_but_ports_changed_is_resolved_whole() {
        let base = ported(&[vec!["8080:80"], vec![]]);
        let load = |t: &str| crate::core::spec::load("t.toml", t).expect("valid config");
        let old = load(&base);
        assert!(only_ports_differ(&old, &old));
        let changed = [
            base.replace("10.61.0.0/24", "10.63.0.0/24"),
            base.replace("[containers.c1]", "[containers.d1]"),
            base.replace("links = [\"c0:zero\"]", "links = [\"c0:nil\"]"),
            format!("{base}[containers.e]\nnetworks = [\"a\"]\n"),
            base.replace(
                "[containers.l]\n",
                "[containers.l]\nextra_hosts = [\"db:10.9.9.9\"]\n",
            ),
            format!("[settings]\nupstream_dns = [\"10.1.1.1\"]\n{base}"),
        ];
        for t in &changed {
            assert!(!only_ports_differ(&old, &load(t)), "{t}");
        }
        // Another `port_range` is a change of ports: auto-published host
        // ports may move, and nothing else does.
        let auto = ported(&[vec!["81"], vec!["8080:80"]]);
        let (a, b) = (
            load(&format!("[settings]\nport_range = \"40000-40009\"\n{auto}")),
            load(&format!("[settings]\nport_range = \"41000-41009\"\n{auto}")),
        );
        assert!(only_ports_differ(&a, &b));
        let host = HostInfo::default();
        let was = resolve(&a, &Allocations::default(), &host).expect("resolves");
        let prev = was.allocations.clone();
        let fast = with_ports(was, &b, &prev).expect("same addresses");
        let whole = resolve(&b, &prev, &host).expect("resolves");
        assert_same(&fast, &whole);
        assert!(
            whole
                .allocations
                .ports
                .values()
                .all(|p| (41000..=41009).contains(p))
        );
        // An address that would move is resolved whole too.
        let was = resolve(&old, &Allocations::default(), &HostInfo::default()).expect("resolves");
        let mut moved = was.clone();
        moved
            .allocations
            .ipv4
            .get_mut("a")
            .expect("a")
            .insert("c0".into(), Ipv4Addr::new(10, 60, 0, 99));
        assert!(with_ports(moved, &old, &was.allocations).is_none());
    }

    /// A network `n` with `count` members `c0`, `c1`, ...
    fn network_of(count: usize) -> String {
        let mut t = String::from("[networks.n]\nsubnet = \"10.50.0.0/16\"\n");
        for i in 0..count {
            t.push_str(&format!("[containers.c{i}]\nnetworks = [\"n\"]\n"));
        }
        t
    }

    #[test]
    fn small_networks_list_every_member_large_ones_rely_on_dns() {
        let small = resolved(&network_of(HOSTS_FILE_MAX_MEMBERS));
        let hosts = &small.state.files["/etc/netns/c0/hosts"];
        assert!(hosts.contains("\tc1 c1.n\n"), "{hosts}");
        assert!(hosts.contains(&format!(
            "\tc{} c{}.n\n",
            HOSTS_FILE_MAX_MEMBERS - 1,
            HOSTS_FILE_MAX_MEMBERS - 1
        )));
        let large = resolved(&network_of(HOSTS_FILE_MAX_MEMBERS + 1));
        let hosts = &large.state.files["/etc/netns/c0/hosts"];
        assert!(!hosts.contains("c1"), "{hosts}");
        assert!(hosts.contains("\tc0\n"), "own name kept: {hosts}");
        assert!(
            hosts.contains("resolved by netloom's DNS on 10.50.0.1"),
            "{hosts}"
        );
        // The zone still holds every member.
        assert_eq!(large.zones[0].members.len(), HOSTS_FILE_MAX_MEMBERS + 1);
    }

    #[test]
    fn links_stay_in_hosts_files_of_large_networks() {
        let mut t = network_of(HOSTS_FILE_MAX_MEMBERS + 1);
        t.push_str("[containers.l]\nnetworks = [\"n\"]\nlinks = [\"c7:seven\"]\n");
        let d = resolved(&t);
        let hosts = &d.state.files["/etc/netns/l/hosts"];
        assert!(hosts.contains("\tc7 seven\n"), "{hosts}");
    }

    #[test]
    fn recorded_files_are_digests_that_still_detect_edits() {
        let d = resolved(&network_of(3));
        let rec = for_record(&d.state);
        for (path, content) in d.state.files.iter() {
            let digest = &rec.files[path];
            assert!(digest.len() < 64, "{digest}");
            assert!(file_matches(digest, content));
            // Old records kept the content itself.
            assert!(file_matches(content, content));
            assert!(!file_matches(
                digest,
                &content.replace("netloom", "netlooM")
            ));
            // Every text netloom renders carries its header, so a
            // reading's digest of one stands for netloom's file.
            assert!(written_by_netloom(content), "{content}");
            assert!(written_by_netloom(digest));
            // A reading that kept the same digest of what it read.
            assert!(file_matches(digest, digest));
            assert!(!file_matches(
                digest,
                &file_digest(&content.replace("netloom", "netlooM"))
            ));
        }
        let hosts = &d.state.files["/etc/netns/c0/hosts"];
        let digest = file_digest(hosts);
        let with_user = format!("{hosts}10.9.9.9\tmine\n");
        assert!(
            file_matches(&digest, &with_user),
            "the user's block is not drift"
        );
        assert!(!file_matches(&digest, &with_user.replacen("c1", "cX", 1)));
        assert_eq!(for_record(&rec), rec, "idempotent");
    }

    #[test]
    fn colliding_veth_names_resolved_in_any_file_order() {
        let (a, b) = ("f6am7x2hmb", "meznomp9nq");
        assert_eq!(veth_name(a, "bridge"), veth_name(b, "bridge"));
        let one = resolved(&format!("[containers.{a}]\n[containers.{b}]\n"));
        let two = resolved(&format!("[containers.{b}]\n[containers.{a}]\n"));
        let names = |d: &Desired| -> Vec<String> {
            d.state
                .endpoints
                .values()
                .map(|e| e.host_veth.clone())
                .collect()
        };
        let n = names(&one);
        assert_ne!(n[0], n[1]);
        assert_eq!(n, names(&two));
        // The first in sort order keeps the plain name.
        assert_eq!(
            one.state.endpoints[&format!("{a}.eth0")].host_veth,
            veth_name(a, "bridge")
        );
    }

    /// `api` on frontend and backend, `web` on the default bridge only.
    const CONFIG: &str = r#"
[settings]
upstream_dns = ["10.99.0.2"]

[networks.frontend]
subnet = "10.10.0.0/24"

[networks.backend]
subnet = "10.20.0.0/24"

[containers.api]
networks = ["frontend", "backend"]

[containers.web]
"#;

    fn resolv_conf(agent_dns: bool, container: &str) -> String {
        let spec = crate::core::spec::load("t.toml", CONFIG).expect("valid config");
        let host = HostInfo {
            upstream_dns: Vec::new(),
            state_dir: PathBuf::from("/var/lib/netloom"),
            agent_dns,
        };
        let desired = resolve(&spec, &Allocations::default(), &host).expect("resolves");
        desired
            .state
            .files
            .get(&format!("{ETC_NETNS}/{container}/resolv.conf"))
            .map(|t| t.to_string())
            .expect("resolv.conf rendered")
    }

    fn nameservers(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("nameserver "))
            .collect()
    }

    #[test]
    fn dns_options_shape_the_hosts_file_and_resolv_conf() {
        let spec = crate::core::spec::load(
            "t.toml",
            "[networks.n]\nsubnet = \"10.5.0.0/24\"\n\
             [containers.db]\nnetworks = [\"n\"]\n\
             [containers.worker]\nnetworks = [\"n\"]\nlinks = [\"db:database\"]\n\
             hostname = \"w1\"\ndomainname = \"corp.example\"\n\
             extra_hosts = [\"legacy:192.0.2.7\", \"gw:host-gateway\"]\n\
             dns = [\"192.0.2.53\"]\ndns_search = [\"corp.example\"]\n\
             dns_options = [\"ndots:2\", \"rotate\"]\n",
        )
        .expect("valid");
        let host = HostInfo {
            upstream_dns: vec!["10.99.0.2:53".parse().expect("addr")],
            agent_dns: true,
            ..HostInfo::default()
        };
        let d = resolve(&spec, &Allocations::default(), &host).expect("resolves");
        let hosts = &d.state.files["/etc/netns/worker/hosts"];
        assert!(
            hosts.contains("10.5.0.3\tw1.corp.example w1 worker\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains("192.0.2.7\tlegacy\n10.5.0.1\tgw\n"),
            "{hosts}"
        );
        // Linked and on the same network: one line for db's address.
        assert_eq!(hosts.matches("10.5.0.2\t").count(), 1, "{hosts}");
        assert!(hosts.contains("10.5.0.2\tdb database db.n\n"), "{hosts}");
        let resolv = &d.state.files["/etc/netns/worker/resolv.conf"];
        assert_eq!(
            &**resolv,
            "# Written by netloom.\nnameserver 10.5.0.1\nnameserver 192.0.2.53\n\
             search corp.example\noptions ndots:2 timeout:1 attempts:2 rotate\n"
        );
        assert_eq!(d.dns_clients.len(), 1);
        assert_eq!(d.dns_clients[0].name, "worker");
        assert_eq!(d.dns_clients[0].hosts.len(), 2);
    }

    #[test]
    fn resolv_conf_names_the_gateway_only_while_an_agent_serves_dns() {
        // With the agent: the first DNS-enabled network's gateway (which
        // answers for both networks), then the upstream.
        assert_eq!(
            nameservers(&resolv_conf(true, "api")),
            ["10.10.0.1", "10.99.0.2"]
        );
        // Without it: only servers that answer, so lookups never wait on
        // a gateway nobody listens on.
        assert_eq!(nameservers(&resolv_conf(false, "api")), ["10.99.0.2"]);
        // The default bridge has no embedded DNS either way.
        assert_eq!(nameservers(&resolv_conf(true, "web")), ["10.99.0.2"]);
    }
}
