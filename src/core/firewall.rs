//! netloom's firewall: one owned nftables table (`inet netloom`, plus
//! `bridge netloom` while some network has `icc = false`) that gives
//! container networks outbound NAT, published ports and isolation.
//!
//! # Shape: a fixed skeleton plus data in sets and maps
//!
//! The chains and rules never depend on the configuration. Everything that
//! does (bridges, subnets, published ports) lives in named sets and maps, so
//! publishing one more port is one more map element, and a converged host is
//! changed with `add element` / `delete element` only. The skeleton is
//! rewritten only when it differs from what this module renders (first run,
//! a flushed ruleset, a newer netloom); that rewrite deletes and re-creates
//! the whole table in one atomic nft transaction, so no packet ever sees half
//! a table.
//!
//! ```text
//! table inet netloom {
//!     set bridges           ifname                   every network's bridge; comment: "NETWORK masquerade=B internal=B icc=B"
//!     set intra_bridge      ifname . ifname          BRIDGE . BRIDGE per network; comment: NETWORK
//!     set internal_bridges  ifname                   bridges of internal networks
//!     set subnets           ipv4_addr (interval)     every network's subnet
//!     set masq_subnets      ipv4_addr (interval)     subnets masqueraded on the way out
//!     map dnat_any          inet_proto . inet_service : ipv4_addr . inet_service             (counter)
//!     map dnat_hostip       ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service (counter)
//!                           one element per host port; comment: "PORTKEY CONTAINER NETWORK BRIDGE"
//!
//!     chain prerouting_filter  filter prerouting  dstnat - 10 (-110)  loopback guard, port counters
//!     chain prerouting_nat     nat    prerouting  dstnat (-100)       DNAT of published ports
//!     chain prerouting_mark    filter prerouting  dstnat + 10 (-90)   mark DNATed packets (DNAT_MARK)
//!     chain output_filter      filter output      -110                port counters (host-originated)
//!     chain output_nat         nat    output      -100                DNAT for the host itself (incl. 127.0.0.1)
//!     chain forward_filter     filter forward     filter (0)          isolation, internal networks
//!     chain postrouting_nat    nat    postrouting srcnat (100)        outbound and hairpin masquerade
//! }
//! table bridge netloom {                                  only while a network has icc = false
//!     set isolated_subnets  ipv4_addr (interval)
//!     chain forward            filter forward     filter (-200)       drop IPv4 between members, unless DNAT_MARK
//! }
//! ```
//!
//! [`render`] prints the exact rules. Element comments carry what the
//! element's value cannot (port key, container, network, network flags), so
//! [`observe`] can rebuild a [`Firewall`] from the kernel alone.
//!
//! # Counters
//!
//! Every map element has its own counter (`counter` in the map declaration).
//! The nat chains look a flow up only for its first packet, so the filter
//! chains at priority -110 look up the *later* packets of DNATed flows
//! (`ct status dnat`, original direction) in the same maps; together an
//! element counts every client-to-container packet of that mapping, like
//! Docker's `iptables -nvL DOCKER`. Replies are not counted.
//!
//! # Living beside other rules
//!
//! netloom reads, writes and deletes only its own tables; it never lists or
//! flushes the ruleset. To add your own rules, use your own table: a base
//! chain on the same hook runs independently of ours (in priority order),
//! and a packet passes only if every table accepts it. So:
//! - to filter published-port traffic before netloom sees it, hook
//!   `forward` at a priority below 0 (or `prerouting` below -110);
//! - a `policy drop` forward chain elsewhere (ufw, firewalld) must accept
//!   netloom's traffic itself, e.g. `oifname "docker0" accept` or by a
//!   packet mark you set earlier;
//! - netloom ORs bit 0x10000000 ([`DNAT_MARK`]) into the packet mark of
//!   DNATed packets and leaves other bits alone; keep that bit free;
//! - do not add rules into `table inet netloom`: the next apply sees a
//!   changed skeleton and re-creates the table without them.
//!
//! # Requirements on the rest of netloom
//!
//! - the sysctls of [`required_sysctls`] (`ip_forward`, and `route_localnet`
//!   on bridges whose ports are reachable via 127.0.0.1);
//! - hairpin mode on each container's bridge port (`ip link set VETH type
//!   bridge_slave hairpin on`, Docker does the same without userland proxy):
//!   with `br_netfilter` loaded, a container's packets to its own published
//!   port come back through the port they arrived on;
//! - IPv4 only: nothing here handles IPv6 (`subnet6`).
//!
//! # Why nft text for writing
//!
//! nft 1.0.6's JSON *input* cannot declare a map with concatenated data
//! (`"map": [...]` is silently ignored and a plain set is created, and a
//! rule using it then crashes nft) and drops set comments. Reading uses
//! `nft -j list table` (its JSON output is complete); writing sends one nft
//! script to one `nft -f -`, which is atomic all the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use ipnetwork::Ipv4Network;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[cfg(test)]
pub(crate) mod tests;

/// Name of netloom's tables (in both the `inet` and `bridge` families).
pub const TABLE: &str = "netloom";

/// Transport protocol of a published port.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

impl FromStr for Proto {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            _ => bail!("unknown protocol {s:?} (expected tcp, udp or sctp)"),
        }
    }
}

/// The firewall part of the desired (or observed) state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    /// Key: network name.
    pub networks: BTreeMap<String, FwNetwork>,
    /// Key: the port's plan address, e.g. "nginx.8080/tcp", "nginx.127.0.0.1:8080/tcp".
    pub ports: BTreeMap<String, FwPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwNetwork {
    pub bridge: String,
    #[serde(with = "subnet_serde")]
    pub subnet: Ipv4Network,
    pub masquerade: bool,
    pub internal: bool,
    pub icc: bool,
}

