//! Networks: bridges, their addresses, MTU and MAC.

use super::*;

pub(super) fn bridge_summary(b: &Bridge) -> String {
    let addrs: Vec<&str> = b.addrs.iter().map(String::as_str).collect();
    format!("bridge {} {}", b.name, addrs.join(" "))
}

pub(super) fn create_bridge_ops(network: &str, b: &Bridge) -> Vec<Op> {
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

pub(super) fn diff_bridges(d: &State, o: &State, out: &mut Vec<Change>) {
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

pub(super) fn addr_ops(
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
