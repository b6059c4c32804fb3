//! Pure tests: no root, no kernel. Fixtures were captured from nft 1.0.6
//! (`nft -j list table inet|bridge netloom` after applying `sample()`).

use super::*;

const SAMPLE_INET: &str = include_str!("fixtures/sample_inet.json");
const SAMPLE_BRIDGE: &str = include_str!("fixtures/sample_bridge.json");
const FLUSHED_CHAIN_INET: &str = include_str!("fixtures/flushed_chain_inet.json");

pub(crate) fn net(bridge: &str, subnet: &str) -> FwNetwork {
    FwNetwork {
        bridge: bridge.to_string(),
        subnet: subnet.parse().expect("test subnet"),
        subnet6: None,
        masquerade: true,
        internal: false,
        icc: true,
    }
}

pub(crate) fn port(container: &str, ip: &str, host_port: u16, container_port: u16) -> FwPort {
    FwPort {
        container: container.to_string(),
        network: "bridge".to_string(),
        bridge: "docker0".to_string(),
        host_ip: None,
        host_port,
        container_ip: Some(ip.parse().expect("test ip")),
        container_ip6: None,
        container_port,
        count: 1,
        proto: Proto::Tcp,
    }
}

const NGINX6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 2);

/// The state the fixtures were captured from.
pub(crate) fn sample() -> Firewall {
    let mut fw = Firewall::default();
    fw.networks.insert(
        "bridge".into(),
        FwNetwork {
            icc: false,
            subnet6: Some("fd00:17::/64".parse().expect("subnet6")),
            ..net("docker0", "172.17.0.0/16")
        },
    );
    fw.networks.insert(
        "two".into(),
        FwNetwork {
            internal: true,
            ..net("br-two", "172.18.0.0/16")
        },
    );
    // Dual stack: published on every address of both families.
    fw.ports_mut().insert(
        "nginx.8080/tcp".into(),
        FwPort {
            container_ip6: Some(NGINX6),
            ..port("nginx", "172.17.0.2", 8080, 80)
        },
    );
    // On one IPv6 host address only.
    fw.ports_mut().insert(
        "nginx.[fd00::1]:8443/tcp".into(),
        FwPort {
            host_ip: Some("fd00::1".parse().expect("ip")),
            container_ip: None,
            container_ip6: Some(NGINX6),
            ..port("nginx", "172.17.0.2", 8443, 443)
        },
    );
    fw.ports_mut().insert(
        "nginx.127.0.0.1:9000-9002/udp".into(),
        FwPort {
            host_ip: Some(Ipv4Addr::LOCALHOST.into()),
            count: 3,
            proto: Proto::Udp,
            ..port("nginx", "172.17.0.2", 9000, 9000)
        },
    );
    fw
}

/// Both tables' listings joined, as `observe` does.
fn sample_doc(inet: &str, bridge: Option<&str>) -> String {
    let mut items = Vec::new();
    for doc in std::iter::once(inet).chain(bridge) {
        let v: Value = serde_json::from_str(doc).expect("fixture JSON");
        items.extend(
            v["nftables"]
                .as_array()
                .expect("fixture array")
                .iter()
                .cloned(),
        );
    }
    json!({ "nftables": items }).to_string()
}

fn sample_observed() -> Observed {
    parse_observed(&sample_doc(SAMPLE_INET, Some(SAMPLE_BRIDGE))).expect("fixture parses")
}

#[test]
fn proto_display_and_parse() {
    for p in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
        assert_eq!(p.to_string().parse::<Proto>().expect("round trip"), p);
    }
    assert!("icmp".parse::<Proto>().is_err());
    assert_eq!(
        serde_json::to_string(&Proto::Sctp).expect("json"),
        "\"sctp\""
    );
}

