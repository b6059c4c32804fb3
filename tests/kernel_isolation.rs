//! Failure isolation: a failure confined to one container leaves
//! that container and what depends on it as they are, every independent
//! change is applied, the failed object is named and `apply` exits 1; the
//! agent keeps healing everything else. Each case in a throwaway host.

mod common;

use std::time::Duration;

use common::{Host, NETLOOM, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "unshare", "nsenter", "python3", "curl"];

fn read(h: &Host, path: &str) -> String {
    h.sh(&format!("cat {path}")).stdout
}

#[test]
fn a_vanished_netns_path_does_not_stop_healing_the_others() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let pid = h.spawn("unshare -n sleep 300");
    assert!(h.wait_for(
        &format!("test \"$(readlink /proc/{pid}/ns/net)\" != \"$(readlink /proc/self/ns/net)\""),
        Duration::from_secs(10)
    ));
    let cfg = h.config(
        "v.toml",
        &format!(
            "[networks.app]\nsubnet = \"10.70.0.0/24\"\n\
             [containers.a]\nnetworks = [\"app\"]\n\
             [containers.c]\nnetworks = [\"app\"]\n\
             [containers.ext]\nnetworks = [\"app\"]\nnetns_path = \"/proc/{pid}/ns/net\"\n"
        ),
    );
    h.netloom(&cfg, &["apply"]).ok();
    let hosts_before = read(&h, "/etc/netns/a/hosts");
    assert!(hosts_before.contains("ext"), "{hosts_before}");

    // The process exits; its namespace goes. Then drift on the others.
    h.sh(&format!("kill {pid}")).ok();
    assert!(h.wait_for(
        &format!("! test -e /proc/{pid}/ns/net"),
        Duration::from_secs(10)
    ));
    h.sh("ip -n a link set eth0 down && ip -n c route del default")
        .ok();

    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "container.ext: netns_path /proc/{pid}/ns/net does not exist"
        )),
        "{}",
        r.stderr
    );
    // Everything else healed.
    assert!(
        h.sh("ip -n a -o link show eth0")
            .stdout
            .contains("state UP")
            || h.sh("ip -n a -o link show eth0").stdout.contains(",UP"),
        "a's eth0 stayed down"
    );
    assert!(
        h.sh("ip -n c route show default")
            .stdout
            .contains("via 10.70.0.1"),
        "c's default route was not restored"
    );
    // ext's hosts line in a's file stays as it was.
    assert_eq!(read(&h, "/etc/netns/a/hosts"), hosts_before);

    // status shows everything live, and the error; exit 1.
    let st = h.netloom(&cfg, &["status"]);
    assert_eq!(st.code, 1, "{}\n{}", st.stdout, st.stderr);
    assert!(st.stdout.contains("a.eth0"), "{}", st.stdout);
    assert!(
        st.stdout
            .lines()
            .any(|l| l.starts_with("ext.eth0") && l.contains("failed")),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout.contains("! container.ext: netns_path"),
        "{}",
        st.stdout
    );

    // The agent keeps healing the others.
    let log = h.dir.path().join("agent.log");
    let agent = h.spawn_logged(
        &format!(
            "env RUST_LOG=info {NETLOOM} watch --resync 0 -c {}",
            cfg.display()
        ),
        &log,
    );
    assert!(h.wait_for(
        &format!("grep -q reconciled {}", log.display()),
        Duration::from_secs(20)
    ));
    h.sh("ip -n a link set eth0 down").ok();
    assert!(
        h.wait_for(
            "ip -n a -o link show eth0 | grep -q ',UP'",
            Duration::from_secs(20)
        ),
        "the agent did not heal a:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The agent logs a reconcile once it is done, after the link is up.
    assert!(
        h.wait_for(
            &format!("grep -q '~ container.a.eth0' {}", log.display()),
            Duration::from_secs(20)
        ),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("container.ext"), "{text}");
    // `down` refuses while an agent runs (it would re-create everything).
    h.sh(&format!("kill {agent}")).ok();
    assert!(h.wait_for(&common::exited(agent), Duration::from_secs(30)));
    h.netloom(&cfg, &["down"]).ok();
}

#[test]
fn a_taken_host_port_holds_back_only_its_container() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let base = "[networks.app]\nsubnet = \"10.71.0.0/24\"\n\
                [containers.a]\nnetworks = [\"app\"]\n";
    let cfg = h.config("p.toml", base);
    h.netloom(&cfg, &["apply"]).ok();
    h.spawn("python3 -m http.server 8089 --bind 0.0.0.0");
    assert!(h.wait_for(
        "curl -s -m 1 -o /dev/null http://127.0.0.1:8089/",
        Duration::from_secs(10)
    ));
    let cfg = h.config(
        "p.toml",
        &format!(
            "{base}[containers.web]\nnetworks = [\"app\"]\nports = [\"8089:80\"]\n\
             [containers.newbie]\nnetworks = [\"app\"]\n"
        ),
    );
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(
            "container.web: port.web.8089/tcp: host port 0.0.0.0:8089/tcp is already in use"
        ),
        "{}",
        r.stderr
    );
    // The independent new container is created and named in a's hosts file.
    h.sh("ip -n newbie -o addr show eth0 | grep -q 10.71.0.")
        .ok();
    let hosts = read(&h, "/etc/netns/a/hosts");
    assert!(hosts.contains("newbie"), "{hosts}");
    // web and what depends on it wait: no namespace, no port, no hosts line.
    assert!(!h.sh("ip netns list").stdout.contains("web"));
    assert!(!hosts.contains("web"), "{hosts}");
    assert!(
        !h.sh("nft list table inet netloom").stdout.contains("8089"),
        "the taken port was published"
    );
    // The listener still answers.
    h.sh("curl -s -m 2 -o /dev/null http://127.0.0.1:8089/")
        .ok();
    h.netloom(&cfg, &["down"]).ok();
}

#[test]
fn a_foreign_namespace_name_holds_back_only_its_container() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    h.sh("ip netns add web").ok();
    let cfg = h.config(
        "f.toml",
        "[networks.app]\nsubnet = \"10.72.0.0/24\"\n\
         [containers.web]\nnetworks = [\"app\"]\n\
         [containers.other]\nnetworks = [\"app\"]\n",
    );
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("container.web: network namespace `web` exists in /run/netns and was not created by netloom"),
        "{}",
        r.stderr
    );
    h.sh("ip -n other -o addr show eth0 | grep -q 10.72.0.")
        .ok();
    assert_eq!(
        h.sh("ip -n web -o link show").stdout.lines().count(),
        1,
        "the foreign namespace was touched"
    );
    let hosts = read(&h, "/etc/netns/other/hosts");
    assert!(!hosts.contains("web"), "{hosts}");
    h.netloom(&cfg, &["down"]).ok();
    assert!(
        h.sh("ip netns list").stdout.contains("web"),
        "down removed a foreign namespace"
    );
}
