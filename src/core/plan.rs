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
const P_SYSCTL: u8 = 0;
const P_NETWORK: u8 = 1;
const P_NETNS: u8 = 2;
const P_ENDPOINT: u8 = 3;
const P_NFT_TABLE: u8 = 4;
const P_NFT_NETWORK: u8 = 5;
const P_PORT: u8 = 6;
const P_FILE: u8 = 7;

fn change(address: String, action: Action, phase: u8, summary: String, ops: Vec<Op>) -> Change {
    Change {
        address,
        action,
        reason: None,
        summary,
        ops,
        diff: None,
        phase,
    }
}

/// The changes that make `observed` match `desired`, and the drift of
/// `observed` from `applied` (the state of the last successful apply).
pub fn diff(desired: &State, observed: &State, applied: Option<&State>) -> Plan {
    let mut changes = Vec::new();
    diff_sysctls(desired, observed, &mut changes);
    diff_bridges(desired, observed, &mut changes);
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
    let drift = applied.map(|a| drift(a, observed)).unwrap_or_default();
    Plan { drift, changes }
}

fn diff_sysctls(d: &State, o: &State, out: &mut Vec<Change>) {
    for (k, v) in &d.sysctls {
        let cur = o.sysctls.get(k);
        if cur != Some(v) {
            // Per-interface keys need the interface: set them after networks.
            let phase = if k.starts_with("net.ipv4.conf.") {
                P_NFT_TABLE
            } else {
                P_SYSCTL
            };
            // A key that cannot be read yet (offline, or of an interface
            // still to be made) is set, not changed.
            let action = if cur.is_some() {
                Action::Update
            } else {
                Action::Create
            };
            let summary = match cur {
                Some(c) => format!("{c} -> {v}"),
                None => format!("= {v}"),
            };
            let mut c = change(
                format!("sysctl.{k}"),
                action,
                phase,
                summary,
                vec![Op::Sysctl {
                    key: k.clone(),
                    value: v.clone(),
                }],
            );
            c.reason = cur.is_some().then(|| "value".into());
            out.push(c);
        }
    }
}

fn bridge_summary(b: &Bridge) -> String {
    let addrs: Vec<&str> = b.addrs.iter().map(String::as_str).collect();
    format!("bridge {} {}", b.name, addrs.join(" "))
}

fn create_bridge_ops(network: &str, b: &Bridge) -> Vec<Op> {
    let mut ops = vec![Op::CreateBridge {
        name: b.name.clone(),
        mtu: b.mtu,
        alias: model::bridge_alias(network),
    }];
    ops.push(Op::SetMac {
        netns: None,
        name: b.name.clone(),
        mac: b.mac.clone(),
    });
    ops.extend(b.addrs.iter().map(|a| Op::AddAddr {
        netns: None,
        dev: b.name.clone(),
        addr: a.clone(),
    }));
    ops.push(Op::LinkUp {
        netns: None,
        name: b.name.clone(),
    });
    ops
}

fn diff_bridges(d: &State, o: &State, out: &mut Vec<Change>) {
    for (net, want) in &d.bridges {
        let addr = format!("network.{net}");
        match o.bridges.get(net) {
            None => out.push(change(
                addr,
                Action::Create,
                P_NETWORK,
                bridge_summary(want),
                create_bridge_ops(net, want),
            )),
            Some(have) if have.name != want.name => {
                let mut ops = vec![Op::DeleteLink {
                    netns: None,
                    name: have.name.clone(),
                }];
                ops.extend(create_bridge_ops(net, want));
                let mut c = change(addr, Action::Replace, P_NETWORK, bridge_summary(want), ops);
                c.reason = Some(format!("bridge name {} -> {}", have.name, want.name));
                out.push(c);
            }
            Some(have) => {
                let mut ops = Vec::new();
                let mut what = Vec::new();
                addr_ops(
                    None,
                    &want.name,
                    &want.addrs,
                    &have.addrs,
                    &mut ops,
                    &mut what,
                );
                if have.mtu != want.mtu {
                    ops.push(Op::SetMtu {
                        netns: None,
                        name: want.name.clone(),
                        mtu: want.mtu,
                    });
                    what.push(format!("mtu {} -> {}", have.mtu, want.mtu));
                }
                if have.mac != want.mac {
                    ops.push(Op::SetMac {
                        netns: None,
                        name: want.name.clone(),
                        mac: want.mac.clone(),
                    });
                    what.push(format!("mac {} -> {}", have.mac, want.mac));
                }
                if !have.up {
                    ops.push(Op::LinkUp {
                        netns: None,
                        name: want.name.clone(),
                    });
                    what.push("down -> up".into());
                }
                if !ops.is_empty() {
                    let mut c = change(addr, Action::Update, P_NETWORK, bridge_summary(want), ops);
                    c.reason = Some(what.join(", "));
                    out.push(c);
                }
            }
        }
    }
    for (net, have) in &o.bridges {
        if !d.bridges.contains_key(net) {
            out.push(change(
                format!("network.{net}"),
                Action::Delete,
                P_NETWORK,
                bridge_summary(have),
                vec![Op::DeleteLink {
                    netns: None,
                    name: have.name.clone(),
                }],
            ));
        }
    }
}

