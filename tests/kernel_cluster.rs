//! Cluster mode against a real etcd and the real kernel: three hosts, each
//! a sandbox (network + mount namespace) joined to an underlay bridge in a
//! lab sandbox where etcd listens. Nothing runs in the machine's own
//! namespace; dropping the sandboxes removes everything.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Host, NETLOOM, kernel_tests_possible};

const ETCD_IP: &str = "10.98.0.1";
const WAIT: Duration = Duration::from_secs(30);

/// The lab (underlay bridge + etcd) and three hosts with agents.
struct Cluster {
    lab: Host,
    hosts: Vec<Host>,
    /// Agent pids by host index (the `sh -c exec` child is the agent).
    agents: Vec<Option<u32>>,
    etcd: Option<u32>,
}

fn etcd_url() -> String {
    format!("http://{ETCD_IP}:2379")
}

fn underlay_ip(i: usize) -> String {
    format!("10.98.0.{}", 11 + i)
}

fn file(extra: &str) -> String {
    format!(
        r#"#:schema ../schemas/netloom.schema.json
[cluster]
etcd = ["{url}"]
[settings]
upstream_dns = ["{ETCD_IP}"]
[hosts.node1]
address = "{a}"
[hosts.node2]
address = "{b}"
[hosts.node3]
address = "{c}"
[networks.app]
subnet = "10.200.0.0/24"
scope = "cluster"
[networks.priv]
subnet = "10.201.0.0/24"
[containers.web]
host = "node1"
networks = {{ app = {{ aliases = ["www"] }} }}
[containers.secret]
host = "node1"
networks = ["priv"]
[containers.api]
host = "node2"
networks = ["app"]
ports = ["8080:80"]
[containers.worker]
host = "node3"
networks = ["app"]
{extra}"#,
        url = etcd_url(),
        a = underlay_ip(0),
        b = underlay_ip(1),
        c = underlay_ip(2),
    )
}

impl Cluster {
    fn new() -> Cluster {
        let lab = Host::new();
        lab.sh(&format!(
            "ip link add under0 type bridge && ip addr add {ETCD_IP}/24 dev under0 && ip link set under0 up"
        ))
        .ok();
        let mut hosts = Vec::new();
        for i in 0..3 {
            let h = Host::new();
            // The host's underlay NIC, its peer on the lab's bridge.
            lab.sh(&format!(
                "ip link add u{i} type veth peer name ul0 netns /proc/{pid}/ns/net && \
                 ip link set u{i} master under0 && ip link set u{i} up",
                pid = h.pid()
            ))
            .ok();
            h.sh(&format!(
                "ip addr add {}/24 dev ul0 && ip link set ul0 up",
                underlay_ip(i)
            ))
            .ok();
            hosts.push(h);
        }
        let mut c = Cluster {
            lab,
            hosts,
            agents: vec![None; 3],
            etcd: None,
        };
        c.start_etcd();
        for i in 0..3 {
            c.start_agent(i);
        }
        c
    }