/// ipnetwork's serde support is an optional feature the crate does not
/// enable; a subnet is (de)serialized as its "a.b.c.d/len" string.
mod subnet_serde {
    use ipnetwork::Ipv4Network;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &Ipv4Network, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Network, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwPort {
    pub container: String,
    pub network: String,
    pub bridge: String,
    /// None (or 0.0.0.0): every host address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    /// Range length, 1 for a single port.
    pub count: u16,
    pub proto: Proto,
}

// ---------------------------------------------------------------------------
// Sets and elements
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Family {
    Inet,
    Bridge,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

/// netloom's sets and maps, in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum SetId {
    Bridges,
    IntraBridge,
    InternalBridges,
    Subnets,
    MasqSubnets,
    DnatAny,
    DnatHostIp,
    IsolatedSubnets,
}

const ALL_SETS: [SetId; 8] = [
    SetId::Bridges,
    SetId::IntraBridge,
    SetId::InternalBridges,
    SetId::Subnets,
    SetId::MasqSubnets,
    SetId::DnatAny,
    SetId::DnatHostIp,
    SetId::IsolatedSubnets,
];

/// Data type of map values (both DNAT maps).
const DNAT_DATA: &str = "ipv4_addr . inet_service";

impl SetId {
    fn name(self) -> &'static str {
        match self {
            SetId::Bridges => "bridges",
            SetId::IntraBridge => "intra_bridge",
            SetId::InternalBridges => "internal_bridges",
            SetId::Subnets => "subnets",
            SetId::MasqSubnets => "masq_subnets",
            SetId::DnatAny => "dnat_any",
            SetId::DnatHostIp => "dnat_hostip",
            SetId::IsolatedSubnets => "isolated_subnets",
        }
    }

    fn family(self) -> Family {
        match self {
            SetId::IsolatedSubnets => Family::Bridge,
            _ => Family::Inet,
        }
    }

    /// Key type as nft prints it.
    fn key_type(self) -> &'static str {
        match self {
            SetId::Bridges | SetId::InternalBridges => "ifname",
            SetId::IntraBridge => "ifname . ifname",
            SetId::Subnets | SetId::MasqSubnets | SetId::IsolatedSubnets => "ipv4_addr",
            SetId::DnatAny => "inet_proto . inet_service",
            SetId::DnatHostIp => "ipv4_addr . inet_proto . inet_service",
        }
    }

    fn is_map(self) -> bool {
        matches!(self, SetId::DnatAny | SetId::DnatHostIp)
    }

    fn is_interval(self) -> bool {
        matches!(
            self,
            SetId::Subnets | SetId::MasqSubnets | SetId::IsolatedSubnets
        )
    }

    fn comment(self) -> &'static str {
        match self {
            SetId::Bridges => "bridge of every netloom network",
            SetId::IntraBridge => "forwarding within one network: BRIDGE . BRIDGE",
            SetId::InternalBridges => "bridges of internal networks",
            SetId::Subnets => "subnet of every netloom network",
            SetId::MasqSubnets => "subnets masqueraded when leaving by a non-bridge interface",
            SetId::DnatAny => "ports published on every host address",
            SetId::DnatHostIp => "ports published on one host address",
            SetId::IsolatedSubnets => "subnets of icc=false networks",
        }
    }

    fn from_name(family: &str, name: &str) -> Option<SetId> {
        ALL_SETS
            .into_iter()
            .find(|s| s.family().name() == family && s.name() == name)
    }

    /// The declaration exactly as `nft -j list table` (1.0.6) prints it,
    /// without handle and elements.
    fn expected_json(self) -> Value {
        let ty = match self.key_type().split(" . ").collect::<Vec<_>>() {
            parts if parts.len() == 1 => json!(parts[0]),
            parts => json!(parts),
        };
        let mut v = json!({
            "family": self.family().name(),
            "name": self.name(),
            "table": TABLE,
            "type": ty,
            "comment": self.comment(),
        });
        if self.is_interval() {
            v["flags"] = json!(["interval"]);
        }
        if self.is_map() {
            v["map"] = json!(DNAT_DATA);
            v["stmt"] = json!([{"counter": null}]);
        }
        v
    }
}

/// The key of one set or map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum ElemKey {
    Ifname(String),
    IfnamePair(String, String),
    Prefix(Ipv4Network),
    Port(Proto, u16),
    HostPort(Ipv4Addr, Proto, u16),
}

impl fmt::Display for ElemKey {
    /// nft syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElemKey::Ifname(n) => write!(f, "\"{}\"", quote_safe(n)),
            ElemKey::IfnamePair(a, b) => write!(f, "\"{}\" . \"{}\"", quote_safe(a), quote_safe(b)),
            ElemKey::Prefix(p) => write!(f, "{}/{}", p.network(), p.prefix()),
            ElemKey::Port(proto, port) => write!(f, "{proto} . {port}"),
            ElemKey::HostPort(ip, proto, port) => write!(f, "{ip} . {proto} . {port}"),
        }
    }
}

/// What an element holds besides its key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ElemData {
    /// Map value (DNAT target), None for plain sets.
    target: Option<(Ipv4Addr, u16)>,
    comment: String,
}

type Elements = BTreeMap<(SetId, ElemKey), ElemData>;

/// nft strings cannot contain a double quote, and comments are at most 128
/// bytes of user data in practice; names from the config never hit either,
/// but a bad key must not break the whole transaction's syntax.
fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn normalize_subnet(n: Ipv4Network) -> Ipv4Network {
    // nft stores the network address; 172.17.0.1/16 comes back as 172.17.0.0/16.
    Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n)
}

fn network_comment(name: &str, n: &FwNetwork) -> String {
    format!(
        "{name} masquerade={} internal={} icc={}",
        n.masquerade, n.internal, n.icc
    )
}

fn port_comment(key: &str, p: &FwPort) -> String {
    // Parsed from the right (see `parse_port_comment`): names cannot contain
    // spaces, the key might.
    format!("{key} {} {} {}", p.container, p.network, p.bridge)
}

fn parse_port_comment(c: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = c.rsplitn(4, ' ');
    let bridge = it.next()?;
    let network = it.next()?;
    let container = it.next()?;
    let key = it.next()?;
    Some((key, container, network, bridge))
}

/// Host-side key of each port of a mapping, with its container port.
fn port_elements(p: &FwPort) -> impl Iterator<Item = (ElemKey, (Ipv4Addr, u16))> + '_ {
    (0..p.count.max(1)).filter_map(move |i| {
        let hp = p.host_port.checked_add(i)?;
        let cp = p.container_port.checked_add(i)?;
        let key = match p.host_ip {
            Some(ip) if !ip.is_unspecified() => ElemKey::HostPort(ip, p.proto, hp),
            _ => ElemKey::Port(p.proto, hp),
        };
        Some((key, (p.container_ip, cp)))
    })
}

fn set_of(key: &ElemKey) -> SetId {
    match key {
        ElemKey::HostPort(..) => SetId::DnatHostIp,
        _ => SetId::DnatAny,
    }
}

