//! Files that pass a naive check but could never apply, and values that
//! must never reach the kernel: each refused by `netloom validate` (the
//! real binary) at `FILE:LINE:COL` of the value to change, nothing changed.

use std::path::Path;
use std::process::Command;

const NETLOOM: &str = env!("CARGO_BIN_EXE_netloom");

/// Runs `netloom validate` on `text`; (exit code, error lines without the
/// file name).
fn validate(text: &str) -> (Option<i32>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.toml");
    std::fs::write(&p, text).unwrap();
    validate_path(&p)
}

fn validate_path(p: &Path) -> (Option<i32>, Vec<String>) {
    let out = Command::new(NETLOOM)
        .args(["validate", "-c"])
        .arg(p)
        .env("NETLOOM_STATE_DIR", "/nonexistent-netloom-test")
        .output()
        .unwrap();
    let prefix = format!("{}:", p.display());
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect();
    (out.status.code(), lines)
}

/// `LINE:COL` of the `nth` (0-based) occurrence of `needle` in `text`.
fn at(text: &str, needle: &str, nth: usize) -> String {
    let off = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in {text:?}"))
        .0;
    let (l, c) = netloom::core::diag::line_col(text, off);
    format!("{l}:{c}")
}

#[track_caller]
fn assert_refused(text: &str, pos: &str, needle: &str) {
    let (code, errs) = validate(text);
    assert_eq!(code, Some(1), "expected exit 1 for {text:?}, got {errs:#?}");
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("{pos}: ")) && e.contains(needle)),
        "expected an error at {pos} containing {needle:?}, got {errs:#?}"
    );
}

#[track_caller]
fn assert_valid(text: &str) {
    let (code, errs) = validate(text);
    assert_eq!(code, Some(0), "expected {text:?} to be valid: {errs:#?}");
}