    fn start_etcd(&mut self) {
        let data = self.lab.dir.path().join("etcd");
        let log = self.lab.dir.path().join("etcd.log");
        let pid = self.lab.spawn_logged(
            &format!(
                "etcd --name lab --data-dir {data} \
                 --listen-client-urls http://{ETCD_IP}:2379 --advertise-client-urls http://{ETCD_IP}:2379 \
                 --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
                 --initial-cluster lab=http://127.0.0.1:2380",
                data = data.display()
            ),
            &log,
        );
        self.etcd = Some(pid);
        assert!(
            self.lab.wait_for(
                &format!(
                    "ETCDCTL_API=3 etcdctl --endpoints={} endpoint health",
                    etcd_url()
                ),
                WAIT
            ),
            "etcd did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop_etcd(&mut self) {
        if let Some(pid) = self.etcd.take() {
            self.lab.sh(&format!("kill -9 {pid}"));
            assert!(self.lab.wait_for(&gone(pid), WAIT));
        }
    }

    fn agent_log(&self, i: usize) -> PathBuf {
        self.hosts[i].dir.path().join("agent.log")
    }

    fn start_agent(&mut self, i: usize) {
        let cfg = self.hosts[i].dir.path().join("absent.toml");
        let log = self.agent_log(i);
        // Appending: a restarted agent's lines follow the first one's.
        let pid = self.hosts[i].spawn(&format!(
            "{NETLOOM} -c {} watch --host node{} --etcd {} --resync 3 >> {} 2>&1",
            cfg.display(),
            i + 1,
            etcd_url(),
            log.display()
        ));
        self.agents[i] = Some(pid);
    }

    fn push(&self, text: &str) -> common::Run {
        let cfg = self.lab.config("cluster.toml", text);
        self.lab.netloom(&cfg, &["push"])
    }

    /// Runs `cmd` inside container `c`'s namespace on host `i`.
    fn exec(&self, i: usize, c: &str, cmd: &str) -> common::Run {
        self.hosts[i].sh(&format!("ip netns exec {c} {cmd}"))
    }

    fn wait_exec(&self, i: usize, c: &str, cmd: &str) -> bool {
        self.hosts[i].wait_for(&format!("ip netns exec {c} {cmd}"), WAIT)
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                format!(
                    "--- node{} ---\n{}",
                    i + 1,
                    std::fs::read_to_string(self.agent_log(i)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// `netloom status --cluster` from the lab.
    fn status(&self) -> common::Run {
        let cfg = self.lab.config("status.toml", &file(""));
        self.lab.netloom(&cfg, &["status", "--cluster"])
    }
}

/// A shell test that `pid` has exited (a killed child stays a zombie until
/// the test reaps it on drop).
fn gone(pid: u32) -> String {
    common::exited(pid)
}

fn ready() -> bool {
    kernel_tests_possible(&[
        "ip", "nsenter", "unshare", "etcd", "etcdctl", "curl", "dig", "python3",
    ])
}

#[test]
fn three_hosts_reach_and_resolve_each_other_across_vxlan() {
    if !ready() {
        return;
    }
    let mut cl = Cluster::new();
    cl.push(&file("")).ok();
    // Every agent converges on the pushed revision.
    assert!(
        cl.lab.wait_for(
            &format!(
                "{NETLOOM} -c {} status --cluster | grep -c '\tconverged\t' | grep -qx 3",
                cl.lab.config("s.toml", &file("")).display()
            ),
            WAIT
        ),
        "not converged: {}\n{}",
        cl.status().stdout,
        cl.logs()
    );
    // Names of other hosts' members: hosts file and embedded DNS.
    assert!(
        cl.wait_exec(2, "worker", "ping -c1 -W1 web"),
        "worker cannot ping web:\n{}",
        cl.logs()
    );
    cl.exec(2, "worker", "ping -c1 -W1 www").ok();
    cl.exec(2, "worker", "ping -c1 -W1 api.app").ok();
    let hosts = cl.exec(0, "web", "getent hosts api");
    hosts.ok();
    let api_ip = hosts.stdout.split_whitespace().next().unwrap().to_string();
    let dig = cl.exec(0, "web", "dig +short +time=2 +tries=1 @10.200.0.1 api.app");
    assert_eq!(
        dig.stdout.trim(),
        api_ip,
        "dig: {}{}",
        dig.stdout,
        dig.stderr
    );
    let dig = cl.exec(2, "worker", "dig +short +time=2 +tries=1 @10.200.0.1 www");
    let web_ip = cl.exec(2, "worker", "getent hosts web").stdout;
    assert_eq!(dig.stdout.trim(), web_ip.split_whitespace().next().unwrap());
    // A server on host 2 answers a client on host 1, across the VXLAN.
    cl.hosts[1].spawn("ip netns exec api python3 -m http.server 80 --bind 0.0.0.0");
    assert!(cl.wait_exec(1, "api", "curl -s -o /dev/null http://127.0.0.1/"));
    let curl = cl.exec(
        0,
        "web",
        "curl -s -m 5 -o /dev/null -w %{http_code} http://api/",
    );
    assert_eq!(curl.stdout, "200", "curl api from web: {}", curl.stderr);
    // The published port of api works on its host as in single-host mode.
    let pub_port = cl.hosts[1].sh(&format!(
        "curl -s -m 5 -o /dev/null -w %{{http_code}} http://{}:8080/",
        underlay_ip(1)
    ));
    assert_eq!(
        pub_port.stdout, "200",
        "published port: {}",
        pub_port.stderr
    );
    // A local network of another host is not reachable.
    let secret = cl.exec(0, "secret", "getent hosts secret").stdout;
    let secret_ip = secret.split_whitespace().next().unwrap().to_string();
    assert_ne!(
        cl.exec(2, "worker", &format!("ping -c1 -W1 {secret_ip}"))
            .code,
        0
    );
    // The VXLAN device carries netloom's mark and the expected entries.
    let vx = cl.hosts[1].sh("ip -d link show type vxlan").stdout;
    assert!(
        vx.contains("vxlan id") && vx.contains("alias netloom:vxlan app"),
        "{vx}"
    );
    let fdb = cl.hosts[1].sh("bridge fdb show | grep 'dst'").stdout;
    assert!(fdb.contains("00:00:00:00:00:00 dev vx-"), "{fdb}");
    assert!(fdb.contains(&format!("dst {}", underlay_ip(0))), "{fdb}");
    assert!(fdb.contains(&format!("dst {}", underlay_ip(2))), "{fdb}");

    // Push adds a container on host 3: the others resolve and reach it.
    cl.push(&file(
        "[containers.extra]\nhost = \"node3\"\nnetworks = [\"app\"]\n",
    ))
    .ok();
    assert!(
        cl.wait_exec(0, "web", "ping -c1 -W1 extra"),
        "web cannot reach extra:\n{}",
        cl.logs()
    );
    assert!(cl.wait_exec(1, "api", "ping -c1 -W1 extra.app"));
    // ... and removing it removes its entries everywhere.
    cl.push(&file("")).ok();
    assert!(
        cl.hosts[0].wait_for("! grep -q extra /etc/netns/web/hosts", WAIT),
        "extra still in web's hosts file"
    );
    assert!(cl.hosts[2].wait_for("! ip netns list | grep -q extra", WAIT));
    assert!(cl.hosts[1].wait_for("! grep -q extra /etc/netns/api/hosts", WAIT));

    // kill -9 of host 2's agent: traffic keeps flowing; a restart plans
    // no change.
    let pid = cl.agents[1].take().unwrap();
    cl.hosts[1].sh(&format!("kill -9 {pid}"));
    assert!(cl.hosts[1].wait_for(&gone(pid), WAIT));
    cl.exec(0, "web", "ping -c1 -W1 api").ok();
    cl.exec(2, "worker", "curl -s -m 5 -o /dev/null http://api/")
        .ok();
    let before = std::fs::read_to_string(cl.agent_log(1)).unwrap_or_default();
    cl.start_agent(1);
    let log = cl.agent_log(1);
    assert!(
        cl.hosts[1].wait_for(
            &format!(
                "tail -c +{} {} | grep -q 'reconciled in .* 0 added, 0 changed, 0 destroyed'",
                before.len() + 1,
                log.display()
            ),
            WAIT
        ),
        "restarted agent:\n{}",
        cl.logs()
    );
    let after = std::fs::read_to_string(&log).unwrap_or_default();
    let first = after[before.len()..]
        .lines()
        .find(|l| l.contains("reconciled in"))
        .unwrap_or_default();
    assert!(
        first.contains(" 0 added, 0 changed, 0 destroyed"),
        "the restarted agent changed something: {first}"
    );

    // etcd stopped: traffic and DNS keep working; back: a push applies.
    cl.stop_etcd();
    std::thread::sleep(Duration::from_secs(2));
    cl.exec(0, "web", "ping -c1 -W1 worker").ok();
    let dig = cl.exec(
        2,
        "worker",
        "dig +short +time=2 +tries=1 @10.200.0.1 api.app",
    );
    assert_eq!(dig.stdout.trim(), api_ip);
    assert!(cl.hosts[0].wait_for(
        &format!("grep -q 'etcd' {}", cl.agent_log(0).display()),
        WAIT
    ));
    cl.start_etcd();
    cl.push(&file(
        "[containers.late]\nhost = \"node2\"\nnetworks = [\"app\"]\n",
    ))
    .ok();
    assert!(
        cl.wait_exec(2, "worker", "ping -c1 -W1 late"),
        "push after etcd came back:\n{}",
        cl.logs()
    );

    // down on host 3 removes only host 3's objects.
    let pid = cl.agents[2].take().unwrap();
    cl.hosts[2].sh(&format!("kill {pid}"));
    assert!(cl.hosts[2].wait_for(&gone(pid), WAIT));
    cl.hosts[2]
        .sh(&format!("{NETLOOM} -c /nonexistent down"))
        .ok();
    assert_eq!(cl.hosts[2].sh("ip -d link show type vxlan").stdout, "");
    assert_eq!(cl.hosts[2].sh("ip netns list").stdout.trim(), "");
    cl.exec(0, "web", "ping -c1 -W1 api").ok();
}

#[test]
fn concurrent_pushes_never_give_one_address_twice() {
    if !ready() {
        return;
    }
    let mut cl = Cluster::new();
    cl.push(&file("")).ok();
    let a = cl.lab.config(
        "a.toml",
        &file("[containers.xa]\nhost = \"node1\"\nnetworks = [\"app\"]\n[containers.ya]\nhost = \"node2\"\nnetworks = [\"app\"]\n"),
    );
    let b = cl.lab.config(
        "b.toml",
        &file("[containers.xb]\nhost = \"node3\"\nnetworks = [\"app\"]\n"),
    );
    let both = cl.lab.sh(&format!(
        "{NETLOOM} -c {a} push > {d}/a.out 2>&1 & {NETLOOM} -c {b} push > {d}/b.out 2>&1 & \
         wait %1; ra=$?; wait %2; rb=$?; echo $ra $rb",
        a = a.display(),
        b = b.display(),
        d = cl.lab.dir.path().display()
    ));
    let out_a = std::fs::read_to_string(cl.lab.dir.path().join("a.out")).unwrap_or_default();
    let out_b = std::fs::read_to_string(cl.lab.dir.path().join("b.out")).unwrap_or_default();
    assert_eq!(both.stdout.trim(), "0 0", "a:\n{out_a}\nb:\n{out_b}");
    let get = cl.lab.sh(&format!(
        "ETCDCTL_API=3 etcdctl --endpoints={} get --print-value-only /netloom/v1/desired",
        etcd_url()
    ));
    get.ok();
    let doc: serde_json::Value = serde_json::from_str(get.stdout.trim()).unwrap();
    let text = doc["file"].as_str().unwrap();
    let a_text = std::fs::read_to_string(&a).unwrap();
    let b_text = std::fs::read_to_string(&b).unwrap();
    assert!(text == a_text || text == b_text, "a mixed state was stored");
    let app = doc["allocations"]["addrs"]["ipv4"]["app"]
        .as_object()
        .unwrap();
    let mut ips: Vec<&str> = app.values().map(|v| v.as_str().unwrap()).collect();
    let n = ips.len();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), n, "an address given twice: {app:?}");
    let mut names: Vec<&str> = app.keys().map(String::as_str).collect();
    names.sort();
    let want: Vec<&str> = if text == a_text {
        vec!["api", "web", "worker", "xa", "ya"]
    } else {
        vec!["api", "web", "worker", "xb"]
    };
    assert_eq!(names, want);
    // The stored state reaches the hosts whole.
    let winner_host = if text == a_text { (1, "ya") } else { (2, "xb") };
    assert!(
        cl.hosts[winner_host.0]
            .wait_for(&format!("ip netns list | grep -q {}", winner_host.1), WAIT),
        "{}",
        cl.logs()
    );
    cl.stop_etcd();
}
