//! The embedded DNS through the real binary, in a throwaway host: a
//! container on two networks resolves the members of both through its
//! resolver (and nobody else's), and resolv.conf names the gateway only
//! while an agent serves it.
//!
//! Waits are on the event itself with generous deadlines: they bound a
//! hang, they do not measure speed.

mod common;

use std::time::{Duration, Instant};

use common::{Host, OUTSIDE_IP, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "dig", "getent", "unshare", "nsenter", "mount"];
const DEADLINE: Duration = Duration::from_secs(60);

/// `api` is on frontend and backend; `web` on frontend only, `db` on
/// backend only, `lone` on a third network.
fn config() -> String {
    format!(
        "[settings]\nupstream_dns = [\"{OUTSIDE_IP}\"]\n\n\
         [networks.frontend]\nsubnet = \"10.71.0.0/24\"\n\n\
         [networks.backend]\nsubnet = \"10.72.0.0/24\"\n\n\
         [networks.other]\nsubnet = \"10.73.0.0/24\"\n\n\
         [containers.api]\nnetworks = [\"frontend\", \"backend\"]\n\n\
         [containers.web]\nnetworks = [\"frontend\"]\n\n\
         [containers.db]\nnetworks = {{ backend = {{ aliases = [\"store\"] }} }}\n\n\
         [containers.lone]\nnetworks = [\"other\"]\n"
    )
}

const FRONTEND_GW: &str = "10.71.0.1";
const BACKEND_GW: &str = "10.72.0.1";
const API_FRONT: &str = "10.71.0.2";
const WEB: &str = "10.71.0.3";
const DB: &str = "10.72.0.3";

/// `dig` inside `ns` through its resolv.conf (or `@server` in `args`):
/// (status, answers).
fn dig(h: &Host, ns: &str, args: &str) -> (String, String) {
    let run = h.sh(&format!(
        "ip netns exec {ns} dig +time=2 +tries=2 +noall +comments +answer {args}"
    ));
    assert_eq!(
        run.code, 0,
        "dig {args} in {ns} failed: {}{}",
        run.stdout, run.stderr
    );
    let status = run
        .stdout
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let answers: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    (status, answers.join(" "))
}

