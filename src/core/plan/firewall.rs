//! The nft table, networks' firewall data and published ports.

use super::*;
use crate::core::firewall::{FwVxlan, Stray};
use crate::core::model::FirewallState;

pub(super) fn port_summary(p: &FwPort) -> String {
    let range = |s: u16| {
        if p.count == 1 {
            s.to_string()
        } else {
            format!("{s}-{}", s + (p.count - 1))
        }
    };
    let maps: Vec<String> = p
        .mappings()
        .into_iter()
        .map(|(host, target)| {
            format!(
                "{host}:{} -> {target}:{}/{}",
                range(p.host_port),
                range(p.container_port),
                p.proto
            )
        })
        .collect();
    format!("{} ({})", maps.join(", "), p.container)
}

/// Targets of a port's map elements, e.g. `172.17.0.2:80` or
/// `172.17.0.2:80 and [fd00::2]:80`.
fn port_targets(p: &FwPort) -> String {
    let t: Vec<String> = p
        .mappings()
        .into_iter()
        .map(|(_, target)| format!("{target}:{}", p.container_port))
        .collect();
    t.join(" and ")
}

pub(super) fn diff_firewall(d: &State, o: &State, out: &mut Vec<Change>) {
    diff_tables(d.firewall.as_ref(), o.firewall.as_ref(), out);
}

/// [`diff_firewall`] of the firewall alone: desired `d`, observed `o`.
pub(super) fn diff_tables(
    d: Option<&FirewallState>,
    o: Option<&FirewallState>,
    out: &mut Vec<Change>,
) {
    let empty = Firewall::default();
    let want = d.map(|f| &f.fw).unwrap_or(&empty);
    let have = o.map(|f| &f.fw).unwrap_or(&empty);
    let table_addr = "nft.table.netloom".to_string();
    match (d, o) {
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
    if let (Some(w), Some(h)) = (d, o)
        && h.skeleton_ok
    {
        diff_bridge_table(&w.fw, h, out);
        diff_strays(&w.fw, &h.fw, &h.strays, out);
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
    diff_fw_vxlans(want, have, out);
    for (key, w) in want.ports.iter() {
        let h = have.ports.get(key);
        if h == Some(w) {
            continue;
        }
        let what = format!("map {}/{} -> {}", w.host_port, w.proto, port_targets(w));
        match h {
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
    for (key, h) in have.ports.iter() {
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

/// `table bridge netloom` exists exactly while a network has `icc = false`
/// (when the inet skeleton is broken, its rebuild settles this too).
fn diff_bridge_table(want: &Firewall, have: &FirewallState, out: &mut Vec<Change>) {
    let needed = crate::core::firewall::bridge_table_needed(want);
    let (action, what) = match (needed, have.bridge_table) {
        (true, false) if want.networks.values().any(|n| !n.icc) => (
            Action::Create,
            "add table bridge netloom (icc = false isolation)",
        ),
        (true, false) => (
            Action::Create,
            "add table bridge netloom (cluster gateway filter)",
        ),
        (false, true) => (Action::Delete, "delete table bridge netloom"),
        _ => return,
    };
    out.push(change(
        BRIDGE_TABLE_ADDR.into(),
        action,
        P_NFT_TABLE,
        "table bridge netloom".into(),
        vec![Op::Nft { what: what.into() }],
    ));
}

/// Plan address of `table bridge netloom`.
pub(super) const BRIDGE_TABLE_ADDR: &str = "nft.table.bridge.netloom";

/// Plan address of one element of netloom's sets and maps.
pub(super) fn element_addr(s: &Stray) -> String {
    format!("nft.element.{}.{}[{}]", s.family, s.set, s.key)
}

/// Elements no network or port explains: each is deleted by the
/// transaction, so each is listed. A stray whose key a desired element
/// will take over is already covered by that port's or network's change,
/// unless the firewall otherwise matches (then it is listed as changed).
fn diff_strays(want: &Firewall, have: &Firewall, strays: &[Stray], out: &mut Vec<Change>) {
    if strays.is_empty() {
        return;
    }
    let wanted = crate::core::firewall::element_keys(want);
    for s in strays {
        let taken = wanted.contains(&(s.set.clone(), s.key.clone()));
        if taken && want != have {
            continue;
        }
        let (action, what) = if taken {
            (Action::Update, "replace element")
        } else {
            (Action::Delete, "delete element")
        };
        let mut c = change(
            element_addr(s),
            action,
            P_PORT,
            s.text.clone(),
            vec![Op::Nft {
                what: format!("{what} {} netloom {} {{ {} }}", s.family, s.set, s.key),
            }],
        );
        c.reason = Some("not made by netloom from the file".into());
        out.push(c);
    }
}

fn fw_vxlan_what(v: &FwVxlan) -> String {
    format!(
        "drop gateway {} / {} on {}",
        v.gateway, v.gateway_mac, v.device
    )
}

/// Cluster mode: the gateway filter elements of each VXLAN port.
fn diff_fw_vxlans(want: &Firewall, have: &Firewall, out: &mut Vec<Change>) {
    for (net, w) in &want.vxlans {
        let addr = format!("nft.vxlan.{net}");
        let op = || {
            vec![Op::Nft {
                what: format!("add elements: {}", fw_vxlan_what(w)),
            }]
        };
        match have.vxlans.get(net) {
            None => out.push(change(
                addr,
                Action::Create,
                P_NFT_NETWORK,
                fw_vxlan_what(w),
                op(),
            )),
            Some(h) if h != w => {
                let mut c = change(addr, Action::Update, P_NFT_NETWORK, fw_vxlan_what(w), op());
                c.reason = Some(format!("{} -> {}", fw_vxlan_what(h), fw_vxlan_what(w)));
                out.push(c);
            }
            Some(_) => {}
        }
    }
    for (net, h) in &have.vxlans {
        if !want.vxlans.contains_key(net) {
            out.push(change(
                format!("nft.vxlan.{net}"),
                Action::Delete,
                P_NFT_NETWORK,
                fw_vxlan_what(h),
                vec![Op::Nft {
                    what: format!("delete elements: {}", fw_vxlan_what(h)),
                }],
            ));
        }
    }
}

pub(super) fn fw_network_what(n: &crate::core::firewall::FwNetwork) -> String {
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
    match n.subnet6 {
        Some(s6) => format!("{} {} {s6} [{}]", n.bridge, n.subnet, flags.join(",")),
        None => format!("{} {} [{}]", n.bridge, n.subnet, flags.join(",")),
    }
}