/// Every element the desired state needs.
fn desired_elements(fw: &Firewall) -> Elements {
    let mut out = Elements::new();
    let mut put = |set: SetId, key: ElemKey, target, comment: String| {
        out.insert(
            (set, key),
            ElemData {
                target,
                comment: quote_safe(&comment),
            },
        );
    };
    for (name, n) in &fw.networks {
        let subnet = ElemKey::Prefix(normalize_subnet(n.subnet));
        put(
            SetId::Bridges,
            ElemKey::Ifname(n.bridge.clone()),
            None,
            network_comment(name, n),
        );
        put(
            SetId::IntraBridge,
            ElemKey::IfnamePair(n.bridge.clone(), n.bridge.clone()),
            None,
            name.clone(),
        );
        put(SetId::Subnets, subnet.clone(), None, name.clone());
        if n.internal {
            put(
                SetId::InternalBridges,
                ElemKey::Ifname(n.bridge.clone()),
                None,
                name.clone(),
            );
        } else if n.masquerade {
            put(SetId::MasqSubnets, subnet.clone(), None, name.clone());
        }
        if !n.icc {
            put(SetId::IsolatedSubnets, subnet, None, name.clone());
        }
    }
    for (key, p) in &fw.ports {
        let comment = port_comment(key, p);
        for (k, target) in port_elements(p) {
            put(set_of(&k), k, Some(target), comment.clone());
        }
    }
    out
}

/// Problems in a desired firewall that nft would reject or that would make
/// two objects share one element (the later one would silently win).
/// The model should refuse such a state; `plan_transaction` does not check.
pub fn validate(fw: &Firewall) -> Vec<String> {
    let mut errs = Vec::new();
    let mut owner: BTreeMap<ElemKey, &str> = BTreeMap::new();
    for (key, p) in &fw.ports {
        if p.count == 0 {
            errs.push(format!("port {key}: count is 0"));
        }
        let last = u32::from(p.host_port) + u32::from(p.count.max(1)) - 1;
        let last_c = u32::from(p.container_port) + u32::from(p.count.max(1)) - 1;
        if last > 65535 || last_c > 65535 {
            errs.push(format!("port {key}: range runs past 65535"));
        }
        if port_comment(key, p).len() > 255 {
            errs.push(format!("port {key}: names too long for an nft comment"));
        }
        if !fw.networks.contains_key(&p.network) {
            errs.push(format!("port {key}: unknown network {:?}", p.network));
        }
        for (k, _) in port_elements(p) {
            if let Some(other) = owner.insert(k.clone(), key) {
                errs.push(format!("port {key}: host port {k} is also used by {other}"));
            }
        }
    }
    // An "any address" port and a HOST_IP port on the same port clash too:
    // which DNAT applies would depend on rule order.
    for (k, key) in &owner {
        if let ElemKey::HostPort(_, proto, port) = k
            && let Some(other) = owner.get(&ElemKey::Port(*proto, *port))
        {
            errs.push(format!(
                "port {key}: host port {port}/{proto} is also used by {other}"
            ));
        }
    }
    let nets: Vec<_> = fw.networks.iter().collect();
    for (i, (a, na)) in nets.iter().enumerate() {
        for (b, nb) in &nets[i + 1..] {
            if na.subnet.overlaps(nb.subnet) {
                errs.push(format!(
                    "network {a}: subnet {} overlaps network {b}",
                    na.subnet
                ));
            }
            if na.bridge == nb.bridge {
                errs.push(format!(
                    "network {a}: bridge {} is also used by {b}",
                    na.bridge
                ));
            }
        }
    }
    for name in fw.networks.keys() {
        if name.contains(char::is_whitespace) || quote_safe(name) != *name {
            errs.push(format!(
                "network {name:?}: name not usable in an nft comment"
            ));
        }
    }
    errs
}

/// Sysctls the firewall relies on, as (key, value). The caller sets them
/// (per network namespace) before or right after applying.
pub fn required_sysctls(fw: &Firewall) -> Vec<(String, String)> {
    let mut out = BTreeSet::new();
    if !fw.networks.is_empty() {
        out.insert(("net.ipv4.ip_forward".to_string(), "1".to_string()));
    }
    for p in fw.ports.values() {
        // Reaching a port via 127.0.0.1 routes a packet with a loopback
        // source out of the bridge; the kernel allows that only with
        // route_localnet on the outgoing interface.
        let via_loopback = match p.host_ip {
            None => true,
            Some(ip) => ip.is_unspecified() || ip.is_loopback(),
        };
        if via_loopback {
            out.insert((
                format!("net.ipv4.conf.{}.route_localnet", p.bridge),
                "1".to_string(),
            ));
        }
    }
    out.into_iter().collect()
}

// ---------------------------------------------------------------------------
// The skeleton: chains and rules, as nft text and as nft's JSON listing
// ---------------------------------------------------------------------------

struct ChainDef {
    family: Family,
    name: &'static str,
    kind: &'static str,
    hook: &'static str,
    prio: i32,
    /// How the priority is written in the rendered text.
    prio_text: &'static str,
}

const CHAINS: [ChainDef; 8] = [
    ChainDef {
        family: Family::Inet,
        name: "prerouting_filter",
        kind: "filter",
        hook: "prerouting",
        prio: -110,
        prio_text: "dstnat - 10",
    },
    ChainDef {
        family: Family::Inet,
        name: "prerouting_nat",
        kind: "nat",
        hook: "prerouting",
        prio: -100,
        prio_text: "dstnat",
    },
    ChainDef {
        family: Family::Inet,
        name: "prerouting_mark",
        kind: "filter",
        hook: "prerouting",
        prio: -90,
        prio_text: "dstnat + 10",
    },
    ChainDef {
        family: Family::Inet,
        name: "output_filter",
        kind: "filter",
        hook: "output",
        prio: -110,
        prio_text: "-110",
    },
    ChainDef {
        family: Family::Inet,
        name: "output_nat",
        kind: "nat",
        hook: "output",
        prio: -100,
        prio_text: "-100",
    },
    ChainDef {
        family: Family::Inet,
        name: "forward_filter",
        kind: "filter",
        hook: "forward",
        prio: 0,
        prio_text: "filter",
    },
    ChainDef {
        family: Family::Inet,
        name: "postrouting_nat",
        kind: "nat",
        hook: "postrouting",
        prio: 100,
        prio_text: "srcnat",
    },
    ChainDef {
        family: Family::Bridge,
        name: "forward",
        kind: "filter",
        hook: "forward",
        prio: -200,
        prio_text: "filter",
    },
];

impl ChainDef {
    fn expected_json(&self) -> Value {
        json!({
            "family": self.family.name(),
            "table": TABLE,
            "name": self.name,
            "type": self.kind,
            "hook": self.hook,
            "prio": self.prio,
            "policy": "accept",
        })
    }
}