#[test]
fn render_is_stable_and_ordered() {
    let fw = sample();
    let a = render(&fw);
    assert_eq!(a, render(&fw.clone()));
    // Elements of a range are listed in port order, one per line.
    let p9000 = a.find("udp . 9000").expect("9000 rendered");
    let p9002 = a.find("udp . 9002").expect("9002 rendered");
    assert!(p9000 < p9002);
    assert!(a.contains("table bridge netloom"));
    // Without icc=false there is no bridge table at all.
    let mut fw2 = fw.clone();
    fw2.networks.get_mut("bridge").expect("bridge").icc = true;
    assert!(!render(&fw2).contains("table bridge netloom {"));
}

#[test]
fn every_rule_has_a_comment_and_chain() {
    for r in rules() {
        assert!(!r.comment.is_empty(), "{}", r.text);
        assert!(
            CHAINS
                .iter()
                .any(|c| c.family == r.family && c.name == r.chain),
            "{}",
            r.chain
        );
    }
}

#[test]
fn fixture_round_trips() {
    let o = sample_observed();
    assert!(o.skeleton_ok, "{:?}", o.problems);
    assert!(o.problems.is_empty());
    assert_eq!(o.nft_version.as_deref(), Some("1.0.6"));
    assert_eq!(o.fw, sample());
    assert_eq!(o.text(), render(&sample()));
    assert!(plan_transaction(&sample(), Some(&o)).is_empty());
    let counters = port_counters(&o);
    assert_eq!(counters.get("nginx.8080/tcp"), Some(&(0, 0)));
    assert_eq!(counters.len(), 3);
}

#[test]
fn equal_states_plan_nothing() {
    let o = sample_observed();
    let tx = plan_transaction(&sample(), Some(&o));
    assert!(tx.is_empty());
    assert_eq!((tx.elements_added(), tx.elements_removed()), (0, 0));
    assert!(!tx.full_rebuild());
    assert!(tx.ops().is_empty());
}

/// The sample with one port more published: `web.8081/tcp`.
fn one_port_more() -> Firewall {
    let mut fw = sample();
    fw.ports_mut()
        .insert("web.8081/tcp".into(), port("web", "172.17.0.3", 8081, 80));
    fw
}

#[test]
fn adding_one_port_adds_one_element() {
    let tx = plan_transaction(&one_port_more(), Some(&sample_observed()));
    assert!(!tx.full_rebuild());
    assert_eq!((tx.elements_added(), tx.elements_removed()), (1, 0));
    assert_eq!(
        tx.script(),
        "add element inet netloom dnat_any { tcp . 8081 comment \"web.8081/tcp web bridge docker0\" : 172.17.0.3 . 80 }\n"
    );
    let json: Value = serde_json::from_str(&tx.to_json()).expect("tx json");
    assert_eq!(json["elements_added"], 1);
    assert_eq!(json["ops"][0]["op"], "add_element");
}

#[test]
fn a_port_range_is_one_element_per_port() {
    let o = sample_observed();
    let mut fw = sample();
    fw.ports_mut().insert(
        "web.8000-8009/udp".into(),
        FwPort {
            count: 10,
            proto: Proto::Udp,
            ..port("web", "172.17.0.3", 8000, 7000)
        },
    );
    let tx = plan_transaction(&fw, Some(&o));
    assert_eq!((tx.elements_added(), tx.elements_removed()), (10, 0));
    assert!(tx.script().contains("udp . 8009 comment"));
    assert!(tx.script().contains(": 172.17.0.3 . 7009"));
}

#[test]
fn removing_ports_and_networks_deletes_elements() {
    let o = sample_observed();
    let mut fw = sample();
    fw.ports_mut().remove("nginx.127.0.0.1:9000-9002/udp");
    let tx = plan_transaction(&fw, Some(&o));
    assert_eq!((tx.elements_added(), tx.elements_removed()), (0, 3));
    assert_eq!(
        tx.script(),
        "delete element inet netloom dnat_hostip { 127.0.0.1 . udp . 9000, 127.0.0.1 . udp . 9001, 127.0.0.1 . udp . 9002 }\n"
    );

    // Dropping the internal network removes its 4 elements (bridges,
    // intra_bridge, internal_bridges, subnets) and nothing else.
    let mut fw = sample();
    fw.networks.remove("two");
    let tx = plan_transaction(&fw, Some(&o));
    assert_eq!((tx.elements_added(), tx.elements_removed()), (0, 4));
}

