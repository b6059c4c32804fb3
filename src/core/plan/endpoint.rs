//! Endpoints: a container's veth pair on one network, its addresses,
//! MAC and routes.

use super::*;

pub(super) fn endpoint_summary(e: &Endpoint) -> String {
    let addrs: Vec<&str> = e.addrs.iter().map(String::as_str).collect();
    format!(
        "{} on {} via {} ({}, {})",
        e.ifname,
        e.network,
        e.host_veth,
        addrs.join(" "),
        e.mac
    )
}

pub(super) fn endpoint_create_ops(e: &Endpoint) -> Vec<Op> {
    let ns = Some(e.netns.clone());
    let mut ops = vec![Op::CreateVeth {
        host: e.host_veth.clone(),
        peer: e.ifname.clone(),
        netns: e.netns.clone(),
        mac: e.mac.clone(),
        mtu: e.mtu,
        alias: model::veth_alias(&e.container, &e.network, &e.ifname),
    }];
    if let Some(b) = &e.bridge {
        ops.push(Op::SetMaster {
            name: e.host_veth.clone(),
            bridge: b.clone(),
        });
        if e.hairpin {
            ops.push(Op::SetHairpin {
                name: e.host_veth.clone(),
            });
        }
    }
    ops.push(Op::LinkUp {
        netns: None,
        name: e.host_veth.clone(),
    });
    ops.extend(e.addrs.iter().map(|a| Op::AddAddr {
        netns: ns.clone(),
        dev: e.ifname.clone(),
        addr: a.clone(),
    }));
    ops.push(Op::LinkUp {
        netns: ns.clone(),
        name: e.ifname.clone(),
    });
    if let Some(g) = e.gateway {
        ops.push(Op::AddDefaultRoute {
            netns: e.netns.clone(),
            dev: e.ifname.clone(),
            gateway: IpAddr::V4(g),
        });
    }
    if let Some(g) = e.gateway6 {
        ops.push(Op::AddDefaultRoute {
            netns: e.netns.clone(),
            dev: e.ifname.clone(),
            gateway: IpAddr::V6(g),
        });
    }
    ops
}