struct RuleDef {
    family: Family,
    chain: &'static str,
    text: &'static str,
    comment: &'static str,
    /// The rule's `expr` as nft 1.0.6 lists it in JSON.
    expr: Value,
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}
fn ct(key: &str) -> Value {
    json!({"ct": {"key": key}})
}
fn cmp(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}
fn fib_local() -> Value {
    cmp(
        "==",
        json!({"fib": {"result": "type", "flags": ["daddr"]}}),
        json!("local"),
    )
}
fn loopback_net() -> Value {
    json!({"prefix": {"addr": "127.0.0.0", "len": 8}})
}
fn verdict(v: &str) -> Value {
    json!({ v: null })
}
fn key_hostip() -> Value {
    json!({"concat": [payload("ip", "daddr"), meta("l4proto"), payload("th", "dport")]})
}
fn key_any() -> Value {
    json!({"concat": [meta("l4proto"), payload("th", "dport")]})
}
fn dnat_map(key: Value, map: &str) -> Value {
    json!({"dnat": {"family": "ip", "addr": {"map": {"key": key, "data": format!("@{map}")}}}})
}
fn count_hostip() -> Value {
    json!([
        cmp("==", ct("direction"), json!("original")),
        cmp("in", ct("status"), json!("dnat")),
        cmp("==", key_hostip(), json!("@dnat_hostip")),
    ])
}
fn count_any() -> Value {
    json!([
        cmp("==", ct("direction"), json!("original")),
        cmp("in", ct("status"), json!("dnat")),
        fib_local(),
        cmp("==", key_any(), json!("@dnat_any")),
    ])
}

/// Packet mark bit set on DNATed packets so the bridge table can tell a
/// published-port flow from direct traffic between containers. The text
/// rules spell it as 0x10000000.
pub const DNAT_MARK: u32 = 0x1000_0000;

const COUNT_COMMENT: &str = "count later packets of published-port flows (nat sees only the first)";
const COUNT_HOSTIP: &str =
    "ct direction original ct status dnat ip daddr . meta l4proto . th dport @dnat_hostip";
const COUNT_ANY: &str =
    "ct direction original ct status dnat fib daddr type local meta l4proto . th dport @dnat_any";
const DNAT_HOSTIP: &str = "dnat ip to ip daddr . meta l4proto . th dport map @dnat_hostip";
const DNAT_ANY: &str = "fib daddr type local dnat ip to meta l4proto . th dport map @dnat_any";

