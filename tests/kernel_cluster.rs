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
/// The gateway of the cluster network `app` (10.200.0.0/24) on every host,
/// and its MAC (netloom's Docker-style MAC of the address).
const GATEWAY: &str = "10.200.0.1";
/// A client on the underlay network that is no cluster host.
const CLIENT_IP: &str = "10.98.0.50";
const GATEWAY_MAC: &str = "02:42:0a:c8:00:01";

/// The lab (underlay bridge + etcd) and three hosts with agents.
struct Cluster {
    lab: Host,
    hosts: Vec<Host>,
    /// Agent pids by host index (the `sh -c exec` child is the agent).
    agents: Vec<Option<u32>>,
    etcd: Option<u32>,
    /// Captures started so far (names their files).
    captures: usize,
    /// TLS to etcd: the directory with the throwaway CA and certificates.
    tls: Option<PathBuf>,
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
        Cluster::with(false)
    }

    /// `tls`: etcd serves https only and wants client certificates.
    fn with(tls: bool) -> Cluster {
        let lab = Host::new();
        lab.sh(&format!(
            "ip link add under0 type bridge && ip addr add {ETCD_IP}/24 dev under0 && ip link set under0 up"
        ))
        .ok();
        // A client outside the cluster, on the underlay network.
        lab.sh(&format!(
            "ip netns add client && ip link add c0 type veth peer name eth0 netns client && \
             ip link set c0 master under0 && ip link set c0 up && \
             ip -n client addr add {CLIENT_IP}/24 dev eth0 && ip -n client link set eth0 up"
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
            captures: 0,
            tls: None,
        };
        if tls {
            c.tls = Some(make_certs(&c.lab));
        }
        c.start_etcd();
        for i in 0..3 {
            c.start_agent(i);
        }
        c
    }

    fn start_etcd(&mut self) {
        let data = self.lab.dir.path().join("etcd");
        let log = self.lab.dir.path().join("etcd.log");
        let url = self.url();
        let tls = match &self.tls {
            None => String::new(),
            Some(d) => format!(
                "--cert-file {d}/server.crt --key-file {d}/server.key \
                 --client-cert-auth --trusted-ca-file {d}/ca.crt",
                d = d.display()
            ),
        };
        let pid = self.lab.spawn_logged(
            &format!(
                "etcd --name lab --data-dir {data} {tls} \
                 --listen-client-urls {url} --advertise-client-urls {url} \
                 --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
                 --initial-cluster lab=http://127.0.0.1:2380",
                data = data.display()
            ),
            &log,
        );
        self.etcd = Some(pid);
        assert!(
            self.lab
                .wait_for(&format!("{} endpoint health", self.etcdctl()), WAIT),
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

    fn url(&self) -> String {
        match self.tls {
            None => etcd_url(),
            Some(_) => format!("https://{ETCD_IP}:2379"),
        }
    }

    /// etcdctl with the endpoint (and the client certificate).
    fn etcdctl(&self) -> String {
        let tls = match &self.tls {
            None => String::new(),
            Some(d) => format!(
                " --cacert {d}/ca.crt --cert {d}/client.crt --key {d}/client.key",
                d = d.display()
            ),
        };
        format!("ETCDCTL_API=3 etcdctl --endpoints={}{tls}", self.url())
    }

    /// [`file`] for this cluster: with TLS, the https endpoint and the
    /// certificate files in `[cluster]`.
    fn text(&self, extra: &str) -> String {
        let t = file(extra);
        match &self.tls {
            None => t,
            Some(d) => t.replace(&etcd_url(), &self.url()).replace(
                "[cluster]\n",
                &format!(
                    "[cluster]\nca_file = \"{d}/ca.crt\"\ncert_file = \"{d}/client.crt\"\nkey_file = \"{d}/client.key\"\n",
                    d = d.display()
                ),
            ),
        }
    }

    fn start_agent(&mut self, i: usize) {
        // With TLS the agent finds etcd and its certificates in the file
        // (the desired state still comes from etcd); otherwise it has none.
        let cfg = match self.tls {
            None => self.hosts[i].dir.path().join("absent.toml"),
            Some(_) => self.hosts[i].config("cluster.toml", &self.text("")),
        };
        let log = self.agent_log(i);
        // Appending: a restarted agent's lines follow the first one's.
        let cmd = format!(
            "{NETLOOM} -c {} watch --host node{} --etcd {} --resync 3 >> {} 2>&1",
            cfg.display(),
            i + 1,
            self.url(),
            log.display()
        );
        let pid = self.hosts[i].spawn(&cmd);
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

    /// Starts [`CAPTURE`] on lab port `u{i}` (host i's underlay link);
    /// returns the path of its summary (see [`capture_result`]).
    fn capture(&mut self, i: usize) -> PathBuf {
        let secs = 120;
        let script = self.lab.config("capture.py", CAPTURE);
        let out = self
            .lab
            .dir
            .path()
            .join(format!("capture{i}-{}.json", self.captures));
        self.captures += 1;
        self.lab.spawn(&format!(
            "python3 {} u{i} {secs} {} {GATEWAY_MAC} {GATEWAY}",
            script.display(),
            out.display()
        ));
        let ready = format!("{}.ready", out.display());
        assert!(self.lab.wait_for(&format!("test -e {ready}"), WAIT));
        out
    }

    /// `netloom status --cluster` from the lab.
    fn status(&self) -> common::Run {
        let cfg = self.lab.config("status.toml", &self.text(""));
        self.lab.netloom(&cfg, &["status", "--cluster"])
    }
}

/// Captures on an underlay port of the lab until told to stop (a `.stop`
/// file beside its output; at most `secs` seconds) and writes a
/// JSON summary of the frames carried inside VXLAN: how many, how many
/// ICMP echo between members, and every one that is about a gateway
/// (source or destination MAC in `macs`, or ARP for an address in `ips`).
const CAPTURE: &str = r#"
import json, os, socket, struct, sys, time
dev, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
macs = set(sys.argv[4].split(","))
ips = set(sys.argv[5].split(","))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((dev, 0))
s.settimeout(0.2)
open(out + ".ready", "w").close()
mac = lambda b: ":".join("%02x" % x for x in b)
res = {"frames": 0, "icmp": 0, "gateway": []}
end = time.time() + secs
while time.time() < end and not os.path.exists(out + ".stop"):
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    if len(f) < 14 + 20 + 8 + 8 + 14 or f[12:14] != b"\x08\x00" or f[23] != 17:
        continue
    ihl = (f[14] & 15) * 4
    udp = 14 + ihl
    if struct.unpack("!H", f[udp + 2:udp + 4])[0] != 4789:
        continue
    inner = f[udp + 16:]
    res["frames"] += 1
    dst, src, typ = mac(inner[0:6]), mac(inner[6:12]), inner[12:14]
    why = []
    if src in macs or dst in macs:
        why.append("gateway MAC %s -> %s" % (src, dst))
    if typ == b"\x08\x06" and len(inner) >= 42:
        tip = socket.inet_ntoa(inner[38:42])
        if tip in ips:
            why.append("ARP for %s" % tip)
    if typ == b"\x08\x00" and len(inner) >= 35 and inner[23] == 1 and inner[34] in (0, 8):
        res["icmp"] += 1
    if why:
        res["gateway"].append("; ".join(why))
json.dump(res, open(out, "w"))
"#;

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
    let api_log = cl.hosts[1].dir.path().join("api-http.log");
    cl.hosts[1].spawn_logged(
        "ip netns exec api python3 -u -m http.server 80 --bind 0.0.0.0",
        &api_log,
    );
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
    // ... and from a client outside the cluster, which the server sees
    // with its own address (DNAT only, no masquerade on the way in).
    let outside = cl.lab.sh(&format!(
        "ip netns exec client curl -s -m 5 -o /dev/null -w %{{http_code}} http://{}:8080/?from-outside",
        underlay_ip(1)
    ));
    assert_eq!(outside.stdout, "200", "outside client: {}", outside.stderr);
    let log = std::fs::read_to_string(&api_log).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("{CLIENT_IP} ")) && l.contains("/?from-outside")),
        "the server did not see the client's address:\n{log}"
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
    let extra = cl.exec(0, "web", "getent hosts extra").stdout;
    let extra_ip = extra.split_whitespace().next().unwrap().to_string();
    let has_neigh = format!("ip neigh show nud permanent | grep -q '^{extra_ip} dev vx-'");
    assert!(cl.hosts[0].sh(&has_neigh).code == 0 && cl.hosts[1].sh(&has_neigh).code == 0);
    // ... and removing it removes its entries everywhere.
    cl.push(&file("")).ok();
    for i in [0, 1] {
        assert!(
            cl.hosts[i].wait_for(&format!("! {{ {has_neigh}; }}"), WAIT),
            "neighbour entry of extra left on node{}",
            i + 1
        );
    }
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
    // status --cluster says so, for every host, and does not claim success.
    let st = cl.status();
    assert_eq!(st.code, 2, "{}{}", st.stdout, st.stderr);
    assert!(
        st.stdout.starts_with("etcd\tunreachable\t"),
        "{}",
        st.stdout
    );
    for h in ["node1", "node2", "node3"] {
        assert!(
            st.stdout.contains(&format!("\n{h}\tunreachable\t")),
            "{}",
            st.stdout
        );
    }
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

/// Stops a [`CAPTURE`] and reads its summary.
fn capture_result(lab: &Host, out: &std::path::Path) -> serde_json::Value {
    std::fs::write(format!("{}.stop", out.display()), "").unwrap();
    assert!(lab.wait_for(&format!("test -s {}", out.display()), WAIT));
    let text = std::fs::read_to_string(out).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("capture summary {text:?}: {e}"))
}

