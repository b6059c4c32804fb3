//! Ports, outbound NAT and isolation through `netloom apply`, checked with
//! real `curl` against real servers in a throwaway host with an "outside"
//! namespace as the remote client.

mod common;

use std::time::Duration;

use common::{Host, OUTSIDE_IP, UPLINK_IP, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "ping", "curl", "python3", "unshare", "nsenter"];

const CONFIG: &str = r#"
[containers.web]
ports = ["8080:80", "127.0.0.1:8081:80"]

[containers.client]

[networks.green]
subnet = "10.60.0.0/24"

[networks.blue]
subnet = "10.70.0.0/24"

[containers.g1]
networks = ["green"]

[containers.b1]
networks = ["blue"]

[networks.quiet]
subnet = "10.80.0.0/24"
icc = false

[containers.q1]
networks = ["quiet"]

[containers.q2]
networks = ["quiet"]

[networks.vault]
subnet = "10.90.0.0/24"
internal = true

[containers.v1]
networks = ["vault"]

[containers.v2]
networks = ["vault"]
"#;

/// Starts an HTTP server in `ns` on `ip:port` logging to `log`; waits
/// until it accepts connections.
fn http_server(h: &mut Host, ns: &str, ip: &str, port: u16, log: &std::path::Path) {
    h.spawn_logged(
        &format!("ip netns exec {ns} python3 -m http.server {port} --bind {ip}"),
        log,
    );
    assert!(
        h.wait_for(
            &format!("ip netns exec {ns} curl -s -m 1 -o /dev/null http://{ip}:{port}/"),
            Duration::from_secs(10)
        ),
        "server in {ns} did not start"
    );
}

fn curl(h: &Host, ns: Option<&str>, url: &str) -> bool {
    let prefix = ns
        .map(|n| format!("ip netns exec {n} "))
        .unwrap_or_default();
    h.sh(&format!("{prefix}curl -sf -m 3 -o /dev/null {url}"))
        .code
        == 0
}

#[test]
fn published_ports_outbound_nat_and_isolation() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::with_outside();
    let cfg = h.config("fw.toml", CONFIG);
    h.netloom(&cfg, &["apply"]).ok();
    let web_log = h.dir.path().join("web.log");
    http_server(&mut h, "web", "172.17.0.2", 80, &web_log);

    // From another host, via the host's uplink address; source preserved.
    assert!(curl(
        &h,
        Some("outside"),
        &format!("http://{UPLINK_IP}:8080/")
    ));
    let log = std::fs::read_to_string(&web_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("{OUTSIDE_IP} "))),
        "client address not preserved: {log}"
    );
    // From the host itself, on 127.0.0.1 and on its own address.
    assert!(curl(&h, None, "http://127.0.0.1:8080/"));
    assert!(curl(&h, None, &format!("http://{UPLINK_IP}:8080/")));
    // 127.0.0.1:8081 is published on loopback only: the host reaches it,
    // the outside does not reach 8081 on the uplink address.
    assert!(curl(&h, None, "http://127.0.0.1:8081/"));
    assert!(!curl(
        &h,
        Some("outside"),
        &format!("http://{UPLINK_IP}:8081/")
    ));
    // From another container and from the container itself (hairpin).
    assert!(curl(
        &h,
        Some("client"),
        &format!("http://{UPLINK_IP}:8080/")
    ));
    assert!(curl(&h, Some("web"), &format!("http://{UPLINK_IP}:8080/")));
    // Not directly: another host cannot reach the container's address.
    assert!(!curl(&h, Some("outside"), "http://172.17.0.2:80/"));

    // Outbound: a container's request arrives from the uplink address.
    let out_log = h.dir.path().join("outside.log");
    http_server(&mut h, "outside", OUTSIDE_IP, 8000, &out_log);
    assert!(curl(&h, Some("web"), &format!("http://{OUTSIDE_IP}:8000/")));
    let log = std::fs::read_to_string(&out_log).unwrap();
    assert!(
        log.lines().any(|l| l.starts_with(&format!("{UPLINK_IP} "))),
        "not masqueraded: {log}"
    );

    // Isolation between networks, within icc=false, and for internal. Each
    // "cannot reach" is paired with a "can reach" control, so that a
    // container without a working network cannot pass for isolation.
    h.sh("ip netns exec g1 ping -c1 -W1 10.60.0.1").ok();
    h.sh("ip netns exec b1 ping -c1 -W1 10.70.0.1").ok();
    h.sh("ip -n b1 addr show eth0 | grep -q 'inet 10.70.0.2/'")
        .ok();
    h.sh("ip -n g1 addr show eth0 | grep -q 'inet 10.60.0.2/'")
        .ok();
    assert_ne!(
        h.sh("ip netns exec g1 ping -c1 -W1 10.70.0.2").code,
        0,
        "green reached blue"
    );
    assert_ne!(
        h.sh("ip netns exec b1 ping -c1 -W1 10.60.0.2").code,
        0,
        "blue reached green"
    );
    // icc=false: both members reach their gateway, not each other.
    h.sh("ip netns exec q1 ping -c1 -W1 10.80.0.1").ok();
    h.sh("ip netns exec q2 ping -c1 -W1 10.80.0.1").ok();
    h.sh("ip -n q2 addr show eth0 | grep -q 'inet 10.80.0.3/'")
        .ok();
    assert_ne!(
        h.sh("ip netns exec q1 ping -c1 -W1 10.80.0.3").code,
        0,
        "icc=false did not block"
    );
    // internal: members reach each other, and the outside server that a
    // normal network reaches (checked just above, from web) is out of reach.
    h.sh("ip netns exec v1 ping -c1 -W1 10.90.0.3").ok();
    assert!(curl(&h, Some("web"), &format!("http://{OUTSIDE_IP}:8000/")));
    assert!(
        !curl(&h, Some("v1"), &format!("http://{OUTSIDE_IP}:8000/")),
        "internal network got out"
    );
    assert!(
        h.sh("ip -n v1 route show default")
            .ok()
            .stdout
            .trim()
            .is_empty(),
        "internal network has a default route"
    );

    // Counters per mapping, like iptables -nvL.
    let status = h.netloom(&cfg, &["status", "--format", "json"]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let port = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == "port.web.8080/tcp")
        .unwrap();
    assert!(port["packets"].as_u64().unwrap() > 0, "{port}");
}

