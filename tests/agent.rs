//! `netloom watch` in a throwaway host: the embedded DNS answered by real
//! `dig`, file changes by atomic rename, an invalid file, drift healing
//! from kernel events and resync, SIGTERM.
//!
//! The main test runs the agent with a resync period far longer than the
//! test, so that every heal it checks comes from kernel events; the resync
//! has its own test. Waits are on the event itself, with deadlines
//! generous enough for a loaded machine: they bound a hang, they do not
//! measure speed (benchmarks do that).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Run;

use common::{Host, NETLOOM, OUTSIDE_IP, UPLINK_IP, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "bridge", "nft", "dig", "ping", "unshare", "nsenter"];

fn config(extra: &str) -> String {
    format!(
        "[settings]\nupstream_dns = [\"{OUTSIDE_IP}\"]\n\n\
         [networks.mynetwork]\nsubnet = \"192.168.0.0/16\"\ngateway = \"192.168.0.1\"\n\n\
         [networks.green]\nsubnet = \"10.60.0.0/24\"\n\n\
         [containers.tomcat4]\nnetworks = [\"mynetwork\"]\n\n\
         [containers.tomcat5]\nnetworks = {{ mynetwork = {{ aliases = [\"app\"] }} }}\n\n\
         [containers.g1]\nnetworks = [\"green\"]\n{extra}"
    )
}

/// A resync period no test outlives: heals must come from kernel events.
const NO_RESYNC: &str = "300";
/// How long an event may take on a loaded machine before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// `dig`'s output; the command must have succeeded (exit 0: an answer,
/// including NXDOMAIN, was received).
fn dig(h: &Host, ns: &str, args: &str) -> String {
    let r = dig_run(h, ns, args);
    assert_eq!(
        r.code, 0,
        "dig {args} in {ns} failed:\n{}{}",
        r.stdout, r.stderr
    );
    r.stdout
}

fn dig_run(h: &Host, ns: &str, args: &str) -> Run {
    h.sh(&format!("ip netns exec {ns} dig +time=2 +tries=1 {args}"))
}

/// dig's exit status when no server answered.
const DIG_NO_REPLY: i32 = 9;

/// Saves `text` as the config the way editors do: write a temp file, rename.
fn save(h: &Host, path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    let _ = h;
}