/// `getent hosts NAME` inside `ns` with an empty /etc/hosts (inside `ip
/// netns exec`'s own mount namespace), so only DNS can answer.
fn getent_dns(h: &Host, ns: &str, name: &str) -> Option<String> {
    let run = h.sh(&format!(
        "ip netns exec {ns} sh -c 'mount --bind /dev/null /etc/hosts && getent hosts {name}'"
    ));
    (run.code == 0).then(|| {
        run.stdout
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

fn nameservers(h: &Host, ns: &str) -> Vec<String> {
    h.sh(&format!("cat /etc/netns/{ns}/resolv.conf"))
        .ok()
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .map(str::to_string)
        .collect()
}

fn wait(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_container_resolves_every_network_it_is_on_and_resolv_conf_follows_the_agent() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", &config());

    // No agent: resolv.conf lists only the upstream, not a gateway nobody
    // answers on.
    h.netloom(&cfg, &["apply"]).ok();
    assert_eq!(nameservers(&h, "api"), [OUTSIDE_IP]);
    assert_eq!(
        h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code,
        0,
        "converged"
    );

    // The agent starts: resolv.conf points at the first network's gateway.
    let (pid, log) = h.start_agent(&cfg);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait(|| nameservers(&h, "api") == [FRONTEND_GW, OUTSIDE_IP]),
        "resolv.conf of api: {:?}\n{}",
        nameservers(&h, "api"),
        read_log()
    );
    assert_eq!(nameservers(&h, "db"), [BACKEND_GW, OUTSIDE_IP]);
    assert_eq!(nameservers(&h, "lone"), ["10.73.0.1", OUTSIDE_IP]);
    // A command run while the agent runs renders the same files.
    assert_eq!(
        h.netloom(&cfg, &["plan", "--detailed-exitcode"]).code,
        0,
        "plan while the agent runs must be empty"
    );

    // api asks its resolver (frontend's gateway) for db, which is only on
    // backend: answered, with dig and with getent without hosts entries.
    assert!(
        wait(|| dig(&h, "api", "db").1 == DB),
        "api -> db: {:?}\n{}",
        dig(&h, "api", "db"),
        read_log()
    );
    assert_eq!(
        dig(&h, "api", "store.backend"),
        ("NOERROR".into(), DB.into())
    );
    assert_eq!(dig(&h, "api", "web"), ("NOERROR".into(), WEB.into()));
    assert_eq!(getent_dns(&h, "api", "db").as_deref(), Some(DB));
    assert_eq!(getent_dns(&h, "api", "web").as_deref(), Some(WEB));
    assert_eq!(
        dig(&h, "api", &format!("-x {DB}")),
        ("NOERROR".into(), "db. store.".into())
    );
    // Through backend's gateway too: the asker, not the listener, decides.
    assert_eq!(
        dig(&h, "api", &format!("@{BACKEND_GW} web")),
        ("NOERROR".into(), WEB.into())
    );

    // Members of neither network are NXDOMAIN for api; web and db, each
    // on one network, do not see the other (with positive controls).
    assert_eq!(dig(&h, "api", "lone"), ("NXDOMAIN".into(), String::new()));
    assert_eq!(getent_dns(&h, "api", "lone"), None);
    assert_eq!(dig(&h, "web", "api").1, API_FRONT);
    assert_eq!(dig(&h, "web", "db"), ("NXDOMAIN".into(), String::new()));
    assert_eq!(getent_dns(&h, "web", "db"), None);
    assert_eq!(dig(&h, "db", "api").1, "10.72.0.2");
    assert_eq!(dig(&h, "db", "web"), ("NXDOMAIN".into(), String::new()));
    assert_eq!(dig(&h, "lone", "db"), ("NXDOMAIN".into(), String::new()));
    assert_eq!(dig(&h, "lone", "lone").1, "10.73.0.2");

    // The agent stops: resolv.conf lists only the upstream again, and the
    // CLI agrees.
    h.sh(&format!("kill -TERM {pid}")).ok();
    assert!(
        wait(|| nameservers(&h, "api") == [OUTSIDE_IP]),
        "resolv.conf of api after the agent stopped: {:?}\n{}",
        nameservers(&h, "api"),
        read_log()
    );
    let gone = format!(
        "st=$(cut -d' ' -f3 /proc/{pid}/stat 2>/dev/null); [ -z \"$st\" ] || [ \"$st\" = Z ]"
    );
    assert!(wait(|| h.sh(&gone).code == 0), "agent did not exit");
    let plan = h.netloom(&cfg, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.code,
        0,
        "plan after the agent stopped must be empty:\n{}{}\n{}",
        plan.stdout,
        plan.stderr,
        read_log()
    );
}

#[test]
fn dual_stack_networks_are_served_on_the_ipv6_gateway_too() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config(
        "netloom.toml",
        &format!(
            "[settings]\nupstream_dns = [\"{OUTSIDE_IP}\"]\n\n\
             [networks.dual]\nsubnet = \"10.81.0.0/24\"\nsubnet6 = \"fd00:81::/64\"\n\n\
             [containers.web]\nnetworks = [\"dual\"]\n\n\
             [containers.db]\nnetworks = {{ dual = {{ ip6 = \"fd00:81::db\" }} }}\n"
        ),
    );
    let (_, log) = h.start_agent(&cfg);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // web asks the IPv6 gateway over IPv6 (the gateway's address may still
    // be in duplicate address detection for a moment: wait for it).
    assert!(
        wait(|| h
            .sh("ip netns exec web dig +time=1 +tries=1 +short @fd00:81::1 AAAA db")
            .stdout
            .trim()
            == "fd00:81::db"),
        "AAAA over IPv6: {:?}\n{}",
        dig(&h, "web", "@fd00:81::1 AAAA db"),
        read_log()
    );
    assert_eq!(
        dig(&h, "web", "@fd00:81::1 A db"),
        ("NOERROR".into(), "10.81.0.3".into())
    );
    assert_eq!(
        dig(&h, "web", "@fd00:81::1 -x fd00:81::db"),
        ("NOERROR".into(), "db.".into())
    );
    // An address of the subnet nobody has: NXDOMAIN, not forwarded.
    assert_eq!(dig(&h, "web", "@fd00:81::1 -x fd00:81::99").0, "NXDOMAIN");
    // The IPv4 gateway answers AAAA too.
    assert_eq!(
        dig(&h, "web", "@10.81.0.1 AAAA db"),
        ("NOERROR".into(), "fd00:81::db".into())
    );
    // Strangers over IPv6 get nothing: the host asking from an address
    // outside subnet6 times out (dropped, not refused).
    h.sh("ip -6 addr add fd00:99::5/64 dev lo").ok();
    let stranger = h.sh("dig +time=1 +tries=1 -b fd00:99::5 @fd00:81::1 AAAA db");
    assert!(
        stranger.stdout.contains("timed out") || stranger.stdout.contains("no servers"),
        "a stranger got an answer: {}",
        stranger.stdout
    );
    // Control: the same dig from inside the network is answered.
    assert_eq!(dig(&h, "web", "@fd00:81::1 AAAA db").0, "NOERROR");
}

/// Docker's name options through the real binary: the files, `getent`
/// through them and `dig` against the embedded DNS.
#[test]
fn extra_hosts_domainname_and_resolver_options() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config(
        "netloom.toml",
        "[networks.app]\nsubnet = \"10.74.0.0/24\"\n\n\
         [containers.opt]\nnetworks = [\"app\"]\nhostname = \"box\"\ndomainname = \"corp.example\"\n\
         extra_hosts = [\"legacy:192.0.2.7\", \"gw:host-gateway\"]\n\
         dns = [\"10.74.0.53\"]\ndns_search = [\"corp.example\"]\ndns_options = [\"ndots:1\"]\n\n\
         [containers.plain]\nnetworks = [\"app\"]\n",
    );
    h.netloom(&cfg, &["apply"]).ok();
    let hosts = h.sh("cat /etc/netns/opt/hosts").ok().stdout.clone();
    assert!(
        hosts.contains("10.74.0.2\tbox.corp.example box opt\n"),
        "{hosts}"
    );
    assert!(
        hosts.contains("192.0.2.7\tlegacy\n10.74.0.1\tgw\n"),
        "{hosts}"
    );
    assert_eq!(
        h.sh("cat /etc/netns/opt/resolv.conf").ok().stdout,
        "# Written by netloom.\nnameserver 10.74.0.53\nsearch corp.example\noptions ndots:1 timeout:1 attempts:2\n"
    );
    let getent = |ns: &str, name: &str| {
        h.sh(&format!("ip netns exec {ns} getent hosts {name}"))
            .stdout
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(getent("opt", "legacy"), "192.0.2.7");
    assert_eq!(getent("opt", "gw"), "10.74.0.1");
    assert_eq!(getent("opt", "box.corp.example"), "10.74.0.2");
    assert_eq!(getent("plain", "legacy"), "", "extra hosts are opt's only");

    // The agent: resolv.conf names the gateway, then opt's own server;
    // the embedded DNS answers opt's extra hosts for opt only.
    let (_, log) = h.start_agent(&cfg);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait(|| nameservers(&h, "opt") == ["10.74.0.1", "10.74.0.53"]),
        "resolv.conf of opt: {:?}\n{}",
        nameservers(&h, "opt"),
        read_log()
    );
    assert!(
        wait(|| dig(&h, "opt", "@10.74.0.1 legacy").1 == "192.0.2.7"),
        "dig legacy from opt: {:?}\n{}",
        dig(&h, "opt", "@10.74.0.1 legacy"),
        read_log()
    );
    assert_eq!(
        getent_dns(&h, "opt", "legacy").as_deref(),
        Some("192.0.2.7")
    );
    assert_eq!(
        dig(&h, "plain", "@10.74.0.1 legacy"),
        ("NXDOMAIN".into(), String::new())
    );
    // (`opt` alone would be read by dig as the record type OPT.)
    assert_eq!(dig(&h, "plain", "@10.74.0.1 opt.app").1, "10.74.0.2");
}