pub(super) fn diff_endpoints(d: &State, o: &State, out: &mut Vec<Change>) {
    for (key, want) in d.endpoints.iter() {
        let have = o.endpoints.get(key);
        // An endpoint exactly as wanted and up needs nothing (the common
        // case: decided before anything is rendered for it).
        if have.is_some_and(|h| h == want && h.up) {
            continue;
        }
        let addr = format!("container.{key}");
        let Some(have) = have else {
            out.push(change(
                addr,
                Action::Create,
                P_ENDPOINT,
                endpoint_summary(want),
                endpoint_create_ops(want),
            ));
            continue;
        };
        let forced = if have.ifname != want.ifname {
            Some(format!("{} is missing inside {}", want.ifname, want.netns))
        } else if have.netns != want.netns {
            Some(format!("namespace {} -> {}", have.netns, want.netns))
        } else if have.network != want.network {
            Some(format!("network {} -> {}", have.network, want.network))
        } else if have.host_veth != want.host_veth {
            Some(format!("veth {} -> {}", have.host_veth, want.host_veth))
        } else {
            None
        };
        if let Some(reason) = forced {
            let mut ops = vec![Op::DeleteLink {
                netns: None,
                name: have.host_veth.clone(),
            }];
            ops.extend(endpoint_create_ops(want));
            let mut c = change(
                addr,
                Action::Replace,
                P_ENDPOINT,
                endpoint_summary(want),
                ops,
            );
            c.reason = Some(reason);
            out.push(c);
            continue;
        }
        let ns = Some(want.netns.clone());
        let mut ops = Vec::new();
        let mut what = Vec::new();
        if have.bridge != want.bridge {
            if let Some(b) = &want.bridge {
                ops.push(Op::SetMaster {
                    name: want.host_veth.clone(),
                    bridge: b.clone(),
                });
                what.push(format!("master {}", b));
            }
        }
        // A port that joined a bridge anew starts without hairpin.
        if want.hairpin && (!have.hairpin || have.bridge != want.bridge) {
            ops.push(Op::SetHairpin {
                name: want.host_veth.clone(),
            });
            if have.bridge == want.bridge {
                what.push("hairpin on".into());
            }
        }
        if have.mtu != want.mtu {
            ops.push(Op::SetMtu {
                netns: None,
                name: want.host_veth.clone(),
                mtu: want.mtu,
            });
            ops.push(Op::SetMtu {
                netns: ns.clone(),
                name: want.ifname.clone(),
                mtu: want.mtu,
            });
            what.push(format!("mtu {} -> {}", have.mtu, want.mtu));
        }
        if have.mac != want.mac {
            ops.push(Op::SetMac {
                netns: Some(want.netns.clone()),
                name: want.ifname.clone(),
                mac: want.mac.clone(),
            });
            what.push(format!("mac {} -> {}", have.mac, want.mac));
        }
        // Routes go before their addresses are removed (the kernel drops a
        // route whose gateway becomes unreachable) and after new ones exist.
        if have.gateway != want.gateway {
            if let Some(g) = have.gateway {
                ops.push(Op::DelDefaultRoute {
                    netns: want.netns.clone(),
                    gateway: IpAddr::V4(g),
                });
            }
        }
        if have.gateway6 != want.gateway6 {
            if let Some(g) = have.gateway6 {
                ops.push(Op::DelDefaultRoute {
                    netns: want.netns.clone(),
                    gateway: IpAddr::V6(g),
                });
            }
        }
        // An interface that is to get an IPv6 address may have IPv6 off
        // (turned off below while its network was IPv4-only), and one
        // without IPv6 takes no IPv6 address: on first.
        if model::has_ipv6(&want.addrs) && !model::has_ipv6(&have.addrs) {
            ops.push(Op::SetIpv6 {
                netns: want.netns.clone(),
                dev: want.ifname.clone(),
                on: true,
            });
        }
        addr_ops(
            ns.as_ref(),
            &want.ifname,
            &want.addrs,
            &have.addrs,
            &mut ops,
            &mut what,
        );
        // IPv6 on an IPv4-only network's interface took what a router
        // advertisement on the bridge offered (which another container
        // can send, Docker's CVE-2024-32473): an address, a default
        // route. They went above; IPv6 goes off on the interface, so that
        // the next advertisement finds nothing to configure.
        if !model::has_ipv6(&want.addrs)
            && (model::has_ipv6(&have.addrs) || have.gateway6.is_some())
        {
            ops.push(Op::SetIpv6 {
                netns: want.netns.clone(),
                dev: want.ifname.clone(),
                on: false,
            });
            what.push("IPv6 off (an IPv4-only network)".into());
        }
        if !have.up {
            ops.push(Op::LinkUp {
                netns: None,
                name: want.host_veth.clone(),
            });
            ops.push(Op::LinkUp {
                netns: ns.clone(),
                name: want.ifname.clone(),
            });
            what.push("down -> up".into());
        }
        // An address change removes the routes through it: re-add.
        let readdressed = have.addrs != want.addrs;
        if have.gateway != want.gateway || (readdressed && want.gateway.is_some()) {
            if let Some(g) = want.gateway {
                ops.push(Op::AddDefaultRoute {
                    netns: want.netns.clone(),
                    dev: want.ifname.clone(),
                    gateway: IpAddr::V4(g),
                });
            }
            if have.gateway != want.gateway {
                what.push(format!(
                    "default route {} -> {}",
                    have.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "none".into()),
                    want.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "none".into())
                ));
            }
        }
        if have.gateway6 != want.gateway6 || (readdressed && want.gateway6.is_some()) {
            if let Some(g) = want.gateway6 {
                ops.push(Op::AddDefaultRoute {
                    netns: want.netns.clone(),
                    dev: want.ifname.clone(),
                    gateway: IpAddr::V6(g),
                });
            }
        }
        if !ops.is_empty() {
            let mut c = change(
                addr,
                Action::Update,
                P_ENDPOINT,
                endpoint_summary(want),
                ops,
            );
            c.reason = Some(what.join(", "));
            out.push(c);
        }
    }
    for (key, have) in o.endpoints.iter() {
        if !d.endpoints.contains_key(key) {
            out.push(change(
                format!("container.{key}"),
                Action::Delete,
                P_ENDPOINT,
                endpoint_summary(have),
                vec![Op::DeleteLink {
                    netns: None,
                    name: have.host_veth.clone(),
                }],
            ));
        }
    }
}

