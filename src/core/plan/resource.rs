//! The create / replace / update / delete walk shared by the host-side
//! objects kept by network name (bridges, VXLAN devices): each kind says
//! how it is created, what forces a replacement and what changes in place;
//! the walk over desired and observed is the same for all of them.

use super::*;

/// One kind of object of the host namespace, kept by network name.
pub(super) trait Resource {
    /// Plan address prefix: `network`, `vxlan`.
    const PREFIX: &'static str;
    /// Phase its changes run in.
    const PHASE: u8;
    /// One-line description for the plan listing.
    fn summary(&self) -> String;
    /// Operations that create it for `network`.
    fn create_ops(&self, network: &str) -> Vec<Op>;
    /// Operations that remove it.
    fn delete_ops(&self) -> Vec<Op>;
    /// Why `have` cannot become `want` in place, if it cannot.
    fn replace_reason(have: &Self, want: &Self) -> Option<String>;
    /// In-place operations from `have` to `want`, each with a word for
    /// the change's reason.
    fn update(have: &Self, want: &Self, ops: &mut Vec<Op>, what: &mut Vec<String>);
}

/// Changes that make the `observed` objects match the `desired` ones.
pub(super) fn diff_resources<T: Resource>(
    desired: &BTreeMap<String, T>,
    observed: &BTreeMap<String, T>,
    out: &mut Vec<Change>,
) {
    for (net, want) in desired {
        let addr = format!("{}.{net}", T::PREFIX);
        match observed.get(net) {
            None => out.push(change(
                addr,
                Action::Create,
                T::PHASE,
                want.summary(),
                want.create_ops(net),
            )),
            Some(have) => {
                if let Some(reason) = T::replace_reason(have, want) {
                    let mut ops = have.delete_ops();
                    ops.extend(want.create_ops(net));
                    let mut c = change(addr, Action::Replace, T::PHASE, want.summary(), ops);
                    c.reason = Some(reason);
                    out.push(c);
                    continue;
                }
                let (mut ops, mut what) = (Vec::new(), Vec::new());
                T::update(have, want, &mut ops, &mut what);
                if !ops.is_empty() {
                    let mut c = change(addr, Action::Update, T::PHASE, want.summary(), ops);
                    c.reason = Some(what.join(", "));
                    out.push(c);
                }
            }
        }
    }
    for (net, have) in observed {
        if !desired.contains_key(net) {
            out.push(change(
                format!("{}.{net}", T::PREFIX),
                Action::Delete,
                T::PHASE,
                have.summary(),
                have.delete_ops(),
            ));
        }
    }
}

/// Removing a link of the host namespace.
pub(super) fn delete_link(name: &str) -> Vec<Op> {
    vec![Op::DeleteLink {
        netns: None,
        name: name.to_string(),
    }]
}
