//! Benchmark of whole `netloom apply` runs: N containers on one network.
//!
//! For N in 10, 50, 200 it applies a fresh host (everything created), then
//! applies again on the converged host, then readdresses one container; each
//! step is repeated on a fresh sandbox and reported as the median time next
//! to counts that do not depend on machine noise: netlink writes, netlink
//! lookups while applying, nft transactions and elements (read from
//! netloom's own report line).
//!
//! Every run happens in a throwaway sandbox (`unshare --net --mount` with
//! tmpfs on /run and /etc/netns and a private state dir), so the machine's
//! own network is never touched. Needs root and a release build:
//! `cargo build --release && cargo run --release --example apply_bench`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const RUNS: usize = 3;

fn config(n: usize, moved: bool) -> String {
    let mut t = String::from("[networks.bench]\nsubnet = \"10.30.0.0/16\"\n");
    for i in 0..n {
        let _ = writeln!(t, "[containers.c{i}]");
        if moved && i == 0 {
            t.push_str("networks = { bench = { ip = \"10.30.200.1\" } }\n");
        } else {
            t.push_str("networks = [\"bench\"]\n");
        }
    }
    t
}

/// Counts from netloom's report line, e.g. "Apply complete! ... (12 netlink
/// writes, 1 nft transaction(s) with 3 element(s); 4 netlink lookups ...)".
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    writes: u64,
    lookups: u64,
    nft: u64,
    elements: u64,
}

fn number_before(text: &str, word: &str) -> u64 {
    text.find(word)
        .and_then(|i| text[..i].split_whitespace().last())
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or(0)
}

fn parse(report: &str) -> Counts {
    Counts {
        writes: number_before(report, "netlink writes"),
        lookups: number_before(report, "netlink lookups"),
        nft: number_before(report, "nft transaction"),
        elements: number_before(report, "element(s)"),
    }
}

/// One sandbox: three applies (fresh, converged, one readdressed) timed.
fn sandbox_run(netloom: &Path, dir: &Path, n: usize) -> anyhow::Result<Vec<(Duration, Counts)>> {
    let fresh = dir.join("fresh.toml");
    let moved = dir.join("moved.toml");
    std::fs::write(&fresh, config(n, false))?;
    std::fs::write(&moved, config(n, true))?;
    let state = dir.join("state");
    // Each apply prints its report on stderr; the script marks timings.
    let script = format!(
        "set -e; mount -t tmpfs b /run; mkdir -p /run/netns; mount -t tmpfs b /etc/netns; ip link set lo up; \
         export NETLOOM_STATE_DIR={state}; \
         for f in {fresh} {fresh} {moved}; do s=$(date +%s%N); {nl} -c $f apply >/dev/null 2>{dir}/report; e=$(date +%s%N); \
         echo \"$((e - s)) $(tail -1 {dir}/report)\"; done",
        state = state.display(),
        fresh = fresh.display(),
        moved = moved.display(),
        nl = netloom.display(),
        dir = dir.display(),
    );
    let out = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output()?;
    if !out.status.success() {
        anyhow::bail!("sandbox failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .map(|l| {
            let (ns, report) = l.split_once(' ').unwrap_or((l, ""));
            (Duration::from_nanos(ns.parse().unwrap_or(0)), parse(report))
        })
        .collect())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let netloom = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/netloom");
    if !netloom.exists() {
        anyhow::bail!("build the binary first: cargo build --release");
    }
    std::fs::create_dir_all("/etc/netns")?; // a mount point for the sandbox
    println!(
        "{:>5}  {:<22} {:>10} {:>8} {:>8} {:>4} {:>9}",
        "N", "apply", "median", "writes", "lookups", "nft", "elements"
    );
    for n in [10, 50, 200] {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let dir = tempfile::tempdir()?;
            runs.push(sandbox_run(&netloom, dir.path(), n)?);
        }
        for (step, name) in ["fresh host", "converged (no change)", "one readdressed"]
            .iter()
            .enumerate()
        {
            let times: Vec<Duration> = runs.iter().map(|r| r[step].0).collect();
            let counts = &runs[0][step].1;
            // The counts are the same in every run; say so if not.
            let stable = runs.iter().all(|r| r[step].1 == *counts);
            println!(
                "{:>5}  {:<22} {:>8.1}ms {:>8} {:>8} {:>4} {:>9}{}",
                n,
                name,
                median(times).as_secs_f64() * 1000.0,
                counts.writes,
                counts.lookups,
                counts.nft,
                counts.elements,
                if stable {
                    ""
                } else {
                    "  (counts varied between runs)"
                }
            );
        }
    }
    Ok(())
}
