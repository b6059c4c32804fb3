//! Names after a one-shot `apply` (no agent): hosts files, links that
//! follow addresses, user-defined networks both ways, resolv.conf. Real
//! `getent` and `ping` inside the namespaces.

mod common;

use common::{Host, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "ping", "getent", "unshare", "nsenter"];

fn tutorial_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/docker-tutorial.toml"
    ))
    .unwrap()
}

/// The address `name` resolves to in `ns`; `None` only when getent says
/// the name is not found (exit 2): any other failure fails the test.
fn getent(h: &Host, ns: &str, name: &str) -> Option<String> {
    let r = h.sh(&format!("ip netns exec {ns} getent hosts {name}"));
    match r.code {
        0 => Some(r.stdout.split_whitespace().next().unwrap_or("").to_string()),
        2 => None,
        _ => panic!(
            "getent hosts {name} in {ns} failed:\n{}{}",
            r.stdout, r.stderr
        ),
    }
}

#[test]
fn links_are_one_way_and_follow_the_address() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("t.toml", &tutorial_text());
    h.netloom(&cfg, &["apply"]).ok();

    // The seed's §2.
    assert_eq!(
        getent(&h, "tomcat2", "tomcat1").as_deref(),
        Some("172.17.0.3")
    );
    assert_eq!(
        getent(&h, "tomcat2", "tomcat").as_deref(),
        Some("172.17.0.3")
    );
    h.sh("ip netns exec tomcat2 ping -c1 -W2 tomcat1").ok();
    assert_eq!(getent(&h, "tomcat1", "tomcat2"), None, "links are one way");
    // Each sees its own name.
    assert_eq!(
        getent(&h, "tomcat1", "tomcat1").as_deref(),
        Some("172.17.0.3")
    );
    let hosts = h.sh("cat /etc/netns/tomcat2/hosts").ok().stdout.clone();
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains("172.17.0.4\ttomcat2"), "{hosts}");
    assert!(hosts.contains("172.17.0.3\ttomcat1 tomcat"), "{hosts}");

    // Readdress tomcat1: tomcat2's entry follows in the same apply.
    let moved = tutorial_text().replace(
        "[containers.tomcat1]\n",
        "[containers.tomcat1]\nnetworks = { bridge = { ip = \"172.17.0.50\" } }\n",
    );
    let cfg = h.config("t.toml", &moved);
    // The compact line by default, the whole diff with --verbose.
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout
            .contains("~ file./etc/netns/tomcat2/hosts  +1 line: 172.17.0.50 tomcat1 tomcat"),
        "{}",
        plan.stdout
    );
    let plan = h.netloom(&cfg, &["plan", "--verbose"]);
    assert!(
        plan.stdout.contains("+172.17.0.50\ttomcat1 tomcat"),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(
        getent(&h, "tomcat2", "tomcat1").as_deref(),
        Some("172.17.0.50")
    );
    h.sh("ip netns exec tomcat2 ping -c1 -W2 tomcat").ok();
}

#[test]
fn user_defined_networks_resolve_both_ways() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let text = tutorial_text().replace(
        "[containers.tomcat6]\nnetworks = [\"mynetwork\"]",
        "[containers.tomcat6]\nnetworks = { mynetwork = { aliases = [\"db\"] } }",
    );
    let cfg = h.config("t.toml", &text);
    h.netloom(&cfg, &["apply"]).ok();

    // The seed's §3: every pair, both ways, by name, name.network, alias.
    let members = [
        ("tomcat4", "192.168.0.2"),
        ("tomcat5", "192.168.0.3"),
        ("tomcat6", "192.168.0.4"),
    ];
    for (a, _) in members {
        for (b, ip) in members {
            if a != b {
                assert_eq!(getent(&h, a, b).as_deref(), Some(ip), "{a} -> {b}");
                assert_eq!(
                    getent(&h, a, &format!("{b}.mynetwork")).as_deref(),
                    Some(ip),
                    "{a} -> {b}.mynetwork"
                );
            }
        }
    }
    assert_eq!(getent(&h, "tomcat4", "db").as_deref(), Some("192.168.0.4"));
    h.sh(
        "ip netns exec tomcat4 ping -c1 -W2 tomcat5 && ip netns exec tomcat5 ping -c1 -W2 tomcat4",
    )
    .ok();
    // A container on another network resolves none of them.
    for b in ["tomcat4", "tomcat5", "tomcat6", "db"] {
        assert_eq!(getent(&h, "web", b), None, "web must not resolve {b}");
    }

    // Connect tomcat1 to mynetwork: members see it and it sees them.
    let connected = text.replace(
        "[containers.tomcat1]\n",
        "[containers.tomcat1]\nnetworks = [\"bridge\", \"mynetwork\"]\n",
    );
    let cfg = h.config("t.toml", &connected);
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(
        getent(&h, "tomcat4", "tomcat1").as_deref(),
        Some("192.168.0.5")
    );
    assert_eq!(
        getent(&h, "tomcat1", "tomcat5").as_deref(),
        Some("192.168.0.3")
    );
    h.sh("ip netns exec tomcat1 ping -c1 -W2 tomcat6").ok();
    // Still linked for tomcat2, at its bridge address.
    assert_eq!(
        getent(&h, "tomcat2", "tomcat1").as_deref(),
        Some("172.17.0.3")
    );
}

#[test]
fn hand_edits_are_drift_and_the_user_block_survives() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("t.toml", &tutorial_text());
    h.netloom(&cfg, &["apply"]).ok();
    let path = "/etc/netns/tomcat2/hosts";
    h.sh(&format!(
        "sed -i 's/^172.17.0.3\\ttomcat1 tomcat$/172.17.0.99\\ttomcat1 tomcat/' {path} && printf '10.1.2.3\\tmy-db\\n' >> {path}"
    ))
    .ok();
    assert_eq!(
        getent(&h, "tomcat2", "tomcat1").as_deref(),
        Some("172.17.0.99")
    );
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout
            .contains(&format!("file.{path}: edited outside netloom")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!("~ file.{path}")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(
        getent(&h, "tomcat2", "tomcat1").as_deref(),
        Some("172.17.0.3")
    );
    assert_eq!(
        getent(&h, "tomcat2", "my-db").as_deref(),
        Some("10.1.2.3"),
        "the user's line was lost"
    );
    assert_eq!(h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code, 0);

    // resolv.conf: with no agent serving the embedded DNS, only the
    // upstream servers (tests/kernel_dns.rs covers the agent's side).
    let r4 = h
        .sh("cat /etc/netns/tomcat4/resolv.conf")
        .ok()
        .stdout
        .clone();
    let lines: Vec<&str> = r4.lines().filter(|l| l.starts_with("nameserver")).collect();
    assert_eq!(lines, ["nameserver 10.99.0.2"], "{r4}");
    assert!(r4.contains("options ndots:0"), "{r4}");
    let rweb = h.sh("cat /etc/netns/web/resolv.conf").ok().stdout.clone();
    assert!(
        !rweb.contains("172.17.0.1"),
        "the default bridge has no DNS: {rweb}"
    );

    // down removes netloom's files and directories, and nothing else.
    h.sh("mkdir -p /etc/netns/other && echo x > /etc/netns/other/hosts")
        .ok();
    h.netloom(&cfg, &["down"]).ok();
    let left = h.sh("ls /etc/netns").ok().stdout.clone();
    assert_eq!(left.trim(), "other", "{left}");
}