#[test]
fn changed_target_replaces_the_element() {
    let o = sample_observed();
    let mut fw = sample();
    fw.ports_mut()
        .get_mut("nginx.8080/tcp")
        .expect("port")
        .container_ip = Some("172.17.0.9".parse().expect("ip"));
    let tx = plan_transaction(&fw, Some(&o));
    assert_eq!((tx.elements_added(), tx.elements_removed()), (1, 1));
    let del = tx.script().find("delete element").expect("delete");
    let add = tx.script().find("add element").expect("add");
    assert!(del < add, "deletions must come first");
}

#[test]
fn port_elements_are_encoded_as_the_kernel_stores_them() {
    let o = sample_observed();
    let tx = plan_transaction(&one_port_more(), Some(&o));
    // `tcp . 8081 : 172.17.0.3 . 80`, as `nft --debug=netlink` shows it:
    // each part in a 4-byte register, the port big-endian.
    assert_eq!(
        tx.port_edits(),
        Some(
            &[ElementEdit {
                delete: false,
                map: "dnat_any",
                key: vec![6, 0, 0, 0, 0x1f, 0x91, 0, 0],
                data: vec![172, 17, 0, 3, 0, 80, 0, 0],
                comment: "web.8081/tcp web bridge docker0".into(),
            }][..]
        )
    );
    // A host address and UDP; deleted: the key, in the script's order.
    let mut fw = sample();
    fw.ports_mut().remove("nginx.127.0.0.1:9000-9002/udp");
    let tx = plan_transaction(&fw, Some(&o));
    let edits = tx.port_edits().expect("ports only");
    assert_eq!(edits.len(), 3);
    assert!(edits.iter().all(|e| e.delete && e.map == "dnat_hostip"));
    assert_eq!(
        edits[2].key,
        vec![127, 0, 0, 1, 17, 0, 0, 0, 0x23, 0x2a, 0, 0]
    );
    // A replaced target: the delete before the add, as in the script.
    let mut fw = sample();
    fw.ports_mut()
        .get_mut("nginx.8080/tcp")
        .expect("port")
        .container_ip = Some("172.17.0.9".parse().expect("ip"));
    let tx = plan_transaction(&fw, Some(&o));
    let edits = tx.port_edits().expect("ports only");
    assert_eq!(
        edits.iter().map(|e| e.delete).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(&edits[1].data[..4], &[172, 17, 0, 9]);
}

#[test]
fn only_a_few_port_elements_bypass_the_script() {
    let o = sample_observed();
    // A network's elements are not ports.
    let mut fw = sample();
    fw.networks.remove("two");
    assert_eq!(plan_transaction(&fw, Some(&o)).port_edits(), None);
    // Nor is a table made or deleted.
    let mut fw = sample();
    fw.networks.get_mut("bridge").expect("bridge").icc = true;
    assert_eq!(plan_transaction(&fw, Some(&o)).port_edits(), None);
    assert_eq!(plan_transaction(&sample(), None).port_edits(), None);
    // Nothing to do is nothing to send.
    assert_eq!(plan_transaction(&sample(), Some(&o)).port_edits(), None);
    // A port added beside a network: the script, all in one.
    let mut fw = one_port_more();
    fw.networks.remove("two");
    assert_eq!(plan_transaction(&fw, Some(&o)).port_edits(), None);
    // More than PORT_EDITS_MAX ports: the script.
    let mut fw = sample();
    let n = PORT_EDITS_MAX as u16;
    fw.ports_mut().insert(
        "web.20000/tcp".into(),
        FwPort {
            count: n + 1,
            ..port("web", "172.17.0.3", 20000, 20000)
        },
    );
    assert_eq!(plan_transaction(&fw, Some(&o)).port_edits(), None);
    fw.ports_mut().get_mut("web.20000/tcp").expect("port").count = n;
    assert_eq!(
        plan_transaction(&fw, Some(&o)).port_edits().map(<[_]>::len),
        Some(PORT_EDITS_MAX)
    );
}

#[test]
fn icc_toggle_creates_or_deletes_the_bridge_table_only() {
    let o = sample_observed();
    let mut fw = sample();
    fw.networks.get_mut("bridge").expect("bridge").icc = true;
    let tx = plan_transaction(&fw, Some(&o));
    // The network's flags live in its `bridges` comment: one replaced element.
    assert!(!tx.full_rebuild());
    assert!(tx.script().contains("delete table bridge netloom"));
    assert!(!tx.script().contains("delete table inet"));

    let o = parse_observed(&sample_doc(SAMPLE_INET, None)).expect("inet only");
    let tx = plan_transaction(&sample(), Some(&o));
    assert!(tx.full_rebuild());
    assert!(tx.script().contains("table bridge netloom {"));
    assert!(!tx.script().contains("table inet netloom {"));
}

#[test]
fn missing_table_is_a_full_rebuild() {
    let fw = sample();
    let tx = plan_transaction(&fw, None);
    assert!(tx.full_rebuild());
    assert_eq!(tx.elements_added(), desired_elements(&fw).len());
    assert!(
        tx.script()
            .starts_with("add table inet netloom\ndelete table inet netloom\n")
    );
    // The created table carries netloom's mark, ahead of its sets.
    let marked = render(&fw).replacen(" {\n", &format!(" {{\n\tcomment \"{TABLE_MARK}\"\n"), 1);
    assert!(tx.script().contains(&marked[..120]), "{}", tx.script());
}

#[test]
fn changed_skeleton_is_detected_and_rebuilt() {
    let o = parse_observed(&sample_doc(FLUSHED_CHAIN_INET, Some(SAMPLE_BRIDGE))).expect("parses");
    assert!(!o.skeleton_ok);
    assert!(
        o.problems.iter().any(|p| p.contains("forward_filter")),
        "{:?}",
        o.problems
    );
    // The data is still read, so status can show ports and counters.
    assert_eq!(o.fw, sample());
    assert!(
        o.text()
            .contains("# skeleton differs: chain forward_filter")
    );
    let tx = plan_transaction(&sample(), Some(&o));
    assert!(tx.full_rebuild());
    // Only the broken table is rebuilt; the bridge table is fine.
    assert!(!tx.script().contains("delete table bridge"));
    // Every element but the bridge table's two (IPv4 and IPv6 subnet).
    assert_eq!(tx.elements_removed(), o.element_count() - 2);
}

#[test]
fn unexpected_objects_break_the_skeleton() {
    let mut v: Value = serde_json::from_str(SAMPLE_INET).expect("fixture");
    let items = v["nftables"].as_array_mut().expect("array");
    items.push(
        json!({"rule": {"family": "inet", "table": "netloom", "chain": "forward_filter",
        "handle": 99, "expr": [{"accept": null}]}}),
    );
    let o = parse_observed(&v.to_string()).expect("parses");
    assert!(!o.skeleton_ok);
    assert!(parse_observed("{}").is_err());
    assert!(parse_observed("not json").is_err());
}

#[test]
fn counters_sum_over_a_range() {
    let mut v: Value = serde_json::from_str(SAMPLE_INET).expect("fixture");
    for item in v["nftables"].as_array_mut().expect("array") {
        if let Some(m) = item.get_mut("map")
            && m["name"] == "dnat_hostip"
        {
            for e in m["elem"].as_array_mut().expect("elems") {
                e[0]["elem"]["counter"] = json!({"packets": 2, "bytes": 100});
            }
        }
    }
    let o = parse_observed(&v.to_string()).expect("parses");
    assert_eq!(
        port_counters(&o).get("nginx.127.0.0.1:9000-9002/udp"),
        Some(&(6, 300))
    );
}

#[test]
fn sysctls() {
    let s = required_sysctls(&sample());
    assert!(s.contains(&("net.ipv4.ip_forward".into(), "1".into())));
    assert!(s.contains(&("net.ipv4.conf.docker0.route_localnet".into(), "1".into())));
    assert!(s.contains(&("net.ipv6.conf.all.forwarding".into(), "1".into())));
    let mut fw = sample();
    for p in fw.ports_mut().values_mut() {
        p.host_ip = Some("10.0.0.1".parse().expect("ip"));
    }
    assert_eq!(required_sysctls(&fw).len(), 2);
    // No subnet6 anywhere: no IPv6 forwarding.
    for n in fw.networks.values_mut() {
        n.subnet6 = None;
    }
    assert_eq!(required_sysctls(&fw).len(), 1);
    assert!(required_sysctls(&Firewall::default()).is_empty());
}

#[test]
fn validate_finds_clashes() {
    assert!(validate(&sample()).is_empty(), "{:?}", validate(&sample()));
    let mut fw = sample();
    fw.ports_mut().insert(
        "other.8080/tcp".into(),
        port("other", "172.17.0.5", 8080, 80),
    );
    fw.networks
        .insert("three".into(), net("br-3", "172.17.128.0/24"));
    fw.ports_mut().insert(
        "x.65535/tcp".into(),
        FwPort {
            count: 2,
            ..port("x", "172.17.0.6", 65535, 80)
        },
    );
    let errs = validate(&fw);
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn dual_stack_elements_and_families() {
    let fw = sample();
    let els = desired_elements(&fw);
    let sets = |k: &str| -> Vec<&'static str> {
        els.iter()
            .filter(|(_, d)| d.comment.starts_with(k))
            .map(|((s, _), _)| s.name())
            .collect()
    };
    // Every address: one element per family; one IPv6 address: IPv6 only.
    assert_eq!(sets("nginx.8080/tcp "), ["dnat_any", "dnat6_any"]);
    assert_eq!(sets("nginx.[fd00::1]:8443/tcp "), ["dnat6_hostip"]);
    assert_eq!(sets("nginx.127.0.0.1:"), ["dnat_hostip"; 3]);
    // The network's subnet6 is in the IPv6 sets, masqueraded and isolated.
    let s6 = |set: SetId| {
        els.contains_key(&(set, ElemKey::Prefix6("fd00:17::/64".parse().expect("net"))))
    };
    assert!(s6(SetId::Subnets6) && s6(SetId::MasqSubnets6) && s6(SetId::IsolatedSubnets6));
    // masquerade=false and internal leave it out of masq_subnets6.
    let mut fw2 = fw.clone();
    fw2.networks.get_mut("bridge").expect("bridge").masquerade = false;
    assert!(
        !desired_elements(&fw2)
            .keys()
            .any(|(s, _)| *s == SetId::MasqSubnets6)
    );
    // An IPv6-only port of a container without IPv6 is refused.
    let mut fw3 = fw.clone();
    fw3.ports_mut()
        .get_mut("nginx.[fd00::1]:8443/tcp")
        .expect("port")
        .container_ip6 = None;
    assert_eq!(validate(&fw3).len(), 2, "{:?}", validate(&fw3));
    // Same host port on different families' specific addresses: no clash;
    // an IPv6 address and [::] on one port: clash.
    let mut fw4 = fw.clone();
    fw4.ports_mut().insert(
        "web.[::]:8443/tcp".into(),
        FwPort {
            host_ip: Some(Ipv6Addr::UNSPECIFIED.into()),
            container_ip: None,
            container_ip6: Some(Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0, 0, 0, 3)),
            ..port("web", "172.17.0.3", 8443, 443)
        },
    );
    assert_eq!(validate(&fw4).len(), 1, "{:?}", validate(&fw4));
    fw4.ports_mut().insert(
        "web.10.0.0.1:8443/tcp".into(),
        FwPort {
            host_ip: Some("10.0.0.1".parse().expect("ip")),
            ..port("web", "172.17.0.3", 8443, 443)
        },
    );
    assert_eq!(validate(&fw4).len(), 1, "{:?}", validate(&fw4));
}

