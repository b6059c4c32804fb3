//! The verification after an apply (cargo feature `fault-injection`):
//! it reads again only the host links the apply touched, and must still
//! catch a change the kernel acknowledged but that did not take.
//! `NETLOOM_FAULT_SKIP=TEXT` makes `apply` skip every operation whose text
//! contains TEXT while reporting it done; the apply must then fail with
//! "did not converge" naming what is wrong, and a plain `apply` after it
//! must repair it.
//!
//!     cargo test --features fault-injection --test kernel_verify

#![cfg(feature = "fault-injection")]

mod common;

use common::{Host, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "ping", "unshare", "nsenter"];

const BASE: &str = "[networks.blue]\nsubnet = \"10.51.0.0/24\"\n\n\
[containers.a]\nnetworks = [\"blue\"]\nports = [\"8081:80\"]\n\n\
[containers.b]\nnetworks = [\"blue\"]\n";

const EXTRA: &str = "\n[containers.d]\nnetworks = [\"blue\"]\nports = [\"8082:80\"]\n";

/// The line of `ip -o -d link show` for the host end of `container`'s
/// endpoint (found by netloom's mark).
fn host_end(h: &Host, container: &str) -> String {
    let out = h.sh("ip -o -d link show type veth").ok().stdout.clone();
    out.lines()
        .find(|l| l.contains(&format!("netloom:endpoint {container}.eth0 ")))
        .unwrap_or_else(|| panic!("no host end of {container}: {out}"))
        .to_string()
}

/// Applies `cfg` skipping the operations containing `skip`: the apply must
/// fail to converge, naming `address`; then a plain apply repairs it and
/// `plan` is empty.
fn caught_then_repaired(h: &Host, cfg: &std::path::Path, skip: &str, address: &str) {
    let run = h.netloom_env(cfg, &["apply"], &[("NETLOOM_FAULT_SKIP", skip)]);
    assert_ne!(
        run.code, 0,
        "skipping {skip:?} went unnoticed: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("did not converge") && run.stderr.contains(address),
        "skipping {skip:?}: {}",
        run.stderr
    );
    h.netloom(cfg, &["apply"]).ok();
    let plan = h.netloom(cfg, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.code, 0,
        "not converged: {}{}",
        plan.stdout, plan.stderr
    );
}

#[test]
fn an_enslaving_that_did_not_take_is_caught() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let base = h.config("base.toml", BASE);
    h.netloom(&base, &["apply"]).ok();
    let cfg = h.config("extra.toml", &format!("{BASE}{EXTRA}"));
    caught_then_repaired(&h, &cfg, " master ", "container.d.eth0");
    assert!(
        host_end(&h, "d").contains(" master "),
        "{}",
        host_end(&h, "d")
    );
    h.sh("ip netns exec d ping -c1 -W2 10.51.0.2").ok();
}

#[test]
fn a_port_setting_or_link_state_that_did_not_take_is_caught() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let base = h.config("base.toml", BASE);
    h.netloom(&base, &["apply"]).ok();
    let cfg = h.config("extra.toml", &format!("{BASE}{EXTRA}"));
    caught_then_repaired(&h, &cfg, "hairpin on", "container.d.eth0");
    assert!(
        host_end(&h, "d").contains("hairpin on"),
        "{}",
        host_end(&h, "d")
    );
    // Again with the host end left down (its name is known now: the
    // same container on the same network gets the same one).
    let veth = host_end(&h, "d")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.split('@').next())
        .expect("interface name")
        .to_string();
    h.netloom(&base, &["apply"]).ok();
    caught_then_repaired(&h, &cfg, &format!("set {veth} up"), "container.d.eth0");
    assert!(host_end(&h, "d").contains(",UP"), "{}", host_end(&h, "d"));
}

#[test]
fn a_removal_that_did_not_take_is_caught() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("extra.toml", &format!("{BASE}{EXTRA}"));
    h.netloom(&cfg, &["apply"]).ok();
    // Neither the host end nor the namespace goes: the host end stays.
    let base = h.config("base.toml", BASE);
    let run = h.netloom_env(&base, &["apply"], &[("NETLOOM_FAULT_SKIP", "del")]);
    assert_ne!(run.code, 0, "a removal that did not take went unnoticed");
    assert!(
        run.stderr.contains("did not converge") && run.stderr.contains("container.d"),
        "{}",
        run.stderr
    );
    h.netloom(&base, &["apply"]).ok();
    assert_eq!(h.netloom(&base, &["plan", "--detailed-exitcode"]).code, 0);
    assert!(
        !h.sh("ip -o link show type veth")
            .ok()
            .stdout
            .contains("netloom:endpoint d."),
        "d's host end is still there"
    );
}

#[test]
fn a_bridge_address_that_did_not_take_is_caught() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let base = h.config("base.toml", BASE);
    h.netloom(&base, &["apply"]).ok();
    let cfg = h.config(
        "green.toml",
        &format!("{BASE}\n[networks.green]\nsubnet = \"10.52.0.0/24\"\n\n[containers.g]\nnetworks = [\"green\"]\n"),
    );
    caught_then_repaired(&h, &cfg, "addr add 10.52.0.1/24", "network.green");
    h.sh("ip -o addr show | grep -q 'inet 10.52.0.1/24'").ok();
}
