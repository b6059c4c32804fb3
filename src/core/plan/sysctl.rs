//! Sysctls netloom needs (forwarding, route_localnet).

use super::*;

pub(super) fn diff_sysctls(d: &State, o: &State, out: &mut Vec<Change>) {
    for (k, v) in &d.sysctls {
        let cur = o.sysctls.get(k);
        if cur != Some(v) {
            // Per-interface keys need the interface: set them after networks.
            let phase = if k.starts_with("net.ipv4.conf.") {
                P_NFT_TABLE
            } else {
                P_SYSCTL
            };
            // A key that cannot be read yet (offline, or of an interface
            // still to be made) is set, not changed.
            let action = if cur.is_some() {
                Action::Update
            } else {
                Action::Create
            };
            let summary = match cur {
                Some(c) => format!("{c} -> {v}"),
                None => format!("= {v}"),
            };
            let mut c = change(
                format!("sysctl.{k}"),
                action,
                phase,
                summary,
                vec![Op::Sysctl {
                    key: k.clone(),
                    value: v.clone(),
                }],
            );
            c.reason = cur.is_some().then(|| "value".into());
            out.push(c);
        }
    }
}
