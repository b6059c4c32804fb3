//! Crash test (cargo feature `fault-injection`): `apply` kills itself with
//! SIGKILL right after its K-th write (NETLOOM_FAULT_AFTER=K), for every K
//! of a topology holding every kind of write, and for points spread over a
//! 150-container apply. After each crash: the next `apply` exits 0, `plan`
//! is empty, `down` leaves nothing of netloom's, and foreign objects are
//! byte-identical. Among the points are those between creating a bridge or
//! veth (under netloom's temporary name) and naming and marking it: the
//! sweep checks that it met both kinds and that they converged too.
//!
//!     cargo test --features fault-injection --test kernel_crash -- --nocapture

mod common;

use common::leaks::{foreign_snapshot, leftovers, make_foreign, many_containers};
use common::{Host, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "unshare", "nsenter"];

/// The number of fault points a clean apply of `cfg` passes. Counted on
/// the second apply after a `down`: the first also sets sysctls, which
/// `down` leaves set, so later applies have a few writes fewer.
fn points_of(h: &Host, cfg: &std::path::Path) -> u64 {
    h.netloom(cfg, &["apply"]).ok();
    h.netloom(cfg, &["down"]).ok();
    let run = h.netloom(cfg, &["apply"]);
    run.ok();
    let n = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("fault points passed: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no fault point count (built without the feature?): {}",
                run.stderr
            )
        });
    h.netloom(cfg, &["down"]).ok();
    assert_eq!(
        leftovers(h),
        Vec::<String>::new(),
        "clean apply + down leaked"
    );
    n
}

/// The kinds (`bridge`, `veth`) of the links a crash left under netloom's
/// temporary name (`nl~...`): created, not yet named and marked.
fn half_made(h: &Host) -> Vec<String> {
    let out = h.sh("ip -o -d link show").ok().stdout.clone();
    let mut kinds: Vec<String> = out
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|n| n.starts_with("nl~"))
        })
        .map(|l| {
            let kind = ["bridge", "veth", "vxlan"]
                .into_iter()
                .find(|k| l.split_whitespace().any(|w| w == *k));
            kind.unwrap_or("other").to_string()
        })
        .collect();
    kinds.sort();
    kinds
}

/// Crashes `apply` after write `k`, then checks that netloom converges and
/// cleans up. Returns a description of what went wrong, if anything, and
/// the kinds of half-made links the crash left.
fn crash_at(
    h: &Host,
    cfg: &std::path::Path,
    k: u64,
    foreign: &str,
) -> (Option<String>, Vec<String>) {
    let k_text = k.to_string();
    let crashed = h.netloom_env(cfg, &["apply"], &[("NETLOOM_FAULT_AFTER", &k_text)]);
    if crashed.code != -1 {
        let f = format!(
            "k={k}: apply was not killed (exit {}): {}",
            crashed.code, crashed.stderr
        );
        return (Some(f), Vec::new());
    }
    let half = half_made(h);
    (converges_after_crash(h, cfg, k, foreign), half)
}

fn converges_after_crash(h: &Host, cfg: &std::path::Path, k: u64, foreign: &str) -> Option<String> {
    let k_text = k.to_string();
    let again = h.netloom(cfg, &["apply"]);
    if again.code != 0 {
        return Some(format!(
            "k={k}: apply after the crash failed: {}",
            again.stderr
        ));
    }
    let plan = h.netloom(cfg, &["plan", "--detailed-exitcode"]);
    if plan.code != 0 {
        return Some(format!(
            "k={k}: plan after convergence not empty (exit {}):\n{}{}",
            plan.code, plan.stdout, plan.stderr
        ));
    }
    // A crash then straight to `down` must leave nothing either: crash
    // again at the same point and remove without converging first.
    let down = h.netloom(cfg, &["down"]);
    if down.code != 0 {
        return Some(format!("k={k}: down failed: {}", down.stderr));
    }
    let left = leftovers(h);
    if !left.is_empty() {
        return Some(format!("k={k}: down leaked {left:?}"));
    }
    let crashed = h.netloom_env(cfg, &["apply"], &[("NETLOOM_FAULT_AFTER", &k_text)]);
    if crashed.code != -1 {
        return Some(format!("k={k}: second crash run exited {}", crashed.code));
    }
    let down = h.netloom(cfg, &["down"]);
    if down.code != 0 {
        return Some(format!(
            "k={k}: down right after a crash failed: {}",
            down.stderr
        ));
    }
    let left = leftovers(h);
    if !left.is_empty() {
        return Some(format!("k={k}: down right after a crash leaked {left:?}"));
    }
    if foreign_snapshot(h) != foreign {
        return Some(format!("k={k}: a foreign object changed"));
    }
    None
}

/// What a sweep found.
struct Swept {
    tried: usize,
    failures: Vec<String>,
    /// Points whose crash left a half-made link, by the link's kind.
    half_made: std::collections::BTreeMap<String, usize>,
}