fn rules() -> Vec<RuleDef> {
    use Family::{Bridge, Inet};
    let r = |family, chain, text, comment, expr| RuleDef {
        family,
        chain,
        text,
        comment,
        expr,
    };
    vec![
        r(
            Inet,
            "prerouting_filter",
            "iifname @bridges ip daddr 127.0.0.0/8 drop",
            "route_localnet is on for bridges: containers must not reach the host's loopback",
            json!([
                cmp("==", meta("iifname"), json!("@bridges")),
                cmp("==", payload("ip", "daddr"), loopback_net()),
                verdict("drop"),
            ]),
        ),
        r(
            Inet,
            "prerouting_filter",
            COUNT_HOSTIP,
            COUNT_COMMENT,
            count_hostip(),
        ),
        r(
            Inet,
            "prerouting_filter",
            COUNT_ANY,
            COUNT_COMMENT,
            count_any(),
        ),
        r(
            Inet,
            "prerouting_mark",
            "ct status dnat meta mark set meta mark | 0x10000000",
            "tag DNATed packets for table bridge netloom (no conntrack in the bridge family)",
            json!([
                cmp("in", ct("status"), json!("dnat")),
                json!({"mangle": {"key": meta("mark"), "value": {"|": [meta("mark"), DNAT_MARK]}}}),
            ]),
        ),
        r(
            Inet,
            "prerouting_nat",
            "ip daddr 127.0.0.0/8 return",
            "127.0.0.1 is translated in output only: no access to loopback ports from the LAN",
            json!([
                cmp("==", payload("ip", "daddr"), loopback_net()),
                verdict("return")
            ]),
        ),
        r(
            Inet,
            "prerouting_nat",
            DNAT_HOSTIP,
            "ports published on one host address",
            json!([dnat_map(key_hostip(), "dnat_hostip")]),
        ),
        r(
            Inet,
            "prerouting_nat",
            DNAT_ANY,
            "ports published on every host address",
            json!([fib_local(), dnat_map(key_any(), "dnat_any")]),
        ),
        r(
            Inet,
            "output_filter",
            COUNT_HOSTIP,
            COUNT_COMMENT,
            count_hostip(),
        ),
        r(Inet, "output_filter", COUNT_ANY, COUNT_COMMENT, count_any()),
        r(
            Inet,
            "output_nat",
            DNAT_HOSTIP,
            "the host itself to a port published on one address",
            json!([dnat_map(key_hostip(), "dnat_hostip")]),
        ),
        r(
            Inet,
            "output_nat",
            DNAT_ANY,
            "the host itself to a published port, 127.0.0.1 included",
            json!([fib_local(), dnat_map(key_any(), "dnat_any")]),
        ),
        r(
            Inet,
            "forward_filter",
            "iifname . oifname @intra_bridge accept",
            "within one network (seen here when br_netfilter is loaded); icc=false is table bridge netloom's job",
            json!([
                cmp(
                    "==",
                    json!({"concat": [meta("iifname"), meta("oifname")]}),
                    json!("@intra_bridge")
                ),
                verdict("accept"),
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "iifname @internal_bridges drop",
            "internal network: nothing leaves",
            json!([
                cmp("==", meta("iifname"), json!("@internal_bridges")),
                verdict("drop")
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "oifname @internal_bridges drop",
            "internal network: nothing enters",
            json!([
                cmp("==", meta("oifname"), json!("@internal_bridges")),
                verdict("drop")
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "ct state established,related accept",
            "replies of allowed flows",
            json!([
                cmp("in", ct("state"), json!(["established", "related"])),
                verdict("accept"),
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "oifname @bridges ct status dnat accept",
            "published ports",
            json!([
                cmp("==", meta("oifname"), json!("@bridges")),
                cmp("in", ct("status"), json!("dnat")),
                verdict("accept"),
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "oifname @bridges drop",
            "isolation: other hosts and other networks reach containers only through published ports",
            json!([
                cmp("==", meta("oifname"), json!("@bridges")),
                verdict("drop")
            ]),
        ),
        r(
            Inet,
            "postrouting_nat",
            "ct status dnat ip saddr 127.0.0.0/8 masquerade",
            "host to 127.0.0.1:port: give the container a source address it can answer",
            json!([
                cmp("in", ct("status"), json!("dnat")),
                cmp("==", payload("ip", "saddr"), loopback_net()),
                verdict("masquerade"),
            ]),
        ),
        r(
            Inet,
            "postrouting_nat",
            "ct status dnat oifname @bridges ip saddr @subnets masquerade",
            "hairpin: a container to a published port via a host address",
            json!([
                cmp("in", ct("status"), json!("dnat")),
                cmp("==", meta("oifname"), json!("@bridges")),
                cmp("==", payload("ip", "saddr"), json!("@subnets")),
                verdict("masquerade"),
            ]),
        ),
        r(
            Inet,
            "postrouting_nat",
            "oifname != @bridges ip saddr @masq_subnets masquerade",
            "outbound: containers leave with the host's address",
            json!([
                cmp("!=", meta("oifname"), json!("@bridges")),
                cmp("==", payload("ip", "saddr"), json!("@masq_subnets")),
                verdict("masquerade"),
            ]),
        ),
        r(
            Bridge,
            "forward",
            "meta mark & 0x10000000 == 0x10000000 accept",
            "published ports stay reachable: br_netfilter bridges a DNATed flow to a neighbour",
            json!([
                cmp(
                    "==",
                    json!({"&": [meta("mark"), DNAT_MARK]}),
                    json!(DNAT_MARK)
                ),
                verdict("accept"),
            ]),
        ),
        r(
            Bridge,
            "forward",
            "ip saddr @isolated_subnets ip daddr @isolated_subnets drop",
            "icc=false: members of one network cannot reach each other",
            json!([
                cmp("==", payload("ip", "saddr"), json!("@isolated_subnets")),
                cmp("==", payload("ip", "daddr"), json!("@isolated_subnets")),
                verdict("drop"),
            ]),
        ),
    ]
}

impl RuleDef {
    fn expected_json(&self) -> Value {
        json!({
            "family": self.family.name(),
            "table": TABLE,
            "chain": self.chain,
            "comment": self.comment,
            "expr": self.expr,
        })
    }
}

// ---------------------------------------------------------------------------
// Rendering (canonical text; also the script that creates the tables)
// ---------------------------------------------------------------------------

fn elem_text(key: &ElemKey, d: &ElemData) -> String {
    let mut s = format!("{key} comment \"{}\"", d.comment);
    if let Some((ip, port)) = d.target {
        let _ = write!(s, " : {ip} . {port}");
    }
    s
}

/// One table in nft syntax, elements one per line in a stable order, so a
/// unified diff of two renderings shows exactly the changed elements.
fn render_table(family: Family, elements: &Elements) -> String {
    let mut s = format!("table {} {TABLE} {{\n", family.name());
    for set in ALL_SETS.into_iter().filter(|s| s.family() == family) {
        let kw = if set.is_map() { "map" } else { "set" };
        let _ = writeln!(s, "\t{kw} {} {{", set.name());
        if set.is_map() {
            let _ = writeln!(s, "\t\ttype {} : {DNAT_DATA}", set.key_type());
        } else {
            let _ = writeln!(s, "\t\ttype {}", set.key_type());
        }
        if set.is_interval() {
            s.push_str("\t\tflags interval\n");
        }
        if set.is_map() {
            s.push_str("\t\tcounter\n");
        }
        let _ = writeln!(s, "\t\tcomment \"{}\"", set.comment());
        let mut elems = elements
            .range((set, ElemKey::Ifname(String::new()))..)
            .peekable();
        if elems.peek().is_some_and(|((sid, _), _)| *sid == set) {
            s.push_str("\t\telements = {\n");
            for ((_, key), d) in elems.take_while(|((sid, _), _)| *sid == set) {
                let _ = writeln!(s, "\t\t\t{},", elem_text(key, d));
            }
            s.push_str("\t\t}\n");
        }
        s.push_str("\t}\n\n");
    }
    let rules = rules();
    for c in CHAINS.iter().filter(|c| c.family == family) {
        let _ = writeln!(s, "\tchain {} {{", c.name);
        let _ = writeln!(
            s,
            "\t\ttype {} hook {} priority {}; policy accept;",
            c.kind, c.hook, c.prio_text
        );
        for r in rules
            .iter()
            .filter(|r| r.family == family && r.chain == c.name)
        {
            let _ = writeln!(s, "\t\t{} comment \"{}\"", r.text, r.comment);
        }
        s.push_str("\t}\n\n");
    }
    // Drop the blank line before the closing brace.
    s.truncate(s.trim_end().len());
    s.push_str("\n}\n");
    s
}

fn elements_of(elements: &Elements, family: Family) -> Elements {
    elements
        .iter()
        .filter(|((set, _), _)| set.family() == family)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn needs_bridge_table(elements: &Elements) -> bool {
    elements
        .keys()
        .any(|(set, _)| set.family() == Family::Bridge)
}

/// Canonical nft text of the desired table(s), stable for plan diffs.
pub fn render(fw: &Firewall) -> String {
    let elements = desired_elements(fw);
    let mut s = render_table(Family::Inet, &elements_of(&elements, Family::Inet));
    if needs_bridge_table(&elements) {
        s.push('\n');
        s.push_str(&render_table(
            Family::Bridge,
            &elements_of(&elements, Family::Bridge),
        ));
    }
    s
}

// ---------------------------------------------------------------------------
// Observing
// ---------------------------------------------------------------------------

/// netloom's tables as found in the kernel.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The firewall rebuilt from element comments.
    pub fw: Firewall,
    /// Canonical text of what is there (same format as [`render`]; when the
    /// skeleton differs, its chains are replaced by a comment per problem).
    pub text: String,
    /// Chains, rules and set declarations exactly as netloom renders them.
    pub skeleton_ok: bool,
    /// Why the skeleton is not ok, for drift reports.
    pub problems: Vec<String>,
    /// Version of nft that produced the listing.
    pub nft_version: Option<String>,
    inet: Option<TableState>,
    bridge: Option<TableState>,
    elements: Elements,
    counters: BTreeMap<(SetId, ElemKey), (u64, u64)>,
}

#[derive(Clone, Debug, Default)]
struct TableState {
    skeleton_ok: bool,
}

impl Observed {
    /// Whether `table inet netloom` exists.
    pub fn inet_present(&self) -> bool {
        self.inet.is_some()
    }
    /// Whether `table bridge netloom` exists.
    pub fn bridge_present(&self) -> bool {
        self.bridge.is_some()
    }
    /// Number of set and map elements found.
    pub fn element_count(&self) -> usize {
        self.elements.len()
    }
}

/// Packets and bytes per port key (client-to-container direction), summed
/// over the elements of a port range.
pub fn port_counters(observed: &Observed) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (k, (p, b)) in &observed.counters {
        let Some(d) = observed.elements.get(k) else {
            continue;
        };
        let Some((key, ..)) = parse_port_comment(&d.comment) else {
            continue;
        };
        let e = out.entry(key.to_string()).or_default();
        e.0 += p;
        e.1 += b;
    }
    out
}

/// `obj` without `fields`; copies only what is kept (a set's thousands of
/// elements are not cloned just to be thrown away).
fn strip(obj: &Value, fields: &[&str]) -> Value {
    match obj.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !fields.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => obj.clone(),
    }
}

fn as_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

fn port_num(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn proto_val(v: &Value) -> Option<Proto> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => match n.as_u64()? {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        },
        _ => None,
    }
}

fn ipv4_val(v: &Value) -> Option<Ipv4Addr> {
    v.as_str()?.parse().ok()
}

fn concat_parts(v: &Value) -> Option<&Vec<Value>> {
    v.get("concat")?.as_array()
}

fn parse_key(set: SetId, v: &Value) -> Option<ElemKey> {
    match set {
        SetId::Bridges | SetId::InternalBridges => Some(ElemKey::Ifname(v.as_str()?.to_string())),
        SetId::IntraBridge => match concat_parts(v)?.as_slice() {
            [a, b] => Some(ElemKey::IfnamePair(
                a.as_str()?.to_string(),
                b.as_str()?.to_string(),
            )),
            _ => None,
        },
        SetId::Subnets | SetId::MasqSubnets | SetId::IsolatedSubnets => {
            if let Some(p) = v.get("prefix") {
                let addr = ipv4_val(p.get("addr")?)?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                Ipv4Network::new(addr, len).ok().map(ElemKey::Prefix)
            } else if let Some(ip) = ipv4_val(v) {
                // A /32 is listed as a bare address.
                Ipv4Network::new(ip, 32).ok().map(ElemKey::Prefix)
            } else {
                None
            }
        }
        SetId::DnatAny => match concat_parts(v)?.as_slice() {
            [proto, port] => Some(ElemKey::Port(proto_val(proto)?, port_num(port)?)),
            _ => None,
        },
        SetId::DnatHostIp => match concat_parts(v)?.as_slice() {
            [ip, proto, port] => Some(ElemKey::HostPort(
                ipv4_val(ip)?,
                proto_val(proto)?,
                port_num(port)?,
            )),
            _ => None,
        },
    }
}

fn parse_target(v: &Value) -> Option<(Ipv4Addr, u16)> {
    match concat_parts(v)?.as_slice() {
        [ip, port] => Some((ipv4_val(ip)?, port_num(port)?)),
        _ => None,
    }
}

struct RawElem<'a> {
    key: &'a Value,
    comment: String,
    counter: Option<(u64, u64)>,
    data: Option<&'a Value>,
}

/// One entry of a set's `elem` list: `KEY`, `{"elem": {"val": KEY, ...}}`,
/// or for maps `[KEY_OR_ELEM, DATA]`.
fn raw_elem(v: &Value) -> RawElem<'_> {
    let (k, data) = match v.as_array().map(Vec::as_slice) {
        Some([k, d]) => (k, Some(d)),
        _ => (v, None),
    };
    match k.get("elem") {
        Some(e) => RawElem {
            key: e.get("val").unwrap_or(&Value::Null),
            comment: as_str(e, "comment").unwrap_or_default().to_string(),
            counter: e
                .get("counter")
                .and_then(|c| Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?))),
            data,
        },
        None => RawElem {
            key: k,
            comment: String::new(),
            counter: None,
            data,
        },
    }
}

/// The pure part of [`observe`]: parse `nft -j list table` output (one
/// document, or the `nftables` arrays of both tables concatenated).
pub fn parse_observed(json_text: &str) -> Result<Observed> {
    let doc: Value = serde_json::from_str(json_text).context("nft printed invalid JSON")?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("nft JSON has no \"nftables\" array"))?;
    Ok(parse_items(items))
}

/// Builds the observed state from the items of `nft -j list table` output.
pub fn parse_items(items: &[Value]) -> Observed {
    let mut o = Observed::default();
    let mut problems: BTreeMap<Family, Vec<String>> = BTreeMap::new();
    let mut seen_sets = BTreeSet::new();
    let mut seen_chains = BTreeSet::new();
    let mut found_rules: BTreeMap<(Family, String), Vec<Value>> = BTreeMap::new();
    let family_of = |v: &Value| match as_str(v, "family") {
        Some("inet") => Some(Family::Inet),
        Some("bridge") => Some(Family::Bridge),
        _ => None,
    };

    for item in items {
        let Some((kind, body)) = item.as_object().and_then(|m| m.iter().next()) else {
            continue;
        };
        if kind == "metainfo" {
            o.nft_version = as_str(body, "version").map(str::to_string);
            continue;
        }
        let table = as_str(body, "table").or(if kind == "table" {
            as_str(body, "name")
        } else {
            None
        });
        let Some(family) = family_of(body).filter(|_| table == Some(TABLE)) else {
            // Not ours: observe() lists only our tables, so this is a caller's
            // document with extra content; ignore it rather than judge it.
            continue;
        };
        let probs = problems.entry(family).or_default();
        match kind.as_str() {
            "table" => match family {
                Family::Inet => o.inet = Some(TableState::default()),
                Family::Bridge => o.bridge = Some(TableState::default()),
            },
            "set" | "map" => {
                let name = as_str(body, "name").unwrap_or_default();
                let Some(set) = SetId::from_name(family.name(), name) else {
                    probs.push(format!("unexpected {kind} {name}"));
                    continue;
                };
                seen_sets.insert(set);
                if strip(body, &["handle", "elem"]) != set.expected_json() {
                    probs.push(format!("{kind} {name}: declaration differs"));
                }
                for e in body
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let raw = raw_elem(e);
                    let key = parse_key(set, raw.key);
                    let target = raw.data.and_then(parse_target);
                    match key {
                        Some(key) if set.is_map() == target.is_some() => {
                            if let Some(c) = raw.counter {
                                o.counters.insert((set, key.clone()), c);
                            }
                            o.elements.insert(
                                (set, key),
                                ElemData {
                                    target,
                                    comment: raw.comment,
                                },
                            );
                        }
                        // An element we cannot express could never be
                        // deleted by an element diff: rebuild instead.
                        _ => probs.push(format!("{kind} {name}: unrecognised element {e}")),
                    }
                }
            }
            "chain" => {
                let name = as_str(body, "name").unwrap_or_default();
                match CHAINS.iter().find(|c| c.family == family && c.name == name) {
                    Some(c) => {
                        seen_chains.insert((family, name.to_string()));
                        if strip(body, &["handle"]) != c.expected_json() {
                            probs.push(format!("chain {name}: type, hook or priority differs"));
                        }
                    }
                    None => probs.push(format!("unexpected chain {name}")),
                }
            }
            "rule" => {
                let chain = as_str(body, "chain").unwrap_or_default().to_string();
                found_rules
                    .entry((family, chain))
                    .or_default()
                    .push(strip(body, &["handle"]));
            }
            other => probs.push(format!("unexpected {other} object")),
        }
    }

    let rules = rules();
    for (family, state) in [(Family::Inet, &mut o.inet), (Family::Bridge, &mut o.bridge)] {
        let Some(state) = state else { continue };
        let probs = problems.entry(family).or_default();
        for set in ALL_SETS.into_iter().filter(|s| s.family() == family) {
            if !seen_sets.contains(&set) {
                probs.push(format!("set {} missing", set.name()));
            }
        }
        for c in CHAINS.iter().filter(|c| c.family == family) {
            if !seen_chains.contains(&(family, c.name.to_string())) {
                probs.push(format!("chain {} missing", c.name));
                continue;
            }
            let want: Vec<Value> = rules
                .iter()
                .filter(|r| r.family == family && r.chain == c.name)
                .map(RuleDef::expected_json)
                .collect();
            let have = found_rules
                .remove(&(family, c.name.to_string()))
                .unwrap_or_default();
            if have != want {
                probs.push(format!(
                    "chain {}: rules differ ({} found, {} expected)",
                    c.name,
                    have.len(),
                    want.len()
                ));
            }
        }
        state.skeleton_ok = probs.is_empty();
    }
    for ((family, chain), _) in found_rules {
        if CHAINS.iter().any(|c| c.family == family && c.name == chain) {
            continue;
        }
        problems
            .entry(family)
            .or_default()
            .push(format!("rules in unexpected chain {chain}"));
    }
    if let Some(st) = &mut o.inet {
        st.skeleton_ok &= problems.get(&Family::Inet).is_none_or(Vec::is_empty);
    }
    if let Some(st) = &mut o.bridge {
        st.skeleton_ok &= problems.get(&Family::Bridge).is_none_or(Vec::is_empty);
    }

    o.skeleton_ok = o.inet.as_ref().is_some_and(|s| s.skeleton_ok)
        && o.bridge.as_ref().is_none_or(|s| s.skeleton_ok);
    if o.inet.is_none() {
        problems
            .entry(Family::Inet)
            .or_default()
            .push("table missing".to_string());
    }
    o.problems = problems
        .into_iter()
        .flat_map(|(f, ps)| {
            ps.into_iter()
                .map(move |p| format!("table {} {TABLE}: {p}", f.name()))
        })
        .collect();
    o.fw = firewall_from_elements(&o.elements);
    o.text = observed_text(&o);
    o
}

fn observed_text(o: &Observed) -> String {
    let mut out = String::new();
    for (family, state) in [(Family::Inet, &o.inet), (Family::Bridge, &o.bridge)] {
        let Some(state) = state else { continue };
        if !out.is_empty() {
            out.push('\n');
        }
        let els = elements_of(&o.elements, family);
        if state.skeleton_ok {
            out.push_str(&render_table(family, &els));
        } else {
            // Only the data can be shown faithfully; the skeleton is summed
            // up by its problems, so a diff against `render` shows the whole
            // skeleton as changed (which is what apply will do).
            let _ = writeln!(out, "table {} {TABLE} {{", family.name());
            let prefix = format!("table {} {TABLE}: ", family.name());
            for p in o.problems.iter().filter_map(|p| p.strip_prefix(&prefix)) {
                let _ = writeln!(out, "\t# skeleton differs: {p}");
            }
            for ((set, key), d) in &els {
                let _ = writeln!(out, "\t# element {} {}", set.name(), elem_text(key, d));
            }
            out.push_str("}\n");
        }
    }
    out
}

fn firewall_from_elements(elements: &Elements) -> Firewall {
    let mut fw = Firewall::default();
    let subnet_of: BTreeMap<&str, Ipv4Network> = elements
        .iter()
        .filter_map(|((set, key), d)| match (set, key) {
            (SetId::Subnets, ElemKey::Prefix(p)) => Some((d.comment.as_str(), *p)),
            _ => None,
        })
        .collect();
    for ((set, key), d) in elements {
        match (set, key) {
            (SetId::Bridges, ElemKey::Ifname(bridge)) => {
                let mut words = d.comment.split_whitespace();
                let Some(name) = words.next() else { continue };
                let Some(subnet) = subnet_of.get(name) else {
                    continue;
                };
                let mut n = FwNetwork {
                    bridge: bridge.clone(),
                    subnet: *subnet,
                    masquerade: true,
                    internal: false,
                    icc: true,
                };
                for w in words {
                    match w.split_once('=') {
                        Some(("masquerade", v)) => n.masquerade = v == "true",
                        Some(("internal", v)) => n.internal = v == "true",
                        Some(("icc", v)) => n.icc = v == "true",
                        _ => {}
                    }
                }
                fw.networks.insert(name.to_string(), n);
            }
            (SetId::DnatAny | SetId::DnatHostIp, key) => {
                let (Some((pkey, container, network, bridge)), Some((cip, cport))) =
                    (parse_port_comment(&d.comment), d.target)
                else {
                    continue;
                };
                let (host_ip, proto, hport) = match key {
                    ElemKey::HostPort(ip, proto, port) => (Some(*ip), *proto, *port),
                    ElemKey::Port(proto, port) => (None, *proto, *port),
                    _ => continue,
                };
                let p = fw.ports.entry(pkey.to_string()).or_insert(FwPort {
                    container: container.to_string(),
                    network: network.to_string(),
                    bridge: bridge.to_string(),
                    host_ip,
                    host_port: hport,
                    container_ip: cip,
                    container_port: cport,
                    count: 0,
                    proto,
                });
                // Elements come in key order, so the first one of a range is
                // its lowest host port.
                p.count = p.count.saturating_add(1);
            }
            _ => {}
        }
    }
    fw
}

// ---------------------------------------------------------------------------
// Planning and applying
// ---------------------------------------------------------------------------

/// One kernel operation of a [`Transaction`], for plan listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FwOp {
    /// Delete (if present) and create the table with every element.
    RebuildTable {
        family: String,
    },
    DeleteTable {
        family: String,
    },
    AddElement {
        family: String,
        set: String,
        element: String,
        /// The element comment: port key or network it belongs to.
        owner: String,
    },
    DeleteElement {
        family: String,
        set: String,
        element: String,
        owner: String,
    },
}

