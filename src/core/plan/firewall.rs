//! The nft table, networks' firewall data and published ports.

use super::*;

pub(super) fn port_summary(p: &FwPort) -> String {
    let host = p
        .host_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "0.0.0.0".into());
    let range = |s: u16| {
        if p.count == 1 {
            s.to_string()
        } else {
            format!("{s}-{}", s + (p.count - 1))
        }
    };
    format!(
        "{host}:{} -> {}:{}/{} ({})",
        range(p.host_port),
        p.container_ip,
        range(p.container_port),
        p.proto,
        p.container
    )
}

pub(super) fn diff_firewall(d: &State, o: &State, out: &mut Vec<Change>) {
    let empty = Firewall::default();
    let want = d.firewall.as_ref().map(|f| &f.fw).unwrap_or(&empty);
    let have = o.firewall.as_ref().map(|f| &f.fw).unwrap_or(&empty);
    let table_addr = "nft.table.netloom".to_string();
    match (&d.firewall, &o.firewall) {
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
    for (key, w) in &want.ports {
        let what = format!(
            "map {}/{} -> {}:{}",
            w.host_port, w.proto, w.container_ip, w.container_port
        );
        match have.ports.get(key) {
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
    for (key, h) in &have.ports {
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
    format!("{} {} [{}]", n.bridge, n.subnet, flags.join(","))
}
