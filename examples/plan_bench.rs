//! In-process cost of the pure planning steps of an `apply` that publishes
//! one more port: `plan::hold_back`, `plan::diff` (drift included) and
//! `plan::drift` (and the file's loading before them), on a host of N containers on 10 networks with 2 ports
//! each, where the file asks for one port more than the host has.
//!
//! No kernel: the desired state comes from `model::resolve`, the observed
//! one is that state without the new port (files as written, firewall as
//! read back), and the recorded state is the observed one as the state
//! record keeps it (files by digest). `apply` runs, besides reading and
//! writing the host, the sequence timed as `one apply`: the target
//! (`hold_back` with nothing held), the plan against the record, the
//! firewall transaction's and the verification's targets (`hold_back`
//! again, twice) and the verification's plan, dropping what it made.
//!
//! For each size it prints the median and fastest of `BENCH_RUNS`
//! (default 21) runs of each step after one warm-up, the ratio of each
//! median to the one at the smallest size, and a digest of the step's
//! output. Two builds that print the same digests produced the same plans
//! and targets.
//!
//! ```text
//! cargo build --release --example plan_bench
//! target/release/examples/plan_bench              # 100, 1000, 5000 containers
//! target/release/examples/plan_bench 1000 10000   # chosen sizes
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netloom::core::model::{self, State};
use netloom::core::{hash, ipam, plan, spec};

const NETWORKS: usize = 10;
const PORTS: usize = 2;

/// `n` containers on 10 networks, 2 published ports each, and `c0` with
/// one more: the file after the user added a port.
fn spread(n: usize) -> String {
    let mut t = String::new();
    for k in 0..NETWORKS {
        let _ = writeln!(t, "[networks.net{k}]\nsubnet = \"10.{}.0.0/16\"\n", 100 + k);
    }
    for i in 0..n {
        let mut p: Vec<String> = (0..PORTS)
            .map(|j| format!("\"{}:{}\"", 10000 + i * PORTS + j, 80 + j))
            .collect();
        if i == 0 {
            p.push("\"9999:9999\"".into());
        }
        let _ = writeln!(
            t,
            "[containers.c{i}]\nnetworks = [\"net{}\"]\nports = [{}]\n",
            i % NETWORKS,
            p.join(", ")
        );
    }
    t
}

/// The three states of one apply: desired, observed (without the new
/// port) and recorded (the observed one, files by digest).
fn states(n: usize) -> Result<(State, State, State)> {
    let spec = spec::load("bench.toml", &spread(n)).map_err(|d| anyhow::anyhow!("{d}"))?;
    let host = model::HostInfo {
        upstream_dns: vec!["192.0.2.53:53".parse()?],
        agent_dns: true,
        ..Default::default()
    };
    let desired = model::resolve(&spec, &ipam::Allocations::default(), &host)?.state;
    // Observed: built apart from the desired state (no shared buffers).
    let text = serde_json::to_string(&desired)?;
    let mut observed: State = serde_json::from_str(&text)?;
    let fw = observed.firewall.as_mut().context("no firewall")?;
    let new: Vec<String> = fw
        .fw
        .ports
        .keys()
        .filter(|k| k.starts_with("c0.9999/"))
        .cloned()
        .collect();
    anyhow::ensure!(new.len() == 1, "expected one new port, got {new:?}");
    fw.fw.ports_mut().remove(&new[0]);
    let applied = model::for_record(&observed);
    Ok((desired, observed, applied))
}

fn digest(v: &impl serde::Serialize) -> Result<String> {
    Ok(format!(
        "{:016x}",
        hash::fnv64(serde_json::to_string(v)?.as_bytes())
    ))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Median and fastest of `runs` calls of `f` after one warm-up; what `f`
/// returns is dropped inside the timed part (its drop is the caller's
/// cost too).
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration) {
    drop(black_box(f()));
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        drop(black_box(f()));
        times.push(start.elapsed());
    }
    let fastest = *times.iter().min().unwrap_or(&Duration::ZERO);
    (median(&mut times), fastest)
}

