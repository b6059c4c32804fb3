//! Drift: what changed on the host since the last apply, outside netloom.

use super::*;

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
    for (k, v) in &applied.vxlans {
        cmp(
            &mut out,
            format!("vxlan.{k}"),
            Some(vxlan_drift_view(v)),
            observed.vxlans.get(k).map(vxlan_drift_view),
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
                what: if o.problems.is_empty() {
                    "chains or rules changed outside netloom".into()
                } else {
                    format!(
                        "chains or rules changed outside netloom: {}",
                        o.problems.join("; ")
                    )
                },
            }),
            Some(o) => {
                let had_bridge = crate::core::firewall::bridge_table_needed(&a.fw);
                match (had_bridge, o.bridge_table) {
                    (true, false) => out.push(Drift {
                        address: BRIDGE_TABLE_ADDR.into(),
                        what: "deleted outside netloom".into(),
                    }),
                    (false, true) => out.push(Drift {
                        address: BRIDGE_TABLE_ADDR.into(),
                        what: "added outside netloom".into(),
                    }),
                    _ => {}
                }
                let applied_keys = crate::core::firewall::element_keys(&a.fw);
                for s in &o.strays {
                    let how = if applied_keys.contains(&(s.set.clone(), s.key.clone())) {
                        "changed"
                    } else {
                        "added"
                    };
                    out.push(Drift {
                        address: element_addr(s),
                        what: format!("{how} outside netloom: {}", s.text),
                    });
                }
            }
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
        let changed = o.map(|o| !model::file_matches(v, o));
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

pub(super) fn bridge_drift_view(b: &Bridge) -> String {
    let state = if b.up { "" } else { " (down)" };
    format!("{} mtu {} mac {}{state}", bridge_summary(b), b.mtu, b.mac)
}

/// The parts of an endpoint whose change outside netloom is drift.
pub(super) fn endpoint_drift_view(e: &Endpoint) -> String {
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