#[test]
fn one_more_port_is_one_element() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::with_outside();
    let cfg = h.config("p.toml", "[containers.web]\nports = [\"8080:80\"]\n");
    h.netloom(&cfg, &["apply"]).ok();
    let cfg = h.config(
        "p.toml",
        "[containers.web]\nports = [\"8080:80\", \"9090:90/udp\"]\n",
    );
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout
            .contains("Plan: 1 to add, 0 to change, 0 to destroy."),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("+ port.web.9090/udp"),
        "{}",
        plan.stdout
    );
    let apply = h.netloom(&cfg, &["apply"]);
    apply.ok();
    assert!(
        apply
            .stderr
            .contains("0 netlink writes, 1 nft transaction(s) with 1 element(s)"),
        "{}",
        apply.stderr
    );
    // A range publishes one element per port, still one address.
    let cfg = h.config(
        "p.toml",
        "[containers.web]\nports = [\"8080:80\", \"9090:90/udp\", \"7000-7002:7000-7002\"]\n",
    );
    let apply = h.netloom(&cfg, &["apply"]);
    apply.ok();
    assert!(
        apply
            .stdout
            .contains("Plan: 1 to add, 0 to change, 0 to destroy."),
        "{}",
        apply.stdout
    );
    assert!(
        apply
            .stderr
            .contains("1 nft transaction(s) with 3 element(s)"),
        "{}",
        apply.stderr
    );
}

#[test]
fn flushed_ruleset_is_restored_and_foreign_tables_untouched() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::with_outside();
    let cfg = h.config("f.toml", "[containers.web]\nports = [\"8080:80\"]\n");
    h.netloom(&cfg, &["apply"]).ok();
    let web_log = h.dir.path().join("web.log");
    http_server(&mut h, "web", "172.17.0.2", 80, &web_log);
    assert!(curl(
        &h,
        Some("outside"),
        &format!("http://{UPLINK_IP}:8080/")
    ));

    h.sh("nft flush ruleset").ok();
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout
            .contains("nft.table.netloom: deleted outside netloom"),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert!(
        curl(&h, Some("outside"), &format!("http://{UPLINK_IP}:8080/")),
        "service not restored"
    );

    // A foreign table with a counter: untouched by apply and down.
    h.sh("nft add table ip mine && nft add chain ip mine c '{ type filter hook input priority 5; }' && nft add rule ip mine c counter").ok();
    h.sh(&format!("ping -c2 -W1 {OUTSIDE_IP}")).ok();
    let before = h.sh("nft list table ip mine").ok().stdout.clone();
    let cfg2 = h.config(
        "f.toml",
        "[containers.web]\nports = [\"8080:80\", \"8082:80\"]\n",
    );
    h.netloom(&cfg2, &["apply"]).ok();
    assert_eq!(h.sh("nft list table ip mine").ok().stdout, before);
    h.netloom(&cfg2, &["down"]).ok();
    assert_eq!(h.sh("nft list table ip mine").ok().stdout, before);
    assert!(!h.sh("nft list tables").ok().stdout.contains("netloom"));
}

