//! The IPv4 guarantees of `kernel_firewall.rs`, over IPv6: published
//! ports, client address, hairpin, outbound NAT, isolation, `icc`,
//! `internal` and the direct-access drop, checked with real `curl -6` and
//! `ping -6` from an "outside" namespace that has no IPv4 at all. Every
//! "cannot reach" stands beside a "can reach" over the same path, so a
//! broken sandbox cannot pass for a working firewall.

mod common;

use std::time::Duration;

use common::{Host, OUTSIDE6, UPLINK6, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "ping", "curl", "python3", "unshare", "nsenter"];

const CONFIG: &str = r#"
[networks.front]
subnet = "10.50.0.0/24"
subnet6 = "fd00:50::/64"

[containers.web]
networks = { front = { ip6 = "fd00:50::10" } }
ports = ["8080:80", "[fd99::1]:8081:80", "127.0.0.1:8082:80"]

[containers.client]
networks = { front = { ip6 = "fd00:50::11" } }

[networks.green]
subnet = "10.60.0.0/24"
subnet6 = "fd00:60::/64"

[containers.g1]
networks = { green = { ip6 = "fd00:60::10" } }

[networks.blue]
subnet = "10.70.0.0/24"
subnet6 = "fd00:70::/64"

[containers.b1]
networks = { blue = { ip6 = "fd00:70::10" } }

[networks.quiet]
subnet = "10.80.0.0/24"
subnet6 = "fd00:80::/64"
icc = false

[containers.q1]
networks = { quiet = { ip6 = "fd00:80::10" } }

[containers.q2]
networks = { quiet = { ip6 = "fd00:80::11" } }

[networks.vault]
subnet = "10.90.0.0/24"
subnet6 = "fd00:90::/64"
internal = true

[containers.v1]
networks = { vault = { ip6 = "fd00:90::10" } }

[containers.v2]
networks = { vault = { ip6 = "fd00:90::11" } }

[networks.plain]
subnet = "10.95.0.0/24"
subnet6 = "fd00:95::/64"
masquerade = false

[containers.p1]
networks = { plain = { ip6 = "fd00:95::10" } }
"#;

/// Starts an HTTP server in `ns` on every address (`::`, dual stack)
/// logging to `log`; waits until it accepts connections on `[ip]:port`.
fn http_server(h: &mut Host, ns: &str, ip: &str, port: u16, log: &std::path::Path) {
    h.spawn_logged(
        &format!("ip netns exec {ns} python3 -m http.server {port} --bind ::"),
        log,
    );
    assert!(
        h.wait_for(
            &format!("ip netns exec {ns} curl -6 -s -m 1 -o /dev/null http://[{ip}]:{port}/"),
            Duration::from_secs(10)
        ),
        "server in {ns} did not start"
    );
}

/// `curl -6` from `ns` (None: the host itself).
fn curl6(h: &Host, ns: Option<&str>, url: &str) -> bool {
    let prefix = ns
        .map(|n| format!("ip netns exec {n} "))
        .unwrap_or_default();
    h.sh(&format!("{prefix}curl -6 -sf -m 3 -o /dev/null {url}"))
        .code
        == 0
}

/// `ping -6` from `ns`, a few tries (the first may wait for neighbour
/// discovery).
fn ping6(h: &Host, ns: &str, ip: &str) -> bool {
    h.sh(&format!("ip netns exec {ns} ping -6 -c3 -i0.3 -W2 {ip}"))
        .code
        == 0
}

fn log_has_client(log: &std::path::Path, client: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&format!("{client} ")))
}

