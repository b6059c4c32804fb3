//! Scale of the derived data: how long validation and planning take, how
//! much memory they need and how large the state record gets, for files
//! far larger than a host usually holds.
//!
//! Every figure comes from the release binary run as a user would run it
//! (`/usr/bin/time` reports elapsed seconds and peak RSS), except the state
//! record, which is written by the same code `apply` uses (`StateDir::save`
//! of the resolved file) without creating 10,000 namespaces. With `--kernel`
//! (root) it also applies 1,000 containers in a throwaway sandbox
//! (`unshare --net --mount`, tmpfs on /run and /etc/netns), reports the real
//! `state.json` and hosts files, and times `netloom down`.
//!
//! `cargo build --release && cargo run --release --example derived_bench [-- --kernel]`

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netloom::core::{ipam, model, spec};
use netloom::host::state::{Owned, Record, StateDir};

/// `n` containers on one user-defined network (a /8 holds 100k).
fn one_network(n: usize) -> String {
    let mut t = String::with_capacity(n * 40);
    t.push_str("[networks.big]\nsubnet = \"10.0.0.0/8\"\n");
    for i in 0..n {
        let _ = writeln!(t, "[containers.c{i}]\nnetworks = [\"big\"]");
    }
    t
}

/// `n` containers in groups of 50 per network, some with a published
/// port, each with a link to its predecessor and an alias: every cross-reference
/// kind the validator checks.
fn mixed(n: usize) -> String {
    let mut t = String::with_capacity(n * 120);
    t.push_str("[settings]\nport_range = \"20000-65000\"\n");
    for g in 0..n.div_ceil(50) {
        let _ = writeln!(
            t,
            "[networks.n{g}]\nsubnet = \"10.{}.{}.0/24\"",
            g / 256,
            g % 256
        );
    }
    for i in 0..n {
        let g = i / 50;
        let _ = writeln!(
            t,
            "[containers.c{i}]\nnetworks = {{ n{g} = {{ aliases = [\"a{i}\"] }} }}"
        );
        // One container in four publishes an auto port: 25k of them fit
        // port_range (validation refuses a range too small for them all).
        if i % 4 == 0 {
            let _ = writeln!(t, "ports = [\"{}\"]", 80 + i % 50);
        }
        if i % 50 != 0 {
            let _ = writeln!(t, "links = [\"c{}:prev\"]", i - 1);
        }
    }
    t
}

/// One measured run of the binary.
struct Run {
    secs: f64,
    /// User plus system CPU seconds: what load on a shared machine
    /// inflates least.
    cpu: f64,
    rss_mb: f64,
    stdout_bytes: usize,
    ok: bool,
}