#[test]
fn a_host_port_in_use_is_a_conflict() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    h.spawn("python3 -m http.server 8088 --bind 0.0.0.0");
    assert!(h.wait_for(
        "curl -s -m 1 -o /dev/null http://127.0.0.1:8088/",
        Duration::from_secs(10)
    ));
    let cfg = h.config("c.toml", "[containers.web]\nports = [\"8088:80\"]\n");
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr
            .contains("host port 0.0.0.0:8088/tcp is already in use"),
        "{}",
        r.stderr
    );
    assert!(
        h.netns_list().trim().is_empty(),
        "a refused apply changed something"
    );
}

/// Anything in netloom's tables that the file does not explain is drift:
/// a hand-added DNAT element (a silent port forward under netloom's name),
/// an edited element, an extra chain, a deleted or foreign `bridge` table.
/// `plan` lists each, `status` exits 2, `apply` removes it.
#[test]
fn hand_made_nft_objects_are_drift_and_removed() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config(
        "s.toml",
        "[containers.web]\nports = [\"8080:80\"]\n\n[networks.quiet]\nsubnet = \"10.80.0.0/24\"\nicc = false\n\n[containers.q1]\nnetworks = [\"quiet\"]\n",
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert!(
        h.netloom(&cfg, &["plan"])
            .ok()
            .stdout
            .contains("No changes."),
        "not converged"
    );

    // A silent port forward, added by hand.
    h.sh("nft add element inet netloom dnat_any '{ tcp . 2222 : 8.8.8.8 . 22 }'")
        .ok();
    let plan = h.netloom(&cfg, &["plan"]);
    plan.ok();
    assert!(
        plan.stdout
            .contains("nft.element.inet.dnat_any[tcp . 2222]: added outside netloom"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 0 to add, 0 to change, 1 to destroy."),
        "{}",
        plan.stdout
    );
    assert_eq!(h.netloom(&cfg, &["status"]).code, 2);
    h.netloom(&cfg, &["apply"]).ok();
    assert!(
        !h.sh("nft list map inet netloom dnat_any")
            .ok()
            .stdout
            .contains("2222"),
        "stray element survived apply"
    );
    assert_eq!(h.netloom(&cfg, &["status"]).code, 0);

    // A subnet slipped into the masquerade set, and netloom's own port
    // element redirected elsewhere.
    h.sh("nft add element inet netloom masq_subnets '{ 10.99.0.0/16 }'")
        .ok();
    h.sh("nft delete element inet netloom dnat_any '{ tcp . 8080 }' && nft add element inet netloom dnat_any '{ tcp . 8080 : 8.8.8.8 . 80 }'")
        .ok();
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout
            .contains("nft.element.inet.masq_subnets[10.99.0.0/16]"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("port.web.8080/tcp"), "{}", plan.stdout);
    h.netloom(&cfg, &["apply"]).ok();
    let map = h
        .sh("nft list map inet netloom dnat_any")
        .ok()
        .stdout
        .clone();
    assert!(
        map.contains("172.17.0.2 . 80") && !map.contains("8.8.8.8"),
        "{map}"
    );
    assert!(
        !h.sh("nft list set inet netloom masq_subnets")
            .ok()
            .stdout
            .contains("10.99.0.0"),
    );

    // An extra chain in netloom's table: the table is re-created.
    h.sh("nft add chain inet netloom sneaky").ok();
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout.contains("unexpected chain sneaky"),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert!(
        !h.sh("nft list table inet netloom")
            .ok()
            .stdout
            .contains("sneaky")
    );

    // The icc=false table deleted by hand.
    h.sh("nft delete table bridge netloom").ok();
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout
            .contains("nft.table.bridge.netloom: deleted outside netloom"),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(h.sh("nft list table bridge netloom").code, 0);
    assert_eq!(h.netloom(&cfg, &["status"]).code, 0);
    h.netloom(&cfg, &["down"]).ok();
}
