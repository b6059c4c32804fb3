//! Crash test (cargo feature `fault-injection`): `apply` kills itself with
//! SIGKILL right after its K-th write (NETLOOM_FAULT_AFTER=K), for every K
//! of a topology holding every kind of write, and for points spread over a
//! 150-container apply. After each crash: the next `apply` exits 0, `plan`
//! is empty, `down` leaves nothing of netloom's, and foreign objects are
//! byte-identical.
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

/// Crashes `apply` after write `k`, then checks that netloom converges and
/// cleans up. Returns a description of what went wrong, if anything.
fn crash_at(h: &Host, cfg: &std::path::Path, k: u64, foreign: &str) -> Option<String> {
    let k_text = k.to_string();
    let crashed = h.netloom_env(cfg, &["apply"], &[("NETLOOM_FAULT_AFTER", &k_text)]);
    if crashed.code != -1 {
        return Some(format!(
            "k={k}: apply was not killed (exit {}): {}",
            crashed.code, crashed.stderr
        ));
    }
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

fn sweep(h: &Host, cfg: &std::path::Path, points: &[u64]) -> (usize, Vec<String>) {
    let foreign = foreign_snapshot(h);
    let mut failures = Vec::new();
    for &k in points {
        if let Some(f) = crash_at(h, cfg, k, &foreign) {
            eprintln!("{f}");
            failures.push(f);
            // Start the next point from a clean host all the same.
            let _ = h.netloom(cfg, &["down"]);
        }
    }
    (points.len(), failures)
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
    let (tried, failures) = sweep(&h, &cfg, &points);
    println!(
        "{tried} points tried, {} converged (every write of a 9-container apply)",
        tried - failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
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
    let (tried, failures) = sweep(&h, &cfg, &points);
    println!(
        "{tried} points tried, {} converged (150 containers, {n} points in all)",
        tried - failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
