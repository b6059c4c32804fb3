//! A valid file still never reconfigures the host: the namespace netloom
//! runs in, a namespace given to two containers, an address the host
//! already has are refused at plan time with the object named and nothing
//! changed; an overlapping host route and a missing `host_ip` are warned
//! about. Each case in a throwaway host. The host's own namespace is
//! reached through a process inside the sandbox (never /proc/1, which is
//! the real machine's).

mod common;

use common::{Host, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "unshare", "nsenter"];

/// Interfaces, addresses, routes and nft tables of the sandbox host.
fn snapshot(h: &Host) -> String {
    h.sh("ip -o link; ip -o addr; ip route; nft list tables; ls /run/netns")
        .stdout
}

#[test]
fn the_namespace_netloom_runs_in_is_refused() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let own = h.spawn("sleep 100000");
    let before = snapshot(&h);
    let cfg = h.config(
        "t.toml",
        &format!("[containers.evil]\nnetns_path = \"/proc/{own}/ns/net\"\n"),
    );
    for cmd in ["plan", "apply"] {
        let r = h.netloom(&cfg, &[cmd]);
        assert_eq!(r.code, 1, "{cmd}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("container `evil`")
                && r.stderr.contains("the network namespace netloom runs in")
                && r.stderr.contains("nothing was changed"),
            "{cmd}: {}",
            r.stderr
        );
    }
    assert_eq!(snapshot(&h), before, "the host changed");
}

#[test]
fn one_namespace_for_two_containers_is_refused() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    h.sh("ip netns add theirs").ok();
    let inside = h.spawn("ip netns exec theirs sleep 100000");
    // Wait until the process has entered the namespace.
    assert!(h.wait_for(
        &format!(
            "[ \"$(stat -Lc %i /proc/{inside}/ns/net)\" = \"$(stat -Lc %i /run/netns/theirs)\" ]"
        ),
        std::time::Duration::from_secs(10)
    ));
    let before = snapshot(&h);
    let cfg = h.config(
        "t.toml",
        &format!(
            "[containers.a]\nnetns_path = \"/run/netns/theirs\"\n[containers.b]\nnetns_path = \"/proc/{inside}/ns/net\"\n"
        ),
    );
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("container `b`")
            && r.stderr.contains("network namespace of container `a`"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(&h), before, "the host changed");
}

#[test]
fn addresses_of_the_host_are_refused() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    h.sh("ip link add dummy0 type veth peer name dummy1 && ip addr add 10.9.9.1/24 dev dummy0 && ip addr add 10.9.9.5/24 dev dummy0 && ip link set dummy0 up")
        .ok();
    let before = snapshot(&h);
    // The gateway is the host's address.
    let cfg = h.config(
        "gw.toml",
        "[networks.n]\nsubnet = \"10.9.0.0/16\"\ngateway = \"10.9.9.1\"\n[containers.a]\nnetworks = [\"n\"]\n",
    );
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(
            "network `n`: gateway 10.9.9.1 is already an address of the host (interface dummy0)"
        ),
        "{}",
        r.stderr
    );
    // A container's fixed address is the host's.
    let cfg = h.config(
        "ip.toml",
        "[networks.n]\nsubnet = \"10.9.0.0/16\"\n[containers.a]\nnetworks = { n = { ip = \"10.9.9.5\" } }\n",
    );
    let r = h.netloom(&cfg, &["plan"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("container.a.eth0: address 10.9.9.5 is already an address of the host (interface dummy0)"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshot(&h), before, "the host changed");
}

#[test]
fn overlapping_routes_and_missing_host_ips_are_warned_about() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    h.sh("ip link add dummy0 type veth peer name dummy1 && ip addr add 10.8.3.1/24 dev dummy0 && ip link set dummy0 up")
        .ok();
    let cfg = h.config(
        "t.toml",
        "[networks.n]\nsubnet = \"10.8.0.0/16\"\n[containers.a]\nnetworks = [\"n\"]\nports = [\"192.0.2.77:8080:80\"]\n",
    );
    let r = h.netloom(&cfg, &["plan"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Warning: network `n`: subnet 10.8.0.0/16 overlaps the host's route to 10.8.3.0/24 dev dummy0"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("host_ip 192.0.2.77 is not an address of this host"),
        "{}",
        r.stdout
    );
    // IPv6 alike: the host's IPv6 routes are read when a network has an
    // IPv6 subnet.
    h.sh("ip -6 addr add fd00:8:0:3::1/64 dev dummy0").ok();
    let cfg6 = h.config(
        "t6.toml",
        "[networks.n6]\nsubnet = \"10.9.0.0/16\"\nsubnet6 = \"fd00:8::/56\"\n[containers.b]\nnetworks = [\"n6\"]\n",
    );
    let r = h.netloom(&cfg6, &["plan"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Warning: network `n6`: subnet fd00:8::/56 overlaps the host's route to fd00:8:0:3::/64 dev dummy0"),
        "{}",
        r.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    let s = h.netloom(&cfg, &["status"]);
    assert!(
        s.stderr
            .contains("host_ip 192.0.2.77 is not an address of this host"),
        "{}{}",
        s.stdout,
        s.stderr
    );
    h.netloom(&cfg, &["down"]).ok();
}
