//! Benchmark of whole `netloom apply` runs: N containers on one network.
//!
//! For N in 10, 50, 200 it applies a fresh host (everything created), then
//! applies again on the converged host, then readdresses one container; each
//! step is repeated on RUNS fresh sandboxes and reported as the median time
//! of the whole `netloom apply` command (process start to exit, as timed by
//! the shell) next to counts that do not depend on machine noise, read from
//! netloom's own report line. An apply that changes something reports
//! netlink writes, nft transactions and elements, and netlink lookups while
//! applying; a converged host reports "Nothing to apply" with the netlink
//! dumps of reading the host and no lookups or elements at all: those
//! columns then show "-". A report line that matches neither form, or lacks
//! a counter, stops the benchmark.
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

/// Counts from netloom's report line, either
/// "Apply complete! ... (12 netlink writes, 1 nft transaction(s) with 3
/// element(s); 4 netlink lookups while applying)." or
/// "Nothing to apply (9 netlink dumps, 0 netlink writes, 0 nft
/// transactions).". `None`: the report has no such counter.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    writes: u64,
    nft: u64,
    /// Netlink requests while applying (only when something was applied).
    lookups: Option<u64>,
    /// nft set/map elements written (only when something was applied).
    elements: Option<u64>,
    /// Netlink dumps of reading the host (only on "Nothing to apply").
    observe_dumps: Option<u64>,
}

/// The number right before `word` in `text`; an error when there is none.
fn number_before(text: &str, word: &str) -> anyhow::Result<u64> {
    let i = text
        .find(word)
        .ok_or_else(|| anyhow::anyhow!("no {word:?} in the report: {text:?}"))?;
    let n = text[..i]
        .split_whitespace()
        .last()
        .ok_or_else(|| anyhow::anyhow!("no number before {word:?}: {text:?}"))?;
    n.trim_start_matches('(')
        .parse()
        .map_err(|e| anyhow::anyhow!("{n:?} before {word:?} is not a count ({e}): {text:?}"))
}

fn parse(report: &str) -> anyhow::Result<Counts> {
    if report.starts_with("Apply complete!") {
        Ok(Counts {
            writes: number_before(report, "netlink writes")?,
            nft: number_before(report, "nft transaction(s)")?,
            lookups: Some(number_before(report, "netlink lookups")?),
            elements: Some(number_before(report, "element(s)")?),
            observe_dumps: None,
        })
    } else if report.starts_with("Nothing to apply") {
        Ok(Counts {
            writes: number_before(report, "netlink writes")?,
            nft: number_before(report, "nft transactions")?,
            lookups: None,
            elements: None,
            observe_dumps: Some(number_before(report, "netlink dumps")?),
        })
    } else {
        anyhow::bail!("not a report line of netloom apply: {report:?}")
    }
}

fn or_dash(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
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
    let steps = text
        .lines()
        .map(|l| {
            let (ns, report) = l
                .split_once(' ')
                .ok_or_else(|| anyhow::anyhow!("no report after the time: {l:?}"))?;
            let ns: u64 = ns
                .parse()
                .map_err(|e| anyhow::anyhow!("bad time {ns:?}: {e}"))?;
            Ok((Duration::from_nanos(ns), parse(report)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if steps.len() != 3 {
        anyhow::bail!("expected 3 applies, got {}:\n{text}", steps.len());
    }
    Ok(steps)
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
        "time: median of {RUNS} whole `netloom apply` commands (process start to exit), each in a fresh sandbox"
    );
    println!(
        "counts: from the report line; lookups/elements only when something was applied, observe dumps only on \"Nothing to apply\""
    );
    println!(
        "{:>5}  {:<22} {:>10} {:>8} {:>8} {:>4} {:>9} {:>14}",
        "N", "apply", "median", "writes", "lookups", "nft", "elements", "observe dumps"
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
                "{:>5}  {:<22} {:>8.1}ms {:>8} {:>8} {:>4} {:>9} {:>14}{}",
                n,
                name,
                median(times).as_secs_f64() * 1000.0,
                counts.writes,
                or_dash(counts.lookups),
                counts.nft,
                or_dash(counts.elements),
                or_dash(counts.observe_dumps),
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