/// The minimal change from the observed to the desired firewall, applied as
/// one atomic nft transaction.
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    script: String,
    ops: Vec<FwOp>,
    rebuilt: Vec<Family>,
    added: usize,
    removed: usize,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.script.is_empty()
    }
    /// Set/map elements written (on a rebuild: every element of the table).
    pub fn elements_added(&self) -> usize {
        self.added
    }
    /// Set/map elements deleted (on a rebuild: those the old table held).
    pub fn elements_removed(&self) -> usize {
        self.removed
    }
    /// Whether a table is (re)created rather than edited element-wise.
    pub fn full_rebuild(&self) -> bool {
        !self.rebuilt.is_empty()
    }
    pub fn ops(&self) -> &[FwOp] {
        &self.ops
    }
    /// The nft script given to `nft -f -`.
    pub fn script(&self) -> &str {
        &self.script
    }
    /// JSON for `plan --format json`: counts, operations and the script.
    /// (Not an `nft -j` document: nft 1.0.6 cannot read back concatenated
    /// map types from JSON, see the module doc.)
    pub fn to_json(&self) -> String {
        json!({
            "full_rebuild": self.full_rebuild(),
            "elements_added": self.added,
            "elements_removed": self.removed,
            "ops": self.ops,
            "nft_script": self.script,
        })
        .to_string()
    }
}

