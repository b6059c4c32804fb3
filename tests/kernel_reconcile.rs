//! The kernel reconciler against the real kernel, each test in its own
//! throwaway host (tests/common). Real tools check the result.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::{Host, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "ping", "unshare", "nsenter"];

fn tutorial() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/docker-tutorial.toml"
    ))
}

/// The addresses a plan lists (`+ network.x  ...` -> `network.x`).
fn planned(plan: &str) -> BTreeSet<String> {
    plan.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let rest = ["+ ", "- ", "~ ", "-/+ "]
                .iter()
                .find_map(|p| t.strip_prefix(p))?;
            (l.len() - t.len() == 2)
                .then(|| rest.split_whitespace().next().unwrap_or("").to_string())
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// ifindex of `dev` inside namespace `ns` (`ip netns exec` mounts that
/// namespace's sysfs; the sandbox's own /sys shows the machine's).
fn ifindex(h: &Host, ns: &str, dev: &str) -> String {
    h.sh(&format!(
        "ip netns exec {ns} cat /sys/class/net/{dev}/ifindex"
    ))
    .ok()
    .stdout
    .trim()
    .to_string()
}

#[test]
fn tutorial_topology_applies_and_converges() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = tutorial();

    // A dry run changes nothing.
    let dry = h.netloom(&cfg, &["apply", "--dry-run", "--detailed-exitcode"]);
    assert_eq!(dry.code, 2, "{}", dry.stderr);
    assert!(dry.stdout.contains("+ network.bridge"));
    assert_ne!(
        h.sh("ip link show docker0").code,
        0,
        "dry run created docker0"
    );
    assert!(h.netns_list().trim().is_empty());

    let apply = h.netloom(&cfg, &["apply"]);
    apply.ok();
    assert!(apply.stderr.contains("Apply complete!"), "{}", apply.stderr);

    let docker0 = h.sh("ip -4 addr show docker0").ok().stdout.clone();
    assert!(docker0.contains("inet 172.17.0.1/16"), "{docker0}");
    let web = h.sh("ip -n web addr show eth0").ok().stdout.clone();
    assert!(web.contains("inet 172.17.0.2/16"), "{web}");
    assert!(web.contains("link/ether 02:42:ac:11:00:02"), "{web}");
    let route = h.sh("ip -n web route show default").ok().stdout.clone();
    assert!(route.contains("default via 172.17.0.1 dev eth0"), "{route}");
    let master = h.sh("ip -o link show master docker0").ok().stdout.clone();
    assert_eq!(
        master.lines().count(),
        3,
        "web, tomcat1, tomcat2 on docker0: {master}"
    );
    let lo = h.sh("ip -n tomcat4 link show lo").ok().stdout.clone();
    assert!(lo.contains("UP"), "{lo}");

    // docker network inspect, from the live kernel.
    let inspect = h.netloom(&cfg, &["inspect", "mynetwork", "--format", "json"]);
    inspect.ok();
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    let net = &v[0];
    assert_eq!(net["Name"], "mynetwork");
    assert_eq!(net["Driver"], "bridge");
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "192.168.0.0/16");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "192.168.0.1");
    assert_eq!(net["Internal"], false);
    let members: BTreeSet<String> = net["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            format!(
                "{} {} {}",
                c["Name"].as_str().unwrap(),
                c["IPv4Address"].as_str().unwrap(),
                c["MacAddress"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        members,
        set(&[
            "tomcat4 192.168.0.2/16 02:42:c0:a8:00:02",
            "tomcat5 192.168.0.3/16 02:42:c0:a8:00:03",
            "tomcat6 192.168.0.4/16 02:42:c0:a8:00:04"
        ])
    );
    assert_eq!(h.netloom(&cfg, &["inspect", "nosuchnet"]).code, 1);

    // Containers on one network reach each other.
    h.sh("ip netns exec tomcat4 ping -c1 -W2 192.168.0.3").ok();
    h.sh("ip netns exec web ping -c1 -W2 172.17.0.3").ok();

    // Converged: nothing to do, and a second apply writes nothing.
    let plan = h.netloom(&cfg, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
    let again = h.netloom(&cfg, &["apply"]);
    again.ok();
    assert!(
        again.stderr.contains("0 netlink writes"),
        "{}",
        again.stderr
    );
}

#[test]
fn drift_is_listed_and_repaired() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = tutorial();
    h.netloom(&cfg, &["apply"]).ok();
    // The host end of web's veth, picked by the alias netloom gives it (not
    // by position: plans create veths in no order a test should rely on).
    let links = h.sh("ip -o link show master docker0").ok().stdout.clone();
    let web_line = links
        .lines()
        .find(|l| l.contains("endpoint web.eth0"))
        .unwrap_or_else(|| panic!("no veth with alias 'endpoint web.eth0':\n{links}"));
    let web_veth = web_line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.split('@').next())
        .expect("interface name")
        .to_string();
    assert!(web_veth.starts_with("veth"), "{web_line}");

    let cases: Vec<(&str, BTreeSet<String>)> = vec![
        (
            "ip -n tomcat1 addr del 172.17.0.3/16 dev eth0",
            set(&["container.tomcat1.eth0"]),
        ),
        (
            "ip -n tomcat4 route del default",
            set(&["container.tomcat4.eth0"]),
        ),
        (
            "ip netns del tomcat6",
            set(&["container.tomcat6", "container.tomcat6.eth0"]),
        ),
    ];
    for (damage, expected) in cases {
        h.sh(damage).ok();
        let plan = h.netloom(&cfg, &["plan"]);
        plan.ok();
        assert!(
            plan.stdout.contains("changed outside netloom"),
            "{damage}: {}",
            plan.stdout
        );
        assert_eq!(
            planned(&plan.stdout),
            expected,
            "{damage}:\n{}",
            plan.stdout
        );
        h.netloom(&cfg, &["apply"]).ok();
        let after = h.netloom(&cfg, &["plan", "--detailed-exitcode"]);
        assert_eq!(after.code, 0, "{damage}: not repaired:\n{}", after.stdout);
    }

    // A deleted bridge: recreated, and its veths enslaved again.
    let br = h
        .sh("ip -o link show type bridge | grep -o 'br-[0-9a-f]*'")
        .ok()
        .stdout
        .trim()
        .to_string();
    let keep = ifindex(&h, "tomcat4", "eth0");
    h.sh(&format!("ip link del {br}")).ok();
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout
            .contains("network.mynetwork: deleted outside netloom"),
        "{}",
        plan.stdout
    );
    assert!(planned(&plan.stdout).contains("network.mynetwork"));
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(
        h.sh(&format!("ip -o link show master {br}"))
            .ok()
            .stdout
            .lines()
            .count(),
        3
    );
    assert_eq!(
        ifindex(&h, "tomcat4", "eth0"),
        keep,
        "the veth was recreated instead of re-enslaved"
    );
    h.sh("ip netns exec tomcat4 ping -c1 -W2 192.168.0.4").ok();

    // A deleted veth.
    h.sh(&format!("ip link del {web_veth}")).ok();
    assert_ne!(
        h.sh("ip netns exec web ping -c1 -W1 172.17.0.1").code,
        0,
        "web still reaches its gateway with its veth deleted"
    );
    let plan = h.netloom(&cfg, &["plan"]);
    plan.ok();
    assert_eq!(
        planned(&plan.stdout),
        set(&["container.web.eth0"]),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    h.sh("ip netns exec web ping -c1 -W2 172.17.0.1").ok();
    assert_eq!(h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn file_edits_change_only_what_changed() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let base = "[networks.blue]\nsubnet = \"10.50.0.0/24\"\n\n[containers.a]\nnetworks = [\"blue\"]\n\n[containers.b]\nnetworks = [\"blue\"]\n\n[containers.c]\n";
    let cfg = h.config("n.toml", base);
    h.netloom(&cfg, &["apply"]).ok();
    let a_idx = ifindex(&h, "a", "eth0");
    let c_idx = ifindex(&h, "c", "eth0");

    // Add a container.
    let cfg = h.config(
        "n.toml",
        &format!("{base}\n[containers.d]\nnetworks = [\"blue\"]\n"),
    );
    let plan = h.netloom(&cfg, &["plan"]);
    let p = planned(&plan.stdout);
    assert!(
        p.contains("container.d") && p.contains("container.d.eth0"),
        "{}",
        plan.stdout
    );
    assert!(
        !p.iter()
            .any(|x| x.starts_with("container.a") || x.starts_with("container.c")),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    h.sh("ip netns exec d ping -c1 -W2 10.50.0.2").ok();

    // Readdress b in place.
    let b_idx = ifindex(&h, "b", "eth0");
    let cfg = h.config(
        "n.toml",
        &format!(
            "{}\n[containers.d]\nnetworks = [\"blue\"]\n",
            base.replace(
                "[containers.b]\nnetworks = [\"blue\"]",
                "[containers.b]\nnetworks = { blue = { ip = \"10.50.0.77\" } }"
            )
        ),
    );
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        plan.stdout.contains("~ container.b.eth0"),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(
        ifindex(&h, "b", "eth0"),
        b_idx,
        "readdressing recreated the veth"
    );
    assert!(
        h.sh("ip -n b -4 addr show eth0")
            .ok()
            .stdout
            .contains("10.50.0.77/24")
    );
    assert!(
        h.sh("ip -n b route show default")
            .ok()
            .stdout
            .contains("via 10.50.0.1")
    );
    h.sh("ip netns exec a ping -c1 -W2 10.50.0.77").ok();

    // Connect c to a second network: eth1 appears, eth0 stays.
    let connected = format!(
        "{}\n[containers.d]\nnetworks = [\"blue\"]\n",
        base.replace(
            "[containers.b]\nnetworks = [\"blue\"]",
            "[containers.b]\nnetworks = { blue = { ip = \"10.50.0.77\" } }"
        )
        .replace(
            "[containers.c]\n",
            "[containers.c]\nnetworks = [\"bridge\", \"blue\"]\n"
        )
    );
    let cfg = h.config("n.toml", &connected);
    let plan = h.netloom(&cfg, &["plan"]);
    assert!(
        planned(&plan.stdout).contains("container.c.eth1"),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(ifindex(&h, "c", "eth0"), c_idx);
    h.sh("ip netns exec c ping -c1 -W2 10.50.0.2").ok();

    // Remove a container: its namespace and veth go, others stay.
    let removed = connected.replace("\n[containers.d]\nnetworks = [\"blue\"]\n", "");
    let cfg = h.config("n.toml", &removed);
    let plan = h.netloom(&cfg, &["plan"]);
    let p = planned(&plan.stdout);
    assert!(
        p.contains("container.d") && p.contains("container.d.eth0"),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert!(
        !h.sh("ip netns list")
            .ok()
            .stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some("d"))
    );
    assert_eq!(ifindex(&h, "a", "eth0"), a_idx);
    assert_eq!(h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn network_modes() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let pid = h.spawn("unshare -n sleep 300");
    // Wait until the process has its own namespace.
    assert!(h.wait_for(
        &format!("test \"$(readlink /proc/{pid}/ns/net)\" != \"$(readlink /proc/self/ns/net)\""),
        std::time::Duration::from_secs(5)
    ));
    let cfg = h.config(
        "modes.toml",
        &format!(
            "[containers.app]\n\
             [containers.side]\nnetwork_mode = \"container:app\"\n\
             [containers.alone]\nnetwork_mode = \"none\"\n\
             [containers.hosty]\nnetwork_mode = \"host\"\n\
             [containers.ext]\nnetns_path = \"/proc/{pid}/ns/net\"\n"
        ),
    );
    h.netloom(&cfg, &["apply"]).ok();
    let list = h.netns_list();
    let names: BTreeSet<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["alone", "app"].into_iter().collect(), "{list}");
    // none: only lo, up.
    let alone = h.sh("ip -n alone -o link").ok().stdout.clone();
    assert_eq!(alone.lines().count(), 1, "{alone}");
    assert!(alone.contains("lo:") && alone.contains("UP"), "{alone}");
    // netns_path: the process's namespace got eth0 with an address.
    let ext = h
        .sh(&format!(
            "nsenter --net=/proc/{pid}/ns/net ip -4 addr show eth0"
        ))
        .ok()
        .stdout
        .clone();
    assert!(ext.contains("172.17.0."), "{ext}");
    h.sh(&format!(
        "nsenter --net=/proc/{pid}/ns/net ping -c1 -W2 172.17.0.1"
    ))
    .ok();
    // Its hosts file lives in the state dir, and status says where.
    let status = h.netloom(&cfg, &["status"]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
    assert!(
        status.stdout.contains("hosts file of ext"),
        "{}",
        status.stdout
    );
    assert_eq!(h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code, 0);

    // down leaves the attached namespace (and its process) alone.
    h.netloom(&cfg, &["down"]).ok();
    assert!(h.netns_list().trim().is_empty());
    assert!(h.sh(&format!("test -e /proc/{pid}/ns/net")).code == 0);
    let ext = h
        .sh(&format!("nsenter --net=/proc/{pid}/ns/net ip -o link"))
        .ok()
        .stdout
        .clone();
    assert_eq!(
        ext.lines().count(),
        1,
        "eth0 should be gone from the attached namespace: {ext}"
    );
    assert_ne!(h.sh("ip link show docker0").code, 0);
}

#[test]
fn foreign_objects_are_left_alone() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    h.sh(
        "ip link add br-foreign type bridge && ip addr add 10.77.0.1/24 dev br-foreign && \
         ip netns add foreignns && \
         nft add table ip filter && nft add chain ip filter input '{ type filter hook input priority 0; }' && \
         nft add rule ip filter input counter",
    )
    .ok();
    let snapshot = |h: &Host| {
        h.sh("ip -d addr show br-foreign; ip netns list | grep foreignns; nft list table ip filter")
            .ok()
            .stdout
            .clone()
    };
    let before = snapshot(&h);
    let cfg = tutorial();
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(snapshot(&h), before);
    h.netloom(&cfg, &["down"]).ok();
    assert_eq!(snapshot(&h), before);
    let left = h.netns_list();
    assert_eq!(left.trim(), "foreignns", "{left}");
    assert_ne!(h.sh("ip link show docker0").code, 0);
    assert!(!h.sh("nft list tables").stdout.contains("netloom"));

    // A foreign object in the way is an error naming it: the network and
    // its members are left as they are, nothing is taken over, and the
    // independent user-defined network is applied.
    h.sh("ip link add docker0 type bridge && ip netns add web")
        .ok();
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("`docker0` exists and is not netloom's"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("namespace `web` exists"), "{}", r.stderr);
    assert!(r.stderr.contains("Failed: "), "{}", r.stderr);
    assert_eq!(h.sh("ip -o link show master docker0").stdout.trim(), "");
    assert_eq!(
        h.sh("ip netns exec web ip -o link show")
            .stdout
            .lines()
            .count(),
        1,
        "the foreign namespace got an interface"
    );
    let ns = h.sh("ip netns list").stdout;
    assert!(ns.contains("tomcat4") && !ns.contains("tomcat1"), "{ns}");
    h.sh("ip netns exec tomcat4 ip -o addr show eth0").ok();
    h.netloom(&cfg, &["down"]).ok();
    let ns = h.sh("ip netns list").stdout;
    assert!(ns.contains("web") && !ns.contains("tomcat4"), "{ns}");
    assert_eq!(
        h.sh("ip link show docker0").code,
        0,
        "the foreign bridge stays"
    );
}

#[test]
fn a_failed_apply_reports_and_the_next_one_converges() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    // An `nft` first in PATH that reads like the real one but refuses
    // every transaction: the apply fails at the firewall, after the
    // bridge, the namespaces and the veths were made.
    let real = h.sh("command -v nft").ok().stdout.trim().to_string();
    let fake_dir = h.dir.path().join("fake-bin");
    std::fs::create_dir_all(&fake_dir).unwrap();
    let fake = fake_dir.join("nft");
    std::fs::write(&fake, format!("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -f ] && {{ echo 'nft: simulated failure' >&2; exit 1; }}; done\nexec {real} \"$@\"\n")).unwrap();
    h.sh(&format!("chmod +x {}", fake.display())).ok();
    let cfg = h.config(
        "f.toml",
        "[containers.a]\nports = [\"8080:80\"]\n[containers.b]\n",
    );
    let r = h.sh(&format!(
        "PATH={}:$PATH {} -c {} apply",
        fake_dir.display(),
        common::NETLOOM,
        cfg.display()
    ));
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Apply incomplete:"), "{}", r.stderr);
    assert!(r.stderr.contains("simulated failure"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Failed: nft.table.netloom."),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("Waiting for them: ") && r.stderr.contains("port.a.8080/tcp"),
        "{}",
        r.stderr
    );
    // What does not need the firewall is there, files included.
    h.sh("ip link show docker0 && ip netns exec b ip link show eth0 && grep -q netloom /etc/netns/a/hosts")
        .ok();

    // The next apply continues from there: only what was not done.
    let plan = h.netloom(&cfg, &["plan"]);
    let p = planned(&plan.stdout);
    assert!(
        !p.contains("network.bridge")
            && !p.contains("container.a.eth0")
            && !p.contains("file./etc/netns/a/hosts"),
        "{}",
        plan.stdout
    );
    assert!(
        p.contains("port.a.8080/tcp") && p.contains("nft.table.netloom"),
        "{}",
        plan.stdout
    );
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code, 0);
    // Everything made by the failed run was recorded as netloom's.
    h.netloom(&cfg, &["down"]).ok();
    assert_ne!(h.sh("ip link show docker0").code, 0);
    assert!(h.netns_list().trim().is_empty());
}

#[test]
fn a_netns_path_that_is_no_namespace_is_refused() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let bogus = h.dir.path().join("not-a-netns");
    std::fs::write(&bogus, "").unwrap();
    let cfg = h.config(
        "n.toml",
        &format!("[containers.b]\nnetns_path = \"{}\"\n", bogus.display()),
    );
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("container.b: netns_path")
            && r.stderr.contains("is not a network namespace"),
        "{}",
        r.stderr
    );
    assert_eq!(
        h.sh("ip -o link show type veth").stdout.trim(),
        "",
        "the refused container got an interface"
    );
}