#[test]
fn ipv4_any_rules_do_not_see_ipv6_and_back() {
    // The "any address" maps are keyed by port only: each rule using one
    // must be pinned to its family, or IPv6 packets would count (and look
    // up) in the IPv4 map.
    for r in rules() {
        if r.text.contains("@dnat_any") {
            assert!(r.text.starts_with("meta nfproto ipv4 "), "{}", r.text);
        }
        if r.text.contains("@dnat6_any") {
            assert!(r.text.starts_with("meta nfproto ipv6 "), "{}", r.text);
        }
    }
}

#[test]
fn port_comment_parses_from_the_right() {
    assert_eq!(
        parse_port_comment("a key with spaces c n b"),
        Some(("a key with spaces", "c", "n", "b"))
    );
    assert_eq!(parse_port_comment("too short"), None);
}

#[test]
fn firewall_serde_round_trip() {
    let fw = sample();
    let s = serde_json::to_string(&fw).expect("serialize");
    assert!(s.contains("\"172.17.0.0/16\""));
    let back: Firewall = serde_json::from_str(&s).expect("deserialize");
    assert_eq!(back, fw);
}

/// The sample listing with `extra` appended to map `dnat_any`'s elements.
fn with_dnat_any_elem(extra: Value) -> Observed {
    let mut inet: Value = serde_json::from_str(SAMPLE_INET).expect("fixture JSON");
    for item in inet["nftables"].as_array_mut().expect("fixture array") {
        if item["map"]["name"] == "dnat_any" {
            item["map"]["elem"]
                .as_array_mut()
                .expect("elements")
                .push(extra.clone());
        }
    }
    parse_observed(&sample_doc(&inet.to_string(), Some(SAMPLE_BRIDGE))).expect("parse")
}