fn addr_ops(
    ns: Option<&NsRef>,
    dev: &str,
    want: &BTreeSet<String>,
    have: &BTreeSet<String>,
    ops: &mut Vec<Op>,
    what: &mut Vec<String>,
) {
    for a in have.difference(want) {
        ops.push(Op::DelAddr {
            netns: ns.cloned(),
            dev: dev.into(),
            addr: a.clone(),
        });
        what.push(format!("-{a}"));
    }
    for a in want.difference(have) {
        ops.push(Op::AddAddr {
            netns: ns.cloned(),
            dev: dev.into(),
            addr: a.clone(),
        });
        what.push(format!("+{a}"));
    }
}

fn ns_create_ops(ns: &Namespace) -> Vec<Op> {
    let mut ops = Vec::new();
    if let NsRef::Named(n) = &ns.netns {
        ops.push(Op::CreateNetns { name: n.clone() });
    }
    ops.push(Op::LinkUp {
        netns: Some(ns.netns.clone()),
        name: "lo".into(),
    });
    ops
}

fn ns_delete_ops(ns: &Namespace) -> Vec<Op> {
    match &ns.netns {
        NsRef::Named(n) => vec![Op::DeleteNetns { name: n.clone() }],
        // An attached namespace is never deleted: netloom only detaches
        // (its endpoints are destroyed on their own).
        NsRef::Path(_) => Vec::new(),
    }
}

fn diff_namespaces(d: &State, o: &State, out: &mut Vec<Change>) {
    for (name, want) in &d.namespaces {
        let addr = format!("container.{name}");
        match o.namespaces.get(name) {
            None => out.push(change(
                addr,
                Action::Create,
                P_NETNS,
                want.netns.to_string(),
                ns_create_ops(want),
            )),
            Some(have) if have.netns != want.netns => {
                let mut ops = ns_delete_ops(have);
                ops.extend(ns_create_ops(want));
                let mut c = change(addr, Action::Replace, P_NETNS, want.netns.to_string(), ops);
                c.reason = Some(format!("{} -> {}", have.netns, want.netns));
                out.push(c);
            }
            Some(have) if !have.lo_up => {
                let mut c = change(
                    addr,
                    Action::Update,
                    P_NETNS,
                    want.netns.to_string(),
                    vec![Op::LinkUp {
                        netns: Some(want.netns.clone()),
                        name: "lo".into(),
                    }],
                );
                c.reason = Some("lo down -> up".into());
                out.push(c);
            }
            Some(_) => {}
        }
    }
    for (name, have) in &o.namespaces {
        if !d.namespaces.contains_key(name) {
            out.push(change(
                format!("container.{name}"),
                Action::Delete,
                P_NETNS,
                have.netns.to_string(),
                ns_delete_ops(have),
            ));
        }
    }
}

fn endpoint_summary(e: &Endpoint) -> String {
    let addrs: Vec<&str> = e.addrs.iter().map(String::as_str).collect();
    format!(
        "{} on {} via {} ({}, {})",
        e.ifname,
        e.network,
        e.host_veth,
        addrs.join(" "),
        e.mac
    )
}