/// The pure steps `apply` runs around reading and writing the host.
/// Nothing is held back, so what it made is `desired` itself.
fn one_apply(desired: &State, observed: &State, applied: &State) -> plan::Plan {
    let none = BTreeSet::new();
    let target = plan::hold_back(desired, observed, &none);
    let p = plan::diff(&target, observed, Some(applied));
    let fw = plan::hold_back(&target, observed, &none);
    drop(black_box(fw));
    let made = plan::hold_back(&target, observed, &none);
    // The host read back: as planned (the new port is there now).
    let rest = plan::diff(&made, &target, None);
    assert!(rest.changes.is_empty(), "verification found changes");
    p
}

struct Row {
    step: &'static str,
    n: usize,
    median: Duration,
    fastest: Duration,
    digest: String,
}

fn bench(n: usize, runs: usize, rows: &mut Vec<Row>) -> Result<()> {
    let text = spread(n);
    let loaded = spec::load("bench.toml", &text).map_err(|d| anyhow::anyhow!("{d}"))?;
    rows.push({
        let (median, fastest) = time(runs, || spec::load("bench.toml", &text));
        Row {
            step: "spec::load (the file)",
            n,
            median,
            fastest,
            digest: format!("{} containers", loaded.containers.len()),
        }
    });
    let (desired, observed, applied) = states(n)?;
    let none = BTreeSet::new();
    // c0 is the container with the new port: held, it keeps its ports.
    let held: BTreeSet<String> = ["container.c0".to_string()].into();
    let mut row = |step, (median, fastest), digest| {
        rows.push(Row {
            step,
            n,
            median,
            fastest,
            digest,
        })
    };
    let target = plan::hold_back(&desired, &observed, &none);
    row(
        "hold_back (nothing held)",
        time(runs, || plan::hold_back(&desired, &observed, &none)),
        digest(&target)?,
    );
    row(
        "hold_back (c0 held)",
        time(runs, || plan::hold_back(&desired, &observed, &held)),
        digest(&plan::hold_back(&desired, &observed, &held))?,
    );
    let p = plan::diff(&target, &observed, Some(&applied));
    anyhow::ensure!(
        p.changes.len() == 1 && p.drift.is_empty(),
        "expected one change and no drift: {:?} {:?}",
        p.changes.iter().map(|c| &c.address).collect::<Vec<_>>(),
        p.drift
    );
    row(
        "diff (with drift)",
        time(runs, || plan::diff(&target, &observed, Some(&applied))),
        digest(&p)?,
    );
    row(
        "diff (no record)",
        time(runs, || plan::diff(&target, &observed, None)),
        digest(&plan::diff(&target, &observed, None))?,
    );
    row(
        "drift",
        time(runs, || plan::drift(&applied, &observed)),
        digest(&plan::drift(&applied, &observed))?,
    );
    row(
        "state clone + drop",
        time(runs, || desired.clone()),
        String::new(),
    );
    let p1 = one_apply(&desired, &observed, &applied);
    row(
        "one apply (all of the above it runs)",
        time(runs, || one_apply(&desired, &observed, &applied)),
        format!("{} {}", digest(&p1)?, digest(&desired)?),
    );
    Ok(())
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .with_context(|| format!("expected a count, got {a}"))
        })
        .collect::<Result<_>>()?;
    if sizes.is_empty() {
        sizes = vec![100, 1_000, 5_000];
    }
    let mut rows = Vec::new();
    for &n in &sizes {
        bench(n, runs, &mut rows)?;
    }
    println!(
        "pure planning of an apply that adds one port, N containers on {NETWORKS} networks with {PORTS} ports each; {runs} runs after a warm-up\n"
    );
    println!(
        "| step | N | median | fastest | median / N={} | output digest |",
        sizes[0]
    );
    println!("|---|---:|---:|---:|---:|---|");
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.step == r.step && b.n == sizes[0])
            .map(|b| b.median.as_secs_f64())
            .unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.3} ms | {:.3} ms | {:.1}x | {} |",
            r.step,
            r.n,
            r.median.as_secs_f64() * 1e3,
            r.fastest.as_secs_f64() * 1e3,
            r.median.as_secs_f64() / base,
            r.digest
        );
    }
    Ok(())
}
