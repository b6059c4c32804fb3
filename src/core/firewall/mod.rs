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
//!     set subnets6          ipv6_addr (interval)     every network's subnet6
//!     set masq_subnets6     ipv6_addr (interval)     subnet6s masqueraded on the way out
//!     map dnat_any          inet_proto . inet_service : ipv4_addr . inet_service             (counter)
//!     map dnat_hostip       ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service (counter)
//!     map dnat6_any         inet_proto . inet_service : ipv6_addr . inet_service             (counter)
//!     map dnat6_hostip      ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service (counter)
//!                           one element per host port and family; comment: "PORTKEY CONTAINER NETWORK BRIDGE"
//!
//!     chain prerouting_filter  filter prerouting  dstnat - 10 (-110)  loopback guard, port counters
//!     chain prerouting_nat     nat    prerouting  dstnat (-100)       DNAT of published ports
//!     chain prerouting_mark    filter prerouting  dstnat + 10 (-90)   mark DNATed packets (DNAT_MARK)
//!     chain output_filter      filter output      -110                port counters (host-originated)
//!     chain output_nat         nat    output      -100                DNAT for the host itself (incl. 127.0.0.1)
//!     chain forward_filter     filter forward     filter (0)          isolation, internal networks
//!     chain postrouting_nat    nat    postrouting srcnat (100)        outbound and hairpin masquerade
//! }
//! table bridge netloom {                                  only while a network has icc = false or a VXLAN port
//!     set isolated_subnets  ipv4_addr (interval)
//!     set isolated_subnets6 ipv6_addr (interval)
//!     set vxlan_gateway_macs  ifname . ether_addr         VXLAN PORT . GATEWAY MAC per cluster network; comment: NETWORK
//!     set vxlan_gateway_ips   ifname . ipv4_addr          VXLAN PORT . GATEWAY per cluster network; comment: NETWORK
//!     chain forward            filter forward     filter (-200)       drop IP between members, unless DNAT_MARK
//!     chain prerouting         filter prerouting  filter (-200)       from other hosts: nothing from/to the gateway MAC, no ARP for the gateway
//!     chain postrouting        filter postrouting filter (-200)       the same towards other hosts (bridged and host-sent frames)
//! }
//! ```
//!
//! [`render`] prints the exact rules. Element comments carry what the
//! element's value cannot (port key, container, network, network flags), so
//! `host::nft::observe` can rebuild a [`Firewall`] from the kernel alone.
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
//! - `net.ipv6.conf.all.forwarding` once a network has a `subnet6`.
//!
//! # IPv6
//!
//! Both families share the chains. The `forward_filter` rules match
//! interfaces only, so isolation, `internal` and the direct-access drop hold
//! for IPv6 as they do for IPv4. Address-bearing data has one set or map per
//! family (nft sets hold one address type), and the rules that look a port
//! up without an address (`dnat_any`, `dnat6_any`) say which family they
//! serve (`meta nfproto`), so a packet of one family never hits, or counts
//! in, the other family's map. A port published on every address gets an
//! element in both maps when its container has an IPv6 address; one
//! published on `[V6ADDR]` or `[::]` gets IPv6 elements only. IPv6 has no
//! `route_localnet`: `[::1]` is not a published address (Docker without its
//! userland proxy behaves the same).
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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use ipnetwork::{Ipv4Network, Ipv6Network};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod elements;
mod parse;
mod render;
mod skeleton;
#[cfg(test)]
pub(crate) mod tests;
mod transaction;

use elements::*;
use render::*;
use skeleton::*;

pub use elements::{COMMENT_MAX, port_comment_text, required_sysctls, validate};
pub use parse::{
    Observed, Stray, counted_maps, parse_items, parse_observed, port_counters, port_counters_of,
};
pub use render::render;
pub use skeleton::DNAT_MARK;
pub use transaction::{
    ElementEdit, FwOp, PORT_EDITS_MAX, Transaction, delete_script, plan_transaction,
};

/// Name of netloom's tables (in both the `inet` and `bridge` families).
pub const TABLE: &str = "netloom";
/// The comment netloom gives the tables it creates: what tells them from a
/// hand-made `table inet netloom`, which netloom never replaces. (nft
/// 1.0.6's JSON listing omits table comments: the text listing shows it.)
pub const TABLE_MARK: &str = "netloom: managed by netloom, removed by netloom down";

/// Transport protocol of a published port.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// `tcp`.
    Tcp,
    /// `udp`.
    Udp,
    /// `sctp`.
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