fn measure(netloom: &Path, args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<Run> {
    let timing = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%e %M %U %S", "-o"])
        .arg(timing.path())
        .arg(netloom);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let t = std::fs::read_to_string(timing.path())?;
    let last = t.lines().last().unwrap_or_default();
    let mut w = last.split_whitespace();
    let secs: f64 = w.next().unwrap_or("nan").parse()?;
    let kb: f64 = w.next().unwrap_or("nan").parse()?;
    let user: f64 = w.next().unwrap_or("nan").parse()?;
    let sys: f64 = w.next().unwrap_or("nan").parse()?;
    Ok(Run {
        secs,
        cpu: user + sys,
        rss_mb: kb / 1024.0,
        stdout_bytes: out.stdout.len(),
        ok: out.status.success(),
    })
}

/// The record `apply` would save for `text` on a fresh host, written by
/// `StateDir::save` into `dir`; its size in bytes.
fn record_size(text: &str, dir: &Path) -> anyhow::Result<u64> {
    let spec = spec::load("bench.toml", text).map_err(|d| anyhow::anyhow!("{d}"))?;
    let host = model::HostInfo {
        state_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let desired = model::resolve(&spec, &ipam::Allocations::default(), &host)?;
    let st = &desired.state;
    let mut record = Record::default();
    record.version = 1;
    record.allocations = desired.allocations.clone();
    record.owned = Owned {
        bridges: st.bridges.values().map(|b| b.name.clone()).collect(),
        netns: st
            .namespaces
            .values()
            .filter_map(|n| match &n.netns {
                model::NsRef::Named(name) => Some(name.clone()),
                model::NsRef::Path(_) => None,
            })
            .collect(),
        files: st.files.keys().cloned().collect::<BTreeSet<_>>(),
        ..Default::default()
    };
    record.set_applied(Some(st.clone()));
    let sd = StateDir::open(dir, Duration::from_secs(5))?;
    sd.save(&record)?;
    Ok(std::fs::metadata(dir.join("state.json"))?.len())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn kernel_run(netloom: &Path, dir: &Path, n: usize) -> anyhow::Result<String> {
    let cfg = dir.join("kernel.toml");
    let mut t = String::from("[networks.big]\nsubnet = \"10.40.0.0/16\"\n");
    for i in 0..n {
        let _ = writeln!(t, "[containers.c{i}]\nnetworks = [\"big\"]");
    }
    std::fs::write(&cfg, t)?;
    let state = dir.join("kstate");
    let script = format!(
        "set -e; mount -t tmpfs b /run; mkdir -p /run/netns; mount -t tmpfs b /etc/netns; ip link set lo up; \
         export NETLOOM_STATE_DIR={state}; \
         s=$(date +%s%N); {nl} -c {cfg} apply >/dev/null 2>{dir}/apply.err; e=$(date +%s%N); echo apply_ms $(( (e - s) / 1000000 )); \
         echo state_bytes $(stat -c %s {state}/state.json); \
         echo hosts_bytes $(du -sb /etc/netns | cut -f1); \
         s=$(date +%s%N); {nl} -c {cfg} down >/dev/null 2>{dir}/down.err; e=$(date +%s%N); echo down_ms $(( (e - s) / 1000000 )); \
         echo left_netns $(ls /run/netns | wc -l)",
        state = state.display(),
        cfg = cfg.display(),
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
        anyhow::bail!(
            "sandbox run failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(dir.join("apply.err")).unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let netloom = root.join("target/release/netloom");
    anyhow::ensure!(
        netloom.exists(),
        "build the release binary first: cargo build --release"
    );
    let kernel = std::env::args().any(|a| a == "--kernel");
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");

    println!("netloom validate (whole command; elapsed, CPU, peak RSS):\n");
    println!("| file | containers | size | time | CPU | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (kind, n) in [
        ("one network", 25_000),
        ("one network", 50_000),
        ("one network", 100_000),
        ("50 per network, ports, links, aliases", 100_000),
    ] {
        let text = if kind == "one network" {
            one_network(n)
        } else {
            mixed(n)
        };
        let p = dir.path().join("v.toml");
        std::fs::write(&p, &text)?;
        let r = measure(&netloom, &["validate", "-c", &p.display().to_string()], &[])?;
        anyhow::ensure!(r.ok, "validate failed for {kind} {n}");
        println!(
            "| {kind} | {n} | {:.1} MB | {:.2} s | {:.2} s | {:.0} MB |",
            mb(text.len() as u64),
            r.secs,
            r.cpu,
            r.rss_mb
        );
    }

    println!("\nnetloom plan --offline (whole command; elapsed, CPU, peak RSS, plan printed):\n");
    println!("| containers on one network | time | CPU | peak RSS | plan output |");
    println!("|---:|---:|---:|---:|---:|");
    for n in [1_000, 10_000] {
        let p = dir.path().join("p.toml");
        std::fs::write(&p, one_network(n))?;
        let r = measure(
            &netloom,
            &["plan", "--offline", "-c", &p.display().to_string()],
            &[("NETLOOM_STATE_DIR", &state)],
        )?;
        anyhow::ensure!(r.ok, "plan --offline failed for {n}");
        println!(
            "| {n} | {:.2} s | {:.2} s | {:.0} MB | {:.1} MB |",
            r.secs,
            r.cpu,
            r.rss_mb,
            mb(r.stdout_bytes as u64)
        );
    }

    println!("\nstate record after applying (StateDir::save of the resolved file):\n");
    println!("| containers on one network | state.json |");
    println!("|---:|---:|");
    for n in [1_000, 10_000] {
        let d = dir.path().join(format!("rec{n}"));
        println!("| {n} | {:.2} MB |", mb(record_size(&one_network(n), &d)?));
    }

    if kernel {
        let n = 1_000;
        println!("\napply and down of {n} containers on one network, in a sandbox:\n");
        print!("{}", kernel_run(&netloom, dir.path(), n)?);
    }
    Ok(())
}