fn rebuild(tx: &mut Transaction, family: Family, desired: &Elements, observed: Option<&Observed>) {
    let fam = family.name();
    // `add` first so `delete` cannot fail on a table that vanished since
    // it was observed.
    let _ = writeln!(
        tx.script,
        "add table {fam} {TABLE}\ndelete table {fam} {TABLE}"
    );
    tx.script.push_str(&render_table(family, desired));
    tx.ops.push(FwOp::RebuildTable {
        family: fam.to_string(),
    });
    for ((set, key), d) in desired {
        tx.ops.push(FwOp::AddElement {
            family: fam.to_string(),
            set: set.name().to_string(),
            element: elem_text(key, d),
            owner: d.comment.clone(),
        });
    }
    tx.rebuilt.push(family);
    tx.added += desired.len();
    tx.removed += observed.map_or(0, |o| elements_of(&o.elements, family).len());
}

fn diff_elements(tx: &mut Transaction, desired: &Elements, observed: &Elements) {
    let mut dels: BTreeMap<SetId, Vec<(&ElemKey, &ElemData)>> = BTreeMap::new();
    let mut adds: BTreeMap<SetId, Vec<(&ElemKey, &ElemData)>> = BTreeMap::new();
    for ((set, key), d) in desired {
        match observed.get(&(*set, key.clone())) {
            Some(o) if o == d => {}
            Some(o) => {
                // A changed value or comment: replace the element.
                dels.entry(*set).or_default().push((key, o));
                adds.entry(*set).or_default().push((key, d));
            }
            None => adds.entry(*set).or_default().push((key, d)),
        }
    }
    for ((set, key), o) in observed {
        if !desired.contains_key(&(*set, key.clone())) {
            dels.entry(*set).or_default().push((key, o));
        }
    }
    // Deletions first: a replaced element or a subnet that shrank must be
    // gone before its successor is added.
    for (set, list) in &dels {
        let fam = set.family().name();
        let keys: Vec<String> = list.iter().map(|(k, _)| k.to_string()).collect();
        let _ = writeln!(
            tx.script,
            "delete element {fam} {TABLE} {} {{ {} }}",
            set.name(),
            keys.join(", ")
        );
        for (k, d) in list {
            tx.ops.push(FwOp::DeleteElement {
                family: fam.to_string(),
                set: set.name().to_string(),
                element: elem_text(k, d),
                owner: d.comment.clone(),
            });
        }
        tx.removed += list.len();
    }
    for (set, list) in &adds {
        let fam = set.family().name();
        let elems: Vec<String> = list.iter().map(|(k, d)| elem_text(k, d)).collect();
        let _ = writeln!(
            tx.script,
            "add element {fam} {TABLE} {} {{ {} }}",
            set.name(),
            elems.join(", ")
        );
        for (k, d) in list {
            tx.ops.push(FwOp::AddElement {
                family: fam.to_string(),
                set: set.name().to_string(),
                element: elem_text(k, d),
                owner: d.comment.clone(),
            });
        }
        tx.added += list.len();
    }
}