impl Proto {
    /// The IP protocol number (`inet_proto`).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
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
    /// Shared between copies (changed through [`Firewall::ports_mut`]):
    /// the agent copies its desired and observed states whole, and a
    /// copy of these 2,000 entries at 1,000 containers (a few allocations
    /// each) was a third of such a copy's time.
    pub ports: Arc<BTreeMap<String, FwPort>>,
    /// Cluster mode, key: network name. Each cluster network's VXLAN port
    /// and gateway, which `table bridge netloom` keeps from crossing hosts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vxlans: BTreeMap<String, FwVxlan>,
}

impl Firewall {
    /// The published ports to change: copied first only while another
    /// copy of the firewall shares them.
    pub fn ports_mut(&mut self) -> &mut BTreeMap<String, FwPort> {
        Arc::make_mut(&mut self.ports)
    }
}

/// Cluster mode: a cluster network's VXLAN device (a port of its bridge)
/// and the gateway every host's bridge holds with the same address and
/// MAC. Nothing about the gateway may cross hosts: frames from or to the
/// gateway MAC and ARP for the gateway address are dropped on that port,
/// both ways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwVxlan {
    /// The VXLAN device.
    pub device: String,
    /// The network's gateway address.
    pub gateway: Ipv4Addr,
    /// The gateway's MAC, `aa:bb:cc:dd:ee:ff`.
    pub gateway_mac: String,
}

/// One network as the firewall sees it: its bridge, subnets and flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwNetwork {
    /// The network's bridge interface.
    pub bridge: String,
    /// The network's IPv4 subnet.
    #[serde(with = "subnet_serde")]
    pub subnet: Ipv4Network,
    /// The network's IPv6 subnet (dual stack), if any.
    #[serde(
        default,
        with = "subnet6_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub subnet6: Option<Ipv6Network>,
    /// Outbound traffic from the subnets is masqueraded.
    pub masquerade: bool,
    /// `internal = true`: nothing is forwarded between the bridge and any
    /// other interface (no way out, no published ports).
    pub internal: bool,
    /// Members may reach each other; `false` puts the subnets into
    /// `table bridge netloom`'s isolated sets.
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

/// The same for an optional IPv6 subnet.
mod subnet6_serde {
    use ipnetwork::Ipv6Network;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &Option<Ipv6Network>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => s.collect_str(n),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv6Network>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One published port (or range) of a container.
///
/// Which families it is published on follows from `host_ip` and the
/// container addresses: `None` publishes on every host address of both
/// families (IPv6 only when `container_ip6` is set); an IPv4 `host_ip`
/// publishes IPv4 only, an IPv6 one (`::` for every IPv6 address) IPv6
/// only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwPort {
    /// The container the port leads to.
    pub container: String,
    /// The network the DNAT targets are on.
    pub network: String,
    /// That network's bridge.
    pub bridge: String,
    /// None (or 0.0.0.0): every host address.
    pub host_ip: Option<IpAddr>,
    /// First host port of the range.
    pub host_port: u16,
    /// DNAT target for IPv4 clients; None when published on IPv6 only.
    #[serde(default)]
    pub container_ip: Option<Ipv4Addr>,
    /// DNAT target for IPv6 clients; None when the container has no IPv6
    /// address or the port is published on an IPv4 address only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip6: Option<Ipv6Addr>,
    /// First container port of the range; host port `host_port + i` maps to
    /// `container_port + i`.
    pub container_port: u16,
    /// Range length, 1 for a single port.
    pub count: u16,
    /// Transport protocol.
    pub proto: Proto,
}

/// Whether `fw` needs `table bridge netloom` (some network has `icc =
/// false`, or a cluster network has a VXLAN port on this host).
pub fn bridge_table_needed(fw: &Firewall) -> bool {
    fw.networks.values().any(|n| !n.icc) || !fw.vxlans.is_empty()
}

/// The (set, key) of every element `fw` puts into netloom's sets and maps,
/// keys in nft syntax as [`Stray::key`] has them.
pub fn element_keys(fw: &Firewall) -> BTreeSet<(String, String)> {
    desired_elements(fw)
        .into_keys()
        .map(|(set, key)| (set.name().to_string(), key.to_string()))
        .collect()
}

impl FwPort {
    /// (host address, container address) per family the port is published
    /// on, as a user writes them: `0.0.0.0`/`172.17.0.2`, `[::]`/`[fd00::2]`.
    pub fn mappings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(c) = self.container_ip {
            let host = match self.host_ip {
                Some(IpAddr::V4(ip)) => ip.to_string(),
                _ => "0.0.0.0".to_string(),
            };
            out.push((host, c.to_string()));
        }
        if let Some(c) = self.container_ip6 {
            let host = match self.host_ip {
                Some(IpAddr::V6(ip)) => format!("[{ip}]"),
                _ => "[::]".to_string(),
            };
            out.push((host, format!("[{c}]")));
        }
        out
    }
}
