//! `diff(desired, observed) -> Plan`: the typed, ordered list of changes
//! that makes the host match the file, and the drift since the last apply.
//!
//! Pure: the kernel, nft and files are read by `host::observe` and changed
//! by `host::apply`; everything in between is here and is tested with
//! hand-built observed states (`tests/plans/`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::core::firewall::{Firewall, FwPort};
use crate::core::model::{self, Bridge, Endpoint, Namespace, NsRef, State};

mod drift;
mod endpoint;
mod files;
mod firewall;
mod half_made;
mod hold;
mod netns;
mod network;
#[cfg(test)]
mod reference;
mod resource;
mod sysctl;
mod values;
mod vxlan;

pub use drift::drift;
pub use endpoint::without_veths_of_deleted_namespaces;
use endpoint::*;
pub use files::unified;
use files::*;
use firewall::*;
use half_made::*;
pub use hold::{Failure, NFT_TABLE, file_owner, hold_back};
use netns::*;
use network::*;
use resource::*;
use sysctl::*;
use vxlan::*;

/// What happens to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `+`: the object does not exist yet.
    Create,
    /// `~`: changed in place.
    Update,
    /// `-/+`: destroyed and created again (an attribute that cannot be
    /// changed in place differs).
    Replace,
    /// `-`: the file no longer wants it.
    Delete,
}

impl Action {
    /// The plan listing's prefix: `+`, `~`, `-/+` or `-`.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
}