fn sweep(h: &Host, cfg: &std::path::Path, points: &[u64]) -> Swept {
    let foreign = foreign_snapshot(h);
    let mut failures = Vec::new();
    let mut half_made = std::collections::BTreeMap::new();
    for &k in points {
        let (failure, half) = crash_at(h, cfg, k, &foreign);
        for kind in half {
            *half_made.entry(kind).or_insert(0) += 1;
        }
        if let Some(f) = failure {
            eprintln!("{f}");
            failures.push(f);
            // Start the next point from a clean host all the same.
            let _ = h.netloom(cfg, &["down"]);
        }
    }
    Swept {
        tried: points.len(),
        failures,
        half_made,
    }
}

#[test]
fn a_crash_after_any_write_converges_and_down_leaves_nothing() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    make_foreign(&h);
    // Seven containers hold every kind of write: namespaces, veths,
    // addresses, MACs, routes, the nft transaction, hosts and resolv.conf
    // files, sysctls, a `none` namespace and a shared one.
    let cfg = h.config("small.toml", &many_containers(7));
    let n = points_of(&h, &cfg);
    assert!(n > 30, "only {n} fault points");
    let points: Vec<u64> = (1..=n).collect();
    let s = sweep(&h, &cfg, &points);
    println!(
        "{} points tried, {} converged (every write of a 9-container apply); half-made links left by a crash: {:?}",
        s.tried,
        s.tried - s.failures.len(),
        s.half_made
    );
    assert!(s.failures.is_empty(), "{:#?}", s.failures);
    // The points between creating a link and naming and marking it were
    // among those tried (and, with the rest, converged).
    for kind in ["bridge", "veth"] {
        assert!(
            s.half_made.get(kind).is_some_and(|n| *n > 0),
            "no crash left a half-made {kind}: {:?}",
            s.half_made
        );
    }
}

#[test]
fn crashes_across_a_150_container_apply_converge() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    make_foreign(&h);
    let cfg = h.config("big.toml", &many_containers(150));
    let n = points_of(&h, &cfg);
    assert!(n > 1000, "only {n} fault points");
    // Points spread over the whole apply (a full sweep of 150 containers
    // takes hours on two cores; the small topology above sweeps every
    // point): the first, the last, and evenly between.
    let mut points: Vec<u64> = (0..8).map(|i| 1 + i * (n - 1) / 7).collect();
    points.dedup();
    let s = sweep(&h, &cfg, &points);
    println!(
        "{} points tried, {} converged (150 containers, {n} points in all); half-made links left by a crash: {:?}",
        s.tried,
        s.tried - s.failures.len(),
        s.half_made
    );
    assert!(s.failures.is_empty(), "{:#?}", s.failures);
}

/// After a crash, `status` names the interrupted apply, what it was about
/// to make and what to run, and exits 2 (not in sync) even when every
/// change happened to land before the kill; `plan` says so too. Once
/// `apply` has finished it, `status` is back to in sync.
#[test]
fn status_and_plan_name_an_interrupted_apply() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("three.toml", &many_containers(3));
    let n = points_of(&h, &cfg);
    // A point in the middle (changes left to make) and the last one (all
    // made, only the record of the end missing).
    for k in [n / 2, n] {
        let crashed = h.netloom_env(&cfg, &["apply"], &[("NETLOOM_FAULT_AFTER", &k.to_string())]);
        assert_eq!(crashed.code, -1, "k={k}: not killed: {}", crashed.stderr);

        let st = h.netloom(&cfg, &["status"]);
        assert_eq!(st.code, 2, "k={k}: status exit\n{}{}", st.stdout, st.stderr);
        assert!(
            st.stdout.contains("Interrupted: the apply started")
                && st.stdout.contains("was about to make")
                && st.stdout.contains("network.bridge")
                && st.stdout.contains("run `netloom apply` to finish it"),
            "k={k}: {}",
            st.stdout
        );
        if k == n {
            assert!(
                st.stdout
                    .contains("Not in sync: the last apply was interrupted"),
                "k={k}: {}",
                st.stdout
            );
        }
        let js = h.netloom(&cfg, &["status", "--format", "json"]);
        assert_eq!(js.code, 2, "k={k}: {}", js.stderr);
        let doc: serde_json::Value = serde_json::from_str(&js.stdout).expect("status json");
        assert_eq!(doc["in_sync"], serde_json::Value::Bool(false));
        let changes = doc["interrupted"]["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("k={k}: no interrupted part: {}", js.stdout));
        assert!(changes.iter().any(|c| c == "network.bridge"), "{changes:?}");

        let plan = h.netloom(&cfg, &["plan"]);
        assert!(
            plan.stderr.contains("was interrupted")
                && plan.stderr.contains("run `netloom apply` to finish it"),
            "k={k}: plan: {}",
            plan.stderr
        );

        h.netloom(&cfg, &["apply"]).ok();
        let st = h.netloom(&cfg, &["status"]);
        assert_eq!(st.code, 0, "k={k}: {}{}", st.stdout, st.stderr);
        assert!(!st.stdout.contains("Interrupted"), "{}", st.stdout);
        let plan = h.netloom(&cfg, &["plan"]);
        assert!(!plan.stderr.contains("interrupted"), "{}", plan.stderr);
        h.netloom(&cfg, &["down"]).ok();
        assert_eq!(leftovers(&h), Vec::<String>::new());
    }
}
