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

impl Resource for Bridge {
    const PREFIX: &'static str = "network";
    const PHASE: u8 = P_NETWORK;
    fn summary(&self) -> String {
        bridge_summary(self)
    }
    fn create_ops(&self, network: &str) -> Vec<Op> {
        create_bridge_ops(network, self)
    }
    fn delete_ops(&self) -> Vec<Op> {
        delete_link(&self.name)
    }
    fn replace_reason(have: &Self, want: &Self) -> Option<String> {
        (have.name != want.name).then(|| format!("bridge name {} -> {}", have.name, want.name))
    }
    fn update(have: &Self, want: &Self, ops: &mut Vec<Op>, what: &mut Vec<String>) {
        addr_ops(None, &want.name, &want.addrs, &have.addrs, ops, what);
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
    }
}

pub(super) fn diff_bridges(d: &State, o: &State, out: &mut Vec<Change>) {
    diff_resources(&d.bridges, &o.bridges, out);
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