/// One kernel, firewall or file operation, in the order it runs.
///
/// `netns: None` means the host's namespace. Each operation prints as the
/// equivalent `ip`/`nft`/shell command (its `Display`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Set a host sysctl.
    Sysctl {
        /// Dotted name, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// The value written.
        value: String,
    },
    /// Create a bridge and mark it as netloom's.
    CreateBridge {
        /// Interface name.
        name: String,
        /// The network's MTU.
        mtu: u32,
        /// The `ifalias` mark ([`model::bridge_alias`]).
        alias: String,
    },
    /// Delete an interface (for a veth, both ends go).
    DeleteLink {
        /// Where the interface is.
        netns: Option<NsRef>,
        /// Interface name.
        name: String,
    },
    /// Set an interface administratively up.
    LinkUp {
        /// Where the interface is.
        netns: Option<NsRef>,
        /// Interface name.
        name: String,
    },
    /// Change an interface's MTU.
    SetMtu {
        /// Where the interface is.
        netns: Option<NsRef>,
        /// Interface name.
        name: String,
        /// The new MTU.
        mtu: u32,
    },
    /// Enslave a host-side interface to a bridge.
    SetMaster {
        /// The port (a veth's host end, a VXLAN device).
        name: String,
        /// The bridge.
        bridge: String,
    },
    /// Turn IPv6 on or off on a container's interface
    /// (`net.ipv6.conf.<dev>.disable_ipv6` inside its namespace): off on
    /// an IPv4-only network's interface found with an address or a route
    /// from a router advertisement (which another container on the bridge
    /// can send, Docker's CVE-2024-32473), on again when its network
    /// gains an IPv6 subnet.
    SetIpv6 {
        /// The container's namespace.
        netns: NsRef,
        /// The interface inside it.
        dev: String,
        /// IPv6 on (a dual-stack network) or off.
        on: bool,
    },
    /// Turn hairpin mode on for a bridge port.
    SetHairpin {
        /// The bridge port (a veth's host end).
        name: String,
    },
    /// Change an interface's MAC.
    SetMac {
        /// Where the interface is.
        netns: Option<NsRef>,
        /// Interface name.
        name: String,
        /// `aa:bb:cc:dd:ee:ff`.
        mac: String,
    },
    /// Add an address to an interface.
    AddAddr {
        /// Where the interface is.
        netns: Option<NsRef>,
        /// Interface name.
        dev: String,
        /// `address/prefix`.
        addr: String,
    },
    /// Remove an address from an interface.
    DelAddr {
        /// Where the interface is.
        netns: Option<NsRef>,
        /// Interface name.
        dev: String,
        /// `address/prefix`.
        addr: String,
    },
    /// Create the named namespace `/run/netns/NAME`.
    CreateNetns {
        /// The namespace's name.
        name: String,
    },
    /// Delete a namespace netloom created (never an attached one).
    DeleteNetns {
        /// The namespace's name.
        name: String,
    },
    /// Create a veth pair, the peer moved into the container's namespace,
    /// and mark the host end as netloom's.
    CreateVeth {
        /// Host-side name ([`model::veth_name`]).
        host: String,
        /// Name inside the namespace, `ethN`.
        peer: String,
        /// The container's namespace.
        netns: NsRef,
        /// The peer's MAC.
        mac: String,
        /// MTU of both ends.
        mtu: u32,
        /// The host end's `ifalias` mark ([`model::veth_alias`]).
        alias: String,
    },
    /// Add a default route inside a container.
    AddDefaultRoute {
        /// The container's namespace.
        netns: NsRef,
        /// The interface the gateway is reached by.
        dev: String,
        /// IPv4 or IPv6 gateway: the family of the route.
        gateway: IpAddr,
    },
    /// Remove a default route inside a container.
    DelDefaultRoute {
        /// The container's namespace.
        netns: NsRef,
        /// The route's gateway (and family).
        gateway: IpAddr,
    },
    /// Part of the apply's single nft transaction.
    Nft {
        /// What the transaction does for this change, in words (the script
        /// itself is the firewall transaction's).
        what: String,
    },
    /// Cluster mode: a VXLAN device (no learning, ARP/ND proxy), admin
    /// down, no master.
    CreateVxlan {
        /// Interface name ([`crate::core::cluster::vxlan_name`]).
        name: String,
        /// The network's VXLAN id.
        vni: u32,
        /// This host's underlay address.
        local: std::net::Ipv4Addr,
        /// UDP destination port.
        port: u16,
        /// The network's MTU.
        mtu: u32,
        /// The `ifalias` mark ([`model::vxlan_alias`]).
        alias: String,
    },
    /// A static forwarding entry of a VXLAN device (appended: the all-zero
    /// MAC has one entry per remote host).
    AddFdb {
        /// The VXLAN device.
        dev: String,
        /// `aa:bb:cc:dd:ee:ff`; all zeros for broadcast and unknown unicast.
        mac: String,
        /// Underlay address of the host behind it.
        dst: std::net::Ipv4Addr,
    },
    /// Remove a forwarding entry of a VXLAN device.
    DelFdb {
        /// The VXLAN device.
        dev: String,
        /// The entry's MAC.
        mac: String,
        /// The entry's underlay address.
        dst: std::net::Ipv4Addr,
    },
    /// A permanent neighbour entry on a VXLAN device, which its ARP/ND
    /// proxy answers with (replaces an entry for the same address).
    AddNeigh {
        /// The VXLAN device.
        dev: String,
        /// The remote member's address.
        ip: IpAddr,
        /// Its MAC, `aa:bb:cc:dd:ee:ff`.
        mac: String,
    },
    /// Remove a neighbour entry of a VXLAN device.
    DelNeigh {
        /// The VXLAN device.
        dev: String,
        /// The entry's address.
        ip: IpAddr,
    },
    /// Write a file atomically (temporary file, then rename).
    WriteFile {
        /// Absolute path.
        path: String,
        /// The whole new content.
        content: String,
    },
    /// Remove a file netloom wrote.
    RemoveFile {
        /// Absolute path.
        path: String,
    },
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let ip = |ns: &Option<NsRef>| {
            ns.as_ref()
                .map(NsRef::ip_cmd)
                .unwrap_or_else(|| "ip".into())
        };
        match self {
            Op::Sysctl { key, value } => write!(f, "sysctl -w {key}={value}"),
            Op::CreateBridge { name, mtu, alias } => {
                write!(
                    f,
                    "ip link add {name} mtu {mtu} type bridge && ip link set {name} alias \"{alias}\""
                )
            }
            Op::DeleteLink { netns, name } => write!(f, "{} link del {name}", ip(netns)),
            Op::LinkUp { netns, name } => write!(f, "{} link set {name} up", ip(netns)),
            Op::SetMtu { netns, name, mtu } => write!(f, "{} link set {name} mtu {mtu}", ip(netns)),
            Op::SetMaster { name, bridge } => write!(f, "ip link set {name} master {bridge}"),
            Op::SetHairpin { name } => write!(f, "ip link set {name} type bridge_slave hairpin on"),
            Op::SetIpv6 { netns, dev, on } => {
                let within = match netns {
                    NsRef::Named(n) => format!("ip netns exec {n}"),
                    NsRef::Path(p) => format!("nsenter --net={}", p.display()),
                };
                let off = u8::from(!on);
                write!(
                    f,
                    "{within} sysctl -w net.ipv6.conf.{dev}.disable_ipv6={off}"
                )
            }
            Op::SetMac { netns, name, mac } => {
                write!(f, "{} link set {name} address {mac}", ip(netns))
            }
            Op::AddAddr { netns, dev, addr } => {
                write!(f, "{} addr add {addr} dev {dev}", ip(netns))
            }
            Op::DelAddr { netns, dev, addr } => {
                write!(f, "{} addr del {addr} dev {dev}", ip(netns))
            }
            Op::CreateNetns { name } => write!(f, "ip netns add {name}"),
            Op::DeleteNetns { name } => write!(f, "ip netns del {name}"),
            Op::CreateVeth {
                host,
                peer,
                netns,
                mac,
                mtu,
                alias,
            } => {
                let ns = match netns {
                    NsRef::Named(n) => n.clone(),
                    NsRef::Path(p) => p.display().to_string(),
                };
                write!(
                    f,
                    "ip link add {host} mtu {mtu} type veth peer name {peer} netns {ns} address {mac} && ip link set {host} alias \"{alias}\""
                )
            }
            Op::AddDefaultRoute {
                netns,
                dev,
                gateway,
            } => {
                write!(
                    f,
                    "{} route add default via {gateway} dev {dev}",
                    netns.ip_cmd()
                )
            }
            Op::DelDefaultRoute { netns, gateway } => {
                write!(f, "{} route del default via {gateway}", netns.ip_cmd())
            }
            Op::CreateVxlan {
                name,
                vni,
                local,
                port,
                mtu,
                alias,
            } => write!(
                f,
                "ip link add {name} mtu {mtu} type vxlan id {vni} local {local} dstport {port} nolearning proxy && ip link set {name} alias \"{alias}\""
            ),
            Op::AddFdb { dev, mac, dst } => {
                write!(f, "bridge fdb append {mac} dev {dev} dst {dst}")
            }
            Op::DelFdb { dev, mac, dst } => write!(f, "bridge fdb del {mac} dev {dev} dst {dst}"),
            Op::AddNeigh { dev, ip, mac } => {
                write!(
                    f,
                    "ip neigh replace {ip} lladdr {mac} dev {dev} nud permanent"
                )
            }
            Op::DelNeigh { dev, ip } => write!(f, "ip neigh del {ip} dev {dev}"),
            Op::Nft { what } => write!(f, "nft: {what}"),
            Op::WriteFile { path, .. } => write!(f, "write {path}"),
            Op::RemoveFile { path } => write!(f, "rm {path}"),
        }
    }
}

