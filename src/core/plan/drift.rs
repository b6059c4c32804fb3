//! Drift: what changed on the host since the last apply, outside netloom.

use super::*;

/// What changed outside netloom: every address of the last applied state
/// that the kernel no longer holds as applied.
pub fn drift(applied: &State, observed: &State) -> Vec<Drift> {
    let mut out = Vec::new();
    for (k, v) in &applied.sysctls {
        compare(
            &mut out,
            "sysctl",
            k,
            v,
            observed.sysctls.get(k),
            String::clone,
        );
    }
    for (k, b) in &applied.bridges {
        compare(
            &mut out,
            "network",
            k,
            b,
            observed.bridges.get(k),
            bridge_drift_view,
        );
    }
    for (k, v) in &applied.vxlans {
        compare(
            &mut out,
            "vxlan",
            k,
            v,
            observed.vxlans.get(k),
            vxlan_drift_view,
        );
    }
    for (k, n) in applied.namespaces.iter() {
        let o = observed.namespaces.get(k).map(|x| &x.netns);
        compare(&mut out, "container", k, &n.netns, o, NsRef::to_string);
    }
    for (k, e) in applied.endpoints.iter() {
        let o = observed.endpoints.get(k);
        compare(&mut out, "container", k, e, o, endpoint_drift_view);
    }
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
                // Every element's key, only when some element needs one.
                let applied_keys = if o.strays.is_empty() {
                    BTreeSet::new()
                } else {
                    crate::core::firewall::element_keys(&a.fw)
                };
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
        if let Some(o) = &observed.firewall {
            for (k, p) in a.fw.ports.iter() {
                compare(&mut out, "port", k, p, o.fw.ports.get(k), port_summary);
            }
        }
    }
    // The files still there are compared all at once (their hashes are
    // computed together), then reported in order.
    let files: Vec<(&String, &str, Option<&model::FileText>)> = applied
        .files
        .iter()
        .map(|(k, v)| (k, &**v, observed.files.get(k)))
        .collect();
    let pairs: Vec<(&str, &model::FileText)> = files
        .iter()
        .filter_map(|(_, v, o)| Some((*v, (*o)?)))
        .collect();
    let mut matches = model::files_match(&pairs).into_iter();
    for (k, _, o) in files {
        let what = match o {
            None => "deleted outside netloom",
            Some(_) if matches.next() == Some(false) => "edited outside netloom",
            Some(_) => continue,
        };
        out.push(Drift {
            address: format!("file.{k}"),
            what: what.into(),
        });
    }
    out
}

/// Drift of the object `PREFIX.KEY` that was `a` when applied and is `o`
/// now: deleted, or changed as its `view` shows. Equal objects have equal
/// views, so only objects that differ are rendered (a plan of a large host
/// compares thousands of unchanged ones).
fn compare<T: PartialEq + ?Sized>(
    out: &mut Vec<Drift>,
    prefix: &str,
    key: &str,
    a: &T,
    o: Option<&T>,
    view: impl Fn(&T) -> String,
) {
    let what = match o {
        None => "deleted outside netloom".to_string(),
        Some(o) if o == a => return,
        Some(o) => {
            let (a, o) = (view(a), view(o));
            if a == o {
                return;
            }
            format!("changed outside netloom: {o} (was {a})")
        }
    };
    out.push(Drift {
        address: format!("{prefix}.{key}"),
        what,
    });
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