fn endpoint_create_ops(e: &Endpoint) -> Vec<Op> {
    let ns = Some(e.netns.clone());
    let mut ops = vec![Op::CreateVeth {
        host: e.host_veth.clone(),
        peer: e.ifname.clone(),
        netns: e.netns.clone(),
        mac: e.mac.clone(),
        mtu: e.mtu,
        alias: model::veth_alias(&e.container, &e.network, &e.ifname),
    }];
    if let Some(b) = &e.bridge {
        ops.push(Op::SetMaster {
            name: e.host_veth.clone(),
            bridge: b.clone(),
        });
        if e.hairpin {
            ops.push(Op::SetHairpin {
                name: e.host_veth.clone(),
            });
        }
    }
    ops.push(Op::LinkUp {
        netns: None,
        name: e.host_veth.clone(),
    });
    ops.extend(e.addrs.iter().map(|a| Op::AddAddr {
        netns: ns.clone(),
        dev: e.ifname.clone(),
        addr: a.clone(),
    }));
    ops.push(Op::LinkUp {
        netns: ns.clone(),
        name: e.ifname.clone(),
    });
    if let Some(g) = e.gateway {
        ops.push(Op::AddDefaultRoute {
            netns: e.netns.clone(),
            dev: e.ifname.clone(),
            gateway: IpAddr::V4(g),
        });
    }
    if let Some(g) = e.gateway6 {
        ops.push(Op::AddDefaultRoute {
            netns: e.netns.clone(),
            dev: e.ifname.clone(),
            gateway: IpAddr::V6(g),
        });
    }
    ops
}

fn diff_endpoints(d: &State, o: &State, out: &mut Vec<Change>) {
    for (key, want) in &d.endpoints {
        let addr = format!("container.{key}");
        let Some(have) = o.endpoints.get(key) else {
            out.push(change(
                addr,
                Action::Create,
                P_ENDPOINT,
                endpoint_summary(want),
                endpoint_create_ops(want),
            ));
            continue;
        };
        let forced = if have.ifname != want.ifname {
            Some(format!("{} is missing inside {}", want.ifname, want.netns))
        } else if have.netns != want.netns {
            Some(format!("namespace {} -> {}", have.netns, want.netns))
        } else if have.network != want.network {
            Some(format!("network {} -> {}", have.network, want.network))
        } else if have.host_veth != want.host_veth {
            Some(format!("veth {} -> {}", have.host_veth, want.host_veth))
        } else {
            None
        };
        if let Some(reason) = forced {
            let mut ops = vec![Op::DeleteLink {
                netns: None,
                name: have.host_veth.clone(),
            }];
            ops.extend(endpoint_create_ops(want));
            let mut c = change(
                addr,
                Action::Replace,
                P_ENDPOINT,
                endpoint_summary(want),
                ops,
            );
            c.reason = Some(reason);
            out.push(c);
            continue;
        }
        let ns = Some(want.netns.clone());
        let mut ops = Vec::new();
        let mut what = Vec::new();
        if have.bridge != want.bridge {
            if let Some(b) = &want.bridge {
                ops.push(Op::SetMaster {
                    name: want.host_veth.clone(),
                    bridge: b.clone(),
                });
                what.push(format!("master {}", b));
            }
        }
        // A port that joined a bridge anew starts without hairpin.
        if want.hairpin && (!have.hairpin || have.bridge != want.bridge) {
            ops.push(Op::SetHairpin {
                name: want.host_veth.clone(),
            });
            if have.bridge == want.bridge {
                what.push("hairpin on".into());
            }
        }
        if have.mtu != want.mtu {
            ops.push(Op::SetMtu {
                netns: None,
                name: want.host_veth.clone(),
                mtu: want.mtu,
            });
            ops.push(Op::SetMtu {
                netns: ns.clone(),
                name: want.ifname.clone(),
                mtu: want.mtu,
            });
            what.push(format!("mtu {} -> {}", have.mtu, want.mtu));
        }
        if have.mac != want.mac {
            ops.push(Op::SetMac {
                netns: Some(want.netns.clone()),
                name: want.ifname.clone(),
                mac: want.mac.clone(),
            });
            what.push(format!("mac {} -> {}", have.mac, want.mac));
        }
        // Routes go before their addresses are removed (the kernel drops a
        // route whose gateway becomes unreachable) and after new ones exist.
        if have.gateway != want.gateway {
            if let Some(g) = have.gateway {
                ops.push(Op::DelDefaultRoute {
                    netns: want.netns.clone(),
                    gateway: IpAddr::V4(g),
                });
            }
        }
        if have.gateway6 != want.gateway6 {
            if let Some(g) = have.gateway6 {
                ops.push(Op::DelDefaultRoute {
                    netns: want.netns.clone(),
                    gateway: IpAddr::V6(g),
                });
            }
        }
        addr_ops(
            ns.as_ref(),
            &want.ifname,
            &want.addrs,
            &have.addrs,
            &mut ops,
            &mut what,
        );
        if !have.up {
            ops.push(Op::LinkUp {
                netns: None,
                name: want.host_veth.clone(),
            });
            ops.push(Op::LinkUp {
                netns: ns.clone(),
                name: want.ifname.clone(),
            });
            what.push("down -> up".into());
        }
        // An address change removes the routes through it: re-add.
        let readdressed = have.addrs != want.addrs;
        if have.gateway != want.gateway || (readdressed && want.gateway.is_some()) {
            if let Some(g) = want.gateway {
                ops.push(Op::AddDefaultRoute {
                    netns: want.netns.clone(),
                    dev: want.ifname.clone(),
                    gateway: IpAddr::V4(g),
                });
            }
            if have.gateway != want.gateway {
                what.push(format!(
                    "default route {} -> {}",
                    have.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "none".into()),
                    want.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "none".into())
                ));
            }
        }
        if have.gateway6 != want.gateway6 || (readdressed && want.gateway6.is_some()) {
            if let Some(g) = want.gateway6 {
                ops.push(Op::AddDefaultRoute {
                    netns: want.netns.clone(),
                    dev: want.ifname.clone(),
                    gateway: IpAddr::V6(g),
                });
            }
        }
        if !ops.is_empty() {
            let mut c = change(
                addr,
                Action::Update,
                P_ENDPOINT,
                endpoint_summary(want),
                ops,
            );
            c.reason = Some(what.join(", "));
            out.push(c);
        }
    }
    for (key, have) in &o.endpoints {
        if !d.endpoints.contains_key(key) {
            out.push(change(
                format!("container.{key}"),
                Action::Delete,
                P_ENDPOINT,
                endpoint_summary(have),
                vec![Op::DeleteLink {
                    netns: None,
                    name: have.host_veth.clone(),
                }],
            ));
        }
    }
}