#[test]
fn ipv6_published_ports_outbound_nat_and_isolation() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::with_outside6();
    // A second address on the uplink, for "published on one address only".
    h.sh("ip addr add fd99::10/64 dev uplink0 nodad").ok();
    let cfg = h.config("v6.toml", CONFIG);
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(
        h.sh("cat /proc/sys/net/ipv6/conf/all/forwarding")
            .ok()
            .stdout
            .trim(),
        "1"
    );
    // The outside has no IPv4 at all.
    assert!(
        !h.sh("ip -n outside -4 addr show dev eth0")
            .ok()
            .stdout
            .contains("inet ")
    );
    assert!(
        ping6(&h, "outside", UPLINK6),
        "the sandbox uplink is broken"
    );

    let web_log = h.dir.path().join("web.log");
    http_server(&mut h, "web", "fd00:50::10", 80, &web_log);
    let url = |ip: &str, port: u16| format!("http://[{ip}]:{port}/");

    // From another host via the host's IPv6 address; source preserved.
    assert!(
        h.wait_for(
            &format!(
                "ip netns exec outside curl -6 -sf -m 2 -o /dev/null {}",
                url(UPLINK6, 8080)
            ),
            Duration::from_secs(10)
        ),
        "published port not reachable over IPv6"
    );
    assert!(
        log_has_client(&web_log, OUTSIDE6),
        "IPv6 client address not preserved: {}",
        std::fs::read_to_string(&web_log).unwrap_or_default()
    );
    // From the host itself, on its own IPv6 address.
    assert!(curl6(&h, None, &url(UPLINK6, 8080)));

    // [fd99::1]:8081 is published on that address only: reachable there,
    // not on the host's other address, where 8080 is (the control).
    assert!(curl6(&h, Some("outside"), &url(UPLINK6, 8081)));
    assert!(curl6(&h, Some("outside"), &url("fd99::10", 8080)));
    assert!(!curl6(&h, Some("outside"), &url("fd99::10", 8081)));

    // 127.0.0.1:8082 is an IPv4 loopback publication: the host reaches it,
    // IPv6 clients do not.
    assert!(
        h.sh("curl -4 -sf -m 3 -o /dev/null http://127.0.0.1:8082/")
            .code
            == 0
    );
    assert!(!curl6(&h, Some("outside"), &url(UPLINK6, 8082)));
    assert!(!curl6(&h, None, &url(UPLINK6, 8082)));

    // From another container and from the container itself (hairpin).
    assert!(curl6(&h, Some("client"), &url(UPLINK6, 8080)));
    assert!(curl6(&h, Some("web"), &url(UPLINK6, 8080)));

    // Not directly: even with a route to the container subnet, another
    // host cannot reach the container's IPv6 address; the host can.
    h.sh(&format!(
        "ip -n outside -6 route add fd00:50::/64 via {UPLINK6}"
    ))
    .ok();
    assert!(!curl6(&h, Some("outside"), &url("fd00:50::10", 80)));
    assert!(!ping6(&h, "outside", "fd00:50::10"));
    assert!(curl6(&h, None, &url("fd00:50::10", 80)));

    // Outbound: a container's request arrives from the host's address;
    // with masquerade = false, from the container's own.
    let out_log = h.dir.path().join("outside.log");
    http_server(&mut h, "outside", OUTSIDE6, 8000, &out_log);
    assert!(curl6(&h, Some("web"), &url(OUTSIDE6, 8000)));
    // Either of the uplink's addresses (source address selection picks).
    assert!(
        (log_has_client(&out_log, UPLINK6) || log_has_client(&out_log, "fd99::10"))
            && !log_has_client(&out_log, "fd00:50::10"),
        "IPv6 not masqueraded: {}",
        std::fs::read_to_string(&out_log).unwrap_or_default()
    );
    h.sh(&format!(
        "ip -n outside -6 route add fd00:95::/64 via {UPLINK6}"
    ))
    .ok();
    assert!(curl6(&h, Some("p1"), &url(OUTSIDE6, 8000)));
    assert!(
        log_has_client(&out_log, "fd00:95::10"),
        "masquerade = false still masqueraded IPv6: {}",
        std::fs::read_to_string(&out_log).unwrap_or_default()
    );

    // Isolation between networks: each reaches its own gateway, not the
    // other network.
    assert!(ping6(&h, "g1", "fd00:60::1"));
    assert!(ping6(&h, "b1", "fd00:70::1"));
    assert!(!ping6(&h, "g1", "fd00:70::10"), "green reached blue");
    assert!(!ping6(&h, "b1", "fd00:60::10"), "blue reached green");

    // icc = false: members reach the gateway, not each other.
    assert!(ping6(&h, "q1", "fd00:80::1"));
    assert!(
        !ping6(&h, "q1", "fd00:80::11"),
        "icc=false did not block IPv6"
    );

    // internal: members reach each other, nothing gets out, no route out.
    assert!(ping6(&h, "v1", "fd00:90::11"));
    assert!(
        !curl6(&h, Some("v1"), &url(OUTSIDE6, 8000)),
        "internal network got out over IPv6"
    );
    assert!(
        h.sh("ip -n v1 -6 route show default")
            .ok()
            .stdout
            .trim()
            .is_empty(),
        "internal network has an IPv6 default route"
    );

    // Counters count IPv6 flows as well.
    let status = h.netloom(&cfg, &["status", "--format", "json"]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let port = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == "port.web.[fd99::1]:8081/tcp")
        .unwrap();
    assert!(port["packets"].as_u64().unwrap() > 0, "{port}");
}

#[test]
fn a_v6_only_publication_needs_a_subnet6() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config(
        "bad.toml",
        "[containers.web]\nports = [\"[fd99::1]:8080:80\"]\n",
    );
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("has no subnet6"), "{}", r.stderr);
    assert!(h.sh("ip netns list").stdout.trim().is_empty());
}