/// Traffic that would put the gateway on the wire: containers asking ARP
/// for it, and host 1 itself sending to a member on another host (frames
/// from the gateway MAC); and member-to-member pings that must cross.
fn gateway_provoking_traffic(cl: &Cluster, api_ip: &str) {
    for (i, c) in [(0, "web"), (2, "worker")] {
        cl.exec(i, c, "ip neigh flush all").ok();
        cl.exec(i, c, &format!("ping -c2 -W1 {GATEWAY}")).ok();
    }
    cl.exec(0, "web", "ping -c3 -W1 api").ok();
    cl.exec(2, "worker", "ping -c3 -W1 web").ok();
    // The host's own packet to a remote member: it may or may not get an
    // answer; it must not leave with the gateway's MAC.
    cl.hosts[0].sh(&format!("ping -c2 -W1 {api_ip}"));
}

#[test]
fn gateway_traffic_never_crosses_hosts() {
    if !ready() {
        return;
    }
    let mut cl = Cluster::new();
    cl.push(&file("")).ok();
    let api_ip = {
        assert!(
            cl.wait_exec(0, "web", "ping -c1 -W1 api"),
            "web cannot reach api:\n{}",
            cl.logs()
        );
        let h = cl.exec(0, "web", "getent hosts api");
        h.ok();
        h.stdout.split_whitespace().next().unwrap().to_string()
    };
    // Remote members are neighbour entries of the VXLAN device, which
    // answers ARP for them itself (proxy).
    let vx = cl.hosts[0].sh("ip -d link show type vxlan").stdout;
    assert!(vx.contains("proxy"), "{vx}");
    let neigh = cl.hosts[0].sh("ip neigh show nud permanent").stdout;
    assert!(
        neigh.contains(&format!("{api_ip} dev vx-")) && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let nft = cl.hosts[0].sh("nft list table bridge netloom").stdout;
    assert!(nft.contains(&format!(". {GATEWAY_MAC}")), "{nft}");

    let caps = [cl.capture(0), cl.capture(2)];
    gateway_provoking_traffic(&cl, &api_ip);
    for (i, out) in caps.iter().enumerate() {
        let r = capture_result(&cl.lab, out);
        assert!(
            r["icmp"].as_u64().unwrap_or(0) > 0,
            "no member traffic seen on the underlay ({i}): {r}"
        );
        assert_eq!(
            r["gateway"].as_array().map(Vec::len),
            Some(0),
            "gateway traffic crossed hosts ({i}): {r}"
        );
    }

    // Control: without the filter the host's own frames (from the gateway
    // MAC) do cross, so the capture above could have seen them. The agent
    // is stopped meanwhile (it would repair the chain at once); started
    // again, it puts its table back.
    let pid = cl.agents[0].take().unwrap();
    cl.hosts[0].sh(&format!("kill {pid}"));
    assert!(cl.hosts[0].wait_for(&gone(pid), WAIT));
    // (Both ways: the VXLAN proxy's answer to the host's ARP comes in on
    // the VXLAN port, addressed to the gateway MAC.)
    cl.hosts[0]
        .sh("nft flush chain bridge netloom postrouting && nft flush chain bridge netloom prerouting")
        .ok();
    let out = cl.capture(0);
    cl.hosts[0].sh(&format!("ping -c2 -W1 {api_ip}"));
    let r = capture_result(&cl.lab, &out);
    assert!(
        r["gateway"].as_array().is_some_and(|g| !g.is_empty()),
        "without the filter the gateway's frames should have been seen: {r}"
    );
    cl.start_agent(0);
    assert!(
        cl.hosts[0].wait_for(
            "nft list chain bridge netloom postrouting | grep -q 'oifname . ether saddr'",
            WAIT
        ),
        "the agent did not restore its bridge table:\n{}",
        cl.logs()
    );
    let out = cl.capture(0);
    gateway_provoking_traffic(&cl, &api_ip);
    let r = capture_result(&cl.lab, &out);
    assert_eq!(r["gateway"].as_array().map(Vec::len), Some(0), "{r}");
    cl.stop_etcd();
}

/// A throwaway CA, a server certificate for etcd's address and a client
/// certificate, made with openssl in the lab's directory.
fn make_certs(lab: &Host) -> PathBuf {
    let d = lab.dir.path().join("pki");
    std::fs::create_dir_all(&d).unwrap();
    lab.sh(&format!(
        "set -e; cd {d}; \
         ec='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'; \
         openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj /CN=netloom-test-ca 2>/dev/null; \
         printf 'subjectAltName=IP:{ETCD_IP}\\nextendedKeyUsage=serverAuth\\nbasicConstraints=CA:FALSE\\n' > server.ext; \
         printf 'extendedKeyUsage=clientAuth\\nbasicConstraints=CA:FALSE\\n' > client.ext; \
         for n in server client; do \
           openssl req $ec -keyout $n.key -out $n.csr -subj /CN=netloom-$n 2>/dev/null; \
           openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile $n.ext -out $n.crt 2>/dev/null; \
         done",
        d = d.display()
    ))
    .ok();
    d
}

#[test]
fn push_and_watch_over_tls() {
    if !ready() || !kernel_tests_possible(&["openssl"]) {
        return;
    }
    let cl = Cluster::with(true);
    // Plain http is refused: the test really talks TLS.
    let plain = cl.lab.sh(&format!(
        "ETCDCTL_API=3 etcdctl --endpoints={} --dial-timeout=2s get x",
        etcd_url()
    ));
    assert_ne!(plain.code, 0, "etcd answered plain http");
    cl.push(&cl.text("")).ok();
    let status = cl.lab.config("s.toml", &cl.text(""));
    assert!(
        cl.lab.wait_for(
            &format!(
                "{NETLOOM} -c {} status --cluster | grep -c '\tconverged\t' | grep -qx 3",
                status.display()
            ),
            WAIT
        ),
        "not converged over TLS: {}\n{}",
        cl.status().stdout,
        cl.logs()
    );
    // The agents follow later pushes through their TLS watch.
    cl.push(&cl.text("[containers.extra]\nhost = \"node3\"\nnetworks = [\"app\"]\n"))
        .ok();
    assert!(
        cl.wait_exec(0, "web", "ping -c1 -W1 extra"),
        "web cannot reach extra:\n{}",
        cl.logs()
    );
    let stored = cl.lab.sh(&format!(
        "{} get --print-value-only /netloom/v1/desired",
        cl.etcdctl()
    ));
    assert!(stored.ok().stdout.contains("extra"));
}