fn port_summary(p: &FwPort) -> String {
    let host = p
        .host_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "0.0.0.0".into());
    let range = |s: u16| {
        if p.count == 1 {
            s.to_string()
        } else {
            format!("{s}-{}", s + (p.count - 1))
        }
    };
    format!(
        "{host}:{} -> {}:{}/{} ({})",
        range(p.host_port),
        p.container_ip,
        range(p.container_port),
        p.proto,
        p.container
    )
}

fn diff_firewall(d: &State, o: &State, out: &mut Vec<Change>) {
    let empty = Firewall::default();
    let want = d.firewall.as_ref().map(|f| &f.fw).unwrap_or(&empty);
    let have = o.firewall.as_ref().map(|f| &f.fw).unwrap_or(&empty);
    let table_addr = "nft.table.netloom".to_string();
    match (&d.firewall, &o.firewall) {
        (Some(_), None) => out.push(change(
            table_addr,
            Action::Create,
            P_NFT_TABLE,
            "table inet netloom".into(),
            vec![Op::Nft {
                what: "add table inet netloom with its chains, sets and maps".into(),
            }],
        )),
        (Some(w), Some(h)) if !h.skeleton_ok => {
            let mut c = change(
                table_addr,
                Action::Replace,
                P_NFT_TABLE,
                "table inet netloom".into(),
                vec![Op::Nft {
                    what: "delete and re-add table inet netloom in one transaction".into(),
                }],
            );
            c.reason = Some("chains or rules changed outside netloom".into());
            c.diff = Some(unified(
                "nft (live)",
                "nft (netloom)",
                &crate::core::firewall::render(&h.fw),
                &crate::core::firewall::render(&w.fw),
            ));
            out.push(c);
        }
        (None, Some(_)) => out.push(change(
            table_addr,
            Action::Delete,
            P_NFT_TABLE,
            "table inet netloom".into(),
            vec![Op::Nft {
                what: "delete table inet netloom".into(),
            }],
        )),
        _ => {}
    }
    // Per-network firewall data (set elements), then per-port map elements.
    for (net, w) in &want.networks {
        match have.networks.get(net) {
            None => out.push(change(
                format!("nft.network.{net}"),
                Action::Create,
                P_NFT_NETWORK,
                format!("{} {}", w.bridge, w.subnet),
                vec![Op::Nft {
                    what: fw_network_what(w),
                }],
            )),
            Some(h) if h != w => {
                let mut c = change(
                    format!("nft.network.{net}"),
                    Action::Update,
                    P_NFT_NETWORK,
                    format!("{} {}", w.bridge, w.subnet),
                    vec![Op::Nft {
                        what: fw_network_what(w),
                    }],
                );
                c.reason = Some(format!("{} -> {}", fw_network_what(h), fw_network_what(w)));
                out.push(c);
            }
            Some(_) => {}
        }
    }
    for (net, h) in &have.networks {
        if !want.networks.contains_key(net) {
            out.push(change(
                format!("nft.network.{net}"),
                Action::Delete,
                P_NFT_NETWORK,
                format!("{} {}", h.bridge, h.subnet),
                vec![Op::Nft {
                    what: format!("remove {} from the network sets", h.bridge),
                }],
            ));
        }
    }
    for (key, w) in &want.ports {
        let what = format!(
            "map {}/{} -> {}:{}",
            w.host_port, w.proto, w.container_ip, w.container_port
        );
        match have.ports.get(key) {
            None => out.push(change(
                format!("port.{key}"),
                Action::Create,
                P_PORT,
                port_summary(w),
                vec![Op::Nft {
                    what: format!("add element: {what}"),
                }],
            )),
            Some(h) if h != w => {
                let mut c = change(
                    format!("port.{key}"),
                    Action::Update,
                    P_PORT,
                    port_summary(w),
                    vec![Op::Nft {
                        what: format!("replace element: {what}"),
                    }],
                );
                c.reason = Some(format!("{} -> {}", port_summary(h), port_summary(w)));
                out.push(c);
            }
            Some(_) => {}
        }
    }
    for (key, h) in &have.ports {
        if !want.ports.contains_key(key) {
            out.push(change(
                format!("port.{key}"),
                Action::Delete,
                P_PORT,
                port_summary(h),
                vec![Op::Nft {
                    what: format!("delete element: map {}/{}", h.host_port, h.proto),
                }],
            ));
        }
    }
}

