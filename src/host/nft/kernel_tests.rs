//! Kernel tests: real nft, real bridges, veths, curl and an HTTP server.
//!
//! Each test runs on its own thread after `unshare(CLONE_NEWNET)`, so the
//! "host" is a throwaway network namespace and everything the test spawns
//! (nft, ip, the container and outside namespaces held by `unshare -n
//! sleep`) lives there or in namespaces of its own. Nothing touches the
//! machine's namespace; when the thread and its children are gone, so are
//! the namespaces. Without root they are skipped, except under CI=true
//! where they fail.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::core::firewall::tests::{net, port, sample};
use crate::core::firewall::*;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["nft", "ip", "curl", "python3", "nsenter", "unshare", "ping"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if root && tools {
        return true;
    }
    let why = format!(
        "kernel test needs root and nft, ip, curl, python3, nsenter, unshare, ping (root: {root})"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    false
}

/// Run `f` on a new thread in a new, empty network namespace.
fn in_sandbox<F: FnOnce() + Send + 'static>(f: F) {
    if !can_run() {
        return;
    }
    let h = std::thread::spawn(move || {
        // SAFETY: unshare only affects the calling thread's namespaces.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        let mine = std::fs::read_link("/proc/thread-self/ns/net").expect("own netns");
        let process = std::fs::read_link("/proc/self/ns/net").expect("process netns");
        assert_ne!(mine, process, "refusing to run outside a private netns");
        f();
    });
    if let Err(e) = h.join() {
        std::panic::resume_unwind(e);
    }
}

struct Sandbox {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    match cmd.output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            children: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A shell command in the sandbox "host" namespace.
    fn sh(&self, script: &str) -> (bool, String) {
        run(Command::new("sh").args(["-c", script]))
    }

    fn must(&self, script: &str) -> String {
        let (ok, out) = self.sh(script);
        assert!(ok, "`{script}` failed: {out}");
        out
    }

    /// A shell command in the namespace held by `pid`.
    fn in_ns(&self, pid: u32, script: &str) -> (bool, String) {
        run(Command::new("nsenter").args(["-t", &pid.to_string(), "-n", "sh", "-c", script]))
    }

    fn must_in(&self, pid: u32, script: &str) -> String {
        let (ok, out) = self.in_ns(pid, script);
        assert!(ok, "`{script}` in ns {pid} failed: {out}");
        out
    }

