//! Container namespaces.

use super::*;

pub(super) fn ns_create_ops(ns: &Namespace) -> Vec<Op> {
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

pub(super) fn ns_delete_ops(ns: &Namespace) -> Vec<Op> {
    match &ns.netns {
        NsRef::Named(n) => vec![Op::DeleteNetns { name: n.clone() }],
        // An attached namespace is never deleted: netloom only detaches
        // (its endpoints are destroyed on their own).
        NsRef::Path(_) => Vec::new(),
    }
}

pub(super) fn diff_namespaces(d: &State, o: &State, out: &mut Vec<Change>) {
    for (name, want) in d.namespaces.iter() {
        let have = o.namespaces.get(name);
        if have.is_some_and(|h| h.netns == want.netns && h.lo_up) {
            continue;
        }
        let addr = format!("container.{name}");
        match have {
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
    for (name, have) in o.namespaces.iter() {
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