fn fw_network_what(n: &crate::core::firewall::FwNetwork) -> String {
    let mut flags = Vec::new();
    if n.masquerade {
        flags.push("masquerade");
    }
    if n.internal {
        flags.push("internal");
    }
    if !n.icc {
        flags.push("no-icc");
    }
    format!("{} {} [{}]", n.bridge, n.subnet, flags.join(","))
}

fn diff_files(d: &State, o: &State, out: &mut Vec<Change>) {
    for (path, want) in &d.files {
        let have = o.files.get(path);
        let want_full = model::with_user_block(want, have.map(String::as_str));
        match have {
            None => {
                let mut c = change(
                    format!("file.{path}"),
                    Action::Create,
                    P_FILE,
                    format!("{} lines", want_full.lines().count()),
                    vec![Op::WriteFile {
                        path: path.clone(),
                        content: want_full.clone(),
                    }],
                );
                c.diff = Some(unified("/dev/null", path, "", &want_full));
                out.push(c);
            }
            Some(h) if *h != want_full => {
                let mut c = change(
                    format!("file.{path}"),
                    Action::Update,
                    P_FILE,
                    format!("{} lines", want_full.lines().count()),
                    vec![Op::WriteFile {
                        path: path.clone(),
                        content: want_full.clone(),
                    }],
                );
                c.diff = Some(unified(path, path, h, &want_full));
                out.push(c);
            }
            Some(_) => {}
        }
    }
    for (path, have) in &o.files {
        if !d.files.contains_key(path) {
            let mut c = change(
                format!("file.{path}"),
                Action::Delete,
                P_FILE,
                format!("{} lines", have.lines().count()),
                vec![Op::RemoveFile { path: path.clone() }],
            );
            c.diff = Some(unified(path, "/dev/null", have, ""));
            out.push(c);
        }
    }
}

