//! Cluster mode: each cluster network's VXLAN device and its static
//! forwarding entries.

use super::*;
use crate::core::model::Vxlan;

pub(super) fn vxlan_summary(v: &Vxlan) -> String {
    format!(
        "vxlan {} id {} local {} on {} ({} forwarding entries)",
        v.name,
        v.vni,
        v.local,
        v.bridge.as_deref().unwrap_or("no bridge"),
        v.fdb.len()
    )
}

fn fdb_ops(dev: &str, add: bool, entries: &BTreeSet<String>, out: &mut Vec<Op>) {
    for e in entries {
        let Some((mac, dst)) = model::parse_fdb_entry(e) else {
            continue;
        };
        let (dev, mac) = (dev.to_string(), model::mac_string(&mac));
        out.push(if add {
            Op::AddFdb { dev, mac, dst }
        } else {
            Op::DelFdb { dev, mac, dst }
        });
    }
}

fn create_vxlan_ops(network: &str, v: &Vxlan) -> Vec<Op> {
    let mut ops = vec![Op::CreateVxlan {
        name: v.name.clone(),
        vni: v.vni,
        local: v.local,
        port: v.port,
        mtu: v.mtu,
        alias: model::vxlan_alias(network),
    }];
    if let Some(b) = &v.bridge {
        ops.push(Op::SetMaster {
            name: v.name.clone(),
            bridge: b.clone(),
        });
    }
    fdb_ops(&v.name, true, &v.fdb, &mut ops);
    ops.push(Op::LinkUp {
        netns: None,
        name: v.name.clone(),
    });
    ops
}

/// Cluster mode: each cluster network's VXLAN device and its forwarding
/// entries. What is fixed at creation (VNI, local address, port) forces a
/// replacement; master, MTU, state and entries change in place.
pub(super) fn diff_vxlans(d: &State, o: &State, out: &mut Vec<Change>) {
    for (net, want) in &d.vxlans {
        let addr = format!("vxlan.{net}");
        match o.vxlans.get(net) {
            None => out.push(change(
                addr,
                Action::Create,
                P_NETWORK,
                vxlan_summary(want),
                create_vxlan_ops(net, want),
            )),
            Some(have)
                if have.name != want.name
                    || have.vni != want.vni
                    || have.local != want.local
                    || have.port != want.port =>
            {
                let mut ops = vec![Op::DeleteLink {
                    netns: None,
                    name: have.name.clone(),
                }];
                ops.extend(create_vxlan_ops(net, want));
                let mut c = change(addr, Action::Replace, P_NETWORK, vxlan_summary(want), ops);
                c.reason = Some(format!(
                    "vxlan {} id {} local {} port {} -> {} id {} local {} port {}",
                    have.name,
                    have.vni,
                    have.local,
                    have.port,
                    want.name,
                    want.vni,
                    want.local,
                    want.port
                ));
                out.push(c);
            }
            Some(have) => {
                let mut ops = Vec::new();
                let mut what = Vec::new();
                if have.bridge != want.bridge {
                    if let Some(b) = &want.bridge {
                        ops.push(Op::SetMaster {
                            name: want.name.clone(),
                            bridge: b.clone(),
                        });
                        what.push(format!("master -> {b}"));
                    }
                }
                if have.mtu != want.mtu {
                    ops.push(Op::SetMtu {
                        netns: None,
                        name: want.name.clone(),
                        mtu: want.mtu,
                    });
                    what.push(format!("mtu {} -> {}", have.mtu, want.mtu));
                }
                let gone: BTreeSet<String> = have.fdb.difference(&want.fdb).cloned().collect();
                let new: BTreeSet<String> = want.fdb.difference(&have.fdb).cloned().collect();
                fdb_ops(&want.name, false, &gone, &mut ops);
                fdb_ops(&want.name, true, &new, &mut ops);
                if !gone.is_empty() || !new.is_empty() {
                    what.push(format!("forwarding entries +{} -{}", new.len(), gone.len()));
                }
                if !have.up {
                    ops.push(Op::LinkUp {
                        netns: None,
                        name: want.name.clone(),
                    });
                    what.push("down -> up".into());
                }
                if !ops.is_empty() {
                    let mut c = change(addr, Action::Update, P_NETWORK, vxlan_summary(want), ops);
                    c.reason = Some(what.join(", "));
                    out.push(c);
                }
            }
        }
    }
    for (net, have) in &o.vxlans {
        if !d.vxlans.contains_key(net) {
            out.push(change(
                format!("vxlan.{net}"),
                Action::Delete,
                P_NETWORK,
                vxlan_summary(have),
                vec![Op::DeleteLink {
                    netns: None,
                    name: have.name.clone(),
                }],
            ));
        }
    }
}

pub(super) fn vxlan_drift_view(v: &Vxlan) -> String {
    let state = if v.up { "" } else { " (down)" };
    let fdb: Vec<&str> = v.fdb.iter().map(String::as_str).collect();
    format!(
        "{} mtu {} fdb [{}]{state}",
        vxlan_summary(v),
        v.mtu,
        fdb.join(", ")
    )
}