/// The minimal transaction from `observed` to `desired`: a table whose
/// skeleton is missing or differs is re-created whole; otherwise only
/// elements are added and deleted. Pure.
pub fn plan_transaction(desired: &Firewall, observed: Option<&Observed>) -> Transaction {
    let want = desired_elements(desired);
    let mut tx = Transaction::default();

    let want_inet = elements_of(&want, Family::Inet);
    match observed.and_then(|o| o.inet.as_ref().map(|s| (o, s))) {
        Some((o, s)) if s.skeleton_ok => {
            diff_elements(&mut tx, &want_inet, &elements_of(&o.elements, Family::Inet));
        }
        _ => rebuild(&mut tx, Family::Inet, &want_inet, observed),
    }

    let want_bridge = elements_of(&want, Family::Bridge);
    let have_bridge = observed.and_then(|o| o.bridge.as_ref().map(|s| (o, s)));
    match (needs_bridge_table(&want), have_bridge) {
        (true, Some((o, s))) if s.skeleton_ok => {
            diff_elements(
                &mut tx,
                &want_bridge,
                &elements_of(&o.elements, Family::Bridge),
            );
        }
        (true, _) => rebuild(&mut tx, Family::Bridge, &want_bridge, observed),
        (false, Some((o, _))) => {
            let _ = writeln!(
                tx.script,
                "add table bridge {TABLE}\ndelete table bridge {TABLE}"
            );
            tx.ops.push(FwOp::DeleteTable {
                family: "bridge".to_string(),
            });
            tx.removed += elements_of(&o.elements, Family::Bridge).len();
        }
        (false, None) => {}
    }
    tx
}

/// The script that deletes netloom's tables that `o` shows present (for
/// `netloom down`), in one transaction. Other tables are not touched.
pub fn delete_script(o: &Observed) -> String {
    let mut script = String::new();
    for (family, present) in [("inet", o.inet.is_some()), ("bridge", o.bridge.is_some())] {
        if present {
            let _ = writeln!(
                script,
                "add table {family} {TABLE}\ndelete table {family} {TABLE}"
            );
        }
    }
    script
}