#[test]
fn subnets_that_are_not_bridge_networks() {
    for (subnet, why) in [
        ("0.0.0.0/0", "too large"),
        ("10.0.0.0/7", "too large"),
        ("224.0.0.0/24", "multicast"),
        ("239.1.0.0/16", "multicast"),
        ("127.0.0.0/8", "loopback"),
        ("127.5.0.0/16", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("169.254.3.0/24", "link-local"),
        ("0.0.0.0/16", "this network"),
        ("240.0.0.0/24", "reserved"),
    ] {
        let t = format!("[networks.n]\nsubnet = \"{subnet}\"\n");
        assert_refused(&t, "2:10", why);
    }
    for (subnet6, why) in [
        ("::/0", "too large"),
        ("fe80::/64", "link-local"),
        ("ff02::/64", "multicast"),
        ("::/120", "loopback"),
        ("::ffff:0:0/112", "IPv4-mapped"),
    ] {
        let t = format!("[networks.n]\nsubnet = \"10.1.0.0/16\"\nsubnet6 = \"{subnet6}\"\n");
        assert_refused(&t, "3:11", why);
    }
    // Ordinary private ranges, a /8 included, stay valid.
    assert_valid("[networks.n]\nsubnet = \"10.0.0.0/8\"\nsubnet6 = \"fd00:1::/64\"\n");
    assert_valid("[networks.n]\nsubnet = \"192.168.7.0/24\"\n");
}

#[test]
fn long_container_names_with_published_ports() {
    // "NAME.8080/tcp NAME bridge docker0": 2 * len + 25 bytes <= 128.
    let ok = "a".repeat(51);
    assert_valid(&format!("[containers.{ok}]\nports = [\"8080:80\"]\n"));
    let long = "b".repeat(52);
    let t = format!("[containers.{long}]\nports = [\"8080:80\"]\n");
    assert_refused(&t, "1:13", "at most 51 characters");
    // The same name without published ports is fine (no element comment).
    assert_valid(&format!("[containers.{long}]\n"));
    // An auto-published port is measured with the widest host port.
    let t = format!(
        "[containers.{}]\nports = [\"127.0.0.1::80/sctp\"]\n",
        "c".repeat(46)
    );
    assert_refused(&t, "1:13", "nft comment");
}

#[test]
fn derived_bridge_name_collision_names_both_networks() {
    let derived = netloom::core::spec::default_bridge_name("a");
    let t = format!(
        "[networks.a]\nsubnet = \"10.1.0.0/16\"\n[networks.b]\nsubnet = \"10.2.0.0/16\"\nbridge = \"{derived}\"\n"
    );
    assert_refused(&t, "5:10", "already used by network `a`");
    assert_refused(&t, "1:1", "also the bridge of network `b`");
}

#[test]
fn colliding_veth_hashes_get_distinct_names() {
    // Both hash to the same `veth` + 7 hex on the default network.
    let (a, b) = ("f6am7x2hmb", "meznomp9nq");
    assert_eq!(
        netloom::core::model::veth_name(a, "bridge"),
        netloom::core::model::veth_name(b, "bridge")
    );
    let t = format!("#:schema x\n[containers.{a}]\n[containers.{b}]\n");
    assert_valid(&t);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.toml");
    std::fs::write(&p, &t).unwrap();
    let out = Command::new(NETLOOM)
        .args(["plan", "--offline", "--format", "json", "-c"])
        .arg(&p)
        .env("NETLOOM_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    let mut veths: Vec<&str> = plan
        .match_indices("veth")
        .map(|(i, _)| &plan[i..i + 11])
        .filter(|v| v[4..].bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    veths.sort_unstable();
    veths.dedup();
    assert_eq!(
        veths.len(),
        2,
        "two distinct veth names expected: {veths:?}"
    );
}

#[test]
fn netns_path_of_another_declared_container() {
    // A path to the named namespace of another container.
    let t = "[containers.a]\n[containers.b]\nnetns_path = \"/var/run/netns//a/\"\n";
    assert_refused(
        t,
        &at(t, "\"/var/run", 0),
        "network namespace of container `a`",
    );
    assert_refused(
        t,
        "1:13",
        "also given as the network namespace of container `b`",
    );
    // The same path twice.
    let t = "[containers.a]\nnetns_path = \"/proc/4242/ns/net\"\n[containers.b]\nnetns_path = \"/proc/4242/./ns/net\"\n";
    assert_refused(t, &at(t, "\"/proc", 1), "namespace of container `a`");
    assert_refused(t, &at(t, "\"/proc", 0), "container `b`");
    // A name equal to the path of another: the other way round.
    let t = "[containers.a]\nnetns_path = \"/run/netns/x\"\n[containers.b]\nnetns = \"x\"\n";
    assert_refused(t, &at(t, "\"x\"", 0), "namespace of container `a`");
}

#[test]
fn allocations_that_cannot_be_satisfied() {
    let t = "[networks.n]\nsubnet = \"10.9.0.0/30\"\n[containers.a]\nnetworks = [\"n\"]\n[containers.b]\nnetworks = [\"n\"]\n";
    assert_refused(t, "2:10", "too small for its 2 containers");
    // One member fits a /30.
    assert_valid("[networks.n]\nsubnet = \"10.9.0.0/30\"\n[containers.a]\nnetworks = [\"n\"]\n");
    // IPv6: a /126 holds two.
    let t = "[networks.n]\nsubnet = \"10.9.0.0/24\"\nsubnet6 = \"fd00::/126\"\n[containers.a]\nnetworks = [\"n\"]\n[containers.b]\nnetworks = [\"n\"]\n[containers.c]\nnetworks = [\"n\"]\n";
    assert_refused(t, "3:11", "subnet6 fd00::/126");
    // Auto ports: 5000-5002 holds the fixed 5001 and one auto port.
    let t = "[settings]\nport_range = \"5000-5002\"\n[containers.a]\nports = [\"5001:80\", \"81\", \"82\", \"83\"]\n";
    assert_refused(t, "2:14", "no free port left for `83`");
    let t = "[settings]\nport_range = \"5000-5002\"\n[containers.a]\nports = [\"5001:80\", \"81-82\"]\n";
    assert_refused(t, "2:14", "2 free consecutive ports");
    assert_valid(
        "[settings]\nport_range = \"5000-5002\"\n[containers.a]\nports = [\"5001:80\", \"81\", \"82\"]\n",
    );
}

#[test]
fn docker0_clash_at_the_subnet_value() {
    let t = "[networks.n]\nsubnet = \"172.17.5.0/24\"\n[containers.a]\n";
    assert_refused(t, "2:10", "implicit default network");
}

#[test]
fn file_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.toml");
    let f = std::fs::File::create(&p).unwrap();
    // Sparse: the size counts, not the disk.
    f.set_len(64 * 1024 * 1024 + 1).unwrap();
    let (code, errs) = validate_path(&p);
    assert_eq!(code, Some(1));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("1:1: ") && e.contains("at most")),
        "{errs:#?}"
    );
}