#[test]
fn dual_stack_addresses_routes_and_names() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config(
        "v6.toml",
        "[networks.dual]\nsubnet = \"10.40.0.0/24\"\nsubnet6 = \"fd00:40::/64\"\n\
         [containers.a]\nnetworks = [\"dual\"]\n\
         [containers.b]\nnetworks = { dual = { ip6 = \"fd00:40::99\" } }\n",
    );
    h.netloom(&cfg, &["apply"]).ok();
    let a = h.sh("ip -n a addr show eth0").ok().stdout.clone();
    assert!(
        a.contains("inet 10.40.0.2/24") && a.contains("inet6 fd00:40::2/64"),
        "{a}"
    );
    assert!(
        !a.contains("fd00:40::2/64 scope global tentative"),
        "usable at once (no DAD): {a}"
    );
    assert!(
        h.sh("ip -n a -6 route show default")
            .ok()
            .stdout
            .contains("via fd00:40::1")
    );
    // By name, over IPv6, both ways.
    h.sh("ip netns exec a ping -6 -c1 -W2 b && ip netns exec b ping -6 -c1 -W2 a.dual")
        .ok();
    assert_eq!(h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn the_host_end_of_a_veth_keeps_its_link_local_address_as_in_docker() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    // The seed's §1 `ip addr` on the host: docker0 and vethd1ab0f5@if6
    // each have an `inet6 fe80::…/64 scope link` address, on an IPv4-only
    // network. netloom's bridge and veth look the same.
    let h = Host::new();
    let cfg = h.config(
        "v4.toml",
        "[networks.plain]\nsubnet = \"10.41.0.0/24\"\n[containers.a]\nnetworks = [\"plain\"]\n",
    );
    h.netloom(&cfg, &["apply"]).ok();
    let veth = h
        .sh("ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1")
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(!veth.is_empty(), "no veth");
    assert!(
        h.wait_for(
            &format!("ip -6 addr show dev {veth} | grep -q 'inet6 fe80::.*scope link'"),
            std::time::Duration::from_secs(10)
        ),
        "{}",
        h.sh(&format!("ip addr show dev {veth}")).stdout
    );
}