fn wait(mut f: impl FnMut() -> bool, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Starts the agent on `cfg` (with a resync no test outlives, its log in
/// the test's directory) and waits for its first reconcile: its pid and
/// log.
fn start_agent(h: &mut Host, cfg: &Path) -> (u32, PathBuf) {
    let log = h.dir.path().join("agent.log");
    let pid = h.spawn_logged(
        &format!(
            "env RUST_LOG=info {NETLOOM} watch --resync {NO_RESYNC} -c {}",
            cfg.display()
        ),
        &log,
    );
    assert!(
        wait(
            || read(&log).contains("reconciled in"),
            Duration::from_secs(20)
        )
        .is_some(),
        "agent did not start:\n{}",
        read(&log)
    );
    (pid, log)
}

/// The name of the host's first bridge.
fn first_bridge(h: &Host) -> String {
    let br = h
        .sh("ip -o link show type bridge | grep -o 'br-[0-9a-f]*' | head -1")
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(!br.is_empty(), "no bridge");
    br
}

#[test]
fn the_agent_serves_names_follows_the_file_and_heals_drift() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::with_outside();
    let cfg = h.config("netloom.toml", &config(""));
    let (pid, log) = start_agent(&mut h, &cfg);
    let read_log = || read(&log);

    // DNS: names, aliases, name.network, PTR, over UDP and TCP.
    assert_eq!(
        dig(&h, "tomcat4", "+short @192.168.0.1 tomcat5").trim(),
        "192.168.0.3"
    );
    assert_eq!(
        dig(&h, "tomcat4", "+short +tcp @192.168.0.1 tomcat5").trim(),
        "192.168.0.3"
    );
    assert_eq!(
        dig(&h, "tomcat4", "+short @192.168.0.1 app.mynetwork").trim(),
        "192.168.0.3"
    );
    assert_eq!(
        dig(&h, "tomcat5", "+short @192.168.0.1 tomcat4").trim(),
        "192.168.0.2"
    );
    assert!(dig(&h, "tomcat4", "+short @192.168.0.1 -x 192.168.0.3").contains("tomcat5."));
    let full = dig(&h, "tomcat4", "@192.168.0.1 tomcat5");
    assert!(
        full.contains("status: NOERROR") && full.contains("\t0\tIN\tA\t192.168.0.3"),
        "TTL 0: {full}"
    );
    // Another network's member gets NXDOMAIN from its own gateway.
    let other = dig(&h, "g1", "@10.60.0.1 tomcat5");
    assert!(other.contains("status: NXDOMAIN"), "{other}");
    // Nobody outside those networks gets an answer: not on the uplink
    // address, and not from the gateway of a network one is not on.
    // (Control: "outside" reaches both addresses, and dig works there.)
    h.sh(&format!("ip netns exec outside ping -c1 -W2 {UPLINK_IP}"))
        .ok();
    h.sh("ip netns exec outside ping -c1 -W2 192.168.0.1").ok();
    let uplink = dig_run(&h, "outside", &format!("@{UPLINK_IP} tomcat5"));
    assert_eq!(
        uplink.code, DIG_NO_REPLY,
        "the uplink address answered:\n{}{}",
        uplink.stdout, uplink.stderr
    );
    let gw = dig_run(&h, "outside", "+short @192.168.0.1 tomcat5");
    assert_eq!(
        gw.code, DIG_NO_REPLY,
        "the gateway answered a non-member:\n{}{}",
        gw.stdout, gw.stderr
    );

    // The file, saved by atomic rename: a new container converges. Real
    // drift that arrives right after the agent applied that change (among
    // the echo of its own writes) is healed too: tomcat4's default route is
    // deleted the moment the agent logs the reconcile.
    save(
        &h,
        &cfg,
        &config("\n[containers.tomcat6]\nnetworks = [\"mynetwork\"]\n"),
    );
    h.sh(&format!(
        "for i in $(seq 200000); do grep -q 'trigger=file' {log} && break; done; \
         grep -q 'trigger=file' {log} && ip -n tomcat4 route del default",
        log = log.display()
    ))
    .ok();
    let took = wait(
        || {
            dig_run(&h, "tomcat4", "+short @192.168.0.1 tomcat6")
                .stdout
                .trim()
                == "192.168.0.4"
        },
        DEADLINE,
    );
    assert!(
        took.is_some(),
        "tomcat6 never resolved: {}\n{}",
        dig_run(&h, "tomcat4", "@192.168.0.1 tomcat6").stdout,
        read_log()
    );
    assert!(
        wait(
            || h.sh("ip -n tomcat4 route show default | grep -q 192.168.0.1")
                .code
                == 0,
            DEADLINE
        )
        .is_some(),
        "drift during an apply was not healed:\n{}",
        read_log()
    );
    h.sh("ip netns exec tomcat4 ping -c1 -W2 tomcat6").ok();

    // An invalid file: logged with its position, nothing torn down.
    save(&h, &cfg, "[containers.tomcat4]\nnetworks = [\"nope\"]\n");
    let shown = format!("{}:2:13:", cfg.display());
    assert!(
        wait(|| read_log().contains(&shown), DEADLINE).is_some(),
        "no positioned error:\n{}",
        read_log()
    );
    assert!(h.netns_list().contains("tomcat6"));
    assert_eq!(
        dig(&h, "tomcat4", "+short @192.168.0.1 tomcat6").trim(),
        "192.168.0.4"
    );
    // Fixed: converges again (tomcat6 removed this time).
    save(&h, &cfg, &config(""));
    assert!(
        wait(|| !h.netns_list().contains("tomcat6"), DEADLINE).is_some(),
        "{}",
        read_log()
    );

    // Drift from kernel events: a deleted bridge and a deleted veth.
    let br = h
        .sh("ip -o link show type bridge | grep -o 'br-[0-9a-f]*' | sort | head -1")
        .ok()
        .stdout
        .trim()
        .to_string();
    h.sh(&format!("ip link del {br}")).ok();
    assert!(
        wait(|| h.sh(&format!("ip link show {br}")).code == 0, DEADLINE).is_some(),
        "bridge not healed:\n{}",
        read_log()
    );
    assert!(
        wait(
            || h.sh("ip netns exec tomcat4 ping -c1 -W1 192.168.0.3").code == 0,
            DEADLINE
        )
        .is_some()
    );
    let veth = h.sh("ip -o link show type veth | grep 'endpoint tomcat5.eth0' | grep -o 'veth[0-9a-f]*' | head -1").ok().stdout.trim().to_string();
    assert!(!veth.is_empty());
    h.sh(&format!("ip link del {veth}")).ok();
    assert!(
        wait(|| h.sh(&format!("ip link show {veth}")).code == 0, DEADLINE).is_some(),
        "veth not healed:\n{}",
        read_log()
    );
    // Inside a container's namespace: a deleted default route.
    h.sh("ip -n tomcat4 route del default").ok();
    assert!(
        wait(
            || h.sh("ip -n tomcat4 route show default | grep -q 192.168.0.1")
                .code
                == 0,
            DEADLINE
        )
        .is_some(),
        "route not healed:\n{}",
        read_log()
    );
    // The reconcile logs after it verified, once the route is back.
    assert!(
        wait(|| read_log().contains("tomcat4: route removed"), DEADLINE).is_some(),
        "{}",
        read_log()
    );
    // Every heal came from kernel events: no resync ran.
    let text = read_log();
    assert!(text.contains("trigger=kernel"), "{text}");
    assert!(!text.contains("trigger=resync"), "{text}");

    // status shows the agent's runs.
    let status = h.netloom(&cfg, &["status"]);
    assert!(
        status
            .stdout
            .contains(&format!("Agent (pid {pid}, running): last reconcile")),
        "pid {pid}: {}",
        status.stdout
    );

    // SIGTERM: the agent exits (after pointing resolv.conf away from the
    // DNS it no longer serves); the network and names stay.
    h.sh(&format!("kill -TERM {pid}")).ok();
    // Exited (a zombie until the test reaps it, hence the state check).
    let gone = format!(
        "st=$(cut -d' ' -f3 /proc/{pid}/stat 2>/dev/null); [ -z \"$st\" ] || [ \"$st\" = Z ]"
    );
    assert!(
        wait(|| h.sh(&gone).code == 0, DEADLINE).is_some(),
        "agent did not stop after SIGTERM"
    );
    assert!(read_log().contains("stopping"), "{}", read_log());
    assert!(h.netns_list().contains("tomcat5"));
    h.sh("ip netns exec tomcat4 getent hosts tomcat5").ok();
}

/// Every kind of drift that has no link-removal event heals from what the
/// kernel and the filesystem report, long before `--resync 300` would: an
/// attribute change, an extra address, a sysctl, nft elements, tables and
/// the ruleset, netloom's files, and a deleted namespace. Each heal must
/// happen within a generous deadline (far below the resync); the measured
/// latencies are printed (`--nocapture`), not asserted.
#[test]
fn drift_without_link_removal_heals_from_events() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config(
        "netloom.toml",
        &format!(
            "[settings]\nupstream_dns = [\"{OUTSIDE_IP}\"]\n\n\
             [networks.green]\nsubnet = \"10.60.0.0/24\"\n\n\
             [containers.c1]\nnetworks = [\"green\"]\nports = [\"8080:80\"]\n\n\
             [containers.c2]\nnetworks = [\"green\"]\n"
        ),
    );
    let (pid, log) = start_agent(&mut h, &cfg);
    let read_log = || read(&log);
    let runs = || read_log().matches("reconciled in").count();
    let br = first_bridge(&h);
    // A port of the bridge, and the hairpin mode netloom gave it.
    let port = h
        .sh(&format!(
            "ip -o link show master {br} | head -1 | awk -F': ' '{{print $2}}' | cut -d@ -f1"
        ))
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(!port.is_empty());
    let hairpin = |h: &Host| {
        let on = h
            .sh(&format!("bridge -d link show dev {port}"))
            .ok()
            .stdout
            .contains("hairpin on");
        if on { "on" } else { "off" }
    };
    let (want_hairpin, other_hairpin) = match hairpin(&h) {
        "on" => ("on", "off"),
        _ => ("off", "on"),
    };
    let hosts = "/etc/netns/c1/hosts";
    // The files live in the sandbox's own mount namespace.
    let good_hosts = h.sh(&format!("cat {hosts}")).ok().stdout.clone();

    // (what, how to cause it, the shell check that holds once healed)
    let cases: Vec<(&str, String, String)> = vec![
        (
            "container MAC",
            "ip -n c1 link set eth0 address 02:42:0a:3c:00:99".into(),
            "ip -n c1 link show eth0 | grep -q 02:42:0a:3c:00:02".into(),
        ),
        (
            "bridge MTU",
            format!("ip link set {br} mtu 1400"),
            format!("ip link show {br} | grep -q 'mtu 1500'"),
        ),
        (
            "bridge MAC",
            format!("ip link set {br} address 02:42:0a:3c:00:99"),
            format!("ip link show {br} | grep -q 02:42:0a:3c:00:01"),
        ),
        (
            // Only the bridge's notice about its port says this.
            "a port's hairpin mode",
            format!("bridge link set dev {port} hairpin {other_hairpin}"),
            format!("bridge -d link show dev {port} | grep -q 'hairpin {want_hairpin}'"),
        ),
        (
            "extra address in a container",
            "ip -n c1 addr add 10.60.0.3/24 dev eth0".into(),
            "! ip -n c1 -o addr show dev eth0 | grep -q 10.60.0.3/".into(),
        ),
        (
            "ip_forward=0",
            "sysctl -qw net.ipv4.ip_forward=0".into(),
            "[ $(cat /proc/sys/net/ipv4/ip_forward) = 1 ]".into(),
        ),
        (
            "deleted nft element",
            "nft delete element inet netloom dnat_any '{ tcp . 8080 }'".into(),
            "nft list map inet netloom dnat_any | grep -q 8080".into(),
        ),
        (
            "hand-added nft element",
            "nft add element inet netloom dnat_any '{ tcp . 2222 : 8.8.8.8 . 22 }'".into(),
            "! nft list map inet netloom dnat_any | grep -q 2222".into(),
        ),
        (
            "deleted nft table",
            "nft delete table inet netloom".into(),
            "nft list map inet netloom dnat_any | grep -q 8080".into(),
        ),
        (
            "flushed ruleset",
            "nft flush ruleset".into(),
            "nft list map inet netloom dnat_any | grep -q 8080".into(),
        ),
        (
            "edited hosts file",
            format!("sed -i 's/^10.60.0.3\\s/10.6.6.6 /' {hosts}"),
            format!("grep -q '^10.60.0.3' {hosts} && ! grep -q 10.6.6.6 {hosts}"),
        ),
        (
            "deleted hosts file",
            format!("rm {hosts}"),
            format!("[ -f {hosts} ]"),
        ),
        (
            "ip netns del",
            "ip netns del c2".into(),
            "ip -n c2 -o addr show dev eth0 | grep -q 10.60.0.3/".into(),
        ),
    ];
    let mut measured = Vec::new();
    for (what, cause, healed) in &cases {
        h.sh(healed).ok();
        let before = runs();
        h.sh(cause).ok();
        let took = wait(|| h.sh(healed).code == 0, Duration::from_secs(30));
        assert!(
            took.is_some(),
            "{what}: not healed within 30 s (resync is 300 s):\n{}",
            read_log()
        );
        // Let the healing reconcile (and its check for echoes) finish, so
        // the next case's change is not taken for this one's echo.
        let changed_since = |n: usize| {
            read_log()
                .lines()
                .filter(|l| l.contains("reconciled in"))
                .skip(n)
                .any(|l| !l.contains("0 added, 0 changed, 0 destroyed"))
        };
        assert!(
            wait(|| changed_since(before), Duration::from_secs(30)).is_some(),
            "{what}: no reconcile changed anything:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(300));
        measured.push(format!("{what}: healed after {:?}", took.unwrap()));
    }
    assert_eq!(h.sh(&format!("cat {hosts}")).ok().stdout, good_hosts);
    assert!(
        !read_log().contains("trigger=resync"),
        "a resync healed something:\n{}",
        read_log()
    );
    eprintln!("{}", measured.join("\n"));
    if std::env::var("SHOW_AGENT_LOG").is_ok() {
        eprintln!("{}", read_log());
    }
    h.sh(&format!("kill -TERM {pid}")).ok();
}

/// A reconcile that fails after it started reading (its plan is refused)
/// leaves what it was to read again for the next one: drift it took in
/// (in the host and in a container) is healed once the file is fixed, not
/// left to the resync.
#[test]
fn drift_taken_in_by_a_refused_reconcile_heals_once_the_file_is_fixed() {
    refused_reconcile_then_fixed(false);
}

/// The same when the last refused reconcile read everything (SIGHUP).
#[test]
fn drift_taken_in_by_a_refused_full_reading_heals_once_the_file_is_fixed() {
    refused_reconcile_then_fixed(true);
}

/// Drift while the agent's file is refused, taken in by the reconciles
/// that fail (and a SIGHUP's full reading with `sighup`), heals once the
/// file is fixed.
fn refused_reconcile_then_fixed(sighup: bool) {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    // An address of the host that the bad file's network would give its
    // bridge (a refusal: nothing is changed).
    h.sh("ip addr add 10.77.0.1/24 dev lo").ok();
    let is_up = |h: &Host, br: &str| {
        h.sh(&format!("ip -o link show dev {br} | grep -q '[<,]UP[,>]'"))
            .code
            == 0
    };
    let good = format!(
        "[settings]\nupstream_dns = [\"{OUTSIDE_IP}\"]\n\n\
         [networks.green]\nsubnet = \"10.60.0.0/24\"\n\n\
         [containers.c1]\nnetworks = [\"green\"]\n"
    );
    let bad = format!("{good}\n[networks.red]\nsubnet = \"10.77.0.0/24\"\n");
    let cfg = h.config("netloom.toml", &good);
    let (pid, log) = start_agent(&mut h, &cfg);
    let read_log = || read(&log);
    let failed = || read_log().matches("reconcile failed").count();
    let br = first_bridge(&h);
    save(&h, &cfg, &bad);
    assert!(
        wait(|| failed() >= 1, DEADLINE).is_some(),
        "the bad file was not refused:\n{}",
        read_log()
    );
    // Drift while the file is refused, in the host and in a container:
    // the reconciles their events start read them again, then fail.
    h.sh(&format!("ip link set {br} down")).ok();
    h.sh("ip -n c1 link set eth0 mtu 1400").ok();
    let mtu_healed = |h: &Host| h.sh("ip -n c1 link show eth0").stdout.contains("mtu 1500");
    assert!(
        wait(|| failed() >= 2, DEADLINE).is_some(),
        "the drift did not start a reconcile:\n{}",
        read_log()
    );
    // Both events taken in by a failed reconcile, not waiting in a batch.
    std::thread::sleep(Duration::from_millis(500));
    if sighup {
        let before = failed();
        h.sh(&format!("kill -HUP {pid}")).ok();
        assert!(
            wait(|| failed() > before, DEADLINE).is_some(),
            "SIGHUP did not start a reconcile:\n{}",
            read_log()
        );
    }
    assert!(!is_up(&h, &br), "the refused reconcile changed the bridge");
    assert!(!mtu_healed(&h), "the refused reconcile changed the MTU");
    save(&h, &cfg, &good);
    assert!(
        wait(|| is_up(&h, &br), DEADLINE).is_some(),
        "the bridge stayed down once the file was fixed:\n{}",
        read_log()
    );
    assert!(
        wait(|| mtu_healed(&h), DEADLINE).is_some(),
        "the container's MTU stayed drifted once the file was fixed:\n{}",
        read_log()
    );
    assert!(
        !read_log().contains("trigger=resync"),
        "a resync healed it:\n{}",
        read_log()
    );
    h.sh(&format!("kill -TERM {pid}")).ok();
}