/// `plan` with no veth deletion for an endpoint whose named namespace the
/// plan deletes: the kernel destroys both ends of such a veth with the
/// namespace, in one batch, where a deletion each costs a netlink round
/// trip and an RCU grace period (what makes `down` of a large host slow).
/// The changes stay (reported as done); only their operations go. A veth
/// whose namespace outlives its file (a process still in it) is left to
/// the caller to remove afterwards.
pub fn without_veths_of_deleted_namespaces(plan: &Plan, observed: &State) -> Plan {
    let deleted: BTreeSet<&str> = plan.deleted_namespaces().collect();
    let mut out = plan.clone();
    for c in &mut out.changes {
        if c.action != Action::Delete {
            continue;
        }
        let goes_with_netns = c
            .address
            .strip_prefix("container.")
            .and_then(|key| observed.endpoints.get(key))
            .is_some_and(|e| matches!(&e.netns, NsRef::Named(n) if deleted.contains(n.as_str())));
        if goes_with_netns {
            c.ops
                .retain(|op| !matches!(op, Op::DeleteLink { netns: None, .. }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_teardown_leaves_veths_to_their_deleted_namespaces() {
        let text = "[networks.n]\nsubnet = \"10.1.0.0/24\"\n\
                    [containers.a]\nnetworks = [\"n\"]\n\
                    [containers.b]\nnetworks = [\"n\"]\nnetns_path = \"/proc/77/ns/net\"\n";
        let spec = crate::core::spec::load("t.toml", text).unwrap();
        let host = model::HostInfo::default();
        let st = model::resolve(&spec, &Default::default(), &host)
            .unwrap()
            .state;
        let plan = diff(&State::default(), &st, None);
        let fast = without_veths_of_deleted_namespaces(&plan, &st);
        let ops = |p: &Plan, addr: &str| -> Vec<String> {
            let c = p.changes.iter().find(|c| c.address == addr).unwrap();
            c.ops.iter().map(ToString::to_string).collect()
        };
        // The same changes, in the same order.
        let addrs = |p: &Plan| {
            p.changes
                .iter()
                .map(|c| c.address.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs(&fast), addrs(&plan));
        assert!(ops(&plan, "container.a.eth0")[0].contains("link del veth"));
        assert!(ops(&fast, "container.a.eth0").is_empty());
        // An attached namespace stays: its veth must still be deleted.
        assert_eq!(
            ops(&fast, "container.b.eth0"),
            ops(&plan, "container.b.eth0")
        );
        assert!(
            ops(&fast, "container.a")[0].contains("netns del a"),
            "{:?}",
            ops(&fast, "container.a")
        );
        assert!(ops(&fast, "network.n")[0].contains("link del br-"));
    }

    fn endpoint(addrs: &[&str], gateway6: Option<&str>) -> Endpoint {
        Endpoint {
            container: "c1".into(),
            network: "net".into(),
            netns: NsRef::Named("c1".into()),
            ifname: "eth0".into(),
            host_veth: "veth0c1".into(),
            bridge: Some("br-net".into()),
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            mac: "02:42:0a:00:00:02".into(),
            mtu: 1500,
            gateway: Some("10.0.0.1".parse().unwrap()),
            gateway6: gateway6.map(|g| g.parse().unwrap()),
            up: true,
            hairpin: false,
        }
    }

    /// The changes from `have` (observed) to `want` (desired).
    fn changes(want: Option<Endpoint>, have: Option<Endpoint>) -> Vec<Change> {
        let state = |e: Option<Endpoint>| {
            let mut st = State::default();
            if let Some(e) = e {
                st.endpoints_mut().insert("c1.eth0".into(), e);
            }
            st
        };
        let mut out = Vec::new();
        diff_endpoints(&state(want), &state(have), &mut out);
        out
    }

    fn ipv6_op(on: bool) -> Op {
        Op::SetIpv6 {
            netns: NsRef::Named("c1".into()),
            dev: "eth0".into(),
            on,
        }
    }

    fn at(ops: &[Op], wanted: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(wanted).expect("no such operation")
    }

    #[test]
    fn a_new_interface_keeps_the_kernels_ipv6_setting() {
        // Turning it off at creation would cost a /proc/sys lookup in
        // each namespace, whose time grows with the number of namespaces
        // (see the README, "IPv6 on IPv4-only networks").
        for addrs in [&["10.0.0.2/24"][..], &["10.0.0.2/24", "fd00::2/64"]] {
            let c = changes(Some(endpoint(addrs, None)), None);
            assert!(
                !c[0].ops.iter().any(|o| matches!(o, Op::SetIpv6 { .. })),
                "{:#?}",
                c[0].ops
            );
        }
    }

    #[test]
    fn what_a_router_advertisement_left_goes_and_ipv6_goes_off() {
        let want = endpoint(&["10.0.0.2/24"], None);
        let have = endpoint(&["10.0.0.2/24", "2001:db8:66::2/64"], Some("fe80::1"));
        let c = changes(Some(want.clone()), Some(have));
        let ops = &c[0].ops;
        let route = at(ops, |o| matches!(o, Op::DelDefaultRoute { .. }));
        let addr = at(
            ops,
            |o| matches!(o, Op::DelAddr { addr, .. } if addr == "2001:db8:66::2/64"),
        );
        let off = at(ops, |o| *o == ipv6_op(false));
        assert!(route < off && addr < off, "{ops:#?}");
        assert!(c[0].reason.as_deref().unwrap_or("").contains("IPv6 off"));
        // Once it is off, nothing is left to do.
        assert!(changes(Some(want.clone()), Some(want)).is_empty());
    }

    #[test]
    fn a_network_that_gains_ipv6_turns_it_on_before_the_address() {
        let want = endpoint(&["10.0.0.2/24", "fd00::2/64"], None);
        let have = endpoint(&["10.0.0.2/24"], None);
        let c = changes(Some(want), Some(have));
        let ops = &c[0].ops;
        let on = at(ops, |o| *o == ipv6_op(true));
        let add = at(
            ops,
            |o| matches!(o, Op::AddAddr { addr, .. } if addr == "fd00::2/64"),
        );
        assert!(on < add, "{ops:#?}");
        assert!(!ops.contains(&ipv6_op(false)), "{ops:#?}");
    }
}
