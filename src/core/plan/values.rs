//! Before and after values of a change, for programs reading the JSON
//! plan: the object as observed and as desired, in the model's own types.

use serde_json::Value;

use super::*;

/// `(before, after)` of the object at `address`: `None` where it does
/// not exist (before a create, after a destroy).
pub(super) fn before_after(address: &str, d: &State, o: &State) -> (Option<Value>, Option<Value>) {
    let pick = |s: &State| value_at(address, s);
    (pick(o), pick(d))
}

fn to_value<T: Serialize>(v: Option<&T>) -> Option<Value> {
    v.and_then(|v| serde_json::to_value(v).ok())
}

fn value_at(address: &str, s: &State) -> Option<Value> {
    let fw = s.firewall.as_ref().map(|f| &f.fw);
    if let Some(k) = address.strip_prefix("sysctl.") {
        return to_value(s.sysctls.get(k));
    }
    if let Some(n) = address.strip_prefix("nft.network.") {
        return to_value(fw.and_then(|f| f.networks.get(n)));
    }
    if let Some(n) = address.strip_prefix("nft.vxlan.") {
        return to_value(fw.and_then(|f| f.vxlans.get(n)));
    }
    if address.starts_with("nft.") {
        // The table as a whole: present or not, and whether its chains and
        // rules are netloom's own.
        return s
            .firewall
            .as_ref()
            .map(|f| serde_json::json!({ "skeleton_ok": f.skeleton_ok }));
    }
    if let Some(n) = address.strip_prefix("vxlan.") {
        return to_value(s.vxlans.get(n));
    }
    if let Some(n) = address.strip_prefix("network.") {
        return to_value(s.bridges.get(n));
    }
    if let Some(k) = address.strip_prefix("port.") {
        return to_value(fw.and_then(|f| f.ports.get(k)));
    }
    if let Some(p) = address.strip_prefix("file.") {
        return s
            .files
            .get(p)
            .map(|t| serde_json::json!({ "lines": t.lines().count(), "content": t }));
    }
    if let Some(k) = address.strip_prefix("container.") {
        return to_value(s.endpoints.get(k)).or_else(|| to_value(s.namespaces.get(k)));
    }
    None
}