/// A unified diff with 3 lines of context.
pub fn unified(from: &str, to: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(from, to)
        .to_string()
}

/// What changed outside netloom: every address of the last applied state
/// that the kernel no longer holds as applied.
pub fn drift(applied: &State, observed: &State) -> Vec<Drift> {
    let mut out = Vec::new();
    fn cmp(out: &mut Vec<Drift>, addr: String, a: Option<String>, o: Option<String>) {
        match (a, o) {
            (Some(_), None) => out.push(Drift {
                address: addr,
                what: "deleted outside netloom".into(),
            }),
            (Some(a), Some(o)) if a != o => out.push(Drift {
                address: addr,
                what: format!("changed outside netloom: {o} (was {a})"),
            }),
            _ => {}
        }
    }
    for (k, v) in &applied.sysctls {
        cmp(
            &mut out,
            format!("sysctl.{k}"),
            Some(v.clone()),
            observed.sysctls.get(k).cloned(),
        );
    }
    for (k, b) in &applied.bridges {
        cmp(
            &mut out,
            format!("network.{k}"),
            Some(bridge_drift_view(b)),
            observed.bridges.get(k).map(bridge_drift_view),
        );
    }
    for (k, n) in &applied.namespaces {
        cmp(
            &mut out,
            format!("container.{k}"),
            Some(n.netns.to_string()),
            observed.namespaces.get(k).map(|x| x.netns.to_string()),
        );
    }
    for (k, e) in &applied.endpoints {
        cmp(
            &mut out,
            format!("container.{k}"),
            Some(endpoint_drift_view(e)),
            observed.endpoints.get(k).map(endpoint_drift_view),
        );
    }
    let empty = BTreeMap::new();
    let fw_ports = |s: &State| {
        s.firewall
            .as_ref()
            .map(|f| &f.fw.ports)
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    if let Some(a) = &applied.firewall {
        match &observed.firewall {
            None => out.push(Drift {
                address: "nft.table.netloom".into(),
                what: "deleted outside netloom".into(),
            }),
            Some(o) if !o.skeleton_ok => out.push(Drift {
                address: "nft.table.netloom".into(),
                what: "chains or rules changed outside netloom".into(),
            }),
            Some(_) => {}
        }
        if observed.firewall.is_some() {
            let op = fw_ports(observed);
            for (k, p) in &a.fw.ports {
                cmp(
                    &mut out,
                    format!("port.{k}"),
                    Some(port_summary(p)),
                    op.get(k).map(port_summary),
                );
            }
        }
    }
    for (k, v) in &applied.files {
        let o = observed.files.get(k);
        let changed = o.map(|o| model::with_user_block(v, Some(o)) != *o);
        match changed {
            None => out.push(Drift {
                address: format!("file.{k}"),
                what: "deleted outside netloom".into(),
            }),
            Some(true) => out.push(Drift {
                address: format!("file.{k}"),
                what: "edited outside netloom".into(),
            }),
            Some(false) => {}
        }
    }
    out
}

fn bridge_drift_view(b: &Bridge) -> String {
    let state = if b.up { "" } else { " (down)" };
    format!("{} mtu {} mac {}{state}", bridge_summary(b), b.mtu, b.mac)
}

/// The parts of an endpoint whose change outside netloom is drift.
fn endpoint_drift_view(e: &Endpoint) -> String {
    let addrs: Vec<&str> = e.addrs.iter().map(String::as_str).collect();
    let route = e
        .gateway
        .map(|g| format!(" default via {g}"))
        .unwrap_or_default();
    let state = if e.up { "" } else { " (down)" };
    let hairpin = if e.hairpin { "" } else { " (hairpin off)" };
    format!(
        "{} {} {} master {}{route}{state}{hairpin}",
        e.ifname,
        addrs.join(" "),
        e.mac,
        e.bridge.as_deref().unwrap_or("none")
    )
}
