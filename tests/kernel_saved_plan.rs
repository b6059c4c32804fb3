//! Saved plans against the kernel: `plan --out PLAN` then `apply PLAN`
//! applies exactly that plan; a plan whose file or host moved meanwhile,
//! or that was made on another host, is refused with nothing changed.

mod common;

use common::{Host, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "unshare", "nsenter"];

const ONE: &str = "[containers.web]\nports = [\"8080:80\"]\n";
const TWO: &str = "[containers.web]\nports = [\"8080:80\", \"9090:90\"]\n";

fn nft_has_port(h: &Host, port: u16) -> bool {
    h.sh("nft list table inet netloom")
        .stdout
        .contains(&format!("tcp . {port} "))
}

#[test]
fn a_saved_plan_round_trips() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("n.toml", ONE);
    let plan_file = h.dir.path().join("plan.json");
    let plan_arg = plan_file.display().to_string();
    let r = h.netloom(&cfg, &["plan", "--out", &plan_arg]);
    r.ok();
    assert!(r.stdout.contains("+ container.web.eth0"), "{}", r.stdout);
    // Planning changed nothing.
    assert!(h.sh("ip netns list").stdout.trim().is_empty());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    assert_eq!(doc["format_version"], 1);
    for k in ["host_sha256", "state_sha256", "observed_sha256"] {
        assert_eq!(doc[k].as_str().map(str::len), Some(64), "{k}: {doc}");
    }
    assert_eq!(doc["config"]["path"], cfg.display().to_string());
    assert!(doc["plan"]["changes"].as_array().unwrap().len() > 3);

    let r = h.netloom(&cfg, &["apply", &plan_arg, "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Apply complete!"), "{}", r.stderr);
    assert!(h.sh("ip netns list").stdout.contains("web"));
    assert!(nft_has_port(&h, 8080));
    // The same plan again: the host it was made against is gone.
    let r = h.netloom(&cfg, &["apply", &plan_arg]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("stale plan: "), "{}", r.stderr);

    // A plan with nothing to do applies as "no changes".
    let r = h.netloom(&cfg, &["plan", "--out", &plan_arg]);
    r.ok();
    assert!(r.stdout.contains("No changes."), "{}", r.stdout);
    let r = h.netloom(&cfg, &["apply", &plan_arg, "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn a_plan_whose_host_moved_is_refused_and_changes_nothing() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("n.toml", ONE);
    h.netloom(&cfg, &["apply"]).ok();
    let cfg = h.config("n.toml", TWO);
    let plan_arg = h.dir.path().join("plan.json").display().to_string();
    h.netloom(&cfg, &["plan", "--out", &plan_arg]).ok();

    // Someone changes the container's interface meanwhile.
    h.sh("ip -n web link set eth0 mtu 1400").ok();
    let r = h.netloom(&cfg, &["apply", &plan_arg]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("stale plan: container.web.eth0 changed on the host since the plan was made"),
        "{}",
        r.stderr
    );
    // Nothing changed: not the port of the plan, not the drift.
    assert!(!nft_has_port(&h, 9090));
    assert!(h.sh("ip -n web link show eth0").stdout.contains("mtu 1400"));

    // Control: a fresh plan of the same change applies.
    h.netloom(&cfg, &["plan", "--out", &plan_arg]).ok();
    h.netloom(&cfg, &["apply", &plan_arg]).ok();
    assert!(nft_has_port(&h, 9090));
}

#[test]
fn a_plan_whose_file_changed_is_refused() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("n.toml", ONE);
    let plan_arg = h.dir.path().join("plan.json").display().to_string();
    h.netloom(&cfg, &["plan", "--out", &plan_arg]).ok();
    h.config("n.toml", TWO);
    let r = h.netloom(&cfg, &["apply", &plan_arg]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "stale plan: the file {} changed since the plan was made",
            cfg.display()
        )),
        "{}",
        r.stderr
    );
    assert!(h.sh("ip netns list").stdout.trim().is_empty());
}

#[test]
fn a_plan_from_another_host_is_refused() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let a = Host::new();
    let b = Host::new();
    let cfg = a.config("n.toml", ONE);
    let plan_arg = a.dir.path().join("plan.json").display().to_string();
    a.netloom(&cfg, &["plan", "--out", &plan_arg]).ok();
    let r = b.netloom(&cfg, &["apply", &plan_arg]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("made on another host"), "{}", r.stderr);
    assert!(b.sh("ip netns list").stdout.trim().is_empty());
    // Control: on the host it was made on, it applies.
    a.netloom(&cfg, &["apply", &plan_arg]).ok();
    assert!(a.sh("ip netns list").stdout.contains("web"));
}
