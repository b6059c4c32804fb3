//! Cluster mode: each cluster network's VXLAN device, its static
//! forwarding entries and the neighbour entries its ARP/ND proxy answers
//! from.

use super::*;
use crate::core::model::Vxlan;

pub(super) fn vxlan_summary(v: &Vxlan) -> String {
    format!(
        "vxlan {} id {} local {} on {} ({} forwarding entries, {} neighbour entries)",
        v.name,
        v.vni,
        v.local,
        v.bridge.as_deref().unwrap_or("no bridge"),
        v.fdb.len(),
        v.neigh.len()
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

fn neigh_ops(dev: &str, add: bool, entries: &BTreeSet<String>, out: &mut Vec<Op>) {
    for e in entries {
        let Some((ip, mac)) = model::parse_neigh_entry(e) else {
            continue;
        };
        let dev = dev.to_string();
        out.push(if add {
            Op::AddNeigh {
                dev,
                ip,
                mac: model::mac_string(&mac),
            }
        } else {
            Op::DelNeigh { dev, ip }
        });
    }
}

impl Resource for Vxlan {
    const PREFIX: &'static str = "vxlan";
    const PHASE: u8 = P_NETWORK;
    fn summary(&self) -> String {
        vxlan_summary(self)
    }
    fn create_ops(&self, network: &str) -> Vec<Op> {
        let mut ops = vec![Op::CreateVxlan {
            name: self.name.clone(),
            vni: self.vni,
            local: self.local,
            port: self.port,
            mtu: self.mtu,
            alias: model::vxlan_alias(network),
        }];
        if let Some(b) = &self.bridge {
            ops.push(Op::SetMaster {
                name: self.name.clone(),
                bridge: b.clone(),
            });
        }
        fdb_ops(&self.name, true, &self.fdb, &mut ops);
        neigh_ops(&self.name, true, &self.neigh, &mut ops);
        ops.push(Op::LinkUp {
            netns: None,
            name: self.name.clone(),
        });
        ops
    }
    fn delete_ops(&self) -> Vec<Op> {
        delete_link(&self.name)
    }
    /// What is fixed at creation (VNI, local address, port, ARP proxy)
    /// forces a replacement.
    fn replace_reason(have: &Self, want: &Self) -> Option<String> {
        let fixed = |v: &Vxlan| {
            format!(
                "{} id {} local {} port {}{}",
                v.name,
                v.vni,
                v.local,
                v.port,
                if v.proxy { " proxy" } else { "" }
            )
        };
        let (h, w) = (fixed(have), fixed(want));
        (h != w).then(|| format!("vxlan {h} -> {w}"))
    }
    fn update(have: &Self, want: &Self, ops: &mut Vec<Op>, what: &mut Vec<String>) {
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
        fdb_ops(&want.name, false, &gone, ops);
        fdb_ops(&want.name, true, &new, ops);
        if !gone.is_empty() || !new.is_empty() {
            what.push(format!("forwarding entries +{} -{}", new.len(), gone.len()));
        }
        // An address whose MAC changed is replaced by its new entry, not
        // deleted after it.
        let want_ips: BTreeSet<_> = want
            .neigh
            .iter()
            .filter_map(|e| model::parse_neigh_entry(e).map(|(ip, _)| ip))
            .collect();
        let gone: BTreeSet<String> = have
            .neigh
            .difference(&want.neigh)
            .filter(|e| model::parse_neigh_entry(e).is_none_or(|(ip, _)| !want_ips.contains(&ip)))
            .cloned()
            .collect();
        let new: BTreeSet<String> = want.neigh.difference(&have.neigh).cloned().collect();
        neigh_ops(&want.name, false, &gone, ops);
        neigh_ops(&want.name, true, &new, ops);
        if !gone.is_empty() || !new.is_empty() {
            what.push(format!("neighbour entries +{} -{}", new.len(), gone.len()));
        }
        if !have.up {
            ops.push(Op::LinkUp {
                netns: None,
                name: want.name.clone(),
            });
            what.push("down -> up".into());
        }
    }
}

/// Cluster mode: each cluster network's VXLAN device, its forwarding
/// entries and its neighbour entries. What is fixed at creation forces a
/// replacement; master, MTU, state and entries change in place.
pub(super) fn diff_vxlans(d: &State, o: &State, out: &mut Vec<Change>) {
    diff_resources(&d.vxlans, &o.vxlans, out);
}

pub(super) fn vxlan_drift_view(v: &Vxlan) -> String {
    let state = if v.up { "" } else { " (down)" };
    let fdb: Vec<&str> = v.fdb.iter().map(String::as_str).collect();
    let neigh: Vec<&str> = v.neigh.iter().map(String::as_str).collect();
    let proxy = if v.proxy { " proxy" } else { "" };
    format!(
        "{}{proxy} mtu {} fdb [{}] neigh [{}]{state}",
        vxlan_summary(v),
        v.mtu,
        fdb.join(", "),
        neigh.join(", ")
    )
}