    /// A new network namespace, kept alive by a `sleep` we own.
    fn netns(&mut self) -> u32 {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .spawn()
            .expect("spawn unshare");
        let pid = child.id();
        self.children.push(child);
        // Wait for the exec: only then is the sleep in its new namespace.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n"
        {
            assert!(Instant::now() < deadline, "unshare did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        pid
    }

    /// A container: netns with eth0 on `bridge`, hairpin on its port.
    fn container(&mut self, name: &str, bridge: &str, ip: &str, gw: &str) -> u32 {
        let pid = self.netns();
        self.must(&format!(
            "ip link add v{name} type veth peer name eth0 netns {pid} && \
             ip link set v{name} master {bridge} && ip link set v{name} up && \
             ip link set v{name} type bridge_slave hairpin on"
        ));
        self.must_in(
            pid,
            &format!(
                "ip link set lo up && ip addr add {ip}/16 dev eth0 && ip link set eth0 up && \
                 ip route add default via {gw}"
            ),
        );
        pid
    }

    /// An HTTP server on `ip`:80 in `pid`'s namespace; returns its log.
    fn serve(&mut self, pid: u32, ip: &str) -> PathBuf {
        let log = self.dir.path().join(format!("http-{pid}.log"));
        let file = File::create(&log).expect("log file");
        // Not `python3 -m http.server --bind`: its server_bind does a reverse
        // DNS lookup, which would try to leave the sandbox and time out.
        let server = format!(
            "import http.server as h, socketserver as s\n\
             s.TCPServer.allow_reuse_address = True\n\
             s.TCPServer(('{ip}', 80), h.SimpleHTTPRequestHandler).serve_forever()"
        );
        let child = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "python3", "-u", "-c", &server])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn http.server");
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.curl(Some(pid), &format!("http://{ip}:80/")) {
            assert!(
                Instant::now() < deadline,
                "http.server on {ip} did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        log
    }

    fn curl(&self, pid: Option<u32>, url: &str) -> bool {
        let script = format!("curl -s -o /dev/null -m 3 -w '%{{http_code}}' {url}");
        let (_, out) = match pid {
            Some(pid) => self.in_ns(pid, &script),
            None => self.sh(&script),
        };
        out.trim() == "200"
    }

    fn ping(&self, pid: u32, ip: &str) -> bool {
        self.in_ns(pid, &format!("ping -c 1 -W 1 {ip}")).0
    }

    fn set_sysctls(&self, fw: &Firewall) {
        for (k, v) in required_sysctls(fw) {
            self.must(&format!("sysctl -qw {k}={v}"));
        }
    }
}

struct Topo {
    c1: u32,
    c2: u32,
    c3: u32,
    out: u32,
    c1_log: PathBuf,
    out_log: PathBuf,
}

/// host: docker0 172.17.0.1/16 (c1 .2, c2 .3), br-two 172.18.0.1/16 (c3 .2),
/// uplink 10.99.0.1/24 to "out" 10.99.0.2 (a remote client and server).
fn topology(sb: &mut Sandbox) -> Topo {
    sb.must(
        "ip link set lo up && \
         ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up && \
         ip link add br-two type bridge && ip addr add 172.18.0.1/16 dev br-two && ip link set br-two up",
    );
    let c1 = sb.container("c1", "docker0", "172.17.0.2", "172.17.0.1");
    let c2 = sb.container("c2", "docker0", "172.17.0.3", "172.17.0.1");
    let c3 = sb.container("c3", "br-two", "172.18.0.2", "172.18.0.1");
    let out = sb.netns();
    sb.must(&format!(
        "ip link add uplink type veth peer name eth0 netns {out} && \
         ip addr add 10.99.0.1/24 dev uplink && ip link set uplink up"
    ));
    // The route lets "out" try container addresses directly, as a LAN
    // neighbour could; isolation must stop it, not a missing route.
    sb.must_in(
        out,
        "ip link set lo up && ip addr add 10.99.0.2/24 dev eth0 && ip link set eth0 up && \
         ip route add 172.16.0.0/12 via 10.99.0.1",
    );
    let c1_log = sb.serve(c1, "172.17.0.2");
    let out_log = sb.serve(out, "10.99.0.2");
    Topo {
        c1,
        c2,
        c3,
        out,
        c1_log,
        out_log,
    }
}

fn two_networks() -> Firewall {
    let mut fw = Firewall::default();
    fw.networks
        .insert("bridge".into(), net("docker0", "172.17.0.0/16"));
    fw.networks
        .insert("two".into(), net("br-two", "172.18.0.0/16"));
    fw.ports_mut()
        .insert("c1.8080/tcp".into(), port("c1", "172.17.0.2", 8080, 80));
    fw.ports_mut().insert(
        "c1.127.0.0.1:8081/tcp".into(),
        FwPort {
            host_ip: Some(Ipv4Addr::LOCALHOST.into()),
            ..port("c1", "172.17.0.2", 8081, 80)
        },
    );
    fw
}

/// Apply `fw` from whatever is there and check that it converged.
fn converge(fw: &Firewall) -> Transaction {
    let before = observe().expect("observe");
    let tx = plan_transaction(fw, before.as_ref());
    apply(&tx).expect("apply");
    let after = observe()
        .expect("observe")
        .expect("tables exist after apply");
    assert!(after.skeleton_ok, "{:?}", after.problems);
    assert_eq!(&after.fw, fw);
    assert!(plan_transaction(fw, Some(&after)).is_empty());
    // What the agent keeps instead of listing again: the same tables.
    let known = Observed::after(before.as_ref(), fw);
    assert_eq!(known.text(), after.text());
    assert_eq!(known.fw, after.fw);
    assert_eq!(known.strays, after.strays);
    assert_eq!(known.problems, after.problems);
    assert_eq!(known.skeleton_ok, after.skeleton_ok);
    assert_eq!(
        (known.inet_present(), known.bridge_present()),
        (after.inet_present(), after.bridge_present())
    );
    assert_eq!(known.element_count(), after.element_count());
    assert_eq!(
        port_counters(&known).keys().collect::<Vec<_>>(),
        port_counters(&after).keys().collect::<Vec<_>>()
    );
    assert!(plan_transaction(fw, Some(&known)).is_empty());
    tx
}

fn log_has(log: &PathBuf, needle: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
}

#[test]
fn ports_outbound_and_isolation() {
    in_sandbox(|| {
        let mut sb = Sandbox::new();
        let t = topology(&mut sb);
        let fw = two_networks();
        sb.set_sysctls(&fw);
        let tx = converge(&fw);
        assert!(tx.full_rebuild());

        // Another host, via the uplink address: its own address is kept.
        assert!(sb.curl(Some(t.out), "http://10.99.0.1:8080/"));
        assert!(
            log_has(&t.c1_log, "10.99.0.2 - -"),
            "external source not preserved"
        );
        // The host itself, via 127.0.0.1 and its own address.
        assert!(sb.curl(None, "http://127.0.0.1:8080/"));
        assert!(sb.curl(None, "http://10.99.0.1:8080/"));
        assert!(sb.curl(None, "http://127.0.0.1:8081/"));
        // Hairpin, a neighbour, and a container of another network.
        assert!(sb.curl(Some(t.c1), "http://10.99.0.1:8080/"), "hairpin");
        assert!(sb.curl(Some(t.c2), "http://10.99.0.1:8080/"));
        assert!(sb.curl(Some(t.c3), "http://10.99.0.1:8080/"));
        assert!(
            sb.curl(Some(t.c2), "http://172.17.0.2/"),
            "same network, direct"
        );
        // Outbound is masqueraded to the uplink address.
        assert!(sb.curl(Some(t.c1), "http://10.99.0.2/"));
        assert!(
            log_has(&t.out_log, "10.99.0.1 - -"),
            "outbound not masqueraded"
        );
        assert!(!log_has(&t.out_log, "172.17.0.2"));

        // Isolation.
        assert!(
            !sb.curl(Some(t.out), "http://172.17.0.2/"),
            "container address reachable from outside"
        );
        assert!(
            !sb.curl(Some(t.out), "http://10.99.0.1:8081/"),
            "127.0.0.1 port reachable from outside"
        );
        assert!(
            !sb.ping(t.c3, "172.17.0.2"),
            "networks can reach each other"
        );
        assert!(
            !sb.ping(t.c1, "172.18.0.2"),
            "networks can reach each other"
        );
        assert!(!sb.curl(Some(t.c3), "http://172.17.0.2/"));
        assert!(sb.ping(t.c2, "172.17.0.2"), "icc=true must allow");

        // Counters: the external request's packets were counted.
        let o = observe().expect("observe").expect("present");
        let c = port_counters(&o);
        let (packets, bytes) = c.get("c1.8080/tcp").copied().unwrap_or_default();
        assert!(packets >= 5 && bytes > 300, "counters {c:?}");
        assert!(
            c.get("c1.127.0.0.1:8081/tcp").is_some_and(|(p, _)| *p >= 5),
            "{c:?}"
        );
        // Read from the set elements over netlink, as the agent's `status`
        // does: the same figures as the listing.
        assert_eq!(counters::port_counters().expect("counters"), c);
    });
}

#[test]
fn icc_and_internal_networks() {
    in_sandbox(|| {
        let mut sb = Sandbox::new();
        let t = topology(&mut sb);
        let mut fw = two_networks();
        fw.networks.get_mut("bridge").expect("bridge").icc = false;
        fw.networks.get_mut("two").expect("two").internal = true;
        sb.set_sysctls(&fw);
        converge(&fw);

        assert!(!sb.ping(t.c2, "172.17.0.2"), "icc=false must block");
        assert!(
            !sb.curl(Some(t.c2), "http://172.17.0.2/"),
            "icc=false must block"
        );
        assert!(
            sb.curl(Some(t.c2), "http://10.99.0.1:8080/"),
            "published port still works"
        );
        assert!(
            !sb.curl(Some(t.c3), "http://10.99.0.2/"),
            "internal network got out"
        );
        assert!(!sb.curl(Some(t.out), "http://172.18.0.2/"));

        // Turning both off touches elements (and drops the bridge table).
        fw.networks.get_mut("bridge").expect("bridge").icc = true;
        fw.networks.get_mut("two").expect("two").internal = false;
        let tx = converge(&fw);
        assert!(!tx.full_rebuild(), "{}", tx.script());
        assert!(tx.script().contains("delete table bridge netloom"));
        assert!(sb.ping(t.c2, "172.17.0.2"));
        assert!(sb.curl(Some(t.c3), "http://10.99.0.2/"));
    });
}

#[test]
fn minimal_updates_restore_and_foreign_tables() {
    in_sandbox(|| {
        let mut sb = Sandbox::new();
        let t = topology(&mut sb);
        let foreign = "table ip filter {\n\tchain c {\n\t\tcounter packets 5 bytes 6\n\t}\n}\n\
                       table inet other {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 1.2.3.4 }\n\t}\n}";
        let add_foreign = || {
            let f = sb.dir.path().join("foreign.nft");
            std::fs::write(&f, foreign).expect("write");
            sb.must(&format!("nft -f {}", f.display()));
        };
        let list_foreign = || sb.must("nft list table ip filter && nft list table inet other");
        add_foreign();
        let before = list_foreign();

        let mut fw = two_networks();
        sb.set_sysctls(&fw);
        converge(&fw);
        assert_eq!(list_foreign(), before, "apply touched a foreign table");

        // One more port on a converged table: exactly one element.
        fw.ports_mut()
            .insert("c1.8082/tcp".into(), port("c1", "172.17.0.2", 8082, 80));
        let tx = converge(&fw);
        assert!(!tx.full_rebuild());
        assert_eq!(
            (tx.elements_added(), tx.elements_removed()),
            (1, 0),
            "{}",
            tx.script()
        );
        assert_eq!(tx.script().lines().count(), 1);
        assert!(tx.port_edits().is_some(), "written over netlink");
        assert!(sb.curl(Some(t.out), "http://10.99.0.1:8082/"));

        // And one less.
        fw.ports_mut().remove("c1.8082/tcp");
        let tx = converge(&fw);
        assert_eq!((tx.elements_added(), tx.elements_removed()), (0, 1));
        assert!(!sb.curl(Some(t.out), "http://10.99.0.1:8082/"));

        // A subnet change replaces interval elements in one transaction.
        fw.networks.get_mut("two").expect("two").subnet = "172.18.0.0/24".parse().expect("net");
        let tx = converge(&fw);
        assert!(!tx.full_rebuild());

        // Someone flushes the ruleset: observe sees nothing, apply restores.
        sb.must("nft flush ruleset");
        assert!(observe().expect("observe").is_none());
        assert!(!sb.curl(Some(t.out), "http://10.99.0.1:8080/"));
        let tx = converge(&fw);
        assert!(tx.full_rebuild());
        assert!(sb.curl(Some(t.out), "http://10.99.0.1:8080/"));

        // Someone edits our chain: the skeleton is rebuilt whole.
        sb.must("nft insert rule inet netloom forward_filter accept");
        let o = observe().expect("observe").expect("present");
        assert!(!o.skeleton_ok);
        assert!(converge(&fw).full_rebuild());

        // down: only netloom's tables go.
        add_foreign();
        let before = list_foreign();
        delete_tables().expect("delete_tables");
        assert!(observe().expect("observe").is_none());
        assert_eq!(
            list_foreign(),
            before,
            "delete_tables touched a foreign table"
        );
        delete_tables().expect("delete_tables twice is fine");
    });
}

#[test]
fn a_refused_port_batch_changes_nothing() {
    // Port elements go over netlink as one batch: a batch the kernel
    // refuses in part is undone whole, like a script, and says why.
    in_sandbox(|| {
        let mut sb = Sandbox::new();
        let t = topology(&mut sb);
        let mut fw = two_networks();
        sb.set_sysctls(&fw);
        fw.ports_mut()
            .insert("c1.8083/tcp".into(), port("c1", "172.17.0.2", 8083, 80));
        converge(&fw);
        let stale = observe().expect("observe").expect("present");
        // Someone deletes the element behind netloom's back.
        sb.must("nft delete element inet netloom dnat_any { tcp . 8083 }");
        let g = generation::generation().expect("generation");
        // Planned from the stale reading: delete 8083 (gone), add 8084.
        fw.ports_mut().remove("c1.8083/tcp");
        fw.ports_mut()
            .insert("c1.8084/tcp".into(), port("c1", "172.17.0.2", 8084, 80));
        let tx = plan_transaction(&fw, Some(&stale));
        assert_eq!(tx.port_edits().map(<[_]>::len), Some(2));
        let err = apply(&tx).expect_err("the delete must fail").to_string();
        assert!(
            err.contains("delete element inet netloom dnat_any (c1.8083/tcp"),
            "{err}"
        );
        assert_eq!(generation::generation().expect("generation"), g);
        assert!(!sb.curl(Some(t.out), "http://10.99.0.1:8084/"));
        // Planned from what is there, it goes through, and the element
        // counts its packets like one nft wrote (the map's counter).
        converge(&fw);
        assert!(sb.curl(Some(t.out), "http://10.99.0.1:8084/"));
        let listed = sb.must("nft list map inet netloom dnat_any");
        let line = listed
            .lines()
            .find(|l| l.contains("tcp . 8084"))
            .unwrap_or_else(|| panic!("no element for 8084:\n{listed}"));
        assert!(line.contains("counter packets"), "{line}");
        assert!(!line.contains("counter packets 0 "), "{line}");
    });
}

#[test]
fn rendered_text_is_what_nft_lists() {
    // The skeleton is described twice (text for nft, JSON to compare with
    // nft's listing); loading the text must give exactly the JSON.
    in_sandbox(|| {
        let sb = Sandbox::new();
        let fw = sample();
        let f = sb.dir.path().join("render.nft");
        std::fs::write(&f, render(&fw)).expect("write");
        sb.must(&format!("nft -f {}", f.display()));
        let o = observe().expect("observe").expect("present");
        assert!(o.skeleton_ok, "{:?}", o.problems);
        assert_eq!(o.fw, fw);
        assert_eq!(o.text(), render(&fw));
        assert!(plan_transaction(&fw, Some(&o)).is_empty());
    });
}

#[test]
fn nft_errors_are_reported() {
    in_sandbox(|| {
        let mut fw = two_networks();
        // Two networks with overlapping subnets: the interval set refuses.
        fw.networks
            .insert("clash".into(), net("br-clash", "172.17.0.0/24"));
        let tx = plan_transaction(&fw, None);
        let err = apply(&tx).expect_err("overlap must fail").to_string();
        assert!(err.contains("nft rejected"), "{err}");
        assert!(
            observe().expect("observe").is_none(),
            "a failed transaction left state"
        );
    });
}

#[test]
fn cluster_gateway_filter_lives_in_the_bridge_table() {
    // Cluster mode's elements round-trip through nft (listing parsed back
    // to the same firewall, text equal to what nft lists), and the bridge
    // table exists for them alone and goes with them.
    in_sandbox(|| {
        let sb = Sandbox::new();
        let mut fw = two_networks();
        fw.vxlans.insert(
            "bridge".into(),
            FwVxlan {
                device: "vx-app".into(),
                gateway: Ipv4Addr::new(172, 17, 0, 1),
                gateway_mac: "02:42:ac:11:00:01".into(),
            },
        );
        assert!(validate(&fw).is_empty(), "{:?}", validate(&fw));
        let tx = converge(&fw);
        assert!(tx.script().contains("table bridge netloom {"));
        let o = observe().expect("observe").expect("present");
        assert_eq!(o.text(), render(&fw));
        let listed = sb.must("nft list table bridge netloom");
        assert!(
            listed.contains("\"vx-app\" . 02:42:ac:11:00:01")
                && listed.contains("oifname . arp daddr ip @vxlan_gateway_ips drop"),
            "{listed}"
        );
        // A moved gateway is one element replaced per set, no rebuild.
        fw.vxlans.get_mut("bridge").expect("vxlan").gateway = Ipv4Addr::new(172, 17, 0, 254);
        let tx = converge(&fw);
        assert!(!tx.full_rebuild(), "{}", tx.script());
        assert_eq!((tx.elements_added(), tx.elements_removed()), (1, 1));
        fw.vxlans.clear();
        let tx = converge(&fw);
        assert!(tx.script().contains("delete table bridge netloom"));
    });
}

#[test]
fn generation_moves_once_per_committed_transaction() {
    // Verification after an apply relies on this: one committed
    // transaction moves the generation by exactly one, a listing or a
    // rejected transaction not at all, and any other table's change too.
    in_sandbox(|| {
        let sb = Sandbox::new();
        let g0 = generation::generation().expect("generation");
        assert!(observe().expect("observe").is_none());
        assert_eq!(generation::generation().expect("generation"), g0);
        let fw = two_networks();
        converge(&fw); // one transaction (and listings)
        let g1 = generation::generation().expect("generation");
        assert_eq!(g1, g0.wrapping_add(1));
        let _ = observe().expect("observe").expect("present");
        assert_eq!(generation::generation().expect("generation"), g1);
        let mut clash = fw.clone();
        clash
            .networks
            .insert("clash".into(), net("br-clash", "172.17.0.0/24"));
        assert!(apply(&plan_transaction(&clash, None)).is_err());
        assert_eq!(generation::generation().expect("generation"), g1);
        sb.must("nft add table ip someone_else");
        assert_eq!(
            generation::generation().expect("generation"),
            g1.wrapping_add(1)
        );
    });
}