/// One addressed change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The plan address: `network.NAME`, `container.NAME.ethN`,
    /// `port.KEY`, `file.PATH`, ...
    pub address: String,
    /// What happens to it.
    pub action: Action,
    /// What forces a replacement, or what changes in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A short description (bridge name and address, port target, ...).
    pub summary: String,
    /// The operations that make the change, in the order they run.
    pub ops: Vec<Op>,
    /// Unified diff of a file or of nft content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The object as observed (`null` before a create).
    pub before: Option<serde_json::Value>,
    /// The object as desired (`null` after a destroy).
    pub after: Option<serde_json::Value>,
    #[serde(skip)]
    phase: u8,
    /// The object this change belongs to (`container.NAME`,
    /// `network.NAME`, or its own address): a failure holds back the
    /// object's other changes.
    #[serde(skip)]
    pub object: String,
    /// Other objects this change needs: it waits when one of them failed.
    #[serde(skip)]
    pub needs: Vec<String>,
}

/// Something changed outside netloom since its last apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The plan address of the object that drifted.
    pub address: String,
    /// What changed, one line (e.g. "deleted outside netloom").
    pub what: String,
}

/// The result of [`diff`]: what drifted, and the changes to make.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Changes made outside netloom since its last apply, listed first.
    pub drift: Vec<Drift>,
    /// Destroys first (reverse dependency order), then everything else in
    /// dependency order.
    pub changes: Vec<Change>,
}

