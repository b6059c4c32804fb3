//! `diff(desired, observed) -> Plan`: the typed, ordered list of changes
//! that makes the host match the file, and the drift since the last apply.
//!
//! Pure: the kernel, nft and files are read by [`crate::host::observe`] and
//! changed by [`crate::host::apply`]; everything in between is here and is tested
//! with hand-built observed states (`tests/plans/`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::core::firewall::{Firewall, FwPort};
use crate::core::model::{self, Bridge, Endpoint, Namespace, NsRef, State};

mod drift;
mod endpoint;
mod files;
mod firewall;
mod hold;
mod netns;
mod network;
mod sysctl;
mod vxlan;

pub use drift::drift;
use endpoint::*;
pub use files::unified;
use files::*;
use firewall::*;
pub use hold::{Failure, NFT_TABLE, file_owner, hold_back};
use netns::*;
use network::*;
use sysctl::*;
use vxlan::*;

/// What happens to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Sysctl {
        key: String,
        value: String,
    },
    CreateBridge {
        name: String,
        mtu: u32,
        alias: String,
    },
    DeleteLink {
        netns: Option<NsRef>,
        name: String,
    },
    LinkUp {
        netns: Option<NsRef>,
        name: String,
    },
    SetMtu {
        netns: Option<NsRef>,
        name: String,
        mtu: u32,
    },
    SetMaster {
        name: String,
        bridge: String,
    },
    SetHairpin {
        name: String,
    },
    SetMac {
        netns: Option<NsRef>,
        name: String,
        mac: String,
    },
    AddAddr {
        netns: Option<NsRef>,
        dev: String,
        addr: String,
    },
    DelAddr {
        netns: Option<NsRef>,
        dev: String,
        addr: String,
    },
    CreateNetns {
        name: String,
    },
    DeleteNetns {
        name: String,
    },
    CreateVeth {
        host: String,
        peer: String,
        netns: NsRef,
        mac: String,
        mtu: u32,
        alias: String,
    },
    AddDefaultRoute {
        netns: NsRef,
        dev: String,
        gateway: IpAddr,
    },
    DelDefaultRoute {
        netns: NsRef,
        gateway: IpAddr,
    },
    /// Part of the apply's single nft transaction.
    Nft {
        what: String,
    },
    /// Cluster mode: a VXLAN device (no learning), admin down, no master.
    CreateVxlan {
        name: String,
        vni: u32,
        local: std::net::Ipv4Addr,
        port: u16,
        mtu: u32,
        alias: String,
    },
    /// A static forwarding entry of a VXLAN device (appended: the all-zero
    /// MAC has one entry per remote host).
    AddFdb {
        dev: String,
        mac: String,
        dst: std::net::Ipv4Addr,
    },
    DelFdb {
        dev: String,
        mac: String,
        dst: std::net::Ipv4Addr,
    },
    WriteFile {
        path: String,
        content: String,
    },
    RemoveFile {
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
                "ip link add {name} mtu {mtu} type vxlan id {vni} local {local} dstport {port} nolearning && ip link set {name} alias \"{alias}\""
            ),
            Op::AddFdb { dev, mac, dst } => {
                write!(f, "bridge fdb append {mac} dev {dev} dst {dst}")
            }
            Op::DelFdb { dev, mac, dst } => write!(f, "bridge fdb del {mac} dev {dev} dst {dst}"),
            Op::Nft { what } => write!(f, "nft: {what}"),
            Op::WriteFile { path, .. } => write!(f, "write {path}"),
            Op::RemoveFile { path } => write!(f, "rm {path}"),
        }
    }
}

/// One addressed change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub address: String,
    pub action: Action,
    /// What forces a replacement, or what changes in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A short description (bridge name and address, port target, ...).
    pub summary: String,
    pub ops: Vec<Op>,
    /// Unified diff of a file or of nft content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
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
    pub address: String,
    pub what: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub drift: Vec<Drift>,
    pub changes: Vec<Change>,
}

/// Counts for the `Plan:` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
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
        phase,
        object: String::new(),
        needs: Vec::new(),
    }
}

/// The changes that make `observed` match `desired`, and the drift of
/// `observed` from `applied` (the state of the last successful apply).
pub fn diff(desired: &State, observed: &State, applied: Option<&State>) -> Plan {
    let mut changes = Vec::new();
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
    }
    let drift = applied.map(|a| drift(a, observed)).unwrap_or_default();
    Plan { drift, changes }
}