#[test]
fn dns_options_are_checked_at_their_values() {
    let base = "[containers.web]\n";
    assert_valid(&format!(
        "{base}domainname = \"corp.example\"\nextra_hosts = [\"legacy:192.0.2.7\", \"v6=fd00::7\", \"gw:host-gateway\"]\n\
         dns = [\"192.0.2.53\", \"2001:db8::53\"]\ndns_search = [\"corp.example\"]\ndns_options = [\"ndots:2\", \"rotate\"]\n"
    ));
    for (line, value, needle) in [
        (
            "extra_hosts = [\"legacy\"]",
            "\"legacy\"",
            "must be NAME:IP",
        ),
        (
            "extra_hosts = [\"db:10.0.0\"]",
            "\"db:10.0.0\"",
            "is not an IP address",
        ),
        (
            "dns = [\"dns.example\"]",
            "\"dns.example\"",
            "not a DNS server address",
        ),
        (
            "dns = [\"9.9.9.9:5353\"]",
            "\"9.9.9.9:5353\"",
            "resolv.conf has no ports",
        ),
        (
            "dns_search = [\"bad domain\"]",
            "\"bad domain\"",
            "invalid search domain",
        ),
        ("dns_options = [\"ndots\"]", "\"ndots\"", "takes a number"),
        (
            "dns_options = [\"rotat\"]",
            "\"rotat\"",
            "did you mean `rotate`",
        ),
        ("domainname = \"-x\"", "\"-x\"", "invalid domainname"),
    ] {
        let text = format!("{base}{line}\n");
        assert_refused(&text, &at(&text, value, 0), needle);
    }
}

#[test]
fn every_unknown_key_and_wrong_type_beside_the_semantic_errors() {
    let t = "\
[settings]
port_rnge = \"5000-6000\"
[networks.a]
subnet = \"10.1.0.0/16\"
gateway = \"10.9.0.1\"
colour = \"blue\"
[networks.b]
subnet = \"10.1.128.0/17\"
mtu = \"1500\"
[networks.c]
subnet = 7
[containers.x]
port = [\"80\"]
ports = [8080, \"0:1\"]
networks = { a = { ipp = \"10.1.0.9\" } }
links = [\"nope\"]
[extra]
";
    let (code, errs) = validate(t);
    assert_eq!(code, Some(1), "{errs:#?}");
    let want = [
        (
            at(t, "port_rnge", 0),
            "unknown key `port_rnge`; did you mean `port_range`?",
        ),
        (
            at(t, "\"10.9.0.1\"", 0),
            "gateway 10.9.0.1 is not inside subnet 10.1.0.0/16",
        ),
        (at(t, "colour", 0), "unknown key `colour`"),
        // The bad gateway of `a` does not hide the overlap.
        (
            at(t, "\"10.1.128.0/17\"", 0),
            "overlaps subnet 10.1.0.0/16 of network `a`",
        ),
        (
            at(t, "\"1500\"", 0),
            "`networks.b.mtu` must be an integer, not a string",
        ),
        (
            "11:10".to_string(),
            "`networks.c.subnet` must be a string, not an integer",
        ),
        (
            at(t, "port ", 0),
            "unknown key `port`; did you mean `ports`?",
        ),
        (
            at(t, "8080", 0),
            "`containers.x.ports[0]` must be a string, not an integer",
        ),
        (at(t, "\"0:1\"", 0), "out of range"),
        (at(t, "ipp", 0), "unknown key `ipp`; did you mean `ip`?"),
        (at(t, "\"nope\"", 0), "undeclared container `nope`"),
        (at(t, "extra", 0), "unknown key `extra`"),
    ];
    for (pos, needle) in &want {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{pos}: ")) && e.contains(needle)),
            "expected an error at {pos} containing {needle:?}, got {errs:#?}"
        );
    }
    // Nothing else: no echo of a removed value ("network `c` needs a
    // subnet").
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}