/// A router advertisement as an attacker on the bridge sends it from its
/// container: the prefix 2001:db8:66::/64 for autoconfiguration, and the
/// sender as the default router for 30 minutes.
const ROGUE_RA: &str = r#"
import socket, struct
idx = socket.if_nametoindex("eth0")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
pio = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0)
pio += socket.inet_pton(socket.AF_INET6, "2001:db8:66::")
s.sendto(ra + pio, ("ff02::1", 0, 0, idx))
"#;

#[test]
fn a_rogue_router_on_an_ipv4_only_network_is_shut_out() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config(
        "v4only.toml",
        "[networks.v4only]\nsubnet = \"10.77.0.0/24\"\n\n\
         [containers.attacker]\nnetworks = [\"v4only\"]\n\n\
         [containers.victim]\nnetworks = [\"v4only\"]\n\n\
         [networks.dual]\nsubnet = \"10.78.0.0/24\"\nsubnet6 = \"fd00:78::/64\"\n\n\
         [containers.c6]\nnetworks = [\"dual\"]\n",
    );
    let ra = h.config("ra.py", ROGUE_RA);
    h.netloom(&cfg, &["apply"]).ok();
    fn ipv6_of(h: &Host, c: &str) -> String {
        h.sh(&format!("ip -n {c} -6 addr show dev eth0"))
            .ok()
            .stdout
            .clone()
    }
    fn disabled(h: &Host, c: &str) -> String {
        h.sh(&format!(
            "ip netns exec {c} cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6"
        ))
        .ok()
        .stdout
        .trim()
        .to_string()
    }
    fn route(h: &Host) -> String {
        h.sh("ip -n victim -6 route show default")
            .ok()
            .stdout
            .clone()
    }
    // The attacker, root in its container, has IPv6 on and advertises
    // itself as a router.
    fn arm(h: &Host) {
        h.sh("ip netns exec attacker sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0")
            .ok();
        assert!(
            h.wait_for(
                "ip -n attacker -6 addr show dev eth0 | grep -q fe80 && \\
                 ! ip -n attacker -6 addr show dev eth0 | grep -q tentative",
                Duration::from_secs(10)
            ),
            "{}",
            ipv6_of(h, "attacker")
        );
    }
    let advertise = format!("ip netns exec attacker python3 {}", ra.display());
    let took = format!("{advertise}; ip -n victim -6 addr show dev eth0 | grep -q 2001:db8:66");

    // The kernel's default: the victim takes the advertised address and
    // the attacker as its IPv6 router.
    arm(&h);
    assert!(
        h.wait_for(&took, Duration::from_secs(15)),
        "{}",
        ipv6_of(&h, "victim")
    );
    assert!(route(&h).contains("fe80::"), "{}", route(&h));
    // A plan shows it as drift; the apply takes it back and turns IPv6
    // off, so that the next advertisement finds nothing to set up.
    let plan = h.netloom(&cfg, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("container.victim.eth0"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("IPv6 off"), "{}", plan.stdout);
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(disabled(&h, "victim"), "1");
    // (The attacker took its own advertisement, so its IPv6 went off too.)
    arm(&h);
    for _ in 0..3 {
        h.sh(&advertise).ok();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !ipv6_of(&h, "victim").contains("inet6"),
        "{}",
        ipv6_of(&h, "victim")
    );
    assert!(route(&h).trim().is_empty(), "{}", route(&h));
    let again = h.netloom(&cfg, &["plan"]).ok().stdout.clone();
    assert!(!again.contains("container.victim"), "{again}");
    // The dual-stack network's interface keeps IPv6.
    assert!(
        ipv6_of(&h, "c6").contains("fd00:78::"),
        "{}",
        ipv6_of(&h, "c6")
    );
    assert_eq!(disabled(&h, "c6"), "0");

    // The agent does the same by itself, at the first advertisement.
    let (pid, log) = h.start_agent(&cfg);
    assert!(
        h.wait_for(
            &format!("grep -q 'reconciled in' {}", log.display()),
            Duration::from_secs(20)
        ),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    h.sh("ip netns exec victim sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0")
        .ok();
    arm(&h);
    assert!(
        h.wait_for(
            &format!(
                "{advertise}; [ $(ip netns exec victim cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6) = 1 ]"
            ),
            Duration::from_secs(20)
        ),
        "{}\n{}",
        ipv6_of(&h, "victim"),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        h.wait_for(
            "! ip -n victim -6 addr show dev eth0 | grep -q inet6",
            Duration::from_secs(5)
        ),
        "{}",
        ipv6_of(&h, "victim")
    );
    h.sh(&format!("kill {pid}")).ok();
    assert!(h.wait_for(&common::exited(pid), Duration::from_secs(20)));
    h.netloom(&cfg, &["down"]).ok();
}
