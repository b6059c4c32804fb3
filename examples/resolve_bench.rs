//! In-process cost of `model::resolve`: the step every command (`plan`,
//! `apply`, `status`, the agent's reconcile) runs to turn the file and the
//! recorded allocations into the desired state, hosts files, resolv.conf
//! and DNS zones included.
//!
//! For each file it prints the median and the fastest of `BENCH_RUNS`
//! (default 21) calls, after one warm-up call, and a digest of everything
//! the call returned (state, allocations, zones, DNS clients, external
//! files). Two builds that print the same digest for a file produced the
//! same bytes; a different digest means the output changed. The second
//! resolve of each pair is given the first one's allocations, as every
//! command after the first `apply` is.
//!
//! ```text
//! cargo build --release --example resolve_bench
//! target/release/examples/resolve_bench           # every file
//! target/release/examples/resolve_bench 1000x2    # N containers x P ports on 10 networks
//! ```

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netloom::core::{hash, ipam, model, spec};

const NETWORKS: usize = 10;

/// `n` containers on 10 networks, `ports` published ports each: the shape
/// of issue #12's figures (100 members per network at 1,000).
fn spread(n: usize, ports: usize) -> String {
    let mut t = String::new();
    for k in 0..NETWORKS {
        let _ = writeln!(t, "[networks.net{k}]\nsubnet = \"10.{}.0.0/16\"\n", 100 + k);
    }
    for i in 0..n {
        let p: Vec<String> = (0..ports)
            .map(|j| format!("\"{}:{}\"", 10000 + i * ports + j, 80 + j))
            .collect();
        let _ = writeln!(
            t,
            "[containers.c{i}]\nnetworks = [\"net{}\"]\nports = [{}]\n",
            i % NETWORKS,
            p.join(", ")
        );
    }
    t
}

/// `n` containers on dual-stack networks of 50, every other one on a
/// second network too, with aliases, a link to its predecessor and an
/// extra host: every input of a hosts file at once.
fn mixed(n: usize) -> String {
    let mut t = String::new();
    let groups = n.div_ceil(50);
    for g in 0..groups {
        let _ = writeln!(
            t,
            "[networks.n{g}]\nsubnet = \"10.{}.{}.0/24\"\nsubnet6 = \"fd00:{g:x}::/64\"\n",
            g / 256,
            g % 256
        );
    }
    for i in 0..n {
        let g = i / 50;
        let second = if i % 2 == 1 && groups > 1 {
            format!(", n{} = {{}}", (g + 1) % groups)
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "[containers.c{i}]\nnetworks = {{ n{g} = {{ aliases = [\"a{i}\"] }}{second} }}"
        );
        if i % 50 != 0 {
            let _ = writeln!(t, "links = [\"c{}:prev\"]", i - 1);
        }
        if i % 3 == 0 {
            let _ = writeln!(t, "extra_hosts = [\"legacy:192.0.2.7\"]");
        }
    }
    t
}

/// A digest of everything one resolve returned.
fn digest(d: &model::Desired) -> Result<String> {
    let mut s = serde_json::to_string(&d.state)?;
    s.push_str(&serde_json::to_string(&d.allocations)?);
    let _ = write!(
        s,
        "{:?}{:?}{:?}{:?}",
        d.zones, d.dns_clients, d.external_files, d.networks
    );
    Ok(format!(
        "{:016x} ({} files, {} bytes)",
        hash::fnv64(s.as_bytes()),
        d.state.files.len(),
        d.state.files.values().map(|t| t.len()).sum::<usize>()
    ))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn bench(label: &str, text: &str, runs: usize) -> Result<()> {
    let spec = spec::load("bench.toml", text).map_err(|d| anyhow::anyhow!("{d}"))?;
    let host = model::HostInfo {
        upstream_dns: vec!["192.0.2.53:53".parse()?],
        agent_dns: true,
        ..Default::default()
    };
    // As every command after the first apply: the allocations recorded.
    let first = model::resolve(&spec, &ipam::Allocations::default(), &host)?;
    let prev = first.allocations.clone();
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let d = model::resolve(&spec, &prev, &host)?;
        times.push(start.elapsed());
        // Dropped outside the timed part: its cost is the caller's.
        last = Some(d);
    }
    let d = last.context("no run")?;
    let fastest = *times.iter().min().context("no run")?;
    println!(
        "| {label} | {:.2} ms | {:.2} ms | {} | {} |",
        median(&mut times).as_secs_f64() * 1e3,
        fastest.as_secs_f64() * 1e3,
        runs,
        digest(&d)?
    );
    Ok(())
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("model::resolve in-process, {runs} calls each after a warm-up:\n");
    println!("| file | median | fastest | calls | output digest |");
    println!("|---|---:|---:|---:|---|");
    if args.is_empty() {
        for (n, p) in [(1_000, 2), (10_000, 2)] {
            bench(
                &format!("{n} containers on 10 networks, {p} ports each"),
                &spread(n, p),
                runs,
            )?;
        }
        bench(
            "1000 containers: 2 networks some, dual stack, links, aliases, extra_hosts",
            &mixed(1_000),
            runs,
        )?;
    }
    for a in &args {
        let (n, p) = a
            .split_once('x')
            .and_then(|(n, p)| Some((n.parse().ok()?, p.parse().ok()?)))
            .with_context(|| format!("expected NxP, got {a}"))?;
        bench(
            &format!("{n} containers on 10 networks, {p} ports each"),
            &spread(n, p),
            runs,
        )?;
    }
    Ok(())
}