#[test]
fn a_fixture_has_no_strays() {
    assert!(sample_observed().strays.is_empty());
}

#[test]
fn a_hand_added_element_is_a_stray_and_deleted() {
    // `nft add element inet netloom dnat_any { tcp . 2222 : 8.8.8.8 . 22 }`
    let o = with_dnat_any_elem(json!([{"concat": ["tcp", 2222]}, {"concat": ["8.8.8.8", 22]}]));
    assert!(o.skeleton_ok);
    assert_eq!(o.fw, sample(), "the stray explains no port");
    assert_eq!(o.strays.len(), 1, "{:?}", o.strays);
    assert_eq!(o.strays[0].set, "dnat_any");
    assert_eq!(o.strays[0].key, "tcp . 2222");
    let tx = plan_transaction(&sample(), Some(&o));
    assert!(
        tx.script()
            .contains("delete element inet netloom dnat_any { tcp . 2222 }"),
        "{}",
        tx.script()
    );
    assert_eq!(tx.elements_removed(), 1);
    assert_eq!(tx.elements_added(), 0);
}

#[test]
fn an_element_with_a_borrowed_comment_is_a_stray() {
    // Someone copies a real port's comment onto their own forward: the
    // port now looks like a range of two, which the file does not say.
    let o = with_dnat_any_elem(json!([
        {"elem": {"val": {"concat": ["tcp", 8081]}, "comment": "nginx.8080/tcp nginx bridge docker0"}},
        {"concat": ["8.8.8.8", 22]}
    ]));
    assert!(!o.strays.is_empty());
    assert_ne!(o.fw, sample());
    let tx = plan_transaction(&sample(), Some(&o));
    assert!(tx.script().contains("tcp . 8081"), "{}", tx.script());
}

#[test]
fn element_keys_cover_every_desired_element() {
    let keys = element_keys(&sample());
    assert!(keys.contains(&("dnat_any".to_string(), "tcp . 8080".to_string())));
    assert!(keys.contains(&("bridges".to_string(), "\"docker0\"".to_string())));
    assert!(bridge_table_needed(&sample()));
}

#[test]
#[ignore = "writes the sample's rendering for capturing fixtures"]
fn write_sample_rendering() {
    std::fs::write("/tmp/netloom-sample.nft", render(&sample())).expect("write");
}