/// Counts for the `Plan:` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Creates, plus one per replacement.
    pub add: usize,
    /// In-place updates.
    pub change: usize,
    /// Deletes, plus one per replacement.
    pub destroy: usize,
}

impl Plan {
    /// The named namespaces this plan deletes (a teardown's `down`
    /// deletes them together and leaves their veths to the kernel).
    pub fn deleted_namespaces(&self) -> impl Iterator<Item = &str> {
        self.changes
            .iter()
            .filter(|c| c.action == Action::Delete)
            .flat_map(|c| &c.ops)
            .filter_map(|op| match op {
                Op::DeleteNetns { name } => Some(name.as_str()),
                _ => None,
            })
    }
    /// Whether there is nothing to change (drift may still be listed).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
    /// The counts of the `Plan:` line; a replacement counts as one add and
    /// one destroy.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Delete => s.destroy += 1,
                Action::Replace => {
                    s.add += 1;
                    s.destroy += 1;
                }
            }
        }
        s
    }
    /// Whether any change needs the nft transaction.
    pub fn touches_firewall(&self) -> bool {
        self.changes
            .iter()
            .any(|c| c.ops.iter().any(|o| matches!(o, Op::Nft { .. })))
    }
}

// Phases, in create order; destroys run in reverse before everything else.
pub(super) const P_SYSCTL: u8 = 0;
pub(super) const P_NETWORK: u8 = 1;
pub(super) const P_NETNS: u8 = 2;
pub(super) const P_ENDPOINT: u8 = 3;
pub(super) const P_NFT_TABLE: u8 = 4;
pub(super) const P_NFT_NETWORK: u8 = 5;
pub(super) const P_PORT: u8 = 6;
pub(super) const P_FILE: u8 = 7;

pub(super) fn change(
    address: String,
    action: Action,
    phase: u8,
    summary: String,
    ops: Vec<Op>,
) -> Change {
    Change {
        address,
        action,
        reason: None,
        summary,
        ops,
        diff: None,
        before: None,
        after: None,
        phase,
        object: String::new(),
        needs: Vec::new(),
    }
}

/// The changes that make `observed` match `desired`, and the drift of
/// `observed` from `applied` (the state of the last successful apply).
pub fn diff(desired: &State, observed: &State, applied: Option<&State>) -> Plan {
    let mut changes = Vec::new();
    diff_half_made(desired, observed, &mut changes);
    diff_sysctls(desired, observed, &mut changes);
    diff_bridges(desired, observed, &mut changes);
    diff_vxlans(desired, observed, &mut changes);
    diff_namespaces(desired, observed, &mut changes);
    diff_endpoints(desired, observed, &mut changes);
    diff_firewall(desired, observed, &mut changes);
    diff_files(desired, observed, &mut changes);

    // Destroys first, in reverse dependency order (files ... networks), then
    // everything else in dependency order (networks ... files).
    changes.sort_by(|a, b| {
        let key = |c: &Change| match c.action {
            Action::Delete => (0, u8::MAX - c.phase),
            _ => (1, c.phase),
        };
        key(a).cmp(&key(b)).then_with(|| a.address.cmp(&b.address))
    });
    for c in &mut changes {
        (c.object, c.needs) = hold::object_of(c, desired, observed);
        (c.before, c.after) = values::before_after(&c.address, desired, observed);
    }
    let drift = applied.map(|a| drift(a, observed)).unwrap_or_default();
    Plan { drift, changes }
}

/// The changes [`diff`] would list for the firewall alone, between the
/// desired state and the firewall `observed` (the rest of the host taken
/// as desired), with their objects. For the verification of an apply that
/// changed nothing else.
pub fn diff_firewall_only(desired: &State, observed: Option<&model::FirewallState>) -> Vec<Change> {
    let mut changes = Vec::new();
    diff_tables(desired.firewall.as_ref(), observed, &mut changes);
    if !changes.is_empty() {
        // Rare (the apply did not converge): the objects name what failed.
        let o = State {
            firewall: observed.cloned(),
            ..State::default()
        };
        for c in &mut changes {
            (c.object, c.needs) = hold::object_of(c, desired, &o);
        }
    }
    changes
}
